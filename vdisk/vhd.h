/* libvdisk — VHD (Microsoft Virtual Hard Disk, "vpc") internals.
 *
 * Follows the "Virtual Hard Disk Image Format Specification" v1.0 and what
 * Windows, Hyper-V, VirtualBox and QEMU really write (see docs/vhd.md).
 * All on-disk integers are big-endian except the locator payloads
 * (UTF-16LE).  Sector = 512 bytes.
 *
 *   fixed:        [ data ........................ ][ footer 512 ]
 *   dynamic/diff: [ footer 512 ][ header 1024 ][ locators ][ BAT ]
 *                 [ bitmap | block ] ... [ footer 512 ]
 *
 * Footer (512 bytes, 511 in images older than Virtual PC 2004):
 *   0 cookie "conectix"   8 features (0x2)     12 version 0x00010000
 *  16 data offset (u64; ~0 for fixed)          24 timestamp (s since 2000)
 *  28 creator app[4]     32 creator version    36 creator host OS[4]
 *  40 original size      48 current size       56 C(u16) H(u8) S(u8)
 *  60 disk type (2/3/4)  64 checksum           68 UUID[16]   84 saved state
 * Dynamic header (1024 bytes, at the footer's data offset):
 *   0 cookie "cxsparse"   8 next offset (~0)  16 BAT offset   24 version
 *  28 max table entries  32 block size        36 checksum
 *  40 parent UUID[16]    56 parent timestamp  64 parent name (UTF-16BE, 512)
 * 576 8 locators x 24: code[4], data space, data length, reserved, u64 offset
 * BAT: u32 sector numbers, 0xFFFFFFFF = unallocated.  Each block is a
 * sector bitmap (MSB first: bit 7 of byte 0 = sector 0) rounded up to 512
 * bytes, then the data.  Checksum = ~(byte sum with the field as zero).
 */
#ifndef VDISK_VHD_H
#define VDISK_VHD_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/driver.h"

#define VHD_SECTOR          512u
#define VHD_FOOTER_SIZE     512u
#define VHD_HEADER_SIZE     1024u
#define VHD_TYPE_FIXED      2u
#define VHD_TYPE_DYNAMIC    3u
#define VHD_TYPE_DIFF       4u
#define VHD_BAT_UNUSED      0xFFFFFFFFu
#define VHD_NO_OFFSET       UINT64_C(0xFFFFFFFFFFFFFFFF)
#define VHD_VERSION         0x00010000u
#define VHD_FEATURES        0x2u
/* qemu's limit (0xFF000000 sectors, ~2040 GiB); also Windows' VHD limit. */
#define VHD_MAX_SIZE        (UINT64_C(0xFF000000) * VHD_SECTOR)
#define VHD_MIN_BLOCK       512u
#define VHD_MAX_BLOCK       (256u << 20)
#define VHD_DEFAULT_BLOCK   (2u << 20)
/* More BAT entries than this is treated as damage (64 MiB of table). */
#define VHD_MAX_BAT_ENTRIES (1u << 24)
#define VHD_MAX_CHS_SECTORS (65535ull * 16 * 255)
#define VHD_EPOCH_OFFSET    946684800u  /* Unix time of 2000-01-01 */
#define VHD_CREATOR_APP     "vdsk"
#define VHD_NLOC            8
#define VHD_MAX_CHAIN       64

struct vhd_footer {
  char cookie[8];
  uint32_t features, version;
  uint64_t data_offset;
  uint32_t timestamp;
  char creator_app[4];
  uint32_t creator_version;
  char creator_os[4];
  uint64_t original_size, current_size;
  uint16_t cylinders;
  uint8_t heads, sectors;
  uint32_t type, checksum;
  uint8_t uuid[16];
  uint8_t saved_state;
};

struct vhd_locator {
  char code[4];
  uint32_t space;       /* bytes reserved (we read it as bytes) */
  uint32_t length;      /* payload bytes */
  uint64_t offset;      /* file offset */
};

struct vhd_header {
  char cookie[8];
  uint64_t next_offset, bat_offset;
  uint32_t version, max_entries, block_size, checksum;
  uint8_t parent_uuid[16];
  uint32_t parent_timestamp;
  uint8_t parent_name[512];  /* UTF-16BE as stored */
  struct vhd_locator loc[VHD_NLOC];
};

