/* libvdisk — the persistent dirty bitmap side file: encoder and parser.
 *
 * Layout (little-endian; docs/bitmap-file.md):
 *   header  "VDBITMAP"  u32 version  u32 count  u64 file length
 *   count x entry: u32 flags  u32 granularity  u64 size  u16 name length
 *                  u16 0  u32 0  name  bit data (vd_bmfile_data_len bytes)
 *   u32 CRC-32C of every byte before it
 * The parser trusts nothing: every length is checked against what is
 * left before it is used, the CRC before any field, and the whole file is
 * checked before the first entry is handed out, so a bad file changes
 * nothing.
 */
#include <config.h>

#include <errno.h>
#include <string.h>

#include "vdisk/bitmap-file.h"
#include "vdisk/crc32c.h"
#include "vdisk/driver.h"
#include "vdisk/endian.h"

bool vd_bmfile_granularity_ok(uint64_t g)
{
  return g >= 512 && g <= (UINT64_C(1) << 31) && (g & (g - 1)) == 0;
}

uint64_t vd_bmfile_data_len(uint64_t size, uint32_t granularity)
{
  uint64_t nbits = size / granularity + (size % granularity != 0);
  return nbits / 8 + (nbits % 8 != 0);
}

uint64_t vd_bmfile_encoded_len(const struct vd_bmfile_entry *e, size_t n)
{
  uint64_t len = VD_BMFILE_HDR_LEN + 4;
  for (size_t i = 0; i < n; i++)
    len += VD_BMFILE_ENTRY_LEN + e[i].name_len +
           vd_bmfile_data_len(e[i].size, e[i].granularity);
  return len;
}

void vd_bmfile_encode(uint8_t *buf, const struct vd_bmfile_entry *e, size_t n)
{
  uint64_t total = vd_bmfile_encoded_len(e, n);
  uint8_t *p = buf + VD_BMFILE_HDR_LEN;

  memcpy(buf, VD_BMFILE_MAGIC, 8);
  vd_put_le32(buf + 8, VD_BMFILE_VERSION);
  vd_put_le32(buf + 12, (uint32_t)n);
  vd_put_le64(buf + 16, total);
  for (size_t i = 0; i < n; i++) {
    uint64_t dl = vd_bmfile_data_len(e[i].size, e[i].granularity);
    vd_put_le32(p, e[i].flags);
    vd_put_le32(p + 4, e[i].granularity);
    vd_put_le64(p + 8, e[i].size);
    vd_put_le16(p + 16, (uint16_t)e[i].name_len);
    vd_put_le16(p + 18, 0);
    vd_put_le32(p + 20, 0);
    memcpy(p + VD_BMFILE_ENTRY_LEN, e[i].name, e[i].name_len);
    p += VD_BMFILE_ENTRY_LEN + e[i].name_len;
    memcpy(p, e[i].data, (size_t)dl);
    p += dl;
  }
  vd_put_le32(p, vd_crc32c(0, buf, (size_t)(p - buf)));
}

/* Decode the entry at *POS (bounds-checked against END) into *E. */
static int entry_decode(const uint8_t *buf, size_t end, size_t *pos,
                        const char *what, unsigned idx,
                        struct vd_bmfile_entry *e)
{
  const uint8_t *p = buf + *pos;
  uint64_t dl;

