/* libvdisk — libnbd loaded on first use; see nbd-lib.h. */
#include <config.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>

#include "vdisk/driver.h"
#include "vdisk/nbd-lib.h"

struct vd_nbd_lib vd_nbd_lib;

static pthread_once_t nbd_lib_once = PTHREAD_ONCE_INIT;
static char nbd_lib_err[512];      /* empty: loaded */

static void nbd_lib_open(void)
{
  /* Never closed: handles may be open until exit. */
  void *h = dlopen(VD_LIBNBD_SONAME, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(nbd_lib_err, sizeof nbd_lib_err,
             "%s cannot be loaded: %s: install libnbd0",
             VD_LIBNBD_SONAME, dlerror());
    return;
  }
  struct vd_nbd_lib l;
#define VD_NBD_SYM(f)                                                      \
  if (!(l.f = (__typeof__(f) *)dlsym(h, #f))) {                            \
    snprintf(nbd_lib_err, sizeof nbd_lib_err, "%s has no %s: too old",     \
             VD_LIBNBD_SONAME, #f);                                        \
    return;                                                                \
  }
  VD_NBD_FUNCS(VD_NBD_SYM)
#undef VD_NBD_SYM
  vd_nbd_lib = l;
}

int vd_nbd_lib_load(void)
{
  pthread_once(&nbd_lib_once, nbd_lib_open);
  if (nbd_lib_err[0])
    return vd_set_error(ENOTSUP, "nbd: %s", nbd_lib_err);
  return 0;
}
