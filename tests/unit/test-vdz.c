/* Unit tests for the vdz driver (vdisk/vdz.c) through the public API:
 * import from raw, reads (whole clusters, partial ones through the cache,
 * from many threads), extents, info, read-only errors, corruption of one
 * cluster, damaged headers and indexes, and the checker. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "vdisk/vdisk.h"
#include "vdisk/crc32c.h"
#include "vdisk/endian.h"

static char tmpdir[] = "/tmp/test-vdz.XXXXXX";
static char raw_path[256], vdz_path[256];

#define CS 32768u   /* the default cluster size */
/* 40 clusters and a partial one. */
#define SIZE ((uint64_t)40 * CS + 12288)

static uint8_t *expect;     /* the raw image's contents */

/* Cluster kinds, by index: compressible text, random, zero, and holes. */
static void fill_cluster(uint8_t *p, uint64_t c, size_t n)
{
  switch (c % 5) {
  case 0:
    for (size_t i = 0; i < n; i++)
      p[i] = "vdisk compresses well "[(i + c) % 22];
    break;
  case 1:
    for (size_t i = 0; i < n; i++)
      p[i] = (uint8_t)(rand() >> 7);
    break;
  case 2:       /* zeros written as data */
  case 4:       /* never written: a hole in the raw file */
    memset(p, 0, n);
    break;
  case 3:       /* mostly zero, with a few bytes */
    memset(p, 0, n);
    p[n / 2] = (uint8_t)c;
    p[n - 1] = 0xff;
    break;
  }
}

static void write_file(const char *path, const void *buf, size_t len,
                       off_t off)
{
  int fd = open(path, O_WRONLY);
  CU_ASSERT_FATAL(fd >= 0);
  CU_ASSERT_FATAL(pwrite(fd, buf, len, off) == (ssize_t)len);
  close(fd);
}

static void read_file(const char *path, void *buf, size_t len, off_t off)
{
  int fd = open(path, O_RDONLY);
  CU_ASSERT_FATAL(fd >= 0);
  CU_ASSERT_FATAL(pread(fd, buf, len, off) == (ssize_t)len);
  close(fd);
}

static void copy_file(const char *from, const char *to)
{
  char cmd[600];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
  CU_ASSERT_FATAL(system(cmd) == 0);
}

static uint64_t progress_done, progress_total;
static void progress_cb(void *opaque, uint64_t done, uint64_t total)
{
  CU_ASSERT(done >= progress_done);
  CU_ASSERT(done <= total);
  progress_done = done;
  progress_total = total;
}

static int import(const char *dst, const char *options)
{
  struct vd_dev *src;
  struct vd_create_args args = { .options = options };
  int r;

  CU_ASSERT_FATAL(vd_open(raw_path, "raw", 0, &src) == 0);
  progress_done = progress_total = 0;
  r = vd_import(dst, "vdz", src, &args, progress_cb, NULL);
  vd_close(src);
  return r;
}

