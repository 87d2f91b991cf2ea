/* RAID online requests.
 *
 * Online operation: the process that has the array open for writing (a
 * vdisk-nbd or vdisk-fuse serving it) holds the members' locks, so vdtool
 * cannot open them.  That process runs a monitor thread that watches for a
 * request file next to the descriptor (ARRAY.request: "fail SLOT",
 * "replace SLOT FORMAT PATH", "scrub" or "scrub repair"), executes it and
 * answers in ARRAY.result.  ARRAY.served holds its pid while it serves.
 * The request file is checked before it is trusted (owner, type, mode,
 * every field): see "online requests" below and docs/raid-format.md.
 * Rebuilds run on a background thread of that process and checkpoint their
 * progress in every member's superblock, so a killed rebuild resumes.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/endian.h"
#include "raid/raid.h"
/* ---- online requests ----
 *
 * The request file is a control channel in a folder that other users may
 * be able to write, so the serving process trusts it only as far as it
 * can check it (until the control socket replaces it):
 *  - opened with O_NOFOLLOW | O_NONBLOCK (a symlink is refused, a FIFO
 *    never blocks the monitor) and checked with fstat after the open:
 *    a regular file with one link, owned by this process's uid or root,
 *    not writable by group or others.  Anything else is ignored with one
 *    log line on stderr and left alone (a legitimate request replaces it
 *    by rename);
 *  - one line of at most RAID_REQ_MAX bytes; every field parsed strictly
 *    (slots and rates with strtoull, no sign, no trailing bytes, range
 *    checked; formats must name a driver; paths must be absolute) and a
 *    malformed request is answered with an error.
 * Every side file is written through raid_file_replace (O_EXCL |
 * O_NOFOLLOW temporary, rename, folder fsync). */

#define RAID_REQ_MAX 4200

char *raid_side_path(const char *desc, const char *suffix)
{
  size_t l = strlen(desc) + strlen(suffix) + 1;
  char *p = malloc(l);
  if (p)
    snprintf(p, l, "%s%s", desc, suffix);
  return p;
}

/* Read a small side file without following a symlink or blocking on a
 * FIFO.  Returns the byte count (BUF NUL-terminated) with *ST filled, or
 * -ENOENT, -ELOOP (a symlink), -ENODEV (not a regular file), -EFBIG (LEN - 1 bytes or more), or another -errno. */
static ssize_t raid_read_side(const char *path, char *buf, size_t len,
                              struct stat *st)
{
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  if (fstat(fd, st) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  if (!S_ISREG(st->st_mode)) {
    close(fd);
    return -ENODEV;
  }
  size_t got = 0;
  for (;;) {
    ssize_t n = read(fd, buf + got, len - 1 - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      return -e;
    }
    if (n == 0)
      break;
    got += (size_t)n;
    if (got == len - 1) {
      close(fd);
      return -EFBIG;
    }
  }
  close(fd);
  buf[got] = '\0';
  return (ssize_t)got;
}

/* vdtool's side: believe ARRAY.served and ARRAY.result only when they were
 * written by our own uid or root (the serving process must be one of them
 * anyway, see raid_monitor_poll), not by another user of the folder. */
static bool raid_side_trusted(const struct stat *st)
{
  return st->st_uid == geteuid() || st->st_uid == 0;
}

static int raid_write_side(const char *path, const char *text, mode_t mode)
{
  return raid_file_replace(path, text, strlen(text), mode);
}

/* Strict decimal: digits only (no sign, space or suffix), <= MAX. */
static bool raid_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
  if (*s < '0' || *s > '9')
    return false;
  errno = 0;
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || v > max)
    return false;
  *out = v;
  return true;
}

static void raid_mismatch_note(void *opaque, uint64_t stripe, uint64_t off)
{
  (void)off;
  char *list = opaque;
  size_t l = strlen(list);
  if (l < 900)
    snprintf(list + l, 1024 - l, "%s%" PRIu64, l ? "," : "", stripe);
}

/* Execute one request line (already checked to be one line of printable
 * bytes, newline removed) and write the answer to RES. */
