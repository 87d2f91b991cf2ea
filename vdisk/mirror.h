/* libvdisk internals shared by the live mirror (mirror.c) and the live
 * commit built on it (commit-live.c). */
#ifndef VDISK_MIRROR_H
#define VDISK_MIRROR_H

#include "vdisk/vdisk.h"

/* vd_mirror_start whose sync=top copies what the layers above chain
 * depth COPY_DEPTH hold (vd_extent.depth < COPY_DEPTH): 1 is the top
 * image alone (drive-mirror sync=top), the base's depth for a commit. */
int vd_mirror_start_depth(struct vd_node *node, struct vd_dev *target,
                          const struct vd_mirror_args *args, int copy_depth,
                          struct vd_mirror **out);

/* After a successful pivot, close the old device and move the node onto
 * a fresh locked open of PATH in FORMAT (the commit's base; see
 * mr_relock).  Returns 0 or -ENOMEM. */
int vd_mirror_set_relock(struct vd_mirror *m, const char *path,
                         const char *format);

/* Whether the N bytes at B are all zero (a copy then writes zeros, so a
 * sparse target stays sparse). */
bool vd_mirror_is_zero(const uint8_t *b, size_t n);

#endif
