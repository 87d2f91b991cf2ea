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
#include <sys/types.h>
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
#define VD_OPEN_FORCE    0x20u  /* RAID: start an array that is dirty and
                                   degraded (RAID5: replaying the partial
                                   parity log) or has members one event
                                   behind, as mdadm --force; not passed to
                                   members; other formats ignore it */
#define VD_OPEN_NO_FLUSH 0x40u  /* flushes of the image's files do nothing
                                   (qemu's cache=unsafe): only for work a
                                   crash may lose whole, such as the
                                   output of a convert; the format's
                                   metadata is still written in its order,
                                   only the fdatasyncs are left out */

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
  /* Network images (nbd): a request without a reply after this many
   * milliseconds fails with -ETIMEDOUT and the connection is given up, so
   * every later request fails at once (the device is dead; reopen it).
   * Also bounds the connect.  0: wait as long as the connection stays
   * open (a killed server closes it; a stopped one is waited for).  A
   * RAID array opens its members with its member timeout
   * (docs/remote.md). */
  unsigned timeout_ms;
  /* An internal snapshot to read instead of the current state (qemu-img
   * convert -l): "snapshot.id=ID", "snapshot.name=NAME", or a bare ID or
   * NAME (an ID is tried first).  The device is then read-only.  Formats
   * without internal snapshots fail the open with -ENOTSUP.  NULL: the
   * current state. */
  const char *snapshot;
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
  char backing_stored[4096];  /* the parent's name as the image records it
                                 (qemu-img info's backing-filename), "" if
                                 the format keeps none apart from backing */
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

/* Zero-copy read for frontends: when [OFF, OFF + LEN) of DEV is data
 * stored plainly in DEV's own image file (one run, no hole, not in a
 * parent, not compressed; the file not in direct mode), move it into the
 * pipe PIPE_WR without copying (splice), as much as the pipe takes
 * without waiting, and return the bytes moved (read the rest with
 * vd_pread).  -ENOTSUP when it is not so (nothing was moved); after any
 * other failure part of the bytes may be in the pipe.  The pipe
 * references the file's page cache: a write to the range made before the
 * pipe is drained shows through, as with any read racing a write. */
ssize_t vd_splice_read(struct vd_dev *dev, int pipe_wr, size_t len,
                       uint64_t off);

/* Write LEN bytes at OFF; FLAGS may hold VD_REQ_FUA. */
int vd_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
              unsigned flags);

/* Make everything acknowledged so far durable. */
int vd_flush(struct vd_dev *dev);

/* Start writing what the image's own file holds unwritten back to the
 * disk, without waiting, so that a later vd_flush has little left (a
 * copy's write-behind).  A hint: it makes nothing durable, does nothing
 * on a device opened with VD_OPEN_NO_FLUSH or whose driver opens its own
 * files, and leaves errors to the next vd_flush. */
void vd_writeback(struct vd_dev *dev);

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
/* Take no image lock (qemu-img check -U): check an image another process
 * has open, at the risk of reporting what its writes in flight change.
 * Not with a FIX flag. */
#define VD_CHECK_NOLOCK 0x4u

/* Check (and with a VD_CHECK_FIX_* flag in FLAGS, repair) the image at
 * PATH.  Works on images too damaged to open.  Returns 0 when the check
 * ran (look at *R), -ENOTSUP if the format has no checker, -EINVAL for
 * VD_CHECK_NOLOCK with a fix flag, or another -errno if it could not
 * run. */
int vd_check(const char *path, const char *format, unsigned flags,
             struct vd_check_report *r);

/* Change format options of the image at PATH as qemu-img amend does
 * (OPTIONS "key=value,...", FORMAT NULL: probe; qcow2: compat and
 * lazy_refcounts).  Returns 0, -ENOTSUP when the format amends nothing,
 * or another -errno with vd_error() set. */
int vd_amend(const char *path, const char *format, const char *options);
/* The options vd_amend takes for FORMAT, one per line in qemu-img's -o
 * help layout; NULL if FORMAT is unknown or amends nothing. */
const char *vd_amend_options_help(const char *format);

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
/* Commit the image at PATH into BASE, a file of its backing chain at
 * any depth (qemu-img commit -b; NULL or "": vd_commit): open PATH with
 * ARGS and its chain, then copy into BASE every range a layer above BASE
 * holds, as PATH reads it.  PATH and the layers between it and BASE are
 * left unchanged (PATH then reads as before; the layers between may not).
 * A relative BASE names a layer from the working folder or, as in QEMU,
 * from the folder of the image that names that layer as its backing
 * file.  -ENOENT when BASE is not in the chain; BASE must be
 * at least as large as PATH. */
int vd_commit_base(const char *path, const struct vd_open_args *args,
                   const char *base, vd_progress_fn progress, void *opaque);

