/* libvdisk — the VMDK driver (read-only), internal.
 *
 * Follows VMware's "Virtual Disk Format 5.0" (hosted sparse extents,
 * stream-optimized extents, the text descriptor) and what qemu's
 * block/vmdk.c reads (COWD "vmfsSparse" extents).  All integers on disk are
 * little-endian.
 *
 * A VMDK disk is a text descriptor plus extents.  The descriptor is either
 * a file of its own (monolithicFlat, twoGbMaxExtent*, vmfs) or embedded in
 * a hosted sparse extent (monolithicSparse, streamOptimized); opened
 * directly, a sparse extent is the whole disk and its embedded descriptor
 * only gives CID, parentCID, createType and the parent.
 *
 * Descriptor (text, at most VMDK_DESC_MAX bytes, lines of at most
 * VMDK_LINE_MAX):
 *   # Disk DescriptorFile
 *   version=1
 *   CID=fffffffe                       (hex, 1..8 digits)
 *   parentCID=ffffffff                 (ffffffff: no parent)
 *   createType="monolithicSparse"
 *   parentFileNameHint="base.vmdk"     (differencing disks only)
 *   RW 4192256 SPARSE "disk-s001.vmdk"
 *   RW 2048 FLAT "disk-flat.vmdk" 0    (offset in the file, sectors)
 *   RW 2048 ZERO
 *   ddb.adapterType = "ide"            (ignored)
 *
 * Hosted sparse extent header (VMDK4, sector 0, 512 bytes):
 *     0  magic "KDMV"        4  version (1..3)   8  flags
 *    12  capacity (sectors) 20  granularity (sectors per grain)
 *    28  descriptor offset  36  descriptor size (sectors)
 *    44  GTEs per GT (<= 512)
 *    48  redundant GD offset (sectors)  56  GD offset (sectors, or
 *        VMDK_GD_AT_END: read the footer)  64  grain offset
 *    72  unclean shutdown   73  "\n \r\n" check bytes
 *    77  compression (0 none, 1 deflate)
 * Flags: bit 0 newline check bytes valid, 1 redundant GD, 2 zero grains
 * (GTE 1 reads as zeros), 16 compressed grains, 17 markers.
 * Grain directory: uint32 sector offsets of grain tables (0: none);
 * grain table: uint32 sector offsets of grains (0: unallocated).  A
 * compressed grain with markers is { uint64 lba; uint32 size; zlib
 * stream of SIZE bytes }.  A stream-optimized extent whose header says
 * VMDK_GD_AT_END has, 1536 bytes before its end, a footer marker (512
 * bytes, type 3), a copy of the header with the real GD offset, and an
 * end-of-stream marker (512 bytes of zeros).
 *
 * COWD sparse extent (ESX vmfsSparse), 0 magic "COWD", 4 version, 8
 * flags, 12 capacity, 16 granularity, 20 GD offset, 24 GD entries (all
 * uint32; sectors); 4096 entries per grain table.
 *
 * Trust: a descriptor names files the server opens (extents, parent): they
 * follow the parent rules of docs/SECURITY.md (vdisk/parent.h) and
 * docs/vmdk.md.
 */
#ifndef VDISK_VMDK_H
#define VDISK_VMDK_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/driver.h"

#define VMDK_DESC_MAX      (1u << 20)  /* descriptor bytes (qemu's bound) */
#define VMDK_LINE_MAX      4096
#define VMDK_NAME_MAX      1024        /* file name in an extent line */
#define VMDK_MAX_EXTENTS   4096
#define VMDK_MAX_CHAIN     64
#define VMDK_MAX_GRAIN     (16u << 20) /* grain bytes we allocate for */
#define VMDK_MAX_GD        (1u << 24)  /* grain directory entries */
#define VMDK_GT_CACHE      64          /* cached grain tables per extent */
#define VMDK_GD_AT_END     UINT64_MAX
#define VMDK_NO_PARENT_CID 0xffffffffu

#define VMDK4_FLAG_NL_DETECT  (1u << 0)
#define VMDK4_FLAG_RGD        (1u << 1)
#define VMDK4_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK4_FLAG_COMPRESS   (1u << 16)
#define VMDK4_FLAG_MARKER     (1u << 17)

enum vmdk_ext_type {
  VMDK_EXT_FLAT,
  VMDK_EXT_SPARSE,
  VMDK_EXT_ZERO,
  VMDK_EXT_VMFS,
  VMDK_EXT_VMFSSPARSE,
};

/* One extent line of a descriptor. */
struct vmdk_desc_extent {
  enum vmdk_ext_type type;
  uint64_t sectors;
  uint64_t offset;            /* FLAT: first sector in the file */
  char *file;                 /* NULL for ZERO */
};

/* A parsed descriptor (vmdk_desc_parse). */
struct vmdk_desc {
  unsigned version;
  uint32_t cid;
  uint32_t parent_cid;        /* VMDK_NO_PARENT_CID when absent */
  char create_type[64];       /* "" when absent */
  char *parent_hint;          /* parentFileNameHint, NULL when absent */
  unsigned n;
  struct vmdk_desc_extent *ext;
};

