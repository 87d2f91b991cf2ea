/* libvdisk — management operations (vd_truncate, vd_compact, vd_make_empty,
 * vd_change_backing, vd_commit, vd_commit_base): argument checks, dispatch to the driver
 * ops, and the generic fallbacks that work on any format by copying
 * through the public request paths (block status, read, write).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vdisk/driver.h"
#include "vdisk/mirror.h"

/* Copy unit of the generic paths. */
#define MG_CHUNK (1u << 20)
/* Compare unit of safe rebase: a sector, as qemu-img rebase. */
#define MG_SECTOR 512u

static int
mg_writable(struct vd_dev *dev, const char *what)
{
  const char *why = dev->read_only ? vd_read_only_why(dev) : NULL;
  if (dev->read_only)
    return vd_set_error(EROFS, "%s: cannot %s: the image is open read-only%s"
                        "%s", dev->path, what, why ? "; " : "",
                        why ? why : "");
  return 0;
}

static int
mg_unsupported(const struct vd_dev *dev, const char *what)
{
  return vd_set_error(ENOTSUP, "%s: format '%s' cannot %s", dev->path,
                      dev->drv->name, what);
}

int
vd_truncate(struct vd_dev *dev, uint64_t size, unsigned flags)
{
  int r;
  if (flags & ~VD_TRUNCATE_SHRINK)
    return vd_set_error(EINVAL, "%s: invalid truncate flags 0x%x", dev->path,
                        flags);
  if (!dev->drv->truncate)
    return mg_unsupported(dev, "be resized");
  if ((r = mg_writable(dev, "resize")) < 0)
    return r;
  if (size < dev->size && !(flags & VD_TRUNCATE_SHRINK))
    return vd_set_error(EINVAL, "%s: use --shrink to make the image smaller",
                        dev->path);
  /* The new end would be probed: a guessed raw image must not be cut to
   * show other bytes there (vd_probed_raw).  Growing adds zeros, which
   * probe as nothing. */
  if (size < dev->size && dev->probe_guard)
    return vd_set_error(EPERM, "%s: probed as raw: name the format (-f raw) "
                        "to shrink it", dev->path);
  r = dev->drv->truncate(dev, size, flags);
  vd_dev_changed(dev);
  return r;
}

int
vd_compact(struct vd_dev *dev, uint64_t *freed, vd_progress_fn progress,
           void *opaque)
{
  uint64_t dummy;
  int r;
  if (!freed)
    freed = &dummy;
  *freed = 0;
  if (!dev->drv->compact)
    return mg_unsupported(dev, "be compacted");
  if ((r = mg_writable(dev, "compact")) < 0)
    return r;
  r = dev->drv->compact(dev, freed, progress, opaque);
  vd_dev_changed(dev);
  return r;
}

int
vd_make_empty(struct vd_dev *dev)
{
  int r;
  if (!dev->drv->make_empty)
    return mg_unsupported(dev, "be emptied");
  if ((r = mg_writable(dev, "empty it")) < 0)
    return r;
  r = dev->drv->make_empty(dev);
  vd_dev_changed(dev);
  return r;
}

/* ---- shared by the copying fallbacks ---- */

int
vd_reads_zero(struct vd_dev *dev, uint64_t off, uint64_t len, bool *zero)
{
  *zero = true;
  if (!dev || off >= dev->size)
    return 0;
  if (off + len > dev->size)
    len = dev->size - off;
  while (len > 0) {
    struct vd_extent e;
    int r = vd_block_status(dev, off, len, &e);
    if (r < 0)
      return r;
    if (!(e.flags & VD_EXT_ZERO)) {
      *zero = false;
      return 0;
    }
    off += e.length;
    len -= e.length;
  }
  return 0;
}