static void raid_handle_request(struct raid_array *a, char *req, char *res,
                                size_t reslen)
{
  int r;
  uint64_t v;
  if (strncmp(req, "fail ", 5) == 0) {
    if (!raid_parse_u64(req + 5, a->n - 1, &v)) {
      snprintf(res, reslen, "error %s: bad request '%.64s': fail needs a "
               "slot number below %u", a->desc_path, req, a->n);
      return;
    }
    r = vd_raid_fail(a, (int)v);
    snprintf(res, reslen, r == 0 ? "ok" : "error %s", vd_error());
  } else if (strncmp(req, "replace ", 8) == 0) {
    /* replace SLOT FORMAT PATH */
    char *slot_s = req + 8, *fmt = strchr(slot_s, ' ');
    char *path = fmt ? strchr(fmt + 1, ' ') : NULL;
    if (fmt)
      *fmt++ = '\0';
    if (path)
      *path++ = '\0';
    const char *bad = NULL;
    if (!fmt || !path)
      bad = "expected 'replace SLOT FORMAT PATH'";
    else if (!raid_parse_u64(slot_s, a->n - 1, &v))
      bad = "slot number out of range";
    else if (strcmp(fmt, "-") && (strlen(fmt) > 31 || !vd_find_driver(fmt)))
      bad = "unknown format";
    else if (path[0] != '/' || strlen(path) >= PATH_MAX)
      bad = "the path must be absolute";
    if (bad) {
      snprintf(res, reslen, "error %s: bad replace request: %s",
               a->desc_path, bad);
      return;
    }
    r = raid_replace_install(a, (int)v, path, strcmp(fmt, "-") ? fmt : NULL);
    if (r == 0)
      raid_rebuild_start(a);
    snprintf(res, reslen, r == 0 ? "ok rebuilding" : "error %s", vd_error());
  } else if (strcmp(req, "scrub") == 0 || strcmp(req, "scrub repair") == 0) {
    char list[1024] = "";
    struct vd_raid_scrub_report rep = { .mismatch = raid_mismatch_note,
                                        .opaque = list };
    r = vd_raid_scrub(a, req[5] != '\0', &rep, NULL, NULL);
    if (r == 0)
      snprintf(res, reslen, "ok %" PRIu64 " %" PRIu64 " %" PRIu64 " %s",
               rep.stripes, rep.mismatches, rep.repaired, list);
    else
      snprintf(res, reslen, "error %s", vd_error());
  } else if (strncmp(req, "rate ", 5) == 0) {
    if (!raid_parse_u64(req + 5, UINT64_MAX, &v)) {
      snprintf(res, reslen, "error %s: bad request: rate needs bytes per "
               "second", a->desc_path);
      return;
    }
    atomic_store(&a->rebuild_rate, v);
    snprintf(res, reslen, "ok");
  } else {
    snprintf(res, reslen, "error %s: unknown request '%.64s'", a->desc_path,
             req);
  }
}

/* One look at the request file (monitor thread). */
static void raid_monitor_poll(struct raid_array *a)
{
  char req[RAID_REQ_MAX + 1], res[2048];
  struct stat st;
  ssize_t n = raid_read_side(a->mon_req, req, sizeof req, &st);
  if (n == -ENOENT)
    return;
  char why[160] = "";
  if (n == -ELOOP)
    snprintf(why, sizeof why, "it is a symbolic link");
  else if (n == -ENODEV)
    snprintf(why, sizeof why, "it is not a regular file");
  else if (n < 0 && n != -EFBIG)
    snprintf(why, sizeof why, "%s", strerror((int)-n));
  else if (st.st_uid != geteuid() && st.st_uid != 0)
    snprintf(why, sizeof why, "owned by uid %u, not by uid %u or root",
             (unsigned)st.st_uid, (unsigned)geteuid());
  else if (st.st_mode & (S_IWGRP | S_IWOTH))
    snprintf(why, sizeof why, "writable by group or others (mode %03o)",
             (unsigned)(st.st_mode & 0777));
  else if (st.st_nlink != 1)
    snprintf(why, sizeof why, "it has %lu hard links",
             (unsigned long)st.st_nlink);
  if (why[0]) {
    /* Not ours to execute (nor to delete): log it once per file. */
    struct stat ls;
    if (lstat(a->mon_req, &ls) != 0)
      return;
    if (ls.st_dev == a->mon_ign_dev && ls.st_ino == a->mon_ign_ino &&
        ls.st_mtim.tv_sec == a->mon_ign_mtime.tv_sec &&
        ls.st_mtim.tv_nsec == a->mon_ign_mtime.tv_nsec)
      return;
    a->mon_ign_dev = ls.st_dev;
    a->mon_ign_ino = ls.st_ino;
    a->mon_ign_mtime = ls.st_mtim;
    fprintf(stderr, "vdisk: %s: request ignored: %s\n", a->mon_req, why);
    return;
  }
  /* A request we accept: take it away before answering, so a following
   * request (written once the answer is seen) is never deleted. */
  unlink(a->mon_req);
  if (n == -EFBIG || n == 0 || req[n - 1] != '\n' ||
      strchr(req, '\n') != req + n - 1) {
    snprintf(res, sizeof res, "error %s: bad request: expected one line of "
             "at most %d bytes", a->desc_path, RAID_REQ_MAX - 1);
  } else {
    req[n - 1] = '\0';
    bool printable = true;
    for (ssize_t i = 0; i < n - 1; i++)
      if ((unsigned char)req[i] < 0x20 || req[i] == 0x7f)
        printable = false;
    if (!printable)
      snprintf(res, sizeof res, "error %s: bad request: control characters",
               a->desc_path);
    else
      raid_handle_request(a, req, res, sizeof res);
  }
  strcat(res, "\n");
  if (raid_write_side(a->mon_res, res, 0600) < 0)
    fprintf(stderr, "vdisk: %s\n", vd_error());
}

