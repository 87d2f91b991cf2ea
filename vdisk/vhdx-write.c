/* libvdisk — VHDX creation and writes ([MS-VHDX] 2.2.2.1, 2.3; layout in
 * vhdx.h).
 *
 * Created images: headers (log at 1 MiB, 1 MiB long), region tables,
 * metadata region at 2 MiB, BAT at 3 MiB, blocks after it; a fixed image
 * has every block allocated in order (LeaveBlocksAllocated set).
 *
 * Crash safety, the VHDX way:
 *  - the first write of a session updates both headers (new FileWriteGuid
 *    and DataWriteGuid) before anything else is modified;
 *  - writes to a present block go in place;
 *  - a write to a block that is not present appends a new block at the end
 *    of the file (its unwritten bytes are the zeros past the old end, the
 *    file extended by writing its last bytes), publishes the new entry to
 *    readers at once and marks its BAT page pending, without a flush;
 *  - the next flush (vhdx_flush: also FUA writes and writethrough, which
 *    the core turns into flushes, and close), or any other log entry, or
 *    a write that finds VHDX_MAX_PAGES pages pending, commits them all
 *    (vhdx_commit_locked): writes the pages as one log entry (one data
 *    descriptor each, its own tail, the next sequence number) under a new
 *    LogGuid and flushes (the blocks and the grown file are durable before
 *    any live log entry names them: qemu's replay extends a file to
 *    LastFileOffset only when that is not a multiple of 1 MiB, so a live
 *    entry must never be the only record of the growth), then writes one
 *    header naming the LogGuid and flushes, writes the pages in place and
 *    flushes again before the log space can be reused; a second entry
 *    while the log is live flushes the file before it is written;
 *  - a flush, once everything is in place, writes a header without a
 *    LogGuid, so qemu and Windows open the image clean.  A flush cycle
 *    with new blocks so costs four syncs: entry, header, pages in place,
 *    header.  One header per update: a torn one leaves the other slot
 *    current, which names the state before the update.
 * A crash at any point leaves either the old BAT entries (blocks allocated
 * since the last flush are leaked space past the last one the BAT names:
 * their data was never acknowledged as durable) or a log whose replay
 * writes the new pages.  A commit that fails keeps its pages pending: the
 * next flush tries again, and fails when the file's flush failed
 * (vd_file_flush never forgets one).
 *
 * Differencing images: a write to a block that is not present, short of
 * the whole block, makes it partially present: the data goes into a new
 * block at the end of the file and is flushed, then one log entry carries
 * the sector bitmap pages with the written sectors' bits set, the BAT
 * page with the block's new entry and, for a chunk without one yet, the
 * entry of a new sector bitmap block (appended, zeros).  Later writes to
 * a partially present block go in place, flushed before their bits are
 * logged (these are not batched: the bits are read from the file, so they
 * would need a cache of pending bitmap pages); a whole-block write makes it
 * fully present, its BAT page pending as above.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "vdisk/io.h"
#include "vdisk/vhd.h"
#include "vdisk/vhdx.h"

#define VHDX_NEW_LOG_OFF   VHDX_MiB
#define VHDX_NEW_LOG_LEN   VHDX_MiB
#define VHDX_NEW_META_OFF  (2 * VHDX_MiB)
#define VHDX_NEW_BAT_OFF   (3 * VHDX_MiB)
#define VHDX_DEFAULT_BLOCK (32u << 20)

/* ---- create ---- */

static int
vhdx_create_opts(const char *path, const struct vd_create_args *args,
                 bool *fixed, uint32_t *bs, uint32_t *lss, bool *bs_set,
                 bool *lss_set)
{
  static const char *const known[] = { "subformat", "block_size",
                                       "logical_sector_size", NULL };
  char val[64];
  uint64_t v;
  int r = vd_opt_check(args->options, known, path);
  if (r < 0)
    return r;
  *fixed = false;
  *bs = VHDX_DEFAULT_BLOCK;
  *lss = 512;
  *bs_set = *lss_set = false;
  if ((r = vd_opt_get(args->options, "subformat", val, sizeof val)) < 0)
    return r;
  if (r == 1 && strcmp(val, "fixed") == 0)
    *fixed = true;
  else if (r == 1 && strcmp(val, "dynamic") != 0)
    return vd_set_error(EINVAL, "%s: invalid subformat '%s' (dynamic or "
                        "fixed)", path, val);
  if ((r = vd_opt_get(args->options, "block_size", val, sizeof val)) < 0)
    return r;
  if (r == 1) {
    if ((r = vd_parse_size(val, &v)) < 0)
      return r;
    if (v < VHDX_MIN_BLOCK || v > VHDX_MAX_BLOCK || (v & (v - 1)))
      return vd_set_error(EINVAL, "%s: block_size %s is not a power of two "
                          "between 1 MiB and 256 MiB", path, val);
    *bs = (uint32_t)v;
    *bs_set = true;
  }
  if ((r = vd_opt_get(args->options, "logical_sector_size", val,
                      sizeof val)) < 0)
    return r;
  if (r == 1) {
    if ((r = vd_parse_size(val, &v)) < 0)
      return r;
    if (v != 512 && v != 4096)
      return vd_set_error(EINVAL, "%s: logical_sector_size %s (512 or "
                          "4096)", path, val);
    *lss = (uint32_t)v;
    *lss_set = true;
  }
  if (args->backing && *fixed)
    return vd_set_error(EINVAL, "%s: a fixed VHDX cannot have a parent",
                        path);
  return 0;
}

/* The parent locator (2.6.2.6) of a new child at PATH over PARENT (open)
 * named BACKING: parent_linkage is the parent's DataWriteGuid, then the
 * parent's path relative to the child's folder and its absolute path (no
 * drive letter: this host has none).  A volume_path would name a volume
 * GUID, which a Linux host does not have: none is written.  *OUT is
 * malloc'd. */
