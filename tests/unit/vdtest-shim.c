/* An LD_PRELOAD shim for the crash and flush-failure tests (built only for
 * `make check`, never installed; nothing in libvdisk knows about it).
 * It watches one file, named by VDTEST_SHIM_FILE and matched by device and
 * inode, so any spelling of the path and files created later work:
 *
 *   VDTEST_FAIL_SYNC=N   the Nth fdatasync/fsync of that file fails with
 *                        EIO without syncing, once; later ones go through,
 *                        as the kernel reports a lost write-back only once
 *                        per open file and then forgets it.
 *   VDTEST_FAIL_WRITE_LEN=L  the first pwrite of exactly L bytes to that
 *                        file fails with EIO without writing, once (to
 *                        fail one kind of metadata write: a qcow2 L2
 *                        entry is 8 bytes).
 *   VDTEST_JOURNAL=PATH  record every pwrite to the file since its last
 *                        successful fdatasync/fsync in PATH: before each
 *                        write one record {magic, seq, offset, length, file
 *                        size before, pre-image, data}; a successful sync
 *                        empties PATH.  tests/integration/powercut.py then
 *                        rolls the file back to its last sync and replays
 *                        a random subset of the records (a power cut).
 *                        A punched hole or zeroed range (fallocate) is
 *                        recorded as a write of zeros.  Other ways of
 *                        changing the file (pwritev, other fallocate
 *                        modes, and ftruncate while writes are pending
 *                        in the journal) abort the process while
 *                        recording, so a test cannot silently model less
 *                        than what happened.  An ftruncate with nothing
 *                        pending (everything synced) passes: a power cut
 *                        then finds the file cut (the writer syncs after
 *                        it) or, when it comes before, uncut with every
 *                        earlier write durable.
 *   VDTEST_CUT_AFTER=K   kill the process (SIGKILL) right after its Kth
 *                        write to the file: a crash at a chosen point of
 *                        the write stream, reproducible, whatever the
 *                        timing of the machine.
 *
 * Record and write happen under one lock, so the journal order is the
 * order the writes reached the page cache; a sync holds the lock from
 * before fdatasync until the journal is emptied.  A kill -9 can leave a
 * last record incomplete; its write was not issued then.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define JOURNAL_MAGIC 0x5644504352454331ull   /* "VDPCREC1" */

static pthread_mutex_t shim_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *shim_target;
static long shim_fail_nth;       /* 0: never */
static long shim_syncs;          /* syncs of the target seen */
static long shim_cut_after;      /* 0: never */
static long shim_writes;         /* writes to the target seen */
static bool shim_fail_write;     /* VDTEST_FAIL_WRITE_LEN given (set once) */
static long shim_fail_len = -1;  /* its length, -1 once failed (shim_lock) */
static int shim_jfd = -1;
static uint64_t shim_seq;

