/* RAID resync, rebuild and scrub.
 *
 * Resync after an unclean stop (bitmap-driven or whole), rebuilds of a
 * replaced member on a background thread of the process that serves the
 * array (checkpointing progress in every member's superblock, so a killed
 * rebuild resumes), and scrub (check or repair of redundancy).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/endian.h"
#include "raid/raid.h"

double raid_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void raid_deadline(struct timespec *ts, long ns)
{
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_nsec += ns;
  ts->tv_sec += ts->tv_nsec / 1000000000;
  ts->tv_nsec %= 1000000000;
}

void raid_sleep(double sec)
{
  if (sec <= 0)
    return;
  struct timespec ts = { .tv_sec = (time_t)sec,
                         .tv_nsec = (long)((sec - (double)(time_t)sec) * 1e9) };
  nanosleep(&ts, NULL);
}

/* ---- resync after an unclean stop ---- */

int raid_resync(struct raid_array *a, bool all)
{
  if (!a->ops->redundant)
    return 0;
  uint64_t c = a->sb.chunk, total = a->sb.data_size;
  uint64_t start = a->sb.resync_offset != RAID_NO_OFFSET && all
                   ? a->sb.resync_offset : 0;
  uint64_t region = a->bm && !all ? a->sb.bitmap_region : total;
  uint64_t next_ckpt = start + total / 16;
  int r = 0;
  for (uint64_t roff = start; roff < total && r == 0; roff += region) {
    if (!all && a->bm) {
      uint64_t ri = roff / region;
      if (!(a->bm[ri / 8] & (1u << (ri % 8))))
        continue;
    }
    uint64_t rend = roff + region < total ? roff + region : total;
    for (uint64_t o = roff; o < rend && r == 0; o += c) {
      bool mm;
      r = a->ops->sync_row(a, o, false, &mm);
      if (all && o + c >= next_ckpt && o + c < total && r == 0) {
        /* Checkpoint a long full resync. */
        if (raid_flush_members(a) == 0) {
          pthread_mutex_lock(&a->sb_lock);
          a->sb.resync_offset = o + c;
          raid_sb_write_all_locked(a);
          pthread_mutex_unlock(&a->sb_lock);
        }
        next_ckpt += total / 16;
      }
    }
  }
  if (r < 0)
    return vd_prefix_error(-r, "%s: resync", a->desc_path);
  r = raid_flush_members(a);
  if (r == 0 && a->sb.resync_offset != RAID_NO_OFFSET) {
    pthread_mutex_lock(&a->sb_lock);
    a->sb.resync_offset = RAID_NO_OFFSET;
    r = raid_sb_write_all_locked(a);
    pthread_mutex_unlock(&a->sb_lock);
  }
  return r;
}

/* ---- rebuild ---- */

/* End of a rebuild pass: checkpoint if stopped, else mark the member
 * active. */
static int raid_rebuild_finish(struct raid_array *a, int slot, int r)
{
  struct raid_member *m = &a->m[slot];
  uint64_t total = a->sb.data_size;
  if (r == -EINTR) {
    /* Stopped: leave a checkpoint so the next open resumes here. */
    if (!atomic_load(&a->failed) && !atomic_load(&a->crashed) &&
        atomic_load(&m->state) == RAID_ROLE_REBUILDING &&
        raid_mio_one(a, slot, RAID_MIO_FLUSH, NULL, 0, 0) == 0)
      raid_sb_update(a);
    return vd_set_error(EINTR, "%s: rebuild of slot %d interrupted at %" PRIu64
                        " of %" PRIu64 " bytes", a->desc_path, slot,
                        atomic_load(&m->recovery), total);
  }
  if (r < 0)
    return r;
  r = raid_mio_one(a, slot, RAID_MIO_FLUSH, NULL, 0, 0);
  if (r < 0) {
    raid_member_failed(a, slot, r);
    return r;
  }
  atomic_store(&m->readd, false);
  atomic_store(&m->state, RAID_ROLE_ACTIVE);
  return raid_sb_update(a);
}

/* A rebuild step covers about this many bytes of each member (at least one
 * row, at most 1/8 of the stripe locks, which it holds meanwhile): few
 * large requests per member instead of one per chunk. */
#define RAID_REBUILD_STEP (4u << 20)

