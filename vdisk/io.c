/* libvdisk — the I/O layer: regular files and block devices.
 * See io.h for the contract.
 *
 * Image locking follows qemu's byte-range scheme (block/file-posix.c), so
 * that vdisk and qemu tools also refuse each other:
 *   byte 100+i  shared lock held = "I use permission i"
 *   byte 200+i  shared lock held = "I do not let others use permission i"
 * with i = 0 consistent read, 1 write, 2 write-unchanged, 3 resize.
 * Open file description locks (F_OFD_*), so locks belong to the vd_file,
 * not to the process.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libaio.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vdisk/blocklock.h"
#include "vdisk/driver.h"
#include "vdisk/endian.h"
#include "vdisk/io.h"

#define VD_RMW_LOCKS 64
#define VD_AIO_CHUNK (1u << 20)      /* split large direct I/O into 1 MiB */
#define VD_AIO_MIN (256u << 10)      /* below this, a plain syscall */
#define VD_AIO_DEPTH 64

struct vd_file {
  int fd;
  char *path;
  unsigned flags;
  bool blk;
  bool direct;
  uint32_t align;                 /* direct I/O alignment, 1 if buffered */
  bool no_punch, no_zero_range;   /* cached "not supported" answers */
  int flush_err;                  /* errno of the first failed flush, 0
                                     if none (atomic); never cleared */
  pthread_mutex_t rmw[VD_RMW_LOCKS]; /* unaligned direct writes, by block */
};

/* ---- locking ---- */

enum { VD_PERM_READ = 0, VD_PERM_WRITE = 1, VD_PERM_WRITE_UNCHANGED = 2,
       VD_PERM_RESIZE = 3, VD_PERM_COUNT = 4 };
#define VD_LOCK_PERM_BASE 100
#define VD_LOCK_SHARED_BASE 200

static int
io_ofd_lock(int fd, int cmd, short type, off_t byte, pid_t *holder)
{
  struct flock fl = { .l_type = type, .l_whence = SEEK_SET,
                      .l_start = byte, .l_len = 1 };
  if (fcntl(fd, cmd, &fl) == -1)
    return -errno;
  if (holder)
    *holder = fl.l_type == F_UNLCK ? 0 : 1;
  return 0;
}

/* Find a process (other than us) holding a lock on the file: OFD locks
 * do not report their owner, so look for descriptors of the same inode
 * whose fdinfo lists a lock.  Best effort; 0 if not found. */
static pid_t
io_find_lock_holder(const struct stat *st, char *comm, size_t commlen)
{
  DIR *proc = opendir("/proc");
  pid_t found = 0;
  struct dirent *de;

  if (!proc)
    return 0;
  while (!found && (de = readdir(proc))) {
    char *end;
    long pid = strtol(de->d_name, &end, 10);
    if (*end || pid <= 0 || pid == getpid())
      continue;
    char dpath[64];
    snprintf(dpath, sizeof dpath, "/proc/%ld/fd", pid);
    DIR *fds = opendir(dpath);
    if (!fds)
      continue;
    struct dirent *fe;
    while (!found && (fe = readdir(fds))) {
      char fpath[320];
      struct stat fst;
      if (fe->d_name[0] == '.')
        continue;
      snprintf(fpath, sizeof fpath, "%s/%s", dpath, fe->d_name);
      if (stat(fpath, &fst) || fst.st_dev != st->st_dev ||
          fst.st_ino != st->st_ino)
        continue;
      snprintf(fpath, sizeof fpath, "/proc/%ld/fdinfo/%s", pid, fe->d_name);
      FILE *fi = fopen(fpath, "r");
      if (!fi)
        continue;
      char line[256];
      while (fgets(line, sizeof line, fi))
        if (strncmp(line, "lock:", 5) == 0) {
          found = (pid_t)pid;
          break;
        }
      fclose(fi);
    }
    closedir(fds);
  }
  closedir(proc);
  if (found) {
    char cpath[64];
    snprintf(cpath, sizeof cpath, "/proc/%ld/comm", (long)found);
    FILE *c = fopen(cpath, "r");
    comm[0] = '\0';
    if (c) {
      if (fgets(comm, (int)commlen, c))
        comm[strcspn(comm, "\n")] = '\0';
      fclose(c);
    }
  }
  return found;
}

