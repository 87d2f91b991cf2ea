/* vdisk-nbd — the transmission phase.
 *
 * Each connection has one reader (the thread that accepted it): it reads
 * request headers and write payloads through a small input buffer,
 * validates them (proto.c) and queues them on a worker pool shared by
 * every connection.  Each connection has its own queue in the pool, and
 * workers take one job from each connection with work in turn (round
 * robin), so a connection with thousands of queued requests delays
 * another's next request by at most one job per busy connection.  A
 * small read (64 KiB at most), a write of up to 4 MiB or a flush of a
 * connection with nothing else in flight (a client at queue depth 1) is
 * run by the reader itself (run_inline),
 * which, while such a client's requests come quickly, polls the socket
 * for the next one instead of sleeping (rd_fill).
 * Workers call the engine and build the reply inside
 * the job; the reply is then sent whole, in completion order, under the
 * connection's write lock.
 *
 * A worker never waits on a client: it sends with MSG_DONTWAIT, and when
 * the socket is full (a slow or stalled reader) the rest of the reply
 * goes to the connection's output queue, drained by the connection's own
 * writer thread; later replies queue behind it.  TLS replies always go
 * through the writer.  So a client that stops reading blocks only its own
 * threads, never the pool.
 *
 * Memory and work are bounded per connection: at most CONN_MAX_INFLIGHT
 * requests and CONN_BYTE_BUDGET bytes of READ, WRITE and CACHE length
 * between the reader taking a request and its reply leaving (a single
 * request of any allowed size is always admitted); the reader stops
 * reading the socket until replies drain.
 *
 * Large reads of data the image stores plainly in its own file (raw, and
 * present blocks of VHD, VHDX and qcow2) are not copied: the worker
 * splices the file's pages into the job's pipe (vd_node_splice_read) and
 * the writer splices the pipe into the socket, so the bytes are copied
 * once, into the client's buffer, instead of three times.  Not with TLS.
 *
 * Locks: a connection's wlock and lock are never held together, and the
 * pool lock is taken with neither.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/endian.h"
#include "vdisk/vdisk.h"
#include "nbd-server/proto.h"
#include "nbd-server/server.h"

#define CONN_MAX_INFLIGHT 128
#define CONN_BYTE_BUDGET  (64u << 20)
#define CONN_BUF_KEEP     (64u << 20)    /* buffer bytes kept for reuse */
#define JOB_SMALL_BUF     (256u << 10)   /* always kept */
#define READ_SPARSE_MIN   (64u << 10)    /* smaller reads skip hole detection */
#define READ_MAX_CHUNKS   16             /* content chunks per READ */
#define BS_MAX_EXTENTS    128            /* descriptors per BLOCK_STATUS */
#define RBUF_SIZE         65536
#define SPLICE_MIN        (64u << 10)    /* smaller reads are copied */
#define INLINE_MAX        (64u << 10)    /* larger reads go to the pool */
#define INLINE_WRITE_MAX  (4u << 20)     /* larger writes go to the pool */
#define SPLICE_PIPE_SIZE  (2u << 20)     /* a 1 MiB read at any alignment */
#define SPLICE_PIPES_MAX  512            /* in the process, 2 fds each;
                                            fewer under a low descriptor
                                            limit (splice_pipes_max) */
#define SPIN_MIN_NS       4000           /* polling for a request: rd_fill */

struct nbd_conn;

#define JOB_MAX_IOV (2 * READ_MAX_CHUNKS)

struct nbd_job {
  struct nbd_job *next;         /* free list, pool queue or output queue */
  struct nbd_conn *conn;
  struct nbd_request req;
  uint32_t cost;                /* bytes charged to the connection */
  bool alone;                   /* nothing else of the connection's was in
                                   flight when the reader took it */
  uint8_t *buf;                 /* payload / read data, cap bytes */
  size_t cap;
  /* The reply: iov[iov_pos..niov) still to send. */
  struct iovec iov[JOB_MAX_IOV];
  int niov, iov_pos;
  uint8_t hdrs[READ_MAX_CHUNKS][NBD_CHUNK_HDR_LEN + 12];
  char msg[256];                /* error message of an error chunk */
  /* Zero-copy reads: the job's pipe (kept with the job once made), its
   * room in bytes, and the bytes in it that follow iov in the reply. */
  bool has_pipe;
  int pipe[2];
  size_t pipe_cap;
  uint32_t spliced;
};

struct nbd_conn {
  const struct nbd_server *srv;
  struct nbd_io *io;
  struct nbd_session s;
  struct nbd_req_ctx ctx;
  struct vd_node *node;         /* the export's: all I/O goes through it */

  pthread_mutex_t wlock;        /* serialises output on io */
  pthread_cond_t wcond;         /* wakes the writer */
  bool dead;                    /* wlock: a send failed, stop replying */
  bool closing;                 /* wlock: the writer may exit when idle */
  struct nbd_job *outq, *outq_tail; /* wlock: replies waiting for the writer */
  bool sending;                 /* wlock: a worker is sending replies */
  struct nbd_job *pend, *pend_tail; /* wlock: replies for that worker */
  pthread_t writer;

  pthread_mutex_t lock;
  pthread_cond_t cond;          /* signalled when a job is released */
  unsigned inflight;            /* lock */
  uint64_t inflight_bytes;      /* lock */
  uint64_t buf_bytes;           /* atomic: job buffer bytes allocated */
  struct nbd_job *free_jobs;    /* lock */

  /* FLUSH requests, and FUA writes once written, go to the connection's
   * flusher thread (started at the first one), which answers every one
   * waiting after a single flush: no worker waits for the disk, and
   * concurrent flushes cost one (group commit; the core also coalesces
   * flushes across connections). */
  struct nbd_job *fq, *fq_tail;  /* lock */
  pthread_cond_t fcond;          /* lock: fq has jobs, or fstop */
  bool fstop;                    /* lock */
  bool flusher_on;               /* lock */
  pthread_t flusher;

