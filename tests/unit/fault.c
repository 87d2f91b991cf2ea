/* The fault filter (QEMU's blkdebug, nbdkit's error filter, in the spirit
 * of SQLite's crash VFS): a driver stacked over any image by the open
 * option filter = "fault", built into the tests only.  A test attaches a
 * fault to a file; every device opened on it through the filter sends its
 * I/O through here:
 *  - fail the Nth I/O (optionally every later one too), or I/O touching a
 *    byte range, or everything (the device is gone);
 *  - drop writes (report success, write nothing) or tear them (keep the
 *    first 512 bytes);
 *  - hold I/O touching a byte range, or flushes, until the test changes
 *    the mode (to stop another thread at a chosen point);
 *  - power-cut mode: remember each write since the device's last flush
 *    (its pre-image and data); vd_fault_powercut() then rolls the device
 *    back to its last flush and re-applies a random subset, which
 *    vd_fault_powercut_ex() may also reorder and tear (some 512-byte
 *    sectors of a write land, others not).
 * A device opened through the filter on a file with no fault attached
 * passes everything through.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vdisk/driver.h"
#include "tests/unit/fault.h"

enum fault_op { FAULT_READ, FAULT_WRITE, FAULT_FLUSH };

struct fault_rec {
  uint64_t off;
  size_t len;
  uint8_t *pre, *data;
};

struct vd_fault {
  dev_t st_dev;
  ino_t st_ino;
  pthread_mutex_t lock;
  pthread_cond_t released;        /* cfg changed (VD_FAULT_HOLD_RANGE) */
  unsigned held;                  /* I/Os waiting in it; guarded by lock */
  struct vd_fault_cfg cfg;        /* guarded by lock */
  uint64_t count;                 /* I/Os matching cfg's kinds */
  uint64_t total;
  uint64_t flushes;
  bool tripped;                   /* FAIL_NTH sticky has fired */
  bool armed;                     /* power-cut recording */
  struct vd_dev *dev;             /* last device below seen (for the roll
                                     back), NULL once it closed */
  struct fault_rec *rec;
  size_t nrec, caprec;
  unsigned refs;                  /* the list's and each open device's;
                                     guarded by fault_list_lock */
  struct vd_fault *next;          /* guarded by fault_list_lock */
};

/* Per device opened through the filter. */
struct fault_dev {
  struct vd_fault *f;             /* NULL: nothing attached, pass through */
};

static pthread_mutex_t fault_list_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vd_fault *fault_list;       /* guarded by fault_list_lock */

struct vd_fault *vd_fault_attach(const char *path)
{
  struct stat st;
  if (stat(path, &st) != 0) {
    vd_set_error(errno, "%s: %s", path, strerror(errno));
    return NULL;
  }
  struct vd_fault *f = calloc(1, sizeof *f);
  if (!f) {
    vd_set_error(ENOMEM, "%s: out of memory", path);
    return NULL;
  }
  f->st_dev = st.st_dev;
  f->st_ino = st.st_ino;
  f->refs = 1;
  pthread_mutex_init(&f->lock, NULL);
  pthread_cond_init(&f->released, NULL);
  pthread_mutex_lock(&fault_list_lock);
  f->next = fault_list;
  fault_list = f;
  pthread_mutex_unlock(&fault_list_lock);
  return f;
}

static void fault_clear_recs(struct vd_fault *f)
{
  for (size_t i = 0; i < f->nrec; i++) {
    free(f->rec[i].pre);
    free(f->rec[i].data);
  }
  f->nrec = 0;
}

static void fault_unref(struct vd_fault *f)
{
  pthread_mutex_lock(&fault_list_lock);
  bool last = --f->refs == 0;
  pthread_mutex_unlock(&fault_list_lock);
  if (!last)
    return;
  fault_clear_recs(f);
  free(f->rec);
  pthread_mutex_destroy(&f->lock);
  pthread_cond_destroy(&f->released);
  free(f);
}

