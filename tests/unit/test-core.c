/* Unit tests for the libvdisk core: size parsing, overflow and endian
 * helpers, option strings, thread-local errors, probing and the
 * dispatcher's checks (bounds, read-only, flags). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/driver.h"
#include "vdisk/endian.h"
#include "vdisk/vdisk.h"

static char tmpdir[] = "/tmp/vdunit.XXXXXX";

static void
test_parse_size(void)
{
  uint64_t v = 0;
  CU_ASSERT_EQUAL(vd_parse_size("0", &v), 0); CU_ASSERT_EQUAL(v, 0);
  CU_ASSERT_EQUAL(vd_parse_size("512", &v), 0); CU_ASSERT_EQUAL(v, 512);
  CU_ASSERT_EQUAL(vd_parse_size("64K", &v), 0); CU_ASSERT_EQUAL(v, 65536);
  CU_ASSERT_EQUAL(vd_parse_size("64k", &v), 0); CU_ASSERT_EQUAL(v, 65536);
  CU_ASSERT_EQUAL(vd_parse_size("1M", &v), 0); CU_ASSERT_EQUAL(v, 1048576);
  CU_ASSERT_EQUAL(vd_parse_size("1G", &v), 0); CU_ASSERT_EQUAL(v, 1ULL << 30);
  CU_ASSERT_EQUAL(vd_parse_size("2T", &v), 0); CU_ASSERT_EQUAL(v, 2ULL << 40);
  CU_ASSERT_EQUAL(vd_parse_size("1.5G", &v), 0);
  CU_ASSERT_EQUAL(v, 3ULL << 29);
  CU_ASSERT_EQUAL(vd_parse_size("1GiB", &v), 0); CU_ASSERT_EQUAL(v, 1ULL << 30);
  CU_ASSERT_EQUAL(vd_parse_size("100B", &v), 0); CU_ASSERT_EQUAL(v, 100);
  CU_ASSERT_EQUAL(vd_parse_size("15E", &v), 0); CU_ASSERT_EQUAL(v, 15ULL << 60);
  /* Bad input: unknown suffix, garbage, overflow, fractional bytes. */
  CU_ASSERT_EQUAL(vd_parse_size("12Q", &v), -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "12Q"));
  CU_ASSERT_EQUAL(vd_parse_size("", &v), -EINVAL);
  CU_ASSERT_EQUAL(vd_parse_size("K", &v), -EINVAL);
  CU_ASSERT_EQUAL(vd_parse_size("-1", &v), -EINVAL);
  CU_ASSERT_EQUAL(vd_parse_size("1GX", &v), -EINVAL);
  CU_ASSERT_EQUAL(vd_parse_size("16E", &v), -ERANGE);
  CU_ASSERT_EQUAL(vd_parse_size("99999999999999999999", &v), -ERANGE);
  CU_ASSERT_EQUAL(vd_parse_size("1.5", &v), -EINVAL);
  CU_ASSERT_EQUAL(vd_parse_size(NULL, &v), -EINVAL);
}

static void
test_format_size(void)
{
  char b[32];
  CU_ASSERT_STRING_EQUAL(vd_format_size(0, b, sizeof b), "0 B");
  CU_ASSERT_STRING_EQUAL(vd_format_size(1024, b, sizeof b), "1 KiB");
  CU_ASSERT_STRING_EQUAL(vd_format_size(1ULL << 30, b, sizeof b), "1 GiB");
  CU_ASSERT_STRING_EQUAL(vd_format_size(3ULL << 29, b, sizeof b), "1.5 GiB");
}

static void
test_overflow(void)
{
  uint64_t r;
  CU_ASSERT_FALSE(vd_add_overflow(1, 2, &r)); CU_ASSERT_EQUAL(r, 3);
  CU_ASSERT_TRUE(vd_add_overflow(UINT64_MAX, 1, &r));
  CU_ASSERT_TRUE(vd_mul_overflow(1ULL << 32, 1ULL << 32, &r));
  CU_ASSERT_FALSE(vd_mul_overflow(1ULL << 31, 1ULL << 32, &r));
  CU_ASSERT_TRUE(vd_range_ok(0, 10, 10));
  CU_ASSERT_FALSE(vd_range_ok(1, 10, 10));
  CU_ASSERT_FALSE(vd_range_ok(UINT64_MAX, 2, UINT64_MAX));
  CU_ASSERT_FALSE(vd_range_ok(11, 0, 10));
  CU_ASSERT_TRUE(vd_is_pow2(4096));
  CU_ASSERT_FALSE(vd_is_pow2(0));
  CU_ASSERT_FALSE(vd_is_pow2(3));
  CU_ASSERT_EQUAL(vd_round_up(513, 512), 1024);
  CU_ASSERT_EQUAL(vd_round_down(1023, 512), 512);
}

