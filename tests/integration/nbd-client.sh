#!/usr/bin/env bash
# The nbd driver (vdisk/nbd-client.c) against real servers: qemu-nbd,
# nbdkit (memory, file) and vdisk-nbd.  vdtool info/map/compare/convert
# on nbd+unix:// URIs judged by qemu-img on the same URIs; VHD -> export
# -> VHD byte-exact; vdisk-nbd re-serving a remote export read/write;
# multi-conn and flush seen in nbdkit's log; read-only exports refuse
# writes; a server that dies mid-copy or never answers gives an error,
# no hang; a URI in a VHD's parent locator is never followed.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io qemu-nbd nbdkit
/usr/bin/python3 -c "import nbd" 2>/dev/null || skip "python3-libnbd is not installed"
craft() { /usr/bin/python3 "$top_srcdir/tests/integration/trust-craft.py" "$@"; }
T=$VD_TMP
NBDKIT_OPTS=
vdt() { timeout 60 "$top_builddir/tools/vdtool" "$@"; }

# nbdkit_start NAME ARGS...: nbdkit on $T/NAME.sock, log in $T/NAME.log.
nbdkit_start() {
  local n=$1; shift
  nbdkit $NBDKIT_OPTS -U "$T/$n.sock" -P "$T/$n.pid" -f --filter=log "$@" \
    logfile="$T/$n.log" 2>>"$T/$n.err" &
  wait_for_socket "$T/$n.sock"
  on_exit "kill \$(cat $T/$n.pid)"
}
u() { echo "nbd+unix:///?socket=$T/$1.sock"; }

# ---- qemu-nbd serving a sparse raw image ----
qemu-img create -q -f raw "$T/sparse.raw" 64M
qemu-io -f raw -c 'write -P 0xab 1M 1M' -c 'write -P 0xcd 10M 64k' \
  -c 'write -P 0x5e 40M 4k' "$T/sparse.raw" >/dev/null
cp --sparse=always "$T/sparse.raw" "$T/sparse.ref"
qemu-nbd -f raw -k "$T/qn.sock" -e 4 -t --pid-file="$T/qn.pid" "$T/sparse.raw" &
wait_for_socket "$T/qn.sock"
on_exit "kill \$(cat $T/qn.pid)"
Q=$(u qn)
vdt info "$Q" > "$T/info.txt"
grep -q '^file format: nbd' "$T/info.txt" || fail "info: $(cat "$T/info.txt")"
grep -q '(67108864 bytes)' "$T/info.txt" || fail "info size: $(cat "$T/info.txt")"
vdt compare "$T/sparse.ref" "$Q" || fail "vdtool compare file vs nbd"
qemu-img compare -f raw -F raw "$T/sparse.ref" "$Q" || fail "qemu-img compare"
# map: the extents (start, length, zero, data) are qemu-img's on the same URI
vdt map --output=json "$Q" > "$T/vmap.json"
qemu-img map --output=json "$Q" > "$T/qmap.json"
/usr/bin/python3 - "$T/vmap.json" "$T/qmap.json" <<'PY' || fail "map differs from qemu-img map"
import json, sys
def ext(p):
    out = []
    for e in json.load(open(p)):
        k = (e["zero"], e["data"])
        if out and out[-1][2] == k and out[-1][0] + out[-1][1] == e["start"]:
            out[-1][1] += e["length"]
        else:
            out.append([e["start"], e["length"], k])
    return out
a, b = ext(sys.argv[1]), ext(sys.argv[2])
if a != b or len(a) < 5:
    print("vdtool", a, "\nqemu-img", b); sys.exit(1)
PY
# convert from the export keeps the holes (qemu-img map of the copy)
vdt convert -O raw "$Q" "$T/copy.raw"
cmp "$T/sparse.ref" "$T/copy.raw" || fail "convert nbd -> raw differs"
[ "$(du -k "$T/copy.raw" | cut -f1)" -lt 4096 ] ||
  fail "convert from nbd filled the holes: $(du -k "$T/copy.raw")"
kill "$(cat "$T/qn.pid")"

# ---- nbdkit memory: VHD -> export (-n) -> VHD, byte-exact ----
pattern_bytes $((8 << 20)) 3 > "$T/pat"
qemu-img create -q -f vpc "$T/src.vhd" 32M
qemu-io -f vpc -c "write -P 0x33 0 2M" -c "write -P 0x44 20M 1M" \
  -c "write -P 0x55 30M 4k" "$T/src.vhd" >/dev/null
