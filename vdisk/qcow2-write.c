/* libvdisk — qcow2 writes: create, allocating writes, zeroing, discard,
 * flush.  Layout in vdisk/qcow2.h; what is written and refused in
 * docs/qcow2.md.
 *
 * Overwrites of clusters the image alone owns change no metadata: they
 * share qcow2_priv.rw with readers (q_overwrite).  Other writes go one at
 * a time (rw held for writing).
 * Metadata is written through, in qemu's crash order, so that a crash
 * leaves at worst leaked clusters (the one exception: L2 entries that only
 * name reserved clusters, below, may wait in the L2 cache until the next
 * flush, q_l2_writeback):
 *   1. new clusters are taken at the end of the file (never from freed
 *      space, so a cluster freed in this session cannot be handed out
 *      while an old reference to it may still be on disk);
 *   2. data (with the copy-on-write fill) is written to them;
 *   3. their refcounts are raised (refcount blocks made durable before
 *      the refcount table points at them, by the next sync: q_sync) and
 *      synced;
 *   4. the L2 entries are written; a new L2 table is written whole and
 *      its L1 entry after a sync, at the next write-back (q_l2_new);
 *   5. clusters an L2 entry no longer references (overwritten compressed
 *      or shared clusters, discarded or zeroed ones) are decremented only
 *      after the L2 entries are synced.
 * New data clusters where nothing was allocated come from a reserve whose
 * refcounts were raised ahead (q_resv_fill, growing from 64 clusters to
 * 64 MiB) and are made durable by the first sync before an L2 entry is
 * written (q_resv_durable; usually the next flush's), together with the
 * data copied into them from a backing file: no sync per allocating
 * write; a crash leaks the unused reserve, a clean close gives it back.
 * The dirty bit is never set: refcounts are always kept exact (the
 * lazy_refcounts compat bit may be set on an image, it only permits it).
 * With VD_OPEN_NO_FLUSH (convert's unsafe cache) the syncs do nothing and
 * only the order stays.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "vdisk/io.h"
#include "vdisk/qcow2.h"

/* ---- refcounts ---- */

static uint64_t
rc_get(const struct qcow2_priv *p, const uint8_t *blk, uint64_t k)
{
  switch (p->h.refcount_order) {
  case 6: return vd_get_be64(blk + k * 8);
  case 5: return vd_get_be32(blk + k * 4);
  case 4: return vd_get_be16(blk + k * 2);
  default: return blk[k];
  }
}

static void
rc_put(const struct qcow2_priv *p, uint8_t *blk, uint64_t k, uint64_t v)
{
  switch (p->h.refcount_order) {
  case 6: vd_put_be64(blk + k * 8, v); break;
  case 5: vd_put_be32(blk + k * 4, (uint32_t)v); break;
  case 4: vd_put_be16(blk + k * 2, (uint16_t)v); break;
  default: blk[k] = (uint8_t)v;
  }
}

/* Write into the image, keeping file_size the end of what was written. */
static int
q_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off)
{
  struct qcow2_priv *p = dev->priv;
  int r = vd_file_pwrite(dev->file, buf, len, off);
  if (r == 0 && off + len > p->file_size)
    p->file_size = off + len;
  return r;
}

/* Add entry I to the pending range [*LO, *HI). */
static void
q_pend_add(uint64_t *lo, uint64_t *hi, uint64_t i)
{
  if (*lo >= *hi) {
    *lo = i;
    *hi = i + 1;
    return;
  }
  *lo = i < *lo ? i : *lo;
  *hi = i + 1 > *hi ? i + 1 : *hi;
}

/* Write the table entries V[LO, HI) (big-endian, 8 bytes each) into the
 * table at OFF; the range is emptied once written. */
static int
q_pend_write(struct vd_dev *dev, const uint64_t *v, uint64_t *lo,
             uint64_t *hi, uint64_t off)
{
  if (*lo >= *hi)
    return 0;
  uint64_t n = *hi - *lo;
  uint8_t *b = malloc(n * 8);
  if (!b)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  for (uint64_t i = 0; i < n; i++)
    vd_put_be64(b + i * 8, v[*lo + i]);
  int r = q_pwrite(dev, b, n * 8, off + *lo * 8);
  free(b);
  if (r == 0)
    *lo = *hi = 0;
  return r;
}

/* A sync with RW held for writing, that callers make before writing
 * anything that names clusters: it also writes the refcount table entries
 * of refcount blocks taken since the last one (q_block), after a sync of
 * the blocks themselves and before a second sync, so that what the caller
 * writes next never names a cluster whose count is not durable. */
static int
q_sync(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  int r = vd_file_flush(dev->file);
  if (r < 0 || p->rt_pend_lo >= p->rt_pend_hi)
    return r;
  r = q_pend_write(dev, p->rt, &p->rt_pend_lo, &p->rt_pend_hi,
                   p->h.rt_off);
  return r ? r : vd_file_flush(dev->file);
}

/* Clusters taken but not yet written lie past the end of the file: extend
 * it over them before their refcounts can become durable, so that the
 * next open (which takes clusters from the end of the file) never hands
 * out a cluster that already has a refcount.  The last taken cluster is
 * unwritten while the file ends before it (every write covers a whole
 * taken cluster). */
static int
q_extend(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  if (p->file_size >= p->next_free)
    return 0;
  uint8_t *z = calloc(1, p->cluster);
  if (!z)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = q_pwrite(dev, z, p->cluster, p->next_free - p->cluster);
  free(z);
  return r;
}

/* Take N clusters at the end of the file (no refcount yet). */
static uint64_t
q_take(struct qcow2_priv *p, uint64_t n)
{
  uint64_t off = p->next_free;
  p->next_free += n * p->cluster;
  return off;
}

static int q_ref_add(struct vd_dev *dev, uint64_t off, uint64_t n,
                     int delta);

/* Write refcount table entry I at once (q_drop_refblocks; a new block's
 * entry waits for the next sync instead, q_block). */
static int
q_rt_set(struct vd_dev *dev, uint64_t i, uint64_t v)
{
  struct qcow2_priv *p = dev->priv;
  p->rt[i] = v;
  uint8_t b[8];
  vd_put_be64(b, v);
  return q_pwrite(dev, b, 8, p->h.rt_off + i * 8);
}

/* Grow the refcount table so that entry NEED exists: a new, larger table
 * at the end of the file, covered by its own refcounts, written and
 * synced before the header points at it; the old table is then freed. */
static int
q_rt_grow(struct vd_dev *dev, uint64_t need)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t per_c = p->cluster / 8;
  uint64_t rpb = p->rpb;
  uint64_t n = p->rt_entries * 2 > need + 1 ? p->rt_entries * 2 : need + 1;
  n = vd_round_up(n, per_c);
  /* The new table and the blocks covering it must fit in it. */
  while (((p->next_free >> p->h.cluster_bits) + n / per_c + 8) / rpb + 1 > n)
    n += per_c;
  if (n * 8 > QCOW2_MAX_RT_BYTES)
    return vd_set_error(EFBIG, "%s: the refcount table would exceed qemu's "
                        "%" PRIu64 " MiB", dev->path, QCOW2_MAX_RT_BYTES >> 20);
  uint64_t *nrt = calloc(n, 8);
  if (!nrt)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  memcpy(nrt, p->rt, p->rt_entries * 8);
  uint64_t *ort = p->rt, oentries = p->rt_entries;
  uint64_t ooff = p->h.rt_off, oclusters = p->h.rt_clusters;
  uint64_t tclusters = n / per_c;
  p->rt = nrt;
  p->rt_entries = n;
  p->rt_staging = true;
  uint64_t t = q_take(p, tclusters);
  int r = q_ref_add(dev, t, tclusters, 1);
  p->rt_staging = false;
  uint8_t *buf = NULL;
  if (r == 0 && !(buf = malloc(n * 8)))
    r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  if (r == 0) {
    for (uint64_t i = 0; i < n; i++)
      vd_put_be64(buf + i * 8, nrt[i]);
    r = q_pwrite(dev, buf, n * 8, t);
  }
  free(buf);
  if (r == 0)
    r = q_sync(dev);
  if (r == 0) {
    uint8_t hb[12];
    vd_put_be64(hb, t);
    vd_put_be32(hb + 8, (uint32_t)tclusters);
    r = q_pwrite(dev, hb, 12, 48);
  }
  if (r == 0)
    r = q_sync(dev);
  if (r < 0) {
    /* The header still names the old table: what was taken leaks. */
    free(nrt);
    p->rt = ort;
    p->rt_entries = oentries;
    return r;
  }
  free(ort);
  p->h.rt_off = t;
  p->h.rt_clusters = (uint32_t)tclusters;
  return q_ref_add(dev, ooff, oclusters, -1);
}

