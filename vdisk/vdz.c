/* libvdisk — vdz: LZ4-compressed, random-access, read-only images.
 *
 * Format: vdz version 1, specified byte by byte in docs/vdz-format.md.
 * All integers little-endian.  Sentinels: an index entry of length 0 is
 * an all-zero cluster (not stored; offset and CRC 0); a stored length
 * equal to the cluster's length means stored uncompressed; a smaller one
 * is one LZ4 block (raw block format, no frame).
 *
 *   0      header (128 bytes, CRC-32C in its last 4), zero-padded to 4096
 *   4096   cluster data: stored clusters in cluster order
 *   index  cluster_count entries of 16 bytes, CRC-32C over all of them
 *
 *   header: 0 magic "\x89VDZ\r\n\x1a\n"  8 version u32 = 1
 *           12 cluster_bits u32 (12..21)  16 virtual_size u64
 *           24 cluster_count u64  32 index_offset u64  40 index_size u64
 *           48 data_offset u64  56 data_size u64  64 codec u32 (1 = LZ4)
 *           68 level u32 (0 fast, 1..12 LZ4HC)  72 flags u32 (0)
 *           76 index_crc u32  80..123 zero  124 header_crc u32
 *   entry:  0 offset u64  8 length u32  12 crc32c u32 (of the stored bytes)
 *
 * Images are written once by vd_import (vdtool convert -O vdz) into a
 * temporary file whose header is written last, after the data and index
 * are flushed, and which is renamed over the target only after fsync (then
 * the folder is fsynced): a crash never leaves a file at the target path
 * that opens as valid.  The temporary file ("TARGET.tmp-PID-RANDOM") is
 * created with O_CREAT|O_EXCL, so a symlink planted at its name is never
 * followed.
 *
 * Reads: clusters fully covered by a request are decompressed straight
 * into the caller's buffer (contiguous ones read from the file at once);
 * partly covered ones go through a 4 MiB cache of decompressed clusters,
 * 4-way set-associative (a lookup looks at the 4 entries of one set).
 * Locks: cache_lock and pool_lock are never held together, nor across
 * I/O or decompression.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lz4.h>
#include <lz4hc.h>

#include "vdisk/crc32c.h"
#include "vdisk/driver.h"
#include "vdisk/endian.h"

#define VDZ_MAGIC "\x89VDZ\r\n\x1a\n"
#define VDZ_VERSION 1
#define VDZ_HEADER_LEN 128
#define VDZ_HEADER_AREA 4096       /* where the writer starts the data */
#define VDZ_ENTRY_LEN 16
#define VDZ_CODEC_LZ4 1
#define VDZ_MIN_CLUSTER_BITS 12    /* 4 KiB */
#define VDZ_MAX_CLUSTER_BITS 21    /* 2 MiB */
#define VDZ_DEFAULT_CLUSTER_BITS 15 /* 32 KiB: bench/README-vdz.md */
#define VDZ_MAX_THREADS 64
#define VDZ_CACHE_BYTES (4u << 20) /* of decompressed clusters */
#define VDZ_CACHE_WAYS 4           /* entries a cluster may occupy */
#define VDZ_SPAN_MAX (1u << 20)    /* largest single read of stored data */
#define VDZ_POOL_MAX 8             /* idle read buffers kept */
#define VDZ_MAX_INDEX (1ull << 30) /* index bytes: 64 Mi clusters */

_Static_assert(VDZ_HEADER_LEN <= VDZ_HEADER_AREA, "header fits its area");
_Static_assert(sizeof VDZ_MAGIC - 1 == 8, "magic is 8 bytes");

/* The header, decoded and validated. */
struct vdz_header {
  uint32_t cluster_bits;
  uint64_t virtual_size;
  uint64_t cluster_count;
  uint64_t index_offset;
  uint64_t index_size;
  uint64_t data_offset;
  uint64_t data_size;
  uint32_t level;
  uint32_t index_crc;
};

struct vdz_entry {
  uint64_t offset;
  uint32_t length;
  uint32_t crc;
};

/* A cache entry.  The fields are guarded by vdz_priv.cache_lock; the
 * contents of data[] are written only by the loader (while loading is
 * set) and read by holders of a reference (refs). */
struct vdz_cent {
  uint64_t cluster;        /* UINT64_MAX: empty */
  uint64_t last_use;
  unsigned refs;           /* readers copying out, or the loader */
  bool loading;
  uint32_t valid;          /* bytes of data[] decoded (a prefix) */
  uint8_t *data;           /* cluster_size decompressed bytes */
};

struct vdz_priv {
  struct vdz_header h;
  uint32_t cluster_size;
  struct vdz_entry *index;         /* cluster_count entries, immutable */
  uint64_t data_clusters;          /* non-zero clusters */

  pthread_mutex_t cache_lock;      /* guards every field of ents[] and tick */
  pthread_cond_t cache_cond;       /* a load finished */
  bool cache_init;
  unsigned ncache;                 /* nsets * VDZ_CACHE_WAYS */
  unsigned nsets;                  /* cluster c lives in set c % nsets */
  struct vdz_cent *ents;
  uint64_t tick;

  /* Buffers of span_cap bytes for stored clusters being read. */
  pthread_mutex_t pool_lock;       /* guards pool[] and npool */
  size_t span_cap;
  unsigned npool;
  uint8_t *pool[VDZ_POOL_MAX];
};

/* ---- parsing (shared by open and check) ---- */

static uint32_t vdz_cluster_len(const struct vdz_header *h, uint64_t c)
{
  uint64_t cs = (uint64_t)1 << h->cluster_bits;
  uint64_t start = c << h->cluster_bits;
  return (uint32_t)(h->virtual_size - start < cs ? h->virtual_size - start
                                                 : cs);
}

