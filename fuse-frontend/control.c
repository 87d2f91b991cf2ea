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
#include "vdisk/control/export-opts.h"
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

static bool name_ok(const char *name)
{
  return *name && strlen(name) <= NAME_MAX && !strchr(name, '/') &&
         strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

/* Free a disk block-export-add built but did not list. */
static void image_discard(struct vf_image *im)
{
  if (im->owns_node && vd_node_free(im->node) < 0)
    vf_log("%s: %s", im->path, vd_error());
  free(im->path);
  free(im->name);
  free(im->id);
  free(im->node_name);
  free(im);
}

static json_t *cmd_export_add(struct vc_server *vc, json_t *args,
                              void *opaque, struct vc_error *err)
{
  struct vc_export_opts o;
  struct vf_image *im, *x;
  struct stat before;
  bool have_before = false;
  int r;
  (void) opaque;

  if (!vc_export_opts_parse(args, "fuse", NULL, &o, err))
    return NULL;
  if (st->single) {
    vc_error_set(err, "GenericError", "The mount point is a single disk: "
                 "no export can be added");
    return NULL;
  }
  if (o.writable && st->read_only) {
    vc_error_set(err, "GenericError", "Cannot export read-only node as "
                 "writable");
    return NULL;
  }
  if ((x = vf_disks_get_id(&st->disks, o.id)) != NULL) {
    vf_disks_put(&st->disks, x);
    vc_error_set(err, "GenericError", "Block export id '%s' is already in "
                 "use", o.id);
    return NULL;
  }
  im = calloc(1, sizeof *im);
  if (!im) {
    vc_error_set(err, "GenericError", "out of memory");
    return NULL;
  }
  im->added = true;
  im->id = strdup(o.id);
  im->node_name = strdup(o.node_name ? o.node_name : o.id);
  im->path = strdup(o.filename ? o.filename : o.node_name);
  im->name = o.name ? strdup(o.name)
                    : o.filename ? vf_exposed_name(o.filename)
                                 : strdup(o.node_name);
  if (!im->id || !im->node_name || !im->path || !im->name) {
    vc_error_set(err, "GenericError", "out of memory");
    goto fail;
  }
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

  if (o.filename)
    have_before = stat(o.filename, &before) == 0;
  im->node = vc_export_node(vc, &o, err);
  if (!im->node)
    goto fail;
  im->owns_node = o.filename != NULL;
  vf_image_fill(im, !o.writable);
  if (o.node_name) {
    /* No image file of its own to mirror: the mount owner's, 0600. */
    im->uid = st->uid;
    im->gid = st->gid;
    im->perm = im->read_only ? 0400 : 0600;
  } else {
    /* Mirror the image file's owner and mode, as the command line's. */
    if (vf_take_perms(im, have_before ? &before : NULL) < 0) {
      vc_error_set(err, "GenericError", "%s: replaced or unreadable while "
                   "being opened", o.filename);
      goto fail;
    }
    if (vc_device_add(vc, o.id, im->node) < 0) {
      vc_error_set(err, "GenericError", "Device name '%s' is already in "
                   "use", o.id);
      goto fail;
    }
  }
  r = vf_disks_add(&st->disks, im);
  if (r < 0) {
    vc_error_set(err, "GenericError", "cannot add '%s': %s", im->name,
                 strerror(-r));
    if (o.filename)
      vc_device_remove(vc, o.id);
    goto fail;
  }
  return json_object();

fail:
  image_discard(im);
  return NULL;
}

static json_t *cmd_export_del(struct vc_server *vc, json_t *args,
                              void *opaque, struct vc_error *err)
{
  struct vf_image *im;
  const char *id;
  uint64_t ino = 0;
  char *name = NULL, *dev = NULL;
  bool hard;
  int r;
  (void) opaque;

  if (!vc_export_del_parse(args, &id, &hard, err))
    return NULL;
  if (st->single) {
    vc_error_set(err, "GenericError", "The mount point is a single disk: "
                 "its export cannot be removed");
    return NULL;
  }
  im = vf_disks_get_id(&st->disks, id);
  if (!im)
    return vc_export_del_reply(-ENOENT, id, err);
  /* A disk that owns its node takes the node with it: not while a job
   * works on it or another disk serves it. */
  if (im->owns_node && !im->removed) {
    if (!vc_export_node_removable(vc, im->node_name,
                                  vf_disks_node_shared(&st->disks, im,
                                                       im->node), err)) {
      vf_disks_put(&st->disks, im);
      return NULL;
    }
    dev = strdup(im->node_name);
  }
  vf_disks_put(&st->disks, im);
  r = vf_disks_del(&st->disks, id, hard, &ino, &name);
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
  return vc_export_del_reply(r, id, err);
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
  static const struct vc_command_def cmds[] = {
    { "block-export-add", cmd_export_add },
    { "block-export-del", cmd_export_del },
    { "query-block-exports", cmd_query_exports },
    { NULL, NULL },
  };
  int r;
  st = s;
  r = vc_command_register_table(vc, cmds);
  if (r < 0)
    return r;
  atomic_store(&events, vc);
  return 0;
}
