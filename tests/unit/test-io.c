/* Unit tests for the I/O layer: complete transfers, zeros past EOF,
 * direct mode with aligned, unaligned and batched requests, hole
 * punching, zeroing, SEEK_DATA extents, image locks, and a failed flush
 * that stays failed (for the file and for a VHD above it). */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/driver.h"
#include "vdisk/endian.h"
#include "vdisk/io.h"
#include "vdisk/vdisk.h"

/* This program's fdatasync interposes on libc's for libvdisk (a shared
 * library resolves it through the executable first): a test sets
 * fail_fdatasync to N and the Nth call from now fails with EIO, once,
 * as the kernel reports a lost write-back once and then forgets it. */
static int fail_fdatasync;
static int fdatasync_calls;

int
fdatasync(int fd)
{
  fdatasync_calls++;
  if (fail_fdatasync > 0 && --fail_fdatasync == 0) {
    errno = EIO;
    return -1;
  }
  return (int)syscall(SYS_fdatasync, fd);
}

static char tmpdir[] = "/tmp/vdunit-io.XXXXXX";

static char *
tmp_path(const char *name)
{
  static char buf[256];
  snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
  return buf;
}

static void
fill(uint8_t *b, size_t n, unsigned seed)
{
  for (size_t i = 0; i < n; i++)
    b[i] = (uint8_t)(i * 31 + seed + (i >> 9));
}

static void
test_rw_eof(void)
{
  struct vd_file *f;
  uint8_t w[10000], r[12000];
  CU_ASSERT_EQUAL_FATAL(vd_file_open(tmp_path("a"), VD_FILE_RDWR |
                                     VD_FILE_CREATE, &f), 0);
  fill(w, sizeof w, 1);
  CU_ASSERT_EQUAL(vd_file_pwrite(f, w, sizeof w, 100), 0);
  uint64_t size;
  CU_ASSERT_EQUAL(vd_file_size(f, &size), 0);
  CU_ASSERT_EQUAL(size, 10100);
  memset(r, 0xff, sizeof r);
  /* Reading across EOF gives the data, then zeros. */
  CU_ASSERT_EQUAL(vd_file_pread(f, r, sizeof r, 100), 0);
  CU_ASSERT_EQUAL(memcmp(r, w, sizeof w), 0);
  CU_ASSERT_EQUAL(r[sizeof w], 0);
  CU_ASSERT_EQUAL(r[sizeof r - 1], 0);
  CU_ASSERT_EQUAL(vd_file_flush(f), 0);
  CU_ASSERT_FALSE(vd_file_is_blockdev(f));
  CU_ASSERT_TRUE(vd_file_writable(f));
  vd_file_close(f);
}