/* Make sure refcount block BI exists; its offset in *OFF. */
static int
q_block(struct vd_dev *dev, uint64_t bi, uint64_t *off)
{
  struct qcow2_priv *p = dev->priv;
  int r;
  if (bi >= p->rt_entries && (r = q_rt_grow(dev, bi)) < 0)
    return r;
  uint64_t b = p->rt[bi] & QCOW2_OFFSET_MASK;
  if (b) {
    *off = b;
    return 0;
  }
  b = q_take(p, 1);
  uint64_t self = b >> p->h.cluster_bits;
  memset(p->rb, 0, p->cluster);
  p->rb_off = 0;
  if (self / p->rpb == bi)
    rc_put(p, p->rb, self % p->rpb, 1);
  if ((r = q_pwrite(dev, p->rb, p->cluster, b)) < 0)
    return r;
  if (self / p->rpb != bi && (r = q_ref_add(dev, b, 1, 1)) < 0)
    return r;
  /* The block (and its own count) durable before the table names it: the
   * entry is written by the next sync (q_sync), which comes before
   * anything names a cluster the block counts; a table being built is
   * written whole, after a sync. */
  p->rt[bi] = b;
  if (!p->rt_staging)
    q_pend_add(&p->rt_pend_lo, &p->rt_pend_hi, bi);
  *off = b;
  return 0;
}

/* Add DELTA (+1 / -1) to the refcounts of the N clusters from OFF. */
static int
q_ref_add(struct vd_dev *dev, uint64_t off, uint64_t n, int delta)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t c = off >> p->h.cluster_bits, end = c + n;
  uint64_t max = p->h.refcount_order == 6 ? UINT64_MAX
               : (UINT64_C(1) << (1u << p->h.refcount_order)) - 1;
  unsigned w = (1u << p->h.refcount_order) / 8;
  int r0 = delta > 0 ? q_extend(dev) : 0;
  if (r0 < 0)
    return r0;
  while (c < end) {
    uint64_t bi = c / p->rpb, b;
    if (delta < 0 && (bi >= p->rt_entries || !p->rt[bi]))
      return vd_set_error(EIO, "%s: cluster 0x%" PRIx64 " to free has no "
                          "refcount block", dev->path,
                          c << p->h.cluster_bits);
    int r = q_block(dev, bi, &b);
    if (r < 0)
      return r;
    if (p->rb_off != b) {
      if ((r = vd_file_pread(dev->file, p->rb, p->cluster, b)) < 0) {
        p->rb_off = 0;
        return r;
      }
      p->rb_off = b;
    }
    uint64_t k0 = c % p->rpb, k = k0;
    for (; k < p->rpb && c < end; k++, c++) {
      uint64_t v = rc_get(p, p->rb, k);
      if ((delta > 0 && v == max) || (delta < 0 && v == 0)) {
        p->rb_off = 0;
        return vd_set_error(EIO, "%s: refcount of cluster 0x%" PRIx64
                            " would %s", dev->path, c << p->h.cluster_bits,
                            delta > 0 ? "overflow" : "drop below zero");
      }
      rc_put(p, p->rb, k, delta > 0 ? v + 1 : v - 1);
    }
    if ((r = q_pwrite(dev, p->rb + k0 * w, (k - k0) * w,
                            b + k0 * w)) < 0) {
      p->rb_off = 0;
      return r;
    }
  }
  return 0;
}

/* The host clusters an L2 entry E holds (for freeing): *OFF, *N. */
static void
q_entry_clusters(const struct qcow2_priv *p, uint64_t e, uint64_t *off,
                 uint64_t *n)
{
  if (e & QCOW2_OFLAG_COMPRESSED) {
    unsigned shift = 62 - (p->h.cluster_bits - 8);
    uint64_t coff = e & ((UINT64_C(1) << shift) - 1);
    uint64_t nsec = ((e & ~QCOW2_OFLAG_COPIED & ~QCOW2_OFLAG_COMPRESSED)
                     >> shift) + 1;
    uint64_t s = coff & ~(uint64_t)511, end = s + nsec * 512;
    *off = s & ~(uint64_t)(p->cluster - 1);
    *n = (end - *off + p->cluster - 1) >> p->h.cluster_bits;
    return;
  }
  *off = e & QCOW2_OFFSET_MASK;
  *n = *off ? 1 : 0;
}

/* ---- dirty L2 entries ---- */

/* Before an L2 entry that may name a reserved cluster is written (any L2
 * write: a table read back from the cache carries the entries waiting in
 * it), the refcounts of clusters reserved or just taken, and the data
 * copied from a backing file into reserved clusters, are made durable.
 * RW held for writing. */
static int
q_resv_durable(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  if (p->deps_seq == p->deps_synced && p->rt_pend_lo >= p->rt_pend_hi)
    return 0;
  uint64_t seq = p->deps_seq;
  int r = q_sync(dev);
  if (r == 0)
    p->deps_synced = seq;
  return r;
}

/* Write the L2 entries the cache holds ahead of the file (entries naming
 * reserved clusters, qcow2_l2_cache_dirty), table by table, then the L1
 * entries of new tables (q_l2_new); a table stays dirty if its write
 * fails.  RW held for writing (no entry changes meanwhile). */
static int
q_l2_writeback(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  if (!__atomic_load_n(&p->l2_dirty, __ATOMIC_ACQUIRE) &&
      p->l1_pend_lo >= p->l1_pend_hi)
    return 0;
  int r = q_resv_durable(dev);
  if (r < 0)
    return r;
  uint8_t *buf = malloc(p->cluster);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  for (unsigned i = 0; i < QCOW2_L2_SLOTS && r == 0; i++) {
    struct qcow2_l2_slot *sl = &p->slots[i];
    pthread_mutex_lock(&p->cache_lock);
    bool dirty = sl->dirty;
    uint64_t off = sl->off + (uint64_t)sl->lo * 8;
    size_t len = (size_t)(sl->hi - sl->lo + 1) * 8;
    if (dirty)
      memcpy(buf, sl->data + (size_t)sl->lo * 8, len);
    pthread_mutex_unlock(&p->cache_lock);
    if (!dirty || (r = q_pwrite(dev, buf, len, off)) < 0)
      continue;
    pthread_mutex_lock(&p->cache_lock);
    sl->dirty = false;
    __atomic_store_n(&p->l2_dirty, p->l2_dirty - 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&p->cache_lock);
  }
  free(buf);
  return r ? r : q_pend_write(dev, p->l1, &p->l1_pend_lo, &p->l1_pend_hi,
                              p->h.l1_off);
}

/* A new L2 table (TABLE, for L1 entry L1I, at L2OFF) is written whole
 * with no sync before or after: nothing names it until its L1 entry is
 * written, which waits, like the entries in the cache, for the next
 * write-back (usually the next flush's), after a sync of the table and of
 * what it names (q_resv_durable).  Such a sync under the writer's lock,
 * twice per table, also wrote out every dirty page of the image: a
 * sequential write to a fresh image stalled at every table (512 MiB with
 * 64 KiB clusters). */