__attribute__((constructor)) static void
shim_init(void)
{
  shim_target = getenv("VDTEST_SHIM_FILE");
  /* Absolute, so that a program changing its folder (FUSE daemons go to
   * "/") still finds it. */
  static char abs[4096];
  char cwd[2048];
  if (shim_target && shim_target[0] != '/' && getcwd(cwd, sizeof cwd) &&
      (size_t)snprintf(abs, sizeof abs, "%s/%s", cwd, shim_target) <
      sizeof abs)
    shim_target = abs;
  const char *n = getenv("VDTEST_FAIL_SYNC");
  shim_fail_nth = n ? strtol(n, NULL, 10) : 0;
  const char *l = getenv("VDTEST_FAIL_WRITE_LEN");
  shim_fail_len = l ? strtol(l, NULL, 10) : -1;
  shim_fail_write = shim_fail_len >= 0;
  const char *k = getenv("VDTEST_CUT_AFTER");
  shim_cut_after = k ? strtol(k, NULL, 10) : 0;
  const char *j = getenv("VDTEST_JOURNAL");
  if (shim_target && j) {
    shim_jfd = (int)syscall(SYS_openat, AT_FDCWD, j,
                            O_WRONLY | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (shim_jfd < 0) {
      fprintf(stderr, "vdtest-shim: cannot create %s\n", j);
      abort();
    }
  }
}

static bool
shim_is_target(int fd)
{
  struct stat a, b;
  if (!shim_target || fd < 0 || fstat(fd, &a) != 0 || !S_ISREG(a.st_mode) ||
      stat(shim_target, &b) != 0)
    return false;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

static void
shim_put(const void *p, size_t n)
{
  const uint8_t *b = p;
  while (n > 0) {
    ssize_t w = syscall(SYS_write, shim_jfd, b, n);
    if (w <= 0) {
      if (w < 0 && errno == EINTR)
        continue;
      fprintf(stderr, "vdtest-shim: journal write failed\n");
      abort();
    }
    b += w;
    n -= (size_t)w;
  }
}

/* Append the record of a write of LEN bytes of BUF at OFF to FD. */
static void
shim_record(int fd, const void *buf, size_t len, off_t off)
{
  struct stat st;
  if (fstat(fd, &st) != 0)
    abort();
  uint8_t *pre = calloc(1, len ? len : 1);
  if (!pre)
    abort();
  for (size_t got = 0; got < len;) {
    ssize_t r = syscall(SYS_pread64, fd, pre + got, len - got,
                        (off_t)(off + (off_t)got));
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;            /* past the end: zeros */
    got += (size_t)r;
  }
  uint64_t hdr[5] = { JOURNAL_MAGIC, ++shim_seq, (uint64_t)off, len,
                      (uint64_t)st.st_size };
  shim_put(hdr, sizeof hdr);
  shim_put(pre, len);
  shim_put(buf, len);
  free(pre);
}

static ssize_t
shim_pwrite(int fd, const void *buf, size_t len, off_t off)
{
  if ((shim_jfd < 0 && !shim_cut_after && !shim_fail_write) ||
      !shim_is_target(fd))
    return syscall(SYS_pwrite64, fd, buf, len, off);
  pthread_mutex_lock(&shim_lock);
  if (shim_fail_len >= 0 && (size_t)shim_fail_len == len) {
    shim_fail_len = -1;
    pthread_mutex_unlock(&shim_lock);
    errno = EIO;
    return -1;
  }
  if (shim_jfd >= 0)
    shim_record(fd, buf, len, off);
  ssize_t r = syscall(SYS_pwrite64, fd, buf, len, off);
  int e = errno;
  if (++shim_writes == shim_cut_after)
    kill(getpid(), SIGKILL);
  pthread_mutex_unlock(&shim_lock);
  errno = e;
  return r;
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
  return shim_pwrite(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
  return shim_pwrite(fd, buf, len, off);
}

static int
shim_sync(int fd, long nr)
{
  if (!shim_is_target(fd))
    return (int)syscall(nr, fd);
  pthread_mutex_lock(&shim_lock);
  int r;
  if (++shim_syncs == shim_fail_nth) {
    errno = EIO;
    r = -1;
  } else {
    r = (int)syscall(nr, fd);
    if (r == 0 && shim_jfd >= 0 && ftruncate(shim_jfd, 0) != 0)
      abort();
  }
  int e = errno;
  pthread_mutex_unlock(&shim_lock);
  errno = e;
  return r;
}

int fdatasync(int fd) { return shim_sync(fd, SYS_fdatasync); }
int fsync(int fd) { return shim_sync(fd, SYS_fsync); }

/* Changes the journal does not model: refuse them loudly. */
static void
shim_unmodelled(int fd, const char *what)
{
  if (shim_jfd >= 0 && shim_is_target(fd)) {
    fprintf(stderr, "vdtest-shim: %s on the recorded file is not modelled\n",
            what);
    abort();
  }
}

int ftruncate(int fd, off_t len)
{
  if (shim_jfd < 0 || lseek(shim_jfd, 0, SEEK_END) != 0)
    shim_unmodelled(fd, "ftruncate with writes pending");
  return (int)syscall(SYS_ftruncate, fd, len);
}

int ftruncate64(int fd, off_t len) { return ftruncate(fd, len); }

/* fallocate on the recorded file: punching a hole or zeroing a range is
 * recorded as a write of zeros over the part of the range that changes
 * (up to the file's end with FALLOC_FL_KEEP_SIZE; a plain allocation
 * changes only what lies past the end), so a power cut may keep, drop or
 * tear it like any write.  Other modes, and ranges over SHIM_ZERO_MAX
 * bytes, are not modelled. */
#define SHIM_ZERO_MAX (64u << 20)
int fallocate(int fd, int mode, off_t off, off_t len)
{
  if ((shim_jfd < 0 && !shim_cut_after) || !shim_is_target(fd))
    return (int)syscall(SYS_fallocate, fd, mode, off, len);
  int keep = mode & FALLOC_FL_KEEP_SIZE, kind = mode & ~FALLOC_FL_KEEP_SIZE;
  if ((kind != 0 && kind != FALLOC_FL_ZERO_RANGE &&
       kind != FALLOC_FL_PUNCH_HOLE) || (kind == FALLOC_FL_PUNCH_HOLE &&
                                         !keep) || off < 0 || len <= 0)
    shim_unmodelled(fd, "this fallocate mode");
  pthread_mutex_lock(&shim_lock);
  struct stat st;
  if (fstat(fd, &st) != 0)
    abort();
  off_t start = off, end = off + len;
  if (keep && end > st.st_size)
    end = st.st_size;
  if (kind == 0 && start < st.st_size)
    start = st.st_size;      /* allocation: only the growth is visible */
  if (end > start) {
    if ((uint64_t)(end - start) > SHIM_ZERO_MAX) {
      pthread_mutex_unlock(&shim_lock);
      shim_unmodelled(fd, "a fallocate of more than 64 MiB");
    }
    void *zeros = calloc(1, (size_t)(end - start));
    if (!zeros)
      abort();
    if (shim_jfd >= 0)
      shim_record(fd, zeros, (size_t)(end - start), start);
    free(zeros);
  }
  int r = (int)syscall(SYS_fallocate, fd, mode, off, len);
  int e = errno;
  if (end > start && ++shim_writes == shim_cut_after)
    kill(getpid(), SIGKILL);
  pthread_mutex_unlock(&shim_lock);
  errno = e;
  return r;
}

int fallocate64(int fd, int mode, off_t off, off_t len)
{
  return fallocate(fd, mode, off, len);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
  shim_unmodelled(fd, "pwritev");
  ssize_t (*real)(int, const struct iovec *, int, off_t) =
    (ssize_t (*)(int, const struct iovec *, int, off_t))dlsym(RTLD_NEXT,
                                                               "pwritev");
  return real(fd, iov, n, off);
}
