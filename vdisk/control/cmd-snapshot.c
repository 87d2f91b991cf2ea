/* cmd-snapshot.c: blockdev-snapshot-sync, a live external snapshot of a
 * registered device (libvdisk's vd_node_snapshot: a new VHD differencing
 * child on top, the old top its read-only parent).  Arguments, defaults
 * and errors follow QEMU's qapi/block-core.json
 * (BlockdevSnapshotSync); what differs is in docs/control.md ("Live
 * snapshots"): the default format is vhd (QEMU's is qcow2, which vdisk
 * cannot write), mode "existing" and snapshot-node-name are refused. */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <strings.h>

#include "vdisk/control/internal.h"
#include "vdisk/vdisk.h"

static json_t *
cmd_blockdev_snapshot_sync(struct vc_server *s, json_t *args, void *opaque,
                           struct vc_error *err)
{
  static const char *const known[] = { "device", "node-name",
                                       "snapshot-file", "snapshot-node-name",
                                       "format", "mode", NULL };
  const char *device = NULL, *node_name = NULL, *file = NULL,
             *snode = NULL, *format = NULL, *mode = NULL;
  (void) opaque;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", false, &device, err) ||
      !vc_arg_str(args, "node-name", false, &node_name, err) ||
      !vc_arg_str(args, "snapshot-file", true, &file, err) ||
      !vc_arg_str(args, "snapshot-node-name", false, &snode, err) ||
      !vc_arg_str(args, "format", false, &format, err) ||
      !vc_arg_str(args, "mode", false, &mode, err))
    return NULL;
  /* QEMU looks the device up by device name first, then node name. */
  const char *name = device ? device : node_name;
  struct vd_node *node = name ? vc_device_find(s, name) : NULL;
  if (!node && node_name && device)
    node = vc_device_find(s, name = node_name);
  if (!node) {
    vc_error_set(err, "GenericError", "Cannot find device='%s' nor "
                 "node-name='%s'", device ? device : "",
                 node_name ? node_name : "");
    return NULL;
  }
  if (mode && strcmp(mode, "absolute-paths") != 0) {
    vc_error_set(err, "GenericError", strcmp(mode, "existing") == 0
                 ? "mode 'existing' is not supported: the snapshot file is "
                   "always created (and must not exist)"
                 : "Parameter 'mode' does not accept value '%s'", mode);
    return NULL;
  }
  if (snode) {
    vc_error_set(err, "GenericError", "snapshot-node-name is not supported: "
                 "the device keeps its name '%s' and serves the snapshot",
                 name);
    return NULL;
  }
  if (format && strcasecmp(format, "vhd") != 0 &&
      strcasecmp(format, "vpc") != 0) {
    vc_error_set(err, "GenericError", "format '%s' is not supported for a "
                 "live snapshot: only vhd (vpc)", format);
    return NULL;
  }
  /* A job (a mirror) works on the device's current top: moving the node
   * under it is QEMU's op-blocker case. */
  if (vc_device_busy(s, name)) {
    vc_error_set(err, "GenericError", "Node '%s' is busy: block device is "
                 "in use by a block job", name);
    return NULL;
  }
  if (vd_node_snapshot(node, file, "vhd", 0) < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    return NULL;
  }
  return json_object();
}

int
vc_snapshot_register_commands(struct vc_server *s)
{
  static const struct vc_command_def cmds[] = {
    { "blockdev-snapshot-sync", cmd_blockdev_snapshot_sync },
    { NULL, NULL },
  };
  return vc_command_register_table(s, cmds);
}
