#!/usr/bin/env bash
# nbds:// and nbds+unix:// in the nbd driver (vdisk/nbd-client.c, libnbd):
# TLS with X.509 certificates (server checked against the CA in the
# tls-certificates folder, a client certificate when the server asks for
# one) and with a PSK (tls-psk-file, tls-username).  Peers: qemu-nbd
# (tls-creds-x509, verify-peer) and nbdkit (--tls=require with
# certificates or --tls-psk), each serving a raw image; judged by vdtool
# convert + cmp, vdtool info and qemu-img compare; vdisk-nbd re-serving
# a TLS export.  A wrong CA, a wrong PSK, a TLS URI against a plain
# server and a plain URI against a TLS-only server each give one error
# line.  A TLS URI in a VHD's parent locator is never followed.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-nbd nbdkit certtool psktool
/usr/bin/python3 -c "import nbd" 2>/dev/null || skip "python3-libnbd is not installed"
T=$VD_TMP
vdt() { timeout 60 "$top_builddir/tools/vdtool" "$@"; }

# Folders: srv (CA, server cert) for the servers; cli (CA, client cert)
# for vdtool; evil (another CA and a client cert it signed).
make_ca good
make_ca evil
mkdir "$T/srv" "$T/cli" "$T/evil"
make_cert good server localhost "$T/srv/server"
make_cert good client alice "$T/cli/client"
make_cert evil client mallory "$T/evil/client"
cp "$T/good-ca-cert.pem" "$T/srv/ca-cert.pem"
cp "$T/good-ca-cert.pem" "$T/cli/ca-cert.pem"
cp "$T/evil-ca-cert.pem" "$T/evil/ca-cert.pem"
psktool -u alice -p "$T/keys.psk" >/dev/null
psktool -u alice -p "$T/wrong.psk" >/dev/null

pattern_bytes $((4 << 20)) 14 > "$T/disk.raw"
cp "$T/disk.raw" "$T/disk.ref"

# good URI: the export is the reference image, by three readers
good() {
  local uri=$1 what=$2
  rm -f "$T/copy.raw"
  vdt convert -O raw "$uri" "$T/copy.raw" || fail "$what: convert failed"
  cmp "$T/disk.ref" "$T/copy.raw" || fail "$what: convert differs"
  vdt info "$uri" > "$T/info.txt" || fail "$what: info failed"
  grep -q '(4194304 bytes)' "$T/info.txt" || fail "$what: info: $(cat "$T/info.txt")"
  grep -q 'tls: yes' "$T/info.txt" || fail "$what: no TLS: $(cat "$T/info.txt")"
  vdt compare "$T/disk.ref" "$uri" || fail "$what: vdtool compare"
  rm -f "$T/copy.qcow2"
  vdt convert -O qcow2 "$uri" "$T/copy.qcow2" || fail "$what: convert to qcow2"
  qemu-img compare -f raw -F qcow2 "$T/disk.ref" "$T/copy.qcow2" ||
    fail "$what: qemu-img compare"
}

# ---- qemu-nbd, X.509 over TCP, client certificate required ----
port=$(free_port)
qemu-nbd -f raw -r -p "$port" -b 127.0.0.1 -x disk -t --pid-file="$T/qn.pid" \
  --object "tls-creds-x509,id=tls0,endpoint=server,dir=$T/srv,verify-peer=on" \
  --tls-creds tls0 "$T/disk.raw" 2>"$T/qn.err" &
wait_for_socket "$port"
on_exit "kill \$(cat $T/qn.pid)"
Q="nbds://localhost:$port/disk?tls-certificates=$T/cli"
good "$Q" "qemu-nbd x509"
# the server checks the client's certificate: the wrong CA's is refused,
# and vdtool, checking the server against the wrong CA, refuses it too
expect_error "nbds://localhost:$port/disk.*cannot connect" \
  vdt info "nbds://localhost:$port/disk?tls-certificates=$T/evil"
