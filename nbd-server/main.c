/* vdisk-nbd — serve libvdisk devices over the NBD protocol.
 *
 * main.c: options, exports, listening sockets, the accept loop, signals
 * and the orderly shutdown (stop accepting, stop reading requests, answer
 * those in flight, flush every device, exit 0).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/endian.h"
#include "vdisk/vdisk.h"
#include "vdisk/control/control.h"
#include "vdisk/control/cmd-raid.h"
#include "vdisk/control/unixsock.h"
#include "nbd-server/proto.h"
#include "nbd-server/server.h"

#define MAX_LISTEN 16

static struct nbd_server server;
static unsigned handshake_limit = 10;  /* --handshake-limit, 0: none */

/* Live connections, for the connection limit and the shutdown. */
struct live_conn {
  struct live_conn *next;
  int fd;
};
static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t conns_cond = PTHREAD_COND_INITIALIZER;
static struct live_conn *conns;       /* conns_lock */
static unsigned nconns;               /* conns_lock */
static bool persistent;
static int wake_pipe[2] = { -1, -1 }; /* signals and "last client left" */

static void usage(FILE *f)
{
  fprintf(f,
"Usage: vdisk-nbd [OPTIONS] [NAME=]IMAGE...\n"
"Serve disk images (raw, VHD, RAID arrays, vdz: anything libvdisk opens)\n"
"over the NBD protocol.  Each IMAGE is an export called NAME (default: the\n"
"file's base name); the first one is also the default export \"\".\n"
"\n"
"  -p, --port PORT        TCP port (default 10809)\n"
"  -b, --bind ADDR        address to listen on (default 127.0.0.1; use\n"
"                         0.0.0.0 or :: for all interfaces)\n"
"  -k, --socket PATH      listen on a Unix socket instead of TCP (-U PATH,\n"
"                         the old spelling, is accepted without -r)\n"
"  -x, --export-name NAME  the one image's export name (default: the\n"
"                         file's base name; it is also the default export)\n"
"      --socket-mode MODE  permissions of that socket (octal, default 0600)\n"
"      --control PATH     QMP control socket (mode 0600) for queries and\n"
"                         live operations on the exports (docs/control.md)\n"
"  -r, --read-only        export read-only\n"
"  -s, --snapshot         serve a temporary overlay: writes go to a new\n"
"                         differencing VHD in $TMPDIR (default /var/tmp),\n"
"                         removed at once; IMAGE (VHD, raw or vdz) is only\n"
"                         read\n"
"  -n, --nocache          the same as --cache=none\n"
"      --cache=MODE       none or directsync: O_DIRECT; writethrough or\n"
"                         directsync: every write durable before its reply;\n"
"                         writeback (default): durable at flush/FUA\n"
"      --discard=MODE     unmap (default): TRIM frees space; ignore: TRIM\n"
"                         does nothing (qemu-nbd's default)\n"
"      --detect-zeroes=MODE  off (default), on: all-zero writes are written\n"
"                         as zeros; unmap: ... and may free space\n"
"  -U, --force-share      with -r: take no image lock, so an image another\n"
"                         program writes can be served (it may change\n"
"                         under the clients)\n"
"  -f, --format FMT       image format (default: probe; a probed raw image\n"
"                         cannot be written into another format's header)\n"
"      --backing FILE     the parent of a differencing IMAGE, when it is\n"
"                         outside IMAGE's folder tree (one IMAGE only)\n"
"      --backing-format FMT  the parent's format\n"
"  -A, --allocation-depth  offer the qemu:allocation-depth meta context\n"
"                         (0 unallocated, 1 the image, 2 its parent, ...)\n"
"  -B, --bitmap NAME      offer the dirty bitmap NAME of every image as\n"
"                         qemu:dirty-bitmap:NAME (repeatable); a missing\n"
"                         one is added, persistent (IMAGE.bitmaps)\n"
"  -D, --description TEXT export description sent to clients (default:\n"
"                         the format and size)\n"
"  -e, --shared N         serve at most N clients at once; more wait until\n"
"                         one leaves (default 16)\n"
"  -t, --persistent       keep serving after the last client leaves\n"
"                         (default: exit when the last client that reached\n"
"                         the data phase leaves, as qemu-nbd)\n"
"      --fork             run in the background once ready\n"
"      --pid-file FILE    write the server's process id to FILE\n"
"      --threads N        worker threads (default: 2 per CPU, at least 4)\n"
"      --poll-max-ns N    poll an idle client's socket up to N ns before\n"
"                         sleeping, while its requests come quickly\n"
"                         (default 50000; 0: never)\n"
"      --tls-creds DIR    X.509 credentials: DIR/ca-cert.pem,\n"
"                         DIR/server-cert.pem, DIR/server-key.pem\n"
"      --tls-psk FILE     pre-shared keys, in psktool's format\n"
"      --tls=on|require|off  offer TLS / refuse clients without it / no\n"
"                         TLS (default with credentials: require)\n"
"      --tls-verify-peer[=yes|no]  require a client certificate signed by\n"
"                         DIR/ca-cert.pem (default: yes if that file exists)\n"
"      --tls-authz FILE   serve only client certificates whose subject DN\n"
"                         is a line of FILE\n"
"      --handshake-limit SECONDS  drop clients that have not chosen an\n"
"                         export after SECONDS (default 10, 0: never)\n"
"  -v, --verbose          log connections and errors (twice: every request)\n"
"  -h, --help             show this help\n"
"  -V, --version          print the version\n"
"\n"
"Attach with: nbdinfo nbd://127.0.0.1/NAME, qemu-img info nbd://127.0.0.1/NAME,\n"
"or nbd-client 127.0.0.1 /dev/nbd0 -N NAME.  SIGTERM/SIGINT end the server\n"
"cleanly: requests in flight are answered and every device is flushed.\n");
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2),
                                                     noreturn));

