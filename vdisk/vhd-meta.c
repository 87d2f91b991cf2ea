/* libvdisk — VHD metadata: footer and dynamic header coding, checksums,
 * CHS geometry, UTF-16 names, UUIDs.  Pure functions over bytes; the
 * layout is described in vhd.h.
 */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "vdisk/endian.h"
#include "vdisk/vhd.h"

uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t skip)
{
  uint32_t sum = 0;
  for (size_t i = 0; i < len; i++)
    if (i < skip || i >= skip + 4)
      sum += buf[i];
  return ~sum;
}

int vhd_footer_decode(const uint8_t *buf, size_t len, struct vhd_footer *f,
                      const char *where)
{
  uint8_t tmp[VHD_FOOTER_SIZE] = { 0 };

  /* A 511-byte footer (pre-2004) is the same structure minus the last,
   * reserved, byte. */
  memcpy(tmp, buf, len < sizeof tmp ? len : sizeof tmp);
  memcpy(f->cookie, tmp, 8);
  if (memcmp(f->cookie, "conectix", 8) != 0)
    return vd_set_error(EINVAL, "%s: no VHD footer (cookie is not \"conectix\")",
                        where);
  f->features = vd_get_be32(tmp + 8);
  f->version = vd_get_be32(tmp + 12);
  f->data_offset = vd_get_be64(tmp + 16);
  f->timestamp = vd_get_be32(tmp + 24);
  memcpy(f->creator_app, tmp + 28, 4);
  f->creator_version = vd_get_be32(tmp + 32);
  memcpy(f->creator_os, tmp + 36, 4);
  f->original_size = vd_get_be64(tmp + 40);
  f->current_size = vd_get_be64(tmp + 48);
  f->cylinders = vd_get_be16(tmp + 56);
  f->heads = tmp[58];
  f->sectors = tmp[59];
  f->type = vd_get_be32(tmp + 60);
  f->checksum = vd_get_be32(tmp + 64);
  memcpy(f->uuid, tmp + 68, 16);
  f->saved_state = tmp[84];

  uint32_t sum = vhd_checksum(tmp, VHD_FOOTER_SIZE, 64);
  if (sum != f->checksum)
    return vd_set_error(EINVAL,
                        "%s: footer checksum mismatch (stored 0x%08x, computed 0x%08x)",
                        where, f->checksum, sum);
  if ((f->version >> 16) != 1)
    return vd_set_error(EINVAL, "%s: footer format version 0x%08x is not 1.x",
                        where, f->version);
  if (f->type != VHD_TYPE_FIXED && f->type != VHD_TYPE_DYNAMIC &&
      f->type != VHD_TYPE_DIFF)
    return vd_set_error(EINVAL, "%s: footer disk type %u is not fixed (2), "
                        "dynamic (3) or differencing (4)", where, f->type);
  return 0;
}

void vhd_footer_encode(struct vhd_footer *f, uint8_t buf[VHD_FOOTER_SIZE])
{
  memset(buf, 0, VHD_FOOTER_SIZE);
  memcpy(buf, "conectix", 8);
  vd_put_be32(buf + 8, f->features);
  vd_put_be32(buf + 12, f->version);
  vd_put_be64(buf + 16, f->data_offset);
  vd_put_be32(buf + 24, f->timestamp);
  memcpy(buf + 28, f->creator_app, 4);
  vd_put_be32(buf + 32, f->creator_version);
  memcpy(buf + 36, f->creator_os, 4);
  vd_put_be64(buf + 40, f->original_size);
  vd_put_be64(buf + 48, f->current_size);
  vd_put_be16(buf + 56, f->cylinders);
  buf[58] = f->heads;
  buf[59] = f->sectors;
  vd_put_be32(buf + 60, f->type);
  memcpy(buf + 68, f->uuid, 16);
  buf[84] = f->saved_state;
  f->checksum = vhd_checksum(buf, VHD_FOOTER_SIZE, 64);
  vd_put_be32(buf + 64, f->checksum);
}

void vhd_footer_set_data_offset(uint8_t buf[VHD_FOOTER_SIZE], uint64_t off)
{
  vd_put_be64(buf + 16, off);
  vd_put_be32(buf + 64, vhd_checksum(buf, VHD_FOOTER_SIZE, 64));
}

