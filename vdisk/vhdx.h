/* libvdisk — VHDX (Hyper-V Virtual Hard Disk v2) internals.
 *
 * Follows Microsoft's "[MS-VHDX]: Virtual Hard Disk v2 (VHDX) File Format"
 * (v1.0 of the format; section numbers below are the specification's).  All
 * integers are little-endian; GUIDs are stored in Microsoft's binary form
 * (first three fields little-endian, last eight bytes as written).  Every
 * structure that matters carries a CRC-32C (vdisk/crc32c.h) computed with
 * its own checksum field as zero.
 *
 *   0      64K     128K    192K    256K    320K      1M
 *   [ FTI ][ hdr 1 ][ hdr 2 ][ RT 1 ][ RT 2 ][ reserved ][ log | BAT |
 *   metadata | payload and sector bitmap blocks, 1 MiB aligned ... ]
 *
 * 2.2.1 File type identifier (at 0): "vhdxfile", creator (UTF-16LE, 512).
 * 2.2.2 Header (4 KiB, at 64 KiB and 128 KiB; the valid one with the
 *   higher SequenceNumber is current):
 *     0 "head"  4 checksum (CRC-32C of the 4 KiB)  8 SequenceNumber u64
 *    16 FileWriteGuid  32 DataWriteGuid  48 LogGuid (zero: no log to replay)
 *    64 LogVersion u16 (0)  66 Version u16 (1)  68 LogLength u32 (n MiB)
 *    72 LogOffset u64 (n MiB)
 * 2.2.3 Region table (64 KiB, at 192 KiB and 256 KiB, identical copies):
 *     0 "regi"  4 checksum (of the 64 KiB)  8 EntryCount (<= 2047)
 *    16 + 32*i: Guid, FileOffset u64 (n MiB, >= 1 MiB), Length u32 (n MiB),
 *               Required u32 (bit 0).  Known: BAT, metadata (both required).
 * 2.3 Log (ring of 4 KiB sectors at LogOffset).  Entry:
 *     0 "loge"  4 checksum (CRC-32C of EntryLength bytes)  8 EntryLength
 *    12 Tail (offset in the log of the sequence's first entry)
 *    16 SequenceNumber u64  24 DescriptorCount  28 reserved  32 LogGuid
 *    48 FlushedFileOffset u64  56 LastFileOffset u64
 *    64 + 32*i descriptors (they continue in further 4 KiB sectors):
 *       "zero": 4 reserved, 8 ZeroLength u64, 16 FileOffset, 24 Sequence
 *       "desc": 4 TrailingBytes[4], 8 LeadingBytes[8], 16 FileOffset,
 *               24 SequenceNumber
 *    then one 4 KiB data sector per "desc": "data", SequenceHigh u32,
 *    bytes 8..4091 of the update, SequenceLow u32.
 *    Replay (2.3.3): the newest complete sequence (consecutive sequence
 *    numbers, the head's Tail inside it) is applied in order, then the
 *    file is extended to the head's LastFileOffset.
 * 2.5 BAT: u64 entries, state = bits 0-2, FileOffsetMB = bits 20-63.
 *    chunk ratio = 2^23 * LogicalSectorSize / BlockSize; each chunk's
 *    payload entries are followed by its sector bitmap entry.
 *    Payload states: 0 NOT_PRESENT, 1 UNDEFINED, 2 ZERO, 3 UNMAPPED,
 *    6 FULLY_PRESENT, 7 PARTIALLY_PRESENT (differencing only).
 *    Sector bitmap states: 0 NOT_PRESENT, 6 PRESENT.
 *    Sector bitmap blocks are 1 MiB; bit i (LSB first) = logical sector i
 *    of the chunk, 1 = held by this file, 0 = read from the parent.
 * 2.6 Metadata region: 64 KiB table, then items.
 *     table: 0 "metadata"  10 EntryCount u16 (<= 2047); entries at 32 + 32*i:
 *     ItemId, Offset u32 (>= 64 KiB, in the region), Length u32 (<= 1 MiB),
 *     flags u32 (bit 0 IsUser, 1 IsVirtualDisk, 2 IsRequired).
 *     2.6.2.1 file parameters: BlockSize u32 (1..256 MiB, power of 2),
 *             flags u32 (bit 0 LeaveBlocksAllocated, bit 1 HasParent)
 *     2.6.2.2 virtual disk size u64 (multiple of the logical sector, <= 64 TiB)
 *     2.6.2.3 virtual disk id (page 83 data) GUID
 *     2.6.2.4 / 2.6.2.5 logical / physical sector size u32 (512 or 4096)
 *     2.6.2.6 parent locator: LocatorType GUID, 16 reserved u16,
 *             18 KeyValueCount u16; then 12-byte entries KeyOffset u32,
 *             ValueOffset u32, KeyLength u16, ValueLength u16 (UTF-16LE
 *             strings inside the item).  Keys: parent_linkage(2),
 *             relative_path, volume_path, absolute_win32_path.
 */
