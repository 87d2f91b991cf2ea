/* libvdisk — named dirty bitmaps on a node, and their persistence in the
 * side file IMAGE.bitmaps (rules in vdisk.h, format in bitmap-file.c and
 * docs/bitmap-file.md).
 *
 * Recording: each enabled bitmap is a node write observer (the lead's
 * vd_node_observer_add) that sets the bits of every write, discard and
 * write-zeroes, whatever its result (a failed write may have changed part
 * of the range: dirty is the safe answer).  The observer takes no lock,
 * vd_bitmap_set is atomic per word.
 *
 * State: a list of the nodes that have bitmaps, each with its bitmaps in
 * name order, under one mutex (REG).  Observer adds and removes (which
 * drain the node) happen with REG held; that cannot deadlock because no
 * request on a node takes REG (the observer does not, and
 * vd_node_bitmap_status is called by the NBD server outside any request).
 *
 * Persistence: the file is only ever replaced whole (raid_file_replace:
 * a fresh O_EXCL|O_NOFOLLOW temporary, fdatasync, rename, folder fsync),
 * so a crash leaves the old or the new file, never a mix.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "raid/raid.h"          /* raid_file_replace */
#include "vdisk/bitmap-file.h"
#include "vdisk/driver.h"
#include "vdisk/io.h"

struct nb_bitmap {
  struct nb_bitmap *next;       /* name order */
  char *name;
  struct vd_bitmap *bm;
  struct vd_node_observer *obs; /* recording when not NULL */
  bool persistent;
  bool inconsistent;
  bool enabled;                 /* recording wanted (the file's flag): the
                                   observer may already be gone at detach,
                                   and an inconsistent one keeps it */
  unsigned busy;
};

struct nb_node {
  struct nb_node *next;
  struct vd_node *node;
  char *file;                   /* IMAGE.bitmaps, or NULL */
  bool attached;
  bool file_exists;             /* we read or wrote it */
  struct nb_bitmap *bitmaps;
};

static pthread_mutex_t reg = PTHREAD_MUTEX_INITIALIZER;
static struct nb_node *nodes;   /* reg */

/* ---- lookup ---- */

static struct nb_node *node_find(struct vd_node *node)
{
  for (struct nb_node *n = nodes; n; n = n->next)
    if (n->node == node)
      return n;
  return NULL;
}

static struct nb_node *node_get(struct vd_node *node)
{
  struct nb_node *n = node_find(node);
  if (n)
    return n;
  n = calloc(1, sizeof *n);
  if (!n) {
    vd_set_error(ENOMEM, "dirty bitmaps: out of memory");
    return NULL;
  }
  n->node = node;
  n->next = nodes;
  nodes = n;
  return n;
}

static void node_drop(struct nb_node *n)
{
  for (struct nb_node **pp = &nodes; *pp; pp = &(*pp)->next)
    if (*pp == n) {
      *pp = n->next;
      break;
    }
  free(n->file);
  free(n);
}

static struct nb_bitmap *bm_find(struct nb_node *n, const char *name)
{
  if (!n)
    return NULL;
  for (struct nb_bitmap *b = n->bitmaps; b; b = b->next)
    if (strcmp(b->name, name) == 0)
      return b;
  return NULL;
}

/* REG held: NAME on NODE, or NULL with -ENOENT set. */
static struct nb_bitmap *bm_lookup(struct vd_node *node, const char *name)
{
  struct nb_bitmap *b = name ? bm_find(node_find(node), name) : NULL;
  if (!b)
    vd_set_error(ENOENT, "dirty bitmap '%s' not found", name ? name : "");
  return b;
}

static void bm_insert(struct nb_node *n, struct nb_bitmap *b)
{
  struct nb_bitmap **pp = &n->bitmaps;
  while (*pp && strcmp((*pp)->name, b->name) < 0)
    pp = &(*pp)->next;
  b->next = *pp;
  *pp = b;
}

