/* RAID runtime entries: how vdtool finds the process serving an array.
 *
 * A process that serves an array (vdisk-nbd, vdisk-fuse) holds its
 * members' locks, so management goes through that process's control
 * socket.  To find it, the server publishes one small file per array in
 * its user's runtime folder:
 *
 *   FOLDER/raid-DEV-INO     DEV and INO: the descriptor's st_dev and
 *                           st_ino in hexadecimal (never a name a guest
 *                           or another user chose)
 *   pid 1234\n              the serving process
 *   socket /abs/ctl.sock\n  its control socket (QMP)
 *   device NAME\n           the array's device name on that socket
 *
 * Trust: the folder is private (0700, ours, not a symlink); entries are
 * created O_CREAT | O_EXCL | O_NOFOLLOW under a temporary name and linked
 * to their final name without replacing anything; the reader believes an
 * entry only if it is a regular file with one link, owned by its own uid
 * or root, not writable by group or others, and well formed.  At exit the
 * server removes its entries only if the names still lead to the files it
 * wrote.  docs/raid-format.md, "Online management", says the same for
 * users.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "raid/raid.h"

#define RT_ENTRY_MAX 1024       /* bytes: pid + socket (107) + device (255) */

struct vd_raid_entry {
  char *desc;                   /* absolute path of the descriptor */
  char *socket, *device;
  char *path;                   /* the entry's file */
  dev_t dev;                    /* and its inode, to remove only ours */
  ino_t ino;
};

int vd_raid_runtime_dir(char *out, size_t len, bool create)
{
  const char *over = getenv("VDISK_RUNTIME_DIR");
  const char *xdg = getenv("XDG_RUNTIME_DIR");
  int n;
  if (over && *over) {
    if (over[0] != '/')
      return vd_set_error(EINVAL, "VDISK_RUNTIME_DIR=%s: not an absolute "
                          "path", over);
    n = snprintf(out, len, "%s", over);
  } else if (xdg && xdg[0] == '/') {
    n = snprintf(out, len, "%s/vdisk", xdg);
  } else if (geteuid() == 0) {
    n = snprintf(out, len, "/run/vdisk");
  } else {
    n = snprintf(out, len, "/tmp/vdisk-%u", (unsigned)geteuid());
  }
  if (n < 0 || (size_t)n >= len)
    return vd_set_error(ENAMETOOLONG, "runtime folder: path too long");
  if (create && mkdir(out, 0700) != 0 && errno != EEXIST)
    return vd_set_error(errno, "%s: cannot create the runtime folder: %s",
                        out, strerror(errno));
  struct stat st;
  if (lstat(out, &st) != 0) {
    if (!create && errno == ENOENT)
      return 0;                 /* nothing published: lookups find nothing */
    return vd_set_error(errno, "%s: %s", out, strerror(errno));
  }
  if (S_ISLNK(st.st_mode))
    return vd_set_error(ELOOP, "%s: the runtime folder is a symbolic link: "
                        "refused", out);
  if (!S_ISDIR(st.st_mode))
    return vd_set_error(ENOTDIR, "%s: the runtime folder is not a folder",
                        out);
  if (st.st_uid != geteuid() && (create || st.st_uid != 0))
    return vd_set_error(EPERM, "%s: the runtime folder is owned by uid %u, "
                        "not by uid %u: refused", out, (unsigned)st.st_uid,
                        (unsigned)geteuid());
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return vd_set_error(EPERM, "%s: the runtime folder is writable by group "
                        "or others (mode %03o): refused", out,
                        (unsigned)(st.st_mode & 0777));
  return 0;
}

/* The entry path of the descriptor at DESC (its current inode). */
static int rt_entry_path(const char *desc, bool create, char *out,
                         size_t len)
{
  char dir[PATH_MAX];
  struct stat st;
  if (stat(desc, &st) != 0)
    return vd_set_error(errno, "%s: %s", desc, strerror(errno));
  int r = vd_raid_runtime_dir(dir, sizeof dir, create);
  if (r < 0)
    return r;
  int n = snprintf(out, len, "%s/raid-%llx-%llx", dir,
                   (unsigned long long)st.st_dev,
                   (unsigned long long)st.st_ino);
  if (n < 0 || (size_t)n >= len)
    return vd_set_error(ENAMETOOLONG, "%s: runtime entry path too long", dir);
  return 0;
}