#ifndef VDISK_VHDX_H
#define VDISK_VHDX_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/driver.h"

#define VHDX_MiB              (UINT64_C(1) << 20)
#define VHDX_HEADER_OFF(i)    (UINT64_C(0x10000) * (1 + (i)))   /* i = 0, 1 */
#define VHDX_RT_OFF(i)        (UINT64_C(0x30000) + UINT64_C(0x10000) * (i))
#define VHDX_HEADER_SIZE      4096u
#define VHDX_RT_SIZE          65536u
#define VHDX_RT_MAX           2047u
#define VHDX_META_TABLE_SIZE  65536u
#define VHDX_META_MAX         2047u
#define VHDX_META_ITEM_MAX    (1u << 20)
#define VHDX_MAX_SIZE         (UINT64_C(64) << 40)
#define VHDX_MIN_BLOCK        (1u << 20)
#define VHDX_MAX_BLOCK        (256u << 20)
#define VHDX_SB_SIZE          (1u << 20)    /* a sector bitmap block */
#define VHDX_LOG_SECTOR       4096u
/* A replay larger than this (data sectors in memory, read-only opens) is
 * refused as damage rather than allocated: Hyper-V's logs hold a few MiB. */
#define VHDX_LOG_MAX_PAGES    16384u
/* The biggest file a log may ask us to extend to: a 64 TiB disk plus its
 * metadata fits many times over. */
#define VHDX_MAX_FILE         (UINT64_C(128) << 40)
#define VHDX_MAX_CHAIN        64

#define VHDX_BAT_STATE(e)     ((unsigned)((e) & 7u))
#define VHDX_BAT_OFFSET(e)    (((e) >> 20) << 20)
enum {
  VHDX_PB_NOT_PRESENT = 0, VHDX_PB_UNDEFINED = 1, VHDX_PB_ZERO = 2,
  VHDX_PB_UNMAPPED = 3, VHDX_PB_FULLY_PRESENT = 6,
  VHDX_PB_PARTIALLY_PRESENT = 7,
  VHDX_SB_NOT_PRESENT = 0, VHDX_SB_PRESENT = 6,
};

/* Whether [A, A+ALEN) and [B, B+BLEN) share a byte. */
static inline bool
vhdx_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
  return a < b + blen && b < a + alen;
}

/* Known GUIDs, in binary form. */
extern const uint8_t vhdx_guid_bat[16], vhdx_guid_metadata[16],
  vhdx_guid_file_params[16], vhdx_guid_disk_size[16], vhdx_guid_page83[16],
  vhdx_guid_lss[16], vhdx_guid_pss[16], vhdx_guid_parent_locator[16],
  vhdx_guid_locator_vhdx[16];

struct vhdx_header {
  uint64_t seq;
  uint8_t file_write_guid[16], data_write_guid[16], log_guid[16];
  uint16_t log_version, version;
  uint32_t log_length;
  uint64_t log_offset;
};

struct vhdx_region {
  uint8_t guid[16];
  uint64_t off;
  uint32_t len;
  bool required;
};

/* The parent locator's values (UTF-8, '\\' turned into '/'); "" when
 * absent. */
struct vhdx_locator {
  char linkage[64], linkage2[64];
  char relative_path[PATH_MAX], volume_path[PATH_MAX],
    absolute_win32_path[PATH_MAX];
};

struct vhdx_meta {
  uint32_t block_size;
  bool leave_allocated, has_parent;
  uint64_t disk_size;
  uint32_t size_off;                  /* the size item, in the region */
  uint8_t page83[16];
  uint32_t lss, pss;
  bool have_locator;
  uint32_t locator_off, locator_len;  /* in the metadata region */
};