static int
io_lock(struct vd_file *f, bool write)
{
  unsigned perm = 1u << VD_PERM_READ, unshared = 1u << VD_PERM_WRITE;
  int r;

  if (write) {
    perm |= 1u << VD_PERM_WRITE | 1u << VD_PERM_WRITE_UNCHANGED |
            1u << VD_PERM_RESIZE;
    unshared |= 1u << VD_PERM_RESIZE;
  }
  for (int i = 0; i < VD_PERM_COUNT; i++) {
    if (perm & (1u << i)) {
      r = io_ofd_lock(f->fd, F_OFD_SETLK, F_RDLCK, VD_LOCK_PERM_BASE + i, NULL);
      if (r < 0)
        goto conflict;
    }
    if (unshared & (1u << i)) {
      r = io_ofd_lock(f->fd, F_OFD_SETLK, F_RDLCK, VD_LOCK_SHARED_BASE + i,
                      NULL);
      if (r < 0)
        goto conflict;
    }
  }
  /* Now test what others hold against us. */
  for (int i = 0; i < VD_PERM_COUNT; i++) {
    pid_t held = 0;
    if (perm & (1u << i)) {
      r = io_ofd_lock(f->fd, F_OFD_GETLK, F_WRLCK, VD_LOCK_SHARED_BASE + i,
                      &held);
      if (r < 0 || held)
        goto conflict;
    }
    if (unshared & (1u << i)) {
      r = io_ofd_lock(f->fd, F_OFD_GETLK, F_WRLCK, VD_LOCK_PERM_BASE + i,
                      &held);
      if (r < 0 || held)
        goto conflict;
    }
  }
  return 0;

conflict:;
  struct stat st;
  char comm[64] = "";
  pid_t pid = 0;
  if (fstat(f->fd, &st) == 0)
    pid = io_find_lock_holder(&st, comm, sizeof comm);
  /* -U (force share) exists only for commands that read: no hint for a
   * write, where it would send the user to an option they cannot use. */
  const char *hint = write ? "" : " (use -U to read it without locking)";
  if (pid)
    return vd_set_error(EBUSY,
                        "%s: image is in use by process %ld (%s); cannot get "
                        "%s lock%s", f->path, (long)pid, comm[0] ? comm : "?",
                        write ? "a write" : "a shared read", hint);
  return vd_set_error(EBUSY,
                      "%s: image is in use by another process; cannot get %s "
                      "lock%s", f->path, write ? "a write" : "a shared read",
                      hint);
}

/* ---- open / close ---- */

