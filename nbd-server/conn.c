/* vdisk-nbd — the transmission phase.
 *
 * Each connection has one reader (the thread that accepted it): it reads
 * request headers and write payloads through a small input buffer,
 * validates them (proto.c), answers invalid ones itself and queues the
 * rest on a worker pool shared by every connection.  Workers call the
 * engine and write each reply whole under the connection's write lock, so
 * replies leave in completion order.  Memory is bounded per connection:
 * at most CONN_MAX_INFLIGHT requests and CONN_BYTE_BUDGET payload bytes in
 * flight (a single request of any allowed size is always admitted); the
 * reader stops reading the socket until work completes.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "vdisk/endian.h"
#include "vdisk/vdisk.h"
#include "proto.h"
#include "server.h"

#define CONN_MAX_INFLIGHT 128
#define CONN_BYTE_BUDGET  (64u << 20)
#define JOB_CACHE_MAX     (256u << 10)   /* larger buffers are freed */
#define READ_MAX_CHUNKS   16             /* content chunks per READ */
#define BS_MAX_EXTENTS    128            /* descriptors per BLOCK_STATUS */
#define RBUF_SIZE         65536

struct nbd_conn;

struct nbd_job {
  struct nbd_job *next;
  struct nbd_conn *conn;
  struct nbd_request req;
  uint32_t cost;                /* bytes charged to the connection */
  uint8_t *buf;                 /* payload / read data, cap bytes */
  size_t cap;
};

struct nbd_conn {
  const struct nbd_server *srv;
  struct nbd_io *io;
  struct nbd_session s;
  struct nbd_req_ctx ctx;
  struct vd_dev *dev;

  pthread_mutex_t wlock;        /* serialises writes to io */
  bool dead;                    /* wlock: a send failed, stop replying */

  pthread_mutex_t lock;
  pthread_cond_t cond;          /* signalled when a job completes */
  unsigned inflight;            /* lock */
  uint64_t inflight_bytes;      /* lock */
  unsigned njobs;               /* lock: jobs allocated */
  struct nbd_job *free_jobs;    /* lock */

  uint8_t rbuf[RBUF_SIZE];      /* reader only */
  size_t rpos, rlen;
};

/* ---- worker pool ---- */

static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct nbd_job *head, *tail;  /* lock */
  bool stop;                    /* lock */
  unsigned n;
  pthread_t *threads;
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER,
           .cond = PTHREAD_COND_INITIALIZER };

static void job_run(struct nbd_job *j);

static void *pool_worker(void *arg)
{
  (void)arg;
  for (;;) {
    struct nbd_job *j;
    pthread_mutex_lock(&pool.lock);
    while (!pool.head && !pool.stop)
      pthread_cond_wait(&pool.cond, &pool.lock);
    j = pool.head;
    if (!j) {
      pthread_mutex_unlock(&pool.lock);
      return NULL;
    }
    pool.head = j->next;
    if (!pool.head)
      pool.tail = NULL;
    pthread_mutex_unlock(&pool.lock);
    job_run(j);
  }
}

int nbd_pool_start(unsigned nthreads)
{
  unsigned i;
  pool.threads = calloc(nthreads, sizeof *pool.threads);
  if (!pool.threads)
    return -ENOMEM;
  for (i = 0; i < nthreads; i++) {
    int r = pthread_create(&pool.threads[i], NULL, pool_worker, NULL);
    if (r) {
      nbd_pool_stop();
      return -r;
    }
    pool.n++;
  }
  return 0;
}

/* Workers finish the queue before they exit. */
void nbd_pool_stop(void)
{
  unsigned i;
  pthread_mutex_lock(&pool.lock);
  pool.stop = true;
  pthread_cond_broadcast(&pool.cond);
  pthread_mutex_unlock(&pool.lock);
  for (i = 0; i < pool.n; i++)
    pthread_join(pool.threads[i], NULL);
  free(pool.threads);
  pool.threads = NULL;
  pool.n = 0;
}

static void pool_push(struct nbd_job *j)
{
  j->next = NULL;
  pthread_mutex_lock(&pool.lock);
  if (pool.tail)
    pool.tail->next = j;
  else
    pool.head = j;
  pool.tail = j;
  pthread_cond_signal(&pool.cond);
  pthread_mutex_unlock(&pool.lock);
}

