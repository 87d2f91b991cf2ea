/* libvdisk — RAID management API (public, installed beside vdisk.h).
 *
 * An array is a vd_dev of format "raid" opened with vd_open on its text
 * descriptor; these calls create, assemble, inspect and repair arrays
 * (vdtool raid uses them).  Errors follow the library convention: -errno
 * with a one-line message in vd_error().  The on-disk format and the rules
 * for degraded arrays are in docs/raid-format.md.
 */
#ifndef VDISK_RAID_H
#define VDISK_RAID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Installed side by side: include the sibling by file name. */
#include "vdisk.h"

/* An open array, as vd_raid_of returns it (opaque). */
struct raid_array;

/* Consistency policies (vd_raid_create_args.policy, vd_raid_status.policy
 * names them "resync", "bitmap", "ppl"). */
#define VD_RAID_POLICY_RESYNC 0  /* dirty flag only: full resync */
#define VD_RAID_POLICY_BITMAP 1  /* write-intent bitmap: resync dirty regions */
#define VD_RAID_POLICY_PPL 2     /* bitmap + partial parity log (RAID5) */

/* vd_raid_create_args.member_timeout_ms: no timeout at all. */
#define VD_RAID_NO_TIMEOUT UINT32_MAX
struct vd_raid_create_args {
  int level;                   /* 0, 1 or 5 */
  uint32_t chunk;              /* bytes, power of two; 0 = 512 KiB */
  unsigned nmembers;
  const char *const *members;  /* paths (absolute or relative to cwd) */
  uint64_t member_size;        /* > 0: create the member files this big */
  const char *member_format;   /* format for created members ("raw") */
  int policy;                  /* VD_RAID_POLICY_*, -1 = level default */
  uint64_t bitmap_region;      /* 0 = automatic */
  bool assume_clean;           /* do not zero existing members */
  const char *name;            /* optional array name */
  bool force;                  /* overwrite members that hold a filesystem,
                                  partition table or another array */
  /* Descriptor options (docs/remote.md).  Members may be NBD URIs (never
   * created: member_size must then be 0). */
  uint32_t member_timeout_ms;  /* 0 = default (5 s); VD_RAID_NO_TIMEOUT */
  uint32_t auto_readd_s;       /* retry failed URI members every N s; 0 off */
  const bool *write_mostly;    /* NULL, or nmembers flags (RAID1) */
  uint32_t write_behind;       /* RAID1 with a write-mostly member: at most
                                  this many writes to write-mostly members
                                  outstanding (md's --write-behind); 0 off */
};

/* Create the array: superblocks on every member and the descriptor at
 * DESC.  Member paths in the descriptor are stored relative to its
 * directory when they are below it.  Unless ARGS->force, an existing member
 * that holds data (vd_raid_member_check) is refused with -EEXIST, naming
 * what it holds; a member that is neither a regular file nor a block
 * device is always refused. */
int vd_raid_create(const char *desc, const struct vd_raid_create_args *args);

/* What DEV already holds, as a list for a message ("an ext4 filesystem
 * (magic 0xEF53 at byte 1080), ..."): another array's superblock (vdisk or
 * Linux md), a filesystem, swap, LUKS, LVM2 or a partition table.  Returns
 * 1 with WHAT filled, 0 if nothing was found, -errno on a read error. */
int vd_raid_member_signature(struct vd_dev *dev, char *what, size_t len);
/* The same for the file or device at PATH (probing its format); 0 when
 * PATH does not exist or is empty, -EINVAL when it is neither a regular
 * file nor a block device. */
int vd_raid_member_check(const char *path, char *what, size_t len);

/* The array behind DEV, or NULL if DEV is not a RAID. */
struct raid_array *vd_raid_of(struct vd_dev *dev);

#define VD_RAID_STATE_ACTIVE 0
#define VD_RAID_STATE_FAULTY 1
#define VD_RAID_STATE_REBUILDING 2
#define VD_RAID_STATE_MISSING 3
#define VD_RAID_STATE_STALE 4

struct vd_raid_member_status {
  char path[4096];
  int slot;
  int state;                   /* VD_RAID_STATE_* */
  uint64_t events;             /* from its own superblock (0 if unreadable) */
  uint64_t recovery_offset;    /* REBUILDING: bytes done */
  char dev_uuid[37];
  char why[160];               /* examine: why it is not used, or "" */
  bool write_mostly;           /* RAID1: reads avoid it */
  bool re_adding;              /* REBUILDING by re-add (bitmap regions) */
  uint64_t readd_copied;       /* open array: bytes the last re-add of this
                                  slot copied ... */
  uint64_t readd_skipped;      /* ... and skipped (regions not marked) */
};

