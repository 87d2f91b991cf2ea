/* Parity benchmark (not part of make check): raid_xor, the RAID5 parity
 * kernel, against memcpy of the same bytes.  It measures an internal
 * function, so it links the internal library (vdisk/libvdisk-internal.la);
 * bench/raid-bench.c measures arrays through the public API.  Usage:
 * parity-bench (bench/raid-bench.sh runs it).  Every version of the kernel
 * the CPU runs is timed (raid_xor_impl_select). */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "raid/raid.h"

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* GB/s of source data: raid_xor over NSRC buffers of LEN, and memcpy of
 * the same number of bytes. */
static void bench_parity(unsigned nsrc, size_t len, double *xor_gbs,
                         double *cpy_gbs)
{
  uint8_t *src[16], *dst = vd_alloc_aligned(len * nsrc);
  const void *s[16];
  for (unsigned k = 0; k < nsrc; k++) {
    src[k] = vd_alloc_aligned(len);
    for (size_t i = 0; i < len; i++)
      src[k][i] = (uint8_t)(i * 31 + k);
    s[k] = src[k];
  }
  memset(dst, 1, len * nsrc);
  /* Best of 5 short runs each, alternating (the machine is shared). */
  *xor_gbs = *cpy_gbs = 0;
  for (int round = 0; round < 5; round++) {
    double bytes = 0, t0 = now();
    while (now() - t0 < 0.1) {
      raid_xor(dst, s, nsrc, len);
      bytes += (double)len * nsrc;
    }
    double g = bytes / (now() - t0) / 1e9;
    if (g > *xor_gbs)
      *xor_gbs = g;
    bytes = 0;
    t0 = now();
    while (now() - t0 < 0.1) {
      for (unsigned k = 0; k < nsrc; k++)
        memcpy(dst + k * len, src[k], len);
      bytes += (double)len * nsrc;
    }
    g = bytes / (now() - t0) / 1e9;
    if (g > *cpy_gbs)
      *cpy_gbs = g;
  }
  for (unsigned k = 0; k < nsrc; k++)
    vd_free_aligned(src[k]);
  vd_free_aligned(dst);
}

/* Every version of the kernel this CPU runs (widest first, the one
 * raid_xor uses by default), each against memcpy in the same run. */
int main(void)
{
  const char *name;
  for (unsigned i = 0; (name = raid_xor_impl_select(i)) != NULL; i++)
    for (unsigned mib = 1; mib <= 64; mib *= 64) {
      double x, c;
      bench_parity(4, (size_t)mib << 20, &x, &c);
      printf("parity 4 x %2u MiB %-9s xor %6.1f GB/s   memcpy %6.1f GB/s   "
             "ratio %.2f%s\n", mib, name, x, c, x / c,
             i == 0 ? "  (default)" : "");
    }
  return 0;
}
