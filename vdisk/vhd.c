/* libvdisk — VHD driver ("vpc", alias "vhd"): fixed, dynamic and
 * differencing images.  Layout and sentinels: vhd.h; decisions about
 * sizes, locators and crash safety: docs/vhd.md.
 *
 * Block allocation (crash-safe order, see docs/vhd.md):
 *   1. under alloc_lock: write the footer at the new end of file, then the
 *      block's bitmap where the old footer was (the data area between is
 *      a hole past the old end of file, so it reads as zeros);
 *   2. write the caller's data into the block;
 *   3. publish the BAT entry in memory and mark its BAT sector dirty.
 * flush: fdatasync (all blocks and footers durable), then write the dirty
 * BAT sectors snapshotted before that fdatasync, then fdatasync again.  So
 * the BAT on disk only ever points at blocks whose bytes are durable; a
 * crash leaves at worst unreferenced blocks (leaks).  A power cut may also
 * keep an appended block but not the footer after it: the copy at offset
 * 0 is sound, and a read-write open puts the tail copy back
 * (vhd_repair_tail).  A failed fdatasync fails every later flush (io.c),
 * so no BAT sector is written after one.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vdisk/endian.h"
#include "vdisk/parent.h"
#include "vdisk/vhd.h"

static const char *const vhd_aliases[] = { "vhd", NULL };

/* ---- small helpers ---- */

static inline uint32_t
bat_get(struct vhd_priv *p, uint32_t blk)
{
  return __atomic_load_n(&p->bat[blk], __ATOMIC_ACQUIRE);
}

static inline bool
full_get(struct vhd_priv *p, uint32_t blk)
{
  return (__atomic_load_n(&p->full[blk / 8], __ATOMIC_ACQUIRE) >>
          (blk % 8)) & 1;
}

static inline void
full_set(struct vhd_priv *p, uint32_t blk, bool on)
{
  uint8_t bit = (uint8_t)(1u << (blk % 8));
  if (on)
    __atomic_fetch_or(&p->full[blk / 8], bit, __ATOMIC_RELEASE);
  else
    __atomic_fetch_and(&p->full[blk / 8], (uint8_t)~bit, __ATOMIC_RELEASE);
}

static inline bool
bm_test(const uint8_t *bm, uint32_t s)
{
  return (bm[s / 8] >> (7 - s % 8)) & 1;
}

static inline void
bm_set(uint8_t *bm, uint32_t s)
{
  bm[s / 8] = (uint8_t)(bm[s / 8] | (0x80u >> (s % 8)));
}

/* Sectors of block BLK that lie inside the virtual disk. */
static uint32_t
vhd_valid_sectors(struct vd_dev *dev, uint32_t blk)
{
  struct vhd_priv *p = dev->priv;
  uint64_t start = (uint64_t)blk * p->block_size;
  uint64_t left = dev->size - start;
  return left >= p->block_size ? p->spb : (uint32_t)(left / VHD_SECTOR);
}

static bool
bm_all_set(const uint8_t *bm, uint32_t n)
{
  uint32_t i;
  for (i = 0; i + 8 <= n; i += 8)
    if (bm[i / 8] != 0xFF)
      return false;
  for (; i < n; i++)
    if (!bm_test(bm, i))
      return false;
  return true;
}

static void
vhd_mark_dirty(struct vhd_priv *p, uint32_t blk)
{
  uint32_t sec = blk / (VHD_SECTOR / 4);
  pthread_mutex_lock(&p->bat_lock);
  p->bat_dirty[sec / 8] = (uint8_t)(p->bat_dirty[sec / 8] | (1u << (sec % 8)));
  pthread_mutex_unlock(&p->bat_lock);
}

/* ---- probe ---- */

static int
vhd_probe(const struct vd_probe_data *pd)
{
  if (pd->head_len >= 8 && memcmp(pd->head, "conectix", 8) == 0)
    return 100;
  if (pd->tail && memcmp(pd->tail, "conectix", 8) == 0)
    return 100;
  if (pd->tail && memcmp(pd->tail + 1, "conectix", 8) == 0)
    return 90;   /* 511-byte footer of a pre-2004 image */
  return 0;
}

/* ---- parent resolution ----
 *
 * The rules (docs/vhd.md, "Parent lookup and trust"):
 *  - a child that records a parent UUID opens its parent as a VHD (never
 *    probed) whose UUID matches; a child with a zero parent UUID (vdisk's
 *    non-VHD base) probes its parent among formats that reference no other
 *    file (raw, vdz);
 *  - candidates from the locators are resolved with realpath and must be
 *    regular files inside the child's folder tree (VD_PARENT_CONFINED),
 *    checked with stat before any open, so a FIFO or a device never opens;
 *  - the operator's backing override (dev->opts.backing, top image only)
 *    replaces the lookup and is exempt from the folder rule;
 *  - a parent already in the chain is a loop; chains are at most
 *    VHD_MAX_CHAIN deep.  Both found through dev->child links, not
 *    thread-local state.
 */

static bool
vhd_uuid_zero(const uint8_t *u)
{
  static const uint8_t z[16];
  return memcmp(u, z, 16) == 0;
}

static void
vhd_slashes(char *s)
{
  for (; *s; s++)
    if (*s == '\\')
      *s = '/';
}

/* Read locator I's payload as a UTF-8 path into OUT (Windows separators
 * turned into '/').  Returns 0, or -1 if it is absent or unusable. */
static int
vhd_locator_read(struct vd_dev *dev, const struct vhd_locator *l, char *out,
                 size_t outlen)
{
  uint64_t fsz;
  if (l->length == 0 || l->length > 65536 || l->offset == 0 ||
      vd_file_size(dev->file, &fsz) < 0 || !vd_range_ok(l->offset, l->length, fsz))
    return -1;
  uint8_t *buf = malloc(l->length);
  if (!buf)
    return -1;
  int r = vd_file_pread(dev->file, buf, l->length, l->offset);
  if (r == 0)
    r = vhd_utf16_to_utf8(buf, l->length, false, out, outlen) < 0 ? -1 : 0;
  free(buf);
  if (r == 0)
    vhd_slashes(out);
  return r == 0 && out[0] ? 0 : -1;
}

static int
vhd_join(char *out, size_t outlen, const char *dir, const char *rel)
{
  int n;
  while (rel[0] == '.' && rel[1] == '/')
    rel += 2;
  if (rel[0] == '/' || strcmp(dir, ".") == 0)
    n = snprintf(out, outlen, "%s", rel);
  else
    n = snprintf(out, outlen, "%s/%s", dir, rel);
  return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/* Candidate parent paths, in the order the issue asks: relative locators,
 * absolute locators, then the parent name beside the child. */
static int
vhd_parent_candidates(struct vd_dev *dev, char (*cand)[PATH_MAX], int max)
{
  struct vhd_priv *p = dev->priv;
  char tmp[PATH_MAX], dir[PATH_MAX];
  int n = 0;

  snprintf(tmp, sizeof tmp, "%s", dev->path);
  snprintf(dir, sizeof dir, "%s", dirname(tmp));

  static const char *const order[] = { "W2ru", "W2ku" };
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < VHD_NLOC && n < max; i++) {
      if (memcmp(p->header.loc[i].code, order[k], 4) != 0)
        continue;
      if (vhd_locator_read(dev, &p->header.loc[i], tmp, sizeof tmp) < 0)
        continue;
      const char *path = tmp;
      if (k == 1 && path[0] && path[1] == ':')
        path += 2;   /* drop a Windows drive letter */
      if (vhd_join(cand[n], PATH_MAX, dir, path) == 0)
        n++;
    }
  if (n < max &&
      vhd_utf16_to_utf8(p->header.parent_name, sizeof p->header.parent_name,
                        true, tmp, sizeof tmp) > 0) {
    vhd_slashes(tmp);
    const char *base = strrchr(tmp, '/') ? strrchr(tmp, '/') + 1 : tmp;
    if (*base && strcmp(base, ".") && strcmp(base, "..") &&
        vhd_join(cand[n], PATH_MAX, dir, base) == 0)
      n++;
  }
  return n;
}

/* Open CAND (checked) as DEV's parent.  Returns 0 with p->parent set, 1 if
 * it is a VHD whose UUID does not match (*GOT gets its UUID), or -errno. */
