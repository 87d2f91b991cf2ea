/* libvdisk — live mirror (drive-mirror) of a node onto a target device,
 * the engine under the control socket's drive-mirror and block-commit.
 *
 * The model is QEMU's block/mirror.c, driven in steps by a job runner:
 *
 *   start     attach a write observer to the node (every write-type
 *             request that completes from now on is seen), make the
 *             dirty bitmap (one bit per GRANULARITY bytes)
 *   step      first scan the source with block status and mark what the
 *             sync mode copies (full: everything that does not already
 *             read as zeros on both sides; top: what the top image holds
 *             itself; none: nothing), then copy one dirty run of at most
 *             BUF_SIZE bytes per call; returns 1 ("ready") whenever the
 *             scan is done and nothing is dirty
 *   complete  drain the node, copy what is still dirty, flush the target,
 *             vd_node_replace (the pivot), detach, resume
 *   cancel    before ready: detach (the source was never touched, the
 *             target is a partial copy); after ready: drain, copy the
 *             rest, flush the target, detach, resume: a consistent copy,
 *             no pivot
 *
 * Copy modes.  Background: the observer only marks the written range
 * dirty.  Write-blocking: the observer also writes the guest's data to the
 * target before the guest's request is acknowledged, so the dirty count
 * only falls and the mirror converges under any write load.  A background
 * mirror whose dirty count at the end of a pass over the bitmap has not
 * set a new low for STALL_PASSES passes in a row switches itself to
 * write-blocking (vd_mirror_status reports it; see mr_pass_done).
 *
 * Races, and why each is closed:
 *  - Background copy against a guest write to the same range: the copy
 *    clears the bits before reading the source, the observer sets them
 *    after the write reached the source; whichever order, a write that
 *    the copy's read may have missed leaves its bits set, so the range is
 *    copied again.
 *  - Write-blocking: the observer's target write and a copy of the same
 *    range would race on the target (a copy that read the source before
 *    the guest write but writes the target after the observer would leave
 *    old data behind, bits clear).  So copies and observer writes take a
 *    range lock (mr_range, under mu): a copy waits for overlapping
 *    observers and the other way round.  Two overlapping guest writes
 *    whose observers run together may reach the target in the other order
 *    than the source; the later-registered one marks its range dirty, so
 *    the copy puts the source's final bytes there.
 *  - A copy enters the node (vd_node_get) before it takes its range, never
 *    after: see mr_copy for the deadlock with a drain the other order has.
 *  - step against complete/cancel (different threads): job_mu, held across
 *    a whole step, so no copy writes the target after the pivot.
 *  - A target write error in the observer never fails the guest's request
 *    (the source keeps serving): it is recorded, the range stays dirty,
 *    and the next step returns it (the job fails).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "vdisk/mirror.h"

#define MR_DEFAULT_GRANULARITY (64u * 1024)
#define MR_DEFAULT_BUF_SIZE (1024u * 1024)
#define MR_DEFAULT_STALL_PASSES 4u
/* Source extents looked at per step while scanning: bounds a step's time
 * on a fragmented image. */
#define MR_SCAN_EXTENTS 4096

/* A range being written to the target: by a copy (COPY) or an observer. */
struct mr_range {
  uint64_t off, end;
  bool copy;
  struct mr_range *next;
};

struct vd_mirror {
  struct vd_node *node;
  struct vd_dev *target;          /* ours until the pivot hands it over */
  bool target_owned;
  struct vd_bitmap *dirty;
  struct vd_node_observer *obs;   /* NULL once detached */
  int sync;                       /* enum vd_mirror_sync */
  int copy_depth;                 /* sync=top: copy layers above this */
  /* Live commit: after the pivot onto a second handle of the base,
   * reopen the base with its image lock (vd_commit_start). */
  char *relock_path, *relock_format;
  uint64_t size, granularity, buf_size;
  unsigned stall_passes;
  uint8_t *buf;

  pthread_mutex_t job_mu;         /* step vs complete/cancel; outer to mu */
  /* Fields below job_mu: used only by the step/complete/cancel caller. */
  uint64_t scan_off;              /* scan progress; == size when done */
  uint64_t cursor;                /* next offset to look for dirty bits */
  uint64_t low_dirty;             /* lowest dirty count at a pass end */
  unsigned stalled;               /* passes in a row with no new low */
  unsigned passes;
  bool finished;                  /* completed or cancelled */

