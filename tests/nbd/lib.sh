# Helpers for the vdisk-nbd integration tests; source after functions.sh.

# start_nbd ARGS...: run vdisk-nbd in the background on a private Unix
# socket (persistent), wait until it serves, stop it at exit.  Sets
# nbd_sock, nbd_pidfile and nbd_uri (the default export).
start_nbd() {
  nbd_sock=$VD_TMP/nbd.sock
  nbd_pidfile=$VD_TMP/nbd.pid
  nbd_errlog=$VD_TMP/nbd.err
  rm -f "$nbd_pidfile"
  vdisk_nbd --fork --pid-file "$nbd_pidfile" -t -U "$nbd_sock" "$@" \
      2>>"$nbd_errlog" ||
    fail "vdisk-nbd $* did not start: $(cat "$nbd_errlog")"
  [ -s "$nbd_pidfile" ] || fail "vdisk-nbd wrote no pid file"
  on_exit stop_nbd
  nbd_uri="nbd+unix:///?socket=$nbd_sock"
}

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