static int
vhd_try_parent(struct vd_dev *dev, const char *cand, bool override,
               char *got)
{
  struct vhd_priv *p = dev->priv;
  bool want_vhd = !vhd_uuid_zero(p->header.parent_uuid);
  struct vd_open_args a = {
    .flags = dev->open_flags & (VD_OPEN_DIRECT | VD_OPEN_NOLOCK),
    .parent_policy = dev->opts.parent_policy,
  };
  /* The format is the child's to say, never the parent bytes': a VHD for a
   * UUID, else only formats that reference no other file.  The operator's
   * backing_format wins over both. */
  if (dev->opts.backing_format && (override || !dev->child))
    a.format = dev->opts.backing_format;
  else if (want_vhd)
    a.format = "vpc";
  else
    a.flags |= VD_OPEN_PROBE_LEAF;
  struct vd_dev *parent;
  int r = override ? vd_open_parent_operator(dev, cand, &a, &parent)
                   : vd_open_parent(dev, cand, &a, &parent);
  /* Only the top image prefixes, so an error deep in a long chain stays
   * one readable line naming the image where it happened. */
  if (r < 0)
    return dev->child ? r : vd_prefix_error(-r, "%s: parent", dev->path);
  struct vhd_priv *pp = vhd_priv_of(parent);
  if (want_vhd && pp && memcmp(pp->footer.uuid, p->header.parent_uuid, 16)) {
    vhd_uuid_format(pp->footer.uuid, got);
    vd_close(parent);
    return 1;
  }
  p->parent = parent;
  snprintf(p->parent_path, sizeof p->parent_path, "%s", cand);
  snprintf(p->parent_format, sizeof p->parent_format, "%s",
           vd_format(parent));
  return 0;
}

static int vhd_open_parent_from(struct vd_dev *dev, char (*cand)[PATH_MAX],
                                char (*real)[PATH_MAX], int n, bool override,
                                bool lookup_only);

/* Find (and unless LOOKUP_ONLY, open) DEV's parent.  LOOKUP_ONLY fills
 * parent_path with the candidate that passes the checks, opening nothing
 * (VD_OPEN_NOPARENT), and never fails. */
static int
vhd_open_parent(struct vd_dev *dev, bool lookup_only)
{
  enum { MAXC = 2 * VHD_NLOC + 1 };
  /* On the heap: this recurses once per chain level. */
  char (*cand)[PATH_MAX] = malloc(2 * MAXC * sizeof *cand);
  if (!cand)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  /* The backing override names the top image's parent only. */
  bool override = dev->opts.backing && !dev->child;
  int n;
  if (override) {
    snprintf(cand[0], PATH_MAX, "%s", dev->opts.backing);
    n = 1;
  } else {
    n = vhd_parent_candidates(dev, cand, MAXC);
  }
  int r = vhd_open_parent_from(dev, cand, cand + MAXC, n, override,
                               lookup_only);
  free(cand);
  return r;
}

static int
vhd_open_parent_from(struct vd_dev *dev, char (*cand)[PATH_MAX],
                     char (*real)[PATH_MAX], int n, bool override,
                     bool lookup_only)
{
  struct vhd_priv *p = dev->priv;
  char want[37], got[37] = "", mismatch[PATH_MAX] = "", dirbuf[PATH_MAX];
  struct vd_parent_refusal ref = { .err = 0 };
  const char *dir = vd_parent_real_dir(dev, dirbuf) == 0 ? dirbuf : NULL;

  vhd_uuid_format(p->header.parent_uuid, want);
  if (n == 0)
    return lookup_only ? 0
           : vd_set_error(ENOENT, "%s: differencing image names no parent",
                          dev->path);
  for (int i = 0; i < n; i++) {
    bool seen = false;
    int r = vd_parent_candidate_ok(dev, cand[i], real[i], override, dir, &ref);
    if (r == 1 || (r < 0 && lookup_only)) {
      real[i][0] = '\0';
      continue;
    }
    if (r < 0)
      return r;
    for (int j = 0; j < i; j++)
      seen |= strcmp(real[i], real[j]) == 0;
    if (seen)
      continue;
    if (lookup_only) {
      snprintf(p->parent_path, sizeof p->parent_path, "%s", cand[i]);
      snprintf(p->parent_format, sizeof p->parent_format, "%s",
               dev->opts.backing_format ? dev->opts.backing_format
               : vhd_uuid_zero(p->header.parent_uuid) ? "" : "vpc");
      return 0;
    }
    r = vhd_try_parent(dev, cand[i], override, got);
    if (r <= 0)
      return r;
    if (!mismatch[0])
      snprintf(mismatch, sizeof mismatch, "%s", cand[i]);
  }
  if (lookup_only) {
    snprintf(p->parent_named, sizeof p->parent_named, "%s", cand[0]);
    return 0;
  }
  if (mismatch[0])
    return vd_set_error(EINVAL, "%s: parent UUID mismatch: %s has %s, "
                        "the child expects %s", dev->path, mismatch, got, want);
  if (ref.err && ref.err != ENOENT)
    return vd_set_error(ref.err, "%s: parent %s %s", dev->path, ref.path,
                        ref.why);
  return vd_set_error(ENOENT, "%s: parent image not found (tried %s%s)",
                      dev->path, cand[0], n > 1 ? " and others" : "");
}

/* ---- open / close ---- */

/* struct vd_driver's replace_backing (also vd_open_over's adoption, and
 * vhd_detach_parent with NEWPARENT NULL). */
static struct vd_dev *
vhd_replace_backing(struct vd_dev *dev, struct vd_dev *newparent)
{
  struct vhd_priv *p = dev->priv;
  struct vd_dev *old = p->parent;
  if (old)
    old->child = NULL;
  p->parent = newparent;
  p->parent_path[0] = p->parent_format[0] = '\0';
  p->parent_named[0] = '\0';
  if (newparent) {
    newparent->child = dev;
    snprintf(p->parent_path, sizeof p->parent_path, "%s",
             newparent->real ? newparent->real : newparent->path);
    snprintf(p->parent_format, sizeof p->parent_format, "%s",
             vd_format(newparent));
  }
  return old;
}

/* Take dev->adopt_parent (vd_open_over) as the parent, after the checks a
 * lookup would make of it: the parent the image records (a VHD by UUID;
 * a UUID-less image only a format that references no other file), and
 * not already in this chain. */
static int
vhd_adopt_parent(struct vd_dev *dev)
{
  struct vhd_priv *p = dev->priv;
  struct vd_dev *parent = dev->adopt_parent;
  struct vhd_priv *pp = vhd_priv_of(parent);
  bool want_vhd = !vhd_uuid_zero(p->header.parent_uuid);
  if (want_vhd ? !pp || memcmp(pp->footer.uuid, p->header.parent_uuid, 16)
               : !parent->drv->leaf)
    return vd_set_error(EINVAL, "%s: %s is not the parent this image "
                        "records", dev->path, parent->path);
  if (parent->child)
    return vd_set_error(EBUSY, "%s: %s is already another image's parent",
                        dev->path, parent->path);
  dev->adopt_parent = NULL;
  vhd_replace_backing(dev, parent);
  return 0;
}

struct vd_dev *
vhd_detach_parent(struct vd_dev *dev)
{
  return vhd_priv_of(dev) ? vhd_replace_backing(dev, NULL) : NULL;
}

static void
vhd_close(struct vd_dev *dev)
{
  struct vhd_priv *p = dev->priv;
  vd_close(p->parent);
  p->parent = NULL;
  free(p->bat);
  free(p->full);
  free(p->bat_dirty);
  if (p->locks_init) {
    pthread_mutex_destroy(&p->alloc_lock);
    pthread_mutex_destroy(&p->bat_lock);
    pthread_mutex_destroy(&p->flush_lock);
    for (int i = 0; i < VHD_NSTRIPES; i++)
      pthread_mutex_destroy(&p->stripe[i]);
  }
}

int
vhd_extent_cmp(const void *a, const void *b)
{
  const struct vhd_extent *x = a, *y = b;
  return x->off < y->off ? -1 : x->off > y->off;
}

