/* RAID benchmark (not part of make check), through the public API only:
 * sequential full-stripe write and sequential read of RAID0 and RAID5
 * against the members' own bandwidth, degraded against healthy read, and
 * the rebuild rate against one member's sequential copy.  Usage:
 * raid-bench DIR [MEMBER_MIB] [MEMBERS] (bench/raid-bench.sh runs it after
 * bench/parity-bench and prints the ratios). */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

#include "vdisk/vdisk.h"
#include "vdisk/raid.h"

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
  fprintf(stderr, "raid-bench: %s: %s\n", what, vd_error());
  exit(1);
}

/* Buffers for direct I/O: 4 KiB aligned (only the public API here). */
static uint8_t *alloc_buf(size_t len)
{
  void *p = NULL;
  if (posix_memalign(&p, 4096, len) != 0)
    die("out of memory");
  return p;
}

/* Sequential write of TOTAL bytes in requests of REQ, then flush: MB/s. */
static double seq_write(struct vd_dev *d, uint64_t total, size_t req,
                        uint8_t *buf)
{
  double t0 = now();
  for (uint64_t o = 0; o + req <= total; o += req)
    if (vd_pwrite(d, buf, req, o, 0) < 0)
      die("write");
  if (vd_flush(d) < 0)
    die("flush");
  return (double)(total / req * req) / (now() - t0) / 1e6;
}

static double seq_read(struct vd_dev *d, uint64_t total, size_t req,
                       uint8_t *buf)
{
  double t0 = now();
  for (uint64_t o = 0; o + req <= total; o += req)
    if (vd_pread(d, buf, req, o) < 0)
      die("read");
  return (double)(total / req * req) / (now() - t0) / 1e6;
}

static void progress_none(void *o, uint64_t d, uint64_t t) {}

/* One member alone: one raw file of BYTES written by one thread (second
 * pass timed, the first allocates), MB/s. */
static double one_write(const char *dir, uint64_t bytes, size_t req,
                        uint8_t *buf)
{
  char path[4096];
  snprintf(path, sizeof path, "%s/bench-one.img", dir);
  struct vd_create_args ca = { .size = bytes };
  struct vd_dev *d;
  if (vd_create(path, "raw", &ca) < 0 ||
      vd_open(path, "raw", VD_OPEN_RDWR, &d) < 0)
    die(path);
  seq_write(d, bytes, req, buf);
  double w = seq_write(d, bytes, req, buf);
  vd_close(d);
  unlink(path);
  return w;
}

/* One member's sequential copy, as a rebuild does it: BYTES read from a
 * written file and written to a new one (allocated as it is written, as
 * the replacement member is), one thread, requests of REQ, then flush:
 * MB/s of data copied. */
static double one_copy(const char *dir, uint64_t bytes, size_t req)
{
  char src[4096], dst[4096];
  snprintf(src, sizeof src, "%s/bench-copy-src.img", dir);
  snprintf(dst, sizeof dst, "%s/bench-copy-dst.img", dir);
  struct vd_create_args ca = { .size = bytes };
  struct vd_dev *s, *d;
  uint8_t *buf = alloc_buf(req);
  memset(buf, 0x5a, req);
  if (vd_create(src, "raw", &ca) < 0 ||
      vd_open(src, "raw", VD_OPEN_RDWR, &s) < 0)
    die(src);
  seq_write(s, bytes, req, buf);
  if (vd_create(dst, "raw", &ca) < 0 ||
      vd_open(dst, "raw", VD_OPEN_RDWR, &d) < 0)
    die(dst);
  double t0 = now();
  for (uint64_t o = 0; o + req <= bytes; o += req)
    if (vd_pread(s, buf, req, o) < 0 || vd_pwrite(d, buf, req, o, 0) < 0)
      die("copy");
  if (vd_flush(d) < 0)
    die("flush");
  double mbs = (double)(bytes / req * req) / (now() - t0) / 1e6;
  vd_close(s);
  vd_close(d);
  unlink(src);
  unlink(dst);
  free(buf);
  return mbs;
}