  /* The pool's queue of this connection's jobs, and its place in the
   * pool's ring of connections with queued jobs. */
  struct nbd_job *q_head, *q_tail;  /* pool.lock */
  struct nbd_conn *ring_next;       /* pool.lock */
  bool in_ring;                     /* pool.lock */

  /* Reader only: input buffer, and requests parsed but not yet queued
   * (handed to the pool in one go before the reader blocks). */
  uint8_t rbuf[RBUF_SIZE];
  size_t rpos, rlen;
  int64_t spin_ns;              /* rd_fill's polling window */
  struct nbd_job *batch, *batch_tail;
  unsigned nbatch;
};

/* ---- worker pool ---- */

static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  /* Connections with queued jobs, served in turn. */
  struct nbd_conn *ring_head, *ring_tail;  /* lock */
  unsigned idle;                /* lock: workers waiting for work */
  bool stop;                    /* lock */
  unsigned n;
  pthread_t *threads;
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER,
           .cond = PTHREAD_COND_INITIALIZER };

static void job_run(struct nbd_job *j);

/* Readers polling their socket (rd_fill), how many may at once, and the
 * longest window (0: none). */
static unsigned spinners, spinners_max = 1;
static int64_t spin_max_ns;

static void pool_ring_append_locked(struct nbd_conn *c)
{
  c->ring_next = NULL;
  if (pool.ring_tail)
    pool.ring_tail->ring_next = c;
  else
    pool.ring_head = c;
  pool.ring_tail = c;
  c->in_ring = true;
}

/* Take the next job: the first of the connection whose turn it is; that
 * connection goes to the back of the ring if it has more. */
static struct nbd_job *pool_take_locked(void)
{
  struct nbd_conn *c = pool.ring_head;
  struct nbd_job *j;

  if (!c)
    return NULL;
  pool.ring_head = c->ring_next;
  if (!pool.ring_head)
    pool.ring_tail = NULL;
  c->in_ring = false;
  j = c->q_head;
  c->q_head = j->next;
  if (c->q_head)
    pool_ring_append_locked(c);
  else
    c->q_tail = NULL;
  return j;
}

static void *pool_worker(void *arg)
{
  (void)arg;
  for (;;) {
    struct nbd_job *j;
    pthread_mutex_lock(&pool.lock);
    while (!pool.ring_head && !pool.stop) {
      pool.idle++;
      pthread_cond_wait(&pool.cond, &pool.lock);
      pool.idle--;
    }
    j = pool_take_locked();
    pthread_mutex_unlock(&pool.lock);
    if (!j)
      return NULL;
    job_run(j);
  }
}

int nbd_pool_start(unsigned nthreads, unsigned poll_max_ns)
{
  unsigned i;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  spinners_max = ncpu > 3 ? (unsigned)ncpu / 2 : 1;
  spin_max_ns = poll_max_ns;
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

/* Queue the list HEAD..TAIL (N jobs of connection C) and wake up to N
 * workers. */
static void pool_push_list(struct nbd_conn *c, struct nbd_job *head,
                           struct nbd_job *tail, unsigned n)
{
  pthread_mutex_lock(&pool.lock);
  tail->next = NULL;
  if (c->q_tail)
    c->q_tail->next = head;
  else
    c->q_head = head;
  c->q_tail = tail;
  if (!c->in_ring)
    pool_ring_append_locked(c);
  /* Wake no more workers than there are new jobs. */
  for (unsigned i = 0; i < n && i < pool.idle; i++)
    pthread_cond_signal(&pool.cond);
  pthread_mutex_unlock(&pool.lock);
}

/* ---- replies ---- */

static void job_release(struct nbd_job *j);

static void iov_advance(struct nbd_job *j, size_t n)
{
  while (j->iov_pos < j->niov && n >= j->iov[j->iov_pos].iov_len)
    n -= j->iov[j->iov_pos++].iov_len;
  if (n) {
    j->iov[j->iov_pos].iov_base = (char *)j->iov[j->iov_pos].iov_base + n;
    j->iov[j->iov_pos].iov_len -= n;
  }
}

static void conn_kill_locked(struct nbd_conn *c)
{
  c->dead = true;
  /* Wake the reader: nobody is listening any more. */
  shutdown(c->io->fd, SHUT_RDWR);
}

/* Append the list HEAD..TAIL to the queue *Q / *QT. */
static void list_append(struct nbd_job **q, struct nbd_job **qt,
                        struct nbd_job *head, struct nbd_job *tail)
{
  if (*qt)
    (*qt)->next = head;
  else
    *q = head;
  *qt = tail;
}

static struct nbd_job *list_tail(struct nbd_job *j)
{
  while (j->next)
    j = j->next;
  return j;
}

/* Bytes of J's reply still to send through iov. */
static size_t iov_left(const struct nbd_job *j)
{
  size_t n = 0;
  for (int i = j->iov_pos; i < j->niov; i++)
    n += j->iov[i].iov_len;
  return n;
}

#define SEND_BATCH_IOV 64   /* a job has at most JOB_MAX_IOV */

/* Send the replies of LIST with as few sendmsg calls as they take (the
 * iovs of several jobs in one), never waiting; each job sent whole moves
 * to *DONE (released by the caller once it no longer touches the
 * connection: the last release may let it close).  Stops at a spliced
 * reply (the writer sends those), a full socket or an error (*ERR =
 * errno); returns the jobs not sent whole, in order, the first one
 * possibly sent in part. */
static struct nbd_job *send_batch(struct nbd_conn *c, struct nbd_job *list,
                                  struct nbd_job **done, int *err)
{
  while (list && !list->spliced) {
    struct iovec iov[SEND_BATCH_IOV];
    struct nbd_job *j;
    size_t n = 0;
    for (j = list; j && !j->spliced &&
                   n + (size_t)(j->niov - j->iov_pos) <= SEND_BATCH_IOV;
         j = j->next) {
      memcpy(iov + n, j->iov + j->iov_pos,
             (size_t)(j->niov - j->iov_pos) * sizeof *iov);
      n += (size_t)(j->niov - j->iov_pos);
    }
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = n };
    ssize_t w = sendmsg(c->io->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        *err = errno;
      return list;
    }
    size_t left = (size_t)w;
    while (list && list != j && left >= iov_left(list)) {
      struct nbd_job *next = list->next;
      left -= iov_left(list);
      list->next = *done;
      *done = list;
      list = next;
    }
    if (left) {            /* the socket is full */
      iov_advance(list, left);
      return list;
    }
  }
  return list;
}