static void
test_endian(void)
{
  uint8_t b[8];
  vd_put_be32(b, 0x01020304);
  CU_ASSERT(b[0] == 1 && b[3] == 4);
  CU_ASSERT_EQUAL(vd_get_be32(b), 0x01020304);
  vd_put_le32(b, 0x01020304);
  CU_ASSERT(b[0] == 4 && b[3] == 1);
  CU_ASSERT_EQUAL(vd_get_le32(b), 0x01020304);
  vd_put_be64(b, 0x0102030405060708ULL);
  CU_ASSERT(b[0] == 1 && b[7] == 8);
  CU_ASSERT_EQUAL(vd_get_be64(b), 0x0102030405060708ULL);
  vd_put_le64(b, 0x0102030405060708ULL);
  CU_ASSERT(b[0] == 8 && b[7] == 1);
  CU_ASSERT_EQUAL(vd_get_le64(b), 0x0102030405060708ULL);
  vd_put_be16(b, 0xABCD);
  CU_ASSERT_EQUAL(vd_get_be16(b), 0xABCD);
  vd_put_le16(b, 0xABCD);
  CU_ASSERT_EQUAL(vd_get_le16(b), 0xABCD);
}

static void
test_options(void)
{
  char v[16];
  static const char *const known[] = { "a", "bb", NULL };
  CU_ASSERT_EQUAL(vd_opt_get("a=1,bb=two", "bb", v, sizeof v), 1);
  CU_ASSERT_STRING_EQUAL(v, "two");
  CU_ASSERT_EQUAL(vd_opt_get("a=1,a=3", "a", v, sizeof v), 1);
  CU_ASSERT_STRING_EQUAL(v, "3");
  CU_ASSERT_EQUAL(vd_opt_get("a=1", "b", v, sizeof v), 0);
  CU_ASSERT_EQUAL(vd_opt_get(NULL, "b", v, sizeof v), 0);
  CU_ASSERT_EQUAL(vd_opt_get("a=0123456789abcdefXYZ", "a", v, sizeof v),
                  -EINVAL);
  CU_ASSERT_EQUAL(vd_opt_check("a=1,bb=2", known, "x"), 0);
  CU_ASSERT_EQUAL(vd_opt_check("a=1,c=2", known, "img"), -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "'c'"));
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "img"));
}

static void *
error_thread(void *arg)
{
  /* A fresh thread starts with no message, and its own does not leak. */
  *(int *)arg = vd_error()[0] == '\0';
  vd_set_error(EIO, "other thread");
  return NULL;
}

static void
test_errors(void)
{
  CU_ASSERT_EQUAL(vd_set_error(ENOENT, "disk.vhd: BAT entry %d", 17),
                  -ENOENT);
  CU_ASSERT_STRING_EQUAL(vd_error(), "disk.vhd: BAT entry 17");
  CU_ASSERT_EQUAL(vd_prefix_error(EIO, "array"), -EIO);
  CU_ASSERT_STRING_EQUAL(vd_error(), "array: disk.vhd: BAT entry 17");
  vd_set_error(EIO, "line1\nline2");
  CU_ASSERT_PTR_NULL(strchr(vd_error(), '\n'));   /* always one line */
  int clean = 0;
  pthread_t t;
  vd_set_error(EIO, "mine");
  pthread_create(&t, NULL, error_thread, &clean);
  pthread_join(t, NULL);
  CU_ASSERT_TRUE(clean);
  CU_ASSERT_STRING_EQUAL(vd_error(), "mine");
  vd_clear_error();
  CU_ASSERT_STRING_EQUAL(vd_error(), "");
}

