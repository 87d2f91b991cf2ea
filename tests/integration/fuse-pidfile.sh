#!/usr/bin/env bash
# vdisk-fuse -P/--pid-file (nbdfuse's -P habit, issue 15): the file names
# the serving process once the disk is mounted; after fusermount3 -u,
# waiting for that process waits for the flush, and then the image is
# unlocked (qemu-io can write it) and holds what was written through the
# mount.  A symlink planted at the pid file's name is replaced, never
# followed.
. "$top_srcdir/tests/functions.sh"
requires fusermount3 mountpoint qemu-io qemu-img
[ -e /dev/fuse ] || skip "no /dev/fuse"
cd "$VD_TMP"

vdtool create -q -f vpc disk.vhd 8M
mkdir mnt
echo keep > victim
ln -s victim pid                       # planted: must not be followed
"$top_builddir/fuse-frontend/vdisk-fuse" -P "$VD_TMP/pid" disk.vhd mnt ||
  fail "vdisk-fuse -P did not start"
on_exit "fusermount3 -u '$VD_TMP/mnt'"
mountpoint -q mnt || fail "not mounted when vdisk-fuse returned"
[ -f pid ] && [ ! -L pid ] || fail "pid file is not a regular file"
[ "$(cat victim)" = keep ] || fail "the planted symlink was followed"
[ "$(stat -c %a pid)" = 644 ] || fail "pid file mode $(stat -c %a pid)"
pid=$(cat pid)
kill -0 "$pid" || fail "pid file names no live process"
grep -q vdisk-fuse "/proc/$pid/cmdline" || fail "pid file names another program"

# Written through the mount, not flushed by us.
dd if=/dev/urandom of=data bs=64k count=16 status=none
dd if=data of=mnt/disk.raw bs=64k conv=notrunc status=none
fusermount3 -u mnt
for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "vdisk-fuse still running 30 s after unmount"
[ ! -e pid ] || fail "pid file left behind"
# Unlocked and complete: qemu writes the image and reads our data back.
qemu-io -f vpc -c 'write -P 0x11 4M 64k' disk.vhd >/dev/null ||
  fail "image still locked after the process ended"
qemu-img convert -f vpc -O raw disk.vhd out.raw
cmp -n $((1 << 20)) data out.raw || fail "data written through the mount lost"

expect_error 'pid-file' "$top_builddir/fuse-frontend/vdisk-fuse" --pid-file
echo "fuse-pidfile: OK"
