/* libvdisk — CRC-32C (Castagnoli).  See crc32c.h.
 *
 * Portable path: slicing-by-8 over tables built once at first use.
 * x86-64 path: the SSE4.2 crc32 instruction, chosen at run time.  Both
 * work on the bit-reflected register without the initial/final inversion,
 * which vd_crc32c applies once around them.
 */
#include <config.h>

#include <pthread.h>
#include <string.h>

#include "crc32c.h"

#define CRC32C_POLY_REFLECTED 0x82F63B78u

static uint32_t crc32c_table[8][256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;
#if defined(__x86_64__) && !defined(VD_CRC32C_PORTABLE)
static int crc32c_have_hw;
#endif

static void crc32c_init(void)
{
  for (unsigned i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = (c >> 1) ^ (CRC32C_POLY_REFLECTED & (0u - (c & 1)));
    crc32c_table[0][i] = c;
  }
  /* Table k advances a byte that sits k positions before the end. */
  for (unsigned i = 0; i < 256; i++)
    for (int k = 1; k < 8; k++)
      crc32c_table[k][i] = (crc32c_table[k - 1][i] >> 8) ^
                           crc32c_table[0][crc32c_table[k - 1][i] & 0xff];
#if defined(__x86_64__) && !defined(VD_CRC32C_PORTABLE)
  __builtin_cpu_init();
  crc32c_have_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc32c_sw(uint32_t c, const uint8_t *p, size_t len)
{
  while (len && ((uintptr_t)p & 7)) {
    c = (c >> 8) ^ crc32c_table[0][(c ^ *p++) & 0xff];
    len--;
  }
  while (len >= 8) {
    uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                       (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 |
                  (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
    c = crc32c_table[7][lo & 0xff] ^ crc32c_table[6][(lo >> 8) & 0xff] ^
        crc32c_table[5][(lo >> 16) & 0xff] ^ crc32c_table[4][lo >> 24] ^
        crc32c_table[3][hi & 0xff] ^ crc32c_table[2][(hi >> 8) & 0xff] ^
        crc32c_table[1][(hi >> 16) & 0xff] ^ crc32c_table[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  while (len--)
    c = (c >> 8) ^ crc32c_table[0][(c ^ *p++) & 0xff];
  return c;
}

#if defined(__x86_64__) && !defined(VD_CRC32C_PORTABLE)
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t c, const uint8_t *p, size_t len)
{
  uint64_t c64;

  while (len && ((uintptr_t)p & 7)) {
    c = __builtin_ia32_crc32qi(c, *p++);
    len--;
  }
  c64 = c;
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
    p += 8;
    len -= 8;
  }
  c = (uint32_t)c64;
  while (len--)
    c = __builtin_ia32_crc32qi(c, *p++);
  return c;
}
#endif

uint32_t vd_crc32c(uint32_t crc, const void *buf, size_t len)
{
  pthread_once(&crc32c_once, crc32c_init);
  crc = ~crc;
#if defined(__x86_64__) && !defined(VD_CRC32C_PORTABLE)
  if (crc32c_have_hw)
    return ~crc32c_hw(crc, buf, len);
#endif
  return ~crc32c_sw(crc, buf, len);
}