  pthread_mutex_t mu;             /* leaf: ranges, cv */
  pthread_cond_t cv;              /* a range was released */
  struct mr_range *ranges;        /* guarded by mu */

  atomic_bool write_blocking;
  atomic_bool switched;           /* write-blocking by the stall rule */
  atomic_bool ready;
  atomic_int error;               /* first target error seen (negative) */
  atomic_uint_fast64_t copied;
};

/* ---- range lock ---- */

static bool
mr_overlaps_locked(struct vd_mirror *m, uint64_t off, uint64_t end,
                   bool want_copy, bool any)
{
  for (struct mr_range *r = m->ranges; r; r = r->next)
    if ((any || r->copy == want_copy) && r->off < end && off < r->end)
      return true;
  return false;
}

static void
mr_unlink_locked(struct vd_mirror *m, struct mr_range *x)
{
  for (struct mr_range **p = &m->ranges; *p; p = &(*p)->next)
    if (*p == x) {
      *p = x->next;
      break;
    }
  pthread_cond_broadcast(&m->cv);
}

static void
mr_set_error(struct vd_mirror *m, int err)
{
  int zero = 0;
  atomic_compare_exchange_strong(&m->error, &zero, err);
}

/* ---- the observer (runs on the guest's request thread) ---- */

static int
mr_observe(void *opaque, enum vd_obs_op op, const void *buf, uint64_t off, uint64_t len,
           int result)
{
  struct vd_mirror *m = opaque;
  if (op == VD_OBS_FLUSH || len == 0)
    return 0;
  bool blocking = atomic_load(&m->write_blocking) &&
                  !atomic_load(&m->error) && result >= 0 &&
                  (op == VD_OBS_WRITE || op == VD_OBS_ZEROES);
  if (!blocking) {
    /* A failed request may still have changed part of the range, and a
     * discard leaves the range reading anything: copy it again. */
    vd_bitmap_set(m->dirty, off, len);
    return 0;
  }
  struct mr_range self = { .off = off, .end = off + len, .copy = false };
  pthread_mutex_lock(&m->mu);
  while (mr_overlaps_locked(m, self.off, self.end, true, false))
    pthread_cond_wait(&m->cv, &m->mu);
  bool conflict = mr_overlaps_locked(m, self.off, self.end, false, false);
  self.next = m->ranges;
  m->ranges = &self;
  pthread_mutex_unlock(&m->mu);

  int r = op == VD_OBS_WRITE ? vd_pwrite(m->target, buf, len, off, 0)
                             : vd_write_zeroes(m->target, off, len, 0);
  if (r < 0) {
    mr_set_error(m, vd_prefix_error(-r, "mirror target %s: write at %llu",
                                    vd_path(m->target),
                                    (unsigned long long)off));
    conflict = true;
  }
  pthread_mutex_lock(&m->mu);
  /* Set while still holding the range, so no copy can clear it first. */
  if (conflict)
    vd_bitmap_set(m->dirty, off, len);
  mr_unlink_locked(m, &self);
  pthread_mutex_unlock(&m->mu);
  return 0;   /* the source has the data: the guest's request stands */
}

/* ---- copying ---- */

bool
vd_mirror_is_zero(const uint8_t *b, size_t n)
{
  return n == 0 || (b[0] == 0 && memcmp(b, b + 1, n - 1) == 0);
}

/* Copy [OFF, OFF+LEN) from SRC (a device, with the node drained) or from
 * the node (SRC NULL: inside a vd_node_get bracket) to the target.  Clears the bits first; on error sets
 * them again. */