static int suite_init(void)
{
  int fd;

  if (!mkdtemp(tmpdir))
    return -1;
  snprintf(raw_path, sizeof raw_path, "%s/disk.raw", tmpdir);
  snprintf(vdz_path, sizeof vdz_path, "%s/disk.vdz", tmpdir);
  expect = calloc(1, SIZE);
  fd = open(raw_path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (!expect || fd < 0 || ftruncate(fd, SIZE) < 0)
    return -1;
  srand(42);
  for (uint64_t c = 0; c * CS < SIZE; c++) {
    size_t n = SIZE - c * CS < CS ? SIZE - c * CS : CS;
    fill_cluster(expect + c * CS, c, n);
    if (c % 5 != 4 &&
        pwrite(fd, expect + c * CS, n, c * CS) != (ssize_t)n)
      return -1;
  }
  close(fd);
  return 0;
}

static int suite_clean(void)
{
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  free(expect);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_import_and_read(void)
{
  struct vd_dev *d;
  uint8_t *buf = malloc(SIZE);
  struct vd_info info;

  CU_ASSERT_FATAL(buf != NULL);
  CU_ASSERT_EQUAL_FATAL(import(vdz_path, NULL), 0);
  CU_ASSERT(progress_total > 0 && progress_done == progress_total);

  CU_ASSERT_EQUAL_FATAL(vd_open(vdz_path, NULL, 0, &d), 0);
  CU_ASSERT_STRING_EQUAL(vd_format(d), "vdz");
  CU_ASSERT_EQUAL(vd_size(d), SIZE);
  CU_ASSERT(vd_is_read_only(d));

  /* All at once, then cluster-straddling odd pieces. */
  memset(buf, 0xaa, SIZE);
  CU_ASSERT_EQUAL(vd_pread(d, buf, SIZE, 0), 0);
  CU_ASSERT(memcmp(buf, expect, SIZE) == 0);
  for (uint64_t off = 0; off < SIZE; off += 4999) {
    size_t n = SIZE - off < 70001 ? SIZE - off : 70001;
    memset(buf, 0xaa, n);
    CU_ASSERT_EQUAL(vd_pread(d, buf, n, off), 0);
    CU_ASSERT(memcmp(buf, expect + off, n) == 0);
  }
  /* The partial last cluster. */
  CU_ASSERT_EQUAL(vd_pread(d, buf, 100, SIZE - 100), 0);
  CU_ASSERT(memcmp(buf, expect + SIZE - 100, 100) == 0);

  CU_ASSERT_EQUAL(vd_get_info(d, &info), 0);
  {
    bool ratio = false;
    for (unsigned i = 0; i < info.nfields; i++)
      if (strcmp(info.fields[i].key, "compression_ratio") == 0)
        ratio = atof(info.fields[i].str) > 1.0;
    CU_ASSERT(ratio);
    CU_ASSERT_EQUAL(info.cluster_size, CS);
  }
  vd_close(d);
  free(buf);
}

static void test_extents(void)
{
  struct vd_dev *d;
  struct vd_extent e;
  uint64_t off = 0;

  CU_ASSERT_EQUAL_FATAL(vd_open(vdz_path, "vdz", 0, &d), 0);
  while (off < SIZE) {
    CU_ASSERT_EQUAL_FATAL(vd_block_status(d, off, SIZE - off, &e), 0);
    CU_ASSERT_EQUAL(e.offset, off);
    CU_ASSERT_FATAL(e.length > 0 && e.length <= SIZE - off);
    for (uint64_t p = off; p < off + e.length; p += CS) {
      uint64_t c = p / CS;
      bool zero = c % 5 == 2 || c % 5 == 4;
      CU_ASSERT_EQUAL(!!(e.flags & VD_EXT_ZERO), zero);
      CU_ASSERT_EQUAL(!!(e.flags & VD_EXT_HOLE), zero);
    }
    off += e.length;
  }
  /* Clipped to the request. */
  CU_ASSERT_EQUAL(vd_block_status(d, 2 * CS + 10, 100, &e), 0);
  CU_ASSERT_EQUAL(e.length, 100);
  vd_close(d);
}

static void test_read_only(void)
{
  struct vd_dev *d;
  uint8_t b[512] = { 0 };

  /* Even when asked for writing, the device is read-only, and writes
   * point at an overlay. */
  CU_ASSERT_EQUAL_FATAL(vd_open(vdz_path, NULL, VD_OPEN_RDWR, &d), 0);
  CU_ASSERT(vd_is_read_only(d));
  CU_ASSERT_EQUAL(vd_pwrite(d, b, sizeof b, 0, 0), -EROFS);
  CU_ASSERT(strstr(vd_error(), "overlay") != NULL);
  CU_ASSERT_EQUAL(vd_discard(d, 0, 512, 0), -EROFS);
  CU_ASSERT_EQUAL(vd_write_zeroes(d, 0, 512, 0), -EROFS);
  CU_ASSERT(strstr(vd_error(), "vdtool create -f vhd -b") != NULL);
  vd_close(d);
}

struct reader { struct vd_dev *d; unsigned seed; int bad; };

static void *reader_thread(void *arg)
{
  struct reader *r = arg;
  uint8_t buf[20000];

  for (int i = 0; i < 2000; i++) {
    uint64_t off = rand_r(&r->seed) % SIZE;
    size_t n = 1 + rand_r(&r->seed) % sizeof buf;
    if (n > SIZE - off)
      n = SIZE - off;
    if (vd_pread(r->d, buf, n, off) != 0 || memcmp(buf, expect + off, n))
      r->bad++;
  }
  return NULL;
}

static void test_threads(void)
{
  struct vd_dev *d;
  pthread_t t[8];
  struct reader r[8];

  CU_ASSERT_EQUAL_FATAL(vd_open(vdz_path, NULL, 0, &d), 0);
  for (int i = 0; i < 8; i++) {
    r[i] = (struct reader){ .d = d, .seed = (unsigned)i + 1 };
    CU_ASSERT_FATAL(pthread_create(&t[i], NULL, reader_thread, &r[i]) == 0);
  }
  for (int i = 0; i < 8; i++) {
    pthread_join(t[i], NULL);
    CU_ASSERT_EQUAL(r[i].bad, 0);
  }
  vd_close(d);
}

static void test_options(void)
{
  char path[300];
  struct vd_dev *d;
  uint8_t *buf = malloc(SIZE);

  snprintf(path, sizeof path, "%s/opt.vdz", tmpdir);
  CU_ASSERT_EQUAL(import(path, "cluster_size=4K,level=9,threads=3"), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(path, NULL, 0, &d), 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, SIZE, 0), 0);
  CU_ASSERT(memcmp(buf, expect, SIZE) == 0);
  vd_close(d);
  CU_ASSERT_EQUAL(import(path, "cluster_size=2M,threads=1"), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(path, NULL, 0, &d), 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, SIZE - 3, 3), 0);
  CU_ASSERT(memcmp(buf, expect + 3, SIZE - 3) == 0);
  vd_close(d);

  CU_ASSERT_EQUAL(import(path, "cluster_size=3000"), -EINVAL);
  CU_ASSERT_EQUAL(import(path, "cluster_size=4M"), -EINVAL);
  CU_ASSERT_EQUAL(import(path, "level=13"), -EINVAL);
  CU_ASSERT_EQUAL(import(path, "threads=0"), -EINVAL);
  CU_ASSERT_EQUAL(import(path, "colour=blue"), -EINVAL);
  free(buf);
}

