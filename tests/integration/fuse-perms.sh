#!/usr/bin/env bash
# vdisk-fuse permissions (issue 10, item 5): each disk is shown with the
# owner, group and mode of its image file (minus the write bits when it is
# served read-only) and the kernel enforces them (default_permissions), so
# under -o allow_other a user who may not read the image file cannot read
# the disk and one who may not write it cannot write the disk.  chmod and
# chown on a disk are refused.  The modes do not depend on vdisk-fuse's
# umask, and vdisk-fuse creates no file of its own (item 11).
# Runs as root: the other users are nobody/nogroup and daemon, via setpriv.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires setpriv
[ "$(id -u)" -eq 0 ] || skip "needs root to act as other users"
getent passwd nobody >/dev/null && getent group nogroup >/dev/null &&
  getent passwd daemon >/dev/null || skip "no nobody/nogroup/daemon accounts"

# errno_as USER STATEMENTS: errno_of as USER (primary group nogroup for
# nobody, the account's own for others; no supplementary groups).
errno_as() {
  local user=$1 group=nogroup
  [ "$user" = nobody ] || group=$(id -gn "$user")
  setpriv --reuid="$user" --regid="$group" --clear-groups -- \
    /usr/bin/python3 -c '
import errno, os, sys
try:
    exec(sys.argv[1])
    print("OK")
except AssertionError:
    print("WRONG-DATA")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))' "$2"
}
# expect_as USER ERRNO STATEMENTS WHAT
expect_as() {
  local got
  got=$(errno_as "$1" "$3")
  [ "$got" = "$2" ] || fail "$4: as $1 got $got, expected $2"
}

