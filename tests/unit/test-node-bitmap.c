/* Unit tests for named dirty bitmaps on a node (vdisk/node-bitmap.c) and
 * their side file (vdisk/bitmap-file.c): recording through the node's
 * write observers, granularity limits, clear/hold/remove, the persistent
 * round trip, "in use" at an unclean stop reported inconsistent, and
 * corrupt, hostile or mismatched files refused with a clear error.
 * Images are raw files in a temporary folder. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/bitmap-file.h"
#include "vdisk/vdisk.h"

#define MB (1024 * 1024)
#define IMG_SIZE (8 * MB)

static char tmpdir[] = "/tmp/vdbitmap.XXXXXX";
static char img[256], side[280];

static void make_image(void)
{
  int fd = open(img, O_RDWR | O_CREAT | O_TRUNC, 0600);
  CU_ASSERT_FATAL(fd >= 0);
  CU_ASSERT_FATAL(ftruncate(fd, IMG_SIZE) == 0);
  close(fd);
  unlink(side);
}

static struct vd_node *open_node(bool rw)
{
  struct vd_open_args oa = { .format = "raw",
                             .flags = rw ? VD_OPEN_RDWR : 0 };
  struct vd_dev *dev;
  struct vd_node *node;
  CU_ASSERT_FATAL(vd_open_opts(img, &oa, &dev) == 0);
  CU_ASSERT_FATAL(vd_node_new(dev, &node) == 0);
  return node;
}

static void close_node(struct vd_node *node)
{
  CU_ASSERT_EQUAL(vd_node_bitmaps_detach(node), 0);
  CU_ASSERT_EQUAL(vd_node_free(node), 0);
}

/* The info of NAME on NODE (fails the test if absent). */
static struct vd_bitmap_info info(struct vd_node *node, const char *name)
{
  struct vd_bitmap_info *v, r = { .granularity = 0 };
  size_t n;
  CU_ASSERT_FATAL(vd_node_bitmap_list(node, &v, &n) == 0);
  for (size_t i = 0; i < n; i++)
    if (strcmp(v[i].name, name) == 0)
      r = v[i];
  free(v);
  CU_ASSERT(r.granularity != 0);
  return r;
}

static bool st_dirty(struct vd_node *node, const char *name, uint64_t off,
                     uint64_t *len)
{
  bool d = false;
  CU_ASSERT_EQUAL(vd_node_bitmap_status(node, name, off, IMG_SIZE - off, &d,
                                        len), 0);
  return d;
}

static uint8_t *slurp(const char *path, size_t *len)
{
  FILE *f = fopen(path, "rb");
  uint8_t *b = malloc(1 << 20);
  CU_ASSERT_FATAL(f && b);
  *len = fread(b, 1, 1 << 20, f);
  fclose(f);
  return b;
}

static void spit(const char *path, const uint8_t *b, size_t len)
{
  FILE *f = fopen(path, "wb");
  CU_ASSERT_FATAL(f != NULL);
  CU_ASSERT(fwrite(b, 1, len, f) == len);
  fclose(f);
}

static int flags_cb(void *opaque, const struct vd_bmfile_entry *e)
{
  *(uint32_t *)opaque |= e->flags;
  return 0;
}

/* The union of the flags of the bitmaps in the side file. */
static uint32_t side_flags(void)
{
  size_t len;
  uint8_t *b = slurp(side, &len);
  uint32_t f = 0;
  CU_ASSERT_EQUAL(vd_bmfile_parse(b, len, side, flags_cb, &f), 0);
  free(b);
  return f;
}

