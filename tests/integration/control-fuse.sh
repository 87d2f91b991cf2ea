#!/usr/bin/env bash
# vdisk-fuse --control: the disks are registered under their file names
# (query-block), the socket is 0600 and removed when the file system is
# unmounted, also for a daemon given a relative path (it leaves its folder
# before it exits).
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires qemu-img
[ -x /usr/bin/python3 ] || skip "no /usr/bin/python3"

cd "$VD_TMP"
qemu-img create -q -f vpc -o subformat=dynamic base.vhd 8M
vdtool create -q -f vpc -b base.vhd -F vpc child.vhd

query_block() {   # query_block SOCKET: device, drv, file and backing, one line each
  timeout 60 /usr/bin/python3 -c '
import os, sys
sys.path.insert(0, sys.argv[2])
from qmp import QMP
q = QMP(sys.argv[1])
for b in q.cmd("query-block"):
    i = b["inserted"]
    print(b["device"], i["drv"], os.path.realpath(i["file"]),
          os.path.realpath(i["image"]["backing-image"]["filename"]))
' "$1" "$top_srcdir/tests/integration"
}

# Foreground, absolute path.
(umask 000 && fuse_mount "$VD_TMP/mnt" --control "$VD_TMP/ctl.sock" child.vhd)
[ "$(stat -c %a ctl.sock)" = 600 ] || fail "control socket mode $(stat -c %a ctl.sock)"
out=$(query_block "$VD_TMP/ctl.sock")
[ "$out" = "child.raw vpc $VD_TMP/child.vhd $VD_TMP/base.vhd" ] ||
  fail "query-block through vdisk-fuse: $out"
cmp -n 4096 mnt/child.raw /dev/zero || fail "the disk does not read as zeros"
fusermount3 -u mnt
for i in $(seq 100); do [ -e ctl.sock ] || break; sleep 0.1; done
[ ! -e ctl.sock ] || fail "control socket left behind after unmount"

# Daemon, relative path: removed although the daemon changed folder.
mkdir -p mnt2
vdisk_fuse --control ctl2.sock child.vhd mnt2 || fail "vdisk-fuse did not start"
on_exit "fusermount3 -u '$VD_TMP/mnt2'"
[ -S ctl2.sock ] || fail "no control socket once the daemon is started"
out=$(query_block "$VD_TMP/ctl2.sock")
[ "${out%% *}" = child.raw ] || fail "query-block through the daemon: $out"
fusermount3 -u mnt2
for i in $(seq 100); do [ -e ctl2.sock ] || break; sleep 0.1; done
[ ! -e ctl2.sock ] || fail "daemon's control socket (relative path) left behind"
