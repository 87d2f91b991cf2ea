/* vdisk-fuse — expose virtual disks as plain files through FUSE 3.
 *
 *   vdisk-fuse [options] IMAGE... MOUNTPOINT
 *
 * The mount point is a flat directory (inode 1) holding one regular file
 * per image (inodes 2, 3, ..., never reused), named after the image with
 * its extension replaced by ".raw".  Each FUSE operation on such a file becomes one or
 * a few engine calls on the image's node (vdisk.h, "the device graph"),
 * never on a device; this file knows no image format and no swap.
 *
 * Operation map (low-level libfuse API, multithreaded session loop):
 *   read               vd_node_pread into a per-thread buffer, one reply
 *   write              vd_node_pwrite; past the end: short write, then
 *                      ENOSPC
 *   fsync              vd_node_flush
 *   fallocate          PUNCH_HOLE: vd_node_discard, then
 *                      vd_node_write_zeroes on whatever does not read as
 *                      zeros afterwards; ZERO_RANGE: vd_node_write_zeroes
 *   lseek              SEEK_DATA / SEEK_HOLE from vd_node_block_status
 *   setattr(size)      EPERM (resizing goes through vdtool)
 *   setattr(mode, uid) EPERM (they mirror the image file, see below)
 *
 * Permissions: the mount always has default_permissions, so the kernel
 * checks every access against the attributes we report, and each disk is
 * reported with the owner, group and permission bits of its image file as
 * they were when it was opened (minus the write bits when served
 * read-only).  Under -o allow_other another user can therefore do with a
 * disk exactly what the image file's mode lets them do with the file;
 * without default_permissions FUSE would check nothing and every user
 * could read and write every disk.
 *
 * Start-up: command-line errors are found first; then, without -f, the
 * program forks and the child does the rest (opens the images, creates
 * the FUSE session, mounts), because drivers start threads when they open
 * and a fork keeps only the calling thread.  The parent exits 0 once the
 * child serves, or 1 once it has died with its one-line error (see
 * vf_detach_begin).
 *
 * Concurrency: the set of disks changes while serving (block-export-add
 * and -del over --control, control.c), so disks live in a table
 * (disks.h) looked up under its lock: a request holds a reference to the
 * disk it works on, an open file handle holds one until release (so a
 * deleted disk stays valid under its open handles).  Each request runs
 * on one libfuse worker thread and the engine is thread-safe.  Per-thread
 * bounce buffers hang off a pthread key.
 */
#define FUSE_USE_VERSION 312

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

#include "vdisk/vdisk.h"
#include "vdisk/control/control.h"
#include "vdisk/control/cmd-raid.h"
#include "vdisk/control/unixsock.h"
#include "fuse-frontend/disks.h"
#include "fuse-frontend/control.h"

#define VF_ROOT_INO    1
#define VF_MAX_IO      (1u << 20)   /* max_read / max_write */
#define VF_TIMEOUT     86400.0      /* nothing changes behind the kernel */

const char *progname = "vdisk-fuse";

static pthread_key_t vf_buf_key;

void
vf_log(const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  fprintf(stderr, "%s: ", progname);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* Log a failed engine call (ERR < 0) with the engine's message and return
 * the positive errno for fuse_reply_err.  Errors the caller provoked on
 * purpose (ENOSPC past the end, EROFS, ...) are answered before reaching
 * the engine and never logged. */
static int
vf_engine_error(const struct vf_image *im, const char *op, uint64_t off,
                int err)
{
  vf_log("%s: %s at %llu: %s", im->name, op, (unsigned long long) off,
         vd_error()[0] ? vd_error() : strerror(-err));
  return -err;
}

/* A VF_MAX_IO bounce buffer owned by the calling worker thread. */
static char *
vf_thread_buf(void)
{
  char *b = pthread_getspecific(vf_buf_key);

  if (b == NULL) {
    if (posix_memalign((void **) &b, 4096, VF_MAX_IO) != 0)
      return NULL;
    if (pthread_setspecific(vf_buf_key, b) != 0) {
      free(b);
      return NULL;
    }
  }
  return b;
}

static struct vf_state *
vf_state(fuse_req_t req)
{
  return fuse_req_userdata(req);
}

/* The disk of an open file handle (its reference lives until release),
 * or NULL for the root folder. */
static struct vf_image *
vf_file(struct fuse_file_info *fi)
{
  return (struct vf_image *) (uintptr_t) fi->fh;
}

/* The disk behind inode INO with a reference (vf_disks_put), or NULL:
 * for the root folder (*ERR 0) or a gone disk (*ERR ENOENT).  In single
 * mode the root is the disk. */
static struct vf_image *
vf_get_ino(struct vf_state *s, fuse_ino_t ino, int *err)
{
  struct vf_image *im = NULL;
  *err = 0;
  if (ino == VF_ROOT_INO && s->single)
    im = vf_disks_get_name(&s->disks, s->img[0].name);
  else if (ino != VF_ROOT_INO)
    im = vf_disks_get_ino(&s->disks, ino);
  else
    return NULL;
  if (im == NULL)
    *err = ENOENT;
  return im;
}

/* Attributes of disk IM, or of the root folder if IM is NULL. */
static void
vf_fill_stat(struct vf_state *s, struct vf_image *im, struct stat *st)
{
  memset(st, 0, sizeof *st);
  st->st_ino = im && !s->single ? im->ino : VF_ROOT_INO;
  st->st_uid = s->uid;
  st->st_gid = s->gid;
  st->st_atim = st->st_mtim = st->st_ctim = s->start;
  if (im == NULL) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    st->st_blksize = 4096;
    return;
  }
  st->st_uid = im->uid;
  st->st_gid = im->gid;
  st->st_mode = S_IFREG | im->perm;
  st->st_nlink = 1;
  st->st_size = (off_t) im->size;
  st->st_blksize = im->blksize;
  /* What the image really occupies on the host, as du expects. */
  struct vd_info *info = malloc(sizeof *info);
  uint64_t used = im->size;
  if (info != NULL && vd_node_get_info(im->node, info) == 0 &&
      info->actual_size)
    used = info->actual_size;
  free(info);
  st->st_blocks = (blkcnt_t) ((used + 511) / 512);
}

