/* libvdisk — the VHDX driver: open (headers, log replay, region table,
 * metadata, BAT), reads, block status, info.  Layout and spec sections in
 * vdisk/vhdx.h; what is accepted from other writers in docs/vhdx.md.
 *
 * A writable open replays a dirty log into the file as [MS-VHDX] 2.3.3
 * asks, then records the replay in both headers; a read-only open replays
 * into memory and never writes.  Creation and writes are in vhdx-write.c;
 * concurrency in vhdx.h (struct vhdx_priv).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vdisk/endian.h"
#include "vdisk/io.h"
#include "vdisk/parent.h"
#include "vdisk/vhd.h"
#include "vdisk/vhdx.h"

static const char *const vhdx_aliases[] = { NULL };

static int
vhdx_probe(const struct vd_probe_data *pd)
{
  return pd->head_len >= 8 && memcmp(pd->head, "vhdxfile", 8) == 0 ? 100 : 0;
}

/* ---- file access as the parsers see it (after replay) ---- */

struct vhdx_reader {
  struct vd_dev *dev;
  const struct vhdx_replay *replay;   /* NULL: the file as it is */
};

static int
vhdx_read_cb(void *opaque, void *buf, size_t len, uint64_t off)
{
  struct vhdx_reader *rd = opaque;
  int r = vd_file_pread(rd->dev->file, buf, len, off);
  if (r == 0 && rd->replay && rd->replay->n)
    vhdx_log_overlay(rd->replay, buf, len, off);
  return r;
}

int
vhdx_fread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  struct vhdx_priv *p = dev->priv;
  struct vhdx_reader rd = { dev, &p->replay };
  return vhdx_read_cb(&rd, buf, len, off);
}

/* ---- headers ---- */

static int
vhdx_write_header_slots(struct vd_dev *dev, int count)
{
  struct vhdx_priv *p = dev->priv;
  if (p->hdr_err)
    return vhdx_hdr_failed(dev);
  uint8_t *buf = vd_alloc_aligned(VHDX_HEADER_SIZE);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = 0;
  for (int k = 0; k < count && r == 0; k++) {
    int slot = 1 - p->cur;
    p->header.seq++;
    vhdx_header_encode(&p->header, buf);
    r = vd_file_pwrite(dev->file, buf, VHDX_HEADER_SIZE,
                       VHDX_HEADER_OFF(slot));
    if (r == 0)
      r = vd_file_flush(dev->file);
    if (r == 0)
      p->cur = slot;
  }
  vd_free_aligned(buf);
  if (r < 0)
    p->hdr_err = -r;
  return r < 0 ? vd_prefix_error(-r, "%s: header update", dev->path) : 0;
}

int
vhdx_hdr_failed(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  return vd_set_error(p->hdr_err, "%s: an earlier header update failed "
                      "(%s): no more metadata is written until the image "
                      "is opened again", dev->path, strerror(p->hdr_err));
}

int
vhdx_write_headers(struct vd_dev *dev)
{
  return vhdx_write_header_slots(dev, 2);
}

int
vhdx_write_header(struct vd_dev *dev)
{
  return vhdx_write_header_slots(dev, 1);
}

static int
vhdx_load_headers(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  uint8_t *buf = malloc(VHDX_HEADER_SIZE);
  char err[2][512], where[PATH_MAX + 32];
  struct vhdx_header h[2];
  bool ok[2];
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  for (int i = 0; i < 2; i++) {
    int r = vd_file_pread(dev->file, buf, VHDX_HEADER_SIZE,
                          VHDX_HEADER_OFF(i));
    if (r < 0) {
      free(buf);
      return r;
    }
    snprintf(where, sizeof where, "header %d", i + 1);
    ok[i] = vhdx_header_decode(buf, &h[i], where) == 0;
    snprintf(err[i], sizeof err[i], "%s", ok[i] ? "" : vd_error());
  }
  free(buf);
  if (!ok[0] && !ok[1])
    return vd_set_error(EINVAL, "%s: no valid header (%s; %s)", dev->path,
                        err[0], err[1]);
  p->cur = ok[0] && (!ok[1] || h[0].seq >= h[1].seq) ? 0 : 1;
  p->header = h[p->cur];
  return 0;
}