/* ---- replies ---- */

static void conn_send(struct nbd_conn *c, const struct iovec *iov, int n)
{
  pthread_mutex_lock(&c->wlock);
  if (!c->dead && c->io->sendv(c->io, iov, n) < 0) {
    c->dead = true;
    /* Wake the reader: nobody is listening any more. */
    shutdown(c->io->fd, SHUT_RDWR);
  }
  pthread_mutex_unlock(&c->wlock);
}

static void reply_ok(struct nbd_conn *c, const struct nbd_request *req)
{
  uint8_t hdr[NBD_SIMPLE_REPLY_LEN];
  struct iovec iov = { hdr, nbd_encode_simple_reply(hdr, req->cookie, 0) };
  conn_send(c, &iov, 1);
}

/* An error reply; with structured replies it carries MSG (may be NULL). */
static void reply_error(struct nbd_conn *c, const struct nbd_request *req,
                        uint32_t err, const char *msg)
{
  uint8_t hdr[NBD_CHUNK_HDR_LEN + 6];
  size_t mlen = msg ? strlen(msg) : 0;

  if (c->srv->verbose)
    nbd_log("%s %s at %llu+%u: error %u%s%s", c->s.exp->name,
            nbd_cmd_name(req->type), (unsigned long long)req->offset,
            req->length, err, msg ? ": " : "", msg ? msg : "");
  if (!c->s.structured) {
    struct iovec iov = { hdr, nbd_encode_simple_reply(hdr, req->cookie, err) };
    conn_send(c, &iov, 1);
    return;
  }
  if (mlen > 512)
    mlen = 512;
  nbd_encode_chunk_hdr(hdr, req->cookie, NBD_REPLY_FLAG_DONE,
                       NBD_REPLY_TYPE_ERROR, (uint32_t)(6 + mlen));
  vd_put_be32(hdr + NBD_CHUNK_HDR_LEN, err);
  vd_put_be16(hdr + NBD_CHUNK_HDR_LEN + 4, (uint16_t)mlen);
  struct iovec iov[2] = { { hdr, sizeof hdr }, { (void *)msg, mlen } };
  conn_send(c, iov, mlen ? 2 : 1);
}

static void reply_engine(struct nbd_conn *c, const struct nbd_request *req,
                         int r)
{
  if (r == 0)
    reply_ok(c, req);
  else
    reply_error(c, req, nbd_errno_to_wire(r), vd_error());
}

/* ---- commands ---- */

static int job_reserve(struct nbd_job *j, size_t len)
{
  uint8_t *p;
  if (j->cap >= len)
    return 0;
  p = realloc(j->buf, len);
  if (!p)
    return -ENOMEM;
  j->buf = p;
  j->cap = len;
  return 0;
}

static void do_read_simple(struct nbd_job *j)
{
  struct nbd_conn *c = j->conn;
  const struct nbd_request *req = &j->req;
  uint8_t hdr[NBD_SIMPLE_REPLY_LEN];
  int r;

  r = vd_pread(c->dev, j->buf, req->length, req->offset);
  if (r < 0) {
    reply_error(c, req, nbd_errno_to_wire(r), vd_error());
    return;
  }
  struct iovec iov[2] = {
    { hdr, nbd_encode_simple_reply(hdr, req->cookie, 0) },
    { j->buf, req->length },
  };
  conn_send(c, iov, 2);
}

/* Structured READ: holes that read as zeros become OFFSET_HOLE chunks,
 * the rest is read and sent as OFFSET_DATA; the whole reply is built
 * first so that an engine error yields a single error chunk. */
