/* Unit tests for vdisk/crc32c.c (CRC-32C).  Built twice: against
 * libvdisk (SSE4.2 path where the CPU has it) and with
 * -DVD_CRC32C_PORTABLE (table-driven path only). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "vdisk/crc32c.h"

/* Bit-at-a-time reference, straight from the definition, continuing
 * from a previous result CRC. */
static uint32_t ref_crc32c_from(uint32_t crc, const uint8_t *p, size_t n)
{
  uint32_t c = ~crc;
  while (n--) {
    c ^= *p++;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

static uint32_t ref_crc32c(const uint8_t *p, size_t n)
{
  return ref_crc32c_from(0, p, n);
}

static void test_vectors(void)
{
  uint8_t b[32];

  CU_ASSERT_EQUAL(vd_crc32c(0, "123456789", 9), 0xE3069283u);
  CU_ASSERT_EQUAL(vd_crc32c(0, "", 0), 0);
  /* RFC 3720 appendix B.4. */
  memset(b, 0, sizeof b);
  CU_ASSERT_EQUAL(vd_crc32c(0, b, 32), 0x8A9136AAu);
  memset(b, 0xff, sizeof b);
  CU_ASSERT_EQUAL(vd_crc32c(0, b, 32), 0x62A8AB43u);
  for (int i = 0; i < 32; i++)
    b[i] = (uint8_t)i;
  CU_ASSERT_EQUAL(vd_crc32c(0, b, 32), 0x46DD794Eu);
  for (int i = 0; i < 32; i++)
    b[i] = (uint8_t)(31 - i);
  CU_ASSERT_EQUAL(vd_crc32c(0, b, 32), 0x113FDB5Cu);
}

static void test_against_reference(void)
{
  enum { N = 4099 };
  uint8_t *b = malloc(N + 8);

  CU_ASSERT_FATAL(b != NULL);
  srand(7);
  for (int i = 0; i < N + 8; i++)
    b[i] = (uint8_t)rand();
  /* Every alignment and many lengths. */
  for (int a = 0; a < 8; a++)
    for (int n = 0; n <= N; n += (n < 64 ? 1 : 97))
      CU_ASSERT_EQUAL(vd_crc32c(0, b + a, n), ref_crc32c(b + a, n));
  free(b);

  /* Long buffers, around the boundaries of the SSE4.2 path's lanes
   * (3 x 256 and 3 x 8192 bytes) and of the folding path's (from 512
   * bytes, 256 then 64 at a time, then a tail of up to 63). */
  static const size_t lens[] = { 511, 512, 513, 519, 520, 575, 576, 577,
                                 639, 767, 768, 769, 775, 776, 1023, 1024,
                                 1087, 1543, 24575, 24576, 24577, 24583,
                                 25343, 49152, 65536, 100003 };
  b = malloc(100003 + 8);
  CU_ASSERT_FATAL(b != NULL);
  for (int i = 0; i < 100003 + 8; i++)
    b[i] = (uint8_t)rand();
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
    for (int a = 0; a < 8; a += 3)
      CU_ASSERT_EQUAL(vd_crc32c(0x12345678, b + a, lens[i]),
                      ref_crc32c_from(0x12345678, b + a, lens[i]));
  free(b);
}

static void test_chaining(void)
{
  enum { N = 1000 };
  uint8_t b[N];
  uint32_t whole;

  for (int i = 0; i < N; i++)
    b[i] = (uint8_t)(i * 31 + 7);
  whole = vd_crc32c(0, b, N);
  for (int s = 0; s <= N; s++)
    CU_ASSERT_EQUAL(vd_crc32c(vd_crc32c(0, b, s), b + s, N - s), whole);
}

int main(void)
{
  CU_pSuite s;
  unsigned fails;

  if (CU_initialize_registry() != CUE_SUCCESS)
    return 1;
  s = CU_add_suite("crc32c", NULL, NULL);
  CU_add_test(s, "check values", test_vectors);
  CU_add_test(s, "matches the bitwise definition", test_against_reference);
  CU_add_test(s, "chaining", test_chaining);
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  CU_cleanup_registry();
  return fails ? 1 : 0;
}
