/* Unit tests for the device graph (vdisk/node.c): requests through a
 * node while another thread drains it and swaps the device it points at.
 *
 * Most tests run on a test-only driver, "tmem": a RAM disk that counts the
 * requests inside it, flags any request that runs on it after the test
 * retired it (after the vd_node_replace that removed it returned), counts
 * writes not yet covered by a flush, can fail its flush, and can hold its
 * requests on a gate so a test can keep a request in flight.  The last
 * test swaps real images: a raw file for a VHD differencing child created
 * on top of it, as a live snapshot does. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/driver.h"
#include "vdisk/vdisk.h"

/* ---- the test driver ---- */

struct tmem {
  uint8_t *mem;
  atomic_int inside;          /* requests in the driver now */
  atomic_long entered;        /* requests that ever entered */
  atomic_int retired;         /* set by the test once swapped out */
  atomic_int violations;      /* requests seen while retired */
  atomic_long unflushed;      /* writes acknowledged since the last flush */
  atomic_long flushes;
  atomic_int fail_flush;      /* next flushes return -EIO */
  pthread_mutex_t gate_mu;
  pthread_cond_t gate_cv;
  bool gated;                 /* requests wait here while set */
  int waiting;                /* requests waiting at the gate */
};

static struct tmem *
tm(struct vd_dev *dev)
{
  return dev->priv;
}

static void
tmem_enter(struct vd_dev *dev)
{
  struct tmem *t = tm(dev);
  if (atomic_load(&t->retired))
    atomic_fetch_add(&t->violations, 1);
  atomic_fetch_add(&t->inside, 1);
  atomic_fetch_add(&t->entered, 1);
  pthread_mutex_lock(&t->gate_mu);
  t->waiting++;
  pthread_cond_broadcast(&t->gate_cv);
  while (t->gated)
    pthread_cond_wait(&t->gate_cv, &t->gate_mu);
  t->waiting--;
  pthread_mutex_unlock(&t->gate_mu);
}

static void
tmem_leave(struct vd_dev *dev)
{
  struct tmem *t = tm(dev);
  if (atomic_load(&t->retired))
    atomic_fetch_add(&t->violations, 1);
  atomic_fetch_sub(&t->inside, 1);
}

static int
tmem_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  tmem_enter(dev);
  memcpy(buf, tm(dev)->mem + off, len);
  tmem_leave(dev);
  return 0;
}

static int
tmem_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
            unsigned flags)
{
  (void) flags;
  tmem_enter(dev);
  memcpy(tm(dev)->mem + off, buf, len);
  atomic_fetch_add(&tm(dev)->unflushed, 1);
  tmem_leave(dev);
  return 0;
}

static int
tmem_flush(struct vd_dev *dev)
{
  struct tmem *t = tm(dev);
  tmem_enter(dev);
  int r = 0;
  if (atomic_load(&t->fail_flush))
    r = -EIO;
  else {
    atomic_store(&t->unflushed, 0);
    atomic_fetch_add(&t->flushes, 1);
  }
  tmem_leave(dev);
  return r;
}

static void
tmem_close(struct vd_dev *dev)
{
  struct tmem *t = tm(dev);
  pthread_mutex_destroy(&t->gate_mu);
  pthread_cond_destroy(&t->gate_cv);
  free(t->mem);
}

static const struct vd_driver tmem_driver = {
  .name = "tmem",
  .priv_size = sizeof(struct tmem),
  .close = tmem_close,
  .pread = tmem_pread,
  .pwrite = tmem_pwrite,
  .flush = tmem_flush,
  .multi_conn = true,
};

/* A writable tmem device of SIZE bytes, set up as the core's open would
 * (the core's vd_close frees it). */
static struct vd_dev *
tmem_new(uint64_t size)
{
  struct vd_dev *dev = calloc(1, sizeof *dev);
  struct tmem *t = calloc(1, sizeof *t);
  if (!dev || !t || !(t->mem = calloc(1, size)) ||
      !(dev->path = strdup("tmem"))) {
    fprintf(stderr, "out of memory\n");
    abort();
  }
  for (size_t i = 0; i < sizeof dev->rmw_lock / sizeof dev->rmw_lock[0]; i++)
    pthread_mutex_init(&dev->rmw_lock[i], NULL);
  pthread_mutex_init(&dev->probe_lock, NULL);
  pthread_mutex_init(&t->gate_mu, NULL);
  pthread_cond_init(&t->gate_cv, NULL);
  dev->drv = &tmem_driver;
  dev->priv = t;
  dev->size = size;
  dev->logical_block = 512;
  dev->preferred_io = 4096;
  return dev;
}

