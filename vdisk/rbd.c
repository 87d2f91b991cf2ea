/* libvdisk — the rbd driver: a Ceph RBD image, through librbd (never a
 * hand-written protocol).
 *
 * The image is named rbd:POOL/[NAMESPACE/]IMAGE[@SNAP][:conf=PATH]
 * [:id=USER][:timeout=SECS] (qemu's syntax, vdisk/rbd-name.h).  As for
 * NBD URIs, the core (vdisk/dev.c) takes such a name as an RBD image only
 * where the operator typed it (dev->uri_ok), never when it was read out
 * of an image, so nothing a guest writes can make the server open a Ceph
 * image; see docs/SECURITY.md.
 *
 * What maps to what:
 *  - reads, writes: rbd_read / rbd_write, split at RBD_IO_MAX; FUA is a
 *    write followed by rbd_flush (librbd has no FUA);
 *  - flush: rbd_flush, which writes librbd's cache back to the OSDs, so
 *    an acknowledged flush is durable in the cluster.  A failed flush is
 *    remembered for the life of the device (as vd_file_flush does): the
 *    cache may have dropped what it could not write;
 *  - discard: rbd_discard (advisory; whole objects are removed);
 *  - write-zeroes: rbd_write_zeroes (THICK_PROVISION for NO_HOLE); both
 *    are offloaded to the OSDs, so FAST_ZERO is honoured unless NO_HOLE;
 *  - block status: rbd_diff_iterate2 from the image's creation (parent
 *    included for clones): what it reports is data, the rest is a hole
 *    that reads as zeros;
 *  - resize: rbd_resize2; snapshots: rbd_snap_* (vd_snapshot_*); an
 *    image opened @SNAP is read-only.
 *
 * librbd and librados are loaded when the first image is opened or
 * created (vdisk/rbd-lib.h), not linked: the calls below go through
 * vd_rbd_lib.
 *
 * Every open has its own cluster connection (rados_t), as qemu's rbd
 * driver has.  librados' timeouts (rados_osd_op_timeout,
 * rados_mon_op_timeout, client_mount_timeout) are all set to the name's
 * timeout, so an unreachable or stopped cluster fails requests with
 * ETIMEDOUT instead of waiting forever.  librados' own log lines never
 * reach stderr (log_to_stderr / err_to_stderr off): errors come back as
 * one vd_error line.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vdisk/driver.h"
#include "vdisk/rbd-lib.h"
#include "vdisk/rbd-name.h"

/* librbd returns byte counts of single requests as int (discard, write
 * zeroes) or checks them against INT_MAX: larger requests are split. */
#define RBD_IO_MAX (1u << 30)
/* Longest range one block-status call looks at, in objects: each object
 * may cost the OSDs a request. */
#define RBD_BS_OBJECTS 256
/* Object sizes (-o cluster_size) librbd accepts: orders 12..25. */
#define RBD_MIN_ORDER 12
#define RBD_MAX_ORDER 25

struct rbdv_priv {
  struct vd_rbd_name name;
  rados_t cluster;
  rados_ioctx_t io;
  rbd_image_t image;
  bool have_cluster, have_io, have_image;
  uint64_t obj_size;
  int order;
  int flush_err;              /* errno of the first failed flush (atomic) */
};

/* A librbd / librados failure R (negative errno) of OP as a vd_error. */
static int
rbdv_error(const char *path, const struct vd_rbd_name *n, int r,
          const char *op)
{
  int e = r < 0 ? -r : EIO;
  if (e == ETIMEDOUT)
    return vd_set_error(e, "%s: %s: the cluster did not answer within %u s "
                        "(timeout)", path, op, n->timeout);
  return vd_set_error(e, "%s: %s: %s", path, op, strerror(e));
}

/* Connect to the cluster N names and open an I/O context on its pool
 * (and namespace).  On failure nothing stays open. */
