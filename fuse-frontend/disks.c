/* vdisk-fuse — the disk table (disks.h). */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fuse-frontend/disks.h"

void vf_disks_init(struct vf_disks *d,
                   void (*release)(struct vf_image *, void *), void *opaque)
{
  memset(d, 0, sizeof *d);
  pthread_mutex_init(&d->lock, NULL);
  d->next_ino = VF_FIRST_INO;
  d->release = release;
  d->opaque = opaque;
}

static void unlink_from(struct vf_image **head, struct vf_image *im)
{
  for (struct vf_image **p = head; *p; p = &(*p)->next)
    if (*p == im) {
      *p = im->next;
      im->next = NULL;
      return;
    }
}

static void unlist_locked(struct vf_disks *d, struct vf_image *im)
{
  unlink_from(&d->listed, im);
  im->removed = true;
  im->next = d->removed;
  d->removed = im;
}

/* True when IM must be released once the lock is dropped. */
static bool put_locked(struct vf_disks *d, struct vf_image *im)
{
  if (--im->refs)
    return false;
  unlink_from(&d->removed, im);   /* only removed disks reach 0 */
  return true;
}

static void release(struct vf_disks *d, struct vf_image *im)
{
  if (d->release)
    d->release(im, d->opaque);
}

void vf_disks_destroy(struct vf_disks *d)
{
  for (;;) {
    struct vf_image *im;
    bool last;
    pthread_mutex_lock(&d->lock);
    im = d->listed;
    if (!im) {
      pthread_mutex_unlock(&d->lock);
      break;
    }
    unlist_locked(d, im);
    last = put_locked(d, im);
    pthread_mutex_unlock(&d->lock);
    if (last)
      release(d, im);
  }
  pthread_mutex_destroy(&d->lock);
}

static struct vf_image *find_locked(struct vf_image *head, const char *id,
                                    const char *name, uint64_t ino)
{
  for (struct vf_image *im = head; im; im = im->next)
    if ((id && strcmp(im->id, id) == 0) ||
        (name && strcmp(im->name, name) == 0) || (ino && im->ino == ino))
      return im;
  return NULL;
}

int vf_disks_add(struct vf_disks *d, struct vf_image *im)
{
  int r = 0;
  pthread_mutex_lock(&d->lock);
  if (find_locked(d->listed, im->id, NULL, 0) ||
      find_locked(d->removed, im->id, NULL, 0))
    r = -EEXIST;
  else if (find_locked(d->listed, NULL, im->name, 0))
    r = -EADDRINUSE;
  else {
    struct vf_image **p = &d->listed;
    while (*p)
      p = &(*p)->next;
    im->next = NULL;
    im->refs = 1;
    im->nopen = 0;
    im->removed = false;
    atomic_store(&im->dead, false);
    im->ino = d->next_ino++;
    *p = im;
  }
  pthread_mutex_unlock(&d->lock);
  return r;
}

static struct vf_image *get(struct vf_disks *d, const char *id,
                            const char *name, uint64_t ino, bool removed)
{
  struct vf_image *im;
  pthread_mutex_lock(&d->lock);
  im = find_locked(d->listed, id, name, ino);
  if (!im && removed)
    im = find_locked(d->removed, id, name, ino);
  if (im)
    im->refs++;
  pthread_mutex_unlock(&d->lock);
  return im;
}

struct vf_image *vf_disks_get_name(struct vf_disks *d, const char *name)
{
  return get(d, NULL, name, 0, false);
}

struct vf_image *vf_disks_get_ino(struct vf_disks *d, uint64_t ino)
{
  return ino ? get(d, NULL, NULL, ino, true) : NULL;
}

struct vf_image *vf_disks_get_id(struct vf_disks *d, const char *id)
{
  return get(d, id, NULL, 0, true);
}

void vf_disks_put(struct vf_disks *d, struct vf_image *im)
{
  bool last;
  if (!im)
    return;
  pthread_mutex_lock(&d->lock);
  last = put_locked(d, im);
  pthread_mutex_unlock(&d->lock);
  if (last)
    release(d, im);
}

long vf_disks_list(struct vf_disks *d, struct vf_image ***out)
{
  struct vf_image *im, **v;
  size_t n = 0, i = 0;
  pthread_mutex_lock(&d->lock);
  for (im = d->listed; im; im = im->next)
    n++;
  v = malloc((n ? n : 1) * sizeof *v);
  if (!v) {
    pthread_mutex_unlock(&d->lock);
    return -ENOMEM;
  }
  for (im = d->listed; im; im = im->next) {
    im->refs++;
    v[i++] = im;
  }
  pthread_mutex_unlock(&d->lock);
  *out = v;
  return (long)n;
}

void vf_disks_put_all(struct vf_disks *d, struct vf_image **v, size_t n)
{
  for (size_t i = 0; i < n; i++)
    vf_disks_put(d, v[i]);
  free(v);
}

int vf_disks_open(struct vf_disks *d, struct vf_image *im)
{
  int r = 0;
  pthread_mutex_lock(&d->lock);
  if (im->removed)
    r = -ENOENT;
  else {
    im->refs++;
    im->nopen++;
  }
  pthread_mutex_unlock(&d->lock);
  return r;
}

void vf_disks_close(struct vf_disks *d, struct vf_image *im)
{
  pthread_mutex_lock(&d->lock);
  im->nopen--;
  pthread_mutex_unlock(&d->lock);
  vf_disks_put(d, im);
}

bool vf_disks_dead(struct vf_disks *d, struct vf_image *im)
{
  (void)d;
  return atomic_load(&im->dead);
}

bool vf_disks_node_shared(struct vf_disks *d, const struct vf_image *im,
                          const struct vd_node *node)
{
  struct vf_image *x;
  bool shared = false;
  pthread_mutex_lock(&d->lock);
  for (x = d->listed; x && !shared; x = x->next)
    shared = x != im && x->node == node;
  for (x = d->removed; x && !shared; x = x->next)
    shared = x != im && x->node == node;
  pthread_mutex_unlock(&d->lock);
  return shared;
}

int vf_disks_del(struct vf_disks *d, const char *id, bool hard,
                 uint64_t *ino, char **name)
{
  struct vf_image *im;
  bool last;

  pthread_mutex_lock(&d->lock);
  im = find_locked(d->listed, id, NULL, 0);
  if (!im) {
    bool gone = find_locked(d->removed, id, NULL, 0) != NULL;
    pthread_mutex_unlock(&d->lock);
    return gone ? -EALREADY : -ENOENT;
  }
  if (!hard && im->nopen) {
    pthread_mutex_unlock(&d->lock);
    return -EBUSY;
  }
  *name = strdup(im->name);
  if (!*name) {
    pthread_mutex_unlock(&d->lock);
    return -ENOMEM;
  }
  *ino = im->ino;
  unlist_locked(d, im);
  atomic_store(&im->dead, hard);
  last = put_locked(d, im);
  pthread_mutex_unlock(&d->lock);
  if (last)
    release(d, im);
  return 0;
}
