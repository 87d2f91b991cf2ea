/* Unit tests for live snapshots (vdisk/snapshot.c, vd_node_snapshot) and
 * in-place reopen (vd_reopen), on real image files.
 *
 * The load: writer threads, each owning a region of the node, write
 * random data at random places and keep a model of what their region
 * must read; they read back as they go.  The snapshots happen while they
 * write.  Afterwards the node, and the chain reopened from disk, must
 * read exactly the model; each image that became a parent must not have
 * changed since (checksum of the whole file); the image locks must be
 * what the rules say (a parent shared, the top exclusive). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/driver.h"
#include "vdisk/io.h"
#include "vdisk/vdisk.h"

#define NW 4                          /* writer threads */
#define REGION (4u << 20)             /* bytes each writer owns */
#define DISK ((uint64_t) NW * REGION)

static char tmpdir[] = "/tmp/vdsnap.XXXXXX";

static void
path_in(char *buf, size_t len, const char *name)
{
  snprintf(buf, len, "%s/%s", tmpdir, name);
}

static void
nap(int ms)
{
  struct timespec ts = { ms / 1000, (long) (ms % 1000) * 1000000L };
  nanosleep(&ts, NULL);
}

/* FNV-1a over the whole file: "unchanged" for a parent. */
static uint64_t
file_sum(const char *path)
{
  FILE *f = fopen(path, "rb");
  uint64_t h = 1469598103934665603ull;
  if (!f)
    return 0;
  int c;
  while ((c = getc(f)) != EOF)
    h = (h ^ (uint64_t) c) * 1099511628211ull;
  fclose(f);
  return h;
}

/* Whether another open can take the image's shared read lock (true while
 * nobody holds it writable). */
static bool
can_share(const char *path)
{
  struct vd_dev *d = NULL;
  int r = vd_open(path, NULL, 0, &d);
  vd_close(d);
  return r == 0;
}

/* ---- the load ---- */

struct load {
  struct vd_node *node;
  atomic_int stop;
  atomic_int errors;
  atomic_int phase;              /* bumped by the test after each snapshot */
};

struct writer {
  struct load *ld;
  int id;
  uint8_t *model;                /* REGION bytes: what the region must read */
  long writes[4];                /* acknowledged writes per phase */
  pthread_t tid;
};

static void *
writer_main(void *arg)
{
  struct writer *w = arg;
  uint64_t base = (uint64_t) w->id * REGION;
  uint8_t *buf = malloc(64 << 10), *back = malloc(64 << 10);
  uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t) (w->id + 1);

  while (buf && back && !atomic_load(&w->ld->stop)) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    size_t len = (size_t) (1 + x % 16) * 4096;
    uint64_t off = (x >> 8) % (REGION / 4096) * 4096;
    if (off + len > REGION)
      off = REGION - len;
    for (size_t i = 0; i < len; i += 8) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      memcpy(buf + i, &x, 8);
    }
    int phase = atomic_load(&w->ld->phase);
    if (vd_node_pwrite(w->ld->node, buf, len, base + off,
                       (x & 7) == 0 ? VD_REQ_FUA : 0) < 0) {
      fprintf(stderr, "writer %d: %s\n", w->id, vd_error());
      atomic_fetch_add(&w->ld->errors, 1);
      break;
    }
    memcpy(w->model + off, buf, len);
    __atomic_add_fetch(&w->writes[phase], 1, __ATOMIC_RELAXED);
    uint64_t roff = (x >> 20) % (REGION / 4096) * 4096;
    size_t rlen = roff + len > REGION ? REGION - roff : len;
    if (vd_node_pread(w->ld->node, back, rlen, base + roff) < 0 ||
        memcmp(back, w->model + roff, rlen) != 0) {
      atomic_fetch_add(&w->ld->errors, 1);
      break;
    }
    if ((x & 31) == 0 && vd_node_flush(w->ld->node) < 0)
      atomic_fetch_add(&w->ld->errors, 1);
  }
  free(buf);
  free(back);
  return NULL;
}

static void
load_start(struct load *ld, struct writer *w)
{
  for (int i = 0; i < NW; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].ld = ld;
    w[i].id = i;
    w[i].model = calloc(1, REGION);
    CU_ASSERT_FATAL(w[i].model != NULL);
    pthread_create(&w[i].tid, NULL, writer_main, &w[i]);
  }
}

