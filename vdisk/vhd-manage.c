/* libvdisk — VHD management ops (struct vd_driver's truncate, compact,
 * make_empty, change_backing; commit is the engine's generic copy).  The
 * engine (vdisk/manage.c) has checked the arguments and that the device is
 * writable.  Each works through the driver's own paths (vd_pwrite,
 * vhd_read_own, vhd_free_block, flush) and rewrites metadata last, after
 * the data it describes is durable.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "vdisk/vhd.h"

static bool
is_zero(const uint8_t *b, size_t n)
{
  return n == 0 || (b[0] == 0 && memcmp(b, b + 1, n - 1) == 0);
}

/* Per-block scratch: the block's bytes and one "held" flag per sector. */
struct mg_buf {
  uint8_t *data;
  bool *held;
};

static int
mg_buf_init(struct mg_buf *b, uint32_t block_size, const char *path)
{
  b->data = malloc(block_size);
  b->held = malloc(block_size / VHD_SECTOR);
  if (!b->data || !b->held) {
    free(b->data);
    free(b->held);
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  }
  return 0;
}

static void
mg_buf_free(struct mg_buf *b)
{
  free(b->data);
  free(b->held);
}

/* ---- change backing ---- */

/* Write the parent pointer of C (open, writable) for NP at NP_PATH, or no
 * parent when NP is NULL. */
static int
mg_set_parent(struct vd_dev *c, const char *np_path, struct vd_dev *np)
{
  struct vhd_priv *p = c->priv;
  struct vhd_header h = p->header;
  int r;

  if (!np) {
    memset(h.parent_uuid, 0, sizeof h.parent_uuid);
    memset(h.parent_name, 0, sizeof h.parent_name);
    h.parent_timestamp = 0;
    memset(h.loc, 0, sizeof h.loc);
    struct vhd_header old = p->header;
    p->header = h;
    p->footer.type = VHD_TYPE_DYNAMIC;
    /* Footers first: a dynamic image ignores its header's parent fields,
     * while a differencing one without them would not open. */
    r = vhd_write_metadata(c, false, true);
    if (r == 0)
      r = vhd_write_metadata(c, true, false);
    /* The old locator payloads are now unreferenced: zero them. */
    for (int i = 0; r == 0 && i < VHD_NLOC; i++)
      if (old.loc[i].length)
        r = vd_file_zero(c->file, old.loc[i].offset, old.loc[i].length,
                         false, false);
    return r;
  }

  size_t paylen = 4 * PATH_MAX + 2 * VHD_SECTOR, used;
  uint8_t *payload = calloc(1, paylen);
  if (!payload)
    return vd_set_error(ENOMEM, "%s: out of memory", c->path);
  uint64_t off = 0;
  r = vhd_fill_parent(&h, c->path, np_path, np, &off, payload, paylen, &used);
  if (r < 0)
    goto out;
  /* Payloads go where the old W2ru/W2ku ones were if they fit there, or
   * else after the last block (the footer moves down first). */
  uint64_t need = used, have = 0, where = UINT64_MAX, top = 0;
  for (int i = 0; i < VHD_NLOC; i++) {
    const struct vhd_locator *l = &p->header.loc[i];
    if (!l->length)
      continue;
    uint64_t sp = vd_round_up(l->space > l->length ? l->space : l->length,
                              VHD_SECTOR);
    if (l->offset < where)
      where = l->offset;
    if (l->offset + sp > top)
      top = l->offset + sp;
    have += sp;
  }
  /* Reuse the old payloads' space only when it is one contiguous run
   * large enough; otherwise append. */
  if (where == UINT64_MAX || top - where != have || have < need) {
    pthread_mutex_lock(&p->alloc_lock);
    where = p->next_free;
    p->next_free += vd_round_up(need, VHD_SECTOR);
    r = vd_file_pwrite(c->file, p->footer_raw, VHD_FOOTER_SIZE, p->next_free);
    pthread_mutex_unlock(&p->alloc_lock);
    if (r < 0)
      goto out;
  } else {
    for (int i = 0; i < VHD_NLOC; i++)
      if (p->header.loc[i].length)
        vd_file_zero(c->file, p->header.loc[i].offset,
                     p->header.loc[i].length, false, false);
  }
  for (int i = 0; i < VHD_NLOC; i++)
    if (h.loc[i].length)
      h.loc[i].offset += where;
  r = vd_file_pwrite(c->file, payload, used, where);
  if (r == 0)
    r = vd_file_flush(c->file);
  if (r == 0) {
    /* A dynamic image given a parent becomes a differencing one: the
     * footers change too, after the header (vhd_write_metadata). */
    bool was_dynamic = p->footer.type == VHD_TYPE_DYNAMIC;
    p->header = h;
    p->footer.type = VHD_TYPE_DIFF;
    r = vhd_write_metadata(c, true, was_dynamic);
  }
out:
  free(payload);
  return r;
}

