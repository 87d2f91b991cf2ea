/* libvdisk — qcow2 (QEMU copy-on-write v2/v3) internals.
 *
 * Follows QEMU's docs/interop/qcow2.txt.  All integers are big-endian.
 *
 * Header (cluster 0):
 *     0 magic "QFI\xfb"         4 version u32 (2 or 3)
 *     8 backing_file_offset u64 16 backing_file_size u32 (<= 1023)
 *    20 cluster_bits u32 (9..21) 24 size u64 (virtual size)
 *    32 crypt_method u32 (0 none, 1 AES, 2 LUKS)
 *    36 l1_size u32            40 l1_table_offset u64
 *    48 refcount_table_offset u64  56 refcount_table_clusters u32
 *    60 nb_snapshots u32       64 snapshots_offset u64
 *   version 3 only (version 2 headers are 72 bytes, fields below read 0,
 *   refcount_order 4):
 *    72 incompatible_features u64: bit 0 dirty, 1 corrupt, 2 external
 *       data file, 3 compression type, 4 extended L2
 *    80 compatible_features u64: bit 0 lazy refcounts
 *    88 autoclear_features u64: bit 0 bitmaps, 1 raw external data
 *    96 refcount_order u32 (refcount bits = 1 << order, order <= 6)
 *   100 header_length u32 (>= 104, multiple of 8)
 *   104 compression_type u8 (0 zlib, 1 zstd; header_length >= 112)
 * Header extensions follow the header, inside cluster 0: type u32, length
 * u32, data padded to 8 bytes; type 0 ends them.  Types:
 *   0xe2792aca backing file format name   0x6803f857 feature name table
 *   0x23852875 bitmaps                    0x0537be77 full disk encryption
 *   0x44415441 external data file name
 * The backing file name (not an extension) lies at backing_file_offset.
 *
 * Two-level mapping of guest clusters:
 *   L1 entry u64: bits 9..55 L2 table offset (0: unallocated), bit 63
 *     "copied" (refcount 1); other bits reserved.
 *   L2 entry u64 (a table is one cluster: cluster_size / 8 entries, or /16
 *     with extended L2, where each entry is followed by a u64 subcluster
 *     bitmap: bits 0..31 allocated, 32..63 reads as zero; 32 subclusters):
 *     bit 62 compressed, bit 63 copied.
 *     standard: bit 0 reads as zeros (v3, not with extended L2), bits
 *       9..55 host cluster offset (0: unallocated, read the backing file).
 *     compressed: x = 62 - (cluster_bits - 8); bits 0..x-1 host byte
 *       offset, bits x..61 additional 512-byte sectors: the compressed
 *       data is (n + 1) * 512 - (offset % 512) bytes (at most), deflate
 *       (raw, 4 KiB window) or zstd per compression_type.
 * Refcount table: refcount_table_clusters clusters of u64 offsets of
 *   refcount blocks (one cluster of refcount_bits-wide big-endian
 *   entries, one per host cluster).
 * Snapshot table at snapshots_offset, nb_snapshots entries, each 8-aligned:
 *     0 l1_table_offset u64   8 l1_size u32   12 id_str_size u16
 *    14 name_size u16        16 date_sec u32  20 date_nsec u32
 *    24 vm_clock_nsec u64    32 vm_state_size u32  36 extra_data_size u32
 *    40 extra data: 0 vm_state_size_large u64, 8 disk_size u64,
 *       16 icount u64 (present if extra_data_size covers them)
 *    then the id string and the name (not NUL-terminated), padding to 8.
 */
#ifndef VDISK_QCOW2_H
#define VDISK_QCOW2_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/driver.h"

#define QCOW2_MAGIC            0x514649fbu
#define QCOW2_V2_HEADER_LEN    72u
#define QCOW2_V3_HEADER_LEN    104u
#define QCOW2_MIN_CLUSTER_BITS 9u
#define QCOW2_MAX_CLUSTER_BITS 21u
#define QCOW2_MAX_BACKING_NAME 1023u
/* QEMU's limits: 32 MiB of L1 table, 8 MiB of refcount table, 65536
 * snapshots and a 64 MiB snapshot table; a larger table is damage. */
