/* libvdisk — the device graph: nodes, the handles frontends export.
 *
 * A node points at the current top device.  Requests enter and leave it
 * (vd_node_get / vd_node_put); the engine drains it, swaps the device and
 * resumes (vd_node_replace).  The rules are in vdisk.h; this is how they
 * are kept.
 *
 * The fast path is Dekker's handshake on two atomics, both sequentially
 * consistent:
 *   request:  inflight += 1;  then load drained
 *   drainer:  drained  += 1;  then load inflight
 * In the single total order of these operations one of the two sees the
 * other: either the request sees drained != 0 (it backs out and waits on
 * the resume condition) or the drainer sees the request's increment (it
 * waits on the idle condition until the request leaves).  A request that
 * entered with drained == 0 therefore finishes before any drainer returns,
 * and one that enters after a drain returned waits until the resume.  The
 * device pointer is written only between drain and resume, with release;
 * a request reads it after entering, with acquire, so it sees the device
 * of the last replace whose resume it observed.
 *
 * Slow path: wait_mu with two conditions, idle (inflight reached 0 while
 * drained) and resumed (drained reached 0).  The thread that takes
 * inflight to 0 and sees drained != 0 signals idle under wait_mu, and the
 * drainer checks inflight under wait_mu, so the wake-up cannot be lost.
 * wait_mu is a leaf lock: nothing is called with it held.
 *
 * ctl_mu serialises control operations (replace, observer changes) and
 * is held while the old device is flushed, so it comes before every
 * device lock.
 *
 * Observers: the set is an immutable array, replaced (never edited) under
 * ctl_mu with the node drained; a request loads it after entering, so no
 * request can still be reading an array once the drain that replaced it
 * returned, and the old array is freed at once.
 *
 * A single counter per node is shared by all requests.  One atomic
 * add/sub pair per request costs tens of nanoseconds even when contended,
 * against microseconds for the request itself (bench/ab-frontends.sh
 * compares two builds' frontends); shard it per CPU only if a profile
 * ever shows it.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "vdisk/driver.h"

struct vd_node_observer {
  vd_node_observer_fn fn;
  void *opaque;
};

struct obs_set {
  size_t n;
  struct vd_node_observer *v[];
};

struct vd_node {
  /* Read by every request; the two counters share a line on purpose
   * (each request touches both anyway). */
  _Atomic(struct vd_dev *) dev;   /* written only while drained, ctl_mu held */
  atomic_uint inflight;           /* requests between get and put */
  atomic_uint drained;            /* drain depth; != 0: new requests wait */

  pthread_mutex_t wait_mu;        /* leaf; guards the waits below */
  pthread_cond_t idle;            /* inflight reached 0 while drained */
  pthread_cond_t resumed;         /* drained reached 0 */
  pthread_mutex_t ctl_mu;         /* serialises replacements and observer
                                     changes */
  _Atomic(struct obs_set *) obs;  /* NULL: none; written only while
                                     drained, ctl_mu held */

  /* Fixed at creation; every replacement keeps them. */
  uint64_t size;
  uint32_t logical_block;
  uint32_t preferred_io;
  bool read_only;
  bool multi_conn;
};

int
vd_node_new(struct vd_dev *dev, struct vd_node **out)
{
  if (!dev || !out)
    return vd_set_error(EINVAL, "vd_node_new: no device");
  struct vd_node *n = calloc(1, sizeof *n);
  if (!n)
    return vd_set_error(ENOMEM, "%s: out of memory for its node", dev->path);
  atomic_init(&n->dev, dev);
  atomic_init(&n->obs, NULL);
  atomic_init(&n->inflight, 0);
  atomic_init(&n->drained, 0);
  pthread_mutex_init(&n->wait_mu, NULL);
  pthread_cond_init(&n->idle, NULL);
  pthread_cond_init(&n->resumed, NULL);
  pthread_mutex_init(&n->ctl_mu, NULL);
  n->size = vd_size(dev);
  n->logical_block = vd_logical_block(dev);
  n->preferred_io = vd_preferred_io(dev);
  n->read_only = vd_is_read_only(dev);
  n->multi_conn = vd_can_multi_conn(dev);
  *out = n;
  return 0;
}