/* Send J's reply and release J after.  A worker that finds nobody sending
 * and nothing queued for the writer becomes the sender: it sends its reply
 * with MSG_DONTWAIT, then the replies other workers left meanwhile in the
 * pending list, several per sendmsg, until none is left; what a full
 * socket does not take goes to the writer, in order.  TLS replies and
 * spliced READs always go through the writer. */
static void reply_submit(struct nbd_job *j)
{
  struct nbd_conn *c = j->conn;
  struct nbd_job *list = j, *done = NULL;
  int err = 0;

  j->next = NULL;
  pthread_mutex_lock(&c->wlock);
  if (c->dead) {
    pthread_mutex_unlock(&c->wlock);
    job_release(j);
    return;
  }
  if (c->sending) {
    list_append(&c->pend, &c->pend_tail, j, j);
    pthread_mutex_unlock(&c->wlock);
    return;
  }
  if (c->outq || c->io->tls || j->spliced) {
    list_append(&c->outq, &c->outq_tail, j, j);
    pthread_cond_signal(&c->wcond);
    pthread_mutex_unlock(&c->wlock);
    return;
  }
  c->sending = true;
  for (;;) {
    pthread_mutex_unlock(&c->wlock);
    list = send_batch(c, list, &done, &err);
    pthread_mutex_lock(&c->wlock);
    if (err && !c->dead)
      conn_kill_locked(c);
    bool stuck = list != NULL;
    if (c->pend) {  /* what other workers left meanwhile, after LIST */
      if (list)
        list_tail(list)->next = c->pend;
      else
        list = c->pend;
      c->pend = c->pend_tail = NULL;
    }
    if (c->dead) {
      if (list)
        list_tail(list)->next = done;
      done = list ? list : done;
      break;
    }
    if (stuck) {  /* the outq is empty: nobody else sent while we did */
      list_append(&c->outq, &c->outq_tail, list, list_tail(list));
      pthread_cond_signal(&c->wcond);
      break;
    }
    if (!list)
      break;
  }
  c->sending = false;
  pthread_mutex_unlock(&c->wlock);
  while (done) {
    struct nbd_job *next = done->next;
    job_release(done);
    done = next;
  }
}

