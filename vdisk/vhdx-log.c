/* libvdisk — VHDX log replay ([MS-VHDX] 2.3; entry layout in vhdx.h).
 *
 * vhdx_log_find scans the ring for the active sequence exactly as 2.3.3
 * describes it and turns it into a list of writes (data sectors with their
 * leading and trailing bytes restored, and zero ranges).  A writable open
 * applies the list to the file (vhdx_log_apply); a read-only open keeps it
 * and lays it over every read of the file (vhdx_log_overlay), so the file
 * itself is never written.
 *
 * Bounds: the scan visits each 4 KiB position of the log at most once per
 * pass (the tail only moves forward until it wraps), an entry is at most
 * the log's length, and the writes kept are capped at VHDX_LOG_MAX_PAGES
 * data sectors; descriptors may only target the file up to the head's
 * LastFileOffset, itself at most VHDX_MAX_FILE.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "vdisk/io.h"
#include "vdisk/vhdx.h"

struct vhdx_log {
  vhdx_read_fn read;
  void *opaque;
  const struct vhdx_header *h;
  const char *where;
  uint8_t *buf;               /* one entry, up to log_length bytes */
  size_t buflen;
};

/* A validated entry's header fields. */
struct vhdx_entry {
  uint32_t len, tail, ndesc;
  uint64_t seq, flushed, last;
};

/* Read LEN bytes of the log from position POS (wrapping) into L->buf. */
static int
vhdx_log_read(struct vhdx_log *l, uint32_t pos, uint32_t len)
{
  uint32_t loglen = l->h->log_length;
  if (len > l->buflen) {
    uint8_t *nb = realloc(l->buf, len);
    if (!nb)
      return vd_set_error(ENOMEM, "%s: out of memory", l->where);
    l->buf = nb;
    l->buflen = len;
  }
  uint32_t done = 0;
  while (done < len) {
    uint32_t p = (pos + done) % loglen;
    uint32_t n = len - done < loglen - p ? len - done : loglen - p;
    int r = l->read(l->opaque, l->buf + done, n, l->h->log_offset + p);
    if (r < 0)
      return r;
    done += n;
  }
  return 0;
}

/* Whether the entry at POS is valid (2.3.1): fills E.  1 valid, 0 not,
 * negative errno on a read error. */
static int
vhdx_entry_check(struct vhdx_log *l, uint32_t pos, struct vhdx_entry *e)
{
  int r = vhdx_log_read(l, pos, VHDX_LOG_SECTOR);
  if (r < 0)
    return r;
  const uint8_t *b = l->buf;
  if (memcmp(b, "loge", 4) != 0)
    return 0;
  e->len = vd_get_le32(b + 8);
  e->tail = vd_get_le32(b + 12);
  e->seq = vd_get_le64(b + 16);
  e->ndesc = vd_get_le32(b + 24);
  e->flushed = vd_get_le64(b + 48);
  e->last = vd_get_le64(b + 56);
  uint32_t loglen = l->h->log_length;
  if (e->len == 0 || e->len % VHDX_LOG_SECTOR || e->len > loglen ||
      e->tail % VHDX_LOG_SECTOR || e->tail >= loglen || e->seq == 0 ||
      memcmp(b + 32, l->h->log_guid, 16) != 0)
    return 0;
  /* Descriptor sectors, then one data sector per data descriptor. */
  uint64_t dsec = (64 + 32 * (uint64_t)e->ndesc + VHDX_LOG_SECTOR - 1) /
                  VHDX_LOG_SECTOR;
  if (dsec > e->len / VHDX_LOG_SECTOR)
    return 0;
  if ((r = vhdx_log_read(l, pos, e->len)) < 0)
    return r;
  b = l->buf;
  if (vhdx_checksum(b, e->len) != vd_get_le32(b + 4))
    return 0;
  uint64_t ndata = 0;
  for (uint32_t i = 0; i < e->ndesc; i++) {
    const uint8_t *d = b + 64 + 32 * (uint64_t)i;
    if (vd_get_le64(d + 24) != e->seq || vd_get_le64(d + 16) % VHDX_LOG_SECTOR)
      return 0;
    if (memcmp(d, "desc", 4) == 0) {
      ndata++;
    } else if (memcmp(d, "zero", 4) != 0 ||
               vd_get_le64(d + 8) % VHDX_LOG_SECTOR) {
      return 0;
    }
  }
  if (dsec + ndata != e->len / VHDX_LOG_SECTOR)
    return 0;
  for (uint64_t k = 0; k < ndata; k++) {
    const uint8_t *s = b + (dsec + k) * VHDX_LOG_SECTOR;
    if (memcmp(s, "data", 4) != 0 || vd_get_le32(s + 4) != (uint32_t)(e->seq >> 32) ||
        vd_get_le32(s + 4092) != (uint32_t)e->seq)
      return 0;
  }
  return 1;
}

