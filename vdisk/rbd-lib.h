/* libvdisk — librbd and librados, loaded when the first rbd: image is
 * opened or created (as qemu loads its rbd block module), not at program
 * start: linking them costs every vdisk process about 50 ms of start-up
 * (dynamic relocations and Ceph's static constructors), which every
 * `vdtool info` paid although few ever name an RBD image.
 *
 * The rbd driver (vdisk/rbd.c) calls the libraries through the pointers
 * in vd_rbd_lib, filled by vd_rbd_lib_load: vd_rbd_lib.rbd_open(...).
 * The headers still give every prototype, so the calls are type-checked
 * as before. */
#ifndef VDISK_RBD_LIB_H
#define VDISK_RBD_LIB_H

#include <rados/librados.h>
#include <rbd/librbd.h>

/* Every function the driver calls. */
#define VD_RBD_FUNCS(X)                                                    \
  X(rados_create) X(rados_conf_read_file) X(rados_conf_set)               \
  X(rados_connect) X(rados_ioctx_create) X(rados_ioctx_destroy)           \
  X(rados_ioctx_set_namespace) X(rados_shutdown)                          \
  X(rbd_open) X(rbd_open_read_only) X(rbd_close) X(rbd_stat)              \
  X(rbd_read) X(rbd_write) X(rbd_write_zeroes) X(rbd_discard)             \
  X(rbd_flush) X(rbd_diff_iterate2) X(rbd_resize2) X(rbd_get_features)    \
  X(rbd_features_to_string) X(rbd_get_block_name_prefix)                  \
  X(rbd_snap_create) X(rbd_snap_remove) X(rbd_snap_list)                  \
  X(rbd_snap_list_end) X(rbd_snap_get_timestamp) X(rbd_create4)           \
  X(rbd_image_options_create) X(rbd_image_options_destroy)                \
  X(rbd_image_options_set_uint64)

struct vd_rbd_lib {
#define VD_RBD_PTR(f) __typeof__(f) *f;
  VD_RBD_FUNCS(VD_RBD_PTR)
#undef VD_RBD_PTR
};

/* Filled by the first successful vd_rbd_lib_load, then never changed. */
extern struct vd_rbd_lib vd_rbd_lib;

/* Load the libraries once (later calls return the first call's result):
 * 0, or a negative errno with a one-line vd_error naming the library
 * and why (not installed, or a function missing). */
int vd_rbd_lib_load(void);

#endif
