/* libvdisk — the nbd driver: an image that is an NBD export, through
 * libnbd (never a hand-written client).
 *
 * The image is named by an NBD URI (nbd://, nbds://, nbd+unix://,
 * nbds+unix://, nbd+vsock://, nbds+vsock://; libnbd's nbd_connect_uri
 * parses it, TLS query parameters included).  X.509 (tls-certificates)
 * only over TCP, PSK (tls-psk-file) on any transport: see
 * nbdc_tls_unverified.  The core (vdisk/dev.c)
 * recognises a URI only where the operator typed it (vd_open and friends,
 * the top image's --backing), never in a path read out of an image, and
 * only then lets this driver open (dev->uri_ok); see docs/SECURITY.md.
 *
 * What maps to what:
 *  - reads: nbd_pread (structured replies are libnbd's business); reads
 *    the server's minimum block size does not divide are widened here,
 *    because libnbd refuses unaligned requests;
 *  - writes: nbd_pwrite with FUA when the server offers it, else write
 *    then flush; the core does the read-modify-write below the minimum
 *    block size (logical_block + strict_align);
 *  - every data request is split at the server's maximum block size
 *    (32 MiB when it gives none, the protocol's default);
 *  - trim / write-zeroes (NO_HOLE, FAST_ZERO passed on) when offered;
 *  - block status: base:allocation, whose flags are VD_EXT_*'s;
 *  - read-only when the server says so (writes then fail with EROFS);
 *  - multi-conn: up to NBDC_MAX_CONN handles when the server advertises
 *    it, so that a flush on one covers writes completed on all (the NBD
 *    protocol's promise for multi-conn); one handle otherwise.  Each
 *    handle has a mutex: a request holds it for its whole exchange.
 *
 * A connection that drops fails its requests with EIO naming the URI.
 * libnbd has no connect timeout: we connect non-blocking
 * (nbd_aio_connect_uri) and poll up to a deadline (the open option
 * timeout_ms, else NBDC_CONNECT_MS).
 *
 * Request timeout (open option timeout_ms; a RAID array passes its member
 * timeout): every request is issued with nbd_aio_* and its completion
 * polled up to a deadline, so a stopped or unreachable server cannot hold
 * a request thread forever.  A request that misses its deadline fails
 * with ETIMEDOUT and gives the whole device up: its handle is never polled
 * again (libnbd writes a read's reply into the caller's buffer only while
 * we poll, so the buffer the caller frees is never touched), every later
 * request fails at once, and close neither flushes nor waits for a
 * goodbye.  Reconnecting is reopening (RAID re-add does that).  Without a
 * timeout a request waits as long as the socket is open (a killed server
 * closes it).  Close sends NBD_CMD_DISC and waits for the server at most
 * the connect deadline.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "vdisk/driver.h"
#include "vdisk/nbd-lib.h"

#define NBDC_MAX_CONN 4
#define NBDC_CONNECT_MS 5000
/* The protocol's default maximum payload when the server states none. */
#define NBDC_DEFAULT_MAX (32u << 20)
/* Trim / zero lengths travel in 32 bits. */
#define NBDC_MAX_EFFECT (1u << 30)

struct nbdc_conn {
  struct nbd_handle *h;
  pthread_mutex_t lock;        /* held for a request's whole exchange */
};

struct nbdc_priv {
  struct nbdc_conn conn[NBDC_MAX_CONN];
  int nconn;
  atomic_uint next;
  bool can_fua, can_flush, can_trim, can_zero, can_fast_zero, can_bs;
  bool multi_conn;
  uint32_t min_bs, pref_bs, max_bs;
  unsigned timeout_ms;         /* request deadline, 0 = none */
  atomic_bool given_up;        /* a request timed out: the device is dead */
};

static const char *const nbdc_schemes[] = {
  "nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://",
  "nbds+vsock://", NULL
};

