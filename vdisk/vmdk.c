/* libvdisk — the VMDK driver (read-only): open (descriptor or sparse
 * extent, extents under the confinement rules, parent), reads, block
 * status, info.  Formats and layouts in vdisk/vmdk.h; the descriptor
 * parser in vmdk-desc.c; sparse extents in vmdk-sparse.c; what is
 * supported and refused in docs/vmdk.md.
 *
 * Every file a descriptor names (extents, parentFileNameHint) is checked
 * like a VHD parent before it is opened (vdisk/parent.h): it must resolve
 * (realpath) to a regular file inside the folder of the image the operator
 * named, unless the operator named it (--backing) or chose
 * VD_PARENT_ANY_FOLDER.  After open nothing changes: reads only consult
 * tables under a per-extent lock (the grain table cache).
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
#include "vdisk/vmdk.h"

static const char *const vmdk_aliases[] = { NULL };

/* qemu's probe: a sparse magic, or a text whose first line that is not a
 * comment or blank is "version=1..3". */
static int
vmdk_probe(const struct vd_probe_data *pd)
{
  if (pd->head_len >= 4 && (memcmp(pd->head, "KDMV", 4) == 0 ||
                            memcmp(pd->head, "COWD", 4) == 0))
    return 100;
  const char *p = (const char *)pd->head, *end = p + pd->head_len;
  while (p < end) {
    if (*p == '#' || *p == '\n' || *p == '\r') {
      const char *nl = memchr(p, '\n', (size_t)(end - p));
      if (!nl)
        return 0;
      p = nl + 1;
      continue;
    }
    if (*p == ' ' || *p == '\t') {
      p++;
      continue;
    }
    for (char v = '1'; v <= '3'; v++) {
      char a[] = "version=X\n", b[] = "version=X\r\n";
      a[8] = b[8] = v;
      if ((size_t)(end - p) >= strlen(a) && memcmp(p, a, strlen(a)) == 0)
        return 100;
      if ((size_t)(end - p) >= strlen(b) && memcmp(p, b, strlen(b)) == 0)
        return 100;
    }
    return 0;
  }
  return 0;
}

/* ---- close ---- */

static void
vmdk_close(struct vd_dev *dev)
{
  struct vmdk_priv *p = dev->priv;
  vd_close(p->parent);
  p->parent = NULL;
  for (unsigned i = 0; i < p->n; i++) {
    struct vmdk_extent *e = &p->ext[i];
    vmdk_sparse_free(e);
    if (e->own_file)
      vd_file_close(e->file);
    free(e->name);
  }
  free(p->ext);
  p->ext = NULL;
  p->n = 0;
  vmdk_desc_free(&p->desc);
}

/* ---- extents ---- */

static unsigned
vmdk_file_flags(const struct vd_dev *dev)
{
  unsigned ff = 0;
  if (dev->open_flags & VD_OPEN_DIRECT)
    ff |= VD_FILE_DIRECT;
  if (dev->open_flags & VD_OPEN_NOLOCK)
    ff |= VD_FILE_NOLOCK;
  return ff;
}

/* NAME (from the descriptor) as a path: relative to the folder of
 * dev->path, as VMware and qemu resolve it. */
static int
vmdk_join(const struct vd_dev *dev, const char *name, char *out)
{
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", dev->path);
  const char *dir = dirname(tmp);
  int k = name[0] == '/' ? snprintf(out, PATH_MAX, "%s", name)
          : snprintf(out, PATH_MAX, "%s/%s", dir, name);
  return k > 0 && k < PATH_MAX ? 0 : -1;
}

/* Open the file the descriptor names NAME for E, under the parent rules:
 * confined to the image's folder tree, a regular file, no symlink out. */
