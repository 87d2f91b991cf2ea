/* libvdisk — the device object and the one dispatcher.
 *
 * Every public request goes through here: NULL/flag/bounds/read-only
 * checks happen once, partial logical blocks of strictly aligned drivers
 * are read-modify-written here, FUA is turned into a flush, and missing
 * optional ops get a generic fallback.  Drivers then trust their input
 * (see driver.h).
 *
 * Errors for out-of-range requests follow NBD's rules, which frontends
 * pass on unchanged: reads, discards and block status past the end give
 * -EINVAL; writes and write-zeroes past the end give -ENOSPC.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "vdisk/blocklock.h"
#include "vdisk/driver.h"
#include "vdisk/endian.h"

#define VD_REQ_ALL (VD_REQ_FUA | VD_REQ_NO_HOLE | VD_REQ_FAST_ZERO)
#define VD_OPEN_ALL (VD_OPEN_RDWR | VD_OPEN_DIRECT | VD_OPEN_NOLOCK | \
                     VD_OPEN_NOPARENT | VD_OPEN_PROBE_LEAF | VD_OPEN_FORCE | \
                     VD_OPEN_NO_FLUSH)
#define VD_ZERO_CHUNK (1u << 20)

/* Free DEV and close what a filter's device stands on; returns that
 * close's result. */
static int
dev_free(struct vd_dev *dev)
{
  if (!dev)
    return 0;
  int r = vd_close(dev->below);
  vd_file_close(dev->file);
  vd_blocklock_destroy(dev->rmw_lock, VD_DEV_RMW_LOCKS);
  pthread_mutex_destroy(&dev->probe_lock);
  pthread_mutex_destroy(&dev->flush_lock);
  pthread_cond_destroy(&dev->flush_done);
  free(dev->priv);
  free(dev->path);
  free(dev->real);
  free((char *)dev->opts.format);
  free((char *)dev->opts.backing);
  free((char *)dev->opts.backing_format);
  free((char *)dev->opts.filter);
  free((char *)dev->opts.snapshot);
  free(dev);
  return r;
}

static const struct vd_driver *
dev_lookup(const char *path, const char *format, bool leaf_only, int *err)
{
  if (!format)
    return vd_probe_path_leaf(path, leaf_only, err);
  const struct vd_driver *drv = vd_find_driver(format);
  if (!drv)
    *err = vd_set_error(EINVAL, "%s: unknown format '%s'", path, format);
  return drv;
}

/* strdup that keeps NULL; false only when out of memory. */
static bool
dev_strdup(const char **dst, const char *src)
{
  *dst = src ? strdup(src) : NULL;
  return !src || *dst;
}

/* Refuse what is neither a regular file nor a block device before any
 * open(): opening a FIFO blocks until a writer comes, a character device
 * may have side effects.  The RAID descriptor and other drivers that open
 * their own files go through here too. */
static int
dev_check_type(const char *path, unsigned flags)
{
  struct stat st;
  if (stat(path, &st) == -1)
    return vd_set_error(errno, "%s: cannot open %s: %s", path,
                        (flags & VD_OPEN_RDWR) ? "for writing" : "for reading",
                        strerror(errno));
  if (S_ISDIR(st.st_mode))
    return vd_set_error(EISDIR, "%s: is a directory, not an image", path);
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    return vd_set_error(EINVAL, "%s: not a regular file or block device",
                        path);
  return 0;
}

static int dev_read_only(struct vd_dev *dev, const char *op);
static int dev_open(const struct vd_dev *child, const char *path,
                    const struct vd_open_args *args, struct vd_dev *adopt, bool allow_uri,
                    struct vd_dev **out);

/* The open option `filter` over an image opened as DRV: a composition
 * (opens_own_files: RAID) passes it on to what it opens; otherwise open
 * the image itself as *BELOW, with every other option, and make *DRV the
 * filter that goes over it. */
static int
dev_open_below(const struct vd_dev *child, const char *path,
               const struct vd_open_args *args, bool allow_uri,
               const struct vd_driver **drv, struct vd_dev **below)
{
  *below = NULL;
  if (!args->filter || (*drv)->opens_own_files)
    return 0;
  const struct vd_driver *f = vd_find_driver(args->filter);
  if (!f || !f->filter)
    return vd_set_error(EINVAL, "%s: unknown filter '%s'", path,
                        args->filter);
  struct vd_open_args ia = *args;
  ia.filter = NULL;
  int r = dev_open(child, path, &ia, NULL, allow_uri, below);
  if (r == 0)
    *drv = f;
  return r;
}