/* Offsets of cluster C's index entry, stored offset and length. */
static void entry_of(const char *path, uint64_t c, uint64_t *entry_off,
                     uint64_t *off, uint32_t *len)
{
  uint8_t h[128], e[16];
  read_file(path, h, sizeof h, 0);
  *entry_off = vd_get_le64(h + 32) + 16 * c;
  read_file(path, e, sizeof e, (off_t)*entry_off);
  *off = vd_get_le64(e);
  *len = vd_get_le32(e + 8);
}

/* Clusters 10 and 11 are stored back to back, so a read of both takes
 * them with one read of the file; a corrupted 11 fails that read with
 * 11's error, and 10 alone still reads. */
static void test_corrupt_in_run(void)
{
  char path[300];
  struct vd_dev *d;
  uint8_t buf[3 * CS], x;
  uint64_t eoff, off10, off11;
  uint32_t len10, len11;

  snprintf(path, sizeof path, "%s/badrun.vdz", tmpdir);
  copy_file(vdz_path, path);
  entry_of(path, 10, &eoff, &off10, &len10);
  entry_of(path, 11, &eoff, &off11, &len11);
  CU_ASSERT_FATAL(len10 > 0 && len11 > 0 && off10 + len10 == off11);
  read_file(path, &x, 1, (off_t)(off11 + len11 - 1));
  x ^= 0x01;
  write_file(path, &x, 1, (off_t)(off11 + len11 - 1));

  CU_ASSERT_EQUAL_FATAL(vd_open(path, NULL, 0, &d), 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, 2 * CS, 10 * CS), -EIO);
  CU_ASSERT(strstr(vd_error(), "badrun.vdz: cluster 11 ") != NULL);
  CU_ASSERT(strchr(vd_error(), '\n') == NULL);
  CU_ASSERT_EQUAL(vd_pread(d, buf, 3 * CS, 9 * CS), -EIO);
  CU_ASSERT(strstr(vd_error(), "cluster 11 ") != NULL);
  CU_ASSERT_EQUAL(vd_pread(d, buf, CS, 10 * CS), 0);
  CU_ASSERT(memcmp(buf, expect + 10 * CS, CS) == 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, 2 * CS, 12 * CS), 0);
  CU_ASSERT(memcmp(buf, expect + 12 * CS, 2 * CS) == 0);
  vd_close(d);
}