static int
mr_copy(struct vd_mirror *m, struct vd_dev *src, uint64_t off, uint64_t len)
{
  /* Enter the node before taking the range: an observer waiting for our
   * range is inside a request, so a drain started meanwhile waits for it;
   * were we to enter the node while holding the range, we would wait for
   * that drain and the three would wait for each other. */
  bool entered = !src;
  if (entered && !(src = vd_node_get(m->node)))
    return vd_set_error(EINVAL, "mirror source: no device");
  struct mr_range self = { .off = off, .end = off + len, .copy = true };
  pthread_mutex_lock(&m->mu);
  while (mr_overlaps_locked(m, self.off, self.end, false, true))
    pthread_cond_wait(&m->cv, &m->mu);
  vd_bitmap_reset(m->dirty, off, len);
  self.next = m->ranges;
  m->ranges = &self;
  pthread_mutex_unlock(&m->mu);

  int r = vd_pread(src, m->buf, len, off);
  if (r < 0)
    r = vd_prefix_error(-r, "mirror source: read at %llu",
                        (unsigned long long)off);
  else {
    /* Zeros are written as zeros, so a sparse target stays sparse. */
    if (vd_mirror_is_zero(m->buf, len))
      r = vd_write_zeroes(m->target, off, len, 0);
    else
      r = vd_pwrite(m->target, m->buf, len, off, 0);
    if (r < 0)
      r = vd_prefix_error(-r, "mirror target %s: write at %llu",
                          vd_path(m->target), (unsigned long long)off);
  }

  pthread_mutex_lock(&m->mu);
  if (r < 0)
    vd_bitmap_set(m->dirty, off, len);
  mr_unlink_locked(m, &self);
  pthread_mutex_unlock(&m->mu);
  if (entered)
    vd_node_put(m->node);
  if (r >= 0)
    atomic_fetch_add(&m->copied, len);
  return r;
}

/* Copy every dirty range with the node drained (complete, late cancel). */
static int
mr_copy_all_drained(struct vd_mirror *m, uint64_t *done)
{
  struct vd_dev *src = vd_node_dev(m->node);
  uint64_t off = 0, start, len;
  while (off < m->size &&
         vd_bitmap_next_dirty(m->dirty, off, m->buf_size, &start, &len) == 1) {
    int r = mr_copy(m, src, start, len);
    if (r < 0)
      return r;
    if (done)
      *done += len;
    off = start + len;
  }
  return 0;
}

/* ---- the initial scan ---- */

/* Mark what the sync mode copies in the next stretch of the source.
 * Returns 0, or -errno. */
static int
mr_scan(struct vd_mirror *m)
{
  if (m->sync == VD_MIRROR_SYNC_NONE) {
    m->scan_off = m->size;
    return 0;
  }
  for (int i = 0; i < MR_SCAN_EXTENTS && m->scan_off < m->size; i++) {
    struct vd_extent e;
    uint64_t off = m->scan_off;
    int r = vd_node_block_status(m->node, off, m->size - off, &e);
    if (r < 0)
      return vd_prefix_error(-r, "mirror source: block status at %llu",
                             (unsigned long long)off);
    bool copy;
    if (m->sync == VD_MIRROR_SYNC_TOP)
      /* Data and zeros the top holds itself hide the backing file: copy
       * them; the rest the target reads from the same backing. */
      copy = e.depth < m->copy_depth && !(e.flags & VD_EXT_HOLE);
    else if (e.flags & VD_EXT_ZERO) {
      bool tz;
      r = vd_reads_zero(m->target, off, e.length, &tz);
      if (r < 0)
        return vd_prefix_error(-r, "mirror target %s: block status",
                               vd_path(m->target));
      copy = !tz;
    } else
      copy = true;
    if (copy)
      vd_bitmap_set(m->dirty, off, e.length);
    m->scan_off = off + e.length;
  }
  if (m->scan_off >= m->size)
    m->low_dirty = UINT64_MAX;
  return 0;
}

/* ---- public ---- */