/* Read [OFF, OFF+LEN) of DEV, zeros past its end or when DEV is NULL. */
static int
mg_read(struct vd_dev *dev, uint8_t *buf, size_t len, uint64_t off)
{
  size_t n = 0;
  if (dev && off < dev->size)
    n = dev->size - off < len ? (size_t)(dev->size - off) : len;
  memset(buf + n, 0, len - n);
  return n ? vd_pread(dev, buf, n, off) : 0;
}

/* ---- commit ---- */

int
vd_commit_piece(struct vd_dev *top, struct vd_dev *base, int depth,
                uint64_t off, uint8_t *buf, size_t len, uint64_t *advanced,
                uint64_t *copied)
{
  struct vd_extent e;
  *advanced = *copied = 0;
  int r = vd_block_status(top, off, top->size - off, &e);
  if (r < 0)
    return r;
  if ((e.flags & VD_EXT_HOLE) || e.depth >= depth) {
    *advanced = e.length;          /* base (or below) shows it already */
    return 0;
  }
  size_t n = e.length < len ? (size_t)e.length : len;
  if (e.flags & VD_EXT_ZERO)
    r = vd_write_zeroes(base, off, n, 0);
  else if ((r = vd_pread(top, buf, n, off)) == 0)
    r = vd_mirror_is_zero(buf, n) ? vd_write_zeroes(base, off, n, 0)
                                  : vd_pwrite(base, buf, n, off, 0);
  if (r == 0)
    *advanced = *copied = n;
  return r;
}

/* The generic commit: every extent a layer of TOP's chain above DEPTH
 * holds (DEPTH 1: TOP alone, which may be opened without its parent)
 * goes into BASE (vd_commit_piece), then BASE is flushed. */
static int
mg_commit_copy(struct vd_dev *top, struct vd_dev *base, int depth,
               vd_progress_fn progress, void *opaque)
{
  uint8_t *buf = malloc(MG_CHUNK);
  int r = 0;
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", top->path);
  for (uint64_t off = 0, adv, copied; r == 0 && off < top->size;
       off += adv) {
    if (progress)
      progress(opaque, off, top->size);
    r = vd_commit_piece(top, base, depth, off, buf, MG_CHUNK, &adv, &copied);
  }
  free(buf);
  if (r == 0)
    r = vd_flush(base);
  if (r == 0 && progress)
    progress(opaque, top->size, top->size);
  return r;
}

/* A base (opened writable) shorter than TOP grows to TOP's size first, as
 * qemu's commit job truncates it; what it did not hold reads as zeros, as
 * the chain read it. */
static int
mg_grow_base(struct vd_dev *top, struct vd_dev *base)
{
  if (top->size <= base->size)
    return 0;
  int r = vd_truncate(base, top->size, 0);
  return r < 0 ? vd_prefix_error(-r, "cannot grow the base %s to %" PRIu64
                                 " bytes", vd_path(base), top->size) : 0;
}

int
vd_commit(const char *path, const struct vd_open_args *args,
          vd_progress_fn progress, void *opaque)
{
  static const struct vd_open_args none;
  struct vd_dev *top = NULL, *base = NULL;
  struct vd_info *info = calloc(1, sizeof *info);
  int r;

  if (!info)
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  if (!args)
    args = &none;
  /* 1. The chain open finds and checks the backing file (locators, UUID,
   * confinement, loops); info says which one and in what format. */
  struct vd_open_args a = *args;
  a.flags &= ~(VD_OPEN_RDWR | VD_OPEN_NOPARENT);
  if ((r = vd_open_opts(path, &a, &top)) < 0)
    goto out;
  vd_get_info(top, info);
  vd_close(top);
  top = NULL;
  if (!info->backing[0]) {
    r = vd_set_error(EINVAL, "%s: has no backing file to commit into", path);
    goto out;
  }
  /* 2. The top alone (its parent is about to be opened writable, which a
   * read lock from the chain would forbid), then that parent. */
  a.flags |= VD_OPEN_NOPARENT;
  a.format = info->format;
  if ((r = vd_open_opts(path, &a, &top)) < 0)
    goto out;
  struct vd_open_args b = {
    .format = info->backing_format[0] ? info->backing_format : NULL,
    .flags = VD_OPEN_RDWR | (args->flags & (VD_OPEN_DIRECT | VD_OPEN_NOLOCK)),
    .parent_policy = args->parent_policy,
  };
  if ((r = vd_open_parent(top, info->backing, &b, &base)) < 0)
    goto out;
  if ((r = mg_grow_base(top, base)) < 0)
    goto out;
  r = top->drv->commit ? top->drv->commit(top, base, progress, opaque)
                       : mg_commit_copy(top, base, 1, progress, opaque);
  vd_dev_changed(top);
  vd_dev_changed(base);
out:
  if (base) {
    int r2 = vd_close(base);
    if (r == 0)
      r = r2;
  }
  vd_close(top);
  free(info);
  return r;
}

