#!/usr/bin/env bash
# RAID side files and online management against a hostile neighbour
# (issue 10, items 3, 4, 9 and 11; issue 12 for the runtime entries):
#  - symlinks planted at every temporary name the RAID code ever used, and
#    at the final names, never make create / fail / replace / serve write
#    through them (the victim file stays byte-identical);
#  - the descriptor rewrite fsyncs its folder after the rename (strace);
#  - the old request file (ARRAY.request) is inert: nothing reads it;
#  - runtime entries that cannot be trusted (another uid's, writable by
#    others, a symlink) are refused by vdtool in one line, never followed;
#    malformed fail/replace arguments over the socket are refused and
#    change nothing;
#  - a FIFO as a member never blocks an opener, and a descriptor naming
#    itself (directly or through another) fails in one line, no crash.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires cmp timeout

cd "$VD_TMP"
printf 'precious host data\n' > victim
cp victim victim.orig
victim_unchanged() {
  cmp -s victim victim.orig || fail "$1: the symlinked victim file was written"
  [ ! -L "$2" ] || fail "$1: $2 is now a symlink"
}

# ---- item 3: symlinks at every temporary name ----
# The names the RAID code used before (fixed), and the final names.
for n in a.vdraid.tmpXX a.vdraid.result.tmp a.vdraid.served.tmp \
         a.vdraid.request.tmp a.vdraid.result a.vdraid.served; do
  ln -s "$VD_TMP/victim" "$n"
done
vdtool raid create -l 1 -c 64K --size 4M a.vdraid m0 m1 m2
victim_unchanged "raid create" a.vdraid
grep -q '^VDRAID 1$' a.vdraid || fail "the descriptor was not written"
ls a.vdraid.tmp-* >/dev/null 2>&1 && fail "a temporary file was left behind"

start_nbd a.vdraid
victim_unchanged "serving" a.vdraid
vdtool raid detail --output=json a.vdraid |
  grep -q "\"served-by\": $(cat "$nbd_pidfile")," ||
  fail "detail does not name the server's pid"
vdtool raid fail a.vdraid 1
victim_unchanged "online fail" a.vdraid
vdtool create -f raw new.img 4M >/dev/null
ln -sf "$VD_TMP/victim" a.vdraid.tmpXX
vdtool raid replace a.vdraid 1 new.img
victim_unchanged "online replace" a.vdraid
grep -q '^member 1 raw new.img$' a.vdraid ||
  fail "the server did not rewrite the descriptor: $(cat a.vdraid)"
stop_nbd
victim_unchanged "stop" a.vdraid
vdtool raid detail --output=json a.vdraid | /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
assert [m["state"] for m in j["members"]] == ["active"] * 3, j' ||
  fail "array not healthy after the online replace"

# ---- item 11: the descriptor rewrite fsyncs its folder ----
if command -v strace >/dev/null 2>&1; then
  vdtool raid fail a.vdraid 2
  vdtool create -f raw new2.img 4M >/dev/null
  # (LeakSanitizer cannot run under ptrace.)
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
  strace -f -o trace.txt -e trace=openat,fsync,fdatasync,rename,renameat,renameat2 \
    "$top_builddir/tools/vdtool" raid replace a.vdraid 2 new2.img ||
    fail "offline replace under strace"
  /usr/bin/python3 - trace.txt <<'EOF' || fail "descriptor rewrite is not durable"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
# the temporary descriptor: created O_EXCL|O_NOFOLLOW, synced, renamed
tmp = [l for l in lines if re.search(r'openat\(.*a\.vdraid\.tmp-', l)]
assert tmp, "no temporary descriptor"
assert all("O_EXCL" in l and "O_NOFOLLOW" in l for l in tmp), tmp
ren = [i for i, l in enumerate(lines) if re.search(r'rename.*a\.vdraid\.tmp-[^"]*", .*"[^"]*a\.vdraid"', l)]
assert ren, "no rename of the descriptor"
after = lines[ren[-1]:]
dirfd = None
for l in after:
    m = re.search(r'openat\(.*O_DIRECTORY.*\)\s+= (\d+)', l)
    if m:
        dirfd = m.group(1)
    if dirfd and re.search(r'fsync\(%s\)\s+= 0' % dirfd, l):
        sys.exit(0)
