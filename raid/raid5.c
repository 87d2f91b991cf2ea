/* RAID5: distributed parity, md's left-symmetric layout.
 *
 * With n members and chunk size C, stripe s holds n-1 data chunks and one
 * parity chunk at member offset s*C.  Parity member p = (n-1) - (s mod n);
 * data chunk d of the stripe is on member (p + 1 + d) mod n, so array data
 * continues on the member after the parity ("rotating parity with data
 * continuation").
 *
 * Writes take the stripe's lock, split the stripe's part of the request into
 * row segments where the set of modified chunks is constant, and for each:
 *  - full stripe: parity from the new data, no reads;
 *  - otherwise read-modify-write (read old data and old parity) or
 *    reconstruct-write (read the untouched chunks), whichever reads fewer
 *    chunks; degraded arrays take the one that does not need the missing
 *    member.
 * A member error marks it faulty (survivors' superblocks first) and the
 * segment is planned again without it, so the write completes degraded.
 *
 * Write hole: with the "ppl" policy, a partial-stripe write first logs the
 * partial parity (XOR of the chunks it does not modify, over the rows it
 * touches) to a slot on the stripe's parity member, flushed, before the
 * in-place writes.  After an unclean stop with a member missing, each valid
 * log entry gives the parity of the rows it covers as PP ^ (modified chunks
 * as they are on disk), which makes the untouched chunks reconstructible
 * whatever subset of the in-place writes reached the disk.  The protocol
 * (docs/raid-format.md has the reasoning):
 *  - one slot per stripe (stripe mod slots on its parity member), so a
 *    stripe's newer entry replaces its older one;
 *  - an entry is overwritten or invalidated only once the writes it
 *    protects are durable: if no member flush completed since they did,
 *    every member is flushed first (ppl_slot_busy / ppl_flush_all);
 *  - full-row and full-stripe segments log nothing (every chunk of their
 *    rows is in flight, none needs reconstructing) but invalidate the
 *    stripe's earlier entry, which would be stale once they are durable,
 *    under the same rule; the invalidation rides on the next flush;
 *  - every slot is cleared at each read-write open once consistent.
 * Not protected, as in md: a chunk in flight on the member that is lost
 * in the same crash may read back as anything.
 *
 * PPL slot header (4096 bytes, little-endian), followed by the partial
 * parity (length bytes):
 *   0 8 magic "VDRAIDPL"   8 16 array UUID   24 8 stripe   32 4 row offset
 *  36 4 length   40 4 modified data chunks (bit d)   44 4 parity member
 *  48 8 sequence   56 4 CRC-32C of the partial parity
 *  4092 4 CRC-32C of bytes 0..4091
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "raid/raid.h"

static const char ppl_magic[8] = { 'V', 'D', 'R', 'A', 'I', 'D', 'P', 'L' };

unsigned raid5_parity_member(unsigned n, uint64_t stripe)
{
  return (n - 1) - (unsigned)(stripe % n);
}

unsigned raid5_data_member(unsigned n, uint64_t stripe, unsigned d)
{
  return (raid5_parity_member(n, stripe) + 1 + d) % n;
}

void raid5_map(unsigned n, uint32_t chunk, uint64_t off, struct raid5_map *m)
{
  uint64_t sb = (uint64_t)chunk * (n - 1);
  uint64_t rem = off % sb;
  m->stripe = off / sb;
  m->dchunk = (unsigned)(rem / chunk);
  m->parity = raid5_parity_member(n, m->stripe);
  m->member = raid5_data_member(n, m->stripe, m->dchunk);
  m->moff = m->stripe * chunk + rem % chunk;
}

/* ---- reads ---- */

static int raid5_ppl_apply_ro(struct raid_array *a, uint64_t s, unsigned d,
                              uint64_t o, size_t len, uint8_t *bufs,
                              unsigned t);

/* Reconstruct LEN bytes at row O of data chunk D of stripe S into OUT from
 * the other members (stripe lock taken here).  With FIX, the member had a
 * read error there: reconstruct even though it looks usable, write the
 * result back and read it again (md's read-error handling); a member that
 * fails that, or has too many read errors, is failed. */
#define RAID_MAX_READ_ERRORS 16
static int raid5_read_degraded(struct raid_array *a, uint64_t s, unsigned d,
                               uint64_t o, size_t len, void *out, bool fix)
{
  unsigned n = a->n;
  unsigned t = raid5_data_member(n, s, d);
  uint64_t moff = s * a->sb.chunk + o;
  uint8_t *bufs = raid_scratch(0, (size_t)(n - 1) * len);
  if (!bufs)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  int r;
  raid_stripe_lock(a, s);
  for (;;) {
    struct raid_mio mio[RAID_MAX_MEMBERS];
    const void *src[RAID_MAX_MEMBERS];
    int k = 0;
    bool direct = !fix && raid_member_usable(a, (int)t, moff);
    if (direct) {
      /* It came back (rebuild passed this stripe): read it. */
      r = raid_mio_one(a, (int)t, RAID_MIO_READ, out, len, moff);
      if (r == 0 || raid_member_failed(a, (int)t, r) < 0)
        break;
      continue;
    }
    r = 0;
    for (unsigned i = 0; i < n; i++) {
      if (i == t)
        continue;
      if (!raid_member_usable(a, (int)i, moff)) {
        r = vd_set_error(EIO, "%s: RAID5 stripe %llu: members %u and %u are "
                         "both unavailable", a->desc_path,
                         (unsigned long long)s, t, i);
        break;
      }
      src[k] = bufs + (size_t)k * len;
      mio[k] = (struct raid_mio){ .slot = (int)i, .op = RAID_MIO_READ,
                                  .buf = bufs + (size_t)k * len, .len = len,
                                  .off = moff };
      k++;
    }
    if (r < 0)
      break;
    raid_mio_run(a, mio, k);
    bool retry = false;
    for (int j = 0; j < k; j++)
      if (mio[j].ret < 0) {
        if (raid_member_failed(a, mio[j].slot, mio[j].ret) < 0) {
          r = -EIO;
          break;
        }
        retry = true;
      }
    if (r < 0 || retry) {
      if (r == 0)
        continue;
      r = vd_set_error(EIO, "%s: RAID5 has failed", a->desc_path);
      break;
    }
    if (a->ppl_ro) {
      r = raid5_ppl_apply_ro(a, s, d, o, len, bufs, t);
      if (r < 0)
        break;
    }
    raid_xor(out, src, (unsigned)k, len);
    if (fix && raid_member_usable(a, (int)t, moff)) {
      /* Rewrite the unreadable block and check it reads back. */
      uint8_t *chk = bufs;   /* the sources are no longer needed */
      int e = raid_mio_one(a, (int)t, RAID_MIO_WRITE, out, len, moff);
      if (e == 0)
        e = raid_mio_one(a, (int)t, RAID_MIO_READ, chk, len, moff);
      if (e == 0 && memcmp(chk, out, len) != 0)
        e = -EIO;
      if (e < 0 || atomic_fetch_add(&a->m[t].read_errors, 1) + 1 >
                   RAID_MAX_READ_ERRORS) {
        if (raid_member_failed(a, (int)t, e < 0 ? e : -EIO) < 0)
          r = vd_set_error(EIO, "%s: RAID5 has failed", a->desc_path);
      }
    }
    break;
  }
  raid_stripe_unlock(a, s);
  return r;
}