static int
q_l2_new(struct vd_dev *dev, uint64_t l1i, uint64_t l2off,
         const uint8_t *table)
{
  struct qcow2_priv *p = dev->priv;
  int r = q_pwrite(dev, table, p->cluster, l2off);
  if (r < 0)
    return r;
  qcow2_l2_cache_update(dev, l2off, table);
  p->l1[l1i] = l2off | QCOW2_OFLAG_COPIED;
  p->deps_seq++;
  q_pend_add(&p->l1_pend_lo, &p->l1_pend_hi, l1i);
  return 0;
}

/* ---- reserved clusters ---- */

#define Q_RESV_CLUSTERS 64
#define Q_RESV_MAX_BYTES (UINT64_C(64) << 20)

static int q_cut_file(struct vd_dev *dev);

/* The reserve doubles at each fill, from 64 clusters up to 64 MiB (or 64
 * clusters if they are larger) and at most the image's cluster count:
 * a sync per 1024 allocating writes with 64 KiB clusters at most. */
static uint64_t
q_resv_size(const struct qcow2_priv *p)
{
  uint64_t max = Q_RESV_MAX_BYTES / p->cluster;
  if (max < Q_RESV_CLUSTERS)
    max = Q_RESV_CLUSTERS;
  uint64_t n = p->resv_fills < 16 ? (uint64_t)Q_RESV_CLUSTERS << p->resv_fills
                                  : max;
  n = n < max ? n : max;
  uint64_t all = (p->h.size + p->cluster - 1) / p->cluster;
  return n < all ? n : all;
}

/* Reserve at least N clusters for new data clusters where nothing was
 * allocated before: their refcounts are raised here, once, instead of
 * once per allocating write, and made durable by the next sync that comes
 * before an L2 entry is written (q_resv_durable), not here: the fill
 * holds the writer's lock, and a sync here would also wait for every data
 * write since the last one.  Without a backing file such a cluster can
 * then be named by its L2 entry right after its data is written, with no
 * sync between: a crash that keeps the entry but not the data shows the
 * cluster's zeros (fresh space at the end of the file), which is what the
 * cluster read before, and a write not yet flushed may read either way.
 * Over a backing file the cluster holds data copied from it, which the
 * cluster's zeros would lose: that copy is synced before any entry is
 * written (deps_seq).  A crash leaks the reserved clusters not yet
 * named (qemu-img check: leaks); a clean close gives them back. */
static int
q_resv_fill(struct vd_dev *dev, uint64_t n)
{
  struct qcow2_priv *p = dev->priv;
  if (n < q_resv_size(p))
    n = q_resv_size(p);
  uint64_t t = q_take(p, n);
  p->deps_seq++;
  /* Allocated in the file at once (unwritten: reads zeros), so that the
   * small writes to come land in one extent instead of one each; not
   * where the file system cannot. */
  (void)vd_file_allocate(dev->file, t, n * p->cluster);
  int r = q_ref_add(dev, t, n, 1);
  if (r < 0)
    return r;
  p->resv = t;
  p->resv_end = t + n * p->cluster;
  p->resv_fills++;
  return 0;
}

void
qcow2_resv_release(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  if (!p->rw_init)
    return;
  pthread_rwlock_wrlock(&p->rw);
  if (!p->failed && (q_l2_writeback(dev) < 0 ||
                     (p->rt_pend_lo < p->rt_pend_hi && q_sync(dev) < 0)))
    p->failed = true;
  if (p->resv < p->resv_end && !p->failed && p->rt && p->rb) {
    uint64_t n = (p->resv_end - p->resv) >> p->h.cluster_bits;
    /* Named by nothing: their space goes back even where the file cannot
     * be cut (a table taken after them). */
    (void)vd_file_punch(dev->file, p->resv, p->resv_end - p->resv);
    if (q_ref_add(dev, p->resv, n, -1) == 0)
      (void)q_cut_file(dev);
  }
  p->resv = p->resv_end = 0;
  p->resv_fills = 0;
  pthread_rwlock_unlock(&p->rw);
}

/* ---- segments: the clusters of one request under one L2 table ---- */

enum q_mode { W_WRITE, W_ZERO, W_DISCARD };

struct q_upd {
  uint32_t idx;
  uint64_t e;                     /* new entry */
  uint64_t old;                   /* entry to free, 0 if none */
};

