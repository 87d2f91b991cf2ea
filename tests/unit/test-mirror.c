/* Unit tests for the live mirror (vdisk/mirror.c): a node over a dynamic
 * VHD serves writer threads while it is mirrored onto a raw file or a VHD;
 * every test then reads every byte of the result and compares it with
 * what the source must hold (a fixed pattern written before the start,
 * the writers' last acknowledged blocks, zeros elsewhere).  The live
 * commits (vdisk/commit-live.c) are tested here too, on VHD chains.
 *
 * No timing: loops are bounded by step counts, never by the clock. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "tests/unit/fault.h"
#include "vdisk/vdisk.h"

static char tmpdir[] = "/tmp/vdmirror.XXXXXX";

/* Layout of the source: [0, PAT_END) a pattern written before the mirror
 * starts; the writers' blocks from WR_BASE; zeros (never written) else. */
#define PAT_END (3u << 20)
#define WR_BASE (8u << 20)
#define WR_BS 4096u
#define WR_BLOCKS 256
#define WR_THREADS 2
/* Steps a test allows before it calls the mirror stuck (a bound, not a
 * clock: 16 MiB at 64 KiB per step is 256 steps per pass). */
#define MAX_STEPS 200000

static uint8_t
pat_byte(uint64_t off)
{
  return (uint8_t) ((off / 512) * 31 % 251 + 1);
}

struct shared {
  struct vd_node *node;
  atomic_int stop;
  atomic_long ops;
  atomic_long errors;
};

struct writer {
  struct shared *sh;
  int id;
  uint64_t seq[WR_BLOCKS];    /* last acknowledged sequence per block */
};

static uint64_t
wr_off(int id, int blk)
{
  return WR_BASE + ((uint64_t) id * WR_BLOCKS + (uint64_t) blk) * WR_BS;
}

static uint64_t
wr_word(int id, int blk, uint64_t seq)
{
  return ((uint64_t) (id + 1) << 56) | ((uint64_t) blk << 40) | seq;
}

static void *
writer_run(void *arg)
{
  struct writer *w = arg;
  struct shared *sh = w->sh;
  uint64_t buf[WR_BS / 8];
  unsigned rnd = (unsigned) w->id * 2654435761u + 7;
  while (!atomic_load(&sh->stop)) {
    rnd = rnd * 1103515245u + 12345u;
    int blk = (int) ((rnd >> 8) % WR_BLOCKS);
    uint64_t seq = w->seq[blk] + 1;
    for (size_t i = 0; i < WR_BS / 8; i++)
      buf[i] = wr_word(w->id, blk, seq);
    if (vd_node_pwrite(sh->node, buf, WR_BS, wr_off(w->id, blk), 0) < 0) {
      atomic_fetch_add(&sh->errors, 1);
      continue;
    }
    w->seq[blk] = seq;
    if ((rnd & 0x3f000) == 0 && vd_node_flush(sh->node) < 0)
      atomic_fetch_add(&sh->errors, 1);
    atomic_fetch_add(&sh->ops, 1);
  }
  return NULL;
}

/* Expected byte at OFF. */
static uint8_t
want_byte(const struct writer *w, uint64_t off)
{
  if (off < PAT_END)
    return pat_byte(off);
  if (off >= WR_BASE &&
      off < WR_BASE + (uint64_t) WR_THREADS * WR_BLOCKS * WR_BS) {
    uint64_t k = (off - WR_BASE) / WR_BS;
    int id = (int) (k / WR_BLOCKS), blk = (int) (k % WR_BLOCKS);
    if (!w || !w[id].seq[blk])
      return 0;
    uint64_t word = wr_word(id, blk, w[id].seq[blk]);
    return (uint8_t) (word >> (8 * (off % 8)));   /* little-endian host */
  }
  return 0;
}

/* Bytes of DEV that differ from what the writers W (NULL: none) left. */
static uint64_t
count_wrong(struct vd_dev *dev, const struct writer *w)
{
  const size_t chunk = 1u << 20;
  uint8_t *b = malloc(chunk);
  uint64_t wrong = 0, size = vd_size(dev);
  for (uint64_t off = 0; off < size; off += chunk) {
    size_t n = size - off < chunk ? (size_t) (size - off) : chunk;
    if (vd_pread(dev, b, n, off) < 0) {
      wrong += n;
      continue;
    }
    for (size_t i = 0; i < n; i++)
      if (b[i] != want_byte(w, off + i))
        wrong++;
  }
  free(b);
  return wrong;
}