static char *
tmp_path(const char *name)
{
  static char buf[256];
  snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
  return buf;
}

static void
test_probe(void)
{
  struct vd_dev *d;
  int r;
  char *p = tmp_path("probe.img");
  int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  CU_ASSERT_FATAL(fd >= 0);
  CU_ASSERT_EQUAL(ftruncate(fd, 1 << 20), 0);
  close(fd);
  CU_ASSERT_EQUAL(vd_open(p, NULL, 0, &d), 0);
  CU_ASSERT_STRING_EQUAL(vd_format(d), "raw");
  CU_ASSERT_EQUAL(vd_size(d), 1 << 20);
  vd_close(d);
  /* -f overrides probing; an unknown format is refused by name. */
  CU_ASSERT_EQUAL(vd_open(p, "raw", 0, &d), 0);
  vd_close(d);
  r = vd_open(p, "nosuchformat", 0, &d);
  CU_ASSERT_EQUAL(r, -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "nosuchformat"));
  /* A missing file and a directory name the object. */
  r = vd_open(tmp_path("missing.img"), NULL, 0, &d);
  CU_ASSERT_EQUAL(r, -ENOENT);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "missing.img"));
  r = vd_open(tmpdir, NULL, 0, &d);
  CU_ASSERT_EQUAL(r, -EISDIR);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "directory"));
  r = vd_open(tmpdir, "raw", 0, &d);
  CU_ASSERT_EQUAL(r, -EISDIR);
  r = vd_open(p, NULL, 0x1000, &d);
  CU_ASSERT_EQUAL(r, -EINVAL);
}

static void
test_dispatcher(void)
{
  struct vd_dev *d, *ro;
  struct vd_extent e;
  char buf[4096] = { 1 };
  char *p = tmp_path("disp.img");
  struct vd_create_args a = { .size = 1 << 20 };

  CU_ASSERT_EQUAL_FATAL(vd_create(p, "raw", &a), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(p, NULL, VD_OPEN_RDWR, &d), 0);
  /* In range works; the last byte is reachable. */
  CU_ASSERT_EQUAL(vd_pwrite(d, buf, 1, (1 << 20) - 1, 0), 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, 1, (1 << 20) - 1), 0);
  CU_ASSERT_EQUAL(buf[0], 1);
  /* Past the end: reads EINVAL, writes ENOSPC (NBD's rules). */
  CU_ASSERT_EQUAL(vd_pread(d, buf, 2, (1 << 20) - 1), -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "disp.img"));
  CU_ASSERT_EQUAL(vd_pwrite(d, buf, 2, (1 << 20) - 1, 0), -ENOSPC);
  CU_ASSERT_EQUAL(vd_write_zeroes(d, 1 << 20, 1, 0), -ENOSPC);
  CU_ASSERT_EQUAL(vd_discard(d, 0, (1 << 20) + 1, 0), -EINVAL);
  CU_ASSERT_EQUAL(vd_block_status(d, 1 << 20, 1, &e), -EINVAL);
  CU_ASSERT_EQUAL(vd_block_status(d, 0, 0, &e), -EINVAL);
  /* offset + length overflowing 64 bits is caught, not wrapped. */
  CU_ASSERT_EQUAL(vd_pread(d, buf, 16, UINT64_MAX - 8), -EINVAL);
  CU_ASSERT_EQUAL(vd_write_zeroes(d, UINT64_MAX - 8, 16, 0), -ENOSPC);
  /* Unknown flags are refused. */
  CU_ASSERT_EQUAL(vd_pwrite(d, buf, 1, 0, 0x80), -EINVAL);
  CU_ASSERT_EQUAL(vd_write_zeroes(d, 0, 1, 0x80), -EINVAL);
  /* Zero-length requests are no-ops. */
  CU_ASSERT_EQUAL(vd_pread(d, buf, 0, 1 << 20), 0);
  /* FUA and write-zeroes flags pass. */
  CU_ASSERT_EQUAL(vd_pwrite(d, buf, 512, 0, VD_REQ_FUA), 0);
  CU_ASSERT_EQUAL(vd_write_zeroes(d, 0, 4096, VD_REQ_NO_HOLE), 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, 4096, 0), 0);
  CU_ASSERT_TRUE(buf[0] == 0 && buf[4095] == 0);
  CU_ASSERT_EQUAL(vd_flush(d), 0);
  CU_ASSERT_EQUAL(vd_close(d), 0);

  /* Read-only: every write-type request is EROFS; the file is unchanged. */
  CU_ASSERT_EQUAL_FATAL(vd_open(p, NULL, 0, &ro), 0);
  CU_ASSERT_TRUE(vd_is_read_only(ro));
  CU_ASSERT_EQUAL(vd_pwrite(ro, buf, 1, 0, 0), -EROFS);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "read-only"));
  CU_ASSERT_EQUAL(vd_write_zeroes(ro, 0, 1, 0), -EROFS);
  CU_ASSERT_EQUAL(vd_discard(ro, 0, 4096, 0), -EROFS);
  CU_ASSERT_EQUAL(vd_flush(ro), 0);
  vd_close(ro);
}