static void
tmem_gate(struct vd_dev *dev, bool closed)
{
  struct tmem *t = tm(dev);
  pthread_mutex_lock(&t->gate_mu);
  t->gated = closed;
  pthread_cond_broadcast(&t->gate_cv);
  pthread_mutex_unlock(&t->gate_mu);
}

/* Wait until N requests wait at DEV's gate. */
static void
tmem_wait_waiting(struct vd_dev *dev, int n)
{
  struct tmem *t = tm(dev);
  pthread_mutex_lock(&t->gate_mu);
  while (t->waiting < n)
    pthread_cond_wait(&t->gate_cv, &t->gate_mu);
  pthread_mutex_unlock(&t->gate_mu);
}

static void
sleep_ms(int ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
  nanosleep(&ts, NULL);
}

/* ---- properties, ownership and the replacement checks ---- */

static void
test_node_basic(void)
{
  struct vd_dev *a = tmem_new(1 << 20), *b = tmem_new(1 << 20);
  struct vd_dev *small = tmem_new(1 << 19), *ro = tmem_new(1 << 20);
  struct vd_node *n = NULL;
  uint8_t buf[4096], back[4096];

  CU_ASSERT_EQUAL(vd_node_new(NULL, &n), -EINVAL);
  CU_ASSERT_EQUAL(vd_node_new(a, &n), 0);
  CU_ASSERT_PTR_EQUAL(vd_node_dev(n), a);
  CU_ASSERT_EQUAL(vd_node_size(n), 1 << 20);
  CU_ASSERT_EQUAL(vd_node_logical_block(n), 512);
  CU_ASSERT_EQUAL(vd_node_preferred_io(n), 4096);
  CU_ASSERT_FALSE(vd_node_is_read_only(n));
  CU_ASSERT_TRUE(vd_node_can_multi_conn(n));

  memset(buf, 0xa5, sizeof buf);
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, sizeof buf, 8192, 0), 0);
  CU_ASSERT_EQUAL(vd_node_pread(n, back, sizeof back, 8192), 0);
  CU_ASSERT_EQUAL(memcmp(buf, back, sizeof buf), 0);
  CU_ASSERT_EQUAL(tm(a)->mem[8192], 0xa5);
  /* The dispatcher's checks still apply through the node. */
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, sizeof buf, 1 << 20, 0), -ENOSPC);
  CU_ASSERT_EQUAL(vd_node_pread(n, buf, sizeof buf, 1 << 20), -EINVAL);
  CU_ASSERT_EQUAL(vd_node_pread(NULL, buf, sizeof buf, 0), -EINVAL);
  /* Generic fallbacks are reached through the node as well. */
  CU_ASSERT_EQUAL(vd_node_write_zeroes(n, 8192, 4096, 0), 0);
  CU_ASSERT_EQUAL(tm(a)->mem[8192], 0);
  struct vd_extent e;
  CU_ASSERT_EQUAL(vd_node_block_status(n, 0, 4096, &e), 0);
  CU_ASSERT_EQUAL(e.offset, 0);
  struct vd_info info;
  CU_ASSERT_EQUAL(vd_node_get_info(n, &info), 0);
  CU_ASSERT_STRING_EQUAL(info.format, "tmem");

  /* A replacement may not change what the frontends were told. */
  struct vd_dev *old = NULL;
  CU_ASSERT_EQUAL(vd_node_replace(n, small, &old), -EINVAL);
  CU_ASSERT_PTR_NULL(old);
  ro->read_only = true;
  CU_ASSERT_EQUAL(vd_node_replace(n, ro, &old), -EINVAL);
  CU_ASSERT_EQUAL(vd_node_replace(n, NULL, &old), -EINVAL);
  CU_ASSERT_PTR_EQUAL(vd_node_dev(n), a);

  CU_ASSERT_EQUAL(vd_node_replace(n, b, &old), 0);
  CU_ASSERT_PTR_EQUAL(old, a);
  CU_ASSERT_PTR_EQUAL(vd_node_dev(n), b);
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, 512, 0, 0), 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(b)->entered), 1);
  /* The node's drain is balanced after a replace: requests do not wait. */
  CU_ASSERT_EQUAL(vd_node_pread(n, back, 512, 0), 0);

  CU_ASSERT_EQUAL(vd_close(old), 0);
  CU_ASSERT_EQUAL(vd_close(small), 0);
  CU_ASSERT_EQUAL(vd_close(ro), 0);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);   /* closes b */
  CU_ASSERT_EQUAL(vd_node_free(NULL), 0);
}