/* A dynamic VHD source with the pattern, served by a fresh node. */
static struct vd_node *
make_source(const char *path)
{
  struct vd_create_args ca = { .size = 16u << 20 };
  struct vd_dev *d = NULL;
  struct vd_node *n = NULL;
  CU_ASSERT_FATAL(vd_create(path, "vpc", &ca) == 0);
  CU_ASSERT_FATAL(vd_open(path, "vpc", VD_OPEN_RDWR, &d) == 0);
  uint8_t *b = malloc(PAT_END);
  for (uint64_t i = 0; i < PAT_END; i++)
    b[i] = pat_byte(i);
  CU_ASSERT_FATAL(vd_pwrite(d, b, PAT_END, 0, 0) == 0);
  free(b);
  CU_ASSERT_FATAL(vd_node_new(d, &n) == 0);
  return n;
}

static void
start_writers(struct shared *sh, struct writer *w, pthread_t *tid)
{
  for (int i = 0; i < WR_THREADS; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].sh = sh;
    w[i].id = i;
    pthread_create(&tid[i], NULL, writer_run, &w[i]);
  }
}

static void
stop_writers(struct shared *sh, pthread_t *tid)
{
  atomic_store(&sh->stop, 1);
  for (int i = 0; i < WR_THREADS; i++)
    pthread_join(tid[i], NULL);
}

/* Step until ready (1) or error; returns the last step result. */
static int
step_until_ready(struct vd_mirror *m, uint64_t *done)
{
  int r = 0;
  for (long i = 0; i < MAX_STEPS; i++) {
    uint64_t total;
    r = vd_mirror_step(m, done, &total);
    if (r != 0)
      return r;
  }
  fprintf(stderr, "mirror: not ready after %d steps\n", MAX_STEPS);
  return -ETIMEDOUT;
}

/* Mirror a served source onto a new target of FORMAT while writers run,
 * complete, and check the pivoted node and the target file byte by
 * byte. */
static void
mirror_pivot(const char *format, bool write_blocking)
{
  char src[96], dst[96];
  snprintf(src, sizeof src, "%s/src.vhd", tmpdir);
  snprintf(dst, sizeof dst, "%s/dst.%s", tmpdir, format);
  struct vd_node *n = make_source(src);
  struct shared sh = { .node = n };
  struct writer w[WR_THREADS];
  pthread_t tid[WR_THREADS];
  start_writers(&sh, w, tid);

  struct vd_dev *t = NULL, *old = NULL;
  struct vd_mirror *m = NULL;
  CU_ASSERT_FATAL(vd_mirror_open_target(n, dst, format, true,
                                        VD_MIRROR_SYNC_FULL, 0, &t) == 0);
  struct vd_mirror_args a = { .sync = VD_MIRROR_SYNC_FULL,
                              .write_blocking = write_blocking };
  CU_ASSERT_FATAL(vd_mirror_start(n, t, &a, &m) == 0);
  uint64_t done = 0;
  int r = step_until_ready(m, &done);
  CU_ASSERT_EQUAL(r, 1);
  CU_ASSERT(done >= PAT_END);
  long before = atomic_load(&sh.ops);
  r = vd_mirror_complete(m, &old);
  CU_ASSERT_EQUAL(r, 0);
  if (r < 0)
    fprintf(stderr, "complete: %s\n", vd_error());
  CU_ASSERT_PTR_EQUAL(vd_node_dev(n), t);
  vd_mirror_free(m);
  CU_ASSERT_EQUAL(vd_close(old), 0);
  /* The writers go on, now on the target, but only briefly: rewriting
   * every block after the pivot would hide a write the mirror lost. */
  while (atomic_load(&sh.ops) < before + 20 && !atomic_load(&sh.errors))
    sched_yield();
  stop_writers(&sh, tid);
  CU_ASSERT_EQUAL(atomic_load(&sh.errors), 0);
  CU_ASSERT_EQUAL(count_wrong(vd_node_dev(n), w), 0);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);

  /* Reopened from disk (another reader: qemu-img compare does this in
   * tests/integration/live-mirror.sh). */
  struct vd_dev *d = NULL;
  CU_ASSERT_FATAL(vd_open(dst, format, 0, &d) == 0);
  CU_ASSERT_EQUAL(count_wrong(d, w), 0);
  vd_close(d);
  unlink(src);
  unlink(dst);
}