/* The driver for a remote name the operator gave: nbd for an NBD URI,
 * rbd for an rbd: name; each carries the image's bytes as they are
 * (qemu's raw over its nbd protocol, qemu's rbd driver).  "raw" is
 * accepted as the same thing; a container format over them is not
 * supported (its drivers read a local file). */
static const struct vd_driver *
dev_uri_driver(const char *path, const char *format, int *err)
{
  bool nbd_uri = vd_is_nbd_uri(path);
  const struct vd_driver *d = vd_find_driver(nbd_uri ? "nbd" : "rbd");
  if (!format || strcasecmp(format, "raw") == 0)
    return d;
  const struct vd_driver *drv = vd_find_driver(format);
  if (drv == d)
    return d;
  *err = vd_set_error(ENOTSUP, "%s: %s opens as the image's raw bytes "
                      "(format %s or raw), not as '%s'", path,
                      nbd_uri ? "an NBD URI" : "an rbd: name", d->name,
                      format);
  return NULL;
}

/* ALLOW_URI: PATH came from the operator (vd_open, --backing), so an NBD
 * URI names an export and an rbd: name an RBD image; otherwise (a path
 * read out of an image) it is a file name like any other. */
static int
dev_open(const struct vd_dev *child, const char *path,
         const struct vd_open_args *args, struct vd_dev *adopt, bool allow_uri,
         struct vd_dev **out)
{
  static const struct vd_open_args none;
  struct vd_dev *dev;
  int r = 0;

  if (!path || !out)
    return vd_set_error(EINVAL, "vd_open: no path");
  if (!args)
    args = &none;
  unsigned flags = args->flags;
  if (flags & ~VD_OPEN_ALL)
    return vd_set_error(EINVAL, "%s: invalid open flags 0x%x", path, flags);
  if (args->parent_policy > VD_PARENT_ANY_FOLDER)
    return vd_set_error(EINVAL, "%s: invalid parent policy %u", path,
                        args->parent_policy);
  bool uri = allow_uri && vd_is_remote_name(path);
  const struct vd_driver *drv;
  if (uri) {
    drv = dev_uri_driver(path, args->format, &r);
  } else {
    if ((r = dev_check_type(path, flags)) < 0)
      return r;
    drv = dev_lookup(path, args->format, flags & VD_OPEN_PROBE_LEAF, &r);
  }
  if (!drv)
    return r;
  if (drv->filter)
    return vd_set_error(EINVAL, "%s: '%s' is a filter, not a format (the "
                        "open option filter stacks it)", path, drv->name);
  struct vd_dev *below;
  if (args->snapshot && !drv->snapshot_list)
    return vd_set_error(ENOTSUP, "%s: format '%s' has no internal "
                        "snapshots", path, drv->name);
  if ((r = dev_open_below(child, path, args, allow_uri, &drv, &below)) < 0)
    return r;

  dev = calloc(1, sizeof *dev);
  if (!dev) {
    vd_close(below);
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  }
  dev->below = below;
  vd_blocklock_init(dev->rmw_lock, VD_DEV_RMW_LOCKS);
  pthread_mutex_init(&dev->probe_lock, NULL);
  pthread_mutex_init(&dev->flush_lock, NULL);
  pthread_cond_init(&dev->flush_done, NULL);
  dev->wgen = 1;              /* the first flush always reaches the driver */
  dev->opts = *args;
  dev->opts.format = dev->opts.backing = dev->opts.backing_format = NULL;
  dev->opts.filter = dev->opts.snapshot = NULL;
  if (!(dev->path = strdup(path)) ||
      !dev_strdup(&dev->opts.format, args->format) ||
      !dev_strdup(&dev->opts.backing, args->backing) ||
      !dev_strdup(&dev->opts.backing_format, args->backing_format) ||
      !dev_strdup(&dev->opts.filter, args->filter) ||
      !dev_strdup(&dev->opts.snapshot, args->snapshot) ||
      (drv->priv_size && !(dev->priv = calloc(1, drv->priv_size)))) {
    dev_free(dev);
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  }
  dev->real = uri ? NULL : realpath(path, NULL);
  dev->uri_ok = uri;
  dev->operator_named = allow_uri;
  dev->child = child;
  /* A read-only format is opened read-only whatever was asked, so that
   * serving it "writable" does not take the exclusive image lock. */
  if (drv->read_only_hint)
    flags &= ~VD_OPEN_RDWR;
  dev->drv = drv;
  dev->open_flags = flags;
  dev->opts.flags = flags;
  dev->read_only = !(flags & VD_OPEN_RDWR);
  dev->logical_block = 512;
  dev->preferred_io = 4096;
  /* qemu's rule: a guessed raw format may not be written into something
   * that probes differently (vd_probed_raw). */
  dev->probe_guard = !args->format && drv == vd_find_driver("raw");
  if (below) {
    /* A filter looks like the image it stands on (driver.h). */
    dev->open_flags = dev->opts.flags = below->open_flags;
    dev->read_only = below->read_only;
    dev->size = below->size;
    dev->logical_block = below->logical_block;
    dev->preferred_io = below->preferred_io;
  }

