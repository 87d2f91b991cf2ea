/* vdtool compact — give back the space of empty blocks in a dynamic or
 * differencing VHD (like Optimize-VHD / diskpart compact). */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>

#include "vhd.h"
#include "vdtool.h"

const char vt_summary_compact[] = "free empty blocks of a VHD and shrink the file";
const char vt_usage_compact[] =
  "Usage: vdtool compact [-f vpc] [-p] [-q] FILENAME\n"
  "\n"
  "Free the blocks that hold only zeros (dynamic) or no sectors\n"
  "(differencing), move the remaining blocks down and truncate the file.\n"
  "The virtual disk reads the same afterwards.\n"
  "\n"
  "  -f FMT   image format: vpc (vhd)\n"
  "  -p       show progress\n"
  "  -q       quiet\n";

int
vt_cmd_compact(int argc, char **argv)
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
        return vt_bad_usage("compact", "only VHD (vpc) images, not '%s'", optarg);
      break;
    case 'p': prog.enabled = true; break;
    case 'q': quiet = true; break;
    default: return vt_bad_option("compact", argv);
    }
  }
  if (argc - optind != 1)
    return vt_bad_usage("compact", "expected exactly one FILENAME");
  uint64_t freed = 0;
  int r = vhd_compact(argv[optind], &freed,
                      prog.enabled ? vt_progress_cb : NULL, &prog);
  if (prog.enabled)
    vt_progress_end(&prog);
  if (r < 0) {
    vt_engine_error(r);
    return VT_EXIT_ERR;
  }
  if (!quiet)
    printf("Image compacted: %" PRIu64 " bytes freed.\n", freed);
  return VT_EXIT_OK;
}
