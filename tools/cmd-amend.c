/* vdtool amend — as qemu-img amend: change the format options of an
 * existing image (vd_amend; qcow2: compat and lazy_refcounts). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "tools/vdtool.h"

const char vt_summary_amend[] = "change the format options of an image";
const char vt_usage_amend[] =
  "Usage: vdtool amend [-f FMT] [-q] -o OPTIONS FILENAME\n"
  "       vdtool amend [-f FMT] -o help [FILENAME]\n"
  "\n"
  "Change the format-specific options of the image FILENAME, as qemu-img\n"
  "amend does.  qcow2 takes compat=0.10|1.1 (a downgrade expands zero\n"
  "clusters; refused, as by qemu-img, with refcount_bits other than 16 or\n"
  "incompatible features; refused by vdisk with internal snapshots or\n"
  "bitmaps) and lazy_refcounts=on|off (needs compat=1.1; a dirty image is\n"
  "repaired first).  Options only for creation (cluster_size, ...) and\n"
  "formats that amend nothing are refused.  -o help lists the options.\n"
  "\n"
  "  -f FMT      image format (default: probe)\n"
  "  -o OPTIONS  key=value[,key=value...]; may be repeated\n"
  "  -q          quiet\n";

/* -o, repeated: joined with commas (qemu-img's rule). */
static int
amend_opt(int c, const char *arg, void *ctx)
{
  char **opts = ctx;
  (void)c;
  size_t have = *opts ? strlen(*opts) + 1 : 0;
  char *n = realloc(*opts, have + strlen(arg) + 1);
  if (!n) {
    vt_error("out of memory");
    return VT_EXIT_ERR;
  }
  if (have)
    n[have - 1] = ',';
  strcpy(n + have, arg);
  *opts = n;
  return 0;
}

/* -o help: the options of FMT, or of FILENAME's probed format. */
static int
amend_help(const char *format, const char *path)
{
  struct vd_dev *dev = NULL;
  if (!format && !path)
    return vt_bad_usage("amend", "-o help needs -f FMT or FILENAME");
  if (!format) {
    if (vt_open(path, NULL, VD_OPEN_NOPARENT, &dev) < 0)
      return VT_EXIT_ERR;
    format = vd_format(dev);
  }
  const char *h = vd_amend_options_help(format);
  if (h)
    printf("Amend options for '%s':\n%s", format, h);
  else
    vt_error("Format driver '%s' does not support option amendment",
             format);
  if (dev)
    vd_close(dev);
  return h ? VT_EXIT_OK : VT_EXIT_ERR;
}

int
vt_cmd_amend(int argc, char **argv)
{
  struct vt_manage_opts o;
  char *opts = NULL;
  int r = vt_parse_manage("amend", argc, argv, "o:", NULL, amend_opt, &opts,
                          -1, "FILENAME", &o);
  if (r == 0 && !opts)
    r = vt_bad_usage("amend", "Must specify options (-o)");
  else if (r == 0 && vt_options_want_help(opts))
    r = amend_help(o.format, optind < argc ? argv[optind] : NULL);
  else if (r == 0 && optind == argc)
    r = vt_bad_usage("amend", "expected FILENAME");
  else if (r == 0)
    r = vt_manage_done(&o, vd_amend(argv[optind], o.format, opts), NULL);
  free(opts);
  return r;
}
