/* libvdisk — dirty bitmaps: one bit per granule, words updated with
 * atomic OR/AND so request threads can mark writes without a lock while
 * a job (mirror, backup) searches and resets.  The rules are in vdisk.h.
 *
 * Bit I (granule I, bytes [I*G, (I+1)*G)) is bit I % 64 of word I / 64.
 * Bits past the last granule are always 0, so counts and searches need
 * no special case for the last word.
 */
#include <config.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"

struct vd_bitmap {
  uint64_t size;
  uint32_t granularity;
  unsigned shift;                 /* log2(granularity) */
  uint64_t nbits;                 /* granules */
  size_t nwords;
  _Atomic uint64_t *words;
};

#define MIN_GRANULARITY 512u
#define MAX_GRANULARITY (1u << 31)

int
vd_bitmap_new(uint64_t size, uint32_t granularity, struct vd_bitmap **out)
{
  *out = NULL;
  if (size == 0 || granularity < MIN_GRANULARITY ||
      granularity > MAX_GRANULARITY || (granularity & (granularity - 1)))
    return vd_set_error(EINVAL, "dirty bitmap: granularity %u is not a power "
                        "of two from 512 to 2147483648, or size 0",
                        granularity);
  struct vd_bitmap *bm = calloc(1, sizeof *bm);
  if (!bm)
    return vd_set_error(ENOMEM, "dirty bitmap: out of memory");
  bm->size = size;
  bm->granularity = granularity;
  bm->shift = (unsigned) __builtin_ctz(granularity);
  bm->nbits = (size + granularity - 1) >> bm->shift;
  bm->nwords = (size_t) ((bm->nbits + 63) / 64);
  bm->words = calloc(bm->nwords, sizeof *bm->words);
  if (!bm->words) {
    size_t nwords = bm->nwords;
    free(bm);
    return vd_set_error(ENOMEM, "dirty bitmap: out of memory for %zu words",
                        nwords);
  }
  *out = bm;
  return 0;
}

void
vd_bitmap_free(struct vd_bitmap *bm)
{
  if (!bm)
    return;
  free((void *) bm->words);
  free(bm);
}

uint64_t vd_bitmap_size(const struct vd_bitmap *bm) { return bm->size; }
uint32_t vd_bitmap_granularity(const struct vd_bitmap *bm)
{ return bm->granularity; }

/* Bits [FIRST, END) of word W as a mask (0 <= FIRST < END <= 64). */
static uint64_t
mask_of(uint64_t first, uint64_t end)
{
  uint64_t hi = end == 64 ? ~0ull : (1ull << end) - 1;
  return hi & ~((1ull << first) - 1);
}

/* Set (SET) or clear bits [B0, B1). */
static void
bits_update(struct vd_bitmap *bm, uint64_t b0, uint64_t b1, bool set)
{
  while (b0 < b1) {
    size_t w = (size_t) (b0 / 64);
    uint64_t first = b0 % 64;
    uint64_t end = b1 - (uint64_t) w * 64 < 64 ? b1 - (uint64_t) w * 64 : 64;
    uint64_t m = mask_of(first, end);
    if (set)
      atomic_fetch_or_explicit(&bm->words[w], m, memory_order_relaxed);
    else
      atomic_fetch_and_explicit(&bm->words[w], ~m, memory_order_relaxed);
    b0 = (uint64_t) w * 64 + end;
  }
}

void
vd_bitmap_set(struct vd_bitmap *bm, uint64_t off, uint64_t len)
{
  if (len == 0 || off >= bm->size)
    return;
  uint64_t end = len > bm->size - off ? bm->size : off + len;
  bits_update(bm, off >> bm->shift,
              ((end - 1) >> bm->shift) + 1, true);
}

void
vd_bitmap_reset(struct vd_bitmap *bm, uint64_t off, uint64_t len)
{
  if (len == 0 || off >= bm->size)
    return;
  uint64_t end = len > bm->size - off ? bm->size : off + len;
  uint64_t g = bm->granularity;
  uint64_t b0 = (off + g - 1) >> bm->shift;          /* first whole */
  uint64_t b1 = end == bm->size ? bm->nbits : end >> bm->shift;
  if (b0 < b1)
    bits_update(bm, b0, b1, false);
}

void
vd_bitmap_clear(struct vd_bitmap *bm)
{
  for (size_t w = 0; w < bm->nwords; w++)
    atomic_store_explicit(&bm->words[w], 0, memory_order_relaxed);
}

static bool
bit_get(const struct vd_bitmap *bm, uint64_t b)
{
  uint64_t w = atomic_load_explicit(&bm->words[b / 64], memory_order_relaxed);
  return (w >> (b % 64)) & 1;
}