/* Decode and validate the 128-byte header in BUF against FILE_SIZE. */
static int vdz_parse_header(const char *path, const uint8_t *buf,
                            uint64_t file_size, struct vdz_header *h)
{
  uint64_t end, want;
  uint32_t v;

  if (memcmp(buf, VDZ_MAGIC, 8) != 0)
    return vd_set_error(EINVAL, "%s: not a vdz image (bad magic)", path);
  v = vd_get_le32(buf + 8);
  if (v != VDZ_VERSION)
    return vd_set_error(ENOTSUP, "%s: vdz version %" PRIu32
                        " is not supported (only %d)", path, v, VDZ_VERSION);
  if (vd_crc32c(0, buf, VDZ_HEADER_LEN - 4) !=
      vd_get_le32(buf + VDZ_HEADER_LEN - 4))
    return vd_set_error(EINVAL, "%s: vdz header checksum mismatch", path);

  h->cluster_bits = vd_get_le32(buf + 12);
  h->virtual_size = vd_get_le64(buf + 16);
  h->cluster_count = vd_get_le64(buf + 24);
  h->index_offset = vd_get_le64(buf + 32);
  h->index_size = vd_get_le64(buf + 40);
  h->data_offset = vd_get_le64(buf + 48);
  h->data_size = vd_get_le64(buf + 56);
  h->level = vd_get_le32(buf + 68);
  h->index_crc = vd_get_le32(buf + 76);

  if (h->cluster_bits < VDZ_MIN_CLUSTER_BITS ||
      h->cluster_bits > VDZ_MAX_CLUSTER_BITS)
    return vd_set_error(EINVAL, "%s: vdz cluster size 2^%" PRIu32
                        " is out of range (4 KiB to 2 MiB)", path,
                        h->cluster_bits);
  v = vd_get_le32(buf + 64);
  if (v != VDZ_CODEC_LZ4)
    return vd_set_error(ENOTSUP, "%s: unknown vdz codec %" PRIu32, path, v);
  if (h->level > LZ4HC_CLEVEL_MAX)
    return vd_set_error(EINVAL, "%s: vdz level %" PRIu32 " is out of range",
                        path, h->level);
  v = vd_get_le32(buf + 72);
  if (v != 0)
    return vd_set_error(ENOTSUP, "%s: unknown vdz flags 0x%" PRIx32, path, v);

  want = (h->virtual_size >> h->cluster_bits) +
         ((h->virtual_size & (((uint64_t)1 << h->cluster_bits) - 1)) != 0);
  if (h->cluster_count != want)
    return vd_set_error(EINVAL, "%s: vdz cluster count %" PRIu64
                        " does not match the virtual size (%" PRIu64
                        " clusters expected)", path, h->cluster_count, want);
  if (vd_mul_overflow(h->cluster_count, VDZ_ENTRY_LEN, &want) ||
      h->index_size != want)
    return vd_set_error(EINVAL, "%s: vdz index size %" PRIu64
                        " does not match %" PRIu64 " clusters", path,
                        h->index_size, h->cluster_count);
  if (h->index_size > VDZ_MAX_INDEX)
    return vd_set_error(EFBIG, "%s: vdz index of %" PRIu64 " clusters is "
                        "larger than supported", path, h->cluster_count);
  if (h->data_offset < VDZ_HEADER_LEN || h->data_offset > h->index_offset)
    return vd_set_error(EINVAL, "%s: vdz data offset %" PRIu64
                        " is outside the header..index range", path,
                        h->data_offset);
  if (vd_add_overflow(h->index_offset, h->index_size, &end) ||
      end > file_size)
    return vd_set_error(EINVAL, "%s: vdz index (offset %" PRIu64 ", %" PRIu64
                        " bytes) lies past the end of the file (%" PRIu64
                        " bytes): truncated image?", path, h->index_offset,
                        h->index_size, file_size);
  if (h->data_size > h->index_offset - h->data_offset)
    return vd_set_error(EINVAL, "%s: vdz data size %" PRIu64
                        " exceeds the data area", path, h->data_size);
  return 0;
}

/* Decode and validate index entry I from RAW. */
static int vdz_parse_entry(const char *path, const struct vdz_header *h,
                           const uint8_t *raw, uint64_t i,
                           struct vdz_entry *e)
{
  uint64_t end;

  e->offset = vd_get_le64(raw);
  e->length = vd_get_le32(raw + 8);
  e->crc = vd_get_le32(raw + 12);
  if (e->length == 0) {
    if (e->offset != 0 || e->crc != 0)
      return vd_set_error(EINVAL, "%s: vdz index entry %" PRIu64
                          ": zero cluster with an offset or checksum",
                          path, i);
    return 0;
  }
  if (e->length > vdz_cluster_len(h, i))
    return vd_set_error(EINVAL, "%s: vdz index entry %" PRIu64
                        ": length %" PRIu32 " exceeds the cluster size",
                        path, i, e->length);
  if (e->offset < h->data_offset ||
      vd_add_overflow(e->offset, e->length, &end) || end > h->index_offset)
    return vd_set_error(EINVAL, "%s: vdz index entry %" PRIu64
                        ": offset %" PRIu64 " length %" PRIu32
                        " lies outside the data area", path, i, e->offset,
                        e->length);
  return 0;
}

/* Verify the stored form SRC (E->length bytes) of cluster C and expand
 * at least its first WANT bytes into DST (room for the whole cluster).
 * Returns the number of bytes expanded. */