/* Read and validate the BAT; set next_free. */
static int
vhd_load_bat(struct vd_dev *dev, uint64_t fsz, uint64_t tail_pos)
{
  struct vhd_priv *p = dev->priv;
  const char *path = dev->path;
  uint64_t bat_bytes = vd_round_up((uint64_t)p->bat_entries * 4, VHD_SECTOR);
  uint64_t meta_end = p->footer.data_offset + VHD_HEADER_SIZE;
  uint64_t bat_end;
  uint8_t *raw;
  uint32_t nalloc = 0;
  int r;

  if (vd_add_overflow(p->bat_offset, (uint64_t)p->bat_entries * 4, &bat_end) ||
      bat_end > fsz)
    return vd_set_error(EINVAL, "%s: BAT (%" PRIu32 " entries at offset %"
                        PRIu64 ") extends past end of file", path,
                        p->bat_entries, p->bat_offset);
  if (p->bat_offset < meta_end && bat_end > p->footer.data_offset)
    return vd_set_error(EINVAL, "%s: BAT at offset %" PRIu64
                        " overlaps the dynamic header", path, p->bat_offset);
  p->bat = malloc((size_t)p->bat_entries * 4 + 4);
  raw = malloc((size_t)bat_bytes);
  p->full = calloc(1, p->bat_entries / 8 + 1);
  p->bat_dirty = calloc(1, (size_t)(bat_bytes / VHD_SECTOR) / 8 + 1);
  if (!p->bat || !raw || !p->full || !p->bat_dirty) {
    free(raw);
    return vd_set_error(ENOMEM, "%s: out of memory for the BAT", path);
  }
  r = vd_file_pread(dev->file, raw, (size_t)bat_bytes, p->bat_offset);
  if (r < 0) {
    free(raw);
    return r;
  }
  for (uint32_t i = 0; i < p->bat_entries; i++)
    p->bat[i] = vd_get_be32(raw + 4 * (size_t)i);
  free(raw);

  uint64_t end = vd_round_up(bat_end, VHD_SECTOR);
  if (end < meta_end)
    end = meta_end;
  struct vhd_extent *ext = malloc(sizeof *ext * ((size_t)p->bat_entries + 1));
  if (!ext)
    return vd_set_error(ENOMEM, "%s: out of memory for the BAT", path);
  for (uint32_t i = 0; i < p->bat_entries; i++) {
    if (p->bat[i] == VHD_BAT_UNUSED)
      continue;
    uint64_t start = (uint64_t)p->bat[i] * VHD_SECTOR;
    uint64_t len = p->bitmap_size +
      (i < p->nblocks ? (uint64_t)vhd_valid_sectors(dev, i) * VHD_SECTOR
                      : p->block_size);
    if (start + len > fsz) {
      free(ext);
      return vd_set_error(EINVAL, "%s: BAT entry %" PRIu32
                          " points past end of file", path, i);
    }
    /* Not over the footer copy, the header (usually right after it; past
     * the blocks while a management command replaces it) or the BAT. */
    if (start < VHD_FOOTER_SIZE ||
        (start < meta_end && start + len > p->footer.data_offset) ||
        (start < bat_end && start + len > p->bat_offset)) {
      free(ext);
      return vd_set_error(EINVAL, "%s: BAT entry %" PRIu32
                          " overlaps the image metadata", path, i);
    }
    ext[nalloc].off = start;
    ext[nalloc].len = len;
    ext[nalloc++].index = i;
    if (start + len > end)
      end = vd_round_up(start + len, VHD_SECTOR);
  }
  /* Blocks must not overlap one another: a write to one would corrupt the
   * other. */
  qsort(ext, nalloc, sizeof *ext, vhd_extent_cmp);
  for (uint32_t i = 1; i < nalloc; i++)
    if (ext[i - 1].off + ext[i - 1].len > ext[i].off) {
      uint32_t a = ext[i - 1].index, b = ext[i].index;
      free(ext);
      return vd_set_error(EINVAL, "%s: BAT entries %" PRIu32 " and %" PRIu32
                          " overlap", path, a, b);
    }
  free(ext);
  p->next_free = tail_pos > end ? tail_pos : end;
  return 0;
}

/* A dynamic or differencing image whose file does not end with its
 * footer, opened read-write: what a power cut leaves when it keeps part
 * of an allocation (docs/vhd.md, "Crash safety") - a block appended past
 * the old end without the footer written after it, the size grown
 * without the data, or the new bitmap over the old footer.  The copy at
 * offset 0 is intact and the BAT references only durable blocks, so write
 * the footer after everything the file holds (never over a byte of it:
 * another tool may keep locators past the blocks) and make it durable.
 * What lies between is unreferenced: `vdtool check` counts it as leaked.
 * Also a tail copy older than the copy at offset 0: a management command
 * cut short (vhd_write_metadata); it is overwritten. */
static int
vhd_repair_tail(struct vd_dev *dev)
{
  struct vhd_priv *p = dev->priv;
  int r = vd_file_pwrite(dev->file, p->footer_raw, VHD_FOOTER_SIZE,
                         p->next_free);
  if (r == 0)
    r = vd_file_flush(dev->file);
  if (r < 0)
    return vd_prefix_error(-r, "%s: cannot restore the footer at the end "
                           "of file", dev->path);
  return 0;
}

static int
vhd_open_inner(struct vd_dev *dev)
{
  struct vhd_priv *p = dev->priv;
  const char *path = dev->path;
  uint8_t head[VHD_FOOTER_SIZE], tail[VHD_FOOTER_SIZE];
  struct vhd_footer hf, tf;
  char where[PATH_MAX + 32];
  uint64_t fsz, tail_pos = 0;
  size_t footer_len = VHD_FOOTER_SIZE;
  bool tail_ok = false;
  int r;

  r = vd_file_size(dev->file, &fsz);
  if (r < 0)
    return r;
  if (fsz < VHD_FOOTER_SIZE)
    return vd_set_error(EINVAL, "%s: file too short (%" PRIu64
                        " bytes) for a VHD footer", path, fsz);
  r = vd_file_pread(dev->file, tail, VHD_FOOTER_SIZE, fsz - VHD_FOOTER_SIZE);
  if (r == 0)
    r = vd_file_pread(dev->file, head, VHD_FOOTER_SIZE, 0);
  if (r < 0)
    return r;

  /* The tail copy: 512 bytes, or 511 in images older than VPC 2004. */
  snprintf(where, sizeof where, "%s (footer at end of file)", path);
  if (memcmp(tail, "conectix", 8) == 0) {
    if ((r = vhd_footer_decode(tail, VHD_FOOTER_SIZE, &tf, where)) < 0)
      return r;
    tail_ok = true;
    tail_pos = fsz - VHD_FOOTER_SIZE;
  } else if (memcmp(tail + 1, "conectix", 8) == 0) {
    if ((r = vhd_footer_decode(tail + 1, VHD_FOOTER_SIZE - 1, &tf, where)) < 0)
      return r;
    tail_ok = true;
    footer_len = VHD_FOOTER_SIZE - 1;
    tail_pos = vd_round_up(fsz, VHD_SECTOR);
  }

  snprintf(where, sizeof where, "%s (footer at offset 0)", path);
  bool head_cookie = memcmp(head, "conectix", 8) == 0;
  if (head_cookie && (r = vhd_footer_decode(head, VHD_FOOTER_SIZE, &hf, where)) < 0)
    return r;
  bool tail_stale = false;
  if (head_cookie && hf.type != VHD_TYPE_FIXED) {
    /* Copies that differ: a management command cut short between them
     * (vhd_write_metadata writes the copy at offset 0 first). */
    if (tail_ok && memcmp(head, tail + (VHD_FOOTER_SIZE - footer_len),
                          footer_len) != 0) {
      if (tf.type == VHD_TYPE_FIXED)
        return vd_set_error(EINVAL, "%s: the footer at offset 0 is not a "
                            "fixed VHD's, the one at the end of file is",
                            path);
      tail_stale = true;
    }
    p->footer = hf;
    if (!tail_ok)
      tail_pos = vd_round_up(fsz, VHD_SECTOR);
  } else if (tail_ok) {
    if (tf.type != VHD_TYPE_FIXED)
      return vd_set_error(EINVAL, "%s: %s VHD without its footer copy at "
                          "offset 0", path,
                          tf.type == VHD_TYPE_DIFF ? "differencing" : "dynamic");
    p->footer = tf;
  } else {
    return vd_set_error(EINVAL, "%s: no VHD footer at the end of file", path);
  }

  p->type = p->footer.type;
  uint64_t size = vhd_footer_size(&p->footer);
  if (size % VHD_SECTOR)
    return vd_set_error(EINVAL, "%s: virtual size %" PRIu64
                        " is not a multiple of 512", path, size);
  if (size > VHD_MAX_SIZE)
    return vd_set_error(EFBIG, "%s: virtual size %" PRIu64
                        " exceeds the VHD limit of 2040 GiB", path, size);
  dev->size = size;
  dev->logical_block = VHD_SECTOR;
  dev->strict_align = true;

  if (p->type == VHD_TYPE_FIXED) {
    if (fsz - footer_len < size)
      return vd_set_error(EINVAL, "%s: fixed VHD is truncated: virtual size %"
                          PRIu64 " but %" PRIu64 " data bytes", path, size,
                          fsz - footer_len);
    p->footer_pos = fsz - footer_len;
    return 0;
  }

  /* Dynamic and differencing. */
  uint8_t hbuf[VHD_HEADER_SIZE];
  uint64_t hend;
  if (vd_add_overflow(p->footer.data_offset, VHD_HEADER_SIZE, &hend) ||
      hend > fsz || p->footer.data_offset < VHD_FOOTER_SIZE)
    return vd_set_error(EINVAL, "%s: dynamic header offset %" PRIu64
                        " is outside the file", path, p->footer.data_offset);
  r = vd_file_pread(dev->file, hbuf, sizeof hbuf, p->footer.data_offset);
  if (r < 0)
    return r;
  if ((r = vhd_header_decode(hbuf, &p->header, path)) < 0)
    return r;
  p->block_size = p->header.block_size;
  if (!vd_is_pow2(p->block_size) || p->block_size < VHD_MIN_BLOCK ||
      p->block_size > VHD_MAX_BLOCK)
    return vd_set_error(EINVAL, "%s: block size %" PRIu32 " is not a power "
                        "of two between 512 and 256 MiB", path, p->block_size);
  p->spb = p->block_size / VHD_SECTOR;
  p->bitmap_size = vhd_bitmap_size(p->block_size);
  uint64_t nblocks = (size + p->block_size - 1) / p->block_size;
  p->nblocks = (uint32_t)nblocks;
  p->bat_entries = p->header.max_entries;
  p->bat_offset = p->header.bat_offset;
  if (p->bat_entries > VHD_MAX_BAT_ENTRIES)
    return vd_set_error(EINVAL, "%s: BAT of %" PRIu32 " entries is absurdly "
                        "large", path, p->bat_entries);
  if (p->bat_entries < nblocks)
    return vd_set_error(EINVAL, "%s: BAT has %" PRIu32 " entries but the "
                        "virtual size needs %" PRIu64, path, p->bat_entries,
                        nblocks);

  pthread_mutex_init(&p->alloc_lock, NULL);
  pthread_mutex_init(&p->bat_lock, NULL);
  pthread_mutex_init(&p->flush_lock, NULL);
  for (int i = 0; i < VHD_NSTRIPES; i++)
    pthread_mutex_init(&p->stripe[i], NULL);
  p->locks_init = true;

  r = vhd_load_bat(dev, fsz, tail_pos);
  if (r < 0)
    return r;
  vhd_footer_encode(&p->footer, p->footer_raw);
  /* (Not on a block device: its end is not where an image ends.) */
  if ((!tail_ok || tail_stale) && !dev->read_only &&
      !vd_file_is_blockdev(dev->file)) {
    r = vhd_repair_tail(dev);
    if (r < 0)
      return r;
  }

  /* VD_OPEN_NOPARENT opens nothing but the image: the parent path is only
   * looked up (checked with stat) for info. */
  if (p->type == VHD_TYPE_DIFF) {
    if (dev->open_flags & VD_OPEN_NOPARENT)
      return vhd_open_parent(dev, true);
    int depth = 0;
    for (const struct vd_dev *d = dev->child; d; d = d->child)
      depth++;
    if (depth >= VHD_MAX_CHAIN)
      return vd_set_error(ELOOP, "%s: chain of differencing images deeper "
                          "than %d", path, VHD_MAX_CHAIN);
    if (dev->adopt_parent)
      return vhd_adopt_parent(dev);
    r = vhd_open_parent(dev, false);
    if (r < 0)
      return r;
  }
  return 0;
}