/* Switch the open DEV between read-only (FLAGS 0) and read-write (FLAGS
 * VD_OPEN_RDWR) in place, as a live commit needs to write into a base the
 * chain holds read-only, and a live snapshot needs the old top to become
 * a read-only parent.  The device stays the same object (its parents,
 * children and node keep pointing at it); its image file's access mode
 * and image lock become those of an open in the new mode: read-write
 * takes the write lock, so it fails with -EBUSY (DEV unchanged) while
 * another process holds the image (a reader without -U included);
 * read-only goes back to the shared lock.  Going read-only first flushes
 * DEV: if that flush fails DEV stays writable and the error is returned,
 * so nothing acknowledged is lost; afterwards write-type requests fail
 * with -EROFS.  Reads may run on other threads during the switch; no
 * write-type request may be in flight or start until it returns (drain
 * the node first).  Only DEV switches, never its parents (a filter's
 * device switches the image below it).  Devices whose
 * driver opens its own files (RAID arrays) fail with -ENOTSUP; read-only
 * formats (vdz) refuse read-write with -EROFS.  Returns 0 (also when DEV
 * is already in that mode) or -errno. */
int vd_reopen(struct vd_dev *dev, unsigned flags);

/* Fill *INFO (through a filter: the image's). */
int vd_get_info(struct vd_dev *dev, struct vd_info *info);

/* Whether PATH is an NBD URI (nbd://, nbds://, nbd+unix://,
 * nbds+unix://, nbd+vsock://, nbds+vsock://, any case): vd_open then
 * connects to that export with the nbd driver instead of opening a file.
 * Only the scheme is checked; libnbd parses the rest.  Frontends use it
 * for what they would otherwise stat (vdisk-fuse's owner and mode).  A
 * path read out of an image is never taken as a URI (docs/SECURITY.md). */
bool vd_is_nbd_uri(const char *path);

/* Whether PATH names a remote image rather than a local file: an NBD URI
 * (vd_is_nbd_uri) or a Ceph RBD image, rbd:POOL/[NAMESPACE/]IMAGE[@SNAP]
 * [:conf=PATH][:id=USER][:timeout=SECS] (qemu's syntax; only the "rbd:"
 * prefix is checked here, the rbd driver parses the rest).  vd_open then
 * opens it with the nbd or rbd driver; as for NBD URIs, a name read out
 * of an image is never taken as one.  Frontends use it for what they
 * would otherwise stat. */
bool vd_is_remote_name(const char *path);

/* Quick accessors. */
uint64_t vd_size(const struct vd_dev *dev);
uint32_t vd_logical_block(const struct vd_dev *dev);
uint32_t vd_preferred_io(const struct vd_dev *dev);
bool vd_is_read_only(const struct vd_dev *dev);
const char *vd_path(const struct vd_dev *dev);
/* The parent device DEV reads through (a differencing image's backing
 * file; through a filter, the image's), or NULL when it has none.
 * Borrowed: valid as long as DEV is open and its chain is not re-pointed
 * (an intermediate live commit does that with the node drained, so read
 * it inside a request on the node, or from the thread that controls the
 * node's replacement).  For describing a chain (the control socket's
 * query-block); never write through it. */
struct vd_dev *vd_backing_dev(const struct vd_dev *dev);
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

/* ---- the device graph: nodes ----
 *
 * A node is what a frontend exports: a handle that points at the current
 * top device of a graph (a raw file, a differencing chain, an array).
 * Frontends do all their I/O through the node and never learn what it
 * points at; the engine can drain a node, make it point at another device
 * and resume (a live snapshot puts a new differencing child on top, a
 * mirror pivot or a live commit moves to another device), atomically from
 * the frontends' point of view.
 *
 * Requests.  Every vd_node_<op> (and every vd_node_get/vd_node_put
 * bracket) is one request: it enters the node, runs on the device the
 * node points at when it entered, and leaves.  The fast path is one
 * atomic increment and one decrement of the node's in-flight counter plus
 * a load of its drain count; no lock is taken unless the node is drained.
 *
 * The drain rule.  vd_node_drain returns once no request is in flight on
 * the node, and from then until the matching vd_node_resume new requests
 * wait (they block inside vd_node_<op> / vd_node_get; they are neither
 * failed nor lost) and run after the resume, on whatever device the node
 * points at then.  Drains nest: the node resumes at the last resume.  A
 * thread must not drain a node while it is inside a request on it (it
 * would wait for itself).
 *
 * The pointer.  The node's device pointer changes only in vd_node_replace,
 * with the node drained and the node's control mutex held; requests read
 * it without a lock after they have entered (entering orders the read
 * after any replacement, see vdisk/node.c).  So a request never runs on a
 * device after the vd_node_replace that removed it has returned, and a
 * device returned by vd_node_replace is the caller's to close at once.
 *
 * Lock order: the node's control mutex, then device locks (the replace
 * flushes the old device while holding it); the node's wait mutex is a
 * leaf, never held while calling into a device.
 *
 * Flush across a swap: vd_node_replace flushes the old device after the
 * drain and before the swap, and fails (keeping the old device) if that
 * flush fails.  So a flush acknowledged after the swap covers every write
 * acknowledged before it, and a flush in flight at the drain completes
 * on the old device before the swap.
 *
 * What a node reports about itself (size, logical block, preferred I/O,
 * read-only, multi-connection) is fixed by the device it was created
 * with; vd_node_replace refuses a device that would change it. */