static void
test_mirror_raw(void)
{
  mirror_pivot("raw", false);
}

static void
test_mirror_vhd(void)
{
  mirror_pivot("vpc", false);
}

static void
test_mirror_write_blocking(void)
{
  mirror_pivot("vpc", true);
}

/* Cancel before ready: the node still serves the source, which holds
 * exactly its data; the target is a partial copy. */
static void
test_mirror_cancel_before_ready(void)
{
  char src[96], dst[96];
  snprintf(src, sizeof src, "%s/src.vhd", tmpdir);
  snprintf(dst, sizeof dst, "%s/dst.raw", tmpdir);
  struct vd_node *n = make_source(src);
  struct vd_dev *s = vd_node_dev(n), *t = NULL;
  struct vd_mirror *m = NULL;
  CU_ASSERT_FATAL(vd_mirror_open_target(n, dst, "raw", true,
                                        VD_MIRROR_SYNC_FULL, 0, &t) == 0);
  struct vd_mirror_args a = { .granularity = 65536, .buf_size = 65536 };
  CU_ASSERT_FATAL(vd_mirror_start(n, t, &a, &m) == 0);
  uint64_t done = 0;
  CU_ASSERT_EQUAL(vd_mirror_step(m, &done, NULL), 0);   /* the scan */
  CU_ASSERT_EQUAL(vd_mirror_step(m, &done, NULL), 0);   /* one copy */
  CU_ASSERT_EQUAL(done, 65536);
  struct vd_dev *old = NULL;
  CU_ASSERT_EQUAL(vd_mirror_complete(m, &old), -EAGAIN);
  CU_ASSERT_EQUAL(vd_mirror_cancel(m), 0);
  vd_mirror_free(m);
  CU_ASSERT_PTR_EQUAL(vd_node_dev(n), s);
  /* Writes after the cancel reach the source only. */
  uint8_t blk[4096];
  memset(blk, 0, sizeof blk);
  CU_ASSERT_EQUAL(vd_node_pwrite(n, blk, sizeof blk, 0, 0), 0);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
  struct vd_dev *d = NULL;
  CU_ASSERT_FATAL(vd_open(dst, "raw", 0, &d) == 0);
  uint8_t b[4096];
  CU_ASSERT_EQUAL(vd_pread(d, b, sizeof b, 0), 0);
  CU_ASSERT_EQUAL(b[100], pat_byte(100));    /* the copied granule */
  CU_ASSERT_EQUAL(vd_pread(d, b, sizeof b, PAT_END - 4096), 0);
  CU_ASSERT_EQUAL(b[0], 0);                  /* never copied */
  vd_close(d);
  CU_ASSERT_FATAL(vd_open(src, "vpc", 0, &d) == 0);
  uint8_t want[4096];
  CU_ASSERT_EQUAL(vd_pread(d, b, sizeof b, 0), 0);
  CU_ASSERT_EQUAL(memcmp(b, blk, sizeof b), 0);
  CU_ASSERT_EQUAL(vd_pread(d, b, sizeof b, 4096), 0);
  for (size_t i = 0; i < sizeof want; i++)
    want[i] = pat_byte(4096 + i);
  CU_ASSERT_EQUAL(memcmp(b, want, sizeof b), 0);
  vd_close(d);
  unlink(src);
  unlink(dst);
}

/* Cancel after ready, with writes the mirror has not copied yet: the
 * target becomes a full consistent copy, the node keeps the source. */