/* ---- log ---- */

static int vhdx_apply_log(struct vd_dev *dev, const char *where);

static int
vhdx_replay_log(struct vd_dev *dev, uint64_t fsz)
{
  struct vhdx_priv *p = dev->priv;
  struct vhdx_reader raw = { dev, NULL };
  char where[PATH_MAX + 16];
  snprintf(where, sizeof where, "%s: log", dev->path);
  int r = vhdx_log_find(vhdx_read_cb, &raw, &p->header, fsz, &p->replay,
                        where);
  if (r < 0)
    return r;
  p->file_size = fsz;
  if (!p->replay.head_seq) {
    if (!vhdx_guid_zero(p->header.log_guid) && !dev->read_only) {
      /* A LogGuid with nothing to replay: record the clean state. */
    }
    return 0;
  }
  p->replayed = true;
  if (dev->read_only) {
    /* Replayed in memory: the file stays as it is, reads see the log. */
    if (p->replay.last_file_offset > fsz)
      p->file_size = p->replay.last_file_offset;
    return 0;
  }
  return vhdx_apply_log(dev, where);
}

/* Write the replayed log into the (writable) file, then retire it in both
 * headers: a new FileWriteGuid and no LogGuid (2.2.2). */
static int
vhdx_apply_log(struct vd_dev *dev, const char *where)
{
  struct vhdx_priv *p = dev->priv;
  int r;
  if ((r = vhdx_log_apply(&p->replay, dev->file, where)) < 0)
    return r;
  vhdx_replay_free(&p->replay);
  if ((r = vd_file_size(dev->file, &p->file_size)) < 0)
    return r;
  vhd_uuid_generate(p->header.file_write_guid);
  memset(p->header.log_guid, 0, 16);
  return vhdx_write_headers(dev);
}

/* vd_reopen switched the file to read-write: a log a read-only open
 * replayed in memory goes into the file first (2.3.3: replay before any
 * modification), else the first write's new log entry would overwrite it
 * and the blocks only it maps would be lost.  Reads lay the replay over
 * the file without the lock, so no request may be in flight (vdtool commit
 * -b is alone; a live intermediate commit needs a VHD below its top, so
 * never has a VHDX base).  Going read-only: vd_reopen has flushed, which
 * retired this session's log. */
static int
vhdx_reopen(struct vd_dev *dev, bool write)
{
  struct vhdx_priv *p = dev->priv;
  if (!write || !p->replay.head_seq)
    return 0;
  char where[PATH_MAX + 16];
  snprintf(where, sizeof where, "%s: log", dev->path);
  pthread_mutex_lock(&p->lock);
  int r = vhdx_apply_log(dev, where);
  pthread_mutex_unlock(&p->lock);
  return r;
}

static struct vd_dev *
vhdx_backing_dev(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  return p->parent;
}

/* ---- regions, metadata, BAT ---- */