static int
vmdk_open_extent_file(struct vd_dev *dev, struct vmdk_extent *e,
                      const char *name)
{
  char cand[PATH_MAX], real[PATH_MAX], dir[PATH_MAX];
  if (vmdk_join(dev, name, cand) < 0)
    return vd_set_error(ENAMETOOLONG, "%s: extent %s: path too long",
                        dev->path, name);
  struct vd_parent_refusal ref = { .err = 0 };
  const char *dirp = vd_parent_real_dir(dev, dir) == 0 ? dir : NULL;
  int r = vd_parent_candidate_ok(dev, cand, real, false, dirp, &ref);
  if (r < 0)
    return vd_set_error(ELOOP, "%s: extent %s is an image of the chain "
                        "itself", dev->path, name);
  if (r == 1)
    return vd_set_error(ref.err, "%s: extent %s %s", dev->path, name,
                        ref.why);
  /* The resolved path, so a symlink swapped in after the check cannot
   * redirect the open. */
  if ((r = vd_file_open(real, vmdk_file_flags(dev), &e->file)) < 0)
    return vd_prefix_error(-r, "%s: extent %s", dev->path, name);
  e->own_file = true;
  return 0;
}

/* Read the header of sparse extent E (its file open) and load its grain
 * directory; *H gets the header (the footer's for a stream whose header
 * defers the GD to the end). */
static int
vmdk_open_sparse(struct vd_dev *dev, struct vmdk_extent *e, const char *name,
                 struct vmdk_sparse_hdr *h)
{
  char where[PATH_MAX + 64];
  uint8_t buf[512];
  int r;
  if (e->file == dev->file)
    snprintf(where, sizeof where, "%s", dev->path);
  else
    snprintf(where, sizeof where, "%s: extent %s", dev->path, name);
  if ((r = vd_file_size(e->file, &e->file_size)) < 0)
    return r;
  if (e->file_size < 512)
    return vd_set_error(EINVAL, "%s: file too short for a sparse extent "
                        "header", where);
  if ((r = vd_file_pread(e->file, buf, sizeof buf, 0)) < 0 ||
      (r = vmdk_sparse_header(buf, h, where)) < 0)
    return r;
  if (!h->cowd && h->gd_offset == VMDK_GD_AT_END) {
    uint8_t f[1536];
    if (e->file_size < 2048)
      return vd_set_error(EINVAL, "%s: grain directory at the end, but the "
                          "file is too short for a footer", where);
    if ((r = vd_file_pread(e->file, f, sizeof f, e->file_size - 1536)) < 0)
      return r;
    static const uint8_t zero12[12];
    if (vd_get_le32(f + 8) != 0 || vd_get_le32(f + 12) != 3 ||
        memcmp(f + 512, "KDMV", 4) != 0 ||
        memcmp(f + 1024, zero12, 12) != 0 || vd_get_le32(f + 1036) != 0)
      return vd_set_error(EINVAL, "%s: grain directory at the end, but no "
                          "valid footer", where);
    if ((r = vmdk_sparse_header(f + 512, h, where)) < 0)
      return r;
    if (h->gd_offset == VMDK_GD_AT_END)
      return vd_set_error(EINVAL, "%s: the footer also defers the grain "
                          "directory", where);
  }
  e->type = h->cowd ? VMDK_EXT_VMFSSPARSE : VMDK_EXT_SPARSE;
  return vmdk_sparse_load(e, h, where);
}

static int
vmdk_add_extent(struct vmdk_priv *p, struct vmdk_extent **out,
                const char *path)
{
  if (p->n % 16 == 0) {
    void *ne = realloc(p->ext, (p->n + 16) * sizeof *p->ext);
    if (!ne)
      return vd_set_error(ENOMEM, "%s: out of memory", path);
    p->ext = ne;
  }
  *out = &p->ext[p->n++];
  memset(*out, 0, sizeof **out);
  return 0;
}