/* ---- directory ---- */

static void
vf_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  struct vf_state *s = vf_state(req);
  struct fuse_entry_param e;
  struct vf_image *im;

  if (parent != VF_ROOT_INO || s->single) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  im = vf_disks_get_name(&s->disks, name);
  if (im == NULL) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  memset(&e, 0, sizeof e);
  e.ino = im->ino;
  /* Cached for long: a deleted disk's entry is invalidated explicitly
   * (fuse-frontend/control.c). */
  e.attr_timeout = VF_TIMEOUT;
  e.entry_timeout = VF_TIMEOUT;
  vf_fill_stat(s, im, &e.attr);
  vf_disks_put(&s->disks, im);
  fuse_reply_entry(req, &e);
}

static void
vf_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct vf_state *s = vf_state(req);
  struct stat st;
  int err;

  /* A deleted disk still open somewhere keeps answering (fstat). */
  struct vf_image *im = vf_get_ino(s, ino, &err);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  vf_fill_stat(s, im, &st);
  vf_disks_put(&s->disks, im);
  fuse_reply_attr(req, &st, VF_TIMEOUT);
}

static void vf_setattr_im(fuse_req_t req, struct vf_state *s,
                          struct vf_image *im, struct stat *attr, int to_set);

static void
vf_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
           struct fuse_file_info *fi)
{
  struct vf_state *s = vf_state(req);
  int err;
  struct vf_image *im = vf_get_ino(s, ino, &err);

  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  vf_setattr_im(req, s, im, attr, to_set);
  vf_disks_put(&s->disks, im);
}

static void
vf_setattr_im(fuse_req_t req, struct vf_state *s, struct vf_image *im,
              struct stat *attr, int to_set)
{
  struct stat st;

  if (s->read_only || (im != NULL && im->read_only)) {
    fuse_reply_err(req, EROFS);
    return;
  }
  /* The size is the virtual disk's; only a no-op "resize" is accepted.
   * Ownership and mode mirror the image file's (the kernel lets only the
   * owner or root get here); changing them on the disk alone would make
   * the disk more open than its image, so they are refused.  Times are
   * ignored so that touch works. */
  if ((to_set & FUSE_SET_ATTR_SIZE) &&
      (im == NULL || (uint64_t) attr->st_size != im->size)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  vf_fill_stat(s, im, &st);
  fuse_reply_attr(req, &st, VF_TIMEOUT);
}

static void
vf_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
           struct fuse_file_info *fi)
{
  struct vf_state *s = vf_state(req);
  char *buf, *p;
  size_t used = 0;
  struct vf_image **v;
  long nv;
  off_t i;

  if (ino != VF_ROOT_INO || s->single) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  buf = malloc(size);
  if (buf == NULL) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  nv = vf_disks_list(&s->disks, &v);
  if (nv < 0) {
    free(buf);
    fuse_reply_err(req, ENOMEM);
    return;
  }
  p = buf;
  /* "." has offset 1, ".." 2, a disk its inode + 1 (inodes start at 2
   * and grow in the list's order, never reused): a reader that resumes
   * at an offset neither skips nor repeats a disk when the set changes
   * between two calls. */
  for (i = 0; i < 2 + nv; i++) {
    struct stat st;
    const char *name;
    off_t next;
    size_t n;

    memset(&st, 0, sizeof st);
    if (i < 2) {
      name = i == 0 ? "." : "..";
      st.st_ino = VF_ROOT_INO;
      st.st_mode = S_IFDIR;
      next = i + 1;
    } else {
      name = v[i - 2]->name;
      st.st_ino = v[i - 2]->ino;
      st.st_mode = S_IFREG;
      next = (off_t) v[i - 2]->ino + 1;
    }
    if (next <= off)
      continue;
    n = fuse_add_direntry(req, p, size - used, name, &st, next);
    if (n > size - used)
      break;
    p += n;
    used += n;
  }
  vf_disks_put_all(&s->disks, v, (size_t) nv);
  fuse_reply_buf(req, buf, used);
  free(buf);
}