static void
test_raw_block_status(void)
{
  struct vd_dev *d;
  struct vd_extent e;
  char buf[65536];
  char *p = tmp_path("bs.img");
  struct vd_create_args a = { .size = 4 << 20 };

  memset(buf, 0x5a, sizeof buf);
  CU_ASSERT_EQUAL_FATAL(vd_create(p, "raw", &a), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(p, NULL, VD_OPEN_RDWR, &d), 0);
  CU_ASSERT_EQUAL(vd_pwrite(d, buf, sizeof buf, 1 << 20, 0), 0);
  CU_ASSERT_EQUAL(vd_block_status(d, 0, 4 << 20, &e), 0);
  CU_ASSERT_EQUAL(e.flags, VD_EXT_HOLE | VD_EXT_ZERO);
  CU_ASSERT_EQUAL(e.length, 1 << 20);
  CU_ASSERT_EQUAL(vd_block_status(d, 1 << 20, 3 << 20, &e), 0);
  CU_ASSERT_EQUAL(e.flags, 0);
  CU_ASSERT_EQUAL(e.length, sizeof buf);
  CU_ASSERT_EQUAL(e.host_offset, 1 << 20);
  /* Discard punches: the range becomes a zero hole. */
  CU_ASSERT_EQUAL(vd_discard(d, 1 << 20, sizeof buf, 0), 0);
  CU_ASSERT_EQUAL(vd_block_status(d, 1 << 20, 3 << 20, &e), 0);
  CU_ASSERT_EQUAL(e.flags, VD_EXT_HOLE | VD_EXT_ZERO);
  CU_ASSERT_EQUAL(vd_pread(d, buf, 16, 1 << 20), 0);
  CU_ASSERT_EQUAL(buf[0], 0);
  vd_close(d);
}

static void
test_create_errors(void)
{
  struct vd_create_args a = { .size = 1 << 20, .options = "bogus=1" };
  CU_ASSERT_EQUAL(vd_create(tmp_path("c.img"), "raw", &a), -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "bogus"));
  a.options = "preallocation=maybe";
  CU_ASSERT_EQUAL(vd_create(tmp_path("c.img"), "raw", &a), -EINVAL);
  a.options = "preallocation=full";
  CU_ASSERT_EQUAL(vd_create(tmp_path("c.img"), "raw", &a), 0);
  a.options = NULL;
  CU_ASSERT_EQUAL(vd_create(tmp_path("c.img"), "nosuch", &a), -EINVAL);
  CU_ASSERT_EQUAL(vd_create(tmp_path("nodir/c.img"), "raw", &a), -ENOENT);
}