#define QCOW2_MAX_L1_BYTES     (UINT64_C(32) << 20)
#define QCOW2_MAX_RT_BYTES     (UINT64_C(8) << 20)
#define QCOW2_MAX_SNAPSHOTS    65536u
#define QCOW2_MAX_SNAP_TABLE   (UINT64_C(64) << 20)
#define QCOW2_MAX_SNAP_EXTRA   1024u
#define QCOW2_MAX_CHAIN        64
/* Host offsets are 56 bits (bits 9..55 of a table entry). */
#define QCOW2_OFFSET_MASK      UINT64_C(0x00fffffffffffe00)
#define QCOW2_L1_RESERVED      UINT64_C(0x7f000000000001ff)
#define QCOW2_OFLAG_COPIED     (UINT64_C(1) << 63)
#define QCOW2_OFLAG_COMPRESSED (UINT64_C(1) << 62)
#define QCOW2_OFLAG_ZERO       UINT64_C(1)
#define QCOW2_L2_STD_RESERVED  UINT64_C(0x3f000000000001fe)
#define QCOW2_SUBCLUSTERS      32u

enum {
  QCOW2_INCOMPAT_DIRTY = 1u << 0,
  QCOW2_INCOMPAT_CORRUPT = 1u << 1,
  QCOW2_INCOMPAT_DATA_FILE = 1u << 2,
  QCOW2_INCOMPAT_COMPRESSION = 1u << 3,
  QCOW2_INCOMPAT_EXTL2 = 1u << 4,
  QCOW2_INCOMPAT_KNOWN = 0x1f,
  QCOW2_COMPAT_LAZY_REFCOUNTS = 1u << 0,
};

enum {
  QCOW2_EXT_END = 0,
  QCOW2_EXT_BACKING_FORMAT = 0xe2792acau,
  QCOW2_EXT_FEATURE_TABLE = 0x6803f857u,
  QCOW2_EXT_BITMAPS = 0x23852875u,
  QCOW2_EXT_CRYPTO = 0x0537be77u,
  QCOW2_EXT_DATA_FILE = 0x44415441u,
};

enum { QCOW2_COMP_ZLIB = 0, QCOW2_COMP_ZSTD = 1 };

/* The header and what its extensions say. */
struct qcow2_header {
  uint32_t version;
  uint64_t backing_off;
  uint32_t backing_len;
  uint32_t cluster_bits;
  uint64_t size;
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_off;
  uint64_t rt_off;
  uint32_t rt_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_off;
  uint64_t incompat, compat, autoclear;
  uint32_t refcount_order;
  uint32_t header_len;
  uint8_t compression;
  /* from the extensions */
  char backing_fmt[16];           /* "" if absent */
  bool has_bitmaps;
  /* the name of the first unknown incompatible feature from the feature
   * table, for the refusal message ("" if the table does not name it) */
  char unknown_feature[48];
};

/* One internal snapshot. */
struct qcow2_snapshot {
  uint64_t l1_off;
  uint32_t l1_size;
  uint32_t date_sec, date_nsec;
  uint64_t vm_clock_nsec;
  uint64_t vm_state_size;
  uint64_t disk_size;             /* the header's size if not recorded */
  uint64_t icount;                /* UINT64_MAX if not recorded */
  char *id, *name;
};

/* ---- qcow2-meta.c: codecs over bytes (no I/O) ---- */

/* Decode the header in BUF (LEN bytes, at least the cluster 0 bytes the
 * file holds, up to one cluster) with its extensions, into H, and check
 * it: magic, version, cluster size, encryption (refused), unknown
 * incompatible features (refused, named from the feature table), an
 * external data file (refused), extensions inside cluster 0.  FILE_SIZE
 * bounds nothing here.  0 or -EINVAL / -ENOTSUP with "WHERE: why" set. */
int qcow2_header_decode(const uint8_t *buf, size_t len,
                        struct qcow2_header *h, const char *where);

/* Decode NB snapshot entries from BUF (LEN bytes, the table) into *OUT
 * (malloc'd array, strings malloc'd); *USED gets the table's length.
 * SIZE is the image's current virtual size (for entries without one).
 * 0 or -EINVAL ("WHERE: why"), -ENOMEM. */
int qcow2_snapshots_decode(const uint8_t *buf, size_t len, uint32_t nb,
                           uint64_t size, struct qcow2_snapshot **out,
                           size_t *used, const char *where);