/* Files we created (the Unix socket, the pid file): removed at exit only
 * if the name still leads to the same inode (vdisk/control/unixsock.h). */
static struct vc_own_file own_socket, own_pid_file;

static bool serving;   /* past the start: no more die() before shutdown */
static int cl_bitmaps_detach(void);

static void die(const char *fmt, ...)
{
  va_list ap;
  /* A start that fails after some image's bitmaps were marked in use:
   * nothing was written through it, so close them cleanly rather than
   * leave them to be found inconsistent. */
  if (!serving)
    (void)cl_bitmaps_detach();
  vc_own_file_remove(&own_socket);
  vc_own_file_remove(&own_pid_file);
  fputs("vdisk-nbd: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

/* "[NAME=]IMAGE": a '=' counts only if no '/' comes before it. */
static const char *backing, *backing_format;  /* --backing[-format] */
static const char *export_name;  /* -x: the one image's export name */
static bool force_share;         /* -U with -r: take no image lock */
static bool opt_snapshot;        /* -s: writes go to a temporary overlay */
static bool opt_direct;          /* --cache=none/directsync: O_DIRECT */

/* -s (qemu-nbd's --snapshot): open a new differencing VHD over PATH
 * (format FORMAT or probed) as the device to serve; dies on failure.  The
 * overlay is made in a private folder under $TMPDIR (default /var/tmp, as
 * qemu), opened, and its name removed at once: nothing is left behind,
 * whatever way the server ends, and PATH is only ever opened read-only. */
static struct vd_dev *open_snapshot(const char *path, const char *format)
{
  const char *tmp = getenv("TMPDIR");
  char *dir = NULL, *ov = NULL, *real = realpath(path, NULL);
  char msg[1024] = "";
  struct vd_dev *dev = NULL;

  if (!real)
    die("%s: %s", path, strerror(errno));
  if (asprintf(&dir, "%s/vdisk-nbd-snapshot.XXXXXX",
               tmp && *tmp ? tmp : "/var/tmp") < 0)
    die("out of memory");
  if (!mkdtemp(dir))
    die("-s: %s: %s", dir, strerror(errno));
  if (asprintf(&ov, "%s/overlay.vhd", dir) < 0) {
    rmdir(dir);
    die("out of memory");
  }
  struct vd_create_args ca = { .backing = real, .backing_format = format };
  struct vd_open_args oa = { .format = "vpc", .flags = VD_OPEN_RDWR,
                             .backing = real, .backing_format = format };
  if (vd_create(ov, "vpc", &ca) < 0)
    snprintf(msg, sizeof msg, "-s: %s cannot have a temporary VHD overlay: "
             "%s", path, vd_error());
  else if (vd_open_opts(ov, &oa, &dev) < 0)
    snprintf(msg, sizeof msg, "-s: %s", vd_error());
  unlink(ov);
  rmdir(dir);
  free(ov);
  free(dir);
  free(real);
  if (!dev)
    die("%s", msg);
  return dev;
}

/* The command line's images: their nodes live until exit, whether their
 * exports were deleted meanwhile or not (the devices stay registered). */
struct cl_image {
  char *name;
  struct vd_node *node;
};
static struct cl_image *cl_images;
static size_t cl_nimages;

/* -A and -B: the same for every command-line image. */
static bool opt_alloc_depth;
static char *opt_bitmaps[NBD_MAX_EXPORT_BITMAPS + 1];
static unsigned opt_nbitmaps;

/* Load PATH's persistent bitmaps onto NODE (IMAGE.bitmaps: a bad file
 * stops the start with its message) and hold the -B ones, adding those
 * that do not exist. */
static void cl_bitmaps_attach(struct vd_node *node, const char *path)
{
  if (vd_node_bitmaps_attach(node, path) < 0)
    die("%s", vd_error());
  for (unsigned i = 0; i < opt_nbitmaps; i++) {
    const char *b = opt_bitmaps[i];
    int r = vd_node_bitmap_hold(node, b);
    if (r == -ENOENT) {
      if (vd_node_is_read_only(node))
        die("%s: no dirty bitmap '%s' (a read-only export cannot start "
            "one)", path, b);
      if (vd_node_bitmap_add(node, b, 0, VD_BITMAP_PERSISTENT) < 0)
        die("%s", vd_error());
      r = vd_node_bitmap_hold(node, b);
    }
    if (r < 0)
      die("%s: %s", path, vd_error());
  }
}

/* Stop the command-line images' bitmaps cleanly (bits written, in-use
 * mark cleared).  0, or -1 if a side file could not be written. */
static int cl_bitmaps_detach(void)
{
  int r = 0;
  for (size_t k = 0; cl_images && k < cl_nimages; k++) {
    if (!cl_images[k].node)
      continue;
    for (unsigned i = 0; i < opt_nbitmaps; i++)
      vd_node_bitmap_release(cl_images[k].node, opt_bitmaps[i]);
    if (vd_node_bitmaps_detach(cl_images[k].node) < 0) {
      nbd_log("%s", vd_error());
      r = -1;
    }
  }
  return r;
}

static void add_export(const char *arg, const char *format, bool ro,
                       const char *desc, size_t idx)
{
  struct cl_image *im = &cl_images[idx];
  const char *eq = strchr(arg, '=');
  const char *slash = strchr(arg, '/');
  const char *path = arg;
  char *name;
  struct vd_dev *dev;
  struct nbd_export *e;
  int r;
  size_t i;

  if (export_name) {
    /* -x names the export; the argument is a path, '=' and all. */
    name = strdup(export_name);
  } else if (eq && (!slash || slash > eq)) {
    name = strndup(arg, (size_t)(eq - arg));
    path = eq + 1;
  } else {
    const char *base = strrchr(arg, '/');
    name = strdup(base ? base + 1 : arg);
  }
  if (!name)
    die("out of memory");
  im->name = name;     /* reachable from here on, even if we die below */
  if (!*path)
    die("%s: no image path", arg);
  if (strlen(name) > NBD_MAX_STRING)
    die("%s: export name longer than %u bytes", arg, NBD_MAX_STRING);
  for (i = 0; i < idx; i++)
    if (strcmp(cl_images[i].name, name) == 0)
      die("%s: export name '%s' used twice", arg, name);

  struct vd_open_args oa = { .format = format,
                             .flags = (ro ? 0 : VD_OPEN_RDWR) |
                                      (force_share ? VD_OPEN_NOLOCK : 0) |
                                      (opt_direct ? VD_OPEN_DIRECT : 0),
                             .backing = backing,
                             .backing_format = backing_format };
  if (opt_snapshot)
    dev = open_snapshot(path, format);
  else if (vd_open_opts(path, &oa, &dev) < 0)
    die("%s", vd_error());
  /* The export holds a node, never the device: the engine may swap what
   * the node points at (snapshot, mirror pivot) without us knowing. */
  r = vd_node_new(dev, &im->node);
  if (r < 0)
    die("%s", vd_error());
  cl_bitmaps_attach(im->node, path);

  /* Sent before any authentication (LIST, INFO): never the host path.
   * Its id (block-export-del, query-block-exports) is its name. */
  struct nbd_export_args ea = { .id = name, .name = name, .node_name = name,
                                .description = desc, .format = vd_format(dev),
                                .node = im->node, .read_only = ro,
                                .bitmaps = (const char *const *)opt_bitmaps,
                                .alloc_depth = opt_alloc_depth,
                                .direct = opt_direct };
  e = nbd_export_new(&ea);
  if (!e)
    die("out of memory");
  /* The first one is also the default export "". */
  if (nbd_exports_add(server.exports, e, idx == 0) < 0)
    die("%s: export '%s' cannot be listed", arg, name);
}

static unsigned parse_uint(const char *opt, const char *s, unsigned min,
                           unsigned max)
{
  char *end;
  unsigned long v;
  errno = 0;
  v = strtoul(s, &end, 10);
  if (errno || end == s || *end || v < min || v > max)
    die("%s: '%s' is not a number in %u..%u", opt, s, min, max);
  return (unsigned)v;
}

/* Listen on a Unix socket at PATH with permissions MODE whatever the
 * umask; only a stale socket of ours is replaced (vc_unix_listen). */
static int listen_unix(const char *path, mode_t mode)
{
  char msg[512];
  int fd = vc_unix_listen(path, mode, &own_socket, msg, sizeof msg);
  if (fd < 0)
    die("%s", msg);
  return fd;
}

static int listen_tcp(const char *addr, const char *port, int *fds)
{
  struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                            .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
  struct addrinfo *res, *ai;
  int n = 0, r, err = 0;

  r = getaddrinfo(addr, port, &hints, &res);
  if (r)
    die("%s port %s: %s", addr, port, gai_strerror(r));
  for (ai = res; ai && n < MAX_LISTEN; ai = ai->ai_next) {
    int one = 1;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
        listen(fd, SOMAXCONN) < 0) {
      err = errno;
      close(fd);
      continue;
    }
    fds[n++] = fd;
  }
  freeaddrinfo(res);
  if (n == 0)
    die("%s port %s: cannot listen: %s", addr, port, strerror(err));
  return n;
}

static void on_signal(int sig)
{
  char c = 's';
  int saved = errno;
  (void)sig;
  if (write(wake_pipe[1], &c, 1) < 0) {
    /* the pipe is full: a wake-up is already pending */
  }
  errno = saved;
}

static void *conn_thread(void *arg)
{
  struct live_conn *lc = arg;
  struct nbd_io io;
  struct nbd_session s;
  int one = 1;

  setsockopt(lc->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  nbd_io_init_socket(&io, lc->fd);
  /* The whole negotiation, TLS handshake included, must end within
   * handshake_limit seconds, so that slow or idle clients cannot hold
   * the -e slots (qemu-nbd's --handshake-limit). */
  if (handshake_limit)
    io.deadline = nbd_now_ms() + (int64_t)handshake_limit * 1000;
  int r = nbd_negotiate(&server, &io, &s);
  if (r < 0 && server.verbose && nbd_io_expired(&io))
    nbd_log("handshake not finished within %u s: client dropped",
            handshake_limit);
  if (r == 1) {
    io.deadline = 0;
    if (server.verbose)
      nbd_log("client attached to '%s'%s", s.exp->name,
              io.tls ? " over TLS" : "");
    nbd_conn_serve(&server, &io, &s);
    /* Last: a deleted export is released once its last client left. */
    nbd_export_detach(server.exports, s.exp, s.user);
  }
  nbd_tls_close(&io);

  pthread_mutex_lock(&conns_lock);
  for (struct live_conn **p = &conns; *p; p = &(*p)->next)
    if (*p == lc) {
      *p = lc->next;
      break;
    }
  close(lc->fd);
  free(lc);
  nconns--;
  /* qemu-nbd's rule: without -t the server ends when the last client
   * leaves, but only a client that reached transmission counts, so a port
   * probe, a listing (nbdinfo --list) or a wrong export name does not end
   * it.  Any leave also wakes the accept loop, which stops accepting while
   * -e clients are attached. */
  char c = nconns == 0 && !persistent && r == 1 ? 'e' : 'w';
  if (write(wake_pipe[1], &c, 1) < 0) {
    /* already woken */
  }
  pthread_cond_broadcast(&conns_cond);
  pthread_mutex_unlock(&conns_lock);
  if (server.verbose)
    nbd_log("client left");
  return NULL;
}

/* Accept one client on LFD and start its thread.  False when the process
 * is out of descriptors or memory for it: the client stays in the backlog
 * and the caller waits before trying again (the listening socket stays
 * readable, so trying at once would spin). */
static bool accept_one(int lfd)
{
  pthread_attr_t attr;
  pthread_t t;
  struct live_conn *lc;
  int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

  if (fd < 0) {
    if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS &&
        errno != ENOMEM)
      return true;                /* that client gave up: next */
    static time_t said;
    time_t now = time(NULL);
    if (now - said >= 60) {       /* once a minute at most */
      said = now;
      nbd_log("accept: %s: new clients wait", strerror(errno));
    }
    return false;
  }
  pthread_mutex_lock(&conns_lock);
  lc = calloc(1, sizeof *lc);
  if (!lc) {
    pthread_mutex_unlock(&conns_lock);
    close(fd);
    return true;
  }
  lc->fd = fd;
  lc->next = conns;
  conns = lc;
  nconns++;
  pthread_mutex_unlock(&conns_lock);

  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&t, &attr, conn_thread, lc) != 0) {
    pthread_mutex_lock(&conns_lock);
    conns = lc->next;    /* still first: only this thread adds */
    nconns--;
    pthread_mutex_unlock(&conns_lock);
    close(fd);
    free(lc);
    nbd_log("cannot start a connection thread");
  }
  pthread_attr_destroy(&attr);
  return true;
}

