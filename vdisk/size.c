/* libvdisk — sizes with K/M/G/T/P/E suffixes (binary multiples, as
 * qemu-img reads them). */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "vdisk/driver.h"
#include "vdisk/endian.h"

int
vd_parse_size(const char *s, uint64_t *out)
{
  const char *p = s;
  uint64_t whole = 0, frac_num = 0, frac_den = 1;
  bool digits = false;

  if (!s)
    return vd_set_error(EINVAL, "missing size");
  while (isspace((unsigned char)*p))
    p++;
  for (; isdigit((unsigned char)*p); p++) {
    digits = true;
    if (vd_mul_overflow(whole, 10, &whole) ||
        vd_add_overflow(whole, (uint64_t)(*p - '0'), &whole))
      return vd_set_error(ERANGE, "size '%s' is too large", s);
  }
  if (*p == '.') {
    p++;
    for (; isdigit((unsigned char)*p); p++) {
      digits = true;
      if (frac_den < 1000000000000ULL) {
        frac_num = frac_num * 10 + (uint64_t)(*p - '0');
        frac_den *= 10;
      }
    }
  }
  if (!digits)
    return vd_set_error(EINVAL, "invalid size '%s'", s);

  unsigned shift = 0;
  switch (toupper((unsigned char)*p)) {
  case '\0': break;
  case 'B': shift = 0; p++; goto tail_done;
  case 'K': shift = 10; break;
  case 'M': shift = 20; break;
  case 'G': shift = 30; break;
  case 'T': shift = 40; break;
  case 'P': shift = 50; break;
  case 'E': shift = 60; break;
  default:
    return vd_set_error(EINVAL,
                        "invalid size '%s': unknown suffix (use K, M, G, T, P or E)", s);
  }
  if (*p) {
    p++;
    if (*p == 'i' || *p == 'I')
      p++;
    if (*p == 'b' || *p == 'B')
      p++;
  }
tail_done:
  if (*p)
    return vd_set_error(EINVAL,
                        "invalid size '%s': unknown suffix (use K, M, G, T, P or E)", s);
  if (frac_num && shift == 0)
    return vd_set_error(EINVAL, "invalid size '%s': fractional bytes", s);

  uint64_t mult = UINT64_C(1) << shift, v;
  if (vd_mul_overflow(whole, mult, &v))
    return vd_set_error(ERANGE, "size '%s' is too large", s);
  if (frac_num) {
    /* frac_num/frac_den * mult, rounded down; mult <= 2^60 and
       frac_num < frac_den <= 10^12 would overflow, so scale first. */
    unsigned __int128 f = (unsigned __int128)frac_num * mult / frac_den;
    if (vd_add_overflow(v, (uint64_t)f, &v))
      return vd_set_error(ERANGE, "size '%s' is too large", s);
  }
  *out = v;
  return 0;
}

const char *
vd_format_size(uint64_t bytes, char *buf, size_t buflen)
{
  static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB",
                                       "PiB", "EiB" };
  unsigned u = 0;
  double v = (double)bytes;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(buf, buflen, "%" PRIu64 " B", bytes);
  else if (v == (double)(uint64_t)v)
    snprintf(buf, buflen, "%" PRIu64 " %s", (uint64_t)v, units[u]);
  else
    snprintf(buf, buflen, "%.3g %s", v, units[u]);
  return buf;
}
