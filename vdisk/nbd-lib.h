/* libvdisk — libnbd, loaded when the first NBD URI is opened, not at
 * program start: linking it (and through it GnuTLS, libxml2, ICU and
 * libstdc++) cost every vdisk process about 10 ms of start-up, which
 * every `vdtool convert` of local files paid although few name an NBD
 * export.  The same scheme as librbd's (vdisk/rbd-lib.h).
 *
 * The nbd driver (vdisk/nbd-client.c) calls libnbd through the pointers
 * in vd_nbd_lib, filled by vd_nbd_lib_load: vd_nbd_lib.nbd_create().
 * libnbd.h still gives every prototype and constant, so the calls are
 * type-checked as before. */
#ifndef VDISK_NBD_LIB_H
#define VDISK_NBD_LIB_H

#include <libnbd.h>

/* Every function the driver calls. */
#define VD_NBD_FUNCS(X)                                                    \
  X(nbd_create) X(nbd_close) X(nbd_get_error) X(nbd_get_errno)            \
  X(nbd_set_uri_allow_local_file) X(nbd_add_meta_context)                 \
  X(nbd_aio_connect_uri) X(nbd_aio_disconnect) X(nbd_aio_is_ready)        \
  X(nbd_aio_is_dead) X(nbd_aio_is_closed) X(nbd_aio_command_completed)    \
  X(nbd_poll) X(nbd_aio_pread) X(nbd_aio_pwrite) X(nbd_aio_flush)         \
  X(nbd_aio_trim) X(nbd_aio_zero) X(nbd_aio_block_status)                 \
  X(nbd_get_size) X(nbd_is_read_only) X(nbd_can_flush) X(nbd_can_fua)     \
  X(nbd_can_trim) X(nbd_can_zero) X(nbd_can_fast_zero)                    \
  X(nbd_can_meta_context) X(nbd_can_multi_conn) X(nbd_get_block_size)     \
  X(nbd_get_export_name) X(nbd_get_tls_negotiated)

struct vd_nbd_lib {
#define VD_NBD_PTR(f) __typeof__(f) *f;
  VD_NBD_FUNCS(VD_NBD_PTR)
#undef VD_NBD_PTR
};

/* Filled by the first successful vd_nbd_lib_load, then never changed. */
extern struct vd_nbd_lib vd_nbd_lib;

/* Load libnbd once (later calls return the first call's result): 0, or
 * a negative errno with a one-line vd_error naming the library and why
 * (not installed, or a function missing). */
int vd_nbd_lib_load(void);

#endif
