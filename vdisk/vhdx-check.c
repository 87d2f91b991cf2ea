/* libvdisk — VHDX consistency check and repair (vdtool check), [MS-VHDX]
 * sections in vhdx.h.
 *
 * Counts, as qemu-img check does:
 *  - corruptions: a damaged copy of a header or of the region table (the
 *    image still opens through the other copy), region table copies that
 *    differ, anything that makes the open refuse the image (file type
 *    identifier, both headers or region tables, a log with no valid
 *    sequence, metadata, BAT entries outside the file or in reserved
 *    states), and ranges of the file that two structures claim: the header
 *    section, the log, the regions, payload blocks (also the space a zero
 *    or unmapped block keeps for reuse) and sector bitmap blocks;
 *  - leaks: space after the last structure, or a gap of at least 1 MiB
 *    between structures holding non-zero bytes (blocks a writer appended
 *    before a crash cut it off from recording them); one per started block.
 * A dirty log is neither: the check reads the image as replayed (in
 * memory), and -r replays it into the file.
 * Repairs: -r leaks cuts leaked space off the end of the file and punches
 * leaked gaps; -r all also rewrites a damaged header or region table copy
 * from the good one, and gives a payload block whose space another payload
 * block's entry also names (the entry with the higher index) a copy of its
 * own at the end of the file, through the log, so both read what they
 * read before.  Other overlaps (a block over the log, a region or a
 * sector bitmap) are reported, not repaired.
 * Without a fix flag the file is opened read-only and never changed.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vhdx.h"

struct vhdx_checker {
  const char *path;
  struct vd_check_report *r;
  unsigned fix;
};

static void __attribute__((format(printf, 3, 4)))
vhdx_chk_msg(struct vhdx_checker *c, uint64_t *counter, const char *fmt, ...)
{
  char buf[1024];
  va_list ap;
  int n = snprintf(buf, sizeof buf, "%s: ", c->path);
  va_start(ap, fmt);
  vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
  va_end(ap);
  if (counter)
    (*counter)++;
  if (c->r->message)
    c->r->message(c->r->opaque, buf);
}

/* Report the two copies of WHAT: one line per damaged copy, or the
 * open's own line when neither is valid. */
static void
vhdx_chk_pair(struct vhdx_checker *c, int r, const bool ok[2],
              char err[2][256], const char *what)
{
  if (r < 0)
    return;
  if (!ok[0] && !ok[1])
    vhdx_chk_msg(c, &c->r->corruptions, "no valid %s (%s; %s)", what,
                 err[0], err[1]);
  else
    for (int i = 0; i < 2; i++)
      if (!ok[i])
        vhdx_chk_msg(c, &c->r->corruptions, "%s", err[i]);
}

/* Both copies of the headers and the region table, on the raw file F: a
 * damaged copy is a corruption; -r all rewrites it from the good one (the
 * current header, the first valid region table). */
