/* server.c: the control socket: the control thread, clients (peer check,
 * limits), message framing, outgoing queues, events, and the registries
 * of commands and devices.
 *
 * One control thread polls the listening socket, every client and a wake
 * pipe.  It reads, frames and answers messages itself (qmp.c), so
 * commands run one at a time.  Replies and events are queued per client
 * and written by the control thread when the socket accepts them;
 * vc_event only queues and wakes it, so a slow client never blocks a job
 * thread; a client whose queue passes VC_MAX_QUEUE is dropped.
 *
 * Framing: a message is one JSON value; objects and arrays end at their
 * closing bracket (strings and escapes are tracked), anything else at the
 * next white space (it is an error anyway: QMP takes objects).  This is
 * how QEMU's JSON streamer splits input, so clients need not end their
 * messages with a newline. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/control/internal.h"

struct vc_out {
  struct vc_out *next;
  size_t len, off;
  char data[];
};

struct vc_client {
  struct vc_client *next;
  int fd;
  bool caps;                  /* s->lock: past qmp_capabilities */
  bool dead;                  /* s->lock: drop at the next loop */
  struct vc_out *out_head, *out_tail;   /* s->lock */
  size_t out_bytes;           /* s->lock */
  /* Input, control thread only. */
  char *in;
  size_t in_len, in_cap;
  size_t scan;                /* bytes of in already scanned */
  size_t start;               /* start of the current message in in */
  int depth;                  /* brackets open */
  bool token;                 /* inside a message */
  bool scalar;                /* ... that is not an object or array */
  bool str, esc;              /* inside a string, after a backslash */
};

static __thread char last_error[512];

const char *vc_last_error(void)
{
  return last_error;
}

void vc_error_set(struct vc_error *e, const char *cls, const char *fmt, ...)
{
  va_list ap;
  if (!e)
    return;
  snprintf(e->cls, sizeof e->cls, "%s", cls);
  va_start(ap, fmt);
  vsnprintf(e->desc, sizeof e->desc, fmt, ap);
  va_end(ap);
}

static void wake(struct vc_server *s)
{
  char c = 'w';
  if (write(s->wake[1], &c, 1) < 0) {
    /* full: a wake-up is pending anyway */
  }
}

/* Queue TEXT (LEN bytes plus a newline) to C; drops C on overflow. */
static void queue_locked(struct vc_client *c, const char *text, size_t len)
{
  struct vc_out *o;
  if (c->dead)
    return;
  if (c->out_bytes + len + 1 > VC_MAX_QUEUE || !(o = malloc(sizeof *o + len + 1))) {
    c->dead = true;
    return;
  }
  memcpy(o->data, text, len);
  o->data[len] = '\n';
  o->len = len + 1;
  o->off = 0;
  o->next = NULL;
  if (c->out_tail)
    c->out_tail->next = o;
  else
    c->out_head = o;
  c->out_tail = o;
  c->out_bytes += o->len;
}

static char *dump(json_t *msg)
{
  return json_dumps(msg, JSON_COMPACT | JSON_ENSURE_ASCII);
}

static void send_to(struct vc_server *s, struct vc_client *c, json_t *msg)
{
  char *text = dump(msg);
  pthread_mutex_lock(&s->lock);
  if (text)
    queue_locked(c, text, strlen(text));
  else
    c->dead = true;
  pthread_mutex_unlock(&s->lock);
  free(text);
}

void vc_broadcast(struct vc_server *s, json_t *msg)
{
  char *text = dump(msg);
  if (!text)
    return;
  pthread_mutex_lock(&s->lock);
  for (struct vc_client *c = s->clients; c; c = c->next)
    if (c->caps)
      queue_locked(c, text, strlen(text));
  pthread_mutex_unlock(&s->lock);
  free(text);
  wake(s);
}

void vc_event(struct vc_server *s, const char *name, json_t *data)
{
  struct timeval tv;
  json_t *msg;
  if (!s) {
    json_decref(data);
    return;
  }
  gettimeofday(&tv, NULL);
  msg = json_pack("{s:s, s:o, s:{s:I, s:I}}", "event", name,
                  "data", data ? data : json_object(),
                  "timestamp", "seconds", (json_int_t)tv.tv_sec,
                  "microseconds", (json_int_t)tv.tv_usec);
  if (!msg)
    return;
  if (s->event_hook)
    s->event_hook(s->event_hook_opaque, msg);
  vc_broadcast(s, msg);
  json_decref(msg);
}

/* ---- clients ---- */

