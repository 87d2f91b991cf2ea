/* libvdisk — the VMDK text descriptor parser (vmdk.h).
 *
 * The descriptor is untrusted text that names files the server will open,
 * so the parser is strict and bounded: every line must be a comment, blank,
 * "key = value" or an extent line; lengths are capped; numbers are checked
 * for overflow.  It allocates nothing beyond the extent table and names.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vmdk.h"

static const char *const vmdk_type_names[] = {
  [VMDK_EXT_FLAT] = "FLAT",
  [VMDK_EXT_SPARSE] = "SPARSE",
  [VMDK_EXT_ZERO] = "ZERO",
  [VMDK_EXT_VMFS] = "VMFS",
  [VMDK_EXT_VMFSSPARSE] = "VMFSSPARSE",
};

const char *
vmdk_ext_type_name(enum vmdk_ext_type t)
{
  return (unsigned)t < sizeof vmdk_type_names / sizeof *vmdk_type_names
         ? vmdk_type_names[t] : "?";
}

void
vmdk_desc_free(struct vmdk_desc *d)
{
  for (unsigned i = 0; i < d->n; i++)
    free(d->ext[i].file);
  free(d->ext);
  free(d->parent_hint);
  memset(d, 0, sizeof *d);
}

static bool
vmdk_space(char c)
{
  return c == ' ' || c == '\t';
}

/* Skip blanks at *P (below END). */
static const char *
vmdk_skip(const char *p, const char *end)
{
  while (p < end && vmdk_space(*p))
    p++;
  return p;
}

/* A decimal number of at most 19 digits at *P into *V; advances *P.
 * false if there is none or it is too large. */
static bool
vmdk_dec(const char **pp, const char *end, uint64_t *v)
{
  const char *p = *pp;
  uint64_t x = 0;
  int n = 0;
  while (p < end && *p >= '0' && *p <= '9') {
    if (++n > 19)
      return false;
    x = x * 10 + (uint64_t)(*p++ - '0');
  }
  if (!n)
    return false;
  *pp = p;
  *v = x;
  return true;
}

/* A word of [A-Za-z0-9._] at P: its length (0 if none). */
static size_t
vmdk_word(const char *p, const char *end)
{
  const char *s = p;
  while (p < end && ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || *p == '.' || *p == '_'))
    p++;
  return (size_t)(p - s);
}

/* A quoted string at *P ("..." without quotes or control characters
 * inside, at most MAX bytes) into OUT (MAX + 1 bytes).  Advances *P. */
static bool
vmdk_quoted(const char **pp, const char *end, char *out, size_t max)
{
  const char *p = *pp;
  if (p >= end || *p != '"')
    return false;
  const char *s = ++p;
  while (p < end && *p != '"') {
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      return false;
    p++;
  }
  if (p >= end || (size_t)(p - s) > max)
    return false;
  memcpy(out, s, (size_t)(p - s));
  out[p - s] = '\0';
  *pp = p + 1;
  return true;
}

static bool
vmdk_word_is(const char *p, size_t n, const char *w)
{
  return strlen(w) == n && memcmp(p, w, n) == 0;
}

/* One extent line ("RW 2048 FLAT "f" 0") in [P, END).  Returns 0, 1 if
 * the line is not an extent line, or -EINVAL with the error set. */
