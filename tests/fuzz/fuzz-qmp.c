/* Fuzz harness: the control socket's input path (vdisk/control): framing
 * of the byte stream into messages, JSON parsing, the protocol checks
 * and the generic commands' argument checks, through a real server.
 *
 * Input: the bytes a client sends.  Each input is one connection to a
 * server started once (its socket in a private folder), with one device
 * registered (a 1 MiB raw image); the client sends everything, shuts its
 * write side and reads until the server closes.
 *
 * Invariants checked (abort on violation): every line the server sends is
 * a JSON object that is the greeting, a reply ("return" or "error" with a
 * string "class" and "desc") or an event; the first line is the greeting;
 * the server keeps serving (the next connection gets its greeting). */
#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "vdisk/control/internal.h"
#include "vdisk/vdisk.h"

static struct vc_server *srv;
static struct vd_node *node;
static char dir[] = "/tmp/fuzz-qmp-XXXXXX";
static struct sockaddr_un addr = { .sun_family = AF_UNIX };

/* At exit: the server removes its socket, then the folder goes. */
static void teardown(void)
{
  vc_server_stop(srv);
  vd_node_free(node);
  rmdir(dir);
}

static void setup(void)
{
  char path[128];
  struct vd_create_args ca = { .size = 1u << 20 };
  struct vd_dev *dev;
  if (!mkdtemp(dir))
    abort();
  snprintf(path, sizeof path, "%s/disk.raw", dir);
  if (vd_create(path, "raw", &ca) < 0 ||
      vd_open(path, "raw", VD_OPEN_RDWR, &dev) < 0 ||
      vd_node_new(dev, &node) < 0)
    abort();
  unlink(path);                 /* the open device keeps it */
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s/ctl.sock", dir);
  if (vc_server_start(addr.sun_path, "fuzz-qmp", &srv) < 0 ||
      vc_device_add(srv, "disk0", node) < 0)
    abort();
  atexit(teardown);
}

static void check_line(const char *line, size_t len, bool first)
{
  json_error_t jerr;
  json_t *m = json_loadb(line, len, 0, &jerr);
  if (!json_is_object(m))
    abort();
  if (first) {
    if (!json_object_get(m, "QMP"))
      abort();
  } else if (!json_object_get(m, "return") &&
             !json_object_get(m, "event")) {
    json_t *e = json_object_get(m, "error");
    if (!json_is_string(json_object_get(e, "class")) ||
        !json_is_string(json_object_get(e, "desc")))
      abort();
  }
  json_decref(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static char *buf;
  static size_t cap;
  struct timeval tv = { .tv_sec = 30 };
  size_t len = 0, off = 0;
  int fd;

  if (!srv)
    setup();
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
    abort();
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  while (off < size) {
    ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;                    /* dropped (too long): fine */
    off += (size_t)n;
  }
  shutdown(fd, SHUT_WR);
  for (;;) {
    if (cap - len < 65536) {
      cap = cap ? cap * 2 : 65536;
      buf = realloc(buf, cap);
      if (!buf)
        abort();
    }
    ssize_t n = recv(fd, buf + len, cap - len, 0);
    if (n < 0 && errno == EINTR)
      continue;                 /* libFuzzer's -timeout alarm */
    if (n < 0 && len == 0)
      abort();                  /* no greeting within 30 s: server stuck */
    if (n <= 0)
      break;
    len += (size_t)n;
  }
  close(fd);
  bool first = true;
  for (size_t i = 0, start = 0; i < len; i++)
    if (buf[i] == '\n') {
      check_line(buf + start, i - start, first);
      first = false;
      start = i + 1;
    }
  if (first)
    abort();                    /* not even a greeting */
  return 0;
}
