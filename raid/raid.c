/* RAID driver: assembly from the descriptor and the members' superblocks,
 * the member I/O pool, failure handling, the write-intent bitmap and the
 * vd_driver ops.  The levels live in raid0.c, raid1.c and raid5.c.
 *
 * Format of the descriptor and superblock: raid/super.c and
 * docs/raid-format.md.
 *
 * Assembly rules (as md/mdadm):
 *  - the member(s) with the highest event count are authoritative; their
 *    role table says which slots are active, faulty or rebuilding;
 *  - a member more than one event behind, or whose device UUID is not the
 *    one recorded for its slot, is stale and never read; one behind is an
 *    interrupted superblock write and is accepted where the freshest table
 *    names it active or rebuilding (as md's and mdadm's margin of one);
 *  - two freshest members that disagree about the roles (split brain)
 *    refuse to assemble;
 *  - a missing member on a clean array starts degraded (vdtool raid
 *    assemble asks for --run first); it is recorded as faulty only by the
 *    first superblock write, i.e. once the array is written without it;
 *  - a RAID5 that is dirty and degraded refuses unless forced (vdtool raid
 *    assemble --force), which replays the partial parity log first;
 *  - a descriptor that contains itself, at any depth, is refused (ELOOP).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/endian.h"
#include "raid/raid.h"
#include "raid/check.h"

const struct vd_driver vd_raid_driver;

/* ---- member I/O pool ----
 * Members are vd_devs with a synchronous API, so fan-out to several members
 * runs on a small pool of threads: the caller runs one request itself and
 * waits for the others. */

struct raid_batch {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int pending;
};

struct raid_pool {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct raid_mio *head, *tail;   /* guarded by lock */
  bool stop;                      /* guarded by lock */
  unsigned nthreads;
  unsigned ncpu;                  /* CPUs online at start (raid_run_lanes) */
  pthread_t th[RAID_MAX_LANES - 1];
};

static int raid_member_io(struct raid_array *a, int slot, int op, void *buf,
                          size_t len, uint64_t abs_off)
{
  struct raid_member *m = &a->m[slot];
  struct vd_dev *dev = m->dev;
  if (!dev)
    return vd_set_error(EIO, "%s: member %d is missing", a->desc_path, slot);
  switch (op) {
  case RAID_MIO_READ: return vd_pread(dev, buf, len, abs_off);
  case RAID_MIO_WRITE: return vd_pwrite(dev, buf, len, abs_off, 0);
  default: return vd_flush(dev);
  }
}

static void raid_mio_exec(struct raid_array *a, struct raid_mio *io)
{
  if (io->op == RAID_MIO_CALL) {
    io->call(io->buf, io->lane, io->nlanes);
    io->ret = 0;
    return;
  }
  uint64_t abs = io->off;
  if (io->op != RAID_MIO_FLUSH && !io->abs_off)
    abs += a->sb.data_offset;
  io->ret = raid_member_io(a, io->slot, io->op, io->buf, io->len, abs);
}

static void *raid_pool_worker(void *opaque)
{
  struct raid_array *a = opaque;
  struct raid_pool *p = a->pool;
  for (;;) {
    pthread_mutex_lock(&p->lock);
    while (!p->head && !p->stop)
      pthread_cond_wait(&p->cond, &p->lock);
    if (!p->head) {
      pthread_mutex_unlock(&p->lock);
      return NULL;
    }
    struct raid_mio *io = p->head;
    p->head = io->next;
    if (!p->head)
      p->tail = NULL;
    pthread_mutex_unlock(&p->lock);

    raid_mio_exec(a, io);
    struct raid_batch *b = io->batch;
    pthread_mutex_lock(&b->lock);
    if (--b->pending == 0)
      pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&b->lock);
  }
}

static int raid_pool_start(struct raid_array *a)
{
  struct raid_pool *p = calloc(1, sizeof *p);
  if (!p)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->cond, NULL);
  a->pool = p;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  p->ncpu = ncpu > 0 ? (unsigned)ncpu : 1;
  unsigned want = a->n < RAID_MAX_LANES - 1 ? a->n : RAID_MAX_LANES - 1;
  for (unsigned i = 0; i < want; i++) {
    if (pthread_create(&p->th[i], NULL, raid_pool_worker, a) != 0)
      break;
    p->nthreads++;
  }
  if (p->nthreads == 0)
    return vd_set_error(EAGAIN, "%s: cannot start I/O threads", a->desc_path);
  return 0;
}

static void raid_pool_stop(struct raid_array *a)
{
  struct raid_pool *p = a->pool;
  if (!p)
    return;
  pthread_mutex_lock(&p->lock);
  p->stop = true;
  pthread_cond_broadcast(&p->cond);
  pthread_mutex_unlock(&p->lock);
  for (unsigned i = 0; i < p->nthreads; i++)
    pthread_join(p->th[i], NULL);
  pthread_mutex_destroy(&p->lock);
  pthread_cond_destroy(&p->cond);
  free(p);
  a->pool = NULL;
}

/* Queue MIO[0..N) on the pool, then run FN(ARG) (or, with FN NULL,
 * MIO[N]) in the caller, and wait for the queued ones. */
static void raid_mio_pool_run(struct raid_array *a, struct raid_mio *mio,
                              int n, void (*fn)(void *), void *arg)
{
  struct raid_batch b = { .pending = n };
  pthread_mutex_init(&b.lock, NULL);
  pthread_cond_init(&b.cond, NULL);
  struct raid_pool *p = a->pool;
  pthread_mutex_lock(&p->lock);
  for (int i = 0; i < n; i++) {
    mio[i].batch = &b;
    mio[i].next = NULL;
    if (p->tail)
      p->tail->next = &mio[i];
    else
      p->head = &mio[i];
    p->tail = &mio[i];
  }
  pthread_cond_broadcast(&p->cond);
  pthread_mutex_unlock(&p->lock);
  if (fn)
    fn(arg);
  else
    raid_mio_exec(a, &mio[n]);
  pthread_mutex_lock(&b.lock);
  while (b.pending > 0)
    pthread_cond_wait(&b.cond, &b.lock);
  pthread_mutex_unlock(&b.lock);
  pthread_mutex_destroy(&b.lock);
  pthread_cond_destroy(&b.cond);
}

static int raid_mio_first_error(const struct raid_mio *mio, int n)
{
  for (int i = 0; i < n; i++)
    if (mio[i].ret < 0)
      return mio[i].ret;
  return 0;
}

int raid_mio_run(struct raid_array *a, struct raid_mio *mio, int n)
{
  if (n <= 0)
    return 0;
  if (n == 1 || !a->pool) {
    for (int i = 0; i < n; i++)
      raid_mio_exec(a, &mio[i]);
  } else {
    raid_mio_pool_run(a, mio, n - 1, NULL, NULL);
  }
  return raid_mio_first_error(mio, n);
}

int raid_mio_run_while(struct raid_array *a, struct raid_mio *mio, int n,
                       void (*fn)(void *), void *arg)
{
  if (n > 0 && a->pool) {
    raid_mio_pool_run(a, mio, n, fn, arg);
  } else {
    for (int i = 0; i < n; i++)
      raid_mio_exec(a, &mio[i]);
    fn(arg);
  }
  return raid_mio_first_error(mio, n);
}

void raid_run_lanes(struct raid_array *a,
                    void (*fn)(void *arg, unsigned lane, unsigned nlanes),
                    void *arg, unsigned max)
{
  struct raid_pool *p = a->pool;
  unsigned n = p ? p->nthreads + 1 : 1;
  if (p && n > p->ncpu)
    n = p->ncpu;
  if (n > max)
    n = max;
  if (n <= 1) {
    fn(arg, 0, 1);
    return;
  }
  /* The last entry runs in the caller: it is lane 0. */
  struct raid_mio mio[RAID_MAX_LANES];
  for (unsigned i = 0; i < n; i++)
    mio[i] = (struct raid_mio){ .op = RAID_MIO_CALL, .call = fn, .buf = arg,
                                .lane = (i + 1) % n, .nlanes = n };
  raid_mio_pool_run(a, mio, (int)n - 1, NULL, NULL);
}