/* Parse the descriptor TEXT (LEN bytes; parsing stops at the first NUL,
 * so an embedded descriptor's padding is fine).  Strict: every line is a
 * comment, blank, "key = value" or an extent line; a known key twice, an
 * unknown extent type, an over-long line or file name is an error.
 * WHERE prefixes messages.  0 with *D filled (free with vmdk_desc_free),
 * or -EINVAL / -ENOMEM with the error set and *D empty. */
int vmdk_desc_parse(const char *text, size_t len, struct vmdk_desc *d,
                    const char *where);
/* Free what vmdk_desc_parse allocated (accepts an empty or zeroed D). */
void vmdk_desc_free(struct vmdk_desc *d);
/* The descriptor spelling of extent type T ("FLAT", ...). */
const char *vmdk_ext_type_name(enum vmdk_ext_type t);

/* One cached grain table (struct vmdk_extent.gt). */
struct vmdk_gt_slot {
  uint64_t tag;               /* GD index held, UINT64_MAX: empty */
  uint32_t *gte;              /* gt_entries, host order; lazily allocated */
};

/* One extent as opened. */
struct vmdk_extent {
  enum vmdk_ext_type type;
  uint64_t start, len;        /* bytes of the virtual disk it covers */
  struct vd_file *file;       /* NULL for ZERO */
  bool own_file;              /* opened by the driver (else dev->file) */
  char *name;                 /* as the descriptor names it (info) */
  uint64_t flat_off;          /* FLAT/VMFS: bytes into the file */
  /* Sparse extents. */
  uint64_t file_size;
  uint32_t version;
  bool cowd;                  /* COWD header (vmfsSparse) */
  bool compressed, markers, zero_grain;
  uint64_t grain;             /* grain bytes */
  uint32_t gt_entries;
  uint64_t gd_entries;
  uint32_t *gd;               /* grain table sectors, host order */
  pthread_mutex_t lock;       /* guards gt[] */
  bool lock_init;
  struct vmdk_gt_slot gt[VMDK_GT_CACHE];
};

/* What a VMDK4 or COWD header says (vmdk_sparse_header). */
struct vmdk_sparse_hdr {
  bool cowd;
  uint32_t version, flags;
  uint64_t capacity, granularity;     /* sectors */
  uint64_t desc_offset, desc_size;    /* sectors */
  uint32_t gt_entries;
  uint64_t gd_offset;                 /* sectors */
  uint64_t grain_offset;              /* sectors: first grain */
  uint64_t gd_entries;
  uint16_t compression;
};

/* Decode the sparse header in BUF (512 bytes; "KDMV" or "COWD") and check
 * every field that sizes something: version, granularity, GT size,
 * capacity, GD size, compression, newline check bytes.  A GD offset of
 * VMDK_GD_AT_END is returned as is (the caller reads the footer).  0 or
 * -EINVAL with the error set ("WHERE: ..."). */
int vmdk_sparse_header(const uint8_t *buf, struct vmdk_sparse_hdr *h,
                       const char *where);

/* Set up sparse extent E (file, file_size set) from header H: load and
 * check the grain directory (every grain table inside the file).  WHERE
 * names the extent in messages.  0 or -errno with the error set. */
int vmdk_sparse_load(struct vmdk_extent *e, const struct vmdk_sparse_hdr *h,
                     const char *where);

/* What a sparse extent holds at grain G. */
enum vmdk_grain_kind {
  VMDK_GRAIN_UNALLOC,         /* the parent's, or zeros */
  VMDK_GRAIN_ZERO,
  VMDK_GRAIN_DATA,            /* at *HOST in the file */
  VMDK_GRAIN_COMPRESSED,      /* marker/stream at *HOST */
};
/* Look grain G of E up (through the GT cache).  0 or -errno. */
int vmdk_sparse_grain(struct vmdk_extent *e, uint64_t g,
                      enum vmdk_grain_kind *kind, uint64_t *host,
                      const char *where);
/* Inflate the compressed grain at HOST of E into OUT (e->grain bytes).
 * 0 or -errno with the error set. */
int vmdk_sparse_inflate(struct vmdk_extent *e, uint64_t host, uint8_t *out,
                        const char *where);
/* Free the tables of E (not its file). */
void vmdk_sparse_free(struct vmdk_extent *e);

/* The driver's per-device state. */
struct vmdk_priv {
  struct vmdk_desc desc;
  unsigned n;
  struct vmdk_extent *ext;
  struct vd_dev *parent;      /* NULL without one (or NOPARENT) */
  char parent_path[4096];     /* as opened (info's backing) */
  char parent_format[16];
  char create_type[64];
  uint64_t cluster_size;      /* first sparse extent's grain, for info */
};

extern const struct vd_driver vd_vmdk_driver;

#endif /* VDISK_VMDK_H */
