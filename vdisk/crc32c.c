/* libvdisk — CRC-32C (Castagnoli).  See crc32c.h.
 *
 * Portable path: slicing-by-8 over tables built once at first use.
 * x86-64 path: the SSE4.2 crc32 instruction, chosen at run time.  Its
 * latency is three times its issue interval, so long buffers are cut in
 * three lanes computed together, then joined: a lane's register is
 * advanced over the following lane's length of zero bytes (a linear map
 * over GF(2), tabulated once per lane length) and XORed with the next.
 * Both paths work on the bit-reflected register without the initial and
 * final inversion, which vd_crc32c applies once around them.
 */
#include <config.h>

#include <pthread.h>
#include <string.h>

#include "vdisk/crc32c.h"

#define CRC32C_POLY_REFLECTED 0x82F63B78u

static uint32_t crc32c_table[8][256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;
#if defined(__x86_64__) && !defined(VD_CRC32C_PORTABLE)
#define CRC32C_HW 1
#define CRC32C_LONG 8192           /* lane lengths, bytes (multiples of 8) */
#define CRC32C_SHORT 256
static int crc32c_have_hw;
/* Advance a register over CRC32C_LONG / CRC32C_SHORT zero bytes, one
 * table per byte of the register. */
static uint32_t crc32c_long[4][256], crc32c_short[4][256];

/* Apply the 32x32 bit matrix MAT (MAT[i] = image of bit i) to VEC. */
static uint32_t crc32c_gf2_apply(const uint32_t *mat, uint32_t vec)
{
  uint32_t r = 0;
  for (int i = 0; vec; i++, vec >>= 1)
    if (vec & 1)
      r ^= mat[i];
  return r;
}

/* OUT = A composed with B. */
static void crc32c_gf2_compose(uint32_t *out, const uint32_t *a,
                               const uint32_t *b)
{
  uint32_t t[32];
  for (int i = 0; i < 32; i++)
    t[i] = crc32c_gf2_apply(a, b[i]);
  memcpy(out, t, sizeof t);
}

/* TAB = the map "feed N zero bytes", split by register byte. */
static void crc32c_zeros_table(uint32_t tab[4][256], size_t n)
{
  uint32_t step[32], op[32];

  /* One zero bit: shift right, folding the polynomial in for bit 0. */
  step[0] = CRC32C_POLY_REFLECTED;
  for (int i = 1; i < 32; i++)
    step[i] = 1u << (i - 1);
  for (int k = 0; k < 3; k++)                  /* 8 bits: one byte */
    crc32c_gf2_compose(step, step, step);
  for (int i = 0; i < 32; i++)
    op[i] = 1u << i;
  for (; n; n >>= 1) {                         /* square and multiply */
    if (n & 1)
      crc32c_gf2_compose(op, step, op);
    crc32c_gf2_compose(step, step, step);
  }
  for (int k = 0; k < 4; k++)
    for (unsigned b = 0; b < 256; b++)
      tab[k][b] = crc32c_gf2_apply(op, b << (8 * k));
}

static uint32_t crc32c_shift(const uint32_t tab[4][256], uint32_t c)
{
  return tab[0][c & 0xff] ^ tab[1][(c >> 8) & 0xff] ^
         tab[2][(c >> 16) & 0xff] ^ tab[3][c >> 24];
}
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
#ifdef CRC32C_HW
  __builtin_cpu_init();
  crc32c_have_hw = __builtin_cpu_supports("sse4.2");
  crc32c_zeros_table(crc32c_long, CRC32C_LONG);
  crc32c_zeros_table(crc32c_short, CRC32C_SHORT);
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

#ifdef CRC32C_HW
/* Three lanes of LANE bytes each from P, joined with TAB. */
__attribute__((target("sse4.2")))
static uint64_t crc32c_hw3(uint64_t c0, const uint8_t *p, size_t lane,
                           const uint32_t tab[4][256])
{
  uint64_t c1 = 0, c2 = 0, v0, v1, v2;

  for (const uint8_t *end = p + lane; p < end; p += 8) {
    memcpy(&v0, p, 8);
    memcpy(&v1, p + lane, 8);
    memcpy(&v2, p + 2 * lane, 8);
    c0 = __builtin_ia32_crc32di(c0, v0);
    c1 = __builtin_ia32_crc32di(c1, v1);
    c2 = __builtin_ia32_crc32di(c2, v2);
  }
  c0 = crc32c_shift(tab, (uint32_t)c0) ^ (uint32_t)c1;
  return crc32c_shift(tab, (uint32_t)c0) ^ (uint32_t)c2;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t c, const uint8_t *p, size_t len)
{
  uint64_t c64;

  while (len && ((uintptr_t)p & 7)) {
    c = __builtin_ia32_crc32qi(c, *p++);
    len--;
  }
  c64 = c;
  for (; len >= 3 * CRC32C_LONG; p += 3 * CRC32C_LONG, len -= 3 * CRC32C_LONG)
    c64 = crc32c_hw3(c64, p, CRC32C_LONG, crc32c_long);
  for (; len >= 3 * CRC32C_SHORT;
       p += 3 * CRC32C_SHORT, len -= 3 * CRC32C_SHORT)
    c64 = crc32c_hw3(c64, p, CRC32C_SHORT, crc32c_short);
  for (; len >= 8; p += 8, len -= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
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
#ifdef CRC32C_HW
  if (crc32c_have_hw)
    return ~crc32c_hw(crc, buf, len);
#endif
  return ~crc32c_sw(crc, buf, len);
}