/* Rows per rebuild step, and the scratch a step needs: the array's, not
 * the thread's (raid_scratch), since each background rebuild is a new
 * thread that would fault in its pages again (12-30 us each on the 2-CPU
 * build VM: several ms of a 128 MiB rebuild).  Allocated once, with its
 * size fixed by the geometry; only the rebuild's owner uses it. */
static unsigned raid_rebuild_rows(struct raid_array *a)
{
  uint64_t rows = RAID_REBUILD_STEP / a->sb.chunk;
  return rows < 1 ? 1 : rows > RAID_STRIPE_LOCKS / 8 ? RAID_STRIPE_LOCKS / 8
                                                     : (unsigned)rows;
}

static uint8_t *raid_rebuild_scratch(struct raid_array *a)
{
  void *p = NULL;
  if (!a->rb_scratch &&
      posix_memalign(&p, 4096, a->ops->rebuild_scratch(
                       a, (size_t)raid_rebuild_rows(a) * a->sb.chunk)) == 0)
    a->rb_scratch = p;
  return a->rb_scratch;
}

/* Re-add: whether the bitmap leaves the row at OFF alone (already good on
 * the member).  Decided under the row's lock: a writer sets its bit before
 * it takes the lock and picks the members it writes under it, so a write
 * to this row either set the bit before we looked (then we copy) or finds
 * the recovery offset past the row (then it writes the member itself). */
static bool raid_readd_skips(struct raid_array *a, uint64_t off)
{
  VD_ASSERT_HELD(&a->bm_lock);
  uint64_t ri = off / a->sb.bitmap_region;
  return !(a->bm[ri / 8] & (1u << (ri % 8)));
}

/* Rebuild the next rows of SLOT (at its recovery offset; at most MAXROWS,
 * at most raid_rebuild_rows) and checkpoint every 1/16 of the member or 2
 * seconds (md: 1/16 or 5 min), so a killed rebuild resumes near where it
 * stopped.  Only the rebuild's owner (the background thread or the caller
 * of vd_raid_rebuild_step) calls it.  Returns 0 when rows remain, 1 when
 * the member is complete (not yet marked active: raid_rebuild_finish does
 * that), -EINTR when asked to stop or when the slot stopped rebuilding, or
 * another -errno (the failure is recorded). */
static int raid_rebuild_step_rows(struct raid_array *a, int slot,
                                  uint8_t *scratch, uint64_t maxrows)
{
  struct raid_member *m = &a->m[slot];
  uint64_t c = a->sb.chunk, total = a->sb.data_size;
  if (atomic_load(&a->rebuild_stop) || atomic_load(&a->failed) ||
      atomic_load(&m->state) != RAID_ROLE_REBUILDING)
    return -EINTR;
  uint64_t off = atomic_load(&m->recovery);
  if (off >= total)
    return 1;
  uint64_t s = off / c;
  uint64_t k = (total - off + c - 1) / c;
  if (k > maxrows)
    k = maxrows;
  if (k > raid_rebuild_rows(a))
    k = raid_rebuild_rows(a);
  if (k == 0)
    k = 1;
  raid_stripes_lock(a, s, (unsigned)k);
  /* The rows of the step: a run that the bitmap all skips or all copies. */
  bool skip = false;
  uint64_t rows = k;
  if (atomic_load(&m->readd) && a->bm) {
    pthread_mutex_lock(&a->bm_lock);
    skip = raid_readd_skips(a, off);
    for (rows = 1; rows < k && raid_readd_skips(a, off + rows * c) == skip;
         rows++)
      ;
    pthread_mutex_unlock(&a->bm_lock);
  }
  uint64_t len = rows * c < total - off ? rows * c : total - off;
  int r = skip ? 0 : a->ops->rebuild_rows_locked(a, off, (size_t)len, slot,
                                                 scratch);
  if (r == 0) {
    atomic_store(&m->recovery, off + len);
    atomic_fetch_add(skip ? &m->readd_skipped : &m->readd_copied, len);
  }
  raid_stripes_unlock(a, s, (unsigned)k);
  if (r < 0) {
    /* The new member failed, or a source did (then the array failed). */
    if (!atomic_load(&a->failed))
      raid_member_failed(a, slot, r);
    return r;
  }
  if (off + len >= total)
    return 1;
  double now = raid_now();
  if (off + len - a->rb_ckpt_off >= total / 16 ||
      now - a->rb_last_ckpt >= 2.0) {
    if (raid_mio_one(a, slot, RAID_MIO_FLUSH, NULL, 0, 0) == 0)
      raid_sb_update(a);
    a->rb_ckpt_off = off + len;
    a->rb_last_ckpt = now;
  }
  return 0;
}

