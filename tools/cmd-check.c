/* vdtool check — as qemu-img check: verify an image's metadata (and, for
 * formats that checksum their data, every checksum) through vd_check,
 * optionally repairing it, and report with qemu-img's exit codes. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "tools/vdtool.h"

#define CHECK_EXIT_CORRUPT 2
#define CHECK_EXIT_LEAKS 3
#define CHECK_EXIT_NOTSUP 63

const char vt_summary_check[] = "check an image for errors";
const char vt_usage_check[] =
  "Usage: vdtool check [-f FMT] [-r leaks|all] [--output=human|json] [-q]\n"
  "                    [-U] FILENAME\n"
  "\n"
  "Check the image FILENAME for inconsistencies (for checksummed formats\n"
  "such as vdz: every checksum; for RAID arrays: superblocks, bitmap,\n"
  "partial parity log and a read-only scrub).  Each problem is printed on\n"
  "standard error as one line starting with ERROR; the summary goes to\n"
  "standard output (as qemu-img check does).\n"
  "\n"
  "  -f FMT          format (default: probe)\n"
  "  -r leaks|all    repair leaked space only, or everything repairable\n"
  "  --output=json   the report as JSON (qemu-img's fields)\n"
  "  -q              quiet: only the exit status\n"
  "  -U, --force-share  check without taking the image lock, while another\n"
  "                  process has it open (its writes in flight may show\n"
  "                  as problems); not with -r\n"
  "\n"
  "Exit status: 0 no problems, 1 the check could not run, 2 corruptions\n"
  "found, 3 only leaked space found, 63 the format cannot be checked.\n";

struct check_ctx {
  bool quiet, json;
};

static void
check_message(void *opaque, const char *msg)
{
  struct check_ctx *ctx = opaque;
  if (!ctx->quiet && !ctx->json)
    fprintf(stderr, "ERROR %s\n", msg);
}

int
vt_cmd_check(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "output", required_argument, NULL, 'O' },
    { "format", required_argument, NULL, 'f' },
    { "repair", required_argument, NULL, 'r' },
    { "force-share", no_argument, NULL, 'U' },
    { NULL, 0, NULL, 0 }
  };
  struct check_ctx ctx = { false, false };
  const char *fmt = NULL;
  unsigned fix = 0;
  bool force_share = false;
  int c, r;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "f:r:qU", longopts, NULL)) != -1) {
    switch (c) {
    case 'f': fmt = optarg; break;
    case 'q': ctx.quiet = true; break;
    case 'U': force_share = true; break;
    case 'r':
      if (strcmp(optarg, "leaks") == 0)
        fix = VD_CHECK_FIX_LEAKS;
      else if (strcmp(optarg, "all") == 0)
        fix = VD_CHECK_FIX_ALL;
      else
        return vt_bad_usage("check", "-r must be leaks or all, not '%s'",
                            optarg);
      break;
    case 'O':
      if (vt_parse_output(optarg, &ctx.json) < 0)
        return vt_bad_usage("check",
                            "--output must be human or json, not '%s'",
                            optarg);
      break;
    default: return vt_bad_option("check", argv);
    }
  }
  if (argc - optind != 1)
    return vt_bad_usage("check", "expected exactly one FILENAME");
  if (force_share && fix)
    return vt_bad_usage("check", "-U cannot be used with -r (a repair needs "
                        "the image to itself)");
  const char *path = argv[optind];

  struct vd_check_report rep = { .message = check_message, .opaque = &ctx };
  r = vd_check(path, fmt, fix | (force_share ? VD_CHECK_NOLOCK : 0), &rep);
  if (r < 0) {
    vt_engine_error(r);
    return r == -ENOTSUP && !fix ? CHECK_EXIT_NOTSUP : VT_EXIT_ERR;
  }

  if (ctx.json) {
    printf("{\n    \"filename\": ");
    vt_json_string(stdout, path);
    printf(",\n    \"check-errors\": %" PRIu64
           ",\n    \"corruptions\": %" PRIu64
           ",\n    \"leaks\": %" PRIu64
           ",\n    \"corruptions-fixed\": %" PRIu64
           ",\n    \"leaks-fixed\": %" PRIu64
           ",\n    \"total-clusters\": %" PRIu64
           ",\n    \"allocated-clusters\": %" PRIu64
           ",\n    \"fragmented-clusters\": %" PRIu64
           ",\n    \"compressed-clusters\": %" PRIu64
           ",\n    \"image-end-offset\": %" PRIu64 "\n}\n",
           rep.check_errors, rep.corruptions, rep.leaks,
           rep.corruptions_fixed, rep.leaks_fixed, rep.total_clusters,
           rep.allocated_clusters, rep.fragmented_clusters,
           rep.compressed_clusters, rep.image_end_offset);
  } else if (!ctx.quiet) {
    if (rep.corruptions_fixed || rep.leaks_fixed)
      printf("The following inconsistencies were found and repaired:\n\n"
             "    %" PRIu64 " leaked clusters\n    %" PRIu64
             " corruptions\n\n", rep.leaks_fixed, rep.corruptions_fixed);
    if (rep.corruptions)
      printf("\n%" PRIu64 " errors were found on the image.\n"
             "Data may be corrupted, or further writes to the image may "
             "corrupt it.\n", rep.corruptions);
    if (rep.leaks)
      printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
             "This means waste of disk space, but no harm to data.\n",
             rep.leaks);
    if (rep.check_errors)
      printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
             rep.check_errors);
    if (!rep.corruptions && !rep.leaks && !rep.check_errors)
      printf("No errors were found on the image.\n");
    if (rep.total_clusters)
      printf("%" PRIu64 "/%" PRIu64 " = %.2f%% allocated, %.2f%% fragmented, "
             "%.2f%% compressed clusters\n", rep.allocated_clusters,
             rep.total_clusters,
             100.0 * (double)rep.allocated_clusters / (double)rep.total_clusters,
             100.0 * (double)rep.fragmented_clusters / (double)rep.total_clusters,
             100.0 * (double)rep.compressed_clusters / (double)rep.total_clusters);
    if (rep.image_end_offset)
      printf("Image end offset: %" PRIu64 "\n", rep.image_end_offset);
  }

  if (rep.check_errors)
    return VT_EXIT_ERR;
  if (rep.corruptions)
    return CHECK_EXIT_CORRUPT;
  if (rep.leaks)
    return CHECK_EXIT_LEAKS;
  return VT_EXIT_OK;
}