/* ---- the drain waits for in-flight requests and holds new ones ---- */

struct req_thread {
  struct vd_node *node;
  bool write;
  atomic_int done;
  int result;
};

static void *
req_run(void *arg)
{
  struct req_thread *rt = arg;
  uint8_t buf[512];
  memset(buf, 0x5a, sizeof buf);
  rt->result = rt->write ? vd_node_pwrite(rt->node, buf, sizeof buf, 0, 0)
                         : vd_node_pread(rt->node, buf, sizeof buf, 0);
  atomic_store(&rt->done, 1);
  return NULL;
}

struct drain_thread {
  struct vd_node *node;
  atomic_int done;
};

static void *
drain_run(void *arg)
{
  struct drain_thread *dt = arg;
  vd_node_drain(dt->node);
  atomic_store(&dt->done, 1);
  return NULL;
}

static void
test_node_drain_waits(void)
{
  struct vd_dev *a = tmem_new(1 << 20), *b = tmem_new(1 << 20), *old = NULL;
  struct vd_node *n = NULL;
  pthread_t rt_tid, dt_tid, wt_tid;
  struct req_thread slow = { .write = false }, late = { .write = true };
  struct drain_thread dt = { 0 };

  CU_ASSERT_FATAL(vd_node_new(a, &n) == 0);
  slow.node = late.node = dt.node = n;

  /* A read held inside the device. */
  tmem_gate(a, true);
  pthread_create(&rt_tid, NULL, req_run, &slow);
  tmem_wait_waiting(a, 1);

  /* The drain cannot finish while it is in flight. */
  pthread_create(&dt_tid, NULL, drain_run, &dt);
  sleep_ms(150);
  CU_ASSERT_EQUAL(atomic_load(&dt.done), 0);

  /* A request arriving during the drain waits before the device. */
  pthread_create(&wt_tid, NULL, req_run, &late);
  sleep_ms(150);
  CU_ASSERT_EQUAL(atomic_load(&late.done), 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(a)->entered), 1);

  /* The in-flight read finishes; then the drain returns. */
  tmem_gate(a, false);
  pthread_join(rt_tid, NULL);
  pthread_join(dt_tid, NULL);
  CU_ASSERT_EQUAL(slow.result, 0);
  CU_ASSERT_EQUAL(atomic_load(&dt.done), 1);
  CU_ASSERT_EQUAL(atomic_load(&tm(a)->inside), 0);

  /* Still drained: the late write is still held. */
  sleep_ms(100);
  CU_ASSERT_EQUAL(atomic_load(&late.done), 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(a)->entered), 1);

  /* Swap inside the caller's drain, then resume: the late write runs on
   * the new device and never on the old one. */
  CU_ASSERT_EQUAL(vd_node_replace(n, b, &old), 0);
  CU_ASSERT_PTR_EQUAL(old, a);
  atomic_store(&tm(a)->retired, 1);
  sleep_ms(100);
  CU_ASSERT_EQUAL(atomic_load(&late.done), 0);  /* the caller's drain holds */
  vd_node_resume(n);
  pthread_join(wt_tid, NULL);
  CU_ASSERT_EQUAL(late.result, 0);
  CU_ASSERT_EQUAL(tm(b)->mem[0], 0x5a);
  CU_ASSERT_EQUAL(tm(a)->mem[0], 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(a)->violations), 0);

  CU_ASSERT_EQUAL(vd_close(old), 0);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
}

/* ---- flush ordering across the swap ---- */

