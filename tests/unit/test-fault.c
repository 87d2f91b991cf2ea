/* Unit tests for the fault filter (tests/unit/fault.c) over plain images:
 * it is selected by the open option `filter` only, stacks over any format,
 * injects errors and counts I/O, and a power cut rolls a VHD back to its
 * last flush.  (test-raid.c drives it under RAID members.) */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/vdisk.h"
#include "tests/unit/fault.h"

#define MIB (1024u * 1024)

static char tmpdir[256];

static void path_of(char *buf, size_t len, const char *name)
{
  snprintf(buf, len, "%s/%s", tmpdir, name);
}

static void make_image(const char *path, const char *format, uint64_t size)
{
  struct vd_create_args ca = { .size = size };
  int r = vd_create(path, format, &ca);
  if (r < 0)
    fprintf(stderr, "create %s: %s\n", path, vd_error());
  CU_ASSERT_FATAL(r == 0);
}

/* Create the FORMAT image NAME (PATH gets its path), attach a fault to it
 * and open it writable through the filter (OPEN_FORMAT: the format asked
 * for, NULL to probe). */
static struct vd_fault *fault_image(char *path, size_t plen, const char *name,
                                    const char *format,
                                    const char *open_format, uint64_t size,
                                    struct vd_dev **dev)
{
  path_of(path, plen, name);
  make_image(path, format, size);
  struct vd_fault *f = vd_fault_attach(path);
  CU_ASSERT_FATAL(f != NULL);
  struct vd_open_args a = { .format = open_format, .flags = VD_OPEN_RDWR,
                            .filter = "fault" };
  CU_ASSERT_FATAL(vd_open_opts(path, &a, dev) == 0);
  /* Filters are not formats: the device still says what the image is. */
  CU_ASSERT_STRING_EQUAL(vd_format(*dev), format);
  return f;
}

struct flusher {
  struct vd_dev *dev;
  int ret;
};

static void *flush_fn(void *p)
{
  struct flusher *fl = p;
  fl->ret = vd_flush(fl->dev);
  return NULL;
}

/* The core's flushes (dev.c dev_flush, as qemu's bdrv_co_flush): a flush
 * with nothing written since the last successful one reaches no driver;
 * every write-type request and FUA counts; flushes that arrive while one
 * runs share the next one.  Counted at the filter, i.e. the top device's
 * driver. */