/* Nothing can be created, removed or renamed here. */
static void
vf_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
         dev_t rdev)
{
  fuse_reply_err(req, EPERM);
}

static void
vf_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
  fuse_reply_err(req, EPERM);
}

static void
vf_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  fuse_reply_err(req, EPERM);
}

static void
vf_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
          fuse_ino_t newparent, const char *newname, unsigned int flags)
{
  fuse_reply_err(req, EPERM);
}

static void
vf_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
          struct fuse_file_info *fi)
{
  fuse_reply_err(req, EPERM);
}

static void
vf_statfs(fuse_req_t req, fuse_ino_t ino)
{
  struct vf_state *s = vf_state(req);
  struct statvfs sv;
  uint64_t total = 0;
  struct vf_image **v;
  long nv, i;

  nv = vf_disks_list(&s->disks, &v);
  if (nv < 0) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  /* A full file system: its blocks are the disks, no room for more. */
  for (i = 0; i < nv; i++)
    total += (v[i]->size + 4095) / 4096;
  vf_disks_put_all(&s->disks, v, (size_t) nv);
  memset(&sv, 0, sizeof sv);
  sv.f_bsize = 4096;
  sv.f_frsize = 4096;
  sv.f_blocks = total;
  sv.f_files = (fsfilcnt_t) nv + 1;
  sv.f_namemax = NAME_MAX;
  fuse_reply_statfs(req, &sv);
}

/* ---- files ---- */

static void
vf_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct vf_state *s = vf_state(req);
  struct vf_image *im;
  int err = 0;

  if (ino == VF_ROOT_INO && !s->single) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  im = vf_get_ino(s, ino, &err);
  if (err)
    ;                           /* gone */
  else if (im->read_only && (fi->flags & O_ACCMODE) != O_RDONLY)
    err = EROFS;
  else if ((fi->flags & O_TRUNC) && im->size != 0)
    err = EPERM;
  else if (vf_disks_open(&s->disks, im) < 0)
    err = ENOENT;               /* deleted: no new opens */
  vf_disks_put(&s->disks, im);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  /* The handle's reference keeps the disk (and its node) alive until
   * release, even once deleted. */
  fi->fh = (uint64_t) (uintptr_t) im;
  /* Direct I/O by default: requests reach us at the caller's size (up
   * to 1 MiB) instead of the kernel's 128 KiB readahead, and data is not
   * cached twice (here and with the image).  With --page-cache, every
   * change still goes through this mount, so cached pages stay valid. */
  if (s->page_cache)
    fi->keep_cache = 1;
  else
    fi->direct_io = 1;
  fi->noflush = 1;
  if (fuse_reply_open(req, fi) < 0)
    vf_disks_close(&s->disks, im);   /* interrupted: no release comes */
}

static void
vf_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct vf_state *s = vf_state(req);
  struct vf_image *im = vf_file(fi);

  if (im != NULL)
    vf_disks_close(&s->disks, im);
  fuse_reply_err(req, 0);
}

static void
vf_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
        struct fuse_file_info *fi)
{
  struct vf_state *s = vf_state(req);
  struct vf_image *im = vf_file(fi);
  char *buf;
  int r;

  if (im == NULL) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (vf_disks_dead(&s->disks, im)) {
    fuse_reply_err(req, EIO);
    return;
  }
  if (off < 0 || (uint64_t) off >= im->size || size == 0) {
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  if (size > im->size - (uint64_t) off)
    size = im->size - (uint64_t) off;
  if (size > VF_MAX_IO)
    size = VF_MAX_IO;
  buf = vf_thread_buf();
  if (buf == NULL) {
    fuse_reply_err(req, ENOMEM);
    return;
  }

  r = vd_node_pread(im->node, buf, size, (uint64_t) off);
  if (r < 0) {
    fuse_reply_err(req, vf_engine_error(im, "read", (uint64_t) off, r));
    return;
  }
  fuse_reply_buf(req, buf, size);
}

static void
vf_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size,
         off_t off, struct fuse_file_info *fi)
{
  struct vf_state *s = vf_state(req);
  struct vf_image *im = vf_file(fi);
  int r;

  if (im == NULL) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (vf_disks_dead(&s->disks, im)) {
    fuse_reply_err(req, EIO);
    return;
  }
  if (im->read_only) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (size == 0) {
    fuse_reply_write(req, 0);
    return;
  }
  /* A disk does not grow: the part up to the end is written (a short
   * write), and a write starting at or past the end fails. */
  if (off < 0 || (uint64_t) off >= im->size) {
    fuse_reply_err(req, ENOSPC);
    return;
  }
  if (size > im->size - (uint64_t) off)
    size = im->size - (uint64_t) off;
  r = vd_node_pwrite(im->node, data, size, (uint64_t) off, 0);
  if (r < 0) {
    fuse_reply_err(req, vf_engine_error(im, "write", (uint64_t) off, r));
    return;
  }
  fuse_reply_write(req, size);
}