void qcow2_snapshots_free(struct qcow2_snapshot *s, uint32_t nb);

/* Decompress one cluster: SRC (SLEN bytes) into DST (CLUSTER bytes) with
 * TYPE (QCOW2_COMP_*).  The input may carry trailing bytes (the sector
 * padding).  0 or -EIO with "WHERE: why". */
int qcow2_decompress(int type, const uint8_t *src, size_t slen,
                     uint8_t *dst, size_t cluster, const char *where);

/* ---- qcow2.c: the driver ---- */

extern const struct vd_driver vd_qcow2_driver;

/* A small cache of L2 tables (QEMU's l2-cache-size idea): a fixed
 * number of slots, least recently used evicted; tables are immutable while
 * the image is open read-only.  A writable image may hold entries in the
 * cache ahead of the file (dirty, never evicted, at most
 * QCOW2_L2_DIRTY_MAX tables): entries that name reserved clusters
 * (qcow2-write.c), written back at the next flush. */
#define QCOW2_L2_SLOTS 32
#define QCOW2_L2_DIRTY_MAX 16

struct qcow2_l2_slot {
  uint64_t off;                   /* host offset of the table, 0: empty */
  uint64_t used;                  /* LRU tick */
  uint8_t *data;                  /* one cluster */
  bool dirty;                     /* entries [lo, hi] not yet written */
  uint32_t lo, hi;
};

/* Concurrency: open sets everything; reads take CACHE_LOCK only around
 * the L2 cache (a table is copied out under it). */
struct qcow2_priv {
  struct qcow2_header h;
  uint64_t file_size;
  uint32_t cluster;               /* bytes */
  uint32_t l2_entries;            /* entries per L2 table */
  bool extl2;
  uint32_t subcluster;            /* bytes per subcluster (extended L2) */
  uint64_t *l1;                   /* the active table (or the snapshot's) */
  uint32_t l1_size;
  struct qcow2_snapshot *snaps;
  uint32_t nsnaps;
  int snap_loaded;                /* index of the loaded snapshot, or -1 */
  char backing[QCOW2_MAX_BACKING_NAME + 1];   /* as recorded */
  struct vd_dev *parent;
  char parent_path[PATH_MAX];
  char parent_format[16];
  pthread_mutex_t cache_lock;
  bool lock_init;
  uint64_t tick;
  struct qcow2_l2_slot slots[QCOW2_L2_SLOTS];
  unsigned l2_dirty;              /* dirty slots (atomic reads outside
                                     CACHE_LOCK) */
  /* Writes (qcow2-write.c): RW is held for writing by a write-type
   * request (one at a time) and for reading by reads, so a read never
   * sees a half-made allocation. */
  pthread_rwlock_t rw;
  bool rw_init;
  const char *ro_reason;          /* why a writable open stayed read-only */
  uint64_t next_free;             /* where the next cluster is taken */
  uint64_t resv, resv_end;        /* reserved clusters [resv, resv_end):
                                     refcount 1 written, named by nothing
                                     yet (q_resv_fill) */
  uint64_t deps_seq;              /* bumped, with RW held for writing,
                                     whenever something an L2 entry may
                                     name (new refcounts, data copied into
                                     reserved clusters) is written, within
                                     that same hold */
  uint64_t deps_synced;           /* the deps_seq a sync has covered: the
                                     two differ, sync before writing L2
                                     entries (q_resv_durable) */
  unsigned resv_fills;            /* fills since open or release */
  uint64_t rpb;                   /* refcount entries per block */
  uint64_t *rt;                   /* the refcount table, in memory */
  uint64_t rt_entries;
  bool rt_staging;                /* a new table is being built */
  uint64_t rt_pend_lo, rt_pend_hi; /* entries [lo, hi) name refcount
                                     blocks taken since the last sync:
                                     written by the next one (q_sync) */
  uint64_t l1_pend_lo, l1_pend_hi; /* L1 entries [lo, hi) name new L2
                                     tables not yet written there: by the
                                     next write-back (q_l2_writeback) */
  uint8_t *rb;                    /* one refcount block (scratch/cache) */
  uint64_t rb_off;                /* which block rb holds, 0: none */
  bool failed;                    /* a metadata update failed: no writes */
};