static uint32_t
io_direct_align(struct vd_file *f)
{
  uint32_t a = 0;
  if (f->blk) {
    int ss = 0;
    if (ioctl(f->fd, BLKSSZGET, &ss) == 0 && ss > 0)
      a = (uint32_t)ss;
  } else {
#ifdef STATX_DIOALIGN
    struct statx stx;
    if (statx(f->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align)
      a = stx.stx_dio_offset_align;
    if (stx.stx_dio_mem_align > a)
      a = stx.stx_dio_mem_align;
#endif
  }
  if (a < 512 || !vd_is_pow2(a))
    a = 4096;
  return a;
}

int
vd_file_open(const char *path, unsigned flags, struct vd_file **out)
{
  int oflags = O_CLOEXEC | ((flags & VD_FILE_RDWR) ? O_RDWR : O_RDONLY);
  struct stat st;
  struct vd_file *f;
  int r;

  if (flags & VD_FILE_CREATE)
    oflags |= O_CREAT;
  if (flags & VD_FILE_TRUNC)
    oflags |= O_TRUNC;
  if (flags & VD_FILE_EXCL)
    oflags |= O_EXCL;

  f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path))) {
    free(f);
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  }
  f->flags = flags;
  f->align = 1;
  vd_blocklock_init(f->rmw, VD_RMW_LOCKS);

  /* Open without O_TRUNC first when locking, so a locked image is never
   * truncated by a refused open. */
  int first = oflags & ~O_TRUNC;
  /* O_NONBLOCK: a FIFO swapped in after a caller's stat must not block
   * the open; the type is checked below and the flag dropped again. */
  f->fd = open(path, first | O_NONBLOCK, 0644);
  if (f->fd == -1) {
    r = -errno;
    if (r == -EISDIR || r == -ENOENT || r == -EACCES || r == -EROFS ||
        r == -ENOTDIR)
      vd_set_error(-r, "%s: cannot open %s: %s", path,
                   (flags & VD_FILE_RDWR) ? "for writing" : "for reading",
                   strerror(-r));
    else
      vd_set_error(-r, "%s: open: %s", path, strerror(-r));
    goto fail;
  }
  if (fstat(f->fd, &st) == -1) {
    r = vd_set_error(errno, "%s: stat: %s", path, strerror(errno));
    goto fail;
  }
  if (S_ISDIR(st.st_mode)) {
    r = vd_set_error(EISDIR, "%s: is a directory, not an image", path);
    goto fail;
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    r = vd_set_error(EINVAL, "%s: not a regular file or block device", path);
    goto fail;
  }
  f->blk = S_ISBLK(st.st_mode);
  if (fcntl(f->fd, F_SETFL, fcntl(f->fd, F_GETFL) & ~O_NONBLOCK) == -1) {
    r = vd_set_error(errno, "%s: fcntl: %s", path, strerror(errno));
    goto fail;
  }

  if (!(flags & VD_FILE_NOLOCK)) {
    r = io_lock(f, flags & VD_FILE_RDWR);
    if (r < 0)
      goto fail;
  }
  if ((oflags & O_TRUNC) && !f->blk && ftruncate(f->fd, 0) == -1) {
    r = vd_set_error(errno, "%s: truncate: %s", path, strerror(errno));
    goto fail;
  }
  if (flags & VD_FILE_DIRECT) {
    int fl = fcntl(f->fd, F_GETFL);
    if (fl == -1 || fcntl(f->fd, F_SETFL, fl | O_DIRECT) == -1) {
      r = vd_set_error(errno == EINVAL ? ENOTSUP : errno,
                       "%s: O_DIRECT is not supported here (cache=none): %s",
                       path, strerror(errno));
      goto fail;
    }
    f->direct = true;
    f->align = io_direct_align(f);
  }
  *out = f;
  return 0;

fail:
  vd_file_close(f);
  return r;
}

void
vd_file_close(struct vd_file *f)
{
  if (!f)
    return;
  if (f->fd >= 0)
    close(f->fd);
  vd_blocklock_destroy(f->rmw, VD_RMW_LOCKS);
  free(f->path);
  free(f);
}

/* Switch F between read-only and read-write in place (see io.h).
 *
 * The new mode gets a new open file description of the same inode
 * (through /proc/self/fd, so a rename or unlink of the path since the open
 * does not matter), which is then dup2()ed over f->fd: the descriptor
 * number stays, so requests running concurrently on other threads use
 * either the old or the new description, never a closed one.  Locks are
 * OFD locks and belong to the description: the new one takes the new
 * mode's bytes; the old one's go when dup2 closes it.  Our own old
 * description would conflict with the new one's checks (OFD locks of one
 * process conflict like anybody's), so the bytes the new mode gives up
 * are released on the old description first, and the one byte an upgrade
 * must drop before it can check (200+write: "nobody may write", held by
 * every read-only open) is put back if the upgrade fails.  A downgrade
 * therefore never meets a conflict: while we held the write permission
 * nobody else could hold or forbid anything we keep. */
static int
io_unlock_byte(int fd, off_t byte)
{
  return io_ofd_lock(fd, F_OFD_SETLK, F_UNLCK, byte, NULL);
}

