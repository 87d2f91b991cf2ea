#!/usr/bin/env bash
# A hostile client on raw sockets (bad magic, unknown options and flags,
# huge claimed lengths, truncated messages, unknown commands, FAST_ZERO
# where not allowed, zero-length and 64 MiB requests, vanishing clients,
# clients that stop reading replies, clients that take every descriptor
# the server may open);
# afterwards a fresh client (ours and nbdinfo) must be served correctly.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires nbdinfo

img=$VD_TMP/disk.img
size=$((48 * 1024 * 1024))
truncate -s $size "$img"
for m in rw ro; do
  # Two workers: the stalled clients outnumber them.
  if [ $m = ro ]; then start_nbd --threads 2 -r "$img"
  else start_nbd --threads 2 "$img"; fi
  /usr/bin/python3 "$top_srcdir/tests/nbd/hostile.py" $m "$nbd_sock" $size ||
    fail "hostile client ($m)"
  nbdinfo --size "$nbd_uri" | grep -qx $size || fail "server unusable after the hostile client"
  stop_nbd
done

# Clients that take every descriptor the server may open (prlimit: 32;
# up to 100 clients at once, -e):
# those past the limit wait in the backlog, and the server retries every
# 100 ms (or when a client leaves) instead of spinning on a listening
# socket that stays readable: it made tens of thousands of accept4 calls
# in the 2 s (under strace), now about 50 (the accepted clients and a retry
# every 100 ms).  The control socket's loop (vdisk/control/server.c) does
# the same for a control client that comes meanwhile.  Once the hogs leave,
# an NBD client and a control client are served.
requires prlimit strace
ctl=$VD_TMP/ctl.sock
start_nbd_traced accept4 -e 100 --control "$ctl" -f raw "$img"
prlimit --pid "$(cat "$nbd_pidfile")" --nofile=32:32 || fail "prlimit on vdisk-nbd"
/usr/bin/python3 - "$nbd_sock" "$ctl" <<'PY' || fail "descriptor hogs"
import json, socket, sys, time
hogs = []
for _ in range(40):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    hogs.append(s)
time.sleep(0.5)
c = socket.socket(socket.AF_UNIX)
c.connect(sys.argv[2])           # waits in the backlog
time.sleep(1.5)
for s in hogs:
    s.close()
c.settimeout(10)
f = c.makefile("rwb")
if "QMP" not in json.loads(f.readline()):
    sys.exit("no greeting on the control socket after the hogs left")
f.write(b'{"execute": "qmp_capabilities"}\n')
f.flush()
if "return" not in json.loads(f.readline()):
    sys.exit("control socket: qmp_capabilities failed")
PY
n=$(grep -c 'accept4(' "$VD_TMP/strace" || true)
echo "accept4 calls while out of descriptors: $n"
[ "$n" -le 200 ] || fail "$n accept4 calls in 2 s: the accept loop spins when out of descriptors"
nbdinfo --size "$nbd_uri" | grep -qx $size || fail "no client served after the descriptor hogs left"
grep -q 'new clients wait' "$nbd_errlog" || fail "no log line for the descriptor shortage"
stop_nbd_traced
echo PASS