/* A piece of a read: one data chunk's rows of one stripe. */
struct raid5_piece {
  struct raid_mio io;          /* slot -1: on a missing member */
  uint64_t stripe;
  unsigned d;                  /* data chunk */
};

/* Serve the pieces P[0..K) of a read that fall in stripe S, one of them
 * (P[L]) on a missing member, in one parallel batch under the stripe lock:
 * the other pieces straight into the caller's buffer and, of the rows of
 * P[L] on the survivors, only those no piece holds (the parity, partly
 * read chunks) into scratch, so each member is read once, as when
 * healthy.  Returns 1, having changed nothing but the caller's buffer,
 * when the stripe needs the piece-by-piece path (a member changed state,
 * a read failed, or a read-only open applies the log). */
static int raid5_read_stripe_degraded(struct raid_array *a, uint64_t s,
                                      struct raid5_piece *p, int k, int l)
{
  unsigned n = a->n;
  unsigned t = raid5_data_member(n, s, p[l].d);
  uint64_t moff = p[l].io.off;
  size_t len = p[l].io.len;
  if (a->ppl_ro)
    return 1;
  uint8_t *bufs = raid_scratch(0, (size_t)(n - 1) * len);
  if (!bufs)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  struct raid_mio mio[2 * RAID_MAX_MEMBERS];
  const void *src[RAID_MAX_MEMBERS];
  int nio = 0, r = 0;
  unsigned nsrc = 0;
  raid_stripe_lock(a, s);
  if (raid_member_usable(a, (int)t, moff))
    r = 1;                        /* it came back: read it directly */
  for (unsigned i = 0; i < n && r == 0; i++) {
    if (i == t)
      continue;
    if (!raid_member_usable(a, (int)i, moff)) {
      r = 1;                      /* two missing: the slow path says so */
      break;
    }
    const struct raid_mio *have = NULL;
    for (int j = 0; j < k; j++)
      if (j != l && p[j].io.slot == (int)i) {
        mio[nio++] = p[j].io;
        if (p[j].io.off <= moff && p[j].io.off + p[j].io.len >= moff + len)
          have = &p[j].io;
      }
    if (have) {
      src[nsrc++] = (const uint8_t *)have->buf + (moff - have->off);
    } else {
      uint8_t *b = bufs + (size_t)nsrc * len;
      src[nsrc++] = b;
      mio[nio++] = (struct raid_mio){ .slot = (int)i, .op = RAID_MIO_READ,
                                      .buf = b, .len = len, .off = moff };
    }
  }
  if (r == 0 && raid_mio_run(a, mio, nio) < 0)
    r = 1;
  if (r == 0)
    raid_xor(p[l].io.buf, src, nsrc, len);
  raid_stripe_unlock(a, s);
  return r;
}

/* Serve the pieces P[0..K) of stripe S one by one: healthy ones from their
 * member (a read error reconstructs and rewrites), the others
 * reconstructed. */
static int raid5_read_pieces(struct raid_array *a, uint64_t s,
                             struct raid5_piece *p, int k)
{
  int r = 0;
  for (int i = 0; i < k && r == 0; i++) {
    struct raid_mio *io = &p[i].io;
    bool fix = false;
    if (io->slot >= 0) {
      raid_mio_run(a, io, 1);
      if (io->ret == 0)
        continue;
      fix = true;
    }
    r = raid5_read_degraded(a, s, p[i].d, io->off - s * a->sb.chunk, io->len,
                            io->buf, fix);
  }
  return r;
}

static int raid5_read(struct raid_array *a, void *buf, size_t len,
                      uint64_t off)
{
  uint64_t c = a->sb.chunk;
  size_t nmax = (size_t)((off % c + len + c - 1) / c);
  struct raid5_piece stackp[16];
  struct raid_mio stackmio[16];
  struct raid5_piece *p = nmax <= 16 ? stackp : calloc(nmax, sizeof *p);
  struct raid_mio *hm = nmax <= 16 ? stackmio : calloc(nmax, sizeof *hm);
  int k = 0, h = 0, r = 0;
  if (!p || !hm) {
    r = vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
    goto out;
  }
  uint8_t *b = buf;
  uint64_t o = off;
  size_t left = len;
  while (left > 0) {
    struct raid5_map m;
    raid5_map(a->n, a->sb.chunk, o, &m);
    size_t n = left < c - o % c ? left : (size_t)(c - o % c);
    p[k++] = (struct raid5_piece){
      .io = { .slot = raid_member_usable(a, (int)m.member, m.moff)
                      ? (int)m.member : -1,
              .op = RAID_MIO_READ, .buf = b, .len = n, .off = m.moff },
      .stripe = m.stripe, .d = m.dchunk };
    b += n;
    o += n;
    left -= n;
  }
  /* Stripes with every piece on a usable member: all of those pieces in
   * one parallel batch, without the stripe lock. */
  for (int i0 = 0, i1; i0 < k; i0 = i1) {
    bool whole = true;
    for (i1 = i0; i1 < k && p[i1].stripe == p[i0].stripe; i1++)
      whole = whole && p[i1].io.slot >= 0;
    for (int i = i0; whole && i < i1; i++)
      hm[h++] = p[i].io;
  }
  raid_mio_run(a, hm, h);
  /* Then stripe by stripe: read errors of that batch, and the stripes
   * with a piece on a missing member. */
  h = 0;
  for (int i0 = 0, i1; i0 < k && r == 0; i0 = i1) {
    uint64_t s = p[i0].stripe;
    int lost = -1, nlost = 0;
    for (i1 = i0; i1 < k && p[i1].stripe == s; i1++)
      if (p[i1].io.slot < 0) {
        lost = i1 - i0;
        nlost++;
      }
    if (nlost == 0) {
      for (int i = i0; i < i1 && r == 0; i++)
        if (hm[h++].ret < 0)
          r = raid5_read_degraded(a, s, p[i].d, p[i].io.off - s * c,
                                  p[i].io.len, p[i].io.buf, true);
      continue;
    }
    r = nlost == 1 ? raid5_read_stripe_degraded(a, s, p + i0, i1 - i0, lost)
                   : 1;
    if (r == 1)
      r = raid5_read_pieces(a, s, p + i0, i1 - i0);
  }
out:
  if (p != stackp)
    free(p);
  if (hm != stackmio)
    free(hm);
  return r;
}