  if (!drv->opens_own_files && !below) {
    unsigned ff = 0;
    if (flags & VD_OPEN_RDWR) ff |= VD_FILE_RDWR;
    if (flags & VD_OPEN_DIRECT) ff |= VD_FILE_DIRECT;
    if (flags & VD_OPEN_NOLOCK) ff |= VD_FILE_NOLOCK;
    if (flags & VD_OPEN_NO_FLUSH) ff |= VD_FILE_NO_FLUSH;
    r = vd_file_open(path, ff, &dev->file);
    if (r < 0) {
      dev_free(dev);
      return r;
    }
  }
  dev->adopt_parent = adopt;
  r = drv->open(dev);
  if (r < 0) {
    dev_free(dev);
    return r;
  }
  if (dev->adopt_parent) {
    /* The driver ignored the parent it was handed: it is still the
     * caller's, and this device would read without it. */
    dev->adopt_parent = NULL;
    if (drv->close)
      drv->close(dev);
    dev_free(dev);
    return vd_set_error(ENOTSUP, "%s: format '%s' cannot take an open "
                        "device as its parent", path, drv->name);
  }
  if (!vd_is_pow2(dev->logical_block))
    dev->logical_block = 512;
  *out = dev;
  return 0;
}

int
vd_open_opts(const char *path, const struct vd_open_args *args,
             struct vd_dev **out)
{
  return dev_open(NULL, path, args, NULL, true, out);
}

int
vd_open(const char *path, const char *format, unsigned flags,
        struct vd_dev **out)
{
  struct vd_open_args a = { .format = format, .flags = flags };
  return dev_open(NULL, path, &a, NULL, true, out);
}

int
vd_open_parent(const struct vd_dev *child, const char *path,
               const struct vd_open_args *args, struct vd_dev **out)
{
  return dev_open(child, path, args, NULL, false, out);
}

int
vd_open_over(const char *path, const struct vd_open_args *args,
             struct vd_dev *parent, struct vd_dev **out)
{
  static const struct vd_open_args none;
  if (!parent)
    return vd_set_error(EINVAL, "%s: vd_open_over: no parent", path);
  if (!args)
    args = &none;
  if (args->filter || (args->flags & VD_OPEN_NOPARENT))
    return vd_set_error(EINVAL, "%s: an image over an open parent takes no "
                        "filter and needs its parent", path);
  return dev_open(NULL, path, args, parent, false, out);
}

/* vd_reopen for a device whose image file the core opened (or a filter
 * over one): the file switches, then the device's flags follow. */
int
vd_reopen(struct vd_dev *dev, unsigned flags)
{
  if (!dev)
    return vd_set_error(EINVAL, "vd_reopen: no device");
  if (flags & ~VD_OPEN_RDWR)
    return vd_set_error(EINVAL, "%s: vd_reopen: only VD_OPEN_RDWR may be "
                        "switched (flags 0x%x)", dev->path, flags);
  bool write = flags & VD_OPEN_RDWR;
  if (write == !dev->read_only)
    return 0;
  if (write && dev->drv->read_only_hint)
    return dev_read_only(dev, "reopen for writing");
  if (dev->drv->opens_own_files)
    return vd_set_error(ENOTSUP, "%s: a '%s' device cannot switch between "
                        "read-only and read-write in place", dev->path,
                        dev->drv->name);
  int r = 0;
  /* Going read-only: the driver lets go of what only writes use, and what
   * was acknowledged must be durable first; a failed flush keeps the
   * device writable (nothing is forgotten). */
  if (!write && dev->drv->reopen && (r = dev->drv->reopen(dev, false)) < 0)
    return r;
  if (!write && (r = vd_flush(dev)) < 0)
    return r;
  if (dev->below)
    r = vd_reopen(dev->below, flags);
  else if (dev->file)
    r = vd_file_reopen(dev->file, write);
  if (r < 0)
    return r;
  if (write && dev->drv->reopen && (r = dev->drv->reopen(dev, true)) < 0) {
    if (dev->below)
      vd_reopen(dev->below, 0);
    else if (dev->file)
      vd_file_reopen(dev->file, false);
    return r;
  }
  unsigned of = write ? (dev->open_flags | VD_OPEN_RDWR)
                      : (dev->open_flags & ~VD_OPEN_RDWR);
  dev->open_flags = dev->opts.flags = of;
  __atomic_store_n(&dev->read_only, !write, __ATOMIC_RELEASE);
  return 0;
}