static void test_flush_coalescing(void)
{
  char path[300];
  struct vd_dev *dev;
  struct vd_fault *f = fault_image(path, sizeof path, "flush.img", "raw",
                                   "raw", 1 * MIB, &dev);
  uint8_t b[4096];
  memset(b, 0x33, sizeof b);
  CU_ASSERT(vd_flush(dev) == 0);          /* the first one always goes */
  uint64_t n = vd_fault_flushes(f);
  CU_ASSERT(n == 1);
  CU_ASSERT(vd_flush(dev) == 0);          /* nothing new: no driver flush */
  CU_ASSERT(vd_fault_flushes(f) == n);
  CU_ASSERT(vd_pread(dev, b, sizeof b, 0) == 0);   /* reads change nothing */
  CU_ASSERT(vd_flush(dev) == 0);
  CU_ASSERT(vd_fault_flushes(f) == n);
  CU_ASSERT(vd_pwrite(dev, b, sizeof b, 0, 0) == 0);
  CU_ASSERT(vd_flush(dev) == 0);
  CU_ASSERT(vd_fault_flushes(f) == ++n);
  CU_ASSERT(vd_write_zeroes(dev, 8192, 4096, 0) == 0);
  CU_ASSERT(vd_flush(dev) == 0);
  CU_ASSERT(vd_fault_flushes(f) == ++n);
  CU_ASSERT(vd_discard(dev, 8192, 4096, 0) == 0);  /* the filter has no */
  CU_ASSERT(vd_flush(dev) == 0);                    /* discard: nothing */
  CU_ASSERT(vd_fault_flushes(f) == n);              /* changed */
  CU_ASSERT(vd_pwrite(dev, b, sizeof b, 0, VD_REQ_FUA) == 0);
  CU_ASSERT(vd_fault_flushes(f) == ++n);  /* FUA: its own flush */
  CU_ASSERT(vd_flush(dev) == 0);          /* ... which covers it */
  CU_ASSERT(vd_fault_flushes(f) == n);
  /* A failed driver flush covers nothing: the next flush asks again. */
  CU_ASSERT(vd_pwrite(dev, b, sizeof b, 0, 0) == 0);
  struct vd_fault_cfg gone = { .mode = VD_FAULT_FAIL_ALL };
  vd_fault_set(f, &gone);
  CU_ASSERT(vd_flush(dev) == -EIO);
  struct vd_fault_cfg none = { .mode = VD_FAULT_NONE };
  vd_fault_set(f, &none);
  n = vd_fault_flushes(f);
  CU_ASSERT(vd_flush(dev) == 0);
  CU_ASSERT(vd_fault_flushes(f) == ++n);

  /* Concurrent: A's driver flush is held; the writes after it began are
   * not covered by it, so B and C (arriving during it or after) need one
   * more driver flush, and share it. */
  CU_ASSERT(vd_pwrite(dev, b, sizeof b, 0, 0) == 0);
  struct vd_fault_cfg hold = { .mode = VD_FAULT_HOLD_FLUSH };
  vd_fault_set(f, &hold);
  n = vd_fault_flushes(f);
  struct flusher fa = { .dev = dev }, fb = { .dev = dev }, fc = { .dev = dev };
  pthread_t ta, tb, tc;
  CU_ASSERT_FATAL(pthread_create(&ta, NULL, flush_fn, &fa) == 0);
  for (int i = 0; i < 10000 && vd_fault_held(f) == 0; i++)
    usleep(1000);
  CU_ASSERT_FATAL(vd_fault_held(f) == 1);
  CU_ASSERT(vd_pwrite(dev, b, sizeof b, 4096, 0) == 0);
  CU_ASSERT(vd_pwrite(dev, b, sizeof b, 8192, 0) == 0);
  CU_ASSERT_FATAL(pthread_create(&tb, NULL, flush_fn, &fb) == 0);
  CU_ASSERT_FATAL(pthread_create(&tc, NULL, flush_fn, &fc) == 0);
  usleep(50000);
  vd_fault_set(f, &none);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  pthread_join(tc, NULL);
  CU_ASSERT(fa.ret == 0 && fb.ret == 0 && fc.ret == 0);
  CU_ASSERT(vd_fault_flushes(f) == n + 2);
  CU_ASSERT(vd_close(dev) == 0);
  vd_fault_detach(f);
  CU_ASSERT(unlink(path) == 0);
}

/* The Nth read of a raw image fails with -EIO through the layer and the
 * counter counts every read and write; without the option the same file
 * is untouched by the layer. */
static void test_raw_read_error(void)
{
  char path[300];
  struct vd_dev *dev;
  struct vd_fault *f = fault_image(path, sizeof path, "raw.img", "raw", "raw",
                                   1 * MIB, &dev);
  CU_ASSERT(vd_size(dev) == 1 * MIB);
  struct vd_fault_cfg fc = { .mode = VD_FAULT_FAIL_NTH, .nth = 2,
                             .reads = true };
  vd_fault_set(f, &fc);
  uint64_t before = vd_fault_count(f);
  uint8_t b[4096];
  memset(b, 0x5a, sizeof b);
  CU_ASSERT(vd_pwrite(dev, b, sizeof b, 0, 0) == 0);  /* not a read */
  CU_ASSERT(vd_pread(dev, b, sizeof b, 0) == 0);      /* read 1 */
  CU_ASSERT(vd_pread(dev, b, sizeof b, 8192) == -EIO); /* read 2 */
  CU_ASSERT(strstr(vd_error(), "injected") != NULL);
  CU_ASSERT(vd_pread(dev, b, sizeof b, 0) == 0);      /* not sticky */
  CU_ASSERT(vd_fault_count(f) == before + 4);
  /* A failed range: only reads touching it fail. */
  struct vd_fault_cfg range = { .mode = VD_FAULT_FAIL_RANGE, .reads = true,
                                .start = 65536, .end = 65537 };
  vd_fault_set(f, &range);
  CU_ASSERT(vd_pread(dev, b, sizeof b, 65536 - 4096) == 0);
  CU_ASSERT(vd_pread(dev, b, 1, 65536) == -EIO);
  CU_ASSERT(vd_pwrite(dev, b, sizeof b, 65536, 0) == 0);
  CU_ASSERT(vd_fault_count(f) == before + 7);
  CU_ASSERT(vd_close(dev) == 0);

  /* Opened without the option: no layer, nothing counted. */
  vd_fault_set(f, &(struct vd_fault_cfg){ .mode = VD_FAULT_FAIL_ALL });
  CU_ASSERT_FATAL(vd_open(path, "raw", 0, &dev) == 0);
  CU_ASSERT(vd_pread(dev, b, sizeof b, 65536) == 0);
  CU_ASSERT(vd_close(dev) == 0);
  CU_ASSERT(vd_fault_count(f) == before + 7);
  vd_fault_detach(f);
  unlink(path);
}