static void
test_direct(void)
{
  struct vd_file *f;
  size_t big = 3u << 20;
  int r = vd_file_open(tmp_path("d"), VD_FILE_RDWR | VD_FILE_CREATE |
                       VD_FILE_DIRECT, &f);
  if (r == -ENOTSUP) {  /* e.g. tmpfs: nothing to test here */
    fprintf(stderr, "O_DIRECT not supported in %s, skipped\n", tmpdir);
    return;
  }
  CU_ASSERT_EQUAL_FATAL(r, 0);
  CU_ASSERT_TRUE(vd_file_is_direct(f));
  uint32_t a = vd_file_align(f);
  CU_ASSERT_TRUE(a >= 512 && (a & (a - 1)) == 0);
  CU_ASSERT_EQUAL(vd_file_truncate(f, 8u << 20), 0);

  /* Large aligned: goes through libaio in 1 MiB pieces. */
  uint8_t *w = vd_alloc_aligned(big), *rd = vd_alloc_aligned(big + 8192);
  CU_ASSERT_FATAL(w && rd);
  fill(w, big, 7);
  CU_ASSERT_EQUAL(vd_file_pwrite(f, w, big, 1u << 20), 0);
  CU_ASSERT_EQUAL(vd_file_pread(f, rd, big, 1u << 20), 0);
  CU_ASSERT_EQUAL(memcmp(w, rd, big), 0);

  /* Unaligned buffer, offset and length: bounce buffer with RMW that
   * keeps the neighbouring bytes. */
  uint8_t small[777];
  fill(small, sizeof small, 99);
  CU_ASSERT_EQUAL(vd_file_pwrite(f, small, sizeof small, (1u << 20) + 5), 0);
  CU_ASSERT_EQUAL(vd_file_pread(f, rd + 3, 4096, 1u << 20), 0);
  CU_ASSERT_EQUAL(memcmp(rd + 3, w, 5), 0);
  CU_ASSERT_EQUAL(memcmp(rd + 3 + 5, small, sizeof small), 0);
  CU_ASSERT_EQUAL(memcmp(rd + 3 + 5 + sizeof small, w + 5 + sizeof small,
                         4096 - 5 - sizeof small), 0);

  /* A batch of aligned requests. */
  struct vd_file_req reqs[4];
  for (int i = 0; i < 4; i++) {
    reqs[i] = (struct vd_file_req){ .buf = rd + (size_t)i * 8192, .len = 8192,
                                    .off = (uint64_t)i * 65536, .write = false };
  }
  memcpy(rd, w, 4 * 8192);
  for (int i = 0; i < 4; i++)
    reqs[i].write = true;
  CU_ASSERT_EQUAL(vd_file_batch(f, reqs, 4), 0);
  memset(rd, 0, 4 * 8192);
  for (int i = 0; i < 4; i++)
    reqs[i].write = false;
  CU_ASSERT_EQUAL(vd_file_batch(f, reqs, 4), 0);
  CU_ASSERT_EQUAL(memcmp(rd, w, 4 * 8192), 0);
  vd_free_aligned(w);
  vd_free_aligned(rd);
  vd_file_close(f);
}

static void
test_punch_zero_extent(void)
{
  struct vd_file *f;
  uint8_t w[65536], r[65536];
  bool data;
  uint64_t len;
  CU_ASSERT_EQUAL_FATAL(vd_file_open(tmp_path("p"), VD_FILE_RDWR |
                                     VD_FILE_CREATE, &f), 0);
  CU_ASSERT_EQUAL(vd_file_truncate(f, 4u << 20), 0);
  fill(w, sizeof w, 3);
  CU_ASSERT_EQUAL(vd_file_pwrite(f, w, sizeof w, 1u << 20), 0);
  CU_ASSERT_EQUAL(vd_file_extent(f, 0, 4u << 20, &data, &len), 0);
  CU_ASSERT_FALSE(data);
  CU_ASSERT_EQUAL(len, 1u << 20);
  CU_ASSERT_EQUAL(vd_file_extent(f, 1u << 20, 4u << 20, &data, &len), 0);
  CU_ASSERT_TRUE(data);
  CU_ASSERT_EQUAL(len, sizeof w);
  /* Past the last data: hole to the end. */
  CU_ASSERT_EQUAL(vd_file_extent(f, 3u << 20, 1u << 20, &data, &len), 0);
  CU_ASSERT_FALSE(data);
  CU_ASSERT_EQUAL(len, 1u << 20);

  CU_ASSERT_EQUAL(vd_file_punch(f, (1u << 20) + 4096, 8192), 0);
  CU_ASSERT_EQUAL(vd_file_pread(f, r, sizeof r, 1u << 20), 0);
  CU_ASSERT_EQUAL(memcmp(r, w, 4096), 0);
  CU_ASSERT_TRUE(r[4096] == 0 && r[4096 + 8191] == 0);
  CU_ASSERT_EQUAL(memcmp(r + 12288, w + 12288, sizeof w - 12288), 0);

  /* Zero, keeping allocation, and the fallback path (odd range). */
  CU_ASSERT_EQUAL(vd_file_zero(f, (1u << 20) + 100, 1000, true, false), 0);
  CU_ASSERT_EQUAL(vd_file_pread(f, r, sizeof r, 1u << 20), 0);
  CU_ASSERT_EQUAL(memcmp(r, w, 100), 0);
  CU_ASSERT_TRUE(r[100] == 0 && r[1099] == 0);
  CU_ASSERT_EQUAL(memcmp(r + 1100, w + 1100, 4096 - 1100), 0);
  CU_ASSERT_EQUAL(vd_file_zero(f, 1u << 20, 65536, false, false), 0);
  CU_ASSERT_EQUAL(vd_file_pread(f, r, sizeof r, 1u << 20), 0);
  uint8_t z[65536] = { 0 };
  CU_ASSERT_EQUAL(memcmp(r, z, sizeof r), 0);
  vd_file_close(f);
}

