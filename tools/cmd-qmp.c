/* vdtool qmp — a small QMP client for the control socket of vdisk-nbd
 * and vdisk-fuse (--control=PATH, docs/control.md): run one command and
 * print its "return" as JSON, and/or follow the events. */
#include <config.h>

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tools/vdtool.h"

const char vt_summary_qmp[] = "send a command to a control socket";
const char vt_usage_qmp[] =
  "Usage: vdtool qmp [--events] SOCKET [COMMAND [KEY=VALUE...] | COMMAND -]\n"
  "\n"
  "Connect to the QMP control socket of vdisk-nbd or vdisk-fuse\n"
  "(--control=SOCKET), negotiate, run COMMAND and print its \"return\" as\n"
  "JSON.  Each KEY=VALUE is an argument: VALUE is taken as JSON if it\n"
  "parses (42, true, {\"a\": 1}, \"text\"), else as a string.  With '-'\n"
  "the arguments are a JSON object read from standard input.  On an error\n"
  "reply the error's text goes to standard error and the exit status is 1.\n"
  "\n"
  "  --events   then print every event as one JSON line until the server\n"
  "             closes the connection (without COMMAND: only that)\n"
  "\n"
  "Example: vdtool qmp /run/disk.qmp query-block\n"
  "         vdtool qmp /run/disk.qmp block-job-set-speed device=job0 speed=0\n";

/* Messages end with a newline (as the server sends them). */
struct qmp_conn {
  int fd;
  char *buf;
  size_t len, cap;
};

#define QMP_MAX_REPLY (64u << 20)

/* The next message, or NULL (closed, error: printed). */
static json_t *qmp_read(struct qmp_conn *c)
{
  for (;;) {
    char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
    if (nl) {
      json_error_t jerr;
      size_t n = (size_t)(nl - c->buf);
      json_t *m = json_loadb(c->buf, n, 0, &jerr);
      memmove(c->buf, nl + 1, c->len - n - 1);
      c->len -= n + 1;
      if (!m)
        vt_error("qmp: the server sent bad JSON: %s", jerr.text);
      return m;
    }
    if (c->cap - c->len < 65536) {
      if (c->cap >= QMP_MAX_REPLY) {
        vt_error("qmp: a message longer than 64 MiB");
        return NULL;
      }
      char *p = realloc(c->buf, c->cap ? c->cap * 2 : 65536);
      if (!p) {
        vt_error("out of memory");
        return NULL;
      }
      c->buf = p;
      c->cap = c->cap ? c->cap * 2 : 65536;
    }
    ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      if (r < 0)
        vt_error("qmp: %s", strerror(errno));
      return NULL;
    }
    c->len += (size_t)r;
  }
}

static int qmp_send(struct qmp_conn *c, json_t *msg)
{
  char *text = json_dumps(msg, JSON_COMPACT);
  size_t len, off = 0;
  if (!text)
    return -ENOMEM;
  len = strlen(text);
  text[len] = '\n';      /* the terminator is replaced: sent by length */
  while (off < len + 1) {
    ssize_t r = send(c->fd, text + off, len + 1 - off, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      int err = errno;
      free(text);
      return -err;
    }
    off += (size_t)r;
  }
  free(text);
  return 0;
}

static void print_line(json_t *m)
{
  json_dumpf(m, stdout, JSON_COMPACT);
  putchar('\n');
  fflush(stdout);
}

/* Send EXECUTE with ARGS (stolen) and wait for its reply, printing the
 * events that come first when EVENTS.  Returns the reply or NULL. */
static json_t *qmp_call(struct qmp_conn *c, const char *execute, json_t *args,
                        bool events)
{
  json_t *req = json_pack("{s:s}", "execute", execute);
  if (!req) {
    json_decref(args);
    return NULL;
  }
  if (args)
    json_object_set_new(req, "arguments", args);
  int r = qmp_send(c, req);
  json_decref(req);
  if (r < 0) {
    vt_error("qmp: %s", strerror(-r));
    return NULL;
  }
  for (;;) {
    json_t *m = qmp_read(c);
    if (!m) {
      vt_error("qmp: the server closed the connection");
      return NULL;
    }
    if (!json_object_get(m, "event"))
      return m;
    if (events)
      print_line(m);
    json_decref(m);
  }
}