/* A descriptor file: open every extent it names. */
static int
vmdk_open_desc_file(struct vd_dev *dev, uint64_t fsz)
{
  struct vmdk_priv *p = dev->priv;
  if (fsz > VMDK_DESC_MAX)
    return vd_set_error(EINVAL, "%s: not a VMDK sparse extent, and too "
                        "large (%" PRIu64 " bytes) for a descriptor",
                        dev->path, fsz);
  char *text = malloc(fsz ? fsz : 1);
  if (!text)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = vd_file_pread(dev->file, text, fsz, 0);
  if (r == 0)
    r = vmdk_desc_parse(text, fsz, &p->desc, dev->path);
  free(text);
  if (r < 0)
    return r;
  if (p->desc.n == 0)
    return vd_set_error(EINVAL, "%s: descriptor names no extent", dev->path);
  uint64_t start = 0;
  for (unsigned i = 0; i < p->desc.n; i++) {
    const struct vmdk_desc_extent *x = &p->desc.ext[i];
    struct vmdk_extent *e;
    if ((r = vmdk_add_extent(p, &e, dev->path)) < 0)
      return r;
    e->type = x->type;
    e->start = start;
    e->len = x->sectors * 512;
    if (x->file && !(e->name = strdup(x->file)))
      return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    if (x->type != VMDK_EXT_ZERO &&
        (r = vmdk_open_extent_file(dev, e, x->file)) < 0)
      return r;
    if (x->type == VMDK_EXT_FLAT || x->type == VMDK_EXT_VMFS) {
      e->flat_off = x->offset * 512;
    } else if (x->type == VMDK_EXT_SPARSE ||
               x->type == VMDK_EXT_VMFSSPARSE) {
      struct vmdk_sparse_hdr h;
      if ((r = vmdk_open_sparse(dev, e, x->file, &h)) < 0)
        return r;
      /* As qemu: the extent's own capacity counts. */
      if (!p->cluster_size)
        p->cluster_size = e->grain;
    }
    if (vd_add_overflow(start, e->len, &start) || start > (UINT64_C(1) << 63))
      return vd_set_error(EINVAL, "%s: extents add up to more than 2^63 "
                          "bytes", dev->path);
  }
  dev->size = start;
  snprintf(p->create_type, sizeof p->create_type, "%s",
           p->desc.create_type);
  return 0;
}

/* A sparse extent opened directly: it is the whole disk; its embedded
 * descriptor (if any) gives CID, parent and createType, never files. */
static int
vmdk_open_monolithic(struct vd_dev *dev)
{
  struct vmdk_priv *p = dev->priv;
  struct vmdk_extent *e;
  struct vmdk_sparse_hdr h;
  int r;
  if ((r = vmdk_add_extent(p, &e, dev->path)) < 0)
    return r;
  e->file = dev->file;
  const char *base = strrchr(dev->path, '/');
  if (!(e->name = strdup(base ? base + 1 : dev->path)))
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  if ((r = vmdk_open_sparse(dev, e, e->name, &h)) < 0)
    return r;
  dev->size = e->len;
  p->cluster_size = e->grain;
  if (h.cowd) {
    snprintf(p->create_type, sizeof p->create_type, "vmfsSparse");
    p->desc.parent_cid = VMDK_NO_PARENT_CID;
    return 0;
  }
  if (h.desc_offset && h.desc_size) {
    uint64_t off = h.desc_offset * 512, len = h.desc_size * 512;
    if (!vd_range_ok(off, len, e->file_size))
      return vd_set_error(EINVAL, "%s: embedded descriptor lies past the end "
                          "of the file", dev->path);
    char *text = malloc(len);
    if (!text)
      return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    char where[PATH_MAX + 32];
    snprintf(where, sizeof where, "%s: embedded descriptor", dev->path);
    r = vd_file_pread(dev->file, text, len, off);
    if (r == 0)
      r = vmdk_desc_parse(text, len, &p->desc, where);
    free(text);
    if (r < 0)
      return r;
    snprintf(p->create_type, sizeof p->create_type, "%s",
             p->desc.create_type);
  } else {
    p->desc.parent_cid = VMDK_NO_PARENT_CID;
  }
  if (e->compressed)      /* as qemu reports it */
    snprintf(p->create_type, sizeof p->create_type, "streamOptimized");
  else if (!p->create_type[0])
    snprintf(p->create_type, sizeof p->create_type, "monolithicSparse");
  return 0;
}

/* ---- parent ---- */