int
vd_file_reopen(struct vd_file *f, bool write)
{
  bool was = f->flags & VD_FILE_RDWR;
  if (was == write)
    return 0;
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", f->fd);
  int oflags = O_CLOEXEC | (write ? O_RDWR : O_RDONLY);
  int nfd = open(proc, oflags);
  if (nfd == -1)
    return vd_set_error(errno, "%s: cannot reopen %s: %s", f->path,
                        write ? "for writing" : "read-only", strerror(errno));
  struct stat a, b;
  if (fstat(f->fd, &a) == -1 || fstat(nfd, &b) == -1 ||
      a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
    close(nfd);
    return vd_set_error(EIO, "%s: reopen found another file", f->path);
  }
  if (f->direct) {
    int fl = fcntl(nfd, F_GETFL);
    if (fl == -1 || fcntl(nfd, F_SETFL, fl | O_DIRECT) == -1) {
      int e = errno;
      close(nfd);
      return vd_set_error(e, "%s: reopen: O_DIRECT: %s", f->path,
                          strerror(e));
    }
  }
  if (!(f->flags & VD_FILE_NOLOCK)) {
    if (write) {
      /* Ours: read-only held "nobody may write". */
      io_unlock_byte(f->fd, VD_LOCK_SHARED_BASE + VD_PERM_WRITE);
    } else {
      for (int i = VD_PERM_WRITE; i < VD_PERM_COUNT; i++)
        io_unlock_byte(f->fd, VD_LOCK_PERM_BASE + i);
      io_unlock_byte(f->fd, VD_LOCK_SHARED_BASE + VD_PERM_RESIZE);
    }
    struct vd_file probe = { .fd = nfd, .path = f->path };
    int r = io_lock(&probe, write);
    if (r < 0) {
      close(nfd);   /* drops whatever the new description took */
      /* Taking a shared (read) lock conflicts with nobody in this
       * scheme (conflicts are only tested, with F_WRLCK), so putting the
       * released bytes back cannot fail for a lock reason. */
      if (write) {
        io_ofd_lock(f->fd, F_OFD_SETLK, F_RDLCK,
                    VD_LOCK_SHARED_BASE + VD_PERM_WRITE, NULL);
      } else {
        for (int i = VD_PERM_WRITE; i < VD_PERM_COUNT; i++)
          io_ofd_lock(f->fd, F_OFD_SETLK, F_RDLCK, VD_LOCK_PERM_BASE + i,
                      NULL);
        io_ofd_lock(f->fd, F_OFD_SETLK, F_RDLCK,
                    VD_LOCK_SHARED_BASE + VD_PERM_RESIZE, NULL);
      }
      return r;
    }
  }
  if (dup2(nfd, f->fd) == -1) {
    int e = errno;
    close(nfd);
    return vd_set_error(e, "%s: reopen: dup2: %s", f->path, strerror(e));
  }
  close(nfd);
  unsigned fl = write ? (f->flags | VD_FILE_RDWR) : (f->flags & ~VD_FILE_RDWR);
  __atomic_store_n(&f->flags, fl, __ATOMIC_RELEASE);
  return 0;
}

/* ---- libaio: one context per thread ---- */

static pthread_key_t io_aio_key;
static pthread_once_t io_aio_once = PTHREAD_ONCE_INIT;

static void
io_aio_destroy(void *p)
{
  io_context_t ctx = p;
  io_destroy(ctx);
}

static void
io_aio_init_key(void)
{
  pthread_key_create(&io_aio_key, io_aio_destroy);
}

static io_context_t
io_aio_ctx(void)
{
  pthread_once(&io_aio_once, io_aio_init_key);
  io_context_t ctx = pthread_getspecific(io_aio_key);
  if (!ctx) {
    ctx = 0;
    if (io_setup(VD_AIO_DEPTH, &ctx) < 0)
      return NULL;
    pthread_setspecific(io_aio_key, ctx);
  }
  return ctx;
}

/* Submit N aligned requests and wait for all.  Short completions and
 * errors fall back to the synchronous path for that request. */
static int io_sync_rw(struct vd_file *f, void *buf, size_t len, uint64_t off,
                      bool write);

