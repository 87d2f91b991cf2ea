/* Unit tests for raid/runtime.c: the runtime folder and the entries that
 * map a served array (by its descriptor's device and inode) to the
 * serving process's control socket.  Run as root, the ownership checks
 * are tested with files given to uid 65534 (skipped otherwise). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/raid.h"

static char tmpdir[256];
static char rtdir[300];
static char desc[300];

static void setup(void)
{
  snprintf(rtdir, sizeof rtdir, "%s/run", tmpdir);
  snprintf(desc, sizeof desc, "%s/a.vdraid", tmpdir);
  FILE *f = fopen(desc, "w");
  CU_ASSERT_FATAL(f != NULL);
  fputs("not parsed here\n", f);
  fclose(f);
  setenv("VDISK_RUNTIME_DIR", rtdir, 1);
}

/* The folder: created 0700, refused when it is a symlink, not ours, or
 * writable by others. */
static void test_dir(void)
{
  char d[PATH_MAX];
  setup();
  rmdir(rtdir);
  CU_ASSERT(vd_raid_runtime_dir(d, sizeof d, false) == 0);
  CU_ASSERT(strcmp(d, rtdir) == 0);
  CU_ASSERT(access(rtdir, F_OK) != 0);         /* not created by lookups */
  umask(0);
  CU_ASSERT(vd_raid_runtime_dir(d, sizeof d, true) == 0);
  umask(022);
  struct stat st;
  CU_ASSERT_FATAL(lstat(rtdir, &st) == 0);
  CU_ASSERT(S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700);
  CU_ASSERT(chmod(rtdir, 0777) == 0);
  CU_ASSERT(vd_raid_runtime_dir(d, sizeof d, true) == -EPERM);
  CU_ASSERT(strstr(vd_error(), "writable by group or others") != NULL);
  CU_ASSERT(chmod(rtdir, 0700) == 0);
  CU_ASSERT(rmdir(rtdir) == 0);
  char elsewhere[320];
  snprintf(elsewhere, sizeof elsewhere, "%s/elsewhere", tmpdir);
  CU_ASSERT(mkdir(elsewhere, 0700) == 0);
  CU_ASSERT(symlink(elsewhere, rtdir) == 0);
  CU_ASSERT(vd_raid_runtime_dir(d, sizeof d, true) == -ELOOP);
  CU_ASSERT(vd_raid_runtime_dir(d, sizeof d, false) == -ELOOP);
  CU_ASSERT(unlink(rtdir) == 0);
  CU_ASSERT(rmdir(elsewhere) == 0);
  if (geteuid() == 0) {
    CU_ASSERT(mkdir(rtdir, 0700) == 0);
    CU_ASSERT(chown(rtdir, 65534, 65534) == 0);
    CU_ASSERT(vd_raid_runtime_dir(d, sizeof d, true) == -EPERM);
    CU_ASSERT(strstr(vd_error(), "owned by uid 65534") != NULL);
    CU_ASSERT(rmdir(rtdir) == 0);
  }
  /* A relative override is refused (the daemon changes folder). */
  setenv("VDISK_RUNTIME_DIR", "relative/run", 1);
  CU_ASSERT(vd_raid_runtime_dir(d, sizeof d, true) == -EINVAL);
  setenv("VDISK_RUNTIME_DIR", rtdir, 1);
  /* Without the override: $XDG_RUNTIME_DIR/vdisk, else per uid. */
  unsetenv("VDISK_RUNTIME_DIR");
  setenv("XDG_RUNTIME_DIR", "/xdg/run", 1);
  CU_ASSERT(vd_raid_runtime_dir(d, sizeof d, false) == 0);
  CU_ASSERT(strcmp(d, "/xdg/run/vdisk") == 0);
  unsetenv("XDG_RUNTIME_DIR");
  CU_ASSERT(vd_raid_runtime_dir(d, sizeof d, false) == 0);
  char want[64];
  if (geteuid() == 0)
    snprintf(want, sizeof want, "/run/vdisk");
  else
    snprintf(want, sizeof want, "/tmp/vdisk-%u", (unsigned)geteuid());
  CU_ASSERT(strcmp(d, want) == 0);
  setenv("VDISK_RUNTIME_DIR", rtdir, 1);
}

/* Publish, look up, unpublish; the entry is named after the descriptor's
 * device and inode, so another name of the same file finds it. */