int
vd_mirror_open_target(struct vd_node *node, const char *path,
                      const char *format, bool create, int sync,
                      unsigned timeout_ms, struct vd_dev **out)
{
  *out = NULL;
  if (!node || !path || !*path)
    return vd_set_error(EINVAL, "mirror: no target");
  uint64_t size = vd_node_size(node);
  /* A remote export (an NBD URI, an rbd: name) is opened, never created:
   * creating would make a local file of that name. */
  if (create && vd_is_remote_name(path))
    return vd_set_error(EINVAL, "mirror: target %s is a remote export: "
                        "mode must be 'existing'", path);
  if (create) {
    struct vd_info *info = calloc(1, sizeof *info);
    if (!info)
      return vd_set_error(ENOMEM, "mirror: out of memory");
    struct vd_create_args ca = { .size = size };
    int r = 0;
    if (sync == VD_MIRROR_SYNC_TOP) {
      /* The target reads what the top does not hold from the source's
       * own backing file, as QEMU's absolute-paths mode does. */
      r = vd_node_get_info(node, info);
      if (r == 0 && info->backing[0]) {
        ca.backing = info->backing;
        ca.backing_format = info->backing_format[0] ? info->backing_format
                                                    : NULL;
      }
    }
    /* Never over an existing file or through a symlink: the name is
     * claimed with O_EXCL|O_NOFOLLOW first, then the format written into
     * the empty file (mode=existing is for an image that exists). */
    if (r == 0) {
      int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
                    O_CLOEXEC, 0666);
      if (fd < 0)
        r = vd_set_error(errno, "%s: %s (mode=absolute-paths creates the "
                         "target; use mode=existing for an existing image)",
                         path, strerror(errno));
      else {
        close(fd);
        r = vd_create(path, format, &ca);
        if (r < 0)
          unlink(path);
      }
    }
    free(info);
    if (r < 0)
      return vd_prefix_error(-r, "mirror: create %s", path);
  }
  struct vd_open_args oa = { .format = format, .flags = VD_OPEN_RDWR };
  if (vd_is_remote_name(path))
    oa.timeout_ms = timeout_ms ? timeout_ms : VD_MIRROR_REMOTE_TIMEOUT_MS;
  struct vd_dev *t;
  int r = vd_open_opts(path, &oa, &t);
  if (r < 0)
    return r;
  if (vd_size(t) != size) {
    /* In bytes: a VHD's CHS rounding hides below "64 MiB". */
    uint64_t ts = vd_size(t);
    vd_close(t);
    return vd_set_error(EINVAL, "mirror: target %s is %llu bytes, the "
                        "source is %llu", path, (unsigned long long)ts,
                        (unsigned long long)size);
  }
  *out = t;
  return 0;
}

int
vd_mirror_start(struct vd_node *node, struct vd_dev *target,
                const struct vd_mirror_args *args, struct vd_mirror **out)
{
  return vd_mirror_start_depth(node, target, args, 1, out);
}

int
vd_mirror_start_depth(struct vd_node *node, struct vd_dev *target,
                      const struct vd_mirror_args *args, int copy_depth,
                      struct vd_mirror **out)
{
  *out = NULL;
  struct vd_mirror_args def = { 0 };
  if (!args)
    args = &def;
  if (!node || !target)
    return vd_set_error(EINVAL, "mirror: no source or target");
  if (args->sync < VD_MIRROR_SYNC_FULL || args->sync > VD_MIRROR_SYNC_NONE)
    return vd_set_error(EINVAL, "mirror: unknown sync mode %d", args->sync);
  uint64_t gran = args->granularity ? args->granularity
                                    : MR_DEFAULT_GRANULARITY;
  if (gran < 512 || gran > (64u << 20) || (gran & (gran - 1)))
    return vd_set_error(EINVAL, "mirror: granularity %llu is not a power "
                        "of two between 512 and 64 MiB",
                        (unsigned long long)gran);
  uint64_t bufsz = args->buf_size ? args->buf_size : MR_DEFAULT_BUF_SIZE;
  if (bufsz < gran)
    bufsz = gran;
  if (bufsz > (256u << 20))
    return vd_set_error(EINVAL, "mirror: buffer size %llu is over 256 MiB",
                        (unsigned long long)bufsz);
  bufsz -= bufsz % gran;
  /* Refuse now what the pivot would refuse after the whole copy. */
  if (vd_size(target) != vd_node_size(node))
    return vd_set_error(EINVAL, "mirror: target %s: size %llu differs "
                        "from the source's %llu", vd_path(target),
                        (unsigned long long)vd_size(target),
                        (unsigned long long)vd_node_size(node));
  if (vd_is_read_only(target))
    return vd_set_error(EROFS, "mirror: target %s is read-only",
                        vd_path(target));
  if (vd_logical_block(target) != vd_node_logical_block(node) ||
      (vd_node_can_multi_conn(node) && !vd_can_multi_conn(target)))
    return vd_set_error(EINVAL, "mirror: target %s cannot replace the "
                        "source (logical block or multi-connection "
                        "support differ)", vd_path(target));

