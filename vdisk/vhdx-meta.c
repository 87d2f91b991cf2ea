/* libvdisk — VHDX codecs: headers, region table, metadata items, parent
 * locator, BAT geometry ([MS-VHDX] 2.2, 2.5, 2.6; layout in vhdx.h).
 * Pure functions over bytes; every field is checked before it is used. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/crc32c.h"
#include "vdisk/endian.h"
#include "vdisk/vhd.h"
#include "vdisk/vhdx.h"

/* 2DC27766-F623-4200-9D64-115E9BFD4A08 */
const uint8_t vhdx_guid_bat[16] = {
  0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
  0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };
/* 8B7CA206-4790-4B9A-B8FE-575F050F886E */
const uint8_t vhdx_guid_metadata[16] = {
  0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
  0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
/* CAA16737-FA36-4D43-B3B6-33F0AA44E76B */
const uint8_t vhdx_guid_file_params[16] = {
  0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d,
  0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b };
/* 2FA54224-CD1B-4876-B211-5DBED83BF4B8 */
const uint8_t vhdx_guid_disk_size[16] = {
  0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48,
  0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 };
/* BECA12AB-B2E6-4523-93EF-C309E000C746 */
const uint8_t vhdx_guid_page83[16] = {
  0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45,
  0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46 };
/* 8141BF1D-A96F-4709-BA47-F233A8FAAB5F */
const uint8_t vhdx_guid_lss[16] = {
  0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47,
  0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f };
/* CDA348C7-445D-4471-9CC9-E9885251C556 */
const uint8_t vhdx_guid_pss[16] = {
  0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44,
  0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56 };
/* A8D35F2D-B30B-454D-ABF7-D3D84834AB0C */
const uint8_t vhdx_guid_parent_locator[16] = {
  0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45,
  0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c };
/* B04AEFB7-D19E-4A81-B789-25B8E9445913 */
const uint8_t vhdx_guid_locator_vhdx[16] = {
  0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a,
  0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13 };

/* ---- GUIDs ---- */

void
vhdx_guid_format(const uint8_t g[16], char out[37])
{
  /* Text order: Data1..Data3 little-endian, then Data4 as stored. */
  uint8_t t[16] = { g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6] };
  memcpy(t + 8, g + 8, 8);
  vhd_uuid_format(t, out);
}

static int
vhdx_hex(int c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int
vhdx_guid_parse(const char *s, uint8_t g[16])
{
  uint8_t t[16];
  size_t len = strlen(s);
  if (len == 38 && s[0] == '{' && s[37] == '}') {
    s++;
    len = 36;
  }
  if (len != 36)
    return -EINVAL;
  int n = 0;
  for (int i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-')
        return -EINVAL;
      continue;
    }
    int hi = vhdx_hex(s[i]), lo = i + 1 < 36 ? vhdx_hex(s[i + 1]) : -1;
    if (hi < 0 || lo < 0)
      return -EINVAL;
    t[n++] = (uint8_t)(hi << 4 | lo);
    i++;
  }
  uint8_t b[16] = { t[3], t[2], t[1], t[0], t[5], t[4], t[7], t[6] };
  memcpy(b + 8, t + 8, 8);
  memcpy(g, b, 16);
  return 0;
}

bool
vhdx_guid_zero(const uint8_t g[16])
{
  static const uint8_t z[16];
  return memcmp(g, z, 16) == 0;
}

uint32_t
vhdx_checksum(const uint8_t *buf, size_t len)
{
  static const uint8_t z[4];
  uint32_t c = vd_crc32c(0, buf, 4);
  c = vd_crc32c(c, z, 4);
  return vd_crc32c(c, buf + 8, len - 8);
}

/* ---- 2.2.2 headers ---- */

int
vhdx_header_decode(const uint8_t *buf, struct vhdx_header *h,
                   const char *where)
{
  if (memcmp(buf, "head", 4) != 0)
    return vd_set_error(EINVAL, "%s: bad signature", where);
  if (vd_get_le32(buf + 4) != vhdx_checksum(buf, VHDX_HEADER_SIZE))
    return vd_set_error(EINVAL, "%s: checksum mismatch", where);
  memset(h, 0, sizeof *h);
  h->seq = vd_get_le64(buf + 8);
  memcpy(h->file_write_guid, buf + 16, 16);
  memcpy(h->data_write_guid, buf + 32, 16);
  memcpy(h->log_guid, buf + 48, 16);
  h->log_version = vd_get_le16(buf + 64);
  h->version = vd_get_le16(buf + 66);
  h->log_length = vd_get_le32(buf + 68);
  h->log_offset = vd_get_le64(buf + 72);
  if (h->version != 1)
    return vd_set_error(EINVAL, "%s: version %u (only 1 is known)", where,
                        h->version);
  return 0;
}