/* Splice the job's SPLICED pipe bytes into the socket (blocking). */
static int send_spliced(struct nbd_conn *c, struct nbd_job *j)
{
  while (j->spliced) {
    ssize_t n = splice(j->pipe[0], NULL, c->io->fd, NULL, j->spliced, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    j->spliced -= (uint32_t)n;
  }
  return 0;
}

/* Send the rest of J's reply (blocking): iov, with a spliced READ's pipe
 * bytes after iov[0] (reply_submit never sent part of such a reply). */
static int send_reply(struct nbd_conn *c, struct nbd_job *j)
{
  int at = j->spliced ? 1 : j->niov;
  if (c->io->sendv(c->io, j->iov + j->iov_pos, at - j->iov_pos) < 0 ||
      send_spliced(c, j) < 0)
    return -1;
  return at < j->niov ? c->io->sendv(c->io, j->iov + at, j->niov - at) : 0;
}

/* The writer: blocking sends of queued replies, one whole reply at a
 * time.  The head of the queue stays queued while it is sent, so that
 * workers keep appending behind it instead of sending directly. */
static void *conn_writer(void *arg)
{
  struct nbd_conn *c = arg;

  pthread_mutex_lock(&c->wlock);
  for (;;) {
    struct nbd_job *j;
    bool dead;
    int r;
    while (!c->outq && !c->closing)
      pthread_cond_wait(&c->wcond, &c->wlock);
    j = c->outq;
    if (!j)
      break;
    dead = c->dead;
    pthread_mutex_unlock(&c->wlock);
    r = dead ? -1 : send_reply(c, j);
    pthread_mutex_lock(&c->wlock);
    if (r < 0 && !c->dead)
      conn_kill_locked(c);
    c->outq = j->next;
    if (!c->outq)
      c->outq_tail = NULL;
    pthread_mutex_unlock(&c->wlock);
    job_release(j);
    pthread_mutex_lock(&c->wlock);
  }
  pthread_mutex_unlock(&c->wlock);
  return NULL;
}

static void reply_ok(struct nbd_job *j)
{
  j->iov[0].iov_base = j->hdrs[0];
  j->iov[0].iov_len = nbd_encode_simple_reply(j->hdrs[0], j->req.cookie, 0);
  j->niov = 1;
  reply_submit(j);
}

/* An error reply; with structured replies it carries MSG (may be NULL). */
static void reply_error(struct nbd_job *j, uint32_t err, const char *msg)
{
  struct nbd_conn *c = j->conn;
  const struct nbd_request *req = &j->req;
  uint8_t *h = j->hdrs[0];
  size_t mlen = 0;

  if (c->srv->verbose)
    nbd_log("%s %s at %llu+%u: error %u%s%s", c->s.exp->name,
            nbd_cmd_name(req->type), (unsigned long long)req->offset,
            req->length, err, msg ? ": " : "", msg ? msg : "");
  if (!c->s.structured) {
    j->iov[0].iov_base = h;
    j->iov[0].iov_len = nbd_encode_simple_reply(h, req->cookie, err);
    j->niov = 1;
    reply_submit(j);
    return;
  }
  if (msg) {
    mlen = strlen(msg);
    if (mlen >= sizeof j->msg)
      mlen = sizeof j->msg - 1;
    memcpy(j->msg, msg, mlen);
  }
  nbd_encode_chunk_hdr(h, req->cookie, NBD_REPLY_FLAG_DONE,
                       NBD_REPLY_TYPE_ERROR, (uint32_t)(6 + mlen));
  vd_put_be32(h + NBD_CHUNK_HDR_LEN, err);
  vd_put_be16(h + NBD_CHUNK_HDR_LEN + 4, (uint16_t)mlen);
  j->iov[0].iov_base = h;
  j->iov[0].iov_len = NBD_CHUNK_HDR_LEN + 6;
  j->iov[1].iov_base = j->msg;
  j->iov[1].iov_len = mlen;
  j->niov = mlen ? 2 : 1;
  reply_submit(j);
}

static void reply_engine(struct nbd_job *j, int r)
{
  if (r == 0)
    reply_ok(j);
  else
    reply_error(j, nbd_errno_to_wire(r), vd_error());
}

/* ---- commands ---- */

/* Grow J's buffer to LEN bytes.  Buffers stay with their job (no
 * allocation per request) within a per-connection allowance. */
static int job_reserve(struct nbd_job *j, size_t len)
{
  uint8_t *p;
  if (j->cap >= len)
    return 0;
  free(j->buf);
  p = malloc(len);
  __atomic_add_fetch(&j->conn->buf_bytes, len - j->cap, __ATOMIC_RELAXED);
  j->buf = p;
  j->cap = len;
  if (!p) {
    __atomic_sub_fetch(&j->conn->buf_bytes, len, __ATOMIC_RELAXED);
    j->cap = 0;
    return -ENOMEM;
  }
  return 0;
}

static unsigned splice_pipes;  /* atomic: job pipes in the process */

/* How many job pipes the process may hold: enough for every READ a few
 * clients keep in flight (nbdcopy: 4 connections of 64), and at most a
 * quarter of its descriptor limit (half its descriptors), so that pipes
 * never cost a client its connection or an export its file. */
static unsigned splice_pipes_max(void)
{
  static unsigned max;            /* atomic; 0: not computed yet */
  unsigned m = __atomic_load_n(&max, __ATOMIC_RELAXED);
  if (m)
    return m;
  struct rlimit rl;
  m = SPLICE_PIPES_MAX;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur / 4 < m)
    m = (unsigned)(rl.rlim_cur / 4);
  m = m ? m : 1;
  __atomic_store_n(&max, m, __ATOMIC_RELAXED);
  return m;
}

static void job_pipe_close(struct nbd_job *j)
{
  if (!j->has_pipe)
    return;
  close(j->pipe[0]);
  close(j->pipe[1]);
  j->has_pipe = false;
  j->spliced = 0;
  __atomic_sub_fetch(&splice_pipes, 1, __ATOMIC_RELAXED);
}

/* J's pipe, made on first use; false if it cannot be had. */
static bool job_pipe(struct nbd_job *j)
{
  if (j->has_pipe)
    return true;
  if (__atomic_add_fetch(&splice_pipes, 1, __ATOMIC_RELAXED) >
          splice_pipes_max() ||
      pipe2(j->pipe, O_CLOEXEC) < 0) {
    __atomic_sub_fetch(&splice_pipes, 1, __ATOMIC_RELAXED);
    return false;
  }
  j->has_pipe = true;
  /* Over pipe-max-size (1 MiB by default) only with CAP_SYS_RESOURCE. */
  int sz = fcntl(j->pipe[1], F_SETPIPE_SZ, SPLICE_PIPE_SIZE);
  if (sz < 0)
    sz = fcntl(j->pipe[1], F_SETPIPE_SZ, SPLICE_PIPE_SIZE / 2);
  if (sz < 0)
    sz = fcntl(j->pipe[1], F_GETPIPE_SZ);
  j->pipe_cap = sz < 0 ? 0 : (size_t)sz;
  return true;
}

/* Splice into J's pipe as much of the head of J's READ as it takes, when
 * the read is large, the connection is not TLS and the engine stores
 * those bytes plainly (one run in the image's own file).  Returns the
 * bytes spliced, 0 if none; the reply sends them right after iov[0]. */
static size_t read_splice_head(struct nbd_job *j)
{
  struct nbd_conn *c = j->conn;
  const struct nbd_request *req = &j->req;
  ssize_t r;

  if (c->io->tls || req->length < SPLICE_MIN || !job_pipe(j))
    return 0;
  r = vd_node_splice_read(c->node, j->pipe[1],
                          req->length < j->pipe_cap ? req->length
                                                    : j->pipe_cap,
                          req->offset);
  if (r < 0) {
    if (r != -ENOTSUP)
      job_pipe_close(j);  /* part of the data may be in it */
    return 0;
  }
  j->spliced = (uint32_t)r;
  return (size_t)r;
}

