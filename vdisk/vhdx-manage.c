/* libvdisk — VHDX management ops (struct vd_driver's truncate, compact,
 * change_backing), [MS-VHDX] sections and layout in vhdx.h.  The engine
 * (vdisk/manage.c) has checked the arguments and that the device is
 * writable; no request is in flight (the BAT array is replaced).
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
 * is refused.
 *
 * Compact (dynamic images): blocks that read as zeros become ZERO with no
 * space and zero / unmapped blocks give up the space they kept (the BAT
 * pages through the log, then the space punched); then the last blocks
 * move into the lowest gaps (copies flushed first, into space no entry on
 * disk names, then the entries through the log); then the file is cut
 * after its last structure.  Fixed and differencing images are refused (a fixed image
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

/* Where the last structure ends (vhdx_uses), or 0 without memory. */
static uint64_t
vhdx_used_end(const struct vhdx_priv *p)
{
  struct vhdx_use *u = malloc((p->bat_entries + 4) * sizeof *u);
  uint64_t end = 0;
  if (!u)
    return 0;
  size_t n = vhdx_uses(p, u);
  for (size_t i = 0; i < n; i++)
    if (u[i].off + u[i].len > end)
      end = u[i].off + u[i].len;
  free(u);
  return end;
}

/* Cut the file after its last structure, flushed; *FREED (if not NULL)
 * gets the bytes cut.  The log is retired first: a replay after a crash
 * would extend the file again to an entry's LastFileOffset.  Lock held. */
static int
vhdx_cut_locked(struct vd_dev *dev, uint64_t *freed)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t end = vhdx_used_end(p), fsz;
  if (!end)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = vd_file_size(dev->file, &fsz);
  if (r < 0 || fsz <= end || (r = vhdx_retire_log_locked(dev)) < 0)
    return r;
  if ((r = vd_file_truncate(dev->file, end)) == 0 &&
      (r = vd_file_flush(dev->file)) == 0) {
    p->file_size = end;
    if (freed)
      *freed = fsz - end;
  }
  return r;
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
  if (old % bs == 0)
    return 0;          /* (and BLK would be past the last entry) */
  uint64_t e = vhdx_payload_entry(p, blk);
  if (VHDX_BAT_STATE(e) != VHDX_PB_FULLY_PRESENT)
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
  /* Written, not fallocated: a block holds its bytes in place. */
  static const uint8_t zeros[1u << 16];
  for (uint64_t o = from; r == 0 && o < to; o += sizeof zeros)
    r = vd_file_pwrite(dev->file, zeros, to - o < sizeof zeros
                       ? (size_t)(to - o) : sizeof zeros, o);
  return r < 0 ? r : vd_file_flush(dev->file);
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
  if (r == 0 && !grow)
    r = vhdx_cut_locked(dev, NULL);
  pthread_mutex_unlock(&p->lock);
  free(bat);
  return r;
}

/* ---- compact ---- */

/* Whether block BLK reads as zeros (its bytes inside the disk). */
static int
vhdx_block_zero(struct vd_dev *dev, uint64_t blk, uint8_t *buf, bool *zero)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t bs = p->meta.block_size, off = blk * bs;
  uint64_t end = off + bs < dev->size ? off + bs : dev->size;
  *zero = true;
  for (uint64_t o = off; *zero && o < end; o += VHDX_MiB) {
    size_t n = end - o < VHDX_MiB ? (size_t)(end - o) : VHDX_MiB;
    int r = vd_pread(dev, buf, n, o);
    if (r < 0)
      return r;
    *zero = vd_mirror_is_zero(buf, n);
  }
  return 0;
}

/* Step 1: fully present blocks that read as zeros become ZERO with no
 * space, and zero / unmapped / undefined blocks give up the space they
 * kept; the entries through the log, then the space punched.  Lock
 * held. */
