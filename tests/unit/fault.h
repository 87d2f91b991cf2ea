/* The fault filter: a test library (tests/unit/libvdfault.la), never part
 * of libvdisk.
 *
 * A test attaches a fault to a file; every device opened on that file with
 * the open option filter = "fault" (struct vd_open_args) then runs its I/O
 * through the filter, which can fail it, drop or tear writes, count it,
 * and record writes for a simulated power cut.  For a RAID array the
 * option reaches each member, so one member can be failed at a time (the
 * others pass through).  Files are matched by device and inode, so any
 * spelling of the path works.  The filter registers itself ("fault") when
 * the program starts.
 */
#ifndef VDISK_TEST_FAULT_H
#define VDISK_TEST_FAULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vd_fault;

enum vd_fault_mode {
  VD_FAULT_NONE = 0,
  VD_FAULT_FAIL_NTH,           /* the Nth I/O (counting from 1) fails, and
                                  every later one if STICKY */
  VD_FAULT_FAIL_RANGE,         /* I/O touching [start, end) fails */
  VD_FAULT_DROP_WRITES,        /* writes report success, do nothing */
  VD_FAULT_TEAR_WRITES,        /* writes keep only the first 512 bytes */
  VD_FAULT_FAIL_ALL,           /* every I/O fails (device gone) */
  VD_FAULT_HOLD_RANGE,         /* I/O touching [start, end) waits until
                                  vd_fault_set changes the mode, then
                                  goes ahead */
  VD_FAULT_HOLD_FLUSH,         /* flushes wait the same way */
};

struct vd_fault_cfg {
  int mode;                    /* enum vd_fault_mode */
  uint64_t nth;
  bool sticky;
  bool reads, writes;          /* which ops count/fail (both if neither) */
  uint64_t start, end;         /* byte range of the file's device (for a
                                  RAID member: absolute member offsets) */
};

/* Attach a fault (initially VD_FAULT_NONE) to the file at PATH for the
 * devices opened on it through the filter from now on.  Returns the
 * handle, or NULL with vd_error() set. */
struct vd_fault *vd_fault_attach(const char *path);
/* Remove F (accepts NULL): devices still open through it pass everything
 * through from now on; it is freed when the last of them closes. */
void vd_fault_detach(struct vd_fault *f);
/* Set what F injects from now on (resets the FAIL_NTH count). */
void vd_fault_set(struct vd_fault *f, const struct vd_fault_cfg *c);
/* Number of reads and writes seen through F since it was attached. */
uint64_t vd_fault_count(struct vd_fault *f);
/* Number of flushes seen through F since it was attached. */
uint64_t vd_fault_flushes(struct vd_fault *f);
/* Number of I/Os waiting in VD_FAULT_HOLD_RANGE or _FLUSH now. */
unsigned vd_fault_held(struct vd_fault *f);

/* Power-cut recording on (or off): remember each write (its pre-image and
 * data) until the next flush through F. */
void vd_fault_powercut_arm(struct vd_fault *f, bool on);
/* Power cut with the ways a disk's volatile cache can lose writes: roll
 * the device back to its last flush, then re-apply the writes since: each
 * reaches the medium with probability KEEP_PERCENT/100 (100: all of
 * them); with VD_FAULT_CUT_REORDER the writes that make it land in a
 * random order (an earlier write may end up over a later one to the same
 * place); with VD_FAULT_CUT_TEAR about half of them are torn: only a
 * random subset of their 512-byte sectors lands.  Deterministic for a
 * given SEED.  Disarms the recording.  Call it while the device written
 * through F is still open. */
#define VD_FAULT_CUT_REORDER 0x1u
#define VD_FAULT_CUT_TEAR 0x2u
int vd_fault_powercut_ex(struct vd_fault *f, unsigned keep_percent,
                         unsigned flags, uint64_t seed);
/* vd_fault_powercut_ex with neither reorder nor tear. */
int vd_fault_powercut(struct vd_fault *f, unsigned keep_percent,
                      unsigned seed);

/* Corrupt LEN bytes at offset OFF of the raw file at PATH (XOR 0xff),
 * bypassing every layer (bit rot). */
int vd_fault_corrupt(const char *path, uint64_t off, size_t len);

#endif
