/* Fuzz harness: rbd: image names (vdisk/rbd-name.c), the one parser of
 * operator-typed text that reaches librados.
 *
 * Input: the bytes of a name ("rbd:" is put in front unless the input
 * starts with it, so the mutations explore the part after the prefix).
 *
 * Invariants checked (abort on violation): a failure returns -EINVAL or
 * -ENAMETOOLONG with a non-empty one-line message; a success has a
 * non-empty pool and image, no control character in any part, a timeout
 * within 1..3600; and the parts, escaped again and joined in the
 * canonical order, parse back to exactly the same parts. */
#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "vdisk/rbd-name.h"

static void
check_part(const char *s)
{
  for (const unsigned char *c = (const unsigned char *)s; *c; c++)
    if (*c < 0x20 || *c == 0x7f)
      abort();
}

/* Append S to OUT with every separator and backslash escaped. */
static size_t
put_escaped(char *out, size_t n, const char *s)
{
  for (; *s; s++) {
    if (strchr("/@:=\\", *s))
      out[n++] = '\\';
    out[n++] = *s;
  }
  out[n] = '\0';
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size > 2 * VD_RBD_NAME_MAX)
    return 0;
  char *name = malloc(size + 8);
  if (!name)
    return 0;
  size_t off = 0;
  if (size < 4 || memcmp(data, "rbd:", 4) != 0) {
    memcpy(name, "rbd:", 4);
    off = 4;
  }
  memcpy(name + off, data, size);
  name[off + size] = '\0';   /* an embedded NUL just ends the name */

  static struct vd_rbd_name a, b;
  int r = vd_rbd_name_parse(name, &a);
  if (r < 0) {
    const char *m = vd_error();
    if ((r != -EINVAL && r != -ENAMETOOLONG) || !*m || strchr(m, '\n'))
      abort();
    free(name);
    return 0;
  }
  if (!a.pool[0] || !a.image[0] || a.timeout < 1 ||
      a.timeout > VD_RBD_MAX_TIMEOUT)
    abort();
  check_part(a.pool);
  check_part(a.ns);
  check_part(a.image);
  check_part(a.snap);
  check_part(a.conf);
  check_part(a.id);

  /* Each part at most doubles when escaped. */
  size_t cap = 64 + 2 * (strlen(a.pool) + strlen(a.ns) + strlen(a.image) +
                         strlen(a.snap) + strlen(a.conf) + strlen(a.id));
  char *again = malloc(cap);
  if (!again)
    abort();
  size_t n = (size_t)sprintf(again, "rbd:");
  n = put_escaped(again, n, a.pool);
  again[n++] = '/';
  if (a.ns[0]) {
    n = put_escaped(again, n, a.ns);
    again[n++] = '/';
  }
  n = put_escaped(again, n, a.image);
  if (a.snap[0]) {
    again[n++] = '@';
    n = put_escaped(again, n, a.snap);
  }
  if (a.conf[0]) {
    n += (size_t)sprintf(again + n, ":conf=");
    n = put_escaped(again, n, a.conf);
  }
  if (a.id[0]) {
    n += (size_t)sprintf(again + n, ":id=");
    n = put_escaped(again, n, a.id);
  }
  n += (size_t)sprintf(again + n, ":timeout=%u", a.timeout);
  if (n <= VD_RBD_NAME_MAX) {
    if (vd_rbd_name_parse(again, &b) != 0 ||
        strcmp(a.pool, b.pool) || strcmp(a.ns, b.ns) ||
        strcmp(a.image, b.image) || strcmp(a.snap, b.snap) ||
        strcmp(a.conf, b.conf) || strcmp(a.id, b.id) ||
        a.timeout != b.timeout)
      abort();
  }
  free(again);
  free(name);
  return 0;
}
