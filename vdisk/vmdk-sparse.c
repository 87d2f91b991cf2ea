/* libvdisk — VMDK sparse extents (vmdk.h): the VMDK4 and COWD headers,
 * the grain directory and grain tables (a small cache), and compressed
 * grains (zlib, as qemu and VMware write them).
 *
 * Every field that sizes an allocation or a read is checked against the
 * file before it is used: the GD and every grain table it names must lie
 * inside the file, grains must start inside it.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "vdisk/endian.h"
#include "vdisk/io.h"
#include "vdisk/vmdk.h"

int
vmdk_sparse_header(const uint8_t *b, struct vmdk_sparse_hdr *h,
                   const char *where)
{
  memset(h, 0, sizeof *h);
  if (memcmp(b, "COWD", 4) == 0) {
    h->cowd = true;
    h->version = vd_get_le32(b + 4);
    h->flags = vd_get_le32(b + 8);
    h->capacity = vd_get_le32(b + 12);
    h->granularity = vd_get_le32(b + 16);
    h->gd_offset = vd_get_le32(b + 20);
    h->gd_entries = vd_get_le32(b + 24);
    h->gt_entries = 4096;
  } else if (memcmp(b, "KDMV", 4) == 0) {
    h->version = vd_get_le32(b + 4);
    h->flags = vd_get_le32(b + 8);
    h->capacity = vd_get_le64(b + 12);
    h->granularity = vd_get_le64(b + 20);
    h->desc_offset = vd_get_le64(b + 28);
    h->desc_size = vd_get_le64(b + 36);
    h->gt_entries = vd_get_le32(b + 44);
    h->gd_offset = vd_get_le64(b + 56);
    h->grain_offset = vd_get_le64(b + 64);
    h->compression = vd_get_le16(b + 77);
    if (h->version < 1 || h->version > 3)
      return vd_set_error(EINVAL, "%s: unsupported VMDK version %" PRIu32,
                          where, h->version);
    if ((h->flags & VMDK4_FLAG_NL_DETECT) &&
        memcmp(b + 73, "\n \r\n", 4) != 0)
      return vd_set_error(EINVAL, "%s: newline check bytes damaged (the "
                          "file went through a text-mode transfer?)", where);
    if (h->gt_entries == 0 || h->gt_entries > 512)
      return vd_set_error(EINVAL, "%s: %" PRIu32 " entries per grain table "
                          "(1..512 allowed)", where, h->gt_entries);
    if (h->compression > 1)
      return vd_set_error(EINVAL, "%s: unsupported compression algorithm %u",
                          where, h->compression);
    if (h->desc_size > VMDK_DESC_MAX / 512)
      return vd_set_error(EINVAL, "%s: embedded descriptor of %" PRIu64
                          " sectors is too large", where, h->desc_size);
  } else {
    return vd_set_error(EINVAL, "%s: not a VMDK sparse extent (no KDMV or "
                        "COWD magic)", where);
  }
  if (h->granularity == 0 || h->granularity > VMDK_MAX_GRAIN / 512)
    return vd_set_error(EINVAL, "%s: grain of %" PRIu64 " sectors (1..%u "
                        "supported)", where, h->granularity,
                        VMDK_MAX_GRAIN / 512);
  if (h->capacity > (UINT64_C(1) << 54))
    return vd_set_error(EINVAL, "%s: capacity of %" PRIu64 " sectors is too "
                        "large", where, h->capacity);
  uint64_t per_gt = h->granularity * h->gt_entries;
  uint64_t need = (h->capacity + per_gt - 1) / per_gt;
  if (h->cowd) {
    if (h->gd_entries < need)
      return vd_set_error(EINVAL, "%s: grain directory of %" PRIu64
                          " entries is too small for %" PRIu64 " sectors",
                          where, h->gd_entries, h->capacity);
  } else {
    h->gd_entries = need;
  }
  if (h->gd_entries > VMDK_MAX_GD)
    return vd_set_error(EINVAL, "%s: grain directory of %" PRIu64 " entries "
                        "is too large", where, h->gd_entries);
  return 0;
}

void
vmdk_sparse_free(struct vmdk_extent *e)
{
  free(e->gd);
  e->gd = NULL;
  for (unsigned i = 0; i < VMDK_GT_CACHE; i++) {
    free(e->gt[i].gte);
    e->gt[i].gte = NULL;
  }
  if (e->lock_init)
    pthread_mutex_destroy(&e->lock);
  e->lock_init = false;
}

int
vmdk_sparse_load(struct vmdk_extent *e, const struct vmdk_sparse_hdr *h,
                 const char *where)
{
  e->cowd = h->cowd;
  e->version = h->version;
  e->grain = h->granularity * 512;
  e->gt_entries = h->gt_entries;
  e->gd_entries = h->gd_entries;
  e->compressed = !h->cowd && h->compression == 1;
  e->markers = !h->cowd && (h->flags & VMDK4_FLAG_MARKER);
  e->zero_grain = !h->cowd && (h->flags & VMDK4_FLAG_ZERO_GRAIN);
  e->len = h->capacity * 512;
  pthread_mutex_init(&e->lock, NULL);
  e->lock_init = true;
  for (unsigned i = 0; i < VMDK_GT_CACHE; i++)
    e->gt[i].tag = UINT64_MAX;

  if (h->grain_offset > e->file_size / 512)
    return vd_set_error(EINVAL, "%s: file truncated: grains start at sector "
                        "%" PRIu64 ", the file has %" PRIu64, where,
                        h->grain_offset, e->file_size / 512);
  uint64_t gd_bytes = e->gd_entries * 4;
  if (h->gd_offset > (UINT64_C(1) << 54) ||
      !vd_range_ok(h->gd_offset * 512, gd_bytes, e->file_size))
    return vd_set_error(EINVAL, "%s: grain directory (%" PRIu64 " entries at "
                        "sector %" PRIu64 ") lies past the end of the file",
                        where, e->gd_entries, h->gd_offset);
  uint8_t *raw = malloc(gd_bytes ? gd_bytes : 1);
  e->gd = malloc((gd_bytes ? gd_bytes : 1));
  if (!raw || !e->gd) {
    free(raw);
    return vd_set_error(ENOMEM, "%s: out of memory for the grain directory",
                        where);
  }
  int r = gd_bytes ? vd_file_pread(e->file, raw, gd_bytes,
                                   h->gd_offset * 512) : 0;
  for (uint64_t i = 0; i < e->gd_entries && r == 0; i++) {
    uint32_t s = vd_get_le32(raw + 4 * i);
    e->gd[i] = s;
    if (s && !vd_range_ok((uint64_t)s * 512, (uint64_t)e->gt_entries * 4,
                          e->file_size))
      r = vd_set_error(EINVAL, "%s: grain table %" PRIu64 " (sector %" PRIu32
                       ") lies past the end of the file", where, i, s);
  }
  free(raw);
  return r;
}

int
vmdk_sparse_grain(struct vmdk_extent *e, uint64_t g,
                  enum vmdk_grain_kind *kind, uint64_t *host,
                  const char *where)
{
  uint64_t gdi = g / e->gt_entries;
  uint32_t gti = (uint32_t)(g % e->gt_entries), v;
  *host = 0;
  if (gdi >= e->gd_entries || e->gd[gdi] == 0) {
    *kind = VMDK_GRAIN_UNALLOC;
    return 0;
  }
  struct vmdk_gt_slot *s = &e->gt[gdi % VMDK_GT_CACHE];
  pthread_mutex_lock(&e->lock);
  bool hit = s->tag == gdi;
  if (hit)
    v = s->gte[gti];
  pthread_mutex_unlock(&e->lock);
  if (!hit) {
    size_t bytes = (size_t)e->gt_entries * 4;
    uint32_t *t = malloc(bytes);
    if (!t)
      return vd_set_error(ENOMEM, "%s: out of memory", where);
    int r = vd_file_pread(e->file, t, bytes, (uint64_t)e->gd[gdi] * 512);
    if (r < 0) {
      free(t);
      return r;
    }
    for (uint32_t i = 0; i < e->gt_entries; i++)
      t[i] = vd_get_le32(&t[i]);
    v = t[gti];
    pthread_mutex_lock(&e->lock);
    free(s->gte);
    s->gte = t;
    s->tag = gdi;
    pthread_mutex_unlock(&e->lock);
  }
  if (v == 0) {
    *kind = VMDK_GRAIN_UNALLOC;
    return 0;
  }
  if (v == 1 && e->zero_grain) {
    *kind = VMDK_GRAIN_ZERO;
    return 0;
  }
  *host = (uint64_t)v * 512;
  if (*host >= e->file_size)
    return vd_set_error(EINVAL, "%s: grain %" PRIu64 " (sector %" PRIu32
                        ") lies past the end of the file", where, g, v);
  *kind = e->compressed ? VMDK_GRAIN_COMPRESSED : VMDK_GRAIN_DATA;
  return 0;
}

int
vmdk_sparse_inflate(struct vmdk_extent *e, uint64_t host, uint8_t *out,
                    const char *where)
{
  /* A deflated grain is at most a little larger than the grain (zlib's
   * compressBound); a marker says its size, without markers the stream
   * ends by itself inside that bound. */
  uint64_t max = e->grain + e->grain / 1000 + 64;
  uint64_t data = host, len = max;
  if (e->markers) {
    uint8_t m[12];
    int r = vd_file_pread(e->file, m, sizeof m, host);
    if (r < 0)
      return r;
    len = vd_get_le32(m + 8);
    data = host + 12;
    if (len == 0 || len > max)
      return vd_set_error(EINVAL, "%s: compressed grain at byte %" PRIu64
                          " says %" PRIu64 " bytes (at most %" PRIu64 ")",
                          where, host, len, max);
    if (!vd_range_ok(data, len, e->file_size))
      return vd_set_error(EINVAL, "%s: compressed grain at byte %" PRIu64
                          " runs past the end of the file", where, host);
  } else if (data + len > e->file_size) {
    len = e->file_size - data;
  }
  uint8_t *in = malloc(len ? len : 1);
  if (!in)
    return vd_set_error(ENOMEM, "%s: out of memory", where);
  int r = vd_file_pread(e->file, in, len, data);
  if (r < 0) {
    free(in);
    return r;
  }
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit(&z) != Z_OK) {
    free(in);
    return vd_set_error(ENOMEM, "%s: zlib: out of memory", where);
  }
  z.next_in = in;
  z.avail_in = (uInt)len;
  z.next_out = out;
  z.avail_out = (uInt)e->grain;
  int zr = inflate(&z, Z_FINISH);
  uint64_t got = z.total_out;
  inflateEnd(&z);
  free(in);
  if (zr != Z_STREAM_END || got != e->grain)
    return vd_set_error(EIO, "%s: compressed grain at byte %" PRIu64 " does "
                        "not inflate to %" PRIu64 " bytes (%s)", where, host,
                        e->grain, zr == Z_STREAM_END ? "short" :
                        zr == Z_DATA_ERROR ? "corrupt data" : "truncated");
  return 0;
}