/* Wait (at most 30 s: a loaded machine may not run a writer for a while)
 * until every writer has had a write acknowledged in PHASE. */
static void
load_wait_phase(struct writer *w, int phase)
{
  for (int t = 0; t < 3000; t++) {
    int i = 0;
    while (i < NW && __atomic_load_n(&w[i].writes[phase], __ATOMIC_RELAXED))
      i++;
    if (i == NW)
      return;
    nap(10);
  }
}

static void
load_stop(struct load *ld, struct writer *w)
{
  atomic_store(&ld->stop, 1);
  for (int i = 0; i < NW; i++)
    pthread_join(w[i].tid, NULL);
}

/* Number of writers' regions that DEV (or the node when DEV is NULL)
 * does not read exactly as their model. */
static int
mismatches(struct vd_node *n, struct vd_dev *dev, struct writer *w)
{
  uint8_t *buf = malloc(REGION);
  int bad = 0;
  for (int i = 0; i < NW; i++) {
    int r = n ? vd_node_pread(n, buf, REGION, (uint64_t) i * REGION)
              : vd_pread(dev, buf, REGION, (uint64_t) i * REGION);
    if (r < 0 || memcmp(buf, w[i].model, REGION) != 0)
      bad++;
  }
  free(buf);
  return bad;
}

static void
check_image(const char *path)
{
  struct vd_check_report rep = { 0 };
  CU_ASSERT_EQUAL(vd_check(path, "vpc", 0, &rep), 0);
  CU_ASSERT_EQUAL(rep.corruptions, 0);
  CU_ASSERT_EQUAL(rep.leaks, 0);
  CU_ASSERT_EQUAL(rep.check_errors, 0);
}

/* ---- tests ---- */

/* Two snapshots of a raw export (multi-connection) while four threads
 * write: nothing written before or after is lost, each old top is left
 * unchanged from its snapshot on and holds only a shared lock, the chain
 * reopened from disk reads the same and checks clean. */
static void
test_snapshot_under_load(void)
{
  char base[PATH_MAX], s1[PATH_MAX], s2[PATH_MAX];
  path_in(base, sizeof base, "base.raw");
  path_in(s1, sizeof s1, "s1.vhd");
  path_in(s2, sizeof s2, "s2.vhd");
  struct vd_create_args ca = { .size = DISK };
  struct vd_dev *bd = NULL;
  struct vd_node *n = NULL;
  struct load ld = { 0 };
  struct writer w[NW];

  CU_ASSERT_FATAL(vd_create(base, "raw", &ca) == 0);
  CU_ASSERT_FATAL(vd_open(base, "raw", VD_OPEN_RDWR, &bd) == 0);
  CU_ASSERT_FATAL(vd_node_new(bd, &n) == 0);
  CU_ASSERT(vd_node_can_multi_conn(n));
  CU_ASSERT(!can_share(base));          /* writable: exclusive */
  ld.node = n;
  load_start(&ld, w);
  load_wait_phase(w, 0);

  int r = vd_node_snapshot(n, s1, "vhd", 0);
  if (r < 0)
    fprintf(stderr, "snapshot 1: %s\n", vd_error());
  CU_ASSERT_EQUAL(r, 0);
  uint64_t base_sum = file_sum(base);
  atomic_store(&ld.phase, 1);
  CU_ASSERT(can_share(base));           /* a parent: shared */
  CU_ASSERT(!can_share(s1));
  load_wait_phase(w, 1);

  r = vd_node_snapshot(n, s2, NULL, 0);
  if (r < 0)
    fprintf(stderr, "snapshot 2: %s\n", vd_error());
  CU_ASSERT_EQUAL(r, 0);
  uint64_t s1_sum = file_sum(s1);
  atomic_store(&ld.phase, 2);
  CU_ASSERT(can_share(s1));
  CU_ASSERT(!can_share(s2));
  load_wait_phase(w, 2);
  load_stop(&ld, w);

  CU_ASSERT_EQUAL(atomic_load(&ld.errors), 0);
  for (int i = 0; i < NW; i++)
    for (int p = 0; p < 3; p++)
      CU_ASSERT(w[i].writes[p] > 0);    /* writes in every phase */
  CU_ASSERT_EQUAL(mismatches(n, NULL, w), 0);
  CU_ASSERT_EQUAL(vd_node_flush(n), 0);
  CU_ASSERT_EQUAL(file_sum(base), base_sum);
  CU_ASSERT_EQUAL(file_sum(s1), s1_sum);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);

  /* From disk: the chain s2 -> s1 -> base, found by the locators. */
  struct vd_dev *top = NULL;
  CU_ASSERT_FATAL(vd_open(s2, NULL, 0, &top) == 0);
  CU_ASSERT_EQUAL(mismatches(NULL, top, w), 0);
  struct vd_info info;
  CU_ASSERT_EQUAL(vd_get_info(top, &info), 0);
  char real1[PATH_MAX];
  CU_ASSERT_FATAL(realpath(s1, real1) != NULL);
  CU_ASSERT_STRING_EQUAL(info.backing, real1);
  vd_close(top);
  check_image(s1);
  check_image(s2);
  for (int i = 0; i < NW; i++)
    free(w[i].model);
  unlink(s2);
  unlink(s1);
  unlink(base);
}