static void
test_mirror_cancel_after_ready(void)
{
  char src[96], dst[96];
  snprintf(src, sizeof src, "%s/src.vhd", tmpdir);
  snprintf(dst, sizeof dst, "%s/dst.vhd", tmpdir);
  struct vd_node *n = make_source(src);
  struct vd_dev *s = vd_node_dev(n), *t = NULL;
  struct shared sh = { .node = n };
  struct writer w[WR_THREADS];
  pthread_t tid[WR_THREADS];
  struct vd_mirror *m = NULL;
  CU_ASSERT_FATAL(vd_mirror_open_target(n, dst, "vpc", true,
                                        VD_MIRROR_SYNC_FULL, 0, &t) == 0);
  CU_ASSERT_FATAL(vd_mirror_start(n, t, NULL, &m) == 0);
  CU_ASSERT_EQUAL(step_until_ready(m, NULL), 1);
  /* Writes the mirror only marks: they must reach the target through the
   * cancel's final copy.  The writers start only now: running during the
   * copy, they could outpace it on a loaded machine, and the stall rule
   * would switch to write-blocking, where no write stays dirty (the pivot
   * tests cover writes during the copy). */
  start_writers(&sh, w, tid);
  long at = atomic_load(&sh.ops);
  while (atomic_load(&sh.ops) < at + 2000 && !atomic_load(&sh.errors))
    sched_yield();
  stop_writers(&sh, tid);
  struct vd_mirror_status st;
  vd_mirror_status(m, &st);
  CU_ASSERT(st.ready);
  CU_ASSERT(!st.write_blocking);
  CU_ASSERT(st.dirty > 0);
  CU_ASSERT_EQUAL(vd_mirror_cancel(m), 0);
  vd_mirror_free(m);
  CU_ASSERT_PTR_EQUAL(vd_node_dev(n), s);
  CU_ASSERT_EQUAL(atomic_load(&sh.errors), 0);
  CU_ASSERT_EQUAL(count_wrong(s, w), 0);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
  struct vd_dev *d = NULL;
  CU_ASSERT_FATAL(vd_open(dst, "vpc", 0, &d) == 0);
  CU_ASSERT_EQUAL(count_wrong(d, w), 0);
  vd_close(d);
  unlink(src);
  unlink(dst);
}

/* A background mirror that a writer keeps dirtying never sees its dirty
 * count shrink between passes: it switches itself to write-blocking, says
 * so, and then converges while the writer goes on.  The test writes
 * between steps itself (no threads), so the stall is certain, not a
 * matter of timing. */
static void
test_mirror_stall_switch(void)
{
  char src[96], dst[96];
  snprintf(src, sizeof src, "%s/src.vhd", tmpdir);
  snprintf(dst, sizeof dst, "%s/dst.raw", tmpdir);
  struct vd_node *n = make_source(src);
  struct vd_dev *t = NULL, *old = NULL;
  struct vd_mirror *m = NULL;
  CU_ASSERT_FATAL(vd_mirror_open_target(n, dst, "raw", true,
                                        VD_MIRROR_SYNC_FULL, 0, &t) == 0);
  struct vd_mirror_args a = { .stall_passes = 3 };
  CU_ASSERT_FATAL(vd_mirror_start(n, t, &a, &m) == 0);
  uint8_t *pat = malloc(65536);
  for (size_t i = 0; i < 65536; i++)
    pat[i] = pat_byte(65536 + i);
  struct vd_mirror_status st;
  int r = 0;
  long i;
  for (i = 0; i < MAX_STEPS; i++) {
    /* The same pattern again: the data stays, the bit comes back. */
    CU_ASSERT_EQUAL_FATAL(vd_node_pwrite(n, pat, 65536, 65536, 0), 0);
    r = vd_mirror_step(m, NULL, NULL);
    if (r != 0)
      break;
  }
  free(pat);
  CU_ASSERT_EQUAL(r, 1);
  vd_mirror_status(m, &st);
  CU_ASSERT(st.switched);
  CU_ASSERT(st.write_blocking);
  CU_ASSERT_EQUAL(vd_mirror_complete(m, &old), 0);
  vd_mirror_free(m);
  vd_close(old);
  CU_ASSERT_EQUAL(count_wrong(vd_node_dev(n), NULL), 0);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
  unlink(src);
  unlink(dst);
}

