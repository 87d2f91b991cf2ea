#!/usr/bin/env bash
# The control socket's protocol (QMP) on a real vdisk-nbd --control:
# greeting, negotiation, ids, malformed input, unknown commands, wrong
# argument types, a 2 MiB message, a peer of another uid, 16 clients and
# a 17th, a client that never reads, query-block against qemu-img info of
# the same VHD chain (a differencing child over a dynamic VHD); the NBD
# export keeps serving throughout (nbdinfo).  Also the socket's file
# rules: mode 0600 whatever the umask, an existing non-socket path or
# symlink refused, a stale socket replaced, removed at exit.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires nbdinfo qemu-img setpriv
[ -x /usr/bin/python3 ] || skip "no /usr/bin/python3"

# A chain of three: child -> mid (differencing) -> base (dynamic).
base=$VD_TMP/base.vhd
mid=$VD_TMP/mid.vhd
child=$VD_TMP/child.vhd
ctl=$VD_TMP/ctl.sock
qemu-img create -q -f vpc -o subformat=dynamic "$base" 8M
vdtool create -q -f vpc -b "$base" -F vpc "$mid"      # qemu-img cannot
vdtool create -q -f vpc -b "$mid" -F vpc "$child"

# ---- the socket file ----
echo "not a socket" >"$ctl"
expect_error "$ctl: exists and is not a socket" \
  vdisk_nbd -k "$VD_TMP/n.sock" --control "$ctl" "disk=$child"
[ "$(cat "$ctl")" = "not a socket" ] || fail "the file at --control was touched"
rm -f "$ctl"
ln -s "$VD_TMP/elsewhere" "$ctl"
expect_error "$ctl: exists and is not a socket" \
  vdisk_nbd -k "$VD_TMP/n.sock" --control "$ctl" "disk=$child"
[ ! -e "$VD_TMP/elsewhere" ] || fail "the symlink at --control was followed"
rm -f "$ctl"
/usr/bin/python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$ctl"
[ -S "$ctl" ] || fail "no stale socket to test with"

(umask 000 && start_nbd --control "$ctl" "disk=$child")
nbd_sock=$VD_TMP/nbd.sock nbd_pidfile=$VD_TMP/nbd.pid nbd_errlog=$VD_TMP/nbd.err
on_exit stop_nbd
uri=$(nbd_uri_for disk)
[ -S "$ctl" ] || fail "the stale socket was not replaced"
m=$(stat -c %a "$ctl")
[ "$m" = 600 ] || fail "umask 000: control socket mode $m, expected 600"
ls -a "$VD_TMP" | grep -q '^\.vc' && fail "private bind folder left behind"
truncate -s 1M "$VD_TMP/other.raw"
expect_error 'already listening' \
  vdisk_nbd -k "$VD_TMP/n2.sock" --control "$ctl" -f raw "$VD_TMP/other.raw"

# The peer check must hold on its own: open the socket and its folder to
# everybody so that only SO_PEERCRED stands between uid 65534 and us.
chmod 0711 "$VD_TMP"
chmod 0666 "$ctl"
timeout 300 /usr/bin/python3 "$top_srcdir/tests/integration/control-protocol.py" \
  "$ctl" "$uri" "$child" "$mid" "$base" || fail "protocol checks failed"
nbdinfo --size "$uri" >/dev/null || fail "the NBD export is gone"

# ---- vdtool qmp ----
out=$(vdtool qmp "$ctl" query-version)
/usr/bin/python3 -c 'import json,sys; v=json.loads(sys.argv[1]); assert set(v["qemu"]) == {"major","minor","micro"} and v["package"].startswith("vdisk-nbd ")' "$out" ||
  fail "vdtool qmp query-version printed: $out"
out=$(vdtool qmp "$ctl" query-block)
/usr/bin/python3 -c 'import json,sys; b=json.loads(sys.argv[1]); assert b[0]["device"] == "disk" and b[0]["inserted"]["drv"] == "vpc"' "$out" ||
  fail "vdtool qmp query-block printed: $out"
expect_error "^vdtool: The command no-such has not been found$" vdtool qmp "$ctl" no-such
# KEY=VALUE: JSON when it parses (5 is a number), else a string.
expect_error "^vdtool: Parameter 'device' expects a string$" \
  vdtool qmp "$ctl" block-job-pause device=5
expect_error "^vdtool: Block job '5' not found$" \
  vdtool qmp "$ctl" block-job-pause 'device="5"'
expect_error "^vdtool: Block job 'job 0' not found$" \
  vdtool qmp "$ctl" block-job-cancel 'device=job 0' force=true
expect_error "^vdtool: Parameter 'force' expects a boolean$" \
  vdtool qmp "$ctl" block-job-cancel device=x force=yes
# Arguments as a JSON object on stdin.
expect_error "^vdtool: Block job 'x y' not found$" \
  vdtool qmp "$ctl" block-job-pause - <<<'{"device": "x y"}'
expect_error "not a JSON object" vdtool qmp "$ctl" block-job-pause - <<<'[1]'
expect_error "cannot connect" vdtool qmp "$VD_TMP/nothing.sock" query-block
stop_nbd
[ ! -e "$ctl" ] || fail "control socket left behind at exit"
