/* vdtool info — as qemu-img info, with the same JSON keys. */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/vdtool.h"

/* An image's internal snapshots (qemu-img info's "Snapshot list"). */
struct info_snaps {
  struct vd_snapshot *s;
  size_t n;
};

static void
info_snaps_json(const struct info_snaps *sn, const char *indent)
{
  if (!sn->n)
    return;
  printf("%s    \"snapshots\": [\n", indent);
  for (size_t i = 0; i < sn->n; i++) {
    const struct vd_snapshot *x = &sn->s[i];
    printf("%s        {\n", indent);
    if (x->icount != UINT64_MAX)
      printf("%s            \"icount\": %" PRIu64 ",\n", indent, x->icount);
    printf("%s            \"vm-clock-nsec\": %" PRIu64 ",\n", indent,
           x->vm_clock_nsec % 1000000000u);
    printf("%s            \"name\": ", indent);
    vt_json_string(stdout, x->name);
    printf(",\n%s            \"date-sec\": %" PRId64 ",\n", indent,
           x->date_sec);
    printf("%s            \"date-nsec\": %" PRIu32 ",\n", indent,
           x->date_nsec);
    printf("%s            \"vm-clock-sec\": %" PRIu64 ",\n", indent,
           x->vm_clock_nsec / 1000000000u);
    printf("%s            \"id\": ", indent);
    vt_json_string(stdout, x->id);
    printf(",\n%s            \"vm-state-size\": %" PRIu64 "\n", indent,
           x->vm_state_size);
    printf("%s        }%s\n", indent, i + 1 < sn->n ? "," : "");
  }
  printf("%s    ],\n", indent);
}

const char vt_summary_info[] = "show an image's format, size and properties";
const char vt_usage_info[] =
  "Usage: vdtool info [-f FMT] [--output=human|json] [--backing-chain] [-U]\n"
  "                   FILENAME\n"
  "\n"
  "  -f FMT            image format (default: probe)\n"
  "  --output=FMT      human (default) or json (qemu-img's keys)\n"
  "  --backing-chain   open the whole chain (checking it) and show every\n"
  "                    image down it; without it no parent is opened\n"
  "  -U, --force-share open without taking the image lock\n"
  "  --backing=FILE    FILENAME's parent (needed when it is outside\n"
  "                    FILENAME's folder tree or not a regular file)\n"
  "  --backing-format=FMT  the parent's format\n";

/* The parent's name as the image records it (qemu-img's backing file). */
static const char *
info_backing_name(const struct vd_info *in)
{
  return in->backing_stored[0] ? in->backing_stored : in->backing;
}

/* qemu-img's full-backing-filename: the recorded name taken relative to
 * the folder of PATH (the child as named on the command line), unless the
 * engine resolved the parent to another path (malloc'd; NULL: no
 * memory). */
static char *
info_full_backing(const char *path, const struct vd_info *in)
{
  const char *name = info_backing_name(in), *slash = strrchr(path, '/');
  if (strcmp(name, in->backing) != 0 || name[0] == '/' || !slash ||
      strstr(name, "://"))
    return strdup(in->backing);
  size_t dir = (size_t)(slash - path) + 1;
  char *full = malloc(dir + strlen(name) + 1);
  if (full) {
    memcpy(full, path, dir);
    strcpy(full + dir, name);
  }
  return full;
}

static void
info_human(const char *path, const struct vd_info *in,
           const struct info_snaps *sn)
{
  char a[64], b[64];
  printf("image: %s\n", path);
  printf("file format: %s\n", in->format);
  printf("virtual size: %s (%" PRIu64 " bytes)\n",
         vd_format_size(in->size, a, sizeof a), in->size);
  printf("disk size: %s\n", vd_format_size(in->actual_size, b, sizeof b));
  if (in->cluster_size)
    printf("cluster_size: %" PRIu64 "\n", in->cluster_size);
  if (in->backing[0]) {
    char *full = info_full_backing(path, in);
    if (full && strcmp(full, info_backing_name(in)) != 0)
      printf("backing file: %s (actual path: %s)\n", info_backing_name(in),
             full);
    else
      printf("backing file: %s\n", info_backing_name(in));
    free(full);
    if (in->backing_format[0])
      printf("backing file format: %s\n", in->backing_format);
  }
  vt_snapshot_table(sn->s, sn->n);
  if (in->nfields) {
    printf("Format specific information:\n");
    for (unsigned i = 0; i < in->nfields; i++) {
      const struct vd_info_field *f = &in->fields[i];
      printf("    %s: ", f->key);
      switch (f->type) {
      case VD_FIELD_STR: printf("%s\n", f->str); break;
      case VD_FIELD_U64: printf("%" PRIu64 "\n", f->u64); break;
      case VD_FIELD_BOOL: printf("%s\n", f->u64 ? "true" : "false"); break;
      }
    }
  }
}