static void do_read_structured(struct nbd_job *j)
{
  struct nbd_conn *c = j->conn;
  const struct nbd_request *req = &j->req;
  struct { uint64_t off; uint32_t len; bool hole; } ch[READ_MAX_CHUNKS];
  uint8_t hdrs[READ_MAX_CHUNKS][NBD_CHUNK_HDR_LEN + 12];
  struct iovec iov[2 * READ_MAX_CHUNKS];
  uint64_t pos = req->offset, end = req->offset + req->length;
  int n = 0, niov = 0, i, r;

  if (!(req->flags & NBD_CMD_FLAG_DF)) {
    while (pos < end && n < READ_MAX_CHUNKS - 1) {
      struct vd_extent e;
      bool hole;
      if (vd_block_status(c->dev, pos, end - pos, &e) < 0 ||
          e.length == 0 || e.length > end - pos)
        break;
      hole = e.flags & VD_EXT_ZERO;
      if (n && ch[n - 1].hole == hole)
        ch[n - 1].len += (uint32_t)e.length;
      else {
        ch[n].off = pos;
        ch[n].len = (uint32_t)e.length;
        ch[n].hole = hole;
        n++;
      }
      pos += e.length;
    }
  }
  if (pos < end) {
    if (n && !ch[n - 1].hole)
      ch[n - 1].len += (uint32_t)(end - pos);
    else {
      ch[n].off = pos;
      ch[n].len = (uint32_t)(end - pos);
      ch[n].hole = false;
      n++;
    }
  }

  for (i = 0; i < n; i++) {
    if (ch[i].hole)
      continue;
    r = vd_pread(c->dev, j->buf + (ch[i].off - req->offset), ch[i].len,
                 ch[i].off);
    if (r < 0) {
      reply_error(c, req, nbd_errno_to_wire(r), vd_error());
      return;
    }
  }

  for (i = 0; i < n; i++) {
    uint16_t flags = i == n - 1 ? NBD_REPLY_FLAG_DONE : 0;
    uint8_t *h = hdrs[i];
    if (ch[i].hole) {
      nbd_encode_chunk_hdr(h, req->cookie, flags, NBD_REPLY_TYPE_OFFSET_HOLE,
                           12);
      vd_put_be64(h + NBD_CHUNK_HDR_LEN, ch[i].off);
      vd_put_be32(h + NBD_CHUNK_HDR_LEN + 8, ch[i].len);
      iov[niov].iov_base = h;
      iov[niov++].iov_len = NBD_CHUNK_HDR_LEN + 12;
    } else {
      nbd_encode_chunk_hdr(h, req->cookie, flags, NBD_REPLY_TYPE_OFFSET_DATA,
                           8 + ch[i].len);
      vd_put_be64(h + NBD_CHUNK_HDR_LEN, ch[i].off);
      iov[niov].iov_base = h;
      iov[niov++].iov_len = NBD_CHUNK_HDR_LEN + 8;
      iov[niov].iov_base = j->buf + (ch[i].off - req->offset);
      iov[niov++].iov_len = ch[i].len;
    }
  }
  conn_send(c, iov, niov);
}

static void do_block_status(struct nbd_job *j)
{
  struct nbd_conn *c = j->conn;
  const struct nbd_request *req = &j->req;
  unsigned max = req->flags & NBD_CMD_FLAG_REQ_ONE ? 1 : BS_MAX_EXTENTS;
  uint64_t pos = req->offset, end = req->offset + req->length;
  uint8_t *p = j->buf + NBD_CHUNK_HDR_LEN + 4;
  unsigned n = 0;
  uint32_t last = 0;

  while (pos < end) {
    struct vd_extent e;
    uint32_t st;
    int r = vd_block_status(c->dev, pos, end - pos, &e);
    if (r < 0 || e.length == 0 || e.length > end - pos) {
      if (n)
        break;            /* report what we have */
      reply_error(c, req, r < 0 ? nbd_errno_to_wire(r) : NBD_EIO,
                  r < 0 ? vd_error() : "bad extent from the engine");
      return;
    }
    st = (e.flags & VD_EXT_HOLE ? NBD_STATE_HOLE : 0) |
         (e.flags & VD_EXT_ZERO ? NBD_STATE_ZERO : 0);
    if (n && st == last)
      vd_put_be32(p - 8, vd_get_be32(p - 8) + (uint32_t)e.length);
    else {
      if (n == max)
        break;
      vd_put_be32(p, (uint32_t)e.length);
      vd_put_be32(p + 4, st);
      p += 8;
      n++;
      last = st;
    }
    pos += e.length;
  }
  uint32_t len = 4 + 8 * n;
  nbd_encode_chunk_hdr(j->buf, req->cookie, NBD_REPLY_FLAG_DONE,
                       NBD_REPLY_TYPE_BLOCK_STATUS, len);
  vd_put_be32(j->buf + NBD_CHUNK_HDR_LEN, NBD_META_ALLOC_ID);
  struct iovec iov = { j->buf, NBD_CHUNK_HDR_LEN + len };
  conn_send(c, &iov, 1);
}

