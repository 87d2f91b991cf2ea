/* LD_PRELOAD shim for tests/integration/raid-powercut.sh: gives the files
 * named in VDCUT_FILES (colon-separated absolute paths) a volatile write
 * cache, so that kill -9 of the process is a power cut for them.
 *
 * pwrite() to such a file only records the write; pread() sees the
 * recorded writes over the file's contents.  Like a disk cache, the shim
 * writes recorded writes back on its own at random moments, in random
 * order and sometimes torn (a random subset of their 512-byte sectors,
 * the rest following later); fdatasync()/fsync() writes back everything
 * (again in random order) and then syncs.  Whatever was not written back
 * when the process is killed is lost: unsynced writes are dropped, kept,
 * reordered or torn.  VDCUT_SEED seeds the choices.  Test-only: never
 * installed, built as a libtool module for make check (raid-powercut.sh,
 * and guest-nbd-client.sh for every image file its server writes).
 *
 * What reads and fstat() see stays what a page cache shows: a write that
 * extends the file, and fallocate() and ftruncate(), reach the file at
 * once (after any cached write they overlap), so nothing is ever cached
 * past the file's end; a cache may write anything back at any moment, so
 * this only narrows the losses a cut can cause.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

struct cut_write {
  uint64_t off;
  size_t len;
  uint8_t *data;
  uint8_t *done;               /* per 512-byte sector: already written back */
};

struct cut_file {
  dev_t dev;
  ino_t ino;
  int wfd;                     /* our own descriptor for write-backs */
  struct cut_write *w;
  size_t nw, cap;
};

#define CUT_MAX_FILES 32
static struct cut_file files[CUT_MAX_FILES];
static size_t nfiles;
static pthread_mutex_t cut_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t cut_once = PTHREAD_ONCE_INIT;
static uint64_t rng;

static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static int (*real_fdatasync)(int);
static int (*real_fsync)(int);

