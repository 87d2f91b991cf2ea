#!/usr/bin/env bash
# RAID management online through the control socket (issue 12): a RAID5
# of three VHD members served by vdisk-nbd while a writer (libnbd) keeps
# writing a pattern that is mirrored into a reference file:
#  - a member failed through 'vdtool raid fail' (found through the runtime
#    entry) and through raw QMP (vdisk-raid-fail by path);
#  - replaced through raw QMP (a vdisk-raid-rebuild job in
#    query-block-jobs, BLOCK_JOB_COMPLETED) and through 'vdtool raid
#    replace'; a cancelled rebuild is checkpointed and resumes at the next
#    open;
#  - scrubbed as a job (VDISK_RAID_SCRUB_REPORT, last-scrub) and through
#    'vdtool raid scrub';
#  - two clients at once (a job refused to the second, its cancel of the
#    first's, two more querying all along);
#  - uid 65534 refused, through raw QMP and through vdtool;
#  - the exported bytes equal the reference (qemu-img compare), and the
#    array checks clean offline;
#  - vdisk-fuse without --control: its own socket in the runtime folder,
#    fail/replace/scrub through vdtool while fio --verify=crc32c writes.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img nbdsh setpriv fio
[ -x /usr/bin/python3 ] || skip "no /usr/bin/python3"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "no libnbd python module"
PY=/usr/bin/python3
here=$top_srcdir/tests/integration

