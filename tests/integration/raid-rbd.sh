#!/usr/bin/env bash
# RAID members that are Ceph RBD images (issue 14), on a one-node cluster
# (tests/ceph/cluster.sh), judged by qemu's own rbd driver and by `rbd`:
#  - a RAID1 of a local file and an rbd: image, and a RAID5 of two rbd:
#    images and a local file, created, served by vdisk-nbd and written
#    with qemu-io patterns; the array reads them back, and each member's
#    data area read by qemu's rbd driver (qemu-img convert) equals what
#    the array says it holds (RAID1: the local member's data area);
#  - the descriptor keeps the rbd: names as typed (never made relative);
#  - an RBD image deleted behind the array's back: the RAID5 serves
#    degraded, `raid replace` onto a new rbd: image rebuilds it, scrub
#    finds no mismatch and the content is unchanged;
#  - --size does not create rbd: members (one line).
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
. "$top_srcdir/tests/ceph/cluster.sh"
requires qemu-img qemu-io
qemu-img --help | grep -qw rbd ||
  skip "qemu-img has no rbd driver (Debian package qemu-block-extra)"
T=$VD_TMP
cd "$T"
vdt() { timeout 120 "$top_builddir/tools/vdtool" "$@"; }
M=$((1 << 20))

expect_error 'a remote member cannot be created' \
  vdt raid create -l 1 --size 16M a.vdraid a.img "rbd:p/m:conf=$T/none.conf"

ceph_start
P=$ceph_pool
Q=":conf=$ceph_conf"
for m in r1 r2 r3 r4; do ceph_rbd create --size 32M "$P/$m"; done
off() { vdt raid examine --output=json "$1" | sed -n 's/.*"data-offset": \([0-9]*\).*/\1/p'; }

# ---- RAID1: local + rbd ----
truncate -s 32M l1.img
vdt raid create -q -l 1 --member-timeout 10 m1.vdraid l1.img "rbd:$P/r1$Q" ||
  fail "raid create over a local file and an rbd: image"
grep -qx "member 1 raw rbd:$P/r1$Q" m1.vdraid || grep -q "member 1 .* rbd:$P/r1$Q\$" m1.vdraid ||
  fail "the descriptor does not keep the rbd: name: $(cat m1.vdraid)"
vdt raid detail m1.vdraid | grep -q "rbd:$P/r1" || fail "detail does not name the rbd member"
start_nbd -f raid m1.vdraid
qemu-io -f raw -c 'write -P 0x31 0 4M' -c 'write -P 0x32 9M 1M' -c 'write -z 2M 64k' \
  "$nbd_uri" >/dev/null || fail "writes through the RAID1"
qemu-io -f raw -c 'read -P 0x31 0 2M' -c 'read -P 0 2M 64k' -c 'read -P 0x32 9M 1M' \
  "$nbd_uri" | grep -q 'verification failed' && fail "RAID1 reads back differently"
stop_nbd
o=$(off l1.img)
[ -n "$o" ] || fail "no data offset"
qemu-img convert -f raw -O raw "rbd:$P/r1$Q" r1.raw || fail "qemu cannot read the rbd member"
cmp <(tail -c +$((o + 1)) l1.img) <(tail -c +$((o + 1)) r1.raw) ||
  fail "RAID1: the rbd member's data area differs from the local member's"

# ---- RAID5: two rbd images and a local file ----
truncate -s 32M l5.img
vdt raid create -q -l 5 -c 64K m5.vdraid "rbd:$P/r2$Q" l5.img "rbd:$P/r3$Q" ||
  fail "raid create -l 5 over rbd: members"
start_nbd -f raid m5.vdraid
qemu-io -f raw -c 'write -P 0x51 0 8M' -c 'write -P 0x52 20M 3M' "$nbd_uri" >/dev/null ||
  fail "writes through the RAID5"
vdt convert -f raid -O raw m5.vdraid before.raw 2>/dev/null ||
  qemu-img convert -f raw -O raw "$nbd_uri" before.raw
stop_nbd
qemu-io -f raw -c 'read -P 0x51 0 8M' -c 'read -P 0x52 20M 3M' before.raw |
  grep -q 'verification failed' && fail "RAID5 reads back differently"
# Member data areas through qemu's rbd driver: XOR of the three is zero
# (RAID5 parity), and together they hold the array's bytes.
for m in r2 r3; do qemu-img convert -f raw -O raw "rbd:$P/$m$Q" $m.raw; done
o=$(off l5.img)
/usr/bin/python3 - r2.raw l5.img r3.raw "$o" <<'PY' || fail "RAID5 members' parity does not hold (read by qemu's rbd driver)"
import sys
o = int(sys.argv[4])
a, b, c = (open(f, "rb").read()[o:] for f in sys.argv[1:4])
n = min(len(a), len(b), len(c))
x = int.from_bytes(a[:n], "little") ^ int.from_bytes(b[:n], "little") ^ int.from_bytes(c[:n], "little")
sys.exit(0 if x == 0 else 1)
PY

# ---- an rbd member gone: degraded, replaced onto a new image ----
ceph_rbd rm --no-progress "$P/r3" >/dev/null 2>&1 || fail "rbd rm"
start_nbd -f raid m5.vdraid
qemu-img convert -f raw -O raw "$nbd_uri" degraded.raw || fail "degraded read"
cmp before.raw degraded.raw || fail "the degraded RAID5 reads differently"
stop_nbd
vdt raid replace m5.vdraid 2 "rbd:$P/r4$Q" >/dev/null || fail "raid replace onto rbd:$P/r4"
vdt raid scrub m5.vdraid >scrub.txt 2>&1 || fail "scrub after the rebuild: $(cat scrub.txt)"
vdt convert -f raid -O raw m5.vdraid after.raw || fail "read after the rebuild"
cmp before.raw after.raw || fail "content changed by the rebuild"
qemu-img convert -f raw -O raw "rbd:$P/r4$Q" r4.raw
/usr/bin/python3 - r2.raw l5.img r4.raw "$o" <<'PY' || fail "the rebuilt rbd member does not complete the parity"
import sys
o = int(sys.argv[4])
a, b, c = (open(f, "rb").read()[o:] for f in sys.argv[1:4])
n = min(len(a), len(b), len(c))
sys.exit(0 if int.from_bytes(a[:n], "little") ^ int.from_bytes(b[:n], "little") ^ int.from_bytes(c[:n], "little") == 0 else 1)
PY
echo "raid-rbd: cluster start ${ceph_start_ms} ms"
exit 0