static uint64_t cut_rnd(void)
{
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void cut_init(void)
{
  real_pread = (ssize_t (*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT,
                                                              "pread64");
  real_pwrite = (ssize_t (*)(int, const void *, size_t, off_t))
                dlsym(RTLD_NEXT, "pwrite64");
  real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  const char *seed = getenv("VDCUT_SEED");
  rng = (seed ? strtoull(seed, NULL, 10) : 1) * 0x9E3779B97F4A7C15ull + 7;
  const char *list = getenv("VDCUT_FILES");
  if (!list)
    return;
  char *copy = strdup(list), *save = NULL;
  for (char *p = copy ? strtok_r(copy, ":", &save) : NULL;
       p && nfiles < CUT_MAX_FILES; p = strtok_r(NULL, ":", &save)) {
    struct stat st;
    int fd = open(p, O_RDWR | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
      if (fd >= 0)
        close(fd);
      continue;
    }
    files[nfiles++] = (struct cut_file){ .dev = st.st_dev, .ino = st.st_ino,
                                         .wfd = fd };
  }
  free(copy);
}

/* The cached file behind FD, or NULL.  Caller holds cut_lock. */
static struct cut_file *cut_find(int fd)
{
  struct stat st;
  if (nfiles == 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
    return NULL;
  for (size_t i = 0; i < nfiles; i++)
    if (files[i].dev == st.st_dev && files[i].ino == st.st_ino)
      return &files[i];
  return NULL;
}

/* Write back the not yet written sectors of write K (a random subset of
 * them if TEAR), and forget it once all are. */
static void cut_writeback(struct cut_file *f, size_t k, bool tear)
{
  struct cut_write *w = &f->w[k];
  size_t nsec = (w->len + 511) / 512;
  bool all = true;
  for (size_t s = 0; s < nsec; s++) {
    if (w->done[s])
      continue;
    if (tear && cut_rnd() % 2) {
      all = false;
      continue;
    }
    size_t o = s * 512, n = w->len - o < 512 ? w->len - o : 512;
    if (real_pwrite(f->wfd, w->data + o, n, (off_t)(w->off + o)) != (ssize_t)n)
      abort();   /* the test's files are on a healthy disk */
    w->done[s] = 1;
  }
  if (!all)
    return;
  free(w->data);
  free(w->done);
  f->w[k] = f->w[--f->nw];   /* cached writes never overlap (pwrite64) */
}

/* Write back every cached write that overlaps [OFF, OFF+LEN). */
static void cut_writeback_range(struct cut_file *f, uint64_t off, uint64_t len)
{
  for (size_t k = 0; k < f->nw;) {
    struct cut_write *w = &f->w[k];
    if (w->off < off + len && off < w->off + w->len) {
      cut_writeback(f, k, false);
      continue;   /* entry K was replaced by the last one */
    }
    k++;
  }
}

static void cut_flush_all(struct cut_file *f)
{
  while (f->nw > 0)
    cut_writeback(f, (size_t)(cut_rnd() % f->nw), false);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off)
{
  pthread_once(&cut_once, cut_init);
  pthread_mutex_lock(&cut_lock);
  struct cut_file *f = cut_find(fd);
  ssize_t r = real_pread(fd, buf, len, off);
  if (f && r > 0) {
    /* Overlay the cached writes (they never overlap each other). */
    for (size_t k = 0; k < f->nw; k++) {
      struct cut_write *w = &f->w[k];
      uint64_t lo = w->off > (uint64_t)off ? w->off : (uint64_t)off;
      uint64_t hi = w->off + w->len < (uint64_t)off + (uint64_t)r
                    ? w->off + w->len : (uint64_t)off + (uint64_t)r;
      for (uint64_t b = lo; b < hi; b++)
        if (!w->done[(b - w->off) / 512])
          ((uint8_t *)buf)[b - (uint64_t)off] = w->data[b - w->off];
    }
  }
  pthread_mutex_unlock(&cut_lock);
  return r;
}

ssize_t pread(int fd, void *buf, size_t len, off_t off)
{
  return pread64(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
  pthread_once(&cut_once, cut_init);
  pthread_mutex_lock(&cut_lock);
  struct cut_file *f = cut_find(fd);
  if (!f) {
    pthread_mutex_unlock(&cut_lock);
    return real_pwrite(fd, buf, len, off);
  }
  /* A write over cached data: the older cached write reaches the disk
   * first (now), as a cache holding the newest data per sector behaves, so
   * cached writes never overlap and reads need no ordering. */
  cut_writeback_range(f, (uint64_t)off, len);
  struct stat st;
  if (fstat(f->wfd, &st) != 0)
    abort();
  if ((uint64_t)off + len > (uint64_t)st.st_size) {
    /* Past the end: the file grows now (see the top). */
    ssize_t r = real_pwrite(fd, buf, len, off);
    pthread_mutex_unlock(&cut_lock);
    return r;
  }
  if (f->nw == f->cap) {
    size_t nc = f->cap ? 2 * f->cap : 64;
    struct cut_write *n = realloc(f->w, nc * sizeof *n);
    if (!n)
      abort();
    f->w = n;
    f->cap = nc;
  }
  struct cut_write *w = &f->w[f->nw];
  w->off = (uint64_t)off;
  w->len = len;
  w->data = malloc(len);
  w->done = calloc((len + 511) / 512, 1);
  if (!w->data || !w->done)
    abort();
  memcpy(w->data, buf, len);
  f->nw++;
  /* The cache writes back on its own: a random entry, sometimes torn. */
  if (cut_rnd() % 3 == 0)
    cut_writeback(f, (size_t)(cut_rnd() % f->nw), cut_rnd() % 3 == 0);
  pthread_mutex_unlock(&cut_lock);
  return (ssize_t)len;
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
  return pwrite64(fd, buf, len, off);
}

static int cut_sync(int fd, int (*real)(int))
{
  pthread_once(&cut_once, cut_init);
  pthread_mutex_lock(&cut_lock);
  struct cut_file *f = cut_find(fd);
  if (f) {
    cut_flush_all(f);
    if (real(f->wfd) != 0)
      abort();
  }
  pthread_mutex_unlock(&cut_lock);
  return real(fd);
}

int fdatasync(int fd)
{
  return cut_sync(fd, real_fdatasync ? real_fdatasync
                  : (int (*)(int))dlsym(RTLD_NEXT, "fdatasync"));
}

int fsync(int fd)
{
  return cut_sync(fd, real_fsync ? real_fsync
                  : (int (*)(int))dlsym(RTLD_NEXT, "fsync"));
}

/* fallocate() and ftruncate() act on the file at once, after the cached
 * writes they overlap (see the top). */
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_ftruncate)(int, off_t);

int fallocate(int fd, int mode, off_t off, off_t len)
{
  pthread_once(&cut_once, cut_init);
  if (!real_fallocate)
    real_fallocate = (int (*)(int, int, off_t, off_t))dlsym(RTLD_NEXT,
                                                            "fallocate");
  pthread_mutex_lock(&cut_lock);
  struct cut_file *f = cut_find(fd);
  if (f)
    cut_writeback_range(f, (uint64_t)off, (uint64_t)len);
  int r = real_fallocate(fd, mode, off, len);
  pthread_mutex_unlock(&cut_lock);
  return r;
}

int fallocate64(int fd, int mode, off_t off, off_t len)
{
  return fallocate(fd, mode, off, len);
}

int ftruncate(int fd, off_t size)
{
  pthread_once(&cut_once, cut_init);
  if (!real_ftruncate)
    real_ftruncate = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate");
  pthread_mutex_lock(&cut_lock);
  struct cut_file *f = cut_find(fd);
  if (f)
    cut_writeback_range(f, (uint64_t)size, UINT64_MAX - (uint64_t)size);
  int r = real_ftruncate(fd, size);
  pthread_mutex_unlock(&cut_lock);
  return r;
}

int ftruncate64(int fd, off_t size)
{
  return ftruncate(fd, size);
}