int
vhdx_make_locator(const char *path, const char *backing,
                  struct vd_dev *parent, uint8_t **out, uint32_t *len)
{
  struct vhdx_priv *pp = parent->priv;
  char rel[PATH_MAX], abs[PATH_MAX], g[37], link[40];
  int r = vhd_locator_paths(path, backing, rel, sizeof rel, abs, sizeof abs);
  if (r < 0)
    return r;
  vhdx_guid_format(pp->header.data_write_guid, g);
  snprintf(link, sizeof link, "{%s}", g);
  const char *keys[3] = { "parent_linkage", "relative_path",
                          "absolute_win32_path" };
  const char *vals[3] = { link, rel, abs };
  size_t cap = 20 + 12 * 3 + 2 * (sizeof "absolute_win32_path" + sizeof link
                                  + strlen(rel) + strlen(abs)) * 2;
  if (!(*out = malloc(cap)))
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  int n = vhdx_locator_encode(keys, vals, 3, *out, cap);
  if (n < 0 || (uint64_t)n > VHDX_MiB - VHDX_META_TABLE_SIZE - 5 * 4096) {
    free(*out);
    *out = NULL;
    return vd_set_error(ENAMETOOLONG, "%s: parent path too long for the "
                        "parent locator", path);
  }
  *len = (uint32_t)n;
  return 0;
}

/* Open the parent named by ARGS for a new child at PATH and take from it
 * what the child inherits: the size when none is given, the block size
 * and sector size unless given (the sector size must match: reads fall
 * through sector by sector), and the locator. */
static int
vhdx_create_parent(const char *path, const struct vd_create_args *args,
                   uint64_t *size, uint32_t *bs, bool bs_set, uint32_t *lss,
                   bool lss_set, uint8_t **loc, uint32_t *loclen)
{
  struct vd_dev *parent;
  int r = vd_open(args->backing, args->backing_format, VD_OPEN_NOLOCK,
                  &parent);
  if (r < 0)
    return r;
  if (parent->drv != &vd_vhdx_driver) {
    r = vd_set_error(EINVAL, "%s: backing file %s is a '%s' image; a VHDX "
                     "can only have a VHDX parent (its parent locator names "
                     "VHDX files)", path, args->backing, vd_format(parent));
    goto out;
  }
  struct vhdx_priv *pp = parent->priv;
  if (lss_set && *lss != pp->meta.lss) {
    r = vd_set_error(EINVAL, "%s: logical_sector_size %u differs from the "
                     "parent's %u", path, *lss, pp->meta.lss);
    goto out;
  }
  *lss = pp->meta.lss;
  if (!bs_set)
    *bs = pp->meta.block_size;
  if (*size == 0)
    *size = parent->size;
  r = vhdx_make_locator(path, args->backing, parent, loc, loclen);
out:
  vd_close(parent);
  return r;
}

