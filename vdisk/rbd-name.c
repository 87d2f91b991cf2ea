/* libvdisk — rbd: image names (rbd-name.h). */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "vdisk/driver.h"
#include "vdisk/rbd-name.h"

bool
vd_rbd_is_name(const char *path)
{
  return path && strncmp(path, VD_RBD_PREFIX, strlen(VD_RBD_PREFIX)) == 0;
}

bool
vd_is_remote_name(const char *path)
{
  return vd_is_nbd_uri(path) || vd_rbd_is_name(path);
}

/* Copy the token at *P into OUT (OUTLEN bytes), without its escapes, up
 * to the first unescaped character of STOPS or the end; *P is left on
 * that character.  WHAT names the part for messages. */
static int
rbdn_token(const char *name, const char **p, const char *stops, char *out,
           size_t outlen, const char *what)
{
  size_t n = 0;
  const char *s = *p;
  while (*s && !strchr(stops, *s)) {
    unsigned char c = (unsigned char)*s;
    if (c == '\\') {
      c = (unsigned char)*++s;
      if (c == '\0')
        return vd_set_error(EINVAL, "%s: a backslash ends the name", name);
    }
    if (c < 0x20 || c == 0x7f)
      return vd_set_error(EINVAL, "%s: control character 0x%02x in the %s",
                          name, c, what);
    if (n + 1 >= outlen)
      return vd_set_error(ENAMETOOLONG, "%s: the %s is longer than %zu "
                          "bytes", name, what, outlen - 1);
    out[n++] = (char)c;
    s++;
  }
  out[n] = '\0';
  *p = s;
  return 0;
}

/* One KEY=VALUE option into N.  SEEN has a bit per key already given. */
static int
rbdn_option(const char *name, const char *key, const char *val,
            struct vd_rbd_name *n, unsigned *seen)
{
  static const char *const keys[] = { "conf", "id", "timeout", NULL };
  unsigned k;
  for (k = 0; keys[k] && strcmp(keys[k], key) != 0; k++)
    ;
  if (!keys[k])
    return vd_set_error(EINVAL, "%s: unknown option '%s' (an rbd: name "
                        "takes conf, id and timeout)", name, key);
  if (*seen & (1u << k))
    return vd_set_error(EINVAL, "%s: option '%s' given twice", name, key);
  *seen |= 1u << k;
  if (!*val)
    return vd_set_error(EINVAL, "%s: option '%s' has an empty value", name,
                        key);
  switch (k) {
  case 0:
    if (strlen(val) >= sizeof n->conf)
      return vd_set_error(ENAMETOOLONG, "%s: conf path too long", name);
    snprintf(n->conf, sizeof n->conf, "%s", val);
    break;
  case 1:
    if (strlen(val) >= sizeof n->id)
      return vd_set_error(ENAMETOOLONG, "%s: id longer than %zu bytes",
                          name, sizeof n->id - 1);
    snprintf(n->id, sizeof n->id, "%s", val);
    break;
  default: {
    unsigned t = 0;
    for (const char *c = val; *c; c++) {
      if (*c < '0' || *c > '9' || t > VD_RBD_MAX_TIMEOUT)
        return vd_set_error(EINVAL, "%s: timeout must be a number of "
                            "seconds from 1 to %d, not '%s'", name,
                            VD_RBD_MAX_TIMEOUT, val);
      t = t * 10 + (unsigned)(*c - '0');
    }
    if (t < 1 || t > VD_RBD_MAX_TIMEOUT)
      return vd_set_error(EINVAL, "%s: timeout must be a number of seconds "
                          "from 1 to %d, not '%s'", name,
                          VD_RBD_MAX_TIMEOUT, val);
    n->timeout = t;
    n->timeout_given = true;
    break;
  }
  }
  return 0;
}

int
vd_rbd_name_parse(const char *name, struct vd_rbd_name *n)
{
  memset(n, 0, sizeof *n);
  n->timeout = VD_RBD_DEFAULT_TIMEOUT;
  if (!vd_rbd_is_name(name))
    return vd_set_error(EINVAL, "%s: not an rbd: name (rbd:POOL/IMAGE)",
                        name ? name : "(null)");
  if (strnlen(name, VD_RBD_NAME_MAX + 1) > VD_RBD_NAME_MAX)
    return vd_set_error(ENAMETOOLONG, "%.64s...: rbd: name longer than %d "
                        "bytes", name, VD_RBD_NAME_MAX);
  const char *p = name + strlen(VD_RBD_PREFIX);
  char part[3][VD_RBD_PART_MAX];
  static const char *const what[3] = { "pool name", "image name",
                                       "image name" };
  int nparts = 0, r;
  /* POOL/IMAGE or POOL/NAMESPACE/IMAGE, ended by '@', ':' or the end. */
  for (;;) {
    if (nparts == 3)
      return vd_set_error(EINVAL, "%s: too many '/' (rbd:POOL/[NAMESPACE/]"
                          "IMAGE)", name);
    if ((r = rbdn_token(name, &p, "/@:", part[nparts], VD_RBD_PART_MAX,
                        what[nparts])) < 0)
      return r;
    if (!part[nparts][0])
      return vd_set_error(EINVAL, "%s: empty %s", name,
                          nparts == 0 ? "pool name" :
                          *p == '/' ? "namespace" : "image name");
    nparts++;
    if (*p != '/')
      break;
    p++;
  }
  if (nparts == 1)
    return vd_set_error(EINVAL, "%s: no image name (rbd:POOL/IMAGE)", name);
  snprintf(n->pool, sizeof n->pool, "%s", part[0]);
  if (nparts == 3)
    snprintf(n->ns, sizeof n->ns, "%s", part[1]);
  snprintf(n->image, sizeof n->image, "%s", part[nparts - 1]);
  if (*p == '@') {
    p++;
    if ((r = rbdn_token(name, &p, "/@:", n->snap, sizeof n->snap,
                        "snapshot name")) < 0)
      return r;
    if (!n->snap[0])
      return vd_set_error(EINVAL, "%s: empty snapshot name", name);
    if (*p == '/' || *p == '@')
      return vd_set_error(EINVAL, "%s: unexpected '%c' after the snapshot "
                          "name (escape it with a backslash)", name, *p);
  }
  unsigned seen = 0;
  while (*p == ':') {
    char key[64], val[PATH_MAX];
    p++;
    if ((r = rbdn_token(name, &p, "=:", key, sizeof key, "option name")) < 0)
      return r;
    if (!key[0])
      return vd_set_error(EINVAL, "%s: empty option", name);
    if (*p != '=')
      return vd_set_error(EINVAL, "%s: option '%s' has no value "
                          "(KEY=VALUE)", name, key);
    p++;
    if ((r = rbdn_token(name, &p, ":", val, sizeof val, "option value")) < 0 ||
        (r = rbdn_option(name, key, val, n, &seen)) < 0)
      return r;
  }
  return 0;
}