void
vhdx_header_encode(const struct vhdx_header *h, uint8_t buf[VHDX_HEADER_SIZE])
{
  memset(buf, 0, VHDX_HEADER_SIZE);
  memcpy(buf, "head", 4);
  vd_put_le64(buf + 8, h->seq);
  memcpy(buf + 16, h->file_write_guid, 16);
  memcpy(buf + 32, h->data_write_guid, 16);
  memcpy(buf + 48, h->log_guid, 16);
  vd_put_le16(buf + 64, h->log_version);
  vd_put_le16(buf + 66, h->version);
  vd_put_le32(buf + 68, h->log_length);
  vd_put_le64(buf + 72, h->log_offset);
  vd_put_le32(buf + 4, vhdx_checksum(buf, VHDX_HEADER_SIZE));
}

/* ---- 2.2.3 region table ---- */

int
vhdx_region_decode(const uint8_t *buf, struct vhdx_region *r, uint32_t *n,
                   const char *where)
{
  if (memcmp(buf, "regi", 4) != 0)
    return vd_set_error(EINVAL, "%s: bad signature", where);
  if (vd_get_le32(buf + 4) != vhdx_checksum(buf, VHDX_RT_SIZE))
    return vd_set_error(EINVAL, "%s: checksum mismatch", where);
  uint32_t count = vd_get_le32(buf + 8);
  if (count > VHDX_RT_MAX)
    return vd_set_error(EINVAL, "%s: %u entries (at most %u)", where, count,
                        VHDX_RT_MAX);
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t *e = buf + 16 + 32 * i;
    memcpy(r[i].guid, e, 16);
    r[i].off = vd_get_le64(e + 16);
    r[i].len = vd_get_le32(e + 24);
    r[i].required = vd_get_le32(e + 28) & 1;
    bool known = memcmp(e, vhdx_guid_bat, 16) == 0 ||
                 memcmp(e, vhdx_guid_metadata, 16) == 0;
    char g[37];
    vhdx_guid_format(e, g);
    if (!known && r[i].required)
      return vd_set_error(EINVAL, "%s: unknown required region %s", where, g);
    if (r[i].off < VHDX_MiB || r[i].off % VHDX_MiB || r[i].len % VHDX_MiB ||
        r[i].len == 0 || r[i].off > VHDX_MAX_FILE)
      return vd_set_error(EINVAL, "%s: region %s at %" PRIu64 " length %u "
                          "is not 1 MiB aligned", where, g, r[i].off, r[i].len);
    for (uint32_t j = 0; j < i; j++)
      if (memcmp(r[j].guid, r[i].guid, 16) == 0)
        return vd_set_error(EINVAL, "%s: region %s listed twice", where, g);
  }
  *n = count;
  return 0;
}

/* ---- 2.6 metadata ---- */

int
vhdx_locator_decode(const uint8_t *item, uint32_t len,
                    struct vhdx_locator *loc, const char *where)
{
  memset(loc, 0, sizeof *loc);
  if (len < 20)
    return vd_set_error(EINVAL, "%s: parent locator too short", where);
  if (memcmp(item, vhdx_guid_locator_vhdx, 16) != 0)
    return vd_set_error(EINVAL, "%s: parent locator of an unknown type "
                        "(only VHDX parents are supported)", where);
  uint32_t count = vd_get_le16(item + 18);
  if (20 + 12 * (uint64_t)count > len)
    return vd_set_error(EINVAL, "%s: parent locator: %u entries do not fit",
                        where, count);
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t *e = item + 20 + 12 * i;
    uint32_t ko = vd_get_le32(e), vo = vd_get_le32(e + 4);
    uint32_t kl = vd_get_le16(e + 8), vl = vd_get_le16(e + 10);
    if (ko == 0 || vo == 0 || kl == 0 || vl == 0 || !vd_range_ok(ko, kl, len) ||
        !vd_range_ok(vo, vl, len))
      return vd_set_error(EINVAL, "%s: parent locator entry %u out of "
                          "bounds", where, i);
    char key[64];
    if (vhd_utf16_to_utf8(item + ko, kl, false, key, sizeof key) < 0)
      continue;   /* a key we could not know anyway */
    char *dst = NULL;
    size_t dlen = 0;
    if (strcmp(key, "parent_linkage") == 0)
      dst = loc->linkage, dlen = sizeof loc->linkage;
    else if (strcmp(key, "parent_linkage2") == 0)
      dst = loc->linkage2, dlen = sizeof loc->linkage2;
    else if (strcmp(key, "relative_path") == 0)
      dst = loc->relative_path, dlen = sizeof loc->relative_path;
    else if (strcmp(key, "volume_path") == 0)
      dst = loc->volume_path, dlen = sizeof loc->volume_path;
    else if (strcmp(key, "absolute_win32_path") == 0)
      dst = loc->absolute_win32_path, dlen = sizeof loc->absolute_win32_path;
    if (!dst)
      continue;
    if (dst[0])
      return vd_set_error(EINVAL, "%s: parent locator key %s twice", where,
                          key);
    if (vhd_utf16_to_utf8(item + vo, vl, false, dst, dlen) < 0) {
      dst[0] = '\0';   /* unusable (too long or bad UTF-16): not a path */
      continue;
    }
    for (char *c = dst; *c; c++)
      if (*c == '\\')
        *c = '/';
  }
  if (!loc->linkage[0])
    return vd_set_error(EINVAL, "%s: parent locator without parent_linkage",
                        where);
  return 0;
}