static int
vmdk_open_parent(struct vd_dev *dev)
{
  struct vmdk_priv *p = dev->priv;
  bool override = dev->opts.backing && !dev->child;
  char cand[PATH_MAX], real[PATH_MAX], dir[PATH_MAX];
  const char *hint = override ? dev->opts.backing : p->desc.parent_hint;
  if (override)
    snprintf(cand, sizeof cand, "%s", hint);
  else if (vmdk_join(dev, hint, cand) < 0)
    return vd_set_error(ENAMETOOLONG, "%s: parent %s: path too long",
                        dev->path, hint);
  snprintf(p->parent_path, sizeof p->parent_path, "%s", cand);
  /* The child says VMDK; only the operator may say otherwise. */
  snprintf(p->parent_format, sizeof p->parent_format, "%s",
           dev->opts.backing_format && (override || !dev->child)
           ? dev->opts.backing_format : "vmdk");
  if (dev->open_flags & VD_OPEN_NOPARENT)
    return 0;
  int depth = 0;
  for (const struct vd_dev *d = dev->child; d; d = d->child)
    depth++;
  if (depth >= VMDK_MAX_CHAIN)
    return vd_set_error(ELOOP, "%s: chain of delta disks deeper than %d",
                        dev->path, VMDK_MAX_CHAIN);
  struct vd_parent_refusal ref = { .err = 0 };
  const char *dirp = vd_parent_real_dir(dev, dir) == 0 ? dir : NULL;
  int r = vd_parent_candidate_ok(dev, cand, real, override, dirp, &ref);
  if (r < 0)
    return r;
  if (r == 1)
    return vd_set_error(ref.err, "%s: parent %s %s", dev->path, ref.path,
                        ref.why);
  struct vd_open_args a = {
    .flags = dev->open_flags & (VD_OPEN_DIRECT | VD_OPEN_NOLOCK),
    .parent_policy = dev->opts.parent_policy,
    .format = p->parent_format,
  };
  struct vd_dev *parent;
  r = override ? vd_open_parent_operator(dev, cand, &a, &parent)
               : vd_open_parent(dev, cand, &a, &parent);
  if (r < 0)
    return dev->child ? r : vd_prefix_error(-r, "%s: parent", dev->path);
  if (parent->drv == &vd_vmdk_driver) {
    uint32_t cid = ((const struct vmdk_priv *)parent->priv)->desc.cid;
    if (cid != p->desc.parent_cid) {
      vd_close(parent);
      return vd_set_error(EINVAL, "%s: parent %s does not match: its CID is "
                          "%08" PRIx32 ", parentCID says %08" PRIx32,
                          dev->path, cand, cid, p->desc.parent_cid);
    }
  }
  p->parent = parent;
  return 0;
}

/* ---- open ---- */

static int
vmdk_open_inner(struct vd_dev *dev)
{
  uint64_t fsz;
  uint8_t magic[4] = { 0 };
  int r;
  if ((r = vd_file_size(dev->file, &fsz)) < 0)
    return r;
  if (fsz >= 4 && (r = vd_file_pread(dev->file, magic, 4, 0)) < 0)
    return r;
  if (memcmp(magic, "KDMV", 4) == 0 || memcmp(magic, "COWD", 4) == 0)
    r = vmdk_open_monolithic(dev);
  else
    r = vmdk_open_desc_file(dev, fsz);
  if (r < 0)
    return r;
  struct vmdk_priv *p = dev->priv;
  dev->preferred_io = p->cluster_size > 4096 && p->cluster_size <= (1u << 20)
                      ? (uint32_t)p->cluster_size : 4096;
  if (!p->desc.parent_hint && !(dev->opts.backing && !dev->child))
    return 0;
  return vmdk_open_parent(dev);
}

/* The core does not call close after a failed open. */
static int
vmdk_open(struct vd_dev *dev)
{
  int r = vmdk_open_inner(dev);
  if (r < 0)
    vmdk_close(dev);
  return r;
}

/* ---- reads ---- */

