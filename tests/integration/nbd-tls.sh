#!/usr/bin/env bash
# TLS: a throwaway X.509 CA, server and client certificates (certtool) and a PSK
# file (psktool); nbdinfo (libnbd) and qemu-img connect over STARTTLS;
# clients without TLS are refused with --tls=require and served with
# --tls=on; a wrong key is refused and the server goes on.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires certtool psktool nbdinfo qemu-img
vdisk_nbd --help | grep -q -- --tls-creds || skip "no TLS support"

pki=$VD_TMP/pki
mkdir -p "$pki"
cat > "$VD_TMP/ca.info" <<INFO
cn = vdisk test CA
ca
cert_signing_key
expiration_days = 2
INFO
cat > "$VD_TMP/server.info" <<INFO
organization = vdisk test
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
expiration_days = 2
INFO
certtool -q --generate-privkey --key-type=ecdsa --outfile "$VD_TMP/ca-key.pem" 2>/dev/null
certtool -q --generate-self-signed --load-privkey "$VD_TMP/ca-key.pem" \
  --template "$VD_TMP/ca.info" --outfile "$pki/ca-cert.pem" 2>/dev/null
certtool -q --generate-privkey --key-type=ecdsa --outfile "$pki/server-key.pem" 2>/dev/null
certtool -q --generate-certificate --load-ca-certificate "$pki/ca-cert.pem" \
  --load-ca-privkey "$VD_TMP/ca-key.pem" --load-privkey "$pki/server-key.pem" \
  --template "$VD_TMP/server.info" --outfile "$pki/server-cert.pem" 2>/dev/null
[ -s "$pki/server-cert.pem" ] || fail "certtool made no certificate"
# A client certificate (ca-cert.pem makes the server require one; see
# nbd-tls-verify.sh): libnbd finds it in the same folder as client-*.pem.
cat > "$VD_TMP/client.info" <<INFO
organization = vdisk test
cn = client
tls_www_client
encryption_key
signing_key
expiration_days = 2
INFO
certtool -q --generate-privkey --key-type=ecdsa --outfile "$pki/client-key.pem" 2>/dev/null
certtool -q --generate-certificate --load-ca-certificate "$pki/ca-cert.pem" \
  --load-ca-privkey "$VD_TMP/ca-key.pem" --load-privkey "$pki/client-key.pem" \
  --template "$VD_TMP/client.info" --outfile "$pki/client-cert.pem" 2>/dev/null
# Client side for qemu: the CA and the client certificate.
mkdir -p "$VD_TMP/qemu-x509"
cp "$pki/ca-cert.pem" "$pki"/client-*.pem "$VD_TMP/qemu-x509/"

mkdir -p "$VD_TMP/psk"
psktool -u alice -p "$VD_TMP/psk/keys.psk" >/dev/null
psktool -u alice -p "$VD_TMP/wrong.psk" >/dev/null

img=$VD_TMP/disk.img
pattern_bytes $((4 * 1024 * 1024)) 11 > "$img"

serve() {   # serve ARGS...: TCP server on $port
  port=$(free_port)
  nbd_pidfile=$VD_TMP/tls.pid
  nbd_errlog=$VD_TMP/nbd.err
  vdisk_nbd --fork --pid-file "$nbd_pidfile" -t -p "$port" "$@" "disk=$img" \
    2>>"$nbd_errlog" || fail "vdisk-nbd $* did not start: $(cat "$nbd_errlog")"
  on_exit stop_nbd
}
qemu_x509="tls-creds-x509,id=tls0,endpoint=client,dir=$VD_TMP/qemu-x509"
qemu_psk="tls-creds-psk,id=tls0,endpoint=client,dir=$VD_TMP/psk,username=alice"

# ---- X.509, TLS required ----
serve --tls-creds "$pki"
out=$(nbdinfo --json "nbds://localhost:$port/disk?tls-certificates=$pki")
grep -q '"TLS": true' <<<"$out" || fail "nbdinfo did not use TLS: $out"
grep -q '"export-size": 4194304' <<<"$out" || fail "size over TLS"
if nbdinfo "nbd://localhost:$port/disk" 2>"$VD_TMP/err"; then
  fail "a client without TLS was served by --tls=require"
fi
grep -q 'server replied with error' "$VD_TMP/err" ||
  fail "plain client not refused by an option error: $(cat "$VD_TMP/err")"
qemu-img info --object "$qemu_x509" --image-opts \
  "driver=nbd,host=localhost,port=$port,export=disk,tls-creds=tls0" |
  grep -q 'virtual size: 4 MiB' || fail "qemu-img info over X.509 TLS"
qemu-img convert --object "$qemu_x509" --image-opts \
  "driver=nbd,host=localhost,port=$port,export=disk,tls-creds=tls0" \
  -O raw "$VD_TMP/copy.img" || fail "qemu-img convert over TLS"
cmp "$img" "$VD_TMP/copy.img" || fail "data read over TLS differs"
# Writes over TLS.
qemu-io --object "$qemu_x509" --image-opts \
  "driver=nbd,host=localhost,port=$port,export=disk,tls-creds=tls0" \
  -c 'write -P 0x66 1M 1M' -c 'read -P 0x66 1M 1M' >"$VD_TMP/qio" 2>&1 ||
  fail "qemu-io over TLS: $(cat "$VD_TMP/qio")"
grep -q fail "$VD_TMP/qio" && fail "qemu-io over TLS: $(cat "$VD_TMP/qio")"
stop_nbd

# ---- X.509, TLS optional ----
serve --tls-creds "$pki" --tls=on
nbdinfo --size "nbd://localhost:$port/disk" | grep -qx 4194304 ||
  fail "--tls=on refused a plain client"
nbdinfo --json "nbds://localhost:$port/disk?tls-certificates=$pki" |
  grep -q '"TLS": true' || fail "--tls=on: no TLS for a TLS client"
stop_nbd

# ---- PSK ----
serve --tls-psk "$VD_TMP/psk/keys.psk"
out=$(nbdinfo --json "nbds://alice@localhost:$port/disk?tls-psk-file=$VD_TMP/psk/keys.psk")
grep -q '"TLS": true' <<<"$out" || fail "PSK: no TLS"
qemu-img info --object "$qemu_psk" --image-opts \
  "driver=nbd,host=localhost,port=$port,export=disk,tls-creds=tls0" |
  grep -q 'virtual size: 4 MiB' || fail "qemu-img info over PSK TLS"
if nbdinfo "nbds://alice@localhost:$port/disk?tls-psk-file=$VD_TMP/wrong.psk" 2>/dev/null; then
  fail "a wrong PSK was accepted"
fi
nbdinfo --size "nbds://alice@localhost:$port/disk?tls-psk-file=$VD_TMP/psk/keys.psk" |
  grep -qx 4194304 || fail "server unusable after a failed handshake"
stop_nbd

# Bad credentials are refused at start with one line.
expect_error 'server-cert.pem' vdisk_nbd --tls-creds "$VD_TMP/nosuch" "$img"
expect_error 'nosuch.psk' vdisk_nbd --tls-psk "$VD_TMP/nosuch.psk" "$img"
echo PASS