/* CACHE: read the range through so that later reads are fast. */
static int do_cache(struct nbd_job *j)
{
  const struct nbd_request *req = &j->req;
  uint64_t pos = req->offset, end = req->offset + req->length;
  size_t chunk = j->cap;
  while (pos < end) {
    size_t n = end - pos < chunk ? (size_t)(end - pos) : chunk;
    int r = vd_pread(j->conn->dev, j->buf, n, pos);
    if (r < 0)
      return r;
    pos += n;
  }
  return 0;
}

static void job_release(struct nbd_job *j)
{
  struct nbd_conn *c = j->conn;
  if (j->cap > JOB_CACHE_MAX) {
    free(j->buf);
    j->buf = NULL;
    j->cap = 0;
  }
  pthread_mutex_lock(&c->lock);
  c->inflight--;
  c->inflight_bytes -= j->cost;
  j->next = c->free_jobs;
  c->free_jobs = j;
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->lock);
}

static void job_run(struct nbd_job *j)
{
  struct nbd_conn *c = j->conn;
  const struct nbd_request *req = &j->req;
  unsigned fua = req->flags & NBD_CMD_FLAG_FUA ? VD_REQ_FUA : 0;
  unsigned zf;
  int r;

  switch (req->type) {
  case NBD_CMD_READ:
    if (job_reserve(j, req->length) < 0)
      reply_error(c, req, NBD_ENOMEM, "out of memory");
    else if (c->s.structured)
      do_read_structured(j);
    else
      do_read_simple(j);
    break;
  case NBD_CMD_WRITE:
    reply_engine(c, req, vd_pwrite(c->dev, j->buf, req->length, req->offset,
                                   fua));
    break;
  case NBD_CMD_FLUSH:
    reply_engine(c, req, vd_flush(c->dev));
    break;
  case NBD_CMD_TRIM:
    r = vd_discard(c->dev, req->offset, req->length, fua);
    reply_engine(c, req, r == -ENOTSUP ? 0 : r);   /* trim is advisory */
    break;
  case NBD_CMD_WRITE_ZEROES:
    zf = fua;
    if (req->flags & NBD_CMD_FLAG_NO_HOLE)
      zf |= VD_REQ_NO_HOLE;
    if (req->flags & NBD_CMD_FLAG_FAST_ZERO)
      zf |= VD_REQ_FAST_ZERO;
    reply_engine(c, req,
                 vd_write_zeroes(c->dev, req->offset, req->length, zf));
    break;
  case NBD_CMD_CACHE:
    if (job_reserve(j, req->length < (1u << 20) ? req->length : 1u << 20) < 0)
      reply_error(c, req, NBD_ENOMEM, "out of memory");
    else
      reply_engine(c, req, do_cache(j));
    break;
  case NBD_CMD_BLOCK_STATUS:
    if (job_reserve(j, NBD_CHUNK_HDR_LEN + 4 + 8 * BS_MAX_EXTENTS) < 0)
      reply_error(c, req, NBD_ENOMEM, "out of memory");
    else
      do_block_status(j);
    break;
  default:  /* nbd_request_check let nothing else through */
    reply_error(c, req, NBD_EINVAL, "unknown command");
    break;
  }
  job_release(j);
}

/* ---- the reader ---- */

static int rd_full(struct nbd_conn *c, void *dst, size_t len)
{
  uint8_t *p = dst;
  while (len) {
    ssize_t r;
    if (c->rpos < c->rlen) {
      size_t n = c->rlen - c->rpos < len ? c->rlen - c->rpos : len;
      memcpy(p, c->rbuf + c->rpos, n);
      c->rpos += n;
      p += n;
      len -= n;
      continue;
    }
    if (len >= RBUF_SIZE) {       /* big payloads go straight in */
      r = c->io->recv(c->io, p, len);
      if (r <= 0)
        return -1;
      p += r;
      len -= (size_t)r;
      continue;
    }
    r = c->io->recv(c->io, c->rbuf, RBUF_SIZE);
    if (r <= 0)
      return -1;
    c->rpos = 0;
    c->rlen = (size_t)r;
  }
  return 0;
}

