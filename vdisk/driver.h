/* libvdisk — the driver interface (internal).
 *
 * A driver is one format (raw, vhd, vdz) or one composition (raid).  It
 * fills a const struct vd_driver with designated initialisers and ends its
 * file with VD_REGISTER_DRIVER(its_struct); nothing else names it (see
 * "Registry" below).  The struct is append-only: new ops go at the end,
 * and NULL means "not supported".
 *
 * What drivers may assume (the dispatcher in vdisk/dev.c checks it):
 *  - every request lies inside [0, dev->size), len > 0, and
 *    off/len are multiples of dev->logical_block for write-type requests
 *    when dev->strict_align is set (reads are always accepted unaligned);
 *  - write-type requests never reach a read-only device;
 *  - flags only hold bits the public API defines.
 * Drivers must be thread-safe for concurrent requests.
 *
 * Locks of the engine (outer first; a device's locks come before those
 * of the devices below it: RAID members, VHD parents, the vd_file):
 *   vd_dev.probe_lock      (dev.c) guarded write-type requests to a probed
 *                          raw image; held from the probe of the bytes as
 *                          they would be through the driver's write, so
 *                          no other such request changes them in between
 *   vd_dev.rmw_lock[16]    (dev.c, blocklock.h) read-modify-write of
 *                          partial logical blocks, by block; held
 *                          across the driver's read and write of those
 *                          blocks (their purpose)
 *   driver locks           vhd_priv (vhd.h): stripe[] -> alloc_lock,
 *                          stripe[] -> bat_lock, flush_lock -> bat_lock;
 *                          vdz_priv (vdz.c): cache_lock, pool_lock,
 *                          never together nor across I/O; vdz_imp.lock
 *                          (import workers' shared state);
 *                          raid_array: raid/raid.h
 *                          qcow2_priv (qcow2.h): rw (writers exclusive,
 *                          readers shared) -> cache_lock
 *   vd_file.rmw[64]        (io.c, blocklock.h) unaligned O_DIRECT
 *                          writes, by aligned block; held across the
 *                          bounce read and write
 * Functions named *_locked expect their lock held, and assert it in debug
 * builds (VD_ASSERT_HELD below).
 */
#ifndef VDISK_DRIVER_H
#define VDISK_DRIVER_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/vdisk.h"
#include "vdisk/io.h"

struct vd_driver;

/* Read-modify-write locks per device (vd_dev.rmw_lock). */
#define VD_DEV_RMW_LOCKS 16

struct vd_dev {
  const struct vd_driver *drv;
  char *path;                 /* as given to vd_open */
  struct vd_file *file;       /* the image file opened by the core, or NULL
                                 if the driver opens its own files; the
                                 core closes it after drv->close */
  unsigned open_flags;        /* VD_OPEN_* */
  /* The options it was opened with (strings owned by the device; format
   * is the one asked for, NULL if probed).  Drivers read backing,
   * backing_format and parent_policy from here. */
  struct vd_open_args opts;
  char *real;                 /* realpath of path (NULL if it failed) */
  /* For a parent: the device that opened it (its child), up to the top
   * image; NULL for an image opened through the public API.  Walking it
   * gives the chain depth and the images a loop would revisit. */
  const struct vd_dev *child;
  /* During open only: an already-open device the driver must take as
   * this image's parent instead of opening one (vd_open_over); NULL
   * otherwise.  A driver that takes it sets it back to NULL (it then owns
   * the parent and closes it with itself); the core refuses an open that
   * left it set. */
  struct vd_dev *adopt_parent;
  /* For a filter's device: the image it passes requests to (opened and
   * closed by the core, see vd_driver.filter); NULL for everything else. */
  struct vd_dev *below;
  /* Opened without a format and probed as raw: write-type requests that
   * would change the probe result are refused (dev.c).  probe_lock
   * serialises those requests so two of them cannot together build a
   * header that neither would alone. */
  bool probe_guard;
  pthread_mutex_t probe_lock;
  /* PATH is an NBD URI or an rbd: name the operator named (vd_open and
   * the top image's --backing), never one read out of an image: only
   * then does the nbd or rbd driver connect (docs/SECURITY.md). */
  bool uri_ok;
  /* PATH was named by the operator (vd_open and friends, --backing), not
   * read out of an image: a composition may then follow the NBD URIs its
   * own operator-written file names (a RAID descriptor's members). */
  bool operator_named;
  bool read_only;
  bool strict_align;          /* writes must be logical_block aligned */
  uint64_t size;              /* virtual size in bytes; set by open */
  uint32_t logical_block;     /* default 512 */
  uint32_t preferred_io;      /* default 4096 */
  void *priv;                 /* drv->priv_size bytes, zeroed, owned by core */
  /* Core only: serialises read-modify-write of partial logical blocks
   * (block number modulo VD_DEV_RMW_LOCKS). */
  pthread_mutex_t rmw_lock[VD_DEV_RMW_LOCKS];
  /* Core only: flushes coalesce (qemu's write_gen / flushed_gen).  wgen
   * counts completed write-type requests and other changes
   * (vd_dev_changed); a flush returns at once when a driver flush that
   * began after all of them has succeeded, and flushes that arrive while
   * one runs share the next one. */
  uint64_t wgen;              /* __atomic */
  pthread_mutex_t flush_lock;
  pthread_cond_t flush_done;
  bool flushing;              /* a driver flush runs; flush_lock */
  uint64_t flushed_gen;       /* wgen the last successful driver flush
                                 covers; flush_lock */
};

