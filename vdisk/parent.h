/* libvdisk — checks shared by the formats that find a parent image from
 * paths stored in the child (VHD's locators, VHDX's parent locator):
 * the confinement rules of docs/SECURITY.md ("Parent lookup and trust").
 * Internal.
 */
#ifndef VDISK_PARENT_H
#define VDISK_PARENT_H

#include <limits.h>
#include <stdbool.h>

#include "vdisk/driver.h"

/* Why the last refused candidate was refused (for the final message). */
struct vd_parent_refusal {
  char path[PATH_MAX];
  char why[96];
  int err;
};

/* The real folder of DEV as the operator named it (the directory part of
 * its path, symlinks resolved), into DIR (PATH_MAX bytes).  0 or -1. */
int vd_parent_real_dir(const struct vd_dev *dev, char *dir);

/* Check candidate CAND (resolved into REAL, PATH_MAX bytes) before
 * anything opens it: it must exist, be a regular file (a block device too
 * when the operator named it: OVERRIDE), lie inside the child's folder
 * tree DIR unless OVERRIDE or DEV's parent_policy says otherwise, and not
 * already be in the chain (dev->child links).  Returns 0 if it may be
 * opened, 1 if it is to be skipped (the reason kept in *REF, the first
 * refusal winning over "not found"), or -ELOOP with the error set. */
int vd_parent_candidate_ok(struct vd_dev *dev, const char *cand, char *real,
                           bool override, const char *dir,
                           struct vd_parent_refusal *ref);

/* Read LEN bytes at OFF through PARENT, for a child layer that does not
 * hold them: bytes past the parent's end (all of them without a PARENT)
 * read as zeros.  0 or -errno. */
int vd_parent_pread(struct vd_dev *parent, void *buf, uint64_t len,
                    uint64_t off);
/* Block status of [OFF, OFF+LEN) as a child sees it through PARENT, one
 * depth down: *EXT gets the parent's extent (depth + 1), or a hole that
 * reads as zeros past the parent's end or without a PARENT.  0 or
 * -errno. */
int vd_parent_block_status(struct vd_dev *parent, uint64_t off, uint64_t len,
                           struct vd_extent *ext);

#endif /* VDISK_PARENT_H */