/* ---- partial parity log ---- */

static size_t ppl_index(struct raid_array *a, unsigned p, uint64_t s)
{
  return (size_t)p * a->sb.ppl_slots + (size_t)(s % a->sb.ppl_slots);
}

static uint64_t ppl_slot_off(struct raid_array *a, uint64_t s)
{
  return a->sb.ppl_offset + (s % a->sb.ppl_slots) * a->sb.ppl_slot_size;
}

/* A validated log entry (header fields; the partial parity stays on disk
 * at SOFF + RAID_PPL_HDR on member P). */
struct ppl_entry {
  uint64_t stripe, soff;
  uint32_t r0, len, mask;
  unsigned p;
};

/* Entries a read-only open of a dirty degraded array applies to reads
 * (nothing may be written, so the log cannot be replayed on disk). */
struct raid5_ppl_ro {
  size_t n;
  struct ppl_entry e[];
};

/* Read slot J of member P.  True if it holds a valid entry of this array
 * (header checksum and fields, and the partial parity's checksum; the
 * partial parity is left in PP, which has room for a chunk) whose modified
 * chunks are all usable: one that recovery can apply. */
static bool ppl_read_entry(struct raid_array *a, unsigned p, uint32_t j,
                           uint8_t *hdr, uint8_t *pp, struct ppl_entry *e)
{
  unsigned n = a->n;
  uint64_t c = a->sb.chunk, nstripes = a->sb.data_size / c;
  uint64_t soff = a->sb.ppl_offset + (uint64_t)j * a->sb.ppl_slot_size;
  if (raid_mio_one_abs(a, (int)p, RAID_MIO_READ, hdr, RAID_PPL_HDR, soff) < 0)
    return false;
  if (memcmp(hdr, ppl_magic, 8) || memcmp(hdr + 8, a->sb.uuid, 16) ||
      vd_crc32c(0, hdr, 4092) != vd_get_le32(hdr + 4092))
    return false;
  uint64_t s = vd_get_le64(hdr + 24);
  uint32_t r0 = vd_get_le32(hdr + 32), len = vd_get_le32(hdr + 36);
  uint32_t mask = vd_get_le32(hdr + 40);
  if (s >= nstripes || s % a->sb.ppl_slots != j ||
      raid5_parity_member(n, s) != p || vd_get_le32(hdr + 44) != p ||
      len == 0 || r0 >= c || len > c - r0 || mask == 0 ||
      (mask >> (n - 1)) != 0)
    return false;
  if (raid_mio_one_abs(a, (int)p, RAID_MIO_READ, pp, len,
                       soff + RAID_PPL_HDR) < 0 ||
      vd_crc32c(0, pp, len) != vd_get_le32(hdr + 56))
    return false;
  uint64_t moff = s * c + r0;
  for (unsigned d = 0; d < n - 1; d++)
    if ((mask & (1u << d)) &&
        !raid_member_usable(a, (int)raid5_data_member(n, s, d), moff))
      return false;   /* a modified chunk is lost: nothing to protect */
  *e = (struct ppl_entry){ .stripe = s, .soff = soff, .r0 = r0, .len = len,
                           .mask = mask, .p = p };
  return true;
}

/* Read-only open of a dirty, degraded array: note the entries recovery
 * would replay, for raid5_read_degraded to apply. */
static int raid5_ppl_load_ro(struct raid_array *a)
{
  size_t max = (size_t)a->n * a->sb.ppl_slots;
  struct raid5_ppl_ro *ro = calloc(1, sizeof *ro + max * sizeof ro->e[0]);
  uint8_t *hdr = vd_alloc_aligned(RAID_PPL_HDR);
  uint8_t *pp = vd_alloc_aligned(a->sb.chunk);
  int r = 0;
  if (!ro || !hdr || !pp) {
    free(ro);
    r = vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
    goto out;
  }
  for (unsigned p = 0; p < a->n; p++) {
    if (!raid_member_usable(a, (int)p, 0))
      continue;
    for (uint32_t j = 0; j < a->sb.ppl_slots; j++)
      if (ppl_read_entry(a, p, j, hdr, pp, &ro->e[ro->n]))
        ro->n++;
  }
  a->ppl_ro = ro;
out:
  vd_free_aligned(hdr);
  vd_free_aligned(pp);
  return r;
}

/* Free the partial parity log state (raid5_ppl_init). */
static void raid5_ppl_free(struct raid_array *a)
{
  if (a->ppl_lock) {
    for (size_t i = 0; i < (size_t)a->n * a->sb.ppl_slots; i++)
      pthread_mutex_destroy(&a->ppl_lock[i]);
    free(a->ppl_lock);
    a->ppl_lock = NULL;
  }
  free(a->ppl_stripe);
  a->ppl_stripe = NULL;
  free(a->ppl_done_gen);
  a->ppl_done_gen = NULL;
  free(a->ppl_ro);
  a->ppl_ro = NULL;
}

