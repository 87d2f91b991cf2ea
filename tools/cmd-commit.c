/* vdtool commit — merge a differencing VHD into its parent (qemu-img's
 * name and options; qemu-img cannot do it for VHD). */
#include <config.h>

#include <getopt.h>
#include <string.h>
#include <strings.h>

#include "vhd.h"
#include "vdtool.h"

const char vt_summary_commit[] = "merge a differencing VHD into its parent";
const char vt_usage_commit[] =
  "Usage: vdtool commit [-f vpc] [-p] [-q] FILENAME\n"
  "\n"
  "Copy every sector the differencing image FILENAME holds into its parent.\n"
  "The child is left as it was and still reads the same.\n"
  "\n"
  "  -f FMT   image format: vpc (vhd); other formats have no commit\n"
  "  -p       show progress\n"
  "  -q       quiet\n";

int
vt_cmd_commit(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "format", required_argument, NULL, 'f' },
    { NULL, 0, NULL, 0 }
  };
  struct vt_progress prog = { false, 0 };
  bool quiet = false;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "+f:pq", longopts, NULL)) != -1) {
    switch (c) {
    case 'f':
      if (strcasecmp(optarg, "vpc") && strcasecmp(optarg, "vhd"))
        return vt_bad_usage("commit", "only VHD (vpc) images, not '%s'", optarg);
      break;
    case 'p': prog.enabled = true; break;
    case 'q': quiet = true; break;
    default: return vt_bad_option("commit", argv);
    }
  }
  if (argc - optind != 1)
    return vt_bad_usage("commit", "expected exactly one FILENAME");
  int r = vhd_commit(argv[optind], prog.enabled ? vt_progress_cb : NULL, &prog);
  if (prog.enabled)
    vt_progress_end(&prog);
  if (r < 0) {
    vt_engine_error(r);
    return VT_EXIT_ERR;
  }
  if (!quiet)
    printf("Image committed.\n");
  return VT_EXIT_OK;
}