static void
test_locks(void)
{
  struct vd_file *w1, *w2, *r1, *r2, *nl;
  char *p = tmp_path("lock");
  CU_ASSERT_EQUAL_FATAL(vd_file_open(p, VD_FILE_RDWR | VD_FILE_CREATE, &w1),
                        0);
  /* A second writer and a reader are refused with a message naming the
   * image and the way out. */
  CU_ASSERT_EQUAL(vd_file_open(p, VD_FILE_RDWR, &w2), -EBUSY);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "lock"));
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "vdunit-io"));
  CU_ASSERT_EQUAL(vd_file_open(p, 0, &r1), -EBUSY);
  /* Opening without locks is allowed (-U). */
  CU_ASSERT_EQUAL(vd_file_open(p, VD_FILE_NOLOCK, &nl), 0);
  vd_file_close(nl);
  /* A refused O_TRUNC open does not truncate. */
  uint8_t b = 7;
  CU_ASSERT_EQUAL(vd_file_pwrite(w1, &b, 1, 0), 0);
  CU_ASSERT_EQUAL(vd_file_open(p, VD_FILE_RDWR | VD_FILE_TRUNC, &w2), -EBUSY);
  uint64_t size = 0;
  CU_ASSERT_EQUAL(vd_file_size(w1, &size), 0);
  CU_ASSERT_EQUAL(size, 1);
  vd_file_close(w1);
  /* Readers share; a writer is refused while they hold it. */
  CU_ASSERT_EQUAL_FATAL(vd_file_open(p, 0, &r1), 0);
  CU_ASSERT_EQUAL_FATAL(vd_file_open(p, 0, &r2), 0);
  CU_ASSERT_EQUAL(vd_file_open(p, VD_FILE_RDWR, &w2), -EBUSY);
  vd_file_close(r1);
  vd_file_close(r2);
  CU_ASSERT_EQUAL(vd_file_open(p, VD_FILE_RDWR, &w2), 0);
  vd_file_close(w2);
}

static void
test_open_errors(void)
{
  struct vd_file *f;
  CU_ASSERT_EQUAL(vd_file_open(tmp_path("none"), 0, &f), -ENOENT);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "none"));
  CU_ASSERT_EQUAL(vd_file_open(tmpdir, 0, &f), -EISDIR);
  CU_ASSERT_EQUAL(vd_file_open("/dev/null", 0, &f), -EINVAL);
  CU_ASSERT_EQUAL(vd_file_open(tmp_path("a"), VD_FILE_RDWR | VD_FILE_CREATE |
                               VD_FILE_EXCL, &f), -EEXIST);
}

/* Once a flush failed, every later flush of that file fails too: the
 * kernel may have dropped the dirty pages and cleared the error, so a
 * later fdatasync that "succeeds" proves nothing. */
