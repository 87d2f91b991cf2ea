/* cmd-bitmap.c: QEMU's dirty bitmap commands over the control socket
 * (block-dirty-bitmap-add/-remove/-clear/-enable/-disable/-merge) and the
 * "dirty-bitmaps" list of query-block, on libvdisk's named node bitmaps
 * (vd_node_bitmap_*, vdisk/node-bitmap.c).  Argument names, defaults and
 * error wording follow QEMU's qapi/block-core.json and block/dirty-bitmap.c.
 * "node" names a registered device (the export's name). */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/control/internal.h"
#include "vdisk/vdisk.h"

/* The node named by ARGS' "node", or NULL with *ERR set. */
static struct vd_node *arg_node(struct vc_server *s, json_t *args,
                                const char **name, struct vc_error *err)
{
  const char *node = NULL;
  struct vd_node *n;

  if (!vc_arg_str(args, "node", true, &node, err) ||
      (name && !vc_arg_str(args, "name", true, name, err)))
    return NULL;
  n = vc_device_find(s, node);
  if (!n)
    vc_error_set(err, "GenericError",
                 "Cannot find device='%s' nor node-name='%s'", node, node);
  return n;
}

/* R (a libvdisk result) as a QMP reply. */
static json_t *reply(int r, struct vc_error *err)
{
  if (r < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    return NULL;
  }
  return json_object();
}

static json_t *cmd_add(struct vc_server *s, json_t *args, void *opaque,
                       struct vc_error *err)
{
  static const char *const known[] = { "node", "name", "granularity",
                                       "persistent", "disabled", NULL };
  const char *name = NULL;
  uint64_t gran = 0;
  bool persistent = false, disabled = false;
  struct vd_node *n;

  (void)opaque;
  if (!vc_arg_only(args, known, err) ||
      !(n = arg_node(s, args, &name, err)) ||
      !vc_arg_uint(args, "granularity", false, &gran, err) ||
      !vc_arg_bool(args, "persistent", false, &persistent, err) ||
      !vc_arg_bool(args, "disabled", false, &disabled, err))
    return NULL;
  if (json_object_get(args, "granularity") &&
      (gran < 512 || gran > (UINT64_C(1) << 31) || (gran & (gran - 1)))) {
    vc_error_set(err, "GenericError", "Granularity must be power of 2, and "
                 "at least 512");
    return NULL;
  }
  return reply(vd_node_bitmap_add(n, name, (uint32_t)gran,
                                  (persistent ? VD_BITMAP_PERSISTENT : 0) |
                                  (disabled ? VD_BITMAP_DISABLED : 0)),
               err);
}

/* The commands that take only "node" and "name"; OPAQUE points at the
 * enum simple_op of the command. */
enum simple_op { OP_REMOVE, OP_CLEAR, OP_ENABLE, OP_DISABLE };

static json_t *cmd_simple(struct vc_server *s, json_t *args, void *opaque,
                          struct vc_error *err)
{
  static const char *const known[] = { "node", "name", NULL };
  const char *name = NULL;
  struct vd_node *n;
  int r;

  if (!vc_arg_only(args, known, err) || !(n = arg_node(s, args, &name, err)))
    return NULL;
  switch (*(const enum simple_op *)opaque) {
  case OP_REMOVE:  r = vd_node_bitmap_remove(n, name); break;
  case OP_CLEAR:   r = vd_node_bitmap_clear(n, name); break;
  case OP_ENABLE:  r = vd_node_bitmap_enable(n, name, true); break;
  default:         r = vd_node_bitmap_enable(n, name, false); break;
  }
  return reply(r, err);
}

/* block-dirty-bitmap-merge: "bitmaps" lists names on the same node, or
 * {"node", "name"} objects (QEMU's BlockDirtyBitmapOrStr); sources on
 * another node are refused (a bitmap covers one node's size). */
static json_t *cmd_merge(struct vc_server *s, json_t *args, void *opaque,
                         struct vc_error *err)
{
  static const char *const known[] = { "node", "target", "bitmaps", NULL };
  const char *target = NULL, *node = NULL;
  struct vd_node *n;
  json_t *list, *v;
  size_t i;

  (void)opaque;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "target", true, &target, err) ||
      !(n = arg_node(s, args, NULL, err)))
    return NULL;
  vc_arg_str(args, "node", true, &node, err);
  list = json_object_get(args, "bitmaps");
  if (!list) {
    vc_error_set(err, "GenericError", "Parameter 'bitmaps' is missing");
    return NULL;
  }
  if (!json_is_array(list)) {
    vc_error_set(err, "GenericError", "Parameter 'bitmaps' expects array");
    return NULL;
  }
  /* Check every source before merging any. */
  json_array_foreach(list, i, v) {
    const char *src = json_string_value(v);
    if (json_is_object(v)) {
      const char *sn = json_string_value(json_object_get(v, "node"));
      src = json_string_value(json_object_get(v, "name"));
      if (!sn || !src) {
        vc_error_set(err, "GenericError", "Parameter 'bitmaps' expects "
                     "names or {\"node\", \"name\"} objects");
        return NULL;
      }
      if (vc_device_find(s, sn) != n) {
        vc_error_set(err, "GenericError", "Bitmap '%s' of node '%s' is not "
                     "on node '%s'", src, sn, node);
        return NULL;
      }
    } else if (!src) {
      vc_error_set(err, "GenericError", "Parameter 'bitmaps' expects names "
                   "or {\"node\", \"name\"} objects");
      return NULL;
    }
  }
  json_array_foreach(list, i, v) {
    const char *src = json_is_object(v)
                        ? json_string_value(json_object_get(v, "name"))
                        : json_string_value(v);
    if (vd_node_bitmap_merge(n, target, src) < 0)
      return reply(-1, err);
  }
  return json_object();
}

json_t *vc_bitmap_query(struct vd_node *node)
{
  struct vd_bitmap_info *v;
  size_t n, i;
  json_t *list;

  if (vd_node_bitmap_list(node, &v, &n) < 0 || n == 0)
    return NULL;
  list = json_array();
  for (i = 0; list && i < n; i++) {
    json_t *o = json_pack("{s:s, s:I, s:I, s:b, s:b, s:b}",
                          "name", v[i].name,
                          "count", (json_int_t)v[i].count,
                          "granularity", (json_int_t)v[i].granularity,
                          "recording", v[i].recording,
                          "busy", v[i].busy,
                          "persistent", v[i].persistent);
    /* QEMU lists "inconsistent" only when true. */
    if (o && v[i].inconsistent)
      json_object_set_new(o, "inconsistent", json_true());
    json_array_append_new(list, o);
  }
  free(v);
  return list;
}

int vc_bitmap_register_commands(struct vc_server *s)
{
  static const struct vc_command_def cmds[] = {
    { "block-dirty-bitmap-add", cmd_add },
    { "block-dirty-bitmap-merge", cmd_merge },
    { NULL, NULL },
  };
  static const struct { const char *name; enum simple_op op; } simple[] = {
    { "block-dirty-bitmap-remove", OP_REMOVE },
    { "block-dirty-bitmap-clear", OP_CLEAR },
    { "block-dirty-bitmap-enable", OP_ENABLE },
    { "block-dirty-bitmap-disable", OP_DISABLE },
  };
  int r = vc_command_register_table(s, cmds);
  for (size_t i = 0; r == 0 && i < sizeof simple / sizeof simple[0]; i++)
    r = vc_command_register(s, simple[i].name, cmd_simple,
                            (void *)&simple[i].op);
  return r;
}
