/* libvdisk — live external snapshots (vd_node_snapshot, vdisk.h).
 *
 * A new VHD differencing child goes on top of the device a node points
 * at.  The child is opened over the already-open top (vd_open_over), so
 * the top is never opened twice (it could not be: its write lock forbids
 * a second open), and the top becomes read-only in place (vd_reopen) while
 * the node is drained, just before the swap (vd_node_swap).  The steps
 * and why the flush order loses nothing: vdisk.h; the picture:
 * docs/ARCHITECTURE.md, "The device graph".
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "vdisk/vhd.h"

/* Create FILE as an empty VHD child of PARENT (recorded as PARENT_PATH),
 * never over an existing name: the image is written under a temporary
 * name beside it (O_EXCL), made durable, then linked to FILE (link fails
 * with EEXIST if anything, a symlink included, has that name) and the
 * folder synced. */
static int
snap_create(const char *file, const char *parent_path, struct vd_dev *parent)
{
  struct stat st;
  /* lstat: a dangling symlink counts as existing.  Only for the clearer
   * message early; link() below is what refuses, atomically. */
  if (lstat(file, &st) == 0)
    return vd_set_error(EEXIST, "%s: the snapshot file already exists",
                        file);
  size_t n = strlen(file) + 64;
  char *tmp = malloc(n);
  if (!tmp)
    return vd_set_error(ENOMEM, "%s: out of memory", file);
  int r = -EEXIST;
  for (unsigned i = 0; i < 16 && r == -EEXIST; i++) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(tmp, n, "%s.tmp-%ld-%lx", file, (long)getpid(),
             (unsigned long)ts.tv_nsec ^ i);
    /* -EEXIST: somebody else's file has that name; try another. */
    r = vhd_create_child(tmp, parent_path, parent);
  }
  if (r == -EEXIST) {
    free(tmp);
    return vd_set_error(EEXIST, "%s: no free temporary name beside it",
                        file);
  }
  if (r == 0 && link(tmp, file) == -1)
    r = errno == EEXIST
        ? vd_set_error(EEXIST, "%s: the snapshot file already exists", file)
        : vd_set_error(errno, "%s: cannot create: %s", file, strerror(errno));
  if (r == 0 && (r = vd_file_sync_dir(file)) < 0)
    unlink(file);
  /* The temporary name (ours, made or half-made) goes in every case; on
   * success the link keeps the data. */
  unlink(tmp);
  free(tmp);
  return r;
}

/* The drained step of the swap: the old top becomes the child's read-only
 * parent.  A failure leaves it writable (vd_reopen) and cancels the swap. */
static int
snap_downgrade(void *opaque, struct vd_dev *old)
{
  (void)opaque;
  int r = vd_reopen(old, 0);
  if (r < 0)
    return vd_prefix_error(-r, "%s: cannot make it read-only", vd_path(old));
  return 0;
}

int
vd_node_snapshot(struct vd_node *node, const char *snapshot_file,
                 const char *format, unsigned flags)
{
  if (!node || !snapshot_file || !*snapshot_file)
    return vd_set_error(EINVAL, "vd_node_snapshot: no node or file");
  if (flags)
    return vd_set_error(EINVAL, "%s: invalid snapshot flags 0x%x",
                        snapshot_file, flags);
  if (format && strcasecmp(format, "vhd") != 0 &&
      strcasecmp(format, "vpc") != 0)
    return vd_set_error(ENOTSUP, "%s: cannot make a '%s' snapshot: only "
                        "vhd (vpc) differencing images can be created on a "
                        "live node", snapshot_file, format);
  struct vd_dev *top = vd_node_dev(node);
  bool writable = !vd_node_is_read_only(node);
  /* Refuse early what step 4 would refuse, before any file exists. */
  if (writable && (top->drv->opens_own_files || top->drv->read_only_hint))
    return vd_set_error(ENOTSUP, "%s: cannot snapshot %s: a '%s' device "
                        "cannot become read-only in place", snapshot_file,
                        vd_path(top), vd_format(top));
  const char *parent_path = top->real ? top->real : top->path;

  int r = vd_node_flush(node);
  if (r < 0)
    return vd_prefix_error(-r, "%s: flush before the snapshot",
                           snapshot_file);
  if ((r = snap_create(snapshot_file, parent_path, top)) < 0)
    return r;

  struct vd_open_args a = {
    .format = "vpc",
    .flags = (top->open_flags & (VD_OPEN_DIRECT | VD_OPEN_NOLOCK)) |
             (writable ? VD_OPEN_RDWR : 0),
    .parent_policy = top->opts.parent_policy,
  };
  struct vd_dev *child, *old;
  if ((r = vd_open_over(snapshot_file, &a, top, &child)) < 0) {
    unlink(snapshot_file);
    return r;
  }
  /* Steps 2 and 3 fsync'ed under a write load that kept dirtying the
   * top: flush it once more outside the drain, so the drained flush in
   * the swap only writes back what arrives in between. */
  r = vd_node_flush(node);
  if (r == 0)
    r = vd_node_swap(node, top, child, &old,
                     writable ? snap_downgrade : NULL, NULL);
  if (r < 0) {
    /* The top goes back to being nobody's parent; closing the child must
     * not close it. */
    vhd_detach_parent(child);
    int e = r;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", vd_error());
    vd_close(child);
    unlink(snapshot_file);
    vd_file_sync_dir(snapshot_file);
    return vd_set_error(-e, "%s", msg);
  }
  return 0;
}