bool
vd_is_nbd_uri(const char *path)
{
  if (!path)
    return false;
  for (const char *const *s = nbdc_schemes; *s; s++)
    if (strncasecmp(path, *s, strlen(*s)) == 0)
      return true;
  return false;
}

/* libnbd (1.14) checks a server's X.509 certificate only over TCP, where
 * it has a host name to check it against: over a Unix socket or vsock it
 * would encrypt to whatever certificate the server shows.  TLS on those
 * transports is therefore accepted only with a PSK (tls-psk-file), which
 * authenticates both ends. */
static bool
nbdc_tls_unverified(const char *uri)
{
  if (strncasecmp(uri, "nbds+unix://", 12) != 0 &&
      strncasecmp(uri, "nbds+vsock://", 13) != 0)
    return false;
  for (const char *q = strchr(uri, '?'); q; q = strchr(q + 1, '&'))
    if (strncmp(q + 1, "tls-psk-file=", 13) == 0)
      return false;
  return true;
}

/* libnbd's errno of its last failure on this thread, else DFLT. */
static int
nbdc_errno_or(int dflt)
{
  int e = vd_nbd_lib.nbd_get_errno();
  return e ? e : dflt;
}

/* libnbd's message for its last failure on this thread, else DFLT. */
static const char *
nbdc_errmsg_or(const char *dflt)
{
  const char *m = vd_nbd_lib.nbd_get_error();
  return m ? m : dflt;
}

/* The failure of the last libnbd call on CONN as a vd_error naming the
 * URI: a dead connection is EIO, a server's error keeps its errno. */
static int
nbdc_error(struct vd_dev *dev, struct nbd_handle *h, const char *op)
{
  int e = vd_nbd_lib.nbd_get_errno();
  bool dead = vd_nbd_lib.nbd_aio_is_dead(h) || vd_nbd_lib.nbd_aio_is_closed(h);
  if (dead || e == 0 || e == ENOTCONN || e == EPIPE || e == ECONNRESET ||
      e == ESHUTDOWN)
    return vd_set_error(EIO, "%s: %s failed: %s%s", dev->path, op,
                        nbdc_errmsg_or("error"),
                        dead ? " (connection lost)" : "");
  return vd_set_error(e, "%s: %s failed: %s", dev->path, op,
                      nbdc_errmsg_or(strerror(e)));
}

static long long
nbdc_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
nbdc_connect_ms(const struct nbdc_priv *p)
{
  return p->timeout_ms && p->timeout_ms < INT32_MAX ? (int)p->timeout_ms
                                                    : NBDC_CONNECT_MS;
}

/* Connect a new handle to DEV's URI within the connect deadline. */
static int
nbdc_connect(struct vd_dev *dev, struct nbd_handle **out)
{
  struct nbdc_priv *p = dev->priv;
  int ms = nbdc_connect_ms(p);
  struct nbd_handle *h = vd_nbd_lib.nbd_create();
  if (!h)
    return vd_set_error(ENOMEM, "%s: %s", dev->path,
                        vd_nbd_lib.nbd_get_error());
  int r = 0;
  /* The operator typed the URI, so its tls-certificates / tls-psk-file
   * parameters may name local files (as nbdinfo allows). */
  if (vd_nbd_lib.nbd_set_uri_allow_local_file(h, true) == -1 ||
      vd_nbd_lib.nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION)
        == -1 ||
      vd_nbd_lib.nbd_aio_connect_uri(h, dev->path) == -1) {
    r = vd_set_error(nbdc_errno_or(EINVAL), "%s: cannot connect: %s",
                     dev->path, vd_nbd_lib.nbd_get_error());
    vd_nbd_lib.nbd_close(h);
    return r;
  }
  long long deadline = nbdc_now_ms() + ms;
  while (!vd_nbd_lib.nbd_aio_is_ready(h)) {
    if (vd_nbd_lib.nbd_aio_is_dead(h) || vd_nbd_lib.nbd_aio_is_closed(h)) {
      r = vd_set_error(nbdc_errno_or(EIO), "%s: cannot connect: %s",
                       dev->path, nbdc_errmsg_or("closed"));
      break;
    }
    long long left = deadline - nbdc_now_ms();
    if (left <= 0) {
      r = vd_set_error(ETIMEDOUT, "%s: cannot connect: no NBD handshake "
                       "within %d ms", dev->path, ms);
      break;
    }
    if (vd_nbd_lib.nbd_poll(h, (int)left) == -1) {
      r = vd_set_error(nbdc_errno_or(EIO), "%s: cannot connect: %s",
                       dev->path, vd_nbd_lib.nbd_get_error());
      break;
    }
  }
  if (r < 0) {
    vd_nbd_lib.nbd_close(h);
    return r;
  }
  *out = h;
  return 0;
}

