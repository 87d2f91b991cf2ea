/* vdtool check ARRAY.vdraid: the raid driver's check op (read-only).
 *
 * What is checked, and how each finding is counted with qemu-img check's
 * counters (vdtool check's exit status: 0 clean, 2 corruptions, 3 leaks
 * only, 1 the check could not be completed):
 *  1. Superblocks of the members the descriptor names: each must decode
 *     (magic, checksum, fields), carry the descriptor's array UUID and its
 *     own slot, and agree with the freshest one on the geometry; two at the
 *     highest event count must agree on the role table (else split brain);
 *     a member recorded active whose events are more than one behind is
 *     stale (the array starts without it; one behind is an interrupted
 *     superblock write, accepted).  Each of these is a corruption.
 *  2. Write-intent bitmap: bits set in a cleanly stopped array whose
 *     members are all active, or beyond the last region, only cost an
 *     unneeded resync: leaks.  (While a member is out its bits are kept
 *     for a re-add.)
 *  3. Partial parity log: an entry whose header checksum is right but whose
 *     fields are impossible (stripe out of range, wrong slot or parity
 *     member, bad length or chunk mask) is a corruption.  Torn entries
 *     (checksum wrong) are what an unclean stop leaves and are ignored, as
 *     the replay ignores them.
 *  4. Redundancy: a read-only scrub (rebuild.c's vd_raid_scrub) compares
 *     parity or mirrors with the data.  A mismatch in a region an unclean
 *     stop left dirty (bitmap bit set, or any region with policy resync) is
 *     what the next read-write open resyncs: a leak.  Any other mismatch
 *     is a corruption, named by stripe and array offset as `vdtool raid
 *     scrub` names it.
 * A degraded array (member missing, faulty, stale or rebuilding) cannot be
 * scrubbed: the check says so and counts a check error (exit 1), unless a
 * corruption found above explains it (exit 2).  The array must
 * not be served at the same time (its members are locked): `vdtool raid
 * scrub` asks the serving process instead.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "raid/raid.h"
#include "raid/check.h"

struct chk {
  const char *path;
  struct vd_check_report *r;
  unsigned open_flags;             /* VD_OPEN_NOLOCK for check -U */
  struct raid_desc d;
  struct vd_dev *dev[RAID_MAX_MEMBERS];
  char *mpath[RAID_MAX_MEMBERS];
  bool have_sb[RAID_MAX_MEMBERS];
  struct raid_sb sb[RAID_MAX_MEMBERS];
  int fresh;                       /* slot of the freshest superblock */
  bool degraded;
  char degraded_why[256];
  uint8_t *bm;                     /* union of the members' bitmaps */
  uint64_t nregions;
  uint64_t ppl_entries;            /* valid entries seen */
};

__attribute__((format(printf, 3, 4)))
static void chk_report(struct chk *c, uint64_t *counter, const char *fmt, ...)
{
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  (*counter)++;
  if (c->r->message)
    c->r->message(c->r->opaque, msg);
}

static void chk_degraded(struct chk *c, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));
static void chk_degraded(struct chk *c, const char *fmt, ...)
{
  if (c->degraded)
    return;   /* the first reason is enough */
  c->degraded = true;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->degraded_why, sizeof c->degraded_why, fmt, ap);
  va_end(ap);
}

static const char *chk_name(struct chk *c, unsigned i)
{
  return c->mpath[i] ? c->mpath[i] : "-";
}