static int
vhdx_chk_copies(struct vhdx_checker *c, struct vd_file *f, bool *unusable)
{
  uint8_t *buf = malloc(2 * VHDX_RT_SIZE);
  char where[32];
  int r = 0;
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", c->path);
  struct vhdx_header h[2];
  bool ok[2];
  char err[2][256];
  for (int i = 0; i < 2 && r == 0; i++) {
    if ((r = vd_file_pread(f, buf + i * VHDX_HEADER_SIZE, VHDX_HEADER_SIZE,
                           VHDX_HEADER_OFF(i))) < 0)
      break;
    snprintf(where, sizeof where, "header %d", i + 1);
    ok[i] = vhdx_header_decode(buf + i * VHDX_HEADER_SIZE, &h[i], where) == 0;
    snprintf(err[i], sizeof err[i], "%s", ok[i] ? "" : vd_error());
  }
  vhdx_chk_pair(c, r, ok, err, "header");
  *unusable = r == 0 && !ok[0] && !ok[1];
  if (r == 0 && ok[0] != ok[1] && (c->fix & VD_CHECK_FIX_ERRORS)) {
    /* The damaged slot gets the good header, one sequence number on. */
    int good = ok[0] ? 0 : 1;
    h[good].seq++;
    vhdx_header_encode(&h[good], buf + (1 - good) * VHDX_HEADER_SIZE);
    if ((r = vd_file_pwrite(f, buf + (1 - good) * VHDX_HEADER_SIZE,
                            VHDX_HEADER_SIZE, VHDX_HEADER_OFF(1 - good))) == 0 &&
        (r = vd_file_flush(f)) == 0)
      c->r->corruptions_fixed++;
  }
  struct vhdx_region *rg = malloc(VHDX_RT_MAX * sizeof *rg);
  if (!rg) {
    free(buf);
    return r < 0 ? r : vd_set_error(ENOMEM, "%s: out of memory", c->path);
  }
  for (int i = 0; i < 2 && r == 0; i++) {
    uint32_t n;
    if ((r = vd_file_pread(f, buf + i * VHDX_RT_SIZE, VHDX_RT_SIZE,
                           VHDX_RT_OFF(i))) < 0)
      break;
    snprintf(where, sizeof where, "region table %d", i + 1);
    ok[i] = vhdx_region_decode(buf + i * VHDX_RT_SIZE, rg, &n, where) == 0;
    snprintf(err[i], sizeof err[i], "%s", ok[i] ? "" : vd_error());
  }
  vhdx_chk_pair(c, r, ok, err, "region table");
  *unusable |= r == 0 && !ok[0] && !ok[1];
  if (r == 0 && ok[0] && ok[1] &&
      memcmp(buf, buf + VHDX_RT_SIZE, VHDX_RT_SIZE) != 0)
    vhdx_chk_msg(c, &c->r->corruptions, "region table 1 and region table 2 "
                 "differ");
  else if (r == 0 && ok[0] != ok[1] && (c->fix & VD_CHECK_FIX_ERRORS)) {
    int good = ok[0] ? 0 : 1;
    if ((r = vd_file_pwrite(f, buf + good * VHDX_RT_SIZE, VHDX_RT_SIZE,
                            VHDX_RT_OFF(1 - good))) == 0 &&
        (r = vd_file_flush(f)) == 0)
      c->r->corruptions_fixed++;
  }
  free(rg);
  free(buf);
  return r;
}

int
vhdx_use_cmp(const void *a, const void *b)
{
  const struct vhdx_use *x = a, *y = b;
  return x->off < y->off ? -1 : x->off > y->off;
}

static void
vhdx_use_name(const struct vhdx_use *u, char *out, size_t len)
{
  if (u->entry == UINT64_MAX)
    snprintf(out, len, "%s", u->what);
  else
    snprintf(out, len, "BAT entry %" PRIu64 " (%s)", u->entry, u->what);
}

/* Whether [OFF, OFF+LEN) of F holds a non-zero byte. */
static int
vhdx_chk_nonzero(struct vd_file *f, uint64_t off, uint64_t len, bool *nz)
{
  static uint8_t buf[1u << 16];
  *nz = false;
  while (len && !*nz) {
    size_t n = len < sizeof buf ? (size_t)len : sizeof buf;
    int r = vd_file_pread(f, buf, n, off);
    if (r < 0)
      return r;
    for (size_t i = 0; i < n && !*nz; i++)
      *nz = buf[i] != 0;
    off += n;
    len -= n;
  }
  return 0;
}

/* Whether overlapping uses A and B are both payload blocks. */
static bool
vhdx_chk_blocks(const struct vhdx_use *a, const struct vhdx_use *b)
{
  return a->entry != UINT64_MAX && b->entry != UINT64_MAX &&
         strcmp(a->what, "payload block") == 0 &&
         strcmp(b->what, "payload block") == 0;
}

/* -r all: each of the N entries MV (sharing space with another payload
 * block) gets a copy of its block at the end of the file, so both keep
 * reading what they read. */
