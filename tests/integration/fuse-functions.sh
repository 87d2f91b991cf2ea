# Helpers for the vdisk-fuse tests; source after tests/functions.sh.

# Skip (77) when FUSE cannot be used on this machine.
fuse_requires() {
  [ -c /dev/fuse ] && [ -r /dev/fuse ] && [ -w /dev/fuse ] ||
    skip "/dev/fuse is not available"
  requires fusermount3 mountpoint
}

# fuse_mount MOUNTPOINT ARGS...: run `vdisk-fuse -f ARGS... MOUNTPOINT` in
# the background (under valgrind for check-valgrind) and wait until the
# file system answers.  Sets fuse_pid.
fuse_mount() {
  local mnt=$1 i rc
  shift
  mkdir -p "$mnt"
  if [ -n "${VD_VALGRIND:-}" ]; then
    "$top_builddir/libtool" --mode=execute $VD_VALGRIND \
      "$top_builddir/fuse-frontend/vdisk-fuse" -f "$@" "$mnt" &
  else
    "$top_builddir/fuse-frontend/vdisk-fuse" -f "$@" "$mnt" &
  fi
  fuse_pid=$!
  on_exit "_fuse_cleanup '$mnt' $fuse_pid"
  for i in $(seq 300); do
    if mountpoint -q "$mnt"; then
      return 0
    fi
    if ! kill -0 "$fuse_pid" 2>/dev/null; then
      rc=0
      wait "$fuse_pid" || rc=$?
      fail "vdisk-fuse $* exited with status $rc before mounting"
    fi
    sleep 0.1
  done
  fail "vdisk-fuse $*: $mnt not mounted after 30 s"
}

# At exit: unmount if still mounted, and stop the daemon only while it is
# still our unreaped child (a reaped pid may belong to anyone by now).
_fuse_cleanup() {
  if mountpoint -q "$1"; then
    fusermount3 -uz "$1"
  fi
  if jobs -p | grep -qx "$2"; then
    kill "$2"
  fi
}

# fuse_umount MOUNTPOINT: unmount, then wait for vdisk-fuse to flush and
# exit with status 0.
fuse_umount() {
  local rc=0
  fusermount3 -u "$1"
  wait "$fuse_pid" || rc=$?
  [ "$rc" -eq 0 ] || fail "vdisk-fuse exited with status $rc after unmount"
  ! mountpoint -q "$1" || fail "$1 still mounted"
}

# errno_of PYTHON-STATEMENTS: run them with os imported and print the
# errno name of the OSError they raise, or "OK".
errno_of() {
  /usr/bin/python3 -c '
import errno, os, sys
try:
    exec(sys.argv[1])
    print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))' "$1"
}
