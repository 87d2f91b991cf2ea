/* Unit tests for VHD metadata coding (vdisk/vhd-meta.c): checksums, CHS
 * geometry, footer/header round trips and the errors that name the field,
 * UTF-16 names, locator paths. */
#include <config.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/vhd.h"

static void
test_checksum(void)
{
  uint8_t b[16] = { 1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff, 5 };
  /* The 4 bytes at offset 4 are skipped: sum 15. */
  CU_ASSERT_EQUAL(vhd_checksum(b, sizeof b, 4), ~15u);
  memset(b, 0, sizeof b);
  CU_ASSERT_EQUAL(vhd_checksum(b, sizeof b, 0), 0xFFFFFFFFu);
}

static void
test_chs(void)
{
  uint16_t c;
  uint8_t h, s;
  /* qemu-img create -f vpc 64M writes 964/8/17 for 131104 sectors. */
  vhd_chs_spec(131104, &c, &h, &s);
  CU_ASSERT(c == 964 && h == 8 && s == 17);
  /* 1 GiB: 63 sectors per track, 16 heads. */
  vhd_chs_spec(2097152, &c, &h, &s);
  CU_ASSERT(c == 2080 && h == 16 && s == 63);
  /* 127 GiB: past 65535*16*63 sectors, 255 sectors per track. */
  vhd_chs_spec(127ull << 21, &c, &h, &s);
  CU_ASSERT(c == 65278 && h == 16 && s == 255);
  vhd_chs_spec(4000ull << 21, &c, &h, &s);
  CU_ASSERT(c == 65535 && h == 16 && s == 255);
  /* Creation rule: exact geometry kept, otherwise the maximum. */
  vhd_chs_for_size(67125248, &c, &h, &s);
  CU_ASSERT(c == 964 && h == 8 && s == 17);
  vhd_chs_for_size(1ull << 30, &c, &h, &s);
  CU_ASSERT(c == 65535 && h == 16 && s == 255);
}

static struct vhd_footer
mkfooter(const char *creator, uint64_t size, uint16_t c, uint8_t h, uint8_t s)
{
  struct vhd_footer f = { .features = 2, .version = VHD_VERSION,
    .data_offset = 512, .current_size = size, .original_size = size,
    .cylinders = c, .heads = h, .sectors = s, .type = VHD_TYPE_DYNAMIC };
  memcpy(f.cookie, "conectix", 8);
  memcpy(f.creator_app, creator, 4);
  return f;
}

static void
test_size_rule(void)
{
  struct vhd_footer f = mkfooter("vpc ", 1u << 30, 2080, 16, 63);
  CU_ASSERT_EQUAL(vhd_footer_size(&f), 2080ull * 16 * 63 * 512);
  f = mkfooter("qemu", 1u << 30, 65535, 16, 255);
  CU_ASSERT_EQUAL(vhd_footer_size(&f), 1u << 30);
  f = mkfooter("vbox", 1u << 30, 2080, 16, 63);
  CU_ASSERT_EQUAL(vhd_footer_size(&f), 1u << 30);
  f = mkfooter("win ", 1u << 30, 2080, 16, 63);
  CU_ASSERT_EQUAL(vhd_footer_size(&f), 1u << 30);
}

static void
test_footer_roundtrip(void)
{
  uint8_t b[512];
  struct vhd_footer f = mkfooter("vdsk", 123 * 512, 1, 4, 17), g;
  vhd_uuid_generate(f.uuid);
  vhd_footer_encode(&f, b);
  CU_ASSERT_EQUAL(vhd_footer_decode(b, 512, &g, "x.vhd"), 0);
  /* Field by field through the encoding: memcmp of the structs would
   * compare their padding, which holds whatever the stack held. */
  uint8_t b2[512];
  vhd_footer_encode(&g, b2);
  CU_ASSERT_EQUAL(memcmp(b, b2, sizeof b), 0);
  CU_ASSERT_EQUAL(memcmp(f.uuid, g.uuid, sizeof f.uuid), 0);
  CU_ASSERT_EQUAL(f.current_size, g.current_size);
  CU_ASSERT_EQUAL(f.original_size, g.original_size);
  CU_ASSERT_EQUAL(f.cylinders, g.cylinders);
  CU_ASSERT_EQUAL(f.heads, g.heads);
  CU_ASSERT_EQUAL(f.sectors, g.sectors);
  CU_ASSERT_EQUAL(f.type, g.type);
  /* 511-byte footer (pre-2004). */
  CU_ASSERT_EQUAL(vhd_footer_decode(b, 511, &g, "x.vhd"), 0);
  /* A flipped bit: the error names the checksum. */
  b[48] ^= 1;
  CU_ASSERT_EQUAL(vhd_footer_decode(b, 512, &g, "x.vhd"), -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "x.vhd: footer checksum mismatch"));
  b[48] ^= 1;
  b[0] = 'C';
  CU_ASSERT_EQUAL(vhd_footer_decode(b, 512, &g, "x.vhd"), -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "cookie"));
  /* Unknown disk type, with a valid checksum. */
  f.type = 7;
  vhd_footer_encode(&f, b);
  CU_ASSERT_EQUAL(vhd_footer_decode(b, 512, &g, "x.vhd"), -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "disk type 7"));
}

