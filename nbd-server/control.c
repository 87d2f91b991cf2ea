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

/* QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'. */
static bool id_wellformed(const char *id)
{
  if (!((*id >= 'a' && *id <= 'z') || (*id >= 'A' && *id <= 'Z')))
    return false;
  for (const char *p = id + 1; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
          (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_'))
      return false;
  return true;
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
    (*out)[i] = json_string_value(x);
  }
  return true;
}

/* Open FILENAME for an export as command-line images are opened (the
 * same vd_open_opts, so the same confinement of backing files) and make
 * it a node. */
static struct vd_node *open_image(const char *filename, const char *format,
                                  bool read_only, struct vc_error *err)
{
  struct vd_open_args oa = { .format = format,
                             .flags = read_only ? 0 : VD_OPEN_RDWR };
  struct vd_dev *dev;
  struct vd_node *node;

  if (vd_open_opts(filename, &oa, &dev) < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    return NULL;
  }
  if (vd_node_new(dev, &node) < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    vd_close(dev);
    return NULL;
  }
  return node;
}

static json_t *cmd_export_add(struct vc_server *vc, json_t *args,
                              void *opaque, struct vc_error *err)
{
  static const char *const known[] = {
    "type", "id", "node-name", "name", "description", "writable",
    "bitmaps", "allocation-depth", "filename", "format", "read-only",
    "writethrough", NULL,
  };
  const char *type = NULL, *id = NULL, *node_name = NULL, *name = NULL;
  const char *desc = NULL, *filename = NULL, *format = NULL;
  const char **bitmaps = NULL;
  bool writable = false, alloc_depth = false, writethrough = false;
  bool read_only, has_ro = false;
  struct vd_node *node = NULL;
  struct nbd_export *e = NULL;
  const char *fmt_desc = NULL;
  int r;
  (void)opaque;

  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "type", true, &type, err) ||
      !vc_arg_str(args, "id", true, &id, err) ||
      !vc_arg_str(args, "node-name", false, &node_name, err) ||
      !vc_arg_str(args, "name", false, &name, err) ||
      !vc_arg_str(args, "description", false, &desc, err) ||
      !vc_arg_bool(args, "writable", false, &writable, err) ||
      !vc_arg_bool(args, "allocation-depth", false, &alloc_depth, err) ||
      !vc_arg_bool(args, "writethrough", false, &writethrough, err) ||
      !vc_arg_str(args, "filename", false, &filename, err) ||
      !vc_arg_str(args, "format", false, &format, err))
    return NULL;
  has_ro = json_object_get(args, "read-only") != NULL;
  read_only = !writable;
  if (!vc_arg_bool(args, "read-only", false, &read_only, err))
    return NULL;
  if (strcmp(type, "nbd") != 0) {
    vc_error_set(err, "GenericError", "Parameter 'type' does not accept "
                 "value '%s' (this server exports type 'nbd')", type);
    return NULL;
  }
  if (!id_wellformed(id)) {
    vc_error_set(err, "GenericError", "Invalid block export id '%s'", id);
    return NULL;
  }
  if (!node_name == !filename) {
    vc_error_set(err, "GenericError", "Exactly one of 'node-name' and "
                 "'filename' is needed");
    return NULL;
  }
  if (node_name && (format || has_ro)) {
    vc_error_set(err, "GenericError", "'format' and 'read-only' go with "
                 "'filename', not with 'node-name'");
    return NULL;
  }
  if (!name)
    name = node_name ? node_name : id;
  if (strlen(name) > NBD_MAX_STRING) {
    vc_error_set(err, "GenericError", "export name '%s' too long", name);
    return NULL;
  }
  if (desc && strlen(desc) > NBD_MAX_STRING) {
    vc_error_set(err, "GenericError", "description '%s' too long", desc);
    return NULL;
  }
  if (writable && read_only) {
    vc_error_set(err, "GenericError", "Cannot export read-only node as "
                 "writable");
    return NULL;
  }
  /* Cheap refusals before opening anything. */
  e = nbd_exports_get_id(srv->exports, id);
  if (e) {
    nbd_export_put(srv->exports, e);
    vc_error_set(err, "GenericError", "Block export id '%s' is already in "
                 "use", id);
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

  if (node_name) {
    node = vc_device_find(vc, node_name);
    if (!node) {
      vc_error_set(err, "GenericError", "Cannot find device='' nor "
                   "node-name='%s'", node_name);
      goto fail;
    }
    if (writable && vd_node_is_read_only(node)) {
      vc_error_set(err, "GenericError", "Cannot export read-only node as "
                   "writable");
      goto fail;
    }
  } else {
    /* The new device is named after the export's id. */
    if (vc_device_find(vc, id)) {
      vc_error_set(err, "GenericError", "Device name '%s' is already in "
                   "use", id);
      goto fail;
    }
    node = open_image(filename, format, read_only, err);
    if (!node)
      goto fail;
    if (writable && vd_node_is_read_only(node)) {
      vc_error_set(err, "GenericError", "Cannot export read-only node as "
                   "writable");
      vd_node_free(node);
      node = NULL;
      goto fail;
    }
    fmt_desc = vd_format(vd_node_dev(node));  /* ours: nothing swaps it */
  }

  struct nbd_export_args ea = {
    .id = id, .name = name, .node_name = node_name ? node_name : id,
    .description = desc, .format = fmt_desc, .node = node,
    .read_only = !writable, .owns_node = filename != NULL,
    .bitmaps = bitmaps, .alloc_depth = alloc_depth,
  };
  e = nbd_export_new(&ea);
  if (!e) {
    vc_error_set(err, "GenericError", "out of memory");
    goto fail_node;
  }
  if (filename && vc_device_add(vc, id, node) < 0) {
    vc_error_set(err, "GenericError", "Device name '%s' is already in use",
                 id);
    goto fail_node;
  }
  r = nbd_exports_add(srv->exports, e, false);
  if (r < 0) {
    /* Checked above; commands are serialised, so only a bug lands here. */
    vc_error_set(err, "GenericError", "export '%s' cannot be listed: %s",
                 id, strerror(-r));
    if (filename)
      vc_device_remove(vc, id);
    goto fail_node;
  }
  free(bitmaps);
  return json_object();

fail_node:
  nbd_export_discard(e);
  if (filename && node && vd_node_free(node) < 0)
    nbd_log("%s: %s", filename, vd_error());
fail:
  free(bitmaps);
  return NULL;
}