/* A target that fails its writes: the step fails with the error (the
 * job's BLOCK_JOB_ERROR), the guest's writes keep succeeding, in
 * write-blocking mode too, and the source holds every byte. */
static void
target_fails(bool write_blocking)
{
  char src[96], dst[96];
  snprintf(src, sizeof src, "%s/src.vhd", tmpdir);
  snprintf(dst, sizeof dst, "%s/dst.raw", tmpdir);
  struct vd_node *n = make_source(src);
  struct vd_dev *s = vd_node_dev(n), *t = NULL;
  struct vd_create_args ca = { .size = vd_node_size(n) };
  CU_ASSERT_FATAL(vd_create(dst, "raw", &ca) == 0);
  struct vd_fault *f = vd_fault_attach(dst);
  CU_ASSERT_FATAL(f != NULL);
  struct vd_open_args oa = { .format = "raw", .flags = VD_OPEN_RDWR,
                             .filter = "fault" };
  CU_ASSERT_FATAL(vd_open_opts(dst, &oa, &t) == 0);
  struct vd_mirror *m = NULL;
  struct vd_mirror_args a = { .write_blocking = write_blocking };
  CU_ASSERT_FATAL(vd_mirror_start(n, t, &a, &m) == 0);
  struct vd_fault_cfg fc = { .mode = VD_FAULT_FAIL_ALL, .writes = true };
  vd_fault_set(f, &fc);
  struct shared sh = { .node = n };
  struct writer w[WR_THREADS];
  pthread_t tid[WR_THREADS];
  start_writers(&sh, w, tid);
  /* Guest writes while the target fails, before the job notices. */
  while (atomic_load(&sh.ops) < 200 && !atomic_load(&sh.errors))
    sched_yield();
  int r = step_until_ready(m, NULL);
  CU_ASSERT(r < 0 && r != -ETIMEDOUT);
  struct vd_mirror_status st;
  vd_mirror_status(m, &st);
  CU_ASSERT(!st.ready);
  CU_ASSERT_EQUAL(vd_mirror_cancel(m), 0);
  vd_mirror_free(m);
  long at = atomic_load(&sh.ops);
  while (atomic_load(&sh.ops) < at + 500 && !atomic_load(&sh.errors))
    sched_yield();
  stop_writers(&sh, tid);
  CU_ASSERT_EQUAL(atomic_load(&sh.errors), 0);
  CU_ASSERT_PTR_EQUAL(vd_node_dev(n), s);
  CU_ASSERT_EQUAL(count_wrong(s, w), 0);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
  vd_fault_detach(f);
  unlink(src);
  unlink(dst);
}

static void
test_mirror_target_error(void)
{
  target_fails(false);
}

static void
test_mirror_target_error_blocking(void)
{
  target_fails(true);
}

/* A target whose size differs is refused before anything happens. */
static void
test_mirror_size_mismatch(void)
{
  char src[96], dst[96];
  snprintf(src, sizeof src, "%s/src.vhd", tmpdir);
  snprintf(dst, sizeof dst, "%s/dst.raw", tmpdir);
  struct vd_node *n = make_source(src);
  struct vd_create_args ca = { .size = vd_node_size(n) + 4096 };
  CU_ASSERT_FATAL(vd_create(dst, "raw", &ca) == 0);
  struct vd_dev *t = NULL;
  CU_ASSERT_EQUAL(vd_mirror_open_target(n, dst, "raw", false,
                                        VD_MIRROR_SYNC_FULL, 0, &t), -EINVAL);
  CU_ASSERT_PTR_NULL(t);
  /* absolute-paths never writes over an existing file. */
  CU_ASSERT(vd_mirror_open_target(n, dst, "raw", true, VD_MIRROR_SYNC_FULL,
                                  0, &t) < 0);
  /* An NBD export is opened, never created (nothing is connected to). */
  CU_ASSERT_EQUAL(vd_mirror_open_target(n, "nbd+unix:///x?socket=/nonexistent",
                                        NULL, true, VD_MIRROR_SYNC_FULL, 0,
                                        &t), -EINVAL);
  CU_ASSERT_PTR_NULL(t);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
  unlink(src);
  unlink(dst);
}