/* A snapshot that fails keeps the node on its writable old top and
 * leaves no file behind (or the one that was there untouched). */
static void
check_still_writable(struct vd_node *n, const char *top)
{
  uint8_t b[4096];
  memset(b, 0x5a, sizeof b);
  CU_ASSERT_EQUAL(vd_node_pwrite(n, b, sizeof b, 0, VD_REQ_FUA), 0);
  CU_ASSERT_STRING_EQUAL(vd_path(vd_node_dev(n)), top);
  CU_ASSERT(!vd_is_read_only(vd_node_dev(n)));
  CU_ASSERT(!can_share(top));           /* still the write lock */
}

static void
test_snapshot_failures(void)
{
  char base[PATH_MAX], odd[PATH_MAX], snap[PATH_MAX], link_[PATH_MAX],
       target[PATH_MAX], nodir[PATH_MAX];
  path_in(base, sizeof base, "fbase.raw");
  path_in(odd, sizeof odd, "odd.raw");
  path_in(snap, sizeof snap, "exists.vhd");
  path_in(link_, sizeof link_, "link.vhd");
  path_in(target, sizeof target, "target.vhd");
  path_in(nodir, sizeof nodir, "no/such/dir.vhd");
  struct vd_create_args ca = { .size = 1 << 20 };
  struct vd_dev *bd = NULL;
  struct vd_node *n = NULL;

  CU_ASSERT_FATAL(vd_create(base, "raw", &ca) == 0);
  CU_ASSERT_FATAL(vd_open(base, "raw", VD_OPEN_RDWR, &bd) == 0);
  CU_ASSERT_FATAL(vd_node_new(bd, &n) == 0);

  /* The snapshot file exists: refused, left as it was. */
  FILE *f = fopen(snap, "w");
  CU_ASSERT_FATAL(f != NULL);
  fputs("precious", f);
  fclose(f);
  uint64_t sum = file_sum(snap);
  CU_ASSERT_EQUAL(vd_node_snapshot(n, snap, "vhd", 0), -EEXIST);
  CU_ASSERT_EQUAL(file_sum(snap), sum);
  check_still_writable(n, base);

  /* A dangling symlink: refused, its target not created. */
  CU_ASSERT_FATAL(symlink(target, link_) == 0);
  CU_ASSERT_EQUAL(vd_node_snapshot(n, link_, "vhd", 0), -EEXIST);
  CU_ASSERT_EQUAL(access(target, F_OK), -1);
  check_still_writable(n, base);

  /* A format we cannot create live. */
  char q[PATH_MAX];
  path_in(q, sizeof q, "q.qcow2");
  CU_ASSERT_EQUAL(vd_node_snapshot(n, q, "qcow2", 0), -ENOTSUP);
  CU_ASSERT_EQUAL(access(q, F_OK), -1);
  check_still_writable(n, base);

  /* Creation fails (no such folder). */
  CU_ASSERT(vd_node_snapshot(n, nodir, "vhd", 0) < 0);
  check_still_writable(n, base);

  /* No temporary file is left beside the images by any of these. */
  char cmd[PATH_MAX + 64];
  snprintf(cmd, sizeof cmd, "ls %s | grep -q tmp-", tmpdir);
  CU_ASSERT_NOT_EQUAL(system(cmd), 0);

  /* A child the node refuses (a raw size that is not a whole number of
   * sectors: the VHD child is a sector larger): the file was made and
   * opened over the top, then the swap refused it; it is removed and
   * the top is nobody's parent again. */
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
  ca.size = (1 << 20) + 100;
  CU_ASSERT_FATAL(vd_create(odd, "raw", &ca) == 0);
  CU_ASSERT_FATAL(vd_open(odd, "raw", VD_OPEN_RDWR, &bd) == 0);
  CU_ASSERT_FATAL(vd_node_new(bd, &n) == 0);
  char s[PATH_MAX];
  path_in(s, sizeof s, "refused.vhd");
  CU_ASSERT_EQUAL(vd_node_snapshot(n, s, "vhd", 0), -EINVAL);
  CU_ASSERT_EQUAL(access(s, F_OK), -1);
  CU_ASSERT_PTR_NULL(vd_node_dev(n)->child);
  check_still_writable(n, odd);
  CU_ASSERT_EQUAL(vd_node_free(n), 0);
  unlink(link_);
  unlink(snap);
  unlink(odd);
  unlink(base);
}