bool
vd_same_file(const char *a, const char *b)
{
  struct stat x, y;
  return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev &&
         x.st_ino == y.st_ino;
}

/* Whether PATH names D, whose child is CHILD (vd_chain_below's rule). */
static bool
mg_names(const struct vd_dev *child, const char *path, struct vd_dev *d)
{
  if (vd_same_file(path, vd_path(d)))
    return true;
  const char *cp = vd_path(child), *slash = strrchr(cp, '/');
  char rel[PATH_MAX];
  return path[0] != '/' && slash &&
         snprintf(rel, sizeof rel, "%.*s/%s", (int)(slash - cp), cp, path) <
           (int)sizeof rel &&
         vd_same_file(rel, vd_path(d));
}

struct vd_dev *
vd_chain_below(struct vd_dev *from, const char *path, int *depth)
{
  struct vd_dev *found = NULL;
  int k = 0;
  for (struct vd_dev *c = from, *d; (d = vd_backing_dev(c)); c = d) {
    k++;
    if (!path || !*path || mg_names(c, path, d)) {
      found = d;
      *depth = k;
      if (path && *path)
        break;
    }
  }
  return found;
}

int
vd_commit_base(const char *path, const struct vd_open_args *args,
               const char *base, vd_progress_fn progress, void *opaque)
{
  static const struct vd_open_args none;
  struct vd_dev *top = NULL;
  int depth = 0, r;

  if (!base || !*base)
    return vd_commit(path, args, progress, opaque);
  struct vd_open_args a = args ? *args : none;
  a.flags &= ~(VD_OPEN_RDWR | VD_OPEN_NOPARENT);
  if ((r = vd_open_opts(path, &a, &top)) < 0)
    return r;
  struct vd_dev *b = vd_chain_below(top, base, &depth);
  if (!b)
    r = vd_set_error(ENOENT, "Did not find '%s' in the backing chain of "
                     "'%s'", base, path);
  /* The base becomes writable in place: the chain keeps reading through
   * that same handle, and is written only where a layer above it holds
   * data, with the bytes the chain shows there. */
  else if ((r = vd_reopen(b, VD_OPEN_RDWR)) < 0)
    r = vd_prefix_error(-r, "cannot write the base %s", vd_path(b));
  else {
    r = mg_grow_base(top, b);
    if (r == 0)
      r = mg_commit_copy(top, b, depth, progress, opaque);
    int r2 = vd_reopen(b, 0);
    r = r ? r : r2;
  }
  int r2 = vd_close(top);
  return r ? r : r2;
}

/* ---- change backing (rebase) ---- */

/* Safe rebase: every range DEV does not hold itself reads from its current
 * chain; where that differs from NP (NULL: no backing file), write the
 * current contents into DEV. */
