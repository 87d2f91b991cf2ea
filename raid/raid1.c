/* RAID1: mirroring over n >= 2 members.
 *
 * Reads go to one member: the one whose last read ended where this one
 * starts (a sequential stream stays on its member), else the least busy.
 * Writes go to every member in parallel, one chunk-sized region at a time
 * under that region's lock, so concurrent overlapping writes land in the
 * same order on every mirror and a rebuild never races a write.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "raid/raid.h"

/* A member to read from, or -1.  Write-mostly members (a mirror over a
 * slow link) are read only when no other member can serve the range. */
static int raid1_pick(struct raid_array *a, uint64_t off, size_t len,
                      const bool *tried)
{
  int best = -1, slow = -1;
  unsigned best_load = ~0u;
  unsigned start = (unsigned)(atomic_fetch_add(&a->rr, 1) % a->n);
  for (unsigned k = 0; k < a->n; k++) {
    unsigned i = (start + k) % a->n;
    if (tried[i] || !raid_member_usable(a, (int)i, off) ||
        !raid_member_usable(a, (int)i, off + len - 1))
      continue;
    if (a->m[i].write_mostly) {
      if (slow < 0)
        slow = (int)i;
      continue;
    }
    if (atomic_load(&a->m[i].next_read) == off)
      return (int)i;
    unsigned load = atomic_load(&a->m[i].inflight);
    if (load < best_load) {
      best_load = load;
      best = (int)i;
    }
  }
  if (best < 0 && slow >= 0)
    raid_wb_drain(a);   /* it must hold every acknowledged write first */
  return best >= 0 ? best : slow;
}

/* The member a resync or rebuild copies from: an active one, not
 * write-mostly if there is one (with write-behind, a write-mostly member
 * may lack writes the others acknowledged), other than SKIP; or -1. */
static int raid1_source(struct raid_array *a, int skip)
{
  int slow = -1;
  for (unsigned i = 0; i < a->n; i++) {
    if ((int)i == skip || atomic_load(&a->m[i].state) != RAID_ROLE_ACTIVE ||
        !a->m[i].dev)
      continue;
    if (!a->m[i].write_mostly)
      return (int)i;
    if (slow < 0)
      slow = (int)i;
  }
  return slow;
}

/* A member could not read [off, off+len): rewrite it from the good copy
 * in BUF and check it reads back; fail it if not, or after too many. */
static void raid1_fix(struct raid_array *a, int bad, const void *buf,
                      size_t len, uint64_t off)
{
  uint64_t c = a->sb.chunk;
  int e = 0;
  uint8_t *chk = raid_scratch(0, len);
  if (!chk)
    e = -ENOMEM;
  /* Region by region, under each region's lock, so a concurrent write
   * cannot be undone by the stale copy. */
  for (uint64_t o = off; o < off + len && e == 0;) {
    size_t n = (size_t)(off + len - o < c - o % c ? off + len - o
                                                  : c - o % c);
    raid_stripe_lock(a, o / c);
    e = raid_mio_one(a, bad, RAID_MIO_WRITE,
                     (void *)((const uint8_t *)buf + (o - off)), n, o);
    if (e == 0)
      e = raid_mio_one(a, bad, RAID_MIO_READ, chk, n, o);
    if (e == 0 && memcmp(chk, (const uint8_t *)buf + (o - off), n) != 0)
      e = -EIO;
    raid_stripe_unlock(a, o / c);
    o += n;
  }
  if (e < 0 || atomic_fetch_add(&a->m[bad].read_errors, 1) + 1 > 16)
    raid_member_failed(a, bad, e < 0 ? e : -EIO);
}

static int raid1_read(struct raid_array *a, void *buf, size_t len,
                      uint64_t off)
{
  bool tried[RAID_MAX_MEMBERS] = { false };
  int bad[RAID_MAX_MEMBERS], nbad = 0;
  for (;;) {
    int s = raid1_pick(a, off, len, tried);
    if (s < 0) {
      /* Nobody could read it: the members that tried have failed. */
      for (int i = 0; i < nbad; i++)
        raid_member_failed(a, bad[i], -EIO);
      return vd_set_error(EIO, "%s: RAID1 has no usable member for %zu bytes "
                          "at %llu", a->desc_path, len,
                          (unsigned long long)off);
    }
    tried[s] = true;
    atomic_fetch_add(&a->m[s].inflight, 1);
    int r = raid_mio_one(a, s, RAID_MIO_READ, buf, len, off);
    atomic_fetch_sub(&a->m[s].inflight, 1);
    if (r == 0) {
      atomic_store(&a->m[s].next_read, off + len);
      for (int i = 0; i < nbad; i++)
        raid1_fix(a, bad[i], buf, len, off);
      return 0;
    }
    bad[nbad++] = s;
  }
}

