/* libvdisk — public engine API.
 *
 * Every virtual disk (raw file, VHD image, RAID array, compressed image)
 * is a struct vd_dev opened by path with format probing.  All functions
 * return 0 (or a non-negative count) on success and a negative errno on
 * failure; a one-line human message naming the object is then available
 * from vd_error() in the calling thread.
 *
 * Thread safety: every operation on an open device may be called from
 * many threads at once.  vd_open/vd_close of one device are not
 * concurrent with its other operations.
 */
#ifndef VDISK_VDISK_H
#define VDISK_VDISK_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

struct vd_dev;

/* vd_open flags. */
#define VD_OPEN_RDWR     0x01u  /* open for writing (default: read-only) */
#define VD_OPEN_DIRECT   0x02u  /* O_DIRECT + libaio (qemu's cache=none) */
#define VD_OPEN_NOLOCK   0x04u  /* take no image lock (qemu's -U / force-share) */
#define VD_OPEN_NOPARENT 0x08u  /* do not open backing files at all: reads of
                                   sectors the image does not hold give
                                   zeros (management of a lone child) */
#define VD_OPEN_PROBE_LEAF 0x10u /* when probing, consider only formats whose
                                   images reference no other file (raw,
                                   vdz): never vpc or raid */

/* Where the parent (backing file) of a differencing image may be found,
 * when the operator did not name it (see docs/vhd.md, "Parent lookup"). */
#define VD_PARENT_CONFINED 0u   /* default: a regular file inside the
                                   child's folder tree (after realpath) */
#define VD_PARENT_ANY_FOLDER 1u /* a regular file anywhere */

/* Options of vd_open_opts (QEMU's options dict, nbdkit's .config): they
 * travel down the open path and stay with the device.  Zero-initialise
 * and set what you need; strings are copied. */
struct vd_open_args {
  const char *format;         /* driver name or alias, NULL to probe */
  unsigned flags;             /* VD_OPEN_* */
  /* Backing override for the top image (qemu's backing.file): its parent
   * is this file, whatever the image's parent locators say.  The operator
   * names it, so it is exempt from the folder confinement; it must still
   * be a regular file or a block device.  NULL: look it up. */
  const char *backing;
  /* Format of BACKING (or of the looked-up parent).  NULL: what the child
   * implies (a VHD parent for a VHD child that records a parent UUID, else
   * a probe among VD_OPEN_PROBE_LEAF formats). */
  const char *backing_format;
  unsigned parent_policy;     /* VD_PARENT_*; applies to the whole chain */
  /* A filter stacked over the image (nbdkit's --filter, QEMU's blkdebug):
   * every request goes through the registered filter driver of that name,
   * which passes it on to the image opened with the other options.  A
   * RAID array is not filtered itself: it opens each member with it.  The
   * image's description (vd_format, vd_get_info) is the image's.  libvdisk
   * has no filter of its own; the tests register "fault"
   * (tests/unit/fault.h).  NULL: none. */
  const char *filter;
};

/* Request flags for vd_pwrite / vd_discard / vd_write_zeroes. */
#define VD_REQ_FUA       0x01u  /* durable before returning */
#define VD_REQ_NO_HOLE   0x02u  /* write_zeroes: allocate, do not punch */
#define VD_REQ_FAST_ZERO 0x04u  /* write_zeroes: fail with -ENOTSUP unless fast */

/* Extent flags from vd_block_status (same meaning as NBD base:allocation). */
#define VD_EXT_HOLE      0x01u  /* not allocated at this layer or below */
#define VD_EXT_ZERO      0x02u  /* reads as zeros */

struct vd_extent {
  uint64_t offset;      /* start (always the offset asked for) */
  uint64_t length;      /* > 0, never past the requested range */
  uint32_t flags;       /* VD_EXT_* */
  int depth;            /* chain layer holding the data: 0 = this image,
                           1 = its parent, ...; for holes the depth where
                           the lookup ended */
  int64_t host_offset;  /* byte offset in the host file of the layer at
                           'depth', or -1 when not a plain mapping */
};

#define VD_INFO_MAX_FIELDS 32

/* One format-specific property for `vdtool info`. */
struct vd_info_field {
  char key[48];
  enum { VD_FIELD_STR, VD_FIELD_U64, VD_FIELD_BOOL } type;
  char str[512];
  uint64_t u64;
};

struct vd_info {
  const char *format;         /* driver name, e.g. "raw", "vpc" */
  uint64_t size;              /* virtual size in bytes */
  uint32_t logical_block;     /* smallest addressable unit, bytes */
  uint32_t preferred_io;      /* preferred request size, bytes */
  uint64_t actual_size;       /* bytes allocated on the host (0 if unknown) */
  bool read_only;
  bool dirty;
  char backing[4096];         /* path that opens the parent (resolved
                                 against the child's folder), "" if none */
  char backing_format[16];
  unsigned nfields;
  struct vd_info_field fields[VD_INFO_MAX_FIELDS];
  uint64_t cluster_size;      /* allocation unit of the format, 0 if none
                                 (qemu-img info's cluster_size) */
};

