/* libvdisk — live commit (QEMU's block-commit), of the active layer and
 * of an intermediate one.
 *
 * Active commit (top = the active layer): the data of the layers above a
 * base image in the node's chain is mirrored into the base while the
 * node serves, then the node pivots onto the base (how QEMU's
 * commit_active_start does it, on the mirror).
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
 * Intermediate commit (top below the active layer; QEMU's commit_start):
 * active -> ... -> above -> top -> ... -> base.  The layers top..(just
 * above base) are read-only and never change, so a plain copy of what
 * they hold (block status of top, depth above base's) into base is
 * enough: no observer, no dirty bitmap.  The base is made writable in
 * place (vd_reopen; the chain keeps reading through that same handle, so
 * nothing cached goes stale) and written only in ranges the layers above
 * it cover, with the bytes the chain shows there.  When the copy is done
 * (cm_finish): base back to read-only, which flushes it; then, with the
 * node drained, above's backing pointer is rewritten on disk (the
 * driver's change_backing, as qemu-img rebase -u; above is made writable
 * in place for it if it is read-only) and flushed, and the live chain is
 * re-pointed (the driver's replace_backing); resume, close the removed
 * layers (their files stay).  A crash at any instant leaves above
 * pointing at top (which reads the same bytes as base underneath it) or,
 * once the pointer is durable, at a base that was durable before. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>

#include "vdisk/driver.h"
#include "vdisk/mirror.h"

bool
vd_commit_is_active(struct vd_node *node, const char *top)
{
  return !top || !*top || vd_same_file(top, vd_path(vd_node_dev(node)));
}

int
vd_commit_start(struct vd_node *node, const char *top, const char *base,
                const struct vd_mirror_args *args, struct vd_mirror **out)
{
  *out = NULL;
  if (!node)
    return vd_set_error(EINVAL, "commit: no device");
  struct vd_dev *active = vd_node_dev(node);
  if (!vd_commit_is_active(node, top))
    return vd_set_error(ENOTSUP, "commit: '%s' is not the active layer "
                        "(%s): an intermediate commit is "
                        "vd_commit_mid_start's", top, vd_path(active));
  if (!vd_backing_dev(active))
    return vd_set_error(EINVAL, "commit: %s has no backing file",
                        vd_path(active));
  int bdepth = 0;
  struct vd_dev *b = vd_chain_below(active, base, &bdepth);
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

/* ---- intermediate commit ---- */

/* Most bytes one step copies. */
#define CM_BUF_SIZE (1u << 20)

struct vd_commit {
  struct vd_node *node;
  /* The chain's devices, borrowed: above -> top -> ... -> lowest -> base. */
  struct vd_dev *above, *top, *lowest, *base;
  int depth;                  /* base's depth below top */
  uint64_t size;
  uint64_t off;               /* copied up to here; == size: all copied */
  uint64_t copied;
  bool base_writable;         /* reopened read-write by us */
  bool finished;              /* re-pointed, or cancelled */
  uint8_t *buf;
};

/* The device N levels below FROM. */
static struct vd_dev *
cm_down(struct vd_dev *from, int n)
{
  while (n-- > 0)
    from = vd_backing_dev(from);
  return from;
}

/* Whether DEV's backing pointer can be rewritten on disk and live. */
static bool
cm_repointable(const struct vd_dev *dev)
{
  return dev->drv->change_backing && dev->drv->replace_backing;
}

