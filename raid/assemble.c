/* RAID create and assemble: write the superblocks and the descriptor of a
 * new array, or rebuild a descriptor from members alone (mdadm --assemble).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/endian.h"
#include "raid/raid.h"
/* ---- create ---- */

int vd_raid_create(const char *desc, const struct vd_raid_create_args *ar)
{
  unsigned n = ar->nmembers;
  uint32_t chunk = ar->chunk ? ar->chunk : RAID_DEFAULT_CHUNK;
  const struct raid_level_ops *ops =
    ar->level < 0 ? NULL : raid_level_find((uint32_t)ar->level);
  if (!ops)
    return vd_set_error(EINVAL, "%s: RAID level %d not supported (0, 1 or 5)",
                        desc, ar->level);
  if (n < ops->min_members || n > RAID_MAX_MEMBERS)
    return vd_set_error(EINVAL, "%s: RAID%d needs %u to %u members, got %u",
                        desc, ar->level, ops->min_members, RAID_MAX_MEMBERS,
                        n);
  if (!vd_is_pow2(chunk) || chunk < RAID_MIN_CHUNK || chunk > RAID_MAX_CHUNK)
    return vd_set_error(EINVAL, "%s: chunk size %u must be a power of two "
                        "from 4 KiB to 64 MiB", desc, chunk);
  int policy = ar->policy >= 0 ? ar->policy : (int)ops->default_policy;
  if (policy == RAID_POLICY_PPL && !ops->parity_log)
    return vd_set_error(EINVAL, "%s: the ppl policy is for RAID5 only", desc);
  if (ar->member_timeout_ms != VD_RAID_NO_TIMEOUT &&
      ar->member_timeout_ms > RAID_MAX_TIMEOUT_S * 1000u)
    return vd_set_error(EINVAL, "%s: member timeout above %u s", desc,
                        RAID_MAX_TIMEOUT_S);
  if (ar->auto_readd_s > RAID_MAX_TIMEOUT_S)
    return vd_set_error(EINVAL, "%s: auto re-add period above %u s", desc,
                        RAID_MAX_TIMEOUT_S);
  bool any_wm = false;
  for (unsigned i = 0; ar->write_mostly && i < n; i++) {
    if (ar->write_mostly[i] && ar->level != RAID_LEVEL1)
      return vd_set_error(EINVAL, "%s: write-mostly members are for RAID1 "
                          "only", desc);
    any_wm |= ar->write_mostly[i];
  }
  if (ar->write_behind && !any_wm)
    return vd_set_error(EINVAL, "%s: write-behind needs a RAID1 with a "
                        "write-mostly member", desc);
  if (ar->write_behind > RAID_MAX_WRITE_BEHIND)
    return vd_set_error(EINVAL, "%s: write-behind above %u", desc,
                        RAID_MAX_WRITE_BEHIND);
  if (ar->write_behind && policy == RAID_POLICY_RESYNC)
    return vd_set_error(EINVAL, "%s: write-behind needs the bitmap policy "
                        "(it keeps the regions of unwritten writes dirty)",
                        desc);
  for (unsigned i = 0; i < n; i++)
    if (ar->member_size && vd_is_remote_name(ar->members[i]))
      return vd_set_error(EINVAL, "%s: a remote member cannot be created "
                          "(--size): create the export or the RBD image "
                          "first", ar->members[i]);
  /* Without redundancy there is nothing to resync: no bitmap. */
  if (!ops->redundant)
    policy = RAID_POLICY_RESYNC;
  for (unsigned i = 0; i < n; i++)
    for (unsigned j = 0; j < i; j++)
      if (strcmp(ar->members[i], ar->members[j]) == 0 ||
          raid_same_file(ar->members[i], ar->members[j]))
        return vd_set_error(EINVAL, "%s: member %s given twice", desc,
                            ar->members[i]);

  /* Never overwrite what looks like someone's data without being told. */
  for (unsigned i = 0; i < n; i++) {
    char what[512];
    int r = raid_check_member_type(ar->members[i]);
    if (r < 0)
      return r;
    if (ar->force)
      continue;
    r = vd_raid_member_check(ar->members[i], what, sizeof what);
    if (r < 0)
      return r;
    if (r > 0)
      return vd_set_error(EEXIST, "%s: holds %s: not overwritten (--force "
                          "to use it anyway)", ar->members[i], what);
  }

  uint64_t meta_end = RAID_PPL_OFFSET;
  if (policy == RAID_POLICY_PPL)
    meta_end += (uint64_t)RAID_PPL_SLOTS * (RAID_PPL_HDR + chunk);
  uint64_t data_offset = vd_round_up(meta_end, RAID_DATA_ALIGN);
  if (ar->member_size && ar->member_size < data_offset + chunk)
    return vd_set_error(ENOSPC, "%s: members must hold at least %" PRIu64
                        " bytes (metadata %" PRIu64 " + one chunk)", desc,
                        data_offset + chunk, data_offset);

  struct vd_dev *dev[RAID_MAX_MEMBERS] = { NULL };
  int r = 0;
  for (unsigned i = 0; i < n && r == 0; i++) {
    if (ar->member_size) {
      struct vd_create_args ca = { .size = ar->member_size };
      r = vd_create(ar->members[i], ar->member_format, &ca);
      if (r < 0)
        break;
    }
    struct vd_open_args oa = {
      .format = ar->member_size ? ar->member_format : NULL,
      .flags = VD_OPEN_RDWR, .timeout_ms = RAID_DEFAULT_TIMEOUT_MS };
    r = vd_open_opts(ar->members[i], &oa, &dev[i]);
  }
  uint64_t msize = UINT64_MAX;
  for (unsigned i = 0; i < n && r == 0; i++)
    if (vd_size(dev[i]) < msize)
      msize = vd_size(dev[i]);

  struct raid_sb sb;
  memset(&sb, 0, sizeof sb);
  if (r == 0) {
    raid_uuid_generate(sb.uuid);
    sb.level = (uint32_t)ar->level;
    sb.layout = RAID_LAYOUT_LEFT_SYMMETRIC;
    sb.chunk = chunk;
    sb.nmembers = n;
    sb.policy = (uint32_t)policy;
    if (policy == RAID_POLICY_PPL) {
      sb.ppl_offset = RAID_PPL_OFFSET;
      sb.ppl_slots = RAID_PPL_SLOTS;
      sb.ppl_slot_size = RAID_PPL_HDR + chunk;
    }
    sb.data_offset = data_offset;
    if (msize < sb.data_offset + chunk) {
      r = vd_set_error(ENOSPC, "%s: members must hold at least %" PRIu64
                       " bytes (metadata %" PRIu64 " + one chunk)", desc,
                       sb.data_offset + chunk, sb.data_offset);
    } else {
      sb.data_size = vd_round_down(msize - sb.data_offset, chunk);
      sb.array_size = ops->capacity(n, sb.data_size);
      if (policy != RAID_POLICY_RESYNC) {
        /* md's default bitmap chunk: 64 MiB.  Setting a bit flushes every
         * member, so small regions cost sequential writes dearly. */
        uint64_t region = ar->bitmap_region ? ar->bitmap_region
                          : (64u << 20);
        if (!vd_is_pow2(region))
          r = vd_set_error(EINVAL, "%s: bitmap region must be a power of two",
                           desc);
        if (region < chunk)
          region = chunk;
        while ((sb.data_size + region - 1) / region >
               (uint64_t)RAID_BITMAP_MAX * 8)
          region *= 2;
        uint64_t nreg = (sb.data_size + region - 1) / region;
        sb.bitmap_offset = RAID_BITMAP_OFFSET;
        sb.bitmap_region = region;
        sb.bitmap_bytes = (uint32_t)vd_round_up((nreg + 7) / 8, 4096);
      }
      sb.resync_offset = RAID_NO_OFFSET;
      sb.ctime = sb.utime = (uint64_t)time(NULL);
      snprintf(sb.name, sizeof sb.name, "%s", ar->name ? ar->name : "");
      sb.events = 1;
      for (unsigned i = 0; i < n; i++) {
        raid_uuid_generate(sb.role[i].dev_uuid);
        sb.role[i].state = RAID_ROLE_ACTIVE;
      }
    }
  }
  /* Zero the metadata areas and (unless told not to) the data, so the
   * array reads zeros and parity is consistent from the start. */
  uint8_t *buf = r == 0 ? vd_alloc_aligned(RAID_SB_SIZE) : NULL;
  if (r == 0 && !buf)
    r = vd_set_error(ENOMEM, "%s: out of memory", desc);
  for (unsigned i = 0; i < n && r == 0; i++) {
    r = vd_write_zeroes(dev[i], 0, sb.data_offset, 0);
    if (r == 0 && !ar->member_size && !ar->assume_clean)
      r = vd_write_zeroes(dev[i], sb.data_offset, sb.data_size, 0);
    struct raid_sb s = sb;
    s.slot = i;
    raid_sb_encode(&s, buf);
    if (r == 0)
      r = vd_pwrite(dev[i], buf, RAID_SB_SIZE, RAID_SB_OFFSET, 0);
    if (r == 0)
      r = vd_flush(dev[i]);
  }
  vd_free_aligned(buf);
  struct raid_desc d;
  memset(&d, 0, sizeof d);
  if (r == 0) {
    memcpy(d.uuid, sb.uuid, 16);
    d.nmembers = n;
    d.timeout_ms = ar->member_timeout_ms == 0 ? RAID_DEFAULT_TIMEOUT_MS
                   : ar->member_timeout_ms == VD_RAID_NO_TIMEOUT ? 0
                   : ar->member_timeout_ms;
    d.auto_readd_s = ar->auto_readd_s;
    for (unsigned i = 0; ar->write_mostly && i < n; i++)
      d.write_mostly[i] = ar->write_mostly[i];
    d.write_behind = ar->write_behind;
    for (unsigned i = 0; i < n && r == 0; i++) {
      d.member[i] = raid_desc_relpath(desc, ar->members[i]);
      d.format[i] = strdup(vd_format(dev[i]));
      if (!d.member[i] || !d.format[i])
        r = vd_set_error(ENOMEM, "%s: out of memory", desc);
    }
  }
  for (unsigned i = 0; i < n; i++) {
    int c = vd_close(dev[i]);
    if (r == 0 && c < 0)
      r = c;
  }
  if (r == 0)
    r = raid_desc_write(desc, &d);
  raid_desc_free(&d);
  return r;
}

