/* libvdisk — raw images: the virtual disk is the file (or block device)
 * byte for byte.  No header, no magic: probing answers with the lowest
 * score so any real format wins.
 *
 * Options for create (as qemu-img): preallocation=off|falloc|full.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "vdisk/driver.h"
#include "vdisk/endian.h"

static int
raw_probe(const struct vd_probe_data *pd)
{
  return 1;
}

static int
raw_open(struct vd_dev *dev)
{
  int r = vd_file_size(dev->file, &dev->size);
  if (r < 0)
    return r;
  if (vd_file_is_direct(dev->file) && vd_file_align(dev->file) > 512)
    dev->logical_block = vd_file_align(dev->file);
  dev->preferred_io = 4096;
  return 0;
}

static int
raw_create(const char *path, const struct vd_create_args *args)
{
  static const char *const known[] = { "preallocation", NULL };
  char prealloc[16] = "off";
  struct vd_file *f;
  int r;

  if (args->backing)
    return vd_set_error(ENOTSUP, "%s: raw images cannot have a backing file",
                        path);
  r = vd_opt_check(args->options, known, path);
  if (r < 0)
    return r;
  r = vd_opt_get(args->options, "preallocation", prealloc, sizeof prealloc);
  if (r < 0)
    return r;
  if (strcmp(prealloc, "off") && strcmp(prealloc, "falloc") &&
      strcmp(prealloc, "full"))
    return vd_set_error(EINVAL, "%s: invalid preallocation mode '%s' "
                        "(off, falloc or full)", path, prealloc);

  r = vd_file_open(path, VD_FILE_RDWR | VD_FILE_CREATE, &f);
  if (r < 0)
    return r;
  if (vd_file_is_blockdev(f)) {
    uint64_t cap;
    r = vd_file_size(f, &cap);
    if (r == 0 && cap < args->size)
      r = vd_set_error(ENOSPC, "%s: device is smaller (%" PRIu64
                       " bytes) than the requested size", path, cap);
    vd_file_close(f);
    return r;
  }
  r = vd_file_truncate(f, 0);
  if (r == 0)
    r = vd_file_truncate(f, args->size);
  if (r == 0 && strcmp(prealloc, "falloc") == 0 && args->size)
    r = vd_file_allocate(f, 0, args->size);
  if (r == 0 && strcmp(prealloc, "full") == 0 && args->size)
    r = vd_file_zero(f, 0, args->size, true, false);
  if (r == 0)
    r = vd_file_flush(f);
  vd_file_close(f);
  if (r == 0)
    r = vd_file_sync_dir(path);
  return r;
}

static int
raw_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  return vd_file_pread(dev->file, buf, len, off);
}

static int
raw_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
           unsigned flags)
{
  return vd_file_pwrite(dev->file, buf, len, off);
}

static int
raw_flush(struct vd_dev *dev)
{
  return vd_file_flush(dev->file);
}

static int
raw_discard(struct vd_dev *dev, uint64_t off, uint64_t len, unsigned flags)
{
  if (vd_file_is_blockdev(dev->file))
    return 0;  /* a discard on a device may not read back as zeros */
  int r = vd_file_punch(dev->file, off, len);
  return r == -ENOTSUP ? 0 : r;  /* advisory */
}

static int
raw_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                 unsigned flags)
{
  return vd_file_zero(dev->file, off, len, flags & VD_REQ_NO_HOLE,
                      flags & VD_REQ_FAST_ZERO);
}

static int
raw_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                 struct vd_extent *ext)
{
  bool data;
  int r = vd_file_extent(dev->file, off, len, &data, &ext->length);
  if (r < 0)
    return r;
  ext->flags = data ? 0 : VD_EXT_HOLE | VD_EXT_ZERO;
  ext->host_offset = (int64_t)off;
  return 0;
}

/* The file is the disk: its length is the size (qemu-img resize -f raw),
 * grown sparse, cut at once when shrinking (the engine asked for
 * VD_TRUNCATE_SHRINK). */
static int
raw_truncate(struct vd_dev *dev, uint64_t size, unsigned flags)
{
  if (vd_file_is_blockdev(dev->file))
    return vd_set_error(ENOTSUP, "%s: a block device cannot be resized",
                        dev->path);
  int r = vd_file_truncate(dev->file, size);
  if (r == 0)
    dev->size = size;
  return r;
}

/* A raw file is the disk: it needs its whole size either way (as qemu's
 * raw measure says, the data of a sparse source included). */
static int
raw_measure(const struct vd_create_args *args, struct vd_dev *src,
            uint64_t *required, uint64_t *fully)
{
  static const char *const known[] = { "preallocation", NULL };
  (void)src;
  int r = vd_opt_check(args->options, known, "measure");
  if (r < 0)
    return r;
  *required = *fully = args->size;
  return 0;
}

const struct vd_driver vd_raw_driver = {
  .name = "raw",
  .probe = raw_probe,
  .leaf = true,
  .host_mapped = true,
  .open = raw_open,
  .create = raw_create,
  .create_help =
    "  preallocation=<str>    - Preallocation mode (allowed values: off, "
    "falloc, full)\n",
  .pread = raw_pread,
  .pwrite = raw_pwrite,
  .flush = raw_flush,
  .discard = raw_discard,
  .write_zeroes = raw_write_zeroes,
  .block_status = raw_block_status,
  .multi_conn = true,
  .truncate = raw_truncate,
  .measure = raw_measure,
};

VD_REGISTER_DRIVER(vd_raw_driver);