static int
vhdx_chk_unshare(struct vhdx_checker *c, struct vd_dev *dev,
                 const uint64_t *mv, size_t n)
{
  struct vhdx_priv *p = dev->priv;
  uint8_t *buf = malloc(VHDX_MiB);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", c->path);
  pthread_mutex_lock(&p->lock);
  int r = vhdx_begin_locked(dev);
  for (size_t i = 0; r == 0 && i < n; i++) {
    bool done = false;
    for (size_t j = 0; j < i; j++)
      done |= mv[j] == mv[i];
    /* An entry moved already fixed this overlap too. */
    if (done || (r = vhdx_fresh_copy_locked(dev, mv[i], buf)) == 0)
      c->r->corruptions_fixed++;
  }
  pthread_mutex_unlock(&p->lock);
  free(buf);
  return r;
}

size_t
vhdx_uses(const struct vhdx_priv *p, struct vhdx_use *u)
{
  uint64_t cr = p->chunk_ratio;
  size_t n = 0;
  u[n++] = (struct vhdx_use){ 0, VHDX_MiB, UINT64_MAX, "the header section" };
  if (p->header.log_length)
    u[n++] = (struct vhdx_use){ p->header.log_offset, p->header.log_length,
                                UINT64_MAX, "the log" };
  u[n++] = (struct vhdx_use){ p->bat_region.off, p->bat_region.len,
                              UINT64_MAX, "the BAT region" };
  u[n++] = (struct vhdx_use){ p->meta_region.off, p->meta_region.len,
                              UINT64_MAX, "the metadata region" };
  for (uint64_t i = 0; i < p->bat_entries; i++) {
    uint64_t e = p->bat[i], off = VHDX_BAT_OFFSET(e);
    unsigned st = VHDX_BAT_STATE(e);
    bool sb = i % (cr + 1) == cr;
    if (sb ? st != VHDX_SB_PRESENT || !p->meta.has_parent
           : st == VHDX_PB_NOT_PRESENT || st == VHDX_PB_UNDEFINED || !off)
      continue;
    u[n++] = (struct vhdx_use){ off, sb ? VHDX_SB_SIZE : p->meta.block_size,
                                i, sb ? "sector bitmap" : "payload block" };
  }
  return n;
}

/* Overlaps and leaks of the open image DEV. */
static int
vhdx_chk_space(struct vhdx_checker *c, struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t fsz, bs = p->meta.block_size, cr = p->chunk_ratio;
  int r = vd_file_size(dev->file, &fsz);
  if (r < 0)
    return r;
  struct vhdx_use *u = malloc((p->bat_entries + 4) * sizeof *u);
  if (!u)
    return vd_set_error(ENOMEM, "%s: out of memory", c->path);
  c->r->total_clusters = p->data_blocks;
  for (uint64_t b = 0; b < p->data_blocks; b++) {
    unsigned st = VHDX_BAT_STATE(p->bat[b + b / cr]);
    c->r->allocated_clusters += st == VHDX_PB_FULLY_PRESENT ||
                                st == VHDX_PB_PARTIALLY_PRESENT;
  }
  size_t n = vhdx_uses(p, u), nmv = 0;
  uint64_t *mv = malloc(n * sizeof *mv);
  if (!mv) {
    free(u);
    return vd_set_error(ENOMEM, "%s: out of memory", c->path);
  }
  qsort(u, n, sizeof *u, vhdx_use_cmp);
  uint64_t end = 0;
  size_t last = 0;
  char a[96], b[96];
  for (size_t i = 0; i < n; i++) {
    if (i > 0 && u[i].off < end) {
      vhdx_use_name(&u[last], a, sizeof a);
      vhdx_use_name(&u[i], b, sizeof b);
      vhdx_chk_msg(c, &c->r->corruptions, "%s at offset %" PRIu64 " overlaps "
                   "%s", b, u[i].off, a);
      /* Two payload blocks: the later entry gets its own copy (-r all). */
      if (vhdx_chk_blocks(&u[i], &u[last]))
        mv[nmv++] = u[i].entry > u[last].entry ? u[i].entry : u[last].entry;
    } else if (u[i].off >= end + VHDX_MiB && end < fsz) {
      /* A gap: non-zero bytes in it are a leak. */
      uint64_t glen = (u[i].off < fsz ? u[i].off : fsz) - end;
      bool nz;
      if ((r = vhdx_chk_nonzero(dev->file, end, glen, &nz)) < 0)
        break;
      if (nz) {
        vhdx_chk_msg(c, NULL, "leaked space: %" PRIu64 " bytes at offset %"
                     PRIu64 " that no structure uses", glen, end);
        uint64_t k = (glen + bs - 1) / bs;
        c->r->leaks += k;
        if ((c->fix & VD_CHECK_FIX_LEAKS) &&
            vd_file_punch(dev->file, end, glen) == 0)
          c->r->leaks_fixed += k;
      }
    }
    if (u[i].off + u[i].len > end) {
      end = u[i].off + u[i].len;
      last = i;
    }
  }
  free(u);
  if (r < 0) {
    free(mv);
    return r;
  }
  c->r->image_end_offset = end < fsz ? end : fsz;
  if (fsz > end) {
    uint64_t k = (fsz - end + bs - 1) / bs;
    vhdx_chk_msg(c, NULL, "leaked space: %" PRIu64 " bytes after the last "
                 "structure (offset %" PRIu64 ")", fsz - end, end);
    c->r->leaks += k;
    if ((c->fix & VD_CHECK_FIX_LEAKS) &&
        (r = vd_file_truncate(dev->file, end)) == 0 &&
        (r = vd_file_flush(dev->file)) == 0)
      c->r->leaks_fixed += k;
  }
  if (r == 0 && nmv && (c->fix & VD_CHECK_FIX_ERRORS))
    r = vhdx_chk_unshare(c, dev, mv, nmv);
  free(mv);
  return r;
}

