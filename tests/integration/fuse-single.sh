#!/usr/bin/env bash
# vdisk-fuse on a regular file (issue 15), as qemu-storage-daemon's FUSE
# export: the one disk appears at the mount point itself.  Written there
# with dd, read back after unmount by qemu-img; the file reads exactly as
# qemu-storage-daemon's export of the same image on another file; it is
# not a folder; two images for one file, and adding or removing an export
# through the control socket, are refused in one line.
. "$top_srcdir/tests/functions.sh"
requires fusermount3 mountpoint qemu-img qemu-storage-daemon /usr/bin/python3
[ -e /dev/fuse ] || skip "no /dev/fuse"
cd "$VD_TMP"
fuse="$top_builddir/fuse-frontend/vdisk-fuse"

vdtool create -q -f vpc disk.vhd 16M
touch ours.raw peer.raw
"$fuse" -P "$VD_TMP/pid" --control="$VD_TMP/ctl" disk.vhd ours.raw ||
  fail "vdisk-fuse on a file did not start"
on_exit "fusermount3 -u '$VD_TMP/ours.raw' 2>/dev/null"
mountpoint -q ours.raw || fail "ours.raw is not a mount point"
[ -f ours.raw ] || fail "ours.raw is not a regular file"
[ "$(stat -c %s ours.raw)" = "$(vdtool info -U --output=json disk.vhd |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" ] ||
  fail "ours.raw has not the disk's size"
ls ours.raw/ >/dev/null 2>&1 && fail "ours.raw lists as a folder"

pattern_bytes $((3 << 20)) 5 > data
dd if=data of=ours.raw bs=1M seek=2 conv=notrunc,fsync status=none ||
  fail "dd into the mounted file failed"
cmp <(dd if=ours.raw bs=1M skip=2 count=3 status=none) data ||
  fail "the mounted file does not read back what was written"

# The control socket: no export may come or go.
/usr/bin/python3 - "$VD_TMP/ctl" "$top_srcdir/tests/integration" <<'PY' || fail "control socket"
import sys
sys.path.insert(0, sys.argv[2])
from qmp import QMP
q = QMP(sys.argv[1])
for cmd, args in (("block-export-add", {"type": "fuse", "id": "x",
                                        "node-name": "disk.raw"}),
                  ("block-export-del", {"id": "disk.raw"})):
    r = q.execute(cmd, args)
    assert "error" in r and "single disk" in r["error"]["desc"], r
PY

fusermount3 -u ours.raw
pid=$(cat pid 2>/dev/null || true)
for i in $(seq 300); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
qemu-img convert -f vpc -O raw disk.vhd out.raw
cmp <(dd if=out.raw bs=1M skip=2 count=3 status=none) data ||
  fail "what was written through the file is not in the image"

# Beside qemu-storage-daemon: the same bytes through both files.
"$fuse" -r disk.vhd ours.raw || fail "read-only mount on a file failed"
qemu-storage-daemon --daemonize --pidfile "$VD_TMP/qsd.pid" \
  --blockdev driver=file,filename=disk.vhd,node-name=f,read-only=on,locking=off \
  --blockdev driver=vpc,file=f,node-name=d,read-only=on \
  --export type=fuse,id=e,node-name=d,mountpoint="$VD_TMP/peer.raw" ||
  fail "qemu-storage-daemon did not start"
# qemu-storage-daemon stays after its export is unmounted: stop it.
on_exit "kill \$(cat '$VD_TMP/qsd.pid' 2>/dev/null) 2>/dev/null; fusermount3 -u '$VD_TMP/peer.raw' 2>/dev/null"
cmp ours.raw peer.raw || fail "ours.raw and qemu-storage-daemon's file differ"
fusermount3 -u peer.raw
kill "$(cat qsd.pid)"
for i in $(seq 100); do kill -0 "$(cat qsd.pid 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
fusermount3 -u ours.raw

expect_error "ours.raw is a file: it can show one disk, not 2" \
  "$fuse" disk.vhd out.raw ours.raw
echo "fuse-single: OK"
