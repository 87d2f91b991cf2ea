/* export-opts.c: block-export-add/-del's shared arguments (export-opts.h). */
#include <config.h>

#include <errno.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "vdisk/control/export-opts.h"
#include "vdisk/control/internal.h"

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

bool vc_export_opts_parse(json_t *args, const char *type,
                          const char *const *extra,
                          struct vc_export_opts *o, struct vc_error *err)
{
  static const char *const common[] = {
    "type", "id", "node-name", "filename", "format", "read-only", "name",
    "writable",
  };
  enum { NCOMMON = sizeof common / sizeof common[0] };
  const char *known[NCOMMON + 16];
  const char *t = NULL;
  size_t n = 0;
  bool has_ro;

  for (n = 0; n < NCOMMON; n++)
    known[n] = common[n];
  for (size_t i = 0; extra && extra[i] && n < NCOMMON + 15; i++)
    known[n++] = extra[i];
  known[n] = NULL;

  *o = (struct vc_export_opts){ 0 };
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "type", true, &t, err) ||
      !vc_arg_str(args, "id", true, &o->id, err) ||
      !vc_arg_str(args, "node-name", false, &o->node_name, err) ||
      !vc_arg_str(args, "filename", false, &o->filename, err) ||
      !vc_arg_str(args, "format", false, &o->format, err) ||
      !vc_arg_str(args, "name", false, &o->name, err) ||
      !vc_arg_bool(args, "writable", false, &o->writable, err))
    return false;
  has_ro = json_object_get(args, "read-only") != NULL;
  o->read_only = !o->writable;
  if (!vc_arg_bool(args, "read-only", false, &o->read_only, err))
    return false;
  if (strcmp(t, type) != 0) {
    vc_error_set(err, "GenericError", "Parameter 'type' does not accept "
                 "value '%s' (this server exports type '%s')", t, type);
    return false;
  }
  if (!id_wellformed(o->id)) {
    vc_error_set(err, "GenericError", "Invalid block export id '%s'", o->id);
    return false;
  }
  if (!o->node_name == !o->filename) {
    vc_error_set(err, "GenericError", "Exactly one of 'node-name' and "
                 "'filename' is needed");
    return false;
  }
  if (o->node_name && (o->format || has_ro)) {
    vc_error_set(err, "GenericError", "'format' and 'read-only' go with "
                 "'filename', not with 'node-name'");
    return false;
  }
  if (o->writable && o->read_only) {
    vc_error_set(err, "GenericError", "Cannot export read-only node as "
                 "writable");
    return false;
  }
  return true;
}

struct vd_node *vc_export_node(struct vc_server *s,
                               const struct vc_export_opts *o,
                               struct vc_error *err)
{
  struct vd_node *node;

  if (o->node_name) {
    node = vc_device_find(s, o->node_name);
    if (!node) {
      vc_error_set(err, "GenericError", "Cannot find device='' nor "
                   "node-name='%s'", o->node_name);
      return NULL;
    }
  } else {
    struct vd_open_args oa = { .format = o->format,
                               .flags = o->read_only ? 0 : VD_OPEN_RDWR };
    struct vd_dev *dev;
    if (vc_device_find(s, o->id)) {
      vc_error_set(err, "GenericError", "Device name '%s' is already in "
                   "use", o->id);
      return NULL;
    }
    if (vd_open_opts(o->filename, &oa, &dev) < 0) {
      vc_error_set(err, "GenericError", "%s", vd_error());
      return NULL;
    }
    if (vd_node_new(dev, &node) < 0) {
      vc_error_set(err, "GenericError", "%s", vd_error());
      vd_close(dev);
      return NULL;
    }
  }
  if (o->writable && vd_node_is_read_only(node)) {
    vc_error_set(err, "GenericError", "Cannot export read-only node as "
                 "writable");
    if (o->filename)
      vd_node_free(node);       /* opened read-only: nothing to flush */
    return NULL;
  }
  return node;
}

bool vc_export_del_parse(json_t *args, const char **id, bool *hard,
                         struct vc_error *err)
{
  static const char *const known[] = { "id", "mode", NULL };
  const char *mode = "safe";

  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "id", true, id, err) ||
      !vc_arg_str(args, "mode", false, &mode, err))
    return false;
  if (strcmp(mode, "safe") != 0 && strcmp(mode, "hard") != 0) {
    vc_error_set(err, "GenericError", "Parameter 'mode' does not accept "
                 "value '%s'", mode);
    return false;
  }
  *hard = strcmp(mode, "hard") == 0;
  return true;
}

bool vc_export_node_removable(struct vc_server *s, const char *node_name,
                              bool shared, struct vc_error *err)
{
  if (vc_device_busy(s, node_name)) {
    vc_error_set(err, "GenericError", "Node '%s' is busy: a block job runs "
                 "on it", node_name);
    return false;
  }
  if (shared) {
    vc_error_set(err, "GenericError", "Node '%s' is still exported by "
                 "another export", node_name);
    return false;
  }
  return true;
}

json_t *vc_export_del_reply(int r, const char *id, struct vc_error *err)
{
  switch (r) {
  case 0:
    return json_object();
  case -EALREADY:
    vc_error_set(err, "GenericError", "Export '%s' is already shutting "
                 "down", id);
    return NULL;
  case -EBUSY:
    /* QEMU's message, with its hint (which QMP does not carry). */
    vc_error_set(err, "GenericError", "export '%s' still in use (use "
                 "mode='hard' to force client disconnect)", id);
    return NULL;
  case -ENOMEM:
    vc_error_set(err, "GenericError", "out of memory");
    return NULL;
  default:
    vc_error_set(err, "GenericError", "Export '%s' is not found", id);
    return NULL;
  }
}
