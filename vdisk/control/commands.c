/* commands.c: the generic commands (qmp_capabilities, query-version,
 * query-commands, query-block) and the argument helpers every handler
 * uses, with QEMU's error wording. */
#include <config.h>

#include <errno.h>
#include <string.h>

#include "vdisk/control/internal.h"
#include "vdisk/vdisk.h"

bool vc_arg_only(json_t *args, const char *const *known, struct vc_error *err)
{
  const char *key;
  json_t *v;
  json_object_foreach(args, key, v) {
    size_t i;
    for (i = 0; known[i]; i++)
      if (strcmp(known[i], key) == 0)
        break;
    if (!known[i]) {
      vc_error_set(err, "GenericError", "Parameter '%s' is unexpected", key);
      return false;
    }
  }
  return true;
}

/* Shared by the typed helpers: the value of KEY, or NULL (*OK tells
 * whether that is fine). */
static json_t *arg_get(json_t *args, const char *key, bool required,
                       bool *ok, struct vc_error *err)
{
  json_t *v = json_object_get(args, key);
  *ok = v || !required;
  if (!*ok)
    vc_error_set(err, "GenericError", "Parameter '%s' is missing", key);
  return v;
}

static bool wrong_type(const char *key, const char *type,
                       struct vc_error *err)
{
  vc_error_set(err, "GenericError", "Parameter '%s' expects %s", key, type);
  return false;
}

bool vc_arg_str(json_t *args, const char *key, bool required,
                const char **out, struct vc_error *err)
{
  bool ok;
  json_t *v = arg_get(args, key, required, &ok, err);
  if (!v)
    return ok;
  if (!json_is_string(v))
    return wrong_type(key, "a string", err);
  *out = json_string_value(v);
  return true;
}

bool vc_arg_bool(json_t *args, const char *key, bool required, bool *out,
                 struct vc_error *err)
{
  bool ok;
  json_t *v = arg_get(args, key, required, &ok, err);
  if (!v)
    return ok;
  if (!json_is_boolean(v))
    return wrong_type(key, "a boolean", err);
  *out = json_is_true(v);
  return true;
}

bool vc_arg_uint(json_t *args, const char *key, bool required,
                 uint64_t *out, struct vc_error *err)
{
  bool ok;
  json_t *v = arg_get(args, key, required, &ok, err);
  if (!v)
    return ok;
  if (!json_is_integer(v) || json_integer_value(v) < 0)
    return wrong_type(key, "a non-negative integer", err);
  *out = (uint64_t)json_integer_value(v);
  return true;
}

static json_t *cmd_qmp_capabilities(struct vc_server *s, json_t *args,
                                    void *opaque, struct vc_error *err)
{
  static const char *const known[] = { "enable", NULL };
  json_t *enable;
  (void)s;
  (void)opaque;
  if (!vc_arg_only(args, known, err))
    return NULL;
  /* We offer no capability (the greeting's list is empty). */
  enable = json_object_get(args, "enable");
  if (enable && (!json_is_array(enable) || json_array_size(enable) > 0)) {
    vc_error_set(err, "GenericError", "Capability is not supported");
    return NULL;
  }
  return json_object();
}

static json_t *cmd_query_version(struct vc_server *s, json_t *args,
                                 void *opaque, struct vc_error *err)
{
  static const char *const known[] = { NULL };
  json_t *g, *v;
  (void)opaque;
  if (!vc_arg_only(args, known, err))
    return NULL;
  g = vc_greeting(s);
  v = json_incref(json_object_get(json_object_get(g, "QMP"), "version"));
  json_decref(g);
  return v;
}

static json_t *cmd_query_commands(struct vc_server *s, json_t *args,
                                  void *opaque, struct vc_error *err)
{
  static const char *const known[] = { NULL };
  json_t *list;
  (void)opaque;
  if (!vc_arg_only(args, known, err))
    return NULL;
  list = json_array();
  pthread_mutex_lock(&s->lock);
  for (struct vc_command *c = s->commands; c && list; c = c->next)
    json_array_append_new(list, json_pack("{s:s}", "name", c->name));
  pthread_mutex_unlock(&s->lock);
  return list;
}

/* Chains deeper than this are cut short (a loop cannot happen: the engine
 * refuses to open one). */
#define MAX_CHAIN 64

/* ImageInfo of DEV (QEMU's query-block "image"), with its parent nested as
 * "backing-image" down the chain (vd_backing_dev).  *DEPTH gets the number
 * of layers below DEV. */