int raid_mio_one(struct raid_array *a, int slot, int op, void *buf,
                 size_t len, uint64_t off)
{
  struct raid_mio io = { .slot = slot, .op = op, .buf = buf, .len = len,
                         .off = off };
  raid_mio_exec(a, &io);
  return io.ret;
}

int raid_mio_one_abs(struct raid_array *a, int slot, int op, void *buf,
                     size_t len, uint64_t off)
{
  struct raid_mio io = { .slot = slot, .op = op, .buf = buf, .len = len,
                         .off = off, .abs_off = true };
  raid_mio_exec(a, &io);
  return io.ret;
}

/* ---- member state ---- */

bool raid_member_usable(struct raid_array *a, int slot, uint64_t off)
{
  struct raid_member *m = &a->m[slot];
  int st = atomic_load(&m->state);
  if (!m->dev || st == RAID_ROLE_FAULTY)
    return false;
  if (st == RAID_ROLE_REBUILDING)
    return off < atomic_load(&m->recovery);
  return true;
}

bool raid_member_writable(struct raid_array *a, int slot, uint64_t off)
{
  return raid_member_usable(a, slot, off);
}

unsigned raid_active_count(struct raid_array *a)
{
  unsigned c = 0;
  for (unsigned i = 0; i < a->n; i++)
    if (a->m[i].dev && atomic_load(&a->m[i].state) == RAID_ROLE_ACTIVE)
      c++;
  return c;
}

/* Can the array still serve every byte with the members it has? */
static bool raid_viable(struct raid_array *a)
{
  return raid_level_viable(a->ops, a->n, raid_active_count(a));
}

int raid_sb_write_all_locked(struct raid_array *a)
{
  VD_ASSERT_HELD(&a->sb_lock);
  for (int round = 0; round <= (int)a->n; round++) {
    struct raid_mio mio[RAID_MAX_MEMBERS];
    uint8_t *bufs = vd_alloc_aligned((size_t)a->n * RAID_SB_SIZE);
    int slots[RAID_MAX_MEMBERS], k = 0;
    if (!bufs)
      return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
    a->sb.events++;
    a->sb.utime = (uint64_t)time(NULL);
    for (unsigned i = 0; i < a->n; i++) {
      struct raid_member *m = &a->m[i];
      struct raid_role *ro = &a->sb.role[i];
      ro->state = (uint32_t)atomic_load(&m->state);
      ro->flags = 0;
      ro->recovery_offset = 0;
      if (ro->state == RAID_ROLE_REBUILDING) {
        ro->recovery_offset = atomic_load(&m->recovery);
        ro->flags = atomic_load(&m->readd) ? RAID_ROLE_F_READD : 0;
      } else if (ro->state == RAID_ROLE_FAULTY) {
        /* The first write that records the failure dates it: a re-add
         * accepts the device only if it failed then (raid_readd_install),
         * since the bitmap has kept every region written from then on. */
        if (!m->failed_recorded) {
          m->failed_events = a->sb.events;
          m->failed_recorded = true;
        }
        ro->recovery_offset = m->failed_events;
      }
      if (ro->state != RAID_ROLE_FAULTY) {
        m->failed_recorded = false;
        m->failed_events = 0;
      }
      memcpy(ro->dev_uuid, m->dev_uuid, 16);
    }
    for (unsigned i = 0; i < a->n; i++) {
      if (!a->m[i].dev || atomic_load(&a->m[i].state) == RAID_ROLE_FAULTY)
        continue;
      struct raid_sb s = a->sb;
      s.slot = i;
      raid_sb_encode(&s, bufs + (size_t)k * RAID_SB_SIZE);
      mio[k] = (struct raid_mio){ .slot = (int)i, .op = RAID_MIO_WRITE,
                                  .buf = bufs + (size_t)k * RAID_SB_SIZE,
                                  .len = RAID_SB_SIZE,
                                  .off = RAID_SB_OFFSET, .abs_off = true };
      slots[k++] = (int)i;
    }
    raid_mio_run(a, mio, k);
    int n = k;
    for (int j = 0; j < n; j++)
      if (mio[j].ret == 0)
        mio[j] = (struct raid_mio){ .slot = slots[j], .op = RAID_MIO_FLUSH };
      else
        mio[j].op = -1;
    /* Flush the ones written. */
    struct raid_mio fl[RAID_MAX_MEMBERS];
    int fslots[RAID_MAX_MEMBERS], f = 0;
    bool bad = false;
    for (int j = 0; j < n; j++) {
      if (mio[j].op == RAID_MIO_FLUSH) {
        fl[f] = mio[j];
        fslots[f++] = slots[j];
      } else {
        atomic_store(&a->m[slots[j]].state, RAID_ROLE_FAULTY);
        bad = true;
      }
    }
    raid_mio_run(a, fl, f);
    for (int j = 0; j < f; j++)
      if (fl[j].ret < 0) {
        atomic_store(&a->m[fslots[j]].state, RAID_ROLE_FAULTY);
        bad = true;
      }
    vd_free_aligned(bufs);
    if (!bad) {
      /* Every failure stored before this write began (under sb_lock) is
       * now on the survivors. */
      atomic_store(&a->unrecorded, 0);
      return 0;
    }
    /* A member failed under us: record that too (another round). */
    if (!raid_viable(a)) {
      atomic_store(&a->failed, true);
      return vd_set_error(EIO, "%s: too many members failed", a->desc_path);
    }
  }
  return vd_set_error(EIO, "%s: cannot write superblocks", a->desc_path);
}

int raid_sb_update(struct raid_array *a)
{
  pthread_mutex_lock(&a->sb_lock);
  int r = atomic_load(&a->failed) ? -EIO : raid_sb_write_all_locked(a);
  pthread_mutex_unlock(&a->sb_lock);
  return r;
}

static int raid_member_failed_locked(struct raid_array *a, int slot, int err)
{
  VD_ASSERT_HELD(&a->sb_lock);
  struct raid_member *m = &a->m[slot];
  int r = 0;
  if (atomic_load(&m->state) != RAID_ROLE_FAULTY) {
    /* Counted before it is visible: a writer that skips the member
     * finds the count in its flush (raid_flush_members). */
    atomic_fetch_add(&a->unrecorded, 1);
    atomic_store(&m->state, RAID_ROLE_FAULTY);
    if (!raid_viable(a)) {
      /* Too many failures: stop writing anything, not even superblocks,
       * so the survivors keep their last consistent state. */
      atomic_store(&a->failed, true);
    } else if (!atomic_load(&a->failed)) {
      r = raid_sb_write_all_locked(a);
    }
  }
  if (atomic_load(&a->failed))
    r = vd_set_error(EIO, "%s: RAID%u has failed (member %d: %s)",
                     a->desc_path, a->sb.level, slot,
                     err ? strerror(-err) : "marked faulty");
  return r < 0 ? -EIO : 0;
}

int raid_member_failed(struct raid_array *a, int slot, int err)
{
  pthread_mutex_lock(&a->sb_lock);
  int r = raid_member_failed_locked(a, slot, err);
  pthread_mutex_unlock(&a->sb_lock);
  if (r == 0)
    raid_spares_kick(a);   /* a hot spare takes the slot (spares.c) */
  return r;
}

/* The operator fails SLOT (vd_raid_fail, a replace of a working member).
 * The rule is checked under sb_lock, where I/O failures are marked, so a
 * member failing meanwhile cannot turn an allowed request into one that
 * stops the array.  An active SLOT is refused if failing it would stop
 * the array or, with WHOLE (replace), unless every member is active. */
int raid_member_fail_request(struct raid_array *a, int slot, bool whole)
{
  pthread_mutex_lock(&a->sb_lock);
  if (atomic_load(&a->m[slot].state) == RAID_ROLE_ACTIVE) {
    unsigned act = raid_active_count(a);
    int r = 0;
    if (whole && act < a->n)
      r = vd_set_error(EBUSY, "%s: slot %d is active and the array is "
                       "degraded: replace the failed member first",
                       a->desc_path, slot);
    else if (!raid_level_viable(a->ops, a->n, act - 1))
      r = vd_set_error(EBUSY, "%s: failing slot %d would stop the RAID%u "
                       "(%u of %u members active): refused", a->desc_path,
                       slot, a->sb.level, act, a->n);
    if (r < 0) {
      pthread_mutex_unlock(&a->sb_lock);
      return r;
    }
  }
  int r = raid_member_failed_locked(a, slot, 0);
  pthread_mutex_unlock(&a->sb_lock);
  if (r == 0)
    raid_spares_kick(a);
  return r;
}