static int
vmdk_extent_line(const char *p, const char *end, struct vmdk_desc *d,
                 const char *where, unsigned lineno, char *name)
{
  size_t n = vmdk_word(p, end);
  if (!vmdk_word_is(p, n, "RW") && !vmdk_word_is(p, n, "RDONLY") &&
      !vmdk_word_is(p, n, "NOACCESS"))
    return 1;
  if (vmdk_word_is(p, n, "NOACCESS"))
    return vd_set_error(EINVAL, "%s: line %u: NOACCESS extents are not "
                        "supported", where, lineno);
  p = vmdk_skip(p + n, end);
  struct vmdk_desc_extent x = { .file = NULL };
  if (!vmdk_dec(&p, end, &x.sectors) || x.sectors == 0 ||
      x.sectors > (UINT64_C(1) << 54))
    return vd_set_error(EINVAL, "%s: line %u: extent size is not a sector "
                        "count between 1 and 2^54", where, lineno);
  p = vmdk_skip(p, end);
  n = vmdk_word(p, end);
  int type = -1;
  for (unsigned t = 0; t < sizeof vmdk_type_names / sizeof *vmdk_type_names;
       t++)
    if (vmdk_word_is(p, n, vmdk_type_names[t]))
      type = (int)t;
  if (type < 0)
    return vd_set_error(EINVAL, "%s: line %u: unsupported extent type "
                        "'%.*s'", where, lineno, (int)(n > 32 ? 32 : n), p);
  x.type = (enum vmdk_ext_type)type;
  p = vmdk_skip(p + n, end);
  if (x.type != VMDK_EXT_ZERO) {
    if (!vmdk_quoted(&p, end, name, VMDK_NAME_MAX) || !name[0])
      return vd_set_error(EINVAL, "%s: line %u: extent file name missing, "
                          "empty, unterminated or longer than %u bytes",
                          where, lineno, VMDK_NAME_MAX);
    p = vmdk_skip(p, end);
    if (x.type == VMDK_EXT_FLAT) {
      if (!vmdk_dec(&p, end, &x.offset) || x.offset > (UINT64_C(1) << 54))
        return vd_set_error(EINVAL, "%s: line %u: FLAT extent without a "
                            "valid offset", where, lineno);
      p = vmdk_skip(p, end);
    }
  }
  if (p != end)
    return vd_set_error(EINVAL, "%s: line %u: trailing characters after the "
                        "extent", where, lineno);
  if (d->n >= VMDK_MAX_EXTENTS)
    return vd_set_error(EINVAL, "%s: more than %u extents", where,
                        VMDK_MAX_EXTENTS);
  if (x.type != VMDK_EXT_ZERO && !(x.file = strdup(name)))
    return vd_set_error(ENOMEM, "%s: out of memory", where);
  if (d->n % 16 == 0) {
    void *ne = realloc(d->ext, (d->n + 16) * sizeof *d->ext);
    if (!ne) {
      free(x.file);
      return vd_set_error(ENOMEM, "%s: out of memory", where);
    }
    d->ext = ne;
  }
  d->ext[d->n++] = x;
  return 0;
}

static int
vmdk_hex32(const char *v, uint32_t *out)
{
  size_t n = strlen(v);
  uint32_t x = 0;
  if (n == 0 || n > 8)
    return -1;
  for (size_t i = 0; i < n; i++) {
    char c = v[i];
    unsigned dig = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                   : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16;
    if (dig > 15)
      return -1;
    x = x << 4 | dig;
  }
  *out = x;
  return 0;
}