/* Say goodbye (NBD_CMD_DISC) and wait for the server to close, at most
 * the connect deadline: nbd_shutdown would wait without a bound. */
static void
nbdc_disconnect(struct nbdc_priv *p, struct nbd_handle *h)
{
  if (atomic_load(&p->given_up) || !vd_nbd_lib.nbd_aio_is_ready(h) ||
      vd_nbd_lib.nbd_aio_disconnect(h, 0) == -1)
    return;
  long long deadline = nbdc_now_ms() + nbdc_connect_ms(p);
  while (!vd_nbd_lib.nbd_aio_is_closed(h) && !vd_nbd_lib.nbd_aio_is_dead(h)) {
    long long left = deadline - nbdc_now_ms();
    if (left <= 0 || vd_nbd_lib.nbd_poll(h, (int)left) == -1)
      break;
  }
}

static void
nbdc_close(struct vd_dev *dev)
{
  struct nbdc_priv *p = dev->priv;
  for (int i = 0; i < p->nconn; i++) {
    nbdc_disconnect(p, p->conn[i].h);
    vd_nbd_lib.nbd_close(p->conn[i].h);
    pthread_mutex_destroy(&p->conn[i].lock);
  }
  p->nconn = 0;
}

static int
nbdc_open(struct vd_dev *dev)
{
  struct nbdc_priv *p = dev->priv;
  if (!dev->uri_ok)
    return vd_set_error(EPERM, "%s: the nbd driver opens only NBD URIs the "
                        "operator names", dev->path);
  if (nbdc_tls_unverified(dev->path))
    return vd_set_error(EPROTONOSUPPORT, "%s: TLS over a Unix socket or "
                        "vsock needs tls-psk-file (libnbd checks a server "
                        "certificate only over TCP: use nbds://HOST)",
                        dev->path);
  int r = vd_nbd_lib_load();   /* libnbd is loaded on first use */
  if (r < 0)
    return r;
  p->timeout_ms = dev->opts.timeout_ms;
  struct nbd_handle *h;
  r = nbdc_connect(dev, &h);
  if (r < 0)
    return r;
  int64_t size = vd_nbd_lib.nbd_get_size(h);
  if (size < 0) {
    r = nbdc_error(dev, h, "size");
    vd_nbd_lib.nbd_close(h);
    return r;
  }
  dev->size = (uint64_t)size;
  if (vd_nbd_lib.nbd_is_read_only(h) == 1)
    dev->read_only = true;   /* write-type requests then fail with EROFS */
  p->can_flush = vd_nbd_lib.nbd_can_flush(h) == 1;
  p->can_fua = vd_nbd_lib.nbd_can_fua(h) == 1;
  p->can_trim = vd_nbd_lib.nbd_can_trim(h) == 1;
  p->can_zero = vd_nbd_lib.nbd_can_zero(h) == 1;
  p->can_fast_zero = vd_nbd_lib.nbd_can_fast_zero(h) == 1;
  p->can_bs = vd_nbd_lib.nbd_can_meta_context(
                h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  p->multi_conn = vd_nbd_lib.nbd_can_multi_conn(h) == 1;
  int64_t mn = vd_nbd_lib.nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  int64_t pf = vd_nbd_lib.nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
  int64_t mx = vd_nbd_lib.nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  p->min_bs = mn > 0 && mn <= 65536 ? (uint32_t)mn : 1;
  p->pref_bs = pf > 0 && pf <= (32 << 20) ? (uint32_t)pf : 4096;
  p->max_bs = mx > 0 && mx <= UINT32_MAX ? (uint32_t)mx : NBDC_DEFAULT_MAX;
  if (p->max_bs < p->min_bs)
    p->max_bs = p->min_bs;
  /* Requests split at max_bs stay multiples of the minimum. */
  p->max_bs -= p->max_bs % p->min_bs;
  if (p->min_bs > 1) {
    dev->logical_block = p->min_bs < 512 ? 512 : p->min_bs;
    dev->strict_align = true;   /* the core read-modify-writes below it */
  }
  dev->preferred_io = p->pref_bs;

  p->conn[0].h = h;
  pthread_mutex_init(&p->conn[0].lock, NULL);
  p->nconn = 1;
  /* More connections only when the server promises they are coherent.
   * One that fails is not an error: multi-conn only speeds things up. */
  while (p->multi_conn && p->nconn < NBDC_MAX_CONN) {
    if (nbdc_connect(dev, &h) < 0)
      break;
    p->conn[p->nconn].h = h;
    pthread_mutex_init(&p->conn[p->nconn].lock, NULL);
    p->nconn++;
  }
  vd_clear_error();
  return 0;
}

/* A connection for one request, locked: the first idle one from a
 * round-robin start, else wait for the start's. */
static struct nbdc_conn *
nbdc_get(struct nbdc_priv *p)
{
  unsigned n = atomic_fetch_add(&p->next, 1);
  for (int i = 0; i < p->nconn; i++) {
    struct nbdc_conn *c = &p->conn[(n + (unsigned)i) % (unsigned)p->nconn];
    if (pthread_mutex_trylock(&c->lock) == 0)
      return c;
  }
  struct nbdc_conn *c = &p->conn[n % (unsigned)p->nconn];
  pthread_mutex_lock(&c->lock);
  return c;
}

static void
nbdc_put(struct nbdc_conn *c)
{
  pthread_mutex_unlock(&c->lock);
}

/* Wait for request COOKIE on C (locked) until it completes or the
 * device's deadline passes; a miss gives the device up (see the top). */
static int
nbdc_wait(struct vd_dev *dev, struct nbdc_conn *c, int64_t cookie,
          const char *op)
{
  struct nbdc_priv *p = dev->priv;
  if (cookie == -1)
    return nbdc_error(dev, c->h, op);
  long long deadline = p->timeout_ms ? nbdc_now_ms() + p->timeout_ms : 0;
  for (;;) {
    int d = vd_nbd_lib.nbd_aio_command_completed(c->h, (uint64_t)cookie);
    if (d == 1)
      return 0;
    if (d == -1)
      return nbdc_error(dev, c->h, op);
    int left = -1;
    if (deadline) {
      long long l = deadline - nbdc_now_ms();
      if (l <= 0) {
        atomic_store(&p->given_up, true);
        return vd_set_error(ETIMEDOUT, "%s: %s: no reply within %u ms "
                            "(connection given up)", dev->path, op,
                            p->timeout_ms);
      }
      left = l > INT32_MAX ? INT32_MAX : (int)l;
    }
    if (vd_nbd_lib.nbd_poll(c->h, left) == -1)
      return nbdc_error(dev, c->h, op);
  }
}

/* A locked connection for one request, or NULL (message set) once the
 * device was given up. */
static struct nbdc_conn *nbdc_get(struct nbdc_priv *p);
static void nbdc_put(struct nbdc_conn *c);
static struct nbdc_conn *
nbdc_get_live(struct vd_dev *dev)
{
  struct nbdc_priv *p = dev->priv;
  struct nbdc_conn *c = atomic_load(&p->given_up) ? NULL : nbdc_get(p);
  if (c && atomic_load(&p->given_up)) {
    /* Given up while we waited for the connection. */
    nbdc_put(c);
    c = NULL;
  }
  if (!c)
    vd_set_error(ETIMEDOUT, "%s: connection given up after a request "
                 "timed out (reopen to reconnect)", dev->path);
  return c;
}

enum nbdc_op { NBDC_READ, NBDC_WRITE, NBDC_TRIM, NBDC_ZERO };

/* One request split into pieces the server takes: data up to its maximum
 * block size, trim and zero up to NBDC_MAX_EFFECT (32-bit lengths).  BUF
 * is the data of reads and writes, NULL otherwise. */
static int
nbdc_request(struct vd_dev *dev, enum nbdc_op op, void *buf, uint64_t len,
             uint64_t off, uint32_t nf)
{
  static const char *const what[] = { "read", "write", "trim",
                                      "write zeroes" };
  struct nbdc_priv *p = dev->priv;
  uint64_t max = op <= NBDC_WRITE ? p->max_bs : NBDC_MAX_EFFECT;
  while (len > 0) {
    uint64_t n = len < max ? len : max;
    struct nbdc_conn *c = nbdc_get_live(dev);
    if (!c)
      return -ETIMEDOUT;
    nbd_completion_callback none = NBD_NULL_COMPLETION;
    const struct vd_nbd_lib *l = &vd_nbd_lib;
    int64_t ck = op == NBDC_READ ? l->nbd_aio_pread(c->h, buf, n, off, none, 0)
               : op == NBDC_WRITE ? l->nbd_aio_pwrite(c->h, buf, n, off, none,
                                                      nf)
               : op == NBDC_TRIM ? l->nbd_aio_trim(c->h, n, off, none, nf)
               : l->nbd_aio_zero(c->h, n, off, none, nf);
    int r = nbdc_wait(dev, c, ck, what[op]);
    nbdc_put(c);
    if (r < 0)
      return r;
    if (buf)
      buf = (char *)buf + n;
    off += n;
    len -= n;
  }
  return 0;
}

static int
nbdc_pread(struct vd_dev *dev, void *buf, size_t len, uint64_t off)
{
  struct nbdc_priv *p = dev->priv;
  uint64_t m = p->min_bs;
  if (((off | len) % m) == 0)
    return nbdc_request(dev, NBDC_READ, buf, len, off, 0);
  /* Widened through a bounce buffer (the core widens only writes). */
  uint64_t s = off - off % m;
  uint64_t e = off + len;
  e = e % m ? e + (m - e % m) : e;
  if (e > dev->size)
    e = dev->size;   /* an export's size is a multiple of its minimum */
  char *tmp = malloc(e - s);
  if (!tmp)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = nbdc_request(dev, NBDC_READ, tmp, e - s, s, 0);
  if (r == 0)
    memcpy(buf, tmp + (off - s), len);
  free(tmp);
  return r;
}

static int
nbdc_flush(struct vd_dev *dev)
{
  struct nbdc_priv *p = dev->priv;
  if (!p->can_flush)
    return 0;   /* the server says it has no volatile cache */
  struct nbdc_conn *c;
  if (p->multi_conn) {
    /* multi-conn: one flush covers writes completed on every connection
     * (NBD protocol).  Any connection will do. */
    c = nbdc_get_live(dev);
  } else {
    c = atomic_load(&p->given_up) ? NULL : &p->conn[0];
    if (c)
      pthread_mutex_lock(&c->lock);
    if (c && atomic_load(&p->given_up)) {
      nbdc_put(c);
      c = NULL;
    }
    if (!c)
      vd_set_error(ETIMEDOUT, "%s: connection given up after a request "
                   "timed out (reopen to reconnect)", dev->path);
  }
  if (!c)
    return -ETIMEDOUT;
  int64_t ck = vd_nbd_lib.nbd_aio_flush(c->h, NBD_NULL_COMPLETION, 0);
  int r = nbdc_wait(dev, c, ck, "flush");
  nbdc_put(c);
  return r;
}

static int
nbdc_pwrite(struct vd_dev *dev, const void *buf, size_t len, uint64_t off,
            unsigned flags)
{
  struct nbdc_priv *p = dev->priv;
  uint32_t nf = (flags & VD_REQ_FUA) && p->can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
  /* libnbd does not write through BUF: the cast only shares the loop. */
  int r = nbdc_request(dev, NBDC_WRITE, (void *)buf, len, off, nf);
  if (r < 0)
    return r;
  if ((flags & VD_REQ_FUA) && !nf)
    return nbdc_flush(dev);
  return 0;
}

static int
nbdc_discard(struct vd_dev *dev, uint64_t off, uint64_t len, unsigned flags)
{
  struct nbdc_priv *p = dev->priv;
  if (!p->can_trim)
    return 0;   /* advisory */
  uint32_t nf = (flags & VD_REQ_FUA) && p->can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
  return nbdc_request(dev, NBDC_TRIM, NULL, len, off, nf);
}

/* Zeros as data, for a server without NBD_CMD_WRITE_ZEROES. */
static int
nbdc_write_zero_data(struct vd_dev *dev, uint64_t off, uint64_t len,
                     unsigned flags)
{
  size_t chunk = len < (1u << 20) ? (size_t)len : (1u << 20);
  void *z = calloc(1, chunk);
  if (!z)
    return vd_set_error(ENOMEM, "%s: out of memory", dev->path);
  int r = 0;
  while (r == 0 && len > 0) {
    size_t n = len < chunk ? (size_t)len : chunk;
    r = nbdc_pwrite(dev, z, n, off, flags & VD_REQ_FUA);
    off += n;
    len -= n;
  }
  free(z);
  return r;
}

static int
nbdc_write_zeroes(struct vd_dev *dev, uint64_t off, uint64_t len,
                  unsigned flags)
{
  struct nbdc_priv *p = dev->priv;
  if ((flags & VD_REQ_FAST_ZERO) && !p->can_fast_zero)
    return vd_set_error(ENOTSUP, "%s: the server offers no fast zeroing",
                        dev->path);
  if (!p->can_zero)
    return nbdc_write_zero_data(dev, off, len, flags);
  uint32_t nf = 0;
  if (flags & VD_REQ_NO_HOLE)
    nf |= LIBNBD_CMD_FLAG_NO_HOLE;
  if (flags & VD_REQ_FAST_ZERO)
    nf |= LIBNBD_CMD_FLAG_FAST_ZERO;
  if ((flags & VD_REQ_FUA) && p->can_fua)
    nf |= LIBNBD_CMD_FLAG_FUA;
  int r = nbdc_request(dev, NBDC_ZERO, NULL, len, off, nf);
  if (r < 0)
    return r;
  if ((flags & VD_REQ_FUA) && !p->can_fua)
    return nbdc_flush(dev);
  return 0;
}

struct nbdc_bs {
  uint64_t len;     /* of the first extent, 0 until seen */
  uint32_t flags;
};

static int
nbdc_extent(void *opaque, const char *metacontext, uint64_t offset,
            uint32_t *entries, size_t nr_entries, int *error)
{
  struct nbdc_bs *bs = opaque;
  (void)offset;
  (void)error;
  if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 ||
      nr_entries < 2 || bs->len)
    return 0;
  bs->len = entries[0];
  /* base:allocation's bits are NBD_STATE_HOLE (1) and NBD_STATE_ZERO (2),
   * the same as VD_EXT_HOLE and VD_EXT_ZERO. */
  bs->flags = entries[1] & (VD_EXT_HOLE | VD_EXT_ZERO);
  return 0;
}

