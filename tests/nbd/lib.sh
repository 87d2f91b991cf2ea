# Helpers for the vdisk-nbd integration tests; source after functions.sh.

# start_nbd ARGS...: run vdisk-nbd in the background on a private Unix
# socket (persistent), wait until it serves, stop it at exit.  Sets
# nbd_sock, nbd_pidfile and nbd_uri (the default export).
start_nbd() {
  nbd_sock=$VD_TMP/nbd.sock
  nbd_pidfile=$VD_TMP/nbd.pid
  nbd_errlog=$VD_TMP/nbd.err
  rm -f "$nbd_pidfile"
  vdisk_nbd --fork --pid-file "$nbd_pidfile" -t -k "$nbd_sock" "$@" \
      2>>"$nbd_errlog" ||
    fail "vdisk-nbd $* did not start: $(cat "$nbd_errlog")"
  [ -s "$nbd_pidfile" ] || fail "vdisk-nbd wrote no pid file"
  on_exit stop_nbd
  nbd_uri="nbd+unix:///?socket=$nbd_sock"
}

# start_nbd_traced SYSCALLS ARGS...: vdisk-nbd -t ARGS under strace -f,
# which writes the calls of SYSCALLS (strace's -e trace= list) to
# $VD_TMP/strace (buffers shown up to $STRACE_STRLEN bytes, default
# strace's 32); stop_nbd_traced stops both.  In the foreground: strace
# -f would wait for a --fork daemon to end.  LeakSanitizer cannot run
# under ptrace: off for it.
start_nbd_traced() {
  local trace=$1; shift
  nbd_sock=$VD_TMP/nbd.sock nbd_pidfile=$VD_TMP/nbd.pid
  nbd_errlog=$VD_TMP/nbd.err nbd_uri="nbd+unix:///?socket=$nbd_sock"
  rm -f "$nbd_pidfile" "$nbd_sock" "$VD_TMP/strace"
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
    strace -f -qq -s "${STRACE_STRLEN:-32}" -e trace="$trace" -o "$VD_TMP/strace" \
    "$top_builddir/libtool" --mode=execute \
    "$top_builddir/nbd-server/vdisk-nbd" --pid-file "$nbd_pidfile" \
    -t -k "$nbd_sock" "$@" 2>>"$nbd_errlog" &
  nbd_strace_pid=$!
  on_exit "kill $nbd_strace_pid 2>/dev/null"
  wait_for_socket "$nbd_sock" || fail "vdisk-nbd $* (under strace) did not start"
  for _ in $(seq 100); do [ -s "$nbd_pidfile" ] && break; sleep 0.1; done
  on_exit stop_nbd
}
stop_nbd_traced() { stop_nbd; wait "$nbd_strace_pid" 2>/dev/null || true; }

# nbd_uri_for NAME: URI of export NAME on the running server.
nbd_uri_for() { echo "nbd+unix:///$1?socket=$nbd_sock"; }

# stop_nbd: SIGTERM, then wait (at most 20 s) for the process to go.
stop_nbd() {
  [ -s "${nbd_pidfile:-}" ] || return 0
  local pid i
  pid=$(cat "$nbd_pidfile")
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
      check_nbd_log
      return 0
    fi
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  fail "vdisk-nbd (pid $pid) ignored SIGTERM"
}

# The background server's stderr must hold no sanitizer or valgrind report.
check_nbd_log() {
  [ -s "${nbd_errlog:-}" ] || return 0
  cat "$nbd_errlog" >&2
  if grep -Eq 'Sanitizer|runtime error|^==[0-9]+== [A-Z]' "$nbd_errlog"; then
    fail "vdisk-nbd reported memory errors"
  fi
}

# make_ca NAME: a throwaway CA in $VD_TMP/NAME-ca-{key,cert}.pem (certtool).
make_ca() {
  cat > "$VD_TMP/$1-ca.info" <<INFO
cn = vdisk test CA $1
ca
cert_signing_key
expiration_days = 2
INFO
  certtool -q --generate-privkey --key-type=ecdsa \
    --outfile "$VD_TMP/$1-ca-key.pem" 2>/dev/null
  certtool -q --generate-self-signed --load-privkey "$VD_TMP/$1-ca-key.pem" \
    --template "$VD_TMP/$1-ca.info" --outfile "$VD_TMP/$1-ca-cert.pem" 2>/dev/null
  [ -s "$VD_TMP/$1-ca-cert.pem" ] || fail "certtool made no CA certificate"
}

# make_cert CA server|client CN OUT-PREFIX: a key and a certificate signed
# by CA, in OUT-PREFIX-key.pem and OUT-PREFIX-cert.pem.  Server certificates
# name localhost and 127.0.0.1; client ones have the TLS client purpose.
make_cert() {
  local ca=$1 kind=$2 cn=$3 out=$4 info=$VD_TMP/cert.$$.info
  {
    echo "organization = vdisk test"
    echo "cn = $cn"
    if [ "$kind" = server ]; then
      echo "dns_name = localhost"
      echo "ip_address = 127.0.0.1"
      echo "tls_www_server"
    else
      echo "tls_www_client"
    fi
    echo "encryption_key"
    echo "signing_key"
    echo "expiration_days = 2"
  } > "$info"
  certtool -q --generate-privkey --key-type=ecdsa --outfile "$out-key.pem" 2>/dev/null
  certtool -q --generate-certificate --load-ca-certificate "$VD_TMP/$ca-ca-cert.pem" \
    --load-ca-privkey "$VD_TMP/$ca-ca-key.pem" --load-privkey "$out-key.pem" \
    --template "$info" --outfile "$out-cert.pem" 2>/dev/null
  [ -s "$out-cert.pem" ] || fail "certtool made no certificate for $cn"
}