static int vdz_expand(const char *path, const struct vdz_header *h,
                      uint64_t c, const struct vdz_entry *e,
                      const uint8_t *src, uint8_t *dst, uint32_t want)
{
  uint32_t ulen = vdz_cluster_len(h, c);
  int n;

  if (vd_crc32c(0, src, e->length) != e->crc)
    return vd_set_error(EIO, "%s: cluster %" PRIu64 " (virtual offset %"
                        PRIu64 ", file offset %" PRIu64
                        "): checksum mismatch", path, c,
                        c << h->cluster_bits, e->offset);
  if (e->length == ulen) {
    memcpy(dst, src, want);
    return (int)want;
  }
  /* Stopping early is what makes small random reads cheap; the CRC above
   * already covered the whole block. */
  if (want < ulen)
    n = LZ4_decompress_safe_partial((const char *)src, (char *)dst,
                                    (int)e->length, (int)want, (int)ulen);
  else
    n = LZ4_decompress_safe((const char *)src, (char *)dst, (int)e->length,
                            (int)ulen);
  if (n != (int)want)
    return vd_set_error(EIO, "%s: cluster %" PRIu64 " (virtual offset %"
                        PRIu64 "): LZ4 data does not decode to %" PRIu32
                        " bytes", path, c, c << h->cluster_bits, ulen);
  return n;
}

/* Read and decode the header and index of F.  On success *INDEX holds
 * cluster_count entries (free it). */
static int vdz_load(struct vd_file *f, const char *path,
                    struct vdz_header *h, struct vdz_entry **index)
{
  uint8_t hbuf[VDZ_HEADER_LEN];
  uint64_t fsize;
  uint8_t *raw = NULL;
  struct vdz_entry *ents = NULL;
  int r;

  r = vd_file_size(f, &fsize);
  if (r < 0)
    return r;
  if (fsize < VDZ_HEADER_LEN)
    return vd_set_error(EINVAL, "%s: file too short for a vdz header (%"
                        PRIu64 " bytes)", path, fsize);
  r = vd_file_pread(f, hbuf, sizeof hbuf, 0);
  if (r < 0)
    return r;
  r = vdz_parse_header(path, hbuf, fsize, h);
  if (r < 0)
    return r;

  /* index_size <= file size and cluster_count == index_size / 16, so
   * these allocations are bounded by the file's length. */
  raw = malloc(h->index_size ? h->index_size : 1);
  ents = calloc(h->cluster_count ? h->cluster_count : 1, sizeof *ents);
  if (!raw || !ents) {
    r = vd_set_error(ENOMEM, "%s: cannot allocate the vdz index (%" PRIu64
                     " entries)", path, h->cluster_count);
    goto out;
  }
  r = vd_file_pread(f, raw, h->index_size, h->index_offset);
  if (r < 0)
    goto out;
  if (vd_crc32c(0, raw, h->index_size) != h->index_crc) {
    r = vd_set_error(EINVAL, "%s: vdz index checksum mismatch", path);
    goto out;
  }
  for (uint64_t i = 0; i < h->cluster_count; i++) {
    r = vdz_parse_entry(path, h, raw + i * VDZ_ENTRY_LEN, i, &ents[i]);
    if (r < 0)
      goto out;
  }
  *index = ents;
  ents = NULL;
  r = 0;
out:
  free(raw);
  free(ents);
  return r;
}

/* ---- driver ---- */

static int vdz_probe(const struct vd_probe_data *pd)
{
  return pd->head_len >= 8 && memcmp(pd->head, VDZ_MAGIC, 8) == 0 ? 100 : 0;
}

static void vdz_close(struct vd_dev *dev)
{
  struct vdz_priv *p = dev->priv;

  if (p->ents)
    for (unsigned i = 0; i < p->ncache; i++)
      free(p->ents[i].data);
  free(p->ents);
  free(p->index);
  for (unsigned i = 0; i < p->npool; i++)
    free(p->pool[i]);
  if (p->cache_init) {
    pthread_mutex_destroy(&p->cache_lock);
    pthread_cond_destroy(&p->cache_cond);
    pthread_mutex_destroy(&p->pool_lock);
  }
}

static int vdz_open(struct vd_dev *dev)
{
  struct vdz_priv *p = dev->priv;
  int r;

  r = vdz_load(dev->file, dev->path, &p->h, &p->index);
  if (r < 0)
    return r;
  p->cluster_size = (uint32_t)1 << p->h.cluster_bits;
  for (uint64_t i = 0; i < p->h.cluster_count; i++)
    p->data_clusters += p->index[i].length != 0;

  p->nsets = VDZ_CACHE_BYTES / p->cluster_size / VDZ_CACHE_WAYS;
  if (p->nsets == 0)
    p->nsets = 1;
  p->ncache = p->nsets * VDZ_CACHE_WAYS;
  p->ents = calloc(p->ncache, sizeof *p->ents);
  if (!p->ents)
    goto nomem;
  for (unsigned i = 0; i < p->ncache; i++) {
    p->ents[i].cluster = UINT64_MAX;
    p->ents[i].data = malloc(p->cluster_size);
    if (!p->ents[i].data)
      goto nomem;
  }
  pthread_mutex_init(&p->cache_lock, NULL);
  pthread_cond_init(&p->cache_cond, NULL);
  pthread_mutex_init(&p->pool_lock, NULL);
  p->cache_init = true;
  p->span_cap = p->cluster_size > VDZ_SPAN_MAX ? p->cluster_size
                                                : VDZ_SPAN_MAX;

  dev->size = p->h.virtual_size;
  dev->preferred_io = p->cluster_size;
  return 0;

nomem:
  r = vd_set_error(ENOMEM, "%s: cannot allocate the vdz cluster cache",
                   dev->path);
  vdz_close(dev);
  memset(p, 0, sizeof *p);
  return r;
}