void vd_fault_detach(struct vd_fault *f)
{
  if (!f)
    return;
  pthread_mutex_lock(&fault_list_lock);
  for (struct vd_fault **p = &fault_list; *p; p = &(*p)->next)
    if (*p == f) {
      *p = f->next;
      break;
    }
  pthread_mutex_unlock(&fault_list_lock);
  pthread_mutex_lock(&f->lock);
  memset(&f->cfg, 0, sizeof f->cfg);
  pthread_cond_broadcast(&f->released);
  f->tripped = f->armed = false;
  fault_clear_recs(f);
  pthread_mutex_unlock(&f->lock);
  fault_unref(f);
}

/* The fault attached to the file at PATH (the earliest attached if
 * several), with a reference taken, or NULL. */
static struct vd_fault *fault_lookup(const char *path)
{
  struct stat st;
  if (stat(path, &st) != 0)
    return NULL;
  struct vd_fault *r = NULL;
  pthread_mutex_lock(&fault_list_lock);
  for (struct vd_fault *f = fault_list; f; f = f->next)
    if (f->st_dev == st.st_dev && f->st_ino == st.st_ino)
      r = f;
  if (r)
    r->refs++;
  pthread_mutex_unlock(&fault_list_lock);
  return r;
}

void vd_fault_set(struct vd_fault *f, const struct vd_fault_cfg *c)
{
  pthread_mutex_lock(&f->lock);
  f->cfg = *c;
  f->count = 0;
  f->tripped = false;
  pthread_cond_broadcast(&f->released);
  pthread_mutex_unlock(&f->lock);
}

uint64_t vd_fault_flushes(struct vd_fault *f)
{
  pthread_mutex_lock(&f->lock);
  uint64_t n = f->flushes;
  pthread_mutex_unlock(&f->lock);
  return n;
}

unsigned vd_fault_held(struct vd_fault *f)
{
  pthread_mutex_lock(&f->lock);
  unsigned n = f->held;
  pthread_mutex_unlock(&f->lock);
  return n;
}

void vd_fault_powercut_arm(struct vd_fault *f, bool on)
{
  pthread_mutex_lock(&f->lock);
  f->armed = on;
  fault_clear_recs(f);
  pthread_mutex_unlock(&f->lock);
}

uint64_t vd_fault_count(struct vd_fault *f)
{
  pthread_mutex_lock(&f->lock);
  uint64_t n = f->total;
  pthread_mutex_unlock(&f->lock);
  return n;
}

/* Decide the fate of one I/O.  Returns 0 (do it), -EIO (fail), 1 (drop),
 * 2 (tear), 3 (hold).  Caller holds f->lock. */
static int fault_decide(struct vd_fault *f, enum fault_op op, size_t len,
                        uint64_t off)
{
  const struct vd_fault_cfg *c = &f->cfg;
  bool is_write = op == FAULT_WRITE;
  bool kinds = (!c->reads && !c->writes) ||
               (c->reads && op == FAULT_READ) || (c->writes && is_write);
  f->total += op != FAULT_FLUSH;
  f->flushes += op == FAULT_FLUSH;
  switch (c->mode) {
  case VD_FAULT_FAIL_ALL:
    return -EIO;
  case VD_FAULT_FAIL_NTH:
    if (op == FAULT_FLUSH || !kinds)
      return f->tripped ? -EIO : 0;
    if (f->tripped)
      return -EIO;
    if (++f->count == c->nth) {
      if (c->sticky)
        f->tripped = true;
      return -EIO;
    }
    return 0;
  case VD_FAULT_FAIL_RANGE:
    if (op != FAULT_FLUSH && kinds && off < c->end && off + len > c->start)
      return -EIO;
    return 0;
  case VD_FAULT_DROP_WRITES:
    return is_write ? 1 : 0;
  case VD_FAULT_TEAR_WRITES:
    return is_write ? 2 : 0;
  case VD_FAULT_HOLD_RANGE:
    return op != FAULT_FLUSH && kinds && off < c->end && off + len > c->start
           ? 3 : 0;
  case VD_FAULT_HOLD_FLUSH:
    return op == FAULT_FLUSH ? 3 : 0;
  default:
    return 0;
  }
}

