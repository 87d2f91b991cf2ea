/* libvdisk — qcow2 amend (qemu-img amend): lazy_refcounts and compat.
 *
 * What changes is the header in cluster 0, rewritten in one write (up to
 * the last byte the old or the new header uses) and synced, as qemu's
 * qcow2_update_header rewrites it: the version, the feature bits and
 * refcount order of version 3, the header length, the extensions (kept, in
 * their order, moved to follow the new header) and the backing file name
 * after them.  Before it, as qemu does:
 *  - a dirty image (lazy refcounts) is repaired first (qcow2_check with
 *    VD_CHECK_FIX_ALL, which clears the dirty bit once refcounts match), so
 *    turning lazy refcounts off or downgrading leaves exact refcounts;
 *  - a downgrade to version 2 expands the zero clusters of the current
 *    state (version 2 has no zero flag): through the writer, a zero
 *    cluster of an image without backing file becomes unallocated (it reads
 *    zeros) and one over a backing file a data cluster of zeros.  A crash
 *    during that leaves a valid version 3 image reading the same.
 * Refused as qemu refuses: lazy refcounts without compat=1.1, compat=0.10
 * with refcount_bits other than 16 or incompatible features (extended L2,
 * external data file; zstd compression too, which qemu 7.2 drops from an
 * image without compressed clusters); refused by vdisk only: a
 * downgrade with internal snapshots (their zero clusters) or persistent
 * bitmaps, and every other amend option qemu has (backing_file, size,
 * refcount_bits, data_file, encrypt.*).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "vdisk/io.h"
#include "vdisk/qcow2.h"

/* What amend was asked: -1 unchanged. */
struct q_amend {
  int version;                    /* 2 or 3 */
  int lazy;                       /* 0 or 1 */
};

static int
q_amend_opts(const char *path, const char *options, struct q_amend *a)
{
  static const char *const creation[] = { "cluster_size", "encryption",
    "encrypt.format", "preallocation", "extended_l2", "compression_type",
    "nocow", NULL };
  static const char *const other[] = { "backing_file", "backing_fmt",
    "data_file", "data_file_raw", "refcount_bits", "size", NULL };
  a->version = a->lazy = -1;
  for (const char *o = options; o && *o;) {
    size_t n = strcspn(o, ","), k = strcspn(o, "=,");
    char key[64], val[64];
    if (k >= sizeof key || n - k > sizeof val)
      return vd_set_error(EINVAL, "%s: option '%.*s' is too long", path,
                          (int)n, o);
    memcpy(key, o, k);
    key[k] = '\0';
    snprintf(val, sizeof val, "%.*s", k < n ? (int)(n - k - 1) : 0,
             o + k + 1);
    o += n + (o[n] == ',');
    for (const char *const *c = creation; *c; c++)
      if (strcmp(key, *c) == 0)
        return vd_set_error(EINVAL, "Invalid parameter '%s': this option "
                            "is only supported for image creation", key);
    bool other_opt = strncmp(key, "encrypt.", 8) == 0;
    for (const char *const *c = other; *c && !other_opt; c++)
      other_opt = strcmp(key, *c) == 0;
    if (other_opt)
      return vd_set_error(ENOTSUP, "%s: amending '%s' is not supported by "
                          "vdisk (compat and lazy_refcounts are)", path, key);
    if (strcmp(key, "compat") == 0) {
      if (strcmp(val, "0.10") == 0 || strcmp(val, "v2") == 0)
        a->version = 2;
      else if (strcmp(val, "1.1") == 0 || strcmp(val, "v3") == 0)
        a->version = 3;
      else
        return vd_set_error(EINVAL, "Unknown compatibility level %s", val);
    } else if (strcmp(key, "lazy_refcounts") == 0) {
      if (strcmp(val, "on") != 0 && strcmp(val, "off") != 0)
        return vd_set_error(EINVAL, "Parameter 'lazy_refcounts' expects "
                            "'on' or 'off'");
      a->lazy = strcmp(val, "on") == 0;
    } else {
      return vd_set_error(EINVAL, "Invalid parameter '%s'", key);
    }
  }
  return 0;
}

/* qemu's refusals for header H amended to A (H's version and lazy bit
 * filled in where A leaves them).  As qemu, lazy_refcounts=on that changes
 * nothing is no reason to refuse a downgrade (which drops it). */