static uint8_t *vdz_pool_get(struct vdz_priv *p)
{
  uint8_t *b = NULL;

  pthread_mutex_lock(&p->pool_lock);
  if (p->npool)
    b = p->pool[--p->npool];
  pthread_mutex_unlock(&p->pool_lock);
  return b ? b : malloc(p->span_cap);
}

static void vdz_pool_put(struct vdz_priv *p, uint8_t *b)
{
  pthread_mutex_lock(&p->pool_lock);
  if (p->npool < VDZ_POOL_MAX) {
    p->pool[p->npool++] = b;
    b = NULL;
  }
  pthread_mutex_unlock(&p->pool_lock);
  free(b);
}

/* Read cluster C's stored bytes and expand at least WANT bytes into DST;
 * returns the number expanded. */
static int vdz_load_cluster(struct vd_dev *dev, uint64_t c, uint8_t *dst,
                            uint32_t want)
{
  struct vdz_priv *p = dev->priv;
  const struct vdz_entry *e = &p->index[c];
  uint8_t *cbuf = vdz_pool_get(p);
  int r;

  if (!cbuf)
    return vd_set_error(ENOMEM, "%s: out of memory reading cluster %"
                        PRIu64, dev->path, c);
  r = vd_file_pread(dev->file, cbuf, e->length, e->offset);
  if (r == 0)
    r = vdz_expand(dev->path, &p->h, c, e, cbuf, dst, want);
  vdz_pool_put(p, cbuf);
  return r;
}

/* Copy LEN bytes at OFF inside non-zero cluster C into BUF, through the
 * cache.  A miss decodes the cluster only up to the end of the request;
 * a later request past that decodes all of it. */
static int vdz_read_cached(struct vd_dev *dev, uint64_t c, uint32_t off,
                           uint32_t len, uint8_t *buf)
{
  struct vdz_priv *p = dev->priv;
  struct vdz_cent *set = &p->ents[c % p->nsets * VDZ_CACHE_WAYS];
  struct vdz_cent *e, *victim;
  uint32_t need = off + len, want = need;
  int r;

  pthread_mutex_lock(&p->cache_lock);
again:
  victim = NULL;
  for (unsigned i = 0; i < VDZ_CACHE_WAYS; i++) {
    e = &set[i];
    if (e->cluster == c) {
      if (e->loading) {
        pthread_cond_wait(&p->cache_cond, &p->cache_lock);
        goto again;
      }
      if (e->valid >= need) {
        e->refs++;
        e->last_use = ++p->tick;
        pthread_mutex_unlock(&p->cache_lock);
        memcpy(buf, e->data + off, len);
        r = 0;
        goto release;
      }
      /* Decoded too little: decode it all, here if nobody is copying. */
      want = vdz_cluster_len(&p->h, c);
      victim = e->refs == 0 ? e : NULL;
      break;
    }
    if (e->refs == 0 && (!victim || e->last_use < victim->last_use))
      victim = e;
  }

  if (!victim) {
    /* Every entry of the set is in use: decode into a private buffer. */
    uint8_t *tmp;

    pthread_mutex_unlock(&p->cache_lock);
    tmp = malloc(p->cluster_size);
    if (!tmp)
      return vd_set_error(ENOMEM, "%s: out of memory reading cluster %"
                          PRIu64, dev->path, c);
    r = vdz_load_cluster(dev, c, tmp, need);
    if (r >= 0) {
      memcpy(buf, tmp + off, len);
      r = 0;
    }
    free(tmp);
    return r;
  }

  e = victim;
  e->cluster = c;
  e->loading = true;
  e->valid = 0;
  e->refs = 1;
  e->last_use = ++p->tick;
  pthread_mutex_unlock(&p->cache_lock);

  r = vdz_load_cluster(dev, c, e->data, want);
  if (r >= 0)
    memcpy(buf, e->data + off, len);

  /* Publish the load and drop the reference in one critical section. */
  pthread_mutex_lock(&p->cache_lock);
  e->loading = false;
  if (r < 0) {
    e->cluster = UINT64_MAX;
  } else {
    e->valid = (uint32_t)r;
    r = 0;
  }
  pthread_cond_broadcast(&p->cache_cond);
  goto unref;
release:
  pthread_mutex_lock(&p->cache_lock);
unref:
  e->refs--;
  pthread_mutex_unlock(&p->cache_lock);
  return r;
}

/* Clusters [C, C+N) are wholly inside the request, stored and contiguous
 * in the file: read them at once and expand them into BUF. */
static int vdz_read_run(struct vd_dev *dev, uint64_t c, uint64_t n,
                        uint8_t *buf)
{
  struct vdz_priv *p = dev->priv;
  const struct vdz_entry *first = &p->index[c], *last = &p->index[c + n - 1];
  size_t span = last->offset + last->length - first->offset;
  uint8_t *sbuf;
  int r;

  sbuf = vdz_pool_get(p);
  if (!sbuf)
    return vd_set_error(ENOMEM, "%s: out of memory reading %zu bytes",
                        dev->path, span);
  r = vd_file_pread(dev->file, sbuf, span, first->offset);
  for (uint64_t i = 0; r >= 0 && i < n; i++) {
    const struct vdz_entry *e = &p->index[c + i];
    r = vdz_expand(dev->path, &p->h, c + i, e,
                   sbuf + (e->offset - first->offset),
                   buf + (i << p->h.cluster_bits),
                   vdz_cluster_len(&p->h, c + i));
  }
  vdz_pool_put(p, sbuf);
  return r < 0 ? r : 0;
}

