#!/usr/bin/env bash
# vdisk-nbd --poll-max-ns (nbd-server/conn.c, rd_fill): a connection with
# nothing in flight whose client sends its next request quickly (queue
# depth 1) polls the socket (recv with MSG_DONTWAIT) before sleeping;
# --poll-max-ns=0 never polls.  The requests are answered right either
# way (libnbd reads and writes compared with the data), and the option's
# bad values are refused with one line.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires strace

pattern_bytes $((4 * 1024 * 1024)) 5 > "$VD_TMP/disk.raw"
cp "$VD_TMP/disk.raw" "$VD_TMP/ref.raw"

# serve ARGS...: the server under strace, counting non-blocking receives
# (those of the input buffer: the handshake has its own; in the
# foreground: strace -f would wait for a --fork daemon to end;
# LeakSanitizer cannot run under ptrace: off for it).
serve() {
  nbd_sock=$VD_TMP/nbd.sock nbd_pidfile=$VD_TMP/nbd.pid
  nbd_errlog=$VD_TMP/nbd.err nbd_uri="nbd+unix:///?socket=$nbd_sock"
  rm -f "$nbd_pidfile" "$nbd_sock" "$VD_TMP/strace"
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
    strace -f -qq -e trace=recvfrom -o "$VD_TMP/strace" \
    "$top_builddir/libtool" --mode=execute \
    "$top_builddir/nbd-server/vdisk-nbd" --pid-file "$nbd_pidfile" \
    -t -k "$nbd_sock" -f raw "$@" "$VD_TMP/disk.raw" 2>>"$nbd_errlog" &
  strace_pid=$!
  on_exit "kill $strace_pid 2>/dev/null"
  wait_for_socket "$nbd_sock" || fail "vdisk-nbd $* did not start"
  for _ in $(seq 100); do [ -s "$nbd_pidfile" ] && break; sleep 0.1; done
  on_exit stop_nbd
}
stop() { stop_nbd; wait "$strace_pid" 2>/dev/null || true; }
polls() { grep -c ', 65536, MSG_DONTWAIT' "$VD_TMP/strace" || true; }

# 300 requests one at a time: reads checked against the data, writes
# checked by the next server's reads.
qd1() {
  /usr/bin/python3 - "$nbd_sock" "$VD_TMP/ref.raw" "$1" <<'PY'
import nbd, sys, random
sock, ref, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = bytearray(open(ref, "rb").read())
h = nbd.NBD()
h.connect_unix(sock)
r = random.Random(seed)
for i in range(300):
    off = r.randrange(0, len(data) // 4096) * 4096
    if i % 3 == 2:
        buf = r.randbytes(4096)
        h.pwrite(buf, off)
        data[off:off + 4096] = buf
    elif h.pread(4096, off) != data[off:off + 4096]:
        sys.exit("read at %d differs" % off)
h.shutdown()
open(ref, "wb").write(data)
PY
}

serve --poll-max-ns=1000000
qd1 1 || fail "requests while polling"
stop
n=$(polls)
echo "--poll-max-ns=1000000: $n non-blocking receives"
[ "$n" -gt 0 ] || fail "a queue-depth-1 client was never polled for"

serve --poll-max-ns=0
qd1 2 || fail "requests without polling"
stop
n=$(polls)
echo "--poll-max-ns=0: $n non-blocking receives"
[ "$n" = 0 ] || fail "--poll-max-ns=0 polled $n times"
cmp "$VD_TMP/disk.raw" "$VD_TMP/ref.raw" || fail "the writes did not land"

for bad in -1 x 1000001; do
  out=$(vdisk_nbd --poll-max-ns=$bad -k "$VD_TMP/x.sock" "$VD_TMP/disk.raw" 2>&1) &&
    fail "--poll-max-ns=$bad accepted"
  [ "$(wc -l <<<"$out")" = 1 ] || fail "--poll-max-ns=$bad: not one line: $out"
done
echo PASS