/* Arguments for vd_create. */
struct vd_create_args {
  uint64_t size;              /* virtual size (0: take the backing file's) */
  const char *options;        /* "key=value,key=value" (qemu-img -o), or NULL */
  const char *backing;        /* parent image path, or NULL */
  const char *backing_format; /* parent format, or NULL to probe */
};

/* Open the image at PATH.  FORMAT is a driver name or alias ("raw",
 * "vhd", "vpc", ...) or NULL to probe by magic bytes.  On success stores
 * the device in *OUT and returns 0.  The same as vd_open_opts with only
 * format and flags set. */
int vd_open(const char *path, const char *format, unsigned flags,
            struct vd_dev **out);

/* Open the image at PATH with the options in ARGS (NULL: all defaults).
 * PATH must be a regular file or a block device (a FIFO, socket or
 * character device is refused before it is opened, so it never blocks).
 * An image opened without a format that probed as raw refuses, with
 * -EPERM, any write-type request that would change what it probes as
 * (qemu's rule: probing never turns guest-written content into
 * configuration); see vd_probed_raw.  Returns 0 and the device in *OUT, or
 * -errno with vd_error() set. */
int vd_open_opts(const char *path, const struct vd_open_args *args,
                 struct vd_dev **out);

/* Flush (if writable) and free the device.  Returns the flush result.
 * Accepts NULL. */
int vd_close(struct vd_dev *dev);

/* Create a new image.  Fails with -EEXIST semantics left to the caller:
 * an existing file is overwritten, as qemu-img create does. */
int vd_create(const char *path, const char *format,
              const struct vd_create_args *args);

/* Read LEN bytes at OFF.  The whole range must lie inside the device.
 * Returns 0 or -errno; never a short read. */
int vd_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off);

/* Write LEN bytes at OFF; FLAGS may hold VD_REQ_FUA. */
int vd_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
              unsigned flags);

/* Make everything acknowledged so far durable. */
int vd_flush(struct vd_dev *dev);

/* Advisory: the range need not keep its data; it may read back as
 * anything until written.  Drivers that free space make it read zeros. */
int vd_discard(struct vd_dev *dev, uint64_t off, uint64_t len, unsigned flags);

/* Make the range read as zeros.  VD_REQ_NO_HOLE keeps it allocated;
 * VD_REQ_FAST_ZERO fails with -ENOTSUP rather than write zeros slowly. */
int vd_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                    unsigned flags);

/* Describe the extent starting at OFF, at most LEN bytes long. */
int vd_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                    struct vd_extent *ext);

/* Progress callback for long operations: DONE of TOTAL units. */
typedef void (*vd_progress_fn)(void *opaque, uint64_t done, uint64_t total);

/* Create PATH in FORMAT holding the whole contents of SRC, for formats
 * written once (vdz).  Returns -ENOTSUP if FORMAT has no such path; then
 * the caller uses vd_create + vd_pwrite. */
int vd_import(const char *path, const char *format, struct vd_dev *src,
              const struct vd_create_args *args, vd_progress_fn progress,
              void *opaque);

/* Result of vd_check, with qemu-img check's counters. */
struct vd_check_report {
  uint64_t corruptions, leaks, check_errors;
  uint64_t corruptions_fixed, leaks_fixed;
  uint64_t total_clusters, allocated_clusters, fragmented_clusters,
           compressed_clusters;
  uint64_t image_end_offset;
  /* Called once per problem found with a one-line message (may be NULL). */
  void (*message)(void *opaque, const char *msg);
  void *opaque;
};
#define VD_CHECK_FIX_LEAKS 0x1u
#define VD_CHECK_FIX_ERRORS 0x2u
#define VD_CHECK_FIX_ALL (VD_CHECK_FIX_LEAKS | VD_CHECK_FIX_ERRORS)

/* Check (and with FIX, repair) the image at PATH.  Works on images too
 * damaged to open.  Returns 0 when the check ran (look at *R), -ENOTSUP
 * if the format has no checker, or another -errno if it could not run. */
int vd_check(const char *path, const char *format, unsigned fix,
             struct vd_check_report *r);

/* ---- Management operations (qemu-img's commit, rebase, resize; compact).
 * Each is a driver op with a generic fallback where the job can be done by
 * copying (vdisk/manage.c); a format that cannot do it fails with -ENOTSUP
 * and a message naming the image and the format.  None may run
 * concurrently with other requests on the same device. ---- */