/* Best effort, for a peer we refuse: one small message, never blocking. */
static void refuse(int fd, const char *cls, const char *desc)
{
  json_t *m = vc_error_reply(cls, desc, NULL);
  char *text = m ? dump(m) : NULL;
  if (text) {
    size_t len = strlen(text);
    text[len] = '\n';   /* replaces the terminator; sent by length */
    if (send(fd, text, len + 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
      /* the peer is gone or not reading: nothing more to do */
    }
  }
  free(text);
  json_decref(m);
  close(fd);
}

/* Accept one client.  False when the process is out of descriptors or
 * memory for it: the peer stays in the backlog and the caller waits before
 * trying again (the listening socket stays readable: trying at once would
 * spin). */
static bool accept_client(struct vc_server *s)
{
  struct ucred cred;
  socklen_t len = sizeof cred;
  struct vc_client *c;
  json_t *greeting;
  int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

  if (fd < 0)
    return errno != EMFILE && errno != ENFILE && errno != ENOBUFS &&
           errno != ENOMEM;
  /* The socket is 0600, but a folder ACL or a renamed path could still
   * let somebody in: only our user and root may drive us. */
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
      (cred.uid != geteuid() && cred.uid != 0)) {
    refuse(fd, "GenericError",
           "permission denied: the control socket serves only its owner "
           "and root");
    return true;
  }
  pthread_mutex_lock(&s->lock);
  if (s->nclients >= VC_MAX_CLIENTS) {
    pthread_mutex_unlock(&s->lock);
    refuse(fd, "GenericError", "too many clients (at most 16)");
    return true;
  }
  c = calloc(1, sizeof *c);
  if (!c) {
    pthread_mutex_unlock(&s->lock);
    close(fd);
    return true;
  }
  c->fd = fd;
  c->next = s->clients;
  s->clients = c;
  s->nclients++;
  pthread_mutex_unlock(&s->lock);
  greeting = vc_greeting(s);
  if (greeting) {
    send_to(s, c, greeting);
  } else {
    pthread_mutex_lock(&s->lock);
    c->dead = true;
    pthread_mutex_unlock(&s->lock);
  }
  json_decref(greeting);
  return true;
}

static void free_client(struct vc_server *s, struct vc_client *c)
{
  pthread_mutex_lock(&s->lock);
  for (struct vc_client **p = &s->clients; *p; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      break;
    }
  s->nclients--;
  pthread_mutex_unlock(&s->lock);
  close(c->fd);
  while (c->out_head) {
    struct vc_out *o = c->out_head;
    c->out_head = o->next;
    free(o);
  }
  free(c->in);
  free(c);
}

/* Write what C's socket takes now.  False if C must be dropped. */
static bool flush_client(struct vc_server *s, struct vc_client *c)
{
  bool ok = true;
  pthread_mutex_lock(&s->lock);
  while (c->out_head) {
    struct vc_out *o = c->out_head;
    ssize_t n = send(c->fd, o->data + o->off, o->len - o->off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        ok = false;
      break;
    }
    o->off += (size_t)n;
    c->out_bytes -= (size_t)n;
    if (o->off < o->len)
      break;
    c->out_head = o->next;
    if (!c->out_head)
      c->out_tail = NULL;
    free(o);
  }
  if (c->dead)
    ok = false;
  pthread_mutex_unlock(&s->lock);
  return ok;
}

