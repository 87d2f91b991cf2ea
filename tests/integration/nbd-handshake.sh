#!/usr/bin/env bash
# The negotiation is bounded as a whole (--handshake-limit, default 10 s)
# and in options (32): with -e 2, two clients dripping a byte a second, or
# one idle after STARTTLS and one dripping its TLS handshake, do not keep a
# third client out for longer than the limit plus a generous margin; a
# 33rd option drops the client.  Liveness, not speed: the margin only
# turns a hang into a failure.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires certtool

img=$VD_TMP/disk.img
truncate -s 1M "$img"
margin=25

serve() {   # serve ARGS...: TCP server on $port
  port=$(free_port)
  nbd_pidfile=$VD_TMP/hs.pid
  nbd_errlog=$VD_TMP/nbd.err
  vdisk_nbd --fork --pid-file "$nbd_pidfile" -t -v -p "$port" "$@" "$img" \
    2>>"$nbd_errlog" || fail "vdisk-nbd $* did not start: $(cat "$nbd_errlog")"
  on_exit stop_nbd
}
hs() { /usr/bin/python3 "$top_srcdir/tests/nbd/handshake.py" "$@"; }

# Default limit (10 s), plain drippers.
serve -e 2
hs hold "$port" 10 "$margin" || fail "plain drippers with the default limit"
hs options "$port" || fail "option limit"
stop_nbd

# A shorter limit, and TLS: idle after STARTTLS, dripping the handshake.
make_ca hs
pki=$VD_TMP/pki
mkdir -p "$pki"
make_cert hs server localhost "$pki/server"
serve -e 2 --handshake-limit 3 --tls-creds "$pki" --tls=on
hs hold "$port" 3 "$margin" || fail "plain drippers, --handshake-limit 3"
hs hold-tls "$port" 3 "$margin" || fail "TLS holders, --handshake-limit 3"
stop_nbd
grep -q 'handshake not finished within 3 s' "$nbd_errlog" ||
  fail "no log line for the dropped clients: $(cat "$nbd_errlog")"

# 0 disables the limit: a client may think as long as it likes.
serve --handshake-limit 0
/usr/bin/python3 - "$port" <<'PY' || fail "--handshake-limit 0 dropped a slow client"
import socket, struct, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60)
assert s.recv(18)[:8] == b"NBDMAGIC"
time.sleep(12)                                 # beyond the default limit
s.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 7, 6) +
          struct.pack(">IH", 0, 0))
r = s.recv(20)
assert len(r) == 20, "no reply after a long pause"
PY
stop_nbd
expect_error 'handshake-limit' vdisk_nbd --handshake-limit -1 "$img"
expect_error 'handshake-limit' vdisk_nbd --handshake-limit 10s "$img"
echo PASS
