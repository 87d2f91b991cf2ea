/* RAID hot spares (docs/raid-format.md, "Hot spares"): vd_raid_add and
 * vd_raid_remove_spare, the spares of an open array, and the takeover
 * thread that puts a spare in the slot of a failed member and starts its
 * rebuild, as md does with a spare added to a healthy array.
 *
 * A spare's superblock is a copy of the array's with flag RAID_SB_SPARE,
 * slot RAID_SPARE_SLOT and its own device UUID; the members' superblocks
 * list the spares' device UUIDs (the spare table); the descriptor names
 * them ("spare FORMAT PATH").  Order of the writes (each step leaves an
 * array that opens and reads right):
 *   add:      spare's superblock (flushed), members' superblocks with the
 *             spare in their table, descriptor.
 *   takeover: every superblock at once, the spare's now being slot S's
 *             (rebuilding from 0, its device UUID recorded for S and gone
 *             from the table), then the descriptor.  A cut between them
 *             leaves the descriptor naming the device as a spare:
 *             raid_scan finds slot S's superblock there and uses it.
 *   remove:   members' superblocks without the spare, descriptor, then
 *             the spare's superblock is wiped.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raid/raid.h"
#include "vdisk/raid.h"

static bool raid_spare_listed(const struct raid_sb *sb, const uint8_t *u)
{
  for (unsigned i = 0; i < sb->nspares; i++)
    if (memcmp(sb->spare_uuid[i], u, 16) == 0)
      return true;
  return false;
}

/* Check that SP->dev holds a spare superblock of A; why not in SP->why. */
static bool raid_spare_valid(struct raid_array *a, struct raid_spare *sp)
{
  struct raid_sb *sb = malloc(sizeof *sb);
  if (!sb || raid_sb_read(sp->dev, sb, sp->path) < 0)
    snprintf(sp->why, sizeof sp->why, "%s", sb ? vd_error() : "out of memory");
  else if (!(sb->flags & RAID_SB_SPARE))
    snprintf(sp->why, sizeof sp->why, "%s: not a spare (its superblock is "
             "slot %u's)", sp->path, sb->slot);
  else if (!raid_sb_same_array(sb, &a->sb))
    snprintf(sp->why, sizeof sp->why, "%s: a spare of another array or "
             "geometry", sp->path);
  else if (!raid_spare_listed(&a->sb, sb->spare_self))
    snprintf(sp->why, sizeof sp->why, "%s: not in the array's spare table "
             "(removed)", sp->path);
  else if (vd_size(sp->dev) < a->sb.data_offset + a->sb.data_size)
    snprintf(sp->why, sizeof sp->why, "%s: smaller than a member", sp->path);
  else
    memcpy(sp->dev_uuid, sb->spare_self, 16);
  free(sb);
  return sp->why[0] == '\0';
}

int raid_spares_open(struct raid_array *a, const char *desc,
                     const struct raid_desc *d)
{
  for (unsigned i = 0; i < d->nspares; i++) {
    struct raid_spare *sp = &a->spare[a->nspares];
    sp->path = raid_desc_resolve(desc, d->spare[i]);
    sp->format = d->spare_format[i] ? strdup(d->spare_format[i]) : NULL;
    if (!sp->path || (d->spare_format[i] && !sp->format))
      return vd_set_error(ENOMEM, "%s: out of memory", desc);
    a->nspares++;
    /* A spare a cut takeover left in a slot (raid_scan took it). */
    bool member = false;
    for (unsigned s = 0; s < a->n; s++)
      member |= a->m[s].path && raid_same_file(a->m[s].path, sp->path);
    if (member) {
      snprintf(sp->why, sizeof sp->why, "%s: a member now", sp->path);
      continue;
    }
    struct vd_open_args oa = { .format = sp->format,
                               .flags = a->member_flags,
                               .filter = a->member_filter,
                               .timeout_ms = a->timeout_ms };
    int r = raid_check_member_type(sp->path);
    if (r == 0)
      r = a->member_uris ? vd_open_opts(sp->path, &oa, &sp->dev)
                         : vd_open_parent(NULL, sp->path, &oa, &sp->dev);
    if (r < 0) {
      sp->dev = NULL;
      snprintf(sp->why, sizeof sp->why, "%s", vd_error());
      if (r == -EBUSY)
        return r;   /* locked by another process: as for a member */
      continue;
    }
    if (!raid_spare_valid(a, sp)) {
      vd_close(sp->dev);
      sp->dev = NULL;
    }
  }
  vd_clear_error();
  return 0;
}