struct vd_node;

/* Make a node that points at DEV and owns it (vd_node_free closes it).
 * Returns 0 and the node in *OUT, or -errno (DEV stays the caller's). */
int vd_node_new(struct vd_dev *dev, struct vd_node **out);

/* Close the device the node points at (flushing it if writable) and free
 * the node.  No request may be in flight or arrive.  Returns the close
 * result.  Accepts NULL. */
int vd_node_free(struct vd_node *node);

/* The device operations of vdisk.h, as one request each on the device the
 * node points at (same arguments, results and errors).  NODE NULL gives
 * -EINVAL. */
int vd_node_pread(struct vd_node *node, void *buf, size_t len, uint64_t off);
ssize_t vd_node_splice_read(struct vd_node *node, int pipe_wr, size_t len,
                            uint64_t off);
int vd_node_pwrite(struct vd_node *node, const void *buf, size_t len,
                   uint64_t off, unsigned flags);
int vd_node_flush(struct vd_node *node);
int vd_node_discard(struct vd_node *node, uint64_t off, uint64_t len,
                    unsigned flags);
int vd_node_write_zeroes(struct vd_node *node, uint64_t off, uint64_t len,
                         unsigned flags);
int vd_node_block_status(struct vd_node *node, uint64_t off, uint64_t len,
                         struct vd_extent *ext);
int vd_node_get_info(struct vd_node *node, struct vd_info *info);

/* The node's fixed properties (those of the device it was created with,
 * which every replacement keeps). */
uint64_t vd_node_size(const struct vd_node *node);
uint32_t vd_node_logical_block(const struct vd_node *node);
uint32_t vd_node_preferred_io(const struct vd_node *node);
bool vd_node_is_read_only(const struct vd_node *node);
bool vd_node_can_multi_conn(const struct vd_node *node);

/* A request bracket for a caller that needs several device calls as one
 * request: vd_node_get enters (waiting while the node is drained) and
 * returns the current device, borrowed until the matching vd_node_put. */
struct vd_dev *vd_node_get(struct vd_node *node);
void vd_node_put(struct vd_node *node);

/* The device the node points at, borrowed: valid until the node is next
 * replaced or freed, so only for the thread that controls replacement (or
 * while it holds the node drained) and before the node is shared.  Use it
 * for names and messages, never for I/O from a frontend. */
struct vd_dev *vd_node_dev(const struct vd_node *node);

/* Wait until no request is in flight on NODE and hold new ones back until
 * vd_node_resume (see the drain rule above).  Returns 0, or -EINVAL for
 * NODE NULL. */
int vd_node_drain(struct vd_node *node);
/* End one vd_node_drain; at the last one, the waiting requests proceed. */
void vd_node_resume(struct vd_node *node);

/* Atomically make NODE point at NEWDEV: drain, flush the old device, swap,
 * resume.  NEWDEV must have the node's size and logical block, and must be
 * writable if the node is, multi-connection safe if the node is.  On
 * success the node owns NEWDEV and the old device is stored in *OLDDEV,
 * idle and flushed, now the caller's (to close, or to keep as the new
 * device's parent).  On failure nothing changes: NEWDEV stays the
 * caller's.  May be called with the node already drained by the caller. */
int vd_node_replace(struct vd_node *node, struct vd_dev *newdev,
                    struct vd_dev **olddev);

/* ---- node write observers ----
 *
 * An observer sees every write-type request on a node: dirty bitmaps for
 * incremental backup and mirrors (live storage migration) are built on
 * it.  FN runs on the request's thread, inside the request (so a drain
 * waits for it), after the device operation and before the request is
 * acknowledged, whatever the operation's result (a failed write may have
 * changed some of the range).  OP says which request: VD_OBS_WRITE (BUF
 * holds the LEN bytes written at OFF), VD_OBS_DISCARD, VD_OBS_ZEROES
 * (BUF NULL) or VD_OBS_FLUSH (OFF and LEN 0).  RESULT is the operation's
 * result.  When RESULT is 0 and FN returns a negative errno, the request
 * fails with it (a write-blocking mirror whose target failed); otherwise
 * FN's return is ignored.  FN may run on many threads at once, must not
 * drain or replace the node, and must not block for long (every request
 * on the node waits for it).  Observers run in the order they were added.
 *
 * Reads are not observed.  Requests made through a vd_node_get bracket
 * on the device directly bypass observers: only vd_node_<op> is seen. */
enum vd_obs_op { VD_OBS_WRITE, VD_OBS_DISCARD, VD_OBS_ZEROES, VD_OBS_FLUSH };
typedef int (*vd_node_observer_fn)(void *opaque, enum vd_obs_op op,
                                   const void *buf, uint64_t off,
                                   uint64_t len, int result);
struct vd_node_observer;

/* Add an observer to NODE.  The node is drained while the set changes, so
 * FN sees every write-type request that completes after this returns (and
 * none that completed before).  Returns 0 and a handle in *OUT, or
 * -errno.  Must not be called from inside a request on NODE. */