static void test_recording(void)
{
  struct vd_node *node;
  char buf[4096];
  uint64_t len;

  make_image();
  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "b", 0, 0), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "b", 0, 0), -EEXIST);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "off", 0, VD_BITMAP_DISABLED), 0);
  CU_ASSERT_EQUAL(info(node, "b").granularity, 65536);
  CU_ASSERT_EQUAL(info(node, "b").count, 0);
  CU_ASSERT_TRUE(info(node, "b").recording);
  CU_ASSERT_FALSE(info(node, "off").recording);

  memset(buf, 7, sizeof buf);
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 4096, MB + 100, 0), 0);
  CU_ASSERT_EQUAL(info(node, "b").count, 65536);
  CU_ASSERT_FALSE(st_dirty(node, "b", 0, &len));
  CU_ASSERT_EQUAL(len, MB);
  CU_ASSERT_TRUE(st_dirty(node, "b", MB, &len));
  CU_ASSERT_EQUAL(len, 65536);
  CU_ASSERT_FALSE(st_dirty(node, "b", MB + 65536, &len));
  CU_ASSERT_EQUAL(len, IMG_SIZE - MB - 65536);
  /* A write across a granule boundary dirties both. */
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 2, 3 * MB - 1, 0), 0);
  CU_ASSERT_EQUAL(info(node, "b").count, 3 * 65536);
  /* Discard and write-zeroes change data too. */
  CU_ASSERT_EQUAL(vd_node_write_zeroes(node, 5 * MB, 65536, 0), 0);
  int r = vd_node_discard(node, 6 * MB, 65536, 0);
  CU_ASSERT(r == 0 || r == -ENOTSUP);
  CU_ASSERT_EQUAL(info(node, "b").count, 5 * 65536);
  CU_ASSERT_EQUAL(vd_node_flush(node), 0);
  CU_ASSERT_EQUAL(info(node, "b").count, 5 * 65536);
  /* The disabled one saw nothing; enabled, it records. */
  CU_ASSERT_EQUAL(info(node, "off").count, 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_enable(node, "off", true), 0);
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 512, 0, 0), 0);
  CU_ASSERT_EQUAL(info(node, "off").count, 65536);
  CU_ASSERT_EQUAL(vd_node_bitmap_enable(node, "off", false), 0);
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 512, 7 * MB, 0), 0);
  CU_ASSERT_EQUAL(info(node, "off").count, 65536);
  /* Merge: b |= off. */
  CU_ASSERT_EQUAL(vd_node_bitmap_merge(node, "b", "off"), 0);
  CU_ASSERT_TRUE(st_dirty(node, "b", 0, &len));
  CU_ASSERT_EQUAL(vd_node_bitmap_enable(node, "nope", true), -ENOENT);
  /* Nothing persistent: no side file. */
  close_node(node);
  CU_ASSERT_NOT_EQUAL(access(side, F_OK), 0);
}

static void test_granularity(void)
{
  struct vd_node *node;
  make_image();
  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "g512", 512, 0), 0);
  CU_ASSERT_EQUAL(info(node, "g512").granularity, 512);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "g2g", 1u << 31, 0), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "g256", 256, 0), -EINVAL);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "g3m", 3 * MB, 0), -EINVAL);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "", 0, 0), -EINVAL);
  char longname[VD_BITMAP_NAME_MAX + 2];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, longname, 0, 0), -EINVAL);
  longname[VD_BITMAP_NAME_MAX] = 0;
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, longname, 0, 0), 0);
  char buf[512] = { 1 };
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 512, 1024, 0), 0);
  CU_ASSERT_EQUAL(info(node, "g512").count, 512);
  CU_ASSERT_EQUAL(info(node, "g2g").count, IMG_SIZE);  /* clipped */
  close_node(node);
}

static void test_clear_hold_remove(void)
{
  struct vd_node *node;
  char buf[512] = { 1 };
  make_image();
  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "b", 0, 0), 0);
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 512, 0, 0), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_hold(node, "b"), 0);
  CU_ASSERT_TRUE(info(node, "b").busy);
  CU_ASSERT_EQUAL(vd_node_bitmap_clear(node, "b"), -EBUSY);
  CU_ASSERT_EQUAL(vd_node_bitmap_remove(node, "b"), -EBUSY);
  vd_node_bitmap_release(node, "b");
  CU_ASSERT_EQUAL(vd_node_bitmap_clear(node, "b"), 0);
  CU_ASSERT_EQUAL(info(node, "b").count, 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_remove(node, "b"), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_remove(node, "b"), -ENOENT);
  CU_ASSERT_EQUAL(vd_node_bitmap_hold(node, "b"), -ENOENT);
  /* Written after the remove: nothing records, nothing crashes. */
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 512, 0, 0), 0);
  close_node(node);
}