/* vd_reopen: read-only and back, in place, with the image lock. */
static void
test_reopen(void)
{
  char p[PATH_MAX];
  path_in(p, sizeof p, "re.vhd");
  struct vd_create_args ca = { .size = 8 << 20 };
  struct vd_dev *d = NULL, *other = NULL;
  uint8_t b[4096], back[4096];
  memset(b, 0xa5, sizeof b);

  CU_ASSERT_FATAL(vd_create(p, "vpc", &ca) == 0);
  CU_ASSERT_FATAL(vd_open(p, "vpc", VD_OPEN_RDWR, &d) == 0);
  CU_ASSERT_EQUAL(vd_pwrite(d, b, sizeof b, 4096, 0), 0);
  CU_ASSERT(!can_share(p));
  CU_ASSERT_EQUAL(vd_reopen(d, 0), 0);
  CU_ASSERT(vd_is_read_only(d));
  CU_ASSERT(can_share(p));
  CU_ASSERT_EQUAL(vd_pwrite(d, b, sizeof b, 0, 0), -EROFS);
  CU_ASSERT_EQUAL(vd_pread(d, back, sizeof back, 4096), 0);
  CU_ASSERT_EQUAL(memcmp(back, b, sizeof b), 0);
  /* The write before going read-only was flushed: a fresh open sees it
   * through the BAT on disk. */
  CU_ASSERT_FATAL(vd_open(p, "vpc", 0, &other) == 0);
  CU_ASSERT_EQUAL(vd_pread(other, back, sizeof back, 4096), 0);
  CU_ASSERT_EQUAL(memcmp(back, b, sizeof b), 0);
  /* Another reader holds it: read-write is refused, nothing changes. */
  CU_ASSERT_EQUAL(vd_reopen(d, VD_OPEN_RDWR), -EBUSY);
  CU_ASSERT(vd_is_read_only(d));
  CU_ASSERT_EQUAL(vd_pread(d, back, sizeof back, 4096), 0);
  vd_close(other);
  CU_ASSERT(can_share(p));              /* the failed upgrade kept its lock */
  CU_ASSERT_EQUAL(vd_reopen(d, VD_OPEN_RDWR), 0);
  CU_ASSERT(!vd_is_read_only(d));
  CU_ASSERT(!can_share(p));
  CU_ASSERT_EQUAL(vd_pwrite(d, b, sizeof b, 1 << 20, 0), 0);
  CU_ASSERT_EQUAL(vd_reopen(d, VD_OPEN_RDWR), 0);   /* already: no-op */
  CU_ASSERT_EQUAL(vd_reopen(d, VD_OPEN_DIRECT), -EINVAL);
  CU_ASSERT_EQUAL(vd_close(d), 0);
  check_image(p);
  unlink(p);

  /* Direct I/O (cache=none) stays direct across the switches. */
  path_in(p, sizeof p, "re.raw");
  CU_ASSERT_FATAL(vd_create(p, "raw", &ca) == 0);
  int r = vd_open(p, "raw", VD_OPEN_RDWR | VD_OPEN_DIRECT, &d);
  if (r == -ENOTSUP) {
    unlink(p);
    return;                 /* no O_DIRECT on this file system */
  }
  CU_ASSERT_FATAL(r == 0);
  uint8_t *ab = vd_alloc_aligned(4096);
  memset(ab, 0x3c, 4096);
  CU_ASSERT_EQUAL(vd_pwrite(d, ab, 4096, 8192, 0), 0);
  CU_ASSERT_EQUAL(vd_reopen(d, 0), 0);
  CU_ASSERT(can_share(p));
  CU_ASSERT_EQUAL(vd_reopen(d, VD_OPEN_RDWR), 0);
  CU_ASSERT_EQUAL(vd_pwrite(d, ab, 4096, 12288, 0), 0);
  int fd = vd_file_fd(d->file);
  CU_ASSERT((fcntl(fd, F_GETFL) & (O_DIRECT | O_ACCMODE)) ==
            (O_DIRECT | O_RDWR));
  CU_ASSERT_EQUAL(vd_close(d), 0);
  vd_free_aligned(ab);
  unlink(p);
}

