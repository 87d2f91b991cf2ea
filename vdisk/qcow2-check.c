/* libvdisk — qcow2 check (qemu-img check): count every reference to a
 * host cluster (header, L1 and L2 tables, data and compressed clusters,
 * the refcount structures, the snapshot table and every snapshot's
 * tables), compare with the stored refcounts, and check the COPIED flags
 * of the active tables.  A refcount above the references is a leak; below
 * them, a reference that is not counted, an entry past the end of the file
 * or a refcount that cannot hold the references are corruptions.
 *
 * Repair (-r): leaks (refcounts lowered to the references) and with "all"
 * refcounts below the references raised, in refcount blocks that exist;
 * each changed block is written and flushed, then a dirty bit is cleared
 * (the refcounts now match, which is all a lazy-refcounts image's dirty bit
 * promises to repair).  COPIED flags and dangling references are reported,
 * not changed.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "vdisk/io.h"
#include "vdisk/qcow2.h"

/* References are counted up to this; more is an overflow for any
 * refcount width below 32 bits and harmless to count past. */
#define QCK_MAX UINT32_MAX

struct qcow2_checker {
  const char *path;
  struct vd_file *f;
  struct vd_check_report *r;
  struct qcow2_header h;
  uint64_t fsz;
  uint32_t cluster;
  unsigned cb;
  uint64_t nclusters;             /* host clusters the file spans */
  uint32_t *refs;                 /* references per host cluster */
  uint64_t *rt;                   /* refcount table */
  uint64_t rt_entries;
  uint64_t per_block;             /* refcounts per refcount block */
  uint64_t guest_end;             /* for fragmentation */
  bool extl2;
  unsigned msgs;
  /* The refcount block in memory: its offset (0: none) and whether a
   * repair changed it (written before another one is read). */
  uint8_t *blk;
  uint64_t blk_off;
  bool blk_dirty;
};

static void __attribute__((format(printf, 3, 4)))
qck_msg(struct qcow2_checker *c, uint64_t *counter, const char *fmt, ...)
{
  char buf[1024];
  va_list ap;
  if (counter)
    (*counter)++;
  /* A badly damaged image would print millions: the counters keep
   * counting, the messages stop. */
  if (!c->r->message || ++c->msgs > 1000)
    return;
  int n = snprintf(buf, sizeof buf, "%s: ", c->path);
  va_start(ap, fmt);
  vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
  va_end(ap);
  c->r->message(c->r->opaque, buf);
}

/* Count a reference to every cluster of [OFF, OFF+LEN). */
static void
qck_ref(struct qcow2_checker *c, uint64_t off, uint64_t len, const char *what)
{
  if (len == 0)
    return;
  uint64_t end;
  /* By cluster, as qemu counts: the last cluster may end past the end of
   * the file (a subcluster written at the end). */
  if (vd_add_overflow(off, len, &end) || end > c->nclusters << c->cb) {
    qck_msg(c, &c->r->corruptions, "%s at 0x%" PRIx64 " (%" PRIu64 " bytes) "
            "lies past the end of the file", what, off, len);
    return;
  }
  for (uint64_t i = off >> c->cb; i <= (end - 1) >> c->cb; i++)
    if (c->refs[i] < QCK_MAX)
      c->refs[i]++;
  if (end > c->r->image_end_offset)
    c->r->image_end_offset = vd_round_up(end, c->cluster);
}

/* Write the refcount block in memory if a repair changed it. */
static int
qck_blk_write(struct qcow2_checker *c)
{
  if (!c->blk_dirty)
    return 0;
  c->blk_dirty = false;
  return vd_file_pwrite(c->f, c->blk, c->cluster, c->blk_off);
}

/* The stored refcount of host cluster I (0 where no block covers it);
 * the block that holds it stays in c->blk. */