static void
test_node_flush_across_swap(void)
{
  struct vd_dev *a = tmem_new(1 << 20), *b = tmem_new(1 << 20), *old = NULL;
  struct vd_node *n = NULL;
  uint8_t buf[4096];
  memset(buf, 1, sizeof buf);

  CU_ASSERT_FATAL(vd_node_new(a, &n) == 0);
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, sizeof buf, 0, 0), 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(a)->unflushed), 1);

  /* Writes acknowledged before the swap are durable once it returns, so
   * a flush acknowledged after it (on the new device) covers them. */
  CU_ASSERT_EQUAL(vd_node_replace(n, b, &old), 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(a)->unflushed), 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(a)->flushes), 1);

  /* A failed flush of the old device cancels the swap. */
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, sizeof buf, 0, 0), 0);
  atomic_store(&tm(b)->fail_flush, 1);
  struct vd_dev *back = NULL;
  CU_ASSERT_EQUAL(vd_node_replace(n, a, &back), -EIO);
  CU_ASSERT_PTR_NULL(back);
  CU_ASSERT_PTR_EQUAL(vd_node_dev(n), b);
  /* ... and the node is not left drained. */
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, sizeof buf, 4096, 0), 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(b)->unflushed), 2);
  atomic_store(&tm(b)->fail_flush, 0);
  CU_ASSERT_EQUAL(vd_node_flush(n), 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(b)->unflushed), 0);

  /* If the swap wrongly went ahead, the node owns A and B is ours. */
  CU_ASSERT_EQUAL(vd_close(back ? back : a), 0);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
}

/* ---- many writers and readers against a swapping thread ---- */

#define ST_THREADS 4
#define ST_BLOCKS 32            /* per thread */
#define ST_BS 4096
#define ST_SWAPS 300

struct stress {
  struct vd_node *node;
  atomic_int stop;
  atomic_long ops;
  atomic_int errors;          /* failed requests, lost or torn data */
};

struct writer {
  struct stress *st;
  int id;
  uint64_t seq[ST_BLOCKS];    /* last acknowledged sequence per block */
};

static uint64_t
st_off(int id, int blk)
{
  return ((uint64_t) id * ST_BLOCKS + (uint64_t) blk) * ST_BS;
}

/* Every 8-byte word of a block holds (id, block, seq): a torn block mixes
 * sequence numbers, a lost write shows an older one. */
static void
st_fill(uint64_t *w, int id, int blk, uint64_t seq)
{
  for (size_t i = 0; i < ST_BS / 8; i++)
    w[i] = ((uint64_t) id << 56) | ((uint64_t) blk << 40) | seq;
}

static bool
st_check(const uint64_t *w, int id, int blk, uint64_t seq)
{
  uint64_t want = ((uint64_t) id << 56) | ((uint64_t) blk << 40) | seq;
  for (size_t i = 0; i < ST_BS / 8; i++)
    if (w[i] != want)
      return false;
  return true;
}

static void *
writer_run(void *arg)
{
  struct writer *w = arg;
  struct stress *st = w->st;
  uint64_t buf[ST_BS / 8], back[ST_BS / 8];
  unsigned rnd = (unsigned) w->id * 2654435761u + 1;

  while (!atomic_load(&st->stop)) {
    rnd = rnd * 1103515245u + 12345u;
    int blk = (int) ((rnd >> 8) % ST_BLOCKS);
    uint64_t seq = w->seq[blk] + 1;
    st_fill(buf, w->id, blk, seq);
    unsigned fl = (rnd & 0x10000) ? VD_REQ_FUA : 0;
    if (vd_node_pwrite(st->node, buf, ST_BS, st_off(w->id, blk), fl) < 0) {
      atomic_fetch_add(&st->errors, 1);
      continue;
    }
    w->seq[blk] = seq;
    rnd = rnd * 1103515245u + 12345u;
    int rb = (int) ((rnd >> 8) % ST_BLOCKS);
    if (vd_node_pread(st->node, back, ST_BS, st_off(w->id, rb)) < 0 ||
        (w->seq[rb] && !st_check(back, w->id, rb, w->seq[rb])))
      atomic_fetch_add(&st->errors, 1);
    if ((rnd & 0xf000) == 0 && vd_node_flush(st->node) < 0)
      atomic_fetch_add(&st->errors, 1);
    atomic_fetch_add(&st->ops, 1);
  }
  return NULL;
}