static void bm_unlink(struct nb_node *n, struct nb_bitmap *b)
{
  for (struct nb_bitmap **pp = &n->bitmaps; *pp; pp = &(*pp)->next)
    if (*pp == b) {
      *pp = b->next;
      return;
    }
}

static int name_check(const char *name)
{
  size_t len = name ? strlen(name) : 0;
  if (len == 0 || len > VD_BITMAP_NAME_MAX)
    return vd_set_error(EINVAL, "dirty bitmap name must be 1 to %u bytes",
                        VD_BITMAP_NAME_MAX);
  return 0;
}

/* ---- recording ---- */

static int nb_record(void *opaque, enum vd_obs_op op, const void *buf,
                     uint64_t off, uint64_t len, int result)
{
  (void)buf;
  (void)result;
  if (op != VD_OBS_FLUSH)
    vd_bitmap_set(opaque, off, len);
  return 0;
}

/* REG held.  Remove B's observer, if any (B->enabled unchanged). */
static int bm_obs_stop(struct nb_node *n, struct nb_bitmap *b)
{
  int r = 0;
  if (b->obs)
    r = vd_node_observer_remove(n->node, b->obs);
  b->obs = NULL;
  return r;
}

/* REG held.  Start or stop B's recording. */
static int bm_set_recording(struct nb_node *n, struct nb_bitmap *b, bool on)
{
  int r = 0;
  if (on && !b->obs)
    r = vd_node_observer_add(n->node, nb_record, b->bm, &b->obs);
  else if (!on)
    r = bm_obs_stop(n, b);
  if (r == 0)
    b->enabled = on;
  return r;
}

static void bm_free(struct nb_node *n, struct nb_bitmap *b)
{
  bm_obs_stop(n, b);
  vd_bitmap_free(b->bm);
  free(b->name);
  free(b);
}

/* REG held: free every bitmap of N, then N. */
static void node_free_all(struct nb_node *n)
{
  while (n->bitmaps) {
    struct nb_bitmap *b = n->bitmaps;
    n->bitmaps = b->next;
    bm_free(n, b);
  }
  node_drop(n);
}

/* ---- the side file ---- */

static int side_name(const char *image_path, char **out)
{
  char *real = realpath(image_path, NULL);
  const char *base = real ? real : image_path;
  int r = asprintf(out, "%s.bitmaps", base);
  free(real);
  if (r < 0) {
    *out = NULL;
    return vd_set_error(ENOMEM, "dirty bitmaps: out of memory");
  }
  return 0;
}

/* REG held.  Write N's persistent bitmaps to its file; IN_USE marks them
 * all in use (serving read-write), else only the inconsistent ones.  No
 * persistent bitmap left: the file is removed. */