static int
qck_refcount(struct qcow2_checker *c, uint64_t i, uint64_t *val)
{
  uint8_t *block = c->blk;
  uint64_t ti = i / c->per_block;
  if (ti >= c->rt_entries)
    return *val = 0, 0;
  uint64_t bo = c->rt[ti] & QCOW2_OFFSET_MASK;
  if (!bo || bo & (c->cluster - 1) || !vd_range_ok(bo, c->cluster, c->fsz))
    return *val = 0, 0;
  if (c->blk_off != bo) {
    int r = qck_blk_write(c);
    if (r == 0)
      r = vd_file_pread(c->f, block, c->cluster, bo);
    if (r < 0) {
      c->blk_off = 0;
      return r;
    }
    c->blk_off = bo;
  }
  unsigned bits = 1u << c->h.refcount_order;
  uint64_t k = i % c->per_block, bit = k * bits;
  const uint8_t *p = block + bit / 8;
  switch (bits) {
  case 64: *val = vd_get_be64(p); break;
  case 32: *val = vd_get_be32(p); break;
  case 16: *val = vd_get_be16(p); break;
  case 8: *val = *p; break;
  default: *val = (uint64_t)(*p >> (8 - bits - bit % 8)) & ((1u << bits) - 1);
  }
  return 0;
}

static void
qck_set_refcount(struct qcow2_checker *c, uint64_t i, uint64_t val)
{
  uint8_t *block = c->blk;
  c->blk_dirty = true;
  unsigned bits = 1u << c->h.refcount_order;
  uint64_t k = i % c->per_block, bit = k * bits;
  uint8_t *p = block + bit / 8;
  switch (bits) {
  case 64: vd_put_be64(p, val); break;
  case 32: vd_put_be32(p, (uint32_t)val); break;
  case 16: vd_put_be16(p, (uint16_t)val); break;
  case 8: *p = (uint8_t)val; break;
  default: {
    unsigned sh = 8 - bits - (unsigned)(bit % 8);
    uint8_t mask = (uint8_t)(((1u << bits) - 1) << sh);
    *p = (uint8_t)((*p & ~mask) | ((val << sh) & mask));
  }
  }
}

/* Walk the L2 table at L2OFF (of L1 table WHAT, entry L1I). ACTIVE: the
 * current state's (counts allocations, fragmentation). */
static int
qck_l2(struct qcow2_checker *c, uint64_t l2off, uint64_t l1i, bool active,
       const char *what, uint8_t *t)
{
  int r = vd_file_pread(c->f, t, c->cluster, l2off);
  if (r < 0)
    return r;
  unsigned w = c->extl2 ? 16 : 8;
  uint32_t n = c->cluster / w;
  unsigned shift = 62 - (c->cb - 8);
  for (uint32_t j = 0; j < n; j++) {
    uint64_t e = vd_get_be64(t + (size_t)j * w);
    uint64_t guest = ((l1i * n) + j) << c->cb;
    if (e & QCOW2_OFLAG_COMPRESSED) {
      uint64_t coff = e & ((UINT64_C(1) << shift) - 1);
      uint64_t nsec = ((e & ~QCOW2_OFLAG_COPIED & ~QCOW2_OFLAG_COMPRESSED)
                       >> shift) + 1;
      uint64_t clen = nsec * 512 - (coff & 511);
      if (e & QCOW2_OFLAG_COPIED)
        qck_msg(c, &c->r->corruptions, "%s: compressed cluster at guest "
                "offset 0x%" PRIx64 " has the COPIED flag", what, guest);
      qck_ref(c, coff, clen, "compressed cluster");
      if (active) {
        c->r->allocated_clusters++;
        c->r->compressed_clusters++;
      }
      continue;
    }
    uint64_t host = e & QCOW2_OFFSET_MASK;
    if (!host)
      continue;
    if (host & (c->cluster - 1)) {
      qck_msg(c, &c->r->corruptions, "%s: cluster at guest offset 0x%" PRIx64
              " points at unaligned offset 0x%" PRIx64, what, guest, host);
      continue;
    }
    qck_ref(c, host, c->cluster, "data cluster");
    if (active) {
      c->r->allocated_clusters++;
      if (c->guest_end && host != c->guest_end)
        c->r->fragmented_clusters++;
      c->guest_end = host + c->cluster;
    }
  }
  return 0;
}