/* ---- assemble from members alone ---- */

int vd_raid_assemble(const char *desc, const char *const *members,
                     unsigned n, unsigned flags)
{
  bool force = (flags & VD_RAID_ASSEMBLE_FORCE) != 0;
  bool run = force || (flags & VD_RAID_ASSEMBLE_RUN) != 0;
  if (n == 0 || n > RAID_MAX_MEMBERS)
    return vd_set_error(EINVAL, "%s: give 1 to %u members", desc,
                        RAID_MAX_MEMBERS);
  struct raid_sb *sbs = calloc(n, sizeof *sbs);
  char **fmts = calloc(n, sizeof *fmts);
  uint8_t *buf = vd_alloc_aligned(RAID_SB_SIZE);
  int r = 0, fresh = -1;
  if (!sbs || !fmts || !buf) {
    r = vd_set_error(ENOMEM, "%s: out of memory", desc);
    goto out;
  }
  for (unsigned i = 0; i < n && r == 0; i++) {
    struct vd_dev *dev;
    r = raid_check_member_type(members[i]);
    if (r < 0)
      break;
    struct vd_open_args oa = { .flags = VD_OPEN_NOLOCK,
                               .timeout_ms = RAID_DEFAULT_TIMEOUT_MS };
    r = vd_open_opts(members[i], &oa, &dev);
    if (r < 0)
      break;
    if (vd_size(dev) < RAID_SB_OFFSET + RAID_SB_SIZE)
      r = vd_set_error(EINVAL, "%s: too small to be a RAID member",
                       members[i]);
    if (r == 0)
      r = vd_pread(dev, buf, RAID_SB_SIZE, RAID_SB_OFFSET);
    if (r == 0)
      r = raid_sb_decode(buf, &sbs[i], members[i]);
    fmts[i] = strdup(vd_format(dev));
    vd_close(dev);
    if (r == 0 && !(sbs[i].flags & RAID_SB_SPARE) &&
        (fresh < 0 || sbs[i].events > sbs[fresh].events))
      fresh = (int)i;
  }
  if (r == 0 && fresh < 0)
    r = vd_set_error(EINVAL, "%s: only hot spares given: name the members",
                     desc);
  if (r < 0)
    goto out;
  struct raid_desc d;
  memset(&d, 0, sizeof d);
  /* The options of the descriptor being rewritten, if it is this array's
   * (the members are found again, the operator's settings stay). */
  struct raid_desc old;
  d.timeout_ms = RAID_DEFAULT_TIMEOUT_MS;
  if (raid_desc_read(desc, &old) == 0) {
    if (memcmp(old.uuid, sbs[fresh].uuid, 16) == 0) {
      d.timeout_ms = old.timeout_ms;
      d.auto_readd_s = old.auto_readd_s;
      memcpy(d.write_mostly, old.write_mostly, sizeof d.write_mostly);
      d.write_behind = old.write_behind;
    }
    raid_desc_free(&old);
  }
  vd_clear_error();
  memcpy(d.uuid, sbs[fresh].uuid, 16);
  d.nmembers = sbs[fresh].nmembers;
  int pick[RAID_MAX_MEMBERS];
  for (unsigned i = 0; i < RAID_MAX_MEMBERS; i++)
    pick[i] = -1;
  for (unsigned i = 0; i < n; i++) {
    if (memcmp(sbs[i].uuid, sbs[fresh].uuid, 16) != 0) {
      char u[37];
      raid_uuid_format(sbs[i].uuid, u);
      r = vd_set_error(EINVAL, "%s: belongs to another array (%s)",
                       members[i], u);
      raid_desc_free(&d);
      goto out;
    }
    if (sbs[i].flags & RAID_SB_SPARE) {
      /* Never a member: a spare the array still lists stays a spare. */
      bool listed = false;
      for (unsigned k = 0; k < sbs[fresh].nspares; k++)
        listed |= !memcmp(sbs[fresh].spare_uuid[k], sbs[i].spare_self, 16);
      if (!listed) {
        r = vd_set_error(EINVAL, "%s: a hot spare the array no longer lists "
                         "(add it again with vdtool raid add)", members[i]);
        raid_desc_free(&d);
        goto out;
      }
      if (d.nspares < RAID_MAX_SPARES) {
        d.spare[d.nspares] = raid_desc_relpath(desc, members[i]);
        d.spare_format[d.nspares] = fmts[i] ? strdup(fmts[i]) : NULL;
        if (!d.spare[d.nspares++])
          r = vd_set_error(ENOMEM, "%s: out of memory", desc);
      }
      continue;
    }
    unsigned s = sbs[i].slot;
    if (s >= d.nmembers)
      continue;
    /* Two candidates for one slot: keep the fresher (the other is stale). */
    if (pick[s] < 0 || sbs[i].events > sbs[pick[s]].events)
      pick[s] = (int)i;
  }
  /* A slot the freshest superblock records as working but that was not
   * given: as mdadm, start degraded only when told to (--run), and never
   * record it as faulty for that alone (raid_open leaves absent members
   * alone until the array is written), so giving it again later needs no
   * rebuild. */
  for (unsigned s = 0; s < d.nmembers && !run; s++)
    if (pick[s] < 0 && sbs[fresh].role[s].state != RAID_ROLE_FAULTY) {
      char u[37];
      raid_uuid_format(sbs[fresh].uuid, u);
      r = vd_set_error(EAGAIN, "%s: slot %u of array %s is working but was "
                       "not given: name every member, or add --run to start "
                       "the array degraded", desc, s, u);
      raid_desc_free(&d);
      goto out;
    }
  for (unsigned s = 0; s < d.nmembers && r == 0; s++) {
    if (pick[s] < 0)
      continue;
    d.member[s] = raid_desc_relpath(desc, members[pick[s]]);
    d.format[s] = fmts[pick[s]] ? strdup(fmts[pick[s]]) : NULL;
    if (!d.member[s])
      r = vd_set_error(ENOMEM, "%s: out of memory", desc);
  }
  if (r == 0)
    r = raid_desc_write(desc, &d);
  raid_desc_free(&d);
  if (r < 0)
    goto out;
  /* Start it once, so refusals are reported now and --force takes effect
   * (PPL replay, resync, superblocks updated). */
  struct vd_dev *arr;
  r = vd_open(desc, "raid", VD_OPEN_RDWR | (force ? VD_OPEN_FORCE : 0), &arr);
  if (r == 0)
    r = vd_close(arr);
out:
  if (fmts)
    for (unsigned i = 0; i < n; i++)
      free(fmts[i]);
  free(fmts);
  free(sbs);
  vd_free_aligned(buf);
  return r;
}