int
vhdx_locator_encode(const char *const *keys, const char *const *vals, int n,
                    uint8_t *out, size_t outlen)
{
  size_t pos = 20 + 12 * (size_t)n;
  char tmp[PATH_MAX];
  if (pos > outlen)
    return -ENAMETOOLONG;
  memset(out, 0, pos);
  memcpy(out, vhdx_guid_locator_vhdx, 16);
  vd_put_le16(out + 18, (uint16_t)n);
  for (int i = 0; i < n; i++) {
    uint8_t *e = out + 20 + 12 * i;
    for (int kv = 0; kv < 2; kv++) {
      snprintf(tmp, sizeof tmp, "%s", kv ? vals[i] : keys[i]);
      for (char *c = tmp; *c; c++)
        if (*c == '/')
          *c = '\\';   /* Windows separators, as Hyper-V writes them */
      int w = vhd_utf8_to_utf16(tmp, out + pos, outlen - pos, false);
      if (w <= 0 || w > UINT16_MAX)
        return -ENAMETOOLONG;
      vd_put_le32(e + 4 * kv, (uint32_t)pos);
      vd_put_le16(e + 8 + 2 * kv, (uint16_t)w);
      pos += (size_t)w;
    }
  }
  return (int)pos;
}

/* The item of entry E (LEN bytes expected, 0: any up to 1 MiB) into BUF. */
static int
vhdx_meta_item(vhdx_read_fn read, void *opaque, uint64_t region_off,
               const uint8_t *e, void *buf, uint32_t want, const char *what,
               const char *where)
{
  uint32_t off = vd_get_le32(e + 16), len = vd_get_le32(e + 20);
  if (len != want)
    return vd_set_error(EINVAL, "%s: %s item has length %u (expected %u)",
                        where, what, len, want);
  return read(opaque, buf, len, region_off + off);
}

