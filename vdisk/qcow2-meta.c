/* libvdisk — qcow2 codecs over bytes: the header with its extensions, the
 * snapshot table, compressed clusters (layout in vdisk/qcow2.h). */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>

#include "vdisk/endian.h"
#include "vdisk/qcow2.h"

/* The feature table names the unknown incompatible bit BIT: copy its name
 * into H (entries: type u8 (0 incompatible), bit u8, name[46]). */
static void
qcow2_feature_name(struct qcow2_header *h, const uint8_t *d, uint32_t len,
                   unsigned bit)
{
  for (uint32_t i = 0; i + 48 <= len; i += 48)
    if (d[i] == 0 && d[i + 1] == bit) {
      size_t n = strnlen((const char *)d + i + 2, 46);
      if (n >= sizeof h->unknown_feature)
        n = sizeof h->unknown_feature - 1;
      memcpy(h->unknown_feature, d + i + 2, n);
      h->unknown_feature[n] = '\0';
      for (size_t k = 0; k < n; k++)      /* printable in the message */
        if (h->unknown_feature[k] < 0x20 || h->unknown_feature[k] > 0x7e)
          h->unknown_feature[k] = '?';
      return;
    }
}

int
qcow2_header_decode(const uint8_t *buf, size_t len, struct qcow2_header *h,
                    const char *where)
{
  memset(h, 0, sizeof *h);
  if (len < QCOW2_V2_HEADER_LEN || vd_get_be32(buf) != QCOW2_MAGIC)
    return vd_set_error(EINVAL, "%s: no qcow2 magic", where);
  h->version = vd_get_be32(buf + 4);
  if (h->version != 2 && h->version != 3)
    return vd_set_error(ENOTSUP, "%s: qcow2 version %" PRIu32 " is not "
                        "supported (2 and 3 are)", where, h->version);
  h->backing_off = vd_get_be64(buf + 8);
  h->backing_len = vd_get_be32(buf + 16);
  h->cluster_bits = vd_get_be32(buf + 20);
  h->size = vd_get_be64(buf + 24);
  h->crypt_method = vd_get_be32(buf + 32);
  h->l1_size = vd_get_be32(buf + 36);
  h->l1_off = vd_get_be64(buf + 40);
  h->rt_off = vd_get_be64(buf + 48);
  h->rt_clusters = vd_get_be32(buf + 56);
  h->nb_snapshots = vd_get_be32(buf + 60);
  h->snapshots_off = vd_get_be64(buf + 64);
  h->refcount_order = 4;
  h->header_len = QCOW2_V2_HEADER_LEN;
  if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
      h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
    return vd_set_error(EINVAL, "%s: cluster_bits %" PRIu32 " outside "
                        "9..21", where, h->cluster_bits);
  uint32_t cluster = 1u << h->cluster_bits;
  if (h->version == 3) {
    if (len < QCOW2_V3_HEADER_LEN)
      return vd_set_error(EINVAL, "%s: truncated version 3 header", where);
    h->incompat = vd_get_be64(buf + 72);
    h->compat = vd_get_be64(buf + 80);
    h->autoclear = vd_get_be64(buf + 88);
    h->refcount_order = vd_get_be32(buf + 96);
    h->header_len = vd_get_be32(buf + 100);
    if (h->header_len < QCOW2_V3_HEADER_LEN || h->header_len % 8 ||
        h->header_len > cluster || h->header_len > len)
      return vd_set_error(EINVAL, "%s: header_length %" PRIu32 " is invalid",
                          where, h->header_len);
    if (h->header_len > 104)
      h->compression = buf[104];
  }
  if (h->refcount_order > 6)
    return vd_set_error(EINVAL, "%s: refcount_order %" PRIu32 " above 6",
                        where, h->refcount_order);
  if (h->crypt_method)
    return vd_set_error(ENOTSUP, "%s: the image is encrypted (%s); vdisk "
                        "does not read encrypted qcow2 images (decrypt "
                        "it with qemu-img convert first)", where,
                        h->crypt_method == 1 ? "AES" : h->crypt_method == 2
                        ? "LUKS" : "unknown method");
  if (h->backing_off) {
    if (h->backing_len == 0 || h->backing_len > QCOW2_MAX_BACKING_NAME)
      return vd_set_error(EINVAL, "%s: backing file name length %" PRIu32
                          " outside 1..1023", where, h->backing_len);
    uint64_t lim = len < cluster ? len : cluster;   /* what the file holds */
    if (h->backing_off > lim || h->backing_len > lim - h->backing_off)
      return vd_set_error(EINVAL, "%s: backing file name lies outside "
                          "the first cluster", where);
  }

  /* Header extensions, inside cluster 0 and before the backing name. */
  uint64_t end = len < cluster ? len : cluster;
  if (h->backing_off && h->backing_off < end)
    end = h->backing_off;
  uint64_t pos = h->header_len;
  for (;;) {
    if (pos + 8 > end)
      return vd_set_error(EINVAL, "%s: header extensions run past the end "
                          "of the first cluster", where);
    uint32_t type = vd_get_be32(buf + pos), elen = vd_get_be32(buf + pos + 4);
    pos += 8;
    if (type == QCOW2_EXT_END)
      break;
    if (elen > end - pos)
      return vd_set_error(EINVAL, "%s: header extension 0x%08" PRIx32
                          " (%" PRIu32 " bytes) runs past the end of the "
                          "first cluster", where, type, elen);
    const uint8_t *d = buf + pos;
    switch (type) {
    case QCOW2_EXT_BACKING_FORMAT:
      if (elen == 0 || elen >= sizeof h->backing_fmt ||
          memchr(d, 0, elen))
        return vd_set_error(EINVAL, "%s: backing format extension of %"
                            PRIu32 " bytes is invalid", where, elen);
      memcpy(h->backing_fmt, d, elen);
      h->backing_fmt[elen] = '\0';
      break;
    case QCOW2_EXT_FEATURE_TABLE:
      if (h->incompat & ~(uint64_t)QCOW2_INCOMPAT_KNOWN)
        for (unsigned bit = 0; bit < 64; bit++)
          if ((h->incompat >> bit & 1) && !((uint64_t)QCOW2_INCOMPAT_KNOWN >> bit & 1)) {
            qcow2_feature_name(h, d, elen, bit);
            break;
          }
      break;
    case QCOW2_EXT_BITMAPS:
      h->has_bitmaps = true;
      break;
    case QCOW2_EXT_CRYPTO:
      return vd_set_error(ENOTSUP, "%s: the image is encrypted (LUKS); "
                          "vdisk does not read encrypted qcow2 images",
                          where);
    case QCOW2_EXT_DATA_FILE:
      return vd_set_error(ENOTSUP, "%s: the image keeps its data in an "
                          "external data file; vdisk does not follow "
                          "external data files", where);
    default:
      break;                  /* unknown extensions are ignored, as qemu */
    }
    pos += vd_round_up(elen, 8);
  }

  uint64_t unknown = h->incompat & ~(uint64_t)QCOW2_INCOMPAT_KNOWN;
  if (unknown) {
    unsigned bit = 0;
    while (!(unknown >> bit & 1))
      bit++;
    return vd_set_error(ENOTSUP, "%s: unsupported incompatible feature "
                        "bit %u%s%s%s", where, bit,
                        h->unknown_feature[0] ? " (" : "",
                        h->unknown_feature,
                        h->unknown_feature[0] ? ")" : "");
  }
  if (h->incompat & QCOW2_INCOMPAT_DATA_FILE)
    return vd_set_error(ENOTSUP, "%s: the image keeps its data in an "
                        "external data file; vdisk does not follow external "
                        "data files", where);
  if (h->compression != QCOW2_COMP_ZLIB && h->compression != QCOW2_COMP_ZSTD)
    return vd_set_error(ENOTSUP, "%s: unknown compression type %u", where,
                        h->compression);
  if (h->compression != QCOW2_COMP_ZLIB &&
      !(h->incompat & QCOW2_INCOMPAT_COMPRESSION))
    return vd_set_error(EINVAL, "%s: compression type %u without the "
                        "compression type feature bit", where,
                        h->compression);
  if ((h->incompat & QCOW2_INCOMPAT_EXTL2) && h->cluster_bits < 14)
    return vd_set_error(EINVAL, "%s: extended L2 entries need clusters of "
                        "at least 16 KiB", where);
  return 0;
}