int raid_mark_dirty(struct raid_array *a)
{
  if (atomic_load(&a->dirty))
    return 0;
  pthread_mutex_lock(&a->sb_lock);
  int r = 0;
  if (!atomic_load(&a->dirty)) {
    a->sb.flags |= RAID_SB_DIRTY;
    r = raid_sb_write_all_locked(a);
    if (r == 0)
      atomic_store(&a->dirty, true);
  }
  pthread_mutex_unlock(&a->sb_lock);
  return r;
}

/* The lock of STRIPE: Fibonacci hashing spreads neighbouring stripes,
 * which concurrent sequential writers touch, over different locks. */
pthread_mutex_t *raid_stripe_mutex(struct raid_array *a, uint64_t stripe)
{
  return &a->stripe_lock[(stripe * 0x9E3779B97F4A7C15ull) >>
                         (64 - RAID_STRIPE_LOCK_BITS)];
}

void raid_stripe_lock(struct raid_array *a, uint64_t stripe)
{
  pthread_mutex_lock(raid_stripe_mutex(a, stripe));
}

void raid_stripe_unlock(struct raid_array *a, uint64_t stripe)
{
  pthread_mutex_unlock(raid_stripe_mutex(a, stripe));
}

/* Which mutexes stripes [STRIPE, STRIPE+K) take (hashing may map several
 * to one). */
static void raid_stripes_set(struct raid_array *a, uint64_t stripe,
                             unsigned k, uint64_t set[RAID_STRIPE_LOCKS / 64])
{
  memset(set, 0, RAID_STRIPE_LOCKS / 8);
  for (unsigned i = 0; i < k; i++) {
    size_t m = (size_t)(raid_stripe_mutex(a, stripe + i) - a->stripe_lock);
    set[m / 64] |= 1ull << (m % 64);
  }
}

/* OP (lock or unlock) each mutex of stripes [STRIPE, STRIPE+K) once, in
 * index order. */
static void raid_stripes_each(struct raid_array *a, uint64_t stripe,
                              unsigned k, int (*op)(pthread_mutex_t *))
{
  uint64_t set[RAID_STRIPE_LOCKS / 64];
  raid_stripes_set(a, stripe, k, set);
  for (size_t m = 0; m < RAID_STRIPE_LOCKS; m++)
    if (set[m / 64] & (1ull << (m % 64)))
      op(&a->stripe_lock[m]);
}

void raid_stripes_lock(struct raid_array *a, uint64_t stripe, unsigned k)
{
  raid_stripes_each(a, stripe, k, pthread_mutex_lock);
}

void raid_stripes_unlock(struct raid_array *a, uint64_t stripe, unsigned k)
{
  raid_stripes_each(a, stripe, k, pthread_mutex_unlock);
}

/* ---- write-intent bitmap ---- */

/* Write bitmap bytes [b0, b1) (rounded to 4 KiB blocks) to every member;
 * flush if asked.  Caller holds bm_lock.  Returns failed slots in *FAILED. */
static void raid_bitmap_write_locked(struct raid_array *a, uint64_t b0,
                                     uint64_t b1, bool flush, bool *failed)
{
  VD_ASSERT_HELD(&a->bm_lock);
  b0 = vd_round_down(b0, 4096);
  b1 = vd_round_up(b1, 4096);
  struct raid_mio mio[RAID_MAX_MEMBERS];
  int k = 0;
  for (unsigned i = 0; i < a->n; i++) {
    if (!a->m[i].dev || atomic_load(&a->m[i].state) == RAID_ROLE_FAULTY)
      continue;
    mio[k++] = (struct raid_mio){ .slot = (int)i, .op = RAID_MIO_WRITE,
                                  .buf = a->bm + b0, .len = b1 - b0,
                                  .off = a->sb.bitmap_offset + b0,
                                  .abs_off = true };
  }
  raid_mio_run(a, mio, k);
  if (flush) {
    for (int j = 0; j < k; j++)
      if (mio[j].ret == 0)
        mio[j].op = RAID_MIO_FLUSH;
    raid_mio_run(a, mio, k);
  }
  for (int j = 0; j < k; j++)
    if (mio[j].ret < 0)
      failed[mio[j].slot] = true;
}

static int raid_handle_failed(struct raid_array *a, const bool *failed, int err)
{
  int r = 0;
  for (unsigned i = 0; i < a->n; i++)
    if (failed[i] && raid_member_failed(a, (int)i, err) < 0)
      r = -EIO;
  return r;
}

int raid_bitmap_start(struct raid_array *a, uint64_t off, uint64_t len)
{
  if (!a->bm || len == 0)
    return 0;
  uint64_t r0 = off / a->sb.bitmap_region;
  uint64_t r1 = (off + len - 1) / a->sb.bitmap_region;
  uint64_t lo = UINT64_MAX, hi = 0;
  bool failed[RAID_MAX_MEMBERS] = { false };
  pthread_mutex_lock(&a->bm_lock);
  for (uint64_t r = r0; r <= r1 && r < a->nregions; r++) {
    a->bm_inflight[r]++;
    a->bm_gen[r] = a->flush_gen;
    if (!(a->bm[r / 8] & (1u << (r % 8)))) {
      a->bm[r / 8] |= (uint8_t)(1u << (r % 8));
      if (r / 8 < lo) lo = r / 8;
      if (r / 8 + 1 > hi) hi = r / 8 + 1;
    }
  }
  if (hi > 0)
    raid_bitmap_write_locked(a, lo, hi, true, failed);
  pthread_mutex_unlock(&a->bm_lock);
  return raid_handle_failed(a, failed, -EIO);
}

void raid_bitmap_end(struct raid_array *a, uint64_t off, uint64_t len)
{
  if (!a->bm || len == 0)
    return;
  uint64_t r0 = off / a->sb.bitmap_region;
  uint64_t r1 = (off + len - 1) / a->sb.bitmap_region;
  pthread_mutex_lock(&a->bm_lock);
  for (uint64_t r = r0; r <= r1 && r < a->nregions; r++)
    a->bm_inflight[r]--;
  pthread_mutex_unlock(&a->bm_lock);
}

/* After a flush: clear the bits of regions with no write since the flush
 * began (their data is durable).  Lost clears are harmless. */
static void raid_bitmap_flushed(struct raid_array *a, uint64_t gen)
{
  uint64_t lo = UINT64_MAX, hi = 0;
  bool failed[RAID_MAX_MEMBERS] = { false };
  pthread_mutex_lock(&a->bm_lock);
  for (uint64_t r = 0; r < a->nregions; r++)
    if ((a->bm[r / 8] & (1u << (r % 8))) && a->bm_inflight[r] == 0 &&
        a->bm_gen[r] < gen) {
      a->bm[r / 8] &= (uint8_t)~(1u << (r % 8));
      if (r / 8 < lo) lo = r / 8;
      if (r / 8 + 1 > hi) hi = r / 8 + 1;
    }
  if (hi > 0)
    raid_bitmap_write_locked(a, lo, hi, false, failed);
  pthread_mutex_unlock(&a->bm_lock);
  raid_handle_failed(a, failed, -EIO);
}

/* A flush acknowledges writes that skipped a member failed since the
 * last superblock write.  Unless the survivors' superblocks say so before
 * the flush returns, a crash could bring that member back as active with
 * its stale data (another thread records the failure: wait for it, or
 * write it if nobody does). */
static int raid_failures_durable(struct raid_array *a)
{
  if (atomic_load(&a->unrecorded) == 0)
    return 0;
  pthread_mutex_lock(&a->sb_lock);
  int r = 0;
  if (!atomic_load(&a->failed) && atomic_load(&a->unrecorded))
    r = raid_sb_write_all_locked(a);
  if (atomic_load(&a->failed))
    r = vd_set_error(EIO, "%s: RAID%u has failed", a->desc_path,
                     a->sb.level);
  pthread_mutex_unlock(&a->sb_lock);
  return r;
}