/* The snapshot list of an open qcow2 DEV (vd_snapshot_list). */
int qcow2_snapshot_list(struct vd_dev *dev, struct vd_snapshot **list,
                        size_t *count);

/* Read LEN bytes at OFF with RW held (either way): the reader's core,
 * also the copy-on-write fill of the write path. */
int qcow2_read_locked(struct vd_dev *dev, void *buf, size_t len,
                      uint64_t off);
/* With RW held (either way): the host offset of OFF if its cluster holds
 * data this image alone owns (allocated with the COPIED flag, neither
 * compressed nor zero, in an L2 table with the COPIED flag), so that writing it in place changes no metadata,
 * and in *N the bytes from OFF to the end of that cluster (at most LEN);
 * 0 if it is not so (or with extended L2), or -errno. */
int64_t qcow2_owned_data(struct vd_dev *dev, uint64_t off, uint64_t len,
                         uint64_t *n);
/* Copy the L2 table at OFF into TABLE (one cluster), from the cache, or
 * read and then cached.  RW held (the writer: for writing). */
int qcow2_l2_table(struct vd_dev *dev, uint64_t off, uint8_t *table);
/* TABLE was written as the L2 table at OFF: the cache keeps a copy of it
 * (replacing the old one, or as a new entry if memory allows); RW held for
 * writing.  Dirty entries stay dirty (TABLE was copied with them). */
void qcow2_l2_cache_update(struct vd_dev *dev, uint64_t off,
                           const uint8_t *table);
/* Keep entries LO..HI of TABLE (a copy of the cached L2 table at OFF,
 * taken by qcow2_l2_table under the same hold of RW for writing) in the
 * cache only, dirty (to be written at the next flush): true if done,
 * false if the table is not cached or too many are dirty already (the
 * caller then writes it). */
bool qcow2_l2_cache_dirty(struct vd_dev *dev, uint64_t off,
                          const uint8_t *table, uint32_t lo, uint32_t hi);
/* Set entry IDX of the cached L2 table at OFF to E, dirty, if it is 0
 * (unallocated): 1 if done, 0 if the entry is not 0, -1 if the table is
 * not cached or too many are dirty already.  RW held for writing. */
int qcow2_l2_cache_claim(struct vd_dev *dev, uint64_t off, uint32_t idx,
                         uint64_t e);

/* ---- qcow2-write.c ---- */

/* Why writes to the open image P are refused (snapshots, extended L2,
 * bitmaps, dirty or corrupt, narrow refcounts), or NULL. */
const char *qcow2_write_refusal(const struct qcow2_priv *p);
/* Load what writes need (the refcount table) at a writable open. */
int qcow2_write_setup(struct vd_dev *dev);
/* At close, or before the image becomes read-only: give back the
 * reserved clusters not used (and the file's end after the last counted
 * cluster). */
void qcow2_resv_release(struct vd_dev *dev);
/* vd_driver ops (contracts in vdisk/driver.h; crash order in
 * qcow2-write.c). */
int qcow2_create(const char *path, const struct vd_create_args *args);
int qcow2_pwrite(struct vd_dev *dev, const void *buf, size_t len,
                 uint64_t off, unsigned flags);
int qcow2_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                       unsigned flags);
int qcow2_discard(struct vd_dev *dev, uint64_t off, uint64_t len,
                  unsigned flags);
int qcow2_flush(struct vd_dev *dev);
int qcow2_truncate(struct vd_dev *dev, uint64_t size, unsigned flags);
/* Open DEV's backing file with every check an open makes (LOOKUP_ONLY:
 * only record its name); for a device opened VD_OPEN_NOPARENT. */
int qcow2_open_backing(struct vd_dev *dev, bool lookup_only);

/* ---- qcow2-check.c ---- */

/* vd_driver.check: refcounts against references, COPIED flags (qemu-img
 * check); repairs refcounts with VD_CHECK_FIX_*. */
int qcow2_check(const char *path, unsigned flags, struct vd_check_report *r);

/* ---- qcow2-amend.c ---- */

/* vd_driver.amend: compat and lazy_refcounts (qemu-img amend). */
int qcow2_amend(const char *path, const char *options);

#endif /* VDISK_QCOW2_H */