static int
q_amend_refusal(const char *path, const struct qcow2_header *h,
                const struct q_amend *a)
{
  bool lazy = h->version >= 3 && (h->compat & QCOW2_COMPAT_LAZY_REFCOUNTS);
  if (a->lazy == 1 && !lazy && a->version < 3)
    return vd_set_error(EINVAL, "Lazy refcounts only supported with "
                        "compatibility level 1.1 and above (use compat=1.1 "
                        "or greater)");
  if (a->version == 2 && h->version >= 3) {
    if (h->refcount_order != 4)
      return vd_set_error(ENOTSUP, "compat=0.10 requires refcount_bits=16");
    uint64_t inc = h->incompat & ~(uint64_t)QCOW2_INCOMPAT_DIRTY;
    if (inc)
      return vd_set_error(ENOTSUP, "Cannot downgrade an image with "
                          "incompatible features 0x%" PRIx64 " set", inc);
    if (h->nb_snapshots)
      return vd_set_error(ENOTSUP, "%s: downgrading an image with internal "
                          "snapshots is not supported by vdisk", path);
    if (h->has_bitmaps)
      return vd_set_error(ENOTSUP, "%s: downgrading an image with "
                          "persistent bitmaps is not supported by vdisk",
                          path);
  }
  return 0;
}

/* Expand the zero clusters of the current state for version 2 (see the
 * top of the file): the image opened writable, with its backing file. */
static int
q_expand_zeros(const char *path)
{
  struct vd_open_args args = { .format = "qcow2", .flags = VD_OPEN_RDWR };
  struct vd_dev *dev;
  int r = vd_open_opts(path, &args, &dev);
  if (r < 0)
    return r;
  struct qcow2_priv *p = dev->priv;
  uint8_t *table = malloc(p->cluster);
  uint8_t *zero = calloc(1, p->cluster);
  if (!table || !zero)
    r = vd_set_error(ENOMEM, "%s: out of memory", path);
  if (r == 0 && dev->read_only)
    r = vd_set_error(EROFS, "%s: cannot expand zero clusters: %s", path,
                     p->ro_reason ? p->ro_reason : "read-only");
  uint64_t span = (uint64_t)p->cluster * p->l2_entries;
  for (uint32_t i = 0; i < p->l1_size && r == 0; i++) {
    uint64_t l2 = p->l1[i] & QCOW2_OFFSET_MASK;
    if (!l2 || (r = vd_file_pread(dev->file, table, p->cluster, l2)) < 0)
      continue;
    for (uint32_t k = 0; k < p->l2_entries && r == 0; k++) {
      uint64_t e = vd_get_be64(table + (size_t)k * 8);
      uint64_t off = i * span + (uint64_t)k * p->cluster;
      if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_ZERO) ||
          off >= dev->size)
        continue;
      uint64_t n = dev->size - off < p->cluster ? dev->size - off
                                                 : p->cluster;
      r = p->h.backing_off ? vd_pwrite(dev, zero, n, off, 0)
                           : vd_discard(dev, off, n, 0);
    }
  }
  if (r == 0)
    r = vd_flush(dev);
  free(table);
  free(zero);
  int r2 = vd_close(dev);
  return r ? r : r2;
}

/* Cluster 0 (BUF, CLUSTER bytes, header H) rebuilt for A into OUT (zeroed
 * CLUSTER bytes). */
static int
q_amend_header(const char *path, const uint8_t *buf, uint32_t cluster,
               const struct qcow2_header *h, const struct q_amend *a,
               uint8_t *out)
{
  /* A version 3 header keeps its length (and what it holds past the
   * fields known here); an upgraded one gets qemu's 112 bytes. */
  uint32_t hl = a->version < 3 ? QCOW2_V2_HEADER_LEN
              : h->version >= 3 ? h->header_len : 112;
  /* The extensions, up to and with the end marker (decoded already). */
  uint64_t pos = h->header_len;
  for (;;) {
    uint32_t type = vd_get_be32(buf + pos), len = vd_get_be32(buf + pos + 4);
    pos += 8;
    if (type == QCOW2_EXT_END)
      break;
    pos += vd_round_up(len, 8);
  }
  uint64_t ext = pos - h->header_len;
  if (hl + ext + h->backing_len > cluster)
    return vd_set_error(ENOSPC, "%s: the header extensions and backing "
                        "file name do not fit in the first cluster with a "
                        "%" PRIu32 "-byte header", path, hl);
  memcpy(out, buf, h->version >= 3 && a->version >= 3 ? hl
                                                      : QCOW2_V2_HEADER_LEN);
  vd_put_be32(out + 4, (uint32_t)a->version);
  if (a->version >= 3) {
    vd_put_be64(out + 72, h->incompat & ~(uint64_t)QCOW2_INCOMPAT_DIRTY);
    vd_put_be64(out + 80, (h->version >= 3 ? h->compat &
                           ~(uint64_t)QCOW2_COMPAT_LAZY_REFCOUNTS : 0) |
                          (a->lazy ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0));
    vd_put_be64(out + 88, h->autoclear);
    vd_put_be32(out + 96, h->refcount_order);
    vd_put_be32(out + 100, hl);
    out[104] = h->compression;
  }
  memcpy(out + hl, buf + h->header_len, ext);
  if (h->backing_off) {
    memcpy(out + hl + ext, buf + h->backing_off, h->backing_len);
    vd_put_be64(out + 8, hl + ext);
  }
  return 0;
}