int
vhd_change_backing(struct vd_dev *dev, const char *backing,
                   struct vd_dev *bdev)
{
  struct vhd_priv *p = dev->priv;
  if (p->type == VHD_TYPE_FIXED)
    return vd_set_error(ENOTSUP, "%s: a fixed VHD cannot have a backing "
                        "file", dev->path);
  /* A UUID-less parent is reopened probing only formats that reference no
   * other file (vhd.c): anything else could never be reopened. */
  if (bdev && !vhd_priv_of(bdev) && !bdev->drv->leaf)
    return vd_set_error(EINVAL, "%s: %s is a '%s' image; a VHD can only "
                        "have a VHD, raw or vdz parent", dev->path, backing,
                        vd_format(bdev));
  return mg_set_parent(dev, backing, bdev);
}

/* ---- resize ---- */

static int
mg_resize_fixed(struct vd_dev *dev, uint64_t size)
{
  struct vhd_priv *p = dev->priv;
  uint64_t old = dev->size;
  int r;

  vhd_chs_for_size(size, &p->footer.cylinders, &p->footer.heads,
                   &p->footer.sectors);
  /* Original size too: libvhdi (vhdiinfo, vhdimount) reports that one. */
  p->footer.current_size = p->footer.original_size = size;
  vhd_footer_encode(&p->footer, p->footer_raw);
  r = vd_file_pwrite(dev->file, p->footer_raw, VHD_FOOTER_SIZE, size);
  /* Growing: the old footer becomes disk data, which must read zeros. */
  if (r == 0 && size > old && p->footer_pos < size)
    r = vd_file_zero(dev->file, p->footer_pos, VHD_FOOTER_SIZE, false, false);
  if (r == 0)
    r = vd_file_flush(dev->file);
  if (r == 0)
    r = vd_file_truncate(dev->file, size + VHD_FOOTER_SIZE);
  p->footer_pos = size;
  return r;
}

