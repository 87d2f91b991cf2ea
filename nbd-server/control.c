/* vdisk-nbd — the export commands of the control socket (QEMU's
 * block-export-add, block-export-del and query-block-exports for type
 * "nbd"), on the export registry (exports.h).  docs/control.md describes
 * them.
 *
 * Handlers run on the control thread, one at a time, so the checks they
 * make (id free, device not busy, node not shared) cannot race another
 * command; connections only look exports up and attach to them, under
 * the registry's lock.
 */
#include <config.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "vdisk/control/control.h"
#include "vdisk/control/export-opts.h"
#include "vdisk/control/internal.h"
#include "nbd-server/proto.h"
#include "nbd-server/server.h"

static struct nbd_server *srv;
/* Where BLOCK_EXPORT_DELETED goes; read by releases on any thread. */
static _Atomic(struct vc_server *) events;

void nbd_control_export_deleted(const char *id)
{
  struct vc_server *vc = atomic_load(&events);
  if (vc)
    vc_event(vc, "BLOCK_EXPORT_DELETED", json_pack("{s:s}", "id", id));
}

void nbd_control_stop(void)
{
  atomic_store(&events, NULL);
}

/* "bitmaps": a list of strings, as a NULL-terminated array in *OUT
 * (pointers into ARGS).  False with *ERR set. */
static bool arg_strv(json_t *args, const char *key, const char ***out,
                     struct vc_error *err)
{
  json_t *v = json_object_get(args, key), *x;
  size_t i;
  *out = NULL;
  if (!v)
    return true;
  if (!json_is_array(v)) {
    vc_error_set(err, "GenericError", "Parameter '%s' expects an array",
                 key);
    return false;
  }
  *out = calloc(json_array_size(v) + 1, sizeof **out);
  if (!*out) {
    vc_error_set(err, "GenericError", "out of memory");
    return false;
  }
  json_array_foreach(v, i, x) {
    if (!json_is_string(x)) {
      vc_error_set(err, "GenericError", "Parameter '%s[%zu]' expects a "
                   "string", key, i);
      free(*out);
      *out = NULL;
      return false;
    }
    /* Each becomes the context qemu:dirty-bitmap:NAME, one string on
     * the wire; a selection of them is one 64-bit word. */
    if (strlen("qemu:dirty-bitmap:") + strlen(json_string_value(x)) >
        NBD_MAX_STRING || i >= 64) {
      if (i >= 64)
        vc_error_set(err, "GenericError", "at most 64 bitmaps per export");
      else
        vc_error_set(err, "GenericError", "bitmap name '%.32s...' too long",
                     json_string_value(x));
      free(*out);
      *out = NULL;
      return false;
    }
    (*out)[i] = json_string_value(x);
  }
  return true;
}

static json_t *cmd_export_add(struct vc_server *vc, json_t *args,
                              void *opaque, struct vc_error *err)
{
  static const char *const extra[] = {
    "description", "bitmaps", "allocation-depth", "writethrough", NULL,
  };
  struct vc_export_opts o;
  const char *name, *desc = NULL;
  const char **bitmaps = NULL;
  bool alloc_depth = false, writethrough = false;
  struct vd_node *node = NULL;
  struct nbd_export *e = NULL;
  int r;
  (void)opaque;

  if (!vc_export_opts_parse(args, "nbd", extra, &o, err) ||
      !vc_arg_str(args, "description", false, &desc, err) ||
      !vc_arg_bool(args, "allocation-depth", false, &alloc_depth, err) ||
      !vc_arg_bool(args, "writethrough", false, &writethrough, err))
    return NULL;
  name = o.name ? o.name : o.node_name ? o.node_name : o.id;
  if (strlen(name) > NBD_MAX_STRING) {
    vc_error_set(err, "GenericError", "export name '%s' too long", name);
    return NULL;
  }
  if (desc && strlen(desc) > NBD_MAX_STRING) {
    vc_error_set(err, "GenericError", "description '%s' too long", desc);
    return NULL;
  }
  /* Cheap refusals before opening anything. */
  e = nbd_exports_get_id(srv->exports, o.id);
  if (e) {
    nbd_export_put(srv->exports, e);
    vc_error_set(err, "GenericError", "Block export id '%s' is already in "
                 "use", o.id);
    return NULL;
  }
  e = nbd_exports_get(srv->exports, name, strlen(name));
  if (e && (name[0] || strcmp(e->name, "") == 0)) {
    nbd_export_put(srv->exports, e);
    vc_error_set(err, "GenericError", "NBD server already has export named "
                 "'%s'", name);
    return NULL;
  }
  nbd_export_put(srv->exports, e);
  e = NULL;
  if (!arg_strv(args, "bitmaps", &bitmaps, err))
    return NULL;

  node = vc_export_node(vc, &o, err);
  if (!node)
    goto fail;
  /* An image opened here records into its persistent bitmaps too
   * (IMAGE.bitmaps, marked in use while open), and every bitmap offered
   * must exist and be consistent (QEMU refuses the export otherwise). */
  if (o.filename && vd_node_bitmaps_attach(node, o.filename) < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    goto fail_node;
  }
  for (size_t i = 0; bitmaps && bitmaps[i]; i++) {
    if (vd_node_bitmap_hold(node, bitmaps[i]) < 0) {
      vc_error_set(err, "GenericError", "%s", vd_error());
      goto fail_node;
    }
    vd_node_bitmap_release(node, bitmaps[i]);
  }
  struct nbd_export_args ea = {
    .id = o.id, .name = name, .node_name = o.node_name ? o.node_name : o.id,
    .description = desc,
    /* Our own device when opened here: nothing swaps it yet. */
    .format = o.filename ? vd_format(vd_node_dev(node)) : NULL,
    .node = node, .read_only = !o.writable, .owns_node = o.filename != NULL,
    .bitmaps = bitmaps, .alloc_depth = alloc_depth,
  };
  e = nbd_export_new(&ea);
  if (!e) {
    vc_error_set(err, "GenericError", "out of memory");
    goto fail_node;
  }
  if (o.filename && vc_device_add(vc, o.id, node) < 0) {
    vc_error_set(err, "GenericError", "Device name '%s' is already in use",
                 o.id);
    goto fail_node;
  }
  r = nbd_exports_add(srv->exports, e, false);
  if (r < 0) {
    /* Checked above; commands are serialised, so only a bug lands here. */
    vc_error_set(err, "GenericError", "export '%s' cannot be listed: %s",
                 o.id, strerror(-r));
    if (o.filename)
      vc_device_remove(vc, o.id);
    goto fail_node;
  }
  free(bitmaps);
  return json_object();

fail_node:
  nbd_export_discard(e);
  if (o.filename)
    vd_node_bitmaps_detach(node);
  if (o.filename && vd_node_free(node) < 0)
    nbd_log("%s: %s", o.filename, vd_error());
fail:
  free(bitmaps);
  return NULL;
}