/* raid5_read_degraded on a read-only open of a dirty degraded array: BUFS
 * holds rows [O, O+LEN) of the members other than T (the lost one, data
 * chunk D of stripe S), in member order.  Where an entry of S covers those
 * rows and D is not among its modified chunks, the parity on disk may be
 * half-written: replace it there by PP ^ (modified chunks as read), what
 * recovery would have written. */
static int raid5_ppl_apply_ro(struct raid_array *a, uint64_t s, unsigned d,
                              uint64_t o, size_t len, uint8_t *bufs,
                              unsigned t)
{
  const struct raid5_ppl_ro *ro = a->ppl_ro;
  unsigned n = a->n;
  for (size_t i = 0; i < ro->n; i++) {
    const struct ppl_entry *e = &ro->e[i];
    if (e->stripe != s || (e->mask & (1u << d)))
      continue;
    uint64_t lo = o > e->r0 ? o : e->r0;
    uint64_t hi = o + len < (uint64_t)e->r0 + e->len ? o + len
                                                    : (uint64_t)e->r0 + e->len;
    if (lo >= hi)
      continue;
    /* Member M's rows in BUFS: members in order, T left out. */
#define RO_ROWS(m) (bufs + (size_t)((m) < t ? (m) : (m) - 1) * len + (lo - o))
    uint8_t *par = RO_ROWS(e->p);
    int r = raid_mio_one_abs(a, (int)e->p, RAID_MIO_READ, par,
                             (size_t)(hi - lo),
                             e->soff + RAID_PPL_HDR + (lo - e->r0));
    if (r < 0)
      return r;
    for (unsigned dd = 0; dd < n - 1; dd++)
      if (e->mask & (1u << dd)) {
        unsigned m = raid5_data_member(n, s, dd);
        raid_xor_into(par, RO_ROWS(m), (size_t)(hi - lo));
      }
#undef RO_ROWS
  }
  return 0;
}

/* Allocate the partial parity log state; a read-only open of a dirty
 * degraded array loads the log entries its reads apply. */
static int raid5_ppl_init(struct raid_array *a)
{
  if (a->sb.policy != RAID_POLICY_PPL)
    return 0;
  size_t n = (size_t)a->n * a->sb.ppl_slots;
  a->ppl_lock = calloc(n, sizeof *a->ppl_lock);
  a->ppl_stripe = calloc(n, sizeof *a->ppl_stripe);
  a->ppl_done_gen = calloc(n, sizeof *a->ppl_done_gen);
  if (!a->ppl_lock || !a->ppl_stripe || !a->ppl_done_gen) {
    free(a->ppl_lock);
    a->ppl_lock = NULL;
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  }
  for (size_t i = 0; i < n; i++) {
    pthread_mutex_init(&a->ppl_lock[i], NULL);
    a->ppl_stripe[i] = -1;
  }
  if (!a->writable && (a->sb.flags & RAID_SB_DIRTY) &&
      raid_active_count(a) < a->n)
    return raid5_ppl_load_ro(a);
  return 0;
}

/* A member flush starts: writes done before it are durable once it ends. */
static uint64_t raid5_ppl_flush_begin(struct raid_array *a)
{
  return atomic_fetch_add(&a->ppl_gen, 1) + 1;
}

static void raid5_ppl_flush_end(struct raid_array *a, uint64_t gen)
{
  uint64_t cur = atomic_load(&a->ppl_durable);
  while (cur < gen && !atomic_compare_exchange_weak(&a->ppl_durable, &cur, gen))
    ;
}

/* Whether the in-place writes protected by slot I's entry may still be
 * volatile (not covered by a completed member flush).  Slot lock held. */
static bool ppl_slot_busy(struct raid_array *a, size_t i)
{
  VD_ASSERT_HELD(&a->ppl_lock[i]);
  return a->ppl_stripe[i] >= 0 &&
         a->ppl_done_gen[i] >= atomic_load(&a->ppl_durable);
}

/* Make every completed member write durable (and note it for the slots). */
static int ppl_flush_all(struct raid_array *a)
{
  uint64_t g = raid5_ppl_flush_begin(a);
  int r = raid_flush_members(a);
  if (r == 0)
    raid5_ppl_flush_end(a, g);
  return r;
}

/* Log PP (LEN bytes, rows [R0, R0+LEN) of stripe S, modified chunks MASK)
 * to parity member P.  On success *SLOT is the slot, which stays locked
 * until raid5_ppl_done.  On failure the slot is unlocked and the error
 * returned; the caller records it as a failure of P, where the log is. */
static int raid5_ppl_log(struct raid_array *a, uint64_t s, unsigned p,
                         uint32_t r0, uint32_t len, uint32_t mask,
                         const void *pp, size_t *slot)
{
  size_t i = ppl_index(a, p, s);
  pthread_mutex_lock(&a->ppl_lock[i]);
  if (ppl_slot_busy(a, i)) {
    /* The entry here still protects writes that may be volatile (of this
     * stripe or another one sharing the slot): they must be durable before
     * their protection goes. */
    int r = ppl_flush_all(a);
    if (r < 0) {
      pthread_mutex_unlock(&a->ppl_lock[i]);
      return r;
    }
  }
  uint8_t *b = raid_scratch(1, RAID_PPL_HDR + len);
  if (!b) {
    pthread_mutex_unlock(&a->ppl_lock[i]);
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  }
  memset(b, 0, RAID_PPL_HDR);
  memcpy(b, ppl_magic, 8);
  memcpy(b + 8, a->sb.uuid, 16);
  vd_put_le64(b + 24, s);
  vd_put_le32(b + 32, r0);
  vd_put_le32(b + 36, len);
  vd_put_le32(b + 40, mask);
  vd_put_le32(b + 44, p);
  vd_put_le64(b + 48, atomic_fetch_add(&a->ppl_seq, 1));
  vd_put_le32(b + 56, vd_crc32c(0, pp, len));
  vd_put_le32(b + 4092, vd_crc32c(0, b, 4092));
  memcpy(b + RAID_PPL_HDR, pp, len);
  int r = raid_mio_one_abs(a, (int)p, RAID_MIO_WRITE, b, RAID_PPL_HDR + len,
                           ppl_slot_off(a, s));
  if (r == 0)
    r = raid_mio_one(a, (int)p, RAID_MIO_FLUSH, NULL, 0, 0);
  if (r < 0) {
    /* The slot may now hold anything: no longer trust what we knew. */
    a->ppl_stripe[i] = -1;
    pthread_mutex_unlock(&a->ppl_lock[i]);
    return r;
  }
  *slot = i;
  return 0;
}

