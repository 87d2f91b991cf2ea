/* libvdisk — rbd: image names (qemu's syntax), parsed without librbd so
 * that the fuzzer and the unit tests need no cluster.
 *
 *   rbd:POOL/[NAMESPACE/]IMAGE[@SNAP][:KEY=VALUE]...
 *
 * KEY is one of conf (a ceph.conf path), id (the client's user name,
 * without "client.") and timeout (seconds, 1..3600: how long a request
 * waits for the cluster before it fails with ETIMEDOUT).  A backslash
 * escapes the next character (qemu's rule), so "\:" "\@" "\/" and "\\"
 * put a separator into a name.  Anything else qemu would hand to
 * rados_conf_set is refused: the name stays a name, not a configuration
 * language.
 */
#ifndef VDISK_RBD_NAME_H
#define VDISK_RBD_NAME_H

#include <limits.h>
#include <stdbool.h>

#define VD_RBD_PREFIX "rbd:"
/* Longest name taken whole, and longest part (pools, namespaces, images
 * and snapshots are far shorter in practice; Ceph's own cap for image
 * names in the v1 format was 96). */
#define VD_RBD_NAME_MAX 4096
#define VD_RBD_PART_MAX 256
/* Request timeout when the name gives none (seconds). */
#define VD_RBD_DEFAULT_TIMEOUT 30
#define VD_RBD_MAX_TIMEOUT 3600

struct vd_rbd_name {
  char pool[VD_RBD_PART_MAX];
  char ns[VD_RBD_PART_MAX];       /* "" : the default namespace */
  char image[VD_RBD_PART_MAX];
  char snap[VD_RBD_PART_MAX];     /* "" : the image's head */
  char conf[PATH_MAX];            /* "" : librados' default search */
  char id[VD_RBD_PART_MAX];       /* "" : librados' default (admin) */
  unsigned timeout;               /* seconds, always set */
  bool timeout_given;             /* by the name, not the default */
};

/* Whether PATH starts with "rbd:" (case matters, as in qemu). */
bool vd_rbd_is_name(const char *path);

/* Parse NAME into *OUT.  Returns 0, or -EINVAL (-ENAMETOOLONG for a part
 * too long) with a one-line vd_error naming NAME and what is wrong. */
int vd_rbd_name_parse(const char *name, struct vd_rbd_name *out);

#endif