/* A power cut on a VHD written through the layer: every write since the
 * last flush is lost (keep 0) or kept (keep 100); flushed data stays. */
static void vhd_cut(unsigned keep)
{
  char path[300];
  struct vd_dev *dev;
  struct vd_fault *f = fault_image(path, sizeof path, "cut.vhd", "vpc", NULL,
                                   4 * MIB, &dev);
  uint8_t a[8192], b[8192], got[8192], zero[8192] = { 0 };
  memset(a, 0xa1, sizeof a);
  memset(b, 0xb2, sizeof b);
  CU_ASSERT(vd_pwrite(dev, a, sizeof a, 0, 0) == 0);
  CU_ASSERT(vd_flush(dev) == 0);
  vd_fault_powercut_arm(f, true);
  CU_ASSERT(vd_pwrite(dev, b, sizeof b, 4096, 0) == 0);     /* over a */
  CU_ASSERT(vd_pwrite(dev, b, sizeof b, 3 * MIB, 0) == 0);  /* new block */
  CU_ASSERT(vd_fault_powercut(f, keep, 1) == 0);
  CU_ASSERT(vd_close(dev) == 0);
  vd_fault_detach(f);

  CU_ASSERT_FATAL(vd_open(path, "vpc", 0, &dev) == 0);
  CU_ASSERT(vd_pread(dev, got, 4096, 0) == 0);
  CU_ASSERT(memcmp(got, a, 4096) == 0);
  /* [4096, 12288): b if kept, else a's second half then never written. */
  CU_ASSERT(vd_pread(dev, got, sizeof got, 4096) == 0);
  if (keep == 100) {
    CU_ASSERT(memcmp(got, b, sizeof got) == 0);
  } else {
    CU_ASSERT(memcmp(got, a, 4096) == 0);
    CU_ASSERT(memcmp(got + 4096, zero, 4096) == 0);
  }
  CU_ASSERT(vd_pread(dev, got, sizeof got, 3 * MIB) == 0);
  CU_ASSERT(memcmp(got, keep == 100 ? b : zero, sizeof got) == 0);
  CU_ASSERT(vd_close(dev) == 0);
  unlink(path);
}

static void test_vhd_powercut(void)
{
  vhd_cut(0);
  vhd_cut(100);
}

/* The filter is selected by the option only: never by format name, and
 * an unknown filter is refused. */
static void test_selection(void)
{
  char path[300];
  path_of(path, sizeof path, "sel.img");
  make_image(path, "raw", 1 * MIB);
  struct vd_dev *dev = NULL;
  CU_ASSERT(vd_open(path, "fault", 0, &dev) == -EINVAL);
  struct vd_open_args a = { .format = "raw", .filter = "nosuch" };
  CU_ASSERT(vd_open_opts(path, &a, &dev) == -EINVAL);
  a.filter = "raw";   /* a format is not a filter */
  CU_ASSERT(vd_open_opts(path, &a, &dev) == -EINVAL);
  unlink(path);
}

int main(void)
{
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(tmpdir, sizeof tmpdir, "%s/vdfault.XXXXXX", base);
  if (!mkdtemp(tmpdir))
    return 99;
  static const struct cu_test tests[] = {
    { "read error on a raw image, counted", test_raw_read_error },
    { "power cut on a VHD", test_vhd_powercut },
    { "selected by the open option only", test_selection },
    { "core: flushes coalesce", test_flush_coalescing },
    { NULL, NULL }
  };
  int rc = cu_main("fault", tests);
  if (rmdir(tmpdir) != 0)
    return 99;
  return rc;
}