/* The probe guard (qemu's rule) through the public API. */
static void
test_probe_guard(void)
{
  struct vd_dev *d;
  char *p = tmp_path("guard.img");
  struct vd_create_args a = { .size = 1 << 20 };
  uint8_t sec[512] = { 0 };

  CU_ASSERT_EQUAL_FATAL(vd_create(p, "raw", &a), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open_opts(p, NULL, &d), 0);
  CU_ASSERT_TRUE(vd_probed_raw(d));
  CU_ASSERT_EQUAL(vd_pwrite(d, "conectix", 8, 0, 0), -EROFS);  /* read-only */
  vd_close(d);

  struct vd_open_args oa = { .flags = VD_OPEN_RDWR };
  CU_ASSERT_EQUAL_FATAL(vd_open_opts(p, &oa, &d), 0);
  CU_ASSERT_TRUE(vd_probed_raw(d));
  CU_ASSERT_EQUAL(vd_pwrite(d, "conectix", 8, 0, 0), -EPERM);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "probe as 'vpc'"));
  CU_ASSERT_EQUAL(vd_pwrite(d, "conectix", 8, (1 << 20) - 512, 0), -EPERM);
  CU_ASSERT_EQUAL(vd_pwrite(d, "conectix", 8, (1 << 20) - 511, 0), -EPERM);
  /* Two halves: the second sees the first. */
  CU_ASSERT_EQUAL(vd_pwrite(d, "conec", 5, 0, 0), 0);
  CU_ASSERT_EQUAL(vd_pwrite(d, "tix", 3, 5, 0), -EPERM);
  /* Outside the probed areas, and harmless data inside them, is fine. */
  CU_ASSERT_EQUAL(vd_pwrite(d, "conectix", 8, 8192, 0), 0);
  sec[510] = 0x55;
  sec[511] = 0xaa;
  CU_ASSERT_EQUAL(vd_pwrite(d, sec, 512, 0, 0), 0);
  CU_ASSERT_EQUAL(vd_write_zeroes(d, 0, 4096, 0), 0);
  CU_ASSERT_EQUAL(vd_discard(d, 0, 1 << 20, 0), 0);
  vd_close(d);

  oa.format = "raw";
  CU_ASSERT_EQUAL_FATAL(vd_open_opts(p, &oa, &d), 0);
  CU_ASSERT_FALSE(vd_probed_raw(d));
  CU_ASSERT_EQUAL(vd_pwrite(d, "conectix", 8, 0, 0), 0);
  vd_close(d);

  oa.parent_policy = 7;
  CU_ASSERT_EQUAL(vd_open_opts(p, &oa, &d), -EINVAL);
}

/* Special files never open (and never block), with or without a format. */
static void
test_open_special(void)
{
  struct vd_dev *d;
  char *p = tmp_path("fifo.img");
  CU_ASSERT_EQUAL_FATAL(mkfifo(p, 0600), 0);
  CU_ASSERT_EQUAL(vd_open(p, NULL, 0, &d), -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "not a regular file"));
  CU_ASSERT_EQUAL(vd_open(p, "raw", VD_OPEN_RDWR, &d), -EINVAL);
  CU_ASSERT_EQUAL(vd_open(p, "vpc", 0, &d), -EINVAL);
  CU_ASSERT_EQUAL(vd_open("/dev/null", "raw", 0, &d), -EINVAL);
  unlink(p);
}

/* NBD URIs: recognised by scheme only where the operator names an image
 * (vd_open), never in a parent path read out of an image; a container
 * format over a URI is refused before any connection; the nbd driver
 * refuses a path that is not an operator's URI. */
static void
test_nbd_uri(void)
{
  static const char *const yes[] = {
    "nbd://localhost/x", "NBD://h:10809/", "nbds://h/e?tls-psk-file=/k",
    "nbd+unix:///e?socket=/s", "nbds+unix:///?socket=/s",
    "nbd+vsock://2/e", "nbds+vsock://2:10809/e", NULL
  };
  static const char *const no[] = {
    "", "nbd:", "nbd:/x", "nbd:localhost:10809", "./nbd://x", "/nbd://x",
    "nbd+tcp://h/", "nbdx://h/", "snbd://h/", "disk.img", NULL
  };
  for (const char *const *u = yes; *u; u++)
    CU_ASSERT_TRUE(vd_is_nbd_uri(*u));
  for (const char *const *u = no; *u; u++)
    CU_ASSERT_FALSE(vd_is_nbd_uri(*u));
  CU_ASSERT_FALSE(vd_is_nbd_uri(NULL));

  struct vd_dev *d;
  /* -f vpc over a URI: refused before connecting (there is no server). */
  CU_ASSERT_EQUAL(vd_open("nbd+unix:///?socket=/nonexistent/s", "vpc", 0,
                          &d), -ENOTSUP);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "not as 'vpc'"));
  /* A connection that cannot be made is an error naming the URI. */
  CU_ASSERT(vd_open("nbd+unix:///?socket=/nonexistent/s", NULL, 0, &d) < 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "nbd+unix:///?socket="));
  /* -f nbd on a file name: the driver never opens what is not a URI. */
  char *p = tmp_path("plain.img");
  struct vd_create_args a = { .size = 1 << 20 };
  CU_ASSERT_EQUAL_FATAL(vd_create(p, "raw", &a), 0);
  CU_ASSERT_EQUAL(vd_open(p, "nbd", 0, &d), -EPERM);
  /* As a parent read out of an image, a URI is a file name. */
  struct vd_dev *top;
  CU_ASSERT_EQUAL_FATAL(vd_open(p, "raw", 0, &top), 0);
  struct vd_open_args pa = { .flags = 0 };
  CU_ASSERT_EQUAL(vd_open_parent(top, "nbd+unix:///?socket=/nonexistent/s",
                                 &pa, &d), -ENOENT);
  vd_close(top);
  unlink(p);
}