/* Stop reading requests on every connection and wait for them to finish
 * what is in flight; after 30 s cut them off. */
static void drain_connections(void)
{
  struct timespec deadline;
  struct live_conn *lc;
  bool forced = false;

  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 30;
  pthread_mutex_lock(&conns_lock);
  for (lc = conns; lc; lc = lc->next)
    shutdown(lc->fd, SHUT_RD);
  while (nconns) {
    if (pthread_cond_timedwait(&conns_cond, &conns_lock, &deadline) ==
        ETIMEDOUT && !forced) {
      nbd_log("%u clients still busy after 30 s: disconnecting them", nconns);
      for (lc = conns; lc; lc = lc->next)
        shutdown(lc->fd, SHUT_RDWR);
      forced = true;
    }
  }
  pthread_mutex_unlock(&conns_lock);
}

/* Our pid in PATH (vc_pid_file_write: O_EXCL|O_NOFOLLOW and rename). */
static void write_pid_file(const char *path)
{
  char msg[512];
  if (vc_pid_file_write(path, &own_pid_file, msg, sizeof msg) < 0)
    die("%s", msg);
}

enum { OPT_FORK = 256, OPT_PID_FILE, OPT_THREADS, OPT_TLS_CREDS,
       OPT_TLS_PSK, OPT_TLS, OPT_BACKING, OPT_BACKING_FORMAT,
       OPT_TLS_VERIFY_PEER, OPT_TLS_AUTHZ, OPT_HANDSHAKE_LIMIT,
       OPT_SOCKET_MODE, OPT_CONTROL, OPT_FORCE_SHARE, OPT_CACHE,
       OPT_DISCARD, OPT_DETECT_ZEROES, OPT_POLL_MAX_NS };