int
vhdx_check(const char *path, unsigned flags, struct vd_check_report *rep)
{
  unsigned fix = flags & VD_CHECK_FIX_ALL;
  struct vhdx_checker c = { .path = path, .r = rep, .fix = fix };
  struct vd_file *f;
  int r = vd_file_open(path, fix ? VD_FILE_RDWR
                       : flags & VD_CHECK_NOLOCK ? VD_FILE_NOLOCK : 0, &f);
  if (r < 0)
    return r;
  uint64_t fsz;
  uint8_t fti[8];
  bool unusable = true;
  if ((r = vd_file_size(f, &fsz)) < 0)
    goto out_file;
  if (fsz < VHDX_MiB || vd_file_pread(f, fti, 8, 0) < 0 ||
      memcmp(fti, "vhdxfile", 8) != 0) {
    vd_clear_error();
    vhdx_chk_msg(&c, &rep->corruptions, "file type identifier: no VHDX "
                 "header section");
    goto out_file;
  }
  r = vhdx_chk_copies(&c, f, &unusable);
out_file:
  vd_file_close(f);
  if (r < 0 || unusable)   /* said why already; the open would fail */
    goto out;
  /* The driver's own open validates the rest (log, metadata, BAT against
   * the file) exactly as every reader will see it; a read-write open for
   * -r replays a dirty log into the file.  Parents are only looked up. */
  struct vd_open_args a = {
    .format = "vhdx",
    .flags = VD_OPEN_NOPARENT | (fix ? VD_OPEN_RDWR
                                 : flags & VD_CHECK_NOLOCK ? VD_OPEN_NOLOCK
                                 : 0),
  };
  struct vd_dev *dev;
  if (vd_open_opts(path, &a, &dev) < 0) {
    /* The message names the file and the structure already. */
    if (rep->message)
      rep->message(rep->opaque, vd_error());
    rep->corruptions++;
    goto out;
  }
  r = vhdx_chk_space(&c, dev);
  int r2 = vd_close(dev);
  if (r == 0)
    r = r2;
out:
  rep->corruptions -= rep->corruptions_fixed < rep->corruptions
                      ? rep->corruptions_fixed : rep->corruptions;
  rep->leaks -= rep->leaks_fixed < rep->leaks ? rep->leaks_fixed : rep->leaks;
  return r;
}