static int
q_segment(struct vd_dev *dev, enum q_mode mode, const uint8_t *buf,
          uint64_t off, uint64_t len, struct q_upd *u, uint8_t *cb,
          uint8_t *table)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t cl = off >> p->h.cluster_bits;
  uint64_t l1i = cl / p->l2_entries;
  uint64_t l2off = p->l1[l1i] & QCOW2_OFFSET_MASK;
  bool new_l2 = false;
  unsigned nu = 0;
  int r;

  /* New clusters where nothing was allocated come from the reserve (no
   * sync per write). */
  bool reserve = mode == W_WRITE;
  if (reserve && p->resv >= p->resv_end &&
      (r = q_resv_fill(dev, (off % p->cluster + len + p->cluster - 1) /
                       p->cluster)) < 0)
    return r;
  uint64_t start_free = p->next_free;

  if (l2off && !(p->l1[l1i] & QCOW2_OFLAG_COPIED))
    return vd_set_error(EROFS, "%s: L2 table %" PRIu64 " is shared (no "
                        "COPIED flag): writing it is not supported",
                        dev->path, l1i);
  if (l2off) {
    if ((r = qcow2_l2_table(dev, l2off, table)) < 0)
      return r;
  } else {
    memset(table, 0, p->cluster);
    l2off = q_take(p, 1);
    new_l2 = true;
  }
  bool lazy = !new_l2;            /* every update names a reserved cluster */
  while (len) {
    uint64_t cstart = off & ~(uint64_t)(p->cluster - 1);
    uint64_t coff = off - cstart;
    uint64_t n = p->cluster - coff < len ? p->cluster - coff : len;
    uint64_t cend = cstart + p->cluster;
    bool full = coff == 0 && (n == p->cluster || off + n >= dev->size);
    uint32_t idx = (uint32_t)((cstart >> p->h.cluster_bits) % p->l2_entries);
    uint64_t e = vd_get_be64(table + (size_t)idx * 8);
    uint64_t host = e & QCOW2_OFFSET_MASK;
    bool compressed = e & QCOW2_OFLAG_COMPRESSED;
    if (!compressed && host && ((host & (p->cluster - 1)) ||
                                host >= p->file_size))
      return vd_set_error(EIO, "%s: L2 entry of cluster %" PRIu64 " points "
                          "at 0x%" PRIx64 ", unaligned or past the end of "
                          "the file", dev->path,
                          cstart >> p->h.cluster_bits, host);
    enum q_mode m = mode;
    if (m == W_ZERO && !full)
      m = W_WRITE;                /* buf is NULL: zeros */
    if (m == W_DISCARD && !full)
      goto next;                  /* advisory */
    if (m == W_WRITE) {
      if (!compressed && host && (e & QCOW2_OFLAG_COPIED) &&
          !(e & QCOW2_OFLAG_ZERO)) {
        r = buf ? q_pwrite(dev, buf, n, host + coff)
                : vd_file_zero(dev->file, host + coff, n, true, false);
        if (r < 0)
          return r;
        goto next;
      }
      bool from_resv = reserve && e == 0 && p->resv < p->resv_end;
      if (from_resv && !p->h.backing_off) {
        /* A reserved cluster is fresh space, zeros, as the unallocated
         * cluster read: only the new bytes are written. */
        uint64_t nh = p->resv;
        p->resv += p->cluster;
        if (buf && (r = q_pwrite(dev, buf, n, nh + coff)) < 0)
          return r;
        u[nu++] = (struct q_upd){ idx, nh | QCOW2_OFLAG_COPIED, 0 };
        goto next;
      }
      /* A new cluster: what the cluster read before, then the new bytes
       * (copy-on-write from the backing file, a zero or a compressed
       * cluster).  An unallocated cluster over a backing file takes a
       * reserved one: its entry may then wait in the cache like the
       * others, since the copied data, like the reserve's refcounts, is
       * made durable before any L2 entry is written (q_resv_durable). */
      if (!from_resv)
        lazy = false;
      if (n < p->cluster)
        memset(cb, 0, p->cluster);
      if (!full) {
        uint64_t have = cend <= dev->size ? p->cluster : dev->size - cstart;
        if ((r = qcow2_read_locked(dev, cb, have, cstart)) < 0)
          return r;
      }
      if (buf)
        memcpy(cb + coff, buf, n);
      else
        memset(cb + coff, 0, n);
      uint64_t nh;
      if (from_resv) {
        nh = p->resv;
        p->resv += p->cluster;
        p->deps_seq++;
      } else {
        nh = q_take(p, 1);
      }
      if ((r = q_pwrite(dev, cb, p->cluster, nh)) < 0)
        return r;
      u[nu++] = (struct q_upd){ idx, nh | QCOW2_OFLAG_COPIED,
                                host || compressed ? e : 0 };
    } else {
      /* Zero (v3) or discard: the zero flag, or unallocated where
       * nothing lies below (and in a version 2 image). */
      uint64_t ne = p->h.version >= 3 &&
                    (m == W_ZERO || p->h.backing_off) ? QCOW2_OFLAG_ZERO : 0;
      if (m == W_DISCARD && p->h.version < 3 && p->h.backing_off)
        goto next;
      if (!p->h.backing_off && e == 0)
        goto next;                /* unallocated: reads zeros already */
      if (e == ne)
        goto next;
      lazy = false;
      u[nu++] = (struct q_upd){ idx, ne, host || compressed ? e : 0 };
    }
next:
    if (buf)
      buf += n;
    off += n;
    len -= n;
  }
  if (!nu && !new_l2)
    return 0;
  if (!nu) {                       /* nothing to record after all */
    p->next_free = start_free;
    return 0;
  }
  /* Refcounts of everything taken, durable before any entry names it
   * (q_resv_durable below; an update that waits in the cache took
   * nothing). */
  bool took = p->next_free > start_free;
  if (took && (r = q_ref_add(dev, start_free, (p->next_free - start_free) >>
                             p->h.cluster_bits, 1)) < 0)
    return r;
  uint32_t lo = UINT32_MAX, hi = 0;
  for (unsigned i = 0; i < nu; i++) {
    vd_put_be64(table + (size_t)u[i].idx * 8, u[i].e);
    lo = u[i].idx < lo ? u[i].idx : lo;
    hi = u[i].idx > hi ? u[i].idx : hi;
  }
  /* Entries that only name reserved clusters may wait in the cache until
   * the next flush: until then the clusters are leaks after a crash, and
   * what the guest wrote was not flushed. */
  if (lazy && qcow2_l2_cache_dirty(dev, l2off, table, lo, hi))
    return 0;
  if (took)
    p->deps_seq++;                /* the refcounts just written */
  if (new_l2)                     /* nothing old in it to let go */
    return q_l2_new(dev, l1i, l2off, table);
  if ((r = q_resv_durable(dev)) < 0 ||
      (r = q_pwrite(dev, table + (size_t)lo * 8, (size_t)(hi - lo + 1) * 8,
                    l2off + (uint64_t)lo * 8)) < 0)
    return r;
  qcow2_l2_cache_update(dev, l2off, table);
  /* Old clusters are let go once no durable entry names them. */
  bool synced = false;
  for (unsigned i = 0; i < nu; i++) {
    uint64_t fo, fn;
    q_entry_clusters(p, u[i].old, &fo, &fn);
    if (!fn)
      continue;
    if (!synced && (r = q_sync(dev)) < 0)
      return r;
    synced = true;
    if ((r = q_ref_add(dev, fo, fn, -1)) < 0)
      return r;
  }
  return 0;
}

static int
q_request(struct vd_dev *dev, enum q_mode mode, const uint8_t *buf,
          uint64_t off, uint64_t len)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t span = (uint64_t)p->cluster * p->l2_entries;
  struct q_upd *u = malloc(sizeof *u * p->l2_entries);
  uint8_t *cb = malloc(p->cluster), *table = malloc(p->cluster);
  int r = 0;
  if (!u || !cb || !table)
    r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  pthread_rwlock_wrlock(&p->rw);
  if (r == 0 && p->h.backing_off && !p->parent)
    r = vd_set_error(EROFS, "%s: opened without its backing file: writes "
                     "would lose what they must copy from it", dev->path);
  if (r == 0 && p->failed)
    r = vd_set_error(EIO, "%s: an earlier metadata update failed; the "
                     "image takes no more writes until reopened", dev->path);
  while (len && r == 0) {
    uint64_t n = span - off % span < len ? span - off % span : len;
    r = q_segment(dev, mode, buf, off, n, u, cb, table);
    /* Half-done metadata (in memory ahead of the file, or the other way
     * round): stop writing rather than build on it. */
    if (r < 0)
      p->failed = true;
    if (buf)
      buf += n;
    off += n;
    len -= n;
  }
  pthread_rwlock_unlock(&p->rw);
  free(u);
  free(cb);
  free(table);
  return r;
}

/* Overwrite, in place and under the shared lock, the head of [OFF,
 * OFF+LEN) whose clusters this image alone owns: that changes no metadata,
 * so such writes run side by side with each other and with reads (the
 * writer's path takes the lock for itself and rereads the L2 table).
 * Contiguous host clusters go in one write.  Returns the bytes written
 * (the rest needs the writer's path), or -errno. */
static int64_t
q_overwrite(struct vd_dev *dev, const uint8_t *buf, uint64_t off,
            uint64_t len)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t done = 0, run = 0, run_host = 0;
  int r = 0;
  pthread_rwlock_rdlock(&p->rw);
  while (!p->failed && done + run < len) {
    uint64_t n;
    int64_t host = qcow2_owned_data(dev, off + done + run, len - done - run,
                                    &n);
    if (host <= 0)
      break;                      /* the writer's path decides, or fails */
    if (run && run_host + run != (uint64_t)host) {
      if ((r = vd_file_pwrite(dev->file, buf + done, run, run_host)) < 0)
        break;
      done += run;
      run = 0;
    }
    if (!run)
      run_host = (uint64_t)host;
    run += n;
  }
  if (r == 0 && run && (r = vd_file_pwrite(dev->file, buf + done, run,
                                           run_host)) == 0)
    done += run;
  pthread_rwlock_unlock(&p->rw);
  return r < 0 ? r : (int64_t)done;
}

/* A write inside one unallocated cluster of an image without a backing
 * file, whose L2 table exists and is cached (the usual write to a new
 * disk): the cluster is claimed from the reserve by a dirty L2 entry under
 * the writer's lock, and the data written after the lock is let go, so
 * that the next allocation need not wait for it.  Until the data lands, a
 * read of the cluster may see its zeros, as for any write in flight; a
 * crash, as for the reserve, zeros or leaks.  1 if done, 0 if this path
 * does not apply (nothing changed), or -errno. */