static int
io_aio_rw(struct vd_file *f, struct vd_file_req *reqs, int n)
{
  io_context_t ctx = io_aio_ctx();
  int first_err = 0;

  if (!ctx) {
    for (int i = 0; i < n; i++) {
      int r = io_sync_rw(f, reqs[i].buf, reqs[i].len, reqs[i].off,
                         reqs[i].write);
      if (r < 0 && !first_err)
        first_err = r;
    }
    return first_err;
  }
  for (int base = 0; base < n; base += VD_AIO_DEPTH) {
    int cnt = n - base < VD_AIO_DEPTH ? n - base : VD_AIO_DEPTH;
    struct iocb cbs[VD_AIO_DEPTH], *cbp[VD_AIO_DEPTH];
    struct io_event ev[VD_AIO_DEPTH];
    bool done[VD_AIO_DEPTH] = { false };
    for (int i = 0; i < cnt; i++) {
      struct vd_file_req *q = &reqs[base + i];
      if (q->write)
        io_prep_pwrite(&cbs[i], f->fd, q->buf, q->len, (long long)q->off);
      else
        io_prep_pread(&cbs[i], f->fd, q->buf, q->len, (long long)q->off);
      cbs[i].data = (void *)(intptr_t)i;
      cbp[i] = &cbs[i];
    }
    int submitted = 0;
    while (submitted < cnt) {
      int r = io_submit(ctx, cnt - submitted, cbp + submitted);
      if (r == -EINTR || r == -EAGAIN)
        continue;
      if (r <= 0)
        break;
      submitted += r;
    }
    int got = 0;
    while (got < submitted) {
      int r = io_getevents(ctx, 1, submitted - got, ev, NULL);
      if (r == -EINTR)
        continue;
      if (r < 0) {
        /* Cannot reap: nothing safe to do but report. */
        return vd_set_error(-r, "%s: io_getevents: %s", f->path,
                            strerror(-r));
      }
      for (int e = 0; e < r; e++) {
        int i = (int)(intptr_t)ev[e].data;
        struct vd_file_req *q = &reqs[base + i];
        long res = (long)ev[e].res;
        if (res == (long)q->len)
          done[i] = true;
      }
      got += r;
    }
    /* Anything not done in full (not submitted, short, failed) is
     * retried synchronously, which handles EOF and gives the error. */
    for (int i = 0; i < cnt; i++) {
      if (done[i])
        continue;
      struct vd_file_req *q = &reqs[base + i];
      int r = io_sync_rw(f, q->buf, q->len, q->off, q->write);
      if (r < 0 && !first_err)
        first_err = r;
    }
  }
  return first_err;
}

/* ---- synchronous transfers ---- */

static int
io_sync_rw(struct vd_file *f, void *buf, size_t len, uint64_t off, bool write)
{
  uint8_t *p = buf;
  while (len > 0) {
    if (off > (uint64_t)INT64_MAX - len)
      return vd_set_error(EINVAL, "%s: offset %" PRIu64 " out of range",
                          f->path, off);
    ssize_t n = write ? pwrite(f->fd, p, len, (off_t)off)
                      : pread(f->fd, p, len, (off_t)off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return vd_set_error(errno, "%s: %s at offset %" PRIu64 ": %s",
                          f->path, write ? "write" : "read", off,
                          strerror(errno));
    }
    if (n == 0) {
      if (write)
        return vd_set_error(ENOSPC, "%s: write at offset %" PRIu64
                            " made no progress", f->path, off);
      memset(p, 0, len);  /* past end of file reads as zeros */
      return 0;
    }
    p += n;
    off += (uint64_t)n;
    len -= (size_t)n;
  }
  return 0;
}

static bool
io_aligned(const struct vd_file *f, const void *buf, size_t len, uint64_t off)
{
  uint32_t a = f->align;
  return ((uintptr_t)buf % a) == 0 && (len % a) == 0 && (off % a) == 0;
}

/* Aligned transfer in direct mode: big ones are split and batched. */
static int
io_direct_rw(struct vd_file *f, void *buf, size_t len, uint64_t off,
             bool write)
{
  if (len < VD_AIO_MIN)
    return io_sync_rw(f, buf, len, off, write);
  size_t n = (len + VD_AIO_CHUNK - 1) / VD_AIO_CHUNK;
  struct vd_file_req *reqs = calloc(n, sizeof *reqs);
  if (!reqs)
    return io_sync_rw(f, buf, len, off, write);
  for (size_t i = 0; i < n; i++) {
    size_t o = i * VD_AIO_CHUNK;
    reqs[i].buf = (uint8_t *)buf + o;
    reqs[i].len = len - o < VD_AIO_CHUNK ? len - o : VD_AIO_CHUNK;
    reqs[i].off = off + o;
    reqs[i].write = write;
  }
  int r = io_aio_rw(f, reqs, (int)n);
  free(reqs);
  return r;
}

