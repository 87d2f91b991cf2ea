/* libvdisk — VHD consistency check and repair (vdtool check).
 *
 * Works on the file directly, so images too damaged to open can be
 * examined.  Counts, as qemu-img check does:
 *  - corruptions: a bad footer copy, a missing copy at offset 0, a fixed
 *    footer at the end behind a dynamic one at offset 0, a bad dynamic
 *    header, BAT entries past the end of file or overlapping metadata or
 *    each other, a parent that cannot be opened, a parent UUID mismatch, a
 *    parent loop;
 *  - leaks: non-zero bytes in the file that nothing references, in a gap
 *    large enough for a block (blocks appended by a writer that died before
 *    its next flush).  Smaller gaps are padding other tools leave.  One
 *    leak per started block of such bytes.  Also a dynamic or differencing
 *    image whose file does not end with a footer copy while the copy at
 *    offset 0 is sound: a power cut during an allocation leaves that, and
 *    a read-write open repairs it the same way (vhd.c, vhd_repair_tail);
 *    and a sound tail copy that differs from the one at offset 0, which a
 *    management command cut short leaves (the copy at offset 0 is newer).
 * Repairs: -r leaks punches leaked ranges, or cuts them off the end of the
 * file and moves the footer down (or puts the missing or stale one back).
 * -r all also rewrites bad footer copies from the good one, recomputes a
 * header checksum when its fields are sane and drops BAT entries that
 * point outside the file or into other data.
 * Without a fix flag the file is opened read-only and never changed.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "vdisk/vhd.h"

enum { VHD_EXT_META = 0xFFFFFFFEu };   /* BAT indexes stay below */

struct vhd_checker {
  const char *path;
  struct vd_file *f;
  struct vd_check_report *r;
  unsigned fix;
  uint64_t fsz;
};

static void __attribute__((format(printf, 3, 4)))
chk_msg(struct vhd_checker *c, uint64_t *counter, const char *fmt, ...)
{
  char buf[1024];
  va_list ap;
  int n = snprintf(buf, sizeof buf, "%s: ", c->path);
  va_start(ap, fmt);
  vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
  va_end(ap);
  if (counter)
    (*counter)++;
  if (c->r->message)
    c->r->message(c->r->opaque, buf);
}

/* Report the last libvdisk error (a decode failure) as a corruption. */
static void
chk_corrupt_error(struct vhd_checker *c)
{
  c->r->corruptions++;
  if (c->r->message)
    c->r->message(c->r->opaque, vd_error());
  vd_clear_error();
}

/* True if [off, off+len) holds a non-zero byte. */
static int
chk_nonzero(struct vhd_checker *c, uint64_t off, uint64_t len, bool *nz)
{
  uint8_t buf[65536];
  *nz = false;
  while (len > 0) {
    bool data;
    uint64_t n;
    int r = vd_file_extent(c->f, off, len, &data, &n);
    if (r < 0)
      return r;
    if (n == 0)
      break;
    for (uint64_t done = 0; data && done < n;) {
      size_t k = n - done < sizeof buf ? (size_t)(n - done) : sizeof buf;
      r = vd_file_pread(c->f, buf, k, off + done);
      if (r < 0)
        return r;
      for (size_t i = 0; i < k; i++)
        if (buf[i]) {
          *nz = true;
          return 0;
        }
      done += k;
    }
    off += n;
    len -= n;
  }
  return 0;
}

static int
chk_fixed(struct vhd_checker *c, const struct vhd_footer *f, size_t flen)
{
  uint64_t size = vhd_footer_size(f);
  c->r->image_end_offset = c->fsz;
  if (size % VHD_SECTOR)
    chk_msg(c, &c->r->corruptions, "virtual size %" PRIu64
            " is not a multiple of 512", size);
  if (c->fsz - flen < size)
    chk_msg(c, &c->r->corruptions, "fixed VHD is truncated: virtual size %"
            PRIu64 " but %" PRIu64 " data bytes", size, c->fsz - flen);
  return 0;
}

/* Write the good footer FB at offset 0 and/or at END and cut the file
 * after it. */