/* 1. Read and cross-check every member's superblock. */
static void chk_superblocks(struct chk *c)
{
  struct vd_check_report *r = c->r;
  uint8_t *buf = vd_alloc_aligned(RAID_SB_SIZE);
  if (!buf) {
    chk_report(c, &r->check_errors, "%s: out of memory", c->path);
    return;
  }
  uint8_t uuid[16];
  memcpy(uuid, c->d.uuid, 16);
  for (unsigned i = 0; i < c->d.nmembers; i++) {
    if (!c->d.member[i]) {
      chk_degraded(c, "slot %u has no member in the descriptor", i);
      continue;
    }
    c->mpath[i] = raid_desc_resolve(c->path, c->d.member[i]);
    if (!c->mpath[i]) {
      chk_report(c, &r->check_errors, "%s: out of memory", c->path);
      continue;
    }
    struct vd_open_args oa = { .format = c->d.format[i],
                               .flags = c->open_flags,
                               .timeout_ms = c->d.timeout_ms };
    int e = vd_open_opts(c->mpath[i], &oa, &c->dev[i]);
    if (e == -ENOENT) {
      c->dev[i] = NULL;
      chk_degraded(c, "slot %u (%s) is missing", i, chk_name(c, i));
      continue;
    }
    if (e < 0) {
      c->dev[i] = NULL;
      chk_report(c, &r->check_errors, "member %u: %s", i, vd_error());
      continue;
    }
    e = vd_pread(c->dev[i], buf, RAID_SB_SIZE, RAID_SB_OFFSET);
    if (e < 0) {
      chk_report(c, &r->check_errors, "member %u: reading the superblock: %s",
                 i, vd_error());
      continue;
    }
    if (raid_sb_decode(buf, &c->sb[i], chk_name(c, i)) < 0) {
      chk_report(c, &r->corruptions, "member %u: %s", i, vd_error());
      continue;
    }
    if (memcmp(c->sb[i].uuid, uuid, 16) != 0) {
      char a[37], b[37];
      raid_uuid_format(c->sb[i].uuid, a);
      raid_uuid_format(uuid, b);
      chk_report(c, &r->corruptions, "member %u: %s belongs to array %s, "
                 "the descriptor names array %s", i, chk_name(c, i), a, b);
      continue;
    }
    if (c->sb[i].slot != i || c->sb[i].nmembers != c->d.nmembers) {
      chk_report(c, &r->corruptions, "member %u: %s: superblock says slot %u "
                 "of %u, descriptor says %u of %u", i, chk_name(c, i),
                 c->sb[i].slot, c->sb[i].nmembers, i, c->d.nmembers);
      continue;
    }
    c->have_sb[i] = true;
    if (c->fresh < 0 || c->sb[i].events > c->sb[c->fresh].events)
      c->fresh = (int)i;
  }
  vd_free_aligned(buf);
  if (c->fresh < 0)
    return;
  const struct raid_sb *f = &c->sb[c->fresh];
  for (unsigned i = 0; i < c->d.nmembers; i++) {
    if (!c->have_sb[i])
      continue;
    const struct raid_sb *m = &c->sb[i];
    const char *field =
      m->level != f->level ? "level" : m->layout != f->layout ? "layout"
      : m->chunk != f->chunk ? "chunk size"
      : m->array_size != f->array_size ? "array size"
      : m->data_offset != f->data_offset ? "data offset"
      : m->data_size != f->data_size ? "data size"
      : m->policy != f->policy ? "consistency policy"
      : m->bitmap_offset != f->bitmap_offset ||
        m->bitmap_region != f->bitmap_region ||
        m->bitmap_bytes != f->bitmap_bytes ? "bitmap geometry"
      : m->ppl_offset != f->ppl_offset || m->ppl_slots != f->ppl_slots ||
        m->ppl_slot_size != f->ppl_slot_size ? "partial parity log geometry"
      : NULL;
    if (field) {
      chk_report(c, &c->r->corruptions, "member %u: %s: %s differs from "
                 "member %d's", i, chk_name(c, i), field, c->fresh);
      c->have_sb[i] = false;
      continue;
    }
    if (m->events == f->events && (int)i != c->fresh)
      for (unsigned j = 0; j < c->d.nmembers; j++)
        if (m->role[j].state != f->role[j].state ||
            memcmp(m->role[j].dev_uuid, f->role[j].dev_uuid, 16)) {
          chk_report(c, &c->r->corruptions, "members %u and %d both have "
                     "events %" PRIu64 " but disagree about slot %u (split "
                     "brain)", i, c->fresh, f->events, j);
          break;
        }
    if (memcmp(f->role[i].dev_uuid, m->role[i].dev_uuid, 16) != 0) {
      chk_degraded(c, "slot %u (%s) holds a replaced device", i,
                   chk_name(c, i));
      c->have_sb[i] = false;
    } else if (f->role[i].state == RAID_ROLE_FAULTY) {
      chk_degraded(c, "slot %u (%s) is recorded as faulty", i,
                   chk_name(c, i));
      c->have_sb[i] = false;
    } else if (m->events + 1 < f->events) {
      /* One behind: an interrupted superblock write, accepted (raid.c). */
      chk_report(c, &c->r->corruptions, "member %u: %s: stale superblock "
                 "(events %" PRIu64 ", member %d has %" PRIu64 ") although "
                 "recorded active: the array starts without it", i,
                 chk_name(c, i), m->events, c->fresh, f->events);
      c->have_sb[i] = false;
    } else if (f->role[i].state == RAID_ROLE_REBUILDING) {
      chk_degraded(c, "slot %u (%s) is being rebuilt", i, chk_name(c, i));
    }
  }
  for (unsigned i = 0; i < c->d.nmembers; i++)
    if (!c->have_sb[i])
      chk_degraded(c, "slot %u (%s) is not usable", i, chk_name(c, i));
}

