/* libvdisk — parent candidate checks and reads through a parent, shared
 * by the formats with parents (parent.h). */
#include <config.h>

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vdisk/parent.h"

/* The real folder of DEV as the operator named it (the directory part of
 * its path, symlinks resolved), into DIR.  Returns 0 or -1. */
int
vd_parent_real_dir(const struct vd_dev *dev, char *dir)
{
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", dev->path);
  return realpath(dirname(tmp), dir) ? 0 : -1;
}

/* True if REAL (a resolved path) lies inside the folder tree DIR. */
static bool
parent_inside(const char *dir, const char *real)
{
  size_t n = strlen(dir);
  if (n == 1 && dir[0] == '/')
    return true;
  return strncmp(real, dir, n) == 0 && real[n] == '/';
}

/* Check candidate CAND (resolved into REAL) before anything opens it:
 * it must exist, be a regular file (a block device too when the operator
 * named it), lie inside the child's folder tree unless OVERRIDE or the
 * policy says otherwise, and not already be in the chain.  Returns 0 if it
 * may be opened, 1 if it is to be skipped (reason in *REF), or -ELOOP. */
int
vd_parent_candidate_ok(struct vd_dev *dev, const char *cand, char *real,
                       bool override, const char *dir,
                       struct vd_parent_refusal *ref)
{
  struct stat st;
  if (override && vd_is_remote_name(cand)) {
    /* The operator's --backing names an NBD export or an RBD image:
     * nothing local to check (a name read out of an image never gets here
     * as one). */
    snprintf(real, PATH_MAX, "%s", cand);
    return 0;
  }
  if (!realpath(cand, real) || stat(real, &st) == -1) {
    int e = errno;
    if (ref->err == 0 || ref->err == ENOENT) {  /* a refusal says more */
      ref->err = e == ENOTDIR ? ENOENT : e;
      snprintf(ref->path, sizeof ref->path, "%s", cand);
      snprintf(ref->why, sizeof ref->why, "%s", strerror(e));
    }
    return 1;
  }
  const char *bad = NULL;
  if (S_ISDIR(st.st_mode))
    bad = "is a directory";
  else if (!S_ISREG(st.st_mode) && !(override && S_ISBLK(st.st_mode)))
    bad = "is not a regular file";
  else if (!override && dev->opts.parent_policy == VD_PARENT_CONFINED &&
           (!dir || !parent_inside(dir, real)))
    bad = "is outside the child's folder (name it with --backing to use it)";
  if (bad) {
    if (ref->err && ref->err != ENOENT)
      return 1;             /* keep the first refusal */
    ref->err = EPERM;
    snprintf(ref->path, sizeof ref->path, "%s", cand);
    snprintf(ref->why, sizeof ref->why, "%s", bad);
    return 1;
  }
  for (const struct vd_dev *d = dev; d; d = d->child)
    if (d->real && strcmp(d->real, real) == 0)
      return vd_set_error(ELOOP, "%s: parent loop: %s is already in the "
                          "chain", dev->path, cand);
  return 0;
}


int
vd_parent_pread(struct vd_dev *parent, void *buf, uint64_t len, uint64_t off)
{
  uint8_t *b = buf;
  if (!parent || off >= parent->size) {
    memset(b, 0, len);
    return 0;
  }
  uint64_t n = len;
  if (off + n > parent->size) {
    n = parent->size - off;
    memset(b + n, 0, len - n);
  }
  return vd_pread(parent, b, n, off);
}

int
vd_parent_block_status(struct vd_dev *parent, uint64_t off, uint64_t len,
                       struct vd_extent *ext)
{
  ext->length = len;
  ext->flags = VD_EXT_HOLE | VD_EXT_ZERO;
  ext->depth = 1;
  ext->host_offset = -1;
  if (!parent || off >= parent->size)
    return 0;
  if (off + len > parent->size)
    len = parent->size - off;
  struct vd_extent pe;
  int r = vd_block_status(parent, off, len, &pe);
  if (r < 0)
    return r;
  ext->length = pe.length;
  ext->flags = pe.flags;
  ext->depth = pe.depth + 1;
  ext->host_offset = pe.host_offset;
  return 0;
}