static int
vhdx_load_regions(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  uint8_t *buf = malloc(VHDX_RT_SIZE);
  struct vhdx_region *rg = malloc(VHDX_RT_MAX * sizeof *rg);
  char err[2][512], where[64];
  int r = 0, use = -1;
  uint32_t n = 0;
  if (!buf || !rg) {
    r = vd_set_error(ENOMEM, "%s: out of memory", dev->path);
    goto out;
  }
  for (int i = 0; i < 2 && use < 0; i++) {
    if ((r = vhdx_fread(dev, buf, VHDX_RT_SIZE, VHDX_RT_OFF(i))) < 0)
      goto out;
    snprintf(where, sizeof where, "region table %d", i + 1);
    if (vhdx_region_decode(buf, rg, &n, where) == 0)
      use = i;
    else
      snprintf(err[i], sizeof err[i], "%s", vd_error());
  }
  if (use < 0) {
    r = vd_set_error(EINVAL, "%s: no valid region table (%s; %s)", dev->path,
                     err[0], err[1]);
    goto out;
  }
  bool bat = false, meta = false;
  for (uint32_t i = 0; i < n; i++) {
    if (memcmp(rg[i].guid, vhdx_guid_bat, 16) == 0) {
      p->bat_region = rg[i];
      bat = true;
    } else if (memcmp(rg[i].guid, vhdx_guid_metadata, 16) == 0) {
      p->meta_region = rg[i];
      meta = true;
    }
  }
  if (!bat || !meta) {
    r = vd_set_error(EINVAL, "%s: region table %d has no %s region",
                     dev->path, use + 1, bat ? "metadata" : "BAT");
    goto out;
  }
  /* The regions lie inside the file, apart from each other and the log. */
  const struct vhdx_region *b = &p->bat_region, *m = &p->meta_region;
  const char *bad = NULL;
  if (!vd_range_ok(b->off, b->len, p->file_size))
    bad = "the BAT region lies past the end of the file";
  else if (!vd_range_ok(m->off, m->len, p->file_size))
    bad = "the metadata region lies past the end of the file";
  else if (vhdx_overlap(b->off, b->len, m->off, m->len))
    bad = "the BAT and metadata regions overlap";
  else if (p->header.log_length &&
           (vhdx_overlap(b->off, b->len, p->header.log_offset,
                         p->header.log_length) ||
            vhdx_overlap(m->off, m->len, p->header.log_offset,
                         p->header.log_length)))
    bad = "a region overlaps the log";
  if (bad)
    r = vd_set_error(EINVAL, "%s: region table: %s", dev->path, bad);
out:
  free(buf);
  free(rg);
  return r;
}

static int
vhdx_load_bat(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  const struct vhdx_meta *m = &p->meta;
  vhdx_bat_geometry(m, &p->data_blocks, &p->chunk_ratio, &p->bat_entries);
  p->sectors_per_block = m->block_size / m->lss;
  if (p->bat_entries > p->bat_region.len / 8)
    return vd_set_error(EINVAL, "%s: BAT region of %u bytes holds fewer "
                        "than the %" PRIu64 " entries the disk needs",
                        dev->path, p->bat_region.len, p->bat_entries);
  size_t bytes = (size_t)p->bat_entries * 8;
  uint8_t *raw = malloc(bytes);
  p->bat = malloc(bytes);
  if (!raw || !p->bat) {
    free(raw);
    return vd_set_error(ENOMEM, "%s: out of memory for a BAT of %" PRIu64
                        " entries", dev->path, p->bat_entries);
  }
  int r = vhdx_fread(dev, raw, bytes, p->bat_region.off);
  if (r < 0) {
    free(raw);
    return r;
  }
  uint32_t cr = p->chunk_ratio;
  for (uint64_t i = 0; i < p->bat_entries && r == 0; i++) {
    uint64_t e = vd_get_le64(raw + 8 * i);
    unsigned st = VHDX_BAT_STATE(e);
    uint64_t off = VHDX_BAT_OFFSET(e);
    bool sb = i % (cr + 1) == cr;
    p->bat[i] = e;
    if (sb) {
      if (st != VHDX_SB_NOT_PRESENT && st != VHDX_SB_PRESENT)
        r = vd_set_error(EINVAL, "%s: BAT entry %" PRIu64 " (sector bitmap) "
                         "has reserved state %u", dev->path, i, st);
      else if (st == VHDX_SB_PRESENT && m->has_parent &&
               (off < VHDX_MiB || !vd_range_ok(off, VHDX_SB_SIZE,
                                               p->file_size)))
        r = vd_set_error(EINVAL, "%s: BAT entry %" PRIu64 " (sector bitmap) "
                         "points outside the file", dev->path, i);
      continue;
    }
    uint64_t blk = i - i / (cr + 1);
    if (st == 4 || st == 5) {
      r = vd_set_error(EINVAL, "%s: BAT entry %" PRIu64 " (block %" PRIu64
                       ") has reserved state %u", dev->path, i, blk, st);
    } else if (st == VHDX_PB_PARTIALLY_PRESENT && !m->has_parent) {
      r = vd_set_error(EINVAL, "%s: BAT entry %" PRIu64 " (block %" PRIu64
                       ") is partially present in an image without a "
                       "parent", dev->path, i, blk);
    } else if (st == VHDX_PB_FULLY_PRESENT ||
               st == VHDX_PB_PARTIALLY_PRESENT) {
      /* The block's bytes in use must start inside the file, after the
       * header section (reads past the end give zeros, as for a file
       * whose last block was not written out in full). */
      if (off < VHDX_MiB || off >= p->file_size)
        r = vd_set_error(EINVAL, "%s: BAT entry %" PRIu64 " (block %" PRIu64
                         ") points outside the file (offset %" PRIu64 ")",
                         dev->path, i, blk, off);
      else if (st == VHDX_PB_PARTIALLY_PRESENT &&
               VHDX_BAT_STATE(vd_get_le64(raw + 8 * ((i / (cr + 1)) *
                                                    (cr + 1) + cr))) !=
               VHDX_SB_PRESENT)
        r = vd_set_error(EINVAL, "%s: BAT entry %" PRIu64 " (block %" PRIu64
                         ") is partially present but its sector bitmap is "
                         "not", dev->path, i, blk);
    }
  }
  free(raw);
  return r;
}