/* Write into the image PATH, opened alone (its chain below it read-only),
 * LEN bytes at OFF: zeros through write_zeroes (V 0), the pattern (V -1)
 * or byte V. */
static void
fill(const char *path, uint64_t off, size_t len, int v)
{
  struct vd_dev *d = NULL;
  CU_ASSERT_FATAL(vd_open(path, "vpc", VD_OPEN_RDWR, &d) == 0);
  uint8_t *b = malloc(len);
  for (size_t i = 0; i < len; i++)
    b[i] = v < 0 ? pat_byte(off + i) : (uint8_t) v;
  CU_ASSERT_EQUAL(v == 0 ? vd_write_zeroes(d, off, len, 0)
                         : vd_pwrite(d, b, len, off, 0), 0);
  free(b);
  CU_ASSERT_EQUAL(vd_close(d), 0);
}

/* A differencing child CHILD of PARENT, as vdtool create -b makes it. */
static void
make_child(const char *child, const char *parent)
{
  struct vd_create_args cc = { .backing = parent, .backing_format = "vpc" };
  CU_ASSERT_FATAL(vd_create(child, "vpc", &cc) == 0);
}

/* A node serving the image PATH (and its chain), writable. */
static struct vd_node *
serve(const char *path)
{
  struct vd_dev *d = NULL;
  struct vd_node *n = NULL;
  CU_ASSERT_FATAL(vd_open(path, "vpc", VD_OPEN_RDWR, &d) == 0);
  CU_ASSERT_FATAL(vd_node_new(d, &n) == 0);
  return n;
}

/* Live commit of the active layer: base.vhd holds the pattern, top.vhd
 * (a child made with vd_create -b, as vdtool create -b) is served and
 * written; the commit mirrors top into base and pivots onto base, which
 * then holds every byte and checks clean. */
static void
test_commit_active(void)
{
  char base[96], top[96];
  snprintf(base, sizeof base, "%s/base.vhd", tmpdir);
  snprintf(top, sizeof top, "%s/top.vhd", tmpdir);
  struct vd_node *bn = make_source(base);
  CU_ASSERT_EQUAL(vd_node_free(bn), 0);
  make_child(top, base);
  struct vd_dev *old = NULL;
  struct vd_node *n = serve(top);
  struct shared sh = { .node = n };
  struct writer w[WR_THREADS];
  pthread_t tid[WR_THREADS];
  start_writers(&sh, w, tid);
  /* Writes before the start reach base only through the commit's scan. */
  while (atomic_load(&sh.ops) < 3000 && !atomic_load(&sh.errors))
    sched_yield();

  struct vd_mirror *m = NULL;
  /* Only the active layer can be the top. */
  CU_ASSERT_EQUAL(vd_commit_start(n, base, NULL, NULL, &m), -ENOTSUP);
  CU_ASSERT_EQUAL(vd_commit_start(n, top, "/nonexistent", NULL, &m),
                  -ENOENT);
  CU_ASSERT_FATAL(vd_commit_start(n, top, base, NULL, &m) == 0);
  CU_ASSERT_EQUAL(step_until_ready(m, NULL), 1);
  long before = atomic_load(&sh.ops);
  int r = vd_mirror_complete(m, &old);
  CU_ASSERT_EQUAL(r, 0);
  if (r < 0)
    fprintf(stderr, "commit complete: %s\n", vd_error());
  CU_ASSERT_PTR_NULL(old);
  vd_mirror_free(m);
  while (atomic_load(&sh.ops) < before + 20 && !atomic_load(&sh.errors))
    sched_yield();
  stop_writers(&sh, tid);
  CU_ASSERT_EQUAL(atomic_load(&sh.errors), 0);
  struct vd_info info;
  CU_ASSERT_EQUAL(vd_node_get_info(n, &info), 0);
  CU_ASSERT_STRING_EQUAL(info.backing, "");        /* base: no parent */
  CU_ASSERT_FALSE(info.read_only);
  CU_ASSERT_EQUAL(count_wrong(vd_node_dev(n), w), 0);
  /* The base is locked again: a second writer is refused. */
  struct vd_dev *d = NULL;
  CU_ASSERT(vd_open(base, "vpc", VD_OPEN_RDWR, &d) < 0);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
  CU_ASSERT_FATAL(vd_open(base, "vpc", 0, &d) == 0);
  CU_ASSERT_EQUAL(count_wrong(d, w), 0);
  vd_close(d);
  struct vd_check_report rep = { 0 };
  CU_ASSERT_EQUAL(vd_check(base, "vpc", 0, &rep), 0);
  CU_ASSERT_EQUAL(rep.corruptions + rep.leaks + rep.check_errors, 0);
  unlink(top);
  unlink(base);
}