static json_t *cmd_export_del(struct vc_server *vc, json_t *args,
                              void *opaque, struct vc_error *err)
{
  static const char *const known[] = { "id", "mode", NULL };
  const char *id = NULL, *mode = "safe";
  struct nbd_export *e;
  bool owns;
  int r;
  (void)opaque;

  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "id", true, &id, err) ||
      !vc_arg_str(args, "mode", false, &mode, err))
    return NULL;
  if (strcmp(mode, "safe") != 0 && strcmp(mode, "hard") != 0) {
    vc_error_set(err, "GenericError", "Parameter 'mode' does not accept "
                 "value '%s'", mode);
    return NULL;
  }
  e = nbd_exports_get_id(srv->exports, id);
  if (!e) {
    vc_error_set(err, "GenericError", "Export '%s' is not found", id);
    return NULL;
  }
  owns = e->release_opaque != NULL;
  /* An export that owns its node takes the node with it: not while a
   * job works on it or another export serves it. */
  if (owns && !e->removed) {
    if (vc_device_busy(vc, e->node_name)) {
      vc_error_set(err, "GenericError", "Node '%s' is busy: a block job "
                   "runs on it", e->node_name);
      nbd_export_put(srv->exports, e);
      return NULL;
    }
    if (nbd_exports_node_shared(srv->exports, e, e->node)) {
      vc_error_set(err, "GenericError", "Node '%s' is still exported by "
                   "another export", e->node_name);
      nbd_export_put(srv->exports, e);
      return NULL;
    }
  }
  r = nbd_exports_del(srv->exports, id,
                      strcmp(mode, "hard") == 0 ? NBD_DEL_HARD
                                                : NBD_DEL_SAFE);
  if (r == 0 && owns)
    /* No new command finds the node; the export frees it once released. */
    vc_device_remove(vc, e->node_name);
  nbd_export_put(srv->exports, e);
  switch (r) {
  case 0:
    return json_object();
  case -EALREADY:
    vc_error_set(err, "GenericError", "Export '%s' is already shutting "
                 "down", id);
    return NULL;
  case -EBUSY:
    vc_error_set(err, "GenericError", "export '%s' still in use (use "
                 "mode='hard' to force client disconnect)", id);
    return NULL;
  default:
    vc_error_set(err, "GenericError", "Export '%s' is not found", id);
    return NULL;
  }
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
  int r;
  srv = server;
  if ((r = vc_command_register(vc, "block-export-add", cmd_export_add,
                               NULL)) < 0 ||
      (r = vc_command_register(vc, "block-export-del", cmd_export_del,
                               NULL)) < 0 ||
      (r = vc_command_register(vc, "query-block-exports", cmd_query_exports,
                               NULL)) < 0)
    return r;
  atomic_store(&events, vc);
  return 0;
}