/* The extent holding virtual byte OFF (binary search over starts). */
static struct vmdk_extent *
vmdk_find(struct vmdk_priv *p, uint64_t off)
{
  unsigned lo = 0, hi = p->n;
  while (hi - lo > 1) {
    unsigned mid = (lo + hi) / 2;
    if (p->ext[mid].start <= off)
      lo = mid;
    else
      hi = mid;
  }
  /* Empty extents (capacity 0) share a start with the next one. */
  while (lo + 1 < p->n && off >= p->ext[lo].start + p->ext[lo].len)
    lo++;
  return &p->ext[lo];
}

static void
vmdk_where(struct vd_dev *dev, const struct vmdk_extent *e, char *where,
           size_t n)
{
  if (e->file == dev->file)
    snprintf(where, n, "%s", dev->path);
  else
    snprintf(where, n, "%s: extent %s", dev->path, e->name);
}

/* Read N bytes at OFF (virtual) from sparse extent E, inside one grain. */
static int
vmdk_read_grain(struct vd_dev *dev, struct vmdk_extent *e, uint8_t *b,
                uint64_t n, uint64_t off)
{
  char where[PATH_MAX + 64];
  uint64_t rel = off - e->start, g = rel / e->grain, goff = rel % e->grain;
  enum vmdk_grain_kind kind;
  uint64_t host;
  vmdk_where(dev, e, where, sizeof where);
  int r = vmdk_sparse_grain(e, g, &kind, &host, where);
  if (r < 0)
    return r;
  switch (kind) {
  case VMDK_GRAIN_UNALLOC:
    return vd_parent_pread(((struct vmdk_priv *)dev->priv)->parent, b, n,
                           off);
  case VMDK_GRAIN_ZERO:
    memset(b, 0, n);
    return 0;
  case VMDK_GRAIN_DATA:
    return vd_file_pread(e->file, b, n, host + goff);
  case VMDK_GRAIN_COMPRESSED:
    break;
  }
  uint8_t *tmp = n == e->grain ? b : malloc(e->grain);
  if (!tmp)
    return vd_set_error(ENOMEM, "%s: out of memory", where);
  r = vmdk_sparse_inflate(e, host, tmp, where);
  if (r == 0 && tmp != b)
    memcpy(b, tmp + goff, n);
  if (tmp != b)
    free(tmp);
  return r;
}

static int
vmdk_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  struct vmdk_priv *p = dev->priv;
  uint8_t *b = buf;
  while (len) {
    struct vmdk_extent *e = vmdk_find(p, off);
    uint64_t n = e->start + e->len - off;
    if (n > len)
      n = len;
    int r = 0;
    if (e->type == VMDK_EXT_ZERO) {
      memset(b, 0, n);
    } else if (e->type == VMDK_EXT_FLAT || e->type == VMDK_EXT_VMFS) {
      r = vd_file_pread(e->file, b, n, e->flat_off + (off - e->start));
    } else {
      uint64_t goff = (off - e->start) % e->grain;
      if (n > e->grain - goff)
        n = e->grain - goff;
      r = vmdk_read_grain(dev, e, b, n, off);
    }
    if (r < 0)
      return r;
    b += n;
    off += n;
    len -= n;
  }
  return 0;
}

/* ---- block status ---- */

/* What this layer says of [OFF, OFF+LEN) inside one extent: *N bytes from
 * OFF of one kind (merged over grains), source 0 zeros (hole when SOFT),
 * 1 the parent, 2 data at *HOST (-1: not a plain mapping). */