int
vd_open_parent_operator(const struct vd_dev *child, const char *path,
                        const struct vd_open_args *args, struct vd_dev **out)
{
  return dev_open(child, path, args, NULL, true, out);
}

int
vd_close(struct vd_dev *dev)
{
  int r = 0;
  if (!dev)
    return 0;
  if (!dev->read_only && dev->drv->flush)
    r = dev->drv->flush(dev);
  if (dev->drv->close)
    dev->drv->close(dev);
  int rb = dev_free(dev);
  return r < 0 ? r : rb;
}

int
vd_create(const char *path, const char *format,
          const struct vd_create_args *args)
{
  int r = 0;
  if (!path || !args)
    return vd_set_error(EINVAL, "vd_create: missing arguments");
  const struct vd_driver *drv = vd_find_driver(format ? format : "raw");
  if (!drv)
    return vd_set_error(EINVAL, "%s: unknown format '%s'", path, format);
  if (!drv->create)
    return vd_set_error(ENOTSUP, "%s: format '%s' cannot be created directly",
                        path, drv->name);

  /* As qemu-img: a relative backing path is relative to the new image's
   * folder, and a size of 0 means the backing image's size. */
  struct vd_create_args a = *args;
  char *resolved = NULL;
  const char *slash = strrchr(path, '/');
  if (a.backing && a.backing[0] != '/' && !vd_is_remote_name(a.backing) &&
      slash) {
    int dl = (int)(slash - path);
    if (asprintf(&resolved, "%.*s/%s", dl, path, a.backing) < 0)
      return vd_set_error(ENOMEM, "%s: out of memory", path);
    a.backing = resolved;
  }
  /* The backing file must open in the format the child will record (-F,
   * as qemu-img: "Image is not in qcow2 format"), checked before anything
   * is written. */
  if (a.backing) {
    struct vd_dev *b;
    r = vd_open(a.backing, a.backing_format, VD_OPEN_NOLOCK, &b);
    if (r < 0) {
      free(resolved);
      if (a.backing_format)
        return vd_prefix_error(-r, "%s: backing file is not a '%s' image",
                               path, a.backing_format);
      return vd_prefix_error(-r, "%s: backing file", path);
    }
    if (a.size == 0)
      a.size = vd_size(b);
    vd_close(b);
  }
  r = drv->create(path, &a);
  free(resolved);
  return r;
}

int
vd_import(const char *path, const char *format, struct vd_dev *src,
          const struct vd_create_args *args, vd_progress_fn progress,
          void *opaque)
{
  const struct vd_driver *drv = vd_find_driver(format ? format : "raw");
  if (!drv)
    return vd_set_error(EINVAL, "%s: unknown format '%s'", path, format);
  if (!drv->import)
    return -ENOTSUP;
  return drv->import(path, src, args, progress, opaque);
}

int
vd_check(const char *path, const char *format, unsigned flags,
         struct vd_check_report *r)
{
  int err = 0;
  if ((flags & VD_CHECK_NOLOCK) && (flags & VD_CHECK_FIX_ALL))
    return vd_set_error(EINVAL, "%s: a check without locks cannot repair",
                        path);
  const struct vd_driver *drv = dev_lookup(path, format, false, &err);
  if (!drv)
    return err;
  if (!drv->check)
    return vd_set_error(ENOTSUP, "%s: format '%s' does not support checks",
                        path, drv->name);
  return drv->check(path, flags, r);
}

int
vd_amend(const char *path, const char *format, const char *options)
{
  int err = 0;
  const struct vd_driver *drv = dev_lookup(path, format, false, &err);
  if (!drv)
    return err;
  if (!drv->amend)
    return vd_set_error(ENOTSUP, "Format driver '%s' does not support "
                        "option amendment", drv->name);
  return drv->amend(path, options);
}

/* ---- request checks ---- */

const char *
vd_read_only_why(struct vd_dev *dev)
{
  const char *hint = dev->drv->read_only_hint;
  if (!hint && dev->drv->read_only_reason)
    hint = dev->drv->read_only_reason(dev);
  return hint;
}

