/* The part of QEMU's block-export-add / block-export-del that every
 * frontend's export commands share (vdisk-nbd's nbd-server/control.c,
 * vdisk-fuse's fuse-frontend/control.c): the common arguments and their
 * checks with QEMU's wording, opening an image given by "filename" (a
 * vdisk extension), and the deletion's arguments and errors.  Handlers
 * only: these run on the control thread. */
#ifndef VDISK_CONTROL_EXPORT_OPTS_H
#define VDISK_CONTROL_EXPORT_OPTS_H

#include <stdbool.h>
#include <jansson.h>

#include "vdisk/control/control.h"

struct vd_node;

struct vc_export_opts {
  const char *id;
  const char *node_name;      /* exactly one of node_name and filename */
  const char *filename;
  const char *format;         /* with filename only */
  const char *name;           /* NULL: none given */
  bool writable;              /* default false, as QEMU */
  bool read_only;             /* filename's open mode: default !writable */
};

/* Parse ARGS (strings borrowed from it) into *O: "type" must be TYPE;
 * "id", "node-name" | "filename" (+ "format", "read-only"), "name",
 * "writable"; any other key must be in EXTRA (NULL-terminated, may be
 * NULL), which the caller reads itself.  Checks the id's form and the
 * combinations.  False with *ERR set. */
bool vc_export_opts_parse(json_t *args, const char *type,
                          const char *const *extra,
                          struct vc_export_opts *o, struct vc_error *err);

/* The node an export of O serves.  With node_name: the registered device
 * (borrowed).  With filename: the image opened as the command line opens
 * images (vd_open_opts, the same confinement of backing files), as a new
 * node the caller owns; refused first if a device is already named O->id
 * (the caller registers it under that name).  Either way refused when
 * O->writable and the node is read-only.  NULL with *ERR set. */
struct vd_node *vc_export_node(struct vc_server *s,
                               const struct vc_export_opts *o,
                               struct vc_error *err);

/* block-export-del's arguments: "id", "mode" ("safe", the default, or
 * "hard").  False with *ERR set. */
bool vc_export_del_parse(json_t *args, const char **id, bool *hard,
                         struct vc_error *err);

/* Before deleting an export that owns the node of device NODE_NAME:
 * false with *ERR set when a block job runs on it or SHARED (another
 * export serves it). */
bool vc_export_node_removable(struct vc_server *s, const char *node_name,
                              bool shared, struct vc_error *err);

/* block-export-del's reply for a registry's result R on export ID: {} for
 * 0, else NULL with QEMU's error (-ENOENT not found, -EALREADY already
 * shutting down, -EBUSY still in use, -ENOMEM). */
json_t *vc_export_del_reply(int r, const char *id, struct vc_error *err);

#endif