static void raid5_ppl_done(struct raid_array *a, size_t i, uint64_t s)
{
  VD_ASSERT_HELD(&a->ppl_lock[i]);
  a->ppl_stripe[i] = (int64_t)s;
  a->ppl_done_gen[i] = atomic_load(&a->ppl_gen);
  pthread_mutex_unlock(&a->ppl_lock[i]);
}

/* Before the in-place writes of a segment that modifies every data chunk
 * of its rows (a full row, or the full stripe) of stripe S.  Such a write
 * needs no entry of its own: after a cut every chunk of those rows is
 * being written, so none holds data that must be reconstructed there.
 * But the entry of an earlier partial write to S would go stale (its
 * partial parity no longer matches the chunks it did not modify), and
 * replayed once this write is durable it would corrupt flushed data.  So
 * the entry is invalidated, which must not drop the protection of the
 * partial writes it covers: if they may still be volatile, the members
 * are flushed first.  The invalidation itself needs no flush of its own:
 * until the flush that makes this write durable, a surviving stale entry
 * only affects rows being written (see docs/raid-format.md). */
static int raid5_ppl_forget(struct raid_array *a, uint64_t s, unsigned p)
{
  size_t i = ppl_index(a, p, s);
  int r = 0;
  pthread_mutex_lock(&a->ppl_lock[i]);
  if (a->ppl_stripe[i] == (int64_t)s) {
    if (ppl_slot_busy(a, i))
      r = ppl_flush_all(a);
    uint8_t *z = r == 0 ? vd_alloc_aligned(RAID_PPL_HDR) : NULL;
    if (r == 0 && !z) {
      r = vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
    } else if (r == 0) {
      memset(z, 0, RAID_PPL_HDR);
      r = raid_mio_one_abs(a, (int)p, RAID_MIO_WRITE, z, RAID_PPL_HDR,
                           ppl_slot_off(a, s));
      vd_free_aligned(z);
    }
    if (r == 0)
      a->ppl_stripe[i] = -1;
  }
  pthread_mutex_unlock(&a->ppl_lock[i]);
  return r;
}

/* Clear every log slot (each read-write open, once consistent). */
static int raid5_ppl_clear(struct raid_array *a)
{
  if (a->sb.policy != RAID_POLICY_PPL || !a->writable)
    return 0;
  size_t bytes = (size_t)RAID_PPL_HDR;
  uint8_t *z = vd_alloc_aligned(bytes);
  if (!z)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  memset(z, 0, bytes);
  for (unsigned i = 0; i < a->n; i++) {
    if (!a->m[i].dev || atomic_load(&a->m[i].state) == RAID_ROLE_FAULTY)
      continue;
    for (uint32_t j = 0; j < a->sb.ppl_slots; j++) {
      int r = raid_mio_one_abs(a, (int)i, RAID_MIO_WRITE, z, bytes,
                               a->sb.ppl_offset +
                               (uint64_t)j * a->sb.ppl_slot_size);
      if (r < 0 && raid_member_failed(a, (int)i, r) < 0) {
        vd_free_aligned(z);
        return -EIO;
      }
      if (r < 0)
        break;
    }
  }
  vd_free_aligned(z);
  for (size_t i = 0; i < (size_t)a->n * a->sb.ppl_slots; i++)
    a->ppl_stripe[i] = -1;
  return raid_flush_members(a);
}

/* Replay the log after an unclean stop of a degraded array. */
static int raid5_ppl_recover(struct raid_array *a)
{
  if (a->sb.policy != RAID_POLICY_PPL)
    return 0;
  unsigned n = a->n;
  uint64_t c = a->sb.chunk;
  uint8_t *hdr = vd_alloc_aligned(RAID_PPL_HDR);
  uint8_t *pp = vd_alloc_aligned(c), *tmp = vd_alloc_aligned(c);
  int r = 0;
  if (!hdr || !pp || !tmp) {
    r = vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
    goto out;
  }
  for (unsigned p = 0; p < n && r == 0; p++) {
    if (!raid_member_usable(a, (int)p, 0) &&
        atomic_load(&a->m[p].state) != RAID_ROLE_REBUILDING)
      continue;
    for (uint32_t j = 0; j < a->sb.ppl_slots && r == 0; j++) {
      struct ppl_entry e;
      if (!ppl_read_entry(a, p, j, hdr, pp, &e))
        continue;
      uint64_t s = e.stripe, moff = s * c + e.r0;
      raid_stripe_lock(a, s);
      for (unsigned d = 0; d < n - 1 && r == 0; d++) {
        if (!(e.mask & (1u << d)))
          continue;
        r = raid_mio_one(a, (int)raid5_data_member(n, s, d), RAID_MIO_READ,
                         tmp, e.len, moff);
        if (r == 0)
          raid_xor_into(pp, tmp, e.len);
      }
      if (r == 0)
        r = raid_mio_one(a, (int)p, RAID_MIO_WRITE, pp, e.len, moff);
      raid_stripe_unlock(a, s);
      if (r < 0)
        r = vd_prefix_error(-r, "%s: replaying the partial parity log of "
                            "stripe %llu", a->desc_path,
                            (unsigned long long)s);
    }
  }
  if (r == 0)
    r = raid_flush_members(a);
out:
  vd_free_aligned(hdr);
  vd_free_aligned(pp);
  vd_free_aligned(tmp);
  return r;
}

/* ---- writes ---- */

enum { R5_FULL, R5_RMW, R5_RCW, R5_DATA_ONLY };

/* CPU work that runs while member requests are in flight
 * (raid_mio_run_while): OUT = XOR of SRC[0..K), LEN bytes (none if 0). */
struct raid5_xor_job {
  void *out;
  const void *src[RAID_MAX_MEMBERS + 1];
  unsigned k;
  size_t len;
};

