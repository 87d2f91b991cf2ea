/* libvdisk — the persistent dirty bitmap side file (IMAGE.bitmaps): its
 * encoder and its parser.  The layout and the reasons for it are in
 * docs/bitmap-file.md.  Nothing here does I/O, so the parser is fuzzed on
 * its own (tests/fuzz/fuzz-bitmap-file.c): the file is untrusted bytes.
 */
#ifndef VDISK_BITMAP_FILE_H
#define VDISK_BITMAP_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VD_BMFILE_MAGIC      "VDBITMAP"
#define VD_BMFILE_VERSION    1u
#define VD_BMFILE_HDR_LEN    24u
#define VD_BMFILE_ENTRY_LEN  24u
#define VD_BMFILE_MAX_COUNT  1024u       /* bitmaps per image */
#define VD_BMFILE_NAME_MAX   1023u       /* QEMU's limit */
#define VD_BMFILE_MAX_LEN    (UINT64_C(1) << 30)  /* whole file */

/* Entry flags. */
#define VD_BMFILE_IN_USE     0x1u  /* the image is (or was, at a crash) open
                                      read-write: the bits may be stale */
#define VD_BMFILE_RECORDING  0x2u  /* enabled (records writes) */
#define VD_BMFILE_FLAGS      0x3u  /* all the flags this version knows */

struct vd_bmfile_entry {
  const char *name;              /* not NUL-terminated */
  size_t name_len;               /* 1..VD_BMFILE_NAME_MAX, no NUL */
  uint32_t flags;                /* VD_BMFILE_* */
  uint32_t granularity;          /* power of two, 512..2^31 */
  uint64_t size;                 /* bytes covered, > 0 */
  const uint8_t *data;           /* vd_bmfile_data_len bytes: bit I of the
                                    bitmap is bit I % 8 of byte I / 8 */
};

/* Bytes of bit data for SIZE bytes at GRANULARITY (which must be valid). */
uint64_t vd_bmfile_data_len(uint64_t size, uint32_t granularity);
/* Whether GRANULARITY is one the file (and QEMU) accepts. */
bool vd_bmfile_granularity_ok(uint64_t granularity);

/* Length of the file holding the N entries E. */
uint64_t vd_bmfile_encoded_len(const struct vd_bmfile_entry *e, size_t n);
/* Write the file into BUF (vd_bmfile_encoded_len bytes). */
void vd_bmfile_encode(uint8_t *buf, const struct vd_bmfile_entry *e,
                      size_t n);

/* Check and decode the LEN bytes of BUF: magic, version, lengths, the
 * CRC-32C, every field and unique names, all before calling FN once per
 * entry in file order (the entries point into BUF).  FN may return a
 * negative errno to stop.  Returns 0, -EINVAL with a message naming WHAT
 * (the file) when the bytes are not a valid file, or FN's error. */
int vd_bmfile_parse(const uint8_t *buf, size_t len, const char *what,
                    int (*fn)(void *opaque, const struct vd_bmfile_entry *e),
                    void *opaque);

#endif /* VDISK_BITMAP_FILE_H */
