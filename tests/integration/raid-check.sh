#!/usr/bin/env bash
# vdtool check on RAID arrays, with qemu-img check's exit codes: a clean
# array exits 0; a corrupted parity chunk exits 2 naming the stripe that
# 'vdtool raid scrub' names; a damaged superblock exits 2 naming the
# member; a partial parity log entry with impossible fields under a good
# checksum exits 2; a degraded or served array exits 1 (not verified).
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires /usr/bin/python3

cd "$VD_TMP"
check_rc() {  # check_rc WANT ARGS...: run vdtool check, expect exit WANT
  local want=$1 rc=0; shift
  vdtool check "$@" > check.out 2>&1 || rc=$?
  [ "$rc" = "$want" ] || fail "check $*: exit $rc, want $want: $(cat check.out)"
}
json_field() { /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

vdtool raid create -l 5 -c 16K --size 4M a.vdraid m0 m1 m2
size=$(vdtool info --output=json a.vdraid | json_field virtual-size)
pattern_bytes "$size" 5 > src.raw
vdtool convert -q -n -f raw src.raw a.vdraid
doff=$(vdtool raid detail --output=json a.vdraid | json_field data-offset)

check_rc 0 a.vdraid
grep -q "No errors were found" check.out || fail "clean: $(cat check.out)"
[ "$(vdtool check --output=json a.vdraid | json_field corruptions)" = 0 ] ||
  fail "JSON of a clean array"

# Parity of stripe 5 lives on member 2 - 5 % 3 = 0.
printf 'garbage' | dd of=m0 bs=1 seek=$((doff + 5 * 16384 + 100)) \
  conv=notrunc status=none
check_rc 2 a.vdraid
grep -q "^ERROR stripe 5 (array offset 163840): parity does not match" check.out ||
  fail "check does not name stripe 5: $(cat check.out)"
[ "$(grep -c '^ERROR' check.out)" = 1 ] || fail "more than stripe 5: $(cat check.out)"
json=$(vdtool check --output=json a.vdraid) && fail "JSON check exited 0"
[ "$(echo "$json" | json_field corruptions)" = 1 ] || fail "JSON: $json"
rc=0; vdtool raid scrub a.vdraid > scrub.out || rc=$?
[ $rc = 3 ] || fail "scrub exit $rc"
grep -q "^mismatch: stripe 5 (array offset 163840)$" scrub.out ||
  fail "scrub disagrees with check: $(cat scrub.out)"
vdtool raid scrub --repair a.vdraid > /dev/null
check_rc 0 a.vdraid
vdtool convert -q a.vdraid back.raw
cmp -s src.raw back.raw || fail "data changed by the repair"

# -r is refused, naming the repair commands.
check_rc 1 -r all a.vdraid
grep -q "raid scrub --repair" check.out || fail "-r: $(cat check.out)"

# A damaged superblock: corruption naming the member.
cp m1 m1.good
printf '\xff' | dd of=m1 bs=1 seek=4200 conv=notrunc status=none
check_rc 2 a.vdraid
grep -q "^ERROR member 1: .*m1: .*checksum" check.out ||
  fail "bad superblock not named: $(cat check.out)"
cp m1.good m1

# A PPL entry whose checksum is right but whose stripe is in the wrong
# slot (slot 0 of member 2 may only hold stripes 0, 8, ... with parity 2).
/usr/bin/python3 - m2 "$(vdtool raid detail --output=json a.vdraid | json_field uuid)" <<'PY'
import struct, sys, uuid
def crc32c(data, crc=0):
    crc ^= 0xffffffff
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xffffffff
pp = bytes(512)
h = bytearray(4096)
h[0:8] = b"VDRAIDPL"
h[8:24] = uuid.UUID(sys.argv[2]).bytes
struct.pack_into("<QIIIIQI", h, 24, 3, 0, 512, 1, 2, 1, crc32c(pp))
struct.pack_into("<I", h, 4092, crc32c(bytes(h[:4092])))
with open(sys.argv[1], "r+b") as f:
    f.seek(128 * 1024)
    f.write(bytes(h) + pp)
PY
check_rc 2 a.vdraid
grep -q "^ERROR member 2: partial parity log slot 0 (stripe 3): stripe in the wrong slot" check.out ||
  fail "bad PPL entry not named: $(cat check.out)"
# The array starts all the same (the log is only replayed when needed and
# cleared at every read-write open), and the check is clean again.
vdtool convert -q -n -f raw src.raw a.vdraid
check_rc 0 a.vdraid

# Degraded: not verified (exit 1), saying why.
mv m1 m1.away
check_rc 1 a.vdraid
grep -q "degraded (slot 1 (.*m1) is missing)" check.out ||
  fail "degraded: $(cat check.out)"
mv m1.away m1
check_rc 0 a.vdraid

# RAID1 and RAID0 too.
vdtool raid create -l 1 -c 16K --size 2M r1.vdraid r1a r1b
check_rc 0 r1.vdraid
vdtool raid create -l 0 -c 16K --size 2M r0.vdraid r0a r0b
check_rc 0 r0.vdraid

# Served: the members are locked; say how to check online.
start_nbd a.vdraid
check_rc 1 a.vdraid
grep -q "served by process" check.out || fail "served: $(cat check.out)"
stop_nbd
check_rc 0 a.vdraid
exit 0