/* ---- vhd-meta.c: pure functions over bytes (no I/O) ---- */

/* ~(sum of LEN bytes), the 4 bytes at SKIP counted as zero. */
uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t skip);

/* Decode a footer of LEN (512 or 511) bytes.  Returns 0, or -EINVAL with
 * "WHERE: what is wrong" set (cookie, checksum, version, type). */
int vhd_footer_decode(const uint8_t *buf, size_t len, struct vhd_footer *f,
                      const char *where);
/* Encode F into 512 bytes, computing the checksum (stored back in F). */
void vhd_footer_encode(struct vhd_footer *f, uint8_t buf[VHD_FOOTER_SIZE]);
/* Point the encoded footer BUF at a dynamic header at OFF (checksum too). */
void vhd_footer_set_data_offset(uint8_t buf[VHD_FOOTER_SIZE], uint64_t off);
/* Same pair for the dynamic header. */
int vhd_header_decode(const uint8_t *buf, struct vhd_header *h,
                      const char *where);
void vhd_header_encode(struct vhd_header *h, uint8_t buf[VHD_HEADER_SIZE]);

/* The specification's CHS geometry for SECTORS (appendix). */
void vhd_chs_spec(uint64_t sectors, uint16_t *c, uint8_t *h, uint8_t *s);
/* Our creation rule (docs/vhd.md): the spec geometry when it describes
 * exactly SIZE bytes, else the maximum geometry 65535/16/255, which every
 * reader (qemu before and after 10.0, Windows) takes to mean "use the
 * current size field". */
void vhd_chs_for_size(uint64_t size, uint16_t *c, uint8_t *h, uint8_t *s);
/* The virtual size a reader should use for footer F (qemu 10 rule:
 * current_size, except creators "vpc " and "qemu" whose CHS wins unless
 * it is the maximum geometry). */
uint64_t vhd_footer_size(const struct vhd_footer *f);

/* Bytes of the sector bitmap for BLOCK_SIZE, rounded up to a sector. */
uint32_t vhd_bitmap_size(uint32_t block_size);

/* UTF-8 <-> UTF-16 (BE or LE).  Return the bytes written, or -EINVAL
 * when the input is not valid or does not fit. */
int vhd_utf8_to_utf16(const char *in, uint8_t *out, size_t outlen, bool be);
int vhd_utf16_to_utf8(const uint8_t *in, size_t inlen, bool be, char *out,
                      size_t outlen);

/* Random version-4 UUID. */
void vhd_uuid_generate(uint8_t uuid[16]);
void vhd_uuid_format(const uint8_t uuid[16], char out[37]);
/* Current time in VHD's epoch. */
uint32_t vhd_now(void);

/* A byte range of the image file (a block, or metadata). */
struct vhd_extent {
  uint64_t off, len;
  uint32_t index;      /* BAT index, or a VHD_EXT_* tag */
};
/* qsort comparator by offset. */
int vhd_extent_cmp(const void *a, const void *b);

/* ---- vhd.c: the driver ---- */

extern const struct vd_driver vd_vhd_driver;

#define VHD_NSTRIPES 64

/* Lock order: stripe[i] -> alloc_lock -> bat_lock; flush_lock -> bat_lock. */
struct vhd_priv {
  unsigned type;
  struct vhd_footer footer;       /* immutable while open */
  uint8_t footer_raw[VHD_FOOTER_SIZE];  /* its encoding; alloc_lock */
  struct vhd_header header;
  /* fixed */
  uint64_t footer_pos;
  /* dynamic / differencing (immutable while open unless noted) */
  uint32_t block_size, bitmap_size, spb;  /* spb: sectors per block */
  uint32_t nblocks;                      /* blocks covering the disk */
  uint32_t bat_entries;                  /* max table entries */
  uint64_t bat_offset;
  uint32_t *bat;         /* host order; read with atomic loads, written
                            under the block's stripe lock */
  uint8_t *full;         /* bit per block: bitmap known all ones (atomic) */
  uint8_t *bat_dirty;    /* bit per BAT sector; bat_lock */
  uint64_t next_free;    /* where the next block goes; alloc_lock */
  pthread_mutex_t alloc_lock, bat_lock, flush_lock;
  pthread_mutex_t stripe[VHD_NSTRIPES];
  bool locks_init;
  /* differencing */
  struct vd_dev *parent;
  char parent_path[4096];
  char parent_format[16];
  /* With VD_OPEN_NOPARENT and no candidate found: the first one the image
   * names (info shows it, as qemu-img info shows a missing backing). */
  char parent_named[4096];
};