static int
q_alloc_fast(struct vd_dev *dev, const uint8_t *buf, uint64_t off,
             uint64_t len)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t coff = off & (p->cluster - 1);
  if (p->h.backing_off || coff + len > p->cluster)
    return 0;
  uint64_t cl = off >> p->h.cluster_bits;
  uint64_t l1i = cl / p->l2_entries;
  uint32_t idx = (uint32_t)(cl % p->l2_entries);
  int r = 0;
  pthread_rwlock_wrlock(&p->rw);
  uint64_t l1e = p->l1[l1i], l2off = l1e & QCOW2_OFFSET_MASK;
  if (p->failed || !l2off || !(l1e & QCOW2_OFLAG_COPIED))
    goto out;                     /* the writer's path decides, or fails */
  if (p->resv >= p->resv_end && (r = q_resv_fill(dev, 1)) < 0) {
    p->failed = true;
    goto out;
  }
  uint64_t nh = p->resv;
  if (qcow2_l2_cache_claim(dev, l2off, idx, nh | QCOW2_OFLAG_COPIED) == 1) {
    p->resv += p->cluster;
    r = 1;
  }
out:
  pthread_rwlock_unlock(&p->rw);
  if (r == 1) {
    /* The file covers the reserve (q_extend): no size to keep. */
    int w = vd_file_pwrite(dev->file, buf, len, nh + coff);
    if (w < 0)
      return w;
  }
  return r;
}

int
qcow2_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
             unsigned flags)
{
  (void)flags;                    /* FUA: the core flushes after */
  int64_t done = q_overwrite(dev, buf, off, len);
  if (done < 0 || (uint64_t)done == len)
    return done < 0 ? (int)done : 0;
  const uint8_t *rest = (const uint8_t *)buf + done;
  int r = q_alloc_fast(dev, rest, off + done, len - (uint64_t)done);
  if (r != 0)
    return r < 0 ? r : 0;
  return q_request(dev, W_WRITE, rest, off + done, len - (uint64_t)done);
}

int
qcow2_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                   unsigned flags)
{
  struct qcow2_priv *p = dev->priv;
  if (p->h.version < 3) {
    /* No zero flag: zeros are written, unless nothing lies below and the
     * clusters are unallocated (they already read zeros). */
    if (flags & VD_REQ_FAST_ZERO)
      return vd_set_error(ENOTSUP, "%s: no fast zeroing in a version 2 "
                          "image", dev->path);
    return q_request(dev, W_WRITE, NULL, off, len);
  }
  return q_request(dev, W_ZERO, NULL, off, len);
}

int
qcow2_discard(struct vd_dev *dev, uint64_t off, uint64_t len, unsigned flags)
{
  (void)flags;
  return q_request(dev, W_DISCARD, NULL, off, len);
}

int
qcow2_flush(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  pthread_rwlock_rdlock(&p->rw);
  bool failed = p->failed;
  uint64_t seq = p->deps_seq;
  bool presync = seq != p->deps_synced;
  bool l1_pend = p->l1_pend_lo < p->l1_pend_hi;
  pthread_rwlock_unlock(&p->rw);
  if (failed)
    return vd_set_error(EIO, "%s: an earlier metadata update failed",
                        dev->path);
  /* L2 entries waiting in the cache, and the L1 entries of new tables,
   * are written first (under the writer's lock: no entry changes
   * meanwhile).  A write that completed before this flush began dirtied
   * its table (or made it) before it completed, so it is seen here. */
  if (l1_pend || __atomic_load_n(&p->l2_dirty, __ATOMIC_ACQUIRE)) {
    /* What they may name is made durable first, without the lock, so
     * that writes go on meanwhile: all that deps_seq counts up to SEQ was
     * written within a hold of the writer's lock that ended before this
     * flush read it, so this sync covers it, and q_l2_writeback syncs
     * again (under the lock) only for what came since. */
    int r = presync ? vd_file_flush(dev->file) : 0;
    pthread_rwlock_wrlock(&p->rw);
    if (r == 0 && presync && p->deps_synced < seq)
      p->deps_synced = seq;
    if (r == 0)
      r = p->failed ? vd_set_error(EIO, "%s: an earlier metadata update "
                                   "failed", dev->path)
                    : q_l2_writeback(dev);
    if (r < 0)
      p->failed = true;
    pthread_rwlock_unlock(&p->rw);
    if (r < 0)
      return r;
  }
  /* Nothing is held for the fdatasync: metadata is written through, in
   * crash order (above), so the file is consistent at any moment, and a
   * flush need not wait for writes still in progress (nor stop them).
   * Refcount table entries still waiting (q_block) may go on waiting:
   * nothing durable names a cluster their blocks count. */
  return vd_file_flush(dev->file);
}

/* ---- resize ---- */

/* Write the header's size and L1 table (L1OFF, L1SIZE): one write of
 * bytes 24..47, then a sync. */
static int
q_header_size(struct vd_dev *dev, uint64_t size, uint64_t l1off,
              uint32_t l1size)
{
  uint8_t hb[24];
  vd_put_be64(hb, size);
  vd_put_be32(hb + 8, 0);                 /* crypt_method: open refused others */
  vd_put_be32(hb + 12, l1size);
  vd_put_be64(hb + 16, l1off);
  int r = q_pwrite(dev, hb, sizeof hb, 24);   /* inside one sector */
  return r ? r : q_sync(dev);
}

/* Grow the L1 table to NEED entries: a new table at the end of the file,
 * its refcounts and contents durable before the header names it (the
 * size unchanged), the old table freed after; a crash in between leaks
 * only.  RW held for writing. */
static int
q_l1_grow(struct vd_dev *dev, uint32_t need)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t bytes = vd_round_up((uint64_t)need * 8, p->cluster);
  uint64_t n = bytes / p->cluster;
  uint64_t *nl1 = calloc(need, 8);
  uint8_t *buf = calloc(1, bytes);
  int r = 0;
  if (!nl1 || !buf)
    r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  uint64_t t = q_take(p, n);
  if (r == 0) {
    for (uint32_t i = 0; i < p->l1_size; i++) {
      nl1[i] = p->l1[i];
      vd_put_be64(buf + (uint64_t)i * 8, p->l1[i]);
    }
    r = q_pwrite(dev, buf, bytes, t);
  }
  if (r == 0)
    r = q_ref_add(dev, t, n, 1);
  if (r == 0)
    r = q_sync(dev);
  if (r == 0)
    r = q_header_size(dev, p->h.size, t, need);
  free(buf);
  if (r < 0) {
    free(nl1);
    return r;
  }
  uint64_t ooff = p->h.l1_off;
  uint64_t on = vd_round_up((uint64_t)p->l1_size * 8, p->cluster) / p->cluster;
  free(p->l1);
  p->l1 = nl1;
  p->l1_size = p->h.l1_size = need;
  p->h.l1_off = t;
  return ooff && on ? q_ref_add(dev, ooff, on, -1) : 0;
}

/* The last cluster from cluster FIRST on with a non-zero refcount:
 * *LAST, *ANY false if none. */
static int
q_last_counted(struct vd_dev *dev, uint64_t first, uint64_t *last, bool *any)
{
  struct qcow2_priv *p = dev->priv;
  *any = false;
  uint8_t *blk = malloc(p->cluster);
  if (!blk)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  for (uint64_t i = first / p->rpb; i < p->rt_entries; i++) {
    if (!p->rt[i])
      continue;
    int r = vd_file_pread(dev->file, blk, p->cluster, p->rt[i]);
    if (r < 0) {
      free(blk);
      return r;
    }
    for (uint64_t k = 0; k < p->rpb; k++) {
      uint64_t c = i * p->rpb + k;
      if (c >= first && rc_get(p, blk, k)) {
        *last = c;
        *any = true;
      }
    }
  }
  free(blk);
  return 0;
}

/* ---- shrink ---- */

/* Free the clusters the N L2 entries of TABLE from K0 hold (runs of
 * adjacent clusters in one refcount update each). */
static int
q_free_entries(struct vd_dev *dev, const uint8_t *table, uint32_t k0,
               uint32_t n)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t run = 0, runn = 0;
  int r = 0;
  for (uint32_t k = k0; k < k0 + n && r == 0; k++) {
    uint64_t fo, fn;
    q_entry_clusters(p, vd_get_be64(table + (size_t)k * 8), &fo, &fn);
    if (!fn)
      continue;
    if (runn && fo == run + runn * p->cluster) {
      runn += fn;
      continue;
    }
    if (runn)
      r = q_ref_add(dev, run, runn, -1);
    run = fo;
    runn = fn;
  }
  return r == 0 && runn ? q_ref_add(dev, run, runn, -1) : r;
}