int vd_node_observer_add(struct vd_node *node, vd_node_observer_fn fn,
                         void *opaque, struct vd_node_observer **out);
/* Remove and free OBS (NULL accepted).  Drains the node: once this
 * returns, FN is not running and will not run again for this observer.
 * Returns 0, or -EINVAL if OBS is not NODE's. */
int vd_node_observer_remove(struct vd_node *node,
                            struct vd_node_observer *obs);

/* ---- dirty bitmaps ----
 *
 * A bitmap over SIZE bytes with one bit per GRANULARITY bytes (a power of
 * two, 512 B to 2 GiB, as QEMU's): a set bit marks its granule dirty.
 * Set, reset and the queries may run on any threads at once (each word is
 * updated atomically); a query racing with updates sees each granule
 * either before or after each update.  Offsets and lengths are bytes;
 * ranges are clipped to SIZE.  The bitmap knows nothing of nodes: a
 * caller records writes into it through an observer. */
struct vd_bitmap;

/* A clean bitmap.  Returns 0 and *OUT, or -EINVAL (bad granularity, size
 * 0) or -ENOMEM. */
int vd_bitmap_new(uint64_t size, uint32_t granularity,
                  struct vd_bitmap **out);
void vd_bitmap_free(struct vd_bitmap *bm);
uint64_t vd_bitmap_size(const struct vd_bitmap *bm);
uint32_t vd_bitmap_granularity(const struct vd_bitmap *bm);
/* Mark dirty every granule that [OFF, OFF+LEN) touches. */
void vd_bitmap_set(struct vd_bitmap *bm, uint64_t off, uint64_t len);
/* Mark clean every granule that lies wholly inside [OFF, OFF+LEN) (the
 * last, short granule counts as whole when the range reaches SIZE), so a
 * reset never forgets a write to bytes outside the range. */
void vd_bitmap_reset(struct vd_bitmap *bm, uint64_t off, uint64_t len);
/* Everything clean. */
void vd_bitmap_clear(struct vd_bitmap *bm);
/* Whether the granule holding byte OFF is dirty (false past SIZE). */
bool vd_bitmap_get(const struct vd_bitmap *bm, uint64_t off);
/* The first dirty run at or after OFF: returns 1 with *START (OFF, or the
 * start of the first dirty granule after it) and *LEN (up to the end of
 * the run of dirty granules, the end of the bitmap, or MAX_LEN when
 * MAX_LEN is not 0), or 0 when nothing at or after OFF is dirty. */
int vd_bitmap_next_dirty(const struct vd_bitmap *bm, uint64_t off,
                         uint64_t max_len, uint64_t *start, uint64_t *len);
/* The same for the first clean run. */
int vd_bitmap_next_clean(const struct vd_bitmap *bm, uint64_t off,
                         uint64_t max_len, uint64_t *start, uint64_t *len);
/* Dirty bytes (dirty granules times the granularity, the last granule
 * clipped to SIZE). */
uint64_t vd_bitmap_count(const struct vd_bitmap *bm);
/* DST |= SRC.  Both must have the same size and granularity (else
 * -EINVAL).  Returns 0. */
int vd_bitmap_merge(struct vd_bitmap *dst, const struct vd_bitmap *src);
/* The bits as bytes, for persistence: bit I (granule I) is bit I % 8 of
 * byte I / 8.  vd_bitmap_serialized_size is the length they take;
 * serialize writes them to BUF (LEN must be at least that), deserialize
 * replaces the bitmap's bits with BUF's (LEN must equal it; bits past the
 * last granule must be 0).  Return 0 or -EINVAL. */
size_t vd_bitmap_serialized_size(const struct vd_bitmap *bm);
int vd_bitmap_serialize(const struct vd_bitmap *bm, void *buf, size_t len);
int vd_bitmap_deserialize(struct vd_bitmap *bm, const void *buf,
                          size_t len);