static json_t *image_info(struct vd_dev *dev, int level, int *depth)
{
  struct vd_info *info = calloc(1, sizeof *info);
  struct vd_dev *parent = vd_backing_dev(dev);
  json_t *o;

  *depth = 0;
  if (!info)
    return NULL;
  if (vd_get_info(dev, info) < 0) {
    free(info);
    return json_pack("{s:s, s:s}", "filename", vd_path(dev), "format",
                     vd_format(dev));
  }
  o = json_pack("{s:s, s:s, s:I, s:I, s:b}", "filename", vd_path(dev),
                "format", vd_format(dev), "virtual-size",
                (json_int_t)info->size, "actual-size",
                (json_int_t)info->actual_size, "dirty-flag", info->dirty);
  if (o && info->cluster_size)
    json_object_set_new(o, "cluster-size",
                        json_integer((json_int_t)info->cluster_size));
  if (o && info->backing[0]) {
    json_t *b = NULL;
    json_object_set_new(o, "backing-filename", json_string(info->backing));
    json_object_set_new(o, "full-backing-filename",
                        json_string(parent ? vd_path(parent)
                                           : info->backing));
    if (info->backing_format[0])
      json_object_set_new(o, "backing-filename-format",
                          json_string(info->backing_format));
    if (parent && level < MAX_CHAIN) {
      b = image_info(parent, level + 1, depth);
    } else {
      /* Not opened (or too deep): what the image says of it. */
      b = json_pack("{s:s}", "filename", info->backing);
      if (b && info->backing_format[0])
        json_object_set_new(b, "format", json_string(info->backing_format));
    }
    json_object_set_new(o, "backing-image", b);
    ++*depth;
  }
  free(info);
  return o;
}

/* One device as query-block shows it. */
static json_t *block_info(const char *name, struct vd_node *node)
{
  /* A request bracket keeps the device alive against a pivot or a
   * snapshot running on a job thread. */
  struct vd_dev *dev = vd_node_get(node);
  int depth;
  json_t *image = image_info(dev, 0, &depth);
  json_t *o = json_pack(
    "{s:s, s:s, s:b, s:b, s:s, s:{s:s, s:s, s:s, s:b, s:I, s:i, s:b, "
    "s:s, s:o*}}",
    "device", name, "qdev", "", "locked", 0, "removable", 0,
    "io-status", "ok",
    "inserted", "node-name", name, "file", vd_path(dev),
    "drv", vd_format(dev), "ro", vd_node_is_read_only(node),
    "image-size", (json_int_t)vd_node_size(node),
    "backing_file_depth", depth, "encrypted", 0,
    "detect_zeroes", "off", "image", image);
  vd_node_put(node);
  if (o) {
    json_t *bf = json_object_get(image, "backing-filename");
    json_t *bitmaps = vc_bitmap_query(node);
    if (bf)
      json_object_set(json_object_get(o, "inserted"), "backing_file", bf);
    if (bitmaps)
      json_object_set_new(json_object_get(o, "inserted"), "dirty-bitmaps",
                          bitmaps);
  }
  return o;
}

static json_t *cmd_query_block(struct vc_server *s, json_t *args,
                               void *opaque, struct vc_error *err)
{
  static const char *const known[] = { NULL };
  struct vc_device *copy = NULL, **tail = &copy;
  json_t *list;
  (void)opaque;
  if (!vc_arg_only(args, known, err))
    return NULL;
  /* A snapshot of the table: vd_node_get may wait for a drained node,
   * and whoever drains it (a job thread) may send an event meanwhile,
   * which needs s->lock.  Devices are removed only by commands (we are
   * one) or after the server stopped, so the nodes stay valid. */
  pthread_mutex_lock(&s->lock);
  for (struct vc_device *d = s->devices; d; d = d->next) {
    struct vc_device *c = calloc(1, sizeof *c);
    if (!c || !(c->name = strdup(d->name))) {
      free(c);
      break;
    }
    c->node = d->node;
    *tail = c;
    tail = &c->next;
  }
  pthread_mutex_unlock(&s->lock);
  list = json_array();
  while (copy) {
    struct vc_device *c = copy;
    copy = c->next;
    if (list)
      json_array_append_new(list, block_info(c->name, c->node));
    free(c->name);
    free(c);
  }
  return list;
}

int vc_command_register_table(struct vc_server *s,
                              const struct vc_command_def *table)
{
  for (; table->name; table++) {
    int r = vc_command_register(s, table->name, table->fn, NULL);
    if (r < 0)
      return r;
  }
  return 0;
}

int vc_commands_register_generic(struct vc_server *s)
{
  static const struct vc_command_def cmds[] = {
    { "qmp_capabilities", cmd_qmp_capabilities },
    { "query-version", cmd_query_version },
    { "query-commands", cmd_query_commands },
    { "query-block", cmd_query_block },
    { NULL, NULL },
  };
  return vc_command_register_table(s, cmds);
}