/* KEY=VALUE... into an object: VALUE as JSON when it parses. */
static json_t *qmp_args(int argc, char **argv)
{
  json_t *o = json_object();
  for (int i = 0; o && i < argc; i++) {
    char *eq = strchr(argv[i], '=');
    if (!eq || eq == argv[i]) {
      vt_bad_usage("qmp", "'%s' is not KEY=VALUE", argv[i]);
      json_decref(o);
      return NULL;
    }
    json_t *v = json_loads(eq + 1, JSON_DECODE_ANY, NULL);
    if (!v)
      v = json_string(eq + 1);
    *eq = 0;
    json_object_set_new(o, argv[i], v);
    *eq = '=';
  }
  return o;
}

int vt_cmd_qmp(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "events", no_argument, NULL, 'e' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
  };
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  struct qmp_conn c = { .fd = -1 };
  bool events = false;
  json_t *args = NULL, *m;
  int opt, status = VT_EXIT_ERR;

  while ((opt = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'e': events = true; break;
    case 'h': vt_usage("qmp", stdout); return VT_EXIT_OK;
    default: return vt_bad_option("qmp", argv);
    }
  }
  if (optind >= argc)
    return vt_bad_usage("qmp", "no SOCKET given");
  if (optind + 1 >= argc && !events)
    return vt_bad_usage("qmp", "no COMMAND given (or --events)");
  const char *path = argv[optind], *cmd = argv[optind + 1];
  if (optind + 1 < argc) {
    if (optind + 3 == argc && strcmp(argv[optind + 2], "-") == 0) {
      json_error_t jerr;
      args = json_loadf(stdin, 0, &jerr);
      if (!json_is_object(args)) {
        vt_error("qmp: standard input is not a JSON object%s%s",
                 args ? "" : ": ", args ? "" : jerr.text);
        json_decref(args);
        return VT_EXIT_ERR;
      }
    } else if (!(args = qmp_args(argc - optind - 2, argv + optind + 2))) {
      return VT_EXIT_ERR;
    }
  }
  if (strlen(path) >= sizeof sa.sun_path) {
    vt_error("%s: socket path too long", path);
    goto out;
  }
  strcpy(sa.sun_path, path);
  c.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c.fd < 0 || connect(c.fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    vt_error("%s: cannot connect: %s", path, strerror(errno));
    goto out;
  }
  m = qmp_read(&c);            /* the greeting, or a refusal */
  if (!m || !json_object_get(m, "QMP")) {
    json_t *e = json_object_get(m, "error");
    vt_error("%s: %s", path, e ? json_string_value(json_object_get(e, "desc"))
                               : "not a QMP server");
    json_decref(m);
    goto out;
  }
  json_decref(m);
  m = qmp_call(&c, "qmp_capabilities", NULL, events);
  if (!m)
    goto out;
  json_decref(m);
  if (optind + 1 < argc) {
    m = qmp_call(&c, cmd, args, events);
    args = NULL;
    if (!m)
      goto out;
    json_t *e = json_object_get(m, "error");
    if (e) {
      vt_error("%s", json_string_value(json_object_get(e, "desc")));
      json_decref(m);
      goto out;
    }
    json_dumpf(json_object_get(m, "return"), stdout, JSON_INDENT(2));
    putchar('\n');
    fflush(stdout);
    json_decref(m);
  }
  status = VT_EXIT_OK;
  if (events) {
    while ((m = qmp_read(&c)) != NULL) {
      print_line(m);
      json_decref(m);
    }
  }
out:
  json_decref(args);
  if (c.fd >= 0)
    close(c.fd);
  free(c.buf);
  return status;
}
