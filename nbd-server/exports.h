/* vdisk-nbd — the export registry: the set of exports, changed while
 * serving (block-export-add / block-export-del over the control socket).
 *
 * Lifetime.  Every export is reference-counted.  The registry holds one
 * reference while the export is listed; a negotiation holds one while it
 * looks at an export (NBD_OPT_INFO, GO, LIST, EXPORT_NAME, meta
 * contexts); every connection that chose the export (GO or EXPORT_NAME)
 * holds one through its struct nbd_export_user until it leaves.  Deleting
 * an export unlists its name at once (new clients no longer find it), but
 * the export, its node and its id live until the last reference goes:
 * only then is its release callback called (which frees the node if the
 * export owns it and emits BLOCK_EXPORT_DELETED).  So an export removed
 * while a client uses it stays valid until that client leaves.
 *
 * This module knows no vd_node (the fuzz harness links it without
 * libvdisk): whoever creates an export fills its node fields and its
 * release callback.  One mutex guards the lists and the counts; it is
 * never held while calling out (release runs after it is dropped) and
 * never while sending on a socket.
 */
#ifndef NBD_EXPORTS_H
#define NBD_EXPORTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vd_node;
struct nbd_exports;

/* A connection attached to an export (registry-owned). */
struct nbd_export_user {
  struct nbd_export_user *next;
  int fd;                     /* shut down by a hard delete */
};

struct nbd_export {
  char *id;                   /* block-export-add's id; the command line
                                 uses the export name */
  char *name;
  char *description;          /* NULL: none */
  char *node_name;            /* the device served (query-block-exports);
                                 NULL in the fuzzer */
  struct vd_node *node;       /* the device graph's handle; NULL only in
                                 the fuzzer */
  uint64_t size;
  bool read_only;
  bool multi_conn;
  uint32_t min_block, pref_block, max_block;
  char **bitmaps;             /* block-export-add "bitmaps": NULL-terminated
                                 names, or NULL (meta contexts) */
  bool alloc_depth;           /* "allocation-depth": qemu:allocation-depth */

  /* Called once, without the registry lock, when the last reference
   * went (the export is unlisted by then): frees everything the creator
   * put in (node included if owned) and E itself.  NULL: nothing is
   * freed (static exports in the fuzzer). */
  void (*release)(struct nbd_export *e, void *opaque);
  void *release_opaque;

  /* Registry-private, under its lock. */
  struct nbd_export *next;
  unsigned refs;
  unsigned nusers;
  bool removed;               /* deleted: unlisted, shutting down */
  struct nbd_export_user *users;
};

/* A new empty registry, or NULL when out of memory. */
struct nbd_exports *nbd_exports_new(void);
/* Drop the registry's reference to every listed export (their release
 * runs once their users are gone: call after the connections ended) and
 * free R.  NULL is a no-op. */
void nbd_exports_free(struct nbd_exports *r);

/* List E (which gains the registry's reference; refs must be 0).  The
 * first export listed with AS_DEFAULT set answers the empty name "" too
 * (unless an export is named ""), as the command line's first image does.
 * Returns 0, -EEXIST if E's id is taken (by a listed export or one still
 * shutting down), -EADDRINUSE if its name is listed. */
int nbd_exports_add(struct nbd_exports *r, struct nbd_export *e,
                    bool as_default);

/* The listed export called NAME (LEN bytes, not terminated; LEN 0: the
 * default export), with a reference for the caller, or NULL. */
struct nbd_export *nbd_exports_get(struct nbd_exports *r, const char *name,
                                   size_t len);
/* The export with id ID, listed or shutting down, with a reference, or
 * NULL. */
struct nbd_export *nbd_exports_get_id(struct nbd_exports *r, const char *id);
/* Every export, listed ones first in the order added, then those shutting
 * down if WITH_REMOVED, each with a reference: *OUT is a malloc'd array
 * (free it after nbd_exports_put_all).  Returns the count, or -ENOMEM. */
long nbd_exports_list(struct nbd_exports *r, bool with_removed,
                      struct nbd_export ***out);
/* Drop the N references of nbd_exports_list and free the array. */
void nbd_exports_put_all(struct nbd_exports *r, struct nbd_export **v,
                         size_t n);
/* Take another reference to E (the caller holds one). */
void nbd_export_ref(struct nbd_exports *r, struct nbd_export *e);
/* Drop one reference; the last one releases E. */
void nbd_export_put(struct nbd_exports *r, struct nbd_export *e);

/* Attach the connection on FD to E (the caller holds a reference): a
 * user with its own reference, or NULL if E was deleted meanwhile or
 * memory is short. */
struct nbd_export_user *nbd_export_attach(struct nbd_exports *r,
                                          struct nbd_export *e, int fd);
/* Detach U from E and drop its reference. */
void nbd_export_detach(struct nbd_exports *r, struct nbd_export *e,
                       struct nbd_export_user *u);

/* True when another export (listed or shutting down) than E serves NODE. */
bool nbd_exports_node_shared(struct nbd_exports *r,
                             const struct nbd_export *e,
                             const struct vd_node *node);

enum nbd_del_mode { NBD_DEL_SAFE, NBD_DEL_HARD };
/* block-export-del: unlist export ID.  SAFE refuses while a connection
 * uses it (-EBUSY), as QEMU's default mode; HARD shuts down the read side
 * of every user's socket, so each connection answers what is in flight
 * and ends (the same path as a server shutdown).  The export is released
 * once its last reference goes, maybe before this returns.  Returns 0,
 * -ENOENT (no such id), -EALREADY (already shutting down), -EBUSY. */
int nbd_exports_del(struct nbd_exports *r, const char *id,
                    enum nbd_del_mode mode);

#endif /* NBD_EXPORTS_H */