static void
test_node_swap_stress(void)
{
  const uint64_t size = (uint64_t) ST_THREADS * ST_BLOCKS * ST_BS;
  struct vd_dev *dev[2] = { tmem_new(size), tmem_new(size) };
  struct stress st = { 0 };
  struct writer w[ST_THREADS];
  pthread_t tid[ST_THREADS];
  int cur = 0, bad_swaps = 0, unflushed = 0;

  CU_ASSERT_FATAL(vd_node_new(dev[0], &st.node) == 0);
  for (int i = 0; i < ST_THREADS; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].st = &st;
    w[i].id = i;
    pthread_create(&tid[i], NULL, writer_run, &w[i]);
  }

  /* The swapper: while drained, bring the other device up to date (both
   * are idle then), swap to it, retire the old one. */
  for (int s = 0; s < ST_SWAPS; s++) {
    struct vd_dev *old = NULL, *next = dev[1 - cur];
    vd_node_drain(st.node);
    if (atomic_load(&tm(dev[cur])->inside) != 0)
      bad_swaps++;
    memcpy(tm(next)->mem, tm(dev[cur])->mem, size);
    atomic_store(&tm(next)->retired, 0);
    if (vd_node_replace(st.node, next, &old) < 0 || old != dev[cur])
      bad_swaps++;
    atomic_store(&tm(dev[cur])->retired, 1);
    if (atomic_load(&tm(dev[cur])->unflushed) != 0)
      unflushed++;
    vd_node_resume(st.node);
    cur = 1 - cur;
    if (s % 16 == 0)
      sleep_ms(1);
  }
  sleep_ms(20);
  atomic_store(&st.stop, 1);
  for (int i = 0; i < ST_THREADS; i++)
    pthread_join(tid[i], NULL);

  CU_ASSERT_EQUAL(bad_swaps, 0);
  CU_ASSERT_EQUAL(unflushed, 0);
  CU_ASSERT_EQUAL(atomic_load(&st.errors), 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(dev[0])->violations), 0);
  CU_ASSERT_EQUAL(atomic_load(&tm(dev[1])->violations), 0);
  CU_ASSERT(atomic_load(&st.ops) > ST_SWAPS);
  /* No acknowledged write lost: the device in use holds every last one. */
  uint64_t back[ST_BS / 8];
  int lost = 0;
  for (int i = 0; i < ST_THREADS; i++)
    for (int b = 0; b < ST_BLOCKS; b++)
      if (w[i].seq[b] &&
          (vd_node_pread(st.node, back, ST_BS, st_off(i, b)) < 0 ||
           !st_check(back, i, b, w[i].seq[b])))
        lost++;
  CU_ASSERT_EQUAL(lost, 0);

  CU_ASSERT_EQUAL(vd_close(dev[1 - cur]), 0);
  CU_ASSERT_EQUAL(vd_node_free(st.node), 0);
}

/* ---- real images: a VHD, then a VHD differencing child on it ---- */

/* ---- write observers (vdisk.h "node write observers") ---- */

struct obs_log {
  atomic_long writes, discards, zeroes, flushes;
  atomic_long bytes;
  atomic_int fail;          /* return -ENOSPC while set */
  atomic_int bad_buf;       /* a write seen without its data */
  struct vd_bitmap *bm;     /* every observed range marked here */
};

static int
obs_fn(void *opaque, enum vd_obs_op op, const void *buf, uint64_t off,
       uint64_t len, int result)
{
  struct obs_log *l = opaque;
  (void) result;
  switch (op) {
  case VD_OBS_WRITE:
    atomic_fetch_add(&l->writes, 1);
    if (!buf)
      atomic_fetch_add(&l->bad_buf, 1);
    break;
  case VD_OBS_DISCARD: atomic_fetch_add(&l->discards, 1); break;
  case VD_OBS_ZEROES: atomic_fetch_add(&l->zeroes, 1); break;
  case VD_OBS_FLUSH: atomic_fetch_add(&l->flushes, 1); break;
  }
  atomic_fetch_add(&l->bytes, (long) len);
  if (l->bm && len)
    vd_bitmap_set(l->bm, off, len);
  return atomic_load(&l->fail) ? -ENOSPC : 0;
}

struct obs_writer {
  struct vd_node *node;
  int id;
  atomic_int *stop;
  long done;
};

/* Writes 4 KiB blocks of its own 64 KiB area until told to stop. */
static void *
obs_writer_run(void *arg)
{
  struct obs_writer *w = arg;
  uint8_t buf[4096];
  memset(buf, w->id + 1, sizeof buf);
  for (int i = 0; !atomic_load(w->stop); i++) {
    uint64_t off = (uint64_t) w->id * 65536 + (uint64_t) (i % 16) * 4096;
    if (vd_node_pwrite(w->node, buf, sizeof buf, off, 0) == 0)
      w->done++;
  }
  return NULL;
}