static int side_save(struct nb_node *n, bool in_use)
{
  struct vd_bmfile_entry *e;
  size_t cnt = 0, i = 0;
  struct nb_bitmap *b;
  uint8_t *buf = NULL;
  uint64_t len;
  int r = 0;

  if (!n->file)
    return 0;
  for (b = n->bitmaps; b; b = b->next)
    cnt += b->persistent;
  if (cnt == 0) {
    if (!n->file_exists)
      return 0;
    if (unlink(n->file) != 0 && errno != ENOENT)
      return vd_set_error(errno, "%s: %s", n->file, strerror(errno));
    n->file_exists = false;
    return vd_file_sync_dir(n->file);
  }
  e = calloc(cnt, sizeof *e);
  if (!e)
    return vd_set_error(ENOMEM, "dirty bitmaps: out of memory");
  for (b = n->bitmaps; b; b = b->next) {
    if (!b->persistent)
      continue;
    e[i].name = b->name;
    e[i].name_len = strlen(b->name);
    e[i].granularity = vd_bitmap_granularity(b->bm);
    e[i].size = vd_bitmap_size(b->bm);
    e[i].flags = (in_use || b->inconsistent ? VD_BMFILE_IN_USE : 0) |
                 (b->enabled ? VD_BMFILE_RECORDING : 0);
    i++;
  }
  len = vd_bmfile_encoded_len(e, cnt);
  if (len > VD_BMFILE_MAX_LEN || !(buf = malloc((size_t)len))) {
    r = vd_set_error(ENOMEM, "%s: %llu bytes of bitmaps: too large", n->file,
                     (unsigned long long)len);
    goto out;
  }
  /* The bits go straight into the file image: one pass, no copy. */
  uint8_t **data = calloc(cnt, sizeof *data);
  if (!data) {
    r = vd_set_error(ENOMEM, "dirty bitmaps: out of memory");
    goto out;
  }
  i = 0;
  for (b = n->bitmaps; b; b = b->next) {
    if (!b->persistent)
      continue;
    size_t dl = vd_bitmap_serialized_size(b->bm);
    data[i] = malloc(dl ? dl : 1);
    if (!data[i] || vd_bitmap_serialize(b->bm, data[i], dl) < 0) {
      r = vd_set_error(ENOMEM, "dirty bitmaps: out of memory");
      break;
    }
    e[i].data = data[i];
    i++;
  }
  if (r == 0) {
    vd_bmfile_encode(buf, e, cnt);
    r = raid_file_replace(n->file, buf, (size_t)len, 0600);
    if (r == 0)
      n->file_exists = true;
  }
  for (i = 0; i < cnt; i++)
    free(data[i]);
  free(data);
out:
  free(buf);
  free(e);
  return r;
}

/* Read PATH whole: a regular file (not followed if a symlink) of at most
 * VD_BMFILE_MAX_LEN bytes.  1 and the bytes, 0 if it does not exist, or
 * -errno. */
static int side_read(const char *path, uint8_t **out, size_t *len)
{
  struct stat st;
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return 0;
    return vd_set_error(errno, "%s: %s", path,
                        errno == ELOOP ? "is a symbolic link: refused"
                                       : strerror(errno));
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return vd_set_error(EINVAL, "%s: not a regular file: refused", path);
  }
  if ((uint64_t)st.st_size > VD_BMFILE_MAX_LEN) {
    close(fd);
    return vd_set_error(EINVAL, "%s: %lld bytes: too large for a bitmap file",
                        path, (long long)st.st_size);
  }
  uint8_t *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
  size_t got = 0;
  if (!buf) {
    close(fd);
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  }
  while (got < (size_t)st.st_size) {
    ssize_t k = read(fd, buf + got, (size_t)st.st_size - got);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0) {
      int e = k < 0 ? errno : EIO;
      free(buf);
      close(fd);
      return vd_set_error(e, "%s: read: %s", path,
                          k < 0 ? strerror(e) : "file shrank");
    }
    got += (size_t)k;
  }
  close(fd);
  *out = buf;
  *len = got;
  return 1;
}

struct load_ctx {
  struct nb_node *n;
  uint64_t size;
  const char *path;
};

/* One entry of the file (already checked whole by the parser). */
static int load_entry(void *opaque, const struct vd_bmfile_entry *e)
{
  struct load_ctx *lc = opaque;
  struct nb_bitmap *b;
  int r;

  if (e->size != lc->size)
    return vd_set_error(EINVAL, "%s: bitmap '%.*s' covers %llu bytes, the "
                        "image has %llu", lc->path, (int)e->name_len,
                        e->name, (unsigned long long)e->size,
                        (unsigned long long)lc->size);
  b = calloc(1, sizeof *b);
  if (!b || !(b->name = strndup(e->name, e->name_len))) {
    free(b);
    return vd_set_error(ENOMEM, "dirty bitmaps: out of memory");
  }
  if ((r = vd_bitmap_new(e->size, e->granularity, &b->bm)) < 0 ||
      (r = vd_bitmap_deserialize(b->bm, e->data,
                                 (size_t)vd_bmfile_data_len(e->size,
                                                            e->granularity)))
        < 0) {
    vd_bitmap_free(b->bm);
    free(b->name);
    free(b);
    return r;
  }
  b->persistent = true;
  b->inconsistent = e->flags & VD_BMFILE_IN_USE;
  b->enabled = e->flags & VD_BMFILE_RECORDING;
  bm_insert(lc->n, b);
  return 0;
}