/* "key = value" in [P, END). */
static int
vmdk_key_line(const char *p, const char *end, struct vmdk_desc *d,
              const char *where, unsigned lineno, unsigned *seen, char *val)
{
  size_t kn = vmdk_word(p, end);
  const char *key = p;
  if (!kn)
    return vd_set_error(EINVAL, "%s: line %u: not a descriptor line", where,
                        lineno);
  p = vmdk_skip(p + kn, end);
  if (p >= end || *p != '=')
    return vd_set_error(EINVAL, "%s: line %u: not a descriptor line", where,
                        lineno);
  p = vmdk_skip(p + 1, end);
  if (p < end && *p == '"') {
    if (!vmdk_quoted(&p, end, val, VMDK_NAME_MAX))
      return vd_set_error(EINVAL, "%s: line %u: bad quoted value", where,
                          lineno);
    p = vmdk_skip(p, end);
    if (p != end)
      return vd_set_error(EINVAL, "%s: line %u: trailing characters after "
                          "the value", where, lineno);
  } else {
    const char *s = p;
    while (p < end && !vmdk_space(*p))
      p++;
    if ((size_t)(p - s) > VMDK_NAME_MAX || vmdk_skip(p, end) != end)
      return vd_set_error(EINVAL, "%s: line %u: bad value", where, lineno);
    memcpy(val, s, (size_t)(p - s));
    val[p - s] = '\0';
  }
  static const char *const known[] = { "version", "CID", "parentCID",
                                       "createType", "parentFileNameHint" };
  int k = -1;
  for (unsigned i = 0; i < sizeof known / sizeof *known; i++)
    if (vmdk_word_is(key, kn, known[i]))
      k = (int)i;
  if (k < 0)
    return 0;                   /* ddb.*, encoding, ...: not ours */
  if (*seen & (1u << k))
    return vd_set_error(EINVAL, "%s: line %u: %s given twice", where, lineno,
                        known[k]);
  *seen |= 1u << k;
  switch (k) {
  case 0:
    if (strcmp(val, "1") && strcmp(val, "2") && strcmp(val, "3"))
      return vd_set_error(EINVAL, "%s: line %u: unsupported descriptor "
                          "version '%.16s'", where, lineno, val);
    d->version = (unsigned)(val[0] - '0');
    return 0;
  case 1:
  case 2:
    if (vmdk_hex32(val, k == 1 ? &d->cid : &d->parent_cid) < 0)
      return vd_set_error(EINVAL, "%s: line %u: %s is not a 32-bit hex "
                          "number", where, lineno, known[k]);
    return 0;
  case 3:
    if (strlen(val) >= sizeof d->create_type)
      return vd_set_error(EINVAL, "%s: line %u: createType too long", where,
                          lineno);
    snprintf(d->create_type, sizeof d->create_type, "%s", val);
    return 0;
  default:
    if (!val[0])
      return 0;               /* an empty hint: no parent */
    if (!(d->parent_hint = strdup(val)))
      return vd_set_error(ENOMEM, "%s: out of memory", where);
    return 0;
  }
}

int
vmdk_desc_parse(const char *text, size_t len, struct vmdk_desc *d,
                const char *where)
{
  memset(d, 0, sizeof *d);
  d->parent_cid = VMDK_NO_PARENT_CID;
  const char *nul = memchr(text, '\0', len);
  if (nul)
    len = (size_t)(nul - text);
  if (len > VMDK_DESC_MAX)
    return vd_set_error(EINVAL, "%s: descriptor larger than %u bytes", where,
                        VMDK_DESC_MAX);
  char *name = malloc(2 * (VMDK_NAME_MAX + 1));
  if (!name)
    return vd_set_error(ENOMEM, "%s: out of memory", where);
  char *val = name + VMDK_NAME_MAX + 1;
  const char *p = text, *end = text + len;
  unsigned lineno = 0, seen = 0;
  int r = 0;
  while (p < end && r == 0) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    lineno++;
    if (le - p > VMDK_LINE_MAX) {
      r = vd_set_error(EINVAL, "%s: line %u longer than %u bytes", where,
                       lineno, VMDK_LINE_MAX);
      break;
    }
    const char *s = vmdk_skip(p, le), *e = le;
    if (e > s && e[-1] == '\r')
      e--;
    while (e > s && vmdk_space(e[-1]))
      e--;
    if (s < e && *s != '#') {
      r = vmdk_extent_line(s, e, d, where, lineno, name);
      if (r == 1)
        r = vmdk_key_line(s, e, d, where, lineno, &seen, val);
    }
    p = nl ? nl + 1 : end;
  }
  free(name);
  if (r == 0 && !d->create_type[0])
    r = vd_set_error(EINVAL, "%s: no createType: not a VMDK descriptor",
                     where);
  if (r < 0)
    vmdk_desc_free(d);
  return r;
}
