/* libvdisk — RAID hooks for the tests (internal, not installed): the
 * public management API is vdisk/raid.h; what is here is test-only and
 * not exported from libvdisk.so (the tests link the internal library).
 */
#ifndef VDISK_RAID_API_H
#define VDISK_RAID_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/raid.h"

/* Simulate kill -9 of the process owning A: stop background work and make
 * the following vd_close write nothing (no flush, no clean marking). */
void vd_raid_crash(struct raid_array *a);

#endif /* VDISK_RAID_API_H */