  if (end - *pos < VD_BMFILE_ENTRY_LEN)
    return vd_set_error(EINVAL, "%s: bitmap %u: truncated entry", what, idx);
  e->flags = vd_get_le32(p);
  e->granularity = vd_get_le32(p + 4);
  e->size = vd_get_le64(p + 8);
  e->name_len = vd_get_le16(p + 16);
  if (e->flags & ~VD_BMFILE_FLAGS)
    return vd_set_error(EINVAL, "%s: bitmap %u: unknown flags 0x%x", what,
                        idx, e->flags);
  if (vd_get_le16(p + 18) || vd_get_le32(p + 20))
    return vd_set_error(EINVAL, "%s: bitmap %u: reserved bytes not zero",
                        what, idx);
  if (!vd_bmfile_granularity_ok(e->granularity))
    return vd_set_error(EINVAL, "%s: bitmap %u: bad granularity %u", what,
                        idx, e->granularity);
  if (e->size == 0 || e->size > (UINT64_C(1) << 62))
    return vd_set_error(EINVAL, "%s: bitmap %u: bad size %llu", what, idx,
                        (unsigned long long)e->size);
  if (e->name_len == 0 || e->name_len > VD_BMFILE_NAME_MAX)
    return vd_set_error(EINVAL, "%s: bitmap %u: bad name length %zu", what,
                        idx, e->name_len);
  *pos += VD_BMFILE_ENTRY_LEN;
  if (end - *pos < e->name_len)
    return vd_set_error(EINVAL, "%s: bitmap %u: truncated name", what, idx);
  e->name = (const char *)buf + *pos;
  if (memchr(e->name, 0, e->name_len))
    return vd_set_error(EINVAL, "%s: bitmap %u: NUL in the name", what, idx);
  *pos += e->name_len;
  dl = vd_bmfile_data_len(e->size, e->granularity);
  if (end - *pos < dl)
    return vd_set_error(EINVAL, "%s: bitmap '%.*s': truncated bits", what,
                        (int)e->name_len, e->name);
  e->data = buf + *pos;
  /* Bits past the last granule are 0 in a file we wrote. */
  uint64_t nbits = e->size / e->granularity +
                   (e->size % e->granularity != 0);
  if (nbits % 8 && (e->data[dl - 1] >> (nbits % 8)))
    return vd_set_error(EINVAL, "%s: bitmap '%.*s': bits set past its end",
                        what, (int)e->name_len, e->name);
  *pos += (size_t)dl;
  return 0;
}

int vd_bmfile_parse(const uint8_t *buf, size_t len, const char *what,
                    int (*fn)(void *opaque, const struct vd_bmfile_entry *e),
                    void *opaque)
{
  struct vd_bmfile_entry e;
  uint32_t count;
  size_t pos, end;
  unsigned i;
  int r;

  if (len < VD_BMFILE_HDR_LEN + 4 || memcmp(buf, VD_BMFILE_MAGIC, 8) != 0)
    return vd_set_error(EINVAL, "%s: not a vdisk bitmap file", what);
  if (vd_get_le32(buf + 8) != VD_BMFILE_VERSION)
    return vd_set_error(EINVAL, "%s: bitmap file version %u (this vdisk "
                        "reads version %u)", what, vd_get_le32(buf + 8),
                        VD_BMFILE_VERSION);
  if (vd_get_le64(buf + 16) != len)
    return vd_set_error(EINVAL, "%s: file is %zu bytes, its header says "
                        "%llu (truncated or extended)", what, len,
                        (unsigned long long)vd_get_le64(buf + 16));
  end = len - 4;
  if (vd_crc32c(0, buf, end) != vd_get_le32(buf + end))
    return vd_set_error(EINVAL, "%s: bad checksum", what);
  count = vd_get_le32(buf + 12);
  if (count > VD_BMFILE_MAX_COUNT)
    return vd_set_error(EINVAL, "%s: %u bitmaps (at most %u)", what, count,
                        VD_BMFILE_MAX_COUNT);

  /* First pass: everything valid, names unique. */
  pos = VD_BMFILE_HDR_LEN;
  for (i = 0; i < count; i++) {
    if ((r = entry_decode(buf, end, &pos, what, i, &e)) < 0)
      return r;
    size_t q = VD_BMFILE_HDR_LEN;
    for (unsigned k = 0; k < i; k++) {
      struct vd_bmfile_entry o;
      (void)entry_decode(buf, end, &q, what, k, &o);
      if (o.name_len == e.name_len && memcmp(o.name, e.name, e.name_len) == 0)
        return vd_set_error(EINVAL, "%s: bitmap '%.*s' appears twice", what,
                            (int)e.name_len, e.name);
    }
  }
  if (pos != end)
    return vd_set_error(EINVAL, "%s: %zu bytes after the last bitmap", what,
                        end - pos);
  pos = VD_BMFILE_HDR_LEN;
  for (i = 0; i < count; i++) {
    (void)entry_decode(buf, end, &pos, what, i, &e);
    if ((r = fn(opaque, &e)) < 0)
      return r;
  }
  return 0;
}
