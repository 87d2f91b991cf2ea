#!/usr/bin/env bash
# vdisk-nbd keeps qemu-nbd's habits (issue 15), each checked beside
# qemu-nbd itself doing the same:
#  - without -t, only a client that reached the data phase ends the
#    server: a bare connection, nbdinfo --list or a wrong export name
#    leave it serving;
#  - -k PATH is the Unix socket, -x NAME the export name;
#  - -e N: a client over the limit waits and is served once one leaves;
#  - the minimum block size is 1, so libnbd sends byte-granular requests;
#  - -U is --force-share with -r (the old "-U PATH" still works without);
#  - -s serves a temporary overlay: writes never reach the image, and
#    nothing is left in $TMPDIR.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-nbd qemu-img qemu-io nbdinfo nbdcopy /usr/bin/python3
cd "$VD_TMP"

qemu-img create -q -f raw disk.raw 4M
qemu-io -f raw -c 'write -P 0x5a 0 64k' disk.raw >/dev/null

# serve WHO SOCK ARGS...: qemu-nbd or vdisk-nbd on SOCK, without -t, in
# the background; sets $spid.
serve() {
  local who=$1 sock=$2; shift 2
  rm -f "$sock"
  case $who in
    qemu)  qemu-nbd -f raw -k "$sock" "$@" 2>>srv.err & spid=$! ;;
    # The program itself (not the vdisk_nbd function) so $! is its pid.
    vdisk) "$top_builddir/nbd-server/vdisk-nbd" -f raw -k "$sock" "$@" \
             2>>srv.err & spid=$! ;;
  esac
  on_exit "kill $spid"
  wait_for_socket "$sock"
}
alive() { kill -0 "$1" 2>/dev/null; }
# gone PID: the process ends within 10 s.
gone() {
  local i
  for i in $(seq 100); do alive "$1" || { wait "$1" 2>/dev/null || true; return 0; }; sleep 0.1; done
  return 1
}

for who in qemu vdisk; do
  # ---- no -t: what does not end the server ----
  serve $who "$VD_TMP/p.sock" -x disk disk.raw
  /usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.close()' "$VD_TMP/p.sock"
  sleep 0.3
  alive $spid || fail "$who: a bare connection ended the server"
  nbdinfo --list "nbd+unix:///?socket=$VD_TMP/p.sock" >/dev/null 2>&1 || true
  sleep 0.3
  alive $spid || fail "$who: nbdinfo --list ended the server"
  nbdinfo --size "nbd+unix:///nosuch?socket=$VD_TMP/p.sock" >/dev/null 2>&1 &&
    fail "$who: a wrong export name was served"
  sleep 0.3
  alive $spid || fail "$who: a wrong export name ended the server"
  # -x: the export has that name.
  [ "$(nbdinfo --size "nbd+unix:///disk?socket=$VD_TMP/p.sock")" = 4194304 ] ||
    fail "$who: -x disk not served"
  gone $spid || fail "$who: the server outlived its last real client"

  # ---- minimum block size 1: byte-granular requests ----
  serve $who "$VD_TMP/b.sock" -t disk.raw
  min=$(nbdinfo --json "nbd+unix:///?socket=$VD_TMP/b.sock" |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0].get("block_size_minimum"))')
  [ "$min" = 1 ] || fail "$who: minimum block size $min, want 1"
  # libnbd refuses requests below the advertised minimum (strict mode).
  /usr/bin/python3 - "$VD_TMP/b.sock" <<'PY' || fail "$who: byte-granular write/read"
import nbd, sys
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.pwrite(b"xyz", 65535)
got = h.pread(5, 65533)
assert got == b"\x5a\x5axyz", got
h.shutdown()
PY
  kill $spid; wait $spid 2>/dev/null || true
  qemu-io -f raw -c 'write -P 0x5a 65535 3' disk.raw >/dev/null

  # ---- -e 1: the second client waits, then is served ----
  serve $who "$VD_TMP/e.sock" -t -e 1 disk.raw
  /usr/bin/python3 - "$VD_TMP/e.sock" <<'PY' || fail "$who: -e 1"
import socket, sys
a = socket.socket(socket.AF_UNIX); a.connect(sys.argv[1]); a.settimeout(10)
assert a.recv(8) == b"NBDMAGIC"
b = socket.socket(socket.AF_UNIX); b.connect(sys.argv[1]); b.settimeout(1)
try:
    got = b.recv(8)
    sys.exit("second client got %r while the first was attached" % got)
except socket.timeout:
    pass
