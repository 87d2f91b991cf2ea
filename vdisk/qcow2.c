/* libvdisk — the qcow2 driver: open (header, extensions, L1 table,
 * snapshot table, backing file), reads through a bounded L2 cache
 * (standard, zero, compressed clusters and extended L2 subclusters),
 * block status, info, internal snapshots.  Layout in vdisk/qcow2.h; what
 * is accepted and refused in docs/qcow2.md.
 *
 * Writes live in qcow2-write.c.  An image that another writer left dirty
 * (the dirty bit with lazy refcounts, or the corrupt bit), or that holds
 * what vdisk does not write (qcow2_write_refusal), opens read-only even
 * when asked writable, and is never repaired behind the operator's back.
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
#include "vdisk/parent.h"
#include "vdisk/qcow2.h"

static const char *const qcow2_aliases[] = { NULL };

static int
qcow2_probe(const struct vd_probe_data *pd)
{
  /* The magic alone, as qemu: an unsupported version is then refused by
   * name instead of being read as raw. */
  return pd->head_len >= 8 && vd_get_be32(pd->head) == QCOW2_MAGIC ? 100 : 0;
}

/* ---- L2 tables ---- */

/* The cached copy of the L2 table at OFF, or NULL; CACHE_LOCK held.  A
 * hit counts as a use. */
static struct qcow2_l2_slot *
l2_slot_find(struct qcow2_priv *p, uint64_t off)
{
  for (unsigned i = 0; i < QCOW2_L2_SLOTS && off; i++)
    if (p->slots[i].off == off) {
      p->slots[i].used = ++p->tick;
      return &p->slots[i];
    }
  return NULL;
}

/* Keep T (one cluster, malloc'd) as the copy of the L2 table at OFF, in
 * place of the least recently used clean one unless another thread cached
 * it meanwhile; returns the buffer to free.  CACHE_LOCK held. */
static uint8_t *
l2_slot_put(struct qcow2_priv *p, uint64_t off, uint8_t *t)
{
  if (l2_slot_find(p, off))
    return t;
  struct qcow2_l2_slot *victim = NULL;
  for (unsigned i = 0; i < QCOW2_L2_SLOTS; i++)
    if (!p->slots[i].dirty &&
        (!victim || p->slots[i].used < victim->used))
      victim = &p->slots[i];
  if (!victim)
    return t;                     /* every slot dirty: not cached */
  uint8_t *old = victim->data;
  victim->data = t;
  victim->off = off;
  victim->used = ++p->tick;
  return old;
}

/* Slot S (may be NULL) may hold entries ahead of the file: it is cached,
 * and dirty already or one more dirty table is allowed; CACHE_LOCK held. */
static bool
l2_slot_may_dirty(const struct qcow2_priv *p, const struct qcow2_l2_slot *s)
{
  return s && (s->dirty || p->l2_dirty < QCOW2_L2_DIRTY_MAX);
}

/* Entries LO..HI of slot S are ahead of the file; CACHE_LOCK held. */
static void
l2_slot_mark(struct qcow2_priv *p, struct qcow2_l2_slot *s, uint32_t lo,
             uint32_t hi)
{
  if (!s->dirty) {
    s->dirty = true;
    s->lo = lo;
    s->hi = hi;
    __atomic_store_n(&p->l2_dirty, p->l2_dirty + 1, __ATOMIC_RELEASE);
  }
  s->lo = lo < s->lo ? lo : s->lo;
  s->hi = hi > s->hi ? hi : s->hi;
}

/* Read the L2 table at OFF into a new buffer, *T (one cluster). */
static int
l2_load(struct vd_dev *dev, uint64_t off, uint8_t **t)
{
  struct qcow2_priv *p = dev->priv;
  uint8_t *b = malloc(p->cluster);
  if (!b)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = vd_file_pread(dev->file, b, p->cluster, off);
  if (r < 0) {
    free(b);
    return r;
  }
  *t = b;
  return 0;
}

/* Copy entry IDX (and with extended L2 its bitmap into *BM) of the L2
 * table at OFF, through the cache. */
static int
qcow2_l2_get(struct vd_dev *dev, uint64_t off, uint32_t idx, uint64_t *e,
             uint64_t *bm)
{
  struct qcow2_priv *p = dev->priv;
  unsigned w = p->extl2 ? 16 : 8;
  pthread_mutex_lock(&p->cache_lock);
  struct qcow2_l2_slot *s = l2_slot_find(p, off);
  if (s) {
    *e = vd_get_be64(s->data + (size_t)idx * w);
    *bm = p->extl2 ? vd_get_be64(s->data + (size_t)idx * w + 8) : 0;
    pthread_mutex_unlock(&p->cache_lock);
    return 0;
  }
  pthread_mutex_unlock(&p->cache_lock);

  uint8_t *t;
  int r = l2_load(dev, off, &t);
  if (r < 0)
    return r;
  *e = vd_get_be64(t + (size_t)idx * w);
  *bm = p->extl2 ? vd_get_be64(t + (size_t)idx * w + 8) : 0;
  pthread_mutex_lock(&p->cache_lock);
  t = l2_slot_put(p, off, t);
  pthread_mutex_unlock(&p->cache_lock);
  free(t);
  return 0;
}