vsz=$(qemu-img info --output=json "$T/src.vhd" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)[\"virtual-size\"])")
nbdkit_start mem memory "$vsz"
M=$(u mem)
vdt convert -n -f vpc -O raw "$T/src.vhd" "$M" || fail "convert VHD -> nbd -n"
qemu-img compare -f vpc -F raw "$T/src.vhd" "$M" || fail "export differs from VHD"
grep -qi 'flush' "$T/mem.log" || fail "convert to nbd sent no flush: $(cat "$T/mem.log")"
vdt convert -O vpc "$M" "$T/back.vhd" || fail "convert nbd -> VHD"
qemu-img compare -f vpc -F vpc "$T/src.vhd" "$T/back.vhd" || fail "round trip differs"
# multi-conn: nbdkit memory offers it, so vdtool opened several connections
conns=$(grep -c 'Connect' "$T/mem.log" || true)
vdt info "$M" | grep -q '^    connections: 4' || fail "multi-conn not used: $(vdt info "$M")"
after=$(grep -c 'Connect' "$T/mem.log" || true)
[ $((after - conns)) -eq 4 ] || fail "nbdkit saw $((after - conns)) connections, expected 4"

# ---- without multi-conn: one connection ----
nbdkit_start one --filter=multi-conn memory 1M multi-conn-mode=disable
vdt info "$(u one)" | grep -q '^    connections: 1' || fail "used several connections without multi-conn"
[ "$(grep -c 'Connect' "$T/one.log")" -eq 1 ] || fail "nbdkit saw $(grep -c Connect "$T/one.log") connections"

# ---- vdisk-nbd re-serving a remote export, read/write ----
cp "$T/pat" "$T/origin.raw"
nbdkit_start file file "$T/origin.raw"
start_nbd -f nbd "remote=$(u file)"
R=$(nbd_uri_for remote)
/usr/bin/python3 -m nbd -u "$R" -c '
h.pwrite(b"\x77" * 65536, 1 << 20)
h.flush()
assert h.pread(4096, 1 << 20) == b"\x77" * 4096
' || fail "nbdsh through vdisk-nbd"
qemu-io -f raw -r -c 'read -P 0x77 1M 64k' "$T/origin.raw" | grep -q 'read 65536' ||
  fail "write through vdisk-nbd did not reach the origin"
grep -qi 'flush' "$T/file.log" || fail "flush not passed to the origin"
qemu-img compare -f raw -F raw "$T/origin.raw" "$R" || fail "re-served export differs"
stop_nbd

# ---- the server's block sizes: minimum 4 KiB, maximum 64 KiB, violations
# are errors at the server (blocksize-policy); unaligned and large I/O
# through vdisk-nbd re-serving it must still be right ----
nbdkit_start bs --filter=blocksize-policy memory 16M blocksize-minimum=4096 \
  blocksize-preferred=4096 blocksize-maximum=65536 blocksize-error-policy=error
vdt info "$(u bs)" > "$T/bs.txt"
grep -q 'block-size-minimum: 4096' "$T/bs.txt" && grep -q 'block-size-maximum: 65536' "$T/bs.txt" ||
  fail "block sizes: $(cat "$T/bs.txt")"
start_nbd -f nbd "bs=$(u bs)"
B=$(nbd_uri_for bs)
out=$(qemu-io -f raw -c 'write -P 0x21 1000 3000' -c 'write -P 0x22 100000 1M' \
  -c 'read -P 0x21 1000 3000' -c 'read -P 0x22 100000 1M' -c 'read -P 0 0 1000' \
  -c 'write -z 5000 70000' -c 'read -P 0 5000 70000' -c 'read -P 0x21 1000 3000' -c 'read -P 0 4000 1000' \
  -c 'discard 1M 128k' -c 'flush' "$B" 2>&1) || fail "qemu-io through block-size limits: $out"
! grep -Eq 'failed|error|Pattern' <<<"$out" || fail "qemu-io through block-size limits: $out"
qemu-img compare -f raw -F raw "$B" "$(u bs)" || fail "re-served block-size export differs"
stop_nbd

# ---- fio --verify through vdisk-nbd re-serving a multi-conn export ----
if fio --enghelp=nbd >/dev/null 2>&1; then
  nbdkit_start fio memory 64M
  start_nbd -f nbd "f=$(u fio)"
  fio --name=verify --ioengine=nbd --uri="$(nbd_uri_for f)" --iodepth=32 \
    --size=16M --rw=randwrite --bsrange=512-128k --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --verify_state_save=0 --output="$T/fio.out" ||
    { cat "$T/fio.out" >&2; fail "fio through the nbd driver"; }
  [ "$(grep -c Connect "$T/fio.log")" -eq 4 ] || fail "vdisk-nbd did not use 4 connections"
  qemu-img compare -f raw -F raw "$(nbd_uri_for f)" "$(u fio)" || fail "fio: origin differs"
  stop_nbd
fi

# ---- TLS with a pre-shared key (libnbd's URI parameters) ----
psktool -u alice -p "$T/keys.psk" >/dev/null 2>&1
NBDKIT_OPTS="--tls=require --tls-psk=$T/keys.psk" nbdkit_start tls memory 1M
vdt info "nbds+unix://alice@/?socket=$T/tls.sock&tls-psk-file=$T/keys.psk" > "$T/tls.txt" ||
  fail "nbds+unix with tls-psk-file"