/* Drop spare K from a->spare[] (sb_lock held); its device to the caller. */
static void raid_spare_drop_locked(struct raid_array *a, unsigned k)
{
  VD_ASSERT_HELD(&a->sb_lock);
  struct raid_spare *sp = &a->spare[k];
  for (unsigned i = 0; i < a->sb.nspares; i++)
    if (memcmp(a->sb.spare_uuid[i], sp->dev_uuid, 16) == 0) {
      memmove(a->sb.spare_uuid[i], a->sb.spare_uuid[i + 1],
              (a->sb.nspares - i - 1) * 16);
      a->sb.nspares--;
      break;
    }
  free(sp->path);
  free(sp->format);
  memmove(sp, sp + 1, (a->nspares - k - 1) * sizeof *sp);
  a->nspares--;
  memset(&a->spare[a->nspares], 0, sizeof a->spare[0]);
}

/* Put a usable spare in the first faulty slot as a rebuilding member and
 * start the rebuild.  0: done or nothing to do; 1: a slot waits for a
 * rebuild to end; -errno on failure (the spare is dropped). */
static int raid_spare_takeover(struct raid_array *a)
{
  pthread_mutex_lock(&a->sb_lock);
  int slot = -1, k = -1;
  for (unsigned i = 0; i < a->n && slot < 0; i++)
    if (atomic_load(&a->m[i].state) == RAID_ROLE_FAULTY)
      slot = (int)i;
  for (unsigned i = 0; i < a->nspares && k < 0; i++)
    if (a->spare[i].dev)
      k = (int)i;
  if (slot < 0 || k < 0 || atomic_load(&a->failed) ||
      atomic_load(&a->crashed)) {
    pthread_mutex_unlock(&a->sb_lock);
    return 0;
  }
  if (atomic_load(&a->rebuild_active) || atomic_load(&a->rebuild_caller)) {
    pthread_mutex_unlock(&a->sb_lock);
    return 1;
  }
  struct raid_spare *sp = &a->spare[k];
  char *fmt = strdup(sp->format ? sp->format : vd_format(sp->dev));
  char *path = strdup(sp->path);
  if (!fmt || !path) {
    free(fmt);
    free(path);
    pthread_mutex_unlock(&a->sb_lock);
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  }
  raid_slot_install_locked(a, slot, sp->dev, path, fmt, sp->dev_uuid);
  sp->dev = NULL;
  raid_spare_drop_locked(a, (unsigned)k);
  int r = raid_sb_write_all_locked(a);
  pthread_mutex_unlock(&a->sb_lock);
  if (r < 0)
    return r;
  /* The superblocks say the slot is the spare's: rebuild it even if the
   * descriptor cannot be rewritten (the next open finds the spare in
   * its slot all the same, raid_scan). */
  r = raid_desc_update(a, slot, path, fmt);
  pthread_mutex_lock(&a->notify_lock);
  if (a->notify)
    a->notify(a->notify_opaque, "spare-active", slot, path);
  pthread_mutex_unlock(&a->notify_lock);
  raid_rebuild_start(a);
  return r;
}

static void *raid_spare_main(void *opaque)
{
  struct raid_array *a = opaque;
  pthread_mutex_lock(&a->spare_wlock);
  /* A kick still pending at stop is served first: a member failed just
   * before close (an offline `vdtool raid fail`) still gets its spare,
   * whose rebuild the close then checkpoints. */
  while (!a->spare_stop || a->spare_kick) {
    if (!a->spare_kick) {
      pthread_cond_wait(&a->spare_cond, &a->spare_wlock);
      continue;
    }
    a->spare_kick = false;
    pthread_mutex_unlock(&a->spare_wlock);
    int r = raid_spare_takeover(a);
    if (r < 0)
      fprintf(stderr, "vdisk: %s\n", vd_error());   /* no caller to tell */
    pthread_mutex_lock(&a->spare_wlock);
    if (r == 1 && !a->spare_stop) {
      /* A slot waits for the running rebuild to end: look again soon. */
      struct timespec ts;
      raid_deadline(&ts, 200000000);
      pthread_cond_timedwait(&a->spare_cond, &a->spare_wlock, &ts);
      a->spare_kick = true;
    }
  }
  pthread_mutex_unlock(&a->spare_wlock);
  return NULL;
}