static void raid5_xor_job(void *opaque)
{
  struct raid5_xor_job *j = opaque;
  if (j->len)
    raid_xor(j->out, j->src, j->k, j->len);
}

/* A full stripe: its parity, then the parity write IO, while the pool
 * writes the data chunks. */
struct raid5_full_job {
  struct raid_array *a;
  struct raid5_xor_job x;
  struct raid_mio *io;
};

static void raid5_full_parity(void *opaque)
{
  struct raid5_full_job *j = opaque;
  raid5_xor_job(&j->x);
  raid_mio_run(j->a, j->io, 1);
}

/* Write rows [R0, R0+LEN) of stripe S: chunks in MASK get SRC[d].  Caller
 * holds the stripe lock. */
static int raid5_segment(struct raid_array *a, uint64_t s, uint32_t r0,
                         uint32_t len, uint32_t mask,
                         const uint8_t *const *src)
{
  VD_ASSERT_HELD(raid_stripe_mutex(a, s));
  unsigned n = a->n, nd = n - 1;
  unsigned p = raid5_parity_member(n, s);
  uint64_t moff = s * a->sb.chunk + r0;
  /* Scratch: parity, partial parity, one buffer per data chunk. */
  uint8_t *scratch = raid_scratch(0, (size_t)(n + 1) * len);
  if (!scratch)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  uint8_t *par = scratch, *pp = scratch + len, *buf[RAID_MAX_MEMBERS];
  for (unsigned d = 0; d < nd; d++)
    buf[d] = scratch + (size_t)(d + 2) * len;
  int r = 0;

  for (int attempt = 0; attempt <= (int)n + 1; attempt++) {
    if (atomic_load(&a->failed)) {
      r = vd_set_error(EIO, "%s: RAID5 has failed", a->desc_path);
      goto out;
    }
    bool ok[RAID_MAX_MEMBERS];
    int missing = -1, nmissing = 0, nmod = 0;
    for (unsigned d = 0; d < nd; d++) {
      ok[d] = raid_member_usable(a, (int)raid5_data_member(n, s, d), moff);
      if (!ok[d]) {
        missing = (int)d;
        nmissing++;
      }
      if (mask & (1u << d))
        nmod++;
    }
    bool pok = raid_member_usable(a, (int)p, moff);
    if (nmissing + !pok > 1) {
      r = vd_set_error(EIO, "%s: RAID5 stripe %llu has two members missing",
                       a->desc_path, (unsigned long long)s);
      goto out;
    }
    /* Plan by counting member reads; a missing member forces the plan
     * that does not need it. */
    int mode;
    if (!pok)
      mode = R5_DATA_ONLY;
    else if ((unsigned)nmod == nd)
      mode = R5_FULL;
    else if (missing >= 0)
      mode = (mask & (1u << missing)) ? R5_RCW : R5_RMW;
    else
      mode = nmod + 1 < (int)nd - nmod ? R5_RMW : R5_RCW;

    /* Phase 1: reads, in parallel. */
    struct raid_mio mio[RAID_MAX_MEMBERS + 1];
    int k = 0;
    if (mode == R5_RMW)
      mio[k++] = (struct raid_mio){ .slot = (int)p, .op = RAID_MIO_READ,
                                    .buf = par, .len = len, .off = moff };
    for (unsigned d = 0; d < nd; d++) {
      bool mod = mask & (1u << d);
      if ((mode == R5_RMW && mod) || (mode == R5_RCW && !mod))
        mio[k++] = (struct raid_mio){
          .slot = (int)raid5_data_member(n, s, d), .op = RAID_MIO_READ,
          .buf = buf[d], .len = len, .off = moff };
    }
    raid_mio_run(a, mio, k);
    bool replan = false;
    for (int j = 0; j < k; j++)
      if (mio[j].ret < 0) {
        if (raid_member_failed(a, mio[j].slot, mio[j].ret) < 0) {
          r = vd_set_error(EIO, "%s: RAID5 has failed", a->desc_path);
          goto out;
        }
        replan = true;
      }
    if (replan)
      continue;

    /* Partial parity PP = XOR of the untouched chunks (RMW: old parity ^
     * old modified data); new parity = PP ^ new data.  One pass each. */
    const void *xs[RAID_MAX_MEMBERS + 1];
    unsigned nx = 0;
    if (mode == R5_RMW) {
      xs[nx++] = par;
      for (unsigned d = 0; d < nd; d++)
        if (mask & (1u << d))
          xs[nx++] = buf[d];
      raid_xor(pp, xs, nx, len);
    } else if (mode == R5_RCW) {
      for (unsigned d = 0; d < nd; d++)
        if (!(mask & (1u << d)))
          xs[nx++] = buf[d];
      raid_xor(pp, xs, nx, len);
    }
    /* (A full stripe's parity is computed while its data is written.) */
    struct raid5_full_job full = { .a = a, .x = { .out = par, .len = len } };
    if (mode != R5_DATA_ONLY) {
      if (mode != R5_FULL)
        full.x.src[full.x.k++] = pp;
      for (unsigned d = 0; d < nd; d++)
        if (mask & (1u << d))
          full.x.src[full.x.k++] = src[d];
      if (mode != R5_FULL)
        raid5_xor_job(&full.x);
    }

    /* Close the write hole before touching the stripe in place. */
    bool logged = false;
    size_t slot = 0;
    if (a->sb.policy == RAID_POLICY_PPL && mode != R5_DATA_ONLY) {
      r = mode == R5_FULL ? raid5_ppl_forget(a, s, p)
                          : raid5_ppl_log(a, s, p, r0, len, mask, pp, &slot);
      if (r < 0) {
        r = 0;
        if (raid_member_failed(a, (int)p, -EIO) < 0) {
          r = vd_set_error(EIO, "%s: RAID5 has failed", a->desc_path);
          goto out;
        }
        continue;
      }
      logged = mode != R5_FULL;
    }

    /* Phase 2: in-place writes, in parallel. */
    k = 0;
    if (mode != R5_DATA_ONLY)
      mio[k++] = (struct raid_mio){ .slot = (int)p, .op = RAID_MIO_WRITE,
                                    .buf = par, .len = len, .off = moff };
    for (unsigned d = 0; d < nd; d++)
      if ((mask & (1u << d)) && ok[d])
        mio[k++] = (struct raid_mio){
          .slot = (int)raid5_data_member(n, s, d), .op = RAID_MIO_WRITE,
          .buf = (void *)src[d], .len = len, .off = moff };
    if (mode == R5_FULL) {
      full.io = &mio[0];
      raid_mio_run_while(a, mio + 1, k - 1, raid5_full_parity, &full);
    } else {
      raid_mio_run(a, mio, k);
    }
    if (logged)
      raid5_ppl_done(a, slot, s);
    replan = false;
    for (int j = 0; j < k; j++)
      if (mio[j].ret < 0) {
        if (raid_member_failed(a, mio[j].slot, mio[j].ret) < 0) {
          r = vd_set_error(EIO, "%s: RAID5 has failed", a->desc_path);
          goto out;
        }
        replan = true;
      }
    if (!replan)
      goto out;
    /* A member failed mid-write and is recorded as faulty: plan again
     * without it (the data we hold is written again, parity recomputed
     * from chunks that were not touched). */
  }
  r = vd_set_error(EIO, "%s: RAID5 stripe %llu: too many retries",
                   a->desc_path, (unsigned long long)s);
out:
  return r;
}

