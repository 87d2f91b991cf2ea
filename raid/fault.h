/* RAID fault-injecting member layer (internal; tests drive it through
 * vd_raid_fault_* in raid-api.h). */
#ifndef VDISK_RAID_FAULT_H
#define VDISK_RAID_FAULT_H

#include <stddef.h>
#include <stdint.h>

#include "vdisk.h"

struct raid_fault;

/* The fault layer attached to the member at PATH, or NULL (the common
 * case: a single atomic load when nothing is attached). */
struct raid_fault *raid_fault_lookup(const char *path);
/* One member I/O through the layer: OP is enum raid_mio_op, OFF absolute. */
int raid_fault_io(struct raid_fault *f, struct vd_dev *dev, int op, void *buf,
                  size_t len, uint64_t off);

#endif
