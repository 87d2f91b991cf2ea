#!/usr/bin/env bash
# NBD_CMD_FLUSH in vdisk-nbd (nbd-server/conn.c, the flusher) and the
# core's flush coalescing (vdisk/dev.c, dev_flush, as qemu's
# bdrv_co_flush).  NBD (doc/proto.md, NBD_CMD_FLUSH): the reply may come
# only once every write answered before the flush was received is
# durable; flushes need not each reach the disk.  So:
#  - many flushes in flight at once share driver flushes: strace counts
#    far fewer fdatasyncs than flushes (one per flush before), and a flush
#    with nothing written since the last one reaches the disk not at all;
#  - every write answered before a flush is on the file after it
#    (checked against the data), writes and flushes interleaved;
#  - FUA writes in flight together share fdatasyncs the same way;
#  - a failed fdatasync fails every flush waiting for it, and the later
#    ones, and FUA writes (LD_PRELOAD shim, as flush-error.sh): nothing is
#    answered as durable once a flush failed.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires strace
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"

pattern_bytes $((4 * 1024 * 1024)) 7 > "$VD_TMP/disk.raw"
cp "$VD_TMP/disk.raw" "$VD_TMP/ref.raw"

# Rounds of 16 writes in flight, then (once answered) 16 flushes in flight,
# and 16 writes and 16 flushes mixed; then 16 flushes with nothing new
# written.  Prints the number of flushes sent.
start_nbd_traced fdatasync -f raw "$VD_TMP/disk.raw"
/usr/bin/python3 - "$nbd_sock" "$VD_TMP/ref.raw" > "$VD_TMP/flushes" <<'PY' ||
import nbd, random, sys
sock, ref = sys.argv[1], sys.argv[2]
data = bytearray(open(ref, "rb").read())
h = nbd.NBD()
h.connect_unix(sock)
r = random.Random(7)
nblk = len(data) // 4096

def wait_all(cookies):
    for c in cookies:
        while not h.aio_command_completed(c):
            h.poll(-1)

# Writes in flight together go to distinct blocks (their order is not
# defined otherwise).
def writes(n, blocks=None):
    cs = []
    for b in blocks or r.sample(range(nblk), n):
        off = b * 4096
        buf = r.randbytes(4096)
        cs.append(h.aio_pwrite(buf, off))
        data[off:off + 4096] = buf
    return cs

flushes = 0
for rnd in range(8):
    wait_all(writes(16))
    wait_all([h.aio_flush() for _ in range(16)])
    flushes += 16
    cs = []
    for b in r.sample(range(nblk), 16):
        cs += writes(1, [b])
        cs.append(h.aio_flush())
    wait_all(cs)
    flushes += 16
wait_all([h.aio_flush() for _ in range(16)])
flushes += 16
h.shutdown()
open(ref, "wb").write(data)
print(flushes)
PY
  fail "writes and flushes through vdisk-nbd"
stop_nbd_traced
flushes=$(cat "$VD_TMP/flushes")
syncs=$(grep -c fdatasync "$VD_TMP/strace" || true)
echo "$flushes flushes, $syncs fdatasyncs (the exit's included)"
cmp "$VD_TMP/disk.raw" "$VD_TMP/ref.raw" || fail "answered writes missing"
[ "$syncs" -ge 1 ] || fail "no fdatasync at all"
[ "$syncs" -le $((flushes / 4)) ] ||
  fail "$syncs fdatasyncs for $flushes flushes: not shared"

# FUA writes, 16 in flight at a time: written by the workers, made
# durable by the flusher together (one fdatasync for many).
start_nbd_traced fdatasync -f raw "$VD_TMP/disk.raw"
/usr/bin/python3 - "$nbd_sock" "$VD_TMP/ref.raw" <<'PY' ||
import nbd, random, sys
sock, ref = sys.argv[1], sys.argv[2]
data = bytearray(open(ref, "rb").read())
h = nbd.NBD()
h.connect_unix(sock)
r = random.Random(8)
for rnd in range(8):
    cs = []
    for b in r.sample(range(len(data) // 4096), 16):  # distinct: in flight
        off = b * 4096
        buf = r.randbytes(4096)
        cs.append(h.aio_pwrite(buf, off, flags=nbd.CMD_FLAG_FUA))
        data[off:off + 4096] = buf
    for c in cs:
        while not h.aio_command_completed(c):
            h.poll(-1)
h.shutdown()
open(ref, "wb").write(data)
PY
  fail "FUA writes through vdisk-nbd"
stop_nbd_traced
syncs=$(grep -c fdatasync "$VD_TMP/strace" || true)
echo "128 FUA writes, $syncs fdatasyncs (the exit's included)"
cmp "$VD_TMP/disk.raw" "$VD_TMP/ref.raw" || fail "FUA writes missing"
[ "$syncs" -le 48 ] || fail "$syncs fdatasyncs for 128 FUA writes: not shared"

# A failed fdatasync: every flush in flight fails, and so do later ones.
need_shim
LD_PRELOAD=$shim VDTEST_SHIM_FILE=$VD_TMP/disk.raw VDTEST_FAIL_SYNC=1 \
  start_nbd -f raw "disk=$VD_TMP/disk.raw"
/usr/bin/python3 - "$nbd_sock" <<'PY' || fail "a failed flush was answered as done"
import errno, sys
import nbd
h = nbd.NBD()
h.set_export_name("disk")
h.connect_unix(sys.argv[1])
c = h.aio_pwrite(b"\x5a" * 4096, 0)
while not h.aio_command_completed(c):
    h.poll(-1)
cs = [h.aio_flush() for _ in range(16)]
for rnd in range(2):
    ok = eio = 0
    for c in cs:
        try:
            while not h.aio_command_completed(c):
                h.poll(-1)
            ok += 1
        except nbd.Error as e:
            if e.errnum != errno.EIO:
                sys.exit("errno %s (%s), expected EIO" % (e.errnum, e.string))
            eio += 1
    if ok:
        sys.exit("round %d: %d of %d flushes succeeded after a failed "
                 "fdatasync" % (rnd, ok, ok + eio))
    cs = [h.aio_flush() for _ in range(4)]
# FUA writes too: written, but never answered as durable.
cs = [h.aio_pwrite(b"\x77" * 4096, 4096 * i, flags=nbd.CMD_FLAG_FUA)
      for i in range(8)]
for c in cs:
    try:
        while not h.aio_command_completed(c):
            h.poll(-1)
        sys.exit("a FUA write succeeded after a failed fdatasync")
    except nbd.Error as e:
        if e.errnum != errno.EIO:
            sys.exit("FUA: errno %s (%s), expected EIO" % (e.errnum, e.string))
h.shutdown()
PY
stop_nbd
echo PASS