/* Flush every writable member; record failures. */
int raid_flush_members(struct raid_array *a)
{
  struct raid_mio mio[RAID_MAX_MEMBERS];
  int k = 0;
  for (unsigned i = 0; i < a->n; i++)
    if (a->m[i].dev && atomic_load(&a->m[i].state) != RAID_ROLE_FAULTY)
      mio[k++] = (struct raid_mio){ .slot = (int)i, .op = RAID_MIO_FLUSH };
  raid_mio_run(a, mio, k);
  int r = 0;
  for (int j = 0; j < k; j++)
    if (mio[j].ret < 0 && raid_member_failed(a, mio[j].slot, mio[j].ret) < 0)
      r = -EIO;
  if (r == 0)
    r = raid_failures_durable(a);
  return r;
}

static int raid_flush(struct vd_dev *dev)
{
  struct raid_array *a = dev->priv;
  if (!a->writable || atomic_load(&a->crashed))
    return 0;
  if (atomic_load(&a->failed))
    return vd_set_error(EIO, "%s: RAID%u has failed", a->desc_path,
                        a->sb.level);
  uint64_t gen = 0;
  if (a->bm) {
    pthread_mutex_lock(&a->bm_lock);
    gen = ++a->flush_gen;
    /* Writes in flight now may finish after the member flush. */
    for (uint64_t r = 0; r < a->nregions; r++)
      if (a->bm_inflight[r])
        a->bm_gen[r] = gen;
    pthread_mutex_unlock(&a->bm_lock);
  }
  /* While a member is missing, failed or being rebuilt its bits stay set
   * (as md does): they say what a re-add must copy.  A flush clears bits
   * only when it reached every member. */
  bool complete = raid_active_count(a) == a->n;
  uint64_t lgen = a->ops->flush_begin ? a->ops->flush_begin(a) : 0;
  int r = raid_flush_members(a);
  if (r == 0 && a->ops->flush_end)
    a->ops->flush_end(a, lgen);
  if (r == 0 && a->bm && complete && raid_active_count(a) == a->n)
    raid_bitmap_flushed(a, gen);
  return r;
}

/* ---- data path dispatch ---- */

const struct raid_level_ops *raid_level_find(uint32_t level)
{
  static const struct raid_level_ops *const levels[] = {
    &raid0_ops, &raid1_ops, &raid5_ops,
  };
  for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
    if (levels[i]->level == level)
      return levels[i];
  return NULL;
}

static int raid_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  struct raid_array *a = dev->priv;
  if (atomic_load(&a->failed))
    return vd_set_error(EIO, "%s: RAID%u has failed", a->desc_path,
                        a->sb.level);
  return a->ops->read(a, buf, len, off);
}

static int raid_pwrite(struct vd_dev *dev, const void *buf, size_t len,
                       uint64_t off, unsigned flags)
{
  struct raid_array *a = dev->priv;
  if (atomic_load(&a->failed))
    return vd_set_error(EIO, "%s: RAID%u has failed", a->desc_path,
                        a->sb.level);
  int r = raid_mark_dirty(a);
  if (r < 0)
    return r;
  r = a->ops->write(a, buf, len, off, flags);
  if (r == 0 && (flags & VD_REQ_FUA))
    r = raid_flush_members(a);
  return r;
}

/* ---- assembly ---- */

struct raid_scan {
  struct raid_desc d;
  unsigned n;
  char *path[RAID_MAX_MEMBERS];
  struct vd_dev *dev[RAID_MAX_MEMBERS];
  bool have_sb[RAID_MAX_MEMBERS];
  struct raid_sb sb[RAID_MAX_MEMBERS];
  char why[RAID_MAX_MEMBERS][160];   /* why a member is not usable */
  int state[RAID_MAX_MEMBERS];       /* VD_RAID_STATE_* */
  int fresh;                         /* slot of the freshest superblock */
  bool behind;                       /* a member is one event behind */
  uint32_t taken;                    /* slots whose device is a spare line's
                                        (a takeover cut before the
                                        descriptor was rewritten) */
  char refusal[512];
};

static void raid_scan_free(struct raid_scan *s)
{
  for (unsigned i = 0; i < RAID_MAX_MEMBERS; i++) {
    vd_close(s->dev[i]);
    s->dev[i] = NULL;
    free(s->path[i]);
    s->path[i] = NULL;
  }
  raid_desc_free(&s->d);
}

bool raid_sb_same_array(const struct raid_sb *x, const struct raid_sb *y)
{
  return memcmp(x->uuid, y->uuid, 16) == 0 && x->level == y->level &&
         x->layout == y->layout && x->chunk == y->chunk &&
         x->nmembers == y->nmembers && x->data_offset == y->data_offset &&
         x->data_size == y->data_size && x->policy == y->policy &&
         x->bitmap_bytes == y->bitmap_bytes &&
         x->bitmap_region == y->bitmap_region &&
         x->ppl_slots == y->ppl_slots;
}

/* Descriptors being opened by this thread, outermost first: opening a
 * member runs vd_open, which may open another descriptor (a RAID over
 * RAIDs, or a VHD whose parent is an array), so a descriptor naming
 * itself, directly or through others, would recurse until the stack
 * overflows.  Identified by device and inode (symlinks and different
 * spellings of one path are the same file). */
#define RAID_MAX_NESTING 8
struct raid_opening {
  dev_t dev;
  ino_t ino;
  const char *path;
};
static __thread struct raid_opening raid_opening[RAID_MAX_NESTING];
static __thread unsigned raid_nopening;
/* Set when a loop was found, so the levels above fail the whole open
 * rather than treating an ELOOP from the file system (a symlink loop in a
 * member path) as a loop of arrays. */
static __thread bool raid_loop_found;

/* Enter DESC (already read, so it exists); -ELOOP with the chain in the
 * message when it is being opened already. */
static int raid_opening_push(const char *desc)
{
  struct stat st;
  if (raid_nopening == 0)
    raid_loop_found = false;
  if (stat(desc, &st) != 0)
    return vd_set_error(errno, "%s: %s", desc, strerror(errno));
  for (unsigned i = 0; i < raid_nopening; i++) {
    if (raid_opening[i].dev != st.st_dev || raid_opening[i].ino != st.st_ino)
      continue;
    char chain[512] = "";
    size_t l = 0;
    for (unsigned j = i; j < raid_nopening && l < sizeof chain; j++)
      l += (size_t)snprintf(chain + l, sizeof chain - l, "%s -> ",
                            raid_opening[j].path);
    if (l < sizeof chain)
      snprintf(chain + l, sizeof chain - l, "%s", desc);
    raid_loop_found = true;
    return vd_set_error(ELOOP, "%s: RAID member loop: the array contains "
                        "itself (%s)", raid_opening[0].path, chain);
  }
  if (raid_nopening == RAID_MAX_NESTING) {
    raid_loop_found = true;
    return vd_set_error(ELOOP, "%s: RAID arrays nested more than %u deep",
                        raid_opening[0].path, RAID_MAX_NESTING);
  }
  raid_opening[raid_nopening++] = (struct raid_opening){
    .dev = st.st_dev, .ino = st.st_ino, .path = desc };
  return 0;
}

static void raid_opening_pop(void)
{
  raid_nopening--;
}

static int raid_scan_members(const char *desc,
                             const struct vd_open_args *margs, bool force,
                             bool uris, struct raid_scan *s);

/* Open the members named by the descriptor (with MARGS, each in the format
 * the descriptor names) and read their superblocks; decide each slot's
 * state.  Returns 0 with s->refusal set (non-empty) if the array must not
 * start, or -errno for errors before any decision. */
static int raid_scan(const char *desc, const struct vd_open_args *margs,
                     bool force, bool uris, struct raid_scan *s)
{
  memset(s, 0, sizeof *s);
  s->fresh = -1;
  int r = raid_desc_read(desc, &s->d);
  if (r < 0)
    return r;
  r = raid_opening_push(desc);
  if (r < 0)
    return r;
  r = raid_scan_members(desc, margs, force, uris, s);
  raid_opening_pop();
  return r;
}

/* Open the member PATH (FMT) as raid_scan does; *DEV NULL on failure
 * with the reason in WHY.  -errno only for failures of the whole open (a
 * lock held elsewhere, a loop of arrays). */