/* Parent options: confinement, the policy, the override, NOPARENT. */
static void
test_open_parent_opts(void)
{
  struct vd_dev *d;
  struct vd_info info;
  char dir[300], par[300], kid[300], buf[512];
  struct vd_create_args a = { .size = 1 << 20 };

  snprintf(dir, sizeof dir, "%s/kids", tmpdir);
  snprintf(par, sizeof par, "%s/par.vhd", tmpdir);
  snprintf(kid, sizeof kid, "%s/kids/kid.vhd", tmpdir);
  CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0755), 0);
  CU_ASSERT_EQUAL_FATAL(vd_create(par, "vpc", &a), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(par, NULL, VD_OPEN_RDWR, &d), 0);
  memset(buf, 0x5a, sizeof buf);
  CU_ASSERT_EQUAL(vd_pwrite(d, buf, sizeof buf, 0, 0), 0);
  vd_close(d);
  struct vd_create_args c = { .backing = "../par.vhd" };
  CU_ASSERT_EQUAL_FATAL(vd_create(kid, "vpc", &c), 0);

  CU_ASSERT_EQUAL(vd_open(kid, NULL, 0, &d), -EPERM);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "outside the child's folder"));

  struct vd_open_args oa = { .parent_policy = VD_PARENT_ANY_FOLDER };
  CU_ASSERT_EQUAL_FATAL(vd_open_opts(kid, &oa, &d), 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, sizeof buf, 0), 0);
  CU_ASSERT_EQUAL(buf[0], 0x5a);
  vd_close(d);

  struct vd_open_args ov = { .backing = par };
  CU_ASSERT_EQUAL_FATAL(vd_open_opts(kid, &ov, &d), 0);
  vd_get_info(d, &info);
  CU_ASSERT_STRING_EQUAL(info.backing, par);
  CU_ASSERT_STRING_EQUAL(info.backing_format, "vpc");
  vd_close(d);
  ov.backing_format = "raw";   /* the operator may say otherwise */
  CU_ASSERT_EQUAL_FATAL(vd_open_opts(kid, &ov, &d), 0);
  vd_get_info(d, &info);
  CU_ASSERT_STRING_EQUAL(info.backing_format, "raw");
  vd_close(d);

  /* NOPARENT opens nothing: not a FIFO, not a missing file. */
  char moved[300];
  snprintf(moved, sizeof moved, "%s/par.moved", tmpdir);
  CU_ASSERT_EQUAL_FATAL(rename(par, moved), 0);
  CU_ASSERT_EQUAL_FATAL(mkfifo(par, 0600), 0);
  oa.flags = VD_OPEN_NOPARENT;
  CU_ASSERT_EQUAL_FATAL(vd_open_opts(kid, &oa, &d), 0);
  CU_ASSERT_EQUAL(vd_pread(d, buf, sizeof buf, 0), 0);
  CU_ASSERT_EQUAL(buf[0], 0);
  vd_close(d);
  oa.flags = 0;
  CU_ASSERT_EQUAL(vd_open_opts(kid, &oa, &d), -EPERM);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "not a regular file"));
  unlink(par);
  CU_ASSERT_EQUAL(vd_open(kid, "vpc", VD_OPEN_NOPARENT, &d), 0);
  vd_close(d);
}