int
vhdx_create(const char *path, const struct vd_create_args *args)
{
  bool fixed, bs_set, lss_set;
  uint32_t bs, lss, loclen = 0;
  uint8_t *loc = NULL;
  int r = vhdx_create_opts(path, args, &fixed, &bs, &lss, &bs_set, &lss_set);
  if (r < 0)
    return r;
  uint64_t size = args->size;
  bool diff = args->backing != NULL;
  if (diff && (r = vhdx_create_parent(path, args, &size, &bs, bs_set, &lss,
                                      lss_set, &loc, &loclen)) < 0)
    return r;
  if (size == 0 || size > VHDX_MAX_SIZE || size % lss) {
    free(loc);
    return vd_set_error(EINVAL, "%s: size %" PRIu64 " must be a non-zero "
                        "multiple of %u up to 64 TiB", path, size, lss);
  }
  struct vhdx_meta m = { .block_size = bs, .leave_allocated = fixed,
                         .has_parent = diff, .disk_size = size, .lss = lss,
                         .pss = 4096 };
  uint64_t db, entries;
  uint32_t ratio;
  vhdx_bat_geometry(&m, &db, &ratio, &entries);
  uint64_t bat_len = (entries * 8 + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB;
  uint64_t first = VHDX_NEW_BAT_OFF + bat_len;
  uint8_t *buf = calloc(1, VHDX_RT_SIZE);   /* the largest piece below */
  uint64_t *bat = NULL;
  struct vd_file *f = NULL;
  if (!buf) {
    free(loc);
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  }
  r = vd_file_open(path, VD_FILE_RDWR | VD_FILE_CREATE | VD_FILE_TRUNC, &f);
  if (r < 0)
    goto out;

  /* 2.2.1 file type identifier. */
  memcpy(buf, "vhdxfile", 8);
  vhd_utf8_to_utf16("vdisk", buf + 8, 512, false);
  if ((r = vd_file_pwrite(f, buf, 520, 0)) < 0)
    goto out;
  /* 2.2.2 headers. */
  struct vhdx_header h = { .seq = 1, .version = 1,
                           .log_length = VHDX_NEW_LOG_LEN,
                           .log_offset = VHDX_NEW_LOG_OFF };
  vhd_uuid_generate(h.file_write_guid);
  vhd_uuid_generate(h.data_write_guid);
  for (int i = 0; i < 2; i++, h.seq++) {
    vhdx_header_encode(&h, buf);
    if ((r = vd_file_pwrite(f, buf, VHDX_HEADER_SIZE,
                            VHDX_HEADER_OFF(i))) < 0)
      goto out;
  }
  /* 2.2.3 region tables. */
  memset(buf, 0, VHDX_RT_SIZE);
  memcpy(buf, "regi", 4);
  vd_put_le32(buf + 8, 2);
  memcpy(buf + 16, vhdx_guid_bat, 16);
  vd_put_le64(buf + 32, VHDX_NEW_BAT_OFF);
  vd_put_le32(buf + 40, (uint32_t)bat_len);
  vd_put_le32(buf + 44, 1);
  memcpy(buf + 48, vhdx_guid_metadata, 16);
  vd_put_le64(buf + 64, VHDX_NEW_META_OFF);
  vd_put_le32(buf + 72, VHDX_MiB);
  vd_put_le32(buf + 76, 1);
  vd_put_le32(buf + 4, vhdx_checksum(buf, VHDX_RT_SIZE));
  for (int i = 0; i < 2; i++)
    if ((r = vd_file_pwrite(f, buf, VHDX_RT_SIZE, VHDX_RT_OFF(i))) < 0)
      goto out;
  /* 2.6 metadata: the table, then each item at 64 KiB + 4 KiB * i (the
   * parent locator, which may be longer, last). */
  const uint8_t *ids[6] = { vhdx_guid_file_params, vhdx_guid_disk_size,
                            vhdx_guid_page83, vhdx_guid_lss, vhdx_guid_pss,
                            vhdx_guid_parent_locator };
  uint8_t items[5][16] = { { 0 } };
  uint32_t lens[6] = { 8, 8, 16, 4, 4, loclen };
  uint32_t flags[6] = { 4, 6, 6, 6, 6, 4 };   /* IsRequired, IsVirtualDisk */
  int nitems = diff ? 6 : 5;
  vd_put_le32(items[0], bs);
  vd_put_le32(items[0] + 4, (fixed ? 1 : 0) | (diff ? 2 : 0));
  vd_put_le64(items[1], size);
  vhd_uuid_generate(items[2]);
  vd_put_le32(items[3], lss);
  vd_put_le32(items[4], m.pss);
  memset(buf, 0, VHDX_RT_SIZE);
  memcpy(buf, "metadata", 8);
  vd_put_le16(buf + 10, (uint16_t)nitems);
  for (int i = 0; i < nitems; i++) {
    uint8_t *e = buf + 32 + 32 * i;
    memcpy(e, ids[i], 16);
    vd_put_le32(e + 16, VHDX_META_TABLE_SIZE + 4096u * (uint32_t)i);
    vd_put_le32(e + 20, lens[i]);
    vd_put_le32(e + 24, flags[i]);
    if ((r = vd_file_pwrite(f, i < 5 ? items[i] : loc, lens[i],
                            VHDX_NEW_META_OFF +
                            VHDX_META_TABLE_SIZE + 4096u * (uint64_t)i)) < 0)
      goto out;
  }
  if ((r = vd_file_pwrite(f, buf, VHDX_META_TABLE_SIZE,
                          VHDX_NEW_META_OFF)) < 0)
    goto out;
  /* 2.5 BAT: a fixed image has every payload block, in order. */
  uint64_t end = first;
  if (fixed) {
    if (!(bat = calloc(entries, 8))) {
      r = vd_set_error(ENOMEM, "%s: out of memory", path);
      goto out;
    }
    for (uint64_t b = 0; b < db; b++, end += bs)
      vd_put_le64(&bat[b + b / ratio], end | VHDX_PB_FULLY_PRESENT);
    if ((r = vd_file_pwrite(f, bat, entries * 8, VHDX_NEW_BAT_OFF)) < 0)
      goto out;
  }
  if ((r = vd_file_truncate(f, end)) < 0)
    goto out;
  if ((r = vd_file_flush(f)) == 0)
    r = vd_file_sync_dir(path);
out:
  free(buf);
  free(bat);
  free(loc);
  vd_file_close(f);
  return r;
}

/* The layout vhdx_create makes (no parent): everything up to the BAT's
 * end, then one payload block per allocated block (all of them for a
 * fixed image). */
int
vhdx_measure(const struct vd_create_args *args, struct vd_dev *src,
             uint64_t *required, uint64_t *fully)
{
  bool fixed, bs_set, lss_set;
  uint32_t bs, lss, ratio;
  uint64_t db, entries, n;
  int r = vhdx_create_opts("measure", args, &fixed, &bs, &lss, &bs_set,
                           &lss_set);
  if (r < 0)
    return r;
  if (args->size == 0 || args->size > VHDX_MAX_SIZE || args->size % lss)
    return vd_set_error(EINVAL, "measure: size %" PRIu64 " must be a "
                        "non-zero multiple of %u up to 64 TiB", args->size,
                        lss);
  struct vhdx_meta m = { .block_size = bs, .disk_size = args->size,
                         .lss = lss, .pss = 4096 };
  vhdx_bat_geometry(&m, &db, &ratio, &entries);
  uint64_t first = VHDX_NEW_BAT_OFF +
                   (entries * 8 + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB;
  if (fixed)
    n = db;
  else if ((r = vd_measure_data_blocks(src, args->size, bs, &n)) < 0)
    return r;
  *required = first + n * bs;
  *fully = first + db * bs;
  return 0;
}

/* ---- the session and the log ---- */


/* The first write of a session: new FileWriteGuid and DataWriteGuid (the
 * disk's content is about to change), in both headers, before anything
 * else is modified.  The LogGuid stays zero until the first log entry
 * (vhdx_log_write_locked). */
int
vhdx_begin_locked(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  VD_ASSERT_HELD(&p->lock);
  if (p->session)
    return 0;
  if (p->header.log_length < 2 * VHDX_LOG_SECTOR || p->header.log_offset <
      VHDX_MiB)
    return vd_set_error(ENOTSUP, "%s: no usable log region for writes",
                        dev->path);
  vhd_uuid_generate(p->header.file_write_guid);
  vhd_uuid_generate(p->header.data_write_guid);
  int r = vhdx_write_headers(dev);
  if (r == 0)
    __atomic_store_n(&p->session, true, __ATOMIC_RELEASE);
  return r;
}

/* Write the N pages PG as one log entry (one data descriptor per page,
 * the entry its own tail, the next sequence number), flush, write them in
 * place, flush.  A log that is not active gets a new LogGuid: the entry
 * is written and flushed first, with everything written before it, and
 * only then does a header name the LogGuid (2.3.3: a header must never
 * name a LogGuid without a valid entry of it), so the entry is live only
 * once the blocks it names are durable.  Lock held, session begun. */
static int
vhdx_log_write_locked(struct vd_dev *dev, const struct vhdx_page *pg,
                      unsigned n, uint64_t flushed, uint64_t last)
{
  struct vhdx_priv *p = dev->priv;
  VD_ASSERT_HELD(&p->lock);
  /* After a failed header update a header naming the LogGuid may be on
   * disk: its entries must stay as they are. */
  if (p->hdr_err)
    return vhdx_hdr_failed(dev);
  uint32_t dsec = (64 + 32 * n + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR;
  uint32_t len = (dsec + n) * VHDX_LOG_SECTOR;
  if (n == 0 || n > VHDX_MAX_PAGES || len > p->header.log_length)
    return vd_set_error(ENOSPC, "%s: log of %u bytes too small for an entry "
                        "of %u pages", dev->path, p->header.log_length, n);
  uint8_t *ent = vd_alloc_aligned(len);
  if (!ent)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  /* Wrapping overwrites only entries whose pages are in place: each entry
   * ends with the in-place writes flushed. */
  if (p->log_pos + len > p->header.log_length)
    p->log_pos = 0;
  bool activate = !p->log_active;
  if (activate)
    vhd_uuid_generate(p->header.log_guid);
  uint64_t seq = ++p->log_seq;
  memset(ent, 0, len);
  memcpy(ent, "loge", 4);
  vd_put_le32(ent + 8, len);
  vd_put_le32(ent + 12, p->log_pos);          /* a sequence of its own */
  vd_put_le64(ent + 16, seq);
  vd_put_le32(ent + 24, n);
  memcpy(ent + 32, p->header.log_guid, 16);
  vd_put_le64(ent + 48, flushed / VHDX_MiB * VHDX_MiB);
  vd_put_le64(ent + 56, (last + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB);
  for (unsigned i = 0; i < n; i++) {
    uint8_t *d = ent + 64 + 32 * i;
    uint8_t *ds = ent + (dsec + i) * VHDX_LOG_SECTOR;
    memcpy(d, "desc", 4);
    memcpy(d + 4, pg[i].data + 4092, 4);
    memcpy(d + 8, pg[i].data, 8);
    vd_put_le64(d + 16, pg[i].off);
    vd_put_le64(d + 24, seq);
    memcpy(ds, "data", 4);
    vd_put_le32(ds + 4, (uint32_t)(seq >> 32));
    memcpy(ds + 8, pg[i].data + 8, 4084);
    vd_put_le32(ds + 4092, (uint32_t)seq);
  }
  vd_put_le32(ent + 4, vhdx_checksum(ent, len));
  int r = vd_file_pwrite(dev->file, ent, len, p->header.log_offset +
                         p->log_pos);
  if (r == 0)
    r = vd_file_flush(dev->file);
  if (activate) {
    if (r == 0)
      r = vhdx_write_header(dev);
    if (r == 0)
      p->log_active = true;
    else
      memset(p->header.log_guid, 0, 16);
  }
  for (unsigned i = 0; i < n && r == 0; i++)
    r = vd_file_pwrite(dev->file, pg[i].data, VHDX_LOG_SECTOR, pg[i].off);
  if (r == 0 && (r = vd_file_flush(dev->file)) == 0)
    p->log_pos += len;
  vd_free_aligned(ent);
  return r;
}

/* BAT entries about to change: NSET pairs of index and new value. */
struct vhdx_bat_set {
  uint64_t idx[2], val[2];
  unsigned n;
};

/* BAT page PAGE as the entries in memory make it, the N entries IDX[] set
 * to VAL[] in place of theirs, into PG (D: its 4 KiB).  Lock held. */
static void
vhdx_bat_page_locked(struct vhdx_priv *p, uint64_t page,
                     const uint64_t *idx, const uint64_t *val, unsigned n,
                     struct vhdx_page *pg, uint8_t *d)
{
  for (uint64_t i = 0; i < VHDX_LOG_SECTOR / 8; i++) {
    uint64_t e, at = page * (VHDX_LOG_SECTOR / 8) + i;
    e = at >= p->bat_entries ? 0
        : __atomic_load_n(&p->bat[at], __ATOMIC_ACQUIRE);
    for (unsigned j = 0; j < n; j++)
      if (idx[j] == at)
        e = val[j];
    vd_put_le64(d + 8 * i, e);
  }
  pg->off = p->bat_region.off + page * VHDX_LOG_SECTOR;
  pg->data = d;
}

/* Add the BAT pages holding the entries of S, with those entries changed,
 * to PG (*N pages, BUF room for them).  Lock held. */
static void
vhdx_bat_pages_locked(struct vhdx_priv *p, const struct vhdx_bat_set *s,
                      struct vhdx_page *pg, unsigned *n, uint8_t *buf)
{
  for (unsigned k = 0; k < s->n; k++) {
    uint64_t page = s->idx[k] * 8 / VHDX_LOG_SECTOR;
    bool have = false;
    for (unsigned j = 0; j < *n; j++)
      have |= pg[j].off == p->bat_region.off + page * VHDX_LOG_SECTOR;
    if (have)
      continue;
    vhdx_bat_page_locked(p, page, s->idx, s->val, s->n, &pg[*n],
                         buf + (size_t)*n * VHDX_LOG_SECTOR);
    (*n)++;
  }
}

/* ---- BAT pages pending until the next flush ---- */

int
vhdx_commit_locked(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  VD_ASSERT_HELD(&p->lock);
  unsigned n = p->npending;
  if (n == 0)
    return 0;
  uint8_t *buf = vd_alloc_aligned((size_t)n * VHDX_LOG_SECTOR);
  struct vhdx_page pg[VHDX_MAX_PAGES];
  uint64_t fsz;
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  for (unsigned i = 0; i < n; i++)
    vhdx_bat_page_locked(p, p->pending[i], NULL, NULL, 0, &pg[i],
                         buf + (size_t)i * VHDX_LOG_SECTOR);
  /* Every block the pages name is inside the file (appends happen under
   * the lock): the flush makes them and the growth durable, so the size
   * is FlushedFileOffset.  A log that is not active yet gets a new
   * LogGuid with this entry, which a header names only after the entry's
   * own flush: that flush is this one. */
  int r = vd_file_size(dev->file, &fsz);
  if (r == 0 && p->log_active)
    r = vd_file_flush(dev->file);
  if (r == 0 && (r = vhdx_log_write_locked(dev, pg, n, fsz, fsz)) == 0)
    p->npending = 0;
  vd_free_aligned(buf);
  return r;
}

/* vhdx.h */
int
vhdx_log_pages_locked(struct vd_dev *dev, const struct vhdx_page *pg,
                      unsigned n, uint64_t flushed, uint64_t last)
{
  int r = vhdx_commit_locked(dev);
  return r < 0 ? r : vhdx_log_write_locked(dev, pg, n, flushed, last);
}

/* Make room for BAT entry IDX's page among the pending ones: there
 * already, or a free slot, or else the pending pages are committed now.
 * Lock held. */
static int
vhdx_pending_room_locked(struct vd_dev *dev, uint64_t idx)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t page = idx * 8 / VHDX_LOG_SECTOR;
  for (unsigned i = 0; i < p->npending; i++)
    if (p->pending[i] == page)
      return 0;
  return p->npending < VHDX_MAX_PAGES ? 0 : vhdx_commit_locked(dev);
}

/* Block BLK becomes fully present at AT, whose data the caller has
 * written: readers see it at once, its BAT page is pending (room made by
 * vhdx_pending_room_locked).  Lock held. */
static void
vhdx_present_locked(struct vhdx_priv *p, uint64_t blk, uint64_t at)
{
  uint64_t idx = blk + blk / p->chunk_ratio, page = idx * 8 / VHDX_LOG_SECTOR;
  unsigned i = 0;
  while (i < p->npending && p->pending[i] != page)
    i++;
  if (i == p->npending)
    p->pending[p->npending++] = page;
  __atomic_store_n(&p->bat[idx], at | VHDX_PB_FULLY_PRESENT,
                   __ATOMIC_RELEASE);
}

/* Publish S's entries to readers, once their pages are in place. */
static void
vhdx_bat_publish(struct vhdx_priv *p, const struct vhdx_bat_set *s)
{
  for (unsigned k = 0; k < s->n; k++)
    __atomic_store_n(&p->bat[s->idx[k]], s->val[k], __ATOMIC_RELEASE);
}

/* Append LEN bytes of room at the end of the file, 1 MiB aligned, holding
 * BUF (N bytes at BOFF; the rest reads as zeros): *AT gets its offset.
 * The file grows by writing (not ftruncate): the data, then zeros at the
 * end when the data does not reach it, so the whole range lies inside the
 * file as other readers expect. */
static int
vhdx_append_locked(struct vd_dev *dev, uint64_t len, const uint8_t *buf,
                   uint64_t n, uint64_t boff, uint64_t *at)
{
  uint64_t fsz;
  int r = vd_file_size(dev->file, &fsz);
  if (r < 0)
    return r;
  *at = (fsz + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB;
  if (*at + len > VHDX_MAX_FILE || *at >> 20 >= (UINT64_C(1) << 44))
    return vd_set_error(EFBIG, "%s: file too large for another block",
                        dev->path);
  static const uint8_t zeros[VHDX_LOG_SECTOR];
  uint64_t tail = len - (boff + n);
  uint64_t z = tail < sizeof zeros ? tail : sizeof zeros;
  if ((n && (r = vd_file_pwrite(dev->file, buf, n, *at + boff)) < 0) ||
      (z && (r = vd_file_pwrite(dev->file, zeros, z, *at + len - z)) < 0))
    return r;
  return 0;
}

/* Give block BLK a place at the end of the file holding BUF (N bytes at
 * BOFF in the block; the rest reads as zeros) and record it fully
 * present, its BAT page pending.  Lock held. */
static int
vhdx_alloc_block_locked(struct vd_dev *dev, uint64_t blk, const uint8_t *buf,
                        uint64_t n, uint64_t boff)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t at;
  int r = vhdx_pending_room_locked(dev, blk + blk / p->chunk_ratio);
  if (r < 0 ||
      (r = vhdx_append_locked(dev, p->meta.block_size, buf, n, boff,
                              &at)) < 0)
    return r;
  p->file_size = at + p->meta.block_size;
  vhdx_present_locked(p, blk, at);
  return 0;
}

/* ---- differencing images: partially present blocks ---- */

/* Set the sector bitmap bits of sectors [FIRST, FIRST+COUNT) of block BLK
 * (sector bitmap block at SBOFF) in pages added to PG (BUF room); pages
 * whose bits are all set already are left out.  Lock held. */
static int
vhdx_sb_pages_locked(struct vd_dev *dev, uint64_t sboff, uint64_t blk,
                     uint64_t first, uint64_t count, struct vhdx_page *pg,
                     unsigned *n, uint8_t *buf)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t bit0 = (blk % p->chunk_ratio) * p->sectors_per_block + first;
  uint64_t bit1 = bit0 + count;              /* exclusive */
  const uint64_t pbits = VHDX_LOG_SECTOR * 8;
  for (uint64_t page = bit0 / pbits; page * pbits < bit1; page++) {
    uint8_t *d = buf + (size_t)*n * VHDX_LOG_SECTOR;
    int r = vhdx_fread(dev, d, VHDX_LOG_SECTOR,
                       sboff + page * VHDX_LOG_SECTOR);
    if (r < 0)
      return r;
    bool changed = false;
    uint64_t lo = page * pbits > bit0 ? page * pbits : bit0;
    uint64_t hi = (page + 1) * pbits < bit1 ? (page + 1) * pbits : bit1;
    for (uint64_t b = lo; b < hi; b++) {
      uint8_t *byte = d + (b - page * pbits) / 8, m = (uint8_t)(1u << (b % 8));
      if (!(*byte & m)) {
        *byte |= m;
        changed = true;
      }
    }
    if (!changed)
      continue;
    pg[*n].off = sboff + page * VHDX_LOG_SECTOR;
    pg[*n].data = d;
    (*n)++;
  }
  return 0;
}

/* Write BUF (N bytes at BOFF) into block BLK of a differencing image whose
 * entry is E (not present or partially present): the data goes into the
 * block (appended first if not present), is flushed (the sector bitmap
 * must never name sectors the file does not hold yet), then the sector
 * bitmap bits, the chunk's sector bitmap block (appended when it has none)
 * and the BAT entries go through the log in one entry.  Lock held. */
static int
vhdx_write_partial_locked(struct vd_dev *dev, uint64_t blk, uint64_t e,
                          const uint8_t *buf, uint64_t n, uint64_t boff)
{
  struct vhdx_priv *p = dev->priv;
  uint32_t bs = p->meta.block_size, lss = p->meta.lss;
  uint64_t sbidx = (blk / p->chunk_ratio) * (p->chunk_ratio + 1) +
                   p->chunk_ratio;
  uint64_t sbe = __atomic_load_n(&p->bat[sbidx], __ATOMIC_ACQUIRE);
  struct vhdx_bat_set s = { .n = 0 };
  uint64_t fsz, at, end;
  int r = vd_file_size(dev->file, &fsz);
  if (r < 0)
    return r;
  end = fsz;
  if (VHDX_BAT_STATE(sbe) != VHDX_SB_PRESENT) {
    if ((r = vhdx_append_locked(dev, VHDX_SB_SIZE, NULL, 0, 0, &at)) < 0)
      return r;
    sbe = at | VHDX_SB_PRESENT;
    s.idx[s.n] = sbidx;
    s.val[s.n++] = sbe;
    end = at + VHDX_SB_SIZE;
  }
  if (VHDX_BAT_STATE(e) == VHDX_PB_NOT_PRESENT) {
    if ((r = vhdx_append_locked(dev, bs, buf, n, boff, &at)) < 0)
      return r;
    s.idx[s.n] = blk + blk / p->chunk_ratio;
    s.val[s.n++] = at | VHDX_PB_PARTIALLY_PRESENT;
    end = at + bs;
  } else if ((r = vd_file_pwrite(dev->file, buf, n, VHDX_BAT_OFFSET(e) +
                                 boff)) < 0) {
    return r;
  }
  uint8_t *pages = vd_alloc_aligned((size_t)VHDX_MAX_PAGES * VHDX_LOG_SECTOR);
  struct vhdx_page pg[VHDX_MAX_PAGES];
  unsigned np = 0;
  if (!pages)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  /* A new sector bitmap block is all zeros in the file already. */
  r = vhdx_sb_pages_locked(dev, VHDX_BAT_OFFSET(sbe), blk, boff / lss,
                           n / lss, pg, &np, pages);
  if (r == 0 && np + 2 > VHDX_MAX_PAGES)
    r = vd_set_error(EIO, "%s: sector bitmap update too large", dev->path);
  if (r < 0)
    goto out;
  vhdx_bat_pages_locked(p, &s, pg, &np, pages);
  if (np == 0)
    goto out;                 /* every sector was this image's already */
  /* Data and growth durable before the log names them (as above). */
  if ((r = vd_file_flush(dev->file)) < 0 ||
      (r = vhdx_log_pages_locked(dev, pg, np, end, end)) < 0)
    goto out;
  if (end > p->file_size)
    p->file_size = end;
  vhdx_bat_publish(p, &s);
out:
  vd_free_aligned(pages);
  return r;
}

/* A partially present block written whole becomes fully present: the
 * data in place, then the entry, its BAT page pending.  Lock held. */
static int
vhdx_fill_partial_locked(struct vd_dev *dev, uint64_t blk, uint64_t e,
                         const uint8_t *buf)
{
  struct vhdx_priv *p = dev->priv;
  int r = vhdx_pending_room_locked(dev, blk + blk / p->chunk_ratio);
  if (r < 0 || (r = vd_file_pwrite(dev->file, buf, p->meta.block_size,
                                   VHDX_BAT_OFFSET(e))) < 0)
    return r;
  vhdx_present_locked(p, blk, VHDX_BAT_OFFSET(e));
  return 0;
}

/* ---- zero and unmapped blocks (discard, write-zeroes) ---- */

/* Whether block BLK, in the zero or unmapped state, may take back the
 * space at OFF its entry kept (2.5.1.1 leaves FileOffsetMB in place for
 * such blocks): inside the file, clear of the header section, the log,
 * the regions and every other entry's space.  A hostile entry must not
 * make a write land on metadata.  Lock held. */
static bool
vhdx_reusable_locked(struct vd_dev *dev, uint64_t blk, uint64_t off)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t bs = p->meta.block_size, me = blk + blk / p->chunk_ratio;
  if (off < VHDX_MiB || off + bs > p->file_size ||
      vhdx_overlap(off, bs, p->header.log_offset, p->header.log_length) ||
      vhdx_overlap(off, bs, p->bat_region.off, p->bat_region.len) ||
      vhdx_overlap(off, bs, p->meta_region.off, p->meta_region.len))
    return false;
  for (uint64_t i = 0; i < p->bat_entries; i++) {
    uint64_t e = __atomic_load_n(&p->bat[i], __ATOMIC_ACQUIRE);
    bool sb = i % (p->chunk_ratio + 1) == p->chunk_ratio;
    uint64_t o = VHDX_BAT_OFFSET(e), len = sb ? VHDX_SB_SIZE : bs;
    if (i != me && o && VHDX_BAT_STATE(e) != VHDX_PB_NOT_PRESENT &&
        vhdx_overlap(off, bs, o, len))
      return false;
  }
  return true;
}

/* Give block BLK (zero or unmapped) its old space at AT back, holding BUF
 * (N bytes at BOFF, zeros elsewhere): the space zeroed and written before
 * the entry says fully present, its BAT page pending.  Lock held. */
static int
vhdx_reuse_block_locked(struct vd_dev *dev, uint64_t blk, uint64_t at,
                        const uint8_t *buf, uint64_t n, uint64_t boff)
{
  struct vhdx_priv *p = dev->priv;
  int r = vhdx_pending_room_locked(dev, blk + blk / p->chunk_ratio);
  if (r < 0 ||
      (r = vd_file_zero(dev->file, at, p->meta.block_size, false,
                        false)) < 0 ||
      (r = vd_file_pwrite(dev->file, buf, n, at + boff)) < 0)
    return r;
  vhdx_present_locked(p, blk, at);
  return 0;
}

/* Put the whole blocks [B0, B1) into STATE (zero or unmapped), a BAT page
 * at a time through the log; their space stays recorded in the entries
 * (a later write reuses it) and is punched out of the file once the
 * entries are in place.  Blocks that already read as zeros without file
 * space in this layer are left alone.  Lock held. */
static int
vhdx_set_state_locked(struct vd_dev *dev, uint64_t b0, uint64_t b1,
                      unsigned state)
{
  struct vhdx_priv *p = dev->priv;
  const uint64_t per_page = VHDX_LOG_SECTOR / 8;
  uint32_t bs = p->meta.block_size;
  uint64_t *idx = malloc(per_page * sizeof *idx * 2);
  uint8_t *pg = vd_alloc_aligned(VHDX_LOG_SECTOR);
  int r = 0;
  if (!idx || !pg) {
    r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    goto out;
  }
  uint64_t *val = idx + per_page;
  for (uint64_t b = b0; b < b1 && r == 0;) {
    uint64_t page = (b + b / p->chunk_ratio) / per_page;
    unsigned n = 0;
    for (; b < b1 && (b + b / p->chunk_ratio) / per_page == page; b++) {
      uint64_t i = b + b / p->chunk_ratio;
      uint64_t e = __atomic_load_n(&p->bat[i], __ATOMIC_ACQUIRE);
      unsigned st = VHDX_BAT_STATE(e);
      bool held = st == VHDX_PB_FULLY_PRESENT ||
                  st == VHDX_PB_PARTIALLY_PRESENT;
      if (st == state ||
          (!held && st != VHDX_PB_NOT_PRESENT && state == VHDX_PB_ZERO) ||
          (st == VHDX_PB_NOT_PRESENT && !p->meta.has_parent))
        continue;           /* reads as zeros already, holds no space */
      idx[n] = i;
      val[n++] = (held || st == VHDX_PB_ZERO || st == VHDX_PB_UNMAPPED
                  ? VHDX_BAT_OFFSET(e) : 0) | state;
    }
    if (n == 0)
      continue;
    struct vhdx_page one;
    vhdx_bat_page_locked(p, page, idx, val, n, &one, pg);
    uint64_t fsz;
    if ((r = vd_file_size(dev->file, &fsz)) < 0 ||
        (r = vhdx_log_pages_locked(dev, &one, 1, fsz, fsz)) < 0)
      break;
    for (unsigned j = 0; j < n; j++) {
      uint64_t old = __atomic_exchange_n(&p->bat[idx[j]], val[j],
                                         __ATOMIC_ACQ_REL);
      unsigned st = VHDX_BAT_STATE(old);
      /* Give the space back to the host (reads of the block no longer
       * reach it); a file system that cannot keeps it allocated. */
      if ((st == VHDX_PB_FULLY_PRESENT || st == VHDX_PB_PARTIALLY_PRESENT) &&
          vd_file_punch(dev->file, VHDX_BAT_OFFSET(old), bs) < 0)
        vd_clear_error();
    }
  }
out:
  free(idx);
  vd_free_aligned(pg);
  return r;
}

/* The whole blocks inside [OFF, OFF+LEN): [*B0, *B1), the last block
 * counting whole when the range reaches the end of the disk. */
static void
vhdx_whole_blocks(struct vd_dev *dev, uint64_t off, uint64_t len,
                  uint64_t *b0, uint64_t *b1)
{
  struct vhdx_priv *p = dev->priv;
  uint32_t bs = p->meta.block_size;
  *b0 = (off + bs - 1) / bs;
  *b1 = off + len == dev->size ? p->data_blocks : (off + len) / bs;
  if (*b1 < *b0)
    *b1 = *b0;
}

/* Write zeros through pwrite over [OFF, OFF+LEN). */
static int
vhdx_write_zero_bytes(struct vd_dev *dev, uint64_t off, uint64_t len)
{
  static const uint8_t zeros[1u << 16];
  int r = 0;
  while (r == 0 && len) {
    uint64_t n = len < sizeof zeros ? len : sizeof zeros;
    r = vhdx_pwrite(dev, zeros, n, off, 0);
    off += n;
    len -= n;
  }
  return r;
}

/* Whether this layer reads [OFF, OFF+LEN) (inside one block) as zeros
 * without the parent: a block in a zero state, or not present in an
 * image without a parent. */
static bool
vhdx_reads_zero(struct vd_dev *dev, uint64_t off)
{
  struct vhdx_priv *p = dev->priv;
  unsigned st = VHDX_BAT_STATE(vhdx_payload_entry(p, off /
                                                  p->meta.block_size));
  return st == VHDX_PB_ZERO || st == VHDX_PB_UNMAPPED ||
         st == VHDX_PB_UNDEFINED ||
         (st == VHDX_PB_NOT_PRESENT && !p->meta.has_parent);
}

int
vhdx_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                  unsigned flags)
{
  struct vhdx_priv *p = dev->priv;
  uint32_t bs = p->meta.block_size;
  uint64_t b0, b1;
  if ((flags & VD_REQ_NO_HOLE) || p->meta.leave_allocated) {
    /* Stay allocated: zeros written (fixed images keep every block). */
    if (flags & VD_REQ_FAST_ZERO)
      return vd_set_error(ENOTSUP, "%s: zeros would be written slowly",
                          dev->path);
    return vhdx_write_zero_bytes(dev, off, len);
  }
  vhdx_whole_blocks(dev, off, len, &b0, &b1);
  int r = 0;
  /* The partial head and tail: zeros written where they do not read as
   * zeros already. */
  uint64_t head_end = b0 < b1 ? b0 * bs : off + len;
  for (uint64_t o = off; r == 0 && o < head_end;) {
    uint64_t n = (o / bs + 1) * bs - o;
    if (n > head_end - o)
      n = head_end - o;
    if (!vhdx_reads_zero(dev, o))
      r = vhdx_write_zero_bytes(dev, o, n);
    o += n;
  }
  if (r < 0 || b0 >= b1)
    return r;
  pthread_mutex_lock(&p->lock);
  if ((r = vhdx_begin_locked(dev)) == 0)
    r = vhdx_set_state_locked(dev, b0, b1, VHDX_PB_ZERO);
  pthread_mutex_unlock(&p->lock);
  uint64_t tail = b1 * bs;
  if (r == 0 && tail < off + len && !vhdx_reads_zero(dev, tail))
    r = vhdx_write_zero_bytes(dev, tail, off + len - tail);
  return r;
}

