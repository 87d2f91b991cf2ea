/* libvdisk — VHDX management ops (struct vd_driver's truncate), [MS-VHDX]
 * sections and layout in vhdx.h.  The engine (vdisk/manage.c) has checked
 * the arguments and that the device is writable; no request is in flight
 * (the BAT array is replaced).
 *
 * Every metadata change goes through the log (vhdx_log_pages_locked:
 * write-ahead, flushed, then in place, flushed), in an order where a crash
 * between two entries leaves an image that opens with the old size or the
 * new one:
 *  - growing: the bytes of a partial last block past the old end are
 *    zeroed in place (no reader sees them yet), then the BAT pages that
 *    will hold the new entries are made zero, then the virtual disk size
 *    item (2.6.2.2) changes in one entry;
 *  - shrinking: the size item first, then the entries past the new count
 *    are zeroed on disk, then the file is cut after its last structure.
 * The BAT region is not moved: a size needing more entries than it holds
 * is refused.  Fixed and differencing images are refused (a fixed image
 * would need every new block allocated, a differencing one the parent's
 * size to follow).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "vdisk/io.h"
#include "vdisk/mirror.h"
#include "vdisk/vhdx.h"

#define VHDX_BAT_PER_PAGE (VHDX_LOG_SECTOR / 8)

/* Make the BAT pages holding entries [I0, I1) on disk read as BAT (N
 * entries, zeros past them), through the log, VHDX_MAX_PAGES pages per
 * entry; pages that match already are left alone.  Lock held. */
static int
vhdx_bat_sync_locked(struct vd_dev *dev, const uint64_t *bat, uint64_t n,
                     uint64_t i0, uint64_t i1)
{
  struct vhdx_priv *p = dev->priv;
  uint8_t *buf = vd_alloc_aligned((size_t)(VHDX_MAX_PAGES + 1) *
                                  VHDX_LOG_SECTOR);
  struct vhdx_page pg[VHDX_MAX_PAGES];
  unsigned np = 0;
  int r = 0;
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  uint8_t *disk = buf + (size_t)VHDX_MAX_PAGES * VHDX_LOG_SECTOR;
  uint64_t last = (i1 + VHDX_BAT_PER_PAGE - 1) / VHDX_BAT_PER_PAGE;
  for (uint64_t page = i0 / VHDX_BAT_PER_PAGE; r == 0 && page < last;
       page++) {
    uint64_t foff = p->bat_region.off + page * VHDX_LOG_SECTOR;
    uint8_t *d = buf + (size_t)np * VHDX_LOG_SECTOR;
    for (uint64_t k = 0; k < VHDX_BAT_PER_PAGE; k++) {
      uint64_t i = page * VHDX_BAT_PER_PAGE + k;
      vd_put_le64(d + 8 * k, i < n ? bat[i] : 0);
    }
    if ((r = vhdx_fread(dev, disk, VHDX_LOG_SECTOR, foff)) < 0)
      break;
    if (memcmp(d, disk, VHDX_LOG_SECTOR) != 0)
      pg[np++] = (struct vhdx_page){ foff, d };
    if (np == VHDX_MAX_PAGES || (np && page + 1 == last)) {
      uint64_t fsz;
      if ((r = vd_file_size(dev->file, &fsz)) == 0)
        r = vhdx_log_pages_locked(dev, pg, np, fsz, fsz);
      np = 0;
    }
  }
  vd_free_aligned(buf);
  return r;
}

/* The virtual disk size item becomes SIZE, through the log.  Lock held. */
static int
vhdx_set_size_locked(struct vd_dev *dev, uint64_t size)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t off = p->meta_region.off + p->meta.size_off;
  uint64_t first = off / VHDX_LOG_SECTOR * VHDX_LOG_SECTOR, fsz;
  unsigned np = (off + 8 - first + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR;
  uint8_t *buf = vd_alloc_aligned(2 * VHDX_LOG_SECTOR);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = vhdx_fread(dev, buf, np * VHDX_LOG_SECTOR, first);
  if (r == 0) {
    struct vhdx_page pg[2] = { { first, buf },
                               { first + VHDX_LOG_SECTOR,
                                 buf + VHDX_LOG_SECTOR } };
    vd_put_le64(buf + (off - first), size);
    if ((r = vd_file_size(dev->file, &fsz)) == 0)
      r = vhdx_log_pages_locked(dev, pg, np, fsz, fsz);
  }
  vd_free_aligned(buf);
  return r;
}

/* Where the last structure ends: the header section, the log, the
 * regions and every entry's space (also what a zero or unmapped block
 * keeps for reuse), as check counts them. */
static uint64_t
vhdx_used_end(const struct vhdx_priv *p)
{
  uint64_t end = VHDX_MiB, cr = p->chunk_ratio;
  uint64_t ends[3] = { p->header.log_offset + p->header.log_length,
                       p->bat_region.off + p->bat_region.len,
                       p->meta_region.off + p->meta_region.len };
  for (int i = 0; i < 3; i++)
    if (ends[i] > end)
      end = ends[i];
  for (uint64_t i = 0; i < p->bat_entries; i++) {
    uint64_t e = p->bat[i], off = VHDX_BAT_OFFSET(e);
    unsigned st = VHDX_BAT_STATE(e);
    bool sb = i % (cr + 1) == cr;
    if (!off || (sb ? st != VHDX_SB_PRESENT
                    : st == VHDX_PB_NOT_PRESENT || st == VHDX_PB_UNDEFINED))
      continue;
    uint64_t len = sb ? VHDX_SB_SIZE : p->meta.block_size;
    if (off + len > end)
      end = off + len;
  }
  return end;
}

