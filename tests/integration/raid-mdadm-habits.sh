#!/usr/bin/env bash
# vdtool raid with mdadm's habits (issue 15, "vdtool raid (mdadm habits)"):
#  - create takes -l raid5/raid1/raid0 and --raid-devices/-n (checked
#    against the MEMBERs given) and says what it did in one line (-q: not);
#  - examine MEMBER prints one member's superblock as mdadm --examine
#    (fields checked against the bytes on disk, read here with Python from
#    docs/raid-format.md's layout), --output=json with kebab-case keys;
#    detail given a member points to examine in one line;
#  - detail --test exits 0 healthy, 1 degraded, 2 failed, 4 unreadable;
#  - fail and assemble say what they did in one line; assemble of a
#    degraded array needs --run; rebuild with nothing to do says so;
#  - re-add keeps working (bitmap resync), its numbers in one line;
#  - monitor --oneshot reports DegradedArray; monitor follows an array
#    served by vdisk-nbd and reports Fail, DegradedArray, RebuildStarted/
#    RebuildFinished, SpareActive, on stdout and through --program;
#  - the JSON of detail, status (served) and examine has kebab-case keys;
#  - the data stays right through it all (qemu-img compare on the array
#    served by vdisk-nbd against a reference written with qemu-io);
#  - every subcommand takes its options after the operands too (mdadm's
#    "--detail /dev/md0 --test", qemu-img's "info IMG --output=json",
#    beside qemu-img doing it), with the same result as before them; an
#    option's negative argument stays its argument; "--" ends options, so
#    members named like options work after it and are refused before.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io timeout
PY=/usr/bin/python3
[ -x "$PY" ] || skip "no /usr/bin/python3"
VDTOOL=$top_builddir/tools/vdtool
cd "$VD_TMP"