json_field() { "$PY" -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
cd "$VD_TMP"
vdtool raid create -l 5 -c 64K --size 16M -f vpc a.vdraid m0.vhd m1.vhd m2.vhd
for n in n1 n2 n3 n4; do vdtool create -f vpc "$n.vhd" 16M >/dev/null; done
size=$(vdtool info --output=json a.vdraid | json_field virtual-size)
truncate -s "$size" ref.raw
ctl=$VD_TMP/ctl.sock
start_nbd --control "$ctl" a.vdraid
dev=a.vdraid
[ -n "$(ls "$VDISK_RUNTIME_DIR"/raid-* 2>/dev/null)" ] || fail "no runtime entry"
[ "$(stat -c %a "$VDISK_RUNTIME_DIR")" = 700 ] || fail "runtime folder not 0700"

"$PY" "$here/raid-control-writer.py" "$nbd_uri" ref.raw stop 42 > writer.out &
writer=$!
on_exit "touch '$VD_TMP/stop'; kill $writer"
ctlpy() { timeout 300 "$PY" "$here/raid-control.py" "$ctl" "$dev" "$@"; }

# ---- fail and replace, through vdtool and raw QMP ----
vdtool raid fail a.vdraid 1 || fail "vdtool raid fail through the socket"
ctlpy replace 1 "$VD_TMP/n1.vhd" || fail "QMP replace"
ctlpy fail "$VD_TMP/m2.vhd" || fail "QMP fail by path"
vdtool raid replace a.vdraid 2 n2.vhd || fail "vdtool raid replace"
[ "$(vdtool raid status --output=json a.vdraid | json_field degraded)" = False ] ||
  fail "status after replace: $(vdtool raid status a.vdraid)"

# ---- scrub ----
ctlpy scrub || fail "QMP scrub"
out=$(vdtool raid scrub a.vdraid) || fail "vdtool raid scrub: $out"
echo "$out" | grep -q "^scrubbed [0-9]* stripes: 0 mismatched, 0 repaired$" ||
  fail "scrub output: $out"

# ---- two clients at once ----
ctlpy two-clients || fail "two clients"
# vdtool and QMP side by side: a second scrub while one runs is refused in
# one line, not queued or crashed.
vdtool raid replace --no-wait --rate 1M a.vdraid 0 n3.vhd ||
  fail "replace --no-wait"
expect_error "busy" vdtool raid scrub a.vdraid
vdtool raid status --output=json a.vdraid | grep -q '"type": "vdisk-raid-rebuild"' ||
  fail "the rebuild job is not in status"
timeout 300 "$PY" - "$ctl" "$here" <<'EOF' || fail "rebuild of slot 0"
import sys, time
sys.path.insert(0, sys.argv[2])
from qmp import QMP
q = QMP(sys.argv[1])
q.cmd("block-job-set-speed", device=[j for j in q.cmd("query-block-jobs")][0]["device"], speed=0)
end = time.time() + 240
while q.cmd("query-block-jobs") and time.time() < end:
    time.sleep(0.1)
r = q.cmd("query-vdisk-raid")[0]
assert [m["state"] for m in r["members"]] == ["active"] * 3, r
EOF

# ---- another uid ----
# uid 65534 imports qmp.py from a copy it can read (the checkout may sit
# under a folder only its owner can enter).
mkdir -m 0755 "$VD_TMP/py"
cp "$here/qmp.py" "$VD_TMP/py/"
chmod 0644 "$VD_TMP/py/qmp.py"
chmod 0711 "$VD_TMP"
chmod 0666 "$ctl"
chmod 0755 "$VDISK_RUNTIME_DIR"
chmod 0644 "$VDISK_RUNTIME_DIR"/raid-*
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
as_nobody timeout 60 "$PY" - "$ctl" "$VD_TMP/py" <<'EOF' || fail "uid 65534 over QMP"
import sys
sys.path.insert(0, sys.argv[2])
from qmp import QMP
q = QMP(sys.argv[1], negotiate=False)
g = q.greeting
assert "error" in g and "permission denied" in g["error"]["desc"], g
EOF
# vdtool run by uid 65534 (a copy it can reach: the checkout may not be).
pub=$(public_copy tools/vdtool)
expect_error "permission denied: the control socket serves only" \
  as_nobody env LD_LIBRARY_PATH="$VD_TMP/public" timeout 60 "$pub" \
  raid fail "$VD_TMP/a.vdraid" 1
chmod 0700 "$VD_TMP" "$VDISK_RUNTIME_DIR"
chmod 0600 "$ctl" "$VDISK_RUNTIME_DIR"/raid-*
vdtool raid status --output=json a.vdraid | "$PY" -c '
import json, sys
assert [m["state"] for m in json.load(sys.stdin)["members"]] == ["active"] * 3
' || fail "uid 65534 changed the array"

# ---- the data ----
touch stop
wait "$writer" || fail "the writer failed"
[ "$(cat writer.out)" -gt 0 ] || fail "the writer wrote nothing"
qemu-img compare -f raw -F raw ref.raw "$nbd_uri" ||
  fail "the exported bytes differ from the reference"

# ---- a cancelled rebuild resumes at the next open ----
vdtool raid fail a.vdraid 1
ctlpy cancel-rebuild 1 "$VD_TMP/n4.vhd" || fail "cancel of a rebuild"
stop_nbd
[ -z "$(ls "$VDISK_RUNTIME_DIR"/raid-* 2>/dev/null)" ] ||
  fail "runtime entry left behind at exit"
[ ! -e "$ctl" ] || fail "control socket left behind"
vdtool raid detail a.vdraid | grep -q rebuilding || fail "not checkpointed"
vdtool raid rebuild a.vdraid || fail "resume offline"
vdtool check a.vdraid >/dev/null || fail "vdtool check after all this"
vdtool convert -q -O raw a.vdraid out.raw
cmp out.raw ref.raw || fail "the array differs from the reference"

# ---- a stale entry ----
start_nbd a.vdraid
pid=$(cat "$nbd_pidfile")
kill -KILL "$pid"
for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
rm -f "$nbd_pidfile"
out=$(vdtool raid scrub a.vdraid 2>&1) || fail "offline scrub after kill -9: $out"
echo "$out" | grep -q "removed the stale runtime entry .* of process $pid" ||
  fail "the stale entry was not named: $out"
[ -z "$(ls "$VDISK_RUNTIME_DIR"/raid-* 2>/dev/null)" ] || fail "stale entry kept"

# ---- vdisk-fuse without --control ----
if [ -e /dev/fuse ] && command -v fusermount3 >/dev/null; then
  . "$top_srcdir/tests/integration/fuse-functions.sh"
  mnt=$VD_TMP/mnt
  vdtool raid create -l 5 -c 64K --size 16M -f vpc f.vdraid f0.vhd f1.vhd f2.vhd
  vdtool create -f vpc f3.vhd 16M >/dev/null
  fuse_mount "$mnt" f.vdraid
  ls "$VDISK_RUNTIME_DIR"/vdisk-fuse-*.sock >/dev/null 2>&1 ||
    fail "vdisk-fuse started no socket of its own"
  fio --name=w --filename="$mnt/f.raw" --rw=randwrite --bs=4k --size=24M \
      --direct=1 --verify=crc32c --verify_fatal=1 --output=fio.out &
  fio=$!
  vdtool raid fail f.vdraid 2 || fail "fuse: fail"
  vdtool raid replace f.vdraid 2 f3.vhd || fail "fuse: replace"
  wait "$fio" || { cat fio.out; fail "fio --verify through FUSE"; }
  vdtool raid scrub f.vdraid | grep -q " 0 mismatched" || fail "fuse: scrub"
  fuse_umount "$mnt"
  [ -z "$(ls "$VDISK_RUNTIME_DIR" 2>/dev/null)" ] ||
    fail "vdisk-fuse left $(ls "$VDISK_RUNTIME_DIR") behind"
fi
echo OK