int
vhdx_meta_read(vhdx_read_fn read, void *opaque, uint64_t region_off,
               uint32_t region_len, struct vhdx_meta *m, const char *where)
{
  uint8_t *t = malloc(VHDX_META_TABLE_SIZE);
  if (!t)
    return vd_set_error(ENOMEM, "%s: out of memory", where);
  int r;
  memset(m, 0, sizeof *m);
  if (region_len < VHDX_META_TABLE_SIZE) {
    r = vd_set_error(EINVAL, "%s: region shorter than its table", where);
    goto out;
  }
  if ((r = read(opaque, t, VHDX_META_TABLE_SIZE, region_off)) < 0)
    goto out;
  if (memcmp(t, "metadata", 8) != 0) {
    r = vd_set_error(EINVAL, "%s: bad signature", where);
    goto out;
  }
  uint32_t count = vd_get_le16(t + 10);
  if (count > VHDX_META_MAX) {
    r = vd_set_error(EINVAL, "%s: %u entries (at most %u)", where, count,
                     VHDX_META_MAX);
    goto out;
  }
  enum { FP, SIZE, P83, LSS, PSS, LOC, NKNOWN };
  static const uint8_t *const guids[NKNOWN] = {
    vhdx_guid_file_params, vhdx_guid_disk_size, vhdx_guid_page83,
    vhdx_guid_lss, vhdx_guid_pss, vhdx_guid_parent_locator };
  static const char *const names[NKNOWN] = { "file parameters",
    "virtual disk size", "page 83", "logical sector size",
    "physical sector size", "parent locator" };
  const uint8_t *found[NKNOWN] = { NULL };
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t *e = t + 32 + 32 * i;
    uint32_t off = vd_get_le32(e + 16), len = vd_get_le32(e + 20);
    uint32_t flags = vd_get_le32(e + 24);
    char g[37];
    vhdx_guid_format(e, g);
    if (len > VHDX_META_ITEM_MAX || (len == 0 && off != 0) ||
        (len && (off < VHDX_META_TABLE_SIZE || !vd_range_ok(off, len,
                                                            region_len)))) {
      r = vd_set_error(EINVAL, "%s: item %s (offset %u length %u) is out of "
                       "bounds", where, g, off, len);
      goto out;
    }
    int k;
    for (k = 0; k < NKNOWN; k++)
      if (memcmp(e, guids[k], 16) == 0)
        break;
    if (k == NKNOWN || (flags & 1)) {   /* unknown, or a user item */
      if (flags & 4) {
        r = vd_set_error(EINVAL, "%s: unknown required item %s", where, g);
        goto out;
      }
      continue;
    }
    if (found[k]) {
      r = vd_set_error(EINVAL, "%s: %s item twice", where, names[k]);
      goto out;
    }
    found[k] = e;
  }
  for (int k = 0; k < NKNOWN; k++)
    if (!found[k] && k != LOC) {
      r = vd_set_error(EINVAL, "%s: no %s item", where, names[k]);
      goto out;
    }
  uint8_t b[16];
  if ((r = vhdx_meta_item(read, opaque, region_off, found[FP], b, 8,
                          names[FP], where)) < 0)
    goto out;
  m->block_size = vd_get_le32(b);
  m->leave_allocated = vd_get_le32(b + 4) & 1;
  m->has_parent = (vd_get_le32(b + 4) >> 1) & 1;
  if ((r = vhdx_meta_item(read, opaque, region_off, found[SIZE], b, 8,
                          names[SIZE], where)) < 0)
    goto out;
  m->disk_size = vd_get_le64(b);
  m->size_off = vd_get_le32(found[SIZE] + 16);
  if ((r = vhdx_meta_item(read, opaque, region_off, found[P83], m->page83,
                          16, names[P83], where)) < 0)
    goto out;
  if ((r = vhdx_meta_item(read, opaque, region_off, found[LSS], b, 4,
                          names[LSS], where)) < 0)
    goto out;
  m->lss = vd_get_le32(b);
  if ((r = vhdx_meta_item(read, opaque, region_off, found[PSS], b, 4,
                          names[PSS], where)) < 0)
    goto out;
  m->pss = vd_get_le32(b);
  if (found[LOC]) {
    m->have_locator = true;
    m->locator_off = vd_get_le32(found[LOC] + 16);
    m->locator_len = vd_get_le32(found[LOC] + 20);
  }

  r = -EINVAL;
  if (m->block_size < VHDX_MIN_BLOCK || m->block_size > VHDX_MAX_BLOCK ||
      (m->block_size & (m->block_size - 1)))
    vd_set_error(EINVAL, "%s: block size %u (must be a power of 2 from "
                 "1 MiB to 256 MiB)", where, m->block_size);
  else if (m->lss != 512 && m->lss != 4096)
    vd_set_error(EINVAL, "%s: logical sector size %u (must be 512 or "
                 "4096)", where, m->lss);
  else if (m->pss != 512 && m->pss != 4096)
    vd_set_error(EINVAL, "%s: physical sector size %u (must be 512 or "
                 "4096)", where, m->pss);
  else if (m->disk_size == 0 || m->disk_size > VHDX_MAX_SIZE ||
           m->disk_size % m->lss)
    vd_set_error(EINVAL, "%s: virtual disk size %" PRIu64 " (must be a "
                 "multiple of %u up to 64 TiB)", where, m->disk_size, m->lss);
  else if (m->has_parent && !m->have_locator)
    vd_set_error(EINVAL, "%s: differencing image without a parent locator",
                 where);
  else
    r = 0;
out:
  free(t);
  return r;
}

/* ---- 2.5 BAT ---- */

void
vhdx_bat_geometry(const struct vhdx_meta *m, uint64_t *data_blocks,
                  uint32_t *chunk_ratio, uint64_t *entries)
{
  /* 2^23 sectors per sector bitmap block; block_size >= 1 MiB keeps the
   * ratio between 16 and 32768. */
  uint32_t ratio = (uint32_t)(((uint64_t)1 << 23) * m->lss / m->block_size);
  uint64_t db = (m->disk_size + m->block_size - 1) / m->block_size;
  uint64_t sb = (db + ratio - 1) / ratio;
  *data_blocks = db;
  *chunk_ratio = ratio;
  *entries = m->has_parent ? sb * (ratio + 1) : db + (db - 1) / ratio;
}