/* The core does not call close after a failed open. */
static int
vhd_open(struct vd_dev *dev)
{
  int r = vhd_open_inner(dev);
  if (r < 0)
    vhd_close(dev);
  return r;
}

/* ---- reads ---- */

/* Bytes that this layer does not hold: the parent's, or zeros. */
static int
vhd_read_below(struct vd_dev *dev, uint8_t *buf, size_t len, uint64_t off,
               bool own_only)
{
  struct vhd_priv *p = dev->priv;
  if (own_only || !p->parent || off >= p->parent->size) {
    memset(buf, 0, len);
    return 0;
  }
  size_t n = len;
  if (off + n > p->parent->size)
    n = (size_t)(p->parent->size - off);
  memset(buf + n, 0, len - n);
  return vd_pread(p->parent, buf, n, off);
}

/* Read the whole bitmap of an allocated block into BM. */
static int
vhd_bitmap_read(struct vd_dev *dev, uint32_t entry, uint8_t *bm)
{
  struct vhd_priv *p = dev->priv;
  return vd_file_pread(dev->file, bm, p->bitmap_size,
                       (uint64_t)entry * VHD_SECTOR);
}

/* Read [off, off+len) inside block BLK.  HELD (own_only reads) gets one
 * flag per sector of the range. */
static int
vhd_read_block(struct vd_dev *dev, uint32_t blk, uint8_t *buf, size_t len,
               uint64_t off, bool own_only, bool *held)
{
  struct vhd_priv *p = dev->priv;
  uint32_t e = bat_get(p, blk);
  uint64_t boff = off - (uint64_t)blk * p->block_size;
  uint32_t first = (uint32_t)(boff / VHD_SECTOR);
  uint32_t last = (uint32_t)((boff + len - 1) / VHD_SECTOR);
  int r;

  if (e == VHD_BAT_UNUSED) {
    if (held)
      memset(held, 0, last - first + 1);
    return vhd_read_below(dev, buf, len, off, own_only);
  }
  uint64_t data = (uint64_t)e * VHD_SECTOR + p->bitmap_size;
  if (full_get(p, blk)) {
    if (held)
      memset(held, 1, last - first + 1);
    return vd_file_pread(dev->file, buf, len, data + boff);
  }

  uint8_t small[VHD_SECTOR], *bm = small;
  if (p->bitmap_size > sizeof small && !(bm = malloc(p->bitmap_size)))
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  r = vhd_bitmap_read(dev, e, bm);
  if (r == 0 && bm_all_set(bm, vhd_valid_sectors(dev, blk))) {
    full_set(p, blk, true);
    if (held)
      memset(held, 1, last - first + 1);
    r = vd_file_pread(dev->file, buf, len, data + boff);
    goto out;
  }
  /* Runs of sectors with the same bit. */
  for (uint32_t s = first; r == 0 && s <= last;) {
    bool set = bm_test(bm, s);
    uint32_t t = s + 1;
    while (t <= last && bm_test(bm, t) == set)
      t++;
    uint64_t a = (uint64_t)s * VHD_SECTOR, b = (uint64_t)t * VHD_SECTOR;
    if (a < boff)
      a = boff;
    if (b > boff + len)
      b = boff + len;
    uint8_t *dst = buf + (a - boff);
    if (held)
      memset(held + (s - first), set, t - s);
    if (set)
      r = vd_file_pread(dev->file, dst, (size_t)(b - a), data + a);
    else
      r = vhd_read_below(dev, dst, (size_t)(b - a),
                         (uint64_t)blk * p->block_size + a, own_only);
    s = t;
  }
out:
  if (bm != small)
    free(bm);
  return r;
}

static int
vhd_read_common(struct vd_dev *dev, void *buf, size_t len, uint64_t off,
                bool own_only, bool *held)
{
  struct vhd_priv *p = dev->priv;
  uint8_t *b = buf;

  if (p->type == VHD_TYPE_FIXED) {
    if (held)
      memset(held, 1, len / VHD_SECTOR);
    return vd_file_pread(dev->file, buf, len, off);
  }
  own_only |= (dev->open_flags & VD_OPEN_NOPARENT) != 0;
  while (len > 0) {
    uint32_t blk = (uint32_t)(off / p->block_size);
    uint64_t boff = off % p->block_size;
    size_t n = p->block_size - boff < len ? (size_t)(p->block_size - boff) : len;
    int r = vhd_read_block(dev, blk, b, n, off, own_only, held);
    if (r < 0)
      return r;
    if (held)
      held += (n + VHD_SECTOR - 1) / VHD_SECTOR;
    b += n;
    off += n;
    len -= n;
  }
  return 0;
}

static int
vhd_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  return vhd_read_common(dev, buf, len, off, false, NULL);
}

int
vhd_read_own(struct vd_dev *dev, void *buf, size_t len, uint64_t off,
             bool *held)
{
  return vhd_read_common(dev, buf, len, off, true, held);
}

/* ---- writes ---- */

/* Append a block for BLK with bitmap BM; returns its sector in *ENTRY.
 * Caller holds BLK's stripe lock. */
static int
vhd_alloc_block_locked(struct vd_dev *dev, uint32_t blk, const uint8_t *bm,
                       uint32_t *entry)
{
  struct vhd_priv *p = dev->priv;
  VD_ASSERT_HELD(&p->stripe[blk % VHD_NSTRIPES]);
  uint64_t slot = (uint64_t)p->bitmap_size + p->block_size;
  int r;

  pthread_mutex_lock(&p->alloc_lock);
  uint64_t off = p->next_free, new_end = off + slot;
  if (new_end / VHD_SECTOR > UINT32_MAX - 1) {
    pthread_mutex_unlock(&p->alloc_lock);
    return vd_set_error(EFBIG, "%s: image file would exceed the 2 TiB a BAT "
                        "can address", dev->path);
  }
  r = vd_file_pwrite(dev->file, p->footer_raw, VHD_FOOTER_SIZE, new_end);
  if (r == 0)
    r = vd_file_pwrite(dev->file, bm, p->bitmap_size, off);
  if (r == 0)
    p->next_free = new_end;
  pthread_mutex_unlock(&p->alloc_lock);
  *entry = (uint32_t)(off / VHD_SECTOR);
  return r;
}

