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

base=$VD_TMP/base.vhd
child=$VD_TMP/child.vhd
ctl=$VD_TMP/ctl.sock
qemu-img create -q -f vpc -o subformat=dynamic "$base" 8M
vdtool create -q -f vpc -b "$base" -F vpc "$child"    # qemu-img cannot

# ---- the socket file ----
echo "not a socket" >"$ctl"
expect_error "$ctl: exists and is not a socket" \
  vdisk_nbd -U "$VD_TMP/n.sock" --control "$ctl" "disk=$child"
[ "$(cat "$ctl")" = "not a socket" ] || fail "the file at --control was touched"
rm -f "$ctl"
ln -s "$VD_TMP/elsewhere" "$ctl"
expect_error "$ctl: exists and is not a socket" \
  vdisk_nbd -U "$VD_TMP/n.sock" --control "$ctl" "disk=$child"
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
  vdisk_nbd -U "$VD_TMP/n2.sock" --control "$ctl" -f raw "$VD_TMP/other.raw"

# The peer check must hold on its own: open the socket and its folder to
# everybody so that only SO_PEERCRED stands between uid 65534 and us.
chmod 0711 "$VD_TMP"
chmod 0666 "$ctl"
timeout 300 /usr/bin/python3 "$top_srcdir/tests/integration/control-protocol.py" \
  "$ctl" "$uri" "$child" "$base" || fail "protocol checks failed"
nbdinfo --size "$uri" >/dev/null || fail "the NBD export is gone"
stop_nbd
[ ! -e "$ctl" ] || fail "control socket left behind at exit"