static int vdz_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  struct vdz_priv *p = dev->priv;
  const unsigned bits = p->h.cluster_bits;
  uint8_t *out = buf;
  int r;

  while (len > 0) {
    uint64_t c = off >> bits;
    uint32_t in = (uint32_t)(off & (p->cluster_size - 1));
    uint32_t clen = vdz_cluster_len(&p->h, c);
    size_t n = clen - in < len ? clen - in : len;
    const struct vdz_entry *e = &p->index[c];

    if (e->length == 0) {
      memset(out, 0, n);
    } else if (in == 0 && n == clen) {
      /* Whole clusters: extend over the following ones that are whole,
       * stored and adjacent in the file. */
      uint64_t k = 1;
      size_t span = e->length, total = n;
      while (c + k < p->h.cluster_count) {
        const struct vdz_entry *x = &p->index[c + k];
        uint32_t xl = vdz_cluster_len(&p->h, c + k);
        if (x->length == 0 || total + xl > len ||
            x->offset != e->offset + span || span + x->length > p->span_cap)
          break;
        span += x->length;
        total += xl;
        k++;
      }
      r = vdz_read_run(dev, c, k, out);
      if (r < 0)
        return r;
      n = total;
    } else {
      r = vdz_read_cached(dev, c, in, (uint32_t)n, out);
      if (r < 0)
        return r;
    }
    out += n;
    off += n;
    len -= n;
  }
  return 0;
}

static int vdz_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                            struct vd_extent *ext)
{
  struct vdz_priv *p = dev->priv;
  uint64_t c = off >> p->h.cluster_bits, end;
  bool zero = p->index[c].length == 0;

  /* Extend over clusters of the same kind, up to the requested end. */
  while (++c < p->h.cluster_count && (p->index[c].length == 0) == zero &&
         (c << p->h.cluster_bits) - off < len)
    ;
  end = c < p->h.cluster_count ? c << p->h.cluster_bits : p->h.virtual_size;
  ext->offset = off;
  ext->length = end - off < len ? end - off : len;
  ext->flags = zero ? VD_EXT_HOLE | VD_EXT_ZERO : 0;
  ext->depth = 0;
  ext->host_offset = -1;
  return 0;
}

static void vdz_info(struct vd_dev *dev, struct vd_info *info)
{
  struct vdz_priv *p = dev->priv;
  uint64_t plain = 0;
  char s[64];

  for (uint64_t i = 0; i < p->h.cluster_count; i++)
    if (p->index[i].length)
      plain += vdz_cluster_len(&p->h, i);
  info->cluster_size = p->cluster_size;
  if (p->h.level)
    snprintf(s, sizeof s, "lz4hc level %" PRIu32, p->h.level);
  else
    snprintf(s, sizeof s, "lz4");
  vd_info_add_str(info, "compression", s);
  /* Ratio of the stored clusters' plain size to their stored size. */
  snprintf(s, sizeof s, "%.2f",
           p->h.data_size ? (double)plain / (double)p->h.data_size : 1.0);
  vd_info_add_str(info, "compression_ratio", s);
  vd_info_add_u64(info, "data_clusters", p->data_clusters);
  vd_info_add_u64(info, "zero_clusters",
                  p->h.cluster_count - p->data_clusters);
  vd_info_add_u64(info, "stored_bytes", p->h.data_size);
}

static int vdz_create(const char *path, const struct vd_create_args *args)
{
  return vd_set_error(ENOTSUP, "%s: vdz images are made from an existing "
                      "image: vdtool convert -O vdz SOURCE %s", path, path);
}

/* ---- check ---- */

static void vdz_report(struct vd_check_report *r)
{
  if (r->message)
    r->message(r->opaque, vd_error());
}

static int vdz_check(const char *path, unsigned flags,
                     struct vd_check_report *r)
{
  struct vd_file *f = NULL;
  struct vdz_header h;
  uint8_t hbuf[VDZ_HEADER_LEN];
  uint8_t *raw = NULL, *cbuf = NULL, *dbuf = NULL;
  uint64_t fsize;
  int ret;

  if (flags & VD_CHECK_FIX_ALL)
    return vd_set_error(ENOTSUP, "%s: vdz images are read-only and cannot "
                        "be repaired; convert the source again", path);
  ret = vd_file_open(path, flags & VD_CHECK_NOLOCK ? VD_FILE_NOLOCK : 0, &f);
  if (ret < 0)
    return ret;
  ret = vd_file_size(f, &fsize);
  if (ret < 0)
    goto out;
  if (fsize < VDZ_HEADER_LEN) {
    vd_set_error(EINVAL, "%s: file too short for a vdz header (%" PRIu64
                 " bytes)", path, fsize);
    goto corrupt;
  }
  ret = vd_file_pread(f, hbuf, sizeof hbuf, 0);
  if (ret < 0)
    goto out;
  if (vdz_parse_header(path, hbuf, fsize, &h) < 0)
    goto corrupt;
  r->total_clusters = h.cluster_count;
  r->image_end_offset = h.index_offset + h.index_size;

  raw = malloc(h.index_size ? h.index_size : 1);
  cbuf = malloc((size_t)1 << h.cluster_bits);
  dbuf = malloc((size_t)1 << h.cluster_bits);
  if (!raw || !cbuf || !dbuf) {
    ret = vd_set_error(ENOMEM, "%s: out of memory", path);
    goto out;
  }
  ret = vd_file_pread(f, raw, h.index_size, h.index_offset);
  if (ret < 0)
    goto out;
  if (vd_crc32c(0, raw, h.index_size) != h.index_crc) {
    vd_set_error(EINVAL, "%s: vdz index checksum mismatch", path);
    r->corruptions++;
    vdz_report(r);
  }
  for (uint64_t i = 0; i < h.cluster_count; i++) {
    struct vdz_entry e;

    if (vdz_parse_entry(path, &h, raw + i * VDZ_ENTRY_LEN, i, &e) < 0) {
      r->corruptions++;
      vdz_report(r);
      continue;
    }
    if (e.length == 0)
      continue;
    r->allocated_clusters++;
    r->compressed_clusters += e.length < vdz_cluster_len(&h, i);
    ret = vd_file_pread(f, cbuf, e.length, e.offset);
    if (ret < 0) {
      r->check_errors++;
      vdz_report(r);
      continue;
    }
    if (vdz_expand(path, &h, i, &e, cbuf, dbuf, vdz_cluster_len(&h, i)) < 0) {
      r->corruptions++;
      vdz_report(r);
    }
  }
  ret = 0;
  goto out;

corrupt:
  r->corruptions++;
  vdz_report(r);
  ret = 0;
out:
  free(raw);
  free(cbuf);
  free(dbuf);
  vd_file_close(f);
  return ret;
}