/* Write LEN bytes of BUF (NULL: zeros) at OFF, all inside block BLK. */
static int
vhd_write_block(struct vd_dev *dev, uint32_t blk, const uint8_t *buf,
                size_t len, uint64_t off, unsigned flags)
{
  struct vhd_priv *p = dev->priv;
  pthread_mutex_t *lock = &p->stripe[blk % VHD_NSTRIPES];
  uint64_t boff = off - (uint64_t)blk * p->block_size;
  uint32_t first = (uint32_t)(boff / VHD_SECTOR);
  uint32_t end = (uint32_t)((boff + len) / VHD_SECTOR);
  bool fast = (flags & VD_REQ_FAST_ZERO) != 0;
  uint32_t e = bat_get(p, blk);
  int r;

  if (e != VHD_BAT_UNUSED && full_get(p, blk)) {
    uint64_t host = (uint64_t)e * VHD_SECTOR + p->bitmap_size + boff;
    return buf ? vd_file_pwrite(dev->file, buf, len, host)
               : vd_file_zero(dev->file, host, len, false, fast);
  }

  uint8_t small[VHD_SECTOR], *bm = small;
  if (p->bitmap_size > sizeof small && !(bm = malloc(p->bitmap_size)))
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  pthread_mutex_lock(lock);
  e = bat_get(p, blk);
  if (e == VHD_BAT_UNUSED) {
    /* Dynamic: the new block is zeros, so every sector is valid.
     * Differencing: only the sectors written here. */
    memset(bm, p->type == VHD_TYPE_DYNAMIC ? 0xFF : 0, p->bitmap_size);
    if (p->type == VHD_TYPE_DIFF)
      for (uint32_t s = first; s < end; s++)
        bm_set(bm, s);
    r = vhd_alloc_block_locked(dev, blk, bm, &e);
    uint64_t host = (uint64_t)e * VHD_SECTOR + p->bitmap_size + boff;
    if (r == 0 && buf)
      r = vd_file_pwrite(dev->file, buf, len, host);
    if (r == 0) {
      if (bm_all_set(bm, vhd_valid_sectors(dev, blk)))
        full_set(p, blk, true);
      __atomic_store_n(&p->bat[blk], e, __ATOMIC_RELEASE);
      vhd_mark_dirty(p, blk);
    }
  } else {
    uint64_t host = (uint64_t)e * VHD_SECTOR + p->bitmap_size + boff;
    r = buf ? vd_file_pwrite(dev->file, buf, len, host)
            : vd_file_zero(dev->file, host, len, false, fast);
    if (r == 0 && !full_get(p, blk))
      r = vhd_bitmap_read(dev, e, bm);
    if (r == 0 && !full_get(p, blk)) {
      bool changed = false;
      for (uint32_t s = first; s < end; s++)
        if (!bm_test(bm, s)) {
          bm_set(bm, s);
          changed = true;
        }
      /* Data first, then the bits that make it visible. */
      if (changed) {
        uint32_t a = first / 8 / VHD_SECTOR * VHD_SECTOR;
        uint32_t b = (uint32_t)vd_round_up((end + 7) / 8, VHD_SECTOR);
        r = vd_file_pwrite(dev->file, bm + a, b - a,
                           (uint64_t)e * VHD_SECTOR + a);
      }
      if (r == 0 && bm_all_set(bm, vhd_valid_sectors(dev, blk)))
        full_set(p, blk, true);
    }
  }
  pthread_mutex_unlock(lock);
  if (bm != small)
    free(bm);
  return r;
}

static int
vhd_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
           unsigned flags)
{
  struct vhd_priv *p = dev->priv;
  const uint8_t *b = buf;

  if (p->type == VHD_TYPE_FIXED)
    return vd_file_pwrite(dev->file, buf, len, off);
  while (len > 0) {
    uint32_t blk = (uint32_t)(off / p->block_size);
    uint64_t boff = off % p->block_size;
    size_t n = p->block_size - boff < len ? (size_t)(p->block_size - boff) : len;
    int r = vhd_write_block(dev, blk, b, n, off, 0);
    if (r < 0)
      return r;
    b += n;
    off += n;
    len -= n;
  }
  return 0;
}

/* ---- flush ---- */

static int
vhd_flush(struct vd_dev *dev)
{
  struct vhd_priv *p = dev->priv;
  uint32_t nsec, ndirty = 0, *idx = NULL;
  uint8_t *snap = NULL;
  int r;

  if (p->type == VHD_TYPE_FIXED || !p->bat)
    return vd_file_flush(dev->file);

  pthread_mutex_lock(&p->flush_lock);
  nsec = (uint32_t)(vd_round_up((uint64_t)p->bat_entries * 4, VHD_SECTOR) /
                    VHD_SECTOR);
  pthread_mutex_lock(&p->bat_lock);
  for (uint32_t s = 0; s < nsec; s++)
    if (p->bat_dirty[s / 8] & (1u << (s % 8)))
      ndirty++;
  if (ndirty) {
    idx = malloc(sizeof *idx * ndirty);
    snap = malloc((size_t)ndirty * VHD_SECTOR);
  }
  if (ndirty && (!idx || !snap)) {
    pthread_mutex_unlock(&p->bat_lock);
    pthread_mutex_unlock(&p->flush_lock);
    free(idx);
    free(snap);
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  }
  /* Snapshot before the first fdatasync: every entry in it points at a
   * block whose writes were issued before that fdatasync. */
  for (uint32_t s = 0, k = 0; s < nsec; s++) {
    if (!(p->bat_dirty[s / 8] & (1u << (s % 8))))
      continue;
    p->bat_dirty[s / 8] = (uint8_t)(p->bat_dirty[s / 8] & ~(1u << (s % 8)));
    idx[k] = s;
    for (uint32_t j = 0; j < VHD_SECTOR / 4; j++) {
      uint64_t i = (uint64_t)s * (VHD_SECTOR / 4) + j;
      vd_put_be32(snap + (size_t)k * VHD_SECTOR + 4 * j,
                  i < p->bat_entries ? bat_get(p, (uint32_t)i) : VHD_BAT_UNUSED);
    }
    k++;
  }
  pthread_mutex_unlock(&p->bat_lock);

  r = vd_file_flush(dev->file);
  for (uint32_t k = 0; r == 0 && k < ndirty; k++)
    r = vd_file_pwrite(dev->file, snap + (size_t)k * VHD_SECTOR, VHD_SECTOR,
                       p->bat_offset + (uint64_t)idx[k] * VHD_SECTOR);
  if (r == 0 && ndirty)
    r = vd_file_flush(dev->file);
  if (r < 0) {
    pthread_mutex_lock(&p->bat_lock);
    for (uint32_t k = 0; k < ndirty; k++)
      p->bat_dirty[idx[k] / 8] = (uint8_t)(p->bat_dirty[idx[k] / 8] |
                                           (1u << (idx[k] % 8)));
    pthread_mutex_unlock(&p->bat_lock);
  }
  pthread_mutex_unlock(&p->flush_lock);
  free(idx);
  free(snap);
  return r;
}

/* ---- discard / write zeroes ---- */

int
vhd_free_block(struct vd_dev *dev, uint32_t blk)
{
  struct vhd_priv *p = dev->priv;
  pthread_mutex_t *lock = &p->stripe[blk % VHD_NSTRIPES];

  pthread_mutex_lock(lock);
  uint32_t e = bat_get(p, blk);
  if (e != VHD_BAT_UNUSED) {
    __atomic_store_n(&p->bat[blk], VHD_BAT_UNUSED, __ATOMIC_RELEASE);
    full_set(p, blk, false);
    vhd_mark_dirty(p, blk);
    /* Until the next flush the old BAT entry on disk may still point
     * here; a punched slot has an all-zero bitmap, so it reads as zeros. */
    uint64_t len = p->bitmap_size +
                   (uint64_t)vhd_valid_sectors(dev, blk) * VHD_SECTOR;
    int r = vd_file_punch(dev->file, (uint64_t)e * VHD_SECTOR, len);
    if (r < 0)
      vd_clear_error();
  }
  pthread_mutex_unlock(lock);
  return 0;
}

static bool
vhd_whole_block(struct vd_dev *dev, uint32_t blk, uint64_t off, size_t n)
{
  struct vhd_priv *p = dev->priv;
  return off == (uint64_t)blk * p->block_size &&
         n == (uint64_t)vhd_valid_sectors(dev, blk) * VHD_SECTOR;
}

static int
vhd_discard(struct vd_dev *dev, uint64_t off, uint64_t len, unsigned flags)
{
  struct vhd_priv *p = dev->priv;

  if (p->type == VHD_TYPE_FIXED) {
    int r = vd_file_punch(dev->file, off, len);
    if (r == -ENOTSUP) {
      vd_clear_error();
      r = 0;
    }
    return r;
  }
  /* In a differencing image a freed block would show the parent's data:
   * discard is advisory, so leave it alone. */
  if (p->type == VHD_TYPE_DIFF)
    return 0;
  while (len > 0) {
    uint32_t blk = (uint32_t)(off / p->block_size);
    uint64_t boff = off % p->block_size;
    uint64_t n = p->block_size - boff < len ? p->block_size - boff : len;
    if (vhd_whole_block(dev, blk, off, (size_t)n))
      vhd_free_block(dev, blk);
    off += n;
    len -= n;
  }
  return 0;
}

/* Whether the layers below hold anything but zeros in [off, off+len). */
static int
vhd_below_has_data(struct vd_dev *dev, uint64_t off, uint64_t len, bool *data)
{
  struct vhd_priv *p = dev->priv;
  bool zero;
  int r = vd_reads_zero(p->parent, off, len, &zero);
  *data = !zero;
  return r;
}

