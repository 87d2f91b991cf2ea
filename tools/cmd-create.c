/* vdtool create — as qemu-img create. */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/vdtool.h"

const char vt_summary_create[] = "create a new image";
const char vt_usage_create[] =
  "Usage: vdtool create [-f FMT] [-o OPTIONS] [-b BACKING [-F BACKING_FMT]]\n"
  "                     [-u] [-q] FILENAME [SIZE]\n"
  "\n"
  "Create FILENAME of SIZE bytes (K, M, G, T suffixes) in format FMT\n"
  "(default raw).  An existing file is overwritten, unless another process\n"
  "has it open.  With -b, create a differencing image on top of BACKING\n"
  "(a relative BACKING is relative to FILENAME's folder, as in qemu-img);\n"
  "SIZE then defaults to the backing image's size.\n"
  "\n"
  "  -f FMT          output format (raw, vhd/vpc, ...)\n"
  "  -o OPTIONS      format options key=value,...\n"
  "                  raw: preallocation=off|falloc|full\n"
  "                  vhd: subformat=dynamic|fixed, block_size=SIZE\n"
  "                  vhdx: subformat=dynamic|fixed, block_size=SIZE\n"
  "                  (1M..256M, default 32M), logical_sector_size=512|4096\n"
  "                  vdz (made by 'convert -O vdz' only): cluster_size=SIZE,\n"
  "                  level=0..12 (LZ4HC above 0), threads=N\n"
  "                  rbd (FILENAME rbd:POOL/IMAGE[:conf=PATH]): cluster_size=\n"
  "                  SIZE (object size, 4K..32M)\n"
  "  -b BACKING      backing (parent) image\n"
  "  -F BACKING_FMT  backing image format (default: probe)\n"
  "  -u              as qemu-img's unsafe mode, SIZE must be given (the\n"
  "                  backing image is still read: VHD stores its UUID)\n"
  "  -q              quiet\n";

int
vt_cmd_create(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
  };
  const char *fmt = "raw", *opts = NULL, *backing = NULL, *bfmt = NULL;
  bool unsafe = false, quiet = false;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "f:o:b:F:uq", longopts, NULL)) != -1) {
    switch (c) {
    case 'f': fmt = optarg; break;
    case 'o': opts = optarg; break;
    case 'b': backing = optarg; break;
    case 'F': bfmt = optarg; break;
    case 'u': unsafe = true; break;
    case 'q': quiet = true; break;
    default: return vt_bad_option("create", argv);
    }
  }
  if (vt_options_want_help(opts))
    return vt_options_help(fmt);
  if (optind >= argc)
    return vt_bad_usage("create", "missing FILENAME");
  if (argc - optind > 2)
    return vt_bad_usage("create", "too many arguments");
  const char *path = argv[optind];
  struct vd_create_args args = { .options = opts, .backing = backing,
                                 .backing_format = bfmt };
  if (optind + 1 < argc) {
    if (vd_parse_size(argv[optind + 1], &args.size) < 0) {
      vt_error("%s", vd_error());
      return VT_EXIT_ERR;
    }
  } else if (!backing) {
    return vt_bad_usage("create", "missing SIZE");
  } else if (unsafe) {
    return vt_bad_usage("create", "-u needs an explicit SIZE");
  }  /* else size 0: the engine takes the backing image's size */
  int r = vd_create(path, fmt, &args);
  if (r < 0) {
    vt_engine_error(r);
    return VT_EXIT_ERR;
  }
  if (!quiet) {
    /* The name info shows ("vhd" is created as "vpc"). */
    const char *name = vd_format_name(fmt);
    printf("Formatting '%s', fmt=%s", path, name ? name : fmt);
    if (args.size)
      printf(" size=%" PRIu64, args.size);
    if (backing)
      printf(" backing_file=%s", backing);
    if (opts)
      printf(" %s", opts);
    printf("\n");
  }
  return VT_EXIT_OK;
}