int vhd_header_decode(const uint8_t *buf, struct vhd_header *h,
                      const char *where)
{
  memcpy(h->cookie, buf, 8);
  if (memcmp(h->cookie, "cxsparse", 8) != 0)
    return vd_set_error(EINVAL, "%s: no dynamic header (cookie is not \"cxsparse\")",
                        where);
  h->next_offset = vd_get_be64(buf + 8);
  h->bat_offset = vd_get_be64(buf + 16);
  h->version = vd_get_be32(buf + 24);
  h->max_entries = vd_get_be32(buf + 28);
  h->block_size = vd_get_be32(buf + 32);
  h->checksum = vd_get_be32(buf + 36);
  memcpy(h->parent_uuid, buf + 40, 16);
  h->parent_timestamp = vd_get_be32(buf + 56);
  memcpy(h->parent_name, buf + 64, 512);
  for (int i = 0; i < VHD_NLOC; i++) {
    const uint8_t *l = buf + 576 + 24 * i;
    memcpy(h->loc[i].code, l, 4);
    h->loc[i].space = vd_get_be32(l + 4);
    h->loc[i].length = vd_get_be32(l + 8);
    h->loc[i].offset = vd_get_be64(l + 16);
  }

  uint32_t sum = vhd_checksum(buf, VHD_HEADER_SIZE, 36);
  if (sum != h->checksum)
    return vd_set_error(EINVAL,
                        "%s: dynamic header checksum mismatch (stored 0x%08x, computed 0x%08x)",
                        where, h->checksum, sum);
  if ((h->version >> 16) != 1)
    return vd_set_error(EINVAL, "%s: dynamic header version 0x%08x is not 1.x",
                        where, h->version);
  return 0;
}

void vhd_header_encode(struct vhd_header *h, uint8_t buf[VHD_HEADER_SIZE])
{
  memset(buf, 0, VHD_HEADER_SIZE);
  memcpy(buf, "cxsparse", 8);
  vd_put_be64(buf + 8, h->next_offset);
  vd_put_be64(buf + 16, h->bat_offset);
  vd_put_be32(buf + 24, h->version);
  vd_put_be32(buf + 28, h->max_entries);
  vd_put_be32(buf + 32, h->block_size);
  memcpy(buf + 40, h->parent_uuid, 16);
  vd_put_be32(buf + 56, h->parent_timestamp);
  memcpy(buf + 64, h->parent_name, 512);
  for (int i = 0; i < VHD_NLOC; i++) {
    uint8_t *l = buf + 576 + 24 * i;
    memcpy(l, h->loc[i].code, 4);
    vd_put_be32(l + 4, h->loc[i].space);
    vd_put_be32(l + 8, h->loc[i].length);
    vd_put_be64(l + 16, h->loc[i].offset);
  }
  h->checksum = vhd_checksum(buf, VHD_HEADER_SIZE, 36);
  vd_put_be32(buf + 36, h->checksum);
}

void vhd_chs_spec(uint64_t sectors, uint16_t *c, uint8_t *h, uint8_t *s)
{
  uint64_t spt, heads, cth;

  if (sectors > VHD_MAX_CHS_SECTORS)
    sectors = VHD_MAX_CHS_SECTORS;
  if (sectors >= 65535ull * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = sectors / spt;
  } else {
    spt = 17;
    cth = sectors / spt;
    heads = (cth + 1023) / 1024;
    if (heads < 4)
      heads = 4;
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = sectors / spt;
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = sectors / spt;
    }
  }
  *c = (uint16_t)(cth / heads);
  *h = (uint8_t)heads;
  *s = (uint8_t)spt;
}

void vhd_chs_for_size(uint64_t size, uint16_t *c, uint8_t *h, uint8_t *s)
{
  vhd_chs_spec(size / VHD_SECTOR, c, h, s);
  if ((uint64_t)*c * *h * *s * VHD_SECTOR != size) {
    *c = 65535;
    *h = 16;
    *s = 255;
  }
}

uint64_t vhd_footer_size(const struct vhd_footer *f)
{
  bool max_chs = f->cylinders == 65535 && f->heads == 16 && f->sectors == 255;
  if (!max_chs && (memcmp(f->creator_app, "vpc ", 4) == 0 ||
                   memcmp(f->creator_app, "qemu", 4) == 0))
    return (uint64_t)f->cylinders * f->heads * f->sectors * VHD_SECTOR;
  return f->current_size;
}

