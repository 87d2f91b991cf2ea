/* Unit tests for dirty bitmaps (vdisk/bitmap.c): the range rules of
 * vdisk.h (set touches, reset needs whole granules), the searches, the
 * count, merge, serialization, and concurrent setters losing no bit. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/cu.h"
#include "vdisk/vdisk.h"

static struct vd_bitmap *
mk(uint64_t size, uint32_t gran)
{
  struct vd_bitmap *bm = NULL;
  CU_ASSERT_EQUAL_FATAL(vd_bitmap_new(size, gran, &bm), 0);
  return bm;
}

static void
test_new_limits(void)
{
  struct vd_bitmap *bm = NULL;
  CU_ASSERT_EQUAL(vd_bitmap_new(1 << 20, 256, &bm), -EINVAL);   /* < 512 */
  CU_ASSERT_EQUAL(vd_bitmap_new(1 << 20, 3 << 10, &bm), -EINVAL); /* not 2^n */
  CU_ASSERT_EQUAL(vd_bitmap_new(0, 65536, &bm), -EINVAL);
  CU_ASSERT_PTR_NULL(bm);
  bm = mk(1 << 20, 1u << 31);
  CU_ASSERT_EQUAL(vd_bitmap_size(bm), 1 << 20);
  CU_ASSERT_EQUAL(vd_bitmap_granularity(bm), 1u << 31);
  vd_bitmap_free(bm);
  vd_bitmap_free(NULL);
}

static void
test_set_touches(void)
{
  struct vd_bitmap *bm = mk(1 << 20, 65536);
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), 0);
  vd_bitmap_set(bm, 65535, 2);                /* touches granules 0 and 1 */
  CU_ASSERT_TRUE(vd_bitmap_get(bm, 0));
  CU_ASSERT_TRUE(vd_bitmap_get(bm, 65536 + 100));
  CU_ASSERT_FALSE(vd_bitmap_get(bm, 131072));
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), 131072);
  vd_bitmap_set(bm, 5 << 20, 4096);           /* past the end: nothing */
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), 131072);
  CU_ASSERT_FALSE(vd_bitmap_get(bm, 2 << 20));
  vd_bitmap_set(bm, 100, 0);                  /* empty range: nothing */
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), 131072);
  vd_bitmap_free(bm);
}

static void
test_reset_whole_granules(void)
{
  struct vd_bitmap *bm = mk(1 << 20, 65536);
  vd_bitmap_set(bm, 0, 1 << 20);
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), 1 << 20);
  /* [1000, 200000) covers granule 1 and 2 wholly, 0 and 3 partly. */
  vd_bitmap_reset(bm, 1000, 199000);
  CU_ASSERT_TRUE(vd_bitmap_get(bm, 0));
  CU_ASSERT_FALSE(vd_bitmap_get(bm, 65536));
  CU_ASSERT_FALSE(vd_bitmap_get(bm, 131072));
  CU_ASSERT_TRUE(vd_bitmap_get(bm, 196608));
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), (1 << 20) - 131072);
  vd_bitmap_clear(bm);
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), 0);
  vd_bitmap_free(bm);

  /* A size that is not a granule multiple: the short last granule counts
   * as whole for a reset that reaches the end, and is counted clipped. */
  bm = mk(100000, 65536);
  vd_bitmap_set(bm, 99999, 1);
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), 100000 - 65536);
  vd_bitmap_reset(bm, 65536, 10);             /* not whole: stays */
  CU_ASSERT_TRUE(vd_bitmap_get(bm, 70000));
  vd_bitmap_reset(bm, 65536, 100000 - 65536);
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), 0);
  vd_bitmap_free(bm);
}

static void
test_search(void)
{
  struct vd_bitmap *bm = mk(64 << 20, 4096);   /* 16384 bits, 256 words */
  uint64_t s, l;
  CU_ASSERT_EQUAL(vd_bitmap_next_dirty(bm, 0, 0, &s, &l), 0);
  CU_ASSERT_EQUAL(vd_bitmap_next_clean(bm, 0, 0, &s, &l), 1);
  CU_ASSERT_EQUAL(s, 0);
  CU_ASSERT_EQUAL(l, 64 << 20);
  /* A run across a word boundary: granules 60..70. */
  vd_bitmap_set(bm, 60 * 4096, 11 * 4096);
  /* And one far away, in the last granule. */
  vd_bitmap_set(bm, (64 << 20) - 1, 1);
  CU_ASSERT_EQUAL(vd_bitmap_next_dirty(bm, 0, 0, &s, &l), 1);
  CU_ASSERT_EQUAL(s, 60 * 4096);
  CU_ASSERT_EQUAL(l, 11 * 4096);
  /* From inside the run: starts at OFF. */
  CU_ASSERT_EQUAL(vd_bitmap_next_dirty(bm, 65 * 4096 + 7, 0, &s, &l), 1);
  CU_ASSERT_EQUAL(s, 65 * 4096 + 7);
  CU_ASSERT_EQUAL(l, 71 * 4096 - s);
  /* MAX_LEN caps the run. */
  CU_ASSERT_EQUAL(vd_bitmap_next_dirty(bm, 0, 8192, &s, &l), 1);
  CU_ASSERT_EQUAL(s, 60 * 4096);
  CU_ASSERT_EQUAL(l, 8192);
  CU_ASSERT_EQUAL(vd_bitmap_next_dirty(bm, 71 * 4096, 0, &s, &l), 1);
  CU_ASSERT_EQUAL(s, (64 << 20) - 4096);
  CU_ASSERT_EQUAL(l, 4096);
  CU_ASSERT_EQUAL(vd_bitmap_next_dirty(bm, 64 << 20, 0, &s, &l), 0);
  CU_ASSERT_EQUAL(vd_bitmap_next_clean(bm, 60 * 4096, 0, &s, &l), 1);
  CU_ASSERT_EQUAL(s, 71 * 4096);
  CU_ASSERT_EQUAL(l, (64 << 20) - 4096 - 71 * 4096);
  CU_ASSERT_EQUAL(vd_bitmap_next_clean(bm, (64 << 20) - 4096, 0, &s, &l), 0);
  vd_bitmap_free(bm);
}