/* Read cluster 0 of F (CLUSTER bytes, or what the file holds) into BUF
 * and decode it into H. */
static int
q_amend_read(struct vd_file *f, const char *path, uint8_t *buf,
             uint32_t cluster, struct qcow2_header *h)
{
  uint64_t fsize;
  int r = vd_file_size(f, &fsize);
  size_t n = fsize < cluster ? (size_t)fsize : cluster;
  if (r == 0)
    r = vd_file_pread(f, buf, n, 0);
  return r ? r : qcow2_header_decode(buf, n, h, path);
}

/* vd_driver.amend */
int
qcow2_amend(const char *path, const char *options)
{
  struct q_amend a;
  int r = q_amend_opts(path, options, &a);
  if (r < 0)
    return r;
  if (a.version < 0 && a.lazy < 0)
    return vd_set_error(EINVAL, "%s: no option to amend", path);
  struct vd_file *f;
  struct qcow2_header h;
  uint8_t *buf = NULL, *out = NULL;
  if ((r = vd_file_open(path, VD_FILE_RDWR, &f)) < 0)
    return r;
  /* Cluster 0 is at most 2 MiB; the header says how large (the decoder
   * refuses what is out of range). */
  uint8_t head[24] = { 0 };
  uint64_t fsize;
  r = vd_file_size(f, &fsize);
  if (r == 0 && fsize >= sizeof head)
    r = vd_file_pread(f, head, sizeof head, 0);
  uint32_t cbits = vd_get_be32(head + 20);
  uint32_t cluster = cbits >= QCOW2_MIN_CLUSTER_BITS &&
                     cbits <= QCOW2_MAX_CLUSTER_BITS ? 1u << cbits : 512;
  if (r == 0 && (!(buf = calloc(1, cluster)) || !(out = calloc(1, cluster))))
    r = vd_set_error(ENOMEM, "%s: out of memory", path);
  if (r == 0)
    r = q_amend_read(f, path, buf, cluster, &h);
  /* A dirty image is repaired first, as qemu's writable open does. */
  if (r == 0 && (h.incompat & QCOW2_INCOMPAT_DIRTY)) {
    struct vd_check_report rep = { 0 };
    vd_file_close(f);
    f = NULL;
    r = qcow2_check(path, VD_CHECK_FIX_ALL, &rep);
    if (r == 0 && rep.corruptions)
      r = vd_set_error(EIO, "%s: the dirty image could not be repaired "
                       "(see vdtool check)", path);
    if (r == 0 && (r = vd_file_open(path, VD_FILE_RDWR, &f)) == 0)
      r = q_amend_read(f, path, buf, cluster, &h);   /* as repaired */
  }
  if (r == 0) {
    if (a.version < 0)
      a.version = (int)h.version;
    if (a.lazy < 0)
      a.lazy = h.version >= 3 && (h.compat & QCOW2_COMPAT_LAZY_REFCOUNTS);
    r = q_amend_refusal(path, &h, &a);
  }
  if (r == 0 && a.version < (int)h.version) {
    /* The writer opens the image itself: this handle lets it go.  Its
     * refcount table may move: the header is read again. */
    vd_file_close(f);
    f = NULL;
    if ((r = q_expand_zeros(path)) == 0 &&
        (r = vd_file_open(path, VD_FILE_RDWR, &f)) == 0)
      r = q_amend_read(f, path, buf, cluster, &h);
  }
  if (r == 0)
    r = q_amend_header(path, buf, cluster, &h, &a, out);
  /* One write up to the last byte either header uses: a single sector
   * unless the backing file name is long. */
  size_t n = cluster;
  while (n && !buf[n - 1] && !out[n - 1])
    n--;
  if (r == 0 && memcmp(buf, out, n) != 0) {
    r = vd_file_pwrite(f, out, n, 0);
    if (r == 0)
      r = vd_file_flush(f);
  }
  if (f)
    vd_file_close(f);
  free(buf);
  free(out);
  return r;
}