/* One "KEY VALUE\n" line at *P: VALUE (printable, non-empty) to OUT. */
static bool rt_field(char **p, const char *key, char *out, size_t len)
{
  size_t kl = strlen(key);
  if (strncmp(*p, key, kl) != 0 || (*p)[kl] != ' ')
    return false;
  char *v = *p + kl + 1, *nl = strchr(v, '\n');
  if (!nl || nl == v || (size_t)(nl - v) >= len)
    return false;
  for (char *c = v; c < nl; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f)
      return false;
  memcpy(out, v, (size_t)(nl - v));
  out[nl - v] = '\0';
  *p = nl + 1;
  return true;
}

int vd_raid_served_lookup(const char *desc, struct vd_raid_served *out)
{
  memset(out, 0, sizeof *out);
  int r = rt_entry_path(desc, false, out->entry, sizeof out->entry);
  if (r < 0)
    return r;
  int fd = open(out->entry, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return 0;
    if (errno == ELOOP)
      return vd_set_error(ELOOP, "%s: runtime entry is a symbolic link: "
                          "refused", out->entry);
    return vd_set_error(errno, "%s: %s", out->entry, strerror(errno));
  }
  struct stat st;
  char buf[RT_ENTRY_MAX + 1];
  ssize_t n = -1;
  if (fstat(fd, &st) == 0)
    n = read(fd, buf, sizeof buf);
  int e = errno;
  close(fd);
  if (n < 0)
    return vd_set_error(e, "%s: %s", out->entry, strerror(e));
  if (!S_ISREG(st.st_mode) || st.st_nlink != 1)
    return vd_set_error(EPERM, "%s: runtime entry is not a regular file "
                        "with one link: refused", out->entry);
  if (st.st_uid != geteuid() && st.st_uid != 0)
    return vd_set_error(EPERM, "%s: runtime entry owned by uid %u, not by "
                        "uid %u or root: refused", out->entry,
                        (unsigned)st.st_uid, (unsigned)geteuid());
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return vd_set_error(EPERM, "%s: runtime entry writable by group or "
                        "others (mode %03o): refused", out->entry,
                        (unsigned)(st.st_mode & 0777));
  out->entry_dev = st.st_dev;
  out->entry_ino = st.st_ino;
  buf[n] = '\0';
  char pid[16], *p = buf, *end;
  if (n > RT_ENTRY_MAX || strlen(buf) != (size_t)n ||
      !rt_field(&p, "pid", pid, sizeof pid) ||
      !rt_field(&p, "socket", out->socket, sizeof out->socket) ||
      !rt_field(&p, "device", out->device, sizeof out->device) || *p ||
      out->socket[0] != '/' || pid[0] < '1' || pid[0] > '9')
    return vd_set_error(EINVAL, "%s: malformed runtime entry", out->entry);
  errno = 0;
  long v = strtol(pid, &end, 10);
  if (errno || *end || v <= 0 || v > INT_MAX)
    return vd_set_error(EINVAL, "%s: malformed runtime entry", out->entry);
  out->pid = (int)v;
  out->alive = kill((pid_t)v, 0) == 0 || errno != ESRCH;
  return 1;
}

int vd_raid_remove_stale(const struct vd_raid_served *sv)
{
  if (kill((pid_t)sv->pid, 0) == 0 || errno != ESRCH)
    return vd_set_error(EBUSY, "%s: process %d still runs", sv->entry,
                        sv->pid);
  struct stat st;
  if (lstat(sv->entry, &st) == 0 && st.st_dev == sv->entry_dev &&
      st.st_ino == sv->entry_ino && unlink(sv->entry) != 0)
    return vd_set_error(errno, "%s: %s", sv->entry, strerror(errno));
  /* A server without --control had its socket in the runtime folder,
   * named PROGRAM-PID.sock: that one is stale too. */
  char dir[PATH_MAX], tail[32];
  size_t dl, sl = strlen(sv->socket), tl;
  snprintf(tail, sizeof tail, "-%d.sock", sv->pid);
  tl = strlen(tail);
  if (vd_raid_runtime_dir(dir, sizeof dir, false) == 0 &&
      (dl = strlen(dir)) < sl && strncmp(sv->socket, dir, dl) == 0 &&
      sv->socket[dl] == '/' && !strchr(sv->socket + dl + 1, '/') &&
      sl > tl && strcmp(sv->socket + sl - tl, tail) == 0 &&
      lstat(sv->socket, &st) == 0 && S_ISSOCK(st.st_mode))
    unlink(sv->socket);
  return 0;
}

int vd_raid_served_by(const char *desc)
{
  struct vd_raid_served sv;
  return vd_raid_served_lookup(desc, &sv) == 1 && sv.alive &&
         sv.pid != getpid() ? sv.pid : 0;
}