static int
vhd_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                 unsigned flags)
{
  struct vhd_priv *p = dev->priv;
  bool no_hole = (flags & VD_REQ_NO_HOLE) != 0;

  if (p->type == VHD_TYPE_FIXED)
    return vd_file_zero(dev->file, off, len, no_hole,
                        (flags & VD_REQ_FAST_ZERO) != 0);
  while (len > 0) {
    uint32_t blk = (uint32_t)(off / p->block_size);
    uint64_t boff = off % p->block_size;
    size_t n = p->block_size - boff < len ? (size_t)(p->block_size - boff)
                                          : (size_t)len;
    bool unalloc = bat_get(p, blk) == VHD_BAT_UNUSED;
    int r = 0;

    if (p->type == VHD_TYPE_DYNAMIC && !no_hole) {
      if (vhd_whole_block(dev, blk, off, n))
        r = vhd_free_block(dev, blk);
      else if (!unalloc)
        r = vhd_write_block(dev, blk, NULL, n, off, flags);
    } else if (p->type == VHD_TYPE_DYNAMIC) {
      r = vhd_write_block(dev, blk, NULL, n, off, flags);
    } else {
      /* Differencing: zeros must hide what an ancestor holds. */
      bool below = true;
      if (unalloc && !no_hole)
        r = vhd_below_has_data(dev, off, n, &below);
      if (r == 0 && (below || !unalloc || no_hole))
        r = vhd_write_block(dev, blk, NULL, n, off, flags);
    }
    if (r < 0)
      return r;
    off += n;
    len -= n;
  }
  return 0;
}

/* ---- block status ---- */

static int
vhd_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                 struct vd_extent *ext)
{
  struct vhd_priv *p = dev->priv;
  int r;

  ext->depth = 0;
  ext->host_offset = -1;
  if (p->type == VHD_TYPE_FIXED) {
    bool is_data;
    uint64_t n;
    r = vd_file_extent(dev->file, off, len, &is_data, &n);
    if (r < 0)
      return r;
    ext->length = n;
    ext->flags = is_data ? 0 : VD_EXT_HOLE | VD_EXT_ZERO;
    ext->host_offset = (int64_t)off;
    return 0;
  }

  uint32_t blk = (uint32_t)(off / p->block_size);
  uint64_t boff = off % p->block_size;
  uint64_t n = p->block_size - boff < len ? p->block_size - boff : len;
  uint32_t e = bat_get(p, blk);
  bool own = false;
  uint64_t own_len = n;

  if (e == VHD_BAT_UNUSED) {
    /* Merge a run of unallocated blocks. */
    while (own_len < len) {
      uint32_t nb = (uint32_t)((off + own_len) / p->block_size);
      if (bat_get(p, nb) != VHD_BAT_UNUSED)
        break;
      uint64_t step = p->block_size < len - own_len ? p->block_size
                                                    : len - own_len;
      own_len += step;
    }
  } else if (full_get(p, blk)) {
    own = true;
  } else {
    uint8_t small[VHD_SECTOR], *bm = small;
    if (p->bitmap_size > sizeof small && !(bm = malloc(p->bitmap_size)))
      return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    r = vhd_bitmap_read(dev, e, bm);
    if (r < 0) {
      if (bm != small)
        free(bm);
      return r;
    }
    if (bm_all_set(bm, vhd_valid_sectors(dev, blk)))
      full_set(p, blk, true);
    uint32_t s = (uint32_t)(boff / VHD_SECTOR);
    uint32_t lim = (uint32_t)((boff + n + VHD_SECTOR - 1) / VHD_SECTOR);
    own = bm_test(bm, s);
    uint32_t t = s + 1;
    while (t < lim && bm_test(bm, t) == own)
      t++;
    uint64_t stop = (uint64_t)t * VHD_SECTOR;
    own_len = (stop < boff + n ? stop : boff + n) - boff;
    if (bm != small)
      free(bm);
  }

  if (own) {
    ext->length = own_len;
    ext->flags = 0;
    ext->host_offset = (int64_t)((uint64_t)e * VHD_SECTOR + p->bitmap_size +
                                 boff);
    return 0;
  }
  ext->length = own_len;
  ext->flags = VD_EXT_HOLE | VD_EXT_ZERO;
  ext->depth = 0;
  if (p->type != VHD_TYPE_DIFF || !p->parent)
    return 0;
  ext->depth = 1;
  if (off >= p->parent->size)
    return 0;
  uint64_t plen = own_len;
  if (off + plen > p->parent->size)
    plen = p->parent->size - off;
  struct vd_extent pe;
  r = vd_block_status(p->parent, off, plen, &pe);
  if (r < 0)
    return r;
  ext->length = pe.length;
  ext->flags = pe.flags;
  ext->depth = pe.depth + 1;
  ext->host_offset = pe.host_offset;
  return 0;
}

/* ---- info ---- */

static void
vhd_info(struct vd_dev *dev, struct vd_info *info)
{
  struct vhd_priv *p = dev->priv;
  char buf[64];
  static const char *const types[] = { [VHD_TYPE_FIXED] = "fixed",
    [VHD_TYPE_DYNAMIC] = "dynamic", [VHD_TYPE_DIFF] = "differencing" };

  vd_info_add_str(info, "subformat", types[p->type]);
  snprintf(buf, sizeof buf, "%.4s", p->footer.creator_app);
  for (char *c = buf; *c; c++)
    if (*c < 0x20 || *c > 0x7e)
      *c = '.';
  vd_info_add_str(info, "creator", buf);
  vhd_uuid_format(p->footer.uuid, buf);
  vd_info_add_str(info, "uuid", buf);
  snprintf(buf, sizeof buf, "%u/%u/%u", p->footer.cylinders, p->footer.heads,
           p->footer.sectors);
  vd_info_add_str(info, "chs", buf);
  vd_info_add_u64(info, "current-size", p->footer.current_size);
  if (p->type == VHD_TYPE_FIXED)
    return;
  info->cluster_size = p->block_size;
  vd_info_add_u64(info, "bat-entries", p->bat_entries);
  uint64_t n = 0;
  for (uint32_t i = 0; i < p->bat_entries; i++)
    n += bat_get(p, i) != VHD_BAT_UNUSED;
  vd_info_add_u64(info, "allocated-blocks", n);
  if (p->type == VHD_TYPE_DIFF) {
    vhd_uuid_format(p->header.parent_uuid, buf);
    vd_info_add_str(info, "parent-uuid", buf);
    snprintf(info->backing, sizeof info->backing, "%s",
             p->parent_path[0] ? p->parent_path : p->parent_named);
    snprintf(info->backing_format, sizeof info->backing_format, "%s",
             p->parent_format);
  }
}

/* ---- create ---- */

int
vhd_locator_paths(const char *child, const char *parent,
                  char *rel, size_t rellen, char *abs, size_t abslen)
{
  char tmp[PATH_MAX], cdir[PATH_MAX];
  size_t n = 0;

  if (vd_is_remote_name(parent)) {
    /* Recorded for the reader's information only: a URI or rbd: name in
     * a locator is never followed (the operator passes --backing each
     * time). */
    if (snprintf(abs, abslen, "%s", parent) >= (int)abslen ||
        snprintf(rel, rellen, "%s", parent) >= (int)rellen)
      return vd_set_error(ENAMETOOLONG, "%s: URI too long", parent);
    return 0;
  }
  if (!realpath(parent, tmp) || strlen(tmp) >= abslen)
    return vd_set_error(errno ? errno : ENAMETOOLONG, "%s: %m", parent);
  strcpy(abs, tmp);
  snprintf(tmp, sizeof tmp, "%s", child);
  if (!realpath(dirname(tmp), cdir))
    return vd_set_error(errno, "%s: %m", child);
  /* Skip the directories both share, then one ".." per directory left. */
  const char *a = abs, *c = cdir;
  for (;;) {
    while (*a == '/')
      a++;
    while (*c == '/')
      c++;
    size_t la = strcspn(a, "/"), lc = strcspn(c, "/");
    if (lc == 0 || la != lc || strncmp(a, c, la) != 0 || a[la] != '/')
      break;
    a += la;
    c += lc;
  }
  rel[0] = '\0';
  for (; *c; c += strcspn(c, "/")) {
    while (*c == '/')
      c++;
    if (*c && n + 4 < rellen) {
      memcpy(rel + n, "../", 4);
      n += 3;
    }
  }
  if (n == 0 && rellen > 3) {
    memcpy(rel, "./", 3);
    n = 2;
  }
  int w = snprintf(rel + n, rellen - n, "%s", a);
  if (w < 0 || (size_t)w >= rellen - n)
    return vd_set_error(ENAMETOOLONG, "%s: parent path too long", child);
  return 0;
}

/* Write a locator payload: PATH in UTF-16LE with Windows separators. */
static int
vhd_locator_encode(const char *path, uint8_t *out, size_t outlen)
{
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *c = tmp; *c; c++)
    if (*c == '/')
      *c = '\\';
  return vhd_utf8_to_utf16(tmp, out, outlen, false);
}