/* --cache=MODE as qemu-nbd: none and directsync open O_DIRECT,
 * writethrough and directsync make every write FUA.  unsafe (flushes
 * ignored) is refused: vdisk acknowledges a flush only once it is done. */
static void parse_cache(const char *mode)
{
  if (strcmp(mode, "none") == 0 || strcmp(mode, "directsync") == 0)
    opt_direct = true;
  else if (strcmp(mode, "writeback") && strcmp(mode, "writethrough"))
    die("--cache: '%s' is not none, writeback, writethrough or directsync%s",
        mode, strcmp(mode, "unsafe") == 0
              ? " (unsafe, which ignores flushes, is not offered)" : "");
  server.writethrough = strcmp(mode, "writethrough") == 0 ||
                        strcmp(mode, "directsync") == 0;
}

/* True if the command line asks for a read-only export: it decides what
 * -U means (see main).  Looks at the arguments before "--" that are -r,
 * --read-only, or a bundle of flags without arguments that holds r. */
static bool argv_read_only(int argc, char **argv)
{
  for (int k = 1; k < argc; k++) {
    const char *a = argv[k];
    if (strcmp(a, "--") == 0)
      break;
    if (strcmp(a, "--read-only") == 0)
      return true;
    if (a[0] == '-' && a[1] != '-' && a[1] &&
        strspn(a + 1, "rtvAhV") == strlen(a + 1) && strchr(a + 1, 'r'))
      return true;
  }
  return false;
}