/* Unaligned direct I/O through an aligned bounce buffer. */
static int
io_bounce_rw(struct vd_file *f, void *buf, size_t len, uint64_t off,
             bool write)
{
  uint32_t a = f->align;
  uint64_t start = vd_round_down(off, a), end;
  if (vd_add_overflow(off, len, &end))
    return vd_set_error(EINVAL, "%s: request overflows", f->path);
  end = vd_round_up(end, a);
  size_t blen = (size_t)(end - start);
  uint8_t *b = vd_alloc_aligned(blen);
  int r;
  if (!b)
    return vd_set_error(ENOMEM, "%s: out of memory for a bounce buffer",
                        f->path);
  if (!write) {
    r = io_direct_rw(f, b, blen, start, false);
    if (r == 0)
      memcpy(buf, b + (off - start), len);
  } else {
    uint64_t first = start / a, last = end / a - 1;
    vd_blocklock(f->rmw, VD_RMW_LOCKS, first, last, true);
    r = 0;
    if (off != start)
      r = io_sync_rw(f, b, a, start, false);
    if (r == 0 && (off + len) % a && (last != first || off == start))
      r = io_sync_rw(f, b + blen - a, a, end - a, false);
    if (r == 0) {
      memcpy(b + (off - start), buf, len);
      r = io_direct_rw(f, b, blen, start, true);
    }
    vd_blocklock(f->rmw, VD_RMW_LOCKS, first, last, false);
  }
  vd_free_aligned(b);
  return r;
}

int
vd_file_pread(struct vd_file *f, void *buf, size_t len, uint64_t off)
{
  if (len == 0)
    return 0;
  if (!f->direct)
    return io_sync_rw(f, buf, len, off, false);
  if (io_aligned(f, buf, len, off))
    return io_direct_rw(f, buf, len, off, false);
  return io_bounce_rw(f, buf, len, off, false);
}

int
vd_file_pwrite(struct vd_file *f, const void *buf, size_t len, uint64_t off)
{
  if (len == 0)
    return 0;
  if (!f->direct)
    return io_sync_rw(f, (void *)buf, len, off, true);
  if (io_aligned(f, buf, len, off))
    return io_direct_rw(f, (void *)buf, len, off, true);
  return io_bounce_rw(f, (void *)buf, len, off, true);
}

int
vd_file_batch(struct vd_file *f, struct vd_file_req *reqs, int n)
{
  bool all_aligned = f->direct;
  for (int i = 0; all_aligned && i < n; i++)
    all_aligned = io_aligned(f, reqs[i].buf, reqs[i].len, reqs[i].off);
  if (all_aligned)
    return io_aio_rw(f, reqs, n);
  int first_err = 0;
  for (int i = 0; i < n; i++) {
    int r = reqs[i].write
      ? vd_file_pwrite(f, reqs[i].buf, reqs[i].len, reqs[i].off)
      : vd_file_pread(f, reqs[i].buf, reqs[i].len, reqs[i].off);
    if (r < 0 && !first_err)
      first_err = r;
  }
  return first_err;
}

/* ---- metadata operations ---- */

/* A failed fdatasync is remembered for the life of the vd_file: the
 * kernel reports a write-back error once per open file description, may
 * have dropped the dirty pages, and a later fdatasync then succeeds
 * although the data is gone (the "fsyncgate" lesson; qemu's file-posix
 * does the same).  Write errors the kernel only reports at fdatasync
 * (asynchronous write-back: EIO, ENOSPC, EDQUOT) end up here too. */