int
qcow2_l2_table(struct vd_dev *dev, uint64_t off, uint8_t *table)
{
  struct qcow2_priv *p = dev->priv;
  pthread_mutex_lock(&p->cache_lock);
  struct qcow2_l2_slot *s = l2_slot_find(p, off);
  if (s)
    memcpy(table, s->data, p->cluster);
  pthread_mutex_unlock(&p->cache_lock);
  if (s)
    return 0;
  uint8_t *t;
  int r = l2_load(dev, off, &t);
  if (r < 0)
    return r;
  memcpy(table, t, p->cluster);
  pthread_mutex_lock(&p->cache_lock);
  t = l2_slot_put(p, off, t);
  pthread_mutex_unlock(&p->cache_lock);
  free(t);
  return 0;
}

/* ---- mapping ---- */

enum qcow2_kind { Q_BACKING, Q_ZERO, Q_DATA, Q_COMPRESSED };

struct qcow2_map {
  enum qcow2_kind kind;
  uint64_t n;                     /* bytes from the asked offset */
  uint64_t host;                  /* Q_DATA: host offset of the offset */
  uint64_t entry;                 /* the L2 entry (0 if none) */
};

/* What [OFF, OFF+LEN) reads from, for the run of bytes inside one cluster
 * (one subcluster kind) that starts at OFF. */
static int
qcow2_map(struct vd_dev *dev, uint64_t off, uint64_t len, struct qcow2_map *m)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t cl = off >> p->h.cluster_bits;
  uint64_t coff = off & (p->cluster - 1);
  uint64_t l1i = cl / p->l2_entries;
  uint32_t l2i = (uint32_t)(cl % p->l2_entries);
  m->n = p->cluster - coff < len ? p->cluster - coff : len;
  m->host = 0;
  m->entry = 0;
  uint64_t l1e = l1i < p->l1_size ? p->l1[l1i] & QCOW2_OFFSET_MASK : 0;
  if (!l1e) {
    m->kind = Q_BACKING;
    return 0;
  }
  uint64_t e = 0, bm = 0;
  int r = qcow2_l2_get(dev, l1e, l2i, &e, &bm);
  if (r < 0)
    return r;
  m->entry = e;
  if (e & QCOW2_OFLAG_COMPRESSED) {
    m->kind = Q_COMPRESSED;
    return 0;
  }
  uint64_t host = e & QCOW2_OFFSET_MASK;
  if (host & (p->cluster - 1))
    return vd_set_error(EIO, "%s: L2 entry of cluster %" PRIu64 " points "
                        "at unaligned offset 0x%" PRIx64, dev->path, cl,
                        host);
  if (host && host >= p->file_size)
    return vd_set_error(EIO, "%s: L2 entry of cluster %" PRIu64 " points "
                        "past the end of the file (offset 0x%" PRIx64 ")",
                        dev->path, cl, host);
  if (!p->extl2) {
    if (e & QCOW2_OFLAG_ZERO) {
      if (p->h.version < 3)
        return vd_set_error(EIO, "%s: zero cluster %" PRIu64 " in a "
                            "version 2 image", dev->path, cl);
      m->kind = Q_ZERO;
    } else if (host) {
      m->kind = Q_DATA;
      m->host = host + coff;
    } else {
      m->kind = Q_BACKING;
    }
    return 0;
  }
  /* Extended L2: the subcluster bitmap decides, subcluster by subcluster. */
  uint32_t alloc = (uint32_t)bm, zero = (uint32_t)(bm >> 32);
  if (alloc & zero)
    return vd_set_error(EIO, "%s: L2 bitmap of cluster %" PRIu64 " marks "
                        "subclusters both allocated and zero", dev->path, cl);
  if (!host && alloc)
    return vd_set_error(EIO, "%s: L2 bitmap of unallocated cluster %" PRIu64
                        " marks subclusters allocated", dev->path, cl);
  uint32_t sc = (uint32_t)(coff / p->subcluster);
  int k0 = (alloc >> sc & 1) ? Q_DATA : (zero >> sc & 1) ? Q_ZERO : Q_BACKING;
  uint32_t last = sc;
  while (last + 1 < QCOW2_SUBCLUSTERS) {
    uint32_t s = last + 1;
    int k = (alloc >> s & 1) ? Q_DATA : (zero >> s & 1) ? Q_ZERO : Q_BACKING;
    if (k != k0)
      break;
    last = s;
  }
  uint64_t stop = (uint64_t)(last + 1) * p->subcluster;
  if (stop - coff < m->n)
    m->n = stop - coff;
  m->kind = (enum qcow2_kind)k0;
  if (k0 == Q_DATA)
    m->host = host + coff;
  return 0;
}