struct vd_raid_spare_status {
  char path[4096];
  char dev_uuid[37];
  char why[160];               /* why it cannot take over, or "" */
};

struct vd_raid_status {
  char uuid[37];
  char name[33];
  int level;
  const char *layout;
  const char *policy;
  uint32_t chunk;
  unsigned nmembers;
  uint64_t array_size, member_data_size, data_offset;
  uint64_t events;
  bool dirty, degraded, failed, rebuilding;
  uint64_t rebuild_done, rebuild_total;
  uint64_t bitmap_region, bitmap_dirty_regions;
  char state[64];              /* "clean", "active, degraded", ... */
  char refusal[512];           /* why it would not assemble, or "" */
  struct vd_raid_member_status m[32];
  uint32_t member_timeout_ms;  /* open array: member request timeout (0 =
                                  none) */
  uint32_t auto_readd_s;       /* open array: auto re-add period, 0 = off */
  uint32_t write_behind;       /* open array: write-behind limit, 0 = off */
  uint32_t write_behind_pending; /* open array: writes not yet on the
                                    write-mostly members */
  unsigned nspares;            /* hot spares the descriptor names */
  struct vd_raid_spare_status spare[8];
};

/* Status of an open array. */
int vd_raid_status(struct raid_array *a, struct vd_raid_status *st);
/* Status from the members' superblocks alone (no assembly, no locks):
 * works on an array that refuses to start or is served elsewhere. */
int vd_raid_examine(const char *desc, struct vd_raid_status *st);

/* The superblock of one member, as mdadm --examine shows it. */
struct vd_raid_superblock {
  char uuid[37];               /* the array's */
  char name[33];
  char format[32];             /* the member's format ("raw", "vpc", ...) */
  int level;
  const char *layout;          /* "left-symmetric", "-" */
  const char *policy;          /* "resync", "bitmap", "ppl" */
  uint32_t chunk;              /* bytes */
  unsigned raid_devices;       /* slots of the array */
  int slot;                    /* this member's slot, -1 for a spare */
  bool spare;                  /* a hot spare's superblock */
  char dev_uuid[37];           /* this member's device uuid */
  int role_state;              /* VD_RAID_STATE_ACTIVE, _FAULTY or
                                  _REBUILDING, as this member records itself */
  uint64_t recovery_offset;    /* REBUILDING: member bytes known good */
  uint64_t events;
  uint64_t array_size, super_offset, data_offset, data_size;  /* bytes */
  uint64_t resync_offset;      /* UINT64_MAX: redundancy all in sync */
  bool dirty;                  /* not stopped cleanly */
  bool bitmap, ppl;            /* write-intent bitmap, partial parity log */
  uint64_t bitmap_offset, bitmap_region, ppl_offset;
  uint32_t ppl_slots;
  uint64_t ctime, utime;       /* seconds since the epoch */
  char array_state[33];        /* per slot as this member saw them: 'A'
                                  active, 'R' rebuilding, '.' faulty */
};
/* Read the superblock of the member at PATH (no lock taken; the array may
 * be served).  -EINVAL with a message when PATH holds no valid vdisk RAID
 * superblock. */
int vd_raid_examine_member(const char *path, struct vd_raid_superblock *out);

/* Assemble from members alone: read their superblocks, order them by
 * slot, write a descriptor at DESC and start the array once (so refusals
 * are reported now).  FLAGS:
 *  VD_RAID_ASSEMBLE_RUN: start even when a slot the superblocks record as
 *    working was not given (degraded).  Without it that is refused
 *    (-EAGAIN), as mdadm --assemble without --run.  A member left off is
 *    not recorded as faulty by the assembly itself: it comes back without
 *    a rebuild unless the array was written meanwhile.
 *  VD_RAID_ASSEMBLE_FORCE (implies RUN): accept a dirty degraded RAID5
 *    (replaying its partial parity log) and members one event behind. */
#define VD_RAID_ASSEMBLE_FORCE 1u   /* == true, for older callers */
#define VD_RAID_ASSEMBLE_RUN 2u
int vd_raid_assemble(const char *desc, const char *const *members,
                     unsigned n, unsigned flags);