static void
test_node_observers(void)
{
  struct vd_node *n = NULL;
  CU_ASSERT_EQUAL_FATAL(vd_node_new(tmem_new(1 << 20), &n), 0);
  struct obs_log a = { 0 }, b = { 0 };
  struct vd_node_observer *oa = NULL, *ob = NULL;
  uint8_t buf[4096] = { 1 };

  /* Before any observer: nothing seen. */
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, 4096, 0, 0), 0);
  CU_ASSERT_EQUAL(vd_node_observer_add(n, NULL, &a, &oa), -EINVAL);
  CU_ASSERT_EQUAL_FATAL(vd_node_observer_add(n, obs_fn, &a, &oa), 0);
  CU_ASSERT_EQUAL(atomic_load(&a.writes), 0);

  /* Each write-type request is seen once, with its range; reads are not. */
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, 4096, 8192, 0), 0);
  CU_ASSERT_EQUAL(vd_node_pread(n, buf, 4096, 8192), 0);
  CU_ASSERT_EQUAL(vd_node_write_zeroes(n, 0, 512, 0), 0);
  CU_ASSERT_EQUAL(vd_node_flush(n), 0);
  CU_ASSERT_EQUAL(atomic_load(&a.writes), 1);
  CU_ASSERT_EQUAL(atomic_load(&a.zeroes) + atomic_load(&a.discards), 1);
  CU_ASSERT_EQUAL(atomic_load(&a.flushes), 1);
  CU_ASSERT_EQUAL(atomic_load(&a.bytes), 4096 + 512);
  CU_ASSERT_EQUAL(atomic_load(&a.bad_buf), 0);

  /* An observer's error fails a request that succeeded on the device. */
  CU_ASSERT_EQUAL_FATAL(vd_node_observer_add(n, obs_fn, &b, &ob), 0);
  atomic_store(&b.fail, 1);
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, 4096, 0, 0), -ENOSPC);
  CU_ASSERT_EQUAL(vd_node_flush(n), -ENOSPC);
  CU_ASSERT_EQUAL(atomic_load(&a.writes), 2);     /* both still called */
  CU_ASSERT_EQUAL(atomic_load(&b.writes), 1);
  atomic_store(&b.fail, 0);

  /* Removal: not seen any more; a foreign handle is refused. */
  CU_ASSERT_EQUAL(vd_node_observer_remove(n, ob), 0);
  struct vd_node *other = NULL;
  CU_ASSERT_EQUAL_FATAL(vd_node_new(tmem_new(1 << 20), &other), 0);
  CU_ASSERT_EQUAL(vd_node_observer_remove(other, oa), -EINVAL);
  CU_ASSERT_EQUAL(vd_node_observer_remove(other, NULL), 0);
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, 4096, 0, 0), 0);
  CU_ASSERT_EQUAL(atomic_load(&b.writes), 1);
  CU_ASSERT_EQUAL(atomic_load(&a.writes), 3);

  /* Under concurrent writers, an observer added while they run sees
   * every write that completes afterwards: count the writes from the
   * moment add returned to the moment remove returned by comparing the
   * writers' totals (each thread counts only completed writes). */
  struct vd_bitmap *bm = NULL;
  CU_ASSERT_EQUAL_FATAL(vd_bitmap_new(1 << 20, 4096, &bm), 0);
  struct obs_log c = { .bm = bm };
  struct vd_node_observer *oc = NULL;
  atomic_int stop = 0;
  struct obs_writer w[4];
  pthread_t t[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (struct obs_writer) { n, i, &stop, 0 };
    pthread_create(&t[i], NULL, obs_writer_run, &w[i]);
  }
  sleep_ms(20);
  CU_ASSERT_EQUAL_FATAL(vd_node_observer_add(n, obs_fn, &c, &oc), 0);
  sleep_ms(50);
  atomic_store(&stop, 1);
  long total = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(t[i], NULL);
    total += w[i].done;
  }
  long seen = atomic_load(&c.writes);
  CU_ASSERT_TRUE(seen > 0);
  CU_ASSERT_TRUE(seen <= total);
  /* After the writers stopped, the observer saw every one of their areas'
   * blocks being written (16 blocks each, written round-robin). */
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), 4 * 65536);
  CU_ASSERT_EQUAL(vd_node_observer_remove(n, oc), 0);
  long before = atomic_load(&c.writes);
  CU_ASSERT_EQUAL(vd_node_pwrite(n, buf, 4096, 0, 0), 0);
  CU_ASSERT_EQUAL(atomic_load(&c.writes), before);
  vd_bitmap_free(bm);

  /* vd_node_free frees the observers still attached (oa). */
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
  CU_ASSERT_EQUAL(vd_node_free(other), 0);
}