static int fault_record(struct vd_fault *f, struct vd_dev *dev,
                        const void *buf, size_t len, uint64_t off)
{
  if (f->nrec == f->caprec) {
    size_t nc = f->caprec ? f->caprec * 2 : 64;
    struct fault_rec *n = realloc(f->rec, nc * sizeof *n);
    if (!n)
      return -ENOMEM;
    f->rec = n;
    f->caprec = nc;
  }
  struct fault_rec *r = &f->rec[f->nrec];
  r->off = off;
  r->len = len;
  r->pre = malloc(len);
  r->data = malloc(len);
  if (!r->pre || !r->data) {
    free(r->pre);
    free(r->data);
    return -ENOMEM;
  }
  uint64_t size = vd_size(dev);
  memset(r->pre, 0, len);
  if (off < size) {
    size_t n = off + len <= size ? len : (size_t)(size - off);
    int e = vd_pread(dev, r->pre, n, off);
    if (e < 0) {
      free(r->pre);
      free(r->data);
      return e;
    }
  }
  memcpy(r->data, buf, len);
  f->nrec++;
  return 0;
}

/* One request through F to DEV (the device below the filter). */
static int fault_io(struct vd_fault *f, struct vd_dev *dev, enum fault_op op,
                    void *buf, size_t len, uint64_t off)
{
  pthread_mutex_lock(&f->lock);
  f->dev = dev;
  int fate = fault_decide(f, op, len, off);
  if (fate == 3) {
    f->held++;
    int held_in = f->cfg.mode;
    while (f->cfg.mode == held_in)
      pthread_cond_wait(&f->released, &f->lock);
    f->held--;
    fate = 0;
  }
  int r = 0;
  if (fate < 0) {
    pthread_mutex_unlock(&f->lock);
    return vd_set_error(EIO, "%s: injected I/O error at %llu",
                        vd_path(dev), (unsigned long long)off);
  }
  if (op == FAULT_WRITE && f->armed) {
    r = fault_record(f, dev, buf, len, off);
    if (r < 0) {
      pthread_mutex_unlock(&f->lock);
      return vd_set_error(-r, "%s: fault layer cannot record", vd_path(dev));
    }
  }
  if (op == FAULT_FLUSH && f->armed)
    fault_clear_recs(f);
  /* Writes are done under the lock so the record order is the real one. */
  switch (op) {
  case FAULT_READ:
    pthread_mutex_unlock(&f->lock);
    return vd_pread(dev, buf, len, off);
  case FAULT_WRITE:
    if (fate == 1)
      r = 0;
    else
      r = vd_pwrite(dev, buf, fate == 2 && len > 512 ? 512 : len, off, 0);
    pthread_mutex_unlock(&f->lock);
    return r;
  default:
    pthread_mutex_unlock(&f->lock);
    return vd_flush(dev);
  }
}

static uint64_t cut_rnd(uint64_t *x)
{
  *x ^= *x << 13;
  *x ^= *x >> 7;
  *x ^= *x << 17;
  return *x;
}

int vd_fault_powercut_ex(struct vd_fault *f, unsigned keep_percent,
                         unsigned flags, uint64_t seed)
{
  pthread_mutex_lock(&f->lock);
  int r = 0;
  size_t *order = NULL;
  if (f->nrec == 0)
    goto out;
  if (!f->dev) {
    /* Recorded writes, but the device they went to has closed. */
    r = vd_set_error(ENODEV, "power cut: the device written through the "
                     "fault layer is closed");
    fault_clear_recs(f);
    goto out;
  }
  order = malloc(f->nrec * sizeof *order);
  if (!order) {
    r = -ENOMEM;
    goto out;
  }
  /* Back to the state of the last flush... */
  for (size_t i = f->nrec; i-- > 0 && r == 0;)
    r = vd_pwrite(f->dev, f->rec[i].pre, f->rec[i].len, f->rec[i].off, 0);
  /* ...then the writes that made it to the medium anyway: in issue order,
   * or shuffled (a volatile cache writes back in any order). */
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
  for (size_t i = 0; i < f->nrec; i++)
    order[i] = i;
  if (flags & VD_FAULT_CUT_REORDER)
    for (size_t i = f->nrec; i > 1; i--) {
      size_t j = (size_t)(cut_rnd(&x) % i), t = order[i - 1];
      order[i - 1] = order[j];
      order[j] = t;
    }
  for (size_t k = 0; k < f->nrec && r == 0; k++) {
    const struct fault_rec *w = &f->rec[order[k]];
    if (keep_percent < 100 && cut_rnd(&x) % 100 >= keep_percent)
      continue;
    if (!(flags & VD_FAULT_CUT_TEAR) || cut_rnd(&x) % 2 == 0) {
      r = vd_pwrite(f->dev, w->data, w->len, w->off, 0);
      continue;
    }
    /* Torn: some of its sectors land, the others keep what was there. */
    for (size_t o = 0; o < w->len && r == 0; o += 512) {
      size_t n = w->len - o < 512 ? w->len - o : 512;
      if (cut_rnd(&x) % 2)
        r = vd_pwrite(f->dev, w->data + o, n, w->off + o, 0);
    }
  }
  fault_clear_recs(f);
out:
  free(order);
  f->armed = false;
  pthread_mutex_unlock(&f->lock);
  return r;
}