/* Add the device at PATH (format FORMAT, NULL to probe) as a hot spare,
 * as mdadm --add to a healthy array: a regular file or block device at
 * least as large as a member, not a member or spare already, holding no
 * other array's superblock.  Its superblock says "spare of this array",
 * the members' superblocks list it, the descriptor names it ("spare" line).
 * When a member fails (or is missing at a read-write open) a spare takes
 * its slot and is rebuilt in the background (event "spare-active" to the
 * notify hook).  On a degraded array the spare takes over at once;
 * vd_raid_resume_rebuild waits for that rebuild.  -ENOTSUP for RAID0. */
int vd_raid_add(struct raid_array *a, const char *path, const char *format);
/* Remove the hot spare at PATH (as mdadm --remove of a spare): out of the
 * members' spare tables, out of the descriptor, its superblock wiped.
 * -ENOENT when PATH is not a spare, -EBUSY when it is a member. */
int vd_raid_remove_spare(struct raid_array *a, const char *path);
/* Called (on an engine thread) when a spare takes over SLOT: EVENT is
 * "spare-active", PATH the spare.  One hook per array; NULL removes it. */
void vd_raid_set_notify(struct raid_array *a,
                        void (*fn)(void *opaque, const char *event, int slot,
                                   const char *path),
                        void *opaque);

/* Mark member SLOT faulty (as if it had failed). */
int vd_raid_fail(struct raid_array *a, int slot);
/* Find the slot of a member given by path or slot number ("2"). */
int vd_raid_find_member(struct raid_array *a, const char *what);

/* Replace member SLOT by the device at NEWPATH and rebuild it.  Blocks
 * until the rebuild finishes.  RATE limits the rebuild (bytes/s, 0 =
 * unlimited).  PROGRESS is called with bytes done/total. */
int vd_raid_replace(struct raid_array *a, int slot, const char *newpath,
                    const char *newformat, uint64_t rate,
                    vd_progress_fn progress, void *opaque);
/* The same without waiting: the rebuild runs on a background thread of
 * this process (as a server does). */
int vd_raid_replace_start(struct raid_array *a, int slot, const char *newpath,
                          const char *newformat, uint64_t rate);
/* The same, driven by the caller one step at a time on its own thread (a
 * control job: pausing, throttling or cancelling it acts on the rebuild).
 * vd_raid_replace_begin installs NEWPATH in SLOT as vd_raid_replace does
 * and makes the caller the rebuild's owner (no background thread runs it);
 * -EBUSY when a rebuild is already running.  vd_raid_rebuild_step then
 * rebuilds at least one row and about MAX bytes (member bytes), adds them
 * to *DONE and sets *TOTAL (the member's data size); it returns 0 while
 * work remains, 1 once every rebuilding member is active, or -errno (-EIO
 * when the member or the array failed meanwhile).  vd_raid_rebuild_end
 * gives the rebuild up (always call it, also after 1 or an error): an
 * unfinished rebuild is checkpointed in the superblocks and the member stays
 * rebuilding, to resume on the next open (or vd_raid_resume_rebuild). */
int vd_raid_replace_begin(struct raid_array *a, int slot, const char *newpath,
                          const char *newformat);
int vd_raid_rebuild_step(struct raid_array *a, uint64_t max, uint64_t *done,
                         uint64_t *total);
void vd_raid_rebuild_end(struct raid_array *a);
/* Re-add failed member SLOT, as mdadm --re-add: its path (an NBD export
 * that came back, a device unplugged and plugged again) is reopened, its
 * superblock must be this array's, this slot's and this device's, and it
 * must have failed no earlier than the write-intent bitmap remembers
 * (the array keeps every bit set while a member is out); then only the
 * regions the bitmap marks are copied to it and it is active again.
 * -ENOTSUP without a bitmap (policy resync), -ESTALE when the device is
 * not the one that failed or missed more than the bitmap covers (replace
 * it: a full rebuild), -EBUSY while another slot rebuilds.  The three
 * forms follow vd_raid_replace, _start and _begin (the last one driven by
 * vd_raid_rebuild_step / vd_raid_rebuild_end); bytes copied and skipped are
 * in vd_raid_status (readd_copied, readd_skipped). */