/* vd_truncate flags. */
#define VD_TRUNCATE_SHRINK 0x1u  /* a smaller size is allowed (--shrink) */

/* Set the virtual size of DEV (opened VD_OPEN_RDWR) to SIZE.  Growing adds
 * space that reads as zeros; a smaller size needs VD_TRUNCATE_SHRINK, and
 * formats may refuse to cut data (vpc does).  Formats may round SIZE up to
 * their unit (vpc: 512 bytes).  A device probed as raw (vd_probed_raw) may
 * grow but not shrink, as that would expose other bytes to the probe.
 * Returns 0 and vd_size() is the new size, or -errno. */
int vd_truncate(struct vd_dev *dev, uint64_t size, unsigned flags);

/* Give back the host space of DEV's (opened VD_OPEN_RDWR) allocation units
 * that hold nothing (zeros; for a differencing image, no sectors), moving
 * the rest down and shortening the file.  Reads are the same afterwards.
 * *FREED gets the bytes saved (may be NULL). */
int vd_compact(struct vd_dev *dev, uint64_t *freed, vd_progress_fn progress,
               void *opaque);

/* Drop all data DEV (opened VD_OPEN_RDWR) holds itself, so it reads as
 * its backing file, or as zeros without one (what qemu-img commit does to
 * the top image unless -d). */
int vd_make_empty(struct vd_dev *dev);

/* vd_change_backing flags. */
#define VD_BACKING_UNSAFE 0x1u   /* only rewrite the pointer (rebase -u) */

/* Make BACKING (in BACKING_FORMAT, NULL to probe) the backing file of DEV
 * (opened VD_OPEN_RDWR); NULL or "" removes it.  BACKING is named relative
 * to the current folder and recorded relative to DEV, as qemu-img rebase.
 * Safe mode (no VD_BACKING_UNSAFE) first copies into DEV every range it
 * does not hold whose contents differ between its current chain and
 * BACKING, so DEV reads the same afterwards; it needs DEV opened with its
 * chain (not VD_OPEN_NOPARENT).  Unsafe mode only rewrites the pointer, so
 * the old backing file need not exist.  An open DEV keeps reading through
 * the chain it was opened with: close and reopen it to read through the
 * new one.  Refuses a BACKING whose chain contains DEV (-ELOOP). */
int vd_change_backing(struct vd_dev *dev, const char *backing,
                      const char *backing_format, unsigned flags,
                      vd_progress_fn progress, void *opaque);

/* Commit the image at PATH into its backing file: open PATH with ARGS
 * (NULL: defaults) and its chain, as any open (so the backing file found
 * is the checked one, or ARGS->backing), then copy every range PATH holds
 * itself into the backing file, opened writable in the format the chain
 * open found.  PATH is left unchanged (see vd_make_empty).  The backing
 * file must be at least as large as PATH. */
int vd_commit(const char *path, const struct vd_open_args *args,
              vd_progress_fn progress, void *opaque);

/* Fill *INFO (through a filter: the image's). */
int vd_get_info(struct vd_dev *dev, struct vd_info *info);

/* Quick accessors. */
uint64_t vd_size(const struct vd_dev *dev);
uint32_t vd_logical_block(const struct vd_dev *dev);
uint32_t vd_preferred_io(const struct vd_dev *dev);
bool vd_is_read_only(const struct vd_dev *dev);
const char *vd_path(const struct vd_dev *dev);
/* The image's format ("raw", "vpc", ...), also through a filter. */
const char *vd_format(const struct vd_dev *dev);
/* True if DEV was opened without a format and probed as raw: writes that
 * would make its first 4 KiB or its last 512 bytes probe as another format
 * are refused (frontends warn when serving such a device writable; open
 * with format "raw" to lift the restriction). */
bool vd_probed_raw(const struct vd_dev *dev);
/* True if writes, flushes and write_zeroes from several connections are
 * coherent (a flush on one covers writes completed on all). */
bool vd_can_multi_conn(const struct vd_dev *dev);

/* The calling thread's last error message ("" if none). */
const char *vd_error(void);

/* Parse a size such as "512", "64K", "1.5G", "2T" (binary multiples,
 * case-insensitive, optional trailing "B" or "iB").  Returns 0 or -EINVAL
 * (message set). */
int vd_parse_size(const char *s, uint64_t *out);

/* Format a size for humans ("1 GiB", "1.5 MiB") into BUF. */
const char *vd_format_size(uint64_t bytes, char *buf, size_t buflen);

/* Names of the registered formats, NULL-terminated. */
const char *const *vd_format_names(void);

#ifdef __cplusplus
}
#endif

#endif /* VDISK_VDISK_H */