sys.exit("no fsync of the folder after the rename")
EOF
else
  echo "strace missing: folder fsync not checked" >&2
fi

# ---- item 4: what vdtool and the server trust ----
vdtool raid create -l 1 --size 4M other.vdraid o0 o1
W=$VD_TMP/shared
mkdir "$W"
vdtool raid create -l 1 --size 4M "$W/s.vdraid" "$W/s0" "$W/s1" "$W/s2"
start_nbd --control "$VD_TMP/ctl.sock" "$W/s.vdraid"
states() {
  vdtool raid detail --output=json "$W/s.vdraid" |
    /usr/bin/python3 -c 'import json,sys; print(" ".join(m["state"] for m in json.load(sys.stdin)["members"]))'
}
# The request file of old is inert now.
(umask 077; printf 'fail 1\n' > "$W/s.vdraid.request")
sleep 0.5
[ "$(states)" = "active active active" ] || fail "a request file was executed"
[ ! -e "$W/s.vdraid.result" ] || fail "a request file was answered"
rm -f "$W/s.vdraid.request"

# The runtime entry: only a regular file of our uid or root, not writable
# by others, is believed.
entry=$(ls "$VDISK_RUNTIME_DIR"/raid-*)
chmod 0666 "$entry"
expect_error "runtime entry writable by group or others \(mode 666\): refused" \
  timeout 30 "$top_builddir/tools/vdtool" raid fail "$W/s.vdraid" 1
chmod 0600 "$entry"
if [ "$(id -u)" = 0 ]; then
  chown 65534 "$entry"
  expect_error "runtime entry owned by uid 65534, not by uid 0 or root: refused" \
    timeout 30 "$top_builddir/tools/vdtool" raid scrub "$W/s.vdraid"
  chown 0 "$entry"
fi
mv "$entry" "$entry.real"
ln -s "$entry.real" "$entry"
expect_error "runtime entry is a symbolic link: refused" \
  timeout 30 "$top_builddir/tools/vdtool" raid status "$W/s.vdraid"
rm "$entry"
mv "$entry.real" "$entry"
[ "$(states)" = "active active active" ] || fail "an untrusted entry was used"

# Malformed replace arguments over the socket: refused, nothing changes.
mkfifo "$W/fifo"
vdtool create -f raw "$W/spare" 4M >/dev/null
uuid=$(sed -n 's/^uuid //p' other.vdraid)
timeout 120 /usr/bin/python3 - "$VD_TMP/ctl.sock" "$W" "$VD_TMP" "$uuid" \
  "$top_srcdir/tests/integration" <<'EOF' || fail "replace arguments"
import sys
ctl, W, T, uuid, here = sys.argv[1:6]
sys.path.insert(0, here)
from qmp import QMP
q = QMP(ctl)
dev = "s.vdraid"
def refused(args, want, cmd="vdisk-raid-replace"):
    r = q.execute(cmd, dict(device=dev, **args))
    assert "error" in r, (args, r)
    assert want in r["error"]["desc"], (args, r["error"]["desc"], want)