/* Open a chain (or one image with VD_OPEN_NOPARENT) as a VHD.  The dev's
 * priv is a struct vhd_priv when vd_format(dev) is "vpc". */
static inline struct vhd_priv *vhd_priv_of(struct vd_dev *dev)
{
  return dev && dev->drv == &vd_vhd_driver ? dev->priv : NULL;
}

/* Drop block BLK from the BAT (written at the next flush) and punch its
 * host space.  Takes the block's stripe lock. */
int vhd_free_block(struct vd_dev *dev, uint32_t blk);
/* Fill H's parent fields (UUID, time stamp, name) and the two locators
 * (W2ru, W2ku) for PARENT_PATH, opened as PARENT, seen from CHILD.  The
 * locator payloads are laid out from *OFF (advanced) into PAYLOAD
 * (PAYLEN bytes), *USED gets their total size. */
int vhd_fill_parent(struct vhd_header *h, const char *child,
                    const char *parent_path, struct vd_dev *parent,
                    uint64_t *off, uint8_t *payload, size_t paylen,
                    size_t *used);

/* Read LEN bytes at OFF from this layer only: sectors this image does not
 * hold read as zeros and their bits are cleared in *HELD (one bool per
 * 512-byte sector of the range, OFF and LEN sector-aligned; may be NULL). */
int vhd_read_own(struct vd_dev *dev, void *buf, size_t len, uint64_t off,
                 bool *held);
/* The two locator paths of PARENT for CHILD: REL relative to CHILD's
 * directory ("./p.vhd", "../d/p.vhd"), ABS absolute.  '/' separators. */
int vhd_locator_paths(const char *child, const char *parent,
                      char *rel, size_t rellen, char *abs, size_t abslen);
/* Rewrite the dynamic header (with checksum) of an open, writable image
 * from p->header, and both footers from p->footer.  Flushes around. */
int vhd_write_metadata(struct vd_dev *dev, bool header, bool footers);

/* Create PATH (which must not exist: O_EXCL, so a symlink there is
 * refused too) as an empty differencing image over the open PARENT,
 * recorded as PARENT_PATH (locators relative to PATH's folder and
 * absolute); PARENT is only read (its UUID, size, block size), never
 * reopened.  Same rules as vd_create -b: a VHD, raw or vdz parent, and a
 * UUID-less parent must probe as its own format.  A failure may leave a
 * partly written PATH behind (the caller removes it). */
int vhd_create_child(const char *path, const char *parent_path,
                     struct vd_dev *parent);
/* Take DEV's parent back from it (DEV then reads as if it had none) and
 * clear the parent's child link; returns the parent or NULL.  For undoing
 * a vd_open_over before closing DEV. */
struct vd_dev *vhd_detach_parent(struct vd_dev *dev);

/* ---- vhd-check.c ---- */
int vhd_check(const char *path, unsigned fix, struct vd_check_report *r);

/* ---- vhd-manage.c: management ops (see struct vd_driver) ---- */

/* Set the virtual size (rounded up to a sector).  A smaller size only cuts
 * unallocated (or all-zero) space. */
int vhd_truncate(struct vd_dev *dev, uint64_t size, unsigned flags);
/* Free blocks holding only zeros (dynamic) or no sectors (differencing),
 * then move blocks down and truncate.  *FREED gets the bytes saved. */
int vhd_compact(struct vd_dev *dev, uint64_t *freed, vd_progress_fn progress,
                void *opaque);
/* Free every block (dynamic or differencing). */
int vhd_make_empty(struct vd_dev *dev);
/* Point the image at BACKING opened as BDEV (a dynamic image becomes a
 * differencing one), or at no parent when BDEV is NULL (it becomes a
 * dynamic image).  Only the pointer: the engine copies data first. */
int vhd_change_backing(struct vd_dev *dev, const char *backing,
                       struct vd_dev *bdev);

#endif /* VDISK_VHD_H */