/* Append the writes of the (valid) entry at POS to R. */
static int
vhdx_entry_collect(struct vhdx_log *l, uint32_t pos, struct vhdx_replay *r,
                   uint64_t limit)
{
  struct vhdx_entry e;
  int rc = vhdx_entry_check(l, pos, &e);
  if (rc <= 0)
    return rc < 0 ? rc : vd_set_error(EIO, "%s: entry changed while read",
                                      l->where);
  const uint8_t *b = l->buf;
  uint64_t dsec = (64 + 32 * (uint64_t)e.ndesc + VHDX_LOG_SECTOR - 1) /
                  VHDX_LOG_SECTOR;
  uint64_t k = 0;
  for (uint32_t i = 0; i < e.ndesc; i++) {
    const uint8_t *d = b + 64 + 32 * (uint64_t)i;
    bool data = memcmp(d, "desc", 4) == 0;
    uint64_t off = vd_get_le64(d + 16);
    uint64_t len = data ? VHDX_LOG_SECTOR : vd_get_le64(d + 8);
    if (!vd_range_ok(off, len, limit))
      return vd_set_error(EINVAL, "%s: entry %" PRIu64 " writes past its "
                          "LastFileOffset %" PRIu64, l->where, e.seq, limit);
    if (len == 0)
      continue;
    if (data && k >= VHDX_LOG_MAX_PAGES)
      return vd_set_error(EINVAL, "%s: active sequence too large (over %u "
                          "data sectors)", l->where, VHDX_LOG_MAX_PAGES);
    if (r->n % 64 == 0) {
      if (r->n >= 64 * (uint32_t)VHDX_LOG_MAX_PAGES)
        return vd_set_error(EINVAL, "%s: active sequence too large", l->where);
      struct vhdx_log_write *nw = realloc(r->w, (r->n + 64) * sizeof *nw);
      if (!nw)
        return vd_set_error(ENOMEM, "%s: out of memory", l->where);
      r->w = nw;
    }
    struct vhdx_log_write *w = &r->w[r->n];
    w->off = off;
    w->len = len;
    w->data = NULL;
    if (data) {
      if (!(w->data = malloc(VHDX_LOG_SECTOR)))
        return vd_set_error(ENOMEM, "%s: out of memory", l->where);
      memcpy(w->data, b + (dsec + k) * VHDX_LOG_SECTOR, VHDX_LOG_SECTOR);
      memcpy(w->data, d + 8, 8);         /* LeadingBytes */
      memcpy(w->data + 4092, d + 4, 4);  /* TrailingBytes */
      k++;
    }
    r->n++;
  }
  r->entries++;
  return 0;
}

