/* vdtool rebase — point a differencing VHD at another parent (qemu-img's
 * name and options). */
#include <config.h>

#include <getopt.h>
#include <string.h>
#include <strings.h>

#include "vhd.h"
#include "vdtool.h"

const char vt_summary_rebase[] = "change the parent of a differencing VHD";
const char vt_usage_rebase[] =
  "Usage: vdtool rebase [-f vpc] [-u] [-p] [-q] -b BACKING FILENAME\n"
  "\n"
  "Make BACKING the parent of the differencing image FILENAME.  Safe mode\n"
  "(default) first copies into FILENAME every sector it does not hold whose\n"
  "contents differ between the old parent chain and BACKING, so FILENAME\n"
  "reads the same afterwards.  -b \"\" removes the parent: FILENAME becomes\n"
  "a dynamic image.\n"
  "\n"
  "  -b BACKING  the new parent (\"\" for none)\n"
  "  -F FMT      ignored (the parent's format is probed)\n"
  "  -u          unsafe: only rewrite the parent pointer (the old parent\n"
  "              need not exist)\n"
  "  -p          show progress\n"
  "  -q          quiet\n";

int
vt_cmd_rebase(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "format", required_argument, NULL, 'f' },
    { NULL, 0, NULL, 0 }
  };
  struct vt_progress prog = { false, 0 };
  const char *backing = NULL;
  bool unsafe = false;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "+f:b:F:upq", longopts, NULL)) != -1) {
    switch (c) {
    case 'f':
      if (strcasecmp(optarg, "vpc") && strcasecmp(optarg, "vhd"))
        return vt_bad_usage("rebase", "only VHD (vpc) images, not '%s'", optarg);
      break;
    case 'b': backing = optarg; break;
    case 'F': break;
    case 'u': unsafe = true; break;
    case 'p': prog.enabled = true; break;
    case 'q': break;
    default: return vt_bad_option("rebase", argv);
    }
  }
  if (argc - optind != 1)
    return vt_bad_usage("rebase", "expected exactly one FILENAME");
  if (!backing)
    return vt_bad_usage("rebase", "-b BACKING is required (\"\" for none)");
  int r = vhd_rebase(argv[optind], backing, unsafe,
                     prog.enabled ? vt_progress_cb : NULL, &prog);
  if (prog.enabled)
    vt_progress_end(&prog);
  if (r < 0) {
    vt_engine_error(r);
    return VT_EXIT_ERR;
  }
  return VT_EXIT_OK;
}
