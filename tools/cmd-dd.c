/* vdtool dd — qemu-img dd's subset of dd(1): copy part of an image into a
 * new image, in qemu-img's units (bs, count and skip in input blocks). */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/vdtool.h"

const char vt_summary_dd[] = "copy part of an image into a new image, as dd";
const char vt_usage_dd[] =
  "Usage: vdtool dd [-U] [-f FMT] [-O OUTPUT_FMT] [bs=BLOCK_SIZE]\n"
  "                 [count=BLOCKS] [skip=BLOCKS] if=INPUT of=OUTPUT\n"
  "\n"
  "Create OUTPUT (format OUTPUT_FMT, default raw; an existing file is\n"
  "replaced) holding INPUT's virtual disk from block SKIP on, as qemu-img dd:\n"
  "  bs=BYTES    the block size (K/M/G suffixes; default 512)\n"
  "  count=N     stop at input block N (as qemu-img, the skipped blocks\n"
  "              count: OUTPUT holds blocks SKIP to N-1)\n"
  "  skip=N      start at input block N (past INPUT's end: an error)\n"
  "  if=FILE     the input image (-f FMT: its format, default probe)\n"
  "  of=FILE     the output image\n"
  "  -U          open INPUT without taking the image lock\n"
  "Zero blocks are left unwritten, so OUTPUT stays sparse.  OUTPUT's size\n"
  "is exact (qemu-img rounds it up to a multiple of 512 bytes).\n";

#define DD_CHUNK (1u << 20)

/* "KEY=VALUE" operand ARG with the number VALUE (K/M/G/T for bs only). */
static int
dd_number(const char *arg, const char *val, bool suffix, uint64_t *out)
{
  char *end;
  if (suffix) {
    if (vd_parse_size(val, out) == 0 && *out > 0)
      return 0;
  } else {
    errno = 0;
    unsigned long long v = strtoull(val, &end, 10);
    if (*val && *val != '-' && !*end && errno == 0) {
      *out = v;
      return 0;
    }
  }
  return vt_bad_usage("dd", "invalid number in '%s'", arg);
}

int
vt_cmd_dd(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "help", no_argument, NULL, 'h' },
    { "format", required_argument, NULL, 'f' },
    { "force-share", no_argument, NULL, 'U' },
    { NULL, 0, NULL, 0 }
  };
  const char *fmt = NULL, *ofmt = "raw", *in = NULL, *out = NULL;
  uint64_t bs = 512, count = 0, skip = 0;
  bool have_count = false;
  unsigned flags = 0;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "hf:O:U", longopts, NULL)) != -1) {
    switch (c) {
    case 'h': vt_usage("dd", stdout); return VT_EXIT_OK;
    case 'f': fmt = optarg; break;
    case 'O': ofmt = optarg; break;
    case 'U': flags |= VD_OPEN_NOLOCK; break;
    default: return vt_bad_option("dd", argv);
    }
  }
  for (int i = optind; i < argc; i++) {
    const char *a = argv[i], *eq = strchr(a, '=');
    if (!eq)
      return vt_bad_usage("dd", "unrecognized operand '%s'", a);
    size_t klen = (size_t)(eq - a);
    const char *v = eq + 1;
    int r = 0;
    if (klen == 2 && strncmp(a, "if", 2) == 0)
      in = v;
    else if (klen == 2 && strncmp(a, "of", 2) == 0)
      out = v;
    else if (klen == 2 && strncmp(a, "bs", 2) == 0)
      r = dd_number(a, v, true, &bs);
    else if (klen == 5 && strncmp(a, "count", 5) == 0) {
      r = dd_number(a, v, false, &count);
      have_count = true;
    } else if (klen == 4 && strncmp(a, "skip", 4) == 0)
      r = dd_number(a, v, false, &skip);
    else
      return vt_bad_usage("dd", "unrecognized operand '%s'", a);
    if (r)
      return r;
  }
  if (!in || !*in)
    return vt_bad_usage("dd", "must specify an input file with if=FILE");
  if (!out || !*out)
    return vt_bad_usage("dd", "must specify an output file with of=FILE");

  struct vd_dev *src = NULL, *dst = NULL;
  uint8_t *buf = NULL;
  int rc = VT_EXIT_ERR, r;
  if (vt_open(in, fmt, flags, &src) < 0)
    return VT_EXIT_ERR;
  uint64_t end = vd_size(src), start;
  if (have_count && count <= UINT64_MAX / bs && count * bs < end)
    end = count * bs;
  if (skip > UINT64_MAX / bs || (start = skip * bs) > vd_size(src)) {
    vt_error("%s: cannot skip to specified offset", in);
    goto out;
  }
  if (start > end)
    start = end;
  struct vd_create_args args = { .size = end - start };
  if ((r = vd_create(out, ofmt, &args)) < 0) {
    vt_engine_error(r);
    goto out;
  }
  if (vt_open(out, ofmt, VD_OPEN_RDWR, &dst) < 0)
    goto out;
  if (!(buf = malloc(DD_CHUNK))) {
    vt_error("out of memory");
    goto out;
  }
  for (uint64_t off = start; off < end;) {
    size_t n = end - off < DD_CHUNK ? (size_t)(end - off) : DD_CHUNK;
    if ((r = vd_pread(src, buf, n, off)) < 0 ||
        (!vt_is_zero(buf, n) &&
         (r = vd_pwrite(dst, buf, n, off - start, 0)) < 0)) {
      vt_engine_error(r);
      goto out;
    }
    off += n;
  }
  rc = VT_EXIT_OK;
out:
  free(buf);
  if (dst && vd_close(dst) < 0 && rc == VT_EXIT_OK) {
    vt_engine_error(-EIO);
    rc = VT_EXIT_ERR;
  }
  vd_close(src);
  return rc;
}
