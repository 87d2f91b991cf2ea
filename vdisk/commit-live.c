/* libvdisk — live commit (QEMU's block-commit of the active layer): the
 * data of the layers above a base image in the node's chain is mirrored
 * into the base while the node serves, then the node pivots onto the
 * base (how QEMU's commit_active_start does it, on the mirror).
 *
 * The base is open read-only inside the chain.  It is made writable by a
 * second, unlocked read-write handle of the same file that the mirror
 * writes and the pivot moves the node onto; after the pivot the old chain
 * (with its read-only handle) is closed and the base reopened with its
 * image lock (mr_relock in mirror.c).  Two handles of one file are safe
 * here because the read-only one never writes and only serves, through
 * the chain, ranges the layers above do not hold, into which the mirror
 * writes exactly the bytes the chain already shows there (a copy granule
 * holds the merged view), so its possibly stale cached metadata reads
 * the same bytes as the new.  (vd_reopen from the live-snapshot work
 * would make the base writable in place; it was not on main when this
 * was written.)
 *
 * Only the active layer can be the top: an intermediate commit (top below
 * it) needs the image above top re-pointed at base on the live chain and
 * is refused with -ENOTSUP. */
#include <config.h>

#include <errno.h>
#include <sys/stat.h>

#include "vdisk/driver.h"
#include "vdisk/mirror.h"

static bool
cl_same_file(const char *a, const char *b)
{
  struct stat x, y;
  return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev &&
         x.st_ino == y.st_ino;
}

int
vd_commit_start(struct vd_node *node, const char *top, const char *base,
                const struct vd_mirror_args *args, struct vd_mirror **out)
{
  *out = NULL;
  if (!node)
    return vd_set_error(EINVAL, "commit: no device");
  struct vd_dev *active = vd_node_dev(node);
  if (top && *top && !cl_same_file(top, vd_path(active)))
    return vd_set_error(ENOTSUP, "commit: '%s' is not the active layer "
                        "(%s); committing an image below it is not "
                        "supported", top, vd_path(active));
  /* Walk down the chain to the base: by file, or the bottom image. */
  struct vd_dev *b = NULL, *d = active;
  int depth = 0, bdepth = 0;
  while (vd_backing_dev(d)) {
    d = vd_backing_dev(d);
    depth++;
    if (!base || !*base || cl_same_file(base, vd_path(d))) {
      b = d;
      bdepth = depth;
      if (base && *base)
        break;
    }
  }
  if (depth == 0)
    return vd_set_error(EINVAL, "commit: %s has no backing file",
                        vd_path(active));
  if (!b)
    return vd_set_error(ENOENT, "commit: '%s' is not in the backing chain "
                        "of %s", base, vd_path(active));
  struct vd_dev *w = NULL;
  int r = vd_open(vd_path(b), vd_format(b), VD_OPEN_RDWR | VD_OPEN_NOLOCK,
                  &w);
  if (r < 0)
    return vd_prefix_error(-r, "commit: base %s", vd_path(b));
  struct vd_mirror_args a = args ? *args : (struct vd_mirror_args) { 0 };
  a.sync = VD_MIRROR_SYNC_TOP;
  r = vd_mirror_start_depth(node, w, &a, bdepth, out);
  if (r < 0) {
    vd_close(w);
    return vd_prefix_error(-r, "commit");
  }
  r = vd_mirror_set_relock(*out, vd_path(b), vd_format(b));
  if (r < 0) {
    vd_mirror_free(*out);
    *out = NULL;
  }
  return r;
}