void raid_spares_kick(struct raid_array *a)
{
  if (!a->spare_running)
    return;
  pthread_mutex_lock(&a->spare_wlock);
  a->spare_kick = true;
  pthread_cond_signal(&a->spare_cond);
  pthread_mutex_unlock(&a->spare_wlock);
}

void raid_spares_start(struct raid_array *a)
{
  if (!a->writable || !a->ops->redundant || atomic_load(&a->crashed) ||
      a->spare_running)
    return;
  a->spare_stop = false;
  a->spare_kick = true;   /* assembled degraded with a spare: take over */
  a->spare_running =
    pthread_create(&a->spare_thread, NULL, raid_spare_main, a) == 0;
}

void raid_spares_stop(struct raid_array *a)
{
  if (a->spare_running) {
    pthread_mutex_lock(&a->spare_wlock);
    a->spare_stop = true;
    pthread_cond_signal(&a->spare_cond);
    pthread_mutex_unlock(&a->spare_wlock);
    pthread_join(a->spare_thread, NULL);
    a->spare_running = false;
  }
  for (unsigned i = 0; i < RAID_MAX_SPARES; i++) {
    vd_close(a->spare[i].dev);
    free(a->spare[i].path);
    free(a->spare[i].format);
    memset(&a->spare[i], 0, sizeof a->spare[i]);
  }
  a->nspares = 0;
}

/* Write SB-based spare superblock for device U on ND, metadata area
 * zeroed (bitmap and log start clean when it takes over), flushed. */
static int raid_spare_write_sb(struct raid_array *a, struct vd_dev *nd,
                               const char *path, const uint8_t *u)
{
  size_t len = (size_t)a->sb.data_offset - RAID_SB_OFFSET;
  uint8_t *buf = vd_alloc_aligned(len);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  memset(buf, 0, len);
  struct raid_sb sb;
  pthread_mutex_lock(&a->sb_lock);
  sb = a->sb;
  pthread_mutex_unlock(&a->sb_lock);
  sb.flags = RAID_SB_SPARE;
  sb.slot = RAID_SPARE_SLOT;
  sb.resync_offset = RAID_NO_OFFSET;
  sb.utime = (uint64_t)time(NULL);
  memcpy(sb.spare_self, u, 16);
  raid_sb_encode(&sb, buf);
  int r = vd_pwrite(nd, buf, len, RAID_SB_OFFSET, 0);
  if (r == 0)
    r = vd_flush(nd);
  vd_free_aligned(buf);
  return r;
}

int vd_raid_add(struct raid_array *a, const char *path, const char *fmt)
{
  if (!a->writable)
    return vd_set_error(EROFS, "%s: array is open read-only", a->desc_path);
  if (!a->ops->redundant)
    return vd_set_error(ENOTSUP, "%s: RAID%u has no redundancy: a spare "
                        "could not take over", a->desc_path, a->sb.level);
  if (atomic_load(&a->failed))
    return vd_set_error(EIO, "%s: RAID%u has failed", a->desc_path,
                        a->sb.level);
  if (a->nspares >= RAID_MAX_SPARES)
    return vd_set_error(ENOSPC, "%s: already %u spares (the most)",
                        a->desc_path, RAID_MAX_SPARES);
  struct vd_dev *nd;
  int r = raid_new_device_open(a, -1, path, fmt, &nd);
  if (r < 0)
    return r;
  uint8_t u[16];
  raid_uuid_generate(u);
  char *p = strdup(path), *f = strdup(fmt ? fmt : vd_format(nd));
  if (!p || !f)
    r = vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  if (r == 0)
    r = raid_spare_write_sb(a, nd, path, u);
  if (r < 0) {
    free(p);
    free(f);
    vd_close(nd);
    return r;
  }
  pthread_mutex_lock(&a->sb_lock);
  struct raid_spare *sp = &a->spare[a->nspares++];
  *sp = (struct raid_spare){ .path = p, .format = f, .dev = nd };
  memcpy(sp->dev_uuid, u, 16);
  memcpy(a->sb.spare_uuid[a->sb.nspares++], u, 16);
  r = raid_sb_write_all_locked(a);
  pthread_mutex_unlock(&a->sb_lock);
  if (r == 0)
    r = raid_desc_update(a, -1, NULL, NULL);
  if (r < 0)
    return r;
  /* A degraded array takes the spare at once (mdadm --add does); when
   * another slot is being rebuilt, the takeover thread waits for it. */
  r = raid_spare_takeover(a);
  if (r == 1)
    raid_spares_kick(a);
  return r < 0 ? r : 0;
}

