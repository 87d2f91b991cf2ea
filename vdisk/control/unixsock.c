/* unixsock.c: race-free Unix listening sockets and owned files (see
 * unixsock.h). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "vdisk/control/unixsock.h"

int vc_own_file_set(struct vc_own_file *f, const char *path)
{
  struct stat st;
  if (lstat(path, &st) == 0) {
    /* Absolute: a daemon leaves its folder (chdir "/") before exit. */
    char *p = NULL, cwd[4096];
    if (path[0] == '/')
      p = strdup(path);
    else if (getcwd(cwd, sizeof cwd) && asprintf(&p, "%s/%s", cwd, path) < 0)
      p = NULL;
    if (!p)
      return -ENOMEM;
    free(f->path);
    f->path = p;
    f->dev = st.st_dev;
    f->ino = st.st_ino;
  }
  return 0;
}

void vc_own_file_remove(struct vc_own_file *f)
{
  struct stat st;
  if (f->path && lstat(f->path, &st) == 0 && st.st_dev == f->dev &&
      st.st_ino == f->ino)
    unlink(f->path);
  free(f->path);
  f->path = NULL;
}

static int fail(char *msg, size_t msglen, int err, const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));
static int fail(char *msg, size_t msglen, int err, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, msglen, fmt, ap);
  va_end(ap);
  return -err;
}

/* Remove PATH if it is a stale socket of ours; 0 if PATH is now free. */
static int clear_stale(const char *path, const struct sockaddr_un *sa,
                       char *msg, size_t msglen)
{
  struct stat st;
  int fd, r, err;

  if (lstat(path, &st) < 0) {
    if (errno == ENOENT)
      return 0;
    return fail(msg, msglen, errno, "%s: %s", path, strerror(errno));
  }
  if (!S_ISSOCK(st.st_mode))
    return fail(msg, msglen, EEXIST,
                "%s: exists and is not a socket: %snot replacing it", path,
                S_ISLNK(st.st_mode) ? "a symlink, " : "");
  if (st.st_uid != geteuid())
    return fail(msg, msglen, EEXIST,
                "%s: a socket of another user: not replacing it", path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return fail(msg, msglen, errno, "%s: cannot create a socket: %s", path,
                strerror(errno));
  r = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
  err = errno;
  close(fd);
  if (r == 0)
    return fail(msg, msglen, EADDRINUSE,
                "%s: a server is already listening on this socket", path);
  if (err != ECONNREFUSED && err != ENOENT)
    return fail(msg, msglen, err,
                "%s: cannot tell whether this socket is in use: %s", path,
                strerror(err));
  if (unlink(path) < 0 && errno != ENOENT)
    return fail(msg, msglen, errno, "%s: cannot remove the stale socket: %s",
                path, strerror(errno));
  return 0;
}

int vc_unix_listen(const char *path, mode_t mode, struct vc_own_file *own,
                   char *msg, size_t msglen)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  struct sockaddr_un tmp = { .sun_family = AF_UNIX };
  const char *slash = strrchr(path, '/');
  size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
  char dir[sizeof tmp.sun_path];
  int fd = -1, r;

  /* The private folder ".vcXXXXXX" beside PATH, the socket "s" in it. */
  if (strlen(path) >= sizeof sa.sun_path ||
      dirlen + sizeof ".vcXXXXXX/s" > sizeof tmp.sun_path)
    return fail(msg, msglen, ENAMETOOLONG, "%s: socket path too long", path);
  strcpy(sa.sun_path, path);
  r = clear_stale(path, &sa, msg, msglen);
  if (r < 0)
    return r;

  memcpy(dir, path, dirlen);
  strcpy(dir + dirlen, ".vcXXXXXX");
  if (!mkdtemp(dir))       /* mode 0700: nobody else can reach the socket */
    return fail(msg, msglen, errno, "%s: cannot create a private folder: %s",
                path, strerror(errno));
  snprintf(tmp.sun_path, sizeof tmp.sun_path, "%s/s", dir);

  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    r = fail(msg, msglen, errno, "%s: cannot create a socket: %s", path,
             strerror(errno));
    goto out;
  }
  if (bind(fd, (struct sockaddr *)&tmp, sizeof tmp) < 0) {
    r = fail(msg, msglen, errno, "%s: cannot bind: %s", path,
             strerror(errno));
    goto out;
  }
  if (fchmodat(AT_FDCWD, tmp.sun_path, mode, AT_SYMLINK_NOFOLLOW) < 0 ||
      listen(fd, SOMAXCONN) < 0) {
    r = fail(msg, msglen, errno, "%s: cannot set up the socket: %s", path,
             strerror(errno));
    goto out;
  }
  if (renameat2(AT_FDCWD, tmp.sun_path, AT_FDCWD, path,
                RENAME_NOREPLACE) < 0) {
    r = fail(msg, msglen, errno, "%s: %s", path,
             errno == EEXIST ? "the name was taken meanwhile: not replacing it"
                             : strerror(errno));
    unlink(tmp.sun_path);
    goto out;
  }
  r = vc_own_file_set(own, path);
  if (r < 0) {
    unlink(path);
    fail(msg, msglen, ENOMEM, "%s: out of memory", path);
  }
out:
  rmdir(dir);
  if (r < 0) {
    if (fd >= 0)
      close(fd);
    return r;
  }
  return fd;
}

int vc_pid_file_write(const char *path, struct vc_own_file *own, char *msg,
                      size_t msglen)
{
  char *tmp = NULL, *dir = NULL, buf[32];
  const char *slash = strrchr(path, '/');
  int fd, len, dfd, r = 0;

  if (asprintf(&tmp, "%s.tmp-%ld", path, (long)getpid()) < 0)
    return fail(msg, msglen, ENOMEM, "%s: out of memory", path);
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    r = fail(msg, msglen, errno, "%s: cannot create: %s", tmp,
             strerror(errno));
    goto out;
  }
  len = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
  if (fchmod(fd, 0644) < 0 || write(fd, buf, (size_t)len) != len ||
      fsync(fd) < 0) {
    r = fail(msg, msglen, errno ? errno : EIO,
             "%s: cannot write pid file: %s", path, strerror(errno));
    close(fd);
    unlink(tmp);
    goto out;
  }
  if (close(fd) < 0 || rename(tmp, path) < 0) {
    r = fail(msg, msglen, errno, "%s: cannot write pid file: %s", path,
             strerror(errno));
    unlink(tmp);
    goto out;
  }
  if (vc_own_file_set(own, path) < 0) {
    r = fail(msg, msglen, ENOMEM, "%s: out of memory", path);
    goto out;
  }
  dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path))
              : strdup(".");
  if (!dir) {
    r = fail(msg, msglen, ENOMEM, "%s: out of memory", path);
    goto out;
  }
  dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || fsync(dfd) < 0)
    r = fail(msg, msglen, errno, "%s: cannot sync the folder of the pid "
             "file: %s", dir, strerror(errno));
  if (dfd >= 0)
    close(dfd);
out:
  free(dir);
  free(tmp);
  return r;
}