/* Reads LEN bytes at OFF of the image file as the parsers should see it
 * (after log replay); 0 or -errno with the error set. */
typedef int (*vhdx_read_fn)(void *opaque, void *buf, size_t len,
                            uint64_t off);

/* ---- vhdx-meta.c: codecs over bytes (no I/O beyond READ) ---- */

/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (lower case) of binary G. */
void vhdx_guid_format(const uint8_t g[16], char out[37]);
/* Parse "{...}" or bare form (any case) into binary G: 0 or -EINVAL. */
int vhdx_guid_parse(const char *s, uint8_t g[16]);
bool vhdx_guid_zero(const uint8_t g[16]);
/* CRC-32C of LEN bytes (LEN >= 8) with the 4 bytes at offset 4, where
 * every VHDX structure keeps its checksum, counted as zero. */
uint32_t vhdx_checksum(const uint8_t *buf, size_t len);

/* Decode the 4 KiB header BUF.  Returns 0, or -EINVAL with "WHERE: why"
 * set (signature, checksum, version). */
int vhdx_header_decode(const uint8_t *buf, struct vhdx_header *h,
                       const char *where);
/* Encode H into 4 KiB with its checksum. */
void vhdx_header_encode(const struct vhdx_header *h,
                        uint8_t buf[VHDX_HEADER_SIZE]);

/* Decode the 64 KiB region table BUF into R (up to VHDX_RT_MAX entries)
 * and *N.  Checks signature, checksum, count, alignment, duplicates and
 * that an unknown region is not required.  0 or -EINVAL ("WHERE: why"). */
int vhdx_region_decode(const uint8_t *buf, struct vhdx_region *r,
                       uint32_t *n, const char *where);

/* Parse the metadata region at REGION_OFF (REGION_LEN bytes) through READ:
 * the table, every known item, unknown required items refused.  0 or
 * -EINVAL / -errno ("WHERE: why"). */
int vhdx_meta_read(vhdx_read_fn read, void *opaque, uint64_t region_off,
                   uint32_t region_len, struct vhdx_meta *m,
                   const char *where);
/* Decode the parent locator item ITEM (LEN bytes) into LOC.  0 or
 * -EINVAL ("WHERE: why"). */
int vhdx_locator_decode(const uint8_t *item, uint32_t len,
                        struct vhdx_locator *loc, const char *where);

/* Encode a VHDX parent locator of N KEYS and VALS ('/' becomes '\\')
 * into OUT.  Returns its length or -ENAMETOOLONG when OUTLEN is short. */
int vhdx_locator_encode(const char *const *keys, const char *const *vals,
                        int n, uint8_t *out, size_t outlen);

/* BAT geometry for M: payload blocks, chunk ratio and the entries the BAT
 * must hold (2.5). */
void vhdx_bat_geometry(const struct vhdx_meta *m, uint64_t *data_blocks,
                       uint32_t *chunk_ratio, uint64_t *entries);

/* ---- vhdx-log.c: log replay (2.3.3) ---- */

/* One write of the active sequence: LEN bytes at OFF, DATA (4 KiB) or
 * zeros when DATA is NULL. */
struct vhdx_log_write {
  uint64_t off, len;
  uint8_t *data;
};

struct vhdx_replay {
  struct vhdx_log_write *w;   /* in replay order */
  uint32_t n;
  uint64_t last_file_offset;  /* the head entry's LastFileOffset */
  uint64_t head_seq;          /* 0: nothing to replay */
  uint32_t entries;
};

/* Find the active sequence of the log described by H in a file of
 * FILE_SIZE bytes, read through READ (the raw file), into R.  A header
 * with a zero LogGuid gives an empty R.  Fails (-EINVAL, "WHERE: why") on
 * a log with no valid sequence, a truncated file, or a sequence too large
 * to hold. */
int vhdx_log_find(vhdx_read_fn read, void *opaque, const struct vhdx_header *h,
                  uint64_t file_size, struct vhdx_replay *r,
                  const char *where);
/* Patch BUF (LEN bytes read from the file at OFF) with R's writes. */
void vhdx_log_overlay(const struct vhdx_replay *r, uint8_t *buf, size_t len,
                      uint64_t off);
/* Apply R to the writable file F: the writes, the extension to
 * LastFileOffset, then a flush. */
int vhdx_log_apply(const struct vhdx_replay *r, struct vd_file *f,
                   const char *where);
