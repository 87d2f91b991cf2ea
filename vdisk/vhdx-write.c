/* libvdisk — VHDX creation and writes ([MS-VHDX] 2.2.2.1, 2.3; layout in
 * vhdx.h).
 *
 * Created images: headers (log at 1 MiB, 1 MiB long), region tables,
 * metadata region at 2 MiB, BAT at 3 MiB, blocks after it; a fixed image
 * has every block allocated in order (LeaveBlocksAllocated set).
 *
 * Crash safety, the VHDX way:
 *  - the first write of a session writes an empty log entry with a new
 *    LogGuid (flushed), then updates both headers (new FileWriteGuid and
 *    DataWriteGuid, the LogGuid) before anything else is modified;
 *  - writes to a present block go in place;
 *  - a write to a block that is not present appends a new block at the end
 *    of the file (its unwritten bytes are the zeros past the old end, the
 *    file extended by writing its last bytes), flushes (the grown file is
 *    durable before any log entry names it: qemu's replay extends a file
 *    to LastFileOffset only when that is not a multiple of 1 MiB, so a
 *    log entry must never be the only record of the growth), then
 *    writes the BAT page holding the new entry as a log entry (one data
 *    descriptor, its own tail, the next sequence number), flushes, writes
 *    the page in place and flushes again before the log space can be
 *    reused, and only then publishes the entry to readers;
 *  - a flush, once everything is in place, rewrites the headers without a
 *    LogGuid, so qemu and Windows open the image clean.
 * A crash at any point leaves either the old BAT entry (the block not yet
 * visible: its data was never acknowledged) or a log whose replay writes
 * the new page.  Differencing images are not written (refused).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
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
                 bool *fixed, uint32_t *bs, uint32_t *lss)
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
  }
  if (args->backing)
    return vd_set_error(ENOTSUP, "%s: differencing VHDX creation (-b) is "
                        "not supported yet", path);
  return 0;
}

int
vhdx_create(const char *path, const struct vd_create_args *args)
{
  bool fixed;
  uint32_t bs, lss;
  int r = vhdx_create_opts(path, args, &fixed, &bs, &lss);
  if (r < 0)
    return r;
  uint64_t size = args->size;
  if (size == 0 || size > VHDX_MAX_SIZE || size % lss)
    return vd_set_error(EINVAL, "%s: size %" PRIu64 " must be a non-zero "
                        "multiple of %u up to 64 TiB", path, size, lss);
  struct vhdx_meta m = { .block_size = bs, .leave_allocated = fixed,
                         .disk_size = size, .lss = lss, .pss = 4096 };
  uint64_t db, entries;
  uint32_t ratio;
  vhdx_bat_geometry(&m, &db, &ratio, &entries);
  uint64_t bat_len = (entries * 8 + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB;
  uint64_t first = VHDX_NEW_BAT_OFF + bat_len;
  uint8_t *buf = calloc(1, VHDX_RT_SIZE);   /* the largest piece below */
  uint64_t *bat = NULL;
  struct vd_file *f = NULL;
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", path);
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
  /* 2.6 metadata: the table, then each item at 64 KiB + 4 KiB * i. */
  const uint8_t *ids[5] = { vhdx_guid_file_params, vhdx_guid_disk_size,
                            vhdx_guid_page83, vhdx_guid_lss, vhdx_guid_pss };
  uint8_t items[5][16] = { { 0 } };
  uint32_t lens[5] = { 8, 8, 16, 4, 4 };
  uint32_t flags[5] = { 4, 6, 6, 6, 6 };   /* IsRequired, IsVirtualDisk */
  vd_put_le32(items[0], bs);
  vd_put_le32(items[0] + 4, fixed ? 1 : 0);
  vd_put_le64(items[1], size);
  vhd_uuid_generate(items[2]);
  vd_put_le32(items[3], lss);
  vd_put_le32(items[4], m.pss);
  memset(buf, 0, VHDX_RT_SIZE);
  memcpy(buf, "metadata", 8);
  vd_put_le16(buf + 10, 5);
  for (int i = 0; i < 5; i++) {
    uint8_t *e = buf + 32 + 32 * i;
    memcpy(e, ids[i], 16);
    vd_put_le32(e + 16, VHDX_META_TABLE_SIZE + 4096u * (uint32_t)i);
    vd_put_le32(e + 20, lens[i]);
    vd_put_le32(e + 24, flags[i]);
    if ((r = vd_file_pwrite(f, items[i], lens[i], VHDX_NEW_META_OFF +
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
  vd_file_close(f);
  return r;
}

/* ---- the session and the log ---- */

/* The first write of a session: new FileWriteGuid and DataWriteGuid (the
 * disk's content is about to change) and a LogGuid for the entries to
 * come, in both headers, before anything else is modified. */
static int
vhdx_begin_locked(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  VD_ASSERT_HELD(&p->lock);
  if (p->session && p->log_active)
    return 0;
  if (!p->session) {
    vhd_uuid_generate(p->header.file_write_guid);
    vhd_uuid_generate(p->header.data_write_guid);
  }
  if (p->header.log_length < 2 * VHDX_LOG_SECTOR || p->header.log_offset <
      VHDX_MiB)
    return vd_set_error(ENOTSUP, "%s: no usable log region for writes",
                        dev->path);
  /* A header naming a LogGuid must never be durable without a valid
   * entry of that LogGuid (2.3.3: no valid sequence means a corrupt file),
   * so the log is first initialised with an empty entry that is its own
   * tail, flushed, and only then do the headers name it. */
  uint8_t g[16];
  vhd_uuid_generate(g);
  uint8_t *ent = vd_alloc_aligned(VHDX_LOG_SECTOR);
  uint64_t fsz;
  if (!ent)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = vd_file_size(dev->file, &fsz);
  if (r == 0) {
    memcpy(ent, "loge", 4);
    vd_put_le32(ent + 8, VHDX_LOG_SECTOR);
    vd_put_le32(ent + 12, 0);
    vd_put_le64(ent + 16, ++p->log_seq);
    memcpy(ent + 32, g, 16);
    vd_put_le64(ent + 48, fsz / VHDX_MiB * VHDX_MiB);
    vd_put_le64(ent + 56, (fsz + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB);
    vd_put_le32(ent + 4, vhdx_checksum(ent, VHDX_LOG_SECTOR));
    r = vd_file_pwrite(dev->file, ent, VHDX_LOG_SECTOR, p->header.log_offset);
  }
  vd_free_aligned(ent);
  if (r == 0)
    r = vd_file_flush(dev->file);
  if (r < 0)
    return r;
  memcpy(p->header.log_guid, g, 16);
  if ((r = vhdx_write_headers(dev)) < 0)
    return r;
  p->session = true;
  p->log_active = true;
  p->log_pos = VHDX_LOG_SECTOR;
  return 0;
}

/* Write the BAT page holding entry IDX, as it is in memory with E stored
 * at IDX, through the log, then in place.  Flushes twice.  FLUSHED: a file
 * size known durable; LAST: one all structures fit in (2.3.1.1). */
static int
vhdx_log_bat_page_locked(struct vd_dev *dev, uint64_t idx, uint64_t e,
                         uint64_t flushed, uint64_t last)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t page = idx * 8 / VHDX_LOG_SECTOR;
  uint64_t foff = p->bat_region.off + page * VHDX_LOG_SECTOR;
  uint8_t *ent = vd_alloc_aligned(3 * VHDX_LOG_SECTOR);
  if (!ent)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  uint8_t *pg = ent + 2 * VHDX_LOG_SECTOR;
  for (uint64_t i = 0; i < VHDX_LOG_SECTOR / 8; i++) {
    uint64_t k = page * (VHDX_LOG_SECTOR / 8) + i;
    uint64_t v = k >= p->bat_entries ? 0
                 : k == idx ? e : __atomic_load_n(&p->bat[k], __ATOMIC_ACQUIRE);
    vd_put_le64(pg + 8 * i, v);
  }
  /* The entry: a header sector with one data descriptor, then the data
   * sector (2.3.1). */
  uint32_t len = 2 * VHDX_LOG_SECTOR;
  /* Wrapping overwrites only entries whose pages are in place: each
   * allocation ends with the in-place write flushed. */
  if (p->log_pos + len > p->header.log_length)
    p->log_pos = 0;
  uint64_t seq = ++p->log_seq;
  uint8_t *hd = ent, *ds = ent + VHDX_LOG_SECTOR;
  memset(ent, 0, len);
  memcpy(hd, "loge", 4);
  vd_put_le32(hd + 8, len);
  vd_put_le32(hd + 12, p->log_pos);          /* a sequence of its own */
  vd_put_le64(hd + 16, seq);
  vd_put_le32(hd + 24, 1);
  memcpy(hd + 32, p->header.log_guid, 16);
  int r;
  vd_put_le64(hd + 48, flushed / VHDX_MiB * VHDX_MiB);
  vd_put_le64(hd + 56, (last + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB);
  uint8_t *d = hd + 64;
  memcpy(d, "desc", 4);
  memcpy(d + 4, pg + 4092, 4);
  memcpy(d + 8, pg, 8);
  vd_put_le64(d + 16, foff);
  vd_put_le64(d + 24, seq);
  memcpy(ds, "data", 4);
  vd_put_le32(ds + 4, (uint32_t)(seq >> 32));
  memcpy(ds + 8, pg + 8, 4084);
  vd_put_le32(ds + 4092, (uint32_t)seq);
  vd_put_le32(hd + 4, vhdx_checksum(ent, len));
  if ((r = vd_file_pwrite(dev->file, ent, len, p->header.log_offset +
                          p->log_pos)) < 0 ||
      (r = vd_file_flush(dev->file)) < 0 ||
      (r = vd_file_pwrite(dev->file, pg, VHDX_LOG_SECTOR, foff)) < 0 ||
      (r = vd_file_flush(dev->file)) < 0)
    goto out;
  p->log_pos += len;
out:
  vd_free_aligned(ent);
  return r;
}

/* Give block BLK a place at the end of the file holding BUF (N bytes at
 * BOFF in the block; the rest reads as zeros) and record it.  Lock held. */
static int
vhdx_alloc_block_locked(struct vd_dev *dev, uint64_t blk, const uint8_t *buf,
                        uint64_t n, uint64_t boff)
{
  struct vhdx_priv *p = dev->priv;
  uint32_t bs = p->meta.block_size;
  uint64_t fsz;
  int r = vd_file_size(dev->file, &fsz);
  if (r < 0)
    return r;
  uint64_t at = (fsz + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB;
  if (at + bs > VHDX_MAX_FILE || at >> 20 >= (UINT64_C(1) << 44))
    return vd_set_error(EFBIG, "%s: file too large for another block",
                        dev->path);
  /* The file grows by writing (not ftruncate): the data, then zeros at
   * the block's end when the data does not reach it, so the whole block
   * lies inside the file as other readers expect. */
  static const uint8_t zeros[VHDX_LOG_SECTOR];
  uint64_t tail = bs - (boff + n);
  uint64_t z = tail < sizeof zeros ? tail : sizeof zeros;
  if ((r = vd_file_pwrite(dev->file, buf, n, at + boff)) < 0 ||
      (z && (r = vd_file_pwrite(dev->file, zeros, z, at + bs - z)) < 0))
    return r;
  /* The grown file, block and data, is durable before the log names it
   * (see the top of this file): FlushedFileOffset is then the new size. */
  if ((r = vd_file_flush(dev->file)) < 0)
    return r;
  uint64_t idx = blk + blk / p->chunk_ratio;
  uint64_t e = at | VHDX_PB_FULLY_PRESENT;
  if ((r = vhdx_log_bat_page_locked(dev, idx, e, at + bs, at + bs)) < 0)
    return r;
  p->file_size = at + bs;
  __atomic_store_n(&p->bat[idx], e, __ATOMIC_RELEASE);
  return 0;
}

int
vhdx_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
            unsigned flags)
{
  struct vhdx_priv *p = dev->priv;
  const uint8_t *b = buf;
  uint32_t bs = p->meta.block_size;
  (void)flags;
  if (p->meta.has_parent)
    return vd_set_error(ENOTSUP, "%s: writing to a differencing VHDX is not "
                        "supported yet", dev->path);
  pthread_mutex_lock(&p->lock);
  int r = vhdx_begin_locked(dev);
  pthread_mutex_unlock(&p->lock);
  while (r == 0 && len) {
    uint64_t blk = off / bs, boff = off % bs;
    uint64_t n = bs - boff < len ? bs - boff : len;
    uint64_t e = vhdx_payload_entry(p, blk);
    if (VHDX_BAT_STATE(e) == VHDX_PB_FULLY_PRESENT) {
      r = vd_file_pwrite(dev->file, b, n, VHDX_BAT_OFFSET(e) + boff);
    } else {
      /* Allocate under the lock; someone else may have meanwhile. */
      pthread_mutex_lock(&p->lock);
      if ((r = vhdx_begin_locked(dev)) == 0) {
        e = vhdx_payload_entry(p, blk);
        if (VHDX_BAT_STATE(e) == VHDX_PB_FULLY_PRESENT)
          r = vd_file_pwrite(dev->file, b, n, VHDX_BAT_OFFSET(e) + boff);
        else
          r = vhdx_alloc_block_locked(dev, blk, b, n, boff);
      }
      pthread_mutex_unlock(&p->lock);
    }
    b += n;
    off += n;
    len -= n;
  }
  return r;
}

int
vhdx_flush(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  int r = vd_file_flush(dev->file);
  if (r < 0)
    return r;
  /* Every logged page is in place and flushed: the log can be retired so
   * other readers open the image without a replay. */
  pthread_mutex_lock(&p->lock);
  if (p->log_active) {
    memset(p->header.log_guid, 0, 16);
    r = vhdx_write_headers(dev);
    if (r == 0)
      p->log_active = false;
  }
  pthread_mutex_unlock(&p->lock);
  return r;
}
