/* Unit tests for the driver registry (vdisk/registry.c): adding a format
 * is adding its file.  The toy format below lives only in this file and
 * registers itself with VD_REGISTER_DRIVER, as the library's drivers do;
 * no line of the library names it.  vd_open must find it by name, by
 * alias and by probing, after the library's own drivers, whose order (the
 * probing tie-break and vdtool's format list) must stay raw, vdz, vpc
 * (VHD), raid. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/driver.h"
#include "vdisk/endian.h"
#include "vdisk/vdisk.h"

/* ---- the toy format: a 512-byte header, then the disk ----
 *   0  8  magic "VDTOYFMT"
 *   8  8  virtual size, big-endian
 */
#define TOY_MAGIC "VDTOYFMT"
#define TOY_HEADER 512u

static int
toy_probe(const struct vd_probe_data *pd)
{
  return pd->head_len >= 8 && memcmp(pd->head, TOY_MAGIC, 8) == 0 ? 100 : 0;
}

static int
toy_open(struct vd_dev *dev)
{
  uint8_t h[16];
  int r = vd_file_pread(dev->file, h, sizeof h, 0);
  if (r < 0)
    return r;
  if (memcmp(h, TOY_MAGIC, 8) != 0)
    return vd_set_error(EINVAL, "%s: not a toy image", dev->path);
  dev->size = vd_get_be64(h + 8);
  return 0;
}

static int
toy_create(const char *path, const struct vd_create_args *args)
{
  uint8_t h[TOY_HEADER] = TOY_MAGIC;
  struct vd_file *f;
  int r = vd_file_open(path, VD_FILE_RDWR | VD_FILE_CREATE, &f);
  if (r < 0)
    return r;
  vd_put_be64(h + 8, args->size);
  r = vd_file_truncate(f, 0);
  if (r == 0)
    r = vd_file_truncate(f, TOY_HEADER + args->size);
  if (r == 0)
    r = vd_file_pwrite(f, h, sizeof h, 0);
  if (r == 0)
    r = vd_file_flush(f);
  vd_file_close(f);
  return r;
}

static int
toy_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  return vd_file_pread(dev->file, buf, len, TOY_HEADER + off);
}

static int
toy_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
           unsigned flags)
{
  return vd_file_pwrite(dev->file, buf, len, TOY_HEADER + off);
}

static int
toy_flush(struct vd_dev *dev)
{
  return vd_file_flush(dev->file);
}

static const char *const toy_aliases[] = { "toyfmt", NULL };

static const struct vd_driver toy_driver = {
  .name = "toy",
  .aliases = toy_aliases,
  .probe = toy_probe,
  .open = toy_open,
  .create = toy_create,
  .pread = toy_pread,
  .pwrite = toy_pwrite,
  .flush = toy_flush,
};

VD_REGISTER_DRIVER(toy_driver);

/* ---- tests ---- */

static char tmpdir[] = "/tmp/vdunit.XXXXXX";
static char img[sizeof tmpdir + 16];

static void
test_order(void)
{
  /* The library's drivers in the order of vdisk/Makefile.inc (probing
   * order: leaf formats first); formats added later may sit between
   * them, so only their relative order is checked. */
  static const char *const builtin[] = { "raw", "vdz", "vpc", "vhdx", "nbd",
                                         "raid" };
  const size_t nb = sizeof builtin / sizeof *builtin;
  const char *const *n = vd_format_names();
  size_t i = 0, toy = 0, at[sizeof builtin / sizeof *builtin] = { 0 };
  bool seen[sizeof builtin / sizeof *builtin] = { false };

  for (; n[i]; i++) {
    if (strcmp(n[i], "toy") == 0)
      toy = i;
    for (size_t k = 0; k < nb; k++)
      if (strcmp(n[i], builtin[k]) == 0) {
        at[k] = i;
        seen[k] = true;
      }
  }
  for (size_t k = 0; k < nb; k++) {
    CU_ASSERT(seen[k]);
    if (k > 0)
      CU_ASSERT(at[k] > at[k - 1]);
  }
  CU_ASSERT_STRING_EQUAL(n[0], "raw");
  /* Drivers outside the library come after all of its own. */
  CU_ASSERT(toy > at[nb - 1]);
  CU_ASSERT_EQUAL(i - 1, toy);
}

