/* vdtool raid — the subcommands in their own files (tools/cmd-raid-*.c),
 * dispatched from tools/cmd-raid.c. */
#ifndef VDTOOL_CMD_RAID_H
#define VDTOOL_CMD_RAID_H

#include <stdbool.h>

/* vdtool raid examine [--output=human|json] MEMBER... (argv[0] is
 * "examine"): the superblock of each member, as mdadm --examine.  Exit
 * status 0, or 1 when a MEMBER holds no valid superblock (printed). */
int vt_raid_examine(int argc, char **argv);
/* vdtool raid monitor [-1] [-d SECONDS] [-p PROG] ARRAY...: events of the
 * arrays, as mdadm --monitor (tools/cmd-raid-mdadm.c). */
int vt_raid_monitor(int argc, char **argv);
/* A subcommand's only option, --output=human|json, into *JSON (argv[0]
 * is the subcommand; optind is left at its first operand): 0, or the
 * exit status after a one-line error. */
int vt_raid_output_opt(int argc, char **argv, bool *json);

#endif /* VDTOOL_CMD_RAID_H */