static int
rbdv_connect(const char *path, const struct vd_rbd_name *n, rados_t *cl,
            rados_ioctx_t *io)
{
  int r = vd_rbd_lib_load();   /* librbd is loaded on first use */
  if (r < 0)
    return r;
  r = vd_rbd_lib.rados_create(cl, n->id[0] ? n->id : NULL);
  if (r < 0)
    return rbdv_error(path, n, r, "cannot create a cluster handle");
  const char *what = "cannot read the configuration";
  /* Without conf= librados looks in its default places; finding nothing
   * there is not an error (qemu's rule), a named file that fails is. */
  r = vd_rbd_lib.rados_conf_read_file(*cl, n->conf[0] ? n->conf : NULL);
  if (r < 0 && !n->conf[0])
    r = 0;
  char t[16];
  snprintf(t, sizeof t, "%u", n->timeout);
  static const char *const timeouts[] = {
    "rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout",
    NULL
  };
  for (const char *const *k = timeouts; r >= 0 && *k; k++)
    if ((r = vd_rbd_lib.rados_conf_set(*cl, *k, t)) < 0)
      what = "cannot set the timeouts";
  if (r >= 0 && ((r = vd_rbd_lib.rados_conf_set(*cl, "log_to_stderr", "false")) < 0 ||
                 (r = vd_rbd_lib.rados_conf_set(*cl, "err_to_stderr", "false")) < 0))
    what = "cannot quiet librados";
  if (r >= 0 && (r = vd_rbd_lib.rados_connect(*cl)) < 0)
    what = "cannot connect to the cluster";
  if (r >= 0 && (r = vd_rbd_lib.rados_ioctx_create(*cl, n->pool, io)) < 0)
    what = r == -ENOENT ? "no such pool" : "cannot open the pool";
  if (r < 0) {
    vd_rbd_lib.rados_shutdown(*cl);
    if (r == -ENOENT && strcmp(what, "no such pool") == 0)
      return vd_set_error(ENOENT, "%s: pool '%s' does not exist", path,
                          n->pool);
    return rbdv_error(path, n, r, what);
  }
  if (n->ns[0])
    vd_rbd_lib.rados_ioctx_set_namespace(*io, n->ns);
  return 0;
}

static void
rbdv_disconnect(rados_t cl, rados_ioctx_t io)
{
  vd_rbd_lib.rados_ioctx_destroy(io);
  vd_rbd_lib.rados_shutdown(cl);
}

static void
rbdv_close(struct vd_dev *dev)
{
  struct rbdv_priv *p = dev->priv;
  /* The image before its pool context, the context before the cluster
   * (librbd's and librados' order); rados_shutdown joins librados'
   * threads and frees what the connection held. */
  if (p->have_image)
    vd_rbd_lib.rbd_close(p->image);
  if (p->have_io)
    vd_rbd_lib.rados_ioctx_destroy(p->io);
  if (p->have_cluster)
    vd_rbd_lib.rados_shutdown(p->cluster);
  p->have_image = p->have_io = p->have_cluster = false;
}

static int
rbdv_open(struct vd_dev *dev)
{
  struct rbdv_priv *p = dev->priv;
  if (!dev->uri_ok)
    return vd_set_error(EPERM, "%s: the rbd driver opens only rbd: names "
                        "the operator gives", dev->path);
  int r = vd_rbd_name_parse(dev->path, &p->name);
  if (r < 0)
    return r;
  /* A caller's request timeout (a RAID array's member timeout) applies
   * when the name gives none, rounded up to whole seconds. */
  if (!p->name.timeout_given && dev->opts.timeout_ms) {
    uint64_t s = ((uint64_t)dev->opts.timeout_ms + 999) / 1000;
    p->name.timeout = s > VD_RBD_MAX_TIMEOUT ? VD_RBD_MAX_TIMEOUT
                                             : (unsigned)s;
  }
  const struct vd_rbd_name *n = &p->name;
  /* RBD snapshots are images of their own, named in the image name (as
   * qemu's rbd driver, which has no convert -l either). */
  if (dev->opts.snapshot)
    return vd_set_error(ENOTSUP, "%s: an RBD snapshot is read by its name, "
                        "rbd:POOL/IMAGE@SNAP, not with -l", dev->path);
  if ((r = rbdv_connect(dev->path, n, &p->cluster, &p->io)) < 0)
    return r;
  p->have_cluster = p->have_io = true;
  const char *snap = n->snap[0] ? n->snap : NULL;
  if (snap)
    dev->read_only = true;   /* write-type requests then fail with EROFS */
  r = dev->read_only ? vd_rbd_lib.rbd_open_read_only(p->io, n->image, &p->image, snap)
                     : vd_rbd_lib.rbd_open(p->io, n->image, &p->image, snap);
  if (r < 0) {
    rbdv_close(dev);
    if (r == -ENOENT)
      return vd_set_error(ENOENT, "%s: no such %s", dev->path,
                          snap ? "image or snapshot" : "image");
    return rbdv_error(dev->path, n, r, "cannot open the image");
  }
  p->have_image = true;
  rbd_image_info_t st;
  if ((r = vd_rbd_lib.rbd_stat(p->image, &st, sizeof st)) < 0) {
    rbdv_close(dev);
    return rbdv_error(dev->path, n, r, "stat");
  }
  dev->size = st.size;
  p->obj_size = st.obj_size;
  p->order = st.order;
  vd_clear_error();
  return 0;
}