refused(dict(member=9, new=W + "/s1"), "no slot 9")
refused(dict(member=-1, new=W + "/s1"), "no slot -1")
refused(dict(member="nosuch", new=W + "/s1"), "nosuch is not a member")
refused(dict(member=1, new="s1"), "must be an absolute path")
refused(dict(member=1, new=W + "/spare", format="nosuchformat"), "nosuchformat")
refused(dict(member=1, new="/dev/null"), "/dev/null: not a regular file or block device")
refused(dict(member=1, new=W + "/fifo"), "fifo: not a regular file or block device")
refused(dict(member=1, new=W + "/s.vdraid"), "is the array's descriptor")
refused(dict(member=1, new=W + "/s2"), "s2 is already member 2")
refused(dict(member=1, new=T + "/o0"), "o0: holds the superblock of another RAID array (%s)" % uuid)
refused(dict(member=1, new=W + "/s1", speed="fast"), "Parameter 'speed' expects")
refused(dict(member=1, new=W + "/s1", bogus=1), "Parameter 'bogus' is unexpected")
refused(dict(member="1x"), "1x is not a member", "vdisk-raid-fail")
r = q.execute("vdisk-raid-fail", dict(device="nosuch", member=1))
assert r["error"]["class"] == "DeviceNotFound", r
EOF
cmp -s victim victim.orig || fail "victim changed"
[ "$(states)" = "active active active" ] ||
  fail "a malformed request changed the array: $(states)"
vdtool raid fail "$W/s.vdraid" 2
[ "$(states)" = "active active faulty" ] || fail "fail 2: $(states)"
vdtool raid scrub "$W/s.vdraid" 2>&1 | grep -q "degraded" ||
  fail "online scrub of a degraded array is not refused"
stop_nbd
[ -z "$(ls "$VDISK_RUNTIME_DIR"/raid-* 2>/dev/null)" ] ||
  fail "runtime entry left behind at exit"

# ---- item 9: loops and FIFO members ----
vdtool raid create -l 1 --size 4M l.vdraid l0 l1
sed 's/^member 1 raw l1$/member 1 - self.vdraid/' l.vdraid > self.vdraid
expect_error "self.vdraid: RAID member loop: the array contains itself \(self.vdraid -> self.vdraid\)" \
  timeout 60 "$top_builddir/tools/vdtool" info self.vdraid
expect_error "RAID member loop" timeout 60 "$top_builddir/tools/vdtool" raid detail self.vdraid
sed 's/^member 1 raw l1$/member 1 - loop-b.vdraid/' l.vdraid > loop-a.vdraid
sed 's/^member 1 raw l1$/member 1 - loop-a.vdraid/' l.vdraid > loop-b.vdraid
expect_error "loop-a.vdraid: RAID member loop: .*loop-a.vdraid -> .*loop-b.vdraid -> .*loop-a.vdraid" \
  timeout 60 "$top_builddir/tools/vdtool" info loop-a.vdraid
# Through a symlink to itself: the same file.
ln -s self.vdraid link.vdraid
sed 's/^member 1 - self.vdraid$/member 1 - link.vdraid/' self.vdraid > self2.vdraid
mv self2.vdraid self.vdraid
expect_error "RAID member loop" timeout 60 "$top_builddir/tools/vdtool" info link.vdraid

mkfifo fifo-member
sed 's/^member 1 raw l1$/member 1 raw fifo-member/' l.vdraid > fm.vdraid
rc=0
out=$(timeout 60 "$top_builddir/tools/vdtool" raid detail fm.vdraid 2>&1) || rc=$?
[ $rc -eq 0 ] || fail "detail with a FIFO member: exit $rc: $out"
echo "$out" | grep -q "fifo-member: not a regular file or block device" ||
  fail "detail does not say why the FIFO member is unused: $out"
timeout 60 "$top_builddir/tools/vdtool" info fm.vdraid | grep -q "degraded" ||
  fail "a FIFO member did not leave the array degraded"
expect_error "fifo-member: not a regular file or block device" \
  timeout 60 "$top_builddir/tools/vdtool" raid assemble x.vdraid l0 fifo-member
vdtool raid fail l.vdraid 1
expect_error "fifo-member: not a regular file or block device" \
  timeout 60 "$top_builddir/tools/vdtool" raid replace l.vdraid 1 fifo-member
cmp -s victim victim.orig || fail "victim changed"
exit 0