uint32_t vhd_bitmap_size(uint32_t block_size)
{
  uint32_t bytes = (block_size / VHD_SECTOR + 7) / 8;
  return (bytes + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
}

int vhd_utf8_to_utf16(const char *in, uint8_t *out, size_t outlen, bool be)
{
  const uint8_t *p = (const uint8_t *)in;
  size_t n = 0;

  while (*p) {
    uint32_t cp;
    int more;
    if (*p < 0x80) {
      cp = *p;
      more = 0;
    } else if ((*p & 0xE0) == 0xC0) {
      cp = *p & 0x1F;
      more = 1;
    } else if ((*p & 0xF0) == 0xE0) {
      cp = *p & 0x0F;
      more = 2;
    } else if ((*p & 0xF8) == 0xF0) {
      cp = *p & 0x07;
      more = 3;
    } else {
      return -EINVAL;
    }
    p++;
    for (int i = 0; i < more; i++, p++) {
      if ((*p & 0xC0) != 0x80)
        return -EINVAL;
      cp = (cp << 6) | (*p & 0x3F);
    }
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000))
      return -EINVAL;
    uint16_t units[2];
    int nu = 1;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      units[0] = (uint16_t)(0xD800 | (cp >> 10));
      units[1] = (uint16_t)(0xDC00 | (cp & 0x3FF));
      nu = 2;
    } else {
      units[0] = (uint16_t)cp;
    }
    for (int i = 0; i < nu; i++) {
      if (n + 2 > outlen)
        return -EINVAL;
      if (be)
        vd_put_be16(out + n, units[i]);
      else
        vd_put_le16(out + n, units[i]);
      n += 2;
    }
  }
  return (int)n;
}

int vhd_utf16_to_utf8(const uint8_t *in, size_t inlen, bool be, char *out,
                      size_t outlen)
{
  size_t n = 0;

  for (size_t i = 0; i + 1 < inlen; i += 2) {
    uint32_t cp = be ? vd_get_be16(in + i) : vd_get_le16(in + i);
    if (cp == 0)
      break;
    if (cp >= 0xD800 && cp < 0xDC00) {
      if (i + 3 >= inlen)
        return -EINVAL;
      uint32_t lo = be ? vd_get_be16(in + i + 2) : vd_get_le16(in + i + 2);
      if (lo < 0xDC00 || lo >= 0xE000)
        return -EINVAL;
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      i += 2;
    } else if (cp >= 0xDC00 && cp < 0xE000) {
      return -EINVAL;
    }
    uint8_t b[4];
    int nb;
    if (cp < 0x80) {
      b[0] = (uint8_t)cp;
      nb = 1;
    } else if (cp < 0x800) {
      b[0] = (uint8_t)(0xC0 | (cp >> 6));
      b[1] = (uint8_t)(0x80 | (cp & 0x3F));
      nb = 2;
    } else if (cp < 0x10000) {
      b[0] = (uint8_t)(0xE0 | (cp >> 12));
      b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
      b[2] = (uint8_t)(0x80 | (cp & 0x3F));
      nb = 3;
    } else {
      b[0] = (uint8_t)(0xF0 | (cp >> 18));
      b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
      b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
      b[3] = (uint8_t)(0x80 | (cp & 0x3F));
      nb = 4;
    }
    if (n + (size_t)nb + 1 > outlen)
      return -EINVAL;
    memcpy(out + n, b, (size_t)nb);
    n += (size_t)nb;
  }
  if (n + 1 > outlen)
    return -EINVAL;
  out[n] = '\0';
  return (int)n;
}

void vhd_uuid_generate(uint8_t uuid[16])
{
  size_t got = 0;
  while (got < 16) {
    ssize_t r = getrandom(uuid + got, 16 - got, 0);
    if (r <= 0) {
      /* No entropy source: fall back to time-derived bytes. */
      uint64_t t = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)uuid;
      for (; got < 16; got++, t = t * 6364136223846793005ull + 1)
        uuid[got] = (uint8_t)(t >> 56);
      break;
    }
    got += (size_t)r;
  }
  uuid[6] = (uint8_t)((uuid[6] & 0x0F) | 0x40);
  uuid[8] = (uint8_t)((uuid[8] & 0x3F) | 0x80);
}

void vhd_uuid_format(const uint8_t u[16], char out[37])
{
  static const char hex[] = "0123456789abcdef";
  int n = 0;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      out[n++] = '-';
    out[n++] = hex[u[i] >> 4];
    out[n++] = hex[u[i] & 15];
  }
  out[n] = '\0';
}

uint32_t vhd_now(void)
{
  time_t t = time(NULL);
  return t > VHD_EPOCH_OFFSET ? (uint32_t)(t - VHD_EPOCH_OFFSET) : 0;
}