static int
rbdv_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  struct rbdv_priv *p = dev->priv;
  while (len > 0) {
    size_t n = len < RBD_IO_MAX ? len : RBD_IO_MAX;
    ssize_t r = vd_rbd_lib.rbd_read(p->image, off, n, buf);
    if (r < 0)
      return rbdv_error(dev->path, &p->name, (int)r, "read failed");
    if (r == 0)   /* the dispatcher checked the range: cannot happen */
      return vd_set_error(EIO, "%s: read at %" PRIu64 " returned nothing",
                          dev->path, off);
    buf = (char *)buf + r;
    off += (uint64_t)r;
    len -= (size_t)r;
  }
  return 0;
}

static int
rbdv_flush(struct vd_dev *dev)
{
  struct rbdv_priv *p = dev->priv;
  int e = __atomic_load_n(&p->flush_err, __ATOMIC_ACQUIRE);
  if (e)
    return vd_set_error(e, "%s: flush refused: an earlier flush failed "
                        "(%s), so data written before it may be lost",
                        dev->path, strerror(e));
  int r = vd_rbd_lib.rbd_flush(p->image);
  if (r < 0) {
    int zero = 0;
    __atomic_compare_exchange_n(&p->flush_err, &zero, -r, false,
                                __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    return rbdv_error(dev->path, &p->name, r, "flush failed");
  }
  return 0;
}

static int
rbdv_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
               unsigned flags)
{
  struct rbdv_priv *p = dev->priv;
  while (len > 0) {
    size_t n = len < RBD_IO_MAX ? len : RBD_IO_MAX;
    ssize_t r = vd_rbd_lib.rbd_write(p->image, off, n, buf);
    if (r < 0)
      return rbdv_error(dev->path, &p->name, (int)r, "write failed");
    if ((size_t)r != n)
      return vd_set_error(EIO, "%s: short write at %" PRIu64, dev->path,
                          off);
    buf = (const char *)buf + n;
    off += n;
    len -= n;
  }
  return (flags & VD_REQ_FUA) ? rbdv_flush(dev) : 0;
}

static int
rbdv_discard(struct vd_dev *dev, uint64_t off, uint64_t len,
                unsigned flags)
{
  struct rbdv_priv *p = dev->priv;
  while (len > 0) {
    uint64_t n = len < RBD_IO_MAX ? len : RBD_IO_MAX;
    int r = vd_rbd_lib.rbd_discard(p->image, off, n);
    if (r < 0)
      return rbdv_error(dev->path, &p->name, r, "discard failed");
    off += n;
    len -= n;
  }
  return (flags & VD_REQ_FUA) ? rbdv_flush(dev) : 0;
}