/* Live external snapshot (QEMU's blockdev-snapshot-sync): put a new, empty
 * differencing image SNAPSHOT_FILE on top of the device NODE points at,
 * and make the node point at it, while frontends keep doing I/O.
 * FORMAT is "vhd" (alias "vpc"; NULL means vhd); other formats fail with
 * -ENOTSUP.  FLAGS must be 0.  SNAPSHOT_FILE must not exist (it is
 * created exclusively: an existing file or symlink fails with -EEXIST);
 * its parent locators name the old top by its absolute (and relative)
 * path, so `vdtool info` and any later open of SNAPSHOT_FILE find the
 * chain.  The old top must be able to become a VHD's parent (a VHD, raw
 * or vdz image) and, if the node is writable, to switch to read-only in
 * place (vd_reopen: not a RAID array; -ENOTSUP).
 *
 * Steps, and the flush order that makes them lose nothing:
 *  1. flush through the node: not needed for correctness, it shortens
 *     step 4's drained window to what is written meanwhile (and again
 *     after step 3, whose fsyncs take a while under load);
 *  2. create SNAPSHOT_FILE (written under a temporary name in the same
 *     folder, fdatasync'ed, then linked to its name, which fails if the
 *     name exists, and the folder fsync'ed: a crash never leaves a
 *     half-made file under that name);
 *  3. open it over the old top device as its parent (the parent is not
 *     opened a second time; the child owns it from then on);
 *  4. vd_node_replace: drain the node (every acknowledged write has
 *     completed on the old top), flush the old top, switch it to
 *     read-only in place (vd_reopen: its image lock becomes shared, any
 *     write to it fails with -EROFS), swap the node onto the child,
 *     resume.  A flush acknowledged after the swap runs on the child; it
 *     covers the writes acknowledged before the swap because the old top
 *     was made durable in step 4 before the first request reached the
 *     child, and the child's own metadata was durable since step 2.
 * Requests arriving during step 4 wait (the drain rule) and then run on
 * the child.  On failure before the swap (any step) the node still points
 * at the old top, which is still writable with its write lock, and
 * SNAPSHOT_FILE is removed (it is never left half-made).  Serialised with
 * other replacements of NODE; if one moved the node between step 1 and
 * step 4 the snapshot fails with -EBUSY.  Returns 0 or -errno with
 * vd_error() set. */
int vd_node_snapshot(struct vd_node *node, const char *snapshot_file,
                     const char *format, unsigned flags);
/* ---- live mirror (drive-mirror) and active commit (vdisk/mirror.c) ----
 *
 * A mirror copies what a node serves onto a target device while the node
 * keeps serving, tracks the guest's writes with a dirty bitmap fed by a
 * node write observer, and can then make the node point at the target
 * (the pivot).  It is driven in steps by its caller (the control socket's
 * job runner): vd_mirror_step until it returns 1 (ready: the first copy
 * is done and nothing is dirty), then vd_mirror_complete (pivot) or
 * vd_mirror_cancel (no pivot), then vd_mirror_free.  QEMU's drive-mirror
 * semantics: cancel before ready leaves the source untouched and the
 * target a partial copy; cancel after ready leaves the target a
 * consistent, flushed copy of the source at the moment of the cancel.
 * Errors writing the target never fail a guest request: the next step
 * returns them.  Copy modes and the stall rule: see vd_mirror_args. */
struct vd_mirror;

enum vd_mirror_sync {
  VD_MIRROR_SYNC_FULL = 0,   /* everything the node reads, except ranges
                                that read as zeros on both sides */
  VD_MIRROR_SYNC_TOP,        /* only what the top image holds itself: the
                                target must have the top's backing file as
                                its own */
  VD_MIRROR_SYNC_NONE,       /* only writes made after the start; such a
                                mirror can be cancelled, not completed */
};

struct vd_mirror_args {
  int sync;                  /* enum vd_mirror_sync */
  /* copy-mode=write-blocking: every guest write is also written to the
   * target before it is acknowledged.  Otherwise (background) writes only
   * mark the bitmap, and the mirror switches to write-blocking by itself
   * when its dirty byte count, taken at the end of each pass over the
   * bitmap, has set no new low for STALL_PASSES passes in a row: the
   * writes dirty as fast as the copy cleans (vd_mirror_status: switched). */
  bool write_blocking;
  uint64_t granularity;      /* bitmap granularity: a power of two in
                                [512, 64 MiB]; 0: 64 KiB */
  uint64_t buf_size;         /* most bytes one step copies (rounded down to
                                the granularity, at least one granule, at
                                most 256 MiB); 0: 1 MiB */
  unsigned stall_passes;     /* 0: 4 */
};

struct vd_mirror_status {
  uint64_t dirty;            /* bytes marked to copy */
  uint64_t copied;           /* bytes copied so far */
  bool ready;                /* ready once: complete is allowed */
  bool write_blocking;       /* the current copy mode */
  bool switched;             /* write-blocking by the stall rule */
  int error;                 /* first target error (negative errno), 0 */
};

/* Open (CREATE false: QEMU's mode=existing) or create then open (CREATE
 * true: mode=absolute-paths; an existing file is refused, O_EXCL) the
 * mirror target PATH in FORMAT (NULL: probe when opening, raw when
 * creating) read-write, for a mirror of NODE with sync mode SYNC (a
 * created target of a sync=top mirror gets the top's backing file as its
 * own).  PATH may be a remote export the operator names (an NBD URI, an
 * rbd: name; FORMAT NULL, raw or its driver's), which is only opened:
 * CREATE is refused for it.  A remote target's requests time out after
 * TIMEOUT_MS (vd_open_args.timeout_ms; 0: VD_MIRROR_REMOTE_TIMEOUT_MS),
 * so a server that stops answering fails the job instead of holding it,
 * its cancel and, in write-blocking mode, the guest's writes; ignored for
 * a file.  The target's size must equal the node's.  Returns 0 and the
 * device in *OUT, or -errno. */
#define VD_MIRROR_REMOTE_TIMEOUT_MS 30000u
int vd_mirror_open_target(struct vd_node *node, const char *path,
                          const char *format, bool create, int sync,
                          unsigned timeout_ms, struct vd_dev **out);

