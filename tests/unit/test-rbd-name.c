/* Unit tests for rbd: image names (vdisk/rbd-name.c): qemu's syntax with
 * its escapes, the three options, and one clear error for each kind of
 * bad name.  No cluster needed. */
#include <config.h>

#include <errno.h>
#include <string.h>

#include "tests/unit/cu.h"
#include "vdisk/vdisk.h"
#include "vdisk/rbd-name.h"

static struct vd_rbd_name n;

static void
test_plain(void)
{
  CU_ASSERT_EQUAL_FATAL(vd_rbd_name_parse("rbd:pool/img", &n), 0);
  CU_ASSERT_STRING_EQUAL(n.pool, "pool");
  CU_ASSERT_STRING_EQUAL(n.ns, "");
  CU_ASSERT_STRING_EQUAL(n.image, "img");
  CU_ASSERT_STRING_EQUAL(n.snap, "");
  CU_ASSERT_STRING_EQUAL(n.conf, "");
  CU_ASSERT_STRING_EQUAL(n.id, "");
  CU_ASSERT_EQUAL(n.timeout, VD_RBD_DEFAULT_TIMEOUT);
}

static void
test_full(void)
{
  CU_ASSERT_EQUAL_FATAL(vd_rbd_name_parse(
    "rbd:p/ns/im@snap1:conf=/etc/ceph/x.conf:id=backup:timeout=7", &n), 0);
  CU_ASSERT_STRING_EQUAL(n.pool, "p");
  CU_ASSERT_STRING_EQUAL(n.ns, "ns");
  CU_ASSERT_STRING_EQUAL(n.image, "im");
  CU_ASSERT_STRING_EQUAL(n.snap, "snap1");
  CU_ASSERT_STRING_EQUAL(n.conf, "/etc/ceph/x.conf");
  CU_ASSERT_STRING_EQUAL(n.id, "backup");
  CU_ASSERT_EQUAL(n.timeout, 7);
  /* Options in any order, no snapshot. */
  CU_ASSERT_EQUAL_FATAL(vd_rbd_name_parse("rbd:p/i:timeout=3600:conf=c",
                                          &n), 0);
  CU_ASSERT_STRING_EQUAL(n.image, "i");
  CU_ASSERT_STRING_EQUAL(n.conf, "c");
  CU_ASSERT_EQUAL(n.timeout, 3600);
}

static void
test_escapes(void)
{
  /* qemu's rule: a backslash takes the next character literally. */
  CU_ASSERT_EQUAL_FATAL(vd_rbd_name_parse(
    "rbd:po\\/ol/im\\:a\\@b@s\\:1:conf=/a\\:b/c\\\\d", &n), 0);
  CU_ASSERT_STRING_EQUAL(n.pool, "po/ol");
  CU_ASSERT_STRING_EQUAL(n.image, "im:a@b");
  CU_ASSERT_STRING_EQUAL(n.snap, "s:1");
  CU_ASSERT_STRING_EQUAL(n.conf, "/a:b/c\\d");
}

static void
test_prefix(void)
{
  CU_ASSERT_TRUE(vd_rbd_is_name("rbd:x/y"));
  CU_ASSERT_FALSE(vd_rbd_is_name("RBD:x/y"));   /* qemu: case matters */
  CU_ASSERT_FALSE(vd_rbd_is_name("./rbd:x/y"));
  CU_ASSERT_FALSE(vd_rbd_is_name(NULL));
  CU_ASSERT_TRUE(vd_is_remote_name("rbd:x/y"));
  CU_ASSERT_TRUE(vd_is_remote_name("nbd://h/e"));
  CU_ASSERT_FALSE(vd_is_remote_name("/tmp/rbd:x/y"));
}

/* Each bad name fails with its errno and a message holding WANT. */
static void
bad(const char *name, int err, const char *want)
{
  int r = vd_rbd_name_parse(name, &n);
  if (r != -err || !strstr(vd_error(), want))
    fprintf(stderr, "%s: got %d '%s', expected %d '%s'\n", name, r,
            vd_error(), -err, want);
  CU_ASSERT_EQUAL(r, -err);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), want));
  CU_ASSERT_PTR_NULL(strchr(vd_error(), '\n'));
}

static void
test_bad(void)
{
  bad("rbd:", EINVAL, "empty pool name");
  bad("rbd:pool", EINVAL, "no image name");
  bad("rbd:/img", EINVAL, "empty pool name");
  bad("rbd:pool/", EINVAL, "empty image name");
  bad("rbd:pool//img", EINVAL, "empty namespace");
  bad("rbd:a/b/c/d", EINVAL, "too many '/'");
  bad("rbd:p/i@", EINVAL, "empty snapshot name");
  bad("rbd:p/i@s@t", EINVAL, "unexpected '@'");
  bad("rbd:p/i@s/t", EINVAL, "unexpected '/'");
  bad("rbd:p/i:", EINVAL, "empty option");
  bad("rbd:p/i:conf", EINVAL, "option 'conf' has no value");
  bad("rbd:p/i:conf=", EINVAL, "option 'conf' has an empty value");
  bad("rbd:p/i:conf=a:conf=b", EINVAL, "given twice");
  bad("rbd:p/i:rados_osd_op_timeout=5", EINVAL,
      "unknown option 'rados_osd_op_timeout'");
  bad("rbd:p/i:timeout=0", EINVAL, "timeout must be");
  bad("rbd:p/i:timeout=3601", EINVAL, "timeout must be");
  bad("rbd:p/i:timeout=99999999999999999999", EINVAL, "timeout must be");
  bad("rbd:p/i:timeout=5s", EINVAL, "timeout must be");
  bad("rbd:p/i\\", EINVAL, "a backslash ends the name");
  bad("rbd:p/i\x01x", EINVAL, "control character 0x01");
  bad("rbd:p/i\\\x7f", EINVAL, "control character 0x7f");
  bad("nbd://x/y", EINVAL, "not an rbd: name");
  char big[VD_RBD_NAME_MAX + 8];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  memcpy(big, "rbd:p/", 6);
  bad(big, ENAMETOOLONG, "longer than");
  char part[VD_RBD_PART_MAX + 16];
  memset(part, 'b', sizeof part - 1);
  part[sizeof part - 1] = '\0';
  memcpy(part, "rbd:p/", 6);
  bad(part, ENAMETOOLONG, "image name is longer than");
  memcpy(part, "rbd:p/i:id=", 11);
  bad(part, ENAMETOOLONG, "id longer than");
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "plain", test_plain },
    { "full", test_full },
    { "escapes", test_escapes },
    { "prefix", test_prefix },
    { "bad", test_bad },
    { NULL, NULL }
  };
  return cu_main("rbd-name", tests);
}