/* ---- import: compress SRC on several threads ---- */

enum { VDZ_SLOT_FREE, VDZ_SLOT_BUSY, VDZ_SLOT_DONE };

/* One cluster in flight.  state is guarded by vdz_imp.lock; buf, len
 * and crc belong to the worker that claimed the slot while it is BUSY
 * and to the writer while it is DONE. */
struct vdz_slot {
  int state;               /* VDZ_SLOT_* */
  uint8_t *buf;            /* stored form (cluster_size bytes) */
  uint32_t len;            /* stored length, 0 = zero cluster */
  uint32_t crc;
};

struct vdz_imp {
  struct vd_dev *src;
  struct vdz_header h;
  uint32_t cluster_size;
  int level;

  pthread_mutex_t lock;    /* guards the fields below and slot states */
  pthread_cond_t cond;
  uint64_t next_claim;     /* next cluster a worker takes */
  int err;                 /* first error, or 0 */
  char errmsg[512];        /* its message (workers' vd_error is theirs) */
  unsigned nslots;
  struct vdz_slot *slots;  /* cluster c uses slot c % nslots */
};

static bool vdz_all_zero(const uint8_t *b, size_t len)
{
  return len == 0 || (b[0] == 0 && memcmp(b, b + 1, len - 1) == 0);
}

static void vdz_imp_fail_locked(struct vdz_imp *im, int err)
{
  VD_ASSERT_HELD(&im->lock);
  if (!im->err) {
    im->err = err;
    snprintf(im->errmsg, sizeof im->errmsg, "%s", vd_error());
  }
  pthread_cond_broadcast(&im->cond);
}

/* Fill slot S with the stored form of cluster C, reading into IBUF. */
static int vdz_imp_cluster(struct vdz_imp *im, void *state, uint64_t c,
                           struct vdz_slot *s, uint8_t **ibuf)
{
  uint64_t off = c << im->h.cluster_bits;
  uint32_t len = vdz_cluster_len(&im->h, c);
  struct vd_extent ext;
  int r, n;

  s->len = 0;
  s->crc = 0;
  r = vd_block_status(im->src, off, len, &ext);
  if (r < 0)
    return r;
  if ((ext.flags & VD_EXT_ZERO) && ext.length >= len)
    return 0;
  r = vd_pread(im->src, *ibuf, len, off);
  if (r < 0)
    return r;
  if (vdz_all_zero(*ibuf, len))
    return 0;

  if (im->level)
    n = LZ4_compress_HC_extStateHC(state, (const char *)*ibuf, (char *)s->buf,
                                   (int)len, (int)len - 1, im->level);
  else
    n = LZ4_compress_fast_extState(state, (const char *)*ibuf,
                                   (char *)s->buf, (int)len, (int)len - 1, 1);
  if (n > 0) {
    s->len = (uint32_t)n;
  } else {
    /* Does not shrink: store it as it is by swapping the buffers. */
    uint8_t *t = s->buf;
    s->buf = *ibuf;
    *ibuf = t;
    s->len = len;
  }
  s->crc = vd_crc32c(0, s->buf, s->len);
  return 0;
}

static void *vdz_imp_worker(void *arg)
{
  struct vdz_imp *im = arg;
  uint8_t *ibuf = malloc(im->cluster_size);
  void *state = malloc((size_t)(im->level ? LZ4_sizeofStateHC()
                                          : LZ4_sizeofState()));

  pthread_mutex_lock(&im->lock);
  if (!ibuf || !state) {
    vd_set_error(ENOMEM, "out of memory compressing");
    vdz_imp_fail_locked(im, -ENOMEM);
  }
  while (!im->err && im->next_claim < im->h.cluster_count) {
    uint64_t c = im->next_claim;
    struct vdz_slot *s = &im->slots[c % im->nslots];
    int r;

    if (s->state != VDZ_SLOT_FREE) {
      pthread_cond_wait(&im->cond, &im->lock);
      continue;
    }
    im->next_claim++;
    s->state = VDZ_SLOT_BUSY;
    pthread_mutex_unlock(&im->lock);

    r = vdz_imp_cluster(im, state, c, s, &ibuf);

    pthread_mutex_lock(&im->lock);
    if (r < 0)
      vdz_imp_fail_locked(im, r);
    s->state = VDZ_SLOT_DONE;
    pthread_cond_broadcast(&im->cond);
  }
  pthread_mutex_unlock(&im->lock);
  free(ibuf);
  free(state);
  return NULL;
}

static int vdz_opt_uint(const char *options, const char *key, uint64_t min,
                        uint64_t max, uint64_t *out, bool size)
{
  char val[64], *end;
  unsigned long long v;
  int r;

  r = vd_opt_get(options, key, val, sizeof val);
  if (r <= 0)
    return r;
  if (size) {
    uint64_t s;
    r = vd_parse_size(val, &s);
    if (r < 0)
      return r;
    v = s;
  } else {
    errno = 0;
    v = strtoull(val, &end, 10);
    if (errno || end == val || *end || val[0] == '-')
      return vd_set_error(EINVAL, "vdz: option %s=%s is not a number", key,
                          val);
  }
  if (v < min || v > max || (size && !vd_is_pow2(v)))
    return vd_set_error(EINVAL, "vdz: option %s=%s is out of range%s", key,
                        val, size ? " (a power of two from 4K to 2M)" : "");
  *out = v;
  return 1;
}

