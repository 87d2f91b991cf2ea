/* The installed RAID header compiles on its own (the first and only vdisk
 * include here) and its functions are exported by the shared library
 * (tests/unit/test-header.c calls this). */
#include "vdisk/raid.h"

#include <string.h>

int test_header_raid(void);

/* 0 if the RAID API answers through the public header: no process serves
 * an array that does not exist, and examining it fails with a message. */
int
test_header_raid(void)
{
  struct vd_raid_status st;
  if (vd_raid_served_by("/nonexistent/array.vdraid") != 0)
    return -1;
  memset(&st, 0, sizeof st);
  if (vd_raid_examine("/nonexistent/array.vdraid", &st) >= 0)
    return -1;
  return vd_error()[0] ? 0 : -1;
}