static int raid_scan_open(const char *path, const char *fmt,
                          const struct vd_open_args *margs, uint32_t tmo,
                          bool uris, struct vd_dev **dev, char *why,
                          size_t whylen)
{
  int r = raid_check_member_type(path);
  struct vd_open_args ma = *margs;
  ma.format = fmt;
  ma.timeout_ms = tmo;
  /* Member paths come from the descriptor only (never from a
   * superblock).  The operator wrote it, so its NBD URIs name exports,
   * unless the descriptor itself was reached through an image (a
   * parent locator): then a URI is a file name like any other. */
  if (r == 0)
    r = uris ? vd_open_opts(path, &ma, dev)
             : vd_open_parent(NULL, path, &ma, dev);
  if (r < 0) {
    *dev = NULL;
    snprintf(why, whylen, "%s", vd_error());
    if (r == -EBUSY || (r == -ELOOP && raid_loop_found))
      return vd_set_error(-r, "%s", why);
  }
  return 0;
}

/* A takeover that was cut after its superblock write and before the
 * descriptor's rewrite (spares.c) leaves the device in a spare line
 * holding slot S's superblock, the device the freshest superblock
 * records for S: take it for S (and out of the spare lines). */
static int raid_scan_taken(const char *desc, const struct vd_open_args *margs,
                           bool uris, struct raid_scan *s)
{
  const struct raid_sb *f = &s->sb[s->fresh];
  struct raid_sb *sb = malloc(sizeof *sb);
  int r = 0;
  if (!sb)
    r = vd_set_error(ENOMEM, "%s: out of memory", desc);
  for (unsigned k = 0; r == 0 && k < s->d.nspares; k++) {
    char *path = raid_desc_resolve(desc, s->d.spare[k]), why[160];
    struct vd_dev *dev = NULL;
    if (!path) {
      r = vd_set_error(ENOMEM, "%s: out of memory", desc);
      break;
    }
    r = raid_scan_open(path, s->d.spare_format[k], margs, s->d.timeout_ms,
                       uris, &dev, why, sizeof why);
    unsigned slot = 0;
    bool take = r == 0 && dev && raid_sb_read(dev, sb, path) == 0 &&
                !(sb->flags & RAID_SB_SPARE) && raid_sb_same_array(sb, f) &&
                (slot = sb->slot) < s->n &&
                memcmp(sb->role[slot].dev_uuid, f->role[slot].dev_uuid,
                       16) == 0 &&
                !(s->have_sb[slot] &&
                  memcmp(s->sb[slot].role[slot].dev_uuid,
                         f->role[slot].dev_uuid, 16) == 0);
    if (!take) {
      vd_close(dev);
      free(path);
      continue;
    }
    vd_close(s->dev[slot]);
    free(s->path[slot]);
    free(s->d.member[slot]);
    free(s->d.format[slot]);
    s->dev[slot] = dev;
    s->path[slot] = path;
    s->sb[slot] = *sb;
    s->have_sb[slot] = true;
    s->why[slot][0] = '\0';
    s->d.member[slot] = s->d.spare[k];
    s->d.format[slot] = s->d.spare_format[k];
    s->d.nspares--;
    memmove(&s->d.spare[k], &s->d.spare[k + 1],
            (s->d.nspares - k) * sizeof s->d.spare[0]);
    memmove(&s->d.spare_format[k], &s->d.spare_format[k + 1],
            (s->d.nspares - k) * sizeof s->d.spare_format[0]);
    s->d.spare[s->d.nspares] = s->d.spare_format[s->d.nspares] = NULL;
    s->taken |= 1u << slot;
    if (sb->events > f->events)
      s->fresh = (int)slot;   /* f stays valid: s->sb[] does not move */
    f = &s->sb[s->fresh];
    k--;
  }
  vd_clear_error();
  free(sb);
  return r;
}

static int raid_scan_members(const char *desc,
                             const struct vd_open_args *margs, bool force,
                             bool uris, struct raid_scan *s)
{
  int r;
  s->n = s->d.nmembers;
  uint8_t *buf = vd_alloc_aligned(RAID_SB_SIZE);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", desc);
  for (unsigned i = 0; i < s->n; i++) {
    s->state[i] = VD_RAID_STATE_MISSING;
    if (!s->d.member[i]) {
      snprintf(s->why[i], sizeof s->why[i], "not in the descriptor");
      continue;
    }
    s->path[i] = raid_desc_resolve(desc, s->d.member[i]);
    if (!s->path[i]) {
      vd_free_aligned(buf);
      return vd_set_error(ENOMEM, "%s: out of memory", desc);
    }
    /* A lock held elsewhere, or a loop, fails the whole open (the
     * message names the chain). */
    r = raid_scan_open(s->path[i], s->d.format[i], margs, s->d.timeout_ms,
                       uris, &s->dev[i], s->why[i], sizeof s->why[i]);
    if (r < 0) {
      vd_free_aligned(buf);
      return r;
    }
    if (!s->dev[i])
      continue;
    if (vd_size(s->dev[i]) < RAID_SB_OFFSET + RAID_SB_SIZE ||
        vd_pread(s->dev[i], buf, RAID_SB_SIZE, RAID_SB_OFFSET) < 0 ||
        raid_sb_decode(buf, &s->sb[i], s->path[i]) < 0) {
      snprintf(s->why[i], sizeof s->why[i], "%s", vd_error());
      if (vd_size(s->dev[i]) < RAID_SB_OFFSET + RAID_SB_SIZE)
        snprintf(s->why[i], sizeof s->why[i], "%s: too small to be a member",
                 s->path[i]);
      vd_close(s->dev[i]);
      s->dev[i] = NULL;
      continue;
    }
    if (memcmp(s->sb[i].uuid, s->d.uuid, 16) != 0) {
      snprintf(s->why[i], sizeof s->why[i], "%s: belongs to another array",
               s->path[i]);
      vd_close(s->dev[i]);
      s->dev[i] = NULL;
      continue;
    }
    if (s->sb[i].flags & RAID_SB_SPARE) {
      snprintf(s->why[i], sizeof s->why[i], "%s: is a hot spare of the "
               "array, not a member", s->path[i]);
      vd_close(s->dev[i]);
      s->dev[i] = NULL;
      continue;
    }
    if (s->sb[i].slot != i || s->sb[i].nmembers != s->n) {
      snprintf(s->why[i], sizeof s->why[i], "%s: superblock says slot %u of "
               "%u, descriptor says %u of %u", s->path[i], s->sb[i].slot,
               s->sb[i].nmembers, i, s->n);
      vd_close(s->dev[i]);
      s->dev[i] = NULL;
      continue;
    }
    s->have_sb[i] = true;
    if (s->fresh < 0 || s->sb[i].events > s->sb[s->fresh].events)
      s->fresh = (int)i;
  }
  vd_free_aligned(buf);
  if (s->fresh < 0) {
    snprintf(s->refusal, sizeof s->refusal, "no member has a superblock of "
             "this array (%s)", s->n ? s->why[0] : "no members");
    return 0;
  }
  r = raid_scan_taken(desc, margs, uris, s);
  if (r < 0)
    return r;
  const struct raid_sb *f = &s->sb[s->fresh];
  for (unsigned i = 0; i < s->n; i++) {
    if (!s->have_sb[i])
      continue;
    const struct raid_sb *m = &s->sb[i];
    if (!raid_sb_same_array(m, f)) {
      snprintf(s->why[i], sizeof s->why[i], "%s: geometry differs from the "
               "freshest member's", s->path[i]);
      s->state[i] = VD_RAID_STATE_STALE;
      continue;
    }
    if (memcmp(f->role[i].dev_uuid, m->role[i].dev_uuid, 16) != 0) {
      snprintf(s->why[i], sizeof s->why[i], "%s: not the device recorded for "
               "slot %u (replaced)", s->path[i], i);
      s->state[i] = VD_RAID_STATE_STALE;
      continue;
    }
    if (m->events == f->events) {
      for (unsigned j = 0; j < s->n; j++)
        if (m->role[j].state != f->role[j].state ||
            memcmp(m->role[j].dev_uuid, f->role[j].dev_uuid, 16)) {
          snprintf(s->refusal, sizeof s->refusal, "split brain: %s and %s "
                   "both have events %" PRIu64 " but disagree about slot %u",
                   s->path[i], s->path[s->fresh], f->events, j);
          return 0;
        }
    }
    if (f->role[i].state == RAID_ROLE_FAULTY) {
      snprintf(s->why[i], sizeof s->why[i], "%s: recorded as faulty",
               s->path[i]);
      s->state[i] = VD_RAID_STATE_FAULTY;
      continue;
    }
    /* One event behind is an interrupted superblock write (each member's
     * superblock is written in parallel, so a crash can leave some at the
     * new count): the freshest table still names the member active or
     * rebuilding (checked above), and nothing that skipped it was
     * acknowledged before that write completed (raid_flush_members).
     * md and mdadm allow the same margin of one. */
    if (m->events + 1 < f->events) {
      snprintf(s->why[i], sizeof s->why[i], "%s: stale (events %" PRIu64
               " < %" PRIu64 ")", s->path[i], m->events, f->events);
      s->state[i] = VD_RAID_STATE_STALE;
      continue;
    }
    if (m->events < f->events)
      s->behind = true;
    switch (f->role[i].state) {
    case RAID_ROLE_REBUILDING:
      s->state[i] = VD_RAID_STATE_REBUILDING;
      break;
    default:
      s->state[i] = VD_RAID_STATE_ACTIVE;
    }
  }

  unsigned active = 0;
  for (unsigned i = 0; i < s->n; i++)
    if (s->state[i] == VD_RAID_STATE_ACTIVE)
      active++;
  const struct raid_level_ops *ops = raid_level_find(f->level);
  if (!raid_level_viable(ops, s->n, active)) {
    int first = -1;
    for (unsigned i = 0; i < s->n && first < 0; i++)
      if (s->state[i] != VD_RAID_STATE_ACTIVE &&
          s->state[i] != VD_RAID_STATE_REBUILDING)
        first = (int)i;
    snprintf(s->refusal, sizeof s->refusal, "RAID%u needs %u of %u members, "
             "%u usable (slot %d: %s)", f->level, ops->members_needed(s->n),
             s->n, active, first,
             first >= 0 ? s->why[first] : "rebuilding");
    return 0;
  }
  bool degraded = active < s->n;
  if ((f->flags & RAID_SB_DIRTY) && degraded && ops->write_hole && !force &&
      (margs->flags & VD_OPEN_RDWR)) {
    int first = -1;
    for (unsigned i = 0; i < s->n && first < 0; i++)
      if (s->state[i] != VD_RAID_STATE_ACTIVE)
        first = (int)i;
    snprintf(s->refusal, sizeof s->refusal, "RAID%u was not stopped cleanly "
             "and is degraded (slot %d: %s), so parity may be stale; "
             "'vdtool raid assemble --force' starts it%s", f->level, first,
             s->why[first][0] ? s->why[first] : "rebuilding",
             f->policy == RAID_POLICY_PPL ? " after replaying the partial "
             "parity log" : " and may return wrong data for that member");
    return 0;
  }
  return 0;
}