/* ---- parent ---- */

/* Open CAND (checked) as DEV's parent.  0 with p->parent set; 1 if it is
 * a VHDX whose DataWriteGuid is none of WANT (*GOT gets it); -errno. */
static int
vhdx_try_parent(struct vd_dev *dev, const char *cand, uint8_t want[][16],
                int nwant, char *got)
{
  struct vhdx_priv *p = dev->priv;
  bool override = dev->opts.backing && !dev->child;
  struct vd_open_args a = {
    .flags = dev->open_flags & (VD_OPEN_DIRECT | VD_OPEN_NOLOCK),
    .parent_policy = dev->opts.parent_policy,
    /* The child says VHDX; only the operator may say otherwise. */
    .format = dev->opts.backing_format && (override || !dev->child)
              ? dev->opts.backing_format : "vhdx",
  };
  struct vd_dev *parent;
  int r = vd_open_parent(dev, cand, &a, &parent);
  if (r < 0)
    return dev->child ? r : vd_prefix_error(-r, "%s: parent", dev->path);
  struct vhdx_priv *pp = parent->drv == &vd_vhdx_driver ? parent->priv : NULL;
  if (pp) {
    bool match = false;
    for (int i = 0; i < nwant; i++)
      match |= memcmp(pp->header.data_write_guid, want[i], 16) == 0;
    if (!match) {
      vhdx_guid_format(pp->header.data_write_guid, got);
      vd_close(parent);
      return 1;
    }
    if (pp->meta.lss != p->meta.lss) {
      vd_close(parent);
      return vd_set_error(EINVAL, "%s: parent %s has %u-byte sectors, the "
                          "child %u", dev->path, cand, pp->meta.lss,
                          p->meta.lss);
    }
  }
  p->parent = parent;
  snprintf(p->parent_format, sizeof p->parent_format, "%s", vd_format(parent));
  return 0;
}

