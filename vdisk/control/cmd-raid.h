/* RAID management over the control socket (cmd-raid.c): the commands
 * query-vdisk-raid, vdisk-raid-fail, vdisk-raid-replace and
 * vdisk-raid-scrub, and the runtime entries through which `vdtool raid`
 * finds the process serving an array (docs/control.md, "RAID";
 * docs/raid-format.md, "Online management").
 *
 * A frontend calls vc_raid_add for each device it serves, then
 * vc_raid_start once, and at exit vc_raid_stop, vc_server_stop, then
 * vc_raid_free. */
#ifndef VDISK_CONTROL_CMD_RAID_H
#define VDISK_CONTROL_CMD_RAID_H

#include <stddef.h>

#include "vdisk/control/control.h"

struct vc_raid;

/* Note device NAME (NODE) if its device is a RAID array (others are
 * ignored).  *R is created on first use.  Returns 0 or -ENOMEM. */
int vc_raid_add(struct vc_raid **r, const char *name, struct vd_node *node);

/* Register the RAID commands on *S and publish a runtime entry for each
 * noted array.  When *S is NULL (the frontend runs without --control) and
 * arrays were noted, a control socket of our own is started in the
 * runtime folder (PROGRAM-PID.sock, mode 0600) with the arrays registered
 * under their names; *S is then set and the frontend stops it as its own.
 * CONTROL_PATH is the path *S listens on (NULL when *S is NULL).  *R may
 * be NULL (no array: the commands are still registered on an existing
 * server).  A runtime entry that cannot be published is reported on
 * stderr and the array served anyway (vdtool then works offline or says
 * why it cannot).  Returns 0, or -errno with a message in MSG. */
int vc_raid_start(struct vc_raid **r, struct vc_server **s,
                  const char *control_path, const char *program, char *msg,
                  size_t msglen);

/* Stop the engine's events for the arrays (a spare's takeover) from
 * reaching the server: call before vc_server_stop.  R may be NULL. */
void vc_raid_stop(struct vc_raid *r);

/* Remove our runtime entries and free R (NULL: nothing).  Call after
 * vc_server_stop (the jobs have ended). */
void vc_raid_free(struct vc_raid *r);

#endif
