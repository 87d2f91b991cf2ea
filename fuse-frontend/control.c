/* vdisk-fuse — the export commands of the control socket: files added to
 * and removed from the mount while it serves (docs/control.md).
 *
 * block-export-add with type "fuse" (a vdisk extension: QEMU's fuse export
 * mounts one file; here a file appears in the mount) exports a registered
 * device (node-name) or an image opened for it (filename); block-export-del
 * removes the file: QEMU's safe mode refuses while a file handle is open,
 * hard mode removes it at once and makes the open handles fail with EIO.
 * The kernel is told to forget the file's entry and cached pages.
 * Handlers run on the control thread, one at a time.
 */
#define FUSE_USE_VERSION 312

#include <config.h>

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <fuse_lowlevel.h>

#include "vdisk/vdisk.h"
#include "vdisk/control/control.h"
#include "vdisk/control/internal.h"
#include "fuse-frontend/control.h"

#define VF_ROOT_INO 1

static struct vf_state *st;
static _Atomic(struct vc_server *) events;
unsigned vf_release_errors;

void vf_control_stop(void)
{
  atomic_store(&events, NULL);
}

void vf_image_release(struct vf_image *im, void *opaque)
{
  struct vc_server *vc = atomic_load(&events);
  (void) opaque;
  /* The image is closed before the event says the export is gone. */
  if (im->owns_node && vd_node_free(im->node) < 0) {
    vf_log("%s: %s", im->name, vd_error());
    vf_release_errors++;
  }
  if (vc)
    vc_event(vc, "BLOCK_EXPORT_DELETED", json_pack("{s:s}", "id", im->id));
  if (!im->added)
    return;                     /* the command line's: main owns it */
  free(im->path);
  free(im->name);
  free(im->id);
  free(im->node_name);
  free(im);
}

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

static bool name_ok(const char *name)
{
  return *name && strlen(name) <= NAME_MAX && !strchr(name, '/') &&
         strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static json_t *cmd_export_add(struct vc_server *vc, json_t *args,
                              void *opaque, struct vc_error *err)
{
  static const char *const known[] = {
    "type", "id", "node-name", "name", "writable", "filename", "format",
    "read-only", NULL,
  };
  const char *type = NULL, *id = NULL, *node_name = NULL, *name = NULL;
  const char *filename = NULL, *format = NULL;
  bool writable = false, read_only, has_ro;
  struct vf_image *im = NULL, *x;
  struct vd_node *node = NULL;
  struct stat before;
  bool have_before = false;
  int r;
  (void) opaque;

  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "type", true, &type, err) ||
      !vc_arg_str(args, "id", true, &id, err) ||
      !vc_arg_str(args, "node-name", false, &node_name, err) ||
      !vc_arg_str(args, "name", false, &name, err) ||
      !vc_arg_bool(args, "writable", false, &writable, err) ||
      !vc_arg_str(args, "filename", false, &filename, err) ||
      !vc_arg_str(args, "format", false, &format, err))
    return NULL;
  has_ro = json_object_get(args, "read-only") != NULL;
  read_only = !writable;
  if (!vc_arg_bool(args, "read-only", false, &read_only, err))
    return NULL;
  if (strcmp(type, "fuse") != 0) {
    vc_error_set(err, "GenericError", "Parameter 'type' does not accept "
                 "value '%s' (this server exports type 'fuse')", type);
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
  if ((writable && read_only) || (writable && st->read_only)) {
    vc_error_set(err, "GenericError", "Cannot export read-only node as "
                 "writable");
    return NULL;
  }
  if ((x = vf_disks_get_id(&st->disks, id)) != NULL) {
    vf_disks_put(&st->disks, x);
    vc_error_set(err, "GenericError", "Block export id '%s' is already in "
                 "use", id);
    return NULL;
  }

  im = calloc(1, sizeof *im);
  if (!im)
    goto oom;
  im->added = true;
  im->id = strdup(id);
  im->node_name = strdup(node_name ? node_name : id);
  im->path = strdup(filename ? filename : node_name);
  im->name = name ? strdup(name)
                  : filename ? vf_exposed_name(filename) : strdup(node_name);
  if (!im->id || !im->node_name || !im->path || !im->name)
    goto oom;
  if (!name_ok(im->name)) {
    vc_error_set(err, "GenericError", "'%s' is not a file name", im->name);
    goto fail;
  }
  if ((x = vf_disks_get_name(&st->disks, im->name)) != NULL) {
    vf_disks_put(&st->disks, x);
    vc_error_set(err, "GenericError", "The mount already has a file named "
                 "'%s'", im->name);
    goto fail;
  }

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
    im->node = node;
    vf_image_fill(im, !writable);
    /* No image file of its own to mirror: the mount owner's, 0600. */
    im->uid = st->uid;
    im->gid = st->gid;
    im->perm = im->read_only ? 0400 : 0600;
  } else {
    struct vd_open_args oa = { .format = format,
                               .flags = read_only ? 0 : VD_OPEN_RDWR };
    struct vd_dev *dev;
    if (vc_device_find(vc, id)) {
      vc_error_set(err, "GenericError", "Device name '%s' is already in "
                   "use", id);
      goto fail;
    }
    have_before = stat(filename, &before) == 0;
    /* As the command line's images are opened (same confinement). */
    if (vd_open_opts(filename, &oa, &dev) < 0) {
      vc_error_set(err, "GenericError", "%s", vd_error());
      goto fail;
    }
    if (vd_node_new(dev, &im->node) < 0) {
      vc_error_set(err, "GenericError", "%s", vd_error());
      vd_close(dev);
      goto fail;
    }
    im->owns_node = true;
    vf_image_fill(im, !writable);
    if (writable && im->read_only) {
      vc_error_set(err, "GenericError", "Cannot export read-only node as "
                   "writable");
      goto fail;
    }
    if (vf_take_perms(im, have_before ? &before : NULL) < 0) {
      vc_error_set(err, "GenericError", "%s: replaced or unreadable while "
                   "being opened", filename);
      goto fail;
    }
    if (vc_device_add(vc, id, im->node) < 0) {
      vc_error_set(err, "GenericError", "Device name '%s' is already in "
                   "use", id);
      goto fail;
    }
  }
  r = vf_disks_add(&st->disks, im);
  if (r < 0) {
    vc_error_set(err, "GenericError", "cannot add '%s': %s", im->name,
                 strerror(-r));
    if (filename)
      vc_device_remove(vc, id);
    goto fail;
  }
  return json_object();