/* Read compressed cluster ENTRY into DST (one cluster). */
static int
qcow2_read_compressed(struct vd_dev *dev, uint64_t entry, uint8_t *dst)
{
  struct qcow2_priv *p = dev->priv;
  unsigned shift = 62 - (p->h.cluster_bits - 8);
  uint64_t coff = entry & ((UINT64_C(1) << shift) - 1);
  uint64_t nsec = ((entry & ~QCOW2_OFLAG_COPIED & ~QCOW2_OFLAG_COMPRESSED)
                   >> shift) + 1;
  uint64_t clen = nsec * 512 - (coff & 511);
  char where[PATH_MAX + 48];
  snprintf(where, sizeof where, "%s: compressed cluster at 0x%" PRIx64,
           dev->path, coff);
  if (coff < p->cluster || coff >= p->file_size)
    return vd_set_error(EIO, "%s: lies outside the file", where);
  if (clen > p->file_size - coff)
    clen = p->file_size - coff;     /* the last one's padding */
  uint8_t *src = malloc(clen);
  if (!src)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = vd_file_pread(dev->file, src, clen, coff);
  if (r == 0)
    r = qcow2_decompress(p->h.compression, src, clen, dst, p->cluster, where);
  free(src);
  return r;
}

/* Read LEN bytes of the file at HOST; bytes past its end read as zeros
 * (the last cluster of a file another writer did not fill). */
static int
qcow2_read_host(struct vd_dev *dev, uint8_t *buf, uint64_t len, uint64_t host)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t n = len;
  if (host + n > p->file_size) {
    n = host < p->file_size ? p->file_size - host : 0;
    memset(buf + n, 0, len - n);
  }
  return n ? vd_file_pread(dev->file, buf, n, host) : 0;
}

int
qcow2_read_locked(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  struct qcow2_priv *p = dev->priv;
  uint8_t *b = buf, *cbuf = NULL;
  int r = 0;
  while (len && r == 0) {
    struct qcow2_map m;
    if ((r = qcow2_map(dev, off, len, &m)) < 0)
      break;
    switch (m.kind) {
    case Q_DATA:
      r = qcow2_read_host(dev, b, m.n, m.host);
      break;
    case Q_ZERO:
      memset(b, 0, m.n);
      break;
    case Q_BACKING:
      r = vd_parent_pread(p->parent, b, m.n, off);
      break;
    case Q_COMPRESSED:
      if (!cbuf && !(cbuf = malloc(p->cluster))) {
        r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
        break;
      }
      r = qcow2_read_compressed(dev, m.entry, cbuf);
      if (r == 0)
        memcpy(b, cbuf + (off & (p->cluster - 1)), m.n);
      break;
    }
    b += m.n;
    off += m.n;
    len -= m.n;
  }
  free(cbuf);
  return r;
}

int64_t
qcow2_owned_data(struct vd_dev *dev, uint64_t off, uint64_t len,
                 uint64_t *n)
{
  struct qcow2_priv *p = dev->priv;
  struct qcow2_map m;
  uint64_t l1i = (off >> p->h.cluster_bits) / p->l2_entries;
  if (p->extl2 || l1i >= p->l1_size || !(p->l1[l1i] & QCOW2_OFLAG_COPIED))
    return 0;                     /* the writer's path, or its refusal */
  int r = qcow2_map(dev, off, len, &m);
  if (r < 0)
    return r;
  *n = m.n;
  return m.kind == Q_DATA && (m.entry & QCOW2_OFLAG_COPIED)
         ? (int64_t)m.host : 0;
}

static int
qcow2_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  struct qcow2_priv *p = dev->priv;
  pthread_rwlock_rdlock(&p->rw);
  int r = qcow2_read_locked(dev, buf, len, off);
  pthread_rwlock_unlock(&p->rw);
  return r;
}

void
qcow2_l2_cache_update(struct vd_dev *dev, uint64_t off, const uint8_t *table)
{
  struct qcow2_priv *p = dev->priv;
  pthread_mutex_lock(&p->cache_lock);
  struct qcow2_l2_slot *s = l2_slot_find(p, off);
  if (s)
    memcpy(s->data, table, p->cluster);
  pthread_mutex_unlock(&p->cache_lock);
  uint8_t *t = s ? NULL : malloc(p->cluster);
  if (!t)
    return;                       /* cached and updated, or left uncached */
  memcpy(t, table, p->cluster);
  pthread_mutex_lock(&p->cache_lock);
  t = l2_slot_put(p, off, t);
  pthread_mutex_unlock(&p->cache_lock);
  free(t);
}

bool
qcow2_l2_cache_dirty(struct vd_dev *dev, uint64_t off, const uint8_t *table,
                     uint32_t lo, uint32_t hi)
{
  struct qcow2_priv *p = dev->priv;
  pthread_mutex_lock(&p->cache_lock);
  struct qcow2_l2_slot *s = l2_slot_find(p, off);
  bool ok = l2_slot_may_dirty(p, s);
  if (ok) {
    /* TABLE was copied from this slot (RW held for writing since): only
     * LO..HI differ. */
    memcpy(s->data + (size_t)lo * 8, table + (size_t)lo * 8,
           (size_t)(hi - lo + 1) * 8);
    l2_slot_mark(p, s, lo, hi);
  }
  pthread_mutex_unlock(&p->cache_lock);
  return ok;
}