static void
test_by_name(void)
{
  struct vd_create_args ca = { .size = 1 << 20 };
  struct vd_dev *d;
  uint8_t w[4096], r[4096];

  CU_ASSERT_EQUAL_FATAL(vd_create(img, "toy", &ca), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(img, "toy", VD_OPEN_RDWR, &d), 0);
  CU_ASSERT_STRING_EQUAL(vd_format(d), "toy");
  CU_ASSERT_EQUAL(vd_size(d), 1 << 20);
  for (size_t i = 0; i < sizeof w; i++)
    w[i] = (uint8_t)(i * 13 + 1);
  CU_ASSERT_EQUAL(vd_pwrite(d, w, sizeof w, 8192, 0), 0);
  CU_ASSERT_EQUAL(vd_flush(d), 0);
  CU_ASSERT_EQUAL(vd_pread(d, r, sizeof r, 8192), 0);
  CU_ASSERT_EQUAL(memcmp(w, r, sizeof w), 0);
  CU_ASSERT_EQUAL(vd_close(d), 0);

  /* An alias, in any case. */
  CU_ASSERT_EQUAL_FATAL(vd_open(img, "TOYFMT", 0, &d), 0);
  CU_ASSERT_STRING_EQUAL(vd_format(d), "toy");
  CU_ASSERT_EQUAL(vd_close(d), 0);
}

static void
test_by_probe(void)
{
  struct vd_dev *d;
  uint8_t r[4096];

  CU_ASSERT_EQUAL_FATAL(vd_open(img, NULL, 0, &d), 0);
  CU_ASSERT_STRING_EQUAL(vd_format(d), "toy");
  CU_ASSERT_FALSE(vd_probed_raw(d));
  CU_ASSERT_EQUAL(vd_size(d), 1 << 20);
  CU_ASSERT_EQUAL(vd_pread(d, r, sizeof r, 8192), 0);
  CU_ASSERT_EQUAL(r[0], 1);
  CU_ASSERT_EQUAL(r[1], 14);
  CU_ASSERT_EQUAL(vd_close(d), 0);
}

static void
test_register_rules(void)
{
  static const char *const taken_alias[] = { "VHD", NULL };
  static const struct vd_driver same_name = { .name = "Toy" };
  static const struct vd_driver alias_clash = { .name = "other",
                                                .aliases = taken_alias };
  static const struct vd_driver nameless = { .probe = toy_probe };
  size_t before = 0, after = 0;

  for (const char *const *n = vd_format_names(); *n; n++)
    before++;
  CU_ASSERT_EQUAL(vd_register_driver(&toy_driver), 0);  /* again: no-op */
  CU_ASSERT_EQUAL(vd_register_driver(&same_name), -EEXIST);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "Toy"));
  CU_ASSERT_EQUAL(vd_register_driver(&alias_clash), -EEXIST);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "VHD"));
  CU_ASSERT_EQUAL(vd_register_driver(&nameless), -EINVAL);
  for (const char *const *n = vd_format_names(); *n; n++)
    after++;
  CU_ASSERT_EQUAL(after, before);
  CU_ASSERT_PTR_EQUAL(vd_find_driver("toy"), &toy_driver);
  CU_ASSERT_PTR_NULL(vd_find_driver("other"));
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "builtin order, then the toy", test_order },
    { "open by name and alias", test_by_name },
    { "open by probing", test_by_probe },
    { "registration rules", test_register_rules },
    { NULL, NULL },
  };
  if (!mkdtemp(tmpdir))
    return 99;
  snprintf(img, sizeof img, "%s/disk.toy", tmpdir);
  int r = cu_main("registry", tests);
  unlink(img);
  rmdir(tmpdir);
  return r;
}