static int rd_discard(struct nbd_conn *c, uint64_t len)
{
  uint8_t scratch[16384];
  while (len) {
    size_t n = len < sizeof scratch ? (size_t)len : sizeof scratch;
    if (rd_full(c, scratch, n) < 0)
      return -1;
    len -= n;
  }
  return 0;
}

/* Wait for room, then take a job slot charged with COST bytes. */
static struct nbd_job *job_get(struct nbd_conn *c, uint32_t cost)
{
  struct nbd_job *j;
  pthread_mutex_lock(&c->lock);
  while (c->inflight >= CONN_MAX_INFLIGHT ||
         (c->inflight && c->inflight_bytes + cost > CONN_BYTE_BUDGET))
    pthread_cond_wait(&c->cond, &c->lock);
  j = c->free_jobs;
  if (j)
    c->free_jobs = j->next;
  else if ((j = calloc(1, sizeof *j)) != NULL)
    c->njobs++;
  if (j) {
    c->inflight++;
    c->inflight_bytes += cost;
  }
  pthread_mutex_unlock(&c->lock);
  if (j) {
    j->conn = c;
    j->cost = cost;
  }
  return j;
}

void nbd_conn_serve(const struct nbd_server *srv, struct nbd_io *io,
                    const struct nbd_session *s)
{
  struct nbd_conn *c = calloc(1, sizeof *c);
  struct nbd_job *j;

  if (!c) {
    nbd_log("out of memory");
    return;
  }
  c->srv = srv;
  c->io = io;
  c->s = *s;
  c->dev = s->exp->dev;
  c->ctx.size = s->exp->size;
  c->ctx.eflags = s->eflags;
  c->ctx.structured = s->structured;
  c->ctx.meta_alloc = s->meta_alloc;
  c->ctx.max_payload = s->exp->max_block;
  pthread_mutex_init(&c->wlock, NULL);
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->cond, NULL);

  for (;;) {
    uint8_t hdr[NBD_REQUEST_LEN];
    struct nbd_request req;
    uint32_t err;

    if (rd_full(c, hdr, sizeof hdr) < 0)
      break;
    if (!nbd_request_decode(hdr, &req)) {
      nbd_log("%s: bad request magic 0x%08x: client dropped", s->exp->name,
              req.magic);
      break;
    }
    if (srv->verbose > 1)
      nbd_log("%s %s flags 0x%x at %llu+%u", s->exp->name,
              nbd_cmd_name(req.type), req.flags,
              (unsigned long long)req.offset, req.length);
    err = nbd_request_check(&req, &c->ctx);
    if (err == 0 && req.type == NBD_CMD_DISC)
      break;

    if (err) {
      /* Answered here; a write's payload is consumed to stay in sync. */
      if (nbd_request_has_payload(&req) && rd_discard(c, req.length) < 0)
        break;
      reply_error(c, &req, err, "invalid request");
      continue;
    }

    bool payload = req.type == NBD_CMD_READ || req.type == NBD_CMD_WRITE;
    j = job_get(c, payload ? req.length : 0);
    if (!j) {
      if (nbd_request_has_payload(&req) && rd_discard(c, req.length) < 0)
        break;
      reply_error(c, &req, NBD_ENOMEM, "out of memory");
      continue;
    }
    j->req = req;
    if (nbd_request_has_payload(&req)) {
      if (job_reserve(j, req.length) < 0) {
        job_release(j);
        if (rd_discard(c, req.length) < 0)
          break;
        reply_error(c, &req, NBD_ENOMEM, "out of memory");
        continue;
      }
      if (rd_full(c, j->buf, req.length) < 0) {
        job_release(j);
        break;
      }
    }
    pool_push(j);
  }

  /* Every queued request is answered before the connection closes. */
  pthread_mutex_lock(&c->lock);
  while (c->inflight)
    pthread_cond_wait(&c->cond, &c->lock);
  pthread_mutex_unlock(&c->lock);
  while ((j = c->free_jobs) != NULL) {
    c->free_jobs = j->next;
    free(j->buf);
    free(j);
  }
  pthread_cond_destroy(&c->cond);
  pthread_mutex_destroy(&c->lock);
  pthread_mutex_destroy(&c->wlock);
  free(c);
}