int
qcow2_l2_cache_claim(struct vd_dev *dev, uint64_t off, uint32_t idx,
                     uint64_t e)
{
  struct qcow2_priv *p = dev->priv;
  pthread_mutex_lock(&p->cache_lock);
  struct qcow2_l2_slot *s = l2_slot_find(p, off);
  int r = -1;
  if (l2_slot_may_dirty(p, s))
    r = vd_get_be64(s->data + (size_t)idx * 8) == 0;
  if (r == 1) {
    vd_put_be64(s->data + (size_t)idx * 8, e);
    l2_slot_mark(p, s, idx, idx);
  }
  pthread_mutex_unlock(&p->cache_lock);
  return r;
}

static int
qcow2_block_status_locked(struct vd_dev *dev, uint64_t off, uint64_t len,
                          struct vd_extent *ext)
{
  struct qcow2_priv *p = dev->priv;
  struct qcow2_map m;
  int r = qcow2_map(dev, off, len, &m);
  if (r < 0)
    return r;
  /* Merge following runs of the same kind; data only while the host
   * offsets stay contiguous (one mapping). */
  uint64_t n = m.n;
  while (n < len && m.kind != Q_COMPRESSED) {
    struct qcow2_map m2;
    if ((r = qcow2_map(dev, off + n, len - n, &m2)) < 0)
      return r;
    if (m2.kind != m.kind || (m.kind == Q_DATA && m2.host != m.host + n))
      break;
    n += m2.n;
  }
  ext->length = n;
  ext->depth = 0;
  ext->host_offset = -1;
  switch (m.kind) {
  case Q_DATA:
    ext->flags = 0;
    ext->host_offset = (int64_t)m.host;
    return 0;
  case Q_COMPRESSED:
    ext->flags = 0;
    return 0;
  case Q_ZERO:
    ext->flags = VD_EXT_ZERO;
    return 0;
  case Q_BACKING:
    break;
  }
  return vd_parent_block_status(p->parent, off, n, ext);
}

static int
qcow2_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                   struct vd_extent *ext)
{
  struct qcow2_priv *p = dev->priv;
  pthread_rwlock_rdlock(&p->rw);
  int r = qcow2_block_status_locked(dev, off, len, ext);
  pthread_rwlock_unlock(&p->rw);
  return r;
}

/* ---- backing file ---- */

/* The format to open the backing file in, or "" to probe among leaf
 * formats; -errno when the child names a format that is not followed. */
static int
qcow2_backing_format(struct vd_dev *dev, bool override, const char *cand,
                     char *fmt, size_t fmtlen)
{
  struct qcow2_priv *p = dev->priv;
  if (dev->opts.backing_format && (override || !dev->child)) {
    snprintf(fmt, fmtlen, "%s", dev->opts.backing_format);
    return 0;
  }
  const char *named = p->h.backing_fmt;
  if (named[0]) {
    /* The child's own header says it, as a VHD's parent UUID says "vpc":
     * followed for qcow2 itself and for formats that reference no other
     * file; anything else only when the operator names it. */
    const struct vd_driver *d = vd_find_driver(named);
    if (!d)
      return vd_set_error(ENOTSUP, "%s: backing file format '%s' is not "
                          "supported", dev->path, named);
    if (d != &vd_qcow2_driver && !d->leaf)
      return vd_set_error(EPERM, "%s: backing file %s is recorded as '%s', "
                          "a format that references other files: name it "
                          "with --backing and --backing-format to use it",
                          dev->path, cand, named);
    snprintf(fmt, fmtlen, "%s", d->name);
    return 0;
  }
  /* No format recorded: never probe a guest-writable file into a format
   * that references other files. */
  int err = 0;
  const struct vd_driver *any = vd_probe_path(cand, &err);
  if (any && !any->leaf)
    return vd_set_error(EPERM, "%s: backing file %s looks like '%s' but "
                        "the image records no backing format: name it with "
                        "--backing-format (a probe never opens a format "
                        "that references other files)", dev->path, cand,
                        any->name);
  fmt[0] = '\0';
  return 0;
}