static int
dev_read_only(struct vd_dev *dev, const char *op)
{
  const char *hint = vd_read_only_why(dev);
  return vd_set_error(EROFS, "%s: %s: device is read-only%s%s", dev->path, op,
                      hint ? "; " : "", hint ? hint : "");
}

static int
dev_check(struct vd_dev *dev, const char *op, uint64_t off, uint64_t len,
          unsigned flags, unsigned allowed, bool write)
{
  if (flags & ~allowed)
    return vd_set_error(EINVAL, "%s: %s: invalid flags 0x%x", dev->path, op,
                        flags);
  if (write && dev->read_only)
    return dev_read_only(dev, op);
  if (!vd_range_ok(off, len, dev->size))
    return vd_set_error(write ? ENOSPC : EINVAL,
                        "%s: %s of %" PRIu64 " bytes at offset %" PRIu64
                        " is beyond the end of the device (%" PRIu64 " bytes)",
                        dev->path, op, len, off, dev->size);
  return 0;
}

static bool
dev_aligned(const struct vd_dev *dev, uint64_t off, uint64_t len)
{
  return !dev->strict_align ||
         ((off | len) & (dev->logical_block - 1)) == 0;
}

/* Unaligned request on a strictly aligned driver: widen to whole blocks.
 * BUF is the caller's data (write) or destination (read); a NULL BUF on a
 * write means zeros. */
static int
dev_rmw(struct vd_dev *dev, void *buf, size_t len, uint64_t off, bool write,
        unsigned flags)
{
  uint64_t bs = dev->logical_block;
  uint64_t start = vd_round_down(off, bs);
  uint64_t end = vd_round_up(off + len, bs);   /* off+len <= size checked */
  size_t blen = (size_t)(end - start);
  uint8_t *b = malloc(blen);
  int r;

  if (!b)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  if (!write) {
    r = dev->drv->pread(dev, b, blen, start);
    if (r == 0)
      memcpy(buf, b + (off - start), len);
    free(b);
    return r;
  }
  uint64_t first = start / bs, last = end / bs - 1;
  vd_blocklock(dev->rmw_lock, VD_DEV_RMW_LOCKS, first, last, true);
  r = 0;
  if (off != start)
    r = dev->drv->pread(dev, b, bs, start);
  if (r == 0 && (off + len) % bs && (last != first || off == start))
    r = dev->drv->pread(dev, b + blen - bs, bs, end - bs);
  if (r == 0) {
    if (buf)
      memcpy(b + (off - start), buf, len);
    else
      memset(b + (off - start), 0, len);
    r = dev->drv->pwrite(dev, b, blen, start, flags);
  }
  vd_blocklock(dev->rmw_lock, VD_DEV_RMW_LOCKS, first, last, false);
  free(b);
  return r;
}

void
vd_dev_changed(struct vd_dev *dev)
{
  __atomic_add_fetch(&dev->wgen, 1, __ATOMIC_SEQ_CST);
}

/* Make everything that completed before this call durable.  As qemu's
 * bdrv_co_flush: when a driver flush that began after the last change
 * has succeeded there is nothing to do; while one runs, callers wait for
 * it and then one of them (if still needed) runs the next for all.  A
 * failed driver flush covers nothing, so every caller then asks the
 * driver again and gets the failure (vd_file_flush never forgets one). */
static int
dev_flush(struct vd_dev *dev)
{
  uint64_t want = __atomic_load_n(&dev->wgen, __ATOMIC_SEQ_CST);
  pthread_mutex_lock(&dev->flush_lock);
  while (dev->flushed_gen < want && dev->flushing)
    pthread_cond_wait(&dev->flush_done, &dev->flush_lock);
  if (dev->flushed_gen >= want) {
    pthread_mutex_unlock(&dev->flush_lock);
    return 0;
  }
  dev->flushing = true;
  pthread_mutex_unlock(&dev->flush_lock);
  uint64_t gen = __atomic_load_n(&dev->wgen, __ATOMIC_SEQ_CST);
  int r = dev->drv->flush(dev);
  pthread_mutex_lock(&dev->flush_lock);
  dev->flushing = false;
  if (r == 0 && gen > dev->flushed_gen)
    dev->flushed_gen = gen;
  pthread_cond_broadcast(&dev->flush_done);
  pthread_mutex_unlock(&dev->flush_lock);
  return r;
}

/* The end of a write-type request: count the change, then flush if FUA. */
static int
dev_fua(struct vd_dev *dev, int r, unsigned flags)
{
  vd_dev_changed(dev);
  if (r == 0 && (flags & VD_REQ_FUA) && dev->drv->flush)
    r = dev_flush(dev);
  return r;
}