/* Count the references of the L1 table at OFF (SIZE entries). */
static int
qck_l1(struct qcow2_checker *c, uint64_t off, uint32_t size, bool active,
       const char *what)
{
  if (size == 0)
    return 0;
  if ((uint64_t)size * 8 > QCOW2_MAX_L1_BYTES) {
    qck_msg(c, &c->r->corruptions, "%s of %" PRIu32 " entries is too large",
            what, size);
    return 0;
  }
  uint64_t bytes = (uint64_t)size * 8;
  if (off % 512 || !vd_range_ok(off, bytes, c->fsz)) {
    qck_msg(c, &c->r->corruptions, "%s (0x%" PRIx64 ", %" PRIu32 " entries) "
            "lies past the end of the file", what, off, size);
    return 0;
  }
  qck_ref(c, off, bytes, what);
  uint8_t *l1 = malloc(bytes), *t = malloc(c->cluster);
  int r = !l1 || !t ? vd_set_error(ENOMEM, "%s: out of memory", c->path)
          : vd_file_pread(c->f, l1, bytes, off);
  for (uint32_t i = 0; i < size && r == 0; i++) {
    uint64_t e = vd_get_be64(l1 + 8 * (size_t)i);
    uint64_t l2 = e & QCOW2_OFFSET_MASK;
    if (!l2)
      continue;
    if (l2 & (c->cluster - 1) || !vd_range_ok(l2, c->cluster, c->fsz)) {
      qck_msg(c, &c->r->corruptions, "%s entry %" PRIu32 ": L2 table at 0x%"
              PRIx64 " is unaligned or past the end of the file", what, i, l2);
      continue;
    }
    qck_ref(c, l2, c->cluster, "L2 table");
    r = qck_l2(c, l2, i, active, what, t);
  }
  free(l1);
  free(t);
  return r;
}

/* The COPIED flags of the active tables against the refcounts (qemu's
 * check_oflag_copied): set exactly when the refcount is 1. */
static int
qck_copied(struct qcow2_checker *c)
{
  uint64_t bytes = (uint64_t)c->h.l1_size * 8;
  if (!bytes || !vd_range_ok(c->h.l1_off, bytes, c->fsz) ||
      bytes > QCOW2_MAX_L1_BYTES)
    return 0;
  uint8_t *l1 = malloc(bytes), *t = malloc(c->cluster);
  int r = !l1 || !t ? vd_set_error(ENOMEM, "%s: out of memory", c->path)
          : vd_file_pread(c->f, l1, bytes, c->h.l1_off);
  unsigned w = c->extl2 ? 16 : 8;
  for (uint32_t i = 0; i < c->h.l1_size && r == 0; i++) {
    uint64_t e = vd_get_be64(l1 + 8 * (size_t)i), l2 = e & QCOW2_OFFSET_MASK;
    uint64_t rc;
    if (!l2 || l2 & (c->cluster - 1) || !vd_range_ok(l2, c->cluster, c->fsz))
      continue;
    if ((r = qck_refcount(c, l2 >> c->cb, &rc)) < 0)
      break;
    if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED))
      qck_msg(c, &c->r->corruptions, "OFLAG_COPIED L2 cluster: l1_index=%"
              PRIu32 " l1_entry=%" PRIx64 " refcount=%" PRIu64, i, e, rc);
    if ((r = vd_file_pread(c->f, t, c->cluster, l2)) < 0)
      break;
    for (uint32_t j = 0; j < c->cluster / w && r == 0; j++) {
      uint64_t x = vd_get_be64(t + (size_t)j * w), h = x & QCOW2_OFFSET_MASK;
      if ((x & QCOW2_OFLAG_COMPRESSED) || !h || h & (c->cluster - 1) ||
          h >= c->fsz)
        continue;
      if ((r = qck_refcount(c, h >> c->cb, &rc)) < 0)
        break;
      if ((rc == 1) != !!(x & QCOW2_OFLAG_COPIED))
        qck_msg(c, &c->r->corruptions, "OFLAG_COPIED data cluster: "
                "l2_entry=%" PRIx64 " refcount=%" PRIu64, x, rc);
    }
  }
  free(l1);
  free(t);
  return r;
}