static int
vhdx_drop_zero_locked(struct vd_dev *dev, uint8_t *buf,
                      vd_progress_fn progress, void *opaque)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t cr = p->chunk_ratio, bs = p->meta.block_size;
  uint64_t *bat = malloc(p->bat_entries * 8);
  int r = 0;
  if (!bat)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  memcpy(bat, p->bat, p->bat_entries * 8);
  for (uint64_t b = 0; r == 0 && b < p->data_blocks; b++) {
    uint64_t i = b + b / cr, e = bat[i];
    unsigned st = VHDX_BAT_STATE(e);
    bool zero = st != VHDX_PB_FULLY_PRESENT;
    if (progress)
      progress(opaque, b, 2 * p->data_blocks);
    if (!zero)
      r = vhdx_block_zero(dev, b, buf, &zero);
    if (zero && VHDX_BAT_OFFSET(e))
      bat[i] = st == VHDX_PB_FULLY_PRESENT ? VHDX_PB_ZERO : st;
  }
  if (r < 0 || (r = vhdx_bat_sync_locked(dev, bat, p->bat_entries, 0,
                                         p->bat_entries)) < 0) {
    free(bat);
    return r;
  }
  uint64_t *old = p->bat;
  p->bat = bat;
  for (uint64_t b = 0; b < p->data_blocks; b++) {
    uint64_t i = b + b / cr;
    if (VHDX_BAT_STATE(old[i]) == VHDX_PB_FULLY_PRESENT &&
        VHDX_BAT_OFFSET(bat[i]) == 0 &&
        vd_file_punch(dev->file, VHDX_BAT_OFFSET(old[i]), bs) < 0)
      vd_clear_error();      /* a file system that cannot keeps it */
  }
  free(old);
  return 0;
}

/* Copy BS bytes of the file from SRC to DST (zeros past its end, FSZ). */
static int
vhdx_copy_block(struct vd_dev *dev, uint64_t src, uint64_t dst, uint64_t bs,
                uint64_t fsz, uint8_t *buf)
{
  for (uint64_t o = 0; o < bs; o += VHDX_MiB) {
    size_t n = bs - o < VHDX_MiB ? (size_t)(bs - o) : VHDX_MiB, k = 0;
    if (src + o < fsz)
      k = fsz - (src + o) < n ? (size_t)(fsz - (src + o)) : n;
    memset(buf + k, 0, n - k);
    int r = k ? vd_file_pread(dev->file, buf, k, src + o) : 0;
    if (r < 0 || (r = vd_file_pwrite(dev->file, buf, n, dst + o)) < 0)
      return r;
  }
  return 0;
}

int
vhdx_fresh_copy_locked(struct vd_dev *dev, uint64_t idx, uint8_t *buf)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t bs = p->meta.block_size, e = p->bat[idx], fsz;
  int r = vd_file_size(dev->file, &fsz);
  if (r < 0)
    return r;
  uint64_t at = (fsz + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB;
  if (at + bs > VHDX_MAX_FILE)
    return vd_set_error(EFBIG, "%s: file too large for another block",
                        dev->path);
  if ((r = vhdx_copy_block(dev, VHDX_BAT_OFFSET(e), at, bs, fsz, buf)) < 0 ||
      (r = vd_file_flush(dev->file)) < 0)
    return r;
  p->bat[idx] = at | VHDX_BAT_STATE(e);
  if ((r = vhdx_bat_sync_locked(dev, p->bat, p->bat_entries, idx,
                                idx + 1)) < 0)
    p->bat[idx] = e;
  else
    p->file_size = at + bs;
  return r;
}

/* Step 2: the last payload blocks move into the lowest gaps a block fits
 * in, one pass: every copy written and flushed into space no entry on
 * disk names, then the entries through the log (a crash before leaves
 * the old copies named, the new ones leaked).  Lock held. */