int
vhd_fill_parent(struct vhd_header *h, const char *child,
                const char *parent_path, struct vd_dev *parent, uint64_t *off,
                uint8_t *payload, size_t paylen, size_t *used)
{
  char rel[PATH_MAX], abs[PATH_MAX], tmp[PATH_MAX];
  struct vhd_priv *pp = vhd_priv_of(parent);
  struct stat st;
  int r = vhd_locator_paths(child, parent_path, rel, sizeof rel, abs,
                            sizeof abs);
  if (r < 0)
    return r;
  memset(h->parent_uuid, 0, 16);
  if (pp)
    memcpy(h->parent_uuid, pp->footer.uuid, 16);
  h->parent_timestamp = 0;
  if (stat(parent_path, &st) == 0 && st.st_mtime > VHD_EPOCH_OFFSET)
    h->parent_timestamp = (uint32_t)(st.st_mtime - VHD_EPOCH_OFFSET);
  memset(h->parent_name, 0, sizeof h->parent_name);
  snprintf(tmp, sizeof tmp, "%s", abs);
  if (vhd_utf8_to_utf16(basename(tmp), h->parent_name,
                        sizeof h->parent_name - 2, true) < 0)
    return vd_set_error(ENAMETOOLONG, "%s: parent file name too long", child);
  memset(h->loc, 0, sizeof h->loc);
  *used = 0;
  const char *paths[2] = { rel, abs };
  static const char *const codes[2] = { "W2ru", "W2ku" };
  for (int i = 0; i < 2; i++) {
    int n = vhd_locator_encode(paths[i], payload + *used, paylen - *used);
    if (n < 0)
      return vd_set_error(ENAMETOOLONG, "%s: parent path too long", child);
    memcpy(h->loc[i].code, codes[i], 4);
    h->loc[i].length = (uint32_t)n;
    h->loc[i].space = (uint32_t)vd_round_up((uint64_t)n, VHD_SECTOR);
    h->loc[i].offset = *off;
    *off += h->loc[i].space;
    *used += h->loc[i].space;
  }
  return 0;
}

/* Whether PARENT (open, at BACKING) can be the parent of a new VHD at
 * PATH.  The child records a UUID for a VHD parent and none otherwise,
 * and reopens a UUID-less parent probing only formats that reference no
 * other file: any other parent could never be reopened, and the format
 * that probe finds must be PARENT's, or the child would later read its
 * parent differently (-F raw over a vdz). */
static int
vhd_check_parent(const char *path, const char *backing,
                 struct vd_dev *parent)
{
  if (vhd_priv_of(parent))
    return 0;
  if (!parent->drv->leaf)
    return vd_set_error(EINVAL, "%s: backing file %s is a '%s' image; a VHD "
                        "can only have a VHD, raw or vdz parent", path,
                        backing, vd_format(parent));
  /* A remote parent (NBD URI, rbd: name) is never reopened from the
   * child's locators: the operator names it with --backing each time
   * (docs/SECURITY.md). */
  if (vd_is_remote_name(backing))
    return 0;
  int r = 0;
  const struct vd_driver *again = vd_probe_path_leaf(backing, true, &r);
  if (again != parent->drv)
    return vd_set_error(EINVAL, "%s: backing file %s cannot be recorded as "
                        "'%s': a VHD child would reopen it as '%s'", path,
                        backing, vd_format(parent),
                        again ? again->name : "nothing");
  return 0;
}

static int vhd_create_file(const char *path, unsigned type, uint64_t size,
                           uint64_t block, const char *backing,
                           struct vd_dev *parent, unsigned fflags);

/* The options of create and measure: subformat (*TYPE) and block_size. */
static int
vhd_create_opts(const char *path, const struct vd_create_args *args,
                unsigned *type, uint64_t *block)
{
  static const char *const known[] = { "subformat", "block_size",
                                       "force_size", NULL };
  char val[64];
  *type = VHD_TYPE_DYNAMIC;
  *block = VHD_DEFAULT_BLOCK;
  int r = vd_opt_check(args->options, known, path);
  if (r < 0)
    return r;
  if ((r = vd_opt_get(args->options, "subformat", val, sizeof val)) < 0)
    return r;
  if (r == 1) {
    if (strcmp(val, "dynamic") == 0)
      *type = VHD_TYPE_DYNAMIC;
    else if (strcmp(val, "fixed") == 0)
      *type = VHD_TYPE_FIXED;
    else
      return vd_set_error(EINVAL, "%s: invalid subformat '%s' (dynamic or "
                          "fixed)", path, val);
  }
  if ((r = vd_opt_get(args->options, "block_size", val, sizeof val)) < 0)
    return r;
  if (r == 1) {
    if ((r = vd_parse_size(val, block)) < 0)
      return r;
    if (!vd_is_pow2(*block) || *block < (512u << 10) ||
        *block > VHD_MAX_BLOCK)
      return vd_set_error(EINVAL, "%s: block_size %s is not a power of two "
                          "between 512 KiB and 256 MiB", path, val);
  }
  return 0;
}

/* The layout vhd_create_file makes: a fixed image is the disk and a
 * footer; a dynamic one the footer copy, header and BAT, then per block
 * its bitmap and data, then the footer. */
static int
vhd_measure(const struct vd_create_args *args, struct vd_dev *src,
            uint64_t *required, uint64_t *fully)
{
  unsigned type;
  uint64_t block, n;
  int r = vhd_create_opts("measure", args, &type, &block);
  if (r < 0)
    return r;
  uint64_t size = vd_round_up(args->size, VHD_SECTOR);
  if (size > VHD_MAX_SIZE)
    return vd_set_error(EFBIG, "measure: size %" PRIu64 " exceeds the VHD "
                        "limit of 2040 GiB", size);
  if (type == VHD_TYPE_FIXED) {
    *required = *fully = size + VHD_FOOTER_SIZE;
    return 0;
  }
  if ((r = vd_measure_data_blocks(src, size, block, &n)) < 0)
    return r;
  uint64_t blocks = (size + block - 1) / block;
  uint64_t meta = VHD_FOOTER_SIZE + VHD_HEADER_SIZE +
                  vd_round_up(blocks * 4, VHD_SECTOR) + VHD_FOOTER_SIZE;
  uint64_t slot = vhd_bitmap_size((uint32_t)block) + block;
  *required = meta + n * slot;
  *fully = meta + blocks * slot;
  return 0;
}

static int
vhd_create(const char *path, const struct vd_create_args *args)
{
  char val[64];
  unsigned type;
  uint64_t block, size = args->size;
  struct vd_dev *parent = NULL;
  int r = vhd_create_opts(path, args, &type, &block);
  if (r < 0)
    return r;
  if (args->backing) {
    if (type == VHD_TYPE_FIXED)
      return vd_set_error(EINVAL, "%s: a fixed VHD cannot have a parent", path);
    type = VHD_TYPE_DIFF;
    r = vd_open(args->backing, args->backing_format, VD_OPEN_NOLOCK, &parent);
    if (r < 0)
      return r;
    struct vhd_priv *pp = vhd_priv_of(parent);
    if ((r = vhd_check_parent(path, args->backing, parent)) < 0) {
      vd_close(parent);
      return r;
    }
    if (size == 0)
      size = parent->size;
    /* Children inherit the parent's block size unless told otherwise. */
    if (pp && pp->block_size >= (512u << 10) &&
        vd_opt_get(args->options, "block_size", val, sizeof val) == 0)
      block = pp->block_size;
  }
  r = vhd_create_file(path, type, size, block, args->backing, parent,
                      VD_FILE_TRUNC);
  vd_close(parent);
  return r;
}

int
vhd_create_child(const char *path, const char *parent_path,
                 struct vd_dev *parent)
{
  struct vhd_priv *pp = vhd_priv_of(parent);
  int r = vhd_check_parent(path, parent_path, parent);
  if (r < 0)
    return r;
  uint64_t block = pp && pp->block_size >= (512u << 10) ? pp->block_size
                                                         : VHD_DEFAULT_BLOCK;
  return vhd_create_file(path, VHD_TYPE_DIFF, parent->size, block,
                         parent_path, parent, VD_FILE_EXCL);
}

/* Write a new image of TYPE at PATH (opened with FFLAGS besides read-write
 * and create), differencing over PARENT (open, borrowed) named
 * BACKING when PARENT is not NULL. */
