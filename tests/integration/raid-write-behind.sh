#!/usr/bin/env bash
# RAID1 write-behind (issue 14, md's --write-behind): a local member and a
# write-mostly remote one (nbdkit's file plugin behind its pause filter, so
# the test decides when the "slow link" answers; no timing is measured).
#  - With the remote member paused, writes through vdisk-nbd are
#    acknowledged (the local member has them); `raid status` counts them
#    pending; once resumed they reach the remote member, and after a
#    clean stop both members' data areas are equal.
#  - Without write-behind the same writes wait for the paused member
#    (the control case: the test would see no difference otherwise).
#  - The member written at once fails (a remote export killed): the
#    write-mostly member takes the writes at once; the client sees no error.
#  - A crash (kill -9) with writes still pending: the restarted array
#    resyncs their regions from the local member, never from the stale
#    write-mostly one (which is slot 0, the first a naive resync would
#    pick): the acknowledged data survives on both members.
#  - write-behind without a write-mostly member, or over 16383, is refused.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires nbdkit qemu-img
PY=/usr/bin/python3
$PY -c "import nbd" 2>/dev/null || skip "python3-libnbd is not installed"
nbdkit --filter=pause null --version >/dev/null 2>&1 || skip "nbdkit has no pause filter"
cd "$VD_TMP"
rsock=$VD_TMP/remote.sock ctl=$VD_TMP/pause.ctl
ruri="nbd+unix:///?socket=$rsock"
vdt() { timeout 60 "$top_builddir/tools/vdtool" "$@"; }

start_remote() {
  rm -f "$rsock" "$ctl" remote.pid
  nbdkit -U "$rsock" -P "$VD_TMP/remote.pid" --filter=pause file slow.img \
    pause-control="$ctl" || fail "nbdkit did not start"
  # The pid is read at exit (the file may appear after the sockets).
  on_exit 'kill -9 $(cat "$VD_TMP/remote.pid" 2>/dev/null) 2>/dev/null'
  for _ in $(seq 100); do [ -S "$rsock" ] && [ -S "$ctl" ] && [ -s remote.pid ] && break; sleep 0.1; done
  [ -S "$ctl" ] || fail "nbdkit did not listen"
}
# pause p|r: pause or resume the remote member (waits for the echo).
pause() {
  $PY - "$ctl" "$1" <<'PY' || fail "pause control $1"
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode())
assert s.recv(1) == sys.argv[2].upper().encode()
PY
}
# write_nbd SEED N: on one connection, one write (which dirties the
# bitmap region: that bitmap write goes to every member, as in md), then
# the remote member paused, then N 64 KiB writes of pattern SEED at 0,
# 128K, ..., each acknowledged within WAIT s (default 20), no flush;
# prints "acked".
write_nbd() {
  timeout 60 $PY - "$nbd_uri" "$1" "$2" "$ctl" "${3:-20}" <<'PY'
import nbd, socket, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1])
seed, n = int(sys.argv[2]), int(sys.argv[3])
h.pwrite(b"\xee" * 4096, 16 << 20)
s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(sys.argv[4])
s.sendall(b"p"); assert s.recv(1) == b"P"
for i in range(n):
    c = h.aio_pwrite(bytes([(seed + i) % 251 + 1]) * 65536, i * 131072)
    t = time.time() + int(sys.argv[5])
    while not h.aio_command_completed(c):
        if time.time() > t:
            print("write %d not acknowledged in %s s" % (i, sys.argv[5])); sys.exit(1)
        h.poll(100)
print("acked")
h.shutdown()
PY
}
pending() {
  vdt raid status --output=json "$1" | $PY -c '
import json, sys; print(json.load(sys.stdin).get("write-behind", {}).get("pending", "none"))'
}
data_equal() {   # the members' data areas are byte-identical
  local o
  o=$(vdt raid examine --output=json fast.img | sed -n 's/.*"data-offset": \([0-9]*\).*/\1/p')
  cmp <(tail -c +$((o + 1)) fast.img) <(tail -c +$((o + 1)) slow.img)
}

truncate -s 32M fast.img slow.img
start_remote
expect_error 'write-behind needs a RAID1 with a write-mostly member' \
  vdt raid create -l 1 --write-behind 8 x.vdraid fast.img "$ruri"
expect_error 'write-behind takes 1 to 16383' \
  vdt raid create -l 1 --write-mostly "$ruri" --write-behind 16384 x.vdraid fast.img "$ruri"
# Slot 0 is the write-mostly remote member.
vdt raid create -q -l 1 --member-timeout 120 --write-mostly "$ruri" --write-behind 64 \
  a.vdraid "$ruri" fast.img || fail "raid create with --write-behind"