static void
test_flush_sticky(void)
{
  struct vd_file *f;
  uint8_t b[4096];
  CU_ASSERT_EQUAL_FATAL(vd_file_open(tmp_path("sticky"), VD_FILE_RDWR |
                                     VD_FILE_CREATE, &f), 0);
  fill(b, sizeof b, 5);
  CU_ASSERT_EQUAL(vd_file_pwrite(f, b, sizeof b, 0), 0);
  CU_ASSERT_EQUAL(vd_file_flush(f), 0);
  CU_ASSERT_EQUAL(vd_file_pwrite(f, b, sizeof b, 4096), 0);
  fail_fdatasync = 1;
  CU_ASSERT_EQUAL(vd_file_flush(f), -EIO);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "sticky"));
  /* The next fdatasync would succeed; the flush must not. */
  CU_ASSERT_EQUAL(fail_fdatasync, 0);
  CU_ASSERT_EQUAL(vd_file_flush(f), -EIO);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "earlier"));
  CU_ASSERT_EQUAL(vd_file_pwrite(f, b, sizeof b, 8192), 0);
  CU_ASSERT_EQUAL(vd_file_flush(f), -EIO);
  vd_file_close(f);
  /* A new open of the file starts afresh (what qemu does too). */
  CU_ASSERT_EQUAL_FATAL(vd_file_open(tmp_path("sticky"), VD_FILE_RDWR, &f),
                        0);
  CU_ASSERT_EQUAL(vd_file_flush(f), 0);
  vd_file_close(f);
}

/* A dynamic VHD whose first flush fails: no later flush (nor the close)
 * may report success, and the BAT on disk must never reference the
 * block whose data may have been lost. */
static void
test_flush_sticky_vhd(void)
{
  char *p = tmp_path("sticky.vhd");
  struct vd_create_args args = { .size = 8u << 20,
                                 .options = "block_size=512K" };
  struct vd_dev *dev;
  uint8_t b[65536];
  CU_ASSERT_EQUAL_FATAL(vd_create(p, "vpc", &args), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(p, "vpc", VD_OPEN_RDWR, &dev), 0);
  fill(b, sizeof b, 9);
  CU_ASSERT_EQUAL(vd_pwrite(dev, b, sizeof b, 0, 0), 0);
  fail_fdatasync = 1;
  CU_ASSERT_EQUAL(vd_flush(dev), -EIO);
  CU_ASSERT_EQUAL(vd_flush(dev), -EIO);
  CU_ASSERT_EQUAL(vd_pwrite(dev, b, sizeof b, 1u << 20, VD_REQ_FUA), -EIO);
  CU_ASSERT_EQUAL(vd_flush(dev), -EIO);
  CU_ASSERT_EQUAL(vd_close(dev), -EIO);

  /* The BAT (right after footer and header) is still empty. */
  struct vd_file *f;
  uint8_t bat[8];
  CU_ASSERT_EQUAL_FATAL(vd_file_open(p, 0, &f), 0);
  CU_ASSERT_EQUAL(vd_file_pread(f, bat, sizeof bat, 1536), 0);
  CU_ASSERT_EQUAL(vd_get_be32(bat), 0xFFFFFFFFu);
  CU_ASSERT_EQUAL(vd_get_be32(bat + 4), 0xFFFFFFFFu);
  vd_file_close(f);
}

/* A FIFO reaching vd_file_open (swapped in after a caller's stat) is
 * refused at once instead of blocking the open (issue 10 item 9).  The
 * alarm turns a hang into a failure. */
static void
test_open_fifo(void)
{
  struct vd_file *f = NULL;
  char *p = tmp_path("fifo");
  CU_ASSERT_EQUAL_FATAL(mkfifo(p, 0600), 0);
  alarm(20);
  CU_ASSERT_EQUAL(vd_file_open(p, 0, &f), -EINVAL);
  CU_ASSERT_EQUAL(vd_file_open(p, VD_FILE_RDWR, &f), -EINVAL);
  alarm(0);
  CU_ASSERT_PTR_NULL(f);
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "rw_eof", test_rw_eof },
    { "direct", test_direct },
    { "punch_zero_extent", test_punch_zero_extent },
    { "locks", test_locks },
    { "open_errors", test_open_errors },
    { "flush_sticky", test_flush_sticky },
    { "flush_sticky_vhd", test_flush_sticky_vhd },
    { "open_fifo", test_open_fifo },
    { NULL, NULL }
  };
  if (!mkdtemp(tmpdir))
    return 99;
  int r = cu_main("io", tests);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  if (system(cmd) != 0)
    r = r ? r : 99;
  return r;
}