/* Write E's entry under the descriptor's current inode. */
static int rt_write(struct vd_raid_entry *e)
{
  char path[PATH_MAX], tmp[PATH_MAX + 32], text[RT_ENTRY_MAX + 1];
  int r = rt_entry_path(e->desc, true, path, sizeof path);
  if (r < 0)
    return r;
  int n = snprintf(text, sizeof text, "pid %ld\nsocket %s\ndevice %s\n",
                   (long)getpid(), e->socket, e->device);
  if (n < 0 || (size_t)n >= sizeof text)
    return vd_set_error(ENAMETOOLONG, "%s: runtime entry too long", path);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(tmp, sizeof tmp, "%s.%ld.%lx", path, (long)getpid(),
           (unsigned long)ts.tv_nsec);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                0600);
  if (fd < 0)
    return vd_set_error(errno, "%s: %s", tmp, strerror(errno));
  struct stat st;
  if (write(fd, text, (size_t)n) != n || fstat(fd, &st) != 0) {
    int err = errno ? errno : EIO;
    close(fd);
    unlink(tmp);
    return vd_set_error(err, "%s: %s", tmp, strerror(err));
  }
  close(fd);
  /* link never replaces: a live server's entry stays; a dead one's is
   * removed (if it is still the file we judged) and the link retried. */
  for (int tries = 0;; tries++) {
    if (link(tmp, path) == 0)
      break;
    int err = errno;
    if (err != EEXIST || tries >= 2) {
      unlink(tmp);
      return vd_set_error(err, "%s: %s", path, strerror(err));
    }
    struct vd_raid_served sv;
    int lr = vd_raid_served_lookup(e->desc, &sv);
    if (lr == 0 || (lr == 1 && !sv.alive && vd_raid_remove_stale(&sv) == 0))
      continue;                 /* gone meanwhile, or stale and removed */
    unlink(tmp);
    if (lr == 1)
      return vd_set_error(EEXIST, "%s: already served by process %d "
                          "(runtime entry %s)", e->desc, sv.pid, path);
    return lr;                  /* an entry we cannot trust: named */
  }
  unlink(tmp);
  char *p = strdup(path);
  if (!p) {
    unlink(path);
    return vd_set_error(ENOMEM, "out of memory");
  }
  free(e->path);
  e->path = p;
  e->dev = st.st_dev;
  e->ino = st.st_ino;
  return 0;
}

static void rt_remove(struct vd_raid_entry *e)
{
  struct stat st;
  if (e->path && lstat(e->path, &st) == 0 && st.st_dev == e->dev &&
      st.st_ino == e->ino)
    unlink(e->path);
  free(e->path);
  e->path = NULL;
}

int vd_raid_publish(const char *desc, const char *socket, const char *device,
                    struct vd_raid_entry **out)
{
  *out = NULL;
  if (!socket || socket[0] != '/' || strlen(socket) >= 108 || !device ||
      !*device || strlen(device) >= 256 || strchr(socket, '\n') ||
      strchr(device, '\n'))
    return vd_set_error(EINVAL, "%s: cannot publish socket '%s' device "
                        "'%s': an absolute socket path under 108 bytes and a "
                        "device name of one line are needed", desc,
                        socket ? socket : "", device ? device : "");
  struct vd_raid_entry *e = calloc(1, sizeof *e);
  if (!e)
    return vd_set_error(ENOMEM, "out of memory");
  e->desc = realpath(desc, NULL);
  e->socket = strdup(socket);
  e->device = strdup(device);
  int r;
  if (!e->desc)
    r = vd_set_error(errno, "%s: %s", desc, strerror(errno));
  else if (!e->socket || !e->device)
    r = vd_set_error(ENOMEM, "out of memory");
  else
    r = rt_write(e);
  if (r < 0) {
    vd_raid_unpublish(e);
    return r;
  }
  *out = e;
  return 0;
}

int vd_raid_republish(struct vd_raid_entry *e)
{
  char *old = e->path;
  dev_t odev = e->dev;
  ino_t oino = e->ino;
  e->path = NULL;
  int r = rt_write(e);
  if (r < 0 && r != -EEXIST) {
    e->path = old;              /* keep the old one: better than none */
    e->dev = odev;
    e->ino = oino;
    return r;
  }
  if (r == -EEXIST) {
    /* Same inode as before (nothing was rewritten): keep ours. */
    e->path = old;
    e->dev = odev;
    e->ino = oino;
    return 0;
  }
  struct vd_raid_entry prev = { .path = old, .dev = odev, .ino = oino };
  if (old && strcmp(old, e->path) != 0)
    rt_remove(&prev);
  else
    free(old);
  return 0;
}

void vd_raid_unpublish(struct vd_raid_entry *e)
{
  if (!e)
    return;
  rt_remove(e);
  free(e->desc);
  free(e->socket);
  free(e->device);
  free(e);
}