static int
vhdx_relocate_locked(struct vd_dev *dev, uint8_t *buf)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t bs = p->meta.block_size, fsz;
  struct vhdx_use *u = malloc((p->bat_entries + 4) * sizeof *u);
  uint64_t *bat = malloc(p->bat_entries * 8);
  size_t moved = 0;
  int r = vd_file_size(dev->file, &fsz);
  if (!u || !bat) {
    r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    goto out;
  }
  if (r < 0)
    goto out;
  memcpy(bat, p->bat, p->bat_entries * 8);
  size_t n = vhdx_uses(p, u), lo = 0, hi = n;
  qsort(u, n, sizeof *u, vhdx_use_cmp);
  uint64_t cursor = 0;
  while (r == 0 && hi > 0) {
    /* The next gap of BS bytes at or after CURSOR, 1 MiB aligned. */
    while (lo < hi && u[lo].off < cursor + bs) {
      if (u[lo].off + u[lo].len > cursor)
        cursor = (u[lo].off + u[lo].len + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB;
      lo++;
    }
    const struct vhdx_use *last = &u[hi - 1];
    if (lo >= hi || last->entry == UINT64_MAX || last->off <= cursor ||
        strcmp(last->what, "payload block") != 0)
      break;
    r = vhdx_copy_block(dev, last->off, cursor, bs, fsz, buf);
    bat[last->entry] = cursor | VHDX_BAT_STATE(bat[last->entry]);
    cursor += bs;
    hi--;
    moved++;
  }
  if (r == 0 && moved && (r = vd_file_flush(dev->file)) == 0 &&
      (r = vhdx_bat_sync_locked(dev, bat, p->bat_entries, 0,
                                p->bat_entries)) == 0) {
    free(p->bat);
    p->bat = bat;
    bat = NULL;
  }
out:
  free(u);
  free(bat);
  return r;
}

int
vhdx_compact(struct vd_dev *dev, uint64_t *freed, vd_progress_fn progress,
             void *opaque)
{
  struct vhdx_priv *p = dev->priv;
  if (p->meta.has_parent)
    return vd_set_error(ENOTSUP, "%s: compacting a differencing VHDX is not "
                        "supported", dev->path);
  if (p->meta.leave_allocated)
    return vd_set_error(EINVAL, "%s: a fixed VHDX has no blocks to compact",
                        dev->path);
  uint8_t *buf = malloc(VHDX_MiB);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  pthread_mutex_lock(&p->lock);
  int r = vhdx_begin_locked(dev);
  if (r == 0)
    r = vhdx_drop_zero_locked(dev, buf, progress, opaque);
  if (r == 0)
    r = vhdx_relocate_locked(dev, buf);
  if (r == 0)
    r = vhdx_cut_locked(dev, freed);
  pthread_mutex_unlock(&p->lock);
  free(buf);
  if (r == 0 && progress)
    progress(opaque, 1, 1);
  return r;
}

/* ---- change backing ---- */

/* Where the parent locator may grow to: the offset of the next item in
 * the metadata table T (COUNT entries) after the locator's, or the
 * region's end; *IDX gets the locator's entry. */
static uint64_t
vhdx_locator_room(const struct vhdx_priv *p, const uint8_t *t,
                  uint32_t count, uint32_t *idx)
{
  uint64_t lo = p->meta.locator_off, room = p->meta_region.len;
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t *e = t + 32 + 32 * i;
    uint32_t off = vd_get_le32(e + 16);
    if (memcmp(e, vhdx_guid_parent_locator, 16) == 0 &&
        !(vd_get_le32(e + 24) & 1) && off == lo)
      *idx = i;
    else if (off > lo && off < room && vd_get_le32(e + 20))
      room = off;
  }
  return room - lo;
}

/* Write the locator LOC (LEN bytes) over the old one and its length into
 * the table entry IDX (table T, its copy), in one log entry.  Lock held. */