/* The L2 table of L1 entry I (its offset in *OFF, 0: none) into TABLE. */
static int
q_l2_load(struct vd_dev *dev, uint64_t i, uint8_t *table, uint64_t *off)
{
  struct qcow2_priv *p = dev->priv;
  *off = p->l1[i] & QCOW2_OFFSET_MASK;
  if (!*off)
    return 0;
  if (!(p->l1[i] & QCOW2_OFLAG_COPIED))
    return vd_set_error(EROFS, "%s: L2 table %" PRIu64 " is shared (no "
                        "COPIED flag): shrinking over it is not supported",
                        dev->path, i);
  return vd_file_pread(dev->file, table, p->cluster, *off);
}

/* Drop every cluster from cluster FIRST on (qemu's discard of the cut
 * tail): the entries of a table that stays are zeroed and synced before
 * their clusters are freed; the L1 entries of tables wholly past the end
 * are zeroed and synced before those tables and their clusters are freed
 * (the L1 table keeps its size, as qemu's).  A crash leaks at worst. */
static int
q_drop_tail(struct vd_dev *dev, uint64_t first, uint8_t *table)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t keep = first / p->l2_entries + (first % p->l2_entries != 0);
  uint64_t off;
  int r;
  if (keep > p->l1_size)
    return 0;
  if (first % p->l2_entries) {
    uint64_t i = keep - 1;
    uint32_t k0 = (uint32_t)(first % p->l2_entries);
    uint32_t n = p->l2_entries - k0;
    if ((r = q_l2_load(dev, i, table, &off)) < 0)
      return r;
    bool used = false;
    for (uint32_t k = k0; off && k < p->l2_entries; k++)
      used |= vd_get_be64(table + (size_t)k * 8) != 0;
    if (used) {
      uint8_t *old = malloc((size_t)n * 8);
      if (!old)
        return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
      memcpy(old, table + (size_t)k0 * 8, (size_t)n * 8);
      memset(table + (size_t)k0 * 8, 0, (size_t)n * 8);
      r = q_pwrite(dev, table + (size_t)k0 * 8, (size_t)n * 8,
                   off + (uint64_t)k0 * 8);
      if (r == 0) {
        qcow2_l2_cache_update(dev, off, table);
        r = q_sync(dev);
      }
      if (r == 0)
        r = q_free_entries(dev, old, 0, n);
      free(old);
      if (r < 0)
        return r;
    }
  }
  bool any = false;
  for (uint64_t i = keep; i < p->l1_size; i++) {
    if (p->l1[i] && !(p->l1[i] & QCOW2_OFLAG_COPIED))
      return vd_set_error(EROFS, "%s: L2 table %" PRIu64 " is shared (no "
                          "COPIED flag): shrinking over it is not "
                          "supported", dev->path, i);
    any |= p->l1[i] != 0;
  }
  if (!any)
    return 0;
  size_t tail = (size_t)(p->l1_size - keep) * 8;
  uint8_t *z = calloc(1, tail);
  if (!z)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  r = q_pwrite(dev, z, tail, p->h.l1_off + keep * 8);
  free(z);
  if (r == 0)
    r = q_sync(dev);
  for (uint64_t i = keep; i < p->l1_size && r == 0; i++) {
    if ((r = q_l2_load(dev, i, table, &off)) < 0 || !off)
      continue;
    p->l1[i] = 0;
    r = q_free_entries(dev, table, 0, p->l2_entries);
    if (r == 0)
      r = q_ref_add(dev, off, 1, -1);
  }
  return r;
}

/* Drop the refcount blocks that count nothing but themselves (qemu's
 * shrink of the refcount table), so that the file can be cut below them:
 * their table entries zeroed and synced, then a block counted in another
 * block is freed there.  A crash leaks at worst. */
static int
q_drop_refblocks(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t *gone = calloc(p->rt_entries, sizeof *gone);
  uint8_t *blk = malloc(p->cluster);
  int r = 0;
  if (!gone || !blk)
    r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  for (uint64_t i = 0; i < p->rt_entries && r == 0; i++) {
    uint64_t b = p->rt[i], self = b >> p->h.cluster_bits;
    if (!b || (r = vd_file_pread(dev->file, blk, p->cluster, b)) < 0)
      continue;
    bool unused = true;
    for (uint64_t k = 0; k < p->rpb && unused; k++)
      unused = rc_get(p, blk, k) == 0 ||
               (self / p->rpb == i && self % p->rpb == k);
    if (unused && (r = q_rt_set(dev, i, 0)) == 0)
      gone[i] = b;
  }
  if (r == 0)
    r = q_sync(dev);
  for (uint64_t i = 0; i < p->rt_entries && r == 0; i++) {
    uint64_t b = gone[i];
    if (b == p->rb_off)
      p->rb_off = 0;
    if (b && (b >> p->h.cluster_bits) / p->rpb != i)
      r = q_ref_add(dev, b, 1, -1);
  }
  free(gone);
  free(blk);
  return r;
}

/* Give the end of the file back: after the last cluster that holds a
 * refcount (the refcounts made durable first), as qemu's truncate does.
 * Cached L2 tables past the new end are forgotten (their offsets may be
 * taken again). */
static int
q_cut_file(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t last;
  bool any;
  int r = q_sync(dev);
  if (r == 0)
    r = q_last_counted(dev, 0, &last, &any);
  if (r < 0 || !any)
    return r;
  uint64_t end = (last + 1) * p->cluster;
  if (end >= p->file_size)
    return 0;
  if ((r = vd_file_truncate(dev->file, end)) < 0 || (r = q_sync(dev)) < 0)
    return r;
  p->file_size = p->next_free = end;
  pthread_mutex_lock(&p->cache_lock);
  for (unsigned i = 0; i < QCOW2_L2_SLOTS; i++)
    if (p->slots[i].off >= end)
      p->slots[i].off = 0;
  pthread_mutex_unlock(&p->cache_lock);
  return 0;
}

/* Shrink to SIZE (a multiple of 512 below the current size), as qemu's
 * truncate: the clusters past the new end dropped (q_drop_tail), and the
 * refcount blocks left counting nothing, then the header takes the new
 * size, then the file is cut.  A power cut leaves the
 * old size (the tail partly dropped: it reads zeros, the bytes below SIZE
 * intact) or the new one, with at worst leaked clusters.  RW held for
 * writing. */
static int
q_shrink(struct vd_dev *dev, uint64_t size)
{
  struct qcow2_priv *p = dev->priv;
  uint8_t *table = malloc(p->cluster);
  if (!table)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  /* q_drop_tail reads the tables from the file. */
  int r = q_l2_writeback(dev);
  if (r == 0)
    r = q_drop_tail(dev, vd_round_up(size, p->cluster) >> p->h.cluster_bits,
                    table);
  free(table);
  if (r == 0)
    r = q_drop_refblocks(dev);
  if (r == 0)
    r = q_header_size(dev, size, p->h.l1_off, p->l1_size);
  if (r < 0)
    return r;
  p->h.size = dev->size = size;
  return q_cut_file(dev);
}

/* vd_truncate.  Shrinking (SIZE a multiple of 512, as qemu asks):
 * q_shrink.  Growing: to SIZE rounded up to 512 bytes.  In crash order:
 * the L1 table grows first (the old size still recorded); where a backing
 * file longer than the old size would show through the new space, that
 * space is zeroed, as qemu's truncate does; only then does the header take
 * the new size.  A power cut leaves the old size or the new one, never the
 * new size over unzeroed backing bytes. */