/* DEV's contents or metadata changed outside vd_pwrite, vd_discard and
 * vd_write_zeroes (which count themselves): the next vd_flush must reach
 * the driver. */
void vd_dev_changed(struct vd_dev *dev);

/* Bytes available to probe: the first VD_PROBE_HEAD bytes of the file (or
 * fewer if the file is shorter) and its last 512 bytes. */
#define VD_PROBE_HEAD 4096

struct vd_probe_data {
  const uint8_t *head;
  size_t head_len;
  const uint8_t *tail;        /* last 512 bytes, or NULL if shorter */
  uint64_t file_size;
  const char *path;
};

struct vd_driver {
  const char *name;           /* canonical name, as qemu-img calls it */
  const char *const *aliases; /* NULL-terminated, or NULL */
  size_t priv_size;

  /* Score 0..100 for how sure the driver is that these bytes are its
   * format (raw answers 1). */
  int (*probe)(const struct vd_probe_data *pd);

  /* dev->file is open (read-only unless VD_OPEN_RDWR).  Set dev->size and
   * optionally logical_block / preferred_io / strict_align. */
  int (*open)(struct vd_dev *dev);
  void (*close)(struct vd_dev *dev);
  int (*create)(const char *path, const struct vd_create_args *args);
  /* The -o options create (and import) take, one per line as qemu-img
   * -o help prints them: "  name=<type> - what it does" (NULL: none). */
  const char *create_help;

  int (*pread)(struct vd_dev *dev, void *buf, size_t len, uint64_t off);
  int (*pwrite)(struct vd_dev *dev, const void *buf, size_t len,
                uint64_t off, unsigned flags);
  int (*flush)(struct vd_dev *dev);
  int (*discard)(struct vd_dev *dev, uint64_t off, uint64_t len,
                 unsigned flags);
  int (*write_zeroes)(struct vd_dev *dev, uint64_t off, uint64_t len,
                      unsigned flags);
  int (*block_status)(struct vd_dev *dev, uint64_t off, uint64_t len,
                      struct vd_extent *ext);
  /* Fill format-specific parts; the core fills format, size, blocks,
   * read_only and actual_size (from dev->file) first. */
  void (*info)(struct vd_dev *dev, struct vd_info *info);

  /* The driver opens its own files (RAID descriptor, ...): the core does
   * not open dev->file.  Probing still reads the file at the path. */
  bool opens_own_files;
  /* Writes from several connections are coherent (see vd_can_multi_conn). */
  bool multi_conn;

  /* See vd_import / vd_check in vdisk.h (NULL: unsupported). */
  int (*import)(const char *path, struct vd_dev *src,
                const struct vd_create_args *args, vd_progress_fn progress,
                void *opaque);
  int (*check)(const char *path, unsigned flags,
               struct vd_check_report *r);

  /* WRITE: vd_reopen has switched DEV's image file to read-write: set
   * up, once, what writes need that an open read-only skipped, or refuse
   * with -EROFS what a writable open would have kept read-only (then the
   * core switches the file back).  !WRITE: DEV is about to become
   * read-only (its file still writable, the flush that makes everything
   * durable still to come): give back what only writes use (qcow2's
   * reserved clusters).  NULL: nothing to do. */
  int (*reopen)(struct vd_dev *dev, bool write);

  /* Read-only formats set this to what to do instead.  The core then
   * opens their files read-only (shared lock) and makes the device
   * read-only whatever the open flags, and appends the hint to the EROFS
   * error of write-type requests.  NULL: a writable format. */
  const char *read_only_hint;