int vd_node_bitmaps_attach(struct vd_node *node, const char *image_path)
{
  struct nb_node *n;
  uint8_t *buf = NULL;
  size_t len = 0;
  int r;

  if (!node || !image_path)
    return vd_set_error(EINVAL, "vd_node_bitmaps_attach: no node or path");
  pthread_mutex_lock(&reg);
  n = node_find(node);
  if (n && n->attached) {
    pthread_mutex_unlock(&reg);
    return vd_set_error(EEXIST, "%s: bitmaps already attached", image_path);
  }
  if (n && n->bitmaps) {
    pthread_mutex_unlock(&reg);
    return vd_set_error(EBUSY, "%s: the node already has bitmaps",
                        image_path);
  }
  if (!(n = node_get(node))) {
    pthread_mutex_unlock(&reg);
    return -ENOMEM;
  }
  free(n->file);
  n->file = NULL;
  if ((r = side_name(image_path, &n->file)) < 0 ||
      (r = side_read(n->file, &buf, &len)) < 0)
    goto fail;
  if (r == 1) {
    struct load_ctx lc = { n, vd_node_size(node), n->file };
    n->file_exists = true;
    r = vd_bmfile_parse(buf, len, n->file, load_entry, &lc);
    free(buf);
    if (r < 0)
      goto fail;
  }
  /* Recording restarts for the consistent enabled ones, and the file
   * says "in use" before any write can be acknowledged. */
  for (struct nb_bitmap *b = n->bitmaps; b; b = b->next)
    if (!b->inconsistent && b->enabled &&
        (r = bm_set_recording(n, b, true)) < 0)
      goto fail;
  if (!vd_node_is_read_only(node) && n->file_exists &&
      (r = side_save(n, true)) < 0)
    goto fail;
  n->attached = true;
  pthread_mutex_unlock(&reg);
  return 0;

fail:
  node_free_all(n);
  pthread_mutex_unlock(&reg);
  return r;
}

int vd_node_bitmaps_detach(struct vd_node *node)
{
  struct nb_node *n;
  int r = 0;

  pthread_mutex_lock(&reg);
  n = node_find(node);
  if (!n) {
    pthread_mutex_unlock(&reg);
    return 0;
  }
  /* Stop recording first: the bits written are final. */
  for (struct nb_bitmap *b = n->bitmaps; b; b = b->next)
    bm_obs_stop(n, b);
  if (!vd_node_is_read_only(node))
    r = side_save(n, false);
  node_free_all(n);
  pthread_mutex_unlock(&reg);
  return r;
}

/* ---- management ---- */