static int
vhdx_open_parent(struct vd_dev *dev, bool lookup_only)
{
  struct vhdx_priv *p = dev->priv;
  const struct vhdx_meta *m = &p->meta;
  uint8_t *item = malloc(m->locator_len ? m->locator_len : 1);
  char where[PATH_MAX + 32];
  int r;
  if (!item || !(p->loc = malloc(sizeof *p->loc))) {
    free(item);
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  }
  r = vhdx_fread(dev, item, m->locator_len,
                 p->meta_region.off + m->locator_off);
  snprintf(where, sizeof where, "%s: metadata", dev->path);
  if (r == 0)
    r = vhdx_locator_decode(item, m->locator_len, p->loc, where);
  free(item);
  if (r < 0)
    return r;
  uint8_t want[2][16];
  int nwant = 0;
  if (vhdx_guid_parse(p->loc->linkage, want[nwant]) == 0)
    nwant++;
  if (p->loc->linkage2[0] && vhdx_guid_parse(p->loc->linkage2,
                                              want[nwant]) == 0)
    nwant++;
  if (!nwant)
    return vd_set_error(EINVAL, "%s: parent locator: parent_linkage '%s' is "
                        "not a GUID", where, p->loc->linkage);

  /* Candidates in the specification's order, relative to the child's
   * folder; a volume path names a volume GUID this host cannot resolve,
   * so only its path part is tried, like the absolute path's without its
   * drive.  The operator's backing option (top image only) replaces them
   * and is exempt from the folder rule. */
  enum { NC = 3 };
  char (*cand)[PATH_MAX] = malloc(2 * NC * sizeof *cand);
  char dir[PATH_MAX], cdir[PATH_MAX], tmp[PATH_MAX];
  if (!cand)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  char (*real)[PATH_MAX] = cand + NC;
  bool override = dev->opts.backing && !dev->child;
  int n = 0;
  snprintf(tmp, sizeof tmp, "%s", dev->path);
  snprintf(cdir, sizeof cdir, "%s", dirname(tmp));
  if (override) {
    snprintf(cand[n++], PATH_MAX, "%s", dev->opts.backing);
  } else {
    const char *paths[NC] = { p->loc->relative_path, p->loc->volume_path,
                              p->loc->absolute_win32_path };
    for (int i = 0; i < NC; i++) {
      const char *s = paths[i];
      if (!s[0])
        continue;
      if (i > 0) {
        if (strncmp(s, "//?/", 4) == 0)
          s += 4;
        if (strncmp(s, "Volume{", 7) == 0)
          s = strchr(s, '/') ? strchr(s, '/') : "";
        else if (s[0] && s[1] == ':')
          s += 2;
      }
      int k = s[0] == '/' || !strcmp(cdir, ".")
              ? snprintf(cand[n], PATH_MAX, "%s", s)
              : snprintf(cand[n], PATH_MAX, "%s/%s", cdir, s);
      if (s[0] && k > 0 && k < PATH_MAX)
        n++;
    }
  }
  struct vd_parent_refusal ref = { .err = 0 };
  const char *dirp = vd_parent_real_dir(dev, dir) == 0 ? dir : NULL;
  char mismatch[PATH_MAX] = "", got[37] = "";
  r = 1;
  for (int i = 0; i < n && r > 0; i++) {
    bool seen = false;
    r = vd_parent_candidate_ok(dev, cand[i], real[i], override, dirp, &ref);
    if (r == 1 || (r < 0 && lookup_only)) {
      real[i][0] = '\0';
      r = 1;
      continue;
    }
    if (r < 0)
      break;
    for (int j = 0; j < i; j++)
      seen |= strcmp(real[i], real[j]) == 0;
    if (seen) {
      r = 1;
      continue;
    }
    snprintf(p->parent_path, sizeof p->parent_path, "%s", cand[i]);
    snprintf(p->parent_format, sizeof p->parent_format, "%s",
             dev->opts.backing_format && (override || !dev->child)
             ? dev->opts.backing_format : "vhdx");
    if (lookup_only) {
      r = 0;
      break;
    }
    r = vhdx_try_parent(dev, cand[i], want, nwant, got);
    if (r == 1 && !mismatch[0])
      snprintf(mismatch, sizeof mismatch, "%s", cand[i]);
  }
  char first[PATH_MAX];
  snprintf(first, sizeof first, "%s", n ? cand[0] : "");
  free(cand);
  if (r <= 0)
    return r;
  p->parent_path[0] = '\0';
  p->parent_format[0] = '\0';
  if (lookup_only) {
    snprintf(p->parent_named, sizeof p->parent_named, "%s", first);
    return 0;
  }
  char exp[37];
  vhdx_guid_format(want[0], exp);
  if (mismatch[0])
    return vd_set_error(EINVAL, "%s: parent %s does not match: its "
                        "DataWriteGuid is %s, parent_linkage says %s",
                        dev->path, mismatch, got, exp);
  if (n == 0)
    return vd_set_error(ENOENT, "%s: parent locator holds no usable path",
                        dev->path);
  if (ref.err && ref.err != ENOENT)
    return vd_set_error(ref.err, "%s: parent %s %s", dev->path, ref.path,
                        ref.why);
  return vd_set_error(ENOENT, "%s: parent image not found (tried %s%s)",
                      dev->path, first, n > 1 ? " and others" : "");
}