static void test_entry(void)
{
  setup();
  struct vd_raid_served sv;
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == 0);
  struct vd_raid_entry *e = NULL;
  CU_ASSERT_FATAL(vd_raid_publish(desc, "/some/ctl.sock", "disk0", &e) == 0);
  struct stat st, dst;
  CU_ASSERT_FATAL(stat(desc, &dst) == 0);
  char name[400];
  snprintf(name, sizeof name, "%s/raid-%llx-%llx", rtdir,
           (unsigned long long)dst.st_dev, (unsigned long long)dst.st_ino);
  CU_ASSERT_FATAL(lstat(name, &st) == 0);
  CU_ASSERT(S_ISREG(st.st_mode) && (st.st_mode & 0777) == 0600);
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == 1);
  CU_ASSERT(sv.pid == getpid() && sv.alive);
  CU_ASSERT(strcmp(sv.socket, "/some/ctl.sock") == 0);
  CU_ASSERT(strcmp(sv.device, "disk0") == 0);
  CU_ASSERT(strcmp(sv.entry, name) == 0);
  /* Through a symlink and a relative name: the same file. */
  char alias[320];
  snprintf(alias, sizeof alias, "%s/alias.vdraid", tmpdir);
  CU_ASSERT(symlink(desc, alias) == 0);
  CU_ASSERT(vd_raid_served_lookup(alias, &sv) == 1);
  unlink(alias);
  /* Only one server per array: a second publish is refused. */
  struct vd_raid_entry *e2 = NULL;
  CU_ASSERT(vd_raid_publish(desc, "/other.sock", "x", &e2) == -EEXIST);
  /* Republish (the descriptor was rewritten: new inode). */
  char tmp[320];
  snprintf(tmp, sizeof tmp, "%s.new", desc);
  FILE *f = fopen(tmp, "w");
  fputs("rewritten\n", f);
  fclose(f);
  CU_ASSERT(rename(tmp, desc) == 0);
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == 0);
  CU_ASSERT(vd_raid_republish(e) == 0);
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == 1);
  CU_ASSERT(access(name, F_OK) != 0);          /* the old entry is gone */
  vd_raid_unpublish(e);
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == 0);
  vd_raid_unpublish(NULL);
}

/* Unpublish removes only our own file, never one put there since. */
static void test_unpublish_only_ours(void)
{
  setup();
  struct vd_raid_entry *e = NULL;
  CU_ASSERT_FATAL(vd_raid_publish(desc, "/s.sock", "d", &e) == 0);
  struct vd_raid_served sv;
  CU_ASSERT_FATAL(vd_raid_served_lookup(desc, &sv) == 1);
  char tmp[PATH_MAX + 8];
  snprintf(tmp, sizeof tmp, "%s.x", sv.entry);
  FILE *f = fopen(tmp, "w");
  fprintf(f, "pid %d\nsocket /s.sock\ndevice d\n", (int)getpid());
  fclose(f);
  chmod(tmp, 0600);
  CU_ASSERT(rename(tmp, sv.entry) == 0);
  vd_raid_unpublish(e);
  CU_ASSERT(access(sv.entry, F_OK) == 0);
  unlink(sv.entry);
}

/* Entries that cannot be trusted are refused by the lookup, naming why;
 * a dead server's entry is reported stale and removed on request. */
static void test_untrusted(void)
{
  setup();
  struct vd_raid_entry *e = NULL;
  CU_ASSERT_FATAL(vd_raid_publish(desc, "/s.sock", "d", &e) == 0);
  struct vd_raid_served sv;
  CU_ASSERT_FATAL(vd_raid_served_lookup(desc, &sv) == 1);
  char entry[PATH_MAX];
  snprintf(entry, sizeof entry, "%s", sv.entry);
  CU_ASSERT(chmod(entry, 0666) == 0);
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == -EPERM);
  CU_ASSERT(strstr(vd_error(), "writable by group or others") != NULL);
  CU_ASSERT(chmod(entry, 0600) == 0);
  if (geteuid() == 0) {
    CU_ASSERT(chown(entry, 65534, 65534) == 0);
    CU_ASSERT(vd_raid_served_lookup(desc, &sv) == -EPERM);
    CU_ASSERT(strstr(vd_error(), "owned by uid 65534") != NULL);
    CU_ASSERT(chown(entry, 0, 0) == 0);
  }
  vd_raid_unpublish(e);
  /* A symlink, and a malformed file. */
  CU_ASSERT(symlink("/etc/passwd", entry) == 0);
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == -ELOOP);
  unlink(entry);
  int fd = open(entry, O_CREAT | O_EXCL | O_WRONLY, 0600);
  CU_ASSERT(write(fd, "pid x\n", 6) == 6);
  close(fd);
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == -EINVAL);
  unlink(entry);
  /* A dead process's entry: stale, removed only when asked. */
  pid_t child = fork();
  if (child == 0) {
    struct vd_raid_entry *ce;
    _exit(vd_raid_publish(desc, "/dead.sock", "d", &ce) == 0 ? 0 : 1);
  }
  int status;
  CU_ASSERT(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
            WEXITSTATUS(status) == 0);
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == 1);
  CU_ASSERT(sv.pid == child && !sv.alive);
  CU_ASSERT(vd_raid_served_by(desc) == 0);
  CU_ASSERT(vd_raid_remove_stale(&sv) == 0);
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == 0);
  /* A stale entry of ours is replaced by a new publish. */
  child = fork();
  if (child == 0) {
    struct vd_raid_entry *ce;
    _exit(vd_raid_publish(desc, "/dead.sock", "d", &ce) == 0 ? 0 : 1);
  }
  CU_ASSERT(waitpid(child, &status, 0) == child);
  CU_ASSERT(vd_raid_publish(desc, "/live.sock", "d", &e) == 0);
  CU_ASSERT(vd_raid_served_lookup(desc, &sv) == 1 && sv.alive &&
            strcmp(sv.socket, "/live.sock") == 0);
  vd_raid_unpublish(e);
}

int main(void)
{
  snprintf(tmpdir, sizeof tmpdir, "%s/vdrt.XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmpdir))
    return 99;
  static const struct cu_test tests[] = {
    { "runtime folder: location and checks", test_dir },
    { "entries: publish, look up, republish, unpublish", test_entry },
    { "unpublish removes only our own entry", test_unpublish_only_ours },
    { "untrusted and stale entries", test_untrusted },
    { NULL, NULL }
  };
  int rc = cu_main("raid-runtime", tests);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0)
    return 99;
  return rc;
}
