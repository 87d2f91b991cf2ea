/* vdtool compact — give back the space of empty blocks (like Optimize-VHD
 * / diskpart compact) through vd_compact, for formats that can. */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>

#include "tools/vdtool.h"

const char vt_summary_compact[] =
  "free empty blocks of an image and shrink the file";
const char vt_usage_compact[] =
  "Usage: vdtool compact [-f FMT] [-p] [-q] FILENAME\n"
  "\n"
  "Free the blocks that hold only zeros (dynamic VHD and VHDX) or no\n"
  "sectors (differencing VHD), move the remaining blocks down and truncate\n"
  "the file.  The virtual disk reads the same afterwards.  Formats without\n"
  "blocks to free (raw, vdz, fixed VHD and VHDX) are refused.\n"
  "\n"
  "  -f FMT   image format (default: probe)\n"
  "  -p       show progress\n"
  "  -q       quiet\n";

int
vt_cmd_compact(int argc, char **argv)
{
  struct vt_manage_opts o;
  struct vd_dev *dev;
  uint64_t freed = 0;
  int r = vt_parse_manage("compact", argc, argv, NULL, NULL, NULL, NULL, 1,
                          "exactly one FILENAME", &o);
  if (r)
    return r;
  /* Compacting reads only this image's own blocks: no parent needed. */
  if (vt_open(argv[optind], o.format, VD_OPEN_RDWR | VD_OPEN_NOPARENT,
              &dev) < 0)
    return VT_EXIT_ERR;
  r = vd_compact(dev, &freed, o.prog.enabled ? vt_progress_cb : NULL,
                 &o.prog);
  int r2 = vd_close(dev);
  char done[80];
  snprintf(done, sizeof done, "Image compacted: %" PRIu64 " bytes freed.",
           freed);
  return vt_manage_done(&o, r ? r : r2, done);
}
