/* The public header compiles on its own (it is the first and only vdisk
 * include here) and links against the installed library's symbols. */
#include "vdisk.h"

#include <stdio.h>

int
main(void)
{
  uint64_t v = 0;
  if (vd_parse_size("2M", &v) != 0 || v != 2u << 20) {
    fprintf(stderr, "vd_parse_size through the public header failed\n");
    return 1;
  }
  printf("public header: ok\n");
  return 0;
}