# sbfield MEMBER: "uuid slot events nmembers level chunk" from the bytes.
sbfield() {
  "$PY" - "$1" <<'EOF'
import struct, sys, uuid
with open(sys.argv[1], "rb") as f:
    f.seek(4096); b = f.read(4096)
assert b[:8] == b"VDRAIDSB"
print(uuid.UUID(bytes=b[16:32]), struct.unpack_from("<I", b, 48)[0],
      struct.unpack_from("<Q", b, 56)[0], struct.unpack_from("<I", b, 44)[0],
      struct.unpack_from("<I", b, 32)[0], struct.unpack_from("<I", b, 40)[0])
EOF
}
# kebab: every key of the JSON on stdin is lower-case kebab.
kebab() {
  "$PY" -c '
import json, re, sys
bad = []
def walk(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", k): bad.append(k)
            walk(v)
    elif isinstance(o, list):
        for v in o: walk(v)
walk(json.load(sys.stdin))
sys.exit("non-kebab keys: %s" % bad if bad else 0)'
}
detail_rc() { local rc=0; vdtool raid detail --test "$@" >/dev/null 2>&1 || rc=$?; echo $rc; }

# ---- create: -l raidN, --raid-devices, one line ----
expect_error "raid-devices=4.* 3 MEMBERs" \
  vdtool raid create -l raid5 -n 4 --size 4M x.vdraid x0 x1 x2
[ ! -e x.vdraid ] && [ ! -e x0 ] || fail "a refused create left files"
expect_error "level must be" vdtool raid create -l raid6 --size 4M x.vdraid x0 x1 x2 x3
out=$(vdtool raid create -l raid5 --raid-devices=3 -c 64K --size 6M a.vdraid m0 m1 m2 2>&1) ||
  fail "create -l raid5 --raid-devices=3: $out"
[ "$(echo "$out" | wc -l)" = 1 ] && echo "$out" | grep -q "^vdtool: array a.vdraid created: raid5, 3 members" ||
  fail "create said: $out"
out=$(vdtool raid create -q -l raid1 -n 2 --size 4M r1.vdraid r1a r1b 2>&1) || fail "create -l raid1: $out"
[ -z "$out" ] || fail "create -q printed: $out"
vdtool raid create -q -l raid0 --size 4M r0.vdraid r0a r0b
[ "$(vdtool raid detail --output=json r1.vdraid | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["level"])')" = 1 ] ||
  fail "-l raid1 did not make a RAID1"
[ "$(vdtool raid detail --output=json r0.vdraid | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["level"])')" = 0 ] ||
  fail "-l raid0 did not make a RAID0"

# Reference data through the array (qemu-io writes the same on a model).
size=$(vdtool info --output=json a.vdraid | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
truncate -s "$size" ref.raw
vd_nbd_io a.vdraid ref.raw "write -P 0x5a 0 1M" "write -P 0xc3 3M 700k" \
  "write -P 0x11 5M 64k"
vdtool convert -O raw a.vdraid cur.raw
qemu-img compare -q -f raw -F raw ref.raw cur.raw ||
  fail "array data differs from the reference after writing"

# ---- examine ----
read -r uuid slot events nm level chunk <<<"$(sbfield m1)"
out=$(vdtool raid examine m1) || fail "examine m1: $out"
for want in "Array UUID : $uuid" "Raid Level : raid5" "Raid Devices : 3" \
            "Chunk Size : 64K" "Events : $events" "Device Role : Active device 1" \
            "Array State : AAA" "Data Offset : " "Super Offset : 4096" \
            "Bitmap : yes" "PPL : yes"; do
  echo "$out" | grep -q "$want" || fail "examine lacks '$want': $out"
done
[ "$slot" = 1 ] || fail "member m1 has slot $slot on disk"
vdtool raid examine --output=json m1 > ex.json
kebab < ex.json || fail "examine JSON: $(cat ex.json)"
cat > exam.py <<'EOF'
import json, sys
j = json.load(open(sys.argv[3]))
assert j["array-uuid"] == sys.argv[1], j
assert j["events"] == int(sys.argv[2]), j
assert j["slot"] == 1 and j["raid-devices"] == 3 and j["level"] == 5, j
assert j["chunk-size"] == 65536 and j["state"] == "active", j
assert j["bitmap"] is True and j["ppl"] is True, j
assert j["data-offset"] > 0 and j["data-size"] > 0, j
EOF
"$PY" exam.py "$uuid" "$events" ex.json || fail "examine JSON values: $(cat ex.json)"
d_uuid=$(vdtool raid detail --output=json a.vdraid | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["uuid"])')
[ "$d_uuid" = "$uuid" ] || fail "detail uuid $d_uuid, examine $uuid"
expect_error "m1 is a member of array $uuid.*vdtool raid examine m1" vdtool raid detail m1
expect_error "ref.raw: not a RAID member" vdtool raid examine ref.raw
vdtool raid detail --output=json a.vdraid | kebab || fail "detail JSON keys"

# ---- detail --test: healthy 0 ----
[ "$(detail_rc a.vdraid)" = 0 ] || fail "detail --test of a healthy array: $(detail_rc a.vdraid)"
[ "$(detail_rc nosuch.vdraid)" = 4 ] || fail "detail --test of a missing descriptor: $(detail_rc nosuch.vdraid)"

# ---- rebuild with nothing to do ----
out=$(vdtool raid rebuild a.vdraid 2>&1) || fail "rebuild with nothing to do failed: $out"
echo "$out" | grep -q "a.vdraid: nothing to rebuild" || fail "rebuild said: $out"

# ---- monitor --oneshot, healthy: nothing ----
out=$(timeout -k 10 20 "$VDTOOL" raid monitor --oneshot a.vdraid) || fail "monitor --oneshot: $out"
[ -z "$out" ] || fail "monitor --oneshot on a healthy array: $out"

# ---- monitor of a served array: fail, replace ----
ctl=$VD_TMP/ctl.sock
start_nbd --control "$ctl" a.vdraid
cat > prog.sh <<EOF
#!/bin/sh
echo "\$*" >> $VD_TMP/prog.out
EOF
chmod +x prog.sh
timeout -k 10 60 "$VDTOOL" raid monitor -d 0.1 a.vdraid > mon.out 2> mon.err &
mon=$!
timeout -k 10 60 "$VDTOOL" raid monitor -d 0.1 --program "$VD_TMP/prog.sh" a.vdraid 2> monp.err &
monp=$!
on_exit "pkill -KILL -P $mon; pkill -KILL -P $monp; kill -KILL $mon $monp"
# stop_monitors PID...: SIGTERM to each vdtool itself, not to its timeout:
# timeout passes a signal on to its whole process group, followed by a
# SIGCONT, and under ASan that reaches LeakSanitizer's exit-time tracer
# too, which then waits for ever for a thread the SIGCONT resumed (the
# hang that stopped CI in session 7).
stop_monitors() {
  local p
  for p in "$@"; do pkill -TERM -P "$p" 2>/dev/null || true; done
}
# wait_line FILE REGEX: at most ~20 s.
wait_line() {
  local i
  for i in $(seq 200); do grep -Eq "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  fail "no /$2/ in $1 after 20 s: $(cat "$1" 2>/dev/null)"
}
sleep 0.5   # both monitors have taken their first look
out=$(vdtool raid fail a.vdraid m1 2>&1) || fail "fail: $out"
[ "$(echo "$out" | wc -l)" = 1 ] && echo "$out" | grep -q "^vdtool: set m1 faulty in a.vdraid (slot 1)" ||
  fail "fail said: $out"
wait_line mon.out "^Fail a.vdraid m1$"
wait_line mon.out "^DegradedArray a.vdraid$"
wait_line prog.out "^Fail a.vdraid m1$"
# The survivors record the failure; the failed member keeps its old view.
vdtool raid examine m0 | grep -q "Array State : A.A " || fail "examine m0 after fail: $(vdtool raid examine m0)"
vdtool raid examine m1 | grep -q "Array State : AAA " || fail "examine m1 after fail: $(vdtool raid examine m1)"
[ "$(detail_rc a.vdraid)" = 1 ] || fail "detail --test of a degraded array: $(detail_rc a.vdraid)"
vdtool create -q -f raw n1 6M
vdtool raid replace a.vdraid 1 n1 || fail "replace"
wait_line mon.out "^RebuildFinished a.vdraid n1$"
wait_line mon.out "^SpareActive a.vdraid n1$"
wait_line prog.out "^SpareActive a.vdraid n1$"
# The rebuild was seen starting or was over between two looks.
grep -q "^RebuildStarted a.vdraid n1$" mon.out || true
stop_monitors $mon $monp
wait $mon $monp 2>/dev/null || true
[ ! -s mon.err ] || fail "monitor stderr: $(cat mon.err)"
vdtool raid status --output=json a.vdraid > st.json
kebab < st.json || fail "status JSON keys: $(cat st.json)"
"$PY" -c 'import json,sys; j=json.load(sys.stdin); assert j["degraded"] is False, j' < st.json ||
  fail "status after replace: $(cat st.json)"
qemu-img compare -q -f raw -F raw "$nbd_uri" ref.raw ||
  fail "served array differs from the reference after fail and replace"
stop_nbd
[ "$(detail_rc a.vdraid)" = 0 ] || fail "detail --test after replace"

# ---- fail offline, re-add, rebuild ----
out=$(vdtool raid fail a.vdraid 2 2>&1) || fail "fail offline: $out"
echo "$out" | grep -q "^vdtool: set m2 faulty in a.vdraid (slot 2)$" || fail "fail offline said: $out"
out=$(timeout -k 10 20 "$VDTOOL" raid monitor --oneshot a.vdraid) || fail "monitor --oneshot: $out"
[ "$out" = "DegradedArray a.vdraid" ] || fail "monitor --oneshot on a degraded array: '$out'"
timeout -k 10 20 "$VDTOOL" raid monitor -1 --program "$VD_TMP/prog.sh" a.vdraid
tail -n1 prog.out | grep -qx "DegradedArray a.vdraid" || fail "--oneshot --program: $(cat prog.out)"
out=$(vdtool raid re-add a.vdraid m2) || fail "re-add: $out"
echo "$out" | grep -q "^a.vdraid: slot 2 re-added: copied [0-9]* of [0-9]* bytes" || fail "re-add said: $out"
vdtool raid -q fail a.vdraid 2 2>fail.err || fail "fail -q: $(cat fail.err)"
[ ! -s fail.err ] || fail "fail -q said: $(cat fail.err)"
out=$(vdtool raid re-add -q a.vdraid 2 2>&1) || fail "re-add -q: $out"
[ -z "$out" ] || fail "re-add -q said: $out"
expect_error "not a member" vdtool raid re-add a.vdraid nosuch
[ "$(detail_rc a.vdraid)" = 0 ] || fail "detail --test after re-add"

# ---- assemble: --run for a degraded array, one line ----
rm a.vdraid
expect_error "slot 1 .* was not given: .*--run" vdtool raid assemble a.vdraid m0 m2
out=$(vdtool raid assemble a.vdraid m0 n1 m2 2>&1) || fail "assemble: $out"
[ "$out" = "vdtool: array a.vdraid started with 3 of 3 members" ] || fail "assemble said: $out"
out=$(vdtool raid assemble -q a.vdraid m0 n1 m2 2>&1) || fail "assemble -q: $out"
[ -z "$out" ] || fail "assemble -q said: $out"
out=$(vdtool raid assemble --run a.vdraid m0 m2 2>&1) || fail "assemble --run: $out"
echo "$out" | grep -q "a.vdraid: started degraded: slot 1 (missing)" || fail "assemble --run said: $out"
[ "$(detail_rc a.vdraid)" = 1 ] || fail "detail --test of an array started degraded"
vdtool convert -O raw a.vdraid cur.raw
qemu-img compare -q -f raw -F raw ref.raw cur.raw || fail "degraded array data differs"
# Two members gone: the RAID5 cannot start (2); detail still reads it.
mv m2 m2.away
[ "$(detail_rc a.vdraid)" = 2 ] || fail "detail --test of a failed array: $(detail_rc a.vdraid)"
mv m2.away m2
# ---- options after operands, as mdadm and qemu-img take them ----
qemu-img info --output=json ref.raw >peer1.json
qemu-img info ref.raw --output=json >peer2.json
cmp peer1.json peer2.json || fail "qemu-img info: option after operand differs"
vdtool raid detail --output=json a.vdraid >before.json
vdtool raid detail a.vdraid --output=json >after.json ||
  fail "detail ARRAY --output=json refused"
cmp before.json after.json || fail "detail ARRAY --output=json differs"
[ "$(vdtool raid detail a.vdraid --test >/dev/null 2>&1; echo $?)" = "$(detail_rc a.vdraid)" ] ||
  fail "detail ARRAY --test: not the exit status of detail --test ARRAY"
vdtool raid examine --output=json m0 m1 >before.json
vdtool raid examine m0 --output=json m1 >after.json || fail "examine M0 --output=json M1"
cmp before.json after.json || fail "examine with --output between members differs"
vdtool raid status a.vdraid --output=json | kebab || fail "status ARRAY --output=json"
out=$(vdtool raid create p.vdraid p0 p1 -l raid1 --size 4M -n 2 2>&1) ||
  fail "create ARRAY MEMBERs -l ... refused: $out"
[ "$out" = "vdtool: array p.vdraid created: raid1, 2 members, 3 MiB, policy bitmap" ] ||
  fail "create with options last said: $out"
out=$(vdtool raid fail p.vdraid p1 -q 2>&1) || fail "fail ARRAY MEMBER -q: $out"
[ -z "$out" ] || fail "fail ARRAY MEMBER -q said: $out"
out=$(vdtool raid re-add p.vdraid p1 --rate 100M 2>&1) || fail "re-add ARRAY MEMBER --rate: $out"
vdtool raid assemble p.vdraid p0 p1 --force -q || fail "assemble ... --force"
vdtool raid scrub p.vdraid --repair | grep -q "^scrubbed" || fail "scrub ARRAY --repair"
out=$(vdtool raid rebuild p.vdraid --rate 1M 2>&1) || fail "rebuild ARRAY --rate: $out"
out=$(timeout -k 10 20 "$VDTOOL" raid monitor p.vdraid --oneshot) || fail "monitor ARRAY --oneshot: $out"
# A negative argument is the option's, never an option of its own.
expect_error "delay takes more than 0.*'-1'" vdtool raid monitor p.vdraid -d -1
expect_error "invalid rate '-5'" vdtool raid rebuild p.vdraid --rate -5
# Members named like options: after "--" only.
expect_error "invalid option" vdtool raid examine -d1
vdtool raid create -q -l 1 --size 4M dash.vdraid -- -d1 -d2 ||
  fail "create ARRAY -- -d1 -d2"
[ -f ./-d1 ] && [ -f ./-d2 ] || fail "members -d1 -d2 not created"
vdtool raid examine -- -d1 | grep -q "Raid Devices : 2" || fail "examine -- -d1"
expect_error "invalid option" vdtool raid fail dash.vdraid -d2
vdtool raid fail -q dash.vdraid -- -d2 || fail "fail ARRAY -- -d2"
[ "$(detail_rc dash.vdraid)" = 1 ] || fail "dash.vdraid not degraded after fail -- -d2"
exit 0