int
vhdx_log_find(vhdx_read_fn read, void *opaque, const struct vhdx_header *h,
              uint64_t file_size, struct vhdx_replay *r, const char *where)
{
  memset(r, 0, sizeof *r);
  if (vhdx_guid_zero(h->log_guid))
    return 0;
  if (h->log_version != 0)
    return vd_set_error(EINVAL, "%s: log version %u (only 0 is known)",
                        where, h->log_version);
  if (h->log_length == 0 || h->log_length % VHDX_MiB ||
      h->log_offset < VHDX_MiB || h->log_offset % VHDX_MiB ||
      !vd_range_ok(h->log_offset, h->log_length, file_size))
    return vd_set_error(EINVAL, "%s: log at %" PRIu64 " length %u is not "
                        "inside the file or not 1 MiB aligned", where,
                        h->log_offset, h->log_length);

  struct vhdx_log l = { read, opaque, h, where, NULL, 0 };
  uint32_t loglen = h->log_length;
  /* The candidate active sequence: its first entry, head entry and the
   * head's fields. */
  bool have = false;
  uint32_t best_tail_pos = 0, best_count = 0;
  struct vhdx_entry best_head = { 0 };
  uint32_t tail = 0, old_tail = 0;
  int rc = 0;
  /* Entry positions of the current sequence (at most one per sector). */
  uint32_t *starts = malloc((loglen / VHDX_LOG_SECTOR) * sizeof *starts);
  if (!starts) {
    rc = vd_set_error(ENOMEM, "%s: out of memory", where);
    goto out;
  }
  /* Each pass starts a sequence at TAIL; the tail only grows until it
   * wraps, and the loop is capped at one pass per sector. */
  for (uint32_t pass = 0; pass <= loglen / VHDX_LOG_SECTOR; pass++) {
    uint32_t pos = tail, count = 0, span = 0;
    struct vhdx_entry head = { 0 }, e;
    while (span < loglen) {
      rc = vhdx_entry_check(&l, pos, &e);
      if (rc < 0)
        break;
      if (rc == 0 || (count && e.seq != head.seq + 1) ||
          e.len > loglen - span)
        break;
      starts[count++] = pos;
      head = e;
      span += e.len;
      pos = (uint32_t)(((uint64_t)pos + e.len) % loglen);
    }
    if (rc < 0)
      break;
    rc = 0;
    /* Valid when the head's Tail names an entry of the sequence: replay
     * starts there. */
    uint32_t first = count;
    for (uint32_t i = 0; i < count; i++)
      if (starts[i] == head.tail) {
        first = i;
        break;
      }
    bool valid = first < count;
    if (valid && (!have || head.seq > best_head.seq)) {
      have = true;
      best_head = head;
      best_tail_pos = head.tail;
      best_count = count - first;
    }
    old_tail = tail;
    if (!valid)
      tail = tail + VHDX_LOG_SECTOR >= loglen ? 0 : tail + VHDX_LOG_SECTOR;
    else
      tail = pos;
    if (tail <= old_tail)
      break;
  }
  free(starts);
  if (rc < 0)
    goto out;
  if (!have) {
    rc = vd_set_error(EINVAL, "%s: no valid log sequence (LogGuid set but "
                      "no entry matches)", where);
    goto out;
  }
  if (file_size < best_head.flushed) {
    rc = vd_set_error(EINVAL, "%s: file truncated (%" PRIu64 " bytes, the "
                      "log says at least %" PRIu64 ")", where, file_size,
                      best_head.flushed);
    goto out;
  }
  if (best_head.last > VHDX_MAX_FILE) {
    rc = vd_set_error(EINVAL, "%s: LastFileOffset %" PRIu64 " is too large",
                      where, best_head.last);
    goto out;
  }
  uint64_t limit = best_head.last > file_size ? best_head.last : file_size;
  uint32_t pos = best_tail_pos;
  for (uint32_t i = 0; i < best_count; i++) {
    struct vhdx_entry e;
    if ((rc = vhdx_entry_check(&l, pos, &e)) <= 0) {
      if (rc == 0)
        rc = vd_set_error(EIO, "%s: log entry changed while read", where);
      goto out;
    }
    if ((rc = vhdx_entry_collect(&l, pos, r, limit)) < 0)
      goto out;
    pos = (uint32_t)(((uint64_t)pos + e.len) % loglen);
  }
  r->last_file_offset = best_head.last;
  r->head_seq = best_head.seq;
out:
  free(l.buf);
  if (rc < 0)
    vhdx_replay_free(r);
  return rc;
}

void
vhdx_log_overlay(const struct vhdx_replay *r, uint8_t *buf, size_t len,
                 uint64_t off)
{
  /* In replay order, so a later write of the same bytes wins. */
  for (uint32_t i = 0; i < r->n; i++) {
    const struct vhdx_log_write *w = &r->w[i];
    uint64_t s = w->off > off ? w->off : off;
    uint64_t e = w->off + w->len < off + len ? w->off + w->len : off + len;
    if (s >= e)
      continue;
    if (w->data)
      memcpy(buf + (s - off), w->data + (s - w->off), e - s);
    else
      memset(buf + (s - off), 0, e - s);
  }
}

int
vhdx_log_apply(const struct vhdx_replay *r, struct vd_file *f,
               const char *where)
{
  int rc;
  for (uint32_t i = 0; i < r->n; i++) {
    const struct vhdx_log_write *w = &r->w[i];
    rc = w->data ? vd_file_pwrite(f, w->data, w->len, w->off)
                 : vd_file_zero(f, w->off, w->len, false, false);
    if (rc < 0)
      return vd_prefix_error(-rc, "%s: replay", where);
  }
  uint64_t size;
  if ((rc = vd_file_size(f, &size)) < 0)
    return rc;
  if (size < r->last_file_offset && !vd_file_is_blockdev(f) &&
      (rc = vd_file_truncate(f, r->last_file_offset)) < 0)
    return vd_prefix_error(-rc, "%s: replay", where);
  if ((rc = vd_file_flush(f)) < 0)
    return vd_prefix_error(-rc, "%s: replay", where);
  return 0;
}

void
vhdx_replay_free(struct vhdx_replay *r)
{
  for (uint32_t i = 0; i < r->n; i++)
    free(r->w[i].data);
  free(r->w);
  memset(r, 0, sizeof *r);
}