cd "$VD_TMP"
chmod 755 "$VD_TMP"          # other users must reach the mount point
mnt=$VD_TMP/mnt
size=$((1024 * 1024))
pattern_bytes $size 61 > secret.img
pattern_bytes $size 62 > public.img
pattern_bytes $size 63 > owned.img
pattern_bytes $size 64 > group.img
chmod 600 secret.img owned.img
chmod 644 public.img
chmod 640 group.img
chown nobody:root owned.img
chown root:nogroup group.img
for f in secret public owned group; do cp $f.img $f.ref; done
chmod 644 ./*.ref             # the other users compare with these

# Under umask 0 (or any other) the modes are the image files': the mount
# takes nothing from the umask.  allow_other as root needs no
# user_allow_other in /etc/fuse.conf (only fusermount3 reads it).
old_umask=$(umask)
umask 0
fuse_mount "$mnt" -o allow_other secret.img public.img owned.img group.img
umask "$old_umask"
grep -q " $mnt fuse.vdisk rw,.*default_permissions.*allow_other" /proc/mounts ||
  fail "not mounted with default_permissions: $(grep " $mnt " /proc/mounts)"
[ "$(stat -c '%a %u %g' "$mnt/secret.raw")" = "600 0 0" ] ||
  fail "secret.raw shown as $(stat -c '%a %u %g' "$mnt/secret.raw"), expected 600 0 0"
[ "$(stat -c '%a %u %g' "$mnt/public.raw")" = "644 0 0" ] ||
  fail "public.raw shown as $(stat -c '%a %u %g' "$mnt/public.raw"), expected 644 0 0"
nobody_uid=$(id -u nobody)
nogroup_gid=$(getent group nogroup | cut -d: -f3)
[ "$(stat -c '%a %u %g' "$mnt/owned.raw")" = "600 $nobody_uid 0" ] ||
  fail "owned.raw shown as $(stat -c '%a %u %g' "$mnt/owned.raw")"
[ "$(stat -c '%a %u %g' "$mnt/group.raw")" = "640 0 $nogroup_gid" ] ||
  fail "group.raw shown as $(stat -c '%a %u %g' "$mnt/group.raw")"

# Root may do anything, as with the files themselves.
cmp "$mnt/secret.raw" secret.ref || fail "root cannot read secret.raw"

# nobody: no access to a root-only 0600 image, read-only access to a 0644
# one, read-write to its own, read-only through the group bits.
s="'$mnt/secret.raw'"
p="'$mnt/public.raw'"
o="'$mnt/owned.raw'"
g="'$mnt/group.raw'"
expect_as nobody EACCES "os.open($s, os.O_RDONLY)" "reading a root-only 0600 image"
expect_as nobody EACCES "os.open($s, os.O_WRONLY)" "writing a root-only 0600 image"
expect_as nobody EACCES "os.open($s, os.O_RDWR)" "opening a root-only 0600 image read-write"
expect_as nobody EACCES "os.truncate($s, $size)" "truncating a root-only 0600 image"
expect_as nobody OK "assert open($p, 'rb').read() == open('public.ref', 'rb').read()" \
  "reading a 0644 image"
expect_as nobody EACCES "os.open($p, os.O_WRONLY)" "writing a 0644 root image"
expect_as nobody EACCES "os.open($p, os.O_RDWR)" "opening a 0644 root image read-write"
expect_as nobody OK "assert open($g, 'rb').read() == open('group.ref', 'rb').read()" \
  "reading a 0640 image through the group"
expect_as nobody EACCES "os.open($g, os.O_WRONLY)" "writing a 0640 image through the group"
expect_as nobody OK "
fd = os.open($o, os.O_RDWR)
assert os.pwrite(fd, b'nobody was here', 4096) == 15
os.fsync(fd)" "writing its own 0600 image"
printf 'nobody was here' | dd of=owned.ref bs=1 seek=4096 conv=notrunc status=none
# daemon is neither owner nor in the group of any of them.
expect_as daemon EACCES "os.open($o, os.O_RDONLY)" "reading another user's 0600 image"
expect_as daemon EACCES "os.open($g, os.O_RDONLY)" "reading a 0640 image of another group"
expect_as daemon OK "os.close(os.open($p, os.O_RDONLY))" "reading a 0644 image"

# chmod and chown are refused, to the owner and to root alike: the mode
# mirrors the image file's (change that one and remount).
expect_as nobody EPERM "os.chmod($o, 0o666)" "chmod by the owner"
expect_as nobody EPERM "os.chmod($p, 0o666)" "chmod by another user"
expect_as nobody EPERM "os.chown($o, 1, 1)" "chown by the owner"
[ "$(errno_of "os.chmod($p, 0o666)")" = EPERM ] || fail "chmod by root was not refused"
[ "$(errno_of "os.chown($p, $nobody_uid, 0)")" = EPERM ] || fail "chown by root was not refused"
[ "$(stat -c %a "$mnt/public.raw")" = 644 ] || fail "chmod changed the mode"
fuse_umount "$mnt"
for f in secret public owned group; do
  cmp $f.img $f.ref || fail "$f.img does not hold the expected data after unmount"
done

# Served read-only: the same owners, no write bits (here under umask 077).
umask 077
fuse_mount "$mnt" -r -o allow_other secret.img public.img owned.img group.img
umask "$old_umask"
modes=$(cd "$mnt" && stat -c '%n %a' group.raw owned.raw public.raw secret.raw | tr '\n' ' ')
[ "$modes" = "group.raw 440 owned.raw 400 public.raw 444 secret.raw 400 " ] ||
  fail "read-only modes: $modes"
expect_as nobody EACCES "os.open($s, os.O_RDONLY)" "reading a root-only image, read-only mount"
expect_as nobody OK "os.close(os.open($p, os.O_RDONLY))" "reading a 0644 image, read-only mount"
fuse_umount "$mnt"

# Without allow_other only the mounting user (root) gets in at all.
fuse_mount "$mnt" public.img
expect_as nobody EACCES "os.open($p, os.O_RDONLY)" "reading without allow_other"
fuse_umount "$mnt"

# vdisk-fuse creates no file (no pid file, no side file) and opens none
# with O_CREAT, daemonized or not: nothing for a planted symlink or the
# umask to affect.  (libtool resolves its wrapper script for strace.)
if command -v strace >/dev/null; then
  for fg in -f ""; do
    rm -f "$VD_TMP/trace"
    # (LeakSanitizer cannot run under ptrace: off for this run.)
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    "$top_builddir/libtool" --mode=execute strace -f -qq -o "$VD_TMP/trace" \
      -e trace=open,openat,openat2,creat,mkdir,mkdirat,mknodat,rename,renameat,renameat2,symlink,symlinkat,link,linkat \
      "$top_builddir/fuse-frontend/vdisk-fuse" $fg public.img "$mnt" &
    spid=$!
    on_exit "fusermount3 -uz '$mnt'"
    for i in $(seq 300); do
      mountpoint -q "$mnt" && break
      sleep 0.1
    done
    mountpoint -q "$mnt" || fail "vdisk-fuse $fg under strace did not mount"
    cmp "$mnt/public.raw" public.ref || fail "public.raw reads wrong under strace"
    fusermount3 -u "$mnt"
    rc=0                       # strace -f ends with its last tracee
    wait $spid || rc=$?
    [ $rc -eq 0 ] || fail "strace vdisk-fuse $fg exited with $rc"
    grep -q 'openat(.*public\.img' "$VD_TMP/trace" || fail "strace saw nothing"
    if grep -E 'O_CREAT|creat\(|mkdir|mknod|rename|symlink|link(at)?\(' "$VD_TMP/trace"; then
      fail "vdisk-fuse $fg created or renamed a file (above)"
    fi
  done
fi
echo OK