static int
vmdk_map(struct vd_dev *dev, struct vmdk_extent *e, uint64_t off,
         uint64_t len, uint64_t *n, int *src, int64_t *host)
{
  struct vmdk_priv *p = dev->priv;
  uint64_t left = e->start + e->len - off;
  if (len > left)
    len = left;
  *n = len;
  *host = -1;
  if (e->type == VMDK_EXT_ZERO) {
    *src = 0;
    return 0;
  }
  if (e->type == VMDK_EXT_FLAT || e->type == VMDK_EXT_VMFS) {
    /* Holes of a flat file read as zeros: report them, so copies stay
     * sparse. */
    bool data;
    uint64_t fo = e->flat_off + (off - e->start), run;
    int r = vd_file_extent(e->file, fo, len, &data, &run);
    if (r < 0)
      return r;
    *n = run ? run : len;
    *src = data ? 2 : 0;
    if (data)
      *host = (int64_t)fo;
    return 0;
  }
  char where[PATH_MAX + 64];
  vmdk_where(dev, e, where, sizeof where);
  uint64_t rel = off - e->start, done = 0;
  int first = -1;
  uint64_t expect = 0;
  while (done < len) {
    uint64_t g = (rel + done) / e->grain, goff = (rel + done) % e->grain;
    uint64_t m = e->grain - goff;
    if (m > len - done)
      m = len - done;
    enum vmdk_grain_kind kind;
    uint64_t h;
    int r = vmdk_sparse_grain(e, g, &kind, &h, where);
    if (r < 0)
      return r;
    int s = kind == VMDK_GRAIN_UNALLOC ? (p->parent ? 1 : 3)
            : kind == VMDK_GRAIN_ZERO ? 0 : 2;
    if (first < 0) {
      first = s;
      if (kind == VMDK_GRAIN_DATA)
        *host = (int64_t)(h + goff);
    } else if (s != first ||
               (kind == VMDK_GRAIN_DATA && (*host < 0 || h != expect)) ||
               (kind == VMDK_GRAIN_COMPRESSED && *host >= 0)) {
      break;
    }
    expect = h + goff + m;
    done += m;
  }
  *n = done;
  *src = first;
  return 0;
}

static int
vmdk_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                  struct vd_extent *ext)
{
  struct vmdk_priv *p = dev->priv;
  uint64_t n;
  int64_t host;
  int src;
  int r = vmdk_map(dev, vmdk_find(p, off), off, len, &n, &src, &host);
  if (r < 0)
    return r;
  ext->length = n;
  ext->depth = 0;
  ext->host_offset = host;
  switch (src) {
  case 2:
    ext->flags = 0;
    return 0;
  case 0:                       /* zero grain, ZERO extent, flat hole */
    ext->flags = VD_EXT_ZERO;
    return 0;
  case 3:                       /* unallocated, no parent */
    ext->flags = VD_EXT_HOLE | VD_EXT_ZERO;
    return 0;
  }
  return vd_parent_block_status(p->parent, off, n, ext);
}

/* ---- info ---- */

static void
vmdk_info(struct vd_dev *dev, struct vd_info *info)
{
  struct vmdk_priv *p = dev->priv;
  vd_info_add_u64(info, "cid", p->desc.cid);
  vd_info_add_u64(info, "parent-cid", p->desc.parent_cid);
  vd_info_add_str(info, "create-type", p->create_type);
  vd_info_add_u64(info, "extents", p->n);
  info->cluster_size = p->cluster_size;
  if (p->desc.parent_hint)
    snprintf(info->backing_stored, sizeof info->backing_stored, "%s",
             p->desc.parent_hint);
  if (p->parent_path[0]) {
    snprintf(info->backing, sizeof info->backing, "%s", p->parent_path);
    snprintf(info->backing_format, sizeof info->backing_format, "%s",
             p->parent_format);
  }
}

static struct vd_dev *
vmdk_backing_dev(struct vd_dev *dev)
{
  return ((struct vmdk_priv *)dev->priv)->parent;
}

const struct vd_driver vd_vmdk_driver = {
  .name = "vmdk",
  .aliases = vmdk_aliases,
  .priv_size = sizeof (struct vmdk_priv),
  .probe = vmdk_probe,
  .open = vmdk_open,
  .close = vmdk_close,
  .pread = vmdk_pread,
  .block_status = vmdk_block_status,
  .info = vmdk_info,
  .backing_dev = vmdk_backing_dev,
  .read_only_hint = "VMDK images are read-only in vdisk: convert to a "
                    "writable format (vdtool convert -O vhdx) instead",
};

VD_REGISTER_DRIVER(vd_vmdk_driver);
