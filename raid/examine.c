/* libvdisk — the superblock of one RAID member, as mdadm --examine shows
 * it (vdtool raid examine).  Reads the member alone: no descriptor, no
 * assembly, no lock (the member may be in use by a serving process). */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raid/raid.h"
#include "vdisk/io.h"
#include "vdisk/raid.h"

int vd_raid_examine_member(const char *path, struct vd_raid_superblock *out)
{
  memset(out, 0, sizeof *out);
  int r = raid_check_member_type(path);
  if (r < 0)
    return r;
  struct vd_open_args oa = { .flags = VD_OPEN_NOLOCK,
                             .timeout_ms = RAID_DEFAULT_TIMEOUT_MS };
  struct vd_dev *dev;
  r = vd_open_opts(path, &oa, &dev);
  if (r < 0)
    return r;
  uint8_t *buf = vd_alloc_aligned(RAID_SB_SIZE);
  struct raid_sb *sb = calloc(1, sizeof *sb);
  if (!buf || !sb)
    r = vd_set_error(ENOMEM, "%s: out of memory", path);
  else if (vd_size(dev) < RAID_SB_OFFSET + RAID_SB_SIZE)
    r = vd_set_error(EINVAL, "%s: too small to be a RAID member", path);
  if (r == 0)
    r = vd_pread(dev, buf, RAID_SB_SIZE, RAID_SB_OFFSET);
  if (r == 0 && !raid_sb_is_magic(buf))
    r = vd_set_error(EINVAL, "%s: not a RAID member (no vdisk RAID "
                     "superblock at byte %u)", path, RAID_SB_OFFSET);
  if (r == 0)
    r = raid_sb_decode(buf, sb, path);
  if (r == 0) {
    snprintf(out->format, sizeof out->format, "%s", vd_format(dev));
    raid_uuid_format(sb->uuid, out->uuid);
    snprintf(out->name, sizeof out->name, "%s", sb->name);
    out->level = (int)sb->level;
    out->layout = raid_level_find(sb->level)->layout_name;
    out->policy = sb->policy == RAID_POLICY_PPL ? "ppl"
                  : sb->policy == RAID_POLICY_BITMAP ? "bitmap" : "resync";
    out->chunk = sb->chunk;
    out->raid_devices = sb->nmembers;
    out->slot = (int)sb->slot;
    out->events = sb->events;
    out->array_size = sb->array_size;
    out->super_offset = RAID_SB_OFFSET;
    out->data_offset = sb->data_offset;
    out->data_size = sb->data_size;
    out->resync_offset = sb->resync_offset;
    out->dirty = (sb->flags & RAID_SB_DIRTY) != 0;
    out->bitmap = sb->bitmap_bytes != 0;
    out->bitmap_offset = out->bitmap ? sb->bitmap_offset : 0;
    out->bitmap_region = out->bitmap ? sb->bitmap_region : 0;
    out->ppl = sb->policy == RAID_POLICY_PPL && sb->ppl_slots != 0;
    out->ppl_offset = out->ppl ? sb->ppl_offset : 0;
    out->ppl_slots = out->ppl ? sb->ppl_slots : 0;
    out->ctime = sb->ctime;
    out->utime = sb->utime;
    out->spare = (sb->flags & RAID_SB_SPARE) != 0;
    if (out->spare)
      out->slot = -1;
    static const struct raid_role spare_role = { .state = RAID_ROLE_ACTIVE };
    const struct raid_role *me = out->spare ? &spare_role
                                            : &sb->role[sb->slot];
    raid_uuid_format(out->spare ? sb->spare_self : me->dev_uuid,
                     out->dev_uuid);
    out->role_state = me->state == RAID_ROLE_ACTIVE ? VD_RAID_STATE_ACTIVE
                      : me->state == RAID_ROLE_REBUILDING
                      ? VD_RAID_STATE_REBUILDING : VD_RAID_STATE_FAULTY;
    out->recovery_offset = me->state == RAID_ROLE_REBUILDING
                           ? me->recovery_offset : 0;
    /* mdadm's "Array State": one letter per slot as this member saw it. */
    for (unsigned i = 0; i < sb->nmembers && i < RAID_MAX_MEMBERS; i++)
      out->array_state[i] = sb->role[i].state == RAID_ROLE_ACTIVE ? 'A'
                            : sb->role[i].state == RAID_ROLE_REBUILDING
                            ? 'R' : '.';
  }
  free(sb);
  vd_free_aligned(buf);
  vd_close(dev);
  return r;
}