/* The members' aggregate: N raw files written (then read) at once by N
 * threads, as the array's members are, on the same storage. */
struct agg {
  char path[4096];
  uint64_t bytes;
  size_t req;
  bool read;
  uint8_t *buf;
  pthread_barrier_t *bar;
};

static void *agg_main(void *o)
{
  struct agg *g = o;
  struct vd_dev *d;
  if (vd_open(g->path, "raw", VD_OPEN_RDWR, &d) < 0)
    die(g->path);
  if (g->read)
    seq_read(d, g->bytes, g->req, g->buf);
  else
    seq_write(d, g->bytes, g->req, g->buf);   /* allocates: not timed */
  pthread_barrier_wait(g->bar);
  pthread_barrier_wait(g->bar);
  if (g->read)
    seq_read(d, g->bytes, g->req, g->buf);
  else
    seq_write(d, g->bytes, g->req, g->buf);
  vd_close(d);
  return NULL;
}

static double aggregate(const char *dir, unsigned n, uint64_t bytes,
                        size_t req, bool read, uint8_t *buf)
{
  struct agg g[8];
  pthread_t th[8];
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, n + 1);
  for (unsigned i = 0; i < n; i++) {
    g[i].bar = &bar;
    snprintf(g[i].path, sizeof g[i].path, "%s/bench-agg%u.img", dir, i);
    g[i].bytes = bytes;
    g[i].req = req;
    g[i].read = read;
    g[i].buf = buf;
    if (!read) {
      struct vd_create_args ca = { .size = bytes };
      if (vd_create(g[i].path, "raw", &ca) < 0)
        die(g[i].path);
    }
  }
  for (unsigned i = 0; i < n; i++)
    pthread_create(&th[i], NULL, agg_main, &g[i]);
  pthread_barrier_wait(&bar);       /* first pass done */
  double t0 = now();
  pthread_barrier_wait(&bar);       /* timed pass starts */
  for (unsigned i = 0; i < n; i++)
    pthread_join(th[i], NULL);
  pthread_barrier_destroy(&bar);
  double mbs = (double)(bytes / req * req) * n / (now() - t0) / 1e6;
  if (read)
    for (unsigned i = 0; i < n; i++)
      unlink(g[i].path);
  return mbs;
}

