/* vdtool resize — as qemu-img resize: change an image's virtual size
 * (vd_truncate: raw, vpc, dynamic vhdx, rbd, qcow2). */
#include <config.h>

#include <inttypes.h>

#include "tools/vdtool.h"

const char vt_summary_resize[] = "grow or shrink an image";
const char vt_usage_resize[] =
  "Usage: vdtool resize [-f FMT] [--shrink] [-q] FILENAME [+|-]SIZE\n"
  "\n"
  "Set the virtual size to SIZE, or grow (+) or shrink (-) it by SIZE.\n"
  "Shrinking needs --shrink.  A raw image is cut as qemu-img cuts it; a\n"
  "VHD only gives up space that is unallocated or holds zeros; a dynamic\n"
  "VHDX shrinks only when no block past the new end is allocated; a qcow2\n"
  "image frees the clusters past the new end and is cut, as with qemu-img\n"
  "(grown over a longer backing file, the new space reads as zeros).  A\n"
  "raw image opened without -f may grow but not shrink.  SIZE is always\n"
  "the last argument; options may come before or after FILENAME, as with\n"
  "qemu-img.\n"
  "\n"
  "  -f FMT     image format (default: probe)\n"
  "  --shrink   allow making the image smaller\n"
  "  -q         quiet\n";

int
vt_cmd_resize(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "shrink", no_argument, NULL, 'S' },
    { NULL, 0, NULL, 0 }
  };
  struct vt_manage_opts o;
  struct vd_dev *dev;
  bool shrink = false;
  /* The size is the last argument, whatever it looks like (qemu-img's
   * rule: "-1G" is a size, and options may come before or after
   * FILENAME). */
  const char *arg = argc > 1 ? argv[argc - 1] : "";
  int r = vt_parse_manage("resize", argc - (argc > 1), argv, NULL, longopts,
                          vt_manage_flag, &shrink, 1, "FILENAME and SIZE", &o);
  if (r)
    return r;
  const char *path = argv[optind];
  int sign = 0;
  if (*arg == '+' || *arg == '-')
    sign = *arg++ == '+' ? 1 : -1;
  uint64_t n;
  if (vd_parse_size(arg, &n) < 0) {
    vt_error("%s", vd_error());
    return VT_EXIT_ERR;
  }
  /* Resizing never reads the backing chain: the image alone. */
  if (vt_open(path, o.format, VD_OPEN_RDWR | VD_OPEN_NOPARENT, &dev) < 0)
    return VT_EXIT_ERR;
  uint64_t cur = vd_size(dev), size = n;
  if (sign < 0 && n > cur) {
    vd_close(dev);
    vt_error("%s: cannot shrink by more than the size (%" PRIu64 " bytes)",
             path, cur);
    return VT_EXIT_ERR;
  }
  if (sign)
    size = sign > 0 ? cur + n : cur - n;
  r = vd_truncate(dev, size, shrink ? VD_TRUNCATE_SHRINK : 0);
  int r2 = vd_close(dev);
  /* qemu-img prints this even with nothing to do. */
  return vt_manage_done(&o, r ? r : r2, "Image resized.");
}
