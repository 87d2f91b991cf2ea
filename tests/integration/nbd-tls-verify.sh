#!/usr/bin/env bash
# TLS client authentication (X.509): with DIR/ca-cert.pem present every
# client must present a certificate signed by that CA (qemu's verify-peer
# default), --tls-authz FILE further restricts the client distinguished
# names, --tls-verify-peer=no turns the check off.  Clients: nbdinfo
# (libnbd, tls-certificates=DIR with or without client-cert.pem) and
# qemu-img; certificates made by certtool, one CA trusted, one not.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires certtool nbdinfo qemu-img
vdisk_nbd --help | grep -q -- --tls-creds || skip "no TLS support"

make_ca good
make_ca evil
pki=$VD_TMP/pki                     # the server's directory
mkdir -p "$pki"
cp "$VD_TMP/good-ca-cert.pem" "$pki/ca-cert.pem"
make_cert good server localhost "$pki/server"

# Client directories in libnbd's and qemu's layout.
client_dir() {   # client_dir NAME [CA CN]: ca-cert.pem, maybe a client cert
  local d=$VD_TMP/c-$1
  mkdir -p "$d"
  cp "$VD_TMP/good-ca-cert.pem" "$d/ca-cert.pem"
  [ $# -eq 1 ] || make_cert "$2" client "$3" "$d/client"
}
client_dir none
client_dir alice good alice
client_dir bob good bob
client_dir mallory evil alice       # right name, wrong CA
client_dir carol good carol
make_cert good server carol "$VD_TMP/c-carol/server"   # not for TLS clients
dn_of() { certtool -i --infile "$1" | sed -n 's/^[[:space:]]*Subject: //p'; }
alice_dn=$(dn_of "$VD_TMP/c-alice/client-cert.pem")
[ -n "$alice_dn" ] || fail "no subject in alice's certificate"

img=$VD_TMP/disk.img
truncate -s 4M "$img"

serve() {   # serve ARGS...: TCP server on $port
  port=$(free_port)
  nbd_pidfile=$VD_TMP/tls.pid
  nbd_errlog=$VD_TMP/nbd.err
  vdisk_nbd --fork --pid-file "$nbd_pidfile" -t -v -p "$port" "$@" "disk=$img" \
    2>>"$nbd_errlog" || fail "vdisk-nbd $* did not start: $(cat "$nbd_errlog")"
  on_exit stop_nbd
}
uri() { echo "nbds://localhost:$port/disk?tls-certificates=$VD_TMP/c-$1"; }
served() {    # served CLIENT: the client reads the size over TLS
  nbdinfo --size "$(uri "$1")" 2>"$VD_TMP/cl.err" | grep -qx 4194304
}
must_serve() { served "$1" || fail "$2: client $1 was refused: $(cat "$VD_TMP/cl.err")"; }
must_refuse() { ! served "$1" || fail "$2: client $1 was served"; }
py_client() {  # py_client CLIENT [CERT-PREFIX]: OpenSSL client, 0 if served
  local d=$VD_TMP/c-$1 p=${2:-client}
  /usr/bin/python3 "$top_srcdir/tests/nbd/tlsclient.py" "$port" "$d/ca-cert.pem" \
    "$d/$p-cert.pem" "$d/$p-key.pem" 2>"$VD_TMP/py.err" | grep -qx 4194304
}

# ---- ca-cert.pem present: verification is on by default ----
serve --tls-creds "$pki"
must_refuse none "default with ca-cert.pem"
must_refuse mallory "default with ca-cert.pem"
must_serve alice "default with ca-cert.pem"
must_serve bob "default with ca-cert.pem"
py_client alice || fail "OpenSSL client with a good certificate: $(cat "$VD_TMP/py.err")"
! py_client mallory || fail "a certificate from another CA was accepted"
grep -q 'client certificate refused' "$nbd_errlog" ||
  fail "no log line for the untrusted certificate: $(cat "$nbd_errlog")"
! py_client carol server || fail "a server certificate was accepted from a client"
grep -q 'client certificate' "$nbd_errlog" ||
  fail "no log line for the refused certificates: $(cat "$nbd_errlog")"
# qemu's client sends DIR/client-cert.pem as well.
qemu-img info --object "tls-creds-x509,id=tls0,endpoint=client,dir=$VD_TMP/c-alice" \
  --image-opts "driver=nbd,host=localhost,port=$port,export=disk,tls-creds=tls0" |
  grep -q 'virtual size: 4 MiB' || fail "qemu-img with a client certificate"
if qemu-img info --object "tls-creds-x509,id=tls0,endpoint=client,dir=$VD_TMP/c-none" \
    --image-opts "driver=nbd,host=localhost,port=$port,export=disk,tls-creds=tls0" \
    >/dev/null 2>&1; then
  fail "qemu-img without a client certificate was served"
fi
stop_nbd

# ---- an allow-list of distinguished names ----
printf '# clients allowed\n\n%s\n' "$alice_dn" > "$VD_TMP/authz"
serve --tls-creds "$pki" --tls-authz "$VD_TMP/authz"
must_serve alice "--tls-authz"
must_refuse bob "--tls-authz"
must_refuse mallory "--tls-authz"
must_refuse none "--tls-authz"
py_client alice || fail "--tls-authz: OpenSSL client alice: $(cat "$VD_TMP/py.err")"
! py_client bob || fail "--tls-authz: OpenSSL client bob was served"
! py_client mallory || fail "--tls-authz: alice from another CA was served"
grep -q 'not in the allow-list' "$nbd_errlog" ||
  fail "no log line for the refused name: $(cat "$nbd_errlog")"
stop_nbd

# ---- explicitly off, and required ----
serve --tls-creds "$pki" --tls-verify-peer=no
must_serve none "--tls-verify-peer=no"
stop_nbd
serve --tls-creds "$pki" --tls-verify-peer
must_refuse none "--tls-verify-peer"
must_serve alice "--tls-verify-peer"
stop_nbd

# ---- without ca-cert.pem there is nothing to verify against ----
nocapki=$VD_TMP/nocapki
mkdir -p "$nocapki"
cp "$pki"/server-*.pem "$nocapki/"
serve --tls-creds "$nocapki"
must_serve none "no ca-cert.pem"
stop_nbd
grep -q 'ca-cert.pem.*not checked' "$nbd_errlog" ||
  fail "no warning that client certificates are not checked: $(cat "$nbd_errlog")"
: > "$nbd_errlog"

# Start-up errors: one line naming the object.
expect_error 'ca-cert.pem' vdisk_nbd --tls-creds "$nocapki" --tls-verify-peer "$img"
expect_error 'ca-cert.pem' vdisk_nbd --tls-creds "$nocapki" --tls-authz "$VD_TMP/authz" "$img"
expect_error 'nosuch' vdisk_nbd --tls-creds "$pki" --tls-authz "$VD_TMP/nosuch" "$img"
expect_error 'tls-authz' vdisk_nbd --tls-creds "$pki" --tls-authz "$VD_TMP/authz" \
  --tls-verify-peer=no "$img"
expect_error 'tls-authz|tls-creds' vdisk_nbd --tls-authz "$VD_TMP/authz" "$img"
expect_error 'tls-verify-peer' vdisk_nbd --tls-creds "$pki" --tls-verify-peer=maybe "$img"
: > "$VD_TMP/empty"
expect_error 'empty' vdisk_nbd --tls-creds "$pki" --tls-authz "$VD_TMP/empty" "$img"
echo PASS