static int
mg_rebase_copy(struct vd_dev *dev, struct vd_dev *np, vd_progress_fn progress,
               void *opaque)
{
  uint8_t *oldb = malloc(MG_CHUNK), *newb = malloc(MG_CHUNK);
  int r = 0;
  if (!oldb || !newb) {
    r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    goto out;
  }
  for (uint64_t off = 0; r == 0 && off < dev->size;) {
    struct vd_extent e;
    if (progress)
      progress(opaque, off, dev->size);
    uint64_t want = dev->size - off < MG_CHUNK ? dev->size - off : MG_CHUNK;
    if ((r = vd_block_status(dev, off, want, &e)) < 0)
      break;
    size_t len = (size_t)e.length;
    bool own = !(e.flags & VD_EXT_HOLE) && e.depth == 0, z_new;
    if (own || ((e.flags & VD_EXT_ZERO) &&
                (r = vd_reads_zero(np, off, len, &z_new)) == 0 && z_new)) {
      off += len;
      continue;
    }
    if (r < 0 || (r = vd_pread(dev, oldb, len, off)) < 0 ||
        (r = mg_read(np, newb, len, off)) < 0)
      break;
    /* Runs of sectors that differ (the extent may end mid-sector only at
     * the end of the disk). */
    for (size_t s = 0; r == 0 && s < len;) {
      size_t t = s;
      while (t < len && memcmp(oldb + t, newb + t,
                               len - t < MG_SECTOR ? len - t : MG_SECTOR))
        t += len - t < MG_SECTOR ? len - t : MG_SECTOR;
      if (t > s) {
        r = vd_pwrite(dev, oldb + s, t - s, off + s, 0);
        s = t;
      } else {
        s += len - s < MG_SECTOR ? len - s : MG_SECTOR;
      }
    }
    off += len;
  }
  if (r == 0)
    r = vd_flush(dev);
out:
  free(oldb);
  free(newb);
  return r;
}

int
vd_change_backing(struct vd_dev *dev, const char *backing,
                  const char *backing_format, unsigned flags,
                  vd_progress_fn progress, void *opaque)
{
  struct vd_dev *np = NULL;
  int r;

  if (flags & ~VD_BACKING_UNSAFE)
    return vd_set_error(EINVAL, "%s: invalid change_backing flags 0x%x",
                        dev->path, flags);
  /* A format with backing files whose pointer vdisk cannot rewrite
   * (qcow2, VHDX) says so, rather than that it has none. */
  if (!dev->drv->change_backing)
    return mg_unsupported(dev, dev->drv->backing_dev
                               ? "have its backing file changed by vdisk"
                               : "have a backing file");
  if ((r = mg_writable(dev, "change its backing file")) < 0)
    return r;
  bool unsafe = flags & VD_BACKING_UNSAFE;
  if (!unsafe && (dev->open_flags & VD_OPEN_NOPARENT))
    return vd_set_error(EINVAL, "%s: a safe rebase reads the current backing "
                        "chain: open the image with it", dev->path);
  if (backing && !*backing)
    backing = NULL;
  if (backing) {
    /* The operator names it, so no confinement for it; its own parents
     * follow DEV's policy and may not lead back to DEV (the child link
     * makes its chain open check that). */
    char *real = realpath(backing, NULL);
    bool self = real && dev->real && strcmp(real, dev->real) == 0;
    free(real);
    if (self)
      return vd_set_error(ELOOP, "%s: rebasing onto %s would make a parent "
                          "loop", dev->path, backing);
    struct vd_open_args a = {
      .format = backing_format,
      .flags = VD_OPEN_NOLOCK,
      .parent_policy = dev->opts.parent_policy,
    };
    if ((r = vd_open_parent(dev, backing, &a, &np)) < 0)
      return vd_prefix_error(-r, "%s: new backing file", dev->path);
  }
  if (!unsafe)
    r = mg_rebase_copy(dev, np, progress, opaque);
  if (r == 0)
    r = dev->drv->change_backing(dev, backing, np);
  vd_dev_changed(dev);
  if (r == 0 && progress)
    progress(opaque, dev->size, dev->size);
  vd_close(np);
  return r;
}
