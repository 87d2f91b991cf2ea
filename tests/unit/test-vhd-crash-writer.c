/* Helper for tests/integration/vhd-crash.sh (not a test by itself): write
 * round after round into a VHD, flushing every FLUSH_EVERY rounds and
 * printing "flushed N" once rounds 0..N are durable, until killed.
 *
 * Round i writes SLOT bytes of (i % 251) + 1 at slot (i * 7919) % NSLOTS,
 * which jumps around the disk so that most rounds allocate a block.
 *   test-vhd-crash-writer IMAGE NSLOTS */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk.h"

#define SLOT (32u << 10)
#define FLUSH_EVERY 4

int
main(int argc, char **argv)
{
  struct vd_dev *dev;
  if (argc != 3)
    return 2;
  unsigned long nslots = strtoul(argv[2], NULL, 10);
  if (vd_open(argv[1], NULL, VD_OPEN_RDWR, &dev) < 0) {
    fprintf(stderr, "%s\n", vd_error());
    return 1;
  }
  static unsigned char buf[SLOT];
  for (unsigned long i = 0; i < nslots; i++) {
    memset(buf, (int)(i % 251) + 1, sizeof buf);
    if (vd_pwrite(dev, buf, SLOT, (i * 7919 % nslots) * SLOT, 0) < 0) {
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
  vd_close(dev);
  return 0;
}