static int
chk_write_footer(struct vhd_checker *c, const uint8_t *fb, bool head,
                 uint64_t end)
{
  int r = 0;
  if (head)
    r = vd_file_pwrite(c->f, fb, VHD_FOOTER_SIZE, 0);
  if (r == 0 && end != UINT64_MAX) {
    r = vd_file_pwrite(c->f, fb, VHD_FOOTER_SIZE, end);
    if (r == 0)
      r = vd_file_flush(c->f);
    if (r == 0 && c->fsz > end + VHD_FOOTER_SIZE)
      r = vd_file_truncate(c->f, end + VHD_FOOTER_SIZE);
    if (r == 0)
      c->fsz = end + VHD_FOOTER_SIZE;
  }
  if (r == 0)
    r = vd_file_flush(c->f);
  return r;
}

/* TAIL_MISSING: the file does not end with a footer copy while the one at
 * offset 0 is sound - what a power cut during an allocation leaves (see
 * vhd_repair_tail in vhd.c, which a read-write open runs).  Nothing
 * references the bytes after the last block, so it is counted as a leak
 * and -r leaks cuts the file after the last block and writes the footer
 * there; so is TAIL_STALE, a sound tail copy older than the one at offset
 * 0.  TAIL_BAD: a damaged tail copy (a corruption). */