int
qcow2_open_backing(struct vd_dev *dev, bool lookup_only)
{
  struct qcow2_priv *p = dev->priv;
  bool override = dev->opts.backing && !dev->child;
  char dir[PATH_MAX], tmp[PATH_MAX];
  char *cand = malloc(2 * PATH_MAX);
  if (!cand)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  char *real = cand + PATH_MAX;
  int r = 0;
  if (override) {
    snprintf(cand, PATH_MAX, "%s", dev->opts.backing);
  } else {
    /* A relative name is relative to the child's folder (qemu's rule). */
    snprintf(tmp, sizeof tmp, "%s", dev->path);
    const char *cdir = dirname(tmp);
    int k = p->backing[0] == '/' || strcmp(cdir, ".") == 0
            ? snprintf(cand, PATH_MAX, "%s", p->backing)
            : snprintf(cand, PATH_MAX, "%s/%s", cdir, p->backing);
    if (k < 0 || k >= PATH_MAX) {
      r = vd_set_error(ENAMETOOLONG, "%s: backing file name too long",
                       dev->path);
      goto out;
    }
  }
  struct vd_parent_refusal ref = { .err = 0 };
  const char *dirp = vd_parent_real_dir(dev, dir) == 0 ? dir : NULL;
  r = vd_parent_candidate_ok(dev, cand, real, override, dirp, &ref);
  if (lookup_only) {
    snprintf(p->parent_path, sizeof p->parent_path, "%s", cand);
    snprintf(p->parent_format, sizeof p->parent_format, "%s",
             p->h.backing_fmt);
    r = 0;
    goto out;
  }
  if (r < 0)
    goto out;
  if (r == 1) {
    r = vd_set_error(ref.err ? ref.err : ENOENT, "%s: backing file %s %s",
                     dev->path, ref.path[0] ? ref.path : cand,
                     ref.why[0] ? ref.why : "not found");
    goto out;
  }
  char fmt[32];
  if ((r = qcow2_backing_format(dev, override, cand, fmt, sizeof fmt)) < 0)
    goto out;
  struct vd_open_args a = {
    .flags = dev->open_flags & (VD_OPEN_DIRECT | VD_OPEN_NOLOCK),
    .parent_policy = dev->opts.parent_policy,
    .format = fmt[0] ? fmt : NULL,
  };
  if (!fmt[0])
    a.flags |= VD_OPEN_PROBE_LEAF;
  r = override ? vd_open_parent_operator(dev, cand, &a, &p->parent)
               : vd_open_parent(dev, cand, &a, &p->parent);
  if (r < 0) {
    p->parent = NULL;
    if (!dev->child)
      r = vd_prefix_error(-r, "%s: backing file", dev->path);
    goto out;
  }
  snprintf(p->parent_path, sizeof p->parent_path, "%s", cand);
  snprintf(p->parent_format, sizeof p->parent_format, "%s",
           vd_format(p->parent));
out:
  free(cand);
  return r;
}

/* ---- open / close ---- */

static void
qcow2_close(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  qcow2_resv_release(dev);
  vd_close(p->parent);
  p->parent = NULL;
  free(p->l1);
  p->l1 = NULL;
  for (unsigned i = 0; i < QCOW2_L2_SLOTS; i++) {
    free(p->slots[i].data);
    p->slots[i].data = NULL;
    p->slots[i].off = 0;
  }
  qcow2_snapshots_free(p->snaps, p->nsnaps);
  p->snaps = NULL;
  p->nsnaps = 0;
  free(p->rt);
  p->rt = NULL;
  free(p->rb);
  p->rb = NULL;
  if (p->lock_init)
    pthread_mutex_destroy(&p->cache_lock);
  p->lock_init = false;
  if (p->rw_init)
    pthread_rwlock_destroy(&p->rw);
  p->rw_init = false;
}

/* Check that [OFF, OFF+LEN) is cluster aligned and inside the file. */
static int
qcow2_table_ok(struct vd_dev *dev, uint64_t off, uint64_t len,
               const char *what)
{
  struct qcow2_priv *p = dev->priv;
  if (off == 0 || off & (p->cluster - 1))
    return vd_set_error(EINVAL, "%s: %s offset 0x%" PRIx64 " is not a "
                        "cluster boundary", dev->path, what, off);
  if (!vd_range_ok(off, len, p->file_size))
    return vd_set_error(EINVAL, "%s: %s (0x%" PRIx64 ", %" PRIu64
                        " bytes) lies past the end of the file (truncated?)",
                        dev->path, what, off, len);
  return 0;
}