static void do_read_simple(struct nbd_job *j)
{
  struct nbd_conn *c = j->conn;
  const struct nbd_request *req = &j->req;
  size_t sp = read_splice_head(j);
  int r = 0;

  if (sp < req->length)
    r = vd_node_pread(c->node, j->buf, req->length - sp, req->offset + sp);
  if (r < 0) {
    job_pipe_close(j);
    reply_error(j, nbd_errno_to_wire(r), vd_error());
    return;
  }
  j->iov[0].iov_base = j->hdrs[0];
  j->iov[0].iov_len = nbd_encode_simple_reply(j->hdrs[0], req->cookie, 0);
  j->iov[1].iov_base = j->buf;
  j->iov[1].iov_len = req->length - sp;
  j->niov = sp < req->length ? 2 : 1;
  reply_submit(j);
}

/* Structured READ: holes that read as zeros become OFFSET_HOLE chunks,
 * the rest is read and sent as OFFSET_DATA; the whole reply is built
 * first so that an engine error yields a single error chunk.  A spliced
 * head is a data chunk of its own (the first).  Reads under
 * READ_SPARSE_MIN are one data chunk: looking for holes would cost more
 * than sending the zeros. */
static void do_read_structured(struct nbd_job *j)
{
  struct nbd_conn *c = j->conn;
  const struct nbd_request *req = &j->req;
  struct { uint64_t off; uint32_t len; bool hole; } ch[READ_MAX_CHUNKS];
  struct iovec *iov = j->iov;
  size_t sp = read_splice_head(j);
  uint64_t pos = req->offset + sp, end = req->offset + req->length;
  int n = 0, niov = 0, i, r;

  if (sp) {
    ch[0].off = req->offset;
    ch[0].len = (uint32_t)sp;
    ch[0].hole = false;
    n = 1;
  }
  if (!(req->flags & NBD_CMD_FLAG_DF) && req->length >= READ_SPARSE_MIN) {
    while (pos < end && n < READ_MAX_CHUNKS - 1) {
      struct vd_extent e;
      bool hole;
      if (vd_node_block_status(c->node, pos, end - pos, &e) < 0 ||
          e.length == 0 || e.length > end - pos)
        break;
      hole = e.flags & VD_EXT_ZERO;
      if (n > !!sp && ch[n - 1].hole == hole)
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
    if (n > !!sp && !ch[n - 1].hole)
      ch[n - 1].len += (uint32_t)(end - pos);
    else {
      ch[n].off = pos;
      ch[n].len = (uint32_t)(end - pos);
      ch[n].hole = false;
      n++;
    }
  }

  for (i = !!sp; i < n; i++) {
    if (ch[i].hole)
      continue;
    r = vd_node_pread(c->node, j->buf + (ch[i].off - req->offset),
                      ch[i].len, ch[i].off);
    if (r < 0) {
      job_pipe_close(j);
      reply_error(j, nbd_errno_to_wire(r), vd_error());
      return;
    }
  }

  for (i = 0; i < n; i++) {
    uint16_t flags = i == n - 1 ? NBD_REPLY_FLAG_DONE : 0;
    uint8_t *h = j->hdrs[i];
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
      if (i == 0 && sp)
        continue;  /* its bytes are in the pipe, sent after iov[0] */
      iov[niov].iov_base = j->buf + (ch[i].off - req->offset);
      iov[niov++].iov_len = ch[i].len;
    }
  }
  j->niov = niov;
  reply_submit(j);
}

/* The state of one metadata context at POS: *ST for the run of *ELEN
 * bytes (0 < *ELEN <= LEN) starting there.  0 or a negative errno. */
static int meta_state(struct nbd_conn *c, uint32_t id, uint64_t pos,
                      uint64_t len, uint32_t *st, uint64_t *elen)
{
  struct vd_extent e;
  bool dirty;
  int r;

  if (id >= NBD_META_BITMAP_ID0) {
    r = vd_node_bitmap_status(c->node,
                              c->s.exp->bitmaps[id - NBD_META_BITMAP_ID0],
                              pos, len, &dirty, elen);
    *st = dirty ? NBD_STATE_DIRTY : 0;
    return r;
  }
  r = vd_node_block_status(c->node, pos, len, &e);
  if (r < 0)
    return r;
  *elen = e.length;
  if (id == NBD_META_ALLOC_ID)
    *st = (e.flags & VD_EXT_HOLE ? NBD_STATE_HOLE : 0) |
          (e.flags & VD_EXT_ZERO ? NBD_STATE_ZERO : 0);
  else   /* a layer that maps the range provides it, file hole or not
            (as vdtool map's "present" and qemu's raw over a sparse file) */
    *st = !(e.flags & VD_EXT_HOLE) || e.host_offset >= 0
            ? (uint32_t)e.depth + 1 : 0;
  return 0;
}

/* One NBD_REPLY_TYPE_BLOCK_STATUS chunk for context ID at P (room for
 * BS_MAX_EXTENTS descriptors): returns its total length, or 0 with *ERR
 * and *WHY set when not even one extent could be had. */
static size_t bs_chunk(struct nbd_job *j, uint32_t id, uint16_t flags,
                       uint8_t *p, uint32_t *err, const char **why)
{
  struct nbd_conn *c = j->conn;
  const struct nbd_request *req = &j->req;
  unsigned max = req->flags & NBD_CMD_FLAG_REQ_ONE ? 1 : BS_MAX_EXTENTS;
  uint64_t pos = req->offset, end = req->offset + req->length;
  uint8_t *d = p + NBD_CHUNK_HDR_LEN + 4;
  unsigned n = 0;
  uint32_t last = 0;

  while (pos < end) {
    uint32_t st;
    uint64_t elen = 0;
    int r = meta_state(c, id, pos, end - pos, &st, &elen);
    if (r < 0 || elen == 0 || elen > end - pos) {
      if (n)
        break;            /* report what we have */
      *err = r < 0 ? nbd_errno_to_wire(r) : NBD_EIO;
      *why = r < 0 ? vd_error() : "bad extent from the engine";
      return 0;
    }
    if (n && st == last && vd_get_be32(d - 8) <= UINT32_MAX - elen)
      vd_put_be32(d - 8, vd_get_be32(d - 8) + (uint32_t)elen);
    else {
      if (n == max)
        break;
      vd_put_be32(d, (uint32_t)elen);
      vd_put_be32(d + 4, st);
      d += 8;
      n++;
      last = st;
    }
    pos += elen;
  }
  uint32_t len = 4 + 8 * n;
  nbd_encode_chunk_hdr(p, req->cookie, flags, NBD_REPLY_TYPE_BLOCK_STATUS,
                       len);
  vd_put_be32(p + NBD_CHUNK_HDR_LEN, id);
  return NBD_CHUNK_HDR_LEN + len;
}