/* A VHD flush covers writes completed on other threads (what an NBD
 * export's multi-connection promise needs): threads allocate blocks, one
 * other thread flushes, and a fresh open, which knows only the BAT on
 * disk, reads them all. */
struct alloc_arg {
  struct vd_dev *d;
  int id;
};

static void *
alloc_main(void *arg)
{
  struct alloc_arg *a = arg;
  uint8_t b[4096];
  for (int k = 0; k < 8; k++) {
    memset(b, a->id * 16 + k + 1, sizeof b);
    /* One block (2 MiB) per write, so each allocates. */
    if (vd_pwrite(a->d, b, sizeof b,
                  ((uint64_t) (a->id * 8 + k)) << 21, 0) < 0)
      return (void *) 1;
  }
  return NULL;
}

static void *
flush_main(void *arg)
{
  return vd_flush(arg) == 0 ? NULL : (void *) 1;
}

static void
test_vhd_multi_conn(void)
{
  char p[PATH_MAX];
  path_in(p, sizeof p, "mc.vhd");
  struct vd_create_args ca = { .size = 64ull << 20 };
  struct vd_dev *d = NULL, *fresh = NULL;
  CU_ASSERT_FATAL(vd_create(p, "vpc", &ca) == 0);
  CU_ASSERT_FATAL(vd_open(p, "vpc", VD_OPEN_RDWR, &d) == 0);
  CU_ASSERT(vd_can_multi_conn(d));
  pthread_t t[4];
  struct alloc_arg a[4];
  void *res;
  for (int i = 0; i < 4; i++) {
    a[i] = (struct alloc_arg) { d, i };
    pthread_create(&t[i], NULL, alloc_main, &a[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(t[i], &res);
    CU_ASSERT_PTR_NULL(res);
  }
  pthread_t ft;
  pthread_create(&ft, NULL, flush_main, d);
  pthread_join(ft, &res);
  CU_ASSERT_PTR_NULL(res);
  CU_ASSERT_FATAL(vd_open(p, "vpc", VD_OPEN_NOLOCK, &fresh) == 0);
  uint8_t b[4096];
  int bad = 0;
  for (int i = 0; i < 32; i++)
    if (vd_pread(fresh, b, sizeof b, (uint64_t) i << 21) < 0 ||
        b[0] != (uint8_t) ((i / 8) * 16 + i % 8 + 1) || b[4095] != b[0])
      bad++;
  CU_ASSERT_EQUAL(bad, 0);
  vd_close(fresh);
  vd_close(d);
  unlink(p);
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "snapshot under load", test_snapshot_under_load },
    { "snapshot failures", test_snapshot_failures },
    { "reopen", test_reopen },
    { "vhd multi-conn", test_vhd_multi_conn },
    { NULL, NULL },
  };
  if (!mkdtemp(tmpdir))
    return 99;
  int r = cu_main("snapshot", tests);
  char cmd[64];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  if (system(cmd) != 0)
    r = r ? r : 99;
  return r;
}