static json_t *cmd_export_del(struct vc_server *vc, json_t *args,
                              void *opaque, struct vc_error *err)
{
  struct nbd_export *e;
  const char *id;
  bool owns, hard;
  int r;
  (void)opaque;

  if (!vc_export_del_parse(args, &id, &hard, err))
    return NULL;
  e = nbd_exports_get_id(srv->exports, id);
  if (!e)
    return vc_export_del_reply(-ENOENT, id, err);
  owns = e->release_opaque != NULL;
  /* An export that owns its node takes the node with it: not while a
   * job works on it or another export serves it. */
  if (owns && !e->removed &&
      !vc_export_node_removable(vc, e->node_name,
                                nbd_exports_node_shared(srv->exports, e,
                                                        e->node), err)) {
    nbd_export_put(srv->exports, e);
    return NULL;
  }
  r = nbd_exports_del(srv->exports, id, hard ? NBD_DEL_HARD : NBD_DEL_SAFE);
  if (r == 0 && owns)
    /* No new command finds the node; the export frees it once released. */
    vc_device_remove(vc, e->node_name);
  nbd_export_put(srv->exports, e);
  return vc_export_del_reply(r, id, err);
}

static json_t *cmd_query_exports(struct vc_server *vc, json_t *args,
                                 void *opaque, struct vc_error *err)
{
  static const char *const known[] = { NULL };
  struct nbd_export **v;
  json_t *list;
  long n;
  (void)vc;
  (void)opaque;

  if (!vc_arg_only(args, known, err))
    return NULL;
  n = nbd_exports_list(srv->exports, true, &v);
  if (n < 0 || !(list = json_array())) {
    vc_error_set(err, "GenericError", "out of memory");
    if (n >= 0)
      nbd_exports_put_all(srv->exports, v, (size_t)n);
    return NULL;
  }
  for (long i = 0; i < n; i++)
    /* removed is written under the registry lock by commands only, and
     * commands are serialised: reading it here is safe. */
    json_array_append_new(list, json_pack("{s:s, s:s, s:s, s:b}",
                                          "id", v[i]->id, "type", "nbd",
                                          "node-name", v[i]->node_name,
                                          "shutting-down", v[i]->removed));
  nbd_exports_put_all(srv->exports, v, (size_t)n);
  return list;
}

int nbd_control_start(struct vc_server *vc, struct nbd_server *server)
{
  static const struct vc_command_def cmds[] = {
    { "block-export-add", cmd_export_add },
    { "block-export-del", cmd_export_del },
    { "query-block-exports", cmd_query_exports },
    { NULL, NULL },
  };
  int r;
  srv = server;
  r = vc_command_register_table(vc, cmds);
  if (r < 0)
    return r;
  atomic_store(&events, vc);
  return 0;
}
