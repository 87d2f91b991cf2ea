/* vdisk-nbd — exports backed by a vd_node: their wire fields from the
 * node, their creation and their release (exports.h). */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "vdisk/vdisk.h"
#include "nbd-server/proto.h"
#include "nbd-server/server.h"

unsigned nbd_export_release_errors;

static uint32_t pow2_floor(uint32_t v)
{
  uint32_t p = 1;
  while (p <= v / 2)
    p *= 2;
  return p;
}

/* Size, read-only, multi-conn and block sizes from NODE. */
static void fill_from_node(struct nbd_export *e, struct vd_node *node,
                           bool ro, bool direct)
{
  e->node = node;
  e->size = vd_node_size(node);
  e->read_only = ro || vd_node_is_read_only(node);
  e->multi_conn = e->read_only || vd_node_can_multi_conn(node);
  /* Any byte range works: the engine read-modify-writes partial blocks
   * of the formats that need whole ones (and the file layer those of an
   * O_DIRECT file), so like qemu-nbd and nbdkit advertise 1 and let
   * clients such as libnbd send byte-granular requests.  The preferred
   * size below steers them to whole blocks. */
  e->min_block = 1;
  /* O_DIRECT (--cache=none): unaligned requests work, but each costs a
   * read-modify-write of whole blocks; say so. */
  if (direct && vd_is_pow2(vd_node_logical_block(node)) &&
      vd_node_logical_block(node) <= 65536)
    e->min_block = vd_node_logical_block(node);
  e->pref_block = pow2_floor(vd_node_preferred_io(node));
  if (e->pref_block < 4096)
    e->pref_block = 4096;
  if (e->pref_block < e->min_block)
    e->pref_block = e->min_block;
  if (e->pref_block > NBD_MAX_PAYLOAD)
    e->pref_block = NBD_MAX_PAYLOAD;
  e->max_block = NBD_MAX_PAYLOAD;
}

static void free_strv(char **v)
{
  if (v)
    for (char **p = v; *p; p++)
      free(*p);
  free(v);
}

static void export_free(struct nbd_export *e)
{
  free(e->id);
  free(e->name);
  free(e->description);
  free(e->node_name);
  free_strv(e->bitmaps);
  free(e);
}

/* The release callback of every node-backed export: OPAQUE non-NULL
 * means the export owns its node. */
static void export_release(struct nbd_export *e, void *opaque)
{
  if (opaque && vd_node_bitmaps_detach(e->node) < 0) {
    nbd_log("%s: %s", e->name, vd_error());
    nbd_export_release_errors++;
  }
  if (opaque && vd_node_free(e->node) < 0) {
    nbd_log("%s: %s", e->name, vd_error());
    nbd_export_release_errors++;
  }
  nbd_control_export_deleted(e->id);
  export_free(e);
}

struct nbd_export *nbd_export_new(const struct nbd_export_args *a)
{
  struct nbd_export *e = calloc(1, sizeof *e);
  char sz[32];

  if (!e)
    return NULL;
  e->id = strdup(a->id);
  e->name = strdup(a->name);
  e->node_name = strdup(a->node_name);
  if (a->description)
    e->description = strdup(a->description);
  else if (asprintf(&e->description, "%s%s, %s",
                    a->format ? a->format : "vdisk node",
                    a->format ? " image" : "",
                    vd_format_size(vd_node_size(a->node), sz, sizeof sz)) < 0)
    e->description = NULL;
  if (a->bitmaps) {
    size_t n = 0, i;
    while (a->bitmaps[n])
      n++;
    e->bitmaps = calloc(n + 1, sizeof *e->bitmaps);
    for (i = 0; e->bitmaps && i < n; i++)
      if (!(e->bitmaps[i] = strdup(a->bitmaps[i]))) {
        free_strv(e->bitmaps);
        e->bitmaps = NULL;
        break;
      }
    if (!e->bitmaps) {
      export_free(e);
      return NULL;
    }
  }
  if (!e->id || !e->name || !e->node_name || !e->description) {
    export_free(e);
    return NULL;
  }
  e->alloc_depth = a->alloc_depth;
  fill_from_node(e, a->node, a->read_only, a->direct);
  e->release = export_release;
  e->release_opaque = a->owns_node ? e : NULL;
  return e;
}

void nbd_export_discard(struct nbd_export *e)
{
  if (e)
    export_free(e);
}
