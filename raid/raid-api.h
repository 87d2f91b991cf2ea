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

/* ---- fault injection (tests) ---- */
struct raid_fault;
enum vd_raid_fault_mode {
  VD_FAULT_NONE = 0,
  VD_FAULT_FAIL_NTH,           /* the Nth I/O (counting from 1) fails, and
                                  every later one if STICKY */
  VD_FAULT_FAIL_RANGE,         /* I/O touching [start, end) fails */
  VD_FAULT_DROP_WRITES,        /* writes report success, do nothing */
  VD_FAULT_TEAR_WRITES,        /* writes keep only the first 512 bytes */
  VD_FAULT_FAIL_ALL,           /* every I/O fails (device gone) */
};
struct vd_raid_fault_cfg {
  int mode;
  uint64_t nth;
  bool sticky;
  bool reads, writes;          /* which ops count/fail (both if neither) */
  uint64_t start, end;         /* member byte range (absolute) */
};
/* Attach a fault layer to the member at PATH whenever a RAID opens it
 * (until detached; detach only once no open array uses it).  Returns the
 * handle. */
struct raid_fault *vd_raid_fault_attach(const char *path);
void vd_raid_fault_detach(struct raid_fault *f);
void vd_raid_fault_set(struct raid_fault *f, const struct vd_raid_fault_cfg *c);
/* Power-cut mode: remember the pre-image of every write until the next
 * flush. */
void vd_raid_fault_powercut_arm(struct raid_fault *f, bool on);
/* Simulate the cut: undo unflushed writes, all of them (KEEP_PERCENT 0)
 * or each with probability 1-KEEP_PERCENT/100 (random subset, SEED). */
int vd_raid_fault_powercut(struct raid_fault *f, unsigned keep_percent,
                           unsigned seed);
/* Corrupt LEN bytes at absolute member offset OFF of the member at PATH
 * (XOR 0xff), bypassing the array. */
int vd_raid_fault_corrupt(const char *path, uint64_t off, size_t len);
/* Number of I/Os seen (reads + writes). */
uint64_t vd_raid_fault_count(struct raid_fault *f);

#endif /* VDISK_RAID_API_H */