int vd_node_bitmap_add(struct vd_node *node, const char *name,
                       uint32_t granularity, unsigned flags)
{
  struct nb_node *n;
  struct nb_bitmap *b;
  int r;

  if (!node)
    return vd_set_error(EINVAL, "vd_node_bitmap_add: no node");
  if ((r = name_check(name)) < 0)
    return r;
  if (flags & ~(VD_BITMAP_PERSISTENT | VD_BITMAP_DISABLED))
    return vd_set_error(EINVAL, "dirty bitmap '%s': unknown flags 0x%x",
                        name, flags);
  if (granularity == 0)
    granularity = VD_BITMAP_GRANULARITY_DEFAULT;
  if (!vd_bmfile_granularity_ok(granularity))
    return vd_set_error(EINVAL, "dirty bitmap '%s': granularity must be a "
                        "power of two from 512 to 2147483648, not %u", name,
                        granularity);
  if ((flags & VD_BITMAP_PERSISTENT) && vd_node_is_read_only(node))
    return vd_set_error(EROFS, "dirty bitmap '%s': a persistent bitmap "
                        "needs a writable image", name);

  pthread_mutex_lock(&reg);
  if (!(n = node_get(node))) {
    pthread_mutex_unlock(&reg);
    return -ENOMEM;
  }
  if (bm_find(n, name)) {
    r = vd_set_error(EEXIST, "dirty bitmap '%s' already exists", name);
    goto out;
  }
  if ((flags & VD_BITMAP_PERSISTENT) && !n->file) {
    struct vd_dev *dev = vd_node_dev(node);
    if ((r = side_name(vd_path(dev), &n->file)) < 0)
      goto out;
  }
  b = calloc(1, sizeof *b);
  if (!b || !(b->name = strdup(name))) {
    free(b);
    r = vd_set_error(ENOMEM, "dirty bitmaps: out of memory");
    goto out;
  }
  if ((r = vd_bitmap_new(vd_node_size(node), granularity, &b->bm)) < 0) {
    free(b->name);
    free(b);
    goto out;
  }
  b->persistent = flags & VD_BITMAP_PERSISTENT;
  bm_insert(n, b);
  /* In the file (in use) before it records anything. */
  if ((b->persistent && (r = side_save(n, true)) < 0) ||
      (!(flags & VD_BITMAP_DISABLED) &&
       (r = bm_set_recording(n, b, true)) < 0)) {
    bm_unlink(n, b);
    bm_free(n, b);
    if (flags & VD_BITMAP_PERSISTENT)
      side_save(n, true);
  }
out:
  if (!n->bitmaps && !n->attached)
    node_drop(n);
  pthread_mutex_unlock(&reg);
  return r;
}

int vd_node_bitmap_remove(struct vd_node *node, const char *name)
{
  struct nb_node *n;
  struct nb_bitmap *b;
  int r = 0;

  pthread_mutex_lock(&reg);
  if (!(b = bm_lookup(node, name))) {
    pthread_mutex_unlock(&reg);
    return -ENOENT;
  }
  n = node_find(node);
  if (b->busy) {
    pthread_mutex_unlock(&reg);
    return vd_set_error(EBUSY, "dirty bitmap '%s' is in use by an export",
                        name);
  }
  bm_unlink(n, b);
  if (b->persistent)
    r = side_save(n, true);
  if (r < 0) {
    bm_insert(n, b);         /* still in the file: keep it */
  } else {
    bm_free(n, b);
    if (!n->bitmaps && !n->attached)
      node_drop(n);
  }
  pthread_mutex_unlock(&reg);
  return r;
}

/* REG held: B may be changed by a management command. */
static int bm_usable(const struct nb_bitmap *b, bool write)
{
  if (b->inconsistent)
    return vd_set_error(EINVAL, "dirty bitmap '%s' is inconsistent (the "
                        "image was not closed cleanly) and can only be "
                        "removed", b->name);
  if (write && b->busy)
    return vd_set_error(EBUSY, "dirty bitmap '%s' is in use by an export",
                        b->name);
  return 0;
}

/* Lock REG and find NAME on NODE, usable for a change (WRITE) or a use:
 * the bitmap with REG held, or NULL with REG released and *R the error. */
static struct nb_bitmap *bm_begin(struct vd_node *node, const char *name,
                                  bool write, int *r)
{
  struct nb_bitmap *b;

  pthread_mutex_lock(&reg);
  if (!(b = bm_lookup(node, name)))
    *r = -ENOENT;
  else if ((*r = bm_usable(b, write)) == 0)
    return b;
  pthread_mutex_unlock(&reg);
  return NULL;
}

int vd_node_bitmap_clear(struct vd_node *node, const char *name)
{
  int r;
  struct nb_bitmap *b = bm_begin(node, name, true, &r);

  if (!b)
    return r;
  vd_bitmap_clear(b->bm);
  pthread_mutex_unlock(&reg);
  return 0;
}