int
qcow2_truncate(struct vd_dev *dev, uint64_t size, unsigned flags)
{
  (void)flags;                    /* the engine checked VD_TRUNCATE_SHRINK */
  struct qcow2_priv *p = dev->priv;
  uint64_t old = dev->size;
  int r;
  if (size < old) {
    if (size % 512)
      return vd_set_error(EINVAL, "%s: the new size must be a multiple of "
                          "512", dev->path);
    pthread_rwlock_wrlock(&p->rw);
    r = p->failed ? vd_set_error(EIO, "%s: an earlier metadata update "
                                 "failed", dev->path)
                  : q_shrink(dev, size);
    if (r < 0)
      p->failed = true;
    pthread_rwlock_unlock(&p->rw);
    return r;
  }
  size = vd_round_up(size, 512);
  if (size == old)
    return 0;
  uint64_t span = (uint64_t)p->cluster * p->l2_entries;
  uint64_t need = size / span + (size % span != 0);
  if (need * 8 > QCOW2_MAX_L1_BYTES)
    return vd_set_error(EFBIG, "%s: %" PRIu64 " bytes need an L1 table "
                        "larger than qemu's %" PRIu64 " MiB", dev->path,
                        size, QCOW2_MAX_L1_BYTES >> 20);
  /* What lies below decides whether the new space must be zeroed: an
   * image opened without its backing file (vdtool resize) opens it now,
   * checked as any open checks it, as qemu-img resize opens the chain. */
  r = 0;
  if (p->h.backing_off && !p->parent &&
      (r = qcow2_open_backing(dev, false)) < 0)
    return r;
  pthread_rwlock_wrlock(&p->rw);
  if (p->failed)
    r = vd_set_error(EIO, "%s: an earlier metadata update failed",
                     dev->path);
  if (r == 0 && need > p->l1_size && (r = q_l1_grow(dev, (uint32_t)need)) < 0)
    p->failed = true;
  pthread_rwlock_unlock(&p->rw);
  uint64_t below = p->parent ? vd_size(p->parent) : 0;
  if (r == 0 && below > old) {
    uint64_t end = below < size ? below : size;
    r = qcow2_write_zeroes(dev, old, end - old, 0);
    if (r == 0)
      r = qcow2_flush(dev);
  }
  if (r < 0)
    return r;
  pthread_rwlock_wrlock(&p->rw);
  r = q_header_size(dev, size, p->h.l1_off, p->l1_size);
  if (r < 0)
    p->failed = true;
  else
    p->h.size = dev->size = size;
  pthread_rwlock_unlock(&p->rw);
  return r;
}

/* ---- open for writing ---- */

const char *
qcow2_write_refusal(const struct qcow2_priv *p)
{
  const struct qcow2_header *h = &p->h;
  if (h->incompat & QCOW2_INCOMPAT_DIRTY)
    return "the image is dirty (lazy refcounts): repair it with "
           "vdtool check -r all first";
  if (h->incompat & QCOW2_INCOMPAT_CORRUPT)
    return "the image is marked corrupt: repair it with vdtool check -r all";
  if (h->nb_snapshots)
    return "writing qcow2 images with internal snapshots is not supported";
  if (p->extl2)
    return "writing qcow2 images with extended L2 entries (subclusters) is "
           "not supported";
  if (h->has_bitmaps)
    return "writing qcow2 images with persistent bitmaps is not supported";
  if (h->refcount_order < 3)
    return "writing qcow2 images with refcounts narrower than 8 bits is "
           "not supported";
  return NULL;
}

/* A power cut may keep a refcount update yet lose the write that extended
 * the file over its cluster (nothing orders two writes between syncs), so
 * clusters past the end of the file may hold refcounts.  Taking them again
 * would count them twice: allocation starts after the last one. */
static int
q_skip_taken(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t last;
  bool any;
  int r = q_last_counted(dev, p->next_free / p->cluster, &last, &any);
  if (r == 0 && any)
    p->next_free = (last + 1) * p->cluster;
  return r;
}

int
qcow2_write_setup(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  p->rpb = (uint64_t)p->cluster * 8 >> p->h.refcount_order;
  p->rt_entries = (uint64_t)p->h.rt_clusters * p->cluster / 8;
  p->next_free = vd_round_up(p->file_size, p->cluster);
  if (!(p->rt = malloc(p->rt_entries * 8)) || !(p->rb = malloc(p->cluster)))
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  uint8_t *raw = (uint8_t *)p->rt;
  int r = vd_file_pread(dev->file, raw, p->rt_entries * 8, p->h.rt_off);
  if (r < 0)
    return r;
  for (uint64_t i = 0; i < p->rt_entries; i++) {
    uint64_t v = vd_get_be64(raw + i * 8);
    uint64_t b = v & QCOW2_OFFSET_MASK;
    if (v != b || (b & (p->cluster - 1)) ||
        (b && !vd_range_ok(b, p->cluster, p->file_size)))
      return vd_set_error(EINVAL, "%s: refcount table entry %" PRIu64
                          " (0x%016" PRIx64 ") is invalid", dev->path, i, v);
    p->rt[i] = v;
  }
  return q_skip_taken(dev);
}

/* ---- create ---- */

static int
q_create_opts(const char *path, const struct vd_create_args *a,
              uint32_t *cbits, uint32_t *version, bool *lazy,
              uint32_t *rorder, uint8_t *comp)
{
  static const char *const known[] = { "cluster_size", "compat",
    "lazy_refcounts", "extended_l2", "refcount_bits", "compression_type",
    "preallocation", NULL };
  char v[64];
  uint64_t x;
  int r = vd_opt_check(a->options, known, path);
  if (r < 0)
    return r;
  *cbits = 16;
  *version = 3;
  *lazy = false;
  *rorder = 4;
  *comp = QCOW2_COMP_ZLIB;
  if ((r = vd_opt_get(a->options, "cluster_size", v, sizeof v)) < 0)
    return r;
  if (r == 1) {
    if (vd_parse_size(v, &x) < 0 || !vd_is_pow2(x) || x < 512 ||
        x > (1u << QCOW2_MAX_CLUSTER_BITS))
      return vd_set_error(EINVAL, "%s: cluster_size %s is not a power of two "
                          "between 512 and 2M", path, v);
    *cbits = (uint32_t)__builtin_ctzll(x);
  }
  if ((r = vd_opt_get(a->options, "compat", v, sizeof v)) < 0)
    return r;
  if (r == 1) {
    if (strcmp(v, "0.10") == 0 || strcmp(v, "v2") == 0)
      *version = 2;
    else if (strcmp(v, "1.1") != 0 && strcmp(v, "v3") != 0)
      return vd_set_error(EINVAL, "%s: compat '%s' (0.10 or 1.1)", path, v);
  }
  if ((r = vd_opt_get(a->options, "lazy_refcounts", v, sizeof v)) < 0)
    return r;
  if (r == 1) {
    if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0)
      return vd_set_error(EINVAL, "%s: lazy_refcounts '%s' (on or off)",
                          path, v);
    *lazy = strcmp(v, "on") == 0;
    if (*lazy && *version < 3)
      return vd_set_error(EINVAL, "%s: lazy_refcounts needs compat=1.1",
                          path);
  }
  if ((r = vd_opt_get(a->options, "extended_l2", v, sizeof v)) < 0)
    return r;
  if (r == 1 && strcmp(v, "off") != 0)
    return vd_set_error(ENOTSUP, "%s: extended_l2=%s is not supported "
                        "(vdisk does not write subclusters)", path, v);
  if ((r = vd_opt_get(a->options, "preallocation", v, sizeof v)) < 0)
    return r;
  if (r == 1 && strcmp(v, "off") != 0)
    return vd_set_error(ENOTSUP, "%s: preallocation=%s is not supported "
                        "(off only)", path, v);
  if ((r = vd_opt_get(a->options, "refcount_bits", v, sizeof v)) < 0)
    return r;
  if (r == 1) {
    unsigned long b = strtoul(v, NULL, 10);
    if (b != 8 && b != 16 && b != 32 && b != 64)
      return vd_set_error(EINVAL, "%s: refcount_bits %s (vdisk writes 8, 16, "
                          "32 or 64)", path, v);
    *rorder = (uint32_t)__builtin_ctzl(b);
    if (*version < 3 && b != 16)
      return vd_set_error(EINVAL, "%s: refcount_bits other than 16 needs "
                          "compat=1.1", path);
  }
  if ((r = vd_opt_get(a->options, "compression_type", v, sizeof v)) < 0)
    return r;
  if (r == 1) {
    if (strcmp(v, "zstd") == 0)
      *comp = QCOW2_COMP_ZSTD;
    else if (strcmp(v, "zlib") != 0)
      return vd_set_error(EINVAL, "%s: compression_type '%s' (zlib or zstd)",
                          path, v);
    if (*comp == QCOW2_COMP_ZSTD && *version < 3)
      return vd_set_error(EINVAL, "%s: compression_type=zstd needs "
                          "compat=1.1", path);
  }
  return 0;
}