/* Load the L1 table of SIZE entries at OFF and check its entries. */
static int
qcow2_load_l1(struct vd_dev *dev, uint64_t off, uint32_t size,
              uint64_t disk_size, const char *what)
{
  struct qcow2_priv *p = dev->priv;
  uint64_t span = (uint64_t)p->cluster * p->l2_entries;
  uint64_t need = disk_size / span + (disk_size % span != 0);
  if (size < need)
    return vd_set_error(EINVAL, "%s: %s holds %" PRIu32 " entries, the "
                        "disk needs %" PRIu64, dev->path, what, size, need);
  if ((uint64_t)size * 8 > QCOW2_MAX_L1_BYTES)
    return vd_set_error(EINVAL, "%s: %s of %" PRIu32 " entries is too "
                        "large", dev->path, what, size);
  p->l1_size = size;
  if (size == 0)
    return 0;
  int r;
  /* qemu only asks for 8-byte alignment of a snapshot's L1, the active
   * one is cluster aligned. */
  if (off % 512 || !vd_range_ok(off, (uint64_t)size * 8, p->file_size))
    return vd_set_error(EINVAL, "%s: %s (0x%" PRIx64 ", %" PRIu32 " entries)"
                        " lies past the end of the file (truncated?)",
                        dev->path, what, off, size);
  uint8_t *raw = malloc((size_t)size * 8);
  if (!(p->l1 = malloc((size_t)size * 8)) || !raw) {
    free(raw);
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  }
  if ((r = vd_file_pread(dev->file, raw, (size_t)size * 8, off)) < 0) {
    free(raw);
    return r;
  }
  for (uint32_t i = 0; i < size && r == 0; i++) {
    uint64_t e = vd_get_be64(raw + 8 * (size_t)i);
    uint64_t l2 = e & QCOW2_OFFSET_MASK;
    p->l1[i] = e;
    if (e & QCOW2_L1_RESERVED)
      r = vd_set_error(EINVAL, "%s: %s entry %" PRIu32 " has reserved bits "
                       "set (0x%016" PRIx64 ")", dev->path, what, i, e);
    else if (l2 && (l2 & (p->cluster - 1)))
      r = vd_set_error(EINVAL, "%s: %s entry %" PRIu32 " points at "
                       "unaligned offset 0x%" PRIx64, dev->path, what, i, l2);
    else if (l2 && !vd_range_ok(l2, p->cluster, p->file_size))
      r = vd_set_error(EINVAL, "%s: %s entry %" PRIu32 " points past the "
                       "end of the file (L2 table at 0x%" PRIx64 ")",
                       dev->path, what, i, l2);
  }
  free(raw);
  return r;
}