/* ---- open / close ---- */

static void
vhdx_close(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  vd_close(p->parent);
  p->parent = NULL;
  if (p->lock_init)
    pthread_mutex_destroy(&p->lock);
  p->lock_init = false;
  free(p->bat);
  p->bat = NULL;
  free(p->loc);
  p->loc = NULL;
  vhdx_replay_free(&p->replay);
}

static int
vhdx_open_inner(struct vd_dev *dev)
{
  struct vhdx_priv *p = dev->priv;
  uint8_t fti[8];
  uint64_t fsz;
  char where[PATH_MAX + 32];
  int r;

  pthread_mutex_init(&p->lock, NULL);
  p->lock_init = true;
  if ((r = vd_file_size(dev->file, &fsz)) < 0)
    return r;
  if (fsz < VHDX_MiB)
    return vd_set_error(EINVAL, "%s: file too short (%" PRIu64 " bytes) for "
                        "a VHDX header section", dev->path, fsz);
  if ((r = vd_file_pread(dev->file, fti, 8, 0)) < 0)
    return r;
  if (memcmp(fti, "vhdxfile", 8) != 0)
    return vd_set_error(EINVAL, "%s: file type identifier: no \"vhdxfile\" "
                        "signature", dev->path);
  if ((r = vhdx_load_headers(dev)) < 0)
    return r;
  if ((r = vhdx_replay_log(dev, fsz)) < 0)
    return r;
  if ((r = vhdx_load_regions(dev)) < 0)
    return r;
  struct vhdx_reader rd = { dev, &p->replay };
  snprintf(where, sizeof where, "%s: metadata", dev->path);
  if ((r = vhdx_meta_read(vhdx_read_cb, &rd, p->meta_region.off,
                          p->meta_region.len, &p->meta, where)) < 0)
    return r;
  if ((r = vhdx_load_bat(dev)) < 0)
    return r;
  dev->size = p->meta.disk_size;
  dev->logical_block = p->meta.lss;
  dev->preferred_io = p->meta.pss > 4096 ? p->meta.pss : 4096;
  dev->strict_align = true;
  if (!p->meta.has_parent)
    return 0;
  if (dev->open_flags & VD_OPEN_NOPARENT)
    return vhdx_open_parent(dev, true);
  int depth = 0;
  for (const struct vd_dev *d = dev->child; d; d = d->child)
    depth++;
  if (depth >= VHDX_MAX_CHAIN)
    return vd_set_error(ELOOP, "%s: chain of differencing images deeper "
                        "than %d", dev->path, VHDX_MAX_CHAIN);
  return vhdx_open_parent(dev, false);
}

/* The core does not call close after a failed open. */
static int
vhdx_open(struct vd_dev *dev)
{
  int r = vhdx_open_inner(dev);
  if (r < 0)
    vhdx_close(dev);
  return r;
}

/* ---- reads ---- */

static uint64_t
vhdx_sb_entry(struct vhdx_priv *p, uint64_t blk)
{
  /* Writers store new entries (vhdx-write.c). */
  return __atomic_load_n(&p->bat[(blk / p->chunk_ratio) *
                                 (p->chunk_ratio + 1) + p->chunk_ratio],
                         __ATOMIC_ACQUIRE);
}

/* What this layer says of [OFF, OFF+LEN) inside one block: how many bytes
 * from OFF share one source (*N), and the source: 0 zeros, 1 the parent,
 * 2 this file at *HOST. */
