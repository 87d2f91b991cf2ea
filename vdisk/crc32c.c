/* libvdisk — CRC-32C (Castagnoli).  See crc32c.h.
 *
 * Portable path: slicing-by-8 over tables built once at first use.
 * x86-64 path: the SSE4.2 crc32 instruction, chosen at run time.  Its
 * latency is three times its issue interval, so long buffers are cut in
 * three lanes computed together, then joined: a lane's register is
 * advanced over the following lane's length of zero bytes (a linear map
 * over GF(2), tabulated once per lane length) and XORed with the next.
 * Where the CPU has AVX-512 and VPCLMULQDQ, buffers of CRC32C_FOLD_MIN
 * bytes or more are folded 256 bytes at a time instead (carry-less
 * multiplication, twice the crc32 instruction's rate: bench/README-vdz.md)
 * and the last 16-byte remainder handed to the crc32 instruction.
 * All paths work on the bit-reflected register without the initial and
 * final inversion, which vd_crc32c applies once around them.
 */
#include <config.h>

#include <pthread.h>
#include <string.h>

#include "vdisk/crc32c.h"

#if defined(__x86_64__) && !defined(VD_CRC32C_PORTABLE)
#include <immintrin.h>
#endif

#define CRC32C_POLY_REFLECTED 0x82F63B78u

static uint32_t crc32c_table[8][256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;
#if defined(__x86_64__) && !defined(VD_CRC32C_PORTABLE)
#define CRC32C_HW 1
#define CRC32C_LONG 8192           /* lane lengths, bytes (multiples of 8) */
#define CRC32C_SHORT 256
#define CRC32C_FOLD_MIN 512        /* shortest buffer worth folding */
static int crc32c_have_hw, crc32c_have_fold;
/* Folding constants, {x^(64+D-1) mod P, x^(D-1) mod P} bit-reflected into
 * 64 bits, for a distance of D = 2048, 512, 384, 256 and 128 bits. */
static uint64_t crc32c_k2048[2], crc32c_k512[2], crc32c_k384[2],
                crc32c_k256[2], crc32c_k128[2];
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

/* x^N mod P, bit-reflected into 64 bits: the coefficient of x^d in bit
 * 63 - d, the order in which a 64-bit word of the buffer holds its bits
 * (its first bit, bit 0, is the highest power). */
static uint64_t crc32c_xpow_reflected(unsigned n)
{
  uint64_t r = 1, out = 0;

  for (unsigned i = 0; i < n; i++) {
    r <<= 1;
    if (r >> 32)
      r ^= 0x11EDC6F41ull;                    /* P, not reflected */
  }
  for (int d = 0; d < 32; d++)
    out |= ((r >> d) & 1) << (63 - d);
  return out;
}

/* The constants that move a 16-byte block D bits further on.  A block
 * X = H x^64 + L (H: its first 8 bytes) becomes H x^(64+D) + L x^D mod P,
 * and a carry-less product of two reflected words carries an extra
 * factor x, hence the D-1. */
static void crc32c_fold_consts(uint64_t k[2], unsigned d)
{
  k[0] = crc32c_xpow_reflected(64 + d - 1);
  k[1] = crc32c_xpow_reflected(d - 1);
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
  crc32c_have_fold = crc32c_have_hw && __builtin_cpu_supports("avx512f") &&
                     __builtin_cpu_supports("vpclmulqdq");
  crc32c_fold_consts(crc32c_k2048, 2048);
  crc32c_fold_consts(crc32c_k512, 512);
  crc32c_fold_consts(crc32c_k384, 384);
  crc32c_fold_consts(crc32c_k256, 256);
  crc32c_fold_consts(crc32c_k128, 128);
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

#define CRC32C_FOLD_TARGET \
  __attribute__((target("sse4.2,pclmul,avx512f,vpclmulqdq")))

/* Each 128-bit lane of X moved on by the distance of K, XORed with D. */
CRC32C_FOLD_TARGET
static __m512i crc32c_fold512(__m512i x, __m512i k, __m512i d)
{
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00),
                                   _mm512_clmulepi64_epi128(x, k, 0x11), d,
                                   0x96);
}

CRC32C_FOLD_TARGET
static __m128i crc32c_fold128(__m128i x, const uint64_t k[2], __m128i d)
{
  __m128i kk = _mm_set_epi64x((long long)k[1], (long long)k[0]);
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, kk, 0x00),
                                     _mm_clmulepi64_si128(x, kk, 0x11)), d);
}

/* C continued over LEN >= CRC32C_FOLD_MIN bytes at P: four 64-byte
 * accumulators folded 256 bytes at a time, then into one 16-byte block,
 * whose CRC (from 0) the crc32 instruction takes, and the tail. */
CRC32C_FOLD_TARGET
static uint32_t crc32c_fold(uint32_t c, const uint8_t *p, size_t len)
{
  const __m512i k2048 = _mm512_broadcast_i32x4(
    _mm_loadu_si128((const void *)crc32c_k2048));
  const __m512i k512 = _mm512_broadcast_i32x4(
    _mm_loadu_si128((const void *)crc32c_k512));
  __m512i a0, a1, a2, a3;
  __m128i x;
  uint64_t c64;

  /* Starting from register C is starting from 0 with C XORed in. */
  a0 = _mm512_xor_si512(_mm512_loadu_si512(p),
                        _mm512_castsi128_si512(_mm_cvtsi32_si128((int)c)));
  a1 = _mm512_loadu_si512(p + 64);
  a2 = _mm512_loadu_si512(p + 128);
  a3 = _mm512_loadu_si512(p + 192);
  for (p += 256, len -= 256; len >= 256; p += 256, len -= 256) {
    a0 = crc32c_fold512(a0, k2048, _mm512_loadu_si512(p));
    a1 = crc32c_fold512(a1, k2048, _mm512_loadu_si512(p + 64));
    a2 = crc32c_fold512(a2, k2048, _mm512_loadu_si512(p + 128));
    a3 = crc32c_fold512(a3, k2048, _mm512_loadu_si512(p + 192));
  }
  a1 = crc32c_fold512(a0, k512, a1);
  a2 = crc32c_fold512(a1, k512, a2);
  a3 = crc32c_fold512(a2, k512, a3);
  for (; len >= 64; p += 64, len -= 64)
    a3 = crc32c_fold512(a3, k512, _mm512_loadu_si512(p));

  x = _mm512_extracti32x4_epi32(a3, 3);
  x = crc32c_fold128(_mm512_extracti32x4_epi32(a3, 0), crc32c_k384, x);
  x = crc32c_fold128(_mm512_extracti32x4_epi32(a3, 1), crc32c_k256, x);
  x = crc32c_fold128(_mm512_extracti32x4_epi32(a3, 2), crc32c_k128, x);
  c64 = __builtin_ia32_crc32di(0, (uint64_t)_mm_cvtsi128_si64(x));
  c64 = __builtin_ia32_crc32di(c64,
                               (uint64_t)_mm_extract_epi64(x, 1));
  return crc32c_hw((uint32_t)c64, p, len);
}
#endif

uint32_t vd_crc32c(uint32_t crc, const void *buf, size_t len)
{
  pthread_once(&crc32c_once, crc32c_init);
  crc = ~crc;
#ifdef CRC32C_HW
  if (crc32c_have_fold && len >= CRC32C_FOLD_MIN)
    return ~crc32c_fold(crc, buf, len);
  if (crc32c_have_hw)
    return ~crc32c_hw(crc, buf, len);
#endif
  return ~crc32c_sw(crc, buf, len);
}