static void
vf_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
         struct fuse_file_info *fi)
{
  struct vf_state *s = vf_state(req);
  struct vf_image *im = vf_file(fi);
  int r;

  if (im != NULL && vf_disks_dead(&s->disks, im)) {
    fuse_reply_err(req, EIO);
    return;
  }
  if (im == NULL || im->read_only) {
    fuse_reply_err(req, 0);
    return;
  }
  r = vd_node_flush(im->node);
  fuse_reply_err(req, r < 0 ? vf_engine_error(im, "flush", 0, r) : 0);
}

static void
vf_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
            struct fuse_file_info *fi)
{
  fuse_reply_err(req, 0);
}

/* Make [OFF, OFF+LEN) read as zeros after a discard that may have left
 * some of it holding old data. */
static int
vf_zero_leftovers(struct vf_image *im, uint64_t off, uint64_t len)
{
  uint64_t end = off + len;

  while (off < end) {
    struct vd_extent e;
    int r = vd_node_block_status(im->node, off, end - off, &e);

    if (r < 0)
      return r;
    if (e.length == 0)
      return -EIO;
    if (e.length > end - off)
      e.length = end - off;
    if (!(e.flags & VD_EXT_ZERO)) {
      r = vd_node_write_zeroes(im->node, off, e.length, 0);
      if (r < 0)
        return r;
    }
    off += e.length;
  }
  return 0;
}