/* Start mirroring NODE onto TARGET (writable, the node's size and logical
 * block, multi-connection safe if the node is).  Attaches the write
 * observer; copies nothing yet.  On success the mirror owns TARGET (it is
 * closed by vd_mirror_free unless a pivot handed it to the node).  ARGS
 * NULL: all defaults.  Returns 0 and the mirror in *OUT, or -errno (TARGET
 * stays the caller's). */
int vd_mirror_start(struct vd_node *node, struct vd_dev *target,
                    const struct vd_mirror_args *args, struct vd_mirror **out);

/* One unit of work: scan part of the source, or copy one dirty run of at
 * most buf_size bytes.  Adds the bytes copied to *DONE and sets *TOTAL to
 * the current estimate (copied + dirty + not yet scanned); either may be
 * NULL.  Returns 0 (call again), 1 (ready: nothing to copy right now; the
 * mirror stays ready for vd_mirror_complete even if writes dirty it
 * again) or -errno (the mirror failed; the source is untouched). */
int vd_mirror_step(struct vd_mirror *m, uint64_t *done, uint64_t *total);

/* Current state, from any thread. */
void vd_mirror_status(struct vd_mirror *m, struct vd_mirror_status *st);

/* The pivot, once ready: drain the node, copy what is still dirty, flush
 * the target, make the node point at it (vd_node_replace), detach,
 * resume.  On success the node owns the target and the former device is
 * stored in *OLDDEV, the caller's (to close).  On failure nothing changed
 * (the mirror goes on, the caller may cancel).  -EAGAIN before ready,
 * -ENOTSUP for sync=none. */
int vd_mirror_complete(struct vd_mirror *m, struct vd_dev **olddev);

/* Stop without a pivot.  Before ready: detach (the target is left a
 * partial copy).  After ready: drain, copy the rest, flush the target,
 * detach, resume (a consistent copy).  Returns 0 or the -errno of that
 * last copy (the target may then be inconsistent).  The source is never
 * changed.  Idempotent. */
int vd_mirror_cancel(struct vd_mirror *m);

/* The target device, borrowed (valid until vd_mirror_free, or after a
 * pivot while the node holds it). */
struct vd_dev *vd_mirror_target(struct vd_mirror *m);

/* Live commit of the active layer (QEMU's block-commit with top = the
 * active layer): a sync=top mirror from NODE into BASE, an image of the
 * node's backing chain (a path naming the same file; NULL or "": the
 * bottom image), of everything the layers above BASE hold, driven like
 * any mirror (ARGS' sync is ignored).  vd_mirror_complete then pivots the
 * node onto BASE, which from then on is opened read-write with its image
 * lock (if another process took the lock meanwhile, it stays open
 * unlocked), closes the layers above (their files are left as they were)
 * and stores NULL in *OLDDEV; cancel leaves the chain as it was (BASE
 * holds data the layers above also hold, which reads the same).  TOP
 * (NULL or "": the active layer) must name the active layer
 * (vd_commit_is_active); a TOP below it fails with -ENOTSUP: that is
 * vd_commit_mid_start's.  BASE must have the node's size.  Returns 0 and
 * the mirror in *OUT, or -errno. */
int vd_commit_start(struct vd_node *node, const char *top, const char *base,
                    const struct vd_mirror_args *args, struct vd_mirror **out);

/* Whether TOP (a path; NULL or "" too) names the active layer of NODE,
 * the device it points at: a commit of TOP is then an active commit
 * (vd_commit_start), otherwise an intermediate one (vd_commit_mid_start).
 * For the thread that controls NODE's replacement. */
bool vd_commit_is_active(struct vd_node *node, const char *top);