/* Write the index and header of a finished import to F. */
static int vdz_imp_finish(struct vd_file *f, const struct vdz_header *h,
                          const uint8_t *index)
{
  uint8_t hbuf[VDZ_HEADER_LEN] = { 0 };
  int r;

  r = vd_file_pwrite(f, index, h->index_size, h->index_offset);
  if (r < 0)
    return r;
  r = vd_file_flush(f);
  if (r < 0)
    return r;
  memcpy(hbuf, VDZ_MAGIC, 8);
  vd_put_le32(hbuf + 8, VDZ_VERSION);
  vd_put_le32(hbuf + 12, h->cluster_bits);
  vd_put_le64(hbuf + 16, h->virtual_size);
  vd_put_le64(hbuf + 24, h->cluster_count);
  vd_put_le64(hbuf + 32, h->index_offset);
  vd_put_le64(hbuf + 40, h->index_size);
  vd_put_le64(hbuf + 48, h->data_offset);
  vd_put_le64(hbuf + 56, h->data_size);
  vd_put_le32(hbuf + 64, VDZ_CODEC_LZ4);
  vd_put_le32(hbuf + 68, h->level);
  vd_put_le32(hbuf + 72, 0);
  vd_put_le32(hbuf + 76, h->index_crc);
  vd_put_le32(hbuf + VDZ_HEADER_LEN - 4,
              vd_crc32c(0, hbuf, VDZ_HEADER_LEN - 4));
  r = vd_file_pwrite(f, hbuf, sizeof hbuf, 0);
  if (r < 0)
    return r;
  return vd_file_flush(f);
}

/* Compress everything into F (writable; IN_PLACE: it may hold an older
 * image, whose header must be gone for good before its data is
 * overwritten).  Returns 0 or -errno. */
static int vdz_imp_run(struct vdz_imp *im, struct vd_file *f, bool in_place,
                       unsigned nthreads, vd_progress_fn progress,
                       void *opaque)
{
  struct vdz_header *h = &im->h;
  pthread_t tids[VDZ_MAX_THREADS];
  unsigned started = 0;
  uint8_t *index = NULL;
  uint8_t zeros[VDZ_HEADER_AREA] = { 0 };
  uint64_t pos = VDZ_HEADER_AREA;
  int r;

  /* The header area stays zero until the very end. */
  r = vd_file_pwrite(f, zeros, sizeof zeros, 0);
  if (r == 0 && in_place)
    r = vd_file_flush(f);
  if (r < 0)
    return r;
  index = calloc(h->index_size ? h->index_size : 1, 1);
  im->nslots = 4 * nthreads;
  im->slots = calloc(im->nslots, sizeof *im->slots);
  if (!index || !im->slots) {
    r = vd_set_error(ENOMEM, "out of memory for the vdz index (%" PRIu64
                     " clusters)", h->cluster_count);
    goto out;
  }
  for (unsigned i = 0; i < im->nslots; i++) {
    im->slots[i].buf = malloc(im->cluster_size);
    if (!im->slots[i].buf) {
      r = vd_set_error(ENOMEM, "out of memory compressing");
      goto out;
    }
  }

  for (; started < nthreads; started++) {
    r = pthread_create(&tids[started], NULL, vdz_imp_worker, im);
    if (r) {
      r = vd_set_error(r, "cannot start a compression thread: %s",
                       strerror(r));
      pthread_mutex_lock(&im->lock);
      vdz_imp_fail_locked(im, r);
      pthread_mutex_unlock(&im->lock);
      break;
    }
  }

  /* This thread writes the clusters in order as workers finish them. */
  for (uint64_t c = 0; c < h->cluster_count && started; c++) {
    struct vdz_slot *s = &im->slots[c % im->nslots];
    uint8_t *e = index + c * VDZ_ENTRY_LEN;

    pthread_mutex_lock(&im->lock);
    while (!im->err && s->state != VDZ_SLOT_DONE)
      pthread_cond_wait(&im->cond, &im->lock);
    pthread_mutex_unlock(&im->lock);
    if (im->err)
      break;

    if (s->len) {
      r = vd_file_pwrite(f, s->buf, s->len, pos);
      if (r < 0) {
        pthread_mutex_lock(&im->lock);
        vdz_imp_fail_locked(im, r);
        pthread_mutex_unlock(&im->lock);
        break;
      }
      vd_put_le64(e, pos);
      vd_put_le32(e + 8, s->len);
      vd_put_le32(e + 12, s->crc);
      pos += s->len;
    }
    pthread_mutex_lock(&im->lock);
    s->state = VDZ_SLOT_FREE;
    pthread_cond_broadcast(&im->cond);
    pthread_mutex_unlock(&im->lock);
    if (progress)
      progress(opaque, c + 1, h->cluster_count);
  }
  for (unsigned i = 0; i < started; i++)
    pthread_join(tids[i], NULL);
  if (im->err) {
    r = vd_set_error(-im->err, "%s", im->errmsg);
    goto out;
  }

  h->index_offset = pos;
  h->data_offset = VDZ_HEADER_AREA;
  h->data_size = pos - VDZ_HEADER_AREA;
  h->index_crc = vd_crc32c(0, index, h->index_size);
  r = vdz_imp_finish(f, h, index);
out:
  if (im->slots)
    for (unsigned i = 0; i < im->nslots; i++)
      free(im->slots[i].buf);
  free(im->slots);
  free(index);
  return r;
}