grep -q 'tls: yes' "$T/tls.txt" || fail "TLS not negotiated: $(cat "$T/tls.txt")"
expect_error "nbd\+unix.*socket=$T/tls.sock" vdt info "$(u tls)"

# ---- read-only export ----
NBDKIT_OPTS=-r nbdkit_start ro memory 8M
expect_error "nbd\+unix.*(Read-only|read-only)" vdt convert -n -f raw -O raw "$T/pat" "$(u ro)"
# vdisk-nbd re-serving it advertises read-only and refuses writes
start_nbd -f nbd "ro=$(u ro)"
/usr/bin/python3 -m nbd -u "$(nbd_uri_for ro)" -c '
import errno
assert h.is_read_only()
try:
    h.pwrite(b"x" * 512, 0)
    raise SystemExit("write to a read-only re-served export succeeded")
except nbd.Error as e:
    assert e.errnum in (errno.EROFS, errno.EPERM), e
' || fail "read-only export re-served writable"
stop_nbd

# ---- vdisk-fuse serving a remote export ----
if [ -c /dev/fuse ] && [ -r /dev/fuse ] && [ -w /dev/fuse ] &&
   command -v fusermount3 >/dev/null; then
  mkdir "$T/mnt"
  timeout 30 "$top_builddir/fuse-frontend/vdisk-fuse" --format=nbd "$(u file)" "$T/mnt" 2>"$T/fuse.err" ||
    fail "vdisk-fuse on a URI: $(cat "$T/fuse.err")"
  on_exit "fusermount3 -uz '$T/mnt'"
  f=file.raw   # the URI's last path component, as for a file
  [ "$(stat -c %a "$T/mnt/$f")" = 600 ] || fail "FUSE disk mode $(stat -c %a "$T/mnt/$f")"
  cmp "$T/mnt/$f" "$T/origin.raw" || fail "vdisk-fuse of a URI differs from the origin"
  printf 'fuse-wrote' | dd of="$T/mnt/$f" bs=1 seek=4096 conv=notrunc status=none
  sync "$T/mnt/$f"
  [ "$(dd if="$T/origin.raw" bs=1 skip=4096 count=10 status=none)" = fuse-wrote ] ||
    fail "a write through vdisk-fuse did not reach the origin"
  fusermount3 -u "$T/mnt"
fi

# ---- a URI in a VHD's parent locator is never followed ----
mkdir "$T/vm"
craft file "$T/vm/evil.vhd" $((1 << 20)) "$(u file)" 0
before=$(grep -c 'Connect' "$T/file.log")
rc=0; (cd "$T/vm" && timeout 30 "$top_builddir/tools/vdtool" convert evil.vhd "$T/evil.raw") 2>"$T/evil.err" || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "child with a URI locator: rc $rc"
[ "$(grep -c 'Connect' "$T/file.log")" -eq "$before" ] ||
  fail "a URI read out of an image was connected to"
# ... but the operator may name it
(cd "$T/vm" && vdt convert --backing "$(u file)" evil.vhd "$T/evil.raw") ||
  fail "--backing URI refused"
cmp -n $((1 << 20)) "$T/evil.raw" "$T/origin.raw" || fail "child over --backing URI reads wrong data"
# create -b URI: the child records it, reopens it only with --backing
vdt create -q -f vhd -b "$(u file)" -F nbd "$T/vm/kid.vhd"
expect_error "kid\.vhd: parent" vdt info --backing-chain "$T/vm/kid.vhd"
vdt compare --backing "$(u file)" "$T/vm/kid.vhd" "$T/origin.raw" || fail "create -b URI child differs"

# ---- a server that dies mid-copy: an error, no hang ----
nbdkit_start slow --filter=delay pattern 256M rdelay=100ms
rc=0
timeout 60 "$top_builddir/tools/vdtool" convert -O raw "$(u slow)" "$T/slow.raw" 2>"$T/slow.err" &
cpid=$!
sleep 1
kill -9 "$(cat "$T/slow.pid")"
wait $cpid || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "server killed mid-copy: rc $rc: $(cat "$T/slow.err")"
grep -q "nbd+unix:///?socket=$T/slow.sock" "$T/slow.err" || fail "error does not name the URI: $(cat "$T/slow.err")"
# ... and one that accepts but never speaks NBD: bounded connect
/usr/bin/python3 -c 'import socket,sys,time
s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4); time.sleep(60)' "$T/mute.sock" &
mpid=$!
on_exit "kill $mpid"
wait_for_socket "$T/mute.sock"
expect_error "no NBD handshake within" timeout 30 "$top_builddir/tools/vdtool" info "$(u mute)"
echo PASS
