/* Helper for tests/integration/vhd-crash.sh (not a test by itself): write
 * round after round into a VHD, flushing every FLUSH_EVERY rounds and
 * printing "flushed N" once rounds 0..N are durable, until killed.
 *
 *   test-vhd-crash-writer IMAGE NSLOTS [spread|alloc]
 *
 * Round i writes SLOT bytes of (i % 251) + 1 at slot vhd_slot(i): with
 * "spread" (the default) (i * 7919) % NSLOTS, which jumps around the disk
 * so that most early rounds allocate a block; with "alloc" the first slot
 * of every 512 KiB block in turn, then the second ones, and so on, so
 * that every round of the first pass appends a block beyond the old end
 * of the file.  NSLOTS 0 only opens the image read-write and closes it
 * (what the next user after a crash does). */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/vdisk.h"

#define SLOT (32u << 10)
#define SLOTS_PER_BLOCK ((512u << 10) / SLOT)
#define FLUSH_EVERY 4

static unsigned long
vhd_slot(unsigned long i, unsigned long nslots, bool alloc)
{
  if (!alloc)
    return i * 7919 % nslots;
  unsigned long nblk = nslots / SLOTS_PER_BLOCK;
  return (i % nblk) * SLOTS_PER_BLOCK + (i / nblk) % SLOTS_PER_BLOCK;
}

int
main(int argc, char **argv)
{
  struct vd_dev *dev;
  if (argc != 3 && argc != 4)
    return 2;
  unsigned long nslots = strtoul(argv[2], NULL, 10);
  bool alloc = argc == 4 && strcmp(argv[3], "alloc") == 0;
  if (alloc && (nslots % SLOTS_PER_BLOCK || nslots == 0))
    return 2;
  if (vd_open(argv[1], NULL, VD_OPEN_RDWR, &dev) < 0) {
    fprintf(stderr, "%s\n", vd_error());
    return 1;
  }
  static unsigned char buf[SLOT];
  for (unsigned long i = 0; i < nslots; i++) {
    memset(buf, (int)(i % 251) + 1, sizeof buf);
    if (vd_pwrite(dev, buf, SLOT, vhd_slot(i, nslots, alloc) * SLOT, 0) < 0) {
      fprintf(stderr, "%s\n", vd_error());
      return 1;
    }
    if (i % FLUSH_EVERY == FLUSH_EVERY - 1) {
      if (vd_flush(dev) < 0) {
        fprintf(stderr, "%s\n", vd_error());
        return 1;
      }
      printf("flushed %lu\n", i);
      fflush(stdout);
    }
    usleep(300);
  }
  if (vd_close(dev) < 0) {
    fprintf(stderr, "%s\n", vd_error());
    return 1;
  }
  return 0;
}