  /* Images of this format reference no other file (raw, vdz): the only
   * formats a parent lookup may probe (VD_OPEN_PROBE_LEAF). */
  bool leaf;

  /* ---- Management ops (vd_truncate, vd_compact, vd_make_empty,
   * vd_change_backing, vd_commit in vdisk.h).  The engine (vdisk/manage.c)
   * has checked the arguments and that DEV is writable; NULL: the engine's
   * generic fallback where it has one, else -ENOTSUP. ---- */
  /* Set the virtual size to SIZE and update dev->size.  A smaller SIZE
   * only arrives with VD_TRUNCATE_SHRINK. */
  int (*truncate)(struct vd_dev *dev, uint64_t size, unsigned flags);
  /* Give back the host space of allocation units that hold nothing; *FREED
   * gets the bytes the file shrank by. */
  int (*compact)(struct vd_dev *dev, uint64_t *freed,
                 vd_progress_fn progress, void *opaque);
  /* Drop every allocation unit of DEV, so it reads as its backing file
   * (zeros without one). */
  int (*make_empty)(struct vd_dev *dev);
  /* Record BACKING (opened as BDEV, for what the format stores about it)
   * as DEV's backing file, or none when BACKING is NULL.  Only the
   * pointer: in safe mode the engine has already copied the data. */
  int (*change_backing)(struct vd_dev *dev, const char *backing,
                        struct vd_dev *bdev);
  /* Copy what TOP (opened without its parent) holds into BASE (writable).
   * NULL: the engine copies TOP's allocated extents (block status). */
  int (*commit)(struct vd_dev *top, struct vd_dev *base,
                vd_progress_fn progress, void *opaque);

  /* A filter, not a format: stacked over an image by the open option
   * `filter` (vd_open_args), never opened by format name nor probed.  The
   * core opens the image first and hands it over as dev->below, with
   * dev->size, logical_block, preferred_io and read_only copied from it
   * (strict_align stays off: requests reach the filter as the caller
   * made them); open then only sets up the filter's own state.  The
   * filter's ops pass requests on with vd_pread(dev->below, ...) etc.; a
   * missing discard drops discards (they are advisory), a missing
   * write_zeroes writes zeros through pwrite.  The core closes dev->below
   * after close. */
  bool filter;
  /* block_status's host_offset at depth 0 is an offset in dev->file, and
   * the bytes there are what pread returns (no transformation, no cache
   * of newer data): vd_splice_read may then hand out the file's pages. */
  bool host_mapped;

  /* The device DEV reads through below itself (a differencing image's
   * parent, opened and owned by the driver), or NULL; it changes only
   * through replace_backing, with the node drained.  NULL op: none.  For
   * vd_backing_dev (query-block's chain). */
  struct vd_dev *(*backing_dev)(struct vd_dev *dev);

  /* Internal snapshots (vd_snapshot_* in vdisk.h, qemu-img snapshot).
   * The engine (vdisk/isnap.c) has checked that NAME is not NULL and, for
   * create and delete, that DEV is writable.  list fills a malloc'ed
   * array the caller frees.  NULL: the format has none (-ENOTSUP). */
  int (*snapshot_create)(struct vd_dev *dev, const char *name);
  int (*snapshot_delete)(struct vd_dev *dev, const char *name);
  int (*snapshot_list)(struct vd_dev *dev, struct vd_snapshot **list,
                       size_t *count);

  /* qemu-img measure (vd_measure): the file size a new image with ARGS
   * (options and a non-zero size; no backing) needs to hold the data of
   * SRC (NULL: an empty image) in *REQUIRED, and with every block
   * allocated in *FULLY.  NULL: the format cannot tell (-ENOTSUP). */
  int (*measure)(const struct vd_create_args *args, struct vd_dev *src,
                 uint64_t *required, uint64_t *fully);

  /* Why DEV, asked writable, opened read-only (the format holds what the
   * driver does not write), for the EROFS message of write-type
   * requests; NULL: no reason (or the device was asked read-only). */
  const char *(*read_only_reason)(struct vd_dev *dev);

  /* The chain-swap primitive of an intermediate live commit
   * (vd_commit_mid_start): make NEWPARENT (NULL: none) the device DEV
   * reads through below itself, setting its child link to DEV, and
   * return the former one (NULL if none) with its child link cleared,
   * now the caller's.  DEV owns NEWPARENT from then on.  Only the live
   * chain: the pointer on disk is change_backing's.  No request may be
   * in flight on DEV or the devices above it (the node is drained), and
   * NEWPARENT must not be another device's parent.  NULL op: the
   * format's chain cannot be re-pointed live. */
  struct vd_dev *(*replace_backing)(struct vd_dev *dev,
                                    struct vd_dev *newparent);