int
vd_node_free(struct vd_node *node)
{
  if (!node)
    return 0;
  int r = vd_close(atomic_load_explicit(&node->dev, memory_order_relaxed));
  struct obs_set *os = atomic_load_explicit(&node->obs, memory_order_relaxed);
  if (os) {
    for (size_t i = 0; i < os->n; i++)
      free(os->v[i]);
    free(os);
  }
  pthread_mutex_destroy(&node->wait_mu);
  pthread_cond_destroy(&node->idle);
  pthread_cond_destroy(&node->resumed);
  pthread_mutex_destroy(&node->ctl_mu);
  free(node);
  return r;
}

/* ---- requests ---- */

void
vd_node_put(struct vd_node *node)
{
  if (atomic_fetch_sub(&node->inflight, 1) == 1 &&
      atomic_load(&node->drained) != 0) {
    pthread_mutex_lock(&node->wait_mu);
    pthread_cond_broadcast(&node->idle);
    pthread_mutex_unlock(&node->wait_mu);
  }
}

struct vd_dev *
vd_node_get(struct vd_node *node)
{
  for (;;) {
    atomic_fetch_add(&node->inflight, 1);
    if (atomic_load(&node->drained) == 0)
      return atomic_load_explicit(&node->dev, memory_order_acquire);
    /* Drained: back out (waking the drainer if we were the last), wait for
     * the resume, try again. */
    vd_node_put(node);
    pthread_mutex_lock(&node->wait_mu);
    while (atomic_load(&node->drained) != 0)
      pthread_cond_wait(&node->resumed, &node->wait_mu);
    pthread_mutex_unlock(&node->wait_mu);
  }
}

/* Tell the observers about a write-type request that ran with result R;
 * returns R, or the first observer's error when R is 0.  Called inside
 * the request. */
static int
node_notify(struct vd_node *node, enum vd_obs_op op, const void *buf,
            uint64_t off, uint64_t len, int r)
{
  struct obs_set *os = atomic_load_explicit(&node->obs, memory_order_acquire);
  if (!os)
    return r;
  int res = r;
  for (size_t i = 0; i < os->n; i++) {
    int o = os->v[i]->fn(os->v[i]->opaque, op, buf, off, len, res);
    if (r == 0 && o < 0)
      r = o;
  }
  return r;
}

int
vd_node_pread(struct vd_node *node, void *buf, size_t len, uint64_t off)
{
  if (!node)
    return vd_set_error(EINVAL, "vd_node_pread: no node");
  int r = vd_pread(vd_node_get(node), buf, len, off);
  vd_node_put(node);
  return r;
}

ssize_t
vd_node_splice_read(struct vd_node *node, int pipe_wr, size_t len,
                    uint64_t off)
{
  if (!node)
    return vd_set_error(EINVAL, "vd_node_splice_read: no node");
  ssize_t r = vd_splice_read(vd_node_get(node), pipe_wr, len, off);
  vd_node_put(node);
  return r;
}

int
vd_node_pwrite(struct vd_node *node, const void *buf, size_t len,
               uint64_t off, unsigned flags)
{
  if (!node)
    return vd_set_error(EINVAL, "vd_node_pwrite: no node");
  int r = vd_pwrite(vd_node_get(node), buf, len, off, flags);
  r = node_notify(node, VD_OBS_WRITE, buf, off, len, r);
  vd_node_put(node);
  return r;
}

int
vd_node_flush(struct vd_node *node)
{
  if (!node)
    return vd_set_error(EINVAL, "vd_node_flush: no node");
  int r = vd_flush(vd_node_get(node));
  r = node_notify(node, VD_OBS_FLUSH, NULL, 0, 0, r);
  vd_node_put(node);
  return r;
}