static void raid_array_free(struct raid_array *a)
{
  raid_spares_stop(a);
  raid_wb_stop(a);
  raid_pool_stop(a);
  for (unsigned i = 0; i < a->nretired; i++)
    vd_close(a->retired[i]);
  a->nretired = 0;
  for (unsigned i = 0; i < RAID_MAX_MEMBERS; i++) {
    if (a->m[i].dev)
      vd_close(a->m[i].dev);
    a->m[i].dev = NULL;
    free(a->m[i].path);
    a->m[i].path = NULL;
    free(a->m[i].format);
    a->m[i].format = NULL;
  }
  free(a->bm);
  a->bm = NULL;
  free(a->rb_scratch);
  a->rb_scratch = NULL;
  free(a->bm_inflight);
  free(a->bm_gen);
  if (a->ops && a->ops->stop)
    a->ops->stop(a);
  for (int i = 0; i < RAID_STRIPE_LOCKS; i++)
    pthread_mutex_destroy(&a->stripe_lock[i]);
  pthread_mutex_destroy(&a->sb_lock);
  pthread_mutex_destroy(&a->bm_lock);
  pthread_mutex_destroy(&a->readd_lock);
  pthread_cond_destroy(&a->readd_cond);
  pthread_cond_destroy(&a->rebuild_done);
  pthread_mutex_destroy(&a->spare_wlock);
  pthread_mutex_destroy(&a->notify_lock);
  pthread_cond_destroy(&a->spare_cond);
  free(a->desc_path);
  a->desc_path = NULL;
  free(a->desc_abs);
  a->desc_abs = NULL;
}

/* Load the bitmap: OR of every usable member's copy. */
static int raid_bitmap_load(struct raid_array *a)
{
  if (!a->sb.bitmap_bytes)
    return 0;
  a->nregions = (a->sb.data_size + a->sb.bitmap_region - 1) /
                a->sb.bitmap_region;
  size_t bytes = vd_round_up(a->sb.bitmap_bytes, 4096);
  a->bm = vd_alloc_aligned(bytes);
  uint8_t *tmp = vd_alloc_aligned(bytes);
  a->bm_inflight = calloc(a->nregions, sizeof *a->bm_inflight);
  a->bm_gen = calloc(a->nregions, sizeof *a->bm_gen);
  if (!a->bm || !tmp || !a->bm_inflight || !a->bm_gen) {
    vd_free_aligned(tmp);
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  }
  memset(a->bm, 0, bytes);
  for (unsigned i = 0; i < a->n; i++) {
    if (!a->m[i].dev || atomic_load(&a->m[i].state) == RAID_ROLE_FAULTY)
      continue;
    if (raid_mio_one_abs(a, (int)i, RAID_MIO_READ, tmp, bytes,
                         a->sb.bitmap_offset) < 0)
      continue;
    for (size_t b = 0; b < a->sb.bitmap_bytes; b++)
      a->bm[b] |= tmp[b];
  }
  vd_free_aligned(tmp);
  return 0;
}