  /* qemu-img amend (vd_amend): change the format options OPTIONS
   * ("k=v,...") of the image at PATH, which no one else has open (the
   * driver takes the image's locks).  amend_help lists them as
   * create_help does.  NULL: the format amends nothing (-ENOTSUP). */
  int (*amend)(const char *path, const char *options);
  const char *amend_help;

  /* New ops go here, at the end. */
};

/* ---- helpers for drivers (vdisk/error.c, vdisk/options.c) ---- */

/* Set the thread's error message and return -ERRNUM (ERRNUM > 0). */
int vd_set_error(int errnum, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));
/* Same with a va_list. */
int vd_set_verror(int errnum, const char *fmt, va_list ap);
/* Prefix the current message: "PREFIX: old message".  Returns -ERRNUM. */
int vd_prefix_error(int errnum, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));
void vd_clear_error(void);

/* Look up KEY in a "k=v,k2=v2" option string.  Returns 1 and copies the
 * value into VAL if found, 0 if absent, -EINVAL if the value is too long. */
int vd_opt_get(const char *options, const char *key, char *val, size_t vallen);
/* Fail with a message if OPTIONS holds a key not in KNOWN (NULL-ended). */
int vd_opt_check(const char *options, const char *const *known,
                 const char *what);

/* Append a format-specific property to INFO (dropped when full). */
void vd_info_add_str(struct vd_info *info, const char *key, const char *val);
void vd_info_add_u64(struct vd_info *info, const char *key, uint64_t val);
void vd_info_add_bool(struct vd_info *info, const char *key, bool val);

/* ---- registry (vdisk/registry.c) ---- */

/* Add DRV to the registry: vd_open finds it by its name and aliases (any
 * case), probing asks it, vd_format_names lists it.  The library's own
 * drivers come first, in the order of its source list; others follow in
 * the order they register.  Registering the same DRV again is a no-op.
 * Returns 0, or -EEXIST when its name or an alias is another driver's,
 * -EINVAL without a name, -ENOSPC when the registry is full.  Call it
 * before other threads use the library (VD_REGISTER_DRIVER does). */
int vd_register_driver(const struct vd_driver *drv);
/* vd_register_driver for a constructor, which has nobody to return an
 * error to: prints the message and aborts. */
void vd_register_driver_at_load(const struct vd_driver *drv);

/* The one line that makes SYM (a const struct vd_driver) a format, placed
 * at the end of the driver's file, alone on its line.  It registers SYM
 * from a constructor when the program or library is loaded.  For files of
 * libvdisk (vdisk/Makefile.inc) make also collects the line into the
 * generated table vdisk/drivers.c: there SYM must be extern, and the
 * table fixes the order and keeps the driver linked into programs that
 * use the internal static library.  A driver elsewhere (a test's) may be
 * static. */
#define VD_REGISTER_DRIVER(sym)                                          \
  __attribute__((constructor)) static void vd_register_##sym(void)       \
  {                                                                      \
    vd_register_driver_at_load(&(sym));                                  \
  }                                                                      \
  extern int vd_register_driver(const struct vd_driver *)

/* Lookups. */
const struct vd_driver *vd_find_driver(const char *name);
/* Probe PATH; returns the best driver or NULL with an error set.  The
 * file is opened with O_NONBLOCK and must be a regular file or a block
 * device, so a FIFO never blocks the prober.  LEAF_ONLY: consider only
 * drivers with .leaf set. */
const struct vd_driver *vd_probe_path(const char *path, int *err);
const struct vd_driver *vd_probe_path_leaf(const char *path, bool leaf_only,
                                           int *err);
/* The best driver for the bytes in PD (any driver; never NULL while the
 * raw driver is registered). */
const struct vd_driver *vd_probe_data(const struct vd_probe_data *pd,
                                      bool leaf_only);

/* Whether DEV reads [OFF, OFF+LEN) as zeros by block status (vdisk/
 * manage.c).  A NULL DEV, and bytes past its end, read as zeros. */
int vd_reads_zero(struct vd_dev *dev, uint64_t off, uint64_t len, bool *zero);

/* Whether the calling thread holds mutex M, for VD_ASSERT_HELD in
 * functions that expect a lock held (SQLite's assert(mutexHeld())).
 * glibc records the owner's thread id in every mutex (a field of its
 * public pthread_mutex_t); elsewhere only "some thread holds it" is
 * checked.  Debug builds only: compiled out with NDEBUG. */
