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

# serve ARGS...: the server under strace, counting receives; polls: the
# non-blocking ones of the input buffer (the handshake has its own).
serve() { start_nbd_traced recvfrom -f raw "$@" "$VD_TMP/disk.raw"; }
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
stop_nbd_traced
n=$(polls)
echo "--poll-max-ns=1000000: $n non-blocking receives"
[ "$n" -gt 0 ] || fail "a queue-depth-1 client was never polled for"

serve --poll-max-ns=0
qd1 2 || fail "requests without polling"
stop_nbd_traced
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