static void test_corrupt_cluster(void)
{
  char path[300];
  struct vd_dev *d;
  uint8_t buf[3 * CS], x;
  uint64_t eoff, off;
  uint32_t len;
  char want[64];
  struct vd_check_report rep = { 0 };

  snprintf(path, sizeof path, "%s/bad.vdz", tmpdir);
  copy_file(vdz_path, path);
  entry_of(path, 10, &eoff, &off, &len);   /* compressible text */
  CU_ASSERT_FATAL(len > 0 && len < CS);
  read_file(path, &x, 1, (off_t)(off + len / 2));
  x ^= 0x10;
  write_file(path, &x, 1, (off_t)(off + len / 2));

  CU_ASSERT_EQUAL_FATAL(vd_open(path, NULL, 0, &d), 0);
  snprintf(want, sizeof want, "cluster 10 ");
  /* Whole cluster, a part of it, and a range across it: EIO. */
  CU_ASSERT_EQUAL(vd_pread(d, buf, CS, 10 * CS), -EIO);
  CU_ASSERT(strstr(vd_error(), want) != NULL);
  CU_ASSERT_EQUAL(vd_pread(d, buf, 100, 10 * CS + 5000), -EIO);
  CU_ASSERT(strstr(vd_error(), want) != NULL);
  CU_ASSERT_EQUAL(vd_pread(d, buf, 3 * CS, 9 * CS), -EIO);
  CU_ASSERT(strstr(vd_error(), want) != NULL);
  /* Its neighbours and the rest read. */
  CU_ASSERT_EQUAL(vd_pread(d, buf, CS, 9 * CS), 0);
  CU_ASSERT(memcmp(buf, expect + 9 * CS, CS) == 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, CS, 11 * CS), 0);
  CU_ASSERT(memcmp(buf, expect + 11 * CS, CS) == 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, 10, 9 * CS - 10), 0);
  CU_ASSERT(memcmp(buf, expect + 9 * CS - 10, 10) == 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, 1000, 11 * CS + 100), 0);
  CU_ASSERT(memcmp(buf, expect + 11 * CS + 100, 1000) == 0);
  vd_close(d);

  CU_ASSERT_EQUAL(vd_check(path, "vdz", 0, &rep), 0);
  CU_ASSERT_EQUAL(rep.corruptions, 1);
  CU_ASSERT_EQUAL(rep.total_clusters, 41);

  memset(&rep, 0, sizeof rep);
  CU_ASSERT_EQUAL(vd_check(vdz_path, "vdz", 0, &rep), 0);
  CU_ASSERT_EQUAL(rep.corruptions, 0);
  CU_ASSERT_EQUAL(rep.allocated_clusters, 41 - 16);
}

static void fix_crcs(const char *path)
{
  uint8_t h[128], *idx;
  uint64_t ioff, isize;

  read_file(path, h, sizeof h, 0);
  ioff = vd_get_le64(h + 32);
  isize = vd_get_le64(h + 40);
  idx = malloc(isize);
  read_file(path, idx, isize, (off_t)ioff);
  vd_put_le32(h + 76, vd_crc32c(0, idx, isize));
  vd_put_le32(h + 124, vd_crc32c(0, h, 124));
  write_file(path, h, sizeof h, 0);
  free(idx);
}

/* Damage PATH (a copy of the good image) with FN, then open must fail
 * with ERR and a message containing WHAT, and check must count it. */
static void expect_open_error(const char *path, int err, const char *what)
{
  struct vd_dev *d = NULL;
  struct vd_check_report rep = { 0 };

  CU_ASSERT_EQUAL(vd_open(path, "vdz", 0, &d), err);
  if (!strstr(vd_error(), what))
    fprintf(stderr, "\n  error '%s' lacks '%s'\n", vd_error(), what);
  CU_ASSERT(strstr(vd_error(), what) != NULL);
  CU_ASSERT(strchr(vd_error(), '\n') == NULL);
  vd_close(d);
  CU_ASSERT_EQUAL(vd_check(path, "vdz", 0, &rep), 0);
  CU_ASSERT(rep.corruptions > 0);
}

