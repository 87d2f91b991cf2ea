/* RAID management: create, assemble, resync, rebuild, scrub, fail, and the
 * online request channel.
 *
 * Online operation: the process that has the array open for writing (a
 * vdisk-nbd or vdisk-fuse serving it) holds the members' locks, so vdtool
 * cannot open them.  That process runs a monitor thread that watches for a
 * request file next to the descriptor (ARRAY.request: "fail SLOT",
 * "replace SLOT FORMAT PATH", "scrub" or "scrub repair"), executes it and
 * answers in ARRAY.result.  ARRAY.served holds its pid while it serves.
 * The request file is checked before it is trusted (owner, type, mode,
 * every field): see "online requests" below and docs/raid-format.md.
 * Rebuilds run on a background thread of that process and checkpoint their
 * progress in every member's superblock, so a killed rebuild resumes.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "endian.h"
#include "raid/raid.h"
#include "raid/fault.h"

static double raid_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void raid_sleep(double sec)
{
  if (sec <= 0)
    return;
  struct timespec ts = { .tv_sec = (time_t)sec,
                         .tv_nsec = (long)((sec - (double)(time_t)sec) * 1e9) };
  nanosleep(&ts, NULL);
}

/* ---- resync after an unclean stop ---- */

int raid_resync(struct raid_array *a, bool all)
{
  if (a->sb.level == 0)
    return 0;
  uint64_t c = a->sb.chunk, total = a->sb.data_size;
  uint64_t start = a->sb.resync_offset != RAID_NO_OFFSET && all
                   ? a->sb.resync_offset : 0;
  uint64_t region = a->bm && !all ? a->sb.bitmap_region : total;
  uint64_t next_ckpt = start + total / 16;
  int r = 0;
  for (uint64_t roff = start; roff < total && r == 0; roff += region) {
    if (!all && a->bm) {
      uint64_t ri = roff / region;
      if (!(a->bm[ri / 8] & (1u << (ri % 8))))
        continue;
    }
    uint64_t rend = roff + region < total ? roff + region : total;
    for (uint64_t o = roff; o < rend && r == 0; o += c) {
      bool mm;
      if (a->sb.level == 5)
        r = raid5_sync_stripe(a, o / c, false, &mm);
      else
        r = raid1_sync_region(a, o, c, false, &mm);
      if (all && o + c >= next_ckpt && o + c < total && r == 0) {
        /* Checkpoint a long full resync. */
        if (raid_flush_members(a) == 0) {
          pthread_mutex_lock(&a->sb_lock);
          a->sb.resync_offset = o + c;
          raid_sb_write_all_locked(a);
          pthread_mutex_unlock(&a->sb_lock);
        }
        next_ckpt += total / 16;
      }
    }
  }
  if (r < 0)
    return vd_prefix_error(-r, "%s: resync", a->desc_path);
  r = raid_flush_members(a);
  if (r == 0 && a->sb.resync_offset != RAID_NO_OFFSET) {
    pthread_mutex_lock(&a->sb_lock);
    a->sb.resync_offset = RAID_NO_OFFSET;
    r = raid_sb_write_all_locked(a);
    pthread_mutex_unlock(&a->sb_lock);
  }
  return r;
}

/* ---- rebuild ---- */

/* End of a rebuild pass: checkpoint if stopped, else mark the member
 * active.  Caller holds fork_lock for reading. */
static int raid_rebuild_finish(struct raid_array *a, int slot, int r)
{
  struct raid_member *m = &a->m[slot];
  uint64_t total = a->sb.data_size;
  if (r == -EINTR) {
    /* Stopped: leave a checkpoint so the next open resumes here. */
    if (!atomic_load(&a->failed) && !atomic_load(&a->crashed) &&
        atomic_load(&m->state) == RAID_ROLE_REBUILDING &&
        raid_mio_one(a, slot, RAID_MIO_FLUSH, NULL, 0, 0) == 0)
      raid_sb_update(a);
    return vd_set_error(EINTR, "%s: rebuild of slot %d interrupted at %" PRIu64
                        " of %" PRIu64 " bytes", a->desc_path, slot,
                        atomic_load(&m->recovery), total);
  }
  if (r < 0)
    return r;
  r = raid_mio_one(a, slot, RAID_MIO_FLUSH, NULL, 0, 0);
  if (r < 0) {
    raid_member_failed(a, slot, r);
    return r;
  }
  atomic_store(&m->state, RAID_ROLE_ACTIVE);
  return raid_sb_update(a);
}

static int raid_rebuild_slot(struct raid_array *a, int slot)
{
  struct raid_member *m = &a->m[slot];
  uint64_t c = a->sb.chunk, total = a->sb.data_size;
  uint8_t *scratch = raid_scratch(0, (size_t)(a->n + 1) * c);
  if (!scratch)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  double t0 = raid_now(), last_ckpt = t0;
  uint64_t start = atomic_load(&m->recovery), ckpt_off = start;
  int r = 0;
  for (uint64_t off = start; off < total; off += c) {
    if (atomic_load(&a->rebuild_stop) || atomic_load(&a->failed) ||
        atomic_load(&m->state) != RAID_ROLE_REBUILDING) {
      r = -EINTR;
      break;
    }
    pthread_rwlock_rdlock(&a->fork_lock);
    uint64_t s = off / c;
    raid_stripe_lock(a, s);
    if (a->sb.level == 5) {
      r = raid5_rebuild_stripe_locked(a, s, slot, scratch);
    } else {
      r = -EIO;
      for (unsigned i = 0; i < a->n && r < 0; i++) {
        if ((int)i == slot || atomic_load(&a->m[i].state) != RAID_ROLE_ACTIVE ||
            !a->m[i].dev)
          continue;
        r = raid_mio_one(a, (int)i, RAID_MIO_READ, scratch, c, off);
        if (r < 0) {
          if (raid_member_failed(a, (int)i, r) < 0)
            break;
          r = -EIO;
          continue;
        }
        r = raid_mio_one(a, slot, RAID_MIO_WRITE, scratch, c, off);
        if (r < 0)
          r = vd_set_error(-r, "%s: rebuild: writing %s: %s", a->desc_path,
                           m->path, vd_error());
      }
    }
    if (r == 0)
      atomic_store(&m->recovery, off + c);
    raid_stripe_unlock(a, s);
    if (r < 0) {
      /* The new member failed, or a source did (then the array failed). */
      if (!atomic_load(&a->failed))
        raid_member_failed(a, slot, r);
      pthread_rwlock_unlock(&a->fork_lock);
      break;
    }
    /* Checkpoint every 1/16 of the member or 2 seconds (md: 1/16 or 5 min). */
    double now = raid_now();
    if (off + c < total &&
        (off + c - ckpt_off >= total / 16 || now - last_ckpt >= 2.0)) {
      if (raid_mio_one(a, slot, RAID_MIO_FLUSH, NULL, 0, 0) == 0)
        raid_sb_update(a);
      ckpt_off = off + c;
      last_ckpt = now;
    }
    pthread_rwlock_unlock(&a->fork_lock);
    /* Rate limit: foreground I/O keeps flowing. */
    uint64_t rate = atomic_load(&a->rebuild_rate);
    if (rate) {
      double due = t0 + (double)(off + c - start) / (double)rate;
      raid_sleep(due - raid_now());
    }
  }
  pthread_rwlock_rdlock(&a->fork_lock);
  r = raid_rebuild_finish(a, slot, r);
  pthread_rwlock_unlock(&a->fork_lock);
  return r;
}