int
vhdx_discard(struct vd_dev *dev, uint64_t off, uint64_t len, unsigned flags)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t b0, b1;
  (void)flags;
  /* Advisory: only whole blocks, and never in a fixed image (its blocks
   * stay allocated).  In a differencing image an unmapped block might
   * show the parent's data to some readers: zero it instead. */
  if (p->meta.leave_allocated)
    return 0;
  vhdx_whole_blocks(dev, off, len, &b0, &b1);
  if (b0 >= b1)
    return 0;
  pthread_mutex_lock(&p->lock);
  int r = vhdx_begin_locked(dev);
  if (r == 0)
    r = vhdx_set_state_locked(dev, b0, b1, p->meta.has_parent
                              ? VHDX_PB_ZERO : VHDX_PB_UNMAPPED);
  pthread_mutex_unlock(&p->lock);
  return r;
}

/* Write into block BLK, whose entry is not fully present, under the lock
 * (allocation and sector bitmaps change metadata); the session is
 * begun. */
static int
vhdx_write_slow(struct vd_dev *dev, uint64_t blk, const uint8_t *b,
                uint64_t n, uint64_t boff)
{
  struct vhdx_priv *p = dev->priv;
  int r;
  pthread_mutex_lock(&p->lock);
  /* Someone else may have allocated meanwhile. */
  uint64_t e = vhdx_payload_entry(p, blk);
  unsigned st = VHDX_BAT_STATE(e);
  bool whole = n == p->meta.block_size;
  if (st == VHDX_PB_FULLY_PRESENT)
    r = vd_file_pwrite(dev->file, b, n, VHDX_BAT_OFFSET(e) + boff);
  else if (st == VHDX_PB_PARTIALLY_PRESENT && whole)
    r = vhdx_fill_partial_locked(dev, blk, e, b);
  else if (p->meta.has_parent && !whole &&
           (st == VHDX_PB_NOT_PRESENT || st == VHDX_PB_PARTIALLY_PRESENT))
    r = vhdx_write_partial_locked(dev, blk, e, b, n, boff);
  else if ((st == VHDX_PB_ZERO || st == VHDX_PB_UNMAPPED) &&
           vhdx_reusable_locked(dev, blk, VHDX_BAT_OFFSET(e)))
    r = vhdx_reuse_block_locked(dev, blk, VHDX_BAT_OFFSET(e), b, n, boff);
  else
    r = vhdx_alloc_block_locked(dev, blk, b, n, boff);
  pthread_mutex_unlock(&p->lock);
  return r;
}

