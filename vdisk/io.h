/* libvdisk — the I/O layer (internal): the only code that touches file
 * descriptors of images.  Regular files and block devices.
 *
 * All functions return 0 (or a non-negative value) on success and a
 * negative errno with vd_error() set on failure.  Transfers are always
 * complete: short reads/writes and EINTR are retried.  Reads past the end
 * of a regular file return zeros.
 *
 * Direct mode (VD_FILE_DIRECT): the descriptor has O_DIRECT; requests whose
 * buffer, offset and length are aligned to vd_file_align() go straight to
 * the kernel (large ones split and submitted together through libaio);
 * unaligned ones go through an aligned bounce buffer (read-modify-write for
 * writes, serialised per aligned block).
 *
 * Image locks (qemu's byte-range scheme, so that vdisk and qemu tools
 * refuse each other; details in io.c): every lock taken is a shared open
 * file description lock on one byte, 100+i for "I use permission i" and
 * 200+i for "nobody else may use permission i" (i: read, write,
 * write-unchanged, resize).  A read-only open uses read and forbids write;
 * a writable open uses all four and forbids write and resize.  The open then fails with -EBUSY if another open file holds a
 * byte that conflicts, so two writers, or a writer and a reader, never
 * have the same image open.  VD_FILE_NOLOCK takes and checks nothing.
 *
 * Thread locks: vd_file.rmw[] serialises unaligned direct writes per
 * aligned block, held across the bounce read and write (see driver.h for
 * the engine's lock order).
 */
#ifndef VDISK_IO_H
#define VDISK_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define VD_FILE_RDWR    0x01u
#define VD_FILE_DIRECT  0x02u
#define VD_FILE_NOLOCK  0x04u
#define VD_FILE_CREATE  0x08u  /* create if missing (O_CREAT) */
#define VD_FILE_TRUNC   0x10u  /* truncate to 0 (O_TRUNC) */
#define VD_FILE_EXCL    0x20u  /* fail if it exists (O_EXCL) */
#define VD_FILE_NO_FLUSH 0x40u /* vd_file_flush does nothing (cache=unsafe) */

struct vd_file;

int vd_file_open(const char *path, unsigned flags, struct vd_file **out);
/* Close (no implicit flush).  Accepts NULL. */
void vd_file_close(struct vd_file *f);

int vd_file_pread(struct vd_file *f, void *buf, size_t len, uint64_t off);
int vd_file_pwrite(struct vd_file *f, const void *buf, size_t len,
                   uint64_t off);

/* One request of a batch. */
struct vd_file_req {
  void *buf;
  size_t len;
  uint64_t off;
  bool write;
};
/* Run N requests, concurrently where the file allows (libaio in direct
 * mode); returns 0 when all succeeded, else the first error. */
int vd_file_batch(struct vd_file *f, struct vd_file_req *reqs, int n);

/* Switch F to read-write (WRITE) or read-only in place: the descriptor
 * number stays (reads running on other threads carry on), its access
 * mode and image lock become those of an open in the new mode (a
 * read-only open's shared lock, a writable open's write lock).  Fails
 * with -EBUSY, leaving F as it was, when another process's lock forbids
 * the new mode.  No write may be in flight on F during a switch to
 * read-only; the caller flushes first if it wants the writes durable.
 * The sticky flush error (vd_file_flush) is kept.  0 if already so. */
int vd_file_reopen(struct vd_file *f, bool write);

/* fdatasync: 0 once everything written before the call is on stable
 * storage.  A failure is sticky: after one failed flush every later flush
 * of this vd_file fails with the same errno (the kernel may have dropped
 * the unwritten pages and cleared the error, so a later success would be
 * a lie).  Writes and reads still work; only reopening starts afresh. */
int vd_file_flush(struct vd_file *f);
/* Start writing F's dirty pages back to the disk without waiting for them
 * (sync_file_range SYNC_FILE_RANGE_WRITE), so a later flush has less
 * left to do.  A hint: nothing is durable because of it, it does nothing
 * with VD_FILE_NO_FLUSH, and errors are left to the next flush. */
void vd_file_writeback(struct vd_file *f);
/* fsync the folder holding PATH, so that a file just created there keeps
 * its name after a crash. */
int vd_file_sync_dir(const char *path);
/* Current size in bytes (block devices: their capacity). */
int vd_file_size(struct vd_file *f, uint64_t *size);
/* Set the size of a regular file (-ENOTSUP on block devices). */
int vd_file_truncate(struct vd_file *f, uint64_t size);
/* Deallocate: the range reads as zeros afterwards.  -ENOTSUP if the file
 * system cannot. */
int vd_file_punch(struct vd_file *f, uint64_t off, uint64_t len);
/* Make the range read as zeros.  With KEEP_ALLOCATED the blocks stay
 * allocated.  Tries FALLOC_FL_ZERO_RANGE / BLKZEROOUT; falls back to writing
 * zeros unless NO_FALLBACK, in which case it returns -ENOTSUP. */
int vd_file_zero(struct vd_file *f, uint64_t off, uint64_t len,
                 bool keep_allocated, bool no_fallback);
/* Preallocate (fallocate mode 0). */
int vd_file_allocate(struct vd_file *f, uint64_t off, uint64_t len);

/* Allocation map via SEEK_DATA/SEEK_HOLE: on return *IS_DATA tells whether
 * OFF is in data, and *LEN the length of that run (clipped to MAXLEN).
 * Files without hole support report everything as data. */
int vd_file_extent(struct vd_file *f, uint64_t off, uint64_t maxlen,
                   bool *is_data, uint64_t *len);

/* Bytes allocated on the host (st_blocks * 512). */
int vd_file_allocated(struct vd_file *f, uint64_t *bytes);

const char *vd_file_path(const struct vd_file *f);
bool vd_file_is_blockdev(const struct vd_file *f);
bool vd_file_is_direct(const struct vd_file *f);
bool vd_file_writable(const struct vd_file *f);
/* Alignment needed for direct I/O (1 when not in direct mode). */
uint32_t vd_file_align(const struct vd_file *f);
/* Raw descriptor, for zero-copy frontends (splice/sendfile) only. */
int vd_file_fd(const struct vd_file *f);
/* Move up to LEN bytes at OFF into the pipe PIPE_WR without copying them
 * (the pipe then references the file's cached pages) and return how many:
 * fewer when the pipe fills up (it never waits).  -ENOTSUP for files in
 * direct mode (their page cache is not what was written); after another
 * failure part of the bytes may be in the pipe. */
ssize_t vd_file_splice_read(struct vd_file *f, int pipe_wr, uint64_t off,
                            size_t len);

/* Aligned buffer helpers (4096-aligned, zeroed on alloc). */
void *vd_alloc_aligned(size_t len);
void vd_free_aligned(void *p);

#endif /* VDISK_IO_H */
