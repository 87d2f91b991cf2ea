/* vdtool commit — as qemu-img commit: merge an image into its backing
 * file, then empty it unless -d (through vd_commit / vd_make_empty, for
 * any format the engine can do it for). */
#include <config.h>

#include <errno.h>

#include "tools/vdtool.h"

const char vt_summary_commit[] = "merge an image into its backing file";
const char vt_usage_commit[] =
  "Usage: vdtool commit [-f FMT] [-d] [-p] [-q] [--backing=FILE\n"
  "                     [--backing-format=FMT]] FILENAME\n"
  "\n"
  "Copy every sector the image FILENAME holds itself into its backing\n"
  "file, then (as qemu-img) empty FILENAME so it reads through to the\n"
  "backing file, where its format can be emptied (vpc can).  Either way\n"
  "FILENAME reads the same afterwards.\n"
  "\n"
  "  -f FMT            format of FILENAME (default: probe)\n"
  "  -d                keep FILENAME's data (do not empty it)\n"
  "  --backing=FILE    commit into FILE: the parent, wherever it is\n"
  "  --backing-format=FMT  its format\n"
  "  -p                show progress\n"
  "  -q                quiet\n";

int
vt_cmd_commit(int argc, char **argv)
{
  struct vt_manage_opts o;
  bool keep = false;
  int r = vt_parse_manage("commit", argc, argv, "d", NULL, vt_manage_flag,
                          &keep, 1, "exactly one FILENAME", &o);
  if (r)
    return r;
  const char *path = argv[optind];
  struct vd_open_args a = { .format = o.format, .backing = vt_backing,
                            .backing_format = vt_backing_format };
  r = vd_commit(path, &a, o.prog.enabled ? vt_progress_cb : NULL, &o.prog);
  if (r == 0 && !keep) {
    /* qemu-img's rule: a format that cannot be emptied keeps its data. */
    struct vd_dev *dev;
    a.flags = VD_OPEN_RDWR | VD_OPEN_NOPARENT;
    a.backing = a.backing_format = NULL;
    if ((r = vd_open_opts(path, &a, &dev)) == 0) {
      r = vd_make_empty(dev);
      if (r == -ENOTSUP)
        r = 0;
      int r2 = vd_close(dev);
      r = r ? r : r2;
    }
  }
  return vt_manage_done(&o, r, "Image committed.");
}