/* Shrinking to SIZE: refused when a block past it holds data, or when
 * the block it cuts reads non-zero bytes past it. */
static int
vhdx_shrink_ok(struct vd_dev *dev, uint64_t size)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t bs = p->meta.block_size, keep = (size + bs - 1) / bs;
  for (uint64_t b = keep; b < p->data_blocks; b++) {
    unsigned st = VHDX_BAT_STATE(vhdx_payload_entry(p, b));
    if (st == VHDX_PB_FULLY_PRESENT || st == VHDX_PB_PARTIALLY_PRESENT)
      return vd_set_error(ENOTEMPTY, "%s: cannot shrink to %" PRIu64 " bytes:"
                          " block %" PRIu64 " (offset %" PRIu64 ") past it "
                          "is allocated", dev->path, size, b, b * bs);
  }
  uint64_t end = keep * bs < dev->size ? keep * bs : dev->size;
  size_t chunk = end - size < VHDX_MiB ? (size_t)(end - size) : VHDX_MiB;
  uint8_t *buf = chunk ? malloc(chunk) : NULL;
  int r = 0;
  if (chunk && !buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  for (uint64_t o = size; r == 0 && o < end; o += chunk) {
    size_t n = end - o < chunk ? (size_t)(end - o) : chunk;
    if ((r = vd_pread(dev, buf, n, o)) == 0 && !vd_mirror_is_zero(buf, n))
      r = vd_set_error(ENOTEMPTY, "%s: cannot shrink to %" PRIu64 " bytes: "
                       "data at offset %" PRIu64, dev->path, size, o);
  }
  free(buf);
  return r;
}

/* Growing from a size inside a present block: the block's bytes past the
 * old end (which a shrink left, or another writer) are zeroed in the file
 * up to the new size and flushed before any reader can see them. */
static int
vhdx_zero_tail(struct vd_dev *dev, uint64_t size)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t bs = p->meta.block_size, old = dev->size, blk = old / bs;
  uint64_t e = vhdx_payload_entry(p, blk);
  if (old % bs == 0 || VHDX_BAT_STATE(e) != VHDX_PB_FULLY_PRESENT)
    return 0;
  uint64_t from = VHDX_BAT_OFFSET(e) + old % bs;
  uint64_t to = VHDX_BAT_OFFSET(e) + (size - blk * bs < bs ? size - blk * bs
                                                           : bs);
  uint64_t fsz;
  int r = vd_file_size(dev->file, &fsz);
  if (r < 0 || from >= fsz)
    return r;               /* past the end of the file: reads zeros */
  if (to > fsz)
    to = fsz;
  if ((r = vd_file_zero(dev->file, from, to - from, false, false)) == 0)
    r = vd_file_flush(dev->file);
  return r;
}

int
vhdx_truncate(struct vd_dev *dev, uint64_t size, unsigned flags)
{
  struct vhdx_priv *p = dev->priv;
  (void)flags;               /* the engine has checked VD_TRUNCATE_SHRINK */
  if (p->meta.has_parent)
    return vd_set_error(ENOTSUP, "%s: resizing a differencing VHDX is not "
                        "supported", dev->path);
  if (p->meta.leave_allocated)
    return vd_set_error(ENOTSUP, "%s: resizing a fixed VHDX is not "
                        "supported", dev->path);
  if (size == 0 || size > VHDX_MAX_SIZE || size % p->meta.lss)
    return vd_set_error(EINVAL, "%s: size %" PRIu64 " must be a non-zero "
                        "multiple of %u up to 64 TiB", dev->path, size,
                        p->meta.lss);
  if (size == dev->size)
    return 0;
  struct vhdx_meta m = p->meta;
  uint64_t db, entries;
  uint32_t ratio;
  m.disk_size = size;
  vhdx_bat_geometry(&m, &db, &ratio, &entries);
  if (entries > p->bat_region.len / 8)
    return vd_set_error(EFBIG, "%s: %" PRIu64 " bytes need %" PRIu64 " BAT "
                        "entries; the BAT region holds %u (moving it is not "
                        "supported)", dev->path, size, entries,
                        p->bat_region.len / 8);
  bool grow = size > dev->size;
  int r = grow ? vhdx_zero_tail(dev, size) : vhdx_shrink_ok(dev, size);
  if (r < 0)
    return r;
  uint64_t *bat = calloc(entries, 8), old = p->bat_entries;
  if (!bat)
    return vd_set_error(ENOMEM, "%s: out of memory for a BAT of %" PRIu64
                        " entries", dev->path, entries);
  memcpy(bat, p->bat, 8 * (entries < old ? entries : old));
  pthread_mutex_lock(&p->lock);
  r = vhdx_begin_locked(dev);
  if (r == 0 && grow)
    r = vhdx_bat_sync_locked(dev, bat, entries, old, entries);
  if (r == 0)
    r = vhdx_set_size_locked(dev, size);
  if (r == 0) {
    free(p->bat);
    p->bat = bat;
    bat = NULL;
    p->meta.disk_size = dev->size = size;
    p->data_blocks = db;
    p->bat_entries = entries;
  }
  if (r == 0 && !grow)
    r = vhdx_bat_sync_locked(dev, p->bat, entries, entries, old);
  uint64_t end = vhdx_used_end(p), fsz;
  if (r == 0 && !grow && (r = vd_file_size(dev->file, &fsz)) == 0 &&
      fsz > end && (r = vd_file_truncate(dev->file, end)) == 0 &&
      (r = vd_file_flush(dev->file)) == 0)
    p->file_size = end;
  pthread_mutex_unlock(&p->lock);
  free(bat);
  return r;
}