a.close()
b.settimeout(10)
assert b.recv(8) == b"NBDMAGIC", "second client not served after the first left"
PY
  kill $spid; wait $spid 2>/dev/null || true

  # ---- -s: a temporary overlay takes the writes, the image is untouched ----
  cp disk.raw snap.raw
  cp disk.raw snap.ref
  rm -rf tmp && mkdir tmp
  TMPDIR=$VD_TMP/tmp serve $who "$VD_TMP/s.sock" -t -s snap.raw
  qemu-io -f raw -c 'write -P 0x77 1M 64k' -c 'read -P 0x77 1M 64k' \
    -c 'read -P 0x5a 0 64k' "nbd+unix:///?socket=$VD_TMP/s.sock" >/dev/null ||
    fail "$who -s: overlay reads"
  kill $spid; wait $spid 2>/dev/null || true
  cmp -s snap.raw snap.ref || fail "$who -s: the image was written"
  [ -z "$(ls -A tmp)" ] || fail "$who -s: left $(ls -A tmp) in TMPDIR"

  # ---- --discard and --detect-zeroes: what frees space in the file ----
  for mode in "--discard=ignore" "--discard=unmap" \
              "--discard=unmap --detect-zeroes=unmap"; do
    qemu-img create -q -f raw dz.raw 4M
    qemu-io -f raw -c 'write -P 0x5a 0 2M' dz.raw >/dev/null
    sync dz.raw
    before=$(stat -c %b dz.raw)
    # shellcheck disable=SC2086
    serve $who "$VD_TMP/d.sock" -t $mode dz.raw
    uri="nbd+unix:///?socket=$VD_TMP/d.sock"
    /usr/bin/python3 - "$VD_TMP/d.sock" <<'PY'
import nbd, sys
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.trim(512 << 10, 0)                       # the first half MiB
h.pwrite(bytes(512 << 10), 1 << 20)        # zeros, as data, at 1 MiB
h.flush()
h.shutdown()
PY
    kill $spid; wait $spid 2>/dev/null || true
    after=$(stat -c %b dz.raw)
    freed=$(( (before - after) * 512 / 1024 ))   # KiB
    case $mode in
      --discard=ignore) want=0 ;;
      --discard=unmap) want=512 ;;
      *) want=1024 ;;
    esac
    echo "$who $mode: $freed KiB freed" >&2
    [ "$freed" -ge "$want" ] && [ "$freed" -le $((want + 64)) ] ||
      fail "$who $mode: $freed KiB freed, want $want"
    out=$(qemu-io -f raw -c 'read -P 0 1M 512k' -c 'read -P 0x5a 1536k 512k' dz.raw)
    [ "$(grep -c '^read 524288/524288' <<<"$out")" = 2 ] &&
      ! grep -q 'verification failed' <<<"$out" || fail "$who $mode: content: $out"
  done
done
expect_error '(-s|snapshot)' vdisk_nbd -s -k "$VD_TMP/x.sock" --backing=disk.raw disk.raw
expect_error 'unsafe' vdisk_nbd --cache=unsafe -k "$VD_TMP/x.sock" disk.raw
expect_error 'discard=unmap' vdisk_nbd --discard=ignore --detect-zeroes=unmap -k "$VD_TMP/x.sock" disk.raw

# ---- -U: --force-share with -r, the old socket spelling without ----
start_nbd -f raw disk.raw            # a writer holds the image lock
rc=0; vdisk_nbd -r -f raw -k "$VD_TMP/r.sock" disk.raw 2>r.err || rc=$?
[ $rc = 1 ] && grep -q 'in use' r.err || fail "-r without -U: not refused by the lock (rc $rc)"
serve vdisk "$VD_TMP/r.sock" -r -U disk.raw
cmp <(nbdcopy "nbd+unix:///?socket=$VD_TMP/r.sock" - ) disk.raw ||
  fail "-r -U: served data differs"
stop_nbd
expect_error 'needs -r' vdisk_nbd --force-share -f raw -k "$VD_TMP/x.sock" disk.raw
rm -f "$VD_TMP/u.sock"
"$top_builddir/nbd-server/vdisk-nbd" -f raw -U "$VD_TMP/u.sock" disk.raw & upid=$!
on_exit "kill $upid"
wait_for_socket "$VD_TMP/u.sock"
[ "$(nbdinfo --size "nbd+unix:///?socket=$VD_TMP/u.sock")" = 4194304 ] ||
  fail "old spelling -U PATH"
gone $upid || fail "-U PATH server did not end after its client"
echo "nbd-habits: OK"
