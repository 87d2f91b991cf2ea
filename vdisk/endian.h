/* libvdisk — endian and overflow helpers (internal).
 *
 * On-disk and on-wire integers go through these right after reading and
 * right before writing, never used raw.  They work on byte pointers, so
 * no alignment is assumed.
 *
 * Header-only (static inline, no library symbol) and not installed: the
 * engine and the in-tree frontends (vdisk-nbd's wire format) share it
 * without reaching into the library.  Keep it free of library calls.
 */
#ifndef VDISK_ENDIAN_H
#define VDISK_ENDIAN_H

#include <stdbool.h>
#include <stdint.h>

static inline uint16_t vd_get_be16(const void *p)
{
  const uint8_t *b = p;
  return (uint16_t)((b[0] << 8) | b[1]);
}
static inline uint32_t vd_get_be32(const void *p)
{
  const uint8_t *b = p;
  return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) |
         ((uint32_t)b[2] << 8) | b[3];
}
static inline uint64_t vd_get_be64(const void *p)
{
  const uint8_t *b = p;
  return ((uint64_t)vd_get_be32(b) << 32) | vd_get_be32(b + 4);
}
static inline void vd_put_be16(void *p, uint16_t v)
{
  uint8_t *b = p;
  b[0] = (uint8_t)(v >> 8);
  b[1] = (uint8_t)v;
}
static inline void vd_put_be32(void *p, uint32_t v)
{
  uint8_t *b = p;
  b[0] = (uint8_t)(v >> 24);
  b[1] = (uint8_t)(v >> 16);
  b[2] = (uint8_t)(v >> 8);
  b[3] = (uint8_t)v;
}
static inline void vd_put_be64(void *p, uint64_t v)
{
  vd_put_be32(p, (uint32_t)(v >> 32));
  vd_put_be32((uint8_t *)p + 4, (uint32_t)v);
}
static inline uint16_t vd_get_le16(const void *p)
{
  const uint8_t *b = p;
  return (uint16_t)(b[0] | (b[1] << 8));
}
static inline uint32_t vd_get_le32(const void *p)
{
  const uint8_t *b = p;
  return b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) |
         ((uint32_t)b[3] << 24);
}
static inline uint64_t vd_get_le64(const void *p)
{
  const uint8_t *b = p;
  return vd_get_le32(b) | ((uint64_t)vd_get_le32(b + 4) << 32);
}
static inline void vd_put_le16(void *p, uint16_t v)
{
  uint8_t *b = p;
  b[0] = (uint8_t)v;
  b[1] = (uint8_t)(v >> 8);
}
static inline void vd_put_le32(void *p, uint32_t v)
{
  uint8_t *b = p;
  b[0] = (uint8_t)v;
  b[1] = (uint8_t)(v >> 8);
  b[2] = (uint8_t)(v >> 16);
  b[3] = (uint8_t)(v >> 24);
}
static inline void vd_put_le64(void *p, uint64_t v)
{
  vd_put_le32(p, (uint32_t)v);
  vd_put_le32((uint8_t *)p + 4, (uint32_t)(v >> 32));
}

/* Overflow-checked arithmetic: return true on overflow. */
static inline bool vd_add_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
  return __builtin_add_overflow(a, b, r);
}
static inline bool vd_mul_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
  return __builtin_mul_overflow(a, b, r);
}
/* True if [off, off+len) lies inside [0, size) without overflow. */
static inline bool vd_range_ok(uint64_t off, uint64_t len, uint64_t size)
{
  uint64_t end;
  return !vd_add_overflow(off, len, &end) && end <= size;
}

static inline bool vd_is_pow2(uint64_t v)
{
  return v && !(v & (v - 1));
}
static inline uint64_t vd_round_up(uint64_t v, uint64_t a)
{
  return (v + a - 1) / a * a;
}
static inline uint64_t vd_round_down(uint64_t v, uint64_t a)
{
  return v / a * a;
}

#endif /* VDISK_ENDIAN_H */