static int
chk_dynamic(struct vhd_checker *c, struct vhd_footer *f, bool head_bad,
            bool tail_bad, bool tail_missing, bool tail_stale)
{
  struct vd_check_report *rep = c->r;
  uint8_t hb[VHD_HEADER_SIZE], fb[VHD_FOOTER_SIZE];
  struct vhd_header h;
  struct vhd_extent *ext = NULL;
  uint32_t *bat = NULL;
  uint8_t *raw = NULL;
  size_t n = 0;
  int r;

  uint64_t size = vhd_footer_size(f);
  if (size % VHD_SECTOR || size > VHD_MAX_SIZE) {
    chk_msg(c, &rep->corruptions, "virtual size %" PRIu64 " is invalid", size);
    return 0;
  }
  uint64_t hend;
  if (vd_add_overflow(f->data_offset, VHD_HEADER_SIZE, &hend) ||
      hend > c->fsz || f->data_offset < VHD_FOOTER_SIZE) {
    chk_msg(c, &rep->corruptions, "dynamic header offset %" PRIu64
            " is outside the file", f->data_offset);
    return 0;
  }
  r = vd_file_pread(c->f, hb, sizeof hb, f->data_offset);
  if (r < 0)
    return r;
  bool hdr_sum_bad = false;
  if (vhd_header_decode(hb, &h, c->path) < 0) {
    if (memcmp(hb, "cxsparse", 8) != 0) {
      chk_corrupt_error(c);
      return 0;
    }
    hdr_sum_bad = true;
    chk_corrupt_error(c);
  }
  if (!vd_is_pow2(h.block_size) || h.block_size < VHD_MIN_BLOCK ||
      h.block_size > VHD_MAX_BLOCK) {
    chk_msg(c, &rep->corruptions, "block size %" PRIu32 " is not a power of "
            "two between 512 and 256 MiB", h.block_size);
    return 0;
  }
  uint64_t nblocks = (size + h.block_size - 1) / h.block_size;
  uint64_t bat_end;
  if (h.max_entries > VHD_MAX_BAT_ENTRIES || h.max_entries < nblocks) {
    chk_msg(c, &rep->corruptions, "BAT of %" PRIu32 " entries is invalid for "
            "%" PRIu64 " blocks", h.max_entries, nblocks);
    return 0;
  }
  if (vd_add_overflow(h.bat_offset, (uint64_t)h.max_entries * 4, &bat_end) ||
      bat_end > c->fsz || (h.bat_offset < hend && bat_end > f->data_offset)) {
    chk_msg(c, &rep->corruptions, "BAT (%" PRIu32 " entries at offset %" PRIu64
            ") is outside the file or overlaps the header", h.max_entries,
            h.bat_offset);
    return 0;
  }
  if (hdr_sum_bad && (c->fix & VD_CHECK_FIX_ERRORS)) {
    vhd_header_encode(&h, hb);
    r = vd_file_pwrite(c->f, hb, sizeof hb, f->data_offset);
    if (r < 0)
      return r;
    rep->corruptions_fixed++;
  }

  uint32_t bms = vhd_bitmap_size(h.block_size);
  uint64_t bat_bytes = vd_round_up((uint64_t)h.max_entries * 4, VHD_SECTOR);
  if (bat_end + (bat_bytes - (uint64_t)h.max_entries * 4) > c->fsz)
    bat_bytes = (uint64_t)h.max_entries * 4;
  raw = malloc((size_t)bat_bytes + 4);
  bat = malloc(sizeof *bat * ((size_t)h.max_entries + 1));
  ext = malloc(sizeof *ext * ((size_t)h.max_entries + VHD_NLOC + 4));
  if (!raw || !bat || !ext) {
    r = vd_set_error(ENOMEM, "%s: out of memory", c->path);
    goto out;
  }
  r = vd_file_pread(c->f, raw, (size_t)bat_bytes, h.bat_offset);
  if (r < 0)
    goto out;
  for (uint32_t i = 0; i < h.max_entries; i++)
    bat[i] = vd_get_be32(raw + 4 * (size_t)i);

  /* Metadata extents. */
  ext[n++] = (struct vhd_extent){ 0, VHD_FOOTER_SIZE, VHD_EXT_META };
  ext[n++] = (struct vhd_extent){ f->data_offset, VHD_HEADER_SIZE,
                                  VHD_EXT_META };
  ext[n++] = (struct vhd_extent){ h.bat_offset, bat_bytes, VHD_EXT_META };
  if (f->type == VHD_TYPE_DIFF)
    for (int i = 0; i < VHD_NLOC; i++) {
      uint64_t len = h.loc[i].space > h.loc[i].length ? h.loc[i].space
                                                       : h.loc[i].length;
      if (!h.loc[i].length || h.loc[i].code[0] == 0)
        continue;
      if (!vd_range_ok(h.loc[i].offset, h.loc[i].length, c->fsz)) {
        chk_msg(c, &rep->corruptions, "parent locator %d (%.4s) points past "
                "end of file", i, h.loc[i].code);
        continue;
      }
      if (h.loc[i].offset + len > c->fsz)
        len = c->fsz - h.loc[i].offset;
      ext[n++] = (struct vhd_extent){ h.loc[i].offset, len, VHD_EXT_META };
    }
  size_t nmeta = n;

  /* Blocks. */
  bool bat_changed = false;
  for (uint32_t i = 0; i < h.max_entries; i++) {
    if (bat[i] == VHD_BAT_UNUSED)
      continue;
    uint64_t start = (uint64_t)bat[i] * VHD_SECTOR;
    uint64_t valid = h.block_size;
    if (i < nblocks && size - (uint64_t)i * h.block_size < valid)
      valid = size - (uint64_t)i * h.block_size;
    uint64_t len = bms + valid;
    bool bad = false;
    if (start + len > c->fsz) {
      chk_msg(c, &rep->corruptions, "BAT entry %" PRIu32
              " points past end of file", i);
      bad = true;
    } else {
      for (size_t k = 0; k < nmeta && !bad; k++)
        if (start < ext[k].off + ext[k].len && ext[k].off < start + len) {
          chk_msg(c, &rep->corruptions, "BAT entry %" PRIu32
                  " overlaps the image metadata", i);
          bad = true;
        }
    }
    if (bad) {
      if (c->fix & VD_CHECK_FIX_ERRORS) {
        bat[i] = VHD_BAT_UNUSED;
        bat_changed = true;
        rep->corruptions_fixed++;
      }
      continue;
    }
    if (i < nblocks)
      rep->allocated_clusters++;
    ext[n++] = (struct vhd_extent){ start, len, i };
  }
  rep->total_clusters = nblocks;

  /* Overlaps between blocks; fragmentation (not in BAT order). */
  qsort(ext, n, sizeof *ext, vhd_extent_cmp);
  uint64_t last_index = 0;
  bool first_block = true;
  for (size_t k = 0; k < n; k++) {
    if (ext[k].index == VHD_EXT_META)
      continue;
    if (!first_block && ext[k].index < last_index)
      rep->fragmented_clusters++;
    first_block = false;
    last_index = ext[k].index;
    for (size_t j = k + 1; j < n && ext[j].off < ext[k].off + ext[k].len; j++) {
      if (ext[j].index == VHD_EXT_META || ext[j].index == VHD_BAT_UNUSED)
        continue;
      chk_msg(c, &rep->corruptions, "BAT entries %" PRIu32 " and %" PRIu32
              " overlap", ext[k].index, ext[j].index);
      if (c->fix & VD_CHECK_FIX_ERRORS) {
        bat[ext[j].index] = VHD_BAT_UNUSED;
        ext[j].index = VHD_BAT_UNUSED;   /* now unreferenced */
        bat_changed = true;
        rep->corruptions_fixed++;
      }
    }
  }
  if (bat_changed) {
    for (uint32_t i = 0; i < h.max_entries; i++)
      vd_put_be32(raw + 4 * (size_t)i, bat[i]);
    r = vd_file_pwrite(c->f, raw, (size_t)h.max_entries * 4, h.bat_offset);
    if (r == 0)
      r = vd_file_flush(c->f);
    if (r < 0)
      goto out;
  }

  /* Leaks: non-zero bytes between referenced extents. */
  uint64_t end = 0;
  uint64_t tail = tail_bad || tail_missing ? c->fsz : c->fsz - VHD_FOOTER_SIZE;
  uint64_t leak_trailing = 0;
  for (size_t k = 0; k <= n; k++) {
    uint64_t next = k < n ? ext[k].off : tail;
    if (k < n && ext[k].index == VHD_BAT_UNUSED)
      continue;   /* dropped above */
    /* Only a gap that could hold a block counts: other tools pad the BAT
     * and align blocks, and our own leaks are whole appended blocks. */
    if (next > end && next - end >= (uint64_t)bms + h.block_size) {
      bool nz;
      r = chk_nonzero(c, end, next - end, &nz);
      if (r < 0)
        goto out;
      if (nz) {
        uint64_t nleak = (next - end + h.block_size - 1) / h.block_size;
        rep->leaks += nleak;
        chk_msg(c, NULL, "%" PRIu64 " unreferenced bytes at offset %" PRIu64
                " (leaked)", next - end, end);
        if (k == n) {
          leak_trailing = nleak;
        } else if (c->fix & VD_CHECK_FIX_LEAKS) {
          r = vd_file_zero(c->f, end, next - end, false, false);
          if (r < 0)
            goto out;
          rep->leaks_fixed += nleak;
        }
      }
    }
    if (k < n && ext[k].off + ext[k].len > end)
      end = ext[k].off + ext[k].len;
  }
  end = vd_round_up(end, VHD_SECTOR);
  rep->image_end_offset = end + VHD_FOOTER_SIZE;
  if (tail_missing) {
    rep->leaks++;
    chk_msg(c, NULL, "no footer copy at the end of file: an allocation cut "
            "short by a crash; the copy at offset 0 is sound (leaked)");
  }
  if (tail_stale) {
    rep->leaks++;
    chk_msg(c, NULL, "the footer copy at the end of file is older than the "
            "one at offset 0: a command cut short by a crash (leaked)");
  }

  /* Footer copies: rewrite the bad one from the good one; cutting leaks
   * off the end moves the tail copy down. */
  vhd_footer_encode(f, fb);
  bool fix_head = head_bad && (c->fix & VD_CHECK_FIX_ERRORS);
  bool fix_tail = tail_bad && (c->fix & VD_CHECK_FIX_ERRORS);
  bool cut = (leak_trailing || tail_missing || tail_stale) &&
             (c->fix & VD_CHECK_FIX_LEAKS);
  if (fix_head || fix_tail || cut) {
    r = chk_write_footer(c, fb, fix_head, fix_tail || cut ? end : UINT64_MAX);
    if (r < 0)
      goto out;
    rep->corruptions_fixed += fix_head + fix_tail;
    if (cut)
      rep->leaks_fixed += leak_trailing + tail_missing + tail_stale;
  }

  /* The parent: the driver's own resolution, loop and UUID checks. */
  if (f->type == VHD_TYPE_DIFF) {
    struct vd_dev *dev;
    r = vd_open(c->path, "vpc", VD_OPEN_NOLOCK, &dev);
    if (r < 0) {
      chk_corrupt_error(c);
    } else {
      vd_close(dev);
    }
    r = 0;
  }
out:
  free(raw);
  free(bat);
  free(ext);
  return r;
}