static int
vhdx_map(struct vd_dev *dev, uint64_t off, uint64_t len, uint64_t *n,
         int *src, uint64_t *host)
{
  struct vhdx_priv *p = dev->priv;
  uint32_t bs = p->meta.block_size, lss = p->meta.lss;
  uint64_t blk = off / bs, boff = off % bs;
  uint64_t e = vhdx_payload_entry(p, blk);
  *n = bs - boff < len ? bs - boff : len;
  *host = VHDX_BAT_OFFSET(e) + boff;
  switch (VHDX_BAT_STATE(e)) {
  case VHDX_PB_FULLY_PRESENT:
    *src = 2;
    return 0;
  case VHDX_PB_NOT_PRESENT:
    *src = p->meta.has_parent ? 1 : 0;
    return 0;
  case VHDX_PB_PARTIALLY_PRESENT:
    break;
  default:              /* zero, unmapped, undefined: read as zeros */
    *src = 0;
    return 0;
  }
  /* Partially present: the sector bitmap decides, sector by sector. */
  uint64_t first = boff / lss, last = (boff + *n - 1) / lss;
  uint64_t bit0 = (blk % p->chunk_ratio) * p->sectors_per_block;
  uint64_t b0 = (bit0 + first) / 8, b1 = (bit0 + last) / 8;
  uint8_t small[512], *bm = small;
  size_t bmlen = (size_t)(b1 - b0 + 1);
  if (bmlen > sizeof small && !(bm = malloc(bmlen)))
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = vhdx_fread(dev, bm, bmlen, VHDX_BAT_OFFSET(vhdx_sb_entry(p, blk)) +
                     b0);
  if (r == 0) {
    uint64_t s = first;
#define VHDX_BIT(k) ((bm[((bit0 + (k)) / 8) - b0] >> ((bit0 + (k)) % 8)) & 1)
    int own = VHDX_BIT(s);
    while (s + 1 <= last && VHDX_BIT(s + 1) == own)
      s++;
#undef VHDX_BIT
    uint64_t stop = (s + 1) * lss;
    if (stop < boff + *n)
      *n = stop - boff;
    *src = own ? 2 : 1;
  }
  if (bm != small)
    free(bm);
  return r;
}

static int
vhdx_read_parent(struct vd_dev *dev, uint8_t *buf, uint64_t len, uint64_t off)
{
  struct vhdx_priv *p = dev->priv;
  if (!p->parent || off >= p->parent->size) {
    memset(buf, 0, len);
    return 0;
  }
  uint64_t n = len;
  if (off + n > p->parent->size) {
    n = p->parent->size - off;
    memset(buf + n, 0, len - n);
  }
  return vd_pread(p->parent, buf, n, off);
}

static int
vhdx_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  uint8_t *b = buf;
  while (len) {
    uint64_t n, host;
    int src;
    int r = vhdx_map(dev, off, len, &n, &src, &host);
    if (r < 0)
      return r;
    if (src == 2)
      r = vhdx_fread(dev, b, n, host);
    else if (src == 1)
      r = vhdx_read_parent(dev, b, n, off);
    else
      memset(b, 0, n);
    if (r < 0)
      return r;
    b += n;
    off += n;
    len -= n;
  }
  return 0;
}

static int
vhdx_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                  struct vd_extent *ext)
{
  struct vhdx_priv *p = dev->priv;
  uint64_t n, host;
  int src;
  int r = vhdx_map(dev, off, len, &n, &src, &host);
  if (r < 0)
    return r;
  /* Merge following blocks of the same kind (not for data: each block has
   * its own host offset). */
  while (src != 2 && n < len) {
    uint64_t n2, h2;
    int s2;
    if ((r = vhdx_map(dev, off + n, len - n, &n2, &s2, &h2)) < 0)
      return r;
    if (s2 != src)
      break;
    n += n2;
  }
  ext->length = n;
  ext->depth = 0;
  ext->host_offset = -1;
  if (src == 2) {
    ext->flags = 0;
    ext->host_offset = (int64_t)host;
    return 0;
  }
  ext->flags = VD_EXT_HOLE | VD_EXT_ZERO;
  if (src == 0 || !p->parent)
    return 0;
  ext->depth = 1;
  if (off >= p->parent->size)
    return 0;
  uint64_t plen = n;
  if (off + plen > p->parent->size)
    plen = p->parent->size - off;
  struct vd_extent pe;
  if ((r = vd_block_status(p->parent, off, plen, &pe)) < 0)
    return r;
  ext->length = pe.length;
  ext->flags = pe.flags;
  ext->depth = pe.depth + 1;
  ext->host_offset = pe.host_offset;
  return 0;
}