/* The file the device DEPTH levels below the node's active layer is. */
static const char *
chain_path(struct vd_node *n, int depth)
{
  struct vd_dev *d = vd_node_dev(n);
  while (d && depth-- > 0)
    d = vd_backing_dev(d);
  return d ? vd_path(d) : "";
}

/* Run an intermediate commit to its end; returns the last step result. */
static int
commit_mid(struct vd_node *n, const char *top, const char *base)
{
  struct vd_commit *c = NULL;
  int r = vd_commit_mid_start(n, top, base, &c);
  if (r < 0) {
    fprintf(stderr, "commit start: %s\n", vd_error());
    return r;
  }
  for (long i = 0; i < MAX_STEPS && r == 0; i++) {
    uint64_t done = 0, total = 0;
    r = vd_commit_mid_step(c, &done, &total);
  }
  if (r < 0)
    fprintf(stderr, "commit step: %s\n", vd_error());
  vd_commit_mid_free(c);
  return r;
}

/* Intermediate commits on a 4-image chain base <- mid1 <- mid2 <- top
 * while writers write the active layer (top): first mid1 into base (above
 * is mid2, read-only), then mid2 into base (above is top, the active
 * layer).  The layers cover each other so that only the merged view is
 * the pattern: base holds junk under mid1's pattern and mid1 junk under
 * mid2's, and mid1 zeros over base's junk.  After each commit the node
 * reads every byte right; at the end the chain on disk is top <- base,
 * base alone holds the pattern, and every image checks clean.  Then the
 * errors, and a cancel that leaves the chain and the base as they were. */