int vd_node_bitmap_enable(struct vd_node *node, const char *name,
                          bool enable)
{
  int r;
  struct nb_bitmap *b = bm_begin(node, name, false, &r);

  if (!b)
    return r;
  r = bm_set_recording(node_find(node), b, enable);
  pthread_mutex_unlock(&reg);
  return r;
}

int vd_node_bitmap_merge(struct vd_node *node, const char *target,
                         const char *source)
{
  struct nb_bitmap *t, *s;
  int r;

  pthread_mutex_lock(&reg);
  if (!(t = bm_lookup(node, target)) || !(s = bm_lookup(node, source)))
    r = -ENOENT;
  else if ((r = bm_usable(t, true)) == 0 && (r = bm_usable(s, false)) == 0)
    r = vd_bitmap_merge(t->bm, s->bm);
  pthread_mutex_unlock(&reg);
  return r;
}

int vd_node_bitmap_list(struct vd_node *node, struct vd_bitmap_info **out,
                        size_t *count)
{
  struct nb_node *n;
  struct vd_bitmap_info *v = NULL;
  size_t k = 0;

  *out = NULL;
  *count = 0;
  pthread_mutex_lock(&reg);
  n = node_find(node);
  for (struct nb_bitmap *b = n ? n->bitmaps : NULL; b; b = b->next)
    k++;
  if (k && !(v = calloc(k, sizeof *v))) {
    pthread_mutex_unlock(&reg);
    return vd_set_error(ENOMEM, "dirty bitmaps: out of memory");
  }
  k = 0;
  for (struct nb_bitmap *b = n ? n->bitmaps : NULL; b; b = b->next, k++) {
    snprintf(v[k].name, sizeof v[k].name, "%s", b->name);
    v[k].granularity = vd_bitmap_granularity(b->bm);
    v[k].count = vd_bitmap_count(b->bm);
    v[k].persistent = b->persistent;
    v[k].recording = b->obs != NULL;
    v[k].busy = b->busy > 0;
    v[k].inconsistent = b->inconsistent;
  }
  pthread_mutex_unlock(&reg);
  *out = v;
  *count = k;
  return 0;
}

int vd_node_bitmap_hold(struct vd_node *node, const char *name)
{
  int r;
  struct nb_bitmap *b = bm_begin(node, name, false, &r);

  if (!b)
    return r;
  b->busy++;
  pthread_mutex_unlock(&reg);
  return 0;
}

void vd_node_bitmap_release(struct vd_node *node, const char *name)
{
  struct nb_bitmap *b;

  pthread_mutex_lock(&reg);
  b = name ? bm_find(node_find(node), name) : NULL;
  if (b && b->busy)
    b->busy--;
  pthread_mutex_unlock(&reg);
}

int vd_node_bitmap_status(struct vd_node *node, const char *name,
                          uint64_t off, uint64_t max_len, bool *dirty,
                          uint64_t *len)
{
  uint64_t start;
  int r;
  struct nb_bitmap *b = bm_begin(node, name, false, &r);

  if (!b)
    return r;
  if (max_len == 0 || off >= vd_bitmap_size(b->bm))
    r = vd_set_error(EINVAL, "dirty bitmap '%s': no bits at %llu+%llu",
                     name, (unsigned long long)off,
                     (unsigned long long)max_len);
  else {
    *dirty = vd_bitmap_get(b->bm, off);
    r = *dirty ? vd_bitmap_next_dirty(b->bm, off, max_len, &start, len)
               : vd_bitmap_next_clean(b->bm, off, max_len, &start, len);
    /* A run starts at OFF since OFF has that state. */
    r = r == 1 && start == off && *len > 0
          ? 0 : vd_set_error(EIO, "dirty bitmap '%s': inconsistent search",
                             name);
  }
  pthread_mutex_unlock(&reg);
  return r;
}