static int
mg_grow_bat(struct vd_dev *dev, uint32_t entries)
{
  struct vhd_priv *p = dev->priv;
  uint64_t bytes = vd_round_up((uint64_t)entries * 4, VHD_SECTOR);
  uint8_t *raw = malloc((size_t)bytes);
  uint32_t *bat = realloc(p->bat, sizeof *bat * ((size_t)entries + 1));
  uint8_t *full = realloc(p->full, entries / 8 + 1);
  uint8_t *dirty = realloc(p->bat_dirty, (size_t)(bytes / VHD_SECTOR) / 8 + 1);
  if (bat) p->bat = bat;
  if (full) p->full = full;
  if (dirty) p->bat_dirty = dirty;
  if (!raw || !bat || !full || !dirty) {
    free(raw);
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  }
  int r = vd_flush(dev);   /* no dirty BAT sectors from here on */
  if (r < 0) {
    free(raw);
    return r;
  }
  uint64_t old_off = p->bat_offset;
  uint64_t old_bytes = vd_round_up((uint64_t)p->bat_entries * 4, VHD_SECTOR);
  memset(full + p->bat_entries / 8 + 1, 0,
         entries / 8 - p->bat_entries / 8);
  memset(dirty, 0, (size_t)(bytes / VHD_SECTOR) / 8 + 1);
  for (uint32_t i = p->bat_entries; i < entries; i++)
    bat[i] = VHD_BAT_UNUSED;
  for (uint32_t i = 0; i < entries; i++)
    vd_put_be32(raw + 4 * (size_t)i, bat[i]);
  memset(raw + 4 * (size_t)entries, 0xFF, (size_t)bytes - 4 * (size_t)entries);
  /* The new table goes after the last block; the header points at it
   * only once it is durable; the old one is zeroed last. */
  uint64_t where = p->next_free;
  r = vd_file_pwrite(dev->file, p->footer_raw, VHD_FOOTER_SIZE, where + bytes);
  if (r == 0)
    r = vd_file_pwrite(dev->file, raw, (size_t)bytes, where);
  free(raw);
  if (r == 0)
    r = vd_file_flush(dev->file);
  if (r < 0)
    return r;
  p->next_free = where + bytes;
  p->bat_offset = where;
  p->bat_entries = entries;
  p->header.bat_offset = where;
  p->header.max_entries = entries;
  r = vhd_write_metadata(dev, true, false);
  if (r == 0)
    r = vd_file_zero(dev->file, old_off, old_bytes, false, false);
  return r;
}

int
vhd_truncate(struct vd_dev *dev, uint64_t size, unsigned flags)
{
  const char *path = dev->path;
  struct vhd_priv *p = dev->priv;
  uint8_t *buf = NULL;
  int r = 0;

  (void)flags;   /* the engine has checked VD_TRUNCATE_SHRINK */
  size = vd_round_up(size, VHD_SECTOR);
  if (size > VHD_MAX_SIZE)
    return vd_set_error(EFBIG, "%s: size %" PRIu64 " exceeds the VHD limit "
                        "of 2040 GiB", path, size);
  if (size == dev->size)
    return 0;

  /* Shrinking: everything past the new end must be unallocated or zeros. */
  if (size < dev->size) {
    size_t chunk = 1u << 20;
    buf = malloc(chunk);
    if (!buf) {
      r = vd_set_error(ENOMEM, "%s: out of memory", path);
      goto out;
    }
    for (uint64_t off = size; off < dev->size;) {
      struct vd_extent e;
      uint64_t n = dev->size - off;
      if ((r = vd_block_status(dev, off, n, &e)) < 0)
        goto out;
      if (!(e.flags & VD_EXT_ZERO) && e.depth == 0) {
        for (uint64_t o = off; o < off + e.length; o += chunk) {
          size_t k = off + e.length - o < chunk ? (size_t)(off + e.length - o)
                                                : chunk;
          if ((r = vd_pread(dev, buf, k, o)) < 0)
            goto out;
          if (!is_zero(buf, k)) {
            r = vd_set_error(ENOTEMPTY, "%s: cannot shrink to %" PRIu64
                             " bytes: data at offset %" PRIu64, path, size, o);
            goto out;
          }
        }
      }
      off += e.length;
    }
  }

  if (p->type == VHD_TYPE_FIXED) {
    if ((r = mg_resize_fixed(dev, size)) == 0)
      dev->size = size;
    goto out;
  }
  uint64_t need = (size + p->block_size - 1) / p->block_size;
  if (size < dev->size) {
    for (uint64_t blk = need; blk < p->nblocks; blk++)
      if ((r = vhd_free_block(dev, (uint32_t)blk)) < 0)
        goto out;
  } else if (need > p->bat_entries) {
    if (need > VHD_MAX_BAT_ENTRIES) {
      r = vd_set_error(EFBIG, "%s: too many blocks", path);
      goto out;
    }
    if ((r = mg_grow_bat(dev, (uint32_t)need)) < 0)
      goto out;
  }
  if ((r = vd_flush(dev)) < 0)
    goto out;
  /* Original size too: libvhdi (vhdiinfo, vhdimount) reports that one. */
  p->footer.current_size = p->footer.original_size = size;
  vhd_chs_for_size(size, &p->footer.cylinders, &p->footer.heads,
                   &p->footer.sectors);
  r = vhd_write_metadata(dev, false, true);
  if (r == 0) {
    /* The open device now describes the new size. */
    dev->size = size;
    p->nblocks = (uint32_t)need;
  }
out:
  free(buf);
  return r;
}