int vd_raid_re_add(struct raid_array *a, int slot, uint64_t rate,
                   vd_progress_fn progress, void *opaque);
int vd_raid_re_add_start(struct raid_array *a, int slot, uint64_t rate);
int vd_raid_re_add_begin(struct raid_array *a, int slot);
/* Resume a checkpointed rebuild, if any (no-op otherwise). */
int vd_raid_resume_rebuild(struct raid_array *a, uint64_t rate,
                           vd_progress_fn progress, void *opaque);

struct vd_raid_scrub_report {
  uint64_t stripes, mismatches, repaired;
  /* Called for each mismatched stripe (may be NULL). */
  void (*mismatch)(void *opaque, uint64_t stripe, uint64_t array_off);
  void *opaque;
};
/* One step of a scrub driven by the caller (a control job): the rows from
 * member offset *POS (0 at the start; a multiple of the chunk) for about MAX
 * member bytes, at least one row; *POS advances and counts add to R (which
 * the caller zeroes before the first step).  Returns 0 while rows remain, 1
 * when the scrub is complete (with REPAIR, the members flushed), or -errno
 * (not redundant, degraded, read-only with REPAIR, an I/O error). */
int vd_raid_scrub_step(struct raid_array *a, bool repair, uint64_t *pos,
                       uint64_t max, struct vd_raid_scrub_report *r);
/* Read every stripe and compare its copies (RAID1) or parity (RAID5);
 * with REPAIR rewrite what does not match.  Counts go to R. */
int vd_raid_scrub(struct raid_array *a, bool repair,
                  struct vd_raid_scrub_report *r, vd_progress_fn progress,
                  void *opaque);

/* Runtime entries: how vdtool finds the process serving an array (see
 * docs/raid-format.md, "Online management").  A serving process publishes
 * one entry per array in its user's runtime folder, named after the
 * descriptor's device and inode ("raid-DEV-INO", hexadecimal), holding its
 * pid, its control socket and the array's device name there.
 *
 * The runtime folder: $VDISK_RUNTIME_DIR if set (absolute), else
 * $XDG_RUNTIME_DIR/vdisk, else /run/vdisk for root, else /tmp/vdisk-UID.
 * With CREATE it is made (mode 0700) when missing and must be a directory
 * (not a symlink: -ELOOP) owned by this uid and not writable by group or
 * others (-EPERM); without, only a folder that exists is checked, and one
 * owned by root passes too.  Its path goes to OUT. */
int vd_raid_runtime_dir(char *out, size_t len, bool create);

struct vd_raid_entry;          /* a published entry (opaque) */
/* Publish an entry for the array at DESC: SOCKET (absolute) serves it as
 * DEVICE.  Written to a fresh O_EXCL | O_NOFOLLOW file (0600) and linked
 * to its name without replacing anything: -EEXIST while a live process
 * has an entry for the array (a dead one's is replaced). */
int vd_raid_publish(const char *desc, const char *socket, const char *device,
                    struct vd_raid_entry **out);
/* Publish E again under the descriptor's current inode (a replace
 * rewrites the descriptor by rename) and remove the old entry. */
int vd_raid_republish(struct vd_raid_entry *e);
/* Remove E's file if it is still the one we wrote, and free E (NULL:
 * nothing). */
void vd_raid_unpublish(struct vd_raid_entry *e);

struct vd_raid_served {
  int pid;
  bool alive;                  /* the process still exists */
  char socket[108];            /* its control socket (sun_path size) */
  char device[256];            /* the array's device name there */
  char entry[4096];            /* the entry's path */
  unsigned long long entry_dev, entry_ino;
};
/* Look up the entry of the array at DESC.  1 with *OUT filled, 0 when
 * there is none, -errno when it cannot be trusted (a symlink: -ELOOP; not
 * a regular file of this uid or root, or writable by others: -EPERM;
 * malformed: -EINVAL) or read. */
int vd_raid_served_lookup(const char *desc, struct vd_raid_served *out);
/* Remove the entry SV names if its process is gone and the file is still
 * the one looked up, and the dead process's own control socket if it was
 * in the runtime folder (PROGRAM-PID.sock).  0, or -EBUSY when the
 * process lives. */
int vd_raid_remove_stale(const struct vd_raid_served *sv);
/* Pid of a live process serving DESC, or 0. */
int vd_raid_served_by(const char *desc);

#endif /* VDISK_RAID_H */
