/* vdisk-nbd — the export registry (exports.h): lookups under one mutex,
 * a reference per user, release after the last one. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "nbd-server/exports.h"

struct nbd_exports {
  pthread_mutex_t lock;
  struct nbd_export *listed;     /* in the order added */
  struct nbd_export *removed;    /* deleted, still referenced */
  struct nbd_export *dflt;       /* answers "" while listed; NULL: none */
};

struct nbd_exports *nbd_exports_new(void)
{
  struct nbd_exports *r = calloc(1, sizeof *r);
  if (r)
    pthread_mutex_init(&r->lock, NULL);
  return r;
}

static void unlink_from(struct nbd_export **head, struct nbd_export *e)
{
  for (struct nbd_export **p = head; *p; p = &(*p)->next)
    if (*p == e) {
      *p = e->next;
      e->next = NULL;
      return;
    }
}

/* With the lock held: unlist E (it stays findable by id until released). */
static void unlist_locked(struct nbd_exports *r, struct nbd_export *e)
{
  unlink_from(&r->listed, e);
  if (r->dflt == e)
    r->dflt = NULL;
  e->removed = true;
  e->next = r->removed;
  r->removed = e;
}

/* With the lock held: drop one reference.  True when E must be released
 * (by the caller, once the lock is dropped). */
static bool put_locked(struct nbd_exports *r, struct nbd_export *e)
{
  if (--e->refs)
    return false;
  /* Only a removed export can lose its last reference: the registry's
   * own is dropped by unlisting it. */
  unlink_from(&r->removed, e);
  return true;
}

static void release(struct nbd_export *e)
{
  if (e->release)
    e->release(e, e->release_opaque);
}

void nbd_exports_free(struct nbd_exports *r)
{
  if (!r)
    return;
  for (;;) {
    struct nbd_export *e;
    bool last;
    pthread_mutex_lock(&r->lock);
    e = r->listed;
    if (!e) {
      pthread_mutex_unlock(&r->lock);
      break;
    }
    unlist_locked(r, e);
    last = put_locked(r, e);
    pthread_mutex_unlock(&r->lock);
    if (last)
      release(e);
  }
  /* Exports still referenced now belong to whoever holds them; at
   * shutdown nobody does (the connections ended first). */
  pthread_mutex_destroy(&r->lock);
  free(r);
}

static struct nbd_export *find_id_locked(struct nbd_exports *r,
                                         const char *id)
{
  struct nbd_export *e;
  for (e = r->listed; e; e = e->next)
    if (strcmp(e->id, id) == 0)
      return e;
  for (e = r->removed; e; e = e->next)
    if (strcmp(e->id, id) == 0)
      return e;
  return NULL;
}

static struct nbd_export *find_name_locked(struct nbd_exports *r,
                                           const char *name, size_t len)
{
  struct nbd_export *e;
  for (e = r->listed; e; e = e->next)
    if (strlen(e->name) == len && memcmp(e->name, name, len) == 0)
      return e;
  return len == 0 ? r->dflt : NULL;
}

int nbd_exports_add(struct nbd_exports *r, struct nbd_export *e,
                    bool as_default)
{
  int ret = 0;
  pthread_mutex_lock(&r->lock);
  if (find_id_locked(r, e->id))
    ret = -EEXIST;
  else {
    struct nbd_export *n = find_name_locked(r, e->name, strlen(e->name));
    /* The default export answers "" but does not own the name: an
     * export really named "" may still be added and wins. */
    if (n && !(e->name[0] == '\0' && strcmp(n->name, "") != 0))
      ret = -EADDRINUSE;
  }
  if (ret == 0) {
    struct nbd_export **p = &r->listed;
    while (*p)
      p = &(*p)->next;
    e->next = NULL;
    e->refs = 1;
    e->nusers = 0;
    e->removed = false;
    e->users = NULL;
    *p = e;
    if (as_default && !r->dflt)
      r->dflt = e;
  }
  pthread_mutex_unlock(&r->lock);
  return ret;
}

struct nbd_export *nbd_exports_get(struct nbd_exports *r, const char *name,
                                   size_t len)
{
  struct nbd_export *e;
  pthread_mutex_lock(&r->lock);
  e = find_name_locked(r, name, len);
  if (e)
    e->refs++;
  pthread_mutex_unlock(&r->lock);
  return e;
}

