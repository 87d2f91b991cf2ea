/* vdtool resize — change a VHD's virtual size (qemu-img's name and
 * options; qemu-img cannot resize VHDs). */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>

#include "vhd.h"
#include "vdtool.h"

const char vt_summary_resize[] = "grow or shrink a VHD image";
const char vt_usage_resize[] =
  "Usage: vdtool resize [-f vpc] [--shrink] [-q] FILENAME [+|-]SIZE\n"
  "\n"
  "Set the virtual size to SIZE, or grow (+) or shrink (-) it by SIZE.\n"
  "Shrinking needs --shrink and only cuts space that is unallocated or\n"
  "holds zeros.\n"
  "\n"
  "  -f FMT     image format: vpc (vhd)\n"
  "  --shrink   allow making the image smaller\n"
  "  -q         quiet\n";

int
vt_cmd_resize(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "format", required_argument, NULL, 'f' },
    { "shrink", no_argument, NULL, 'S' },
    { NULL, 0, NULL, 0 }
  };
  bool shrink = false, quiet = false;
  int c;

  optind = 1;
  opterr = 0;
  /* No '+': "-1G" after FILENAME is a size, not an option. */
  while ((c = getopt_long(argc, argv, "+f:q", longopts, NULL)) != -1) {
    switch (c) {
    case 'f':
      if (strcasecmp(optarg, "vpc") && strcasecmp(optarg, "vhd"))
        return vt_bad_usage("resize", "only VHD (vpc) images, not '%s'", optarg);
      break;
    case 'S': shrink = true; break;
    case 'q': quiet = true; break;
    default: return vt_bad_option("resize", argv);
    }
  }
  if (argc - optind != 2)
    return vt_bad_usage("resize", "expected FILENAME and SIZE");
  const char *path = argv[optind], *arg = argv[optind + 1];
  int sign = 0;
  if (*arg == '+' || *arg == '-')
    sign = *arg++ == '+' ? 1 : -1;
  uint64_t n;
  if (vd_parse_size(arg, &n) < 0) {
    vt_error("%s", vd_error());
    return VT_EXIT_ERR;
  }
  uint64_t size = n;
  if (sign) {
    struct vd_dev *dev;
    if (vt_open(path, "vpc", VD_OPEN_NOPARENT, &dev) < 0)
      return VT_EXIT_ERR;
    uint64_t cur = vd_size(dev);
    vd_close(dev);
    if (sign < 0 && n > cur) {
      vt_error("%s: cannot shrink by more than the size (%" PRIu64 " bytes)",
               path, cur);
      return VT_EXIT_ERR;
    }
    size = sign > 0 ? cur + n : cur - n;
  }
  int r = vhd_resize(path, size, shrink);
  if (r < 0) {
    vt_engine_error(r);
    return VT_EXIT_ERR;
  }
  if (!quiet)
    printf("Image resized.\n");
  return VT_EXIT_OK;
}