static int
nbdc_block_status(struct vd_dev *dev, uint64_t off, uint64_t len,
                  struct vd_extent *ext)
{
  struct nbdc_priv *p = dev->priv;
  if (!p->can_bs) {
    ext->length = len;   /* all data, as the protocol says without it */
    return 0;
  }
  uint64_t m = p->min_bs;
  /* The request must be aligned to the minimum; the answer is then
   * clipped to what was asked. */
  uint64_t s = off - off % m;
  uint64_t n = len + (off - s);
  if (n > UINT32_MAX - 65536)
    n = UINT32_MAX - 65536;
  if (n % m)
    n += m - n % m;
  if (s + n > dev->size)
    n = dev->size - s;
  struct nbdc_bs bs = { 0 };
  nbd_extent_callback cb = { .callback = nbdc_extent, .user_data = &bs };
  struct nbdc_conn *c = nbdc_get_live(dev);
  if (!c)
    return -ETIMEDOUT;
  int r = nbdc_wait(dev, c, vd_nbd_lib.nbd_aio_block_status(c->h, n, s, cb,
                                                 NBD_NULL_COMPLETION, 0),
                    "block status");
  nbdc_put(c);
  if (r < 0)
    return r;
  if (bs.len == 0 || s + bs.len <= off)
    return vd_set_error(EIO, "%s: the server sent no usable extent at %"
                        PRIu64, dev->path, off);
  uint64_t got = s + bs.len - off;
  ext->length = got < len ? got : len;
  ext->flags = bs.flags;
  return 0;
}