static int
qck_run(struct qcow2_checker *c, unsigned fix)
{
  uint8_t *buf;
  int r;
  size_t c0 = (size_t)(c->fsz < (UINT64_C(1) << QCOW2_MAX_CLUSTER_BITS)
                       ? c->fsz : (UINT64_C(1) << QCOW2_MAX_CLUSTER_BITS));
  if (!(buf = malloc(c0 ? c0 : 1)))
    return vd_set_error(ENOMEM, "%s: out of memory", c->path);
  r = vd_file_pread(c->f, buf, c0, 0);
  if (r == 0)
    r = qcow2_header_decode(buf, c0, &c->h, c->path);
  free(buf);
  if (r < 0)
    return r;
  c->cb = c->h.cluster_bits;
  c->cluster = 1u << c->cb;
  c->extl2 = (c->h.incompat & QCOW2_INCOMPAT_EXTL2) != 0;
  c->nclusters = vd_round_up(c->fsz, c->cluster) >> c->cb;
  if (c->nclusters > (UINT64_C(1) << 31))
    return vd_set_error(EFBIG, "%s: file too large to check", c->path);
  c->per_block = (uint64_t)c->cluster * 8 >> c->h.refcount_order;
  uint64_t span = (uint64_t)c->cluster * (c->cluster / (c->extl2 ? 16 : 8));
  c->r->total_clusters = vd_round_up(c->h.size, c->cluster) >> c->cb;
  if (!(c->refs = calloc(c->nclusters ? c->nclusters : 1, sizeof *c->refs)))
    return vd_set_error(ENOMEM, "%s: out of memory", c->path);

  /* Header cluster, refcount table and blocks. */
  qck_ref(c, 0, c->cluster, "header");
  uint64_t rtbytes = (uint64_t)c->h.rt_clusters * c->cluster;
  if (!c->h.rt_off || c->h.rt_off & (c->cluster - 1) ||
      rtbytes > QCOW2_MAX_RT_BYTES || !vd_range_ok(c->h.rt_off, rtbytes,
                                                    c->fsz)) {
    qck_msg(c, &c->r->corruptions, "refcount table (0x%" PRIx64 ", %" PRIu32
            " clusters) is unaligned or lies past the end of the file",
            c->h.rt_off, c->h.rt_clusters);
    rtbytes = 0;
  } else {
    qck_ref(c, c->h.rt_off, rtbytes, "refcount table");
  }
  c->rt_entries = rtbytes / 8;
  uint8_t *raw = malloc(rtbytes ? rtbytes : 1);
  if (!raw || !(c->rt = calloc(c->rt_entries ? c->rt_entries : 1, 8))) {
    free(raw);
    return vd_set_error(ENOMEM, "%s: out of memory", c->path);
  }
  if (rtbytes && (r = vd_file_pread(c->f, raw, rtbytes, c->h.rt_off)) < 0) {
    free(raw);
    return r;
  }
  for (uint64_t i = 0; i < c->rt_entries; i++) {
    uint64_t e = vd_get_be64(raw + 8 * i), bo = e & QCOW2_OFFSET_MASK;
    c->rt[i] = e;
    if (!bo)
      continue;
    if (bo & (c->cluster - 1) || !vd_range_ok(bo, c->cluster, c->fsz)) {
      qck_msg(c, &c->r->corruptions, "refcount block %" PRIu64 " at 0x%"
              PRIx64 " is unaligned or past the end of the file", i, bo);
      c->rt[i] = 0;
      continue;
    }
    qck_ref(c, bo, c->cluster, "refcount block");
  }
  free(raw);

  /* The active L1 table and everything below it. */
  uint64_t need = c->h.size / span + (c->h.size % span != 0);
  if (c->h.l1_size < need)
    qck_msg(c, &c->r->corruptions, "L1 table holds %" PRIu32 " entries, the "
            "disk needs %" PRIu64, c->h.l1_size, need);
  if ((r = qck_l1(c, c->h.l1_off, c->h.l1_size, true, "L1 table")) < 0)
    return r;

  /* Snapshots: the table and each snapshot's tables. */
  if (c->h.nb_snapshots) {
    uint64_t len = c->h.snapshots_off < c->fsz ? c->fsz - c->h.snapshots_off
                                                : 0;
    if (len > QCOW2_MAX_SNAP_TABLE)
      len = QCOW2_MAX_SNAP_TABLE;
    struct qcow2_snapshot *s = NULL;
    size_t used = 0;
    uint8_t *tb = malloc(len ? len : 1);
    if (!tb)
      return vd_set_error(ENOMEM, "%s: out of memory", c->path);
    r = c->h.snapshots_off & (c->cluster - 1) || !len
        ? vd_set_error(EINVAL, "%s: snapshot table at 0x%" PRIx64 " is "
                       "unaligned or past the end of the file", c->path,
                       c->h.snapshots_off)
        : vd_file_pread(c->f, tb, len, c->h.snapshots_off);
    if (r == 0 && c->h.nb_snapshots > QCOW2_MAX_SNAPSHOTS)
      r = vd_set_error(EINVAL, "%s: %" PRIu32 " snapshots", c->path,
                       c->h.nb_snapshots);
    if (r == 0)
      r = qcow2_snapshots_decode(tb, len, c->h.nb_snapshots, c->h.size, &s,
                                 &used, c->path);
    free(tb);
    if (r == -EINVAL) {
      qck_msg(c, &c->r->corruptions, "%s", vd_error() + strlen(c->path) + 2);
      r = 0;
    } else if (r < 0) {
      return r;
    } else {
      qck_ref(c, c->h.snapshots_off, used, "snapshot table");
      for (uint32_t i = 0; i < c->h.nb_snapshots && r == 0; i++) {
        char what[200];
        snprintf(what, sizeof what, "snapshot %s's L1 table", s[i].id);
        r = qck_l1(c, s[i].l1_off, s[i].l1_size, false, what);
      }
      qcow2_snapshots_free(s, c->h.nb_snapshots);
      if (r < 0)
        return r;
    }
  }
  if (c->h.has_bitmaps || (c->h.autoclear & 1))
    qck_msg(c, &c->r->check_errors, "persistent bitmaps are not checked "
            "(their clusters would count as leaks)");

  /* Compare. */
  if (!(c->blk = malloc(c->cluster)))
    return vd_set_error(ENOMEM, "%s: out of memory", c->path);
  uint64_t maxrc = c->h.refcount_order == 6 ? UINT64_MAX
                   : (UINT64_C(1) << (1u << c->h.refcount_order)) - 1;
  bool changed = false;
  for (uint64_t i = 0; i < c->nclusters && r == 0; i++) {
    uint64_t rc, want = c->refs[i];
    if ((r = qck_refcount(c, i, &rc)) < 0)
      break;
    if (rc == want)
      continue;
    uint64_t bo = i / c->per_block < c->rt_entries
                  ? c->rt[i / c->per_block] & QCOW2_OFFSET_MASK : 0;
    bool have_block = bo && bo == c->blk_off;
    if (want > maxrc) {
      qck_msg(c, &c->r->corruptions, "cluster %" PRIu64 " has %" PRIu64
              " references, more than %u-bit refcounts hold", i, want,
              1u << c->h.refcount_order);
      continue;
    }
    bool leak = rc > want;
    if (have_block && ((leak && (fix & VD_CHECK_FIX_LEAKS)) ||
                       (!leak && (fix & VD_CHECK_FIX_ERRORS)))) {
      qck_set_refcount(c, i, want);
      changed = true;
      if (leak)
        c->r->leaks_fixed++;
      else
        c->r->corruptions_fixed++;
      continue;
    }
    if (leak)
      qck_msg(c, &c->r->leaks, "Leaked cluster %" PRIu64 " refcount=%" PRIu64
              " reference=%" PRIu64, i, rc, want);
    else
      qck_msg(c, &c->r->corruptions, "ERROR cluster %" PRIu64 " refcount=%"
              PRIu64 " reference=%" PRIu64, i, rc, want);
  }
  if (r == 0)
    r = qck_blk_write(c);
  if (r == 0 && changed)
    r = vd_file_flush(c->f);
  if (r == 0)
    r = qck_copied(c);
  if (r < 0)
    return r;

  /* Refcounts match now: a dirty bit (lazy refcounts) has nothing left to
   * say. */
  if (fix && (c->h.incompat & QCOW2_INCOMPAT_DIRTY) && !c->r->corruptions &&
      !c->r->leaks) {
    uint8_t be[8];
    vd_put_be64(be, c->h.incompat & ~(uint64_t)QCOW2_INCOMPAT_DIRTY);
    if ((r = vd_file_pwrite(c->f, be, 8, 72)) == 0)
      r = vd_file_flush(c->f);
  }
  return r;
}

int
qcow2_check(const char *path, unsigned flags, struct vd_check_report *rep)
{
  unsigned fix = flags & VD_CHECK_FIX_ALL;
  struct qcow2_checker c = { .path = path, .r = rep };
  int r = vd_file_open(path, fix ? VD_FILE_RDWR
                       : flags & VD_CHECK_NOLOCK ? VD_FILE_NOLOCK : 0, &c.f);
  if (r < 0)
    return r;
  if ((r = vd_file_size(c.f, &c.fsz)) == 0)
    r = qck_run(&c, fix);
  vd_file_close(c.f);
  free(c.refs);
  free(c.rt);
  free(c.blk);
  return r;
}