#ifdef NDEBUG
#define VD_ASSERT_HELD(m) ((void)0)
#else
#include <assert.h>
#include <unistd.h>
static inline bool
vd_mutex_held(pthread_mutex_t *m)
{
#ifdef __GLIBC__
  static __thread pid_t tid;
  if (tid == 0)
    tid = gettid();
  return __atomic_load_n(&m->__data.__owner, __ATOMIC_RELAXED) == tid;
#else
  if (pthread_mutex_trylock(m) != 0)
    return true;
  pthread_mutex_unlock(m);
  return false;
#endif
}
#define VD_ASSERT_HELD(m) assert(vd_mutex_held(m))
#endif

/* vd_node_replace with two additions for engine operations built on it
 * (vdisk/snapshot.c): when EXPECT is not NULL the swap is refused with
 * -EBUSY unless the node still points at EXPECT (another control
 * operation moved it since the caller looked); and DRAINED, when not
 * NULL, is called with the old device once the node is drained and the
 * old device flushed, just before the swap: a negative return cancels the
 * swap (the node keeps the old device, NEWDEV stays the caller's) and is
 * returned.  DRAINED runs with the node's ctl_mu held and no request in
 * flight; it must not enter the node. */
struct vd_node;
int vd_node_swap(struct vd_node *node, struct vd_dev *expect,
                 struct vd_dev *newdev, struct vd_dev **olddev,
                 int (*drained)(void *opaque, struct vd_dev *old),
                 void *opaque);

/* For measure ops: the number of BLOCK-sized blocks of [0, SIZE) in
 * which SRC (NULL: none) has anything but zeros, by block status. */
int vd_measure_data_blocks(struct vd_dev *src, uint64_t size, uint64_t block,
                           uint64_t *count);

/* Open PATH with ARGS (NULL: defaults) as a differencing image whose
 * parent is the already-open PARENT, which is not opened again: the new
 * device owns PARENT from then on (closes it when it closes) and sets
 * PARENT's child link.  The format must be one that adopts a parent (vpc:
 * the parent must be the one the image records, by UUID for a VHD
 * parent); others fail with -ENOTSUP.  On failure PARENT is untouched and
 * still the caller's.  Internal: vd_node_snapshot uses it. */
int vd_open_over(const char *path, const struct vd_open_args *args,
                 struct vd_dev *parent, struct vd_dev **out);

/* Open PATH with ARGS as the parent of CHILD (sets the new device's
 * child link, so depth and loops can be checked up the chain). */
int vd_open_parent(const struct vd_dev *child, const char *path,
                   const struct vd_open_args *args, struct vd_dev **out);
/* vd_open_parent for a parent the operator named (the top image's
 * --backing): PATH may be an NBD URI.  Never for a path read out of an
 * image. */
int vd_open_parent_operator(const struct vd_dev *child, const char *path,
                            const struct vd_open_args *args,
                            struct vd_dev **out);

/* Why DEV is read-only when the format says (read_only_hint, else
 * read_only_reason), or NULL. */
const char *vd_read_only_why(struct vd_dev *dev);

/* Whether paths A and B name the same file (both exist). */
bool vd_same_file(const char *a, const char *b);
/* The image of the chain below FROM (FROM excluded) that is the file
 * PATH (NULL or "": the bottom one), its depth below FROM in *DEPTH (1:
 * FROM's parent); NULL if there is none.  A relative PATH names a layer
 * as given (from the working folder) or, as QEMU's
 * bdrv_find_backing_image has it, relative to the folder of the image
 * whose backing file that layer is. */
struct vd_dev *vd_chain_below(struct vd_dev *from, const char *path,
                              int *depth);
/* One piece of a commit (vdtool commit, the live intermediate commit):
 * if the extent of TOP's chain at OFF is held by a layer above DEPTH (1:
 * TOP alone), copy at most LEN bytes of it into BASE as TOP reads it
 * (BUF has room for LEN), zeros as write_zeroes so BASE need not
 * allocate.  *ADVANCED: the bytes of TOP passed (the piece, or a whole
 * extent that needs nothing); *COPIED: the bytes written into BASE.
 * Returns 0 or a negative errno. */
int vd_commit_piece(struct vd_dev *top, struct vd_dev *base, int depth,
                    uint64_t off, uint8_t *buf, size_t len,
                    uint64_t *advanced, uint64_t *copied);


#endif /* VDISK_DRIVER_H */
