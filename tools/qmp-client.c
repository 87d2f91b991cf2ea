/* A small QMP client: see qmp-client.h.  Messages are JSON objects, one
 * per line (the server ends each with CRLF). */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "tools/qmp-client.h"

#define QMP_TIMEOUT_MS 60000    /* a reply to one command */
#define QMP_MAX_LINE (16u << 20)

struct vt_qmp {
  int fd;
  char *path;
  char *buf;                    /* bytes read, not yet a whole line */
  size_t len, cap;
  json_t *events;               /* events read while waiting for a reply */
};

static int qmp_err(char *msg, size_t len, int err, const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));
static int qmp_err(char *msg, size_t len, int err, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, len, fmt, ap);
  va_end(ap);
  return -err;
}

static long long qmp_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The next message, waiting at most TIMEOUT_MS: 1 with *OUT, 0 on
 * timeout, -errno (message set). */
static int qmp_read(struct vt_qmp *q, int timeout_ms, json_t **out, char *msg,
                    size_t msglen)
{
  long long deadline = qmp_now_ms() + timeout_ms;
  for (;;) {
    char *nl = q->len ? memchr(q->buf, '\n', q->len) : NULL;
    if (nl) {
      size_t l = (size_t)(nl - q->buf) + 1;
      json_error_t je;
      json_t *m = json_loadb(q->buf, l, 0, &je);
      memmove(q->buf, q->buf + l, q->len - l);
      q->len -= l;
      if (!m || !json_is_object(m)) {
        json_decref(m);
        return qmp_err(msg, msglen, EPROTO, "%s: malformed message from the "
                       "server", q->path);
      }
      *out = m;
      return 1;
    }
    if (q->len >= QMP_MAX_LINE)
      return qmp_err(msg, msglen, EPROTO, "%s: message too long", q->path);
    long long left = deadline - qmp_now_ms();
    if (left <= 0)
      return 0;
    struct pollfd p = { .fd = q->fd, .events = POLLIN };
    int r = poll(&p, 1, (int)left);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return qmp_err(msg, msglen, errno, "%s: %s", q->path, strerror(errno));
    if (r == 0)
      return 0;
    if (q->cap - q->len < 65536) {
      char *nb = realloc(q->buf, q->cap + 65536);
      if (!nb)
        return qmp_err(msg, msglen, ENOMEM, "out of memory");
      q->buf = nb;
      q->cap += 65536;
    }
    ssize_t n = read(q->fd, q->buf + q->len, q->cap - q->len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return qmp_err(msg, msglen, errno, "%s: %s", q->path, strerror(errno));
    if (n == 0)
      return qmp_err(msg, msglen, ECONNRESET, "%s: the server closed the "
                     "connection", q->path);
    q->len += (size_t)n;
  }
}

static int qmp_send(struct vt_qmp *q, json_t *req, char *msg, size_t msglen)
{
  char *text = json_dumps(req, JSON_COMPACT);
  if (!text)
    return qmp_err(msg, msglen, ENOMEM, "out of memory");
  size_t l = strlen(text), off = 0;
  text[l++] = '\n';             /* json_dumps left room: its NUL */
  int r = 0;
  while (off < l) {
    ssize_t n = send(q->fd, text + off, l - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      r = qmp_err(msg, msglen, errno, "%s: %s", q->path, strerror(errno));
      break;
    }
    off += (size_t)n;
  }
  free(text);
  return r;
}

int vt_qmp_execute(struct vt_qmp *q, const char *name, json_t *args,
                   json_t **ret, char *cls, char *msg, size_t msglen)
{
  json_t *req = json_pack("{s:s}", "execute", name);
  if (!req) {
    json_decref(args);
    return qmp_err(msg, msglen, ENOMEM, "out of memory");
  }
  if (args)
    json_object_set_new(req, "arguments", args);
  int r = qmp_send(q, req, msg, msglen);
  json_decref(req);
  if (r < 0)
    return r;
  for (;;) {
    json_t *m = NULL;
    r = qmp_read(q, QMP_TIMEOUT_MS, &m, msg, msglen);
    if (r == 0)
      return qmp_err(msg, msglen, ETIMEDOUT, "%s: no answer to %s within "
                     "%d s", q->path, name, QMP_TIMEOUT_MS / 1000);
    if (r < 0)
      return r;
    if (json_object_get(m, "event")) {
      json_array_append_new(q->events, m);
      continue;
    }
    json_t *err = json_object_get(m, "error");
    if (err) {
      const char *d = json_string_value(json_object_get(err, "desc"));
      const char *c = json_string_value(json_object_get(err, "class"));
      snprintf(msg, msglen, "%s", d ? d : "error without a description");
      if (cls)
        snprintf(cls, 32, "%s", c ? c : "GenericError");
      json_decref(m);
      return -1;
    }
    json_t *rv = json_object_get(m, "return");
    if (!rv) {
      json_decref(m);
      return qmp_err(msg, msglen, EPROTO, "%s: unexpected message from the "
                     "server", q->path);
    }
    if (ret)
      *ret = json_incref(rv);
    json_decref(m);
    return 0;
  }
}

int vt_qmp_event(struct vt_qmp *q, int timeout_ms, json_t **ev, char *msg,
                 size_t msglen)
{
  if (json_array_size(q->events)) {
    *ev = json_incref(json_array_get(q->events, 0));
    json_array_remove(q->events, 0);
    return 1;
  }
  long long deadline = qmp_now_ms() + timeout_ms;
  for (;;) {
    json_t *m = NULL;
    long long left = deadline - qmp_now_ms();
    int r = qmp_read(q, left > 0 ? (int)left : 0, &m, msg, msglen);
    if (r <= 0)
      return r;
    if (json_object_get(m, "event")) {
      *ev = m;
      return 1;
    }
    json_decref(m);             /* a stray reply: not ours to wait for */
  }
}

int vt_qmp_connect(const char *path, struct vt_qmp **out, char *msg,
                   size_t msglen)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  *out = NULL;
  if (strlen(path) >= sizeof sa.sun_path)
    return qmp_err(msg, msglen, ENAMETOOLONG, "%s: socket path too long",
                   path);
  strcpy(sa.sun_path, path);
  struct vt_qmp *q = calloc(1, sizeof *q);
  if (!q || !(q->path = strdup(path)) || !(q->events = json_array())) {
    vt_qmp_close(q);
    return qmp_err(msg, msglen, ENOMEM, "out of memory");
  }
  q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (q->fd < 0 || connect(q->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int e = errno;
    vt_qmp_close(q);
    return qmp_err(msg, msglen, e, "%s: cannot connect: %s", path,
                   strerror(e));
  }
  json_t *g = NULL;
  int r = qmp_read(q, QMP_TIMEOUT_MS, &g, msg, msglen);
  if (r == 0)
    r = qmp_err(msg, msglen, ETIMEDOUT, "%s: no greeting", path);
  if (r > 0 && !json_object_get(g, "QMP")) {
    /* A refusal (another uid, too many clients) comes as an error. */
    json_t *err = json_object_get(g, "error");
    const char *d = err ? json_string_value(json_object_get(err, "desc"))
                        : NULL;
    r = qmp_err(msg, msglen, EPROTO, "%s: %s", path,
                d ? d : "not a QMP server");
  }
  json_decref(g);
  if (r >= 0)
    r = vt_qmp_execute(q, "qmp_capabilities", NULL, NULL, NULL, msg, msglen);
  if (r == -1)
    r = -EPROTO;
  if (r < 0) {
    vt_qmp_close(q);
    return r;
  }
  *out = q;
  return 0;
}

void vt_qmp_close(struct vt_qmp *q)
{
  if (!q)
    return;
  if (q->fd > 0)
    close(q->fd);
  json_decref(q->events);
  free(q->buf);
  free(q->path);
  free(q);
}
