#!/usr/bin/env bash
# What vdisk-nbd puts on the host and what it tells clients before they
# authenticate: the export description names the format and size only
# (never the host path) unless -D sets it; the Unix socket is 0600 (or
# --socket-mode) whatever the umask, and only a stale socket is ever
# replaced; the pid file is 0644, written without following a planted
# symlink, and removed at exit only if it is still ours.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires nbdinfo

img=$VD_TMP/secret-host-dir/disk.img
mkdir -p "$VD_TMP/secret-host-dir"
truncate -s 4M "$img"
sock=$VD_TMP/s.sock
pidf=$VD_TMP/s.pid

run() {   # run ARGS...: background server on $sock with $pidf
  vdisk_nbd --fork --pid-file "$pidf" -t -k "$sock" "$@" 2>>"$VD_TMP/nbd.err" ||
    fail "vdisk-nbd $* did not start: $(cat "$VD_TMP/nbd.err")"
  nbd_pidfile=$pidf
  nbd_errlog=$VD_TMP/nbd.err
}
on_exit stop_nbd

# ---- the description ----
run "$img"
out=$(nbdinfo --json "nbd+unix:///?socket=$sock")
grep -q 'secret-host-dir' <<<"$out" && fail "the host path is sent to clients: $out"
grep -q '"description": "raw image, 4 MiB"' <<<"$out" ||
  fail "description is not format and size: $out"
nbdinfo --list "nbd+unix:///?socket=$sock" | grep -q 'secret-host-dir' &&
  fail "NBD_OPT_LIST sends the host path"
stop_nbd
run -D "the operator's words" "$img"
nbdinfo --json "nbd+unix:///?socket=$sock" |
  grep -q "\"description\": \"the operator's words\"" || fail "-D not sent"
stop_nbd
expect_error 'description' vdisk_nbd -k "$sock" -D "$(head -c 5000 /dev/zero | tr '\0' x)" "$img"

# ---- socket and pid file modes, whatever the umask ----
for mask in 000 022 077; do
  (umask $mask && run "$img")
  nbd_pidfile=$pidf nbd_errlog=$VD_TMP/nbd.err
  [ -S "$sock" ] || fail "no socket"
  m=$(stat -c %a "$sock")
  [ "$m" = 600 ] || fail "umask $mask: socket mode $m, expected 600"
  m=$(stat -c %a "$pidf")
  [ "$m" = 644 ] || fail "umask $mask: pid file mode $m, expected 644"
  stop_nbd
  [ ! -e "$sock" ] || fail "socket left behind"
  [ ! -e "$pidf" ] || fail "pid file left behind"
done
(umask 000 && run --socket-mode 0660 "$img")
m=$(stat -c %a "$sock")
[ "$m" = 660 ] || fail "--socket-mode 0660 gave $m"
stop_nbd
expect_error 'socket-mode' vdisk_nbd -k "$sock" --socket-mode 0999 "$img"
expect_error 'socket-mode' vdisk_nbd -k "$sock" --socket-mode 01777 "$img"
expect_error 'socket-mode' vdisk_nbd --socket-mode 0600 "$img"

# ---- what is at the socket path already ----
victim=$VD_TMP/victim
echo precious > "$victim"
echo notasocket > "$sock"
expect_error "$sock: exists and is not a socket" vdisk_nbd -k "$sock" "$img"
[ "$(cat "$sock")" = notasocket ] || fail "a regular file at the socket path was replaced"
rm -f "$sock"
ln -s "$victim" "$sock"
expect_error "$sock: exists and is not a socket" vdisk_nbd -k "$sock" "$img"
[ -L "$sock" ] && [ "$(cat "$victim")" = precious ] ||
  fail "a symlink at the socket path was followed or replaced"
rm -f "$sock"
ln -s "$VD_TMP/dangling" "$sock"
expect_error "$sock: exists and is not a socket" vdisk_nbd -k "$sock" "$img"
[ ! -e "$VD_TMP/dangling" ] || fail "a dangling symlink was followed"
rm -f "$sock"
# A live server's socket is not stolen; a dead one's is replaced.
run "$img"
expect_error 'already listening' vdisk_nbd -k "$sock" "$img"
nbdinfo --size "nbd+unix:///?socket=$sock" | grep -qx 4194304 ||
  fail "the first server lost its socket"
kill -KILL "$(cat "$pidf")"
sleep 0.2
[ -S "$sock" ] || fail "no stale socket to test with"
rm -f "$pidf"
run "$img"
nbdinfo --size "nbd+unix:///?socket=$sock" | grep -qx 4194304 ||
  fail "a stale socket was not replaced"
stop_nbd

# ---- the pid file ----
ln -s "$victim" "$pidf"
run "$img"
[ "$(cat "$victim")" = precious ] || fail "the pid file symlink was followed"
[ -f "$pidf" ] && [ ! -L "$pidf" ] || fail "the pid file is not a regular file"
pid=$(cat "$pidf")
kill -0 "$pid" || fail "pid file holds $pid, not a live process"
# Replaced behind the server's back: not ours any more, left alone.
mv "$pidf" "$VD_TMP/ours.pid"
echo other > "$pidf"
kill -TERM "$pid"
for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
[ "$(cat "$pidf")" = other ] || fail "somebody else's pid file was removed"
rm -f "$pidf"
ls "$VD_TMP" | grep -q 'tmp-' && fail "temporary pid files left: $(ls "$VD_TMP")"
mkdir "$pidf"
expect_error "$pidf" vdisk_nbd -k "$sock" --pid-file "$pidf" "$img"
[ ! -e "$sock" ] || fail "socket left behind after a pid file error"
echo PASS
