/* libvdisk — "key=value,key=value" option strings (qemu-img -o). */
#include <config.h>

#include <errno.h>
#include <string.h>

#include "vdisk/driver.h"

/* Walk OPTIONS; for each item call FN(key, keylen, val, vallen). */
static int
vd_opt_walk(const char *options,
            int (*fn)(const char *k, size_t kl, const char *v, size_t vl,
                      void *opaque),
            void *opaque)
{
  const char *p = options;
  while (p && *p) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n > 0) {
      const char *eq = memchr(p, '=', n);
      size_t kl = eq ? (size_t)(eq - p) : n;
      const char *v = eq ? eq + 1 : "";
      size_t vl = eq ? n - kl - 1 : 0;
      int r = fn(p, kl, v, vl, opaque);
      if (r)
        return r;
    }
    p = end ? end + 1 : NULL;
  }
  return 0;
}

struct vd_opt_find {
  const char *key;
  char *val;
  size_t vallen;
  int found;
};

static int
vd_opt_find_one(const char *k, size_t kl, const char *v, size_t vl,
                void *opaque)
{
  struct vd_opt_find *f = opaque;
  if (strlen(f->key) != kl || memcmp(f->key, k, kl) != 0)
    return 0;
  if (vl >= f->vallen)
    return vd_set_error(EINVAL, "option '%s': value too long", f->key);
  memcpy(f->val, v, vl);
  f->val[vl] = '\0';
  f->found = 1;
  return 0;  /* keep going: the last occurrence wins, as in qemu */
}

int
vd_opt_get(const char *options, const char *key, char *val, size_t vallen)
{
  struct vd_opt_find f = { key, val, vallen, 0 };
  int r = vd_opt_walk(options, vd_opt_find_one, &f);
  return r < 0 ? r : f.found;
}

struct vd_opt_known {
  const char *const *known;
  const char *what;
};

static int
vd_opt_check_one(const char *k, size_t kl, const char *v, size_t vl,
                 void *opaque)
{
  struct vd_opt_known *c = opaque;
  for (const char *const *p = c->known; p && *p; p++)
    if (strlen(*p) == kl && memcmp(*p, k, kl) == 0)
      return 0;
  return vd_set_error(EINVAL, "%s: unknown option '%.*s'", c->what,
                      (int)kl, k);
}

int
vd_opt_check(const char *options, const char *const *known, const char *what)
{
  struct vd_opt_known c = { known, what };
  return vd_opt_walk(options, vd_opt_check_one, &c);
}
