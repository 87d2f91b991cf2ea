/* RAID parity: XOR in one pass over all sources.
 *
 * Each 64-byte block of the destination is computed from the same block of
 * every source before moving on, so the sources are streamed once and the
 * destination written once (no n-1 passes over the destination).  GCC
 * vector types compile to SSE2/AVX on x86-64 without intrinsics; loads and
 * stores go through memcpy so no alignment is assumed.
 */
#include <config.h>

#include <string.h>

#include "raid/raid.h"

typedef uint64_t raid_vec __attribute__((vector_size(32)));

#define RAID_XOR_MAXSRC 64

/* Hot loop: ask for the vectoriser whatever the global -O level. */
__attribute__((optimize("O3")))
static void raid_xor_blocks(uint8_t *d, const uint8_t *const *s, unsigned n,
                            size_t len)
{
  size_t i = 0;
  for (; i + 64 <= len; i += 64) {
    raid_vec a, b, x, y;
    memcpy(&a, s[0] + i, 32);
    memcpy(&b, s[0] + i + 32, 32);
    for (unsigned k = 1; k < n; k++) {
      memcpy(&x, s[k] + i, 32);
      memcpy(&y, s[k] + i + 32, 32);
      a ^= x;
      b ^= y;
    }
    memcpy(d + i, &a, 32);
    memcpy(d + i + 32, &b, 32);
  }
  for (; i < len; i++) {
    uint8_t v = s[0][i];
    for (unsigned k = 1; k < n; k++)
      v ^= s[k][i];
    d[i] = v;
  }
}

void raid_xor(void *dst, const void *const *src, unsigned n, size_t len)
{
  if (n == 0) {
    memset(dst, 0, len);
    return;
  }
  /* More sources than fit the pointer array: fold in groups. */
  const uint8_t *s[RAID_XOR_MAXSRC];
  unsigned done = 0;
  while (done < n) {
    unsigned k = 0;
    if (done > 0)
      s[k++] = dst;
    while (k < RAID_XOR_MAXSRC && done < n)
      s[k++] = src[done++];
    raid_xor_blocks(dst, s, k, len);
  }
}

void raid_xor_into(void *dst, const void *src, size_t len)
{
  const void *s[2] = { dst, src };
  raid_xor(dst, s, 2, len);
}