struct nbd_export *nbd_exports_get_id(struct nbd_exports *r, const char *id)
{
  struct nbd_export *e;
  pthread_mutex_lock(&r->lock);
  e = find_id_locked(r, id);
  if (e)
    e->refs++;
  pthread_mutex_unlock(&r->lock);
  return e;
}

long nbd_exports_list(struct nbd_exports *r, bool with_removed,
                      struct nbd_export ***out)
{
  struct nbd_export *e, **v;
  size_t n = 0, i = 0;

  pthread_mutex_lock(&r->lock);
  for (e = r->listed; e; e = e->next)
    n++;
  if (with_removed)
    for (e = r->removed; e; e = e->next)
      n++;
  v = malloc((n ? n : 1) * sizeof *v);
  if (!v) {
    pthread_mutex_unlock(&r->lock);
    return -ENOMEM;
  }
  for (e = r->listed; e; e = e->next)
    v[i++] = e;
  if (with_removed)
    for (e = r->removed; e; e = e->next)
      v[i++] = e;
  for (i = 0; i < n; i++)
    v[i]->refs++;
  pthread_mutex_unlock(&r->lock);
  *out = v;
  return (long)n;
}

void nbd_exports_put_all(struct nbd_exports *r, struct nbd_export **v,
                         size_t n)
{
  for (size_t i = 0; i < n; i++)
    nbd_export_put(r, v[i]);
  free(v);
}

void nbd_export_ref(struct nbd_exports *r, struct nbd_export *e)
{
  pthread_mutex_lock(&r->lock);
  e->refs++;
  pthread_mutex_unlock(&r->lock);
}

void nbd_export_put(struct nbd_exports *r, struct nbd_export *e)
{
  bool last;
  if (!e)
    return;
  pthread_mutex_lock(&r->lock);
  last = put_locked(r, e);
  pthread_mutex_unlock(&r->lock);
  if (last)
    release(e);
}

struct nbd_export_user *nbd_export_attach(struct nbd_exports *r,
                                          struct nbd_export *e, int fd)
{
  struct nbd_export_user *u = malloc(sizeof *u);
  if (!u)
    return NULL;
  u->fd = fd;
  pthread_mutex_lock(&r->lock);
  if (e->removed) {
    /* Deleted between the lookup and the choice: as if never found. */
    pthread_mutex_unlock(&r->lock);
    free(u);
    return NULL;
  }
  u->next = e->users;
  e->users = u;
  e->nusers++;
  e->refs++;
  pthread_mutex_unlock(&r->lock);
  return u;
}

void nbd_export_detach(struct nbd_exports *r, struct nbd_export *e,
                       struct nbd_export_user *u)
{
  bool last;
  pthread_mutex_lock(&r->lock);
  for (struct nbd_export_user **p = &e->users; *p; p = &(*p)->next)
    if (*p == u) {
      *p = u->next;
      break;
    }
  e->nusers--;
  last = put_locked(r, e);
  pthread_mutex_unlock(&r->lock);
  free(u);
  if (last)
    release(e);
}

bool nbd_exports_node_shared(struct nbd_exports *r,
                             const struct nbd_export *e,
                             const struct vd_node *node)
{
  struct nbd_export *x;
  bool shared = false;
  pthread_mutex_lock(&r->lock);
  for (x = r->listed; x && !shared; x = x->next)
    shared = x != e && x->node == node;
  for (x = r->removed; x && !shared; x = x->next)
    shared = x != e && x->node == node;
  pthread_mutex_unlock(&r->lock);
  return shared;
}

int nbd_exports_del(struct nbd_exports *r, const char *id,
                    enum nbd_del_mode mode)
{
  struct nbd_export *e;
  bool last;

  pthread_mutex_lock(&r->lock);
  e = find_id_locked(r, id);
  if (!e) {
    pthread_mutex_unlock(&r->lock);
    return -ENOENT;
  }
  if (e->removed) {
    pthread_mutex_unlock(&r->lock);
    return -EALREADY;
  }
  if (mode == NBD_DEL_SAFE && e->nusers) {
    pthread_mutex_unlock(&r->lock);
    return -EBUSY;
  }
  unlist_locked(r, e);
  /* Under the lock, so no user detaches and frees its entry meanwhile.
   * The read side only: requests in flight are still answered. */
  for (struct nbd_export_user *u = e->users; u; u = u->next)
    shutdown(u->fd, SHUT_RD);
  last = put_locked(r, e);
  pthread_mutex_unlock(&r->lock);
  if (last)
    release(e);
  return 0;
}