int
vd_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  int r = dev_check(dev, "read", off, len, 0, 0, false);
  if (r < 0 || len == 0)
    return r;
  if (!dev_aligned(dev, off, len))
    return dev_rmw(dev, buf, len, off, false, 0);
  return dev->drv->pread(dev, buf, len, off);
}

ssize_t
vd_splice_read(struct vd_dev *dev, int pipe_wr, size_t len, uint64_t off)
{
  struct vd_extent e;
  int r;
  if (len == 0 || !dev->drv->host_mapped || !dev->file ||
      vd_file_is_direct(dev->file))
    return -ENOTSUP;
  /* The core's block status: range check, defaults (depth 0, no host
   * offset) the driver may leave unset, and a sane length. */
  if ((r = vd_block_status(dev, off, len, &e)) < 0)
    return r;
  if (e.length < len || e.flags || e.depth != 0 || e.host_offset < 0)
    return -ENOTSUP;
  return vd_file_splice_read(dev->file, pipe_wr, (uint64_t)e.host_offset, len);
}

/* ---- the probe guard (qemu's rule for a guessed raw format) ---- */

/* Copy into WIN (the window [WOFF, WOFF + WLEN) of the device) the part of
 * a request [OFF, OFF + LEN) that falls inside it; BUF NULL means zeros. */
static void
dev_overlay(uint8_t *win, uint64_t woff, size_t wlen, const void *buf,
            uint64_t off, uint64_t len)
{
  uint64_t s = off > woff ? off : woff;
  uint64_t e = off + len < woff + wlen ? off + len : woff + wlen;
  if (s >= e)
    return;
  if (buf)
    memcpy(win + (s - woff), (const uint8_t *)buf + (s - off), e - s);
  else
    memset(win + (s - woff), 0, e - s);
}

/* True if DEV is probe-guarded and [OFF, OFF + LEN) touches the bytes
 * probing reads. */
static bool
dev_probe_touches(const struct vd_dev *dev, uint64_t off, uint64_t len)
{
  if (!dev->probe_guard || len == 0)
    return false;
  uint64_t head_len = dev->size < VD_PROBE_HEAD ? dev->size : VD_PROBE_HEAD;
  return off < head_len || (dev->size >= 512 && off + len > dev->size - 512);
}

/* If DEV was probed as raw and the request [OFF, OFF + LEN) (data BUF, or
 * zeros if NULL) touches what probing reads (the first VD_PROBE_HEAD bytes
 * and the last 512), probe the bytes as they would be after it and refuse
 * it unless they still probe as raw.  On return 0 with *LOCKED set, the
 * caller holds probe_lock until the request is done, so no other guarded
 * request changes those bytes between this check and the write. */
static int
dev_probe_guard(struct vd_dev *dev, const char *op, const void *buf,
                uint64_t off, uint64_t len, bool *locked)
{
  *locked = false;
  if (!dev_probe_touches(dev, off, len))
    return 0;
  size_t head_len = dev->size < VD_PROBE_HEAD ? (size_t)dev->size
                                              : VD_PROBE_HEAD;
  uint64_t tail_off = dev->size >= 512 ? dev->size - 512 : 0;
  bool tail = dev->size >= 512;

  uint8_t head[VD_PROBE_HEAD], tl[512];
  pthread_mutex_lock(&dev->probe_lock);
  int r = head_len ? dev->drv->pread(dev, head, head_len, 0) : 0;
  if (r == 0 && tail)
    r = dev->drv->pread(dev, tl, 512, tail_off);
  if (r < 0) {
    pthread_mutex_unlock(&dev->probe_lock);
    return r;
  }
  dev_overlay(head, 0, head_len, buf, off, len);
  if (tail)
    dev_overlay(tl, tail_off, 512, buf, off, len);
  struct vd_probe_data pd = {
    .head = head, .head_len = head_len, .tail = tail ? tl : NULL,
    .file_size = dev->size, .path = dev->path,
  };
  const struct vd_driver *now = vd_probe_data(&pd, false);
  if (now && now != dev->drv) {
    pthread_mutex_unlock(&dev->probe_lock);
    return vd_set_error(EPERM, "%s: %s of %" PRIu64 " bytes at offset %"
                        PRIu64 " refused: the image format was not "
                        "specified and probing guessed raw, and this write "
                        "would make the image probe as '%s'; specify the "
                        "format raw explicitly to remove the restriction",
                        dev->path, op, len, off, now->name);
  }
  *locked = true;
  return 0;
}