/* Intermediate live commit (QEMU's block-commit with TOP below the active
 * layer).  The node's chain is active -> ... -> ABOVE -> TOP -> ... ->
 * BASE, ABOVE being the image whose backing file is TOP (the active layer
 * itself or a read-only intermediate).  The job copies into BASE what the
 * layers TOP .. (just above BASE) hold (block status of TOP), then
 * re-points ABOVE at BASE, on disk and in the live chain; the layers TOP
 * .. (just above BASE) are then closed (their files stay, unchanged).
 * The node serves throughout; the layers copied from are read-only and
 * never change, so nothing tracks the guest's writes.
 *
 * Start: TOP and BASE are paths naming files of the chain (BASE NULL or
 * "": the bottom image).  Errors: TOP not below the active layer in the
 * chain -ENOENT (TOP the active layer: -EINVAL), BASE the same image as
 * TOP -EINVAL, BASE not below TOP -ENOENT, TOP without a backing file
 * -EINVAL, BASE's size not TOP's -EINVAL, ABOVE of a format whose backing
 * pointer cannot be changed on a live chain (a VHD's can) -ENOTSUP, BASE
 * that cannot become writable in place (vd_reopen: another process holds
 * it) -EBUSY or another -errno.  On success BASE has been made writable
 * in place, and the job is returned in *OUT.
 *
 * Steps, driven by one thread (the job runner's): vd_commit_mid_step
 * copies one extent of at most 1 MiB (or skips one extent not to copy)
 * and returns 0, adding the bytes copied to *DONE and setting *TOTAL
 * (copied + not yet looked at; either may be NULL).  Once everything is
 * copied, the step finishes and returns 1 (there is no ready state):
 *  1. BASE becomes read-only again in place, which flushes it: every
 *     byte copied is durable before anything points at BASE;
 *  2. the node is drained (the drain rule above);
 *  3. ABOVE's backing pointer is rewritten to BASE (vd_change_backing
 *     with VD_BACKING_UNSAFE; ABOVE made writable in place for it if it
 *     was read-only, and read-only again after), which flushes it before
 *     it returns;
 *  4. the live chain is re-pointed (the driver's replace_backing);
 *  5. the node resumes and the layers taken out are closed.
 * A crash before 3 leaves ABOVE over TOP, and BASE holds under the
 * layers TOP .. what they show; after 3, ABOVE is over a durable BASE
 * holding those bytes: the chain reads the same at every instant.  A
 * step that fails returns -errno (the chain is left as it was when it
 * fails before 4).  Afterwards only vd_commit_mid_free may be called.
 *
 * vd_commit_mid_cancel (idempotent; not after the last step succeeded:
 * then a no-op) stops the job: BASE becomes read-only again, the chain is
 * unchanged (BASE holds, under the layers above it, what they show).
 * vd_commit_mid_free cancels if needed and frees.  Accepts NULL. */
struct vd_commit;
int vd_commit_mid_start(struct vd_node *node, const char *top,
                        const char *base, struct vd_commit **out);
int vd_commit_mid_step(struct vd_commit *c, uint64_t *done,
                       uint64_t *total);
void vd_commit_mid_cancel(struct vd_commit *c);
void vd_commit_mid_free(struct vd_commit *c);

/* Detach if still attached, close the target unless the node took it,
 * free.  No vd_mirror_step may run.  Accepts NULL. */
void vd_mirror_free(struct vd_mirror *m);

/* ---- named dirty bitmaps on a node (incremental backup) ----
 *
 * QEMU's model (block-dirty-bitmap-add and friends): a node carries named
 * bitmaps that record, through a node write observer, every write,
 * discard and write-zeroes made through vd_node_<op> while they are
 * enabled ("recording").  A persistent bitmap survives a restart: it is
 * kept in a side file beside the top image, IMAGE.bitmaps (QEMU keeps
 * them inside qcow2; our formats have no room), named from the path the
 * operator opened, never from anything read from the disk; the format is
 * docs/bitmap-file.md.  While the image is open read-write its persistent
 * bitmaps are marked in use in that file before any write can be
 * recorded (at attach, or at add), and a clean detach writes the bits
 * and clears the mark; a bitmap found marked in use at attach (the
 * process died) is loaded "inconsistent": listed, never recording, never
 * exported or cleared, only removable, as QEMU does.
 *
 * Names are 1..VD_BITMAP_NAME_MAX bytes without NUL, unique per node.
 * Every function may be called from any thread except from inside a
 * request on the node (the ones that add or remove an observer drain
 * it).  Messages go through vd_error(). */
#define VD_BITMAP_NAME_MAX 1023u
#define VD_BITMAP_GRANULARITY_DEFAULT 65536u   /* QEMU's default */
#define VD_BITMAP_PERSISTENT 0x01u   /* vd_node_bitmap_add flags */
#define VD_BITMAP_DISABLED   0x02u   /* added not recording */

struct vd_bitmap_info {
  char name[VD_BITMAP_NAME_MAX + 1];
  uint32_t granularity;
  uint64_t count;        /* dirty bytes */
  bool persistent;
  bool recording;        /* enabled and consistent */
  bool busy;             /* held (an NBD export): cannot be removed */
  bool inconsistent;     /* found in use at attach: only removable */
};

/* Load the persistent bitmaps of the image at IMAGE_PATH (the path the
 * operator opened NODE's top image with) from IMAGE_PATH.bitmaps, if it
 * exists, and remember that file for later persistent adds.  When NODE
 * is writable, the file is rewritten with every bitmap marked in use
 * before this returns.  A file that is not a valid bitmap file, or whose
 * bitmaps do not cover the node's size, fails with -EINVAL and a message
 * naming it (remove it to start without bitmaps); a symlink or special
 * file is refused.  Returns 0 or -errno; -EEXIST if NODE is attached. */
int vd_node_bitmaps_attach(struct vd_node *node, const char *image_path);
/* Clean close: write the persistent bitmaps' bits with the in-use mark
 * cleared (inconsistent ones stay marked), stop recording, free every
 * bitmap of NODE.  Call before vd_node_free; a node never attached is
 * fine.  Returns 0 or the error of writing the file (the bitmaps are
 * freed anyway; the file then still says in use, so the next attach
 * reports them inconsistent rather than wrong). */
