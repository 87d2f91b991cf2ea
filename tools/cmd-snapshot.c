/* vdtool snapshot — as qemu-img snapshot: list, create and delete the
 * internal snapshots of an image (RBD snapshots). */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tools/vdtool.h"

const char vt_summary_snapshot[] = "list, create or delete internal snapshots";
const char vt_usage_snapshot[] =
  "Usage: vdtool snapshot [-f FMT] [-U] [-q] -l | -c NAME | -d NAME FILENAME\n"
  "\n"
  "Manage the snapshots kept inside FILENAME, as qemu-img snapshot does.\n"
  "Formats with internal snapshots: rbd (Ceph RBD images, named\n"
  "rbd:POOL/IMAGE[:conf=PATH][:id=USER][:timeout=SECS]), where an RBD\n"
  "snapshot is read by opening rbd:POOL/IMAGE@NAME (read-only); qcow2\n"
  "(-l only: vdisk reads qcow2 snapshots, with convert -l, but does not\n"
  "make or delete them).\n"
  "\n"
  "  -l         list the snapshots (qemu-img's table: ID, TAG, VM SIZE,\n"
  "             DATE, VM CLOCK, ICOUNT; for RBD the ID is the snapshot\n"
  "             id, VM SIZE the image size when it was taken, VM CLOCK\n"
  "             zero and ICOUNT empty); nothing when there are none\n"
  "  -c NAME    create snapshot NAME of everything written so far\n"
  "  -d NAME    delete snapshot NAME\n"
  "  -f FMT     image format (default: from the name, else probe)\n"
  "  -U         open without taking the image lock (with -l)\n"
  "  -q         quiet\n";

/* qemu's snapshot table (bdrv_snapshot_dump in block/qapi.c), for
 * snapshot -l and info; nothing when N is 0. */
void
vt_snapshot_table(const struct vd_snapshot *list, size_t n)
{
  if (!n)
    return;
  printf("Snapshot list:\n");
  printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
         "VM CLOCK", "ICOUNT");
  for (size_t i = 0; i < n; i++) {
    const struct vd_snapshot *x = &list[i];
    char date[32] = "", clock[64], size[64], icount[32] = "";
    time_t t = (time_t)x->date_sec;
    struct tm tm;
    if (localtime_r(&t, &tm))
      strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
    uint64_t secs = x->vm_clock_nsec / 1000000000u;
    snprintf(clock, sizeof clock, "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64
             ".%03" PRIu64, secs / 3600, (secs / 60) % 60, secs % 60,
             (x->vm_clock_nsec / 1000000u) % 1000);
    if (x->icount != UINT64_MAX)
      snprintf(icount, sizeof icount, "%" PRIu64, x->icount);
    printf("%-9s %-16s %8s%20s%13s%11s\n", x->id, x->name,
           vd_format_size(x->vm_state_size, size, sizeof size), date, clock,
           icount);
  }
}

static int
snapshot_list(struct vd_dev *dev)
{
  struct vd_snapshot *list;
  size_t n;
  int r = vd_snapshot_list(dev, &list, &n);
  if (r < 0) {
    vt_engine_error(r);
    return VT_EXIT_ERR;
  }
  vt_snapshot_table(list, n);
  free(list);
  return VT_EXIT_OK;
}

int
vt_cmd_snapshot(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "help", no_argument, NULL, 'h' },
    { "format", required_argument, NULL, 'f' },
    { "force-share", no_argument, NULL, 'U' },
    { NULL, 0, NULL, 0 }
  };
  const char *fmt = NULL, *name = NULL;
  char action = 0;
  unsigned flags = 0;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "f:lc:d:a:Uq", longopts, NULL)) != -1) {
    switch (c) {
    case 'f': fmt = optarg; break;
    case 'l':
    case 'c':
    case 'd':
    case 'a':
      if (action)
        return vt_bad_usage("snapshot", "only one of -l, -c, -d may be "
                            "given");
      action = (char)c;
      name = optarg;
      break;
    case 'U': flags |= VD_OPEN_NOLOCK; break;
    case 'q': break;   /* only -l prints anything */
    default: return vt_bad_option("snapshot", argv);
    }
  }
  if (!action)
    return vt_bad_usage("snapshot", "one of -l, -c NAME, -d NAME is needed");
  if (action == 'a')
    return vt_bad_usage("snapshot", "-a (revert to a snapshot) is not "
                        "supported");
  if (optind >= argc)
    return vt_bad_usage("snapshot", "missing FILENAME");
  if (argc - optind > 1)
    return vt_bad_usage("snapshot", "too many arguments");
  if (action != 'l' && (flags & VD_OPEN_NOLOCK))
    return vt_bad_usage("snapshot", "-U only goes with -l");
  if (action != 'l')
    flags |= VD_OPEN_RDWR;
  const char *path = argv[optind];
  struct vd_dev *dev;
  if (vt_open(path, fmt, flags, &dev) < 0)
    return VT_EXIT_ERR;
  int rc = VT_EXIT_OK, r = 0;
  if (action == 'l') {
    rc = snapshot_list(dev);
  } else {
    r = action == 'c' ? vd_snapshot_create(dev, name)
                      : vd_snapshot_delete(dev, name);
    if (r < 0) {
      vt_engine_error(r);
      rc = VT_EXIT_ERR;
    }
  }
  r = vd_close(dev);
  if (r < 0 && rc == VT_EXIT_OK) {
    vt_engine_error(r);
    rc = VT_EXIT_ERR;
  }
  return rc;
}