static void
test_merge_serialize(void)
{
  struct vd_bitmap *a = mk(1 << 20, 65536), *b = mk(1 << 20, 65536);
  struct vd_bitmap *c = mk(1 << 20, 4096);
  vd_bitmap_set(a, 0, 1);
  vd_bitmap_set(b, 15 * 65536, 1);
  CU_ASSERT_EQUAL(vd_bitmap_merge(a, c), -EINVAL);
  CU_ASSERT_EQUAL(vd_bitmap_merge(a, b), 0);
  CU_ASSERT_EQUAL(vd_bitmap_count(a), 2 * 65536);
  CU_ASSERT_EQUAL(vd_bitmap_serialized_size(a), 2);   /* 16 bits */
  unsigned char buf[8] = { 0 };
  CU_ASSERT_EQUAL(vd_bitmap_serialize(a, buf, 1), -EINVAL);
  CU_ASSERT_EQUAL(vd_bitmap_serialize(a, buf, sizeof buf), 0);
  CU_ASSERT_EQUAL(buf[0], 0x01);
  CU_ASSERT_EQUAL(buf[1], 0x80);
  vd_bitmap_clear(b);
  CU_ASSERT_EQUAL(vd_bitmap_deserialize(b, buf, 3), -EINVAL);
  CU_ASSERT_EQUAL(vd_bitmap_deserialize(b, buf, 2), 0);
  CU_ASSERT_TRUE(vd_bitmap_get(b, 0));
  CU_ASSERT_TRUE(vd_bitmap_get(b, 15 * 65536));
  CU_ASSERT_EQUAL(vd_bitmap_count(b), 2 * 65536);
  /* Bits past the last granule are refused: 100000 bytes = 2 granules. */
  struct vd_bitmap *d = mk(100000, 65536);
  unsigned char bad = 0x04;
  CU_ASSERT_EQUAL(vd_bitmap_serialized_size(d), 1);
  CU_ASSERT_EQUAL(vd_bitmap_deserialize(d, &bad, 1), -EINVAL);
  vd_bitmap_free(a);
  vd_bitmap_free(b);
  vd_bitmap_free(c);
  vd_bitmap_free(d);
}

/* Many threads set disjoint granules that share words: with a non-atomic
 * read-modify-write some bits would be lost. */
struct setter { struct vd_bitmap *bm; int k; };
#define NSETTERS 4
#define NGRAN (1 << 16)

static void *
setter_main(void *arg)
{
  struct setter *s = arg;
  for (int rep = 0; rep < 4; rep++)
    for (uint64_t g = s->k; g < NGRAN; g += NSETTERS) {
      vd_bitmap_set(s->bm, g * 512, 1);
      if (rep < 3)
        vd_bitmap_reset(s->bm, g * 512, 512);
    }
  return NULL;
}

static void
test_concurrent_setters(void)
{
  struct vd_bitmap *bm = mk((uint64_t) NGRAN * 512, 512);
  pthread_t t[NSETTERS];
  struct setter s[NSETTERS];
  for (int i = 0; i < NSETTERS; i++) {
    s[i] = (struct setter) { bm, i };
    pthread_create(&t[i], NULL, setter_main, &s[i]);
  }
  for (int i = 0; i < NSETTERS; i++)
    pthread_join(t[i], NULL);
  CU_ASSERT_EQUAL(vd_bitmap_count(bm), (uint64_t) NGRAN * 512);
  vd_bitmap_free(bm);
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "granularity and size limits", test_new_limits },
    { "set marks every granule the range touches", test_set_touches },
    { "reset clears only whole granules", test_reset_whole_granules },
    { "next dirty / next clean runs", test_search },
    { "merge and serialization", test_merge_serialize },
    { "concurrent setters lose no bit", test_concurrent_setters },
    { NULL, NULL },
  };
  return cu_main("bitmap", tests);
}
