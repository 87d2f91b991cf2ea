/* libvdisk — qemu-img measure: how large a new image's file must be
 * (vd_measure in vdisk.h).  The formats do the arithmetic of their own
 * layout (vd_driver.measure); this file counts the blocks of a source that
 * hold data, which is what their allocation depends on. */
#include <config.h>

#include <errno.h>

#include "vdisk/driver.h"

int
vd_measure_data_blocks(struct vd_dev *src, uint64_t size, uint64_t block,
                       uint64_t *count)
{
  *count = 0;
  if (!src)
    return 0;
  if (size > vd_size(src))
    size = vd_size(src);
  uint64_t off = 0, last = UINT64_MAX;   /* last block counted */
  while (off < size) {
    struct vd_extent e;
    int r = vd_block_status(src, off, size - off, &e);
    if (r < 0)
      return r;
    /* Zeros (holes included) are not written by a convert: no block. */
    if (!(e.flags & VD_EXT_ZERO)) {
      uint64_t first = off / block, end = (off + e.length - 1) / block;
      if (first == last)
        first++;
      if (end >= first)
        *count += end - first + 1;
      last = end;
    }
    off += e.length;
  }
  return 0;
}

int
vd_measure(const char *format, const struct vd_create_args *args,
           struct vd_dev *src, uint64_t *required, uint64_t *fully)
{
  const struct vd_driver *drv = vd_find_driver(format ? format : "raw");
  if (!drv || drv->filter)
    return vd_set_error(EINVAL, "unknown format '%s'", format);
  if (!drv->measure)
    return vd_set_error(ENOTSUP, "format '%s' does not support size "
                        "measurement", drv->name);
  if (args->backing)
    return vd_set_error(ENOTSUP, "size measurement of an image with a "
                        "backing file is not supported");
  return drv->measure(args, src, required, fully);
}