/* ---- info ---- */

static void
vhdx_info(struct vd_dev *dev, struct vd_info *info)
{
  struct vhdx_priv *p = dev->priv;
  char g[37];
  vd_info_add_str(info, "subformat", p->meta.has_parent ? "differencing"
                  : p->meta.leave_allocated ? "fixed" : "dynamic");
  vd_info_add_u64(info, "block-size", p->meta.block_size);
  vd_info_add_u64(info, "logical-sector-size", p->meta.lss);
  vd_info_add_u64(info, "physical-sector-size", p->meta.pss);
  vhdx_guid_format(p->meta.page83, g);
  vd_info_add_str(info, "page83", g);
  pthread_mutex_lock(&p->lock);   /* writers change the header */
  struct vhdx_header h = p->header;
  pthread_mutex_unlock(&p->lock);
  vhdx_guid_format(h.data_write_guid, g);
  vd_info_add_str(info, "data-write-guid", g);
  vhdx_guid_format(h.file_write_guid, g);
  vd_info_add_str(info, "file-write-guid", g);
  vd_info_add_str(info, "log", !p->replayed ? "clean"
                  : p->replay.head_seq ? "dirty (replayed in memory)"
                  : "replayed");
  vd_info_add_u64(info, "header-sequence", h.seq);
  uint64_t n = 0;
  for (uint64_t b = 0; b < p->data_blocks; b++) {
    unsigned st = VHDX_BAT_STATE(vhdx_payload_entry(p, b));
    n += st == VHDX_PB_FULLY_PRESENT || st == VHDX_PB_PARTIALLY_PRESENT;
  }
  vd_info_add_u64(info, "allocated-blocks", n);
  info->cluster_size = p->meta.block_size;
  if (p->meta.has_parent && p->loc) {
    vd_info_add_str(info, "parent-linkage", p->loc->linkage);
    if (p->loc->relative_path[0])
      vd_info_add_str(info, "parent-relative-path", p->loc->relative_path);
    if (p->loc->absolute_win32_path[0])
      vd_info_add_str(info, "parent-absolute-path",
                      p->loc->absolute_win32_path);
    snprintf(info->backing, sizeof info->backing, "%s",
             p->parent_path[0] ? p->parent_path : p->parent_named);
    snprintf(info->backing_format, sizeof info->backing_format, "%s",
             p->parent_format);
  }
}

const struct vd_driver vd_vhdx_driver = {
  .name = "vhdx",
  .aliases = vhdx_aliases,
  .priv_size = sizeof (struct vhdx_priv),
  .host_mapped = true,
  .probe = vhdx_probe,
  .open = vhdx_open,
  .close = vhdx_close,
  .create = vhdx_create,
  .measure = vhdx_measure,
  .create_help =
    "  block_size=<size>      - Block size (a power of two, 1 MiB to 256 MiB; "
    "default 32 MiB as qemu-img)\n"
    "  logical_sector_size=<size> - Logical sector size: 512 (default) or "
    "4096\n"
    "  subformat=<str>        - {dynamic (default) | fixed}\n",
  .pread = vhdx_pread,
  .pwrite = vhdx_pwrite,
  .flush = vhdx_flush,
  .discard = vhdx_discard,
  .write_zeroes = vhdx_write_zeroes,
  .check = vhdx_check,
  .truncate = vhdx_truncate,
  .compact = vhdx_compact,
  .change_backing = vhdx_change_backing,
  .block_status = vhdx_block_status,
  .info = vhdx_info,
  .reopen = vhdx_reopen,
  .backing_dev = vhdx_backing_dev,
};

VD_REGISTER_DRIVER(vd_vhdx_driver);