static void
nbdc_info(struct vd_dev *dev, struct vd_info *info)
{
  struct nbdc_priv *p = dev->priv;
  struct nbd_handle *h = p->conn[0].h;
  vd_info_add_str(info, "uri", dev->path);
  char *name = vd_nbd_lib.nbd_get_export_name(h);
  if (name) {
    vd_info_add_str(info, "export", name);
    free(name);
  }
  vd_info_add_u64(info, "connections", (uint64_t)p->nconn);
  vd_info_add_str(info, "multi-conn", p->multi_conn ? "yes" : "no");
  vd_info_add_u64(info, "block-size-minimum", p->min_bs);
  vd_info_add_u64(info, "block-size-preferred", p->pref_bs);
  vd_info_add_u64(info, "block-size-maximum", p->max_bs);
  vd_info_add_str(info, "tls",
                  vd_nbd_lib.nbd_get_tls_negotiated(h) == 1 ? "yes" : "no");
  vd_info_add_str(info, "can-flush", p->can_flush ? "yes" : "no");
  vd_info_add_str(info, "can-fua", p->can_fua ? "yes" : "no");
  vd_info_add_str(info, "can-trim", p->can_trim ? "yes" : "no");
  vd_info_add_str(info, "can-zero", p->can_zero ? "yes" : "no");
  vd_info_add_str(info, "block-status", p->can_bs ? "yes" : "no");
}

const struct vd_driver vd_nbd_driver = {
  .name = "nbd",
  .priv_size = sizeof(struct nbdc_priv),
  /* never probed: the core picks it for an operator's URI; an export
   * references no other file, so it may be a VHD child's parent */
  .leaf = true,
  .opens_own_files = true,
  /* coherent across our own callers: one handle, or several the server
   * promised coherent (multi-conn) */
  .multi_conn = true,
  .open = nbdc_open,
  .close = nbdc_close,
  .pread = nbdc_pread,
  .pwrite = nbdc_pwrite,
  .flush = nbdc_flush,
  .discard = nbdc_discard,
  .write_zeroes = nbdc_write_zeroes,
  .block_status = nbdc_block_status,
  .info = nbdc_info,
};

VD_REGISTER_DRIVER(vd_nbd_driver);
