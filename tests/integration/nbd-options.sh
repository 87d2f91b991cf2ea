#!/usr/bin/env bash
# vdisk-nbd's command line: errors, --help, TCP with -p/-b, several exports,
# exit after the last client without -t, and a clean
# SIGTERM exit (status 0, data flushed) with a client attached.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires nbdinfo qemu-io

img=$VD_TMP/disk.img
truncate -s 4M "$img"

vdisk_nbd --help | grep -q -- '--tls-creds' || fail "--help"
expect_error 'invalid option or missing argument: --bogus' vdisk_nbd --bogus "$img"
expect_error 'no image' vdisk_nbd
expect_error 'nosuch.img' vdisk_nbd -k "$VD_TMP/e.sock" "$VD_TMP/nosuch.img"
[ ! -e "$VD_TMP/e.sock" ] || fail "socket left behind after an error"
expect_error 'nosuch.img' vdisk_nbd --fork -k "$VD_TMP/e.sock" "$VD_TMP/nosuch.img"
[ ! -e "$VD_TMP/e.sock" ] || fail "socket left behind after an error (--fork)"
expect_error 'port' vdisk_nbd -p 70000 "$img"
expect_error 'used twice' vdisk_nbd -k "$VD_TMP/e.sock" "a=$img" "a=$img"
expect_error 'tls' vdisk_nbd --tls=maybe "$img"
expect_error 'tls' vdisk_nbd --tls=on "$img"

# TCP on a free port, two exports, a '=' inside a path.
mkdir -p "$VD_TMP/x=y"
truncate -s 1M "$VD_TMP/x=y/two.img"
port=$(free_port)
pidf=$VD_TMP/tcp.pid
vdisk_nbd --fork --pid-file "$pidf" -t -p "$port" -b 127.0.0.1 \
  "one=$img" "$VD_TMP/x=y/two.img" || fail "TCP server did not start"
nbd_pidfile=$pidf
on_exit stop_nbd
nbdinfo --size "nbd://127.0.0.1:$port/one" | grep -qx 4194304 || fail "TCP export one"
nbdinfo --size "nbd://127.0.0.1:$port/two.img" | grep -qx 1048576 || fail "TCP export two.img"
nbdinfo --size "nbd://127.0.0.1:$port" | grep -qx 4194304 || fail "TCP default export"
stop_nbd
[ ! -e "$pidf" ] || fail "pid file left behind"

# Without -t the server exits when its last client leaves.
sock=$VD_TMP/once.sock
vdisk_nbd --fork --pid-file "$VD_TMP/once.pid" -k "$sock" "$img" ||
  fail "server did not start"
pid=$(cat "$VD_TMP/once.pid")
nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null || fail "nbdinfo"
for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && { kill "$pid"; fail "server without -t kept running"; }
[ ! -e "$sock" ] || fail "socket left behind"

# -e: nbd-habits.sh (a client over the limit waits, as with qemu-nbd).

# SIGTERM with a client attached and writes acknowledged: exit 0, data in
# the file.  Run in the foreground to see the exit status.
if [ -z "${VD_VALGRIND:-}" ]; then
  sock=$VD_TMP/term.sock
  "$top_builddir/nbd-server/vdisk-nbd" -t -k "$sock" "$img" &
  pid=$!
  wait_for_socket "$sock"
  qemu-io -f raw -c 'write -P 0x42 0 1M' "nbd+unix:///?socket=$sock" >/dev/null ||
    fail "qemu-io write"
  # Keep a client connected while the signal arrives.
  /usr/bin/python3 -c 'import nbd,sys,time
h=nbd.NBD(); h.connect_unix(sys.argv[1]); time.sleep(30)' "$sock" &
  client=$!
  on_exit "kill $client"
  sleep 0.5
  kill -TERM "$pid"
  rc=0; wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || fail "exit status $rc after SIGTERM"
  out=$(qemu-io -f raw -r -c 'read -P 0x42 0 1M' "$img" 2>&1)
  grep -q 'read 1048576' <<<"$out" && ! grep -q 'failed' <<<"$out" ||
    fail "data lost: $out"
fi
echo PASS