static int
rbdv_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                     unsigned flags)
{
  struct rbdv_priv *p = dev->priv;
  /* Thick zeroing writes the zeros out object by object: not fast. */
  if ((flags & VD_REQ_FAST_ZERO) && (flags & VD_REQ_NO_HOLE))
    return vd_set_error(ENOTSUP, "%s: allocated zeroing is not fast on RBD",
                        dev->path);
  int zf = (flags & VD_REQ_NO_HOLE) ? RBD_WRITE_ZEROES_FLAG_THICK_PROVISION
                                    : 0;
  while (len > 0) {
    size_t n = len < RBD_IO_MAX ? (size_t)len : RBD_IO_MAX;
    ssize_t r = vd_rbd_lib.rbd_write_zeroes(p->image, off, n, zf, 0);
    if (r < 0)
      return rbdv_error(dev->path, &p->name, (int)r, "write zeroes failed");
    off += n;
    len -= n;
  }
  return (flags & VD_REQ_FUA) ? rbdv_flush(dev) : 0;
}

/* The first extent of a block-status query, built by rbdv_bs_extent. */
struct rbdv_bs {
  uint64_t off, end;          /* the range asked about */
  uint64_t data_off, data_end;/* first run of data found, if any */
  bool found, stopped;
};

/* rbd_diff_iterate2's callback: extents arrive in ascending order; keep
 * the first run of adjacent data and stop at the first gap after it. */
static int
rbdv_bs_extent(uint64_t off, size_t len, int exists, void *opaque)
{
  struct rbdv_bs *b = opaque;
  uint64_t s = off < b->off ? b->off : off;
  uint64_t e = off + len > b->end ? b->end : off + len;
  if (!exists || s >= e)
    return 0;
  if (!b->found) {
    b->found = true;
    b->data_off = s;
    b->data_end = e;
    if (s > b->off) {   /* a hole comes first: its end is known now */
      b->stopped = true;
      return -ECANCELED;
    }
    return 0;
  }
  if (s == b->data_end) {
    b->data_end = e;
    return 0;
  }
  b->stopped = true;
  return -ECANCELED;
}

static int
rbdv_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                     struct vd_extent *ext)
{
  struct rbdv_priv *p = dev->priv;
  uint64_t cap = p->obj_size * RBD_BS_OBJECTS;
  if (cap && len > cap)
    len = cap;
  struct rbdv_bs b = { .off = off, .end = off + len };
  /* whole_object 0: exact extents inside objects, so a convert skips the
   * unwritten parts of partly written objects too. */
  int r = vd_rbd_lib.rbd_diff_iterate2(p->image, NULL, off, len, 1, 0, rbdv_bs_extent,
                            &b);
  if (r < 0 && !(r == -ECANCELED && b.stopped))
    return rbdv_error(dev->path, &p->name, r, "block status failed");
  if (!b.found) {
    ext->length = len;
    ext->flags = VD_EXT_HOLE | VD_EXT_ZERO;
  } else if (b.data_off > off) {
    ext->length = b.data_off - off;
    ext->flags = VD_EXT_HOLE | VD_EXT_ZERO;
  } else {
    ext->length = b.data_end - off;
    ext->flags = 0;
  }
  return 0;
}

static int
rbdv_truncate(struct vd_dev *dev, uint64_t size, unsigned flags)
{
  struct rbdv_priv *p = dev->priv;
  int r = vd_rbd_lib.rbd_resize2(p->image, size, (flags & VD_TRUNCATE_SHRINK) != 0,
                      NULL, NULL);
  if (r < 0)
    return rbdv_error(dev->path, &p->name, r, "resize failed");
  dev->size = size;
  return 0;
}