int vd_fault_powercut(struct vd_fault *f, unsigned keep_percent,
                      unsigned seed)
{
  return vd_fault_powercut_ex(f, keep_percent, 0, seed);
}

int vd_fault_corrupt(const char *path, uint64_t off, size_t len)
{
  struct vd_dev *dev;
  int r = vd_open(path, "raw", VD_OPEN_RDWR, &dev);
  if (r < 0)
    return r;
  uint8_t *b = malloc(len);
  if (!b) {
    vd_close(dev);
    return -ENOMEM;
  }
  r = vd_pread(dev, b, len, off);
  for (size_t i = 0; i < len && r == 0; i++)
    b[i] ^= 0xff;
  if (r == 0)
    r = vd_pwrite(dev, b, len, off, 0);
  free(b);
  int c = vd_close(dev);
  return r < 0 ? r : c;
}

/* ---- the filter driver ---- */

static int fault_open(struct vd_dev *dev)
{
  struct fault_dev *fd = dev->priv;
  fd->f = fault_lookup(dev->path);
  return 0;
}

static void fault_close(struct vd_dev *dev)
{
  struct fault_dev *fd = dev->priv;
  if (!fd->f)
    return;
  pthread_mutex_lock(&fd->f->lock);
  if (fd->f->dev == dev->below)
    fd->f->dev = NULL;
  pthread_mutex_unlock(&fd->f->lock);
  fault_unref(fd->f);
}

static int fault_pread(struct vd_dev *dev, void *buf, size_t len,
                       uint64_t off)
{
  struct fault_dev *fd = dev->priv;
  if (!fd->f)
    return vd_pread(dev->below, buf, len, off);
  return fault_io(fd->f, dev->below, FAULT_READ, buf, len, off);
}

/* FLAGS: the dispatcher turns FUA into a flush after the write, so it
 * never reaches a driver. */
static int fault_pwrite(struct vd_dev *dev, const void *buf, size_t len,
                        uint64_t off, unsigned flags)
{
  struct fault_dev *fd = dev->priv;
  if (!fd->f)
    return vd_pwrite(dev->below, buf, len, off, flags);
  return fault_io(fd->f, dev->below, FAULT_WRITE, (void *)buf, len, off);
}

static int fault_flush(struct vd_dev *dev)
{
  struct fault_dev *fd = dev->priv;
  if (!fd->f)
    return vd_flush(dev->below);
  return fault_io(fd->f, dev->below, FAULT_FLUSH, NULL, 0, 0);
}

static int fault_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                              struct vd_extent *ext)
{
  return vd_block_status(dev->below, off, len, ext);
}

/* No discard (advisory: dropped) and no write_zeroes (zeros are written
 * through fault_pwrite, so they fail, tear and are recorded like any
 * write). */
static const struct vd_driver fault_driver = {
  .name = "fault",
  /* Its state is the device's, shared by every connection. */
  .multi_conn = true,
  .priv_size = sizeof(struct fault_dev),
  .open = fault_open,
  .close = fault_close,
  .pread = fault_pread,
  .pwrite = fault_pwrite,
  .flush = fault_flush,
  .block_status = fault_block_status,
  .filter = true,
};

VD_REGISTER_DRIVER(fault_driver);