static int
vhd_create_file(const char *path, unsigned type, uint64_t size,
                uint64_t block, const char *backing, struct vd_dev *parent,
                unsigned fflags)
{
  struct vd_file *f = NULL;
  uint8_t *buf = NULL, *payload = NULL;
  size_t payload_len = 0;
  int r;

  size = vd_round_up(size, VHD_SECTOR);
  if (size > VHD_MAX_SIZE)
    return vd_set_error(EFBIG, "%s: size %" PRIu64 " exceeds the VHD limit "
                        "of 2040 GiB (%" PRIu64 " bytes)", path, size,
                        (uint64_t)VHD_MAX_SIZE);

  struct vhd_footer ft = {
    .features = VHD_FEATURES, .version = VHD_VERSION,
    .data_offset = type == VHD_TYPE_FIXED ? VHD_NO_OFFSET : VHD_FOOTER_SIZE,
    .timestamp = vhd_now(), .creator_version = 0x00010000,
    .original_size = size, .current_size = size, .type = type,
  };
  memcpy(ft.cookie, "conectix", 8);
  memcpy(ft.creator_app, VHD_CREATOR_APP, 4);
  memcpy(ft.creator_os, "Wi2k", 4);
  vhd_chs_for_size(size, &ft.cylinders, &ft.heads, &ft.sectors);
  vhd_uuid_generate(ft.uuid);
  uint8_t fbuf[VHD_FOOTER_SIZE];
  vhd_footer_encode(&ft, fbuf);

  r = vd_file_open(path, VD_FILE_RDWR | VD_FILE_CREATE | fflags, &f);
  if (r < 0)
    goto out;
  if (type == VHD_TYPE_FIXED) {
    r = vd_file_truncate(f, size);
    if (r == 0)
      r = vd_file_pwrite(f, fbuf, VHD_FOOTER_SIZE, size);
    goto done;
  }

  struct vhd_header h = {
    .next_offset = VHD_NO_OFFSET, .version = VHD_VERSION,
    .block_size = (uint32_t)block,
    .max_entries = (uint32_t)((size + block - 1) / block),
  };
  uint64_t off = VHD_FOOTER_SIZE + VHD_HEADER_SIZE;
  if (parent) {
    payload_len = 4 * PATH_MAX + 2 * VHD_SECTOR;
    payload = calloc(1, payload_len);
    if (!payload) {
      r = vd_set_error(ENOMEM, "%s: out of memory", path);
      goto out;
    }
    size_t used;
    r = vhd_fill_parent(&h, path, backing, parent, &off, payload,
                        payload_len, &used);
    if (r < 0)
      goto out;
    payload_len = used;
  }
  h.bat_offset = off;
  uint64_t bat_bytes = vd_round_up((uint64_t)h.max_entries * 4, VHD_SECTOR);
  uint64_t total = off + bat_bytes;
  buf = malloc((size_t)total);
  if (!buf) {
    r = vd_set_error(ENOMEM, "%s: out of memory", path);
    goto out;
  }
  memcpy(buf, fbuf, VHD_FOOTER_SIZE);
  vhd_header_encode(&h, buf + VHD_FOOTER_SIZE);
  if (payload_len)
    memcpy(buf + VHD_FOOTER_SIZE + VHD_HEADER_SIZE, payload, payload_len);
  memset(buf + off, 0xFF, (size_t)bat_bytes);
  r = vd_file_pwrite(f, buf, (size_t)total, 0);
  if (r == 0)
    r = vd_file_pwrite(f, fbuf, VHD_FOOTER_SIZE, total);
done:
  if (r == 0)
    r = vd_file_flush(f);
  if (r == 0 && !vd_file_is_blockdev(f))
    r = vd_file_sync_dir(path);
out:
  vd_file_close(f);
  free(buf);
  free(payload);
  return r;
}

/* ---- metadata rewrite (management commands) ---- */

/* Write the footer bytes FB at offset 0, then at TAIL, each made durable. */
static int
vhd_put_footers(struct vd_dev *dev, const uint8_t *fb, uint64_t tail)
{
  int r = vd_file_pwrite(dev->file, fb, VHD_FOOTER_SIZE, 0);
  if (r == 0)
    r = vd_file_flush(dev->file);
  if (r == 0)
    r = vd_file_pwrite(dev->file, fb, VHD_FOOTER_SIZE, tail);
  return r ? r : vd_file_flush(dev->file);
}

/* Replace the dynamic header (at the footers' data offset, HOME) by HB so
 * that a power cut at any moment leaves the old header or the new one in
 * force, never a mix of their two sectors (its checksum is in the first,
 * the parent locators in the second; a power cut may land one sector of
 * a write and not the other).  When the second sector does not change,
 * the first is written alone.  Otherwise the new header goes first past
 * the last block (the tail footer moved after it first), the footers name
 * it (the copy at offset 0 first), the header at HOME is rewritten while
 * nothing reads it, the footers name HOME again and the file is cut back.
 * No other writer: a management command, or a live commit with the node
 * drained. */
static int
vhd_header_replace(struct vd_dev *dev, const uint8_t *hb)
{
  struct vhd_priv *p = dev->priv;
  uint64_t home = p->footer.data_offset;
  uint8_t old[VHD_SECTOR], fb[VHD_FOOTER_SIZE];
  int r = vd_file_pread(dev->file, old, sizeof old, home + VHD_SECTOR);
  if (r < 0)
    return r;
  if (memcmp(old, hb + VHD_SECTOR, VHD_SECTOR) == 0) {
    r = vd_file_pwrite(dev->file, hb, VHD_SECTOR, home);
    return r ? r : vd_file_flush(dev->file);
  }
  pthread_mutex_lock(&p->alloc_lock);
  uint64_t s = p->next_free, tail = s + VHD_HEADER_SIZE;
  p->next_free = tail;
  pthread_mutex_unlock(&p->alloc_lock);
  r = vd_file_pwrite(dev->file, p->footer_raw, VHD_FOOTER_SIZE, tail);
  if (r == 0)
    r = vd_file_flush(dev->file);
  if (r == 0)
    r = vd_file_pwrite(dev->file, hb, VHD_HEADER_SIZE, s);
  if (r == 0)
    r = vd_file_flush(dev->file);
  memcpy(fb, p->footer_raw, sizeof fb);         /* as on disk, naming S */
  vhd_footer_set_data_offset(fb, s);
  if (r == 0)
    r = vhd_put_footers(dev, fb, tail);
  if (r == 0)
    r = vd_file_pwrite(dev->file, hb, VHD_HEADER_SIZE, home);
  if (r == 0)
    r = vd_file_flush(dev->file);
  /* Back to HOME; the footer at S, over the copy, is the new tail. */
  if (r == 0)
    r = vhd_put_footers(dev, p->footer_raw, s);
  if (r == 0)
    r = vd_file_truncate(dev->file, s + VHD_FOOTER_SIZE);
  if (r == 0)
    r = vd_file_flush(dev->file);
  if (r == 0) {
    pthread_mutex_lock(&p->alloc_lock);
    p->next_free = s;
    pthread_mutex_unlock(&p->alloc_lock);
  }
  return r;
}

/* Each step is durable before the next: everything written so far, the
 * header (vhd_header_replace), the footer copy at offset 0, the copy at
 * the end.  A power cut between the two copies leaves the one at offset 0
 * newer, which opening takes (as qemu does) and a read-write open copies
 * to the end. */
int
vhd_write_metadata(struct vd_dev *dev, bool header, bool footers)
{
  struct vhd_priv *p = dev->priv;
  uint8_t hb[VHD_HEADER_SIZE];
  int r = vhd_flush(dev);

  if (r == 0 && header) {
    vhd_header_encode(&p->header, hb);
    r = vhd_header_replace(dev, hb);
  }
  if (r == 0 && footers) {
    vhd_footer_encode(&p->footer, p->footer_raw);
    if (p->type != VHD_TYPE_FIXED) {
      r = vd_file_pwrite(dev->file, p->footer_raw, VHD_FOOTER_SIZE, 0);
      if (r == 0)
        r = vd_file_flush(dev->file);
    }
    pthread_mutex_lock(&p->alloc_lock);
    uint64_t tail = p->type == VHD_TYPE_FIXED ? p->footer_pos : p->next_free;
    if (r == 0)
      r = vd_file_pwrite(dev->file, p->footer_raw, VHD_FOOTER_SIZE, tail);
    pthread_mutex_unlock(&p->alloc_lock);
    if (r == 0)
      r = vd_file_flush(dev->file);
  }
  return r;
}

static struct vd_dev *
vhd_backing_dev(struct vd_dev *dev)
{
  struct vhd_priv *p = dev->priv;
  return p->parent;
}

const struct vd_driver vd_vhd_driver = {
  .name = "vpc",
  .aliases = vhd_aliases,
  .priv_size = sizeof (struct vhd_priv),
  .host_mapped = true,
  .probe = vhd_probe,
  .open = vhd_open,
  .close = vhd_close,
  .create = vhd_create,
  .measure = vhd_measure,
  .create_help =
    "  block_size=<size>      - Block size of a dynamic or differencing image "
    "(a power of two, 512 KiB to 256 MiB; default 2 MiB, or the parent's)\n"
    "  force_size=<bool (on/off)> - Force disk size calculation to use the "
    "actual size specified, rather than using the nearest CHS-based "
    "calculation\n"
    "  subformat=<str>        - Type of virtual hard disk format. Supported "
    "formats are {dynamic (default) | fixed}\n",
  .pread = vhd_pread,
  .pwrite = vhd_pwrite,
  .flush = vhd_flush,
  .discard = vhd_discard,
  .write_zeroes = vhd_write_zeroes,
  .block_status = vhd_block_status,
  .info = vhd_info,
  .check = vhd_check,
  .truncate = vhd_truncate,
  .compact = vhd_compact,
  .make_empty = vhd_make_empty,
  .change_backing = vhd_change_backing,
  .backing_dev = vhd_backing_dev,
  .replace_backing = vhd_replace_backing,
  /* A flush covers every write that completed before it, from any thread
   * or connection: a write returns only after its data and any block
   * allocation were written to the file (one file, one page cache or
   * O_DIRECT) and its BAT entry marked dirty under bat_lock; vhd_flush
   * snapshots the dirty entries under bat_lock after that, then
   * fdatasyncs the whole file before and after writing them. */
  .multi_conn = true,
};

VD_REGISTER_DRIVER(vd_vhd_driver);