int
vd_node_discard(struct vd_node *node, uint64_t off, uint64_t len,
                unsigned flags)
{
  if (!node)
    return vd_set_error(EINVAL, "vd_node_discard: no node");
  int r = vd_discard(vd_node_get(node), off, len, flags);
  r = node_notify(node, VD_OBS_DISCARD, NULL, off, len, r);
  vd_node_put(node);
  return r;
}

int
vd_node_write_zeroes(struct vd_node *node, uint64_t off, uint64_t len,
                     unsigned flags)
{
  if (!node)
    return vd_set_error(EINVAL, "vd_node_write_zeroes: no node");
  int r = vd_write_zeroes(vd_node_get(node), off, len, flags);
  r = node_notify(node, VD_OBS_ZEROES, NULL, off, len, r);
  vd_node_put(node);
  return r;
}

int
vd_node_block_status(struct vd_node *node, uint64_t off, uint64_t len,
                     struct vd_extent *ext)
{
  if (!node)
    return vd_set_error(EINVAL, "vd_node_block_status: no node");
  int r = vd_block_status(vd_node_get(node), off, len, ext);
  vd_node_put(node);
  return r;
}

int
vd_node_get_info(struct vd_node *node, struct vd_info *info)
{
  if (!node)
    return vd_set_error(EINVAL, "vd_node_get_info: no node");
  int r = vd_get_info(vd_node_get(node), info);
  vd_node_put(node);
  return r;
}

uint64_t vd_node_size(const struct vd_node *node) { return node->size; }
uint32_t vd_node_logical_block(const struct vd_node *node)
{ return node->logical_block; }
uint32_t vd_node_preferred_io(const struct vd_node *node)
{ return node->preferred_io; }
bool vd_node_is_read_only(const struct vd_node *node)
{ return node->read_only; }
bool vd_node_can_multi_conn(const struct vd_node *node)
{ return node->multi_conn; }

struct vd_dev *
vd_node_dev(const struct vd_node *node)
{
  return atomic_load_explicit(&((struct vd_node *) node)->dev,
                              memory_order_acquire);
}

/* ---- drain, resume, replace ---- */

int
vd_node_drain(struct vd_node *node)
{
  if (!node)
    return vd_set_error(EINVAL, "vd_node_drain: no node");
  pthread_mutex_lock(&node->wait_mu);
  atomic_fetch_add(&node->drained, 1);
  while (atomic_load(&node->inflight) != 0)
    pthread_cond_wait(&node->idle, &node->wait_mu);
  pthread_mutex_unlock(&node->wait_mu);
  return 0;
}

void
vd_node_resume(struct vd_node *node)
{
  pthread_mutex_lock(&node->wait_mu);
  if (atomic_fetch_sub(&node->drained, 1) == 1)
    pthread_cond_broadcast(&node->resumed);
  pthread_mutex_unlock(&node->wait_mu);
}

/* Refuse a device that would change what the frontends were told. */
static int
node_check_replacement(const struct vd_node *node, const struct vd_dev *old,
                       const struct vd_dev *dev)
{
  if (vd_size(dev) != node->size ||
      vd_logical_block(dev) != node->logical_block)
    return vd_set_error(EINVAL, "%s: cannot replace %s: size or logical "
                        "block differs", vd_path(dev), vd_path(old));
  if (!node->read_only && vd_is_read_only(dev))
    return vd_set_error(EINVAL, "%s: cannot replace %s: read-only",
                        vd_path(dev), vd_path(old));
  if (node->multi_conn && !vd_can_multi_conn(dev))
    return vd_set_error(EINVAL, "%s: cannot replace %s: not safe for "
                        "several connections", vd_path(dev), vd_path(old));
  return 0;
}