  struct vd_mirror *m = calloc(1, sizeof *m);
  if (!m)
    return vd_set_error(ENOMEM, "mirror: out of memory");
  m->node = node;
  m->target = target;
  m->sync = args->sync;
  m->copy_depth = copy_depth;
  m->size = vd_node_size(node);
  m->granularity = gran;
  m->buf_size = bufsz;
  m->stall_passes = args->stall_passes ? args->stall_passes
                                       : MR_DEFAULT_STALL_PASSES;
  atomic_init(&m->write_blocking, args->write_blocking);
  atomic_init(&m->switched, false);
  atomic_init(&m->ready, false);
  atomic_init(&m->error, 0);
  atomic_init(&m->copied, 0);
  pthread_mutex_init(&m->job_mu, NULL);
  pthread_mutex_init(&m->mu, NULL);
  pthread_cond_init(&m->cv, NULL);
  int r;
  if (posix_memalign((void **)&m->buf, 4096, bufsz) != 0) {
    m->buf = NULL;
    r = vd_set_error(ENOMEM, "mirror: out of memory");
    goto fail;
  }
  r = vd_bitmap_new(m->size, (uint32_t) gran, &m->dirty);
  if (r < 0)
    goto fail;
  r = vd_node_observer_add(node, mr_observe, m, &m->obs);
  if (r < 0)
    goto fail;
  m->target_owned = true;
  *out = m;
  return 0;
fail:
  vd_bitmap_free(m->dirty);
  free(m->buf);
  pthread_mutex_destroy(&m->job_mu);
  pthread_mutex_destroy(&m->mu);
  pthread_cond_destroy(&m->cv);
  free(m);
  return r;
}

static void
mr_detach(struct vd_mirror *m)
{
  if (m->obs) {
    vd_node_observer_remove(m->node, m->obs);
    m->obs = NULL;
  }
}

/* End of a pass over the bitmap: the stall rule.  Progress towards ready
 * is a new low of the dirty count at a pass end; a writer that dirties as
 * fast as the copy cleans makes the count wander without ever setting a
 * new low, so STALL_PASSES passes in a row without one mean the
 * background mode will not converge. */
static void
mr_pass_done(struct vd_mirror *m)
{
  uint64_t now = vd_bitmap_count(m->dirty);
  m->passes++;
  if (now > 0 && now >= m->low_dirty)
    m->stalled++;
  else {
    m->stalled = 0;
    m->low_dirty = now;
  }
  if (m->stalled >= m->stall_passes && !atomic_load(&m->write_blocking)) {
    atomic_store(&m->switched, true);
    atomic_store(&m->write_blocking, true);
  }
}

int
vd_mirror_step(struct vd_mirror *m, uint64_t *done, uint64_t *total)
{
  pthread_mutex_lock(&m->job_mu);
  int r = 0;
  if (m->finished) {
    r = vd_set_error(EINVAL, "mirror: the job has ended");
    goto out;
  }
  r = atomic_load(&m->error);
  if (r < 0) {
    vd_set_error(-r, "mirror target %s: a write-blocking write failed",
                 vd_path(m->target));
    goto out;
  }
  if (m->scan_off < m->size) {
    r = mr_scan(m);
    goto out;
  }
  uint64_t start, len;
  if (vd_bitmap_next_dirty(m->dirty, m->cursor, m->buf_size, &start,
                           &len) != 1) {
    mr_pass_done(m);
    m->cursor = 0;
    if (vd_bitmap_next_dirty(m->dirty, 0, m->buf_size, &start, &len) != 1) {
      atomic_store(&m->ready, true);
      r = 1;
      goto out;
    }
  }
  r = mr_copy(m, NULL, start, len);
  if (r < 0)
    goto out;
  m->cursor = start + len;
  if (done)
    *done += len;
out:
  if (total)
    *total = atomic_load(&m->copied) + vd_bitmap_count(m->dirty) +
             (m->size - m->scan_off);
  pthread_mutex_unlock(&m->job_mu);
  return r;
}

void
vd_mirror_status(struct vd_mirror *m, struct vd_mirror_status *st)
{
  memset(st, 0, sizeof *st);
  st->dirty = vd_bitmap_count(m->dirty);
  st->copied = atomic_load(&m->copied);
  st->ready = atomic_load(&m->ready);
  st->write_blocking = atomic_load(&m->write_blocking);
  st->switched = atomic_load(&m->switched);
  st->error = atomic_load(&m->error);
}