void
qcow2_snapshots_free(struct qcow2_snapshot *s, uint32_t nb)
{
  if (!s)
    return;
  for (uint32_t i = 0; i < nb; i++) {
    free(s[i].id);
    free(s[i].name);
  }
  free(s);
}

/* A printable copy of the N bytes at P (control bytes become '?'). */
static char *
qcow2_strndup(const uint8_t *p, size_t n)
{
  char *s = malloc(n + 1);
  if (!s)
    return NULL;
  for (size_t i = 0; i < n; i++)
    s[i] = p[i] < 0x20 || p[i] == 0x7f ? '?' : (char)p[i];
  s[n] = '\0';
  return s;
}

int
qcow2_snapshots_decode(const uint8_t *buf, size_t len, uint32_t nb,
                       uint64_t size, struct qcow2_snapshot **out,
                       size_t *used, const char *where)
{
  *out = NULL;
  *used = 0;
  if (nb == 0)
    return 0;
  struct qcow2_snapshot *s = calloc(nb, sizeof *s);
  if (!s)
    return vd_set_error(ENOMEM, "%s: out of memory", where);
  size_t pos = 0;
  int r = 0;
  for (uint32_t i = 0; i < nb && r == 0; i++) {
    if (len - pos < 40) {
      r = vd_set_error(EINVAL, "%s: snapshot table truncated at entry %"
                       PRIu32, where, i);
      break;
    }
    const uint8_t *e = buf + pos;
    struct qcow2_snapshot *x = &s[i];
    x->l1_off = vd_get_be64(e);
    x->l1_size = vd_get_be32(e + 8);
    uint16_t idlen = vd_get_be16(e + 12), namelen = vd_get_be16(e + 14);
    x->date_sec = vd_get_be32(e + 16);
    x->date_nsec = vd_get_be32(e + 20);
    x->vm_clock_nsec = vd_get_be64(e + 24);
    x->vm_state_size = vd_get_be32(e + 32);
    uint32_t extra = vd_get_be32(e + 36);
    x->disk_size = size;
    x->icount = UINT64_MAX;
    if (extra > QCOW2_MAX_SNAP_EXTRA) {
      r = vd_set_error(EINVAL, "%s: snapshot %" PRIu32 ": extra data of %"
                       PRIu32 " bytes", where, i, extra);
      break;
    }
    uint64_t need = 40 + (uint64_t)extra + idlen + namelen;
    if (need > len - pos) {
      r = vd_set_error(EINVAL, "%s: snapshot table truncated at entry %"
                       PRIu32, where, i);
      break;
    }
    if (extra >= 8)
      x->vm_state_size = vd_get_be64(e + 40);
    if (extra >= 16)
      x->disk_size = vd_get_be64(e + 48);
    if (extra >= 24)
      x->icount = vd_get_be64(e + 56);
    if (!(x->id = qcow2_strndup(e + 40 + extra, idlen)) ||
        !(x->name = qcow2_strndup(e + 40 + extra + idlen, namelen))) {
      r = vd_set_error(ENOMEM, "%s: out of memory", where);
      break;
    }
    if (x->l1_off % 512 || x->l1_size > QCOW2_MAX_L1_BYTES / 8) {
      r = vd_set_error(EINVAL, "%s: snapshot %s has an invalid L1 table",
                       where, x->id);
      break;
    }
    need = vd_round_up(need, 8);
    pos += need > len - pos ? len - pos : need;
  }
  if (r < 0) {
    qcow2_snapshots_free(s, nb);
    return r;
  }
  *out = s;
  *used = pos;
  return 0;
}