static char tmpdir[] = "/tmp/vdnode.XXXXXX";

static void
test_node_snapshot_chain(void)
{
  char base[64], child[64];
  snprintf(base, sizeof base, "%s/base.vhd", tmpdir);
  snprintf(child, sizeof child, "%s/snap.vhd", tmpdir);
  /* A size VHD geometry represents exactly (qemu-img's 64M example). */
  const uint64_t size = 131104ull * 512;
  struct vd_create_args ca = { .size = size };
  struct vd_dev *bd = NULL, *cd = NULL, *old = NULL;
  struct vd_node *n = NULL;
  struct stress st = { 0 };
  struct writer w[2];
  pthread_t tid[2];

  /* The swap done by hand, as vd_node_snapshot did before it existed
   * (tests/unit/test-snapshot.c tests that one): the base is opened
   * without the image lock, since this child opens it again (read-only)
   * as its parent while this handle is still the node's. */
  CU_ASSERT_FATAL(vd_create(base, "vpc", &ca) == 0);
  CU_ASSERT_FATAL(vd_open(base, "vpc", VD_OPEN_RDWR | VD_OPEN_NOLOCK,
                          &bd) == 0);
  CU_ASSERT_FATAL(vd_node_new(bd, &n) == 0);
  st.node = n;
  for (int i = 0; i < 2; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].st = &st;
    w[i].id = i;
    pthread_create(&tid[i], NULL, writer_run, &w[i]);
  }
  sleep_ms(100);

  /* The snapshot: drain, make the child over the flushed base, swap. */
  CU_ASSERT_EQUAL(vd_node_drain(n), 0);
  CU_ASSERT_EQUAL(vd_flush(vd_node_dev(n)), 0);
  struct vd_create_args cc = { .size = 0, .backing = base,
                               .backing_format = "vpc" };
  CU_ASSERT_EQUAL(vd_create(child, "vpc", &cc), 0);
  CU_ASSERT_EQUAL(vd_open(child, "vpc", VD_OPEN_RDWR, &cd), 0);
  if (cd)
    CU_ASSERT_EQUAL(vd_size(cd), size);
  int r = vd_node_replace(n, cd, &old);
  CU_ASSERT_EQUAL(r, 0);
  CU_ASSERT_PTR_EQUAL(old, bd);
  vd_node_resume(n);
  if (r < 0) {
    fprintf(stderr, "replace: %s\n", vd_error());
    vd_close(cd);
  }
  long before = atomic_load(&st.ops);
  CU_ASSERT_EQUAL(vd_close(old), 0);

  sleep_ms(200);
  atomic_store(&st.stop, 1);
  for (int i = 0; i < 2; i++)
    pthread_join(tid[i], NULL);
  CU_ASSERT_EQUAL(atomic_load(&st.errors), 0);
  CU_ASSERT(atomic_load(&st.ops) > before);   /* the child served I/O */
  CU_ASSERT_PTR_EQUAL(vd_node_dev(n), cd);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);

  /* Reopened from disk, the chain holds every acknowledged write. */
  CU_ASSERT_FATAL(vd_open(child, NULL, 0, &cd) == 0);
  uint64_t back[ST_BS / 8];
  int lost = 0;
  for (int i = 0; i < 2; i++)
    for (int b = 0; b < ST_BLOCKS; b++)
      if (w[i].seq[b] && (vd_pread(cd, back, ST_BS, st_off(i, b)) < 0 ||
                          !st_check(back, i, b, w[i].seq[b])))
        lost++;
  CU_ASSERT_EQUAL(lost, 0);
  vd_close(cd);
  unlink(child);
  unlink(base);
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "basic", test_node_basic },
    { "drain waits", test_node_drain_waits },
    { "flush across swap", test_node_flush_across_swap },
    { "swap stress", test_node_swap_stress },
    { "snapshot chain", test_node_snapshot_chain },
    { "write observers", test_node_observers },
    { NULL, NULL },
  };
  if (!mkdtemp(tmpdir))
    return 99;
  int r = cu_main("node", tests);
  rmdir(tmpdir);
  return r;
}
