/* vdisk-nbd — transport helpers and logging.
 *
 * While a connection negotiates, io->deadline bounds every receive and
 * send on its socket (plain or under TLS): the socket is polled for at
 * most the time left, then used without blocking, so the whole handshake
 * ends by the deadline however the client trickles its bytes.
 */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "nbd-server/server.h"

int nbd_verbose;

void nbd_log(const char *fmt, ...)
{
  char msg[1024];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "vdisk-nbd: %s\n", msg);
}

int64_t nbd_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool nbd_io_expired(const struct nbd_io *io)
{
  return io->deadline && nbd_now_ms() >= io->deadline;
}

/* Wait until FD is ready for EVENTS, at most MS milliseconds (-1: no
 * limit of its own) and never past the deadline.  1 ready, 0 timed out
 * (errno ETIMEDOUT), -1 error. */
static int sock_poll(struct nbd_io *io, short events, int ms)
{
  for (;;) {
    struct pollfd pfd = { .fd = io->fd, .events = events };
    int wait = ms, r;
    if (io->deadline) {
      int64_t left = io->deadline - nbd_now_ms();
      if (left <= 0) {
        errno = ETIMEDOUT;
        return 0;
      }
      if (wait < 0 || left < wait)
        wait = left > 1000000 ? 1000000 : (int)left;
    }
    r = poll(&pfd, 1, wait);
    if (r > 0)
      return 1;
    if (r == 0) {
      if (io->deadline || ms >= 0) {
        errno = ETIMEDOUT;
        return 0;
      }
      continue;
    }
    if (errno != EINTR)
      return -1;
  }
}

int nbd_io_sock_wait(struct nbd_io *io, int ms)
{
  return sock_poll(io, POLLIN, ms);
}

ssize_t nbd_io_sock_recv(struct nbd_io *io, void *buf, size_t len)
{
  for (;;) {
    ssize_t r;
    if (io->deadline && sock_poll(io, POLLIN, -1) <= 0)
      return -1;
    r = recv(io->fd, buf, len, io->deadline ? MSG_DONTWAIT : 0);
    if (r >= 0)
      return r;
    if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
      return -1;
    if (!io->deadline && errno != EINTR)
      return -1;      /* a blocking socket said EAGAIN: give up */
  }
}

ssize_t nbd_io_sock_send(struct nbd_io *io, const void *buf, size_t len)
{
  for (;;) {
    ssize_t w;
    if (io->deadline && sock_poll(io, POLLOUT, -1) <= 0)
      return -1;
    w = send(io->fd, buf, len,
             MSG_NOSIGNAL | (io->deadline ? MSG_DONTWAIT : 0));
    if (w >= 0)
      return w;
    if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
      return -1;
    if (!io->deadline && errno != EINTR)
      return -1;
  }
}

static ssize_t sock_recv(struct nbd_io *io, void *buf, size_t len)
{
  return nbd_io_sock_recv(io, buf, len);
}

static int sock_sendv(struct nbd_io *io, const struct iovec *iov_in, int n)
{
  struct iovec iov[64];
  struct msghdr msg = { .msg_iov = iov };
  int i, first = 0;

  if (n > 64)
    return -1;
  for (i = 0; i < n; i++)
    iov[i] = iov_in[i];
  while (first < n) {
    ssize_t w;
    msg.msg_iov = iov + first;
    msg.msg_iovlen = (size_t)(n - first);
    if (io->deadline && sock_poll(io, POLLOUT, -1) <= 0)
      return -1;
    w = sendmsg(io->fd, &msg,
                MSG_NOSIGNAL | (io->deadline ? MSG_DONTWAIT : 0));
    if (w < 0) {
      if (errno == EINTR ||
          (io->deadline && (errno == EAGAIN || errno == EWOULDBLOCK)))
        continue;
      return -1;
    }
    while (first < n && (size_t)w >= iov[first].iov_len) {
      w -= (ssize_t)iov[first].iov_len;
      first++;
    }
    if (first < n) {
      iov[first].iov_base = (char *)iov[first].iov_base + w;
      iov[first].iov_len -= (size_t)w;
    }
  }
  return 0;
}

void nbd_io_init_socket(struct nbd_io *io, int fd)
{
  io->recv = sock_recv;
  io->sendv = sock_sendv;
  io->fd = fd;
  io->tls = NULL;
  io->deadline = 0;
}

int nbd_io_recv_full(struct nbd_io *io, void *buf, size_t len)
{
  char *p = buf;
  while (len) {
    ssize_t r = io->recv(io, p, len);
    if (r <= 0)
      return -1;
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

int nbd_io_discard(struct nbd_io *io, uint64_t len)
{
  char buf[65536];
  while (len) {
    size_t n = len < sizeof buf ? (size_t)len : sizeof buf;
    if (nbd_io_recv_full(io, buf, n) < 0)
      return -1;
    len -= n;
  }
  return 0;
}

int nbd_io_send(struct nbd_io *io, const void *buf, size_t len)
{
  struct iovec iov = { (void *)buf, len };
  return io->sendv(io, &iov, 1);
}