int main(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "port", required_argument, NULL, 'p' },
    { "bind", required_argument, NULL, 'b' },
    { "socket", required_argument, NULL, 'k' },
    { "export-name", required_argument, NULL, 'x' },
    { "snapshot", no_argument, NULL, 's' },
    { "nocache", no_argument, NULL, 'n' },
    { "cache", required_argument, NULL, OPT_CACHE },
    { "discard", required_argument, NULL, OPT_DISCARD },
    { "detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES },
    { "force-share", no_argument, NULL, OPT_FORCE_SHARE },
    { "read-only", no_argument, NULL, 'r' },
    { "format", required_argument, NULL, 'f' },
    { "shared", required_argument, NULL, 'e' },
    { "persistent", no_argument, NULL, 't' },
    { "fork", no_argument, NULL, OPT_FORK },
    { "pid-file", required_argument, NULL, OPT_PID_FILE },
    { "threads", required_argument, NULL, OPT_THREADS },
    { "poll-max-ns", required_argument, NULL, OPT_POLL_MAX_NS },
    { "tls-creds", required_argument, NULL, OPT_TLS_CREDS },
    { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
    { "tls", required_argument, NULL, OPT_TLS },
    { "backing", required_argument, NULL, OPT_BACKING },
    { "backing-format", required_argument, NULL, OPT_BACKING_FORMAT },
    { "tls-verify-peer", optional_argument, NULL, OPT_TLS_VERIFY_PEER },
    { "tls-authz", required_argument, NULL, OPT_TLS_AUTHZ },
    { "handshake-limit", required_argument, NULL, OPT_HANDSHAKE_LIMIT },
    { "socket-mode", required_argument, NULL, OPT_SOCKET_MODE },
    { "control", required_argument, NULL, OPT_CONTROL },
    { "description", required_argument, NULL, 'D' },
    { "allocation-depth", no_argument, NULL, 'A' },
    { "bitmap", required_argument, NULL, 'B' },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  const char *port = "10809", *bind_addr = "127.0.0.1", *sock_path = NULL;
  const char *format = NULL, *pid_file = NULL, *tls_creds = NULL;
  const char *tls_psk = NULL, *tls_arg = NULL, *tls_authz = NULL;
  const char *description = NULL;
  int tls_verify = -1;
  long socket_mode = -1;
  const char *control_path = NULL;
  struct vc_server *control = NULL;
  struct vc_raid *raid = NULL;
  char raid_msg[512];
  bool ro = false, do_fork = false;
  unsigned shared = 16, threads = 0, poll_max_ns = 50000;
  int lfds[MAX_LISTEN], nl = 0, c, i, ready_pipe[2] = { -1, -1 };
  int status = 0;

  /* -U is --force-share, as in vdtool and vdisk-fuse, when the export is
   * read-only (-r); without -r it is the old spelling of -k PATH (a
   * writer can never share its images, so there it is unambiguous). */
  bool u_shares = argv_read_only(argc, argv);
  opterr = 0;  /* one line of our own instead of getopt's */
  while ((c = getopt_long(argc, argv,
                          u_shares ? "p:b:k:Ux:rsnf:D:e:tvhVAB:"
                                   : "p:b:k:U:x:rsnf:D:e:tvhVAB:",
                          longopts, NULL)) != -1) {
    switch (c) {
    case 'p': parse_uint("--port", optarg, 1, 65535); port = optarg; break;
    case 'b': bind_addr = optarg; break;
    case 'k': sock_path = optarg; break;
    case 'U':
      if (u_shares)
        force_share = true;
      else
        sock_path = optarg;
      break;
    case OPT_FORCE_SHARE: force_share = true; break;
    case 's': opt_snapshot = true; break;
    case 'n': parse_cache("none"); break;
    case OPT_CACHE: parse_cache(optarg); break;
    case OPT_DISCARD:
      if (strcmp(optarg, "ignore") == 0 || strcmp(optarg, "off") == 0)
        server.discard_ignore = true;
      else if (strcmp(optarg, "unmap") == 0 || strcmp(optarg, "on") == 0)
        server.discard_ignore = false;
      else
        die("--discard: '%s' is not ignore or unmap", optarg);
      break;
    case OPT_DETECT_ZEROES:
      if (strcmp(optarg, "off") == 0)
        server.detect_zeroes = NBD_DZ_OFF;
      else if (strcmp(optarg, "on") == 0)
        server.detect_zeroes = NBD_DZ_ON;
      else if (strcmp(optarg, "unmap") == 0)
        server.detect_zeroes = NBD_DZ_UNMAP;
      else
        die("--detect-zeroes: '%s' is not off, on or unmap", optarg);
      break;
    case 'x':
      if (!*optarg || strlen(optarg) > NBD_MAX_STRING)
        die("--export-name: a name of 1 to %u bytes", NBD_MAX_STRING);
      export_name = optarg;
      break;
    case 'r': ro = true; break;
    case 'f': format = optarg; break;
    case 'e': shared = parse_uint("--shared", optarg, 1, 100000); break;
    case 't': persistent = true; break;
    case OPT_FORK: do_fork = true; break;
    case OPT_PID_FILE: pid_file = optarg; break;
    case OPT_THREADS: threads = parse_uint("--threads", optarg, 1, 1024); break;
    case OPT_POLL_MAX_NS:
      poll_max_ns = parse_uint("--poll-max-ns", optarg, 0, 1000000);
      break;
    case OPT_TLS_CREDS: tls_creds = optarg; break;
    case OPT_TLS_PSK: tls_psk = optarg; break;
    case OPT_TLS: tls_arg = optarg; break;
    case OPT_BACKING: backing = optarg; break;
    case OPT_BACKING_FORMAT: backing_format = optarg; break;
    case OPT_TLS_VERIFY_PEER:
      if (!optarg || !strcmp(optarg, "yes") || !strcmp(optarg, "on"))
        tls_verify = 1;
      else if (!strcmp(optarg, "no") || !strcmp(optarg, "off"))
        tls_verify = 0;
      else
        die("--tls-verify-peer: '%s' is not yes or no", optarg);
      break;
    case OPT_TLS_AUTHZ: tls_authz = optarg; break;
    case OPT_HANDSHAKE_LIMIT:
      handshake_limit = parse_uint("--handshake-limit", optarg, 0, 86400);
      break;
    case OPT_SOCKET_MODE: {
      char *end;
      errno = 0;
      socket_mode = strtol(optarg, &end, 8);
      if (errno || end == optarg || *end || socket_mode < 0 ||
          socket_mode > 0777)
        die("--socket-mode: '%s' is not an octal mode in 0..0777", optarg);
      break;
    }
    case OPT_CONTROL: control_path = optarg; break;
    case 'D':
      if (strlen(optarg) > NBD_MAX_STRING)
        die("--description: longer than %u bytes", NBD_MAX_STRING);
      description = optarg;
      break;
    case 'A': opt_alloc_depth = true; break;
    case 'B':
      if (opt_nbitmaps == NBD_MAX_EXPORT_BITMAPS)
        die("--bitmap: at most %u bitmaps", NBD_MAX_EXPORT_BITMAPS);
      if (!*optarg || strlen(optarg) > VD_BITMAP_NAME_MAX)
        die("--bitmap: a name of 1 to %u bytes", VD_BITMAP_NAME_MAX);
      for (unsigned k = 0; k < opt_nbitmaps; k++)
        if (strcmp(opt_bitmaps[k], optarg) == 0)
          die("--bitmap %s given twice", optarg);
      opt_bitmaps[opt_nbitmaps++] = optarg;
      break;
    case 'v': server.verbose++; break;
    case 'h': usage(stdout); return 0;
    case 'V': printf("vdisk-nbd %s\n", PACKAGE_VERSION); return 0;
    default:
      if (optopt)
        fprintf(stderr, "vdisk-nbd: invalid option or missing argument: -%c "
                "(try --help)\n", optopt);
      else
        fprintf(stderr, "vdisk-nbd: invalid option or missing argument: %s "
                "(try --help)\n", argv[optind - 1]);
      return 1;
    }
  }
  if (optind >= argc)
    die("no image given (try --help)");
  if (export_name && argc - optind > 1)
    die("--export-name names the one image; %d images given (name each as "
        "NAME=IMAGE instead)", argc - optind);
  if (server.detect_zeroes == NBD_DZ_UNMAP && server.discard_ignore)
    die("--detect-zeroes=unmap needs --discard=unmap (as qemu-nbd)");
  if (opt_snapshot && (backing || backing_format))
    die("-s and --backing cannot be combined (the overlay's parent is the "
        "image itself)");
  if (force_share && !ro)
    die("--force-share (-U) needs -r: a writer always locks its images");
  if ((backing || backing_format) && argc - optind > 1)
    die("--backing and --backing-format name the parent of one image; "
        "%d images given", argc - optind);
  nbd_verbose = server.verbose;

  /* TLS settings. */
  if (tls_creds && tls_psk)
    die("--tls-creds and --tls-psk cannot be combined");
  if (tls_arg) {
    if (strcmp(tls_arg, "on") == 0)
      server.tls = NBD_TLS_ON;
    else if (strcmp(tls_arg, "require") == 0)
      server.tls = NBD_TLS_REQUIRE;
    else if (strcmp(tls_arg, "off") == 0)
      server.tls = NBD_TLS_OFF;
    else
      die("--tls: '%s' is not on, require or off", tls_arg);
    if (server.tls != NBD_TLS_OFF && !tls_creds && !tls_psk)
      die("--tls=%s needs --tls-creds or --tls-psk", tls_arg);
  } else if (tls_creds || tls_psk)
    server.tls = NBD_TLS_REQUIRE;
  if ((tls_verify >= 0 || tls_authz) && server.tls == NBD_TLS_OFF)
    die("--tls-verify-peer and --tls-authz need --tls-creds");
  if (server.tls != NBD_TLS_OFF &&
      nbd_tls_load(tls_creds, tls_psk, tls_verify, tls_authz, server.verbose,
                   &server.tls_creds) < 0)
    exit(1);
  if (socket_mode >= 0 && !sock_path)
    die("--socket-mode needs --socket");

  /* Sockets. */
  if (sock_path)
    lfds[nl++] = listen_unix(sock_path,
                             socket_mode >= 0 ? (mode_t)socket_mode : 0600);
  else
    nl = listen_tcp(bind_addr, port, lfds);

  if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
    die("pipe: %s", strerror(errno));

  if (do_fork) {
    pid_t pid;
    char b;
    if (pipe2(ready_pipe, O_CLOEXEC) < 0)
      die("pipe: %s", strerror(errno));
    fflush(NULL);
    pid = fork();
    if (pid < 0)
      die("fork: %s", strerror(errno));
    if (pid > 0) {
      /* The parent returns once the child serves (or dies trying). */
      close(ready_pipe[1]);
      _exit(read(ready_pipe[0], &b, 1) == 1 ? 0 : 1);
    }
    close(ready_pipe[0]);
    setsid();
    int nfd = open("/dev/null", O_RDWR);
    if (nfd >= 0) {
      dup2(nfd, 0);
      dup2(nfd, 1);
      if (nfd > 2)
        close(nfd);
    }
  }

  /* Exports, opened after the fork: drivers may start threads (RAID),
   * and a fork keeps only the calling thread. */
  cl_nimages = (size_t)(argc - optind);
  cl_images = calloc(cl_nimages, sizeof *cl_images);
  server.exports = nbd_exports_new();
  if (!cl_images || !server.exports)
    die("out of memory");
  for (i = optind; i < argc; i++)
    add_export(argv[i], format, ro, description, (size_t)(i - optind));
  if (pid_file)
    write_pid_file(pid_file);

  struct sigaction sa = { .sa_handler = on_signal };
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  if (!threads) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    threads = n > 2 ? (unsigned)(2 * n) : 4;
  }
  if (nbd_pool_start(threads, poll_max_ns) < 0)
    die("cannot start %u worker threads", threads);

  if (server.verbose)
    nbd_log("serving %zu export%s on %s%s%s", cl_nimages,
            cl_nimages > 1 ? "s" : "", sock_path ? sock_path : bind_addr,
            sock_path ? "" : " port ", sock_path ? "" : port);
  /* Once the start can no longer fail, so a failed start prints one line. */
  for (size_t k = 0; k < cl_nimages; k++) {
    /* Nothing swaps the node yet: the device it was made with. */
    const struct vd_dev *dev = vd_node_dev(cl_images[k].node);
    if (vd_probed_raw(dev) && !vd_is_read_only(dev))
      fprintf(stderr, "vdisk-nbd: warning: %s: image format was not "
              "specified; probing guessed raw, so writes that would change "
              "what it probes as (its first 4 KiB and last 512 bytes) are "
              "refused. Specify '-f raw' to remove the restriction.\n",
              vd_path(dev));
  }

  if (control_path) {
    /* After the fork (the server runs a thread), the exports and the
     * look at their devices above (commands may swap them from here on). */
    if (vc_server_start(control_path, "vdisk-nbd", &control) < 0)
      die("%s", vc_last_error());
    for (size_t k = 0; k < cl_nimages; k++)
      if (vc_device_add(control, cl_images[k].name, cl_images[k].node) < 0)
        die("%s: cannot register export '%s'", control_path,
            cl_images[k].name);
    if (nbd_control_start(control, &server) < 0)
      die("%s: cannot register the export commands", control_path);
  }
  /* RAID arrays: their commands, and runtime entries through which
   * 'vdtool raid' finds this process (with a control socket of our own
   * when there is no --control). */
  for (size_t k = 0; k < cl_nimages; k++)
    if (vc_raid_add(&raid, cl_images[k].name, cl_images[k].node) < 0)
      die("out of memory");
  if (vc_raid_start(&raid, &control, control_path, "vdisk-nbd", raid_msg,
                    sizeof raid_msg) < 0)
    die("%s", raid_msg);
  serving = true;
  if (do_fork) {
    if (write(ready_pipe[1], "r", 1) < 0) {
      /* the parent is gone: keep serving */
    }
    close(ready_pipe[1]);
  }

  bool starved = false;           /* out of descriptors: accept_one */
  for (;;) {
    struct pollfd pfd[MAX_LISTEN + 1];
    char b;
    /* -e N: with N clients attached, stop accepting; a further client
     * waits in the listen backlog until one leaves (qemu-nbd's --shared),
     * rather than being dropped. */
    pthread_mutex_lock(&conns_lock);
    bool full = nconns >= shared;
    pthread_mutex_unlock(&conns_lock);
    if (full && server.verbose > 1)
      nbd_log("connection limit (%u) reached: new clients wait", shared);
    for (i = 0; i < nl; i++)
      pfd[i] = (struct pollfd){ .fd = lfds[i],
                                .events = full || starved ? 0 : POLLIN };
    pfd[nl] = (struct pollfd){ .fd = wake_pipe[0], .events = POLLIN };
    /* Starved: try again in 100 ms, or as soon as a client leaves. */
    int pr = poll(pfd, (nfds_t)nl + 1, starved ? 100 : -1);
    starved = false;
    if (pr < 0) {
      if (errno == EINTR)
        continue;
      die("poll: %s", strerror(errno));
    }
    if (pfd[nl].revents) {
      bool stop = false;
      while (read(wake_pipe[0], &b, 1) == 1) {
        if (b == 's')
          stop = true;
        else if (b == 'e') {
          pthread_mutex_lock(&conns_lock);
          if (nconns == 0)
            stop = true;
          pthread_mutex_unlock(&conns_lock);
        }
      }
      if (stop)
        break;
    }
    for (i = 0; i < nl && !starved; i++)
      if (pfd[i].revents & POLLIN)
        starved = !accept_one(lfds[i]);
  }

  /* Orderly shutdown. */
  if (server.verbose)
    nbd_log("shutting down");
  for (i = 0; i < nl; i++)
    close(lfds[i]);
  drain_connections();
  nbd_pool_stop();
  /* Jobs end (cancelled) before the nodes they work on are freed. */
  nbd_control_stop();
  vc_raid_stop(raid);
  vc_server_stop(control);
  vc_raid_free(raid);          /* our runtime entries, after the jobs */
  /* The exports added over the control socket close their nodes here. */
  nbd_exports_free(server.exports);
  if (nbd_export_release_errors)
    status = 1;
  if (cl_bitmaps_detach() < 0)
    status = 1;
  for (size_t k = 0; k < cl_nimages; k++) {
    if (vd_node_free(cl_images[k].node) < 0) {
      nbd_log("%s", vd_error());
      status = 1;
    }
    free(cl_images[k].name);
  }
  free(cl_images);
  nbd_tls_free(server.tls_creds);
  vc_own_file_remove(&own_socket);
  vc_own_file_remove(&own_pid_file);
  return status;
}