static int raid_open(struct vd_dev *dev)
{
  struct raid_array *a = dev->priv;
  bool force = (dev->open_flags & VD_OPEN_FORCE) != 0;
  unsigned mflags = dev->open_flags & (VD_OPEN_RDWR | VD_OPEN_DIRECT |
                                       VD_OPEN_NOLOCK | VD_OPEN_NO_FLUSH);
  struct raid_scan *s = calloc(1, sizeof *s);
  if (!s)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  pthread_mutex_init(&a->sb_lock, NULL);
  pthread_mutex_init(&a->bm_lock, NULL);
  pthread_mutex_init(&a->readd_lock, NULL);
  pthread_mutex_init(&a->spare_wlock, NULL);
  pthread_mutex_init(&a->notify_lock, NULL);
  pthread_cond_init(&a->spare_cond, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);   /* auto re-add sleeps */
  pthread_cond_init(&a->readd_cond, &ca);
  pthread_cond_init(&a->rebuild_done, &ca);
  pthread_condattr_destroy(&ca);
  for (int i = 0; i < RAID_STRIPE_LOCKS; i++)
    pthread_mutex_init(&a->stripe_lock[i], NULL);
  a->desc_path = strdup(dev->path);
  /* (A path realpath cannot resolve, such as a memfd's, is kept as is.) */
  a->desc_abs = realpath(dev->path, NULL);
  if (!a->desc_abs)
    a->desc_abs = strdup(dev->path);
  int r = 0;
  if (!a->desc_path || !a->desc_abs) {
    r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    goto fail;
  }
  struct vd_open_args margs = { .flags = mflags,
                                .filter = dev->opts.filter };
  a->member_uris = dev->operator_named;
  r = raid_scan(dev->path, &margs, force, a->member_uris, s);
  if (r < 0)
    goto fail;
  if (s->refusal[0]) {
    r = vd_set_error(EIO, "%s: %s", dev->path, s->refusal);
    goto fail;
  }

  a->sb = s->sb[s->fresh];
  a->n = s->n;
  a->ops = raid_level_find(a->sb.level);  /* checked by raid_sb_decode */
  a->writable = (mflags & VD_OPEN_RDWR) != 0;
  a->force = force;
  a->member_filter = dev->opts.filter;
  a->member_flags = mflags;
  a->timeout_ms = s->d.timeout_ms;
  a->auto_readd_s = s->d.auto_readd_s;
  a->wb_limit = s->d.write_behind;
  bool recorded_change = false;
  for (unsigned i = 0; i < a->n; i++) {
    struct raid_member *m = &a->m[i];
    m->path = s->path[i];
    s->path[i] = NULL;
    m->assembled = s->state[i];
    memcpy(m->dev_uuid, a->sb.role[i].dev_uuid, 16);
    m->format = s->d.format[i];
    s->d.format[i] = NULL;
    m->write_mostly = s->d.write_mostly[i];
    if (a->sb.role[i].state == RAID_ROLE_FAULTY) {
      m->failed_events = a->sb.role[i].recovery_offset;
      m->failed_recorded = true;
    }
    switch (s->state[i]) {
    case VD_RAID_STATE_ACTIVE:
      m->dev = s->dev[i];
      s->dev[i] = NULL;
      atomic_store(&m->state, RAID_ROLE_ACTIVE);
      break;
    case VD_RAID_STATE_REBUILDING:
      m->dev = s->dev[i];
      s->dev[i] = NULL;
      atomic_store(&m->state, RAID_ROLE_REBUILDING);
      atomic_store(&m->recovery, a->sb.role[i].recovery_offset);
      atomic_store(&m->readd,
                   (a->sb.role[i].flags & RAID_ROLE_F_READD) != 0);
      break;
    default:
      atomic_store(&m->state, RAID_ROLE_FAULTY);
      if (a->sb.role[i].state != RAID_ROLE_FAULTY)
        recorded_change = true;
    }
  }
  bool behind = s->behind;
  uint32_t taken = s->taken;
  r = raid_spares_open(a, dev->path, &s->d);
  if (r < 0)
    goto fail;
  raid_scan_free(s);
  free(s);
  s = NULL;

  a->stripe_bytes = a->ops->row_bytes(a->n, a->sb.chunk);
  dev->size = a->sb.array_size;
  dev->logical_block = 512;
  for (unsigned i = 0; i < a->n; i++)
    if (a->m[i].dev && vd_logical_block(a->m[i].dev) > dev->logical_block)
      dev->logical_block = vd_logical_block(a->m[i].dev);
  dev->preferred_io = !a->ops->striped ? 4096
                      : (uint32_t)(a->stripe_bytes > (1u << 30)
                                   ? (1u << 30) : a->stripe_bytes);
  dev->strict_align = false;

  r = raid_pool_start(a);
  if (r < 0)
    goto fail;
  r = raid_bitmap_load(a);
  if (r < 0)
    goto fail;
  r = a->ops->start ? a->ops->start(a) : 0;
  if (r < 0)
    goto fail;
  if (a->wb_limit) {
    bool wm = false;
    for (unsigned i = 0; i < a->n; i++)
      wm |= a->m[i].write_mostly;
    if (a->sb.level != RAID_LEVEL1 || !wm || !a->bm) {
      r = vd_set_error(EINVAL, "%s: write-behind needs a RAID1 with a "
                       "write-mostly member and a write-intent bitmap",
                       dev->path);
      goto fail;
    }
    if ((r = raid_wb_start(a)) < 0)
      goto fail;
  }
  atomic_store(&a->dirty, (a->sb.flags & RAID_SB_DIRTY) != 0);

  if (a->writable) {
    bool degraded = raid_active_count(a) < a->n;
    bool was_dirty = (a->sb.flags & RAID_SB_DIRTY) != 0;
    /* Missing or stale members are recorded as faulty by the first
     * superblock write (raid_sb_write_all_locked writes every slot's
     * state), which the first write to the array causes (marking it
     * dirty): from then on they are out of date.  An open that writes
     * nothing leaves the superblocks alone, so a member that was merely
     * absent (not given to vdtool raid assemble --run, unplugged) comes
     * back without a rebuild.  Opens that write at once (resync, rebuild)
     * record the absent members first.  A member accepted one event
     * behind gets the current count at once. */
    bool rebuilding = false;
    for (unsigned i = 0; i < a->n; i++)
      if (atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
        rebuilding = true;
    bool writes_now = was_dirty || rebuilding ||
                      a->sb.resync_offset != RAID_NO_OFFSET;
    if ((recorded_change && writes_now) || behind) {
      r = raid_sb_update(a);
      if (r < 0)
        goto fail;
    }
    if (was_dirty && degraded && a->ops->replay_log) {
      r = a->ops->replay_log(a);
      if (r < 0)
        goto fail;
    }
    if (was_dirty && a->ops->redundant) {
      r = raid_resync(a, a->sb.policy == RAID_POLICY_RESYNC);
      if (r < 0)
        goto fail;
    }
    if (a->sb.resync_offset != RAID_NO_OFFSET) {
      r = raid_resync(a, true);
      if (r < 0)
        goto fail;
    }
    r = a->ops->clear_log ? a->ops->clear_log(a) : 0;
    if (r < 0)
      goto fail;
    if (was_dirty && raid_flush_members(a) == 0) {
      /* Everything is consistent again. */
      pthread_mutex_lock(&a->sb_lock);
      a->sb.flags &= ~RAID_SB_DIRTY;
      r = raid_sb_write_all_locked(a);
      pthread_mutex_unlock(&a->sb_lock);
      if (r < 0)
        goto fail;
      atomic_store(&a->dirty, false);
    }
    /* A takeover cut before its descriptor rewrite (raid_scan took the
     * spare for its slot): the descriptor names it there now. */
    for (unsigned i = 0; i < a->n && r == 0; i++)
      if (taken & (1u << i))
        r = raid_desc_update(a, (int)i, a->m[i].path, a->m[i].format);
    if (r < 0)
      goto fail;
    raid_rebuild_start(a);
    raid_readd_auto_start(a);
    raid_spares_start(a);
  }
  return 0;

fail:
  if (s) {
    raid_scan_free(s);
    free(s);
  }
  raid_array_free(a);
  return r;
}

static void raid_close(struct vd_dev *dev)
{
  struct raid_array *a = dev->priv;
  raid_spares_stop(a);   /* no takeover starts a rebuild after this */
  raid_readd_auto_stop(a);
  raid_rebuild_stop(a);
  /* Every write-behind write reaches its member before the clean stop
   * below clears the bitmap. */
  raid_wb_drain(a);
  if (a->writable && !atomic_load(&a->crashed) && !atomic_load(&a->failed)) {
    /* Clean stop: everything is flushed (vd_close flushed before calling
     * us), so the bitmap and the dirty flag can be cleared. */
    if (raid_flush_members(a) == 0) {
      /* Degraded: the bits are what a re-add copies; keep them. */
      if (a->bm && raid_active_count(a) == a->n) {
        bool failed[RAID_MAX_MEMBERS] = { false };
        pthread_mutex_lock(&a->bm_lock);
        memset(a->bm, 0, a->sb.bitmap_bytes);
        raid_bitmap_write_locked(a, 0, a->sb.bitmap_bytes, true, failed);
        pthread_mutex_unlock(&a->bm_lock);
        raid_handle_failed(a, failed, -EIO);
      }
      if (atomic_load(&a->dirty) && !atomic_load(&a->failed)) {
        pthread_mutex_lock(&a->sb_lock);
        a->sb.flags &= ~RAID_SB_DIRTY;
        raid_sb_write_all_locked(a);
        pthread_mutex_unlock(&a->sb_lock);
      }
    }
  }
  raid_array_free(a);
}

static int raid_probe(const struct vd_probe_data *pd)
{
  size_t ml = strlen(RAID_DESC_MAGIC);
  return pd->head_len >= ml && memcmp(pd->head, RAID_DESC_MAGIC, ml) == 0
         ? 100 : 0;
}

static const char *raid_state_name(struct raid_array *a, char *buf,
                                   size_t len)
{
  bool rebuilding = false;
  for (unsigned i = 0; i < a->n; i++)
    if (atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      rebuilding = true;
  snprintf(buf, len, "%s%s%s%s",
           atomic_load(&a->failed) ? "failed"
           : atomic_load(&a->dirty) ? "active" : "clean",
           raid_active_count(a) < a->n && !atomic_load(&a->failed)
             ? ", degraded" : "",
           rebuilding ? ", recovering" : "",
           a->writable ? "" : ", read-only");
  return buf;
}

static void raid_info(struct vd_dev *dev, struct vd_info *info)
{
  struct raid_array *a = dev->priv;
  char buf[64], u[37];
  uint64_t actual = 0;
  for (unsigned i = 0; i < a->n; i++) {
    struct vd_info mi;
    if (a->m[i].dev && vd_get_info(a->m[i].dev, &mi) == 0)
      actual += mi.actual_size;
  }
  info->actual_size = actual;
  info->dirty = atomic_load(&a->dirty);
  raid_uuid_format(a->sb.uuid, u);
  vd_info_add_u64(info, "raid level", a->sb.level);
  vd_info_add_str(info, "uuid", u);
  vd_info_add_u64(info, "chunk size", a->sb.chunk);
  vd_info_add_u64(info, "members", a->n);
  vd_info_add_u64(info, "active members", raid_active_count(a));
  vd_info_add_str(info, "state", raid_state_name(a, buf, sizeof buf));
  vd_info_add_u64(info, "events", a->sb.events);
  for (unsigned i = 0; i < a->n && info->nfields < VD_INFO_MAX_FIELDS; i++) {
    char k[48];
    int st = atomic_load(&a->m[i].state);
    snprintf(k, sizeof k, "member %u", i);
    char v[512];
    snprintf(v, sizeof v, "%s (%s)", a->m[i].path ? a->m[i].path : "-",
             !a->m[i].dev ? "missing" : st == RAID_ROLE_ACTIVE ? "active"
             : st == RAID_ROLE_REBUILDING ? "rebuilding" : "faulty");
    vd_info_add_str(info, k, v);
  }
}

const struct vd_driver vd_raid_driver = {
  .name = "raid",
  .aliases = (const char *const[]){ "vdraid", NULL },
  .priv_size = sizeof(struct raid_array),
  .probe = raid_probe,
  .open = raid_open,
  .close = raid_close,
  .pread = raid_pread,
  .pwrite = raid_pwrite,
  .flush = raid_flush,
  .info = raid_info,
  .check = raid_check,
  .opens_own_files = true,
  .multi_conn = true,
};

struct raid_array *vd_raid_of(struct vd_dev *dev)
{
  return dev && dev->drv == &vd_raid_driver ? dev->priv : NULL;
}

void vd_raid_crash(struct raid_array *a)
{
  raid_rebuild_stop(a);
  atomic_store(&a->crashed, true);
}

/* ---- status ---- */

static const char *raid_policy_name(uint32_t p)
{
  return p == RAID_POLICY_PPL ? "ppl" : p == RAID_POLICY_BITMAP ? "bitmap"
         : "resync";
}

static void raid_status_common(const struct raid_sb *sb,
                               struct vd_raid_status *st)
{
  raid_uuid_format(sb->uuid, st->uuid);
  snprintf(st->name, sizeof st->name, "%s", sb->name);
  st->level = (int)sb->level;
  st->layout = raid_level_find(sb->level)->layout_name;
  st->policy = raid_policy_name(sb->policy);
  st->chunk = sb->chunk;
  st->nmembers = sb->nmembers;
  st->array_size = sb->array_size;
  st->member_data_size = sb->data_size;
  st->data_offset = sb->data_offset;
  st->events = sb->events;
  st->bitmap_region = sb->bitmap_bytes ? sb->bitmap_region : 0;
}

int vd_raid_status(struct raid_array *a, struct vd_raid_status *st)
{
  memset(st, 0, sizeof *st);
  pthread_mutex_lock(&a->sb_lock);
  raid_status_common(&a->sb, st);
  pthread_mutex_unlock(&a->sb_lock);
  st->dirty = atomic_load(&a->dirty);
  st->failed = atomic_load(&a->failed);
  st->degraded = raid_active_count(a) < a->n;
  st->member_timeout_ms = a->timeout_ms;
  st->auto_readd_s = a->auto_readd_s;
  st->write_behind = a->wb_limit;
  st->write_behind_pending = raid_wb_outstanding(a);
  raid_state_name(a, st->state, sizeof st->state);
  for (unsigned i = 0; i < a->n; i++) {
    struct vd_raid_member_status *m = &st->m[i];
    snprintf(m->path, sizeof m->path, "%s", a->m[i].path ? a->m[i].path : "");
    m->slot = (int)i;
    int s = atomic_load(&a->m[i].state);
    m->state = !a->m[i].dev ? (a->m[i].assembled == VD_RAID_STATE_STALE
                               ? VD_RAID_STATE_STALE
                               : a->m[i].assembled == VD_RAID_STATE_FAULTY
                               ? VD_RAID_STATE_FAULTY : VD_RAID_STATE_MISSING)
               : s == RAID_ROLE_ACTIVE ? VD_RAID_STATE_ACTIVE
               : s == RAID_ROLE_REBUILDING ? VD_RAID_STATE_REBUILDING
               : VD_RAID_STATE_FAULTY;
    m->events = st->events;
    raid_uuid_format(a->m[i].dev_uuid, m->dev_uuid);
    m->write_mostly = a->m[i].write_mostly;
    m->re_adding = s == RAID_ROLE_REBUILDING && atomic_load(&a->m[i].readd);
    m->readd_copied = atomic_load(&a->m[i].readd_copied);
    m->readd_skipped = atomic_load(&a->m[i].readd_skipped);
    if (s == RAID_ROLE_REBUILDING) {
      m->recovery_offset = atomic_load(&a->m[i].recovery);
      st->rebuilding = true;
      st->rebuild_done = m->recovery_offset;
      st->rebuild_total = a->sb.data_size;
    }
  }
  raid_spares_status(a, st);
  if (a->bm) {
    pthread_mutex_lock(&a->bm_lock);
    for (uint64_t r = 0; r < a->nregions; r++)
      if (a->bm[r / 8] & (1u << (r % 8)))
        st->bitmap_dirty_regions++;
    pthread_mutex_unlock(&a->bm_lock);
  }
  return 0;
}

int vd_raid_examine(const char *desc, struct vd_raid_status *st)
{
  struct raid_scan *s = calloc(1, sizeof *s);
  memset(st, 0, sizeof *st);
  if (!s)
    return vd_set_error(ENOMEM, "%s: out of memory", desc);
  struct vd_open_args margs = { .flags = VD_OPEN_NOLOCK };
  int r = raid_scan(desc, &margs, false, true, s);
  if (r < 0) {
    raid_scan_free(s);
    free(s);
    return r;
  }
  snprintf(st->refusal, sizeof st->refusal, "%s", s->refusal);
  if (s->fresh >= 0) {
    const struct raid_sb *f = &s->sb[s->fresh];
    raid_status_common(f, st);
    st->dirty = (f->flags & RAID_SB_DIRTY) != 0;
  } else {
    st->nmembers = s->n;
  }
  unsigned active = 0;
  for (unsigned i = 0; i < s->n && i < 32; i++) {
    struct vd_raid_member_status *m = &st->m[i];
    snprintf(m->path, sizeof m->path, "%s", s->path[i] ? s->path[i] : "");
    m->slot = (int)i;
    m->state = s->state[i];
    m->events = s->have_sb[i] ? s->sb[i].events : 0;
    if (m->state != VD_RAID_STATE_ACTIVE &&
        m->state != VD_RAID_STATE_REBUILDING)
      snprintf(m->why, sizeof m->why, "%s", s->why[i]);
    if (s->fresh >= 0)
      raid_uuid_format(s->sb[s->fresh].role[i].dev_uuid, m->dev_uuid);
    if (m->state == VD_RAID_STATE_ACTIVE)
      active++;
    if (m->state == VD_RAID_STATE_REBUILDING && s->fresh >= 0) {
      m->recovery_offset = s->sb[s->fresh].role[i].recovery_offset;
      st->rebuilding = true;
      st->rebuild_done = m->recovery_offset;
      st->rebuild_total = s->sb[s->fresh].data_size;
    }
  }
  st->degraded = active < s->n;
  st->failed = s->refusal[0] != '\0';
  snprintf(st->state, sizeof st->state, "%s%s%s%s",
           st->failed ? "inactive" : st->dirty ? "active" : "clean",
           st->degraded && !st->failed ? ", degraded" : "",
           st->rebuilding ? ", recovering" : "",
           s->fresh >= 0 && !st->failed ? "" : "");
  raid_spares_examine(desc, &s->d, s->fresh >= 0 ? &s->sb[s->fresh] : NULL,
                      st);
  raid_scan_free(s);
  free(s);
  return 0;
}

VD_REGISTER_DRIVER(vd_raid_driver);
