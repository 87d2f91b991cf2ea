#!/usr/bin/env bash
# vdtool check keeps qemu-img check's habits (issue 15):
#  - problems ("ERROR ..." lines) go to standard error, the summary to
#    standard output, as qemu-img prints them (the peer is run on a
#    damaged qcow2 side by side);
#  - check -U checks an image another process holds open for writing
#    (qemu-img check -U on an image qemu-nbd serves is the peer), and
#    -U with -r is refused, as qemu-img refuses it;
#  - a lock conflict on a write suggests -U only where -U exists: for
#    reads.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io qemu-nbd /usr/bin/python3
. "$top_srcdir/tests/nbd/lib.sh"
cd "$VD_TMP"
MB=$((1024*1024))

# ---- the peer: where qemu-img puts its ERROR lines ----
qemu-img create -q -f qcow2 q.qcow2 4M
qemu-io -f qcow2 -c 'write -P 7 0 64k' q.qcow2 >/dev/null
# Make L1[0] point at an unaligned L2 table (a corruption qemu names).
/usr/bin/python3 - <<'PY'
import struct
with open("q.qcow2", "r+b") as f:
    f.seek(40); l1 = struct.unpack(">Q", f.read(8))[0]
    f.seek(l1); e = struct.unpack(">Q", f.read(8))[0]
    f.seek(l1); f.write(struct.pack(">Q", e | 0x200))
PY
rc=0; qemu-img check q.qcow2 > q.out 2> q.err || rc=$?
[ $rc = 2 ] || fail "peer: qemu-img check exit $rc, expected 2"
grep -q '^ERROR' q.err || fail "peer: qemu-img printed no ERROR on stderr: $(cat q.err)"
grep -q '^ERROR' q.out && fail "peer: qemu-img printed ERROR on stdout"
grep -q 'errors were found' q.out || fail "peer: no summary on stdout: $(cat q.out)"

# ---- ours, on a damaged VHD ----
vdtool create -q src.raw $((8*MB))
pattern_bytes $((2*MB)) 3 | dd of=src.raw conv=notrunc status=none
vdtool convert -O vhd -o block_size=512K src.raw good.vhd
cp good.vhd bad.vhd
truncate -s $(( $(stat -c %s good.vhd) - MB )) bad.vhd
rc=0; vdtool check bad.vhd > v.out 2> v.err || rc=$?
[ $rc = 2 ] || fail "check exit $rc, expected 2"
grep -q '^ERROR .*BAT entry' v.err || fail "no ERROR line on stderr: $(cat v.err)"
grep -q 'ERROR' v.out && fail "ERROR lines on stdout: $(cat v.out)"
grep -q 'errors were found on the image' v.out || fail "no summary on stdout: $(cat v.out)"
# -q: nothing at all, the exit status only.
rc=0; vdtool check -q bad.vhd > v.out 2> v.err || rc=$?
[ $rc = 2 ] && [ ! -s v.out ] && [ ! -s v.err ] || fail "check -q printed something or exit $rc"

# ---- -U: an image served read-write by another process ----
qemu-img create -q -f qcow2 served.qcow2 4M
qemu-nbd -f qcow2 -t -k "$VD_TMP/q.sock" served.qcow2 &
qpid=$!
on_exit "kill $qpid"
wait_for_socket "$VD_TMP/q.sock"
rc=0; qemu-img check served.qcow2 >/dev/null 2>q.err || rc=$?
[ $rc != 0 ] && grep -qi 'lock' q.err || fail "peer: qemu-img check did not refuse a locked image"
qemu-img check -U served.qcow2 >/dev/null || fail "peer: qemu-img check -U failed"
rc=0; qemu-img check -U -r all served.qcow2 >/dev/null 2>q.err || rc=$?
[ $rc = 1 ] || fail "peer: qemu-img check -U -r all exit $rc"
kill $qpid; wait $qpid 2>/dev/null || true

cp good.vhd served.vhd
start_nbd served.vhd
expect_error 'served\.vhd: image is in use by process .*use -U' vdtool check served.vhd
out=$(vdtool check -U served.vhd) || fail "check -U failed"
grep -q 'No errors were found' <<<"$out" || fail "check -U: $out"
expect_error 'check: -U cannot be used with -r' vdtool check -U -r all served.vhd
# A write that meets the lock: no -U hint (there is no -U for writes).
expect_error 'served\.vhd: image is in use by process [0-9]+ \([^)]*\); cannot get a write lock$' \
  vdtool resize served.vhd 16M
stop_nbd
cmp -s good.vhd served.vhd || fail "refused commands changed the image"
echo "check-habits: OK"