/* Open the backing file named for a new image at PATH (relative names are
 * relative to PATH's folder, as qemu): its size and format. */
static int
q_create_backing(const char *path, const struct vd_create_args *a,
                 uint64_t *size, char *fmt, size_t fmtlen)
{
  char tmp[PATH_MAX], full[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", path);
  const char *dir = dirname(tmp);
  int k = a->backing[0] == '/' || strcmp(dir, ".") == 0
          ? snprintf(full, sizeof full, "%s", a->backing)
          : snprintf(full, sizeof full, "%s/%s", dir, a->backing);
  if (k < 0 || (size_t)k >= sizeof full)
    return vd_set_error(ENAMETOOLONG, "%s: backing file name too long", path);
  struct vd_dev *b;
  int r = vd_open(full, a->backing_format, VD_OPEN_NOLOCK | VD_OPEN_NOPARENT,
                  &b);
  if (r < 0)
    return vd_prefix_error(-r, "%s: backing file", path);
  if (*size == 0)
    *size = vd_size(b);
  snprintf(fmt, fmtlen, "%s", vd_format(b));
  vd_close(b);
  return 0;
}

int
qcow2_create(const char *path, const struct vd_create_args *a)
{
  uint32_t cbits, version, rorder;
  bool lazy;
  uint8_t comp;
  int r = q_create_opts(path, a, &cbits, &version, &lazy, &rorder, &comp);
  if (r < 0)
    return r;
  uint64_t size = a->size;
  char bfmt[32] = "";
  size_t blen = 0;
  if (a->backing) {
    blen = strlen(a->backing);
    if (blen == 0 || blen > QCOW2_MAX_BACKING_NAME)
      return vd_set_error(EINVAL, "%s: backing file name is empty or longer "
                          "than %u bytes", path, QCOW2_MAX_BACKING_NAME);
    if ((r = q_create_backing(path, a, &size, bfmt, sizeof bfmt)) < 0)
      return r;
  }
  uint64_t cluster = UINT64_C(1) << cbits;
  uint64_t l2e = cluster / 8, rpb = cluster * 8 >> rorder;
  if (size > (UINT64_C(1) << 62) || (size / (cluster * l2e) + 1) * 8 >
      QCOW2_MAX_L1_BYTES)
    return vd_set_error(EINVAL, "%s: size %" PRIu64 " is too large for "
                        "%" PRIu64 "-byte clusters", path, size, cluster);
  uint64_t l1 = (size + cluster * l2e - 1) / (cluster * l2e);
  uint64_t l1c = l1 ? (l1 * 8 + cluster - 1) / cluster : 1;
  uint64_t rbc = 1, rtc = 1, meta;
  for (;;) {
    meta = 1 + rtc + rbc + l1c;
    uint64_t nrb = (meta + rpb - 1) / rpb;
    uint64_t nrt = (nrb * 8 + cluster - 1) / cluster;
    if (nrb == rbc && nrt == rtc)
      break;
    rbc = nrb;
    rtc = nrt;
  }
  size_t hdr_len = version >= 3 ? 112 : QCOW2_V2_HEADER_LEN;
  size_t need = hdr_len + 8 + (bfmt[0] ? 8 + 16 : 0) + blen;
  if (need > cluster)
    return vd_set_error(EINVAL, "%s: backing file name does not fit in the "
                        "%" PRIu64 "-byte header cluster", path, cluster);
  uint8_t *h = calloc(1, cluster);
  uint8_t *blk = calloc(1, cluster);
  if (!h || !blk) {
    free(h);
    free(blk);
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  }
  uint64_t rt_off = cluster, rb_off = rt_off + rtc * cluster;
  uint64_t l1_off = rb_off + rbc * cluster;
  vd_put_be32(h, QCOW2_MAGIC);
  vd_put_be32(h + 4, version);
  vd_put_be32(h + 20, cbits);
  vd_put_be64(h + 24, size);
  vd_put_be32(h + 36, (uint32_t)l1);
  vd_put_be64(h + 40, l1_off);
  vd_put_be64(h + 48, rt_off);
  vd_put_be32(h + 56, (uint32_t)rtc);
  size_t pos = hdr_len;
  if (version >= 3) {
    vd_put_be64(h + 72, comp == QCOW2_COMP_ZSTD ? QCOW2_INCOMPAT_COMPRESSION
                                                : 0);
    vd_put_be64(h + 80, lazy ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
    vd_put_be32(h + 96, rorder);
    vd_put_be32(h + 100, (uint32_t)hdr_len);
    h[104] = comp;
  }
  if (bfmt[0]) {
    size_t fl = strlen(bfmt);
    vd_put_be32(h + pos, QCOW2_EXT_BACKING_FORMAT);
    vd_put_be32(h + pos + 4, (uint32_t)fl);
    memcpy(h + pos + 8, bfmt, fl);
    pos += 8 + vd_round_up(fl, 8);
  }
  pos += 8;                       /* the end extension, zeros */
  if (a->backing) {
    memcpy(h + pos, a->backing, blen);
    vd_put_be64(h + 8, pos);
    vd_put_be32(h + 16, (uint32_t)blen);
  }
  struct vd_file *f = NULL;
  r = vd_file_open(path, VD_FILE_RDWR | VD_FILE_CREATE | VD_FILE_TRUNC, &f);
  /* Refcounts 1 for the metadata clusters, the rest of the blocks 0. */
  struct qcow2_priv fake = { .h = { .refcount_order = rorder } };
  for (uint64_t b = 0; r == 0 && b < rbc; b++) {
    memset(blk, 0, cluster);
    for (uint64_t k = 0; k < rpb && b * rpb + k < meta; k++)
      rc_put(&fake, blk, k, 1);
    r = vd_file_pwrite(f, blk, cluster, rb_off + b * cluster);
  }
  if (r == 0) {
    memset(blk, 0, cluster);
    for (uint64_t b = 0; r == 0 && b < rtc * cluster / 8; b++) {
      if (b < rbc)
        vd_put_be64(blk + (b % (cluster / 8)) * 8, rb_off + b * cluster);
      if ((b + 1) % (cluster / 8) == 0 || b + 1 == rtc * cluster / 8) {
        r = vd_file_pwrite(f, blk, cluster, rt_off + b / (cluster / 8) *
                           cluster);
        memset(blk, 0, cluster);
      }
    }
  }
  if (r == 0)
    r = vd_file_truncate(f, meta * cluster);
  if (r == 0)
    r = vd_file_pwrite(f, h, cluster, 0);
  if (r == 0)
    r = vd_file_flush(f);
  if (f)
    vd_file_close(f);
  free(h);
  free(blk);
  return r;
}