static void test_bad_images(void)
{
  char path[300];
  uint8_t h[128], e[16];
  uint64_t eoff, off;
  uint32_t len;

  snprintf(path, sizeof path, "%s/damaged.vdz", tmpdir);

  /* Truncated: the index is gone. */
  copy_file(vdz_path, path);
  CU_ASSERT_FATAL(truncate(path, 200000) == 0);
  expect_open_error(path, -EINVAL, "truncated");
  CU_ASSERT_FATAL(truncate(path, 50) == 0);
  expect_open_error(path, -EINVAL, "too short");

  /* Header bytes changed. */
  copy_file(vdz_path, path);
  read_file(path, h, sizeof h, 0);
  h[20] ^= 1;
  write_file(path, h, sizeof h, 0);
  expect_open_error(path, -EINVAL, "header checksum");

  /* Index bytes changed. */
  copy_file(vdz_path, path);
  entry_of(path, 3, &eoff, &off, &len);
  e[0] = 0x55;
  write_file(path, e, 1, (off_t)eoff + 5);
  expect_open_error(path, -EINVAL, "index checksum");

  /* Checksums right, but an entry points past the data / is too long /
   * a zero cluster has an offset. */
  copy_file(vdz_path, path);
  entry_of(path, 3, &eoff, &off, &len);
  vd_put_le64(e, UINT64_MAX - 10);
  vd_put_le32(e + 8, len);
  vd_put_le32(e + 12, 0);
  write_file(path, e, 16, (off_t)eoff);
  fix_crcs(path);
  expect_open_error(path, -EINVAL, "index entry 3:");

  copy_file(vdz_path, path);
  entry_of(path, 3, &eoff, &off, &len);
  vd_put_le64(e, off);
  vd_put_le32(e + 8, CS + 1);
  vd_put_le32(e + 12, 0);
  write_file(path, e, 16, (off_t)eoff);
  fix_crcs(path);
  expect_open_error(path, -EINVAL, "index entry 3:");

  copy_file(vdz_path, path);
  entry_of(path, 2, &eoff, &off, &len);
  CU_ASSERT(len == 0);
  vd_put_le64(e, 4096);
  vd_put_le32(e + 8, 0);
  vd_put_le32(e + 12, 0);
  write_file(path, e, 16, (off_t)eoff);
  fix_crcs(path);
  expect_open_error(path, -EINVAL, "index entry 2:");

  /* Header fields out of range, checksums right. */
  copy_file(vdz_path, path);
  read_file(path, h, sizeof h, 0);
  vd_put_le32(h + 12, 40);
  write_file(path, h, sizeof h, 0);
  fix_crcs(path);
  expect_open_error(path, -EINVAL, "cluster size");

  copy_file(vdz_path, path);
  read_file(path, h, sizeof h, 0);
  vd_put_le64(h + 24, UINT64_MAX / 8);   /* count * 16 overflows */
  write_file(path, h, sizeof h, 0);
  fix_crcs(path);
  expect_open_error(path, -EINVAL, "cluster count");

  copy_file(vdz_path, path);
  read_file(path, h, sizeof h, 0);
  vd_put_le64(h + 32, UINT64_MAX - 100);  /* index offset overflows */
  write_file(path, h, sizeof h, 0);
  vd_put_le32(h + 124, vd_crc32c(0, h, 124));
  write_file(path, h, sizeof h, 0);
  expect_open_error(path, -EINVAL, "past the end");

  copy_file(vdz_path, path);
  read_file(path, h, sizeof h, 0);
  vd_put_le32(h + 8, 2);
  vd_put_le32(h + 124, vd_crc32c(0, h, 124));
  write_file(path, h, sizeof h, 0);
  expect_open_error(path, -ENOTSUP, "version 2");
}

int main(void)
{
  CU_pSuite s;
  unsigned fails;

  if (CU_initialize_registry() != CUE_SUCCESS)
    return 1;
  s = CU_add_suite("vdz", suite_init, suite_clean);
  CU_add_test(s, "import from raw and read back", test_import_and_read);
  CU_add_test(s, "extents: zero clusters are holes", test_extents);
  CU_add_test(s, "read-only with EROFS", test_read_only);
  CU_add_test(s, "concurrent reads", test_threads);
  CU_add_test(s, "import options", test_options);
  CU_add_test(s, "corrupted cluster: EIO for it only", test_corrupt_cluster);
  CU_add_test(s, "corrupted cluster in a coalesced read: its own error",
              test_corrupt_in_run);
  CU_add_test(s, "damaged header and index", test_bad_images);
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  CU_cleanup_registry();
  return fails ? 1 : 0;
}
