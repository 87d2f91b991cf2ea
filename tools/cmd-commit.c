/* vdtool commit — as qemu-img commit: merge an image into its backing
 * file, then empty it unless -d (through vd_commit / vd_make_empty, for
 * any format the engine can do it for); with -b BASE into a file deeper
 * in its chain (vd_commit_base), which implies -d. */
#include <config.h>

#include <errno.h>

#include "tools/vdtool.h"

const char vt_summary_commit[] = "merge an image into its backing file";
const char vt_usage_commit[] =
  "Usage: vdtool commit [-f FMT] [-b BASE] [-d] [-p] [-q]\n"
  "                     [--backing=FILE [--backing-format=FMT]] FILENAME\n"
  "\n"
  "Copy every sector the image FILENAME holds itself into its backing\n"
  "file, then (as qemu-img) empty FILENAME so it reads through to the\n"
  "backing file, where its format can be emptied (vpc can).  Either way\n"
  "FILENAME reads the same afterwards.\n"
  "\n"
  "With -b BASE, commit into BASE, any image of FILENAME's backing\n"
  "chain: what FILENAME and every image between it and BASE hold goes\n"
  "into BASE.  As qemu-img, -b implies -d: FILENAME and the images\n"
  "between are left as they are (only FILENAME stays valid).  A relative\n"
  "BASE is taken from the working folder or, as qemu-img, from the folder\n"
  "of the image whose backing file it is.\n"
  "\n"
  "A base smaller than FILENAME is first grown to its size, as qemu-img\n"
  "grows it (a format that cannot grow, such as a fixed VHD, fails).\n"
  "\n"
  "  -f FMT            format of FILENAME (default: probe)\n"
  "  -b BASE           commit into BASE (implies -d)\n"
  "  -d                keep FILENAME's data (do not empty it)\n"
  "  --backing=FILE    commit into FILE: the parent, wherever it is\n"
  "  --backing-format=FMT  its format\n"
  "  -p                show progress\n"
  "  -q                quiet\n";

struct commit_opts {
  bool keep;
  const char *base;
};

static int
commit_opt(int c, const char *arg, void *ctx)
{
  struct commit_opts *co = ctx;
  /* -b implies -d (qemu-img). */
  co->keep = true;
  if (c == 'b')
    co->base = arg;
  return 0;
}

int
vt_cmd_commit(int argc, char **argv)
{
  struct vt_manage_opts o;
  struct commit_opts co = { false, NULL };
  int r = vt_parse_manage("commit", argc, argv, "db:", NULL, commit_opt,
                          &co, 1, "exactly one FILENAME", &o);
  if (r)
    return r;
  const char *path = argv[optind];
  struct vd_open_args a = { .format = o.format, .backing = vt_backing,
                            .backing_format = vt_backing_format };
  r = vd_commit_base(path, &a, co.base,
                     o.prog.enabled ? vt_progress_cb : NULL, &o.prog);
  if (r == 0 && !co.keep) {
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
