/* Unix listening sockets created safely beside other people's files, and
 * the files a process created and must remove at exit only if they are
 * still its own (shared by the control socket and vdisk-nbd --socket). */
#ifndef VDISK_CONTROL_UNIXSOCK_H
#define VDISK_CONTROL_UNIXSOCK_H

#include <stddef.h>
#include <sys/types.h>

/* A file we created: removed at exit only if the name still leads to the
 * same inode, never what somebody put there since. */
struct vc_own_file {
  char *path;                 /* NULL: nothing owned */
  dev_t dev;
  ino_t ino;
};

/* Remember PATH's current inode as ours (no-op if it cannot be lstat'ed),
 * under its absolute name (the process may change folder later).
 * Returns 0 or -ENOMEM. */
int vc_own_file_set(struct vc_own_file *f, const char *path);
/* Unlink F's path if it still names our inode; forget it either way. */
void vc_own_file_remove(struct vc_own_file *f);

/* Listen on a Unix socket at PATH with permissions MODE whatever the
 * umask, race-free: the socket is bound in a fresh private (0700) folder
 * beside PATH, given MODE there, and renamed onto PATH without replacing
 * anything (RENAME_NOREPLACE), so nobody can connect before the mode is
 * right and no umask change touches other threads.  An existing PATH is
 * removed first only if it is a socket nobody listens on; any other file,
 * a symlink (never followed) or a live socket is refused.  Returns the
 * listening fd (close-on-exec) and records PATH in *OWN, or a negative
 * errno with a message naming PATH in MSG. */
int vc_unix_listen(const char *path, mode_t mode, struct vc_own_file *own,
                   char *msg, size_t msglen);

/* Write the calling process's id to PATH, mode 0644 whatever the umask:
 * into a new file beside it (O_EXCL | O_NOFOLLOW, so nothing planted
 * there is followed), synced, renamed over PATH (which replaces a symlink,
 * never its target), then the folder is synced; records PATH in *OWN.
 * Returns 0, or a negative errno with a message naming PATH in MSG. */
int vc_pid_file_write(const char *path, struct vc_own_file *own, char *msg,
                      size_t msglen);

#endif
