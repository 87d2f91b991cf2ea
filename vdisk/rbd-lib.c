/* libvdisk — librbd and librados loaded on first use; see rbd-lib.h. */
#include <config.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>

#include "vdisk/driver.h"
#include "vdisk/rbd-lib.h"

struct vd_rbd_lib vd_rbd_lib;

static pthread_once_t rbd_lib_once = PTHREAD_ONCE_INIT;
static char rbd_lib_err[512];      /* empty: loaded */

static void rbd_lib_open(void)
{
  /* librbd depends on librados, so one handle finds both libraries'
   * functions (dlsym searches a handle's dependencies).  Never closed:
   * librados' threads and Ceph's globals outlive any one image. */
  void *h = dlopen(VD_LIBRBD_SONAME, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(rbd_lib_err, sizeof rbd_lib_err,
             "cannot load %s (install the Debian package librbd1): %s",
             VD_LIBRBD_SONAME, dlerror());
    return;
  }
  struct vd_rbd_lib l;
#define VD_RBD_SYM(f)                                                      \
  if (!(l.f = (__typeof__(f) *)dlsym(h, #f))) {                            \
    snprintf(rbd_lib_err, sizeof rbd_lib_err, "%s has no %s: too old",     \
             VD_LIBRBD_SONAME, #f);                                        \
    return;                                                                \
  }
  VD_RBD_FUNCS(VD_RBD_SYM)
#undef VD_RBD_SYM
  vd_rbd_lib = l;
}

int vd_rbd_lib_load(void)
{
  pthread_once(&rbd_lib_once, rbd_lib_open);
  if (rbd_lib_err[0])
    return vd_set_error(ENOTSUP, "rbd: %s", rbd_lib_err);
  return 0;
}
