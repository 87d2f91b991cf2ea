/* vdisk-nbd — transport helpers and logging. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"

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

static ssize_t sock_recv(struct nbd_io *io, void *buf, size_t len)
{
  ssize_t r;
  do
    r = recv(io->fd, buf, len, 0);
  while (r < 0 && errno == EINTR);
  return r < 0 ? -1 : r;
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
    w = sendmsg(io->fd, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
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
