/* RAID parity: XOR in one pass over all sources.
 *
 * Each 2 KiB block of the destination is computed from every source while it
 * sits in L1, so the sources are streamed once and the destination written
 * once (no n-1 passes over memory).  Plain C loops over 64-bit words,
 * vectorised by the compiler; unaligned buffers take a byte-wise path.
 *
 * Runtime CPU dispatch: on x86-64 with GCC the block loop is compiled
 * three times, for AVX-512, AVX2 and the baseline (SSE2), and the first
 * call picks the widest the CPU runs (__builtin_cpu_supports), so one
 * binary built for plain x86-64 (no -march) uses 64-byte vectors where
 * they exist.  raid_xor_impl_select lets the tests run every version the
 * CPU has.  Elsewhere: the baseline only.
 */
#include <config.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "raid/raid.h"

#define RAID_XOR_MAXSRC 64
#define RAID_XOR_BLOCK 2048   /* destination block kept in L1 */

typedef uint64_t __attribute__((may_alias)) raid_u64;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
static bool raid_cpu_avx512f(void)
{
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

static bool raid_cpu_avx2(void)
{
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
#endif

/* d = a ^ b, then d ^= c: plain loops over 64-bit words that the compiler
 * vectorises at -O3 (asked for below whatever the global level). */
__attribute__((optimize("O3", "tree-vectorize"), always_inline))
static inline void raid_xor2(raid_u64 *restrict d, const raid_u64 *restrict a,
                      const raid_u64 *restrict b, size_t words)
{
  for (size_t i = 0; i < words; i++)
    d[i] = a[i] ^ b[i];
}

__attribute__((optimize("O3", "tree-vectorize"), always_inline))
static inline void raid_xor_acc(raid_u64 *restrict d, const raid_u64 *restrict a,
                         size_t words)
{
  for (size_t i = 0; i < words; i++)
    d[i] ^= a[i];
}

/* One pass over the sources, block by block: each destination block is
 * computed from every source while it stays in L1, so every source byte is
 * read once and the destination written once to memory.  Needs 8-byte
 * aligned buffers and a length multiple of 8 (the caller checks).  The
 * loops above are inlined into each version, so each is vectorised for
 * its target. */
#define RAID_XOR_BLOCKS(NAME, ATTR)                                          \
  ATTR __attribute__((optimize("O3", "tree-vectorize")))                    \
  static void NAME(uint8_t *d, const uint8_t *const *s, unsigned n,         \
                   size_t len)                                              \
  {                                                                         \
    for (size_t off = 0; off < len; off += RAID_XOR_BLOCK) {                \
      size_t bl = len - off < RAID_XOR_BLOCK ? len - off : RAID_XOR_BLOCK;  \
      size_t w = bl / 8;                                                    \
      raid_u64 tmp[RAID_XOR_BLOCK / 8];                                     \
      /* The destination may alias source 0 (in-place XOR): build the     \
       * block in a local buffer, then store it. */                         \
      if (n == 1)                                                           \
        memcpy(tmp, s[0] + off, bl);                                        \
      else                                                                  \
        raid_xor2(tmp, (const raid_u64 *)(s[0] + off),                      \
                  (const raid_u64 *)(s[1] + off), w);                       \
      for (unsigned k = 2; k < n; k++)                                      \
        raid_xor_acc(tmp, (const raid_u64 *)(s[k] + off), w);               \
      memcpy(d + off, tmp, bl);                                             \
    }                                                                       \
  }

typedef void raid_xor_fn(uint8_t *, const uint8_t *const *, unsigned,
                         size_t);

RAID_XOR_BLOCKS(raid_xor_blocks_base, )
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RAID_XOR_X86 1
RAID_XOR_BLOCKS(raid_xor_blocks_avx2, __attribute__((target("avx2"))))
RAID_XOR_BLOCKS(raid_xor_blocks_avx512, __attribute__((target("avx512f"))))
#endif

/* The versions, widest first; a CPU runs those whose test says so. */
static const struct raid_xor_impl {
  const char *name;
  raid_xor_fn *fn;
  bool (*runs)(void);
} raid_xor_impls[] = {
#ifdef RAID_XOR_X86
  { "avx512f", raid_xor_blocks_avx512, raid_cpu_avx512f },
  { "avx2", raid_xor_blocks_avx2, raid_cpu_avx2 },
#endif
  { "sse2/base", raid_xor_blocks_base, NULL },
};
#define RAID_XOR_NIMPL (sizeof raid_xor_impls / sizeof raid_xor_impls[0])

static _Atomic(raid_xor_fn *) raid_xor_blocks_fn;

const char *raid_xor_impl_select(unsigned i)
{
  for (size_t k = 0; k < RAID_XOR_NIMPL; k++) {
    const struct raid_xor_impl *im = &raid_xor_impls[k];
    if (im->runs && !im->runs())
      continue;
    if (i-- == 0) {
      atomic_store_explicit(&raid_xor_blocks_fn, im->fn,
                            memory_order_relaxed);
      return im->name;
    }
  }
  return NULL;
}

static void raid_xor_blocks(uint8_t *d, const uint8_t *const *s, unsigned n,
                            size_t len)
{
  raid_xor_fn *fn = atomic_load_explicit(&raid_xor_blocks_fn,
                                         memory_order_relaxed);
  if (!fn) {   /* first call: the widest version (racing callers agree) */
    raid_xor_impl_select(0);
    fn = atomic_load_explicit(&raid_xor_blocks_fn, memory_order_relaxed);
  }
  fn(d, s, n, len);
}

/* Byte-wise fallback for unaligned buffers or odd lengths. */
static void raid_xor_bytes(uint8_t *d, const uint8_t *const *s, unsigned n,
                           size_t len)
{
  for (size_t i = 0; i < len; i++) {
    uint8_t v = s[0][i];
    for (unsigned k = 1; k < n; k++)
      v ^= s[k][i];
    d[i] = v;
  }
}

static void raid_xor_some(uint8_t *d, const uint8_t *const *s, unsigned n,
                          size_t len)
{
  uintptr_t bits = (uintptr_t)d;
  for (unsigned k = 0; k < n; k++)
    bits |= (uintptr_t)s[k];
  size_t head = (bits & 7) ? 0 : len / 8 * 8;
  if (head)
    raid_xor_blocks(d, s, n, head);
  if (head < len) {
    const uint8_t *t[RAID_XOR_MAXSRC];
    for (unsigned k = 0; k < n; k++)
      t[k] = s[k] + head;
    raid_xor_bytes(d + head, t, n, len - head);
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
    raid_xor_some(dst, s, k, len);
  }
}

void raid_xor_into(void *dst, const void *src, size_t len)
{
  const void *s[2] = { dst, src };
  raid_xor(dst, s, 2, len);
}

/* ---- per-thread scratch buffers ----
 * The hot paths need a few chunk-sized buffers per request; allocating
 * (vd_alloc_aligned zeroes) and freeing them each time cost more than the
 * parity.  Each thread keeps its buffers, freed when it exits. */

struct raid_tls {
  void *buf[RAID_SCRATCH_SLOTS];
  size_t len[RAID_SCRATCH_SLOTS];
};
static pthread_key_t raid_tls_key;
static pthread_once_t raid_tls_once = PTHREAD_ONCE_INIT;

static void raid_tls_free(void *p)
{
  struct raid_tls *t = p;
  for (int i = 0; i < RAID_SCRATCH_SLOTS; i++)
    free(t->buf[i]);
  free(t);
}

static void raid_tls_init(void)
{
  pthread_key_create(&raid_tls_key, raid_tls_free);
}

void *raid_scratch(int slot, size_t len)
{
  pthread_once(&raid_tls_once, raid_tls_init);
  struct raid_tls *t = pthread_getspecific(raid_tls_key);
  if (!t) {
    t = calloc(1, sizeof *t);
    if (!t || pthread_setspecific(raid_tls_key, t) != 0) {
      free(t);
      return NULL;
    }
  }
  if (t->len[slot] < len) {
    void *p = NULL;
    free(t->buf[slot]);
    t->buf[slot] = NULL;
    t->len[slot] = 0;
    if (posix_memalign(&p, 4096, len) != 0)
      return NULL;
    t->buf[slot] = p;
    t->len[slot] = len;
  }
  return t->buf[slot];
}