static void
dev_probe_unlock(struct vd_dev *dev, bool locked)
{
  if (locked)
    pthread_mutex_unlock(&dev->probe_lock);
}

int
vd_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
          unsigned flags)
{
  int r = dev_check(dev, "write", off, len, flags, VD_REQ_FUA, true);
  if (r < 0 || len == 0)
    return r;
  if (!dev->drv->pwrite)
    return vd_set_error(EROFS, "%s: format '%s' is read-only", dev->path,
                        dev->drv->name);
  /* A guarded write is checked and written from a private copy: the
   * caller's buffer may be memory the guest can change behind the check
   * (qemu: "a malicious guest might be overwriting its original buffer"). */
  void *copy = NULL;
  if (dev_probe_touches(dev, off, len)) {
    if (!(copy = malloc(len)))
      return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    memcpy(copy, buf, len);
    buf = copy;
  }
  bool locked;
  if ((r = dev_probe_guard(dev, "write", buf, off, len, &locked)) < 0) {
    free(copy);
    return r;
  }
  if (!dev_aligned(dev, off, len))
    r = dev_rmw(dev, (void *)buf, len, off, true, 0);
  else
    r = dev->drv->pwrite(dev, buf, len, off, 0);
  dev_probe_unlock(dev, locked);
  free(copy);
  return dev_fua(dev, r, flags);
}

int
vd_flush(struct vd_dev *dev)
{
  if (dev->read_only || !dev->drv->flush)
    return 0;
  return dev_flush(dev);
}

void
vd_writeback(struct vd_dev *dev)
{
  while (dev->below)
    dev = dev->below;
  if (!dev->read_only && dev->file)
    vd_file_writeback(dev->file);
}

int
vd_discard(struct vd_dev *dev, uint64_t off, uint64_t len, unsigned flags)
{
  int r = dev_check(dev, "discard", off, len, flags, VD_REQ_FUA, false);
  if (r < 0 || len == 0)
    return r;
  if (dev->read_only)
    return dev_read_only(dev, "discard");
  if (!dev->drv->discard)
    return 0;  /* advisory */
  if (dev->strict_align) {  /* only whole blocks can be discarded */
    uint64_t s = vd_round_up(off, dev->logical_block);
    uint64_t e = vd_round_down(off + len, dev->logical_block);
    if (e <= s)
      return 0;
    off = s;
    len = e - s;
  }
  /* Judged as if the range then reads zeros, as it does on raw files. */
  bool locked;
  if ((r = dev_probe_guard(dev, "discard", NULL, off, len, &locked)) < 0)
    return r;
  r = dev->drv->discard(dev, off, len, 0);
  dev_probe_unlock(dev, locked);
  return dev_fua(dev, r, flags);
}

/* Generic write_zeroes: write zero buffers. */
static int
dev_zero_fallback(struct vd_dev *dev, uint64_t off, uint64_t len)
{
  size_t chunk = len < VD_ZERO_CHUNK ? (size_t)len : VD_ZERO_CHUNK;
  void *z = calloc(1, chunk);
  int r = 0;
  if (!z)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  while (len > 0 && r == 0) {
    size_t n = len < chunk ? (size_t)len : chunk;
    r = vd_pwrite(dev, z, n, off, 0);
    off += n;
    len -= n;
  }
  free(z);
  return r;
}

static int dev_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                            unsigned flags);

int
vd_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len, unsigned flags)
{
  int r = dev_check(dev, "write zeroes", off, len, flags, VD_REQ_ALL, true);
  if (r < 0 || len == 0)
    return r;
  /* The zero fallback writes through vd_pwrite, which takes probe_lock:
   * check here without holding it across the request in that case. */
  bool locked;
  if ((r = dev_probe_guard(dev, "write zeroes", NULL, off, len, &locked)) < 0)
    return r;
  if (locked && !dev->drv->write_zeroes) {
    dev_probe_unlock(dev, locked);
    locked = false;
  }
  r = dev_write_zeroes(dev, off, len, flags);
  dev_probe_unlock(dev, locked);
  return r;
}