# the right CA but no client certificate: qemu-nbd refuses us
mkdir "$T/nocert"
cp "$T/good-ca-cert.pem" "$T/nocert/ca-cert.pem"
expect_error "nbds://localhost:$port/disk.*cannot connect" \
  vdt info "nbds://localhost:$port/disk?tls-certificates=$T/nocert"
# a plain URI against a TLS-only server
expect_error "nbd://localhost:$port/disk.*cannot connect" \
  vdt info "nbd://localhost:$port/disk"
kill "$(cat "$T/qn.pid")"

# nbdkit_start NAME ARGS...: nbdkit (on $T/NAME.sock unless ARGS say -p),
# log in $T/NAME.log.
nbdkit_start() {
  local n=$1; shift
  nbdkit -P "$T/$n.pid" -f --filter=log "$@" logfile="$T/$n.log" \
    2>>"$T/$n.err" &
  on_exit "kill \$(cat $T/$n.pid)"
}

# ---- nbdkit, X.509 over TCP (no client certificate asked) ----
port=$(free_port)
nbdkit_start kx -p "$port" -i 127.0.0.1 --tls=require \
  --tls-certificates="$T/srv" file "$T/disk.raw"
wait_for_socket "$port"
good "nbds://localhost:$port/?tls-certificates=$T/cli" "nbdkit x509"
# the server is checked against our CA, although it asks nothing of us
expect_error "nbds://localhost:$port/.*cannot connect.*certificate" \
  vdt info "nbds://localhost:$port/?tls-certificates=$T/evil"
expect_error "cannot connect" vdt info "nbd://localhost:$port/"

# ---- X.509 over a Unix socket is refused: libnbd would not check the
# server's certificate there (no host name), so any certificate passed ----
nbdkit_start ku -U "$T/ku.sock" --tls=require --tls-certificates="$T/srv" \
  file "$T/disk.raw"
wait_for_socket "$T/ku.sock"
expect_error "needs tls-psk-file" \
  vdt info "nbds+unix:///?socket=$T/ku.sock&tls-certificates=$T/evil"
expect_error "needs tls-psk-file" \
  vdt info "nbds+unix:///?socket=$T/ku.sock&tls-certificates=$T/cli"

# ---- nbdkit, PSK over a Unix socket (libnbd takes the user name from
# the URI's user part) ----
nbdkit_start kp -U "$T/kp.sock" --tls=require --tls-psk="$T/keys.psk" \
  file "$T/disk.raw"
wait_for_socket "$T/kp.sock"
P="nbds+unix://alice@/?socket=$T/kp.sock&tls-psk-file=$T/keys.psk"
good "$P" "nbdkit psk"
expect_error "cannot connect" vdt info \
  "nbds+unix://alice@/?socket=$T/kp.sock&tls-psk-file=$T/wrong.psk"
expect_error "cannot connect" vdt info "nbd+unix:///?socket=$T/kp.sock"

# ---- a TLS URI against a plain server ----
nbdkit_start plain -U "$T/plain.sock" file "$T/disk.raw"
wait_for_socket "$T/plain.sock"
expect_error "cannot connect" vdt info \
  "nbds+unix://alice@/?socket=$T/plain.sock&tls-psk-file=$T/keys.psk"

# ---- vdisk-nbd re-serving a TLS export (plain, on its own socket) ----
start_nbd -r "$P"
qemu-img compare -f raw -F raw "$T/disk.ref" "$nbd_uri" ||
  fail "vdisk-nbd re-serving nbds+unix:// differs"
stop_nbd

# ---- a TLS URI in a VHD's parent locator is never followed ----
mkdir "$T/vm"
/usr/bin/python3 "$top_srcdir/tests/integration/trust-craft.py" \
  file "$T/vm/evil.vhd" $((1 << 20)) "$P" 0
before=$(grep -c 'Connect' "$T/kp.log")
rc=0; (cd "$T/vm" && vdt convert evil.vhd "$T/evil.raw") 2>"$T/evil.err" || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "child with a TLS URI locator: rc $rc"
[ "$(grep -c 'Connect' "$T/kp.log")" -eq "$before" ] ||
  fail "a TLS URI read out of an image was connected to"