/* Write [soff, soff+len) of stripe S (offsets inside the stripe's data). */
static int raid5_write_stripe(struct raid_array *a, uint64_t s, uint64_t soff,
                              size_t len, const uint8_t *data)
{
  unsigned nd = a->n - 1;
  uint32_t c = a->sb.chunk;
  uint32_t lo[RAID_MAX_MEMBERS], hi[RAID_MAX_MEMBERS];
  uint32_t pts[2 * RAID_MAX_MEMBERS];
  unsigned npts = 0;
  for (unsigned d = 0; d < nd; d++) {
    uint64_t cs = (uint64_t)d * c, ce = cs + c;
    uint64_t a0 = soff > cs ? soff : cs, a1 = soff + len < ce ? soff + len : ce;
    if (a0 < a1) {
      lo[d] = (uint32_t)(a0 - cs);
      hi[d] = (uint32_t)(a1 - cs);
      pts[npts++] = lo[d];
      pts[npts++] = hi[d];
    } else {
      lo[d] = hi[d] = 0;
    }
  }
  /* Sort the breakpoints (few of them). */
  for (unsigned i = 1; i < npts; i++)
    for (unsigned j = i; j > 0 && pts[j - 1] > pts[j]; j--) {
      uint32_t t = pts[j];
      pts[j] = pts[j - 1];
      pts[j - 1] = t;
    }
  int r = 0;
  raid_stripe_lock(a, s);
  for (unsigned i = 0; i + 1 < npts && r == 0; i++) {
    uint32_t b0 = pts[i], b1 = pts[i + 1];
    if (b0 == b1)
      continue;
    uint32_t mask = 0;
    const uint8_t *src[RAID_MAX_MEMBERS] = { NULL };
    for (unsigned d = 0; d < nd; d++)
      if (lo[d] < hi[d] && lo[d] <= b0 && hi[d] >= b1) {
        mask |= 1u << d;
        src[d] = data + ((uint64_t)d * c + b0 - soff);
      }
    if (mask)
      r = raid5_segment(a, s, b0, b1 - b0, mask, src);
  }
  raid_stripe_unlock(a, s);
  return r;
}

static int raid5_write(struct raid_array *a, const void *buf, size_t len,
                       uint64_t off, unsigned flags)
{
  uint64_t sb = a->stripe_bytes, c = a->sb.chunk;
  uint64_t s0 = off / sb, s1 = (off + len - 1) / sb;
  int r = raid_bitmap_start(a, s0 * c, (s1 - s0 + 1) * c);
  if (r < 0)
    return r;
  const uint8_t *p = buf;
  for (uint64_t s = s0; s <= s1 && r == 0; s++) {
    uint64_t b = off > s * sb ? off : s * sb;
    uint64_t e = off + len < (s + 1) * sb ? off + len : (s + 1) * sb;
    r = raid5_write_stripe(a, s, b - s * sb, (size_t)(e - b), p + (b - off));
  }
  raid_bitmap_end(a, s0 * c, (s1 - s0 + 1) * c);
  return r;
}

/* ---- resync, scrub, rebuild ---- */

/* Recompute the parity of the stripe at MOFF (or, with CHECK_ONLY, compare
 * it); a degraded stripe has nothing to compare against and is skipped. */
static int raid5_sync_row(struct raid_array *a, uint64_t moff, bool check_only,
                          bool *mismatch)
{
  unsigned n = a->n;
  size_t c = a->sb.chunk;
  uint64_t s = moff / c;
  *mismatch = false;
  for (unsigned i = 0; i < n; i++)
    if (!raid_member_usable(a, (int)i, moff))
      return 0;   /* degraded: nothing to compare against */
  uint8_t *bufs = raid_scratch(0, (n + 1) * c);
  if (!bufs)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  unsigned p = raid5_parity_member(n, s);
  struct raid_mio mio[RAID_MAX_MEMBERS];
  const void *src[RAID_MAX_MEMBERS];
  int r = 0;
  raid_stripe_lock(a, s);
  for (unsigned i = 0; i < n; i++)
    mio[i] = (struct raid_mio){ .slot = (int)i, .op = RAID_MIO_READ,
                                .buf = bufs + i * c, .len = c, .off = moff };
  raid_mio_run(a, mio, (int)n);
  for (unsigned i = 0; i < n; i++)
    if (mio[i].ret < 0) {
      r = raid_member_failed(a, (int)i, mio[i].ret);
      goto out;   /* degraded now: skip */
    }
  unsigned k = 0;
  for (unsigned i = 0; i < n; i++)
    if (i != p)
      src[k++] = bufs + i * c;
  uint8_t *calc = bufs + n * c;
  raid_xor(calc, src, k, c);
  if (memcmp(calc, bufs + p * c, c) != 0) {
    *mismatch = true;
    if (!check_only) {
      r = raid_mio_one(a, (int)p, RAID_MIO_WRITE, calc, c, moff);
      if (r < 0)
        r = raid_member_failed(a, (int)p, r);
    }
  }
out:
  raid_stripe_unlock(a, s);
  return r;
}

