/* vdtool compare — as qemu-img compare: exit 0 identical, 1 different,
 * 2 error.  Mismatches are reported at the start of the first differing
 * 512-byte sector, as qemu-img does.  When sizes differ, the extra part
 * of the larger image must read as zeros (unless -s). */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/vdtool.h"

const char vt_summary_compare[] = "compare the contents of two images";
const char vt_usage_compare[] =
  "Usage: vdtool compare [-f FMT] [-F FMT] [-s] [-p] [-q] [-U] FILE1 FILE2\n"
  "\n"
  "Compare the virtual disks FILE1 and FILE2 (any formats).\n"
  "  -f FMT  format of FILE1 (default: probe)\n"
  "  -F FMT  format of FILE2 (default: probe)\n"
  "  -s      strict: images of different sizes differ\n"
  "  -p      show progress\n"
  "  -q      quiet\n"
  "  -U      open without taking the image locks\n"
  "  --backing=FILE  FILE1's parent (needed when it is outside FILE1's\n"
  "                  folder tree or not a regular file)\n"
  "  --backing-format=FMT  the parent's format\n"
  "Exit status: 0 identical, 1 different, 2 error.\n";

#define CMP_CHUNK (1u << 20)
#define CMP_EXIT_DIFF 1
#define CMP_EXIT_ERR 2

/* First differing byte of two buffers (LEN if none). */
static size_t
cmp_first_diff(const uint8_t *a, const uint8_t *b, size_t len)
{
  size_t i = 0;
  while (i + 4096 <= len && memcmp(a + i, b + i, 4096) == 0)
    i += 4096;
  while (i < len && a[i] == b[i])
    i++;
  return i;
}

static uint64_t
cmp_zero_ext(struct vd_dev *d, uint64_t off, uint64_t len, bool *zero,
             int *err)
{
  struct vd_extent e;
  *err = vd_block_status(d, off, len, &e);
  *zero = !*err && (e.flags & VD_EXT_ZERO);
  return *err ? 0 : e.length;
}

/* Compare [off, end) of both; returns 0 same, 1 differ (*at set), <0. */
static int
cmp_range(struct vd_dev *a, struct vd_dev *b, uint64_t off, uint64_t end,
          uint8_t *ba, uint8_t *bb, uint64_t *at, struct vt_progress *p,
          uint64_t total)
{
  while (off < end) {
    uint64_t len = end - off < CMP_CHUNK ? end - off : CMP_CHUNK;
    bool za, zb;
    int r;
    uint64_t la = cmp_zero_ext(a, off, len, &za, &r);
    if (r < 0)
      return r;
    uint64_t lb = cmp_zero_ext(b, off, len, &zb, &r);
    if (r < 0)
      return r;
    uint64_t n = la < lb ? la : lb;
    if (!(za && zb)) {
      if ((r = vd_pread(a, ba, (size_t)n, off)) < 0 ||
          (r = vd_pread(b, bb, (size_t)n, off)) < 0)
        return r;
      size_t d = cmp_first_diff(ba, bb, (size_t)n);
      if (d < n) {
        *at = (off + d) / 512 * 512;
        return 1;
      }
    }
    off += n;
    vt_progress_update(p, off, total);
  }
  return 0;
}

/* Check [off, end) of D reads as zeros. */
static int
cmp_zero_tail(struct vd_dev *d, uint64_t off, uint64_t end, uint8_t *buf,
              uint64_t *at)
{
  while (off < end) {
    bool z;
    int r;
    uint64_t n = cmp_zero_ext(d, off, end - off < CMP_CHUNK ? end - off
                                                           : CMP_CHUNK,
                              &z, &r);
    if (r < 0)
      return r;
    if (!z) {
      if ((r = vd_pread(d, buf, (size_t)n, off)) < 0)
        return r;
      for (size_t i = 0; i < n; i++)
        if (buf[i]) {
          *at = (off + i) / 512 * 512;
          return 1;
        }
    }
    off += n;
  }
  return 0;
}

int
vt_cmd_compare(int argc, char **argv)
{
  const char *f1 = NULL, *f2 = NULL;
  bool strict = false, quiet = false;
  struct vt_progress prog = { .last = -1 };
  unsigned flags = 0;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt(argc, argv, "f:F:spqU")) != -1) {
    switch (c) {
    case 'f': f1 = optarg; break;
    case 'F': f2 = optarg; break;
    case 's': strict = true; break;
    case 'p': prog.enabled = true; break;
    case 'q': quiet = true; break;
    case 'U': flags |= VD_OPEN_NOLOCK; break;
    default:
      vt_bad_option("compare", argv);
      return CMP_EXIT_ERR;
    }
  }
  if (argc - optind != 2) {
    vt_bad_usage("compare", "expected FILE1 and FILE2");
    return CMP_EXIT_ERR;
  }
  if (quiet)
    prog.enabled = false;
  struct vd_dev *a = NULL, *b = NULL;
  uint8_t *ba = NULL, *bb = NULL;
  int rc = CMP_EXIT_ERR, r;
  uint64_t at = 0;

  if (vt_open(argv[optind], f1, flags, &a) < 0 ||
      vt_open(argv[optind + 1], f2, flags, &b) < 0)
    goto out;
  ba = malloc(CMP_CHUNK);
  bb = malloc(CMP_CHUNK);
  if (!ba || !bb) {
    vt_error("out of memory");
    goto out;
  }
  uint64_t sa = vd_size(a), sb = vd_size(b);
  uint64_t common = sa < sb ? sa : sb;
  if (sa != sb) {
    if (strict) {
      if (!quiet)
        printf("Strict mode: Image size mismatch!\n");
      rc = CMP_EXIT_DIFF;
      goto out;
    }
    if (!quiet)
      printf("Warning: Image size mismatch!\n");
  }
  r = cmp_range(a, b, 0, common, ba, bb, &at, &prog, sa > sb ? sa : sb);
  if (r == 0 && sa != sb)
    r = cmp_zero_tail(sa > sb ? a : b, common, sa > sb ? sa : sb, ba, &at);
  if (r < 0) {
    vt_engine_error(r);
    goto out;
  }
  vt_progress_end(&prog);
  if (r == 1) {
    if (!quiet)
      printf("Content mismatch at offset %" PRIu64 "!\n", at);
    rc = CMP_EXIT_DIFF;
  } else {
    if (!quiet)
      printf("Images are identical.\n");
    rc = VT_EXIT_OK;
  }
out:
  free(ba);
  free(bb);
  vd_close(a);
  vd_close(b);
  return rc;
}
