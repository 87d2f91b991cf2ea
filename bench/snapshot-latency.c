/* Live snapshot benchmark (not part of make check), through the public
 * API only: what repeated vd_node_snapshot calls add to the latency of
 * 4 KiB writes in flight on the node.
 *
 * Usage: snapshot-latency DIR SECONDS INTERVAL_MS [THREADS]
 * A raw base of 256 MiB in DIR gets a first VHD snapshot (untimed, so
 * both runs write into a VHD child), then THREADS (default 2) threads do
 * random 4 KiB writes at queue depth 1 each for SECONDS, twice: without
 * snapshots, then with a snapshot every INTERVAL_MS.  Prints the write
 * latency percentiles of each run, those of the writes that overlapped a
 * snapshot call, and the snapshot calls' own durations.  The chain grows
 * by one VHD per snapshot, so the second run also pays first-write block
 * allocation in each new child: that is part of what a snapshot costs. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/vdisk.h"

#define SIZE (256ull << 20)
#define MAXLAT (1u << 22)

static double
now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
die(const char *what)
{
  fprintf(stderr, "snapshot-latency: %s: %s\n", what, vd_error());
  exit(1);
}

struct run {
  struct vd_node *node;
  atomic_int stop;
  /* Snapshot windows [start, end) of this run, for the overlap stats. */
  double win[4096][2];
  atomic_int nwin;
};

struct wr {
  struct run *run;
  int id;
  double *lat, *start;   /* per write: latency (s) and start time */
  size_t n;
};

static void *
writer(void *arg)
{
  struct wr *w = arg;
  char buf[4096];
  uint64_t x = 88172645463325252ull + (uint64_t) w->id;
  memset(buf, w->id + 1, sizeof buf);
  while (!atomic_load(&w->run->stop) && w->n < MAXLAT) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    uint64_t off = x % (SIZE / 4096) * 4096;
    double t0 = now();
    if (vd_node_pwrite(w->run->node, buf, sizeof buf, off, 0) < 0)
      die("write");
    w->start[w->n] = t0;
    w->lat[w->n++] = now() - t0;
  }
  return NULL;
}

static int
cmp(const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

static void
report(const char *what, double *v, size_t n)
{
  if (!n) {
    printf("%-34s none\n", what);
    return;
  }
  qsort(v, n, sizeof *v, cmp);
  printf("%-34s n=%-8zu p50 %7.1f  p99 %8.1f  p99.9 %8.1f  max %8.1f us\n",
         what, n, v[n / 2] * 1e6, v[n * 99 / 100] * 1e6,
         v[n * 999 / 1000] * 1e6, v[n - 1] * 1e6);
}

static void
one_run(struct vd_node *node, const char *dir, int seconds, int interval_ms,
        int threads, int *serial)
{
  struct run *run = calloc(1, sizeof *run);
  struct wr *w = calloc((size_t) threads, sizeof *w);
  pthread_t *t = calloc((size_t) threads, sizeof *t);
  double *snap = calloc(4096, sizeof *snap);
  size_t nsnap = 0;
  run->node = node;
  for (int i = 0; i < threads; i++) {
    w[i] = (struct wr) { run, i, malloc(MAXLAT * sizeof(double)),
                         malloc(MAXLAT * sizeof(double)), 0 };
    pthread_create(&t[i], NULL, writer, &w[i]);
  }
  double end = now() + seconds;
  while (now() < end) {
    usleep(interval_ms > 0 ? (useconds_t) interval_ms * 1000 : 100000);
    if (interval_ms <= 0 || nsnap == 4096)
      continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/snap%d.vhd", dir, ++*serial);
    double t0 = now();
    if (vd_node_snapshot(node, path, "vhd", 0) < 0)
      die("snapshot");
    double t1 = now();
    snap[nsnap++] = t1 - t0;
    int k = atomic_load(&run->nwin);
    run->win[k][0] = t0;
    run->win[k][1] = t1;
    atomic_store(&run->nwin, k + 1);
  }
  atomic_store(&run->stop, 1);
  size_t total = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(t[i], NULL);
    total += w[i].n;
  }
  double *all = malloc(total * sizeof *all), *over = malloc(total * sizeof *over);
  size_t na = 0, no = 0;
  int nw = atomic_load(&run->nwin);
  for (int i = 0; i < threads; i++)
    for (size_t j = 0; j < w[i].n; j++) {
      all[na++] = w[i].lat[j];
      double s = w[i].start[j], e = s + w[i].lat[j];
      for (int k = 0; k < nw; k++)
        if (s < run->win[k][1] && e > run->win[k][0]) {
          over[no++] = w[i].lat[j];
          break;
        }
    }
  char title[64];
  snprintf(title, sizeof title, "writes, snapshot every %d ms",
           interval_ms);
  report(interval_ms > 0 ? title : "writes, no snapshots", all, na);
  if (interval_ms > 0) {
    report("  writes overlapping a snapshot", over, no);
    report("  vd_node_snapshot calls", snap, nsnap);
  }
  for (int i = 0; i < threads; i++) {
    free(w[i].lat);
    free(w[i].start);
  }
  free(all); free(over); free(snap); free(t); free(w); free(run);
}

int
main(int argc, char **argv)
{
  if (argc < 4) {
    fprintf(stderr, "usage: snapshot-latency DIR SECONDS INTERVAL_MS "
            "[THREADS]\n");
    return 2;
  }
  const char *dir = argv[1];
  int seconds = atoi(argv[2]), interval = atoi(argv[3]);
  int threads = argc > 4 ? atoi(argv[4]) : 2;
  char base[4096];
  snprintf(base, sizeof base, "%s/base.raw", dir);
  struct vd_create_args ca = { .size = SIZE };
  struct vd_dev *d;
  struct vd_node *n;
  int serial = 0;
  if (vd_create(base, "raw", &ca) < 0 || vd_open(base, "raw", VD_OPEN_RDWR,
                                                 &d) < 0)
    die(base);
  if (vd_node_new(d, &n) < 0)
    die("node");
  char first[4096];
  snprintf(first, sizeof first, "%s/snap0.vhd", dir);
  if (vd_node_snapshot(n, first, "vhd", 0) < 0)
    die("first snapshot");
  one_run(n, dir, seconds, 0, threads, &serial);
  one_run(n, dir, seconds, interval, threads, &serial);
  printf("chain depth at the end: %d snapshots over the raw base\n",
         serial + 1);
  return vd_node_free(n) < 0;
}