static void
rbdv_info(struct vd_dev *dev, struct vd_info *info)
{
  struct rbdv_priv *p = dev->priv;
  const struct vd_rbd_name *n = &p->name;
  info->cluster_size = p->obj_size;   /* qemu-img info's cluster_size */
  vd_info_add_str(info, "pool", n->pool);
  if (n->ns[0])
    vd_info_add_str(info, "namespace", n->ns);
  vd_info_add_str(info, "image", n->image);
  if (n->snap[0])
    vd_info_add_str(info, "snapshot", n->snap);
  vd_info_add_u64(info, "object-size", p->obj_size);
  vd_info_add_u64(info, "order", (uint64_t)p->order);
  uint64_t features;
  if (vd_rbd_lib.rbd_get_features(p->image, &features) == 0) {
    char names[512];
    size_t nl = sizeof names;
    if (vd_rbd_lib.rbd_features_to_string(features, names, &nl) == 0)
      vd_info_add_str(info, "features", names);
  }
  char prefix[64];
  if (vd_rbd_lib.rbd_get_block_name_prefix(p->image, prefix, sizeof prefix) >= 0)
    vd_info_add_str(info, "block-name-prefix", prefix);
  /* With no room, rbd_snap_list fails with -ERANGE and sets MAX to the
   * count plus one (its end marker). */
  int max = 0;
  int r = vd_rbd_lib.rbd_snap_list(p->image, NULL, &max);
  vd_info_add_u64(info, "snapshot-count",
                  r == -ERANGE && max > 0 ? (uint64_t)max - 1 : 0);
  vd_info_add_u64(info, "timeout", n->timeout);
}

/* ---- snapshots ---- */

static int
rbdv_snap_name_ok(struct vd_dev *dev, const char *name)
{
  if (!name || !*name || strlen(name) >= VD_RBD_PART_MAX)
    return vd_set_error(EINVAL, "%s: a snapshot name must have 1 to %d "
                        "bytes", dev->path, VD_RBD_PART_MAX - 1);
  for (const unsigned char *c = (const unsigned char *)name; *c; c++)
    if (*c < 0x20 || *c == 0x7f || *c == '/' || *c == '@')
      return vd_set_error(EINVAL, "%s: snapshot name '%s' holds '/', '@' or "
                          "a control character", dev->path, name);
  return 0;
}

static int
rbdv_snapshot_create(struct vd_dev *dev, const char *name)
{
  struct rbdv_priv *p = dev->priv;
  int r = rbdv_snap_name_ok(dev, name);
  if (r < 0)
    return r;
  /* What was written before the snapshot belongs in it. */
  if ((r = rbdv_flush(dev)) < 0)
    return r;
  r = vd_rbd_lib.rbd_snap_create(p->image, name);
  if (r == -EEXIST)
    return vd_set_error(EEXIST, "%s: snapshot '%s' already exists",
                        dev->path, name);
  if (r < 0)
    return rbdv_error(dev->path, &p->name, r, "snapshot create failed");
  return 0;
}

static int
rbdv_snapshot_delete(struct vd_dev *dev, const char *name)
{
  struct rbdv_priv *p = dev->priv;
  int r = rbdv_snap_name_ok(dev, name);
  if (r < 0)
    return r;
  r = vd_rbd_lib.rbd_snap_remove(p->image, name);
  if (r == -ENOENT)
    return vd_set_error(ENOENT, "%s: no snapshot '%s'", dev->path, name);
  if (r == -EBUSY)
    return vd_set_error(EBUSY, "%s: snapshot '%s' is protected or has "
                        "clones", dev->path, name);
  if (r < 0)
    return rbdv_error(dev->path, &p->name, r, "snapshot delete failed");
  return 0;
}

static int
rbdv_snapshot_list(struct vd_dev *dev, struct vd_snapshot **out,
                      size_t *count)
{
  struct rbdv_priv *p = dev->priv;
  int max = 16, r;
  rbd_snap_info_t *snaps = NULL;
  for (;;) {
    /* rbd_snap_list wants room for the snapshots plus an end marker in
     * MAX entries, else fails with -ERANGE and sets MAX to that. */
    rbd_snap_info_t *tmp = realloc(snaps, (size_t)max * sizeof *snaps);
    if (!tmp) {
      free(snaps);
      return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    }
    snaps = tmp;
    r = vd_rbd_lib.rbd_snap_list(p->image, snaps, &max);
    if (r != -ERANGE)
      break;
  }
  if (r < 0) {
    free(snaps);
    return rbdv_error(dev->path, &p->name, r, "snapshot list failed");
  }
  struct vd_snapshot *list = calloc(r > 0 ? (size_t)r : 1, sizeof *list);
  if (!list) {
    vd_rbd_lib.rbd_snap_list_end(snaps);
    free(snaps);
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  }
  for (int i = 0; i < r; i++) {
    struct vd_snapshot *s = &list[i];
    snprintf(s->id, sizeof s->id, "%" PRIu64, snaps[i].id);
    snprintf(s->name, sizeof s->name, "%s", snaps[i].name);
    s->size = snaps[i].size;
    s->vm_state_size = snaps[i].size;  /* as qemu's rbd driver reports */
    s->icount = UINT64_MAX;
    struct timespec ts;
    if (vd_rbd_lib.rbd_snap_get_timestamp(p->image, snaps[i].id, &ts) == 0) {
      s->date_sec = ts.tv_sec;
      s->date_nsec = (uint32_t)ts.tv_nsec;
    }
  }
  vd_rbd_lib.rbd_snap_list_end(snaps);
  free(snaps);
  *out = list;
  *count = (size_t)r;
  return 0;
}