int
vhdx_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
            unsigned flags)
{
  struct vhdx_priv *p = dev->priv;
  const uint8_t *b = buf;
  uint32_t bs = p->meta.block_size;
  int r = 0;
  (void)flags;              /* FUA: the core flushes after the write */
  if (!__atomic_load_n(&p->session, __ATOMIC_ACQUIRE)) {
    pthread_mutex_lock(&p->lock);
    r = vhdx_begin_locked(dev);
    pthread_mutex_unlock(&p->lock);
  }
  while (r == 0 && len) {
    uint64_t blk = off / bs, boff = off % bs;
    uint64_t n = bs - boff < len ? bs - boff : len;
    uint64_t e = vhdx_payload_entry(p, blk);
    if (VHDX_BAT_STATE(e) == VHDX_PB_FULLY_PRESENT)
      r = vd_file_pwrite(dev->file, b, n, VHDX_BAT_OFFSET(e) + boff);
    else
      r = vhdx_write_slow(dev, blk, b, n, boff);
    b += n;
    off += n;
    len -= n;
  }
  return r;
}

/* Covers every write acknowledged before it: their data with the file's
 * flush, their allocations with the commit of the pending pages (which
 * flushes first).  Without pending pages the flush runs outside the lock,
 * so allocations go on meanwhile. */
int
vhdx_flush(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  int r;
  pthread_mutex_lock(&p->lock);
  if (p->npending) {
    r = vhdx_commit_locked(dev);
  } else {
    pthread_mutex_unlock(&p->lock);
    r = vd_file_flush(dev->file);
    pthread_mutex_lock(&p->lock);
  }
  if (r == 0)
    r = vhdx_retire_log_locked(dev);
  pthread_mutex_unlock(&p->lock);
  return r;
}

int
vhdx_retire_log_locked(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  VD_ASSERT_HELD(&p->lock);
  if (!p->log_active)
    return 0;
  /* Every logged page is in place and flushed (each entry ends so): the
   * log can be retired so other readers open the image without a
   * replay. */
  memset(p->header.log_guid, 0, 16);
  int r = vhdx_write_header(dev);
  if (r == 0)
    p->log_active = false;
  return r;
}