static int
qcow2_load_snapshots(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  const struct qcow2_header *h = &p->h;
  if (h->nb_snapshots == 0)
    return 0;
  if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
    return vd_set_error(EINVAL, "%s: %" PRIu32 " snapshots (at most %u)",
                        dev->path, h->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
  if (h->snapshots_off == 0 || h->snapshots_off & (p->cluster - 1) ||
      h->snapshots_off >= p->file_size)
    return vd_set_error(EINVAL, "%s: snapshot table offset 0x%" PRIx64
                        " is invalid or past the end of the file", dev->path,
                        h->snapshots_off);
  uint64_t len = p->file_size - h->snapshots_off;
  if (len > QCOW2_MAX_SNAP_TABLE)
    len = QCOW2_MAX_SNAP_TABLE;
  uint8_t *buf = malloc(len);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = vd_file_pread(dev->file, buf, len, h->snapshots_off);
  char where[PATH_MAX + 16];
  snprintf(where, sizeof where, "%s", dev->path);
  size_t used;
  if (r == 0)
    r = qcow2_snapshots_decode(buf, len, h->nb_snapshots, h->size, &p->snaps,
                               &used, where);
  free(buf);
  if (r == 0)
    p->nsnaps = h->nb_snapshots;
  return r;
}

/* Find the snapshot the open option names (qemu-img convert -l). */
static int
qcow2_find_snapshot(struct vd_dev *dev, const char *spec)
{
  struct qcow2_priv *p = dev->priv;
  const char *id = NULL, *name = NULL;
  if (strncmp(spec, "snapshot.id=", 12) == 0)
    id = spec + 12;
  else if (strncmp(spec, "snapshot.name=", 14) == 0)
    name = spec + 14;
  for (uint32_t i = 0; i < p->nsnaps; i++)
    if ((id || !name) && strcmp(p->snaps[i].id, id ? id : spec) == 0)
      return (int)i;
  for (uint32_t i = 0; i < p->nsnaps; i++)
    if ((name || !id) && strcmp(p->snaps[i].name, name ? name : spec) == 0)
      return (int)i;
  return vd_set_error(ENOENT, "%s: no snapshot '%s'", dev->path, spec);
}

static int
qcow2_open_inner(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  uint8_t head[QCOW2_V3_HEADER_LEN];
  char where[PATH_MAX + 16];
  int r;

  pthread_mutex_init(&p->cache_lock, NULL);
  p->lock_init = true;
  pthread_rwlock_init(&p->rw, NULL);
  p->rw_init = true;
  p->snap_loaded = -1;
  if ((r = vd_file_size(dev->file, &p->file_size)) < 0)
    return r;
  if (p->file_size < QCOW2_V2_HEADER_LEN)
    return vd_set_error(EINVAL, "%s: file too short for a qcow2 header",
                        dev->path);
  size_t hl = p->file_size < sizeof head ? (size_t)p->file_size : sizeof head;
  if ((r = vd_file_pread(dev->file, head, hl, 0)) < 0)
    return r;
  uint32_t cb = vd_get_be32(head + 20);
  if (cb < QCOW2_MIN_CLUSTER_BITS || cb > QCOW2_MAX_CLUSTER_BITS)
    cb = QCOW2_MIN_CLUSTER_BITS;    /* the decoder says why */
  size_t c0 = (size_t)1 << cb;
  if (c0 > p->file_size)
    c0 = (size_t)p->file_size;
  uint8_t *buf = malloc(c0);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  snprintf(where, sizeof where, "%s", dev->path);
  r = vd_file_pread(dev->file, buf, c0, 0);
  if (r == 0)
    r = qcow2_header_decode(buf, c0, &p->h, where);
  if (r == 0 && p->h.backing_off) {
    memcpy(p->backing, buf + p->h.backing_off, p->h.backing_len);
    p->backing[p->h.backing_len] = '\0';
    if (strlen(p->backing) != p->h.backing_len)
      r = vd_set_error(EINVAL, "%s: backing file name holds a NUL byte",
                       dev->path);
  }
  free(buf);
  if (r < 0)
    return r;

  const struct qcow2_header *h = &p->h;
  p->cluster = 1u << h->cluster_bits;
  p->extl2 = (h->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
  p->l2_entries = p->cluster / (p->extl2 ? 16 : 8);
  p->subcluster = p->cluster / QCOW2_SUBCLUSTERS;
  if (h->size > (UINT64_C(1) << 62))
    return vd_set_error(EINVAL, "%s: virtual size %" PRIu64 " is too large",
                        dev->path, h->size);
  if ((r = qcow2_table_ok(dev, h->rt_off, (uint64_t)h->rt_clusters *
                          p->cluster, "refcount table")) < 0)
    return r;
  if ((uint64_t)h->rt_clusters * p->cluster > QCOW2_MAX_RT_BYTES ||
      h->rt_clusters == 0)
    return vd_set_error(EINVAL, "%s: refcount table of %" PRIu32 " clusters "
                        "is invalid", dev->path, h->rt_clusters);
  if ((r = qcow2_load_snapshots(dev)) < 0)
    return r;

  uint64_t disk_size = h->size;
  if (dev->opts.snapshot) {
    if (!dev->read_only)
      return vd_set_error(EROFS, "%s: a snapshot opens read-only",
                          dev->path);
    int i = qcow2_find_snapshot(dev, dev->opts.snapshot);
    if (i < 0)
      return i;
    /* The device keeps the image's current size, as qemu's
     * bdrv_snapshot_load_tmp does (qemu-img convert -l): what lies past
     * the snapshot's own size reads as unallocated. */
    p->snap_loaded = i;
    snprintf(where, sizeof where, "snapshot %s's L1 table", p->snaps[i].id);
    r = qcow2_load_l1(dev, p->snaps[i].l1_off, p->snaps[i].l1_size,
                      p->snaps[i].disk_size < disk_size
                      ? p->snaps[i].disk_size : disk_size, where);
  } else {
    if (h->l1_size && (h->l1_off & (p->cluster - 1)))
      return vd_set_error(EINVAL, "%s: L1 table offset 0x%" PRIx64 " is not "
                          "a cluster boundary", dev->path, h->l1_off);
    r = qcow2_load_l1(dev, h->l1_off, h->l1_size, disk_size, "L1 table");
  }
  if (r < 0)
    return r;
  dev->size = disk_size;
  dev->logical_block = 512;
  dev->preferred_io = p->cluster > 4096 ? 4096 : p->cluster;
  if (!dev->read_only) {
    /* What vdisk does not write stays read-only (the file too, so its
     * lock is a reader's); writes then fail naming the reason. */
    if ((p->ro_reason = qcow2_write_refusal(p))) {
      if ((r = vd_file_reopen(dev->file, false)) < 0)
        return r;
      dev->read_only = true;
    } else if ((r = qcow2_write_setup(dev)) < 0) {
      return r;
    }
  }

  if (!h->backing_off)
    return 0;
  if (dev->open_flags & VD_OPEN_NOPARENT)
    return qcow2_open_backing(dev, true);
  int depth = 0;
  for (const struct vd_dev *d = dev->child; d; d = d->child)
    depth++;
  if (depth >= QCOW2_MAX_CHAIN)
    return vd_set_error(ELOOP, "%s: backing chain deeper than %d",
                        dev->path, QCOW2_MAX_CHAIN);
  return qcow2_open_backing(dev, false);
}

/* The core does not call close after a failed open. */
static int
qcow2_open(struct vd_dev *dev)
{
  int r = qcow2_open_inner(dev);
  if (r < 0)
    qcow2_close(dev);
  return r;
}

/* ---- info, snapshots ---- */

static void
qcow2_info(struct vd_dev *dev, struct vd_info *info)
{
  struct qcow2_priv *p = dev->priv;
  const struct qcow2_header *h = &p->h;
  /* qemu-img info's keys and order (ImageInfoSpecificQCow2). */
  vd_info_add_str(info, "compat", h->version == 2 ? "0.10" : "1.1");
  vd_info_add_str(info, "compression-type",
                  h->compression == QCOW2_COMP_ZSTD ? "zstd" : "zlib");
  if (h->version >= 3) {
    vd_info_add_bool(info, "lazy-refcounts",
                     h->compat & QCOW2_COMPAT_LAZY_REFCOUNTS);
  }
  vd_info_add_u64(info, "refcount-bits", UINT64_C(1) << h->refcount_order);
  if (h->version >= 3) {
    vd_info_add_bool(info, "corrupt", h->incompat & QCOW2_INCOMPAT_CORRUPT);
    vd_info_add_bool(info, "extended-l2", p->extl2);
  }
  if (p->snap_loaded >= 0)
    vd_info_add_str(info, "snapshot", p->snaps[p->snap_loaded].id);
  info->cluster_size = p->cluster;
  info->dirty = (h->incompat & QCOW2_INCOMPAT_DIRTY) != 0;
  if (h->backing_off) {
    snprintf(info->backing, sizeof info->backing, "%s",
             p->parent_path[0] ? p->parent_path : p->backing);
    snprintf(info->backing_stored, sizeof info->backing_stored, "%s",
             p->backing);
    snprintf(info->backing_format, sizeof info->backing_format, "%s",
             p->parent_format[0] ? p->parent_format : h->backing_fmt);
  }
}

int
qcow2_snapshot_list(struct vd_dev *dev, struct vd_snapshot **list,
                    size_t *count)
{
  struct qcow2_priv *p = dev->priv;
  struct vd_snapshot *out = calloc(p->nsnaps ? p->nsnaps : 1, sizeof *out);
  if (!out)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  for (uint32_t i = 0; i < p->nsnaps; i++) {
    const struct qcow2_snapshot *s = &p->snaps[i];
    struct vd_snapshot *o = &out[i];
    snprintf(o->id, sizeof o->id, "%s", s->id);
    snprintf(o->name, sizeof o->name, "%s", s->name);
    o->size = s->disk_size;
    o->date_sec = s->date_sec;
    o->date_nsec = s->date_nsec;
    o->vm_state_size = s->vm_state_size;
    o->vm_clock_nsec = s->vm_clock_nsec;
    o->icount = s->icount;
  }
  *list = out;
  *count = p->nsnaps;
  return 0;
}

static const char *
qcow2_read_only_reason(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  return p->ro_reason;
}

/* A device opened read-only has no refcount table loaded: load it at the
 * first switch to read-write, refusing what a writable open keeps
 * read-only. */
static int
qcow2_reopen(struct vd_dev *dev, bool write)
{
  struct qcow2_priv *p = dev->priv;
  if (!write) {
    qcow2_resv_release(dev);
    return 0;
  }
  if (p->rt)
    return 0;
  const char *why = dev->opts.snapshot ? "a snapshot opens read-only"
                                       : qcow2_write_refusal(p);
  if (why)
    return vd_set_error(EROFS, "%s: %s", dev->path, why);
  int r = qcow2_write_setup(dev);
  if (r < 0) {
    free(p->rt);
    free(p->rb);
    p->rt = NULL;
    p->rb = NULL;
  }
  return r;
}

static struct vd_dev *
qcow2_backing_dev(struct vd_dev *dev)
{
  struct qcow2_priv *p = dev->priv;
  return p->parent;
}

const struct vd_driver vd_qcow2_driver = {
  .name = "qcow2",
  .aliases = qcow2_aliases,
  .priv_size = sizeof (struct qcow2_priv),
  .host_mapped = true,
  .probe = qcow2_probe,
  .open = qcow2_open,
  .close = qcow2_close,
  .pread = qcow2_pread,
  .block_status = qcow2_block_status,
  .info = qcow2_info,
  .check = qcow2_check,
  .create = qcow2_create,
  .create_help =
    "  cluster_size=<size>    - qcow2 cluster size (512 to 2M, default 64k)\n"
    "  compat=<str>           - Compatibility level (0.10 or 1.1, default "
    "1.1)\n"
    "  compression_type=<str> - zlib (default) or zstd (recorded; vdisk "
    "writes no compressed clusters)\n"
    "  extended_l2=<bool (on/off)> - off only (vdisk does not write "
    "subclusters)\n"
    "  lazy_refcounts=<bool (on/off)> - Postpone refcount updates (the "
    "flag is recorded; vdisk keeps refcounts exact)\n"
    "  preallocation=<str>    - off only\n"
    "  refcount_bits=<num>    - Width of a reference count entry in bits "
    "(8, 16, 32, 64; default 16)\n",
  .pwrite = qcow2_pwrite,
  .flush = qcow2_flush,
  .truncate = qcow2_truncate,
  .discard = qcow2_discard,
  .write_zeroes = qcow2_write_zeroes,
  .read_only_reason = qcow2_read_only_reason,
  .reopen = qcow2_reopen,
  .backing_dev = qcow2_backing_dev,
  .snapshot_list = qcow2_snapshot_list,
  .amend = qcow2_amend,
  .amend_help =
    "  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])\n"
    "  lazy_refcounts=<bool (on/off)> - Postpone refcount updates\n",
};

VD_REGISTER_DRIVER(vd_qcow2_driver);