int
vd_file_flush(struct vd_file *f)
{
  int e = __atomic_load_n(&f->flush_err, __ATOMIC_ACQUIRE);
  if (e)
    return vd_set_error(e, "%s: flush refused: an earlier flush failed "
                        "(%s), so data written before it may be lost",
                        f->path, strerror(e));
  if (f->flags & VD_FILE_NO_FLUSH)
    return 0;
  while (fdatasync(f->fd) == -1) {
    if (errno == EINTR)
      continue;
    e = errno;
    int zero = 0;
    __atomic_compare_exchange_n(&f->flush_err, &zero, e, false,
                                __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    return vd_set_error(e, "%s: flush (fdatasync): %s", f->path,
                        strerror(e));
  }
  return 0;
}

void
vd_file_writeback(struct vd_file *f)
{
  if (!(f->flags & VD_FILE_NO_FLUSH))
    (void)sync_file_range(f->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

int
vd_file_sync_dir(const char *path)
{
  char *copy = strdup(path);
  if (!copy)
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  char *slash = strrchr(copy, '/');
  const char *dir = ".";
  if (slash == copy)
    dir = "/";
  else if (slash) {
    *slash = '\0';
    dir = copy;
  }
  int r = 0;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1)
    r = vd_set_error(errno, "%s: cannot open its folder to sync it: %s",
                     path, strerror(errno));
  else {
    while (fsync(fd) == -1) {
      if (errno == EINTR)
        continue;
      /* Some file systems cannot sync a folder; nothing more to do. */
      if (errno != EINVAL && errno != EROFS)
        r = vd_set_error(errno, "%s: sync of its folder: %s", path,
                         strerror(errno));
      break;
    }
    close(fd);
  }
  free(copy);
  return r;
}

int
vd_file_size(struct vd_file *f, uint64_t *size)
{
  if (f->blk) {
    uint64_t s;
    if (ioctl(f->fd, BLKGETSIZE64, &s) == -1)
      return vd_set_error(errno, "%s: cannot get device size: %s", f->path,
                          strerror(errno));
    *size = s;
    return 0;
  }
  struct stat st;
  if (fstat(f->fd, &st) == -1)
    return vd_set_error(errno, "%s: stat: %s", f->path, strerror(errno));
  *size = (uint64_t)st.st_size;
  return 0;
}

int
vd_file_truncate(struct vd_file *f, uint64_t size)
{
  if (f->blk)
    return vd_set_error(ENOTSUP, "%s: cannot resize a block device",
                        f->path);
  if (size > INT64_MAX)
    return vd_set_error(EFBIG, "%s: size too large", f->path);
  while (ftruncate(f->fd, (off_t)size) == -1) {
    if (errno == EINTR)
      continue;
    return vd_set_error(errno, "%s: truncate to %" PRIu64 ": %s", f->path,
                        size, strerror(errno));
  }
  return 0;
}

static bool
io_unsupported(int e)
{
  return e == EOPNOTSUPP || e == ENOTSUP || e == ENOSYS || e == EINVAL ||
         e == ENOTTY;
}

int
vd_file_punch(struct vd_file *f, uint64_t off, uint64_t len)
{
  if (f->no_punch)
    return vd_set_error(ENOTSUP, "%s: cannot punch holes", f->path);
  if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                (off_t)off, (off_t)len) == 0)
    return 0;
  int e = errno;
  if (io_unsupported(e)) {
    f->no_punch = true;
    return vd_set_error(ENOTSUP, "%s: cannot punch holes: %s", f->path,
                        strerror(e));
  }
  return vd_set_error(e, "%s: punch hole at %" PRIu64 ": %s", f->path, off,
                      strerror(e));
}

static int
io_write_zero_buf(struct vd_file *f, uint64_t off, uint64_t len)
{
  size_t chunk = len < VD_AIO_CHUNK ? (size_t)vd_round_up(len, 4096)
                                    : VD_AIO_CHUNK;
  uint8_t *z = vd_alloc_aligned(chunk);
  int r = 0;
  if (!z)
    return vd_set_error(ENOMEM, "%s: out of memory", f->path);
  while (len > 0 && r == 0) {
    size_t n = len < chunk ? (size_t)len : chunk;
    r = vd_file_pwrite(f, z, n, off);
    off += n;
    len -= n;
  }
  vd_free_aligned(z);
  return r;
}