void vhdx_replay_free(struct vhdx_replay *r);

/* One 4 KiB page of metadata to change: its file offset and new bytes. */
struct vhdx_page {
  uint64_t off;
  uint8_t *data;
};
/* The pages of one log entry at most: a block's bitmap pages and BAT
 * pages, or the BAT pages a flush writes (41 sectors, well inside the
 * 1 MiB log every writer makes). */
#define VHDX_MAX_PAGES 40

/* ---- vhdx.c: the driver ---- */

extern const struct vd_driver vd_vhdx_driver;

/* Concurrency: open sets everything; then reads take no lock.  Writes
 * (vhdx-write.c) take LOCK for anything that changes the file's metadata:
 * header updates, block allocation (BAT entry, its page pending or through
 * the log), the log position; BAT entries are read with atomic loads and
 * stored atomically once the block they point to is written, so readers
 * see either state. */
struct vhdx_priv {
  struct vhdx_header header;      /* the current one; lock */
  int cur;                        /* its slot, 0 or 1; lock */
  struct vhdx_meta meta;
  struct vhdx_region bat_region, meta_region;
  uint64_t data_blocks, bat_entries;
  uint32_t chunk_ratio, sectors_per_block;
  uint64_t *bat;                  /* immutable while open */
  struct vhdx_replay replay;      /* read-only opens of a dirty image */
  bool replayed;                  /* the open replayed a log */
  uint64_t file_size;             /* as the parsers see it */
  struct vhdx_locator *loc;
  struct vd_dev *parent;
  char parent_path[PATH_MAX];
  char parent_format[16];
  /* With VD_OPEN_NOPARENT and no candidate found: the first one the image
   * names (info shows it, as qemu-img info shows a missing backing). */
  char parent_named[PATH_MAX];
  /* writing (vhdx-write.c) */
  pthread_mutex_t lock;
  bool lock_init;
  bool session;                   /* headers updated for this open; set
                                     under lock, read atomically */
  bool log_active;                /* headers carry a LogGuid; lock */
  int hdr_err;                    /* a header update failed (its errno):
                                     either header may be on disk, so no
                                     more header or log writes; lock */
  uint32_t log_pos;               /* where the next entry goes; lock */
  uint64_t log_seq;               /* the last entry's sequence; lock */
  /* BAT pages (numbers in the region) whose entries in memory are newer
   * than in the file, written by the next flush (vhdx_commit_locked);
   * lock. */
  uint64_t pending[VHDX_MAX_PAGES];
  unsigned npending;
};

/* Payload BAT entry of block BLK (atomic: writers store new entries). */
static inline uint64_t
vhdx_payload_entry(struct vhdx_priv *p, uint64_t blk)
{
  return __atomic_load_n(&p->bat[blk + blk / p->chunk_ratio],
                         __ATOMIC_ACQUIRE);
}

/* Read LEN bytes of the image file at OFF as the parsers see it (a
 * read-only replay laid over). */
int vhdx_fread(struct vd_dev *dev, void *buf, size_t len, uint64_t off);
/* Write the current header, sequence bumped, into the other slot and
 * flush, twice (2.2.2.1).  Caller holds p->lock or is open. */
int vhdx_write_headers(struct vd_dev *dev);
/* The same, once: the other slot becomes current and the old one stays
 * valid, a torn write of the new one falling back to it (2.2.2.1). */
int vhdx_write_header(struct vd_dev *dev);
/* The error for writes after a failed header update (p->hdr_err). */
int vhdx_hdr_failed(struct vd_dev *dev);

/* ---- vhdx-write.c ---- */

/* vd_driver ops: create (subformat=fixed|dynamic, block_size,
 * logical_sector_size), pwrite (dynamic and fixed images; blocks are
 * allocated at the end of the file and their BAT entries published at
 * once, their pages pending), flush (the pending pages through the log,
 * then the LogGuid cleared once the metadata is in place). */
int vhdx_create(const char *path, const struct vd_create_args *args);
/* The parent locator (2.6.2.6) of the child at PATH over PARENT (an open
 * VHDX) named BACKING: parent_linkage (PARENT's DataWriteGuid),
 * relative_path and absolute_win32_path.  *OUT (*LEN bytes) is malloc'd. */
int vhdx_make_locator(const char *path, const char *backing,
                      struct vd_dev *parent, uint8_t **out, uint32_t *len);