/* The rebuild's block: a lane's source blocks (the first read into the
 * output) stay in its core's L2 cache from the reads through the XOR to the
 * write (384 KiB with 4 members). */
#define RAID5_REBUILD_BLOCK (128u << 10)

/* A rebuild run of rows, cut into blocks shared out to lanes (CPUs), each
 * reading, XORing and writing its own blocks. */
struct raid5_rebuild {
  struct raid_array *a;
  uint64_t moff;
  size_t len, blk, nblk;
  int slot;
  unsigned k;
  int src[RAID_MAX_MEMBERS];
  uint8_t *scratch;            /* k blocks per lane */
  atomic_bool stop;            /* a lane failed: the others stop */
  int ret[RAID_MAX_LANES];     /* per lane: 0, or member bad[]'s error */
  int bad[RAID_MAX_LANES];
};

/* Lane LANE of NLANES: blocks [nblk*lane/nlanes, nblk*(lane+1)/nlanes),
 * one after the other. */
static void raid5_rebuild_lane(void *opaque, unsigned lane, unsigned nlanes)
{
  struct raid5_rebuild *j = opaque;
  uint8_t *out = j->scratch + (size_t)lane * j->k * j->blk;
  const void *src[RAID_MAX_MEMBERS];
  for (unsigned m = 0; m < j->k; m++)
    src[m] = out + (size_t)m * j->blk;
  for (size_t t = j->nblk * lane / nlanes;
       t < j->nblk * (lane + 1) / nlanes && !atomic_load(&j->stop); t++) {
    uint64_t off = j->moff + t * j->blk;
    size_t len = j->len - t * j->blk < j->blk ? j->len - t * j->blk : j->blk;
    int r = 0, who = j->slot;
    for (unsigned m = 0; m < j->k && r >= 0; m++) {
      who = j->src[m];
      r = raid_mio_one(j->a, who, RAID_MIO_READ, (void *)src[m], len, off);
    }
    if (r >= 0) {
      raid_xor(out, src, j->k, len);
      who = j->slot;
      r = raid_mio_one(j->a, who, RAID_MIO_WRITE, out, len, off);
    }
    if (r < 0) {
      j->ret[lane] = r;
      j->bad[lane] = who;
      atomic_store(&j->stop, true);
    }
  }
}

/* The block size and count of a rebuild run of LEN bytes. */
static void raid5_rebuild_blocks(size_t len, size_t *blk, size_t *nblk)
{
  *blk = len < RAID5_REBUILD_BLOCK ? len : RAID5_REBUILD_BLOCK;
  *nblk = *blk ? (len + *blk - 1) / *blk : 0;
}

/* Each lane (at most one per block) reads the n - 1 sources of a block
 * into its own buffers and XORs them into the first. */
static size_t raid5_rebuild_scratch(const struct raid_array *a, size_t len)
{
  size_t blk, nblk;
  raid5_rebuild_blocks(len, &blk, &nblk);
  size_t lanes = nblk < RAID_MAX_LANES ? nblk : RAID_MAX_LANES;
  return lanes * (a->n - 1) * blk;
}

/* SLOT's rows [MOFF, MOFF+LEN) (whole rows) are the XOR of the others',
 * rebuilt block by block on as many lanes as there are CPUs (a copy reads
 * one source and uses one CPU; this reads k). */
static int raid5_rebuild_rows_locked(struct raid_array *a, uint64_t moff,
                                     size_t len, int slot, void *scratch)
{
  VD_ASSERT_HELD(raid_stripe_mutex(a, moff / a->sb.chunk));
  struct raid5_rebuild j = { .a = a, .moff = moff, .len = len, .slot = slot,
                             .scratch = scratch };
  for (unsigned i = 0; i < a->n; i++) {
    if ((int)i == slot)
      continue;
    if (!raid_member_usable(a, (int)i, moff + len - 1))
      return vd_set_error(EIO, "%s: cannot rebuild slot %d: member %u is "
                          "unavailable too", a->desc_path, slot, i);
    j.src[j.k++] = (int)i;
  }
  /* Lanes <= blocks: the lanes' k * blk fit raid5_rebuild_scratch. */
  raid5_rebuild_blocks(len, &j.blk, &j.nblk);
  raid_run_lanes(a, raid5_rebuild_lane, &j,
                 j.nblk < RAID_MAX_LANES ? (unsigned)j.nblk : RAID_MAX_LANES);
  for (unsigned l = 0; l < RAID_MAX_LANES; l++) {
    if (j.ret[l] >= 0)
      continue;
    if (j.bad[l] == slot)
      return j.ret[l];        /* the caller records the new member's */
    raid_member_failed(a, j.bad[l], j.ret[l]);
    return vd_set_error(EIO, "%s: rebuild of slot %d: member %d failed",
                        a->desc_path, slot, j.bad[l]);
  }
  return 0;
}

static uint64_t raid5_capacity(unsigned n, uint64_t data_size)
{
  return data_size * (n - 1);
}

static uint64_t raid5_row_bytes(unsigned n, uint32_t chunk)
{
  return (uint64_t)chunk * (n - 1);
}

/* Any one member's chunks are the XOR of the others'. */
static unsigned raid5_members_needed(unsigned n)
{
  return n - 1;
}

const struct raid_level_ops raid5_ops = {
  .level = RAID_LEVEL5,
  .min_members = 3,
  .redundant = true,
  .write_hole = true,
  .striped = true,
  .parity_log = true,
  .default_policy = RAID_POLICY_PPL,
  .layout_name = "left-symmetric",
  .mismatch_what = "parity does not match the data",
  .capacity = raid5_capacity,
  .row_bytes = raid5_row_bytes,
  .members_needed = raid5_members_needed,
  .read = raid5_read,
  .write = raid5_write,
  .sync_row = raid5_sync_row,
  .rebuild_rows_locked = raid5_rebuild_rows_locked,
  .rebuild_scratch = raid5_rebuild_scratch,
  .start = raid5_ppl_init,
  .stop = raid5_ppl_free,
  .replay_log = raid5_ppl_recover,
  .clear_log = raid5_ppl_clear,
  .flush_begin = raid5_ppl_flush_begin,
  .flush_end = raid5_ppl_flush_end,
};