int main(int argc, char **argv)
{
  if (argc < 2) {
    fprintf(stderr, "usage: raid-bench DIR [MEMBER_MIB] [MEMBERS]\n");
    return 2;
  }
  const char *dir = argv[1];
  uint64_t mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 128;
  unsigned n = argc > 3 ? (unsigned)atoi(argv[3]) : 4;
  if (n < 3 || n > 8 || mib < 16)
    return 2;
  uint64_t msize = mib << 20;
  const uint32_t chunk = 512 * 1024;

  size_t bufsz = (size_t)chunk * n;
  uint8_t *buf = alloc_buf(bufsz);
  for (size_t i = 0; i < bufsz; i++)
    buf[i] = (uint8_t)(i * 7);

  /* The members alone, all at once: their aggregate bandwidth. */
  struct vd_create_args ca = { .size = msize };
  struct vd_dev *d;
  uint64_t data = msize - 5 * (1 << 20);
  /* Best of three: the machine is shared. */
  double aw = 0, ar = 0;
  for (int i = 0; i < 3; i++) {
    double w = aggregate(dir, n, data, chunk, false, buf);
    double r = aggregate(dir, n, data, chunk, true, buf);
    aw = w > aw ? w : aw;
    ar = r > ar ? r : ar;
  }
  printf("%u members at once   write %7.0f MB/s   read %7.0f MB/s "
         "(aggregate)\n", n, aw, ar);
  /* The goals' references: one member written alone, one member copied
   * alone (the better of chunk-sized and 4 MiB requests), best of three. */
  double ow = 0, oc = 0;
  for (int i = 0; i < 3; i++) {
    double w = one_write(dir, data, chunk, buf);
    double c1 = one_copy(dir, data, chunk), c2 = one_copy(dir, data, 4 << 20);
    ow = w > ow ? w : ow;
    oc = c1 > oc ? c1 : oc;
    oc = c2 > oc ? c2 : oc;
  }
  printf("1 member alone      write %7.0f MB/s   copy %7.0f MB/s\n", ow, oc);

  for (int level = 0; level <= 5; level += 5) {
    char desc[4096], mem[8][4096];
    const char *mp[8];
    snprintf(desc, sizeof desc, "%s/bench-r%d.vdraid", dir, level);
    for (unsigned i = 0; i < n; i++) {
      snprintf(mem[i], sizeof mem[i], "%s/bench-r%d-m%u.img", dir, level, i);
      mp[i] = mem[i];
    }
    unlink(desc);
    struct vd_raid_create_args ra = { .level = level, .chunk = chunk,
                                      .nmembers = n, .members = mp,
                                      .member_size = msize,
                                      .member_format = "raw",
                                      .policy = -1 };
    if (vd_raid_create(desc, &ra) < 0 || vd_open(desc, NULL, VD_OPEN_RDWR, &d) < 0)
      die(desc);
    char newp[2][4096] = { "", "" };    /* RAID5's replacements of slot 0 */
    unsigned nd = level == 5 ? n - 1 : n;
    size_t stripe = (size_t)chunk * nd;
    uint64_t total = vd_size(d) / stripe * stripe;
    seq_write(d, total, stripe, buf);           /* allocates: not timed */
    double w = 0, r = 0;
    for (int i = 0; i < 3; i++) {
      double x = seq_write(d, total, stripe, buf);
      double y = seq_read(d, total, stripe, buf);
      w = x > w ? x : w;
      r = y > r ? y : r;
    }
    /* Data share of the aggregate: RAID5 writes n-1 data chunks per n. */
    printf("RAID%d x%u full-stripe write %7.0f MB/s = %.2f x members' data "
           "share (%u/%u of aggregate) = %.2f x (%u x 1 member alone)\n",
           level, n, w, w / (aw * nd / n), nd, n, w / (ow * nd), nd);
    printf("RAID%d x%u sequential read   %7.0f MB/s = %.2f x members' data "
           "share\n", level, n, r, r / (ar * nd / n));
    if (level == 5) {
      if (vd_raid_fail(vd_raid_of(d), 0) < 0)
        die("fail");
      double dr = 0;
      for (int i = 0; i < 3; i++) {
        double y = seq_read(d, total, stripe, buf);
        dr = y > dr ? y : dr;
      }
      printf("RAID5 x%u degraded read      %7.0f MB/s = %.2f x healthy\n", n,
             dr, dr / r);
      /* Rebuild slot 0 onto a new file, best of three (slot 0 failed
       * again before each). */
      double rt = 0;
      for (int i = 0; i < 3; i++) {
        const char *np = newp[i % 2];
        snprintf(newp[i % 2], sizeof newp[0], "%s/bench-r5-new%d.img", dir,
                 i % 2);
        if ((i > 0 && vd_raid_fail(vd_raid_of(d), 0) < 0) ||
            vd_create(np, "raw", &ca) < 0)
          die(np);
        double t0 = now();
        if (vd_raid_replace(vd_raid_of(d), 0, np, "raw", 0, progress_none,
                            NULL) < 0)
          die("replace");
        double t = now() - t0;
        rt = i == 0 || t < rt ? t : rt;
        if (i > 0)
          unlink(newp[(i + 1) % 2]);   /* the member it replaced */
      }
      double rb = (double)(msize - (5 << 20)) / rt / 1e6;
      printf("RAID5 x%u rebuild            %7.0f MB/s of member data = %.2f "
             "x 1 member's copy (%.2f s for %llu MiB)\n", n, rb, rb / oc, rt,
             (unsigned long long)mib);
    }
    vd_close(d);
    unlink(desc);
    for (unsigned i = 0; i < n; i++)
      unlink(mem[i]);
    unlink(newp[0]);
  }
  free(buf);
  return 0;
}
