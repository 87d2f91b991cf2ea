/* vdtool measure — as qemu-img measure: how large the file of a new image
 * must be, for a given size or to hold what an existing image holds. */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/vdtool.h"

const char vt_summary_measure[] =
  "tell how large a new image's file must be";
const char vt_usage_measure[] =
  "Usage: vdtool measure [--output=human|json] [-O OUTPUT_FMT] [-o OPTIONS]\n"
  "                      [-l SNAPSHOT] [-U] (--size SIZE | [-f FMT] FILENAME)\n"
  "\n"
  "Print the file size an image of OUTPUT_FMT made with OPTIONS needs: to\n"
  "hold the data of FILENAME (as 'vdtool convert' writes it: zeros and\n"
  "unallocated ranges take no blocks) or, with --size, an empty image of\n"
  "SIZE (K/M/G/T) -- \"required size\"; and with every block allocated --\n"
  "\"fully allocated size\".  Formats: raw, vpc (vhd), vhdx; vdz cannot\n"
  "tell before compressing, and others are refused as well.\n"
  "\n"
  "  -O OUTPUT_FMT  the new image's format (default raw)\n"
  "  -o OPTIONS     its create options (see 'vdtool create -o help')\n"
  "  --size SIZE    measure an empty image of SIZE instead of FILENAME\n"
  "  -f FMT         FILENAME's format (default: probe)\n"
  "  -l SNAPSHOT    measure an internal snapshot of FILENAME (qcow2)\n"
  "  -U             open FILENAME without taking the image lock\n"
  "  --output=FMT   human (default) or json (qemu-img's keys)\n";

int
vt_cmd_measure(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "help", no_argument, NULL, 'h' },
    { "output", required_argument, NULL, 'J' },
    { "size", required_argument, NULL, 's' },
    { "format", required_argument, NULL, 'f' },
    { "force-share", no_argument, NULL, 'U' },
    { NULL, 0, NULL, 0 }
  };
  const char *fmt = NULL, *ofmt = "raw", *opts = NULL, *snap = NULL;
  uint64_t size = 0;
  bool json = false, have_size = false;
  unsigned flags = 0;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "hf:O:o:l:U", longopts, NULL)) != -1) {
    switch (c) {
    case 'h': vt_usage("measure", stdout); return VT_EXIT_OK;
    case 'J':
      if (vt_parse_output(optarg, &json) < 0)
        return vt_bad_usage("measure", "--output must be human or json");
      break;
    case 's':
      if (vd_parse_size(optarg, &size) < 0) {
        vt_error("--size: %s", vd_error());
        return VT_EXIT_ERR;
      }
      have_size = true;
      break;
    case 'f': fmt = optarg; break;
    case 'O': ofmt = optarg; break;
    case 'o': opts = optarg; break;
    case 'l': snap = optarg; break;
    case 'U': flags |= VD_OPEN_NOLOCK; break;
    default: return vt_bad_option("measure", argv);
    }
  }
  if (vt_options_want_help(opts))
    return vt_options_help(ofmt);
  if (have_size == (argc - optind == 1) || argc - optind > 1)
    return vt_bad_usage("measure", "expected either --size SIZE or one "
                        "FILENAME");
  if (have_size && (fmt || snap))
    return vt_bad_usage("measure", "-f and -l need a FILENAME, not --size");

  struct vd_dev *src = NULL;
  if (!have_size) {
    if (vt_open_snapshot(argv[optind], fmt, flags, snap, &src) < 0)
      return VT_EXIT_ERR;
    size = vd_size(src);
  }
  struct vd_create_args args = { .size = size, .options = opts };
  uint64_t required = 0, fully = 0;
  int r = vd_measure(ofmt, &args, src, &required, &fully);
  if (src)
    vd_close(src);
  if (r < 0) {
    vt_engine_error(r);
    return VT_EXIT_ERR;
  }
  if (json)
    printf("{\n    \"required\": %" PRIu64 ",\n    \"fully-allocated\": %"
           PRIu64 "\n}\n", required, fully);
  else
    printf("required size: %" PRIu64 "\nfully allocated size: %" PRIu64
           "\n", required, fully);
  return VT_EXIT_OK;
}