static int
dev_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                 unsigned flags)
{
  int r = 0;
  if (!dev->drv->write_zeroes) {
    if (flags & VD_REQ_FAST_ZERO)
      return vd_set_error(ENOTSUP, "%s: no fast zeroing", dev->path);
    return dev_fua(dev, dev_zero_fallback(dev, off, len), flags);
  }
  unsigned dflags = flags & (VD_REQ_NO_HOLE | VD_REQ_FAST_ZERO);
  if (!dev_aligned(dev, off, len)) {
    uint64_t bs = dev->logical_block;
    uint64_t s = vd_round_up(off, bs), e = vd_round_down(off + len, bs);
    if (e <= s)  /* inside one or two partial blocks */
      return dev_fua(dev, dev_rmw(dev, NULL, (size_t)len, off, true, 0),
                     flags);
    if (s > off)
      r = dev_rmw(dev, NULL, (size_t)(s - off), off, true, 0);
    if (r == 0)
      r = dev->drv->write_zeroes(dev, s, e - s, dflags);
    if (r == 0 && off + len > e)
      r = dev_rmw(dev, NULL, (size_t)(off + len - e), e, true, 0);
    return dev_fua(dev, r, flags);
  }
  r = dev->drv->write_zeroes(dev, off, len, dflags);
  return dev_fua(dev, r, flags);
}

int
vd_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                struct vd_extent *ext)
{
  int r = dev_check(dev, "block status", off, len, 0, 0, false);
  if (r < 0)
    return r;
  if (len == 0)
    return vd_set_error(EINVAL, "%s: block status of 0 bytes", dev->path);
  memset(ext, 0, sizeof *ext);
  ext->offset = off;
  ext->host_offset = -1;
  if (!dev->drv->block_status) {
    ext->length = len;
    return 0;
  }
  r = dev->drv->block_status(dev, off, len, ext);
  if (r < 0)
    return r;
  ext->offset = off;
  if (ext->length == 0 || ext->length > len)
    return vd_set_error(EIO, "%s: driver returned a bad extent at %" PRIu64,
                        dev->path, off);
  return 0;
}

int
vd_get_info(struct vd_dev *dev, struct vd_info *info)
{
  if (dev->below)
    return vd_get_info(dev->below, info);
  memset(info, 0, sizeof *info);
  info->format = dev->drv->name;
  info->size = dev->size;
  info->logical_block = dev->logical_block;
  info->preferred_io = dev->preferred_io;
  info->read_only = dev->read_only;
  if (dev->file)
    vd_file_allocated(dev->file, &info->actual_size);
  if (dev->drv->info)
    dev->drv->info(dev, info);
  return 0;
}

static struct vd_info_field *
dev_info_field(struct vd_info *info, const char *key)
{
  if (info->nfields >= VD_INFO_MAX_FIELDS)
    return NULL;
  struct vd_info_field *f = &info->fields[info->nfields++];
  snprintf(f->key, sizeof f->key, "%s", key);
  return f;
}

void
vd_info_add_str(struct vd_info *info, const char *key, const char *val)
{
  struct vd_info_field *f = dev_info_field(info, key);
  if (f) {
    f->type = VD_FIELD_STR;
    snprintf(f->str, sizeof f->str, "%s", val);
  }
}

void
vd_info_add_u64(struct vd_info *info, const char *key, uint64_t val)
{
  struct vd_info_field *f = dev_info_field(info, key);
  if (f) {
    f->type = VD_FIELD_U64;
    f->u64 = val;
  }
}

void
vd_info_add_bool(struct vd_info *info, const char *key, bool val)
{
  struct vd_info_field *f = dev_info_field(info, key);
  if (f) {
    f->type = VD_FIELD_BOOL;
    f->u64 = val;
  }
}

uint64_t vd_size(const struct vd_dev *dev) { return dev->size; }
uint32_t vd_logical_block(const struct vd_dev *dev) { return dev->logical_block; }
uint32_t vd_preferred_io(const struct vd_dev *dev) { return dev->preferred_io; }
bool vd_is_read_only(const struct vd_dev *dev) { return dev->read_only; }
const char *vd_path(const struct vd_dev *dev) { return dev->path; }

/* What describes the image skips the filters stacked over it. */
static const struct vd_dev *
dev_image(const struct vd_dev *dev)
{
  while (dev->below)
    dev = dev->below;
  return dev;
}

const char *vd_format(const struct vd_dev *dev)
{
  return dev_image(dev)->drv->name;
}

struct vd_dev *vd_backing_dev(const struct vd_dev *dev)
{
  const struct vd_dev *img = dev_image(dev);
  /* The op takes a mutable device only because drivers' privs are. */
  return img->drv->backing_dev ? img->drv->backing_dev((struct vd_dev *)img)
                               : NULL;
}

bool vd_probed_raw(const struct vd_dev *dev)
{
  return dev_image(dev)->probe_guard;
}
/* A filter is coherent across connections when it says so and so is
 * what it stands on. */
bool vd_can_multi_conn(const struct vd_dev *dev)
{
  for (; dev; dev = dev->below)
    if (!dev->drv->multi_conn)
      return false;
  return true;
}
