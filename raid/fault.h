/* RAID fault-injecting member layer (internal; tests drive it through
 * vd_raid_fault_* in raid-api.h). */
#ifndef VDISK_RAID_FAULT_H
#define VDISK_RAID_FAULT_H

#include <stddef.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

struct raid_fault;

/* The fault layer attached to the member at PATH, or NULL (the common
 * case: a single atomic load when nothing is attached). */
struct raid_fault *raid_fault_lookup(const char *path);
/* One member I/O through the layer: OP is enum raid_mio_op, OFF absolute. */
int raid_fault_io(struct raid_fault *f, struct vd_dev *dev, int op, void *buf,
                  size_t len, uint64_t off);

/* Power cut with the ways a disk's volatile cache can lose writes: each
 * write since the member's last flush reaches the medium with probability
 * KEEP_PERCENT/100 (100: all of them); with VD_FAULT_CUT_REORDER the
 * writes that make it land in a random order (an earlier write may end up
 * over a later one to the same place); with VD_FAULT_CUT_TEAR about half of
 * them are torn: only a random subset of their 512-byte sectors lands.
 * Deterministic for a given SEED.  Disarms the power-cut recording. */
#define VD_FAULT_CUT_REORDER 0x1u
#define VD_FAULT_CUT_TEAR 0x2u
int vd_raid_fault_powercut_ex(struct raid_fault *f, unsigned keep_percent,
                              unsigned flags, uint64_t seed);

#endif