static void
vf_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
             off_t length, struct fuse_file_info *fi)
{
  struct vf_state *s = vf_state(req);
  struct vf_image *im = vf_file(fi);
  uint64_t uoff, len;
  int r;

  if (im == NULL) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (vf_disks_dead(&s->disks, im)) {
    fuse_reply_err(req, EIO);
    return;
  }
  if (im->read_only) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (off < 0 || length <= 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  uoff = (uint64_t) off;
  len = (uint64_t) length;
  /* Without KEEP_SIZE a range past the end would grow the file. */
  if (!(mode & FALLOC_FL_KEEP_SIZE) && (uoff > im->size ||
                                        len > im->size - uoff)) {
    fuse_reply_err(req, ENOSPC);
    return;
  }
  if (uoff >= im->size) {
    fuse_reply_err(req, 0);
    return;
  }
  if (len > im->size - uoff)
    len = im->size - uoff;

  switch (mode & ~FALLOC_FL_KEEP_SIZE) {
  case FALLOC_FL_PUNCH_HOLE:
    /* Discard frees what the format can free; the caller is promised
     * zeros, which discard alone does not guarantee. */
    r = vd_node_discard(im->node, uoff, len, 0);
    if (r < 0 && r != -ENOTSUP && r != -EOPNOTSUPP) {
      fuse_reply_err(req, vf_engine_error(im, "discard", uoff, r));
      return;
    }
    r = vf_zero_leftovers(im, uoff, len);
    if (r < 0) {
      fuse_reply_err(req, vf_engine_error(im, "discard", uoff, r));
      return;
    }
    break;
  case FALLOC_FL_ZERO_RANGE:
    r = vd_node_write_zeroes(im->node, uoff, len, 0);
    if (r < 0) {
      fuse_reply_err(req, vf_engine_error(im, "write_zeroes", uoff, r));
      return;
    }
    break;
  default:
    /* Preallocation (mode 0) has no meaning for a fixed-size disk. */
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  fuse_reply_err(req, 0);
}

static void
vf_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
         struct fuse_file_info *fi)
{
  struct vf_state *s = vf_state(req);
  struct vf_image *im = vf_file(fi);
  uint64_t pos;

  if (im == NULL) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (vf_disks_dead(&s->disks, im)) {
    fuse_reply_err(req, EIO);
    return;
  }
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if (off < 0 || (uint64_t) off >= im->size) {
    fuse_reply_err(req, ENXIO);
    return;
  }
  /* A hole is a range guaranteed to read as zeros; the end of the disk
   * is an implicit hole. */
  for (pos = (uint64_t) off; pos < im->size; ) {
    struct vd_extent e;
    int r = vd_node_block_status(im->node, pos, im->size - pos, &e);

    if (r < 0) {
      fuse_reply_err(req, vf_engine_error(im, "lseek", pos, r));
      return;
    }
    if (e.length == 0) {
      fuse_reply_err(req, EIO);
      return;
    }
    if (((e.flags & VD_EXT_ZERO) != 0) == (whence == SEEK_HOLE)) {
      fuse_reply_lseek(req, (off_t) pos);
      return;
    }
    pos += e.length;
  }
  if (whence == SEEK_HOLE)
    fuse_reply_lseek(req, (off_t) im->size);
  else
    fuse_reply_err(req, ENXIO);
}

static void
vf_init(void *userdata, struct fuse_conn_info *conn)
{
  conn->max_write = VF_MAX_IO;
  if (conn->max_readahead > VF_MAX_IO)
    conn->max_readahead = VF_MAX_IO;
  if (conn->capable & FUSE_CAP_ASYNC_DIO)
    conn->want |= FUSE_CAP_ASYNC_DIO;
  /* Writes are not cached in the kernel: a write past the end must fail
   * at once, not at writeback. */
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

static const struct fuse_lowlevel_ops vf_ops = {
  .init = vf_init,
  .lookup = vf_lookup,
  .getattr = vf_getattr,
  .setattr = vf_setattr,
  .mknod = vf_mknod,
  .mkdir = vf_mkdir,
  .unlink = vf_unlink,
  .rmdir = vf_unlink,
  .rename = vf_rename,
  .create = vf_create,
  .readdir = vf_readdir,
  .fsyncdir = vf_fsyncdir,
  .statfs = vf_statfs,
  .open = vf_open,
  .release = vf_release,
  .read = vf_read,
  .write = vf_write,
  .fsync = vf_fsync,
  .fallocate = vf_fallocate,
  .lseek = vf_lseek,
};

/* ---- command line ---- */

static void
vf_usage(FILE *f)
{
  fprintf(f,
"Usage: %s [OPTIONS] IMAGE... MOUNTPOINT\n"
"Expose each virtual disk IMAGE (raw, VHD, RAID array, ...) as a regular\n"
"file MOUNTPOINT/NAME.raw holding the disk's bytes.  When MOUNTPOINT is a\n"
"regular file, the one IMAGE given appears at MOUNTPOINT itself (as\n"
"qemu-storage-daemon's FUSE export); exports cannot then be added or\n"
"removed.\n"
"\n"
"  -r, --read-only     open the images read-only and mount read-only\n"
"  -U, --force-share   with -r: take no image lock, so an image in use by\n"
"                      another program can be read (it may change underneath)\n"
"  -f, --foreground    stay in the foreground\n"
"  -P, --pid-file=FILE write the serving process's id to FILE once the\n"
"                      disks are mounted; FILE is removed after they are\n"
"                      flushed and closed at exit, so waiting for that\n"
"                      process after fusermount3 -u waits for the flush\n"
"  -o OPT[,OPT...]     FUSE mount options (allow_other, ...); may repeat;\n"
"                      each disk has its image file's owner and mode, and\n"
"                      the kernel enforces them (default_permissions)\n"
"  -v, --verbose       print what is exposed where\n"
"      --page-cache    let the kernel cache the files' pages (allows mmap;\n"
"                      faster small reads, slower large ones)\n"
"      --format=FMT    image format (default: probe; a probed raw image\n"
"                      cannot be written into another format's header)\n"
"      --backing=FILE  the parent of a differencing IMAGE, when it is\n"
"                      outside IMAGE's folder tree (one IMAGE only)\n"
"      --backing-format=FMT  the parent's format\n"
"      --control=PATH  QMP control socket (mode 0600) for queries and live\n"
"                      operations on the disks, named by their file names\n"
"                      (docs/control.md)\n"
"  -h, --help          print this help\n"
"  -V, --version       print the version\n"
"\n"
"Unmount with: fusermount3 -u MOUNTPOINT (or send SIGTERM); every disk is\n"
"flushed before the program exits.\n",
          progname);
}

/* "dir/disk.vhd" -> "disk.raw"; NULL if PATH has no file name. */
char *
vf_exposed_name(const char *path)
{
  const char *base = strrchr(path, '/');
  const char *dot;
  size_t stem;
  char *name;

  base = base ? base + 1 : path;
  if (*base == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
    return NULL;
  dot = strrchr(base, '.');
  stem = dot != NULL && dot != base ? (size_t) (dot - base) : strlen(base);
  if (asprintf(&name, "%.*s.raw", (int) stem, base) < 0)
    return NULL;
  return name;
}

static bool
vf_has_opt(const char *opts, const char *opt)
{
  size_t n = strlen(opt);
  const char *p = opts;

  while (p != NULL && *p) {
    if (strncmp(p, opt, n) == 0 && (p[n] == ',' || p[n] == '\0'))
      return true;
    p = strchr(p, ',');
    if (p)
      p++;
  }
  return false;
}

static int
vf_append_opt(char **opts, const char *more)
{
  char *n;

  if (*opts == NULL)
    n = strdup(more);
  else if (asprintf(&n, "%s,%s", *opts, more) < 0)
    n = NULL;
  if (n == NULL)
    return -1;
  free(*opts);
  *opts = n;
  return 0;
}

void
vf_image_fill(struct vf_image *im, bool read_only)
{
  uint32_t pio = vd_node_preferred_io(im->node);
  im->size = vd_node_size(im->node);
  im->read_only = read_only || vd_node_is_read_only(im->node);
  im->blksize = pio < 4096 ? 4096 : pio > VF_MAX_IO ? VF_MAX_IO : pio;
}

/* Take IM's owner and permission bits from its image file, whose status
 * BEFORE was taken just before it was opened (NULL if that failed): if
 * the path names another file now, the attributes might not be the
 * opened file's, so refuse rather than guess.  Set-id and sticky bits
 * mean nothing on a disk; the write bits go when it is served read-only. */
int
vf_take_perms(struct vf_image *im, const struct stat *before)
{
  struct stat st;

  if (vd_is_remote_name(im->path)) {
    /* A remote export or RBD image has no file here: the serving
     * user's, 0600. */
    im->uid = getuid();
    im->gid = getgid();
    im->perm = im->read_only ? 0400 : 0600;
    return 0;
  }
  if (stat(im->path, &st) < 0) {
    vf_log("%s: %s", im->path, strerror(errno));
    return -1;
  }
  if (before == NULL || before->st_dev != st.st_dev ||
      before->st_ino != st.st_ino) {
    vf_log("%s: replaced by another file while being opened", im->path);
    return -1;
  }
  im->uid = st.st_uid;
  im->gid = st.st_gid;
  im->perm = st.st_mode & 0777;
  if (im->read_only)
    im->perm &= (mode_t) ~0222;
  return 0;
}

/* Detach before anything is opened: drivers start threads when they open
 * (a RAID array's I/O pool, monitor and rebuild), and a fork keeps only
 * the calling thread.  The parent waits on a pipe and exits 0 once the
 * child says it serves (vf_detach_end), or 1 when the child dies first:
 * the child prints its one-line error on the stderr they share, and the
 * pipe closes only when it has exited (its images closed, their locks
 * released).  As vdisk-nbd --fork.  Returns the child's end of the pipe,
 * or -1 with a message. */
static int
vf_detach_begin(void)
{
  int p[2];
  pid_t pid;
  ssize_t n;
  char b;

  if (pipe2(p, O_CLOEXEC) < 0) {
    vf_log("pipe: %s", strerror(errno));
    return -1;
  }
  fflush(NULL);
  pid = fork();
  if (pid < 0) {
    vf_log("fork: %s", strerror(errno));
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid > 0) {
    close(p[1]);
    do
      n = read(p[0], &b, 1);
    while (n < 0 && errno == EINTR);
    _exit(n == 1 ? 0 : 1);
  }
  close(p[0]);
  return p[1];
}

/* Once mounted: what fuse_daemonize does, after the start-up instead of
 * before it.  Leave the caller's folder (so that it can be unmounted; the
 * images and the mount point were found from it already) and, when
 * detached (READY_FD >= 0), the session and the terminal; then let the
 * waiting parent exit 0. */
static void
vf_detach_end(int ready_fd)
{
  int nfd;

  if (chdir("/") < 0) {
    /* as fuse_daemonize: serve from wherever we are */
  }
  if (ready_fd < 0)
    return;
  setsid();
  nfd = open("/dev/null", O_RDWR);
  if (nfd >= 0) {
    dup2(nfd, 0);
    dup2(nfd, 1);
    dup2(nfd, 2);
    if (nfd > 2)
      close(nfd);
  }
  if (write(ready_fd, "r", 1) < 0) {
    /* the parent is gone (SIGPIPE is ignored): serve anyway */
  }
  close(ready_fd);
}

static void
vf_close_all(struct vf_state *s, int *status)
{
  size_t i;

  for (i = 0; i < s->nimg; i++) {
    if (s->img[i].node && vd_node_bitmaps_detach(s->img[i].node) < 0) {
      vf_log("%s", vd_error());
      *status = 1;
    }
    if (vd_node_free(s->img[i].node) < 0) {
      vf_log("%s", vd_error());
      *status = 1;
    }
    s->img[i].node = NULL;
    free(s->img[i].name);
  }
}

int
main(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "read-only",  no_argument, NULL, 'r' },
    { "foreground", no_argument, NULL, 'f' },
    { "verbose",    no_argument, NULL, 'v' },
    { "help",       no_argument, NULL, 'h' },
    { "version",    no_argument, NULL, 'V' },
    { "page-cache", no_argument, NULL, 'C' },
    { "force-share", no_argument, NULL, 'U' },
    { "format", required_argument, NULL, 'F' },
    { "backing", required_argument, NULL, 'B' },
    { "backing-format", required_argument, NULL, 'b' },
    { "control", required_argument, NULL, 'K' },
    { "pid-file", required_argument, NULL, 'P' },
    { NULL, 0, NULL, 0 },
  };
  struct vf_state s;
  bool foreground = false, force_share = false;
  const char *format = NULL, *backing = NULL, *backing_format = NULL;
  const char *control_path = NULL, *pid_file = NULL;
  struct vc_own_file own_pid_file = { NULL, 0, 0 };
  struct vc_server *control = NULL;
  struct vc_raid *raid = NULL;
  char raid_msg[512];
  char *opts = NULL;
  const char *mountpoint;
  struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
  struct fuse_session *se = NULL;
  struct fuse_loop_config *cfg = NULL;
  int c, status = 1, ready_fd = -1;
  size_t i, j;

  memset(&s, 0, sizeof s);
  opterr = 0;                   /* one-line errors of our own below */
  while ((c = getopt_long(argc, argv, ":rUfo:P:vhV", longopts, NULL)) != -1) {
    switch (c) {
    case 'r': s.read_only = true; break;
    case 'f': foreground = true; break;
    case 'v': s.verbose = true; break;
    case 'C': s.page_cache = true; break;
    case 'U': force_share = true; break;
    case 'F': format = optarg; break;
    case 'B': backing = optarg; break;
    case 'b': backing_format = optarg; break;
    case 'K': control_path = optarg; break;
    case 'P': pid_file = optarg; break;
    case 'o':
      if (vf_append_opt(&opts, optarg) < 0) {
        vf_log("out of memory");
        return 1;
      }
      break;
    case 'h': vf_usage(stdout); return 0;
    case 'V': printf("%s %s\n", progname, PACKAGE_VERSION); return 0;
    case ':':
      vf_log("option '%s' needs an argument (try --help)", argv[optind - 1]);
      free(opts);
      return 1;
    default:
      if (optopt != 0)
        vf_log("unknown option '-%c' (try --help)", optopt);
      else
        vf_log("unknown option '%s' (try --help)", argv[optind - 1]);
      free(opts);
      return 1;
    }
  }
  if (argc - optind < 2) {
    vf_log("expected IMAGE... MOUNTPOINT (try --help)");
    free(opts);
    return 1;
  }
  if (opts != NULL && vf_has_opt(opts, "ro"))
    s.read_only = true;
  if (force_share && !s.read_only) {
    vf_log("-U (--force-share) needs -r: a writer always locks the images");
    free(opts);
    return 1;
  }
  if ((backing || backing_format) && argc - optind > 2) {
    vf_log("--backing and --backing-format name the parent of one image; "
           "%d images given", argc - optind - 1);
    free(opts);
    return 1;
  }
  mountpoint = argv[argc - 1];
  s.nimg = (size_t) (argc - optind - 1);
  struct stat mst;
  if (stat(mountpoint, &mst) == 0 && S_ISREG(mst.st_mode)) {
    if (s.nimg != 1) {
      vf_log("%s is a file: it can show one disk, not %zu", mountpoint,
             s.nimg);
      free(opts);
      return 1;
    }
    s.single = true;
  }
  s.img = calloc(s.nimg, sizeof *s.img);
  if (s.img == NULL) {
    vf_log("out of memory");
    free(opts);
    return 1;
  }
  s.uid = getuid();
  s.gid = getgid();
  vf_disks_init(&s.disks, vf_image_release, &s);
  clock_gettime(CLOCK_REALTIME, &s.start);

  /* Names first: a clash is a usage error, found before any image is
   * opened (and locked). */
  for (i = 0; i < s.nimg; i++) {
    struct vf_image *im = &s.img[i];

    im->path = argv[optind + (int) i];
    im->name = vf_exposed_name(im->path);
    /* Its export id (block-export-del) and device are its file name. */
    im->id = im->node_name = im->name;
    if (im->name == NULL) {
      vf_log("%s: not an image file name", im->path);
      goto out;
    }
    for (j = 0; j < i; j++)
      if (strcmp(s.img[j].name, im->name) == 0) {
        vf_log("%s and %s would both appear as %s", s.img[j].path,
               im->path, im->name);
        goto out;
      }
  }
  /* Everything below runs in the process that serves. */
  if (!foreground && (ready_fd = vf_detach_begin()) < 0)
    goto out;
  for (i = 0; i < s.nimg; i++) {
    struct vf_image *im = &s.img[i];
    struct stat before;
    struct vd_dev *dev;
    bool have_before;
    int r;

    have_before = stat(im->path, &before) == 0;
    struct vd_open_args oa = {
      .format = format, .backing = backing, .backing_format = backing_format,
      .flags = (s.read_only ? 0 : VD_OPEN_RDWR) |
               (force_share ? VD_OPEN_NOLOCK : 0),
    };
    r = vd_open_opts(im->path, &oa, &dev);
    if (r == 0 && (r = vd_node_new(dev, &im->node)) < 0)
      vd_close(dev);            /* out of memory; the message stays */
    if (r < 0) {
      im->node = NULL;
      vf_log("%s", vd_error()[0] ? vd_error() : strerror(-r));
      goto out;
    }
    /* Persistent dirty bitmaps (IMAGE.bitmaps) record writes made here
     * too, or the next backup would trust bits that missed them. */
    if (vd_node_bitmaps_attach(im->node, im->path) < 0) {
      vf_log("%s", vd_error());
      goto out;
    }

    vf_image_fill(im, s.read_only);
    if (vf_take_perms(im, have_before ? &before : NULL) < 0)
      goto out;
    if (s.verbose) {
      char sz[32];
      vf_log("%s (%s, %s) -> %s/%s", im->path, vd_format(dev),
             vd_format_size(im->size, sz, sizeof sz), mountpoint, im->name);
    }
  }

  /* The first files of the mount, inodes 2, 3, ... in this order. */
  for (i = 0; i < s.nimg; i++)
    if (vf_disks_add(&s.disks, &s.img[i]) < 0) {
      vf_log("%s: cannot list disk '%s'", s.img[i].path, s.img[i].name);
      goto out;
    }

  if (pthread_key_create(&vf_buf_key, free) != 0) {
    vf_log("out of memory");
    goto out;
  }

  /* default_permissions: the kernel checks the modes (see the top). */
  if (vf_append_opt(&opts, s.read_only ? "ro" : "rw") < 0 ||
      (!vf_has_opt(opts, "default_permissions") &&
       vf_append_opt(&opts, "default_permissions") < 0) ||
      vf_append_opt(&opts, "fsname=vdisk-fuse,subtype=vdisk") < 0 ||
      fuse_opt_add_arg(&args, progname) < 0 ||
      fuse_opt_add_arg(&args, "-o") < 0 ||
      fuse_opt_add_arg(&args, opts) < 0) {
    vf_log("out of memory");
    goto out;
  }
  se = fuse_session_new(&args, &vf_ops, sizeof vf_ops, &s);
  if (se == NULL)
    goto out;                   /* libfuse said why */
  s.se = se;
  if (fuse_set_signal_handlers(se) < 0)
    goto out;
  if (fuse_session_mount(se, mountpoint) < 0)
    goto out_handlers;
  /* Once mounted (so a failed start still prints one line), before the
   * daemon loses its stderr (and before the parent exits). */
  for (i = 0; i < s.nimg; i++)
    if (vd_probed_raw(vd_node_dev(s.img[i].node)) &&
        !vd_node_is_read_only(s.img[i].node))
      vf_log("warning: %s: image format was not specified; probing guessed "
             "raw, so writes that would change what it probes as (its first "
             "4 KiB and last 512 bytes) are refused. Specify '--format=raw' "
             "to remove the restriction.", s.img[i].path);
  /* Before we leave the caller's folder (a relative PATH) and before
   * the parent returns, so the socket exists once we are "started". */
  if (control_path) {
    if (vc_server_start(control_path, progname, &control) < 0) {
      vf_log("%s", vc_last_error());
      goto out_unmount;
    }
    for (i = 0; i < s.nimg; i++)
      if (vc_device_add(control, s.img[i].name, s.img[i].node) < 0) {
        vf_log("%s: cannot register disk '%s'", control_path, s.img[i].name);
        goto out_unmount;
      }
    if (vf_control_start(control, &s) < 0) {
      vf_log("%s: cannot register the export commands", control_path);
      goto out_unmount;
    }
  }
  /* RAID arrays: their commands, and runtime entries through which
   * 'vdtool raid' finds this process (with a control socket of our own
   * when there is no --control); also before leaving the caller's folder. */
  for (i = 0; i < s.nimg; i++)
    if (vc_raid_add(&raid, s.img[i].name, s.img[i].node) < 0) {
      vf_log("out of memory");
      goto out_unmount;
    }
  if (vc_raid_start(&raid, &control, control_path, progname, raid_msg,
                    sizeof raid_msg) < 0) {
    vf_log("%s", raid_msg);
    goto out_unmount;
  }
  /* Last before "started": whoever reads the pid finds a mounted,
   * serving process (and still in the caller's folder). */
  if (pid_file &&
      vc_pid_file_write(pid_file, &own_pid_file, raid_msg,
                        sizeof raid_msg) < 0) {
    vf_log("%s", raid_msg);
    goto out_unmount;
  }
  vf_detach_end(ready_fd);

  cfg = fuse_loop_cfg_create();
  if (cfg == NULL) {
    vf_log("out of memory");
    goto out_unmount;
  }
  fuse_loop_cfg_set_clone_fd(cfg, 1);
  fuse_loop_cfg_set_max_threads(cfg, 16);
  fuse_loop_cfg_set_idle_threads(cfg, 16);
  /* A signal ends the loop with its (positive) number: a clean exit. */
  status = fuse_session_loop_mt(se, cfg) < 0 ? 1 : 0;
  fuse_loop_cfg_destroy(cfg);

out_unmount:
  /* Before the session goes: a block-export-del tells the kernel through
   * it.  Once vc_server_stop returned no command runs (and its jobs
   * ended, cancelled, before the nodes they work on are freed). */
  vf_control_stop();
  vc_raid_stop(raid);
  vc_server_stop(control);
  control = NULL;
  fuse_session_unmount(se);
out_handlers:
  fuse_remove_signal_handlers(se);
out:
  if (se != NULL)
    fuse_session_destroy(se);
  fuse_opt_free_args(&args);
  vc_raid_stop(raid);
  vc_server_stop(control);     /* NULL unless it started: no-op */
  vc_raid_free(raid);          /* our runtime entries, after the jobs */
  /* The disks added over the control socket close their nodes here. */
  vf_disks_destroy(&s.disks);
  if (vf_release_errors)
    status = 1;
  /* Flushes every disk; a failure turns the exit status into 1. */
  vf_close_all(&s, &status);
  /* Only now: a script waiting for the pid file to go (or the process to
   * end) finds every disk flushed and unlocked. */
  vc_own_file_remove(&own_pid_file);
  free(s.img);
  free(opts);
  return status;
}