/* Room one context's chunk may take in a BLOCK_STATUS reply. */
#define BS_CHUNK_MAX (NBD_CHUNK_HDR_LEN + 4 + 8 * BS_MAX_EXTENTS)

/* The contexts the connection selected, in id order. */
static unsigned meta_ids(const struct nbd_conn *c, uint32_t *ids)
{
  unsigned n = 0;
  if (c->s.meta.alloc)
    ids[n++] = NBD_META_ALLOC_ID;
  if (c->s.meta.depth)
    ids[n++] = NBD_META_DEPTH_ID;
  for (unsigned i = 0; i < NBD_MAX_EXPORT_BITMAPS; i++)
    if (c->s.meta.bitmaps >> i & 1)
      ids[n++] = NBD_META_BITMAP_ID0 + i;
  return n;
}

/* BLOCK_STATUS: one chunk per selected context, all built before any is
 * sent, so that a failure is a single error chunk. */
static void do_block_status(struct nbd_job *j)
{
  uint32_t ids[2 + NBD_MAX_EXPORT_BITMAPS], err = 0;
  unsigned n = meta_ids(j->conn, ids), i;
  const char *why = NULL;
  size_t used = 0;

  if (job_reserve(j, (size_t)n * BS_CHUNK_MAX) < 0) {
    reply_error(j, NBD_ENOMEM, "out of memory");
    return;
  }
  for (i = 0; i < n; i++) {
    size_t k = bs_chunk(j, ids[i], i == n - 1 ? NBD_REPLY_FLAG_DONE : 0,
                        j->buf + used, &err, &why);
    if (k == 0) {
      reply_error(j, err, why);
      return;
    }
    used += k;
  }
  j->iov[0].iov_base = j->buf;
  j->iov[0].iov_len = used;
  j->niov = 1;
  reply_submit(j);
}

/* CACHE: read the range through so that later reads are fast. */
static int do_cache(struct nbd_job *j)
{
  const struct nbd_request *req = &j->req;
  uint64_t pos = req->offset, end = req->offset + req->length;
  size_t chunk = j->cap;
  while (pos < end) {
    size_t n = end - pos < chunk ? (size_t)(end - pos) : chunk;
    int r = vd_node_pread(j->conn->node, j->buf, n, pos);
    if (r < 0)
      return r;
    pos += n;
  }
  return 0;
}