static void *raid_monitor_main(void *opaque)
{
  struct raid_array *a = opaque;
  while (!atomic_load(&a->stop)) {
    raid_monitor_poll(a);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&a->mon_lock);
    if (!atomic_load(&a->stop))
      pthread_cond_timedwait(&a->mon_cond, &a->mon_lock, &ts);
    pthread_mutex_unlock(&a->mon_lock);
  }
  return NULL;
}

void raid_monitor_start(struct raid_array *a)
{
  if (!a->writable || a->monitor_running)
    return;
  if (!a->mon_req)
    a->mon_req = raid_side_path(a->desc_abs, ".request");
  if (!a->mon_res)
    a->mon_res = raid_side_path(a->desc_abs, ".result");
  if (!a->mon_req || !a->mon_res)
    return;
  char *sp = raid_side_path(a->desc_abs, ".served");
  if (!sp)
    return;
  char pid[32];
  snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (raid_write_side(sp, pid, 0644) < 0)
    fprintf(stderr, "vdisk: %s\n", vd_error());
  free(sp);
  atomic_store(&a->stop, false);
  pthread_mutex_init(&a->mon_lock, NULL);
  pthread_cond_init(&a->mon_cond, NULL);
  if (pthread_create(&a->monitor, NULL, raid_monitor_main, a) == 0)
    a->monitor_running = true;
}

void raid_monitor_stop(struct raid_array *a)
{
  if (!a->monitor_running)
    return;
  pthread_mutex_lock(&a->mon_lock);
  atomic_store(&a->stop, true);
  pthread_cond_signal(&a->mon_cond);
  pthread_mutex_unlock(&a->mon_lock);
  pthread_join(a->monitor, NULL);
  a->monitor_running = false;
  pthread_mutex_destroy(&a->mon_lock);
  pthread_cond_destroy(&a->mon_cond);
  char *sp = raid_side_path(a->desc_abs, ".served");
  if (sp) {
    unlink(sp);
    free(sp);
  }
}

int vd_raid_served_by(const char *desc)
{
  char *sp = raid_side_path(desc, ".served");
  if (!sp)
    return 0;
  char buf[64];
  struct stat st;
  ssize_t n = raid_read_side(sp, buf, sizeof buf, &st);
  free(sp);
  if (n <= 0 || !raid_side_trusted(&st))
    return 0;
  char *nl = strchr(buf, '\n');
  if (nl)
    *nl = '\0';
  uint64_t pid;
  if (!raid_parse_u64(buf, INT_MAX, &pid) || pid == 0 ||
      (pid_t)pid == getpid() ||
      (kill((pid_t)pid, 0) != 0 && errno == ESRCH))
    return 0;
  return (int)pid;
}

int vd_raid_request(const char *desc, const char *request, char *result,
                    size_t reslen, int timeout)
{
  char *reqp = raid_side_path(desc, ".request");
  char *resp = raid_side_path(desc, ".result");
  int r = 0;
  if (!reqp || !resp) {
    r = vd_set_error(ENOMEM, "%s: out of memory", desc);
    goto out;
  }
  unlink(resp);
  char line[RAID_REQ_MAX];
  if ((size_t)snprintf(line, sizeof line, "%s\n", request) >= sizeof line) {
    r = vd_set_error(EINVAL, "%s: request too long", desc);
    goto out;
  }
  r = raid_write_side(reqp, line, 0600);
  if (r < 0) {
    r = vd_prefix_error(-r, "%s: cannot leave a request", reqp);
    goto out;
  }
  double t0 = raid_now();
  for (;;) {
    char buf[2048];
    struct stat st;
    ssize_t n = raid_read_side(resp, buf, sizeof buf, &st);
    if (n >= 0 || n == -EFBIG || n == -ELOOP || n == -ENODEV) {
      unlink(resp);
      if (n < 0 || !raid_side_trusted(&st)) {
        r = vd_set_error(EIO, "%s: the answer is not a regular file of "
                         "uid %u or root: ignored", resp,
                         (unsigned)geteuid());
        break;
      }
      char *nl = strchr(buf, '\n');
      if (nl)
        *nl = '\0';
      if (strncmp(buf, "ok", 2) == 0) {
        snprintf(result, reslen, "%s", buf[2] ? buf + 3 : "");
        r = 0;
      } else {
        r = vd_set_error(EIO, "%s", strncmp(buf, "error ", 6) == 0
                         ? buf + 6 : buf);
      }
      break;
    }
    if ((timeout > 0 && raid_now() - t0 > timeout) || !vd_raid_served_by(desc)) {
      unlink(reqp);
      r = vd_set_error(ETIMEDOUT, "%s: the serving process did not answer "
                       "(see its log)", desc);
      break;
    }
    raid_sleep(0.05);
  }
out:
  free(reqp);
  free(resp);
  return r;
}