static void test_persistent_roundtrip(void)
{
  struct vd_node *node;
  char buf[4096] = { 3 };
  uint64_t len;

  make_image();
  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), 0);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), -EEXIST);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "keep", 4096,
                                     VD_BITMAP_PERSISTENT), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "idle", 0,
                                     VD_BITMAP_PERSISTENT |
                                     VD_BITMAP_DISABLED), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "tmp", 0, 0), 0);
  /* In the file, in use, as soon as added: before any write. */
  CU_ASSERT_EQUAL(access(side, F_OK), 0);
  CU_ASSERT(side_flags() & VD_BMFILE_IN_USE);
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 4096, 2 * MB, 0), 0);
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 100, 4 * MB + 5000, 0), 0);
  close_node(node);
  /* A clean close: no bitmap in use any more. */
  CU_ASSERT_FALSE(side_flags() & VD_BMFILE_IN_USE);
  struct stat st;
  CU_ASSERT_EQUAL(stat(side, &st), 0);
  CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);

  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), 0);
  struct vd_bitmap_info k = info(node, "keep");
  CU_ASSERT_EQUAL(k.granularity, 4096);
  CU_ASSERT_EQUAL(k.count, 2 * 4096);
  CU_ASSERT_TRUE(k.persistent);
  CU_ASSERT_TRUE(k.recording);
  CU_ASSERT_FALSE(k.inconsistent);
  CU_ASSERT_FALSE(info(node, "idle").recording);
  CU_ASSERT_TRUE(st_dirty(node, "keep", 2 * MB, &len));
  CU_ASSERT_EQUAL(len, 4096);
  CU_ASSERT_TRUE(st_dirty(node, "keep", 4 * MB + 4096, &len));
  CU_ASSERT_EQUAL(len, 4096);
  /* The non-persistent one is gone. */
  CU_ASSERT_EQUAL(vd_node_bitmap_hold(node, "tmp"), -ENOENT);
  /* Open read-write again: in use on disk, and it still records. */
  CU_ASSERT(side_flags() & VD_BMFILE_IN_USE);
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 1, 0, 0), 0);
  CU_ASSERT_EQUAL(info(node, "keep").count, 3 * 4096);
  /* Removing the last persistent ones removes the file. */
  CU_ASSERT_EQUAL(vd_node_bitmap_remove(node, "keep"), 0);
  CU_ASSERT_EQUAL(access(side, F_OK), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_remove(node, "idle"), 0);
  CU_ASSERT_NOT_EQUAL(access(side, F_OK), 0);
  close_node(node);
  CU_ASSERT_NOT_EQUAL(access(side, F_OK), 0);
}

static void test_unclean_inconsistent(void)
{
  struct vd_node *node;
  char buf[512] = { 9 };
  uint8_t *crash;
  size_t clen;
  uint64_t len;
  bool d;

  make_image();
  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "b", 0, VD_BITMAP_PERSISTENT), 0);
  CU_ASSERT_EQUAL(vd_node_pwrite(node, buf, 512, MB, 0), 0);
  /* What a kill -9 leaves: the file as it is while serving. */
  crash = slurp(side, &clen);
  close_node(node);
  spit(side, crash, clen);
  free(crash);

  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), 0);
  struct vd_bitmap_info b = info(node, "b");
  CU_ASSERT_TRUE(b.inconsistent);
  CU_ASSERT_FALSE(b.recording);
  CU_ASSERT_EQUAL(vd_node_bitmap_hold(node, "b"), -EINVAL);
  CU_ASSERT_EQUAL(vd_node_bitmap_status(node, "b", 0, 512, &d, &len),
                  -EINVAL);
  CU_ASSERT_EQUAL(vd_node_bitmap_clear(node, "b"), -EINVAL);
  CU_ASSERT_EQUAL(vd_node_bitmap_enable(node, "b", true), -EINVAL);
  close_node(node);
  /* A clean close does not make it consistent again. */
  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), 0);
  CU_ASSERT_TRUE(info(node, "b").inconsistent);
  CU_ASSERT_EQUAL(vd_node_bitmap_remove(node, "b"), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "b", 0, VD_BITMAP_PERSISTENT), 0);
  CU_ASSERT_FALSE(info(node, "b").inconsistent);
  close_node(node);
  CU_ASSERT_FALSE(side_flags() & VD_BMFILE_IN_USE);
}