/* Write one piece inside a single region (region lock held). */
static int raid1_write_locked(struct raid_array *a, const void *buf,
                              size_t len, uint64_t off)
{
  VD_ASSERT_HELD(raid_stripe_mutex(a, off / a->sb.chunk));
  struct raid_mio mio[RAID_MAX_MEMBERS];
  int k = 0, behind[RAID_MAX_MEMBERS], nb = 0;
  bool fast = false;
  for (unsigned i = 0; i < a->n; i++)
    fast |= raid_member_writable(a, (int)i, off) && !a->m[i].write_mostly;
  for (unsigned i = 0; i < a->n; i++) {
    if (!raid_member_writable(a, (int)i, off))
      continue;
    /* Write-behind: the write-mostly members get a queued copy, as long
     * as another member takes the write now. */
    if (a->wb && fast && a->m[i].write_mostly) {
      behind[nb++] = (int)i;
      continue;
    }
    mio[k++] = (struct raid_mio){ .slot = (int)i, .op = RAID_MIO_WRITE,
                                  .buf = (void *)buf, .len = len,
                                  .off = off };
  }
  if (k == 0)
    return vd_set_error(EIO, "%s: RAID1 has no usable member", a->desc_path);
  raid_mio_run(a, mio, k);
  int ok = 0;
  for (int j = 0; j < k; j++) {
    if (mio[j].ret == 0)
      ok++;
    else if (raid_member_failed(a, mio[j].slot, mio[j].ret) < 0)
      return vd_set_error(EIO, "%s: RAID1 has failed", a->desc_path);
  }
  /* A member that failed is now recorded as faulty in the survivors'
   * superblocks; the write is complete on the others.  If every member
   * written now failed, the write-mostly ones take it at once instead,
   * after what is queued for them (order). */
  if (!ok && nb) {
    raid_wb_drain(a);
    for (int j = 0; j < nb; j++)
      mio[j] = (struct raid_mio){ .slot = behind[j], .op = RAID_MIO_WRITE,
                                  .buf = (void *)buf, .len = len,
                                  .off = off };
    raid_mio_run(a, mio, nb);
    for (int j = 0; j < nb; j++) {
      if (mio[j].ret == 0)
        ok++;
      else if (raid_member_failed(a, mio[j].slot, mio[j].ret) < 0)
        return vd_set_error(EIO, "%s: RAID1 has failed", a->desc_path);
    }
    nb = 0;
  }
  if (!ok)
    return vd_set_error(EIO, "%s: RAID1 write failed on every member",
                        a->desc_path);
  for (int j = 0; j < nb; j++) {
    int r = raid_wb_queue(a, behind[j], buf, len, off);
    if (r < 0 && raid_member_failed(a, behind[j], r) < 0)
      return vd_set_error(EIO, "%s: RAID1 has failed", a->desc_path);
  }
  return 0;
}

static int raid1_write(struct raid_array *a, const void *buf, size_t len,
                       uint64_t off, unsigned flags)
{
  int r = raid_bitmap_start(a, off, len);
  if (r < 0)
    return r;
  const uint8_t *p = buf;
  uint64_t c = a->sb.chunk, o = off;
  size_t left = len;
  while (left > 0 && r == 0) {
    size_t n = left < c - o % c ? left : (size_t)(c - o % c);
    raid_stripe_lock(a, o / c);
    r = raid1_write_locked(a, p, n, o);
    raid_stripe_unlock(a, o / c);
    p += n;
    o += n;
    left -= n;
  }
  raid_bitmap_end(a, off, len);
  return r;
}

/* Make the mirrors of [OFF, OFF+LEN) equal to the first active member (or,
 * with CHECK_ONLY, compare them), region by region under the region's lock;
 * *MISMATCH says whether any differed. */