int
vd_file_zero(struct vd_file *f, uint64_t off, uint64_t len,
             bool keep_allocated, bool no_fallback)
{
  if (len == 0)
    return 0;
  if (f->blk) {
    uint64_t range[2] = { off, len };
    if (ioctl(f->fd, BLKZEROOUT, range) == 0)
      return 0;
  } else {
    if (!keep_allocated && !f->no_punch &&
        fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)off, (off_t)len) == 0)
      return 0;
    if (!f->no_zero_range) {
      if (fallocate(f->fd, FALLOC_FL_ZERO_RANGE, (off_t)off,
                    (off_t)len) == 0)
        return 0;
      if (io_unsupported(errno))
        f->no_zero_range = true;
      else if (errno != ENOSPC)
        return vd_set_error(errno, "%s: zero range at %" PRIu64 ": %s",
                            f->path, off, strerror(errno));
    }
  }
  if (no_fallback)
    return vd_set_error(ENOTSUP, "%s: no fast way to write zeros", f->path);
  return io_write_zero_buf(f, off, len);
}

int
vd_file_allocate(struct vd_file *f, uint64_t off, uint64_t len)
{
  if (f->blk)
    return 0;
  if (fallocate(f->fd, 0, (off_t)off, (off_t)len) == 0)
    return 0;
  if (io_unsupported(errno))
    return 0;  /* preallocation is only a hint */
  return vd_set_error(errno, "%s: preallocate: %s", f->path, strerror(errno));
}

int
vd_file_extent(struct vd_file *f, uint64_t off, uint64_t maxlen,
               bool *is_data, uint64_t *len)
{
  if (f->blk) {
    *is_data = true;
    *len = maxlen;
    return 0;
  }
  off_t d = lseek(f->fd, (off_t)off, SEEK_DATA);
  if (d == -1) {
    if (errno == ENXIO) {  /* past the last data: a hole to the end */
      *is_data = false;
      *len = maxlen;
      return 0;
    }
    if (io_unsupported(errno)) {
      *is_data = true;
      *len = maxlen;
      return 0;
    }
    return vd_set_error(errno, "%s: SEEK_DATA: %s", f->path, strerror(errno));
  }
  if ((uint64_t)d > off) {
    *is_data = false;
    *len = (uint64_t)d - off;
  } else {
    off_t h = lseek(f->fd, (off_t)off, SEEK_HOLE);
    if (h == -1)
      return vd_set_error(errno, "%s: SEEK_HOLE: %s", f->path,
                          strerror(errno));
    *is_data = true;
    *len = (uint64_t)h > off ? (uint64_t)h - off : maxlen;
  }
  if (*len > maxlen)
    *len = maxlen;
  return 0;
}

int
vd_file_allocated(struct vd_file *f, uint64_t *bytes)
{
  struct stat st;
  if (fstat(f->fd, &st) == -1)
    return vd_set_error(errno, "%s: stat: %s", f->path, strerror(errno));
  *bytes = f->blk ? 0 : (uint64_t)st.st_blocks * 512;
  return 0;
}

const char *vd_file_path(const struct vd_file *f) { return f->path; }
bool vd_file_is_blockdev(const struct vd_file *f) { return f->blk; }
bool vd_file_is_direct(const struct vd_file *f) { return f->direct; }
bool vd_file_writable(const struct vd_file *f)
{
  return f->flags & VD_FILE_RDWR;
}
uint32_t vd_file_align(const struct vd_file *f) { return f->align; }
int vd_file_fd(const struct vd_file *f) { return f->fd; }

ssize_t
vd_file_splice_read(struct vd_file *f, int pipe_wr, uint64_t off, size_t len)
{
  size_t done = 0;
  if (f->direct)
    return vd_set_error(ENOTSUP, "%s: no splice in direct mode", f->path);
  while (done < len) {
    loff_t o = (loff_t)(off + done);
    ssize_t n = splice(f->fd, &o, pipe_wr, NULL, len - done,
                       SPLICE_F_NONBLOCK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      break;  /* the pipe is full */
    if (n < 0)
      return vd_set_error(errno, "%s: splice at %" PRIu64 ": %s", f->path,
                          off + done, strerror(errno));
    if (n == 0)
      return vd_set_error(EIO, "%s: unexpected end of file at %" PRIu64,
                          f->path, off + done);
    done += (size_t)n;
  }
  return (ssize_t)done;
}

void *
vd_alloc_aligned(size_t len)
{
  void *p = NULL;
  if (posix_memalign(&p, 4096, len ? len : 1) != 0)
    return NULL;
  memset(p, 0, len);
  return p;
}

void
vd_free_aligned(void *p)
{
  free(p);
}
