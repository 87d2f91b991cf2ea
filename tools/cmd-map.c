/* vdtool map — as qemu-img map: the allocation map of an image, as
 * extents with start, length, depth (which layer of a chain holds the
 * data), present, zero, data and the host offset where one exists.
 * Adjacent extents with the same properties are merged, as qemu-img does. */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/vdtool.h"

const char vt_summary_map[] = "show the allocation map of an image";
const char vt_usage_map[] =
  "Usage: vdtool map [-f FMT] [--output=human|json] [--start-offset=OFF]\n"
  "                  [--max-length=LEN] [-U] FILENAME\n"
  "\n"
  "  --output=json   every extent: start, length, depth, present, zero,\n"
  "                  data and offset (host file offset, where known)\n"
  "  --output=human  (default) the data extents and where they are mapped\n"
  "  -U              open without taking the image lock\n"
  "  --backing=FILE  FILENAME's parent (needed when it is outside\n"
  "                  FILENAME's folder tree or not a regular file)\n"
  "  --backing-format=FMT  the parent's format\n";

struct map_ent {
  uint64_t start, length;
  int depth;
  bool present, zero, data;
  int64_t offset;  /* -1: none */
};

/* The file of the chain's layer DEPTH (0: DEV itself), as qemu-img map
 * names the file an extent is mapped to. */
static const char *
map_file(struct vd_dev *dev, int depth)
{
  for (int d = 0; d < depth; d++) {
    struct vd_dev *b = vd_backing_dev(dev);
    if (!b)
      break;
    dev = b;
  }
  return vd_path(dev);
}

static void
map_print(const struct map_ent *e, bool json, bool *first, struct vd_dev *dev)
{
  if (json) {
    printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
           ", \"depth\": %d, \"present\": %s, \"zero\": %s, \"data\": %s",
           *first ? "[" : ",\n", e->start, e->length, e->depth,
           e->present ? "true" : "false", e->zero ? "true" : "false",
           e->data ? "true" : "false");
    if (e->offset >= 0)
      printf(", \"offset\": %" PRId64, e->offset);
    printf("}");
  } else if (e->data && e->offset >= 0) {
    if (*first)
      printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start,
           e->length, (uint64_t)e->offset, map_file(dev, e->depth));
  } else if (*first) {
    printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  }
  *first = false;
}

static bool
map_mergeable(const struct map_ent *a, const struct map_ent *b)
{
  if (a->depth != b->depth || a->present != b->present ||
      a->zero != b->zero || a->data != b->data)
    return false;
  if ((a->offset < 0) != (b->offset < 0))
    return false;
  return a->offset < 0 || a->offset + (int64_t)a->length == b->offset;
}

int
vt_cmd_map(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "output", required_argument, NULL, 'O' },
    { "start-offset", required_argument, NULL, 's' },
    { "max-length", required_argument, NULL, 'l' },
    { "force-share", no_argument, NULL, 'U' },
    { "format", required_argument, NULL, 'f' },
    { NULL, 0, NULL, 0 }
  };
  const char *fmt = NULL;
  bool json = false;
  uint64_t start = 0, maxlen = UINT64_MAX;
  unsigned flags = 0;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "f:U", longopts, NULL)) != -1) {
    switch (c) {
    case 'f': fmt = optarg; break;
    case 'O':
      if (vt_parse_output(optarg, &json) < 0)
        return vt_bad_usage("map", "--output must be human or json, not '%s'",
                            optarg);
      break;
    case 's':
    case 'l':
      if (vd_parse_size(optarg, c == 's' ? &start : &maxlen) < 0) {
        vt_error("%s", vd_error());
        return VT_EXIT_ERR;
      }
      break;
    case 'U': flags |= VD_OPEN_NOLOCK; break;
    default: return vt_bad_option("map", argv);
    }
  }
  if (argc - optind != 1)
    return vt_bad_usage("map", "expected exactly one FILENAME");
  const char *path = argv[optind];
  struct vd_dev *dev;
  if (vt_open(path, fmt, flags, &dev) < 0)
    return VT_EXIT_ERR;

  uint64_t size = vd_size(dev), end;
  if (start > size)
    start = size;
  end = maxlen > size - start ? size : start + maxlen;
  struct map_ent cur = { 0 };
  bool have = false, first = true;
  int rc = VT_EXIT_OK;
  for (uint64_t off = start; off < end;) {
    struct vd_extent e;
    int r = vd_block_status(dev, off, end - off, &e);
    if (r < 0) {
      vt_engine_error(r);
      rc = VT_EXIT_ERR;
      break;
    }
    struct map_ent n = {
      .start = off, .length = e.length, .depth = e.depth,
      .zero = e.flags & VD_EXT_ZERO, .data = !(e.flags & VD_EXT_HOLE) &&
                                             !(e.flags & VD_EXT_ZERO),
      .offset = e.host_offset,
    };
    /* A layer that maps the range to its file provides it even if the
     * file has a hole there (qemu: raw over a sparse file). */
    n.present = !(e.flags & VD_EXT_HOLE) || e.host_offset >= 0;
    if (have && map_mergeable(&cur, &n)) {
      cur.length += n.length;
    } else {
      if (have)
        map_print(&cur, json, &first, dev);
      cur = n;
      have = true;
    }
    off += e.length;
  }
  if (have && rc == VT_EXIT_OK)
    map_print(&cur, json, &first, dev);
  if (json && rc == VT_EXIT_OK)
    printf(first ? "[]\n" : "]\n");
  else if (!json && first && rc == VT_EXIT_OK)
    printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  vd_close(dev);
  return rc;
}