/* 2. The write-intent bitmap (union over the members, as assembly). */
static void chk_bitmap(struct chk *c)
{
  const struct raid_sb *f = &c->sb[c->fresh];
  if (f->policy == RAID_POLICY_RESYNC || !f->bitmap_offset ||
      !f->bitmap_bytes || !f->bitmap_region)
    return;
  c->nregions = (f->data_size + f->bitmap_region - 1) / f->bitmap_region;
  c->bm = vd_alloc_aligned(f->bitmap_bytes);
  uint8_t *tmp = vd_alloc_aligned(f->bitmap_bytes);
  if (!c->bm || !tmp) {
    chk_report(c, &c->r->check_errors, "%s: out of memory", c->path);
    vd_free_aligned(tmp);
    return;
  }
  memset(c->bm, 0, f->bitmap_bytes);
  for (unsigned i = 0; i < c->d.nmembers; i++) {
    if (!c->have_sb[i])
      continue;
    if (vd_pread(c->dev[i], tmp, f->bitmap_bytes, f->bitmap_offset) < 0) {
      chk_report(c, &c->r->check_errors, "member %u: reading the bitmap: %s",
                 i, vd_error());
      continue;
    }
    for (uint32_t b = 0; b < f->bitmap_bytes; b++)
      c->bm[b] |= tmp[b];
  }
  vd_free_aligned(tmp);
  bool dirty = (f->flags & RAID_SB_DIRTY) != 0;
  uint64_t set = 0, beyond = 0;
  for (uint64_t b = 0; b < (uint64_t)f->bitmap_bytes * 8; b++)
    if (c->bm[b / 8] & (1u << (b % 8))) {
      if (b >= c->nregions)
        beyond++;
      else
        set++;
    }
  if (beyond)
    chk_report(c, &c->r->leaks, "bitmap: %" PRIu64 " bits set beyond the "
               "last of %" PRIu64 " regions", beyond, c->nregions);
  /* A degraded array keeps its bits while a member is out: they are what
   * a re-add copies (docs/remote.md), not leaks. */
  bool complete = true;
  for (unsigned i = 0; i < f->nmembers; i++)
    if (f->role[i].state != RAID_ROLE_ACTIVE)
      complete = false;
  if (set && !dirty && complete)
    chk_report(c, &c->r->leaks, "bitmap: %" PRIu64 " regions marked dirty "
               "although the array was stopped cleanly (an unneeded resync "
               "after the next unclean stop)", set);
}

static bool chk_region_dirty(struct chk *c, uint64_t moff)
{
  const struct raid_sb *f = &c->sb[c->fresh];
  if (!(f->flags & RAID_SB_DIRTY))
    return false;
  if (!c->bm)
    return true;   /* policy resync: the whole array is resynced */
  uint64_t reg = moff / f->bitmap_region;
  return reg < c->nregions && (c->bm[reg / 8] & (1u << (reg % 8)));
}

/* 3. The partial parity log slots on every usable member. */
static void chk_ppl(struct chk *c)
{
  const struct raid_sb *f = &c->sb[c->fresh];
  if (f->policy != RAID_POLICY_PPL)   /* only levels with a parity log */
    return;
  unsigned n = c->d.nmembers;
  uint64_t chunk = f->chunk, nstripes = f->data_size / chunk;
  uint8_t *hdr = vd_alloc_aligned(RAID_PPL_HDR);
  uint8_t *pp = vd_alloc_aligned(chunk);
  if (!hdr || !pp) {
    chk_report(c, &c->r->check_errors, "%s: out of memory", c->path);
    goto out;
  }
  static const char magic[8] = { 'V', 'D', 'R', 'A', 'I', 'D', 'P', 'L' };
  for (unsigned p = 0; p < n; p++) {
    if (!c->have_sb[p])
      continue;
    for (uint32_t j = 0; j < f->ppl_slots; j++) {
      uint64_t soff = f->ppl_offset + (uint64_t)j * f->ppl_slot_size;
      if (vd_pread(c->dev[p], hdr, RAID_PPL_HDR, soff) < 0) {
        chk_report(c, &c->r->check_errors, "member %u: reading partial "
                   "parity log slot %u: %s", p, j, vd_error());
        continue;
      }
      if (memcmp(hdr, magic, 8) != 0 || memcmp(hdr + 8, f->uuid, 16) != 0 ||
          vd_crc32c(0, hdr, 4092) != vd_get_le32(hdr + 4092))
        continue;   /* empty, or torn by an unclean stop */
      uint64_t s = vd_get_le64(hdr + 24);
      uint32_t r0 = vd_get_le32(hdr + 32), len = vd_get_le32(hdr + 36);
      uint32_t mask = vd_get_le32(hdr + 40), pm = vd_get_le32(hdr + 44);
      const char *bad =
        s >= nstripes ? "stripe beyond the array"
        : s % f->ppl_slots != j ? "stripe in the wrong slot"
        : raid5_parity_member(n, s) != p || pm != p
          ? "not on the stripe's parity member"
        : len == 0 || r0 >= chunk || len > chunk - r0 ? "rows outside the chunk"
        : mask == 0 || (mask >> (n - 1)) != 0 ? "impossible chunk mask"
        : NULL;
      if (bad) {
        chk_report(c, &c->r->corruptions, "member %u: partial parity log "
                   "slot %u (stripe %" PRIu64 "): %s", p, j, s, bad);
        continue;
      }
      if (vd_pread(c->dev[p], pp, len, soff + RAID_PPL_HDR) < 0) {
        chk_report(c, &c->r->check_errors, "member %u: reading partial "
                   "parity log slot %u: %s", p, j, vd_error());
        continue;
      }
      if (vd_crc32c(0, pp, len) == vd_get_le32(hdr + 56))
        c->ppl_entries++;
    }
  }
out:
  vd_free_aligned(hdr);
  vd_free_aligned(pp);
}