/* Create the temporary file beside PATH that the image is written into
 * before it is renamed over PATH: "PATH.tmp-PID-RANDOM", created with
 * O_CREAT|O_EXCL (never through a symlink or over a file someone planted
 * there; an unpredictable name as well), retried on a name clash.  On
 * success *TMP (malloc'd) names the file, which the caller owns. */
static int vdz_create_tmp(const char *path, char **tmp, struct vd_file **f)
{
  for (int tries = 0; tries < 16; tries++) {
    uint32_t rnd;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
      return vd_set_error(errno ? errno : EIO, "%s: getrandom: %m", path);
    if (asprintf(tmp, "%s.tmp-%ld-%08" PRIx32, path, (long)getpid(), rnd) < 0) {
      *tmp = NULL;
      return vd_set_error(ENOMEM, "%s: out of memory", path);
    }
    int r = vd_file_open(*tmp, VD_FILE_RDWR | VD_FILE_CREATE | VD_FILE_EXCL,
                         f);
    if (r == 0)
      return 0;
    free(*tmp);
    *tmp = NULL;
    if (r != -EEXIST)
      return r;
  }
  return vd_set_error(EEXIST, "%s: no free temporary file name beside it",
                      path);
}

static int vdz_import(const char *path, struct vd_dev *src,
                      const struct vd_create_args *args,
                      vd_progress_fn progress, void *opaque)
{
  static const char *const known[] = { "cluster_size", "level", "threads",
                                       NULL };
  const char *opts = args ? args->options : NULL;
  struct vdz_imp im = { .src = src };
  uint64_t cs = (uint64_t)1 << VDZ_DEFAULT_CLUSTER_BITS, level = 0;
  uint64_t nthreads;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  struct vd_file *f = NULL;
  struct stat st;
  char *tmp = NULL;
  bool in_place;
  int r;

  if (args && args->backing)
    return vd_set_error(ENOTSUP, "%s: vdz images have no backing file",
                        path);
  if (opts) {
    if ((r = vd_opt_check(opts, known, "vdz")) < 0 ||
        (r = vdz_opt_uint(opts, "cluster_size",
                          (uint64_t)1 << VDZ_MIN_CLUSTER_BITS,
                          (uint64_t)1 << VDZ_MAX_CLUSTER_BITS, &cs,
                          true)) < 0 ||
        (r = vdz_opt_uint(opts, "level", 0, LZ4HC_CLEVEL_MAX, &level,
                          false)) < 0)
      return r;
  }
  nthreads = ncpu > 0 ? (uint64_t)ncpu : 1;
  if (nthreads > 16)
    nthreads = 16;
  if (opts && (r = vdz_opt_uint(opts, "threads", 1, VDZ_MAX_THREADS,
                                &nthreads, false)) < 0)
    return r;

  im.cluster_size = (uint32_t)cs;
  im.level = (int)level;
  im.h.cluster_bits = (uint32_t)__builtin_ctzll(cs);
  im.h.level = (uint32_t)level;
  im.h.virtual_size = vd_size(src);
  im.h.cluster_count = (im.h.virtual_size >> im.h.cluster_bits) +
                       ((im.h.virtual_size & (cs - 1)) != 0);
  if (vd_mul_overflow(im.h.cluster_count, VDZ_ENTRY_LEN, &im.h.index_size) ||
      im.h.index_size > VDZ_MAX_INDEX)
    return vd_set_error(EFBIG, "%s: image too large for a vdz index with "
                        "%" PRIu64 "-byte clusters (use a larger "
                        "cluster_size)", path, cs);

  /* A block device is written in place (header last); anything else
   * through a temporary file renamed over PATH when complete. */
  in_place = stat(path, &st) == 0 && S_ISBLK(st.st_mode);
  if (in_place) {
    r = vd_file_open(path, VD_FILE_RDWR, &f);
    if (r < 0)
      return r;
  } else {
    r = vdz_create_tmp(path, &tmp, &f);
    if (r < 0)
      return r;
  }

  pthread_mutex_init(&im.lock, NULL);
  pthread_cond_init(&im.cond, NULL);
  r = vdz_imp_run(&im, f, in_place, (unsigned)nthreads, progress, opaque);
  pthread_mutex_destroy(&im.lock);
  pthread_cond_destroy(&im.cond);
  if (r < 0)
    goto out;
  if (!in_place) {
    if (rename(tmp, path) < 0) {
      r = vd_set_error(errno, "%s: cannot rename %s into place: %m", path,
                       tmp);
      goto out;
    }
    free(tmp);
    tmp = NULL;
    r = vd_file_sync_dir(path);
  }
out:
  vd_file_close(f);
  if (tmp) {
    unlink(tmp);
    free(tmp);
  }
  return r;
}

const struct vd_driver vd_vdz_driver = {
  .name = "vdz",
  .priv_size = sizeof(struct vdz_priv),
  .probe = vdz_probe,
  .leaf = true,
  .open = vdz_open,
  .close = vdz_close,
  .create = vdz_create,
  .create_help =
    "  cluster_size=<size>    - Bytes compressed together (a power of two; "
    "default 32 KiB)\n"
    "  level=<num>            - LZ4 level: 0 fast (default), 1-12 LZ4 HC\n"
    "  threads=<num>          - Compression threads for convert (default: "
    "one per CPU)\n",
  .pread = vdz_pread,
  .block_status = vdz_block_status,
  .info = vdz_info,
  .import = vdz_import,
  .check = vdz_check,
  .read_only_hint = "vdz images are read-only: write to a differencing "
                    "overlay (vdtool create -f vhd -b BASE.vdz overlay.vhd)",
};

VD_REGISTER_DRIVER(vd_vdz_driver);