grep -qx 'write-behind 64' a.vdraid || fail "descriptor: $(cat a.vdraid)"

# ---- paused remote member: acknowledged anyway, pending, then written ----
start_nbd -f raid a.vdraid
out=$(write_nbd 1 32) || true
[ "$out" = acked ] || fail "write-behind: writes not acknowledged with the write-mostly member paused: $out"
p=$(pending a.vdraid)
[ "$p" -gt 0 ] 2>/dev/null || fail "raid status shows no pending write-behind writes: $p"
echo "pending while paused: $p"
pause r
for _ in $(seq 300); do [ "$(pending a.vdraid)" = 0 ] && break; sleep 0.1; done
[ "$(pending a.vdraid)" = 0 ] || fail "write-behind writes did not drain after resume"
stop_nbd
data_equal || fail "after a clean stop the members differ"

# ---- crash with writes pending ----
start_nbd -f raid a.vdraid
out=$(write_nbd 50 16) || true
[ "$out" = acked ] || fail "second round not acknowledged: $out"
kill -9 "$(cat "$nbd_pidfile")"
rm -f "$nbd_pidfile"
pause r
rm -f run/raid-*   # the killed server's runtime entry
start_nbd -f raid a.vdraid    # the open resyncs the dirty regions first
stop_nbd
data_equal || fail "after the crash the resync left the members different"
$PY - fast.img "$(vdt raid examine --output=json fast.img | sed -n 's/.*"data-offset": \([0-9]*\).*/\1/p')" <<'PY' ||
import sys
f = open(sys.argv[1], "rb"); o = int(sys.argv[2])
for i in range(16):
    f.seek(o + i * 131072)
    if f.read(65536) != bytes([(50 + i) % 251 + 1]) * 65536:
        sys.exit("write %d of the crashed round is gone" % i)
PY
  fail "acknowledged writes lost after the crash"

# ---- the member written now fails: the write-mostly one takes the write ----
# (the "fast" member is a remote export killed mid-run, the write-mostly
# one a local file: the client must see no error).
truncate -s 32M fastr.img wm.img
nbdkit -U "$VD_TMP/fast.sock" -P "$VD_TMP/fast.pid" file fastr.img || fail "nbdkit (fast)"
for _ in $(seq 100); do [ -S "$VD_TMP/fast.sock" ] && break; sleep 0.1; done
on_exit 'kill -9 $(cat "$VD_TMP/fast.pid" 2>/dev/null) 2>/dev/null'
furi="nbd+unix:///?socket=$VD_TMP/fast.sock"
vdt raid create -q -l 1 --write-mostly wm.img --write-behind 8 c.vdraid "$furi" wm.img ||
  fail "raid create (remote fast member)"
start_nbd -f raid c.vdraid
timeout 60 $PY - "$nbd_uri" "$VD_TMP/fast.pid" <<'PY' || fail "a write failed once the only fast member was gone"
import nbd, os, signal, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for i in range(4):
    h.pwrite(bytes([0x31 + i]) * 65536, i * 131072)
os.kill(int(open(sys.argv[2]).read()), signal.SIGKILL)
time.sleep(0.5)
for i in range(4):
    h.pwrite(bytes([0x41 + i]) * 65536, i * 131072)
h.flush()
h.shutdown()
PY
stop_nbd
o=$(vdt raid examine --output=json wm.img | sed -n 's/.*"data-offset": \([0-9]*\).*/\1/p')
$PY - wm.img "$o" <<'PY' || fail "the write-mostly member lacks the writes made after the fast member died"
import sys
f = open(sys.argv[1], "rb"); o = int(sys.argv[2])
for i in range(4):
    f.seek(o + i * 131072)
    assert f.read(65536) == bytes([0x41 + i]) * 65536, i
PY

# A hand-edited descriptor: the value is checked (docs/remote.md).
sed 's/^write-behind 64$/write-behind 0/' a.vdraid > bad.vdraid
expect_error "line [0-9]+: expected 'write-behind N' \(1 to 16383\)" vdt info bad.vdraid

# ---- control: without write-behind the writes wait for the member ----
rm -f b.vdraid
truncate -s 32M fast2.img
vdt raid create -q -l 1 --member-timeout 120 --write-mostly "$ruri" --force b.vdraid "$ruri" fast2.img ||
  fail "raid create without write-behind"
start_nbd -f raid b.vdraid
out=$(write_nbd 1 2 3) && [ "$out" = acked ] &&
  fail "without write-behind a write to a paused member was acknowledged"
pause r
stop_nbd
exit 0