static void job_release(struct nbd_job *j)
{
  struct nbd_conn *c = j->conn;
  if (j->spliced)
    job_pipe_close(j);  /* the reply was not sent whole: stale bytes */
  if (j->cap > JOB_SMALL_BUF &&
      __atomic_load_n(&c->buf_bytes, __ATOMIC_RELAXED) > CONN_BUF_KEEP) {
    __atomic_sub_fetch(&c->buf_bytes, j->cap, __ATOMIC_RELAXED);
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

/* True if the LEN bytes at BUF are all zero. */
static bool buf_is_zero(const uint8_t *buf, size_t len)
{
  return len == 0 || (buf[0] == 0 && memcmp(buf, buf + 1, len - 1) == 0);
}

static bool flusher_submit(struct nbd_conn *c, struct nbd_job *j);

/* A FUA write: written by the caller, made durable by the flusher with
 * whatever else waits for a flush (the core would flush here, blocking
 * this worker: vd_pwrite's FUA is a write then a flush). */
static void write_fua(struct nbd_job *j, int r)
{
  if (r < 0 || !flusher_submit(j->conn, j)) {
    if (r == 0)
      r = vd_node_flush(j->conn->node);
    reply_engine(j, r);
  }
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
      reply_error(j, NBD_ENOMEM, "out of memory");
    else if (c->s.structured)
      do_read_structured(j);
    else
      do_read_simple(j);
    break;
  case NBD_CMD_WRITE:
    if (c->srv->writethrough)
      fua = VD_REQ_FUA;
    if (c->srv->detect_zeroes != NBD_DZ_OFF &&
        buf_is_zero(j->buf, req->length)) {
      /* --detect-zeroes: all-zero data is written as zeros, which may
       * free space (unmap) or at least skip the copy (on). */
      zf = fua | (c->srv->detect_zeroes == NBD_DZ_UNMAP &&
                  !c->srv->discard_ignore ? 0 : VD_REQ_NO_HOLE);
      reply_engine(j, vd_node_write_zeroes(c->node, req->offset, req->length,
                                           zf));
      break;
    }
    if (fua && !j->alone) {
      write_fua(j, vd_node_pwrite(c->node, j->buf, req->length,
                                  req->offset, 0));
      break;
    }
    reply_engine(j, vd_node_pwrite(c->node, j->buf, req->length, req->offset,
                                   fua));
    break;
  case NBD_CMD_FLUSH:
    reply_engine(j, vd_node_flush(c->node));
    break;
  case NBD_CMD_TRIM:
    if (c->srv->discard_ignore) {             /* --discard=ignore */
      reply_engine(j, 0);
      break;
    }
    r = vd_node_discard(c->node, req->offset, req->length, fua);
    reply_engine(j, r == -ENOTSUP ? 0 : r);   /* trim is advisory */
    break;
  case NBD_CMD_WRITE_ZEROES:
    zf = c->srv->writethrough ? VD_REQ_FUA : fua;
    if ((req->flags & NBD_CMD_FLAG_NO_HOLE) || c->srv->discard_ignore)
      zf |= VD_REQ_NO_HOLE;
    if (req->flags & NBD_CMD_FLAG_FAST_ZERO)
      zf |= VD_REQ_FAST_ZERO;
    reply_engine(j, vd_node_write_zeroes(c->node, req->offset, req->length,
                                         zf));
    break;
  case NBD_CMD_CACHE:
    if (job_reserve(j, req->length < (1u << 20) ? req->length : 1u << 20) < 0)
      reply_error(j, NBD_ENOMEM, "out of memory");
    else
      reply_engine(j, do_cache(j));
    break;
  case NBD_CMD_BLOCK_STATUS:
    do_block_status(j);
    break;
  default:  /* nbd_request_check let nothing else through */
    reply_error(j, NBD_EINVAL, "unknown command");
    break;
  }
}

/* ---- the flusher ---- */

/* Each flush taken covers every write answered before it was received:
 * the one vd_node_flush below starts after all of them were taken. */
static void *conn_flusher(void *arg)
{
  struct nbd_conn *c = arg;
  pthread_mutex_lock(&c->lock);
  for (;;) {
    while (!c->fq && !c->fstop)
      pthread_cond_wait(&c->fcond, &c->lock);
    struct nbd_job *list = c->fq;
    if (!list)
      break;
    c->fq = c->fq_tail = NULL;
    pthread_mutex_unlock(&c->lock);
    int r = vd_node_flush(c->node);
    while (list) {
      struct nbd_job *next = list->next;
      reply_engine(list, r);
      list = next;
    }
    pthread_mutex_lock(&c->lock);
  }
  pthread_mutex_unlock(&c->lock);
  return NULL;
}

/* Hand J (a FLUSH, or a FUA write already written) to the flusher, which
 * answers it after its flush; false if the flusher cannot start (the
 * caller then flushes itself). */
static bool flusher_submit(struct nbd_conn *c, struct nbd_job *j)
{
  j->next = NULL;
  pthread_mutex_lock(&c->lock);
  if (!c->flusher_on) {
    if (pthread_create(&c->flusher, NULL, conn_flusher, c) != 0) {
      pthread_mutex_unlock(&c->lock);
      return false;
    }
    c->flusher_on = true;
  }
  list_append(&c->fq, &c->fq_tail, j, j);
  pthread_cond_signal(&c->fcond);
  pthread_mutex_unlock(&c->lock);
  return true;
}

/* ---- the reader ---- */

static void batch_flush(struct nbd_conn *c)
{
  if (!c->nbatch)
    return;
  pool_push_list(c, c->batch, c->batch_tail, c->nbatch);
  c->batch = c->batch_tail = NULL;
  c->nbatch = 0;
}

static void batch_add(struct nbd_conn *c, struct nbd_job *j)
{
  j->next = NULL;
  if (c->batch_tail)
    c->batch_tail->next = j;
  else
    c->batch = j;
  c->batch_tail = j;
  if (++c->nbatch == 16)
    batch_flush(c);
}

static int64_t now_ns(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Fill the input buffer from the socket.  A connection with nothing in
 * flight waits for its client's next request; when that wait has been
 * short lately (a client at queue depth 1), the reader first polls the
 * socket for up to spin_ns instead of sleeping, so that neither side pays
 * a wake-up per request (qemu's iothreads poll the same way).  The window
 * doubles from SPIN_MIN_NS up to spin_max_ns (--poll-max-ns) while the
 * waits stay under spin_max_ns and drops to none after a longer one: an
 * idle client costs one window.  At most half the CPUs (at least one
 * reader) poll at once.  Not under TLS (GnuTLS reads its records). */
static ssize_t rd_fill(struct nbd_conn *c)
{
  bool idle = false;
  int64_t t0 = 0;
  ssize_t r = -1;

  if (spin_max_ns && !c->io->tls) {
    pthread_mutex_lock(&c->lock);
    idle = c->inflight == 0;
    pthread_mutex_unlock(&c->lock);
  }
  if (idle) {
    t0 = now_ns();
    if (c->spin_ns && __atomic_add_fetch(&spinners, 1, __ATOMIC_RELAXED) <=
                          spinners_max) {
      do
        r = recv(c->io->fd, c->rbuf, RBUF_SIZE, MSG_DONTWAIT);
      while (r < 0 && (errno == EAGAIN || errno == EINTR) &&
             now_ns() - t0 < c->spin_ns);
    }
    if (c->spin_ns)
      __atomic_sub_fetch(&spinners, 1, __ATOMIC_RELAXED);
  }
  if (r < 0)
    r = c->io->recv(c->io, c->rbuf, RBUF_SIZE);
  if (idle) {
    int64_t waited = now_ns() - t0;
    c->spin_ns = waited > spin_max_ns ? 0
                 : !c->spin_ns ? SPIN_MIN_NS
                 : c->spin_ns * 2 < spin_max_ns ? c->spin_ns * 2
                 : spin_max_ns;
  }
  return r;
}

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
    batch_flush(c);               /* about to block: start the work */
    if (len >= RBUF_SIZE) {       /* big payloads go straight in */
      r = c->io->recv(c->io, p, len);
      if (r <= 0)
        return -1;
      p += r;
      len -= (size_t)r;
      continue;
    }
    r = rd_fill(c);
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
  if (c->inflight >= CONN_MAX_INFLIGHT ||
      (c->inflight && c->inflight_bytes + cost > CONN_BYTE_BUDGET)) {
    pthread_mutex_unlock(&c->lock);
    batch_flush(c);               /* the batch may hold what frees room */
    pthread_mutex_lock(&c->lock);
  }
  while (c->inflight >= CONN_MAX_INFLIGHT ||
         (c->inflight && c->inflight_bytes + cost > CONN_BYTE_BUDGET))
    pthread_cond_wait(&c->cond, &c->lock);
  j = c->free_jobs;
  if (j)
    c->free_jobs = j->next;
  else
    j = calloc(1, sizeof *j);
  if (j) {
    j->alone = c->inflight == 0;
    c->inflight++;
    c->inflight_bytes += cost;
  }
  pthread_mutex_unlock(&c->lock);
  if (j) {
    j->conn = c;
    j->cost = cost;
    j->niov = j->iov_pos = 0;
    j->spliced = 0;
  }
  return j;
}

/* True if the reader should run J itself instead of handing it to the
 * pool (or the flusher): a small READ, a WRITE (no FUA) of up to
 * INLINE_WRITE_MAX, or a FLUSH, of a connection with nothing else in
 * flight, queued or received.  That is a client waiting for each reply
 * before its next request (queue depth 1), which then pays no thread
 * hand-off.  Larger reads go to the pool, where they may be spliced
 * (the writer thread sends those); so do larger writes, so that a
 * pipelined request behind one waits at most a 4 MiB write.  1 MiB
 * sequential writes at queue depth 1: +12-28% (bench/README.md, session
 * 14). */
static bool run_inline(const struct nbd_conn *c, const struct nbd_job *j)
{
  const struct nbd_request *req = &j->req;
  return j->alone && !c->nbatch && c->rpos == c->rlen &&
         (req->type == NBD_CMD_FLUSH ||
          (req->type == NBD_CMD_READ && req->length <= INLINE_MAX) ||
          (req->type == NBD_CMD_WRITE && !(req->flags & NBD_CMD_FLAG_FUA) &&
           !c->srv->writethrough && req->length <= INLINE_WRITE_MAX));
}

/* Answer REQ with an error from the reader.  Returns -1 if impossible. */
static int reader_error(struct nbd_conn *c, const struct nbd_request *req,
                        uint32_t err, const char *msg)
{
  struct nbd_job *j = job_get(c, 0);
  if (!j)
    return -1;
  j->req = *req;
  reply_error(j, err, msg);
  return 0;
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
  c->node = s->exp->node;
  c->ctx.size = s->exp->size;
  c->ctx.eflags = s->eflags;
  c->ctx.structured = s->structured;
  c->ctx.meta_any = nbd_meta_sel_any(&s->meta);
  c->ctx.max_payload = s->exp->max_block;
  pthread_mutex_init(&c->wlock, NULL);
  pthread_cond_init(&c->wcond, NULL);
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->cond, NULL);
  pthread_cond_init(&c->fcond, NULL);
  if (pthread_create(&c->writer, NULL, conn_writer, c) != 0) {
    nbd_log("cannot start a writer thread: client dropped");
    goto out;
  }

  for (;;) {
    uint8_t hdr[NBD_REQUEST_LEN];
    struct nbd_request req;
    const char *why;
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
    err = nbd_request_check(&req, &c->ctx, &why);
    if (err == 0 && req.type == NBD_CMD_DISC)
      break;

    if (err) {
      /* Answered here; a write's payload is consumed to stay in sync. */
      if ((nbd_request_has_payload(&req) && rd_discard(c, req.length) < 0) ||
          reader_error(c, &req, err, why) < 0)
        break;
      continue;
    }

    /* CACHE reads like READ: it is charged the same, so that a client
     * cannot queue more work than its budget. */
    bool costly = req.type == NBD_CMD_READ || req.type == NBD_CMD_WRITE ||
                  req.type == NBD_CMD_CACHE;
    j = job_get(c, costly ? req.length : 0);
    if (!j) {
      nbd_log("out of memory: client dropped");
      break;
    }
    j->req = req;
    if (nbd_request_has_payload(&req)) {
      if (job_reserve(j, req.length) < 0) {
        if (rd_discard(c, req.length) < 0) {
          job_release(j);
          break;
        }
        reply_error(j, NBD_ENOMEM, "out of memory");
        continue;
      }
      if (rd_full(c, j->buf, req.length) < 0) {
        job_release(j);
        break;
      }
    }
    bool inl = run_inline(c, j);
    if (!inl && req.type == NBD_CMD_FLUSH && flusher_submit(c, j))
      continue;
    if (inl)
      job_run(j);
    else
      batch_add(c, j);
  }
  batch_flush(c);

  /* Every queued request is answered before the connection closes. */
  pthread_mutex_lock(&c->lock);
  while (c->inflight)
    pthread_cond_wait(&c->cond, &c->lock);
  c->fstop = true;
  pthread_cond_signal(&c->fcond);
  bool flusher = c->flusher_on;
  pthread_mutex_unlock(&c->lock);
  if (flusher)
    pthread_join(c->flusher, NULL);
  pthread_mutex_lock(&c->wlock);
  c->closing = true;
  pthread_cond_signal(&c->wcond);
  pthread_mutex_unlock(&c->wlock);
  pthread_join(c->writer, NULL);
out:
  while ((j = c->free_jobs) != NULL) {
    c->free_jobs = j->next;
    job_pipe_close(j);
    free(j->buf);
    free(j);
  }
  pthread_cond_destroy(&c->fcond);
  pthread_cond_destroy(&c->cond);
  pthread_mutex_destroy(&c->lock);
  pthread_cond_destroy(&c->wcond);
  pthread_mutex_destroy(&c->wlock);
  free(c);
}