static int raid_rebuild_slot(struct raid_array *a, int slot)
{
  struct raid_member *m = &a->m[slot];
  uint8_t *scratch = raid_rebuild_scratch(a);
  if (!scratch)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  double t0 = raid_now();
  uint64_t start = atomic_load(&m->recovery);
  a->rb_ckpt_off = start;
  a->rb_last_ckpt = t0;
  int r;
  while ((r = raid_rebuild_step_rows(a, slot, scratch, UINT64_MAX)) == 0) {
    /* Rate limit: foreground I/O keeps flowing. */
    uint64_t rate = atomic_load(&a->rebuild_rate);
    if (rate) {
      double due = t0 + (double)(atomic_load(&m->recovery) - start) /
                   (double)rate;
      raid_sleep(due - raid_now());
    }
  }
  return raid_rebuild_finish(a, slot, r == 1 ? 0 : r);
}

static void *raid_rebuild_main(void *opaque)
{
  struct raid_array *a = opaque;
  int r = 0;
  for (unsigned i = 0; i < a->n && r == 0; i++)
    if (a->m[i].dev && atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      r = raid_rebuild_slot(a, (int)i);
  atomic_store(&a->rebuild_ret, r);
  pthread_mutex_lock(&a->sb_lock);
  atomic_store(&a->rebuild_active, false);
  pthread_cond_broadcast(&a->rebuild_done);
  pthread_mutex_unlock(&a->sb_lock);
  return NULL;
}

void raid_rebuild_start(struct raid_array *a)
{
  if (!a->writable || !a->ops->redundant || atomic_load(&a->crashed))
    return;
  bool any = false;
  for (unsigned i = 0; i < a->n; i++)
    if (a->m[i].dev && atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      any = true;
  pthread_mutex_lock(&a->sb_lock);
  if (any && !atomic_load(&a->rebuild_active)) {
    if (a->rebuild_running)
      pthread_join(a->rebuild, NULL);
    a->rebuild_running = false;
    atomic_store(&a->rebuild_stop, false);
    atomic_store(&a->rebuild_active, true);
    atomic_store(&a->rebuild_ret, 0);
    if (pthread_create(&a->rebuild, NULL, raid_rebuild_main, a) == 0)
      a->rebuild_running = true;
    else
      atomic_store(&a->rebuild_active, false);
  }
  pthread_mutex_unlock(&a->sb_lock);
}

/* Join the rebuild thread if one was started and not joined yet. */
static void raid_rebuild_join(struct raid_array *a)
{
  pthread_mutex_lock(&a->sb_lock);
  bool running = a->rebuild_running;
  a->rebuild_running = false;
  pthread_mutex_unlock(&a->sb_lock);
  if (running)
    pthread_join(a->rebuild, NULL);
}

void raid_rebuild_stop(struct raid_array *a)
{
  atomic_store(&a->rebuild_stop, true);
  raid_rebuild_join(a);
  atomic_store(&a->rebuild_stop, false);
}

int raid_rebuild_wait(struct raid_array *a, vd_progress_fn progress,
                      void *opaque)
{
  int slot = -1;
  for (unsigned i = 0; i < a->n; i++)
    if (atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      slot = (int)i;
  pthread_mutex_lock(&a->sb_lock);
  while (atomic_load(&a->rebuild_active)) {
    if (progress && slot >= 0) {
      pthread_mutex_unlock(&a->sb_lock);
      progress(opaque, atomic_load(&a->m[slot].recovery), a->sb.data_size);
      pthread_mutex_lock(&a->sb_lock);
    }
    /* Progress every 20 ms; the end is signalled. */
    struct timespec ts;
    raid_deadline(&ts, 20000000);
    if (atomic_load(&a->rebuild_active))
      pthread_cond_timedwait(&a->rebuild_done, &a->sb_lock, &ts);
  }
  pthread_mutex_unlock(&a->sb_lock);
  raid_rebuild_join(a);
  int r = atomic_load(&a->rebuild_ret);
  if (r == 0 && progress)
    progress(opaque, a->sb.data_size, a->sb.data_size);
  return r;
}

int vd_raid_resume_rebuild(struct raid_array *a, uint64_t rate,
                           vd_progress_fn progress, void *opaque)
{
  if (atomic_load(&a->rebuild_caller))
    return vd_set_error(EBUSY, "%s: a rebuild job is running: wait for it "
                        "or cancel it", a->desc_path);
  atomic_store(&a->rebuild_rate, rate);
  raid_rebuild_start(a);
  return raid_rebuild_wait(a, progress, opaque);
}

/* ---- caller-driven rebuild (a control job) ----
 *
 * A control job rebuilds on its own thread, one step per call, so pausing,
 * throttling and cancelling the job act on the rebuild itself.  The caller
 * owns the rebuild from vd_raid_replace_begin to vd_raid_rebuild_end:
 * rebuild_active is set for that time, so no background thread starts
 * (raid_rebuild_start) and a second owner is refused. */

/* Make the caller the owner of the rebuild of SLOT, just installed. */
static int raid_rebuild_own(struct raid_array *a, int slot)
{
  int r = 0;
  pthread_mutex_lock(&a->sb_lock);
  if (atomic_load(&a->rebuild_active)) {
    r = vd_set_error(EBUSY, "%s: slot %d installed, but a background rebuild "
                     "is running: it rebuilds the slot", a->desc_path, slot);
  } else {
    if (a->rebuild_running)
      pthread_join(a->rebuild, NULL);
    a->rebuild_running = false;
    atomic_store(&a->rebuild_active, true);
    atomic_store(&a->rebuild_caller, true);
    a->rb_slot = -1;
  }
  pthread_mutex_unlock(&a->sb_lock);
  return r;
}

int vd_raid_replace_begin(struct raid_array *a, int slot, const char *newpath,
                          const char *newformat)
{
  if (atomic_load(&a->rebuild_caller))
    return vd_set_error(EBUSY, "%s: a rebuild job is running: wait for it "
                        "or cancel it", a->desc_path);
  int r = raid_replace_install(a, slot, newpath, newformat);
  return r < 0 ? r : raid_rebuild_own(a, slot);
}

int vd_raid_re_add_begin(struct raid_array *a, int slot)
{
  if (atomic_load(&a->rebuild_caller))
    return vd_set_error(EBUSY, "%s: a rebuild job is running: wait for it "
                        "or cancel it", a->desc_path);
  int r = raid_readd_install(a, slot);
  return r < 0 ? r : raid_rebuild_own(a, slot);
}

int vd_raid_rebuild_step(struct raid_array *a, uint64_t max, uint64_t *done,
                         uint64_t *total)
{
  if (!atomic_load(&a->rebuild_caller))
    return vd_set_error(EINVAL, "%s: no rebuild was begun by this caller",
                        a->desc_path);
  *total = a->sb.data_size;
  int slot = -1;
  for (unsigned i = 0; i < a->n && slot < 0; i++)
    if (a->m[i].dev && atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      slot = (int)i;
  if (slot < 0) {
    if (a->rb_slot >= 0 &&
        atomic_load(&a->m[a->rb_slot].state) != RAID_ROLE_ACTIVE)
      return vd_set_error(EIO, "%s: slot %d failed during its rebuild",
                          a->desc_path, a->rb_slot);
    return 1;
  }
  struct raid_member *m = &a->m[slot];
  if (slot != a->rb_slot) {
    a->rb_slot = slot;
    a->rb_ckpt_off = atomic_load(&m->recovery);
    a->rb_last_ckpt = raid_now();
  }
  uint8_t *scratch = raid_rebuild_scratch(a);
  if (!scratch)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  uint64_t bytes = 0, c = a->sb.chunk;
  int r = 0;
  while (r == 0 && (bytes < max || bytes == 0)) {
    uint64_t before = atomic_load(&m->recovery);
    /* Rows left to MAX, rounded up without overflow (MAX may be
     * UINT64_MAX: "all of it"). */
    uint64_t left = bytes < max ? max - bytes : 0;
    r = raid_rebuild_step_rows(a, slot, scratch,
                               left ? left / c + (left % c != 0) : 1);
    uint64_t after = atomic_load(&m->recovery);
    if (after > before)
      bytes += after - before;
  }
  *done += bytes;
  if (r == 1) {
    r = raid_rebuild_finish(a, slot, 0);
    /* Another slot may still be rebuilding (a resumed RAID1): next call. */
    return r < 0 ? r : 0;
  }
  if (r == -EINTR) {
    if (atomic_load(&a->failed))
      return vd_set_error(EIO, "%s: the array failed during the rebuild",
                          a->desc_path);
    if (atomic_load(&m->state) != RAID_ROLE_REBUILDING)
      return vd_set_error(EIO, "%s: slot %d failed during its rebuild",
                          a->desc_path, slot);
    return vd_set_error(EINTR, "%s: the array is stopping", a->desc_path);
  }
  return r;
}

void vd_raid_rebuild_end(struct raid_array *a)
{
  if (!atomic_load(&a->rebuild_caller))
    return;
  for (unsigned i = 0; i < a->n; i++) {
    struct raid_member *m = &a->m[i];
    if (m->dev && atomic_load(&m->state) == RAID_ROLE_REBUILDING &&
        !atomic_load(&a->failed) && !atomic_load(&a->crashed) &&
        raid_mio_one(a, (int)i, RAID_MIO_FLUSH, NULL, 0, 0) == 0) {
      /* Checkpoint: the next open resumes from here. */
      raid_sb_update(a);
      break;
    }
  }
  pthread_mutex_lock(&a->sb_lock);
  atomic_store(&a->rebuild_caller, false);
  atomic_store(&a->rebuild_active, false);
  pthread_mutex_unlock(&a->sb_lock);
}

/* ---- scrub ---- */

int vd_raid_scrub_step(struct raid_array *a, bool repair, uint64_t *pos,
                       uint64_t max, struct vd_raid_scrub_report *rep)
{
  if (!a->ops->redundant)
    return vd_set_error(ENOTSUP, "%s: RAID%u has no redundancy to scrub",
                        a->desc_path, a->sb.level);
  if (repair && !a->writable)
    return vd_set_error(EROFS, "%s: array is open read-only", a->desc_path);
  if (raid_active_count(a) < a->n)
    return vd_set_error(EIO, "%s: array is degraded: nothing to compare "
                        "against (rebuild first)", a->desc_path);
  uint64_t c = a->sb.chunk, total = a->sb.data_size;
  if (*pos % c)
    return vd_set_error(EINVAL, "%s: scrub position %" PRIu64 " is not a "
                        "multiple of the chunk", a->desc_path, *pos);
  int r = 0;
  if (repair && *pos < total)
    r = raid_mark_dirty(a);
  uint64_t o = *pos;
  for (; o < total && r == 0 && (o - *pos < max || o == *pos); o += c) {
    bool mm = false;
    if (repair)
      r = raid_bitmap_start(a, o, c);
    if (r < 0)
      break;
    r = a->ops->sync_row(a, o, !repair, &mm);
    if (repair)
      raid_bitmap_end(a, o, c);
    rep->stripes++;
    if (mm) {
      rep->mismatches++;
      if (repair)
        rep->repaired++;
      if (rep->mismatch)
        rep->mismatch(rep->opaque, o / c, o / c * a->stripe_bytes);
    }
  }
  if (r < 0)
    return r;
  *pos = o;
  if (o < total)
    return 0;
  if (repair && (r = raid_flush_members(a)) < 0)
    return r;
  return 1;
}

int vd_raid_scrub(struct raid_array *a, bool repair,
                  struct vd_raid_scrub_report *rep, vd_progress_fn progress,
                  void *opaque)
{
  rep->stripes = rep->mismatches = rep->repaired = 0;
  uint64_t pos = 0, total = a->sb.data_size;
  int r;
  while ((r = vd_raid_scrub_step(a, repair, &pos, 64 * (uint64_t)a->sb.chunk,
                                 rep)) == 0)
    if (progress)
      progress(opaque, pos, total);
  if (r == 1 && progress)
    progress(opaque, total, total);
  return r < 0 ? r : 0;
}