bool
vd_bitmap_get(const struct vd_bitmap *bm, uint64_t off)
{
  return off < bm->size && bit_get(bm, off >> bm->shift);
}

/* The first bit >= B whose value is VAL, or nbits. */
static uint64_t
bits_find(const struct vd_bitmap *bm, uint64_t b, bool val)
{
  while (b < bm->nbits) {
    size_t w = (size_t) (b / 64);
    uint64_t word = atomic_load_explicit(&bm->words[w], memory_order_relaxed);
    if (!val)
      word = ~word;
    word &= ~((1ull << (b % 64)) - 1);
    if (word) {
      uint64_t found = (uint64_t) w * 64 + (uint64_t) __builtin_ctzll(word);
      return found < bm->nbits ? found : bm->nbits;
    }
    b = (uint64_t) (w + 1) * 64;
  }
  return bm->nbits;
}

/* The run of granules valued VAL at or after OFF (see vdisk.h). */
static int
next_run(const struct vd_bitmap *bm, uint64_t off, uint64_t max_len,
         bool val, uint64_t *start, uint64_t *len)
{
  if (off >= bm->size)
    return 0;
  uint64_t b = bits_find(bm, off >> bm->shift, val);
  if (b >= bm->nbits)
    return 0;
  uint64_t s = b << bm->shift;
  if (s < off)
    s = off;
  uint64_t e_bit = bits_find(bm, b, !val);
  uint64_t e = e_bit >= bm->nbits ? bm->size : e_bit << bm->shift;
  if (max_len && e - s > max_len)
    e = s + max_len;
  *start = s;
  *len = e - s;
  return 1;
}

int
vd_bitmap_next_dirty(const struct vd_bitmap *bm, uint64_t off,
                     uint64_t max_len, uint64_t *start, uint64_t *len)
{
  return next_run(bm, off, max_len, true, start, len);
}

int
vd_bitmap_next_clean(const struct vd_bitmap *bm, uint64_t off,
                     uint64_t max_len, uint64_t *start, uint64_t *len)
{
  return next_run(bm, off, max_len, false, start, len);
}

uint64_t
vd_bitmap_count(const struct vd_bitmap *bm)
{
  uint64_t n = 0;
  for (size_t w = 0; w < bm->nwords; w++)
    n += (uint64_t) __builtin_popcountll(
        atomic_load_explicit(&bm->words[w], memory_order_relaxed));
  uint64_t bytes = n << bm->shift;
  /* The last granule may be short. */
  if (n && bit_get(bm, bm->nbits - 1))
    bytes -= ((uint64_t) bm->nbits << bm->shift) - bm->size;
  return bytes;
}

int
vd_bitmap_merge(struct vd_bitmap *dst, const struct vd_bitmap *src)
{
  if (dst->size != src->size || dst->granularity != src->granularity)
    return vd_set_error(EINVAL, "dirty bitmap merge: sizes or granularities "
                        "differ");
  for (size_t w = 0; w < dst->nwords; w++)
    atomic_fetch_or_explicit(&dst->words[w],
        atomic_load_explicit(&src->words[w], memory_order_relaxed),
        memory_order_relaxed);
  return 0;
}

size_t
vd_bitmap_serialized_size(const struct vd_bitmap *bm)
{
  return (size_t) ((bm->nbits + 7) / 8);
}

int
vd_bitmap_serialize(const struct vd_bitmap *bm, void *buf, size_t len)
{
  size_t n = vd_bitmap_serialized_size(bm);
  if (len < n)
    return vd_set_error(EINVAL, "dirty bitmap: %zu bytes needed, %zu given",
                        n, len);
  unsigned char *p = buf;
  for (size_t i = 0; i < n; i++) {
    uint64_t w = atomic_load_explicit(&bm->words[i / 8], memory_order_relaxed);
    p[i] = (unsigned char) (w >> (8 * (i % 8)));
  }
  return 0;
}

int
vd_bitmap_deserialize(struct vd_bitmap *bm, const void *buf, size_t len)
{
  size_t n = vd_bitmap_serialized_size(bm);
  const unsigned char *p = buf;
  if (len != n)
    return vd_set_error(EINVAL, "dirty bitmap: %zu bytes expected, %zu given",
                        n, len);
  unsigned tail = (unsigned) (bm->nbits % 8);
  if (tail && (p[n - 1] >> tail))
    return vd_set_error(EINVAL, "dirty bitmap: bits set past the last "
                        "granule");
  for (size_t w = 0; w < bm->nwords; w++) {
    uint64_t v = 0;
    for (size_t i = 0; i < 8 && w * 8 + i < n; i++)
      v |= (uint64_t) p[w * 8 + i] << (8 * i);
    atomic_store_explicit(&bm->words[w], v, memory_order_relaxed);
  }
  return 0;
}
