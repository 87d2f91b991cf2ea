/* vdtool rebase — as qemu-img rebase: point an image at another backing
 * file (vd_change_backing, for any format that has one). */
#include <config.h>

#include "tools/vdtool.h"

const char vt_summary_rebase[] = "change the backing file of an image";
const char vt_usage_rebase[] =
  "Usage: vdtool rebase [-f FMT] [-u] [-p] [-q] [--backing=FILE\n"
  "                     [--backing-format=FMT]] -b BACKING [-F FMT] FILENAME\n"
  "\n"
  "Make BACKING the backing file of the image FILENAME.  Safe mode\n"
  "(default) first copies into FILENAME every sector it does not hold whose\n"
  "contents differ between the old backing chain and BACKING, so FILENAME\n"
  "reads the same afterwards.  -b \"\" removes the backing file: a VHD\n"
  "becomes a dynamic image.  A differencing VHDX takes only a VHDX parent\n"
  "and cannot lose it.\n"
  "\n"
  "  -f FMT      format of FILENAME (default: probe)\n"
  "  -b BACKING  the new backing file (\"\" for none)\n"
  "  -F FMT      its format (default: probe)\n"
  "  -u          unsafe: only rewrite the backing pointer (the old backing\n"
  "              file need not exist)\n"
  "  --backing=FILE  the old backing file, wherever it is (safe mode reads\n"
  "              it); --backing-format=FMT its format\n"
  "  -p          show progress\n"
  "  -q          quiet\n";

struct rebase_opts {
  const char *backing, *backing_format;
  bool unsafe;
};

static int
rebase_opt(int c, const char *arg, void *ctx)
{
  struct rebase_opts *ro = ctx;
  switch (c) {
  case 'b': ro->backing = arg; return 0;
  case 'F': ro->backing_format = arg; return 0;
  case 'u': ro->unsafe = true; return 0;
  default: return VT_EXIT_ERR;
  }
}

int
vt_cmd_rebase(int argc, char **argv)
{
  struct vt_manage_opts o;
  struct rebase_opts ro = { NULL, NULL, false };
  struct vd_dev *dev;
  int r = vt_parse_manage("rebase", argc, argv, "b:F:u", NULL, rebase_opt,
                          &ro, 1, "exactly one FILENAME", &o);
  if (r)
    return r;
  if (!ro.backing)
    return vt_bad_usage("rebase", "-b BACKING is required (\"\" for none)");
  /* Unsafe mode never reads the old chain, so it opens the image alone. */
  if (vt_open(argv[optind], o.format,
              VD_OPEN_RDWR | (ro.unsafe ? VD_OPEN_NOPARENT : 0), &dev) < 0)
    return VT_EXIT_ERR;
  r = vd_change_backing(dev, ro.backing, ro.backing_format,
                        ro.unsafe ? VD_BACKING_UNSAFE : 0,
                        o.prog.enabled ? vt_progress_cb : NULL, &o.prog);
  int r2 = vd_close(dev);
  return vt_manage_done(&o, r ? r : r2, NULL);
}