static void
info_json(const char *path, const struct vd_info *in,
          const struct info_snaps *sn, const char *indent)
{
  printf("%s{\n", indent);
  info_snaps_json(sn, indent);
  printf("%s    \"virtual-size\": %" PRIu64 ",\n", indent, in->size);
  printf("%s    \"filename\": ", indent);
  vt_json_string(stdout, path);
  if (in->cluster_size)
    printf(",\n%s    \"cluster-size\": %" PRIu64, indent, in->cluster_size);
  printf(",\n%s    \"format\": ", indent);
  vt_json_string(stdout, in->format);
  printf(",\n%s    \"actual-size\": %" PRIu64 ",\n", indent, in->actual_size);
  if (in->backing[0]) {
    printf("%s    \"backing-filename\": ", indent);
    vt_json_string(stdout, info_backing_name(in));
    printf(",\n%s    \"full-backing-filename\": ", indent);
    char *full = info_full_backing(path, in);
    vt_json_string(stdout, full ? full : in->backing);
    free(full);
    printf(",\n");
    if (in->backing_format[0]) {
      printf("%s    \"backing-filename-format\": ", indent);
      vt_json_string(stdout, in->backing_format);
      printf(",\n");
    }
  }
  if (in->nfields) {
    printf("%s    \"format-specific\": {\n", indent);
    printf("%s        \"type\": ", indent);
    vt_json_string(stdout, in->format);
    printf(",\n%s        \"data\": {\n", indent);
    for (unsigned i = 0; i < in->nfields; i++) {
      const struct vd_info_field *f = &in->fields[i];
      printf("%s            ", indent);
      vt_json_string(stdout, f->key);
      printf(": ");
      switch (f->type) {
      case VD_FIELD_STR: vt_json_string(stdout, f->str); break;
      case VD_FIELD_U64: printf("%" PRIu64, f->u64); break;
      case VD_FIELD_BOOL: printf("%s", f->u64 ? "true" : "false"); break;
      }
      printf("%s\n", i + 1 < in->nfields ? "," : "");
    }
    printf("%s        }\n%s    },\n", indent, indent);
  }
  printf("%s    \"dirty-flag\": %s\n", indent, in->dirty ? "true" : "false");
  printf("%s}", indent);
}

int
vt_cmd_info(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "output", required_argument, NULL, 'O' },
    { "backing-chain", no_argument, NULL, 'B' },
    { "force-share", no_argument, NULL, 'U' },
    { "format", required_argument, NULL, 'f' },
    { NULL, 0, NULL, 0 }
  };
  const char *fmt = NULL;
  bool json = false, chain = false;
  unsigned flags = 0;
  char bfmt[sizeof ((struct vd_info *)0)->backing_format] = "";
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "f:U", longopts, NULL)) != -1) {
    switch (c) {
    case 'f': fmt = optarg; break;
    case 'O':
      if (vt_parse_output(optarg, &json) < 0)
        return vt_bad_usage("info", "--output must be human or json, not '%s'",
                            optarg);
      break;
    case 'B': chain = true; break;
    case 'U': flags |= VD_OPEN_NOLOCK; break;
    default: return vt_bad_option("info", argv);
    }
  }
  if (argc - optind != 1)
    return vt_bad_usage("info", "expected exactly one FILENAME");
  /* As qemu-img info: one image is shown without opening its parent, so
   * an image whose parent is missing still shows what it names.  With
   * --backing-chain every image is opened with its chain below it (and
   * so checked: UUIDs, loops, where each parent is). */
  if (!chain)
    flags |= VD_OPEN_NOPARENT;

  char *path = strdup(argv[optind]);
  int depth = 0, rc = VT_EXIT_OK;
  if (json && chain)
    printf("[\n");
  while (path) {
    struct vd_dev *dev;
    struct vd_info in;
    /* A parent opens in the format its child named, never probed. */
    if (vt_open(path, depth ? (bfmt[0] ? bfmt : NULL) : fmt, flags,
                &dev) < 0) {
      rc = VT_EXIT_ERR;
      break;
    }
    vd_get_info(dev, &in);
    /* Formats without internal snapshots list none. */
    struct info_snaps sn = { NULL, 0 };
    if (vd_snapshot_list(dev, &sn.s, &sn.n) < 0)
      sn.n = 0;
    vd_close(dev);
    if (json) {
      if (depth)
        printf(",\n");
      info_json(path, &in, &sn, chain ? "    " : "");
    } else {
      if (depth)
        printf("\n");
      info_human(path, &in, &sn);
    }
    free(sn.s);
    free(path);
    path = NULL;
    if (chain && in.backing[0]) {
      path = strdup(in.backing);
      snprintf(bfmt, sizeof bfmt, "%s", in.backing_format);
      if (++depth > 1000) {
        vt_error("%s: backing chain too deep (a loop?)", in.backing);
        rc = VT_EXIT_ERR;
        break;
      }
    }
  }
  free(path);
  if (json)
    printf(chain ? "\n]\n" : "\n");
  return rc;
}
