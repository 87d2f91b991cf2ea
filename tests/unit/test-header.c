/* The public header compiles on its own (it is the first and only vdisk
 * include here) and links against the installed library's symbols; so
 * does vdisk/raid.h (tests/unit/test-header-raid.c). */
#include "vdisk/vdisk.h"

#include <stdio.h>

int test_header_raid(void);

int
main(void)
{
  uint64_t v = 0;
  if (vd_parse_size("2M", &v) != 0 || v != 2u << 20) {
    fprintf(stderr, "vd_parse_size through the public header failed\n");
    return 1;
  }
  if (test_header_raid() != 0) {
    fprintf(stderr, "the RAID API through vdisk/raid.h failed: %s\n",
            vd_error());
    return 1;
  }
  printf("public headers: ok\n");
  return 0;
}
