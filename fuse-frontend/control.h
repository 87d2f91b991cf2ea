/* vdisk-fuse — what its modules share: the server state, helpers of
 * vdisk-fuse.c used by the control commands, and the export commands of
 * the control socket (control.c: block-export-add/-del of type "fuse",
 * query-block-exports). */
#ifndef VF_CONTROL_H
#define VF_CONTROL_H

#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include "fuse-frontend/disks.h"

struct fuse_session;
struct vc_server;

struct vf_state {
  struct vf_image *img;     /* the command line's disks (main owns them) */
  size_t nimg;
  struct vf_disks disks;    /* the files of the mount, command line's and
                               added ones (disks.h) */
  struct fuse_session *se;  /* to make the kernel forget deleted files */
  bool read_only;           /* -r: everything read-only, mounted ro */
  bool verbose;
  bool page_cache;          /* let the kernel cache file pages */
  bool single;              /* the mount point is a regular file: the
                               one disk is the mount's root itself (as
                               qemu-storage-daemon's FUSE export) */
  uid_t uid;
  gid_t gid;
  struct timespec start;
};

extern const char *progname;
/* One line on stderr prefixed with the program name. */
void vf_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The file name a disk of image PATH gets ("disk.vhd" -> "disk.raw"), or
 * NULL (malloc'd). */
char *vf_exposed_name(const char *path);
/* IM's size, block size and read-only flag from IM->node (READ_ONLY: the
 * export is read-only whatever the node). */
void vf_image_fill(struct vf_image *im, bool read_only);
/* IM's owner and permission bits from its image file IM->path, which
 * BEFORE (NULL: unknown) described just before it was opened: 0, or -1
 * with a message logged. */
int vf_take_perms(struct vf_image *im, const struct stat *before);

/* Register the export commands of S on VC: 0 or a negative errno. */
int vf_control_start(struct vc_server *vc, struct vf_state *s);
/* Stop emitting events (before vc_server_stop). */
void vf_control_stop(void);
/* The disk table's release callback (OPAQUE: the struct vf_state):
 * closes the node of a disk added with "filename" and frees what the
 * control commands allocated; emits BLOCK_EXPORT_DELETED while the
 * control socket runs. */
void vf_image_release(struct vf_image *im, void *opaque);
/* Releases whose node failed to close (its final flush): exit status 1. */
extern unsigned vf_release_errors;

#endif
