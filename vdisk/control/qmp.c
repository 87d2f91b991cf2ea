/* qmp.c: the QMP protocol: the greeting, capabilities negotiation,
 * request validation, dispatch to the registered commands and the shape
 * of replies, as QEMU's monitor gives them (qapi/qmp-dispatch.c):
 *   -> {"execute": "query-version", "arguments": {...}, "id": ANY}
 *   <- {"return": {...}, "id": ANY}  or  {"error": {"class", "desc"}, "id"}
 */
#include <config.h>

#include <stdio.h>
#include <string.h>

#include "vdisk/control/internal.h"

json_t *vc_greeting(struct vc_server *s)
{
  int major = 0, minor = 0, micro = 0;
  char pkg[128];
  sscanf(PACKAGE_VERSION, "%d.%d.%d", &major, &minor, &micro);
  snprintf(pkg, sizeof pkg, "%s %s", s->program, PACKAGE_VERSION);
  return json_pack("{s:{s:{s:{s:i, s:i, s:i}, s:s}, s:[]}}", "QMP",
                   "version", "qemu", "major", major, "minor", minor,
                   "micro", micro, "package", pkg, "capabilities");
}

json_t *vc_error_reply(const char *cls, const char *desc, json_t *id)
{
  json_t *r = json_pack("{s:{s:s, s:s}}", "error", "class", cls, "desc",
                        desc);
  if (r && id)
    json_object_set(r, "id", id);
  return r;
}

static vc_cmd_fn find_command(struct vc_server *s, const char *name,
                              void **opaque)
{
  vc_cmd_fn fn = NULL;
  pthread_mutex_lock(&s->lock);
  for (struct vc_command *c = s->commands; c; c = c->next)
    if (strcmp(c->name, name) == 0) {
      fn = c->fn;
      *opaque = c->opaque;
      break;
    }
  pthread_mutex_unlock(&s->lock);
  return fn;
}

json_t *vc_execute(struct vc_server *s, const char *name, json_t *args,
                   struct vc_error *err)
{
  void *opaque = NULL;
  vc_cmd_fn fn = find_command(s, name, &opaque);
  json_t *empty = NULL, *ret;

  if (!fn) {
    vc_error_set(err, "CommandNotFound", "The command %s has not been found",
                 name);
    return NULL;
  }
  if (!args)
    args = empty = json_object();
  memset(err, 0, sizeof *err);
  pthread_mutex_lock(&s->cmd_lock);
  ret = fn(s, args, opaque, err);
  pthread_mutex_unlock(&s->cmd_lock);
  json_decref(empty);
  if (!ret && !err->cls[0])
    vc_error_set(err, "GenericError", "%s failed", name);
  return ret;
}

json_t *vc_handle_message(struct vc_server *s, json_t *req,
                          const char *parse_err, bool *caps)
{
  json_t *id, *args, *ret, *reply;
  const char *name, *key;
  json_t *value;
  struct vc_error err;

  if (!req)
    return vc_error_reply("GenericError", parse_err, NULL);
  if (!json_is_object(req))
    return vc_error_reply("GenericError", "QMP input must be a JSON object",
                          NULL);
  id = json_object_get(req, "id");
  json_object_foreach(req, key, value) {
    if (strcmp(key, "execute") && strcmp(key, "arguments") &&
        strcmp(key, "id")) {
      char desc[256];
      snprintf(desc, sizeof desc, "QMP input member '%.64s' is unexpected",
               key);
      return vc_error_reply("GenericError", desc, id);
    }
  }
  value = json_object_get(req, "execute");
  if (!value)
    return vc_error_reply("GenericError",
                          "QMP input lacks member 'execute'", id);
  if (!json_is_string(value))
    return vc_error_reply("GenericError",
                          "QMP input member 'execute' must be a string", id);
  name = json_string_value(value);
  args = json_object_get(req, "arguments");
  if (args && !json_is_object(args))
    return vc_error_reply("GenericError",
                          "QMP input member 'arguments' must be an object",
                          id);
  /* QEMU: before negotiation only qmp_capabilities exists; after it,
   * qmp_capabilities is refused. */
  if (!*caps && strcmp(name, "qmp_capabilities") != 0) {
    char desc[256];
    snprintf(desc, sizeof desc,
             "Expecting capabilities negotiation with 'qmp_capabilities'");
    return vc_error_reply("CommandNotFound", desc, id);
  }
  if (*caps && strcmp(name, "qmp_capabilities") == 0) {
    char desc[256];
    snprintf(desc, sizeof desc,
             "Capabilities negotiation is already complete, command ignored");
    return vc_error_reply("CommandNotFound", desc, id);
  }
  ret = vc_execute(s, name, args, &err);
  if (!ret)
    return vc_error_reply(err.cls, err.desc, id);
  if (strcmp(name, "qmp_capabilities") == 0)
    *caps = true;
  reply = json_pack("{s:o}", "return", ret);
  if (reply && id)
    json_object_set(reply, "id", id);
  return reply;
}