static void
test_commit_intermediate(void)
{
  char base[96], mid1[96], mid2[96], top[96], nosuch[96];
  snprintf(base, sizeof base, "%s/base.vhd", tmpdir);
  snprintf(mid1, sizeof mid1, "%s/mid1.vhd", tmpdir);
  snprintf(mid2, sizeof mid2, "%s/mid2.vhd", tmpdir);
  snprintf(top, sizeof top, "%s/top.vhd", tmpdir);
  snprintf(nosuch, sizeof nosuch, "%s/nosuch.vhd", tmpdir);
  CU_ASSERT_EQUAL(vd_node_free(make_source(base)), 0);
  fill(base, 1u << 20, 1u << 20, 0x55);       /* under mid1's pattern */
  fill(base, 5u << 20, 1u << 20, 0xaa);       /* under mid1's zeros */
  make_child(mid1, base);
  fill(mid1, 1u << 20, 1u << 20, -1);
  fill(mid1, 5u << 20, 1u << 20, 0);
  fill(mid1, 2u << 20, 1u << 20, 0x77);       /* under mid2's pattern */
  make_child(mid2, mid1);
  fill(mid2, 2u << 20, 1u << 20, -1);
  make_child(top, mid2);

  struct vd_node *n = serve(top);
  CU_ASSERT_EQUAL(count_wrong(vd_node_dev(n), NULL), 0);
  struct shared sh = { .node = n };
  struct writer w[WR_THREADS];
  pthread_t tid[WR_THREADS];
  start_writers(&sh, w, tid);
  while (atomic_load(&sh.ops) < 1000 && !atomic_load(&sh.errors))
    sched_yield();

  /* The errors: nothing starts, nothing changes. */
  struct vd_commit *c = NULL;
  CU_ASSERT_EQUAL(vd_commit_mid_start(n, nosuch, base, &c), -ENOENT);
  CU_ASSERT_EQUAL(vd_commit_mid_start(n, mid1, mid1, &c), -EINVAL);
  CU_ASSERT_EQUAL(vd_commit_mid_start(n, base, mid1, &c), -ENOENT);
  CU_ASSERT_EQUAL(vd_commit_mid_start(n, base, NULL, &c), -EINVAL);
  CU_ASSERT_EQUAL(vd_commit_mid_start(n, top, base, &c), -EINVAL);
  CU_ASSERT_PTR_NULL(c);
  /* A cancel midway: the chain stays, the base is read-only again. */
  CU_ASSERT_FATAL(vd_commit_mid_start(n, mid2, base, &c) == 0);
  CU_ASSERT_EQUAL(vd_commit_mid_step(c, NULL, NULL), 0);
  vd_commit_mid_cancel(c);
  vd_commit_mid_free(c);
  CU_ASSERT_STRING_EQUAL(chain_path(n, 3), base);
  CU_ASSERT_TRUE(vd_is_read_only(vd_backing_dev(vd_backing_dev(
    vd_backing_dev(vd_node_dev(n))))));

  /* mid1 into base, under the read-only mid2. */
  CU_ASSERT_EQUAL(commit_mid(n, mid1, base), 1);
  CU_ASSERT_STRING_EQUAL(chain_path(n, 1), mid2);
  CU_ASSERT_STRING_EQUAL(chain_path(n, 2), base);
  CU_ASSERT_STRING_EQUAL(chain_path(n, 3), "");
  CU_ASSERT_TRUE(vd_is_read_only(vd_backing_dev(vd_node_dev(n))));
  /* mid2 into base, under the active layer (the default base). */
  CU_ASSERT_EQUAL(commit_mid(n, mid2, NULL), 1);
  CU_ASSERT_STRING_EQUAL(chain_path(n, 1), base);
  CU_ASSERT_STRING_EQUAL(chain_path(n, 2), "");

  long before = atomic_load(&sh.ops);
  while (atomic_load(&sh.ops) < before + 200 && !atomic_load(&sh.errors))
    sched_yield();
  stop_writers(&sh, tid);
  CU_ASSERT_EQUAL(atomic_load(&sh.errors), 0);
  CU_ASSERT_EQUAL(count_wrong(vd_node_dev(n), w), 0);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);

  /* On disk: top's backing file is base, and the chain reads right. */
  struct vd_dev *d = NULL;
  CU_ASSERT_FATAL(vd_open(top, "vpc", 0, &d) == 0);
  CU_ASSERT_STRING_EQUAL(vd_path(vd_backing_dev(d)), base);
  CU_ASSERT_EQUAL(count_wrong(d, w), 0);
  vd_close(d);
  CU_ASSERT_FATAL(vd_open(base, "vpc", 0, &d) == 0);
  CU_ASSERT_EQUAL(count_wrong(d, NULL), 0);
  vd_close(d);
  const char *all[] = { base, mid1, mid2, top };
  for (int i = 0; i < 4; i++) {
    struct vd_check_report rep = { 0 };
    CU_ASSERT_EQUAL(vd_check(all[i], "vpc", 0, &rep), 0);
    CU_ASSERT_EQUAL(rep.corruptions + rep.leaks + rep.check_errors, 0);
  }
  for (int i = 0; i < 4; i++)
    unlink(all[i]);
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "pivot to raw under writes", test_mirror_raw },
    { "pivot to vhd under writes", test_mirror_vhd },
    { "write-blocking under writes", test_mirror_write_blocking },
    { "cancel before ready", test_mirror_cancel_before_ready },
    { "cancel after ready", test_mirror_cancel_after_ready },
    { "stall switches to write-blocking", test_mirror_stall_switch },
    { "target error", test_mirror_target_error },
    { "target error, write-blocking", test_mirror_target_error_blocking },
    { "size mismatch", test_mirror_size_mismatch },
    { "commit of the active layer", test_commit_active },
    { "intermediate commit under writes", test_commit_intermediate },
    { NULL, NULL },
  };
  if (!mkdtemp(tmpdir))
    return 99;
  int r = cu_main("mirror", tests);
  rmdir(tmpdir);
  return r;
}