void vd_raid_set_notify(struct raid_array *a,
                        void (*fn)(void *opaque, const char *event, int slot,
                                   const char *path),
                        void *opaque)
{
  pthread_mutex_lock(&a->notify_lock);
  a->notify = fn;
  a->notify_opaque = opaque;
  pthread_mutex_unlock(&a->notify_lock);
}

void raid_spares_status(struct raid_array *a, struct vd_raid_status *st)
{
  pthread_mutex_lock(&a->sb_lock);
  st->nspares = a->nspares;
  for (unsigned i = 0; i < a->nspares; i++) {
    struct vd_raid_spare_status *o = &st->spare[i];
    snprintf(o->path, sizeof o->path, "%s", a->spare[i].path);
    raid_uuid_format(a->spare[i].dev_uuid, o->dev_uuid);
    snprintf(o->why, sizeof o->why, "%s", a->spare[i].why);
  }
  pthread_mutex_unlock(&a->sb_lock);
}

void raid_spares_examine(const char *desc, const struct raid_desc *d,
                         const struct raid_sb *fresh,
                         struct vd_raid_status *st)
{
  struct vd_raid_superblock *x = malloc(sizeof *x);
  st->nspares = d->nspares;
  for (unsigned i = 0; i < d->nspares; i++) {
    struct vd_raid_spare_status *o = &st->spare[i];
    char *path = raid_desc_resolve(desc, d->spare[i]);
    snprintf(o->path, sizeof o->path, "%s", path ? path : d->spare[i]);
    uint8_t u[16] = { 0 };
    if (!x || !path || vd_raid_examine_member(path, x) < 0)
      snprintf(o->why, sizeof o->why, "%s", x && path ? vd_error()
                                                     : "out of memory");
    else if (!x->spare)
      snprintf(o->why, sizeof o->why, "%s: not a spare", path);
    else if (raid_uuid_parse(x->dev_uuid, u) < 0 || !fresh ||
             !raid_spare_listed(fresh, u))
      snprintf(o->why, sizeof o->why, "%s: not in the array's spare table",
               path);
    snprintf(o->dev_uuid, sizeof o->dev_uuid, "%s", x ? x->dev_uuid : "");
    free(path);
  }
  free(x);
  vd_clear_error();
}

int vd_raid_remove_spare(struct raid_array *a, const char *path)
{
  if (!a->writable)
    return vd_set_error(EROFS, "%s: array is open read-only", a->desc_path);
  for (unsigned i = 0; i < a->n; i++)
    if (a->m[i].path && raid_same_file(a->m[i].path, path))
      return vd_set_error(EBUSY, "%s: %s is member %u, not a spare (fail or "
                          "replace it)", a->desc_path, path, i);
  pthread_mutex_lock(&a->sb_lock);
  int k = -1;
  for (unsigned i = 0; i < a->nspares && k < 0; i++)
    if (raid_same_file(a->spare[i].path, path) ||
        strcmp(a->spare[i].path, path) == 0)
      k = (int)i;
  if (k < 0) {
    pthread_mutex_unlock(&a->sb_lock);
    return vd_set_error(ENOENT, "%s: %s is not a spare of the array",
                        a->desc_path, path);
  }
  /* Out of the members' tables first: from then on it is never used,
   * whatever its own superblock says; then the descriptor; then its
   * superblock is wiped (a cut before leaves an unlisted spare). */
  struct vd_dev *dev = a->spare[k].dev;
  a->spare[k].dev = NULL;
  raid_spare_drop_locked(a, (unsigned)k);
  int r = raid_sb_write_all_locked(a);
  pthread_mutex_unlock(&a->sb_lock);
  if (r == 0)
    r = raid_desc_update(a, -1, NULL, NULL);
  if (r == 0 && dev) {
    uint8_t *zero = vd_alloc_aligned(RAID_SB_SIZE);
    if (!zero)
      r = vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
    else {
      memset(zero, 0, RAID_SB_SIZE);
      r = vd_pwrite(dev, zero, RAID_SB_SIZE, RAID_SB_OFFSET, 0);
      if (r == 0)
        r = vd_flush(dev);
      vd_free_aligned(zero);
    }
  }
  if (dev && vd_close(dev) < 0 && r == 0)
    r = -EIO;
  return r;
}