int
qcow2_decompress(int type, const uint8_t *src, size_t slen, uint8_t *dst,
                 size_t cluster, const char *where)
{
  if (type == QCOW2_COMP_ZLIB) {
    /* Raw deflate with a 4 KiB window, as qemu writes it; the input may
     * continue past the stream's end (sector padding), so a full output
     * is success whether or not the end marker was reached. */
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -12) != Z_OK)
      return vd_set_error(ENOMEM, "%s: inflateInit2 failed", where);
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)slen;
    z.next_out = dst;
    z.avail_out = (uInt)cluster;
    int zr = inflate(&z, Z_FINISH);
    bool ok = (zr == Z_STREAM_END || zr == Z_BUF_ERROR) && z.avail_out == 0;
    inflateEnd(&z);
    return ok ? 0 : vd_set_error(EIO, "%s: corrupt deflate data", where);
  }
  /* zstd: one or more frames until the cluster is full; trailing padding
   * is ignored (qemu's qcow2_zstd_decompress). */
  ZSTD_DCtx *dc = ZSTD_createDCtx();
  if (!dc)
    return vd_set_error(ENOMEM, "%s: out of memory", where);
  ZSTD_inBuffer in = { src, slen, 0 };
  ZSTD_outBuffer out = { dst, cluster, 0 };
  int r = 0;
  while (out.pos < out.size) {
    size_t before_in = in.pos, before_out = out.pos;
    size_t zr = ZSTD_decompressStream(dc, &out, &in);
    if (ZSTD_isError(zr)) {
      r = vd_set_error(EIO, "%s: corrupt zstd data (%s)", where,
                       ZSTD_getErrorName(zr));
      break;
    }
    if (in.pos == before_in && out.pos == before_out) {
      r = vd_set_error(EIO, "%s: truncated zstd data", where);
      break;
    }
  }
  ZSTD_freeDCtx(dc);
  return r;
}