/* Drain, copy the rest, flush the target.  Leaves the node drained on
 * success and on failure (the caller resumes). */
static int
mr_finish_copy(struct vd_mirror *m)
{
  vd_node_drain(m->node);
  int r = atomic_load(&m->error);
  if (r < 0)
    return vd_set_error(-r, "mirror target %s: a write-blocking write "
                        "failed", vd_path(m->target));
  r = mr_copy_all_drained(m, NULL);
  if (r < 0)
    return r;
  r = vd_flush(m->target);
  if (r < 0)
    return vd_prefix_error(-r, "mirror target %s: flush",
                           vd_path(m->target));
  return 0;
}

/* Live commit, still drained after the pivot onto the unlocked second
 * handle of the base: close the old top's chain (its read-only handle of
 * the base with it: it writes nothing), open the base again as any
 * writable open does (with its image lock), and swap onto that.  The
 * second handle was flushed by the swap and its VHD close writes nothing,
 * so the new handle reads every byte from disk.  If the base cannot be
 * locked (another process took it in between), the node stays on the
 * second handle, which serves correctly, only unlocked. */
static void
mr_relock(struct vd_mirror *m, struct vd_dev **olddev)
{
  vd_close(*olddev);
  *olddev = NULL;
  struct vd_dev *b = NULL, *unlocked = NULL;
  if (vd_open(m->relock_path, m->relock_format, VD_OPEN_RDWR, &b) < 0)
    return;
  if (vd_node_replace(m->node, b, &unlocked) < 0) {
    vd_close(b);
    return;
  }
  m->target = b;
  vd_close(unlocked);
}

int
vd_mirror_complete(struct vd_mirror *m, struct vd_dev **olddev)
{
  *olddev = NULL;
  pthread_mutex_lock(&m->job_mu);
  int r;
  if (m->finished)
    r = vd_set_error(EINVAL, "mirror: the job has ended");
  else if (!atomic_load(&m->ready))
    r = vd_set_error(EAGAIN, "mirror: not ready yet (the first copy is "
                     "still running)");
  else if (m->sync == VD_MIRROR_SYNC_NONE)
    r = vd_set_error(ENOTSUP, "mirror: a sync=none target holds only the "
                     "writes since the start; it cannot replace the source");
  else {
    r = mr_finish_copy(m);
    if (r == 0) {
      r = vd_node_replace(m->node, m->target, olddev);
      if (r == 0) {
        m->target_owned = false;
        if (m->relock_path)
          mr_relock(m, olddev);
        /* Still drained: the observer sees nothing on the new device. */
        mr_detach(m);
        m->finished = true;
      }
    }
    vd_node_resume(m->node);
  }
  pthread_mutex_unlock(&m->job_mu);
  return r;
}

int
vd_mirror_cancel(struct vd_mirror *m)
{
  pthread_mutex_lock(&m->job_mu);
  int r = 0;
  if (!m->finished) {
    if (atomic_load(&m->ready)) {
      r = mr_finish_copy(m);
      mr_detach(m);
      vd_node_resume(m->node);
    } else
      mr_detach(m);
    m->finished = true;
  }
  pthread_mutex_unlock(&m->job_mu);
  return r;
}

struct vd_dev *
vd_mirror_target(struct vd_mirror *m)
{
  return m->target;
}

void
vd_mirror_free(struct vd_mirror *m)
{
  if (!m)
    return;
  mr_detach(m);
  if (m->target_owned)
    vd_close(m->target);
  vd_bitmap_free(m->dirty);
  free(m->buf);
  free(m->relock_path);
  free(m->relock_format);
  pthread_mutex_destroy(&m->job_mu);
  pthread_mutex_destroy(&m->mu);
  pthread_cond_destroy(&m->cv);
  free(m);
}

int
vd_mirror_set_relock(struct vd_mirror *m, const char *path,
                     const char *format)
{
  m->relock_path = strdup(path);
  m->relock_format = strdup(format);
  if (!m->relock_path || !m->relock_format)
    return vd_set_error(ENOMEM, "mirror: out of memory");
  return 0;
}