/* Management ops: the engine's checks before any driver runs. */
static void
test_manage_ops(void)
{
  struct vd_dev *d;
  char raw[300], kid[300], par[300];
  struct vd_create_args a = { .size = 1 << 20 };

  snprintf(raw, sizeof raw, "%s/m.raw", tmpdir);
  CU_ASSERT_EQUAL_FATAL(vd_create(raw, "raw", &a), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(raw, "raw", 0, &d), 0);
  CU_ASSERT_EQUAL(vd_truncate(d, 2 << 20, 0), -EROFS);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "read-only"));
  vd_close(d);
  CU_ASSERT_EQUAL_FATAL(vd_open(raw, "raw", VD_OPEN_RDWR, &d), 0);
  CU_ASSERT_EQUAL(vd_truncate(d, 2 << 20, 0x80), -EINVAL);
  CU_ASSERT_EQUAL(vd_truncate(d, 3 << 20, 0), 0);
  CU_ASSERT_EQUAL(vd_size(d), 3u << 20);
  CU_ASSERT_EQUAL(vd_truncate(d, 1000, 0), -EINVAL);
  CU_ASSERT_EQUAL(vd_size(d), 3u << 20);
  CU_ASSERT_EQUAL(vd_truncate(d, 1000, VD_TRUNCATE_SHRINK), 0);
  CU_ASSERT_EQUAL(vd_size(d), 1000u);
  uint64_t freed = 7;
  CU_ASSERT_EQUAL(vd_compact(d, &freed, NULL, NULL), -ENOTSUP);
  CU_ASSERT_EQUAL(freed, 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "m.raw: format 'raw' cannot"));
  CU_ASSERT_EQUAL(vd_make_empty(d), -ENOTSUP);
  CU_ASSERT_EQUAL(vd_change_backing(d, NULL, NULL, 0, NULL, NULL), -ENOTSUP);
  vd_close(d);
  struct stat st;
  CU_ASSERT_EQUAL(stat(raw, &st), 0);
  CU_ASSERT_EQUAL(st.st_size, 1000);
  CU_ASSERT_EQUAL(vd_commit(raw, NULL, NULL, NULL), -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "no backing file"));

  /* A safe rebase reads the old chain: not with a lone open. */
  snprintf(par, sizeof par, "%s/mpar.vhd", tmpdir);
  snprintf(kid, sizeof kid, "%s/mkid.vhd", tmpdir);
  CU_ASSERT_EQUAL_FATAL(vd_create(par, "vpc", &a), 0);
  struct vd_create_args c = { .backing = par };
  CU_ASSERT_EQUAL_FATAL(vd_create(kid, "vpc", &c), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(kid, "vpc", VD_OPEN_RDWR | VD_OPEN_NOPARENT,
                                &d), 0);
  CU_ASSERT_EQUAL(vd_change_backing(d, NULL, NULL, 0, NULL, NULL), -EINVAL);
  CU_ASSERT_EQUAL(vd_change_backing(d, kid, NULL, VD_BACKING_UNSAFE, NULL,
                                    NULL), -ELOOP);
  vd_close(d);
  unlink(raw);
  unlink(kid);
  unlink(par);
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "parse_size", test_parse_size },
    { "format_size", test_format_size },
    { "overflow", test_overflow },
    { "endian", test_endian },
    { "options", test_options },
    { "errors", test_errors },
    { "probe", test_probe },
    { "dispatcher", test_dispatcher },
    { "raw_block_status", test_raw_block_status },
    { "create_errors", test_create_errors },
    { "probe_guard", test_probe_guard },
    { "open_special", test_open_special },
    { "open_parent_opts", test_open_parent_opts },
    { "nbd_uri", test_nbd_uri },
    { "manage_ops", test_manage_ops },
    { NULL, NULL }
  };
  if (!mkdtemp(tmpdir))
    return 99;
  int r = cu_main("core", tests);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  if (system(cmd) != 0)
    r = r ? r : 99;
  return r;
}