static void
test_header_roundtrip(void)
{
  uint8_t b[1024];
  struct vhd_header h = { .next_offset = VHD_NO_OFFSET, .bat_offset = 1536,
    .version = VHD_VERSION, .max_entries = 10, .block_size = 2 << 20 }, g;
  memcpy(h.loc[0].code, "W2ru", 4);
  h.loc[0].offset = 4096;
  h.loc[0].length = 20;
  h.loc[0].space = 512;
  vhd_header_encode(&h, b);
  CU_ASSERT_EQUAL(memcmp(b, "cxsparse", 8), 0);
  CU_ASSERT_EQUAL(vhd_header_decode(b, &g, "x.vhd"), 0);
  CU_ASSERT_EQUAL(g.loc[0].offset, 4096);
  CU_ASSERT_EQUAL(g.max_entries, 10);
  b[40] ^= 0x80;
  CU_ASSERT_EQUAL(vhd_header_decode(b, &g, "x.vhd"), -EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_error(), "dynamic header checksum mismatch"));
}

static void
test_utf16(void)
{
  uint8_t b[64];
  char s[64];
  /* "é/€𝄞": 2-, 3- and 4-byte UTF-8, the last a surrogate pair. */
  const char *in = "\xc3\xa9/\xe2\x82\xac\xf0\x9d\x84\x9e";
  int n = vhd_utf8_to_utf16(in, b, sizeof b, false);
  CU_ASSERT_EQUAL(n, 10);
  CU_ASSERT(b[0] == 0xe9 && b[1] == 0);
  CU_ASSERT(b[6] == 0x34 && b[7] == 0xd8);
  CU_ASSERT_EQUAL(vhd_utf16_to_utf8(b, (size_t)n, false, s, sizeof s), 10);
  CU_ASSERT_STRING_EQUAL(s, in);
  n = vhd_utf8_to_utf16("ab", b, sizeof b, true);
  CU_ASSERT(n == 4 && b[0] == 0 && b[1] == 'a');
  CU_ASSERT_EQUAL(vhd_utf8_to_utf16("\xff", b, sizeof b, true), -EINVAL);
  CU_ASSERT_EQUAL(vhd_utf8_to_utf16("abc", b, 4, true), -EINVAL);
  /* A lone low surrogate is rejected. */
  b[0] = 0x00; b[1] = 0xdc;
  CU_ASSERT_EQUAL(vhd_utf16_to_utf8(b, 2, false, s, sizeof s), -EINVAL);
}

static void
test_locator_paths(void)
{
  char dir[] = "/tmp/vhdloc.XXXXXX", rel[PATH_MAX], abs[PATH_MAX];
  char p[PATH_MAX], c[PATH_MAX];
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
  snprintf(p, sizeof p, "%s/a", dir);
  mkdir(p, 0700);
  snprintf(p, sizeof p, "%s/a/b", dir);
  mkdir(p, 0700);
  snprintf(p, sizeof p, "%s/a/parent.vhd", dir);
  FILE *f = fopen(p, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fclose(f);
  snprintf(c, sizeof c, "%s/a/child.vhd", dir);
  CU_ASSERT_EQUAL(vhd_locator_paths(c, p, rel, sizeof rel, abs, sizeof abs), 0);
  CU_ASSERT_STRING_EQUAL(rel, "./parent.vhd");
  CU_ASSERT_STRING_EQUAL(abs, p);
  snprintf(c, sizeof c, "%s/a/b/child.vhd", dir);
  CU_ASSERT_EQUAL(vhd_locator_paths(c, p, rel, sizeof rel, abs, sizeof abs), 0);
  CU_ASSERT_STRING_EQUAL(rel, "../parent.vhd");
  snprintf(c, sizeof c, "%s/child.vhd", dir);
  CU_ASSERT_EQUAL(vhd_locator_paths(c, p, rel, sizeof rel, abs, sizeof abs), 0);
  CU_ASSERT_STRING_EQUAL(rel, "./a/parent.vhd");
  unlink(p);
  snprintf(p, sizeof p, "%s/a/b", dir);
  rmdir(p);
  snprintf(p, sizeof p, "%s/a", dir);
  rmdir(p);
  rmdir(dir);
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "checksum", test_checksum },
    { "chs geometry", test_chs },
    { "virtual size rule", test_size_rule },
    { "footer round trip and errors", test_footer_roundtrip },
    { "dynamic header round trip", test_header_roundtrip },
    { "utf-16", test_utf16 },
    { "locator paths", test_locator_paths },
    { NULL, NULL }
  };
  return cu_main("vhd-meta", tests);
}
