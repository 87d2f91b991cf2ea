/* Fuzz harness: the persistent dirty bitmap side file parser
 * (vdisk/bitmap-file.c), which reads IMAGE.bitmaps as untrusted bytes.
 *
 * Input: one mode byte, then the file.  Mode bit 0: first rewrite the
 * header's length field and the trailing CRC-32C so that they match (else
 * nearly every mutation would stop at the checksum and the fields behind
 * it would never be reached).
 *
 * Invariants checked (abort on violation): every entry handed out lies
 * inside the input with valid fields, and loads into a vd_bitmap; a file
 * the parser accepts encodes back to exactly the same bytes (nothing
 * accepted is ignored or ambiguous).
 */
#include <config.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/bitmap-file.h"
#include "vdisk/crc32c.h"
#include "vdisk/endian.h"
#include "vdisk/vdisk.h"

#define MAX_ENTRIES VD_BMFILE_MAX_COUNT

struct seen {
  const uint8_t *buf;
  size_t len;
  struct vd_bmfile_entry e[MAX_ENTRIES];
  size_t n;
};

static int check_entry(void *opaque, const struct vd_bmfile_entry *e)
{
  struct seen *s = opaque;
  uint64_t dl = vd_bmfile_data_len(e->size, e->granularity);
  const uint8_t *end = s->buf + s->len;

  if (s->n >= MAX_ENTRIES || e->name_len == 0 ||
      e->name_len > VD_BMFILE_NAME_MAX ||
      (const uint8_t *)e->name < s->buf ||
      (const uint8_t *)e->name + e->name_len > end || e->data < s->buf ||
      dl > (uint64_t)(end - e->data) || !vd_bmfile_granularity_ok(e->granularity) ||
      (e->flags & ~VD_BMFILE_FLAGS))
    abort();
  struct vd_bitmap *bm;
  if (vd_bitmap_new(e->size, e->granularity, &bm) == 0) {
    if (vd_bitmap_deserialize(bm, e->data, (size_t)dl) < 0)
      abort();
    vd_bitmap_free(bm);
  }
  s->e[s->n++] = *e;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static struct seen s;
  uint8_t *buf;

  if (size < 1)
    return 0;
  size--;
  buf = malloc(size ? size : 1);
  if (!buf)
    return 0;
  memcpy(buf, data + 1, size);
  if ((data[0] & 1) && size >= VD_BMFILE_HDR_LEN + 4) {
    vd_put_le64(buf + 16, size);
    vd_put_le32(buf + size - 4, vd_crc32c(0, buf, size - 4));
  }
  s.buf = buf;
  s.len = size;
  s.n = 0;
  if (vd_bmfile_parse(buf, size, "fuzz.bitmaps", check_entry, &s) == 0) {
    uint64_t el = vd_bmfile_encoded_len(s.e, s.n);
    uint8_t *again = el == size ? malloc(size) : NULL;
    if (!again)
      abort();
    vd_bmfile_encode(again, s.e, s.n);
    if (memcmp(again, buf, size) != 0)
      abort();
    free(again);
  }
  free(buf);
  return 0;
}