/* 4. Read-only scrub through the assembled array. */
static void chk_mismatch(void *opaque, uint64_t stripe, uint64_t off)
{
  struct chk *c = opaque;
  const struct raid_sb *f = &c->sb[c->fresh];
  const char *what = raid_level_find(f->level)->mismatch_what;
  /* The scrub reports rows: stripe is the row's member offset / chunk. */
  if (chk_region_dirty(c, stripe * f->chunk))
    chk_report(c, &c->r->leaks, "stripe %" PRIu64 " (array offset %" PRIu64
               "): %s after an unclean stop (the next read-write open "
               "resyncs it)", stripe, off, what);
  else
    chk_report(c, &c->r->corruptions, "stripe %" PRIu64 " (array offset %"
               PRIu64 "): %s", stripe, off, what);
}

static void chk_redundancy(struct chk *c)
{
  const struct raid_sb *f = &c->sb[c->fresh];
  if (!raid_level_find(f->level)->redundant)
    return;
  if (c->degraded) {
    /* Not verified, so the check is incomplete, unless a corruption
     * already found (a bad superblock) is why: exit 2 says more. */
    uint64_t ignored = 0;
    chk_report(c, c->r->corruptions ? &ignored : &c->r->check_errors,
               "%s: array is degraded (%s): parity and mirrors cannot be "
               "verified", c->path, c->degraded_why);
    return;
  }
  struct vd_dev *dev;
  int e = vd_open(c->path, "raid", c->open_flags, &dev);
  if (e < 0) {
    chk_report(c, &c->r->check_errors, "%s", vd_error());
    return;
  }
  struct vd_raid_scrub_report rep = { .mismatch = chk_mismatch, .opaque = c };
  e = vd_raid_scrub(vd_raid_of(dev), false, &rep, NULL, NULL);
  if (e < 0)
    chk_report(c, &c->r->check_errors, "%s", vd_error());
  vd_close(dev);
}

int raid_check(const char *path, unsigned flags, struct vd_check_report *r)
{
  if (flags & VD_CHECK_FIX_ALL)
    return vd_set_error(ENOTSUP, "%s: RAID arrays are repaired by 'vdtool "
                        "raid scrub --repair' (parity, mirrors) or by opening "
                        "them read-write (resync after an unclean stop), not "
                        "by check -r", path);
  struct chk *c = calloc(1, sizeof *c);
  if (!c)
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  c->path = path;
  c->r = r;
  c->fresh = -1;
  c->open_flags = flags & VD_CHECK_NOLOCK ? VD_OPEN_NOLOCK : 0;
  int e = raid_desc_read(path, &c->d);
  if (e < 0) {
    free(c);
    return e;
  }
  int pid = vd_raid_served_by(path);
  if (pid > 0) {
    /* Its members are locked and changing under us. */
    chk_report(c, &r->check_errors, "%s: served by process %d: check it "
               "online with 'vdtool raid scrub', or stop it first", path, pid);
    raid_desc_free(&c->d);
    free(c);
    return 0;
  }
  chk_superblocks(c);
  if (c->fresh < 0) {
    chk_report(c, r->check_errors ? &r->check_errors : &r->corruptions,
               "%s: no member has a valid superblock of this array", path);
  } else {
    chk_bitmap(c);
    chk_ppl(c);
  }
  /* The scrub opens the array: release our handles (and their locks). */
  for (unsigned i = 0; i < RAID_MAX_MEMBERS; i++) {
    vd_close(c->dev[i]);
    c->dev[i] = NULL;
  }
  if (c->fresh >= 0 && r->check_errors == 0)
    chk_redundancy(c);
  else if (c->fresh >= 0)
    chk_report(c, &r->check_errors, "%s: parity and mirrors not verified "
               "(see above)", path);
  for (unsigned i = 0; i < RAID_MAX_MEMBERS; i++)
    free(c->mpath[i]);
  vd_free_aligned(c->bm);
  raid_desc_free(&c->d);
  free(c);
  return 0;
}