/* One framed message is in c->in[start, end): parse and answer it. */
static void handle(struct vc_server *s, struct vc_client *c, size_t end)
{
  json_error_t jerr;
  json_t *req, *reply;
  bool caps;
  char why[256] = "";

  req = json_loadb(c->in + c->start, end - c->start,
                   JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
  if (!req)
    snprintf(why, sizeof why, "JSON parse error, %s", jerr.text);
  pthread_mutex_lock(&s->lock);
  caps = c->caps;
  pthread_mutex_unlock(&s->lock);
  reply = vc_handle_message(s, req, why, &caps);
  pthread_mutex_lock(&s->lock);
  c->caps = caps;
  pthread_mutex_unlock(&s->lock);
  if (reply)
    send_to(s, c, reply);
  json_decref(reply);
  json_decref(req);
}

static bool is_space(char ch)
{
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

/* Split the bytes read so far into messages; see the framing above. */
static void scan_input(struct vc_server *s, struct vc_client *c)
{
  for (; c->scan < c->in_len; c->scan++) {
    char ch = c->in[c->scan];
    size_t end = 0;
    if (!c->token) {
      if (is_space(ch)) {
        c->start = c->scan + 1;
        continue;
      }
      c->token = true;
      c->scalar = !(ch == '{' || ch == '[');
      c->depth = c->scalar ? 0 : 1;
      if (ch == '}' || ch == ']')
        end = c->scan + 1;            /* a stray closer: its own message */
    } else if (c->scalar) {
      if (is_space(ch))
        end = c->scan;
    } else if (c->str) {
      if (c->esc)
        c->esc = false;
      else if (ch == '\\')
        c->esc = true;
      else if (ch == '"')
        c->str = false;
    } else if (ch == '"') {
      c->str = true;
    } else if (ch == '{' || ch == '[') {
      c->depth++;
    } else if ((ch == '}' || ch == ']') && --c->depth == 0) {
      end = c->scan + 1;
    }
    if (end) {
      handle(s, c, end);
      c->token = c->scalar = c->str = c->esc = false;
      c->start = end;
    }
  }
  /* Keep only the unfinished message. */
  if (c->start > 0) {
    memmove(c->in, c->in + c->start, c->in_len - c->start);
    c->in_len -= c->start;
    c->scan -= c->start;
    c->start = 0;
  }
}

/* Read what C sent (one recv per wake-up, so that a chatty client
 * cannot starve the others).  False if C must be dropped (closed, error,
 * a message longer than VC_MAX_MESSAGE). */
static bool read_client(struct vc_server *s, struct vc_client *c)
{
  ssize_t n;
  if (c->in_cap - c->in_len < 65536) {
    size_t cap = c->in_cap ? c->in_cap * 2 : 65536;
    char *p = realloc(c->in, cap);
    if (!p)
      return false;
    c->in = p;
    c->in_cap = cap;
  }
  n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
  if (n == 0)
    return false;
  if (n < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  c->in_len += (size_t)n;
  scan_input(s, c);
  if (c->in_len > VC_MAX_MESSAGE) {
    json_t *m = vc_error_reply("GenericError",
                               "message longer than 1 MiB: closing", NULL);
    send_to(s, c, m);
    json_decref(m);
    flush_client(s, c);
    return false;
  }
  return true;
}

static void *control_thread(void *arg)
{
  struct vc_server *s = arg;
  struct pollfd *pfd = NULL;
  struct vc_client **who = NULL;

  pfd = calloc(VC_MAX_CLIENTS + 2, sizeof *pfd);
  who = calloc(VC_MAX_CLIENTS + 2, sizeof *who);
  if (!pfd || !who)
    goto out;
  bool starved = false;           /* out of descriptors: accept_client */
  for (;;) {
    size_t n = 0;
    pthread_mutex_lock(&s->lock);
    if (s->stopping) {
      pthread_mutex_unlock(&s->lock);
      break;
    }
    pfd[n++] = (struct pollfd){ .fd = s->wake[0], .events = POLLIN };
    pfd[n++] = (struct pollfd){ .fd = s->listen_fd,
                                .events = starved ? 0 : POLLIN };
    for (struct vc_client *c = s->clients; c; c = c->next) {
      who[n] = c;
      pfd[n++] = (struct pollfd){
        .fd = c->fd,
        .events = (short)(POLLIN | (c->out_head || c->dead ? POLLOUT : 0)) };
    }
    pthread_mutex_unlock(&s->lock);
    /* Starved: try again in 100 ms. */
    int pr = poll(pfd, n, starved ? 100 : -1);
    starved = false;
    if (pr < 0)
      continue;
    if (pfd[0].revents) {
      char buf[64];
      while (read(s->wake[0], buf, sizeof buf) > 0)
        ;
    }
    for (size_t i = 2; i < n; i++) {
      struct vc_client *c = who[i];
      bool ok = true;
      if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
        ok = read_client(s, c);
      if (ok)
        ok = flush_client(s, c);
      if (!ok)
        free_client(s, c);
    }
    if (pfd[1].revents & POLLIN)
      starved = !accept_client(s);
    /* Clients that got output after poll: write it now. */
    pthread_mutex_lock(&s->lock);
    for (struct vc_client *c = s->clients, *next; c; c = next) {
      next = c->next;
      if (c->out_head || c->dead) {
        pthread_mutex_unlock(&s->lock);
        if (!flush_client(s, c))
          free_client(s, c);
        pthread_mutex_lock(&s->lock);
      }
    }
    pthread_mutex_unlock(&s->lock);
  }
out:
  /* Last words (events of the shutdown) if the sockets take them. */
  while (s->clients) {
    flush_client(s, s->clients);
    free_client(s, s->clients);
  }
  free(pfd);
  free(who);
  return NULL;
}

/* ---- registries ---- */

int vc_command_register(struct vc_server *s, const char *name, vc_cmd_fn fn,
                        void *opaque)
{
  struct vc_command *c;
  int r = 0;
  pthread_mutex_lock(&s->lock);
  for (c = s->commands; c; c = c->next)
    if (strcmp(c->name, name) == 0) {
      r = -EEXIST;
      goto out;
    }
  c = calloc(1, sizeof *c);
  if (!c || !(c->name = strdup(name))) {
    free(c);
    r = -ENOMEM;
    goto out;
  }
  c->fn = fn;
  c->opaque = opaque;
  c->next = s->commands;
  s->commands = c;
out:
  pthread_mutex_unlock(&s->lock);
  return r;
}

int vc_device_add(struct vc_server *s, const char *name, struct vd_node *node)
{
  struct vc_device *d;
  int r = 0;
  if (!name || !*name || !node)
    return -EINVAL;
  pthread_mutex_lock(&s->lock);
  for (d = s->devices; d; d = d->next)
    if (strcmp(d->name, name) == 0) {
      r = -EEXIST;
      goto out;
    }
  d = calloc(1, sizeof *d);
  if (!d || !(d->name = strdup(name))) {
    free(d);
    r = -ENOMEM;
    goto out;
  }
  d->node = node;
  /* Appended: query-block lists devices in the order they were added. */
  struct vc_device **p = &s->devices;
  while (*p)
    p = &(*p)->next;
  *p = d;
out:
  pthread_mutex_unlock(&s->lock);
  return r;
}

void vc_device_remove(struct vc_server *s, const char *name)
{
  pthread_mutex_lock(&s->lock);
  for (struct vc_device **p = &s->devices; *p; p = &(*p)->next)
    if (strcmp((*p)->name, name) == 0) {
      struct vc_device *d = *p;
      *p = d->next;
      free(d->name);
      free(d);
      break;
    }
  pthread_mutex_unlock(&s->lock);
}

struct vd_node *vc_device_find(struct vc_server *s, const char *name)
{
  struct vd_node *node = NULL;
  if (!name)
    return NULL;
  pthread_mutex_lock(&s->lock);
  for (struct vc_device *d = s->devices; d; d = d->next)
    if (strcmp(d->name, name) == 0) {
      node = d->node;
      break;
    }
  pthread_mutex_unlock(&s->lock);
  return node;
}

/* ---- start and stop ---- */

static void server_free(struct vc_server *s)
{
  while (s->commands) {
    struct vc_command *c = s->commands;
    s->commands = c->next;
    free(c->name);
    free(c);
  }
  while (s->devices) {
    struct vc_device *d = s->devices;
    s->devices = d->next;
    free(d->name);
    free(d);
  }
  if (s->listen_fd >= 0)
    close(s->listen_fd);
  vc_own_file_remove(&s->own);
  for (int i = 0; i < 2; i++)
    if (s->wake[i] >= 0)
      close(s->wake[i]);
  pthread_mutex_destroy(&s->cmd_lock);
  pthread_mutex_destroy(&s->lock);
  pthread_mutex_destroy(&s->jobs_lock);
  pthread_cond_destroy(&s->jobs_cond);
  free(s->program);
  free(s);
}

int vc_server_start(const char *path, const char *program,
                    struct vc_server **out)
{
  struct vc_server *s = calloc(1, sizeof *s);
  int r;

  last_error[0] = 0;
  if (!s || !(s->program = strdup(program ? program : "vdisk"))) {
    free(s);
    snprintf(last_error, sizeof last_error, "%s: out of memory", path);
    return -ENOMEM;
  }
  s->listen_fd = -1;
  s->wake[0] = s->wake[1] = -1;
  pthread_mutex_init(&s->cmd_lock, NULL);
  pthread_mutex_init(&s->lock, NULL);
  pthread_mutex_init(&s->jobs_lock, NULL);
  /* The job throttle waits with CLOCK_MONOTONIC deadlines (jobs.c). */
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->jobs_cond, &ca);
  pthread_condattr_destroy(&ca);
  if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
    r = -errno;
    snprintf(last_error, sizeof last_error, "%s: pipe: %s", path,
             strerror(errno));
    goto fail;
  }
  r = vc_commands_register_generic(s);
  if (r == 0)
    r = vc_jobs_register_commands(s);
  if (r == 0)
    r = vc_snapshot_register_commands(s);
  if (r == 0)
    r = vc_mirror_register_commands(s);
  if (r == 0)
    r = vc_bitmap_register_commands(s);
  if (r < 0) {
    snprintf(last_error, sizeof last_error, "%s: %s", path, strerror(-r));
    goto fail;
  }
  r = vc_unix_listen(path, 0600, &s->own, last_error, sizeof last_error);
  if (r < 0)
    goto fail;
  s->listen_fd = r;
  r = -pthread_create(&s->thread, NULL, control_thread, s);
  if (r < 0) {
    snprintf(last_error, sizeof last_error, "%s: cannot start a thread: %s",
             path, strerror(-r));
    goto fail;
  }
  s->thread_started = true;
  *out = s;
  return 0;
fail:
  server_free(s);
  return r;
}

void vc_server_stop(struct vc_server *s)
{
  if (!s)
    return;
  vc_jobs_shutdown(s);
  pthread_mutex_lock(&s->lock);
  s->stopping = true;
  pthread_mutex_unlock(&s->lock);
  wake(s);
  if (s->thread_started)
    pthread_join(s->thread, NULL);
  server_free(s);
}