static void *raid_rebuild_main(void *opaque)
{
  struct raid_array *a = opaque;
  int r = 0;
  for (unsigned i = 0; i < a->n && r == 0; i++)
    if (a->m[i].dev && atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      r = raid_rebuild_slot(a, (int)i);
  atomic_store(&a->rebuild_ret, r);
  atomic_store(&a->rebuild_active, false);
  return NULL;
}

void raid_rebuild_start(struct raid_array *a)
{
  if (!a->writable || a->sb.level == 0 || atomic_load(&a->crashed))
    return;
  bool any = false;
  for (unsigned i = 0; i < a->n; i++)
    if (a->m[i].dev && atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      any = true;
  pthread_mutex_lock(&a->sb_lock);
  if (any && !atomic_load(&a->rebuild_active)) {
    if (a->rebuild_running)
      pthread_join(a->rebuild, NULL);
    a->rebuild_running = false;
    atomic_store(&a->rebuild_stop, false);
    atomic_store(&a->rebuild_active, true);
    atomic_store(&a->rebuild_ret, 0);
    if (pthread_create(&a->rebuild, NULL, raid_rebuild_main, a) == 0)
      a->rebuild_running = true;
    else
      atomic_store(&a->rebuild_active, false);
  }
  pthread_mutex_unlock(&a->sb_lock);
}

void raid_rebuild_stop(struct raid_array *a)
{
  atomic_store(&a->rebuild_stop, true);
  pthread_mutex_lock(&a->sb_lock);
  bool running = a->rebuild_running;
  a->rebuild_running = false;
  pthread_mutex_unlock(&a->sb_lock);
  if (running)
    pthread_join(a->rebuild, NULL);
  atomic_store(&a->rebuild_stop, false);
}

static int raid_rebuild_wait(struct raid_array *a, vd_progress_fn progress,
                             void *opaque)
{
  int slot = -1;
  for (unsigned i = 0; i < a->n; i++)
    if (atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      slot = (int)i;
  while (atomic_load(&a->rebuild_active)) {
    if (progress && slot >= 0)
      progress(opaque, atomic_load(&a->m[slot].recovery), a->sb.data_size);
    raid_sleep(0.02);
  }
  pthread_mutex_lock(&a->sb_lock);
  bool running = a->rebuild_running;
  a->rebuild_running = false;
  pthread_mutex_unlock(&a->sb_lock);
  if (running)
    pthread_join(a->rebuild, NULL);
  int r = atomic_load(&a->rebuild_ret);
  if (r == 0 && progress)
    progress(opaque, a->sb.data_size, a->sb.data_size);
  return r;
}

int vd_raid_resume_rebuild(struct raid_array *a, uint64_t rate,
                           vd_progress_fn progress, void *opaque)
{
  atomic_store(&a->rebuild_rate, rate);
  raid_rebuild_start(a);
  return raid_rebuild_wait(a, progress, opaque);
}

/* Path to store in the descriptor: relative to its directory when below
 * it, else absolute. */
static char *raid_desc_relpath(const char *desc, const char *path)
{
  char dbuf[PATH_MAX], pbuf[PATH_MAX];
  char *dcopy = strdup(desc);
  if (!dcopy)
    return NULL;
  char *slash = strrchr(dcopy, '/');
  const char *dir = slash ? (slash == dcopy ? "/" : (*slash = '\0', dcopy))
                          : ".";
  char *res = NULL;
  if (realpath(dir, dbuf) && realpath(path, pbuf)) {
    size_t dl = strlen(dbuf);
    if (strncmp(pbuf, dbuf, dl) == 0 && pbuf[dl] == '/')
      res = strdup(pbuf + dl + 1);
    else
      res = strdup(pbuf);
  } else {
    res = strdup(path);
  }
  free(dcopy);
  return res;
}

static int raid_desc_set_member(struct raid_array *a, int slot,
                                const char *path, const char *format)
{
  struct raid_desc d;
  int r = raid_desc_read(a->desc_path, &d);
  if (r < 0)
    return r;
  free(d.member[slot]);
  free(d.format[slot]);
  d.member[slot] = raid_desc_relpath(a->desc_path, path);
  d.format[slot] = format ? strdup(format) : NULL;
  r = d.member[slot] ? raid_desc_write(a->desc_path, &d)
                     : vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  raid_desc_free(&d);
  return r;
}

static char *raid_side_path(const char *desc, const char *suffix);

/* Whether DEV holds a valid superblock of an array other than UUID; its
 * UUID goes to OTHER. */
static bool raid_foreign_sb(struct vd_dev *dev, const uint8_t *uuid,
                            char *other)
{
  struct raid_sb sb;
  uint8_t *buf = vd_alloc_aligned(RAID_SB_SIZE);
  bool foreign = buf && vd_size(dev) >= RAID_SB_OFFSET + RAID_SB_SIZE &&
                 vd_pread(dev, buf, RAID_SB_SIZE, RAID_SB_OFFSET) == 0 &&
                 raid_sb_decode(buf, &sb, "member") == 0 &&
                 memcmp(sb.uuid, uuid, 16) != 0;
  if (foreign)
    raid_uuid_format(sb.uuid, other);
  vd_free_aligned(buf);
  return foreign;
}

static bool raid_same_file(const char *x, const char *y)
{
  struct stat a, b;
  return stat(x, &a) == 0 && stat(y, &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

/* Put NEWPATH in SLOT as a rebuilding member (no rebuild started). */
static int raid_replace_install(struct raid_array *a, int slot,
                                const char *newpath, const char *fmt)
{
  if (!a->writable)
    return vd_set_error(EROFS, "%s: array is open read-only", a->desc_path);
  if (a->sb.level == 0)
    return vd_set_error(ENOTSUP, "%s: RAID0 has no redundancy, a member "
                        "cannot be rebuilt", a->desc_path);
  if (slot < 0 || (unsigned)slot >= a->n)
    return vd_set_error(EINVAL, "%s: no slot %d", a->desc_path, slot);
  if (atomic_load(&a->failed))
    return vd_set_error(EIO, "%s: RAID%u has failed", a->desc_path,
                        a->sb.level);
  for (unsigned i = 0; i < a->n; i++) {
    if (a->m[i].path && raid_same_file(a->m[i].path, newpath) &&
        ((int)i != slot || a->m[i].dev))
      return vd_set_error(EINVAL, "%s: %s is already member %u", a->desc_path,
                          newpath, i);
    if ((int)i != slot && atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      return vd_set_error(EBUSY, "%s: slot %u is being rebuilt; wait for it",
                          a->desc_path, i);
  }
  /* Only a regular file or a block device (a FIFO or a character device
   * would block or make no sense), never the descriptor or its side
   * files. */
  struct stat nst;
  if (stat(newpath, &nst) != 0)
    return vd_set_error(errno, "%s: %s", newpath, strerror(errno));
  if (!S_ISREG(nst.st_mode) && !S_ISBLK(nst.st_mode))
    return vd_set_error(EINVAL, "%s: not a regular file or block device",
                        newpath);
  static const char *const side[] = { "", ".request", ".result", ".served" };
  for (size_t i = 0; i < sizeof side / sizeof side[0]; i++) {
    char *sp = raid_side_path(a->desc_path, side[i]);
    bool same = sp && raid_same_file(sp, newpath);
    free(sp);
    if (same)
      return vd_set_error(EINVAL, "%s: is the array's %s", newpath,
                          i == 0 ? "descriptor" : "control file");
  }
  unsigned flags = VD_OPEN_RDWR;
  struct vd_dev *nd;
  int r = vd_open(newpath, fmt, flags, &nd);
  if (r < 0)
    return r;
  uint64_t need = a->sb.data_offset + a->sb.data_size;
  if (vd_size(nd) < need) {
    uint64_t have = vd_size(nd);
    vd_close(nd);
    return vd_set_error(ENOSPC, "%s: too small for slot %d: %" PRIu64
                        " bytes, needs %" PRIu64, newpath, slot, have, need);
  }
  /* A member of another array stays out (md refuses such a device
   * too); an old member of this array may come back. */
  char other[37];
  if (raid_foreign_sb(nd, a->sb.uuid, other)) {
    vd_close(nd);
    return vd_set_error(EBUSY, "%s: holds the superblock of another RAID "
                        "array (%s): wipe it first", newpath, other);
  }
  struct raid_member *m = &a->m[slot];
  int st = atomic_load(&m->state);
  if (st != RAID_ROLE_FAULTY || m->dev) {
    /* Replacing a working member: fail it first (the array runs degraded
     * during the rebuild), unless that would stop it. */
    if (st == RAID_ROLE_ACTIVE && raid_active_count(a) < a->n) {
      vd_close(nd);
      return vd_set_error(EBUSY, "%s: slot %d is active and the array is "
                          "degraded: replace the failed member first",
                          a->desc_path, slot);
    }
    if (st != RAID_ROLE_FAULTY) {
      raid_rebuild_stop(a);
      r = raid_member_failed(a, slot, 0);
      if (r < 0) {
        vd_close(nd);
        return r;
      }
    }
  }
  char *path = strdup(newpath);
  if (!path) {
    vd_close(nd);
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  }
  pthread_mutex_lock(&a->sb_lock);
  if (m->dev && a->nretired < sizeof a->retired / sizeof a->retired[0])
    a->retired[a->nretired++] = m->dev;
  else if (m->dev)
    vd_close(m->dev);
  free(m->path);
  m->path = path;
  m->fault = raid_fault_lookup(path);
  raid_uuid_generate(m->dev_uuid);
  atomic_store(&m->recovery, 0);
  m->dev = nd;
  atomic_store(&m->state, RAID_ROLE_REBUILDING);
  r = raid_sb_write_all_locked(a);
  pthread_mutex_unlock(&a->sb_lock);
  if (r < 0)
    return r;
  /* The new member's bitmap and log areas start clean. */
  return raid_desc_set_member(a, slot, newpath, fmt ? fmt : vd_format(nd));
}

int vd_raid_replace_start(struct raid_array *a, int slot, const char *newpath,
                          const char *newformat, uint64_t rate)
{
  int r = raid_replace_install(a, slot, newpath, newformat);
  if (r < 0)
    return r;
  atomic_store(&a->rebuild_rate, rate);
  raid_rebuild_start(a);
  return 0;
}

int vd_raid_replace(struct raid_array *a, int slot, const char *newpath,
                    const char *newformat, uint64_t rate,
                    vd_progress_fn progress, void *opaque)
{
  int r = vd_raid_replace_start(a, slot, newpath, newformat, rate);
  if (r < 0)
    return r;
  return raid_rebuild_wait(a, progress, opaque);
}

int vd_raid_fail(struct raid_array *a, int slot)
{
  if (!a->writable)
    return vd_set_error(EROFS, "%s: array is open read-only", a->desc_path);
  if (slot < 0 || (unsigned)slot >= a->n)
    return vd_set_error(EINVAL, "%s: no slot %d", a->desc_path, slot);
  int st = atomic_load(&a->m[slot].state);
  if (st == RAID_ROLE_FAULTY)
    return vd_set_error(EINVAL, "%s: slot %d is already faulty", a->desc_path,
                        slot);
  if (st == RAID_ROLE_ACTIVE) {
    unsigned act = raid_active_count(a);
    unsigned need = a->sb.level == 0 ? a->n : a->sb.level == 1 ? 1 : a->n - 1;
    if (act - 1 < need)
      return vd_set_error(EBUSY, "%s: failing slot %d would stop the RAID%u "
                          "(%u of %u members active): refused", a->desc_path,
                          slot, a->sb.level, act, a->n);
  } else {
    raid_rebuild_stop(a);
  }
  return raid_member_failed(a, slot, 0);
}

int vd_raid_find_member(struct raid_array *a, const char *what)
{
  char *end;
  long v = strtol(what, &end, 10);
  if (*what && !*end && v >= 0 && (unsigned long)v < a->n)
    return (int)v;
  for (unsigned i = 0; i < a->n; i++)
    if (a->m[i].path && (strcmp(a->m[i].path, what) == 0 ||
                         raid_same_file(a->m[i].path, what)))
      return (int)i;
  return vd_set_error(ENOENT, "%s: %s is not a member", a->desc_path, what);
}

/* ---- scrub ---- */

int vd_raid_scrub(struct raid_array *a, bool repair,
                  struct vd_raid_scrub_report *rep, vd_progress_fn progress,
                  void *opaque)
{
  rep->stripes = rep->mismatches = rep->repaired = 0;
  if (a->sb.level == 0)
    return vd_set_error(ENOTSUP, "%s: RAID0 has no redundancy to scrub",
                        a->desc_path);
  if (repair && !a->writable)
    return vd_set_error(EROFS, "%s: array is open read-only", a->desc_path);
  if (raid_active_count(a) < a->n)
    return vd_set_error(EIO, "%s: array is degraded: nothing to compare "
                        "against (rebuild first)", a->desc_path);
  if (repair) {
    int r = raid_mark_dirty(a);
    if (r < 0)
      return r;
  }
  uint64_t c = a->sb.chunk, total = a->sb.data_size;
  int r = 0;
  for (uint64_t o = 0; o < total && r == 0; o += c) {
    bool mm = false;
    if (repair)
      r = raid_bitmap_start(a, o, c);
    if (r < 0)
      break;
    if (a->sb.level == 5)
      r = raid5_sync_stripe(a, o / c, !repair, &mm);
    else
      r = raid1_sync_region(a, o, c, !repair, &mm);
    if (repair)
      raid_bitmap_end(a, o, c);
    rep->stripes++;
    if (mm) {
      rep->mismatches++;
      if (repair)
        rep->repaired++;
      if (rep->mismatch)
        rep->mismatch(rep->opaque, o / c,
                      a->sb.level == 5 ? o / c * a->stripe_bytes : o);
    }
    if (progress && (o / c) % 64 == 0)
      progress(opaque, o, total);
  }
  if (r == 0 && repair)
    r = raid_flush_members(a);
  if (r == 0 && progress)
    progress(opaque, total, total);
  return r;
}

/* ---- what a device already holds (raid create) ----
 *
 * mdadm warns before it overwrites a device that holds a filesystem, a
 * partition table or another array; vdisk refuses unless forced.  The
 * signatures are read through the member's vd_dev, so a VHD member is
 * judged by the disk it contains, not by its container (which is why this
 * is not libblkid, which probes a file descriptor).  Offsets are bytes from
 * the start of the device, as the formats define them:
 *   vdisk RAID superblock  "VDRAIDSB" at 4096 (docs/raid-format.md)
 *   Linux md superblock    0xa92b4efc (LE) at 0 (v1.1), 4096 (v1.2), at
 *                          the last 64 KiB boundary - 64 KiB (v0.90) and
 *                          8 KiB before the end, 4 KiB aligned (v1.0)
 *   LUKS 1/2               "LUKS\xba\xbe" at 0
 *   XFS                    "XFSB" at 0
 *   ext2/3/4               0xEF53 (LE) at 1080 (superblock at 1024, s_magic
 *                          at +56); ext3 = has_journal (compat 0x4), ext4 =
 *                          incompat or ro_compat bits ext3 lacks
 *   btrfs                  "_BHRfS_M" at 65600 (superblock at 64 KiB, +64)
 *   Linux swap             "SWAPSPACE2" or "SWAP-SPACE" 10 bytes before the
 *                          end of the first page (4, 8, 16 or 64 KiB)
 *   LVM2 physical volume   "LABELONE" at sector 0..3, "LVM2 001" at +24
 *   GPT                    "EFI PART" at 512 (or 4096, 4 KiB sectors)
 *   NTFS                   "NTFS    " at 3
 *   FAT                    "FAT12   "/"FAT16   " at 54, "FAT32   " at 82
 *   MBR                    0x55 0xAA at 510 with a partition entry (type
 *                          byte at 446 + 16 * i + 4) that is not zero
 */
#define RAID_SIG_HEAD (68u * 1024)

static void raid_sig_add(char *what, size_t len, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));
static void raid_sig_add(char *what, size_t len, const char *fmt, ...)
{
  size_t l = strlen(what);
  if (l + 3 >= len)
    return;
  if (l)
    l += (size_t)snprintf(what + l, len - l, ", ");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what + l, len - l, fmt, ap);
  va_end(ap);
}

static bool raid_has(const uint8_t *b, size_t blen, size_t off,
                     const char *magic, size_t mlen)
{
  return off + mlen <= blen && memcmp(b + off, magic, mlen) == 0;
}

int vd_raid_member_signature(struct vd_dev *dev, char *what, size_t len)
{
  what[0] = '\0';
  uint64_t size = vd_size(dev);
  size_t hl = size < RAID_SIG_HEAD ? (size_t)size : RAID_SIG_HEAD;
  uint8_t *b = vd_alloc_aligned(RAID_SIG_HEAD);
  uint8_t *t = vd_alloc_aligned(128 * 1024);
  int r = 0;
  if (!b || !t) {
    r = vd_set_error(ENOMEM, "out of memory");
    goto out;
  }
  memset(b, 0, RAID_SIG_HEAD);
  if (hl && (r = vd_pread(dev, b, hl, 0)) < 0)
    goto out;
  if (raid_has(b, hl, RAID_SB_OFFSET, "VDRAIDSB", 8)) {
    struct raid_sb sb;
    char u[37];
    if (raid_sb_decode(b + RAID_SB_OFFSET, &sb, "member") == 0) {
      raid_uuid_format(sb.uuid, u);
      raid_sig_add(what, len, "a vdisk RAID superblock of array %s (RAID%u, "
                   "slot %u of %u)", u, sb.level, sb.slot, sb.nmembers);
    } else {
      raid_sig_add(what, len, "a damaged vdisk RAID superblock (\"VDRAIDSB\""
                   " at byte 4096)");
    }
  }
  static const uint8_t md_magic[4] = { 0xfc, 0x4e, 0x2b, 0xa9 };
  if (raid_has(b, hl, 0, (const char *)md_magic, 4))
    raid_sig_add(what, len, "a Linux md RAID superblock 1.1 (at byte 0)");
  if (raid_has(b, hl, 4096, (const char *)md_magic, 4))
    raid_sig_add(what, len, "a Linux md RAID superblock 1.2 (at byte 4096)");
  if (size >= 128 * 1024) {
    uint64_t toff = size - 128 * 1024;
    if ((r = vd_pread(dev, t, 128 * 1024, toff)) < 0)
      goto out;
    uint64_t o090 = (size & ~(uint64_t)65535) - 65536;
    uint64_t o10 = (size - 8192) & ~(uint64_t)4095;
    if (o090 >= toff && raid_has(t, 128 * 1024, o090 - toff,
                                 (const char *)md_magic, 4))
      raid_sig_add(what, len, "a Linux md RAID superblock 0.90 (at byte %"
                   PRIu64 ")", o090);
    else if (o10 >= toff && raid_has(t, 128 * 1024, o10 - toff,
                                     (const char *)md_magic, 4))
      raid_sig_add(what, len, "a Linux md RAID superblock 1.0 (at byte %"
                   PRIu64 ")", o10);
  }
  if (raid_has(b, hl, 0, "LUKS\xba\xbe", 6))
    raid_sig_add(what, len, "a LUKS header (at byte 0)");
  if (raid_has(b, hl, 0, "XFSB", 4))
    raid_sig_add(what, len, "an XFS filesystem (\"XFSB\" at byte 0)");
  if (hl >= 2048 && b[1080] == 0x53 && b[1081] == 0xef) {
    uint32_t compat = vd_get_le32(b + 1024 + 92);
    uint32_t incompat = vd_get_le32(b + 1024 + 96);
    uint32_t ro = vd_get_le32(b + 1024 + 100);
    /* As libblkid: ext4 uses features ext3 does not know. */
    const char *kind = (incompat & ~0x16u) || (ro & ~0x7u) ? "ext4"
                       : (compat & 0x4) ? "ext3" : "ext2";
    raid_sig_add(what, len, "an %s filesystem (magic 0xEF53 at byte 1080)",
                 kind);
  }
  if (raid_has(b, hl, 65600, "_BHRfS_M", 8))
    raid_sig_add(what, len, "a btrfs filesystem (at byte 65600)");
  static const size_t pages[] = { 4096, 8192, 16384, 65536 };
  for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++)
    if (raid_has(b, hl, pages[i] - 10, "SWAPSPACE2", 10) ||
        raid_has(b, hl, pages[i] - 10, "SWAP-SPACE", 10)) {
      raid_sig_add(what, len, "Linux swap space (at byte %zu)",
                   pages[i] - 10);
      break;
    }
  for (size_t sec = 0; sec < 4; sec++)
    if (raid_has(b, hl, sec * 512, "LABELONE", 8) &&
        raid_has(b, hl, sec * 512 + 24, "LVM2 001", 8)) {
      raid_sig_add(what, len, "an LVM2 physical volume (label in sector "
                   "%zu)", sec);
      break;
    }
  bool gpt = raid_has(b, hl, 512, "EFI PART", 8) ||
             raid_has(b, hl, 4096, "EFI PART", 8);
  if (gpt)
    raid_sig_add(what, len, "a GPT partition table (\"EFI PART\" at byte "
                 "%d)", raid_has(b, hl, 512, "EFI PART", 8) ? 512 : 4096);
  if (raid_has(b, hl, 3, "NTFS    ", 8))
    raid_sig_add(what, len, "an NTFS filesystem (at byte 3)");
  else if (raid_has(b, hl, 54, "FAT12   ", 8) ||
           raid_has(b, hl, 54, "FAT16   ", 8) ||
           raid_has(b, hl, 82, "FAT32   ", 8))
    raid_sig_add(what, len, "a FAT filesystem");
  else if (!gpt && hl >= 512 && b[510] == 0x55 && b[511] == 0xaa) {
    bool parts = false;
    for (int i = 0; i < 4; i++)
      if (b[446 + 16 * i + 4] != 0)
        parts = true;
    if (parts)
      raid_sig_add(what, len, "an MBR partition table (0x55AA at byte 510)");
  }
  r = what[0] ? 1 : 0;
out:
  vd_free_aligned(b);
  vd_free_aligned(t);
  return r;
}

int vd_raid_member_check(const char *path, char *what, size_t len)
{
  what[0] = '\0';
  struct stat st;
  if (stat(path, &st) != 0)
    return 0;    /* created by raid create --size */
  int r = raid_check_member_type(path);
  if (r < 0)
    return r;
  if (S_ISREG(st.st_mode) && st.st_size == 0)
    return 0;
  struct vd_dev *dev;
  r = vd_open(path, NULL, VD_OPEN_NOLOCK, &dev);
  if (r < 0)
    return r;
  r = vd_raid_member_signature(dev, what, len);
  if (r < 0)
    r = vd_prefix_error(-r, "%s", path);
  vd_close(dev);
  return r;
}

/* ---- create ---- */

int vd_raid_create(const char *desc, const struct vd_raid_create_args *ar)
{
  unsigned n = ar->nmembers;
  uint32_t chunk = ar->chunk ? ar->chunk : RAID_DEFAULT_CHUNK;
  if (ar->level != 0 && ar->level != 1 && ar->level != 5)
    return vd_set_error(EINVAL, "%s: RAID level %d not supported (0, 1 or 5)",
                        desc, ar->level);
  unsigned minn = ar->level == 5 ? 3 : 2;
  if (n < minn || n > RAID_MAX_MEMBERS)
    return vd_set_error(EINVAL, "%s: RAID%d needs %u to %u members, got %u",
                        desc, ar->level, minn, RAID_MAX_MEMBERS, n);
  if (!vd_is_pow2(chunk) || chunk < RAID_MIN_CHUNK || chunk > RAID_MAX_CHUNK)
    return vd_set_error(EINVAL, "%s: chunk size %u must be a power of two "
                        "from 4 KiB to 64 MiB", desc, chunk);
  int policy = ar->policy >= 0 ? ar->policy
               : ar->level == 0 ? RAID_POLICY_RESYNC
               : ar->level == 1 ? RAID_POLICY_BITMAP : RAID_POLICY_PPL;
  if (policy == RAID_POLICY_PPL && ar->level != 5)
    return vd_set_error(EINVAL, "%s: the ppl policy is for RAID5 only", desc);
  if (ar->level == 0)
    policy = RAID_POLICY_RESYNC;
  for (unsigned i = 0; i < n; i++)
    for (unsigned j = 0; j < i; j++)
      if (strcmp(ar->members[i], ar->members[j]) == 0 ||
          raid_same_file(ar->members[i], ar->members[j]))
        return vd_set_error(EINVAL, "%s: member %s given twice", desc,
                            ar->members[i]);

  /* Never overwrite what looks like someone's data without being told. */
  for (unsigned i = 0; i < n; i++) {
    char what[512];
    int r = raid_check_member_type(ar->members[i]);
    if (r < 0)
      return r;
    if (ar->force)
      continue;
    r = vd_raid_member_check(ar->members[i], what, sizeof what);
    if (r < 0)
      return r;
    if (r > 0)
      return vd_set_error(EEXIST, "%s: holds %s: not overwritten (--force "
                          "to use it anyway)", ar->members[i], what);
  }

  uint64_t meta_end = RAID_PPL_OFFSET;
  if (policy == RAID_POLICY_PPL)
    meta_end += (uint64_t)RAID_PPL_SLOTS * (RAID_PPL_HDR + chunk);
  uint64_t data_offset = vd_round_up(meta_end, RAID_DATA_ALIGN);
  if (ar->member_size && ar->member_size < data_offset + chunk)
    return vd_set_error(ENOSPC, "%s: members must hold at least %" PRIu64
                        " bytes (metadata %" PRIu64 " + one chunk)", desc,
                        data_offset + chunk, data_offset);

  struct vd_dev *dev[RAID_MAX_MEMBERS] = { NULL };
  int r = 0;
  for (unsigned i = 0; i < n && r == 0; i++) {
    if (ar->member_size) {
      struct vd_create_args ca = { .size = ar->member_size };
      r = vd_create(ar->members[i], ar->member_format, &ca);
      if (r < 0)
        break;
    }
    r = vd_open(ar->members[i], ar->member_size ? ar->member_format : NULL,
                VD_OPEN_RDWR, &dev[i]);
  }
  uint64_t msize = UINT64_MAX;
  for (unsigned i = 0; i < n && r == 0; i++)
    if (vd_size(dev[i]) < msize)
      msize = vd_size(dev[i]);

  struct raid_sb sb;
  memset(&sb, 0, sizeof sb);
  if (r == 0) {
    raid_uuid_generate(sb.uuid);
    sb.level = (uint32_t)ar->level;
    sb.layout = RAID_LAYOUT_LEFT_SYMMETRIC;
    sb.chunk = chunk;
    sb.nmembers = n;
    sb.policy = (uint32_t)policy;
    if (policy == RAID_POLICY_PPL) {
      sb.ppl_offset = RAID_PPL_OFFSET;
      sb.ppl_slots = RAID_PPL_SLOTS;
      sb.ppl_slot_size = RAID_PPL_HDR + chunk;
    }
    sb.data_offset = data_offset;
    if (msize < sb.data_offset + chunk) {
      r = vd_set_error(ENOSPC, "%s: members must hold at least %" PRIu64
                       " bytes (metadata %" PRIu64 " + one chunk)", desc,
                       sb.data_offset + chunk, sb.data_offset);
    } else {
      sb.data_size = vd_round_down(msize - sb.data_offset, chunk);
      sb.array_size = ar->level == 0 ? sb.data_size * n
                      : ar->level == 1 ? sb.data_size
                      : sb.data_size * (n - 1);
      if (policy != RAID_POLICY_RESYNC) {
        /* md's default bitmap chunk: 64 MiB.  Setting a bit flushes every
         * member, so small regions cost sequential writes dearly. */
        uint64_t region = ar->bitmap_region ? ar->bitmap_region
                          : (64u << 20);
        if (!vd_is_pow2(region))
          r = vd_set_error(EINVAL, "%s: bitmap region must be a power of two",
                           desc);
        if (region < chunk)
          region = chunk;
        while ((sb.data_size + region - 1) / region >
               (uint64_t)RAID_BITMAP_MAX * 8)
          region *= 2;
        uint64_t nreg = (sb.data_size + region - 1) / region;
        sb.bitmap_offset = RAID_BITMAP_OFFSET;
        sb.bitmap_region = region;
        sb.bitmap_bytes = (uint32_t)vd_round_up((nreg + 7) / 8, 4096);
      }
      sb.resync_offset = RAID_NO_OFFSET;
      sb.ctime = sb.utime = (uint64_t)time(NULL);
      snprintf(sb.name, sizeof sb.name, "%s", ar->name ? ar->name : "");
      sb.events = 1;
      for (unsigned i = 0; i < n; i++) {
        raid_uuid_generate(sb.role[i].dev_uuid);
        sb.role[i].state = RAID_ROLE_ACTIVE;
      }
    }
  }
  /* Zero the metadata areas and (unless told not to) the data, so the
   * array reads zeros and parity is consistent from the start. */
  uint8_t *buf = r == 0 ? vd_alloc_aligned(RAID_SB_SIZE) : NULL;
  if (r == 0 && !buf)
    r = vd_set_error(ENOMEM, "%s: out of memory", desc);
  for (unsigned i = 0; i < n && r == 0; i++) {
    r = vd_write_zeroes(dev[i], 0, sb.data_offset, 0);
    if (r == 0 && !ar->member_size && !ar->assume_clean)
      r = vd_write_zeroes(dev[i], sb.data_offset, sb.data_size, 0);
    struct raid_sb s = sb;
    s.slot = i;
    raid_sb_encode(&s, buf);
    if (r == 0)
      r = vd_pwrite(dev[i], buf, RAID_SB_SIZE, RAID_SB_OFFSET, 0);
    if (r == 0)
      r = vd_flush(dev[i]);
  }
  vd_free_aligned(buf);
  struct raid_desc d;
  memset(&d, 0, sizeof d);
  if (r == 0) {
    memcpy(d.uuid, sb.uuid, 16);
    d.nmembers = n;
    for (unsigned i = 0; i < n && r == 0; i++) {
      d.member[i] = raid_desc_relpath(desc, ar->members[i]);
      d.format[i] = strdup(vd_format(dev[i]));
      if (!d.member[i] || !d.format[i])
        r = vd_set_error(ENOMEM, "%s: out of memory", desc);
    }
  }
  for (unsigned i = 0; i < n; i++) {
    int c = vd_close(dev[i]);
    if (r == 0 && c < 0)
      r = c;
  }
  if (r == 0)
    r = raid_desc_write(desc, &d);
  raid_desc_free(&d);
  return r;
}

/* ---- assemble from members alone ---- */

int vd_raid_assemble(const char *desc, const char *const *members,
                     unsigned n, unsigned flags)
{
  bool force = (flags & VD_RAID_ASSEMBLE_FORCE) != 0;
  bool run = force || (flags & VD_RAID_ASSEMBLE_RUN) != 0;
  if (n == 0 || n > RAID_MAX_MEMBERS)
    return vd_set_error(EINVAL, "%s: give 1 to %u members", desc,
                        RAID_MAX_MEMBERS);
  struct raid_sb *sbs = calloc(n, sizeof *sbs);
  char **fmts = calloc(n, sizeof *fmts);
  uint8_t *buf = vd_alloc_aligned(RAID_SB_SIZE);
  int r = 0, fresh = -1;
  if (!sbs || !fmts || !buf) {
    r = vd_set_error(ENOMEM, "%s: out of memory", desc);
    goto out;
  }
  for (unsigned i = 0; i < n && r == 0; i++) {
    struct vd_dev *dev;
    r = raid_check_member_type(members[i]);
    if (r < 0)
      break;
    r = vd_open(members[i], NULL, VD_OPEN_NOLOCK, &dev);
    if (r < 0)
      break;
    if (vd_size(dev) < RAID_SB_OFFSET + RAID_SB_SIZE)
      r = vd_set_error(EINVAL, "%s: too small to be a RAID member",
                       members[i]);
    if (r == 0)
      r = vd_pread(dev, buf, RAID_SB_SIZE, RAID_SB_OFFSET);
    if (r == 0)
      r = raid_sb_decode(buf, &sbs[i], members[i]);
    fmts[i] = strdup(vd_format(dev));
    vd_close(dev);
    if (r == 0 && (fresh < 0 || sbs[i].events > sbs[fresh].events))
      fresh = (int)i;
  }
  if (r < 0)
    goto out;
  struct raid_desc d;
  memset(&d, 0, sizeof d);
  memcpy(d.uuid, sbs[fresh].uuid, 16);
  d.nmembers = sbs[fresh].nmembers;
  int pick[RAID_MAX_MEMBERS];
  for (unsigned i = 0; i < RAID_MAX_MEMBERS; i++)
    pick[i] = -1;
  for (unsigned i = 0; i < n; i++) {
    if (memcmp(sbs[i].uuid, sbs[fresh].uuid, 16) != 0) {
      char u[37];
      raid_uuid_format(sbs[i].uuid, u);
      r = vd_set_error(EINVAL, "%s: belongs to another array (%s)",
                       members[i], u);
      goto out;
    }
    unsigned s = sbs[i].slot;
    if (s >= d.nmembers)
      continue;
    /* Two candidates for one slot: keep the fresher (the other is stale). */
    if (pick[s] < 0 || sbs[i].events > sbs[pick[s]].events)
      pick[s] = (int)i;
  }
  /* A slot the freshest superblock records as working but that was not
   * given: as mdadm, start degraded only when told to (--run), and never
   * record it as faulty for that alone (raid_open leaves absent members
   * alone until the array is written), so giving it again later needs no
   * rebuild. */
  for (unsigned s = 0; s < d.nmembers && !run; s++)
    if (pick[s] < 0 && sbs[fresh].role[s].state != RAID_ROLE_FAULTY) {
      char u[37];
      raid_uuid_format(sbs[fresh].uuid, u);
      r = vd_set_error(EAGAIN, "%s: slot %u of array %s is working but was "
                       "not given: name every member, or add --run to start "
                       "the array degraded", desc, s, u);
      raid_desc_free(&d);
      goto out;
    }
  for (unsigned s = 0; s < d.nmembers && r == 0; s++) {
    if (pick[s] < 0)
      continue;
    d.member[s] = raid_desc_relpath(desc, members[pick[s]]);
    d.format[s] = fmts[pick[s]] ? strdup(fmts[pick[s]]) : NULL;
    if (!d.member[s])
      r = vd_set_error(ENOMEM, "%s: out of memory", desc);
  }
  if (r == 0)
    r = raid_desc_write(desc, &d);
  raid_desc_free(&d);
  if (r < 0)
    goto out;
  /* Start it once, so refusals are reported now and --force takes effect
   * (PPL replay, resync, superblocks updated). */
  struct vd_dev *arr;
  raid_set_force_next(force);
  r = vd_open(desc, "raid", VD_OPEN_RDWR, &arr);
  raid_set_force_next(false);
  if (r == 0)
    r = vd_close(arr);
out:
  if (fmts)
    for (unsigned i = 0; i < n; i++)
      free(fmts[i]);
  free(fmts);
  free(sbs);
  vd_free_aligned(buf);
  return r;
}

/* ---- online requests ----
 *
 * The request file is a control channel in a folder that other users may
 * be able to write, so the serving process trusts it only as far as it
 * can check it (until the control socket replaces it):
 *  - opened with O_NOFOLLOW | O_NONBLOCK (a symlink is refused, a FIFO
 *    never blocks the monitor) and checked with fstat after the open:
 *    a regular file with one link, owned by this process's uid or root,
 *    not writable by group or others.  Anything else is ignored with one
 *    log line on stderr and left alone (a legitimate request replaces it
 *    by rename);
 *  - one line of at most RAID_REQ_MAX bytes; every field parsed strictly
 *    (slots and rates with strtoull, no sign, no trailing bytes, range
 *    checked; formats must name a driver; paths must be absolute) and a
 *    malformed request is answered with an error.
 * Every side file is written through raid_file_replace (O_EXCL |
 * O_NOFOLLOW temporary, rename, folder fsync). */

#define RAID_REQ_MAX 4200

static char *raid_side_path(const char *desc, const char *suffix)
{
  size_t l = strlen(desc) + strlen(suffix) + 1;
  char *p = malloc(l);
  if (p)
    snprintf(p, l, "%s%s", desc, suffix);
  return p;
}

/* Read a small side file without following a symlink or blocking on a
 * FIFO.  Returns the byte count (BUF NUL-terminated) with *ST filled, or
 * -ENOENT, -ELOOP (a symlink), -ENODEV (not a regular file), -EFBIG (LEN - 1 bytes or more), or another -errno. */
static ssize_t raid_read_side(const char *path, char *buf, size_t len,
                              struct stat *st)
{
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  if (fstat(fd, st) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  if (!S_ISREG(st->st_mode)) {
    close(fd);
    return -ENODEV;
  }
  size_t got = 0;
  for (;;) {
    ssize_t n = read(fd, buf + got, len - 1 - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      return -e;
    }
    if (n == 0)
      break;
    got += (size_t)n;
    if (got == len - 1) {
      close(fd);
      return -EFBIG;
    }
  }
  close(fd);
  buf[got] = '\0';
  return (ssize_t)got;
}

/* vdtool's side: believe ARRAY.served and ARRAY.result only when they were
 * written by our own uid or root (the serving process must be one of them
 * anyway, see raid_monitor_poll), not by another user of the folder. */
static bool raid_side_trusted(const struct stat *st)
{
  return st->st_uid == geteuid() || st->st_uid == 0;
}

static int raid_write_side(const char *path, const char *text, mode_t mode)
{
  return raid_file_replace(path, text, strlen(text), mode);
}

/* Strict decimal: digits only (no sign, space or suffix), <= MAX. */
static bool raid_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
  if (*s < '0' || *s > '9')
    return false;
  errno = 0;
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || v > max)
    return false;
  *out = v;
  return true;
}

static void raid_mismatch_note(void *opaque, uint64_t stripe, uint64_t off)
{
  (void)off;
  char *list = opaque;
  size_t l = strlen(list);
  if (l < 900)
    snprintf(list + l, 1024 - l, "%s%" PRIu64, l ? "," : "", stripe);
}

/* Execute one request line (already checked to be one line of printable
 * bytes, newline removed) and write the answer to RES. */
static void raid_handle_request(struct raid_array *a, char *req, char *res,
                                size_t reslen)
{
  int r;
  uint64_t v;
  if (strncmp(req, "fail ", 5) == 0) {
    if (!raid_parse_u64(req + 5, a->n - 1, &v)) {
      snprintf(res, reslen, "error %s: bad request '%.64s': fail needs a "
               "slot number below %u", a->desc_path, req, a->n);
      return;
    }
    r = vd_raid_fail(a, (int)v);
    snprintf(res, reslen, r == 0 ? "ok" : "error %s", vd_error());
  } else if (strncmp(req, "replace ", 8) == 0) {
    /* replace SLOT FORMAT PATH */
    char *slot_s = req + 8, *fmt = strchr(slot_s, ' ');
    char *path = fmt ? strchr(fmt + 1, ' ') : NULL;
    if (fmt)
      *fmt++ = '\0';
    if (path)
      *path++ = '\0';
    const char *bad = NULL;
    if (!fmt || !path)
      bad = "expected 'replace SLOT FORMAT PATH'";
    else if (!raid_parse_u64(slot_s, a->n - 1, &v))
      bad = "slot number out of range";
    else if (strcmp(fmt, "-") && (strlen(fmt) > 31 || !vd_find_driver(fmt)))
      bad = "unknown format";
    else if (path[0] != '/' || strlen(path) >= PATH_MAX)
      bad = "the path must be absolute";
    if (bad) {
      snprintf(res, reslen, "error %s: bad replace request: %s",
               a->desc_path, bad);
      return;
    }
    r = raid_replace_install(a, (int)v, path, strcmp(fmt, "-") ? fmt : NULL);
    if (r == 0)
      raid_rebuild_start(a);
    snprintf(res, reslen, r == 0 ? "ok rebuilding" : "error %s", vd_error());
  } else if (strcmp(req, "scrub") == 0 || strcmp(req, "scrub repair") == 0) {
    char list[1024] = "";
    struct vd_raid_scrub_report rep = { .mismatch = raid_mismatch_note,
                                        .opaque = list };
    r = vd_raid_scrub(a, req[5] != '\0', &rep, NULL, NULL);
    if (r == 0)
      snprintf(res, reslen, "ok %" PRIu64 " %" PRIu64 " %" PRIu64 " %s",
               rep.stripes, rep.mismatches, rep.repaired, list);
    else
      snprintf(res, reslen, "error %s", vd_error());
  } else if (strncmp(req, "rate ", 5) == 0) {
    if (!raid_parse_u64(req + 5, UINT64_MAX, &v)) {
      snprintf(res, reslen, "error %s: bad request: rate needs bytes per "
               "second", a->desc_path);
      return;
    }
    atomic_store(&a->rebuild_rate, v);
    snprintf(res, reslen, "ok");
  } else {
    snprintf(res, reslen, "error %s: unknown request '%.64s'", a->desc_path,
             req);
  }
}

/* One look at the request file (monitor thread, fork_lock read-held). */
static void raid_monitor_poll(struct raid_array *a)
{
  char req[RAID_REQ_MAX + 1], res[2048];
  struct stat st;
  ssize_t n = raid_read_side(a->mon_req, req, sizeof req, &st);
  if (n == -ENOENT)
    return;
  char why[160] = "";
  if (n == -ELOOP)
    snprintf(why, sizeof why, "it is a symbolic link");
  else if (n == -ENODEV)
    snprintf(why, sizeof why, "it is not a regular file");
  else if (n < 0 && n != -EFBIG)
    snprintf(why, sizeof why, "%s", strerror((int)-n));
  else if (st.st_uid != geteuid() && st.st_uid != 0)
    snprintf(why, sizeof why, "owned by uid %u, not by uid %u or root",
             (unsigned)st.st_uid, (unsigned)geteuid());
  else if (st.st_mode & (S_IWGRP | S_IWOTH))
    snprintf(why, sizeof why, "writable by group or others (mode %03o)",
             (unsigned)(st.st_mode & 0777));
  else if (st.st_nlink != 1)
    snprintf(why, sizeof why, "it has %lu hard links",
             (unsigned long)st.st_nlink);
  if (why[0]) {
    /* Not ours to execute (nor to delete): log it once per file. */
    struct stat ls;
    if (lstat(a->mon_req, &ls) != 0)
      return;
    if (ls.st_dev == a->mon_ign_dev && ls.st_ino == a->mon_ign_ino &&
        ls.st_mtim.tv_sec == a->mon_ign_mtime.tv_sec &&
        ls.st_mtim.tv_nsec == a->mon_ign_mtime.tv_nsec)
      return;
    a->mon_ign_dev = ls.st_dev;
    a->mon_ign_ino = ls.st_ino;
    a->mon_ign_mtime = ls.st_mtim;
    fprintf(stderr, "vdisk: %s: request ignored: %s\n", a->mon_req, why);
    return;
  }
  /* A request we accept: take it away before answering, so a following
   * request (written once the answer is seen) is never deleted. */
  unlink(a->mon_req);
  if (n == -EFBIG || n == 0 || req[n - 1] != '\n' ||
      strchr(req, '\n') != req + n - 1) {
    snprintf(res, sizeof res, "error %s: bad request: expected one line of "
             "at most %d bytes", a->desc_path, RAID_REQ_MAX - 1);
  } else {
    req[n - 1] = '\0';
    bool printable = true;
    for (ssize_t i = 0; i < n - 1; i++)
      if ((unsigned char)req[i] < 0x20 || req[i] == 0x7f)
        printable = false;
    if (!printable)
      snprintf(res, sizeof res, "error %s: bad request: control characters",
               a->desc_path);
    else
      raid_handle_request(a, req, res, sizeof res);
  }
  strcat(res, "\n");
  if (raid_write_side(a->mon_res, res, 0600) < 0)
    fprintf(stderr, "vdisk: %s\n", vd_error());
}

static void *raid_monitor_main(void *opaque)
{
  struct raid_array *a = opaque;
  while (!atomic_load(&a->stop)) {
    pthread_rwlock_rdlock(&a->fork_lock);
    raid_monitor_poll(a);
    pthread_rwlock_unlock(&a->fork_lock);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&a->mon_lock);
    if (!atomic_load(&a->stop))
      pthread_cond_timedwait(&a->mon_cond, &a->mon_lock, &ts);
    pthread_mutex_unlock(&a->mon_lock);
  }
  return NULL;
}

void raid_monitor_start(struct raid_array *a)
{
  if (!a->writable || a->monitor_running)
    return;
  if (!a->mon_req)
    a->mon_req = raid_side_path(a->desc_path, ".request");
  if (!a->mon_res)
    a->mon_res = raid_side_path(a->desc_path, ".result");
  if (!a->mon_req || !a->mon_res)
    return;
  char *sp = raid_side_path(a->desc_path, ".served");
  if (!sp)
    return;
  char pid[32];
  snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (raid_write_side(sp, pid, 0644) < 0)
    fprintf(stderr, "vdisk: %s\n", vd_error());
  free(sp);
  atomic_store(&a->stop, false);
  pthread_mutex_init(&a->mon_lock, NULL);
  pthread_cond_init(&a->mon_cond, NULL);
  if (pthread_create(&a->monitor, NULL, raid_monitor_main, a) == 0)
    a->monitor_running = true;
}

void raid_monitor_stop(struct raid_array *a)
{
  if (!a->monitor_running)
    return;
  pthread_mutex_lock(&a->mon_lock);
  atomic_store(&a->stop, true);
  pthread_cond_signal(&a->mon_cond);
  pthread_mutex_unlock(&a->mon_lock);
  pthread_join(a->monitor, NULL);
  a->monitor_running = false;
  pthread_mutex_destroy(&a->mon_lock);
  pthread_cond_destroy(&a->mon_cond);
  char *sp = raid_side_path(a->desc_path, ".served");
  if (sp) {
    unlink(sp);
    free(sp);
  }
}

int vd_raid_served_by(const char *desc)
{
  char *sp = raid_side_path(desc, ".served");
  if (!sp)
    return 0;
  char buf[64];
  struct stat st;
  ssize_t n = raid_read_side(sp, buf, sizeof buf, &st);
  free(sp);
  if (n <= 0 || !raid_side_trusted(&st))
    return 0;
  char *nl = strchr(buf, '\n');
  if (nl)
    *nl = '\0';
  uint64_t pid;
  if (!raid_parse_u64(buf, INT_MAX, &pid) || pid == 0 ||
      (pid_t)pid == getpid() ||
      (kill((pid_t)pid, 0) != 0 && errno == ESRCH))
    return 0;
  return (int)pid;
}

int vd_raid_request(const char *desc, const char *request, char *result,
                    size_t reslen, int timeout)
{
  char *reqp = raid_side_path(desc, ".request");
  char *resp = raid_side_path(desc, ".result");
  int r = 0;
  if (!reqp || !resp) {
    r = vd_set_error(ENOMEM, "%s: out of memory", desc);
    goto out;
  }
  unlink(resp);
  char line[RAID_REQ_MAX];
  if ((size_t)snprintf(line, sizeof line, "%s\n", request) >= sizeof line) {
    r = vd_set_error(EINVAL, "%s: request too long", desc);
    goto out;
  }
  r = raid_write_side(reqp, line, 0600);
  if (r < 0) {
    r = vd_prefix_error(-r, "%s: cannot leave a request", reqp);
    goto out;
  }
  double t0 = raid_now();
  for (;;) {
    char buf[2048];
    struct stat st;
    ssize_t n = raid_read_side(resp, buf, sizeof buf, &st);
    if (n >= 0 || n == -EFBIG || n == -ELOOP || n == -ENODEV) {
      unlink(resp);
      if (n < 0 || !raid_side_trusted(&st)) {
        r = vd_set_error(EIO, "%s: the answer is not a regular file of "
                         "uid %u or root: ignored", resp,
                         (unsigned)geteuid());
        break;
      }
      char *nl = strchr(buf, '\n');
      if (nl)
        *nl = '\0';
      if (strncmp(buf, "ok", 2) == 0) {
        snprintf(result, reslen, "%s", buf[2] ? buf + 3 : "");
        r = 0;
      } else {
        r = vd_set_error(EIO, "%s", strncmp(buf, "error ", 6) == 0
                         ? buf + 6 : buf);
      }
      break;
    }
    if ((timeout > 0 && raid_now() - t0 > timeout) || !vd_raid_served_by(desc)) {
      unlink(reqp);
      r = vd_set_error(ETIMEDOUT, "%s: the serving process did not answer "
                       "(see its log)", desc);
      break;
    }
    raid_sleep(0.05);
  }
out:
  free(reqp);
  free(resp);
  return r;
}
