#!/usr/bin/env bash
# Hot spares (issue 15, mdadm --add): 'vdtool raid add ARRAY SPARE'.
#  - offline add, its one-line refusals (too small, a member, a spare
#    already, RAID0, another array's member, missing file), examine and
#    detail showing the spare, detail of a spare pointing to examine;
#    remove (mdadm --remove of a spare) offline and online, -q;
#  - a spare is never a data member: named in a member line it is left
#    out (the array runs degraded), assemble keeps it a spare;
#  - served by vdisk-nbd under a writer (libnbd, mirrored to a reference
#    file): add through the control socket, fail a member, the spare takes
#    the slot (event VDISK_RAID_SPARE_ACTIVE), the rebuild finishes, the
#    exported bytes equal the reference (qemu-img compare), for a RAID1
#    and a RAID5;
#  - a takeover cut between its superblock write and the descriptor's
#    rewrite (the old descriptor put back) and a server killed with -9
#    right after a takeover: the array assembles, the spare holds its slot,
#    the data reads back right.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img nbdsh
[ -x /usr/bin/python3 ] || skip "no /usr/bin/python3"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "no libnbd python module"
PY=/usr/bin/python3
here=$top_srcdir/tests/integration
cd "$VD_TMP"

json_field() { "$PY" -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
# The array's data, read through vdisk-nbd by qemu-img, equals FILE.
compare_served() {
  start_nbd -r "$1"
  qemu-img compare -f raw -F raw "$nbd_uri" "$2" >/dev/null ||
    fail "$1: data differs from $2"
  stop_nbd
}

# ---- offline: add and its refusals ----
vdtool raid -q create -l 1 --size 16M r1.vdraid a0 a1
truncate -s 16M s0 s1 s2
truncate -s 8M small
vdtool raid add r1.vdraid s0 2>out || fail "add: $(cat out)"
grep -qx "vdtool: added s0 to r1.vdraid as a spare" out || fail "add said: $(cat out)"
grep -qx "spare raw s0" r1.vdraid || fail "no spare line: $(cat r1.vdraid)"
expect_error "small: too small to be a spare: 8388608 bytes, a member needs 16777216" \
  vdtool raid add r1.vdraid small
expect_error "a0 is already member 0" vdtool raid add r1.vdraid a0
expect_error "s0 is already a spare" vdtool raid add r1.vdraid s0
expect_error "nope: cannot find it" vdtool raid add r1.vdraid nope
expect_error "add needs ARRAY SPARE" vdtool raid add r1.vdraid
vdtool raid -q create -l 0 --size 16M r0.vdraid z0 z1
expect_error "RAID0 has no redundancy: a spare could not take over" \
  vdtool raid add r0.vdraid s1
expect_error "holds the superblock of another RAID array" vdtool raid add r1.vdraid z0
vdtool raid examine s0 | grep -q "Device Role : spare" || fail "examine: $(vdtool raid examine s0)"
[ "$(vdtool raid examine --output=json s0 | json_field state)" = spare ] ||
  fail "examine json"
vdtool raid detail r1.vdraid | grep -Eq "^ +- +spare +- +s0$" ||
  fail "detail: $(vdtool raid detail r1.vdraid)"
expect_error "s0 is a hot spare of array .*, not an array descriptor: use 'vdtool raid examine s0'" \
  vdtool raid detail s0
# remove (mdadm --remove of a spare), -q, the refusals.
vdtool raid -q add r1.vdraid s2 2>out && [ ! -s out ] || fail "add -q said: $(cat out)"
vdtool raid remove r1.vdraid s2 2>out || fail "remove: $(cat out)"
grep -qx "vdtool: removed s2 from r1.vdraid" out || fail "remove said: $(cat out)"
! grep -q "s2" r1.vdraid || fail "removed spare still named: $(cat r1.vdraid)"
expect_error "s2: not a RAID member" vdtool raid examine s2
expect_error "s2 is not a spare of the array" vdtool raid remove r1.vdraid s2
expect_error "a1 is member 1, not a spare" vdtool raid remove r1.vdraid a1
expect_error "remove needs ARRAY SPARE" vdtool raid remove r1.vdraid
vdtool raid --help | grep -q "vdtool raid add \[-f FMT\] ARRAY SPARE" || fail "--help lacks add"

# ---- a spare is never a data member ----
cp r1.vdraid keep.vdraid
sed -i 's/^member 1 raw a1$/member 1 raw s0/; /^spare /d' r1.vdraid
vdtool raid detail r1.vdraid | grep -q "s0: is a hot spare of the array, not a member" ||
  fail "spare taken as a member: $(vdtool raid detail r1.vdraid)"
cp keep.vdraid r1.vdraid
expect_error "slot 1 of array .* is working but was not given" \
  vdtool raid assemble r1.vdraid a0 s0
vdtool raid -q assemble r1.vdraid a0 a1 s0 || fail "assemble with the spare"
grep -qx "spare raw s0" r1.vdraid && grep -qx "member 1 raw a1" r1.vdraid ||
  fail "assemble: $(cat r1.vdraid)"

# ---- served: add online, a member fails, the spare takes over ----
# ARRAY TAKER LEFT: under a writer, add spare sp-ARRAY through the
# socket, fail member 1, wait for the event naming spare TAKER (the first
# one) and the end of the rebuild, LEFT spares remaining; compare.
served_takeover() {
  local desc=$1 taker=$2 left=$3
  local size ctl=$VD_TMP/ctl.sock
  size=$(vdtool info --output=json "$desc" | json_field virtual-size)
  rm -f ref.raw stop; truncate -s "$size" ref.raw
  start_nbd --control "$ctl" "$desc"
  "$PY" "$here/raid-control-writer.py" "$nbd_uri" ref.raw stop 15 > writer.out &
  local writer=$!
  vdtool raid add "$desc" sp-"$desc" 2>out || fail "online add: $(cat out)"
  grep -q "added sp-$desc to $desc as a spare" out || fail "online add said $(cat out)"
  vdtool raid status --output=json "$desc" | grep -q '"state": "spare"' ||
    fail "status shows no spare: $(vdtool raid status "$desc")"
  # Online remove (and add back) through the socket.
  vdtool raid -q remove "$desc" sp-"$desc" || fail "online remove"
  vdtool raid status --output=json "$desc" | grep -q "sp-$desc" &&
    fail "removed spare in status: $(vdtool raid status "$desc")"
  vdtool raid -q add "$desc" sp-"$desc" || fail "online add again"
  timeout 120 "$PY" - "$ctl" "$here" "$desc" "$taker" "$left" <<'EOF' || fail "$desc: takeover"
import os, sys, time
sys.path.insert(0, sys.argv[2])
from qmp import QMP
ctl, dev, spare, left = sys.argv[1], sys.argv[3], sys.argv[4], int(sys.argv[5])
name = os.path.basename
q = QMP(ctl)
q.cmd("vdisk-raid-fail", device=dev, member=1)
end = time.time() + 100
ev = None
while ev is None and time.time() < end:
    for e in q.events:
        if e["event"] == "VDISK_RAID_SPARE_ACTIVE":
            ev = e
    if ev is None:
        q.cmd("query-vdisk-raid")  # reads the events that came meanwhile
        time.sleep(0.05)
assert ev and ev["data"]["device"] == dev and ev["data"]["slot"] == 1, ev
assert name(ev["data"]["spare"]) == spare, ev
while time.time() < end:
    r = q.cmd("query-vdisk-raid", device=dev)[0]
    if not r["degraded"]:
        break
    time.sleep(0.05)
assert [m["state"] for m in r["members"]] == ["active"] * len(r["members"]), r
assert name(r["members"][1]["path"]) == spare, r
assert len(r["spares"]) == left, r
EOF
  # The descriptor names the spare in the slot now (vdtool found the
  # server through the republished runtime entry).
  vdtool raid status "$desc" | grep -Eq "^ +1 +active .*$taker$" ||
    fail "status after takeover: $(vdtool raid status "$desc")"
  touch stop
  wait "$writer" || fail "writer failed"
  stop_nbd
  grep -q "^member 1 raw $taker$" "$desc" || fail "descriptor: $(cat "$desc")"
  compare_served "$desc" ref.raw
}
truncate -s 16M sp-r1.vdraid
served_takeover r1.vdraid s0 1      # the spare added offline first
vdtool raid -q create -l 5 -c 64K --size 16M r5.vdraid b0 b1 b2
truncate -s 16M sp-r5.vdraid
served_takeover r5.vdraid sp-r5.vdraid 0

# ---- cuts during a takeover ----
# Between the superblocks and the descriptor: the old descriptor back.
vdtool raid add r5.vdraid s1 2>/dev/null || fail "add s1"
cp r5.vdraid before.vdraid
vdtool raid -q fail r5.vdraid 0 || fail "offline fail"
grep -q "^member 0 raw s1$" r5.vdraid || fail "offline takeover: $(cat r5.vdraid)"
cp before.vdraid r5.vdraid
vdtool raid detail r5.vdraid | grep -Eq "^ +0 +rebuilding .* s1$" ||
  fail "cut takeover not found: $(vdtool raid detail r5.vdraid)"
vdtool raid rebuild r5.vdraid || fail "rebuild after the cut"
grep -q "^member 0 raw s1$" r5.vdraid && ! grep -q "^spare" r5.vdraid ||
  fail "descriptor after the cut: $(cat r5.vdraid)"
compare_served r5.vdraid ref.raw

# kill -9 of the server right after a takeover (the rebuild running).
vdtool raid add r5.vdraid s2 2>/dev/null || fail "add s2"
start_nbd r5.vdraid
vdtool raid -q fail r5.vdraid 2 || fail "online fail"
pid=$(cat "$nbd_pidfile")
kill -9 "$pid"
rm -f "$nbd_pidfile"
# Gone (reaped) before vdtool judges its runtime entry (bounded).
for i in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
vdtool raid detail r5.vdraid | grep -Eq "^ +2 +(rebuilding|active) .* s2$" ||
  fail "after kill -9: $(vdtool raid detail r5.vdraid)"
vdtool raid rebuild r5.vdraid 2>out || fail "rebuild after kill -9: $(cat out)"
compare_served r5.vdraid ref.raw
vdtool check r5.vdraid >/dev/null || fail "check: $(vdtool check r5.vdraid)"
exit 0
