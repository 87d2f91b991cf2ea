/* The raid driver's check op (raid/check.c). */
#ifndef VDISK_RAID_CHECK_H
#define VDISK_RAID_CHECK_H

#include "vdisk/vdisk.h"

/* Check the array whose descriptor is PATH, read-only: superblocks,
 * write-intent bitmap, partial parity log and a scrub of parity/mirrors,
 * counted in *R as qemu-img check counts (see check.c).  FLAGS as
 * vd_check's: the fix flags are not supported (-ENOTSUP naming the repair
 * commands); VD_CHECK_NOLOCK opens the members without locks.  Returns 0
 * when the check ran, -errno when the descriptor cannot be read. */
int raid_check(const char *path, unsigned flags, struct vd_check_report *r);

#endif