int
vd_commit_mid_start(struct vd_node *node, const char *top, const char *base,
                    struct vd_commit **out)
{
  *out = NULL;
  if (!node || !top || !*top)
    return vd_set_error(EINVAL, "commit: no device or no top image");
  struct vd_dev *active = vd_node_dev(node);
  if (vd_commit_is_active(node, top))
    return vd_set_error(EINVAL, "commit: %s is the active layer: that is "
                        "an active commit (vd_commit_start)", top);
  int tdepth = 0, bdepth = 0;
  struct vd_dev *t = vd_chain_below(active, top, &tdepth);
  if (!t)
    return vd_set_error(ENOENT, "commit: top '%s' is not in the backing "
                        "chain of %s", top, vd_path(active));
  if (base && *base && vd_same_file(base, vd_path(t)))
    return vd_set_error(EINVAL, "commit: top and base are the same image "
                        "(%s)", vd_path(t));
  struct vd_dev *b = vd_chain_below(t, base, &bdepth);
  if (!b && base && *base)
    return vd_set_error(ENOENT, "commit: base '%s' is not below top %s in "
                        "the backing chain of %s", base, vd_path(t),
                        vd_path(active));
  if (!b)
    return vd_set_error(EINVAL, "commit: top %s has no backing file",
                        vd_path(t));
  struct vd_dev *above = cm_down(active, tdepth - 1);
  struct vd_dev *lowest = cm_down(t, bdepth - 1);
  if (!cm_repointable(above) || !lowest->drv->replace_backing)
    return vd_set_error(ENOTSUP, "commit: the backing file of %s ('%s') "
                        "cannot be changed on a live chain", vd_path(above),
                        vd_format(above));
  if (vd_size(b) != vd_size(t))
    return vd_set_error(EINVAL, "commit: base %s (%llu bytes) and top %s "
                        "(%llu bytes) differ in size", vd_path(b),
                        (unsigned long long)vd_size(b), vd_path(t),
                        (unsigned long long)vd_size(t));
  uint8_t *buf = malloc(CM_BUF_SIZE);
  struct vd_commit *c = buf ? malloc(sizeof *c) : NULL;
  if (!c) {
    free(buf);
    return vd_set_error(ENOMEM, "commit: out of memory");
  }
  *c = (struct vd_commit) { .node = node, .above = above, .top = t,
                            .lowest = lowest, .base = b, .depth = bdepth,
                            .size = vd_size(t), .buf = buf };
  int r = vd_reopen(b, VD_OPEN_RDWR);
  if (r < 0) {
    free(c->buf);
    free(c);
    return vd_prefix_error(-r, "commit: cannot write base %s", vd_path(b));
  }
  c->base_writable = true;
  *out = c;
  return 0;
}

/* With the node drained: above's pointer on disk (durable when
 * change_backing returns), then in the live chain. */
static int
cm_repoint(struct vd_commit *c)
{
  bool ro = vd_is_read_only(c->above);
  int r = ro ? vd_reopen(c->above, VD_OPEN_RDWR) : 0;
  if (r < 0)
    return vd_prefix_error(-r, "commit: cannot write %s",
                           vd_path(c->above));
  const char *bpath = c->base->real ? c->base->real : vd_path(c->base);
  r = vd_change_backing(c->above, bpath, vd_format(c->base),
                        VD_BACKING_UNSAFE, NULL, NULL);
  if (r < 0) {
    r = vd_prefix_error(-r, "commit");
    if (ro)
      vd_reopen(c->above, 0);
    return r;
  }
  c->lowest->drv->replace_backing(c->lowest, NULL);
  c->above->drv->replace_backing(c->above, c->base);
  vd_dev_changed(c->lowest);
  vd_dev_changed(c->above);
  /* Nothing was written to above but its metadata, which is durable:
   * this flush cannot lose anything, and if it fails above just stays
   * writable (nothing writes it). */
  if (ro)
    vd_reopen(c->above, 0);
  return 0;
}

/* The copy is done: make base durable and read-only again, re-point
 * above at it, close the layers that are out of the chain. */
static int
cm_finish(struct vd_commit *c)
{
  int r = vd_reopen(c->base, 0);
  if (r < 0)
    return vd_prefix_error(-r, "commit: flush base %s", vd_path(c->base));
  c->base_writable = false;
  vd_node_drain(c->node);
  r = cm_repoint(c);
  vd_node_resume(c->node);
  if (r < 0)
    return r;
  /* top..lowest, no longer reachable by any request; lowest no longer
   * has a parent, so base stays open. */
  vd_close(c->top);
  c->finished = true;
  return 0;
}

int
vd_commit_mid_step(struct vd_commit *c, uint64_t *done, uint64_t *total)
{
  int r = 0;
  if (c->finished)
    return vd_set_error(EINVAL, "commit: the job has ended");
  if (c->off < c->size) {
    /* What a layer from top down to just above base holds, data or
     * zeros; holes and base's own data (and below) stay. */
    uint64_t adv, copied;
    r = vd_commit_piece(c->top, c->base, c->depth, c->off, c->buf,
                        CM_BUF_SIZE, &adv, &copied);
    if (r < 0)
      return vd_prefix_error(-r, "commit: %s into %s at %llu",
                             vd_path(c->top), vd_path(c->base),
                             (unsigned long long)c->off);
    c->copied += copied;
    if (done)
      *done += copied;
    c->off += adv;
  } else {
    if ((r = cm_finish(c)) < 0)
      return r;
    r = 1;
  }
  if (total)
    *total = c->copied + (c->size - c->off);
  return r;
}

void
vd_commit_mid_cancel(struct vd_commit *c)
{
  if (!c || c->finished)
    return;
  /* Read-only again (after a flush); the chain never changed. */
  if (c->base_writable && vd_reopen(c->base, 0) == 0)
    c->base_writable = false;
  c->finished = true;
}

void
vd_commit_mid_free(struct vd_commit *c)
{
  if (!c)
    return;
  vd_commit_mid_cancel(c);
  free(c->buf);
  free(c);
}