int
vd_node_swap(struct vd_node *node, struct vd_dev *expect,
             struct vd_dev *newdev, struct vd_dev **olddev,
             int (*drained)(void *opaque, struct vd_dev *old), void *opaque)
{
  if (!node || !newdev || !olddev)
    return vd_set_error(EINVAL, "vd_node_replace: no node or device");
  pthread_mutex_lock(&node->ctl_mu);
  struct vd_dev *old = atomic_load_explicit(&node->dev, memory_order_relaxed);
  int r = node_check_replacement(node, old, newdev);
  if (r == 0 && expect && old != expect)
    r = vd_set_error(EBUSY, "%s: cannot replace %s: the node moved to %s "
                     "meanwhile", vd_path(newdev), vd_path(expect),
                     vd_path(old));
  if (r == 0) {
    vd_node_drain(node);
    /* Every write acknowledged so far went to OLD: make it durable before
     * a flush on NEWDEV can be acknowledged (see vdisk.h). */
    if (!vd_is_read_only(old))
      r = vd_flush(old);
    if (r == 0 && drained)
      r = drained(opaque, old);
    if (r == 0) {
      atomic_store_explicit(&node->dev, newdev, memory_order_release);
      *olddev = old;
    }
    vd_node_resume(node);
  }
  pthread_mutex_unlock(&node->ctl_mu);
  return r;
}

/* ---- observers ---- */

/* Install NEW as NODE's observer set (ctl_mu held) and free the old one. */
static void
node_set_observers(struct vd_node *node, struct obs_set *set)
{
  vd_node_drain(node);
  struct obs_set *old = atomic_load_explicit(&node->obs, memory_order_relaxed);
  atomic_store_explicit(&node->obs, set, memory_order_release);
  vd_node_resume(node);
  free(old);
}

int
vd_node_observer_add(struct vd_node *node, vd_node_observer_fn fn,
                     void *opaque, struct vd_node_observer **out)
{
  if (!node || !fn || !out)
    return vd_set_error(EINVAL, "vd_node_observer_add: no node or function");
  struct vd_node_observer *o = malloc(sizeof *o);
  if (!o)
    return vd_set_error(ENOMEM, "out of memory for a node observer");
  o->fn = fn;
  o->opaque = opaque;
  pthread_mutex_lock(&node->ctl_mu);
  struct obs_set *cur = atomic_load_explicit(&node->obs, memory_order_relaxed);
  size_t n = cur ? cur->n : 0;
  struct obs_set *set = malloc(sizeof *set + (n + 1) * sizeof set->v[0]);
  if (!set) {
    pthread_mutex_unlock(&node->ctl_mu);
    free(o);
    return vd_set_error(ENOMEM, "out of memory for a node observer");
  }
  set->n = n + 1;
  for (size_t i = 0; i < n; i++)
    set->v[i] = cur->v[i];
  set->v[n] = o;
  node_set_observers(node, set);
  pthread_mutex_unlock(&node->ctl_mu);
  *out = o;
  return 0;
}

int
vd_node_observer_remove(struct vd_node *node, struct vd_node_observer *obs)
{
  if (!obs)
    return 0;
  if (!node)
    return vd_set_error(EINVAL, "vd_node_observer_remove: no node");
  pthread_mutex_lock(&node->ctl_mu);
  struct obs_set *cur = atomic_load_explicit(&node->obs, memory_order_relaxed);
  size_t n = cur ? cur->n : 0, k = 0;
  while (k < n && cur->v[k] != obs)
    k++;
  if (k == n) {
    pthread_mutex_unlock(&node->ctl_mu);
    return vd_set_error(EINVAL, "vd_node_observer_remove: not an observer "
                        "of this node");
  }
  struct obs_set *set = NULL;
  if (n > 1) {
    set = malloc(sizeof *set + (n - 1) * sizeof set->v[0]);
    if (!set) {
      pthread_mutex_unlock(&node->ctl_mu);
      return vd_set_error(ENOMEM, "out of memory removing a node observer");
    }
    set->n = 0;
    for (size_t i = 0; i < n; i++)
      if (i != k)
        set->v[set->n++] = cur->v[i];
  }
  node_set_observers(node, set);
  pthread_mutex_unlock(&node->ctl_mu);
  free(obs);
  return 0;
}

int
vd_node_replace(struct vd_node *node, struct vd_dev *newdev,
                struct vd_dev **olddev)
{
  return vd_node_swap(node, NULL, newdev, olddev, NULL, NULL);
}