static int
vhdx_write_locator_locked(struct vd_dev *dev, uint8_t *t, uint32_t idx,
                          const uint8_t *loc, uint32_t len)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t base = p->meta_region.off, lo = p->meta.locator_off;
  uint64_t span = len > p->meta.locator_len ? len : p->meta.locator_len;
  uint64_t first = lo / VHDX_LOG_SECTOR * VHDX_LOG_SECTOR;
  uint64_t last = (lo + span + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR *
                  VHDX_LOG_SECTOR;
  unsigned n = (unsigned)((last - first) / VHDX_LOG_SECTOR);
  if (n + 1 > VHDX_MAX_PAGES)
    return vd_set_error(ENAMETOOLONG, "%s: parent locator too long for one "
                        "log entry", dev->path);
  uint8_t *buf = vd_alloc_aligned((size_t)(n + 1) * VHDX_LOG_SECTOR);
  struct vhdx_page pg[VHDX_MAX_PAGES];
  uint64_t fsz;
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = vhdx_fread(dev, buf, (size_t)n * VHDX_LOG_SECTOR, base + first);
  if (r == 0) {
    memset(buf + (lo - first), 0, span);
    memcpy(buf + (lo - first), loc, len);
    uint32_t tpage = (32 + 32 * idx) / VHDX_LOG_SECTOR * VHDX_LOG_SECTOR;
    uint8_t *tp = buf + (size_t)n * VHDX_LOG_SECTOR;
    vd_put_le32(t + 32 + 32 * idx + 20, len);
    memcpy(tp, t + tpage, VHDX_LOG_SECTOR);
    for (unsigned i = 0; i < n; i++)
      pg[i] = (struct vhdx_page){ base + first + i * VHDX_LOG_SECTOR,
                                  buf + (size_t)i * VHDX_LOG_SECTOR };
    pg[n] = (struct vhdx_page){ base + tpage, tp };
    if ((r = vd_file_size(dev->file, &fsz)) == 0)
      r = vhdx_log_pages_locked(dev, pg, n + 1, fsz, fsz);
  }
  vd_free_aligned(buf);
  return r;
}

int
vhdx_change_backing(struct vd_dev *dev, const char *backing,
                    struct vd_dev *bdev)
{
  struct vhdx_priv *p = dev->priv;
  if (!p->meta.has_parent)
    return vd_set_error(ENOTSUP, "%s: a VHDX without a parent cannot be "
                        "given one", dev->path);
  if (!backing)
    return vd_set_error(ENOTSUP, "%s: removing a VHDX's parent is not "
                        "supported", dev->path);
  if (bdev->drv != &vd_vhdx_driver)
    return vd_set_error(EINVAL, "%s: backing file %s is a '%s' image; a VHDX "
                        "can only have a VHDX parent", dev->path, backing,
                        vd_format(bdev));
  struct vhdx_priv *bp = bdev->priv;
  if (bp->meta.lss != p->meta.lss)
    return vd_set_error(EINVAL, "%s: backing file %s has %u-byte sectors, "
                        "the image %u-byte ones", dev->path, backing,
                        bp->meta.lss, p->meta.lss);
  uint8_t *loc = NULL, *t = malloc(VHDX_META_TABLE_SIZE);
  struct vhdx_locator *nl = calloc(1, sizeof *nl);
  uint32_t len, idx = UINT32_MAX;
  int r = 0;
  if (!t || !nl) {
    r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    goto out;
  }
  if ((r = vhdx_make_locator(dev->path, backing, bdev, &loc, &len)) < 0 ||
      (r = vhdx_locator_decode(loc, len, nl, dev->path)) < 0 ||
      (r = vhdx_fread(dev, t, VHDX_META_TABLE_SIZE,
                      p->meta_region.off)) < 0)
    goto out;
  uint32_t count = vd_get_le16(t + 10);
  uint64_t room = vhdx_locator_room(p, t, count > VHDX_META_MAX
                                    ? VHDX_META_MAX : count, &idx);
  if (idx == UINT32_MAX || len > room) {
    r = vd_set_error(ENAMETOOLONG, "%s: the new parent locator (%u bytes) "
                     "does not fit the %" PRIu64 " bytes before the next "
                     "metadata item", dev->path, len, room);
    goto out;
  }
  pthread_mutex_lock(&p->lock);
  if ((r = vhdx_begin_locked(dev)) == 0 &&
      (r = vhdx_write_locator_locked(dev, t, idx, loc, len)) == 0) {
    p->meta.locator_len = len;
    free(p->loc);
    p->loc = nl;
    nl = NULL;
  }
  pthread_mutex_unlock(&p->lock);
out:
  free(t);
  free(nl);
  free(loc);
  return r;
}
