/* vdz-read: sequential read throughput of one image through libvdisk on
 * one thread (what "per core" means in bench/README-vdz.md).
 *
 *   vdz-read IMAGE [REQUEST_SIZE]
 *   vdz-read IMAGE REQUEST_SIZE COUNT
 *
 * Reads the whole virtual disk in REQUEST_SIZE pieces (default 1 MiB):
 * every byte, then only the data extents (holes skipped through
 * block_status, as nbdcopy and qemu-img do).  Each pass runs twice and
 * the second (warm) run is reported: bytes, seconds and GB/s (10^9
 * bytes).  With COUNT, it makes COUNT reads at random aligned offsets
 * instead (a fixed seed, so that callgrind counts repeat) and reports
 * reads per second.  Built by make (bench/Makefile.inc);
 * bench/vdz-bench.sh runs it. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "vdisk/vdisk.h"

static double now(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int rd(struct vd_dev *d, char *buf, size_t n, uint64_t off)
{
  if (vd_pread(d, buf, n, off) < 0) {
    fprintf(stderr, "vdz-read: %s\n", vd_error());
    return -1;
  }
  return 0;
}

/* One pass; DATA_ONLY skips extents that read as zeros.  Returns the
 * bytes read, or -1. */
static long long pass(struct vd_dev *d, char *buf, size_t rs, int data_only)
{
  uint64_t size = vd_size(d);
  long long bytes = 0;

  for (uint64_t off = 0; off < size;) {
    struct vd_extent e = { .length = size - off, .flags = 0 };
    if (data_only && vd_block_status(d, off, size - off, &e) < 0) {
      fprintf(stderr, "vdz-read: %s\n", vd_error());
      return -1;
    }
    if (!(e.flags & VD_EXT_ZERO))
      for (uint64_t p = off; p < off + e.length; p += rs) {
        size_t n = off + e.length - p < rs ? off + e.length - p : rs;
        if (rd(d, buf, n, p) < 0)
          return -1;
        bytes += (long long)n;
      }
    off += e.length;
  }
  return bytes;
}

/* COUNT reads of RS bytes at random multiples of RS. */
static int random_reads(struct vd_dev *d, char *buf, size_t rs,
                        unsigned long count)
{
  uint64_t slots = vd_size(d) / rs, x = 88172645463325252ull;
  double t0 = now(), t;

  for (unsigned long i = 0; slots && i < count; i++) {
    x ^= x << 13;   /* xorshift64 */
    x ^= x >> 7;
    x ^= x << 17;
    if (rd(d, buf, rs, x % slots * rs) < 0)
      return -1;
  }
  t = now() - t0;
  printf("rand %lu x %zu bytes %8.3f s %9.0f reads/s\n", count, rs, t,
         (double)count / t);
  return 0;
}

int main(int argc, char **argv)
{
  struct vd_dev *d;
  size_t rs = argc > 2 ? strtoul(argv[2], NULL, 0) : (1u << 20);
  char *buf;

  if (argc < 2 || rs == 0) {
    fprintf(stderr, "usage: vdz-read IMAGE [REQUEST_SIZE]\n");
    return 1;
  }
  if (vd_open(argv[1], NULL, 0, &d) < 0) {
    fprintf(stderr, "vdz-read: %s\n", vd_error());
    return 1;
  }
  buf = malloc(rs);
  if (!buf)
    return 1;
  if (argc > 3)
    return random_reads(d, buf, rs, strtoul(argv[3], NULL, 0)) < 0;
  for (int data_only = 0; data_only < 2; data_only++) {
    long long bytes = 0;
    double t0 = 0, t1 = 0;
    for (int run = 0; run < 2; run++) {
      t0 = now();
      bytes = pass(d, buf, rs, data_only);
      t1 = now();
      if (bytes < 0)
        return 1;
    }
    printf("%s %12lld bytes %8.3f s %7.2f GB/s\n", data_only ? "data" : "all ",
           bytes, t1 - t0, (double)bytes / (t1 - t0) / 1e9);
  }
  free(buf);
  vd_close(d);
  return 0;
}
