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

#endif /* VDISK_PARENT_H */