/* qemu-img measure for VHDX (vd_driver.measure). */
int vhdx_measure(const struct vd_create_args *args, struct vd_dev *src,
                 uint64_t *required, uint64_t *fully);
int vhdx_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
                unsigned flags);
int vhdx_flush(struct vd_dev *dev);
/* vd_driver ops: whole blocks become ZERO (write-zeroes; discard in a
 * differencing image) or UNMAPPED (discard) through the log, their space
 * kept in the entry for reuse and punched out of the file; partial blocks
 * get zeros written (write-zeroes) or nothing (discard); fixed images and
 * VD_REQ_NO_HOLE keep their blocks and get zeros written. */
int vhdx_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                      unsigned flags);
int vhdx_discard(struct vd_dev *dev, uint64_t off, uint64_t len,
                 unsigned flags);

/* The first change of a session: new FileWriteGuid and DataWriteGuid in
 * both headers.  Does nothing once done.  Lock held. */
int vhdx_begin_locked(struct vd_dev *dev);
/* Write the N (<= VHDX_MAX_PAGES) pages PG as one log entry, flush, write
 * them in place, flush; the pending BAT pages are committed first
 * (vhdx_commit_locked), as PG may hold their entries.  FLUSHED: a file
 * size known durable; LAST: one all structures fit in (2.3.1.1).  Lock
 * held, session begun. */
int vhdx_log_pages_locked(struct vd_dev *dev, const struct vhdx_page *pg,
                          unsigned n, uint64_t flushed, uint64_t last);
/* Make the pending BAT pages durable: the file flushed (the blocks they
 * name and the file's growth), then all of them as one log entry,
 * flushed, in place, flushed.  On failure they stay pending, for the next
 * flush to retry (or to fail, the file's flush error being kept).  Lock
 * held, session begun. */
int vhdx_commit_locked(struct vd_dev *dev);

/* Clear the LogGuid when set, in one header write (every entry's pages
 * are in place and flushed by then).  Lock held. */
int vhdx_retire_log_locked(struct vd_dev *dev);

/* ---- vhdx-manage.c ---- */

/* vd_driver truncate op: dynamic images only; grows through the log (the
 * new BAT entries first, then the size item) when the BAT region holds
 * the entries; shrinks when no block past the new end is allocated. */
int vhdx_truncate(struct vd_dev *dev, uint64_t size, unsigned flags);
/* vd_driver compact op: dynamic images only; blocks of zeros lose their
 * space, the last blocks move into the gaps, the file is cut. */
int vhdx_compact(struct vd_dev *dev, uint64_t *freed, vd_progress_fn progress,
                 void *opaque);
/* Give the payload block of BAT entry IDX its own copy at the end of the
 * file (1 MiB aligned; BUF: 1 MiB of scratch): the copy written and
 * flushed, then the entry through the log.  For check -r, with no reader
 * of DEV about.  Lock held, session begun. */
int vhdx_fresh_copy_locked(struct vd_dev *dev, uint64_t idx, uint8_t *buf);
/* vd_driver change_backing op: the parent locator (linkage and paths of
 * BDEV, a VHDX) rewritten in place through the log, with its length in
 * the metadata table; only a differencing image, only to another parent,
 * only where the locator fits before the next item. */
int vhdx_change_backing(struct vd_dev *dev, const char *backing,
                        struct vd_dev *bdev);

/* ---- vhdx-check.c ---- */

/* vd_driver check op (vd_check): headers and region table copies, then
 * the driver's own open (log, metadata, BAT against the file), then
 * overlapping structures and leaked space; -r as described there. */
int vhdx_check(const char *path, unsigned flags, struct vd_check_report *r);

/* A range of the file a structure claims. */
struct vhdx_use {
  uint64_t off, len;
  uint64_t entry;               /* BAT index, or UINT64_MAX */
  const char *what;
};
/* Fill U (room for p->bat_entries + 4) with every range a structure of P
 * claims, unsorted: the header section, the log, the regions, payload
 * blocks (also the space a zero or unmapped entry keeps) and, in a
 * differencing image, sector bitmap blocks.  Returns how many. */
size_t vhdx_uses(const struct vhdx_priv *p, struct vhdx_use *u);
/* qsort comparator of vhdx_use by offset. */
int vhdx_use_cmp(const void *a, const void *b);

#endif /* VDISK_VHDX_H */
