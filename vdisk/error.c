/* libvdisk — thread-local error messages.
 *
 * Every failing function sets a one-line message naming the object and
 * the operation, and returns -errno.  Frontends print it or map the errno.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vdisk/driver.h"

#define VD_ERR_MAX 1024

static _Thread_local char vd_errbuf[VD_ERR_MAX];

const char *
vd_error(void)
{
  return vd_errbuf;
}

void
vd_clear_error(void)
{
  vd_errbuf[0] = '\0';
}

/* Keep messages on one line: replace control characters. */
static void
vd_error_sanitize(void)
{
  for (char *p = vd_errbuf; *p; p++)
    if ((unsigned char)*p < 0x20)
      *p = ' ';
}

int
vd_set_verror(int errnum, const char *fmt, va_list ap)
{
  vsnprintf(vd_errbuf, sizeof vd_errbuf, fmt, ap);
  vd_error_sanitize();
  return -(errnum > 0 ? errnum : EIO);
}

int
vd_set_error(int errnum, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int r = vd_set_verror(errnum, fmt, ap);
  va_end(ap);
  return r;
}

int
vd_prefix_error(int errnum, const char *fmt, ...)
{
  char prefix[VD_ERR_MAX], old[VD_ERR_MAX];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  snprintf(old, sizeof old, "%s", vd_errbuf);
  if (old[0])
    snprintf(vd_errbuf, sizeof vd_errbuf, "%s: %s", prefix, old);
  else
    snprintf(vd_errbuf, sizeof vd_errbuf, "%s: %s", prefix,
             strerror(errnum > 0 ? errnum : EIO));
  vd_error_sanitize();
  return -(errnum > 0 ? errnum : EIO);
}