int vd_node_bitmaps_detach(struct vd_node *node);
/* Add bitmap NAME over the whole node: GRANULARITY bytes per bit (0: the
 * default; else a power of two from 512 to 2^31), FLAGS VD_BITMAP_*.
 * A persistent one needs a writable node and an attached file name (or
 * takes IMAGE.bitmaps from the node's current device path); it is in the
 * file, marked in use, when this returns.  -EEXIST if the name is taken,
 * -EINVAL bad name or granularity, -EROFS persistent on a read-only node. */
int vd_node_bitmap_add(struct vd_node *node, const char *name,
                       uint32_t granularity, unsigned flags);
/* Remove NAME (and from the file if persistent).  -ENOENT, -EBUSY when
 * held. */
int vd_node_bitmap_remove(struct vd_node *node, const char *name);
/* Mark everything clean (after a backup).  -ENOENT, -EBUSY (held),
 * -EINVAL (inconsistent). */
int vd_node_bitmap_clear(struct vd_node *node, const char *name);
/* Start (ENABLE) or stop recording.  -ENOENT, -EINVAL (inconsistent). */
int vd_node_bitmap_enable(struct vd_node *node, const char *name,
                          bool enable);
/* TARGET |= SOURCE (same granularity).  -ENOENT, -EINVAL (granularity
 * or an inconsistent one), -EBUSY (target held). */
int vd_node_bitmap_merge(struct vd_node *node, const char *target,
                         const char *source);
/* NODE's bitmaps in name order: a malloc'd array of *N entries in *OUT
 * (NULL when none); free() it.  0 or -ENOMEM. */
int vd_node_bitmap_list(struct vd_node *node, struct vd_bitmap_info **out,
                        size_t *n);
/* Hold NAME for an export: while held it cannot be removed or cleared.
 * -ENOENT, -EINVAL (inconsistent: not usable until removed). */
int vd_node_bitmap_hold(struct vd_node *node, const char *name);
/* Undo one vd_node_bitmap_hold. */
void vd_node_bitmap_release(struct vd_node *node, const char *name);
/* The state of NAME at OFF: *DIRTY, and in *LEN (> 0, at most MAX_LEN)
 * the length of the run with that state from OFF (for NBD block status).
 * -ENOENT, -EINVAL (OFF past the end, MAX_LEN 0, inconsistent). */
int vd_node_bitmap_status(struct vd_node *node, const char *name,
                          uint64_t off, uint64_t max_len, bool *dirty,
                          uint64_t *len);

/* ---- Internal snapshots (qemu-img snapshot): named, read-only states
 * of an image kept inside it (qcow2 and RBD snapshots).  Formats without
 * them fail with -ENOTSUP.  None may run concurrently with vd_close of DEV. ---- */

/* One snapshot, with qemu-img snapshot -l's columns as far as the format
 * has them. */
struct vd_snapshot {
  char id[128];         /* the format's id (RBD: the snapshot id) */
  char name[256];       /* the tag it is opened and deleted by */
  uint64_t size;        /* the image's virtual size when it was taken */
  int64_t date_sec;     /* creation time (seconds since the epoch), 0 if
                           unknown */
  uint32_t date_nsec;
  uint64_t vm_state_size;  /* saved VM state (qcow2), 0 if none */
  uint64_t vm_clock_nsec;  /* guest clock when taken (qcow2), 0 if none */
  uint64_t icount;         /* instruction count; UINT64_MAX: not recorded */
};

/* Take a snapshot NAME of DEV (opened VD_OPEN_RDWR) holding everything
 * written before the call (DEV is flushed first).  -EEXIST if NAME is
 * taken, -EROFS on a read-only device. */
int vd_snapshot_create(struct vd_dev *dev, const char *name);
/* Delete snapshot NAME of DEV (opened VD_OPEN_RDWR); -ENOENT if none. */
int vd_snapshot_delete(struct vd_dev *dev, const char *name);
/* The snapshots of DEV, oldest first, in *LIST (malloc'ed; free() it)
 * and their number in *COUNT (*LIST is not NULL even when it is 0). */
int vd_snapshot_list(struct vd_dev *dev, struct vd_snapshot **list,
                     size_t *count);

/* qemu-img measure: the size of the file an image of FORMAT created
 * with ARGS (options, and a non-zero size; no backing file) needs to hold
 * what SRC holds (NULL: an empty image), in *REQUIRED, and with every
 * block allocated, in *FULLY.  -ENOTSUP for formats that cannot tell
 * (vdz: it depends on how well the data compresses). */
int vd_measure(const char *format, const struct vd_create_args *args,
               struct vd_dev *src, uint64_t *required, uint64_t *fully);

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

/* The registered name of format FORMAT (a name or an alias: "vhd" ->
 * "vpc"), as vd_format reports an open image's; NULL if unknown. */
const char *vd_format_name(const char *format);

/* The -o options vd_create takes for FORMAT, one per line in qemu-img's
 * -o help layout ("" when it takes none); NULL if FORMAT is unknown. */
const char *vd_create_options_help(const char *format);

#ifdef __cplusplus
}
#endif

#endif /* VDISK_VDISK_H */