oom:
  vc_error_set(err, "GenericError", "out of memory");
fail:
  if (im) {
    if (im->owns_node && vd_node_free(im->node) < 0)
      vf_log("%s: %s", filename, vd_error());
    free(im->path);
    free(im->name);
    free(im->id);
    free(im->node_name);
    free(im);
  }
  return NULL;
}

static json_t *cmd_export_del(struct vc_server *vc, json_t *args,
                              void *opaque, struct vc_error *err)
{
  static const char *const known[] = { "id", "mode", NULL };
  const char *id = NULL, *mode = "safe";
  struct vf_image *im;
  uint64_t ino = 0;
  char *name = NULL;
  char *dev = NULL;
  int r;
  (void) opaque;

  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "id", true, &id, err) ||
      !vc_arg_str(args, "mode", false, &mode, err))
    return NULL;
  if (strcmp(mode, "safe") != 0 && strcmp(mode, "hard") != 0) {
    vc_error_set(err, "GenericError", "Parameter 'mode' does not accept "
                 "value '%s'", mode);
    return NULL;
  }
  im = vf_disks_get_id(&st->disks, id);
  if (!im) {
    vc_error_set(err, "GenericError", "Export '%s' is not found", id);
    return NULL;
  }
  if (im->owns_node && !im->removed) {
    if (vc_device_busy(vc, im->node_name)) {
      vc_error_set(err, "GenericError", "Node '%s' is busy: a block job "
                   "runs on it", im->node_name);
      vf_disks_put(&st->disks, im);
      return NULL;
    }
    if (vf_disks_node_shared(&st->disks, im, im->node)) {
      vc_error_set(err, "GenericError", "Node '%s' is still exported by "
                   "another export", im->node_name);
      vf_disks_put(&st->disks, im);
      return NULL;
    }
    dev = strdup(im->node_name);
  }
  vf_disks_put(&st->disks, im);
  r = vf_disks_del(&st->disks, id, strcmp(mode, "hard") == 0, &ino, &name);
  if (r == 0) {
    if (dev)
      vc_device_remove(vc, dev);
    /* The kernel caches entries and attributes for long: make it forget
     * this one, and the pages of a file still open. */
    if (st->se) {
      fuse_lowlevel_notify_inval_entry(st->se, VF_ROOT_INO, name,
                                       strlen(name));
      fuse_lowlevel_notify_inval_inode(st->se, (fuse_ino_t) ino, 0, 0);
    }
  }
  free(dev);
  free(name);
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
  case -ENOMEM:
    vc_error_set(err, "GenericError", "out of memory");
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
  struct vf_image **v;
  json_t *list;
  long n;
  (void) vc;
  (void) opaque;

  if (!vc_arg_only(args, known, err))
    return NULL;
  n = vf_disks_list(&st->disks, &v);
  if (n < 0 || !(list = json_array())) {
    vc_error_set(err, "GenericError", "out of memory");
    if (n >= 0)
      vf_disks_put_all(&st->disks, v, (size_t) n);
    return NULL;
  }
  for (long i = 0; i < n; i++)
    json_array_append_new(list, json_pack("{s:s, s:s, s:s, s:b}",
                                          "id", v[i]->id, "type", "fuse",
                                          "node-name", v[i]->node_name,
                                          "shutting-down", false));
  vf_disks_put_all(&st->disks, v, (size_t) n);
  return list;
}

int vf_control_start(struct vc_server *vc, struct vf_state *s)
{
  int r;
  st = s;
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