static void test_read_only(void)
{
  struct vd_node *node;
  uint8_t *before, *after;
  size_t lb, la;

  make_image();
  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "b", 0, VD_BITMAP_PERSISTENT), 0);
  close_node(node);
  before = slurp(side, &lb);
  node = open_node(false);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), 0);
  CU_ASSERT_FALSE(info(node, "b").inconsistent);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "p", 0, VD_BITMAP_PERSISTENT),
                  -EROFS);
  close_node(node);
  after = slurp(side, &la);
  CU_ASSERT_TRUE(la == lb && memcmp(before, after, la) == 0);
  free(before);
  free(after);
}

/* Attach must fail with -EINVAL and a message naming the file. */
static void expect_refused(const uint8_t *b, size_t len, int err)
{
  struct vd_node *node;
  spit(side, b, len);
  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), err);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), ".bitmaps"));
  /* Refused whole: no bitmap, and the file left as it was. */
  struct vd_bitmap_info *v;
  size_t n;
  CU_ASSERT_EQUAL(vd_node_bitmap_list(node, &v, &n), 0);
  CU_ASSERT_EQUAL(n, 0);
  free(v);
  CU_ASSERT_EQUAL(vd_node_free(node), 0);
  size_t l2;
  uint8_t *now = slurp(side, &l2);
  CU_ASSERT_TRUE(l2 == len && memcmp(now, b, len) == 0);
  free(now);
}

static void test_corrupt(void)
{
  struct vd_node *node;
  uint8_t *good, *b;
  size_t len;

  make_image();
  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), 0);
  CU_ASSERT_EQUAL(vd_node_bitmap_add(node, "b", 0, VD_BITMAP_PERSISTENT), 0);
  close_node(node);
  good = slurp(side, &len);
  b = malloc(len + 1);

  for (size_t i = 0; i < len; i += 7) {   /* any flipped byte */
    memcpy(b, good, len);
    b[i] ^= 0x40;
    expect_refused(b, len, -EINVAL);
  }
  expect_refused(good, len - 1, -EINVAL);          /* truncated */
  memcpy(b, good, len);
  b[len] = 0;
  expect_refused(b, len + 1, -EINVAL);             /* extended */
  expect_refused(good, 10, -EINVAL);
  expect_refused(good, 0, -EINVAL);

  /* A well-formed file for another size of image. */
  struct vd_bmfile_entry e = { .name = "b", .name_len = 1, .flags = 2,
                               .granularity = 65536, .size = IMG_SIZE * 2 };
  uint8_t bits[32] = { 0 };
  e.data = bits;
  uint64_t el = vd_bmfile_encoded_len(&e, 1);
  uint8_t *f = malloc(el);
  vd_bmfile_encode(f, &e, 1);
  expect_refused(f, (size_t)el, -EINVAL);
  free(f);

  /* A symlink at the side file's name is never followed. */
  char target[300];
  snprintf(target, sizeof target, "%s/elsewhere", tmpdir);
  spit(target, good, len);
  unlink(side);
  CU_ASSERT_EQUAL(symlink(target, side), 0);
  node = open_node(true);
  CU_ASSERT_EQUAL(vd_node_bitmaps_attach(node, img), -ELOOP);
  CU_ASSERT_EQUAL(vd_node_free(node), 0);
  unlink(side);
  unlink(target);
  free(b);
  free(good);
}

int main(void)
{
  static const struct cu_test tests[] = {
    { "recording through the node", test_recording },
    { "granularity and names", test_granularity },
    { "clear, hold, remove", test_clear_hold_remove },
    { "persistent round trip", test_persistent_roundtrip },
    { "unclean stop: inconsistent", test_unclean_inconsistent },
    { "read-only image", test_read_only },
    { "corrupt or hostile side file", test_corrupt },
    { NULL, NULL },
  };
  if (!mkdtemp(tmpdir))
    return 99;
  snprintf(img, sizeof img, "%s/disk.raw", tmpdir);
  snprintf(side, sizeof side, "%s.bitmaps", img);
  int r = cu_main("node-bitmap", tests);
  unlink(side);
  unlink(img);
  rmdir(tmpdir);
  return r;
}