/* ---- compact ---- */

int
vhd_compact(struct vd_dev *dev, uint64_t *freed, vd_progress_fn progress,
            void *opaque)
{
  const char *path = dev->path;
  struct mg_buf b = { NULL, NULL };
  struct vhd_extent *ext = NULL;
  uint8_t *copy = NULL;
  struct vhd_priv *p = dev->priv;
  uint64_t before = p->next_free;
  int r;

  if (p->type == VHD_TYPE_FIXED)
    return vd_set_error(EINVAL, "%s: a fixed VHD has no blocks to compact",
                        path);

  /* 1. Free blocks that hold nothing. */
  if ((r = mg_buf_init(&b, p->block_size, path)) < 0)
    goto out;
  for (uint32_t blk = 0; blk < p->nblocks; blk++) {
    if (progress)
      progress(opaque, blk, 2 * (uint64_t)p->nblocks);
    if (__atomic_load_n(&p->bat[blk], __ATOMIC_ACQUIRE) == VHD_BAT_UNUSED)
      continue;
    uint64_t off = (uint64_t)blk * p->block_size;
    size_t len = dev->size - off < p->block_size ? (size_t)(dev->size - off)
                                                 : p->block_size;
    if ((r = vhd_read_own(dev, b.data, len, off, b.held)) < 0)
      goto out;
    bool empty = true;
    if (p->type == VHD_TYPE_DIFF)
      empty = is_zero((const uint8_t *)b.held, len / VHD_SECTOR);
    else
      empty = is_zero(b.data, len);
    if (empty && (r = vhd_free_block(dev, blk)) < 0)
      goto out;
  }
  if ((r = vd_flush(dev)) < 0)
    goto out;

  /* 2. Move the last blocks into the lowest gaps, in passes: a pass only
   * fills space that no BAT entry on disk references, then flushes (data,
   * then BAT), so a crash leaves either copy valid. */
  uint64_t slot = (uint64_t)p->bitmap_size + p->block_size;
  ext = malloc(sizeof *ext * ((size_t)p->bat_entries + VHD_NLOC + 4));
  copy = malloc((size_t)slot);
  if (!ext || !copy) {
    r = vd_set_error(ENOMEM, "%s: out of memory", path);
    goto out;
  }
  for (;;) {
    size_t n = 0;
    uint64_t meta_end = p->footer.data_offset + VHD_HEADER_SIZE;
    uint64_t bat_end = p->bat_offset +
                       vd_round_up((uint64_t)p->bat_entries * 4, VHD_SECTOR);
    if (bat_end > meta_end)
      meta_end = bat_end;
    for (int i = 0; i < VHD_NLOC; i++)
      if (p->header.loc[i].length) {
        uint64_t e = p->header.loc[i].offset +
                     vd_round_up(p->header.loc[i].length, VHD_SECTOR);
        if (e > meta_end)
          meta_end = e;
      }
    for (uint32_t i = 0; i < p->bat_entries; i++) {
      uint32_t e = __atomic_load_n(&p->bat[i], __ATOMIC_ACQUIRE);
      if (e == VHD_BAT_UNUSED)
        continue;
      uint64_t len = p->bitmap_size + (i < p->nblocks
        ? vd_round_up(dev->size - (uint64_t)i * p->block_size < p->block_size
                      ? dev->size - (uint64_t)i * p->block_size : p->block_size,
                      VHD_SECTOR)
        : p->block_size);
      ext[n++] = (struct vhd_extent){ (uint64_t)e * VHD_SECTOR, len, i };
    }
    qsort(ext, n, sizeof *ext, vhd_extent_cmp);
    /* Gaps between meta_end and the blocks, lowest first; move blocks
     * from the end into them. */
    size_t moved = 0, hi = n;
    uint64_t cursor = vd_round_up(meta_end, VHD_SECTOR);
    size_t lo = 0;
    while (hi > 0) {
      /* Find the next gap at or after cursor. */
      while (lo < hi && ext[lo].off < cursor + slot) {
        if (ext[lo].off + ext[lo].len > cursor)
          cursor = vd_round_up(ext[lo].off + ext[lo].len, VHD_SECTOR);
        lo++;
      }
      if (lo >= hi)
        break;
      struct vhd_extent *last = &ext[hi - 1];
      if (last->off <= cursor)
        break;
      /* [cursor, cursor+slot) is free and below the last block. */
      r = vd_file_pread(dev->file, copy, (size_t)last->len, last->off);
      if (r == 0)
        r = vd_file_pwrite(dev->file, copy, (size_t)last->len, cursor);
      if (r < 0)
        goto out;
      __atomic_store_n(&p->bat[last->index], (uint32_t)(cursor / VHD_SECTOR),
                       __ATOMIC_RELEASE);
      pthread_mutex_lock(&p->bat_lock);
      uint32_t sec = last->index / (VHD_SECTOR / 4);
      p->bat_dirty[sec / 8] = (uint8_t)(p->bat_dirty[sec / 8] | (1u << (sec % 8)));
      pthread_mutex_unlock(&p->bat_lock);
      cursor += slot;
      hi--;
      moved++;
    }
    if ((r = vd_flush(dev)) < 0)
      goto out;
    if (!moved)
      break;
    if (progress)
      progress(opaque, p->nblocks + (uint64_t)p->nblocks * (n - hi) / (n ? n : 1),
               2 * (uint64_t)p->nblocks);
  }

  /* 3. Footer right after the last referenced byte, then truncate. */
  {
    uint64_t end = p->footer.data_offset + VHD_HEADER_SIZE;
    uint64_t bat_end = p->bat_offset +
                       vd_round_up((uint64_t)p->bat_entries * 4, VHD_SECTOR);
    if (bat_end > end)
      end = bat_end;
    for (int i = 0; i < VHD_NLOC; i++)
      if (p->header.loc[i].length &&
          p->header.loc[i].offset + p->header.loc[i].length > end)
        end = p->header.loc[i].offset + p->header.loc[i].length;
    for (uint32_t i = 0; i < p->bat_entries; i++) {
      uint32_t e = p->bat[i];
      if (e == VHD_BAT_UNUSED)
        continue;
      uint64_t be = (uint64_t)e * VHD_SECTOR + p->bitmap_size +
        (i < p->nblocks && dev->size - (uint64_t)i * p->block_size < p->block_size
         ? dev->size - (uint64_t)i * p->block_size : p->block_size);
      if (be > end)
        end = be;
    }
    end = vd_round_up(end, VHD_SECTOR);
    if (end < p->next_free) {
      p->next_free = end;
      r = vhd_write_metadata(dev, false, true);
      if (r == 0)
        r = vd_file_truncate(dev->file, end + VHD_FOOTER_SIZE);
      if (r == 0)
        *freed = before - end;
    }
  }
  if (r == 0 && progress)
    progress(opaque, 1, 1);
out:
  free(ext);
  free(copy);
  mg_buf_free(&b);
  return r;
}

/* ---- make empty ---- */

int
vhd_make_empty(struct vd_dev *dev)
{
  struct vhd_priv *p = dev->priv;
  if (p->type == VHD_TYPE_FIXED)
    return vd_set_error(ENOTSUP, "%s: a fixed VHD has no blocks to free",
                        dev->path);
  /* Freed blocks read through to the parent (zeros without one); the BAT
   * reaches the disk at the flush. */
  for (uint32_t blk = 0; blk < p->bat_entries; blk++)
    if (__atomic_load_n(&p->bat[blk], __ATOMIC_ACQUIRE) != VHD_BAT_UNUSED)
      vhd_free_block(dev, blk);
  return vd_flush(dev);
}
