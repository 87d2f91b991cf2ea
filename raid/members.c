/* RAID member management: fail, replace, find a member, and what a
 * device already holds before it becomes a member (raid create refuses
 * devices that carry data unless forced).
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

#include "vdisk/endian.h"
#include "raid/raid.h"
/* Path to store in the descriptor: relative to its directory when below
 * it, else absolute. */
char *raid_desc_relpath(const char *desc, const char *path)
{
  char dbuf[PATH_MAX], pbuf[PATH_MAX];
  if (vd_is_remote_name(path))
    return strdup(path);   /* an export, as the operator typed it */
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

int raid_desc_update(struct raid_array *a, int slot, const char *path,
                     const char *format)
{
  struct raid_desc d;
  /* One rewrite of the descriptor at a time; a->spare[] is stable. */
  pthread_mutex_lock(&a->sb_lock);
  int r = raid_desc_read(a->desc_abs, &d);
  if (r < 0) {
    pthread_mutex_unlock(&a->sb_lock);
    return r;
  }
  bool oom = false;
  if (slot >= 0) {
    free(d.member[slot]);
    free(d.format[slot]);
    d.member[slot] = raid_desc_relpath(a->desc_abs, path);
    d.format[slot] = format ? strdup(format) : NULL;
    oom = !d.member[slot];
  }
  for (unsigned i = 0; i < d.nspares; i++) {
    free(d.spare[i]);
    free(d.spare_format[i]);
    d.spare[i] = d.spare_format[i] = NULL;
  }
  d.nspares = a->nspares;
  for (unsigned i = 0; i < a->nspares; i++) {
    const struct raid_spare *sp = &a->spare[i];
    d.spare[i] = raid_desc_relpath(a->desc_abs, sp->path);
    d.spare_format[i] = sp->format ? strdup(sp->format) : NULL;
    oom |= !d.spare[i];
  }
  r = !oom ? raid_desc_write(a->desc_abs, &d)
           : vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  raid_desc_free(&d);
  pthread_mutex_unlock(&a->sb_lock);
  return r;
}

/* Whether DEV holds a valid superblock of an array other than UUID; its
 * UUID goes to OTHER. */
bool raid_foreign_sb(struct vd_dev *dev, const uint8_t *uuid,
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

bool raid_same_file(const char *x, const char *y)
{
  struct stat a, b;
  if (vd_is_remote_name(x) || vd_is_remote_name(y))
    return strcmp(x, y) == 0;
  return stat(x, &a) == 0 && stat(y, &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

int raid_new_device_open(struct raid_array *a, int slot, const char *newpath,
                         const char *fmt, struct vd_dev **ndp)
{
  for (unsigned i = 0; i < a->n; i++)
    if (a->m[i].path && raid_same_file(a->m[i].path, newpath) &&
        ((int)i != slot || a->m[i].dev))
      return vd_set_error(EINVAL, "%s: %s is already member %u", a->desc_path,
                          newpath, i);
  bool spare = false;
  pthread_mutex_lock(&a->sb_lock);   /* a takeover may drop a spare */
  for (unsigned i = 0; i < a->nspares; i++)
    spare |= raid_same_file(a->spare[i].path, newpath);
  pthread_mutex_unlock(&a->sb_lock);
  if (spare)
    return vd_set_error(EINVAL, "%s: %s is already a spare", a->desc_path,
                        newpath);
  /* Only a regular file or a block device (a FIFO or a character device
   * would block or make no sense), never the descriptor. */
  bool uri = a->member_uris && vd_is_remote_name(newpath);
  struct stat nst;
  if (!uri && stat(newpath, &nst) != 0)
    return vd_set_error(errno, "%s: %s", newpath, strerror(errno));
  if (!uri && !S_ISREG(nst.st_mode) && !S_ISBLK(nst.st_mode))
    return vd_set_error(EINVAL, "%s: not a regular file or block device",
                        newpath);
  if (raid_same_file(a->desc_abs, newpath))
    return vd_set_error(EINVAL, "%s: is the array's descriptor", newpath);
  struct vd_open_args oa = { .format = fmt, .flags = VD_OPEN_RDWR,
                             .filter = a->member_filter,
                             .timeout_ms = a->timeout_ms };
  struct vd_dev *nd;
  int r = a->member_uris ? vd_open_opts(newpath, &oa, &nd)
                         : vd_open_parent(NULL, newpath, &oa, &nd);
  if (r < 0)
    return r;
  uint64_t need = a->sb.data_offset + a->sb.data_size;
  if (vd_size(nd) < need) {
    uint64_t have = vd_size(nd);
    vd_close(nd);
    if (slot < 0)
      return vd_set_error(ENOSPC, "%s: too small to be a spare: %" PRIu64
                          " bytes, a member needs %" PRIu64, newpath, have,
                          need);
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
  *ndp = nd;
  return 0;
}

void raid_slot_install_locked(struct raid_array *a, int slot,
                              struct vd_dev *nd, char *path, char *fmt,
                              const uint8_t *dev_uuid)
{
  VD_ASSERT_HELD(&a->sb_lock);
  struct raid_member *m = &a->m[slot];
  /* I/O in flight may still use the old device: closed at the end. */
  if (m->dev && a->nretired < sizeof a->retired / sizeof a->retired[0])
    a->retired[a->nretired++] = m->dev;
  else if (m->dev)
    vd_close(m->dev);
  free(m->path);
  m->path = path;
  free(m->format);
  m->format = fmt;
  memcpy(m->dev_uuid, dev_uuid, 16);
  atomic_store(&m->recovery, 0);
  atomic_store(&m->readd, false);
  m->dev = nd;
  atomic_store(&m->state, RAID_ROLE_REBUILDING);
}

int raid_replace_install(struct raid_array *a, int slot, const char *newpath,
                         const char *fmt)
{
  if (!a->writable)
    return vd_set_error(EROFS, "%s: array is open read-only", a->desc_path);
  if (!a->ops->redundant)
    return vd_set_error(ENOTSUP, "%s: RAID%u has no redundancy, a member "
                        "cannot be rebuilt", a->desc_path, a->sb.level);
  if (slot < 0 || (unsigned)slot >= a->n)
    return vd_set_error(EINVAL, "%s: no slot %d", a->desc_path, slot);
  if (atomic_load(&a->failed))
    return vd_set_error(EIO, "%s: RAID%u has failed", a->desc_path,
                        a->sb.level);
  for (unsigned i = 0; i < a->n; i++)
    if ((int)i != slot && atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      return vd_set_error(EBUSY, "%s: slot %u is being rebuilt; wait for it",
                          a->desc_path, i);
  struct vd_dev *nd;
  int r = raid_new_device_open(a, slot, newpath, fmt, &nd);
  if (r < 0)
    return r;
  int st = atomic_load(&a->m[slot].state);
  if (st != RAID_ROLE_FAULTY) {
    /* Replacing a working member: fail it first (the array runs degraded
     * during the rebuild), unless the array is degraded already. */
    if (st == RAID_ROLE_REBUILDING)
      raid_rebuild_stop(a);
    r = raid_member_fail_request(a, slot, true);
    if (r < 0) {
      vd_close(nd);
      return r;
    }
  }
  char *path = strdup(newpath);
  char *mfmt = strdup(fmt ? fmt : vd_format(nd));
  if (!path || !mfmt) {
    free(path);
    free(mfmt);
    vd_close(nd);
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  }
  uint8_t u[16];
  raid_uuid_generate(u);
  pthread_mutex_lock(&a->sb_lock);
  raid_slot_install_locked(a, slot, nd, path, mfmt, u);
  r = raid_sb_write_all_locked(a);
  pthread_mutex_unlock(&a->sb_lock);
  if (r < 0)
    return r;
  /* The new member's bitmap and log areas start clean. */
  return raid_desc_update(a, slot, newpath, fmt ? fmt : vd_format(nd));
}

int vd_raid_replace_start(struct raid_array *a, int slot, const char *newpath,
                          const char *newformat, uint64_t rate)
{
  if (atomic_load(&a->rebuild_caller))
    return vd_set_error(EBUSY, "%s: a rebuild job is running: wait for it "
                        "or cancel it", a->desc_path);
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
  if (st == RAID_ROLE_REBUILDING)
    raid_rebuild_stop(a);
  return raid_member_fail_request(a, slot, false);
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
  bool uri = vd_is_remote_name(path);
  if (!uri && stat(path, &st) != 0)
    return 0;    /* created by raid create --size */
  int r = raid_check_member_type(path);
  if (r < 0)
    return r;
  if (!uri && S_ISREG(st.st_mode) && st.st_size == 0)
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

/* ---- re-add (docs/remote.md) ----
 *
 * md's --re-add: a member that failed (a remote export that went away, a
 * device unplugged) comes back and only what was written while it was out
 * is copied.  That is sound because the array never clears a bitmap bit
 * while a member is out (raid_flush, raid_close): every region written
 * since the failure, and every region with a write in flight to the member
 * when it failed, is still marked.  The failure is dated in the survivors'
 * role table (the events of the superblock write that first recorded it);
 * the device must carry this slot's device UUID and an event count from
 * just before that date (its last superblock write, or the one that
 * failed: at most two behind), or it may have missed writes whose bits
 * were cleared while it was still counted active. */

/* The member's own superblock: this array, this slot, this device, failed
 * when the survivors say so.  0, or -errno with the reason. */
static int raid_readd_check_sb(struct raid_array *a, int slot,
                               struct vd_dev *nd, uint64_t failed_at)
{
  struct raid_member *m = &a->m[slot];
  struct raid_sb sb;
  uint8_t *buf = vd_alloc_aligned(RAID_SB_SIZE);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  int r = vd_size(nd) < a->sb.data_offset + a->sb.data_size
          ? vd_set_error(ENOSPC, "%s: smaller than the array's members",
                         m->path)
          : vd_pread(nd, buf, RAID_SB_SIZE, RAID_SB_OFFSET);
  if (r == 0)
    r = raid_sb_decode(buf, &sb, m->path);
  vd_free_aligned(buf);
  if (r < 0)
    return vd_set_error(ESTALE, "%s: cannot re-add slot %d: %s (replace it: "
                        "a full rebuild)", a->desc_path, slot, vd_error());
  if (memcmp(sb.uuid, a->sb.uuid, 16) != 0 || sb.slot != (uint32_t)slot ||
      sb.nmembers != a->n || sb.chunk != a->sb.chunk ||
      sb.data_offset != a->sb.data_offset ||
      sb.data_size != a->sb.data_size ||
      memcmp(sb.role[slot].dev_uuid, m->dev_uuid, 16) != 0)
    return vd_set_error(ESTALE, "%s: cannot re-add slot %d: %s is not the "
                        "device that failed in this slot (replace it: a "
                        "full rebuild)", a->desc_path, slot, m->path);
  if (sb.events >= a->sb.events || sb.events + 2 < failed_at)
    return vd_set_error(ESTALE, "%s: cannot re-add slot %d: %s has events %"
                        PRIu64 ", the slot failed at events %" PRIu64 " (the "
                        "array has %" PRIu64 "): the write-intent bitmap does "
                        "not cover what it missed (replace it: a full "
                        "rebuild)", a->desc_path, slot, m->path, sb.events,
                        failed_at, a->sb.events);
  return 0;
}

/* Make the returning device's metadata match the array's before it takes
 * writes: no partial parity log entry from before its failure may ever be
 * replayed, and its bitmap copy is the array's. */
static int raid_readd_prepare(struct raid_array *a, struct vd_dev *nd)
{
  size_t bytes = vd_round_up(a->sb.bitmap_bytes, 4096);
  uint8_t *buf = vd_alloc_aligned(bytes > 4096 ? bytes : 4096);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  int r = 0;
  memset(buf, 0, 4096);
  if (a->sb.policy == RAID_POLICY_PPL)
    for (uint32_t k = 0; k < a->sb.ppl_slots && r == 0; k++)
      r = vd_pwrite(nd, buf, 4096,
                    a->sb.ppl_offset + (uint64_t)k * a->sb.ppl_slot_size, 0);
  if (r == 0) {
    pthread_mutex_lock(&a->bm_lock);
    memcpy(buf, a->bm, bytes);
    pthread_mutex_unlock(&a->bm_lock);
    r = vd_pwrite(nd, buf, bytes, a->sb.bitmap_offset, 0);
  }
  if (r == 0)
    r = vd_flush(nd);
  vd_free_aligned(buf);
  return r;
}

int raid_readd_install(struct raid_array *a, int slot)
{
  if (!a->writable)
    return vd_set_error(EROFS, "%s: array is open read-only", a->desc_path);
  if (!a->ops->redundant)
    return vd_set_error(ENOTSUP, "%s: RAID%u has no redundancy, a member "
                        "cannot be re-added", a->desc_path, a->sb.level);
  if (slot < 0 || (unsigned)slot >= a->n)
    return vd_set_error(EINVAL, "%s: no slot %d", a->desc_path, slot);
  if (atomic_load(&a->failed))
    return vd_set_error(EIO, "%s: RAID%u has failed", a->desc_path,
                        a->sb.level);
  if (!a->bm)
    return vd_set_error(ENOTSUP, "%s: no write-intent bitmap (policy "
                        "resync): a member that failed must be replaced (a "
                        "full rebuild)", a->desc_path);
  struct raid_member *m = &a->m[slot];
  int st = atomic_load(&m->state);
  if (st == RAID_ROLE_ACTIVE)
    return vd_set_error(EINVAL, "%s: slot %d is active", a->desc_path, slot);
  if (st == RAID_ROLE_REBUILDING)
    return vd_set_error(EBUSY, "%s: slot %d is being rebuilt already",
                        a->desc_path, slot);
  if (!m->path)
    return vd_set_error(EINVAL, "%s: slot %d has no member in the "
                        "descriptor", a->desc_path, slot);
  for (unsigned i = 0; i < a->n; i++)
    if (atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      return vd_set_error(EBUSY, "%s: slot %u is being rebuilt; wait for it",
                          a->desc_path, i);
  /* A member absent since the open is recorded as failed now (dated), so
   * the check below has the same footing as for one that failed. */
  pthread_mutex_lock(&a->sb_lock);
  int r = m->failed_recorded ? 0 : raid_sb_write_all_locked(a);
  uint64_t failed_at = m->failed_events;
  pthread_mutex_unlock(&a->sb_lock);
  if (r < 0)
    return r;
  if (failed_at == 0)
    return vd_set_error(ESTALE, "%s: cannot re-add slot %d: its failure was "
                        "not dated (recorded by an older vdisk): replace it "
                        "(a full rebuild)", a->desc_path, slot);
  r = raid_check_member_type(m->path);
  if (r < 0)
    return r;
  struct vd_open_args oa = { .format = m->format, .flags = a->member_flags,
                             .filter = a->member_filter,
                             .timeout_ms = a->timeout_ms };
  struct vd_dev *nd;
  r = a->member_uris ? vd_open_opts(m->path, &oa, &nd)
                     : vd_open_parent(NULL, m->path, &oa, &nd);
  if (r < 0)
    return vd_prefix_error(-r, "%s: re-add of slot %d", a->desc_path, slot);
  r = raid_readd_check_sb(a, slot, nd, failed_at);
  if (r == 0)
    r = raid_readd_prepare(a, nd);
  if (r < 0) {
    vd_close(nd);
    return r;
  }
  pthread_mutex_lock(&a->sb_lock);
  bool busy = atomic_load(&m->state) != RAID_ROLE_FAULTY;
  for (unsigned i = 0; i < a->n; i++)
    if (atomic_load(&a->m[i].state) == RAID_ROLE_REBUILDING)
      busy = true;
  if (busy) {
    pthread_mutex_unlock(&a->sb_lock);
    vd_close(nd);
    return vd_set_error(EBUSY, "%s: slot %d changed meanwhile (another "
                        "re-add or replace)", a->desc_path, slot);
  }
  /* The dead device may still be in use by a request that has not yet
   * seen the failure: retire it, as replace does. */
  if (m->dev && a->nretired < sizeof a->retired / sizeof a->retired[0])
    a->retired[a->nretired++] = m->dev;
  else if (m->dev)
    vd_close(m->dev);
  m->dev = nd;
  atomic_store(&m->recovery, 0);
  atomic_store(&m->readd_copied, 0);
  atomic_store(&m->readd_skipped, 0);
  atomic_store(&m->read_errors, 0);
  atomic_store(&m->next_read, UINT64_MAX);
  atomic_store(&m->readd, true);
  atomic_store(&m->state, RAID_ROLE_REBUILDING);
  r = raid_sb_write_all_locked(a);
  pthread_mutex_unlock(&a->sb_lock);
  return r;
}

int vd_raid_re_add_start(struct raid_array *a, int slot, uint64_t rate)
{
  if (atomic_load(&a->rebuild_caller))
    return vd_set_error(EBUSY, "%s: a rebuild job is running: wait for it "
                        "or cancel it", a->desc_path);
  int r = raid_readd_install(a, slot);
  if (r < 0)
    return r;
  atomic_store(&a->rebuild_rate, rate);
  raid_rebuild_start(a);
  return 0;
}

int vd_raid_re_add(struct raid_array *a, int slot, uint64_t rate,
                   vd_progress_fn progress, void *opaque)
{
  int r = vd_raid_re_add_start(a, slot, rate);
  if (r < 0)
    return r;
  return raid_rebuild_wait(a, progress, opaque);
}

/* ---- auto re-add ----
 * A remote member fails when its server goes away or stops answering;
 * once the server is back, the thread re-adds it (the background rebuild
 * then copies the marked regions).  Only NBD URIs: a local device that
 * failed has an error to look at, not a network to wait for. */

static void *raid_readd_auto_main(void *opaque)
{
  struct raid_array *a = opaque;
  pthread_mutex_lock(&a->readd_lock);
  while (!atomic_load(&a->readd_stop)) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += a->auto_readd_s;
    while (!atomic_load(&a->readd_stop) &&
           pthread_cond_timedwait(&a->readd_cond, &a->readd_lock, &ts) == 0)
      ;
    if (atomic_load(&a->readd_stop))
      break;
    pthread_mutex_unlock(&a->readd_lock);
    for (unsigned i = 0; i < a->n && !atomic_load(&a->readd_stop); i++) {
      struct raid_member *m = &a->m[i];
      if (atomic_load(&m->state) != RAID_ROLE_FAULTY || !m->path ||
          !vd_is_remote_name(m->path) || atomic_load(&a->failed) ||
          atomic_load(&a->rebuild_active) || atomic_load(&a->rebuild_caller))
        continue;
      /* Failures (still unreachable, or not re-addable) are retried at
       * the next period; vdtool raid detail shows the state. */
      if (raid_readd_install(a, (int)i) == 0)
        raid_rebuild_start(a);
      vd_clear_error();
    }
    pthread_mutex_lock(&a->readd_lock);
  }
  pthread_mutex_unlock(&a->readd_lock);
  return NULL;
}

void raid_readd_auto_start(struct raid_array *a)
{
  if (!a->writable || !a->auto_readd_s || !a->bm || a->readd_running ||
      atomic_load(&a->crashed))
    return;
  atomic_store(&a->readd_stop, false);
  a->readd_running =
    pthread_create(&a->readd_thread, NULL, raid_readd_auto_main, a) == 0;
}

void raid_readd_auto_stop(struct raid_array *a)
{
  if (!a->readd_running)
    return;
  pthread_mutex_lock(&a->readd_lock);
  atomic_store(&a->readd_stop, true);
  pthread_cond_broadcast(&a->readd_cond);
  pthread_mutex_unlock(&a->readd_lock);
  pthread_join(a->readd_thread, NULL);
  a->readd_running = false;
}