static int raid1_sync_region(struct raid_array *a, uint64_t off, uint64_t len,
                             bool check_only, bool *mismatch)
{
  uint64_t c = a->sb.chunk;
  uint8_t *ref = vd_alloc_aligned(c), *other = vd_alloc_aligned(c);
  int r = 0;
  *mismatch = false;
  if (!ref || !other) {
    r = vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
    goto out;
  }
  for (uint64_t o = off; o < off + len && r == 0; o += c) {
    size_t n = (size_t)(off + len - o < c ? off + len - o : c);
    raid_stripe_lock(a, o / c);
    /* Under the row's lock, once what was queued for the write-mostly
     * members before it is written: compare what was acknowledged. */
    raid_wb_drain(a);
    int src = raid1_source(a, -1);
    if (src < 0) {
      raid_stripe_unlock(a, o / c);
      r = vd_set_error(EIO, "%s: RAID1 has no active member", a->desc_path);
      break;
    }
    r = raid_mio_one(a, src, RAID_MIO_READ, ref, n, o);
    if (r < 0) {
      raid_stripe_unlock(a, o / c);
      if (raid_member_failed(a, src, r) < 0)
        break;
      o -= c;   /* retry this region from another member */
      r = 0;
      continue;
    }
    for (unsigned i = 0; i < a->n && r == 0; i++) {
      if ((int)i == src || !raid_member_usable(a, (int)i, o))
        continue;
      int e = raid_mio_one(a, (int)i, RAID_MIO_READ, other, n, o);
      if (e == 0 && memcmp(ref, other, n) == 0)
        continue;
      *mismatch = true;
      if (e == 0 && check_only)
        continue;
      if (e == 0)
        e = raid_mio_one(a, (int)i, RAID_MIO_WRITE, ref, n, o);
      if (e < 0)
        r = raid_member_failed(a, (int)i, e);
    }
    raid_stripe_unlock(a, o / c);
  }
out:
  vd_free_aligned(ref);
  vd_free_aligned(other);
  return r;
}

static int raid1_sync_row(struct raid_array *a, uint64_t moff, bool check_only,
                          bool *mismatch)
{
  return raid1_sync_region(a, moff, a->sb.chunk, check_only, mismatch);
}

/* Copy the chunk at MOFF to SLOT from an active member that reads it (not
 * write-mostly if another can, raid1_source); a source that fails is
 * recorded and the next one tried. */
static int raid1_rebuild_rows_locked(struct raid_array *a, uint64_t moff,
                                     size_t len, int slot, void *scratch)
{
  VD_ASSERT_HELD(raid_stripe_mutex(a, moff / a->sb.chunk));
  int r = -EIO;
  raid_wb_drain(a);
  for (int i; (i = raid1_source(a, slot)) >= 0;) {
    r = raid_mio_one(a, i, RAID_MIO_READ, scratch, len, moff);
    if (r < 0) {
      /* Recorded as faulty: the next call picks another source. */
      if (raid_member_failed(a, i, r) < 0)
        break;
      r = -EIO;
      continue;
    }
    r = raid_mio_one(a, slot, RAID_MIO_WRITE, scratch, len, moff);
    if (r < 0)
      r = vd_set_error(-r, "%s: rebuild: writing %s: %s", a->desc_path,
                       a->m[slot].path, vd_error());
    break;
  }
  return r;
}

/* The rows pass through one buffer. */
static size_t raid1_rebuild_scratch(const struct raid_array *a, size_t len)
{
  (void)a;
  return len;
}

static uint64_t raid1_capacity(unsigned n, uint64_t data_size)
{
  return data_size;
}

static uint64_t raid1_row_bytes(unsigned n, uint32_t chunk)
{
  return chunk;
}

/* Any one mirror holds everything. */
static unsigned raid1_members_needed(unsigned n)
{
  return 1;
}

const struct raid_level_ops raid1_ops = {
  .level = RAID_LEVEL1,
  .min_members = 2,
  .redundant = true,
  .default_policy = RAID_POLICY_BITMAP,
  .layout_name = "-",
  .mismatch_what = "mirrors differ",
  .capacity = raid1_capacity,
  .row_bytes = raid1_row_bytes,
  .members_needed = raid1_members_needed,
  .read = raid1_read,
  .write = raid1_write,
  .sync_row = raid1_sync_row,
  .rebuild_rows_locked = raid1_rebuild_rows_locked,
  .rebuild_scratch = raid1_rebuild_scratch,
};