int
vhd_check(const char *path, unsigned flags, struct vd_check_report *rep)
{
  unsigned fix = flags & VD_CHECK_FIX_ALL;
  struct vhd_checker c = { .path = path, .r = rep, .fix = fix };
  uint8_t head[VHD_FOOTER_SIZE], tail[VHD_FOOTER_SIZE];
  struct vhd_footer hf, tf;
  char where[4200];
  int r;

  r = vd_file_open(path, fix ? VD_FILE_RDWR
                        : flags & VD_CHECK_NOLOCK ? VD_FILE_NOLOCK : 0,
                   &c.f);
  if (r < 0)
    return r;
  r = vd_file_size(c.f, &c.fsz);
  if (r < 0)
    goto out;
  if (c.fsz < VHD_FOOTER_SIZE) {
    chk_msg(&c, &rep->corruptions, "file too short (%" PRIu64
            " bytes) for a VHD", c.fsz);
    goto out;
  }
  r = vd_file_pread(c.f, head, sizeof head, 0);
  if (r == 0)
    r = vd_file_pread(c.f, tail, sizeof tail, c.fsz - VHD_FOOTER_SIZE);
  if (r < 0)
    goto out;

  snprintf(where, sizeof where, "%s (footer at end of file)", path);
  size_t tlen = VHD_FOOTER_SIZE;
  const uint8_t *tp = tail;
  if (memcmp(tail, "conectix", 8) != 0 && memcmp(tail + 1, "conectix", 8) == 0) {
    tlen--;
    tp++;
  }
  bool tail_cookie = memcmp(tp, "conectix", 8) == 0;
  bool tail_ok = tail_cookie && vhd_footer_decode(tp, tlen, &tf, where) == 0;
  if (tail_cookie && !tail_ok)
    chk_corrupt_error(&c);
  snprintf(where, sizeof where, "%s (footer at offset 0)", path);
  bool head_cookie = memcmp(head, "conectix", 8) == 0;
  bool head_ok = head_cookie && vhd_footer_decode(head, sizeof head, &hf,
                                                  where) == 0;

  if (head_ok && hf.type != VHD_TYPE_FIXED) {
    /* No footer cookie at the end: a crash (a leak, see chk_dynamic); a
     * damaged or different copy: a corruption (opening refuses it). */
    bool tail_bad = tail_cookie && !tail_ok;
    bool tail_missing = !tail_cookie;
    if (tail_missing && vd_file_is_blockdev(c.f)) {
      /* A device's end is not where an image on it ends. */
      chk_msg(&c, &rep->corruptions, "no footer copy at the end of the "
              "device");
      tail_missing = false;
      tail_bad = true;
    }
    /* Copies that differ, both sound: a management command cut short
     * between them; the copy at offset 0 is the newer (vhd.c,
     * vhd_write_metadata), so the tail copy is stale, like a missing one. */
    bool tail_stale = false;
    if (tail_ok && memcmp(head, tp, tlen) != 0) {
      if (tf.type == VHD_TYPE_FIXED) {
        chk_msg(&c, &rep->corruptions, "the footer at offset 0 is not a "
                "fixed VHD's, the one at the end of file is");
        tail_bad = true;
      } else {
        tail_stale = true;
      }
    }
    r = chk_dynamic(&c, &hf, false, tail_bad, tail_missing, tail_stale);
  } else if (tail_ok && tf.type != VHD_TYPE_FIXED) {
    if (head_cookie)
      chk_corrupt_error(&c);
    else
      chk_msg(&c, &rep->corruptions, "no footer copy at offset 0");
    r = chk_dynamic(&c, &tf, true, false, false, false);
  } else if (tail_ok) {
    r = chk_fixed(&c, &tf, tlen);
  } else {
    if (head_cookie && !head_ok)
      chk_corrupt_error(&c);
    else if (!tail_cookie)
      chk_msg(&c, &rep->corruptions, "no valid VHD footer");
  }
out:
  vd_file_close(c.f);
  /* As qemu's drivers count them: what was repaired is only in *_fixed. */
  rep->corruptions -= rep->corruptions_fixed < rep->corruptions
                      ? rep->corruptions_fixed : rep->corruptions;
  rep->leaks -= rep->leaks_fixed < rep->leaks ? rep->leaks_fixed : rep->leaks;
  return r;
}