/* ---- create ---- */

static int
rbdv_create(const char *path, const struct vd_create_args *args)
{
  static const char *const known[] = { "cluster_size", NULL };
  struct vd_rbd_name n;
  int r = vd_rbd_name_parse(path, &n);
  if (r < 0)
    return r;
  if (n.snap[0])
    return vd_set_error(EINVAL, "%s: cannot create a snapshot this way "
                        "(vdtool snapshot -c NAME rbd:POOL/IMAGE)", path);
  if (args->backing)
    return vd_set_error(ENOTSUP, "%s: an RBD image has no backing file",
                        path);
  if ((r = vd_opt_check(args->options, known, path)) < 0)
    return r;
  uint64_t order = 0;
  char val[64];
  if ((r = vd_opt_get(args->options, "cluster_size", val, sizeof val)) < 0)
    return vd_prefix_error(-r, "%s", path);
  if (r == 1) {
    uint64_t cs;
    if (vd_parse_size(val, &cs) < 0 || cs == 0 || (cs & (cs - 1)) ||
        cs < (1u << RBD_MIN_ORDER) || cs > (1u << RBD_MAX_ORDER))
      return vd_set_error(EINVAL, "%s: cluster_size must be a power of two "
                          "from 4K to 32M, not '%s'", path, val);
    while ((1ull << order) < cs)
      order++;
  }
  rados_t cl;
  rados_ioctx_t io;
  if ((r = rbdv_connect(path, &n, &cl, &io)) < 0)
    return r;
  rbd_image_options_t o;
  vd_rbd_lib.rbd_image_options_create(&o);
  if (order)
    vd_rbd_lib.rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_ORDER, order);
  r = vd_rbd_lib.rbd_create4(io, n.image, args->size, o);
  vd_rbd_lib.rbd_image_options_destroy(o);
  rbdv_disconnect(cl, io);
  if (r == -EEXIST)
    return vd_set_error(EEXIST, "%s: the image already exists (an RBD image "
                        "is never replaced: remove it with 'rbd rm')", path);
  if (r < 0)
    return rbdv_error(path, &n, r, "cannot create the image");
  return 0;
}

const struct vd_driver vd_rbd_driver = {
  .name = "rbd",
  .priv_size = sizeof(struct rbdv_priv),
  /* never probed: the core picks it for an operator's rbd: name; an RBD
   * image references no local file, so it may be a VHD child's parent */
  .leaf = true,
  .opens_own_files = true,
  /* one librbd image handle serves every caller: coherent */
  .multi_conn = true,
  .open = rbdv_open,
  .close = rbdv_close,
  .create = rbdv_create,
  .pread = rbdv_pread,
  .pwrite = rbdv_pwrite,
  .flush = rbdv_flush,
  .discard = rbdv_discard,
  .write_zeroes = rbdv_write_zeroes,
  .block_status = rbdv_block_status,
  .info = rbdv_info,
  .truncate = rbdv_truncate,
  .snapshot_create = rbdv_snapshot_create,
  .snapshot_delete = rbdv_snapshot_delete,
  .snapshot_list = rbdv_snapshot_list,
};

VD_REGISTER_DRIVER(vd_rbd_driver);
