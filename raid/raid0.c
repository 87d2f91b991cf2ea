/* RAID0: striping without redundancy.
 *
 * Chunk k of the array (chunk size C) lives on member k mod n at member
 * offset (k / n) * C, as md's raid0 with equal members.  Any member error
 * fails the array: there is nothing to rebuild from.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "raid/raid.h"

/* Split [off, off+len) into one member request per chunk and run them all
 * in parallel. */
static int raid0_io(struct raid_array *a, int op, void *buf, size_t len,
                    uint64_t off)
{
  uint64_t c = a->sb.chunk;
  size_t nmax = (size_t)((off % c + len + c - 1) / c);
  struct raid_mio stackmio[16];
  struct raid_mio *mio = nmax <= 16 ? stackmio : calloc(nmax, sizeof *mio);
  if (!mio)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  int k = 0;
  uint8_t *p = buf;
  while (len > 0) {
    uint64_t chunk = off / c, in = off % c;
    size_t n = len < c - in ? len : (size_t)(c - in);
    mio[k++] = (struct raid_mio){ .slot = (int)(chunk % a->n), .op = op,
                                  .buf = p, .len = n,
                                  .off = (chunk / a->n) * c + in };
    p += n;
    off += n;
    len -= n;
  }
  raid_mio_run(a, mio, k);
  int r = 0;
  for (int i = 0; i < k; i++)
    if (mio[i].ret < 0) {
      raid_member_failed(a, mio[i].slot, mio[i].ret);
      r = vd_set_error(EIO, "%s: RAID0 member %d failed: %s", a->desc_path,
                       mio[i].slot, strerror(-mio[i].ret));
    }
  if (mio != stackmio)
    free(mio);
  return r;
}

static int raid0_read(struct raid_array *a, void *buf, size_t len,
                      uint64_t off)
{
  return raid0_io(a, RAID_MIO_READ, buf, len, off);
}

static int raid0_write(struct raid_array *a, const void *buf, size_t len,
                       uint64_t off, unsigned flags)
{
  return raid0_io(a, RAID_MIO_WRITE, (void *)buf, len, off);
}

static uint64_t raid0_capacity(unsigned n, uint64_t data_size)
{
  return data_size * n;
}

static uint64_t raid0_row_bytes(unsigned n, uint32_t chunk)
{
  return (uint64_t)chunk * n;
}

/* Every member holds data nothing else has. */
static unsigned raid0_members_needed(unsigned n)
{
  return n;
}

/* No redundancy: nothing to resync, rebuild or log. */
const struct raid_level_ops raid0_ops = {
  .level = RAID_LEVEL0,
  .min_members = 2,
  .striped = true,
  .default_policy = RAID_POLICY_RESYNC,
  .layout_name = "-",
  .mismatch_what = "-",
  .capacity = raid0_capacity,
  .row_bytes = raid0_row_bytes,
  .members_needed = raid0_members_needed,
  .read = raid0_read,
  .write = raid0_write,
};
