/* vdisk-fuse — the disk table: the files of the mount, changed while
 * serving (block-export-add / block-export-del of type "fuse" over the
 * control socket, fuse-frontend/control.c).
 *
 * Lifetime.  Every disk is reference-counted.  The table holds one
 * reference while the disk is listed (its file is in the mount); every
 * FUSE request that looks a disk up by inode or name holds one while it
 * runs; every open file handle holds one until FUSE releases it.  Deleting
 * a disk unlists it at once (lookups and new opens get ENOENT), but the
 * disk and its node live until the last reference goes; then the release
 * callback runs (closes the node if the disk owns it, emits
 * BLOCK_EXPORT_DELETED).  Inode numbers are never reused, so the kernel's
 * view of a deleted file can never reach another disk.
 *
 * One mutex guards the lists and counts; it is never held while calling
 * out (the release runs after it is dropped) or doing I/O.
 */
#ifndef VF_DISKS_H
#define VF_DISKS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define VF_FIRST_INO 2

struct vd_node;

struct vf_image {
  char *path;               /* as given (command line or filename) */
  char *name;               /* exposed file name, "disk.raw" */
  char *id;                 /* export id: the file name for the command
                               line's disks */
  char *node_name;          /* the device served (query-block-exports) */
  struct vd_node *node;     /* all I/O goes through it, never a device */
  uint64_t size;
  uint32_t blksize;
  bool read_only;           /* -r, writable=false, or a read-only format */
  bool owns_node;           /* added with "filename": closed at release */
  bool added;               /* by block-export-add: released, freed */
  uid_t uid;                /* the image file's owner, group and */
  gid_t gid;                /* permission bits (no write bits if */
  mode_t perm;              /* read_only) */
  uint64_t ino;             /* set by vf_disks_add */

  /* Table-private, under its lock. */
  struct vf_image *next;
  unsigned refs;
  unsigned nopen;           /* open file handles */
  bool removed;             /* unlisted */
  _Atomic bool dead;        /* hard-deleted: open handles get EIO; read
                               without the lock on every I/O */
};

struct vf_disks {
  pthread_mutex_t lock;
  struct vf_image *listed;  /* in the order added (ascending inodes) */
  struct vf_image *removed; /* unlisted, still referenced */
  uint64_t next_ino;
  /* Called without the lock once a disk's last reference went. */
  void (*release)(struct vf_image *im, void *opaque);
  void *opaque;
};

/* Initialise D, empty, with RELEASE (may be NULL). */
void vf_disks_init(struct vf_disks *d,
                   void (*release)(struct vf_image *, void *), void *opaque);
/* Drop the table's reference to every listed disk (releasing them) and
 * destroy the lock.  Call once no request runs any more. */
void vf_disks_destroy(struct vf_disks *d);

/* List IM (refs must be 0) with the next inode number.  0, -EEXIST if its
 * id is taken (listed or still referenced), -EADDRINUSE if its name is. */
int vf_disks_add(struct vf_disks *d, struct vf_image *im);
/* With a reference, or NULL: the listed disk called NAME; the disk with
 * inode INO, listed or (while referenced) removed; the disk with id ID,
 * listed or removed. */
struct vf_image *vf_disks_get_name(struct vf_disks *d, const char *name);
struct vf_image *vf_disks_get_ino(struct vf_disks *d, uint64_t ino);
struct vf_image *vf_disks_get_id(struct vf_disks *d, const char *id);
/* Drop a reference; the last one releases IM.  NULL is a no-op. */
void vf_disks_put(struct vf_disks *d, struct vf_image *im);
/* Every listed disk with a reference, in a malloc'd array: the count or
 * -ENOMEM. */
long vf_disks_list(struct vf_disks *d, struct vf_image ***out);
void vf_disks_put_all(struct vf_disks *d, struct vf_image **v, size_t n);

/* An open file handle on IM (the caller holds a reference): another
 * reference, counted as a user.  -ENOENT if IM was deleted meanwhile. */
int vf_disks_open(struct vf_disks *d, struct vf_image *im);
/* The handle was released: drop its reference. */
void vf_disks_close(struct vf_disks *d, struct vf_image *im);
/* True once IM was hard-deleted (its handles fail with EIO).  Lock-free:
 * it is asked on every read and write. */
bool vf_disks_dead(struct vf_disks *d, struct vf_image *im);
/* True when another disk than IM (listed or removed) serves NODE. */
bool vf_disks_node_shared(struct vf_disks *d, const struct vf_image *im,
                          const struct vd_node *node);

/* block-export-del: unlist disk ID.  HARD false (QEMU's safe mode)
 * refuses while a file handle is open (-EBUSY); HARD true unlists it and
 * makes its open handles fail with EIO.  0, -ENOENT, -EALREADY (already
 * removed), -EBUSY.  On success *INO and *NAME (malloc'd, caller frees)
 * tell what the kernel must forget. */
int vf_disks_del(struct vf_disks *d, const char *id, bool hard,
                 uint64_t *ino, char **name);

#endif
