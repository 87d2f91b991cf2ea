#!/usr/bin/env bash
# qcow2: a refcount block taken while writing (vdisk/qcow2-write.c,
# q_block) is not synced on its own, under the writer's lock, in the
# middle of the guest's writes: the refcount table names it at the next
# sync that comes before an L2 or L1 entry is written (q_sync), usually
# the next flush's.  Before, every new block cost an fdatasync of all the
# image's dirty data with every write waiting (about 1 s in a fresh 2 GiB
# image written at QD32, bench/README.md "Session 17").  Rules checked
# (docs/qcow2.md, "Crash order"):
#  - no fdatasync while the guest writes without flushing, once the L2
#    tables exist, though the writes take new refcount blocks (strace);
#  - the order in the strace: a refcount table entry is written after a
#    sync that follows the writes of the refcount blocks, and an L2 or L1
#    entry after a sync that follows the refcount table writes;
#  - the bytes equal qemu-io's on a raw copy; qemu-img check is clean;
#  - kill -9 before the flush: qemu-img check finds at worst leaks and
#    the flushed bytes are there.
# 4 KiB clusters and 64-bit refcounts: a refcount block covers 2 MiB of
# the file, so 1024 writes to a 6 MiB image take three new blocks.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io strace
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"

img=$VD_TMP/r.qcow2 ref=$VD_TMP/r.raw

# fill SOCKET|- TRACE STOP: a write of 4 KiB to each of the 1024 clusters
# of the first two L2 tables (the first to each table, then a flush; 698
# more, 16 at a time, then a flush that writes the table entry of a new
# block; the other 324, which take two more blocks) and, with STOP
# "flush", one to the third table (a new table: the table entries still
# waiting are written before its L1 entry, with no flush before), then a
# flush; through the NBD server at SOCKET, or as a qemu-io script on
# stdout.  Through the server, the fdatasyncs TRACE holds must not grow
# during the 698 and the 324 writes; with STOP "hold" it waits after them,
# connected, to be killed.
fill() {
  /usr/bin/python3 - "$@" <<'PY'
import random, sys, time
order = [0, 512] + random.Random(3).sample(
    [c for c in range(1024) if c not in (0, 512)], 1022) + [1024]
if sys.argv[1] == "-":
    for c in order:
        print("write -P %d %d 4096" % (1 + c % 250, c * 4096))
    sys.exit(0)
import nbd
def syncs():
    return sum(l.count("fdatasync(") for l in open(sys.argv[2]))
h = nbd.NBD()
h.connect_unix(sys.argv[1])
for c in order[:2]:
    h.pwrite(bytes([1 + c % 250]) * 4096, c * 4096)
h.flush()
for part in (order[2:700], order[700:-1]):
    before = syncs()
    for c in part:
        while h.aio_in_flight() >= 16:
            h.poll(-1)
        h.aio_pwrite(bytes([1 + c % 250]) * 4096, c * 4096)
    while h.aio_in_flight():
        h.poll(-1)
    time.sleep(0.2)
    after = syncs()
    print("%d allocating writes without a flush: %d fdatasyncs"
          % (len(part), after - before))
    if after != before:
        sys.exit("fdatasync while the guest wrote without flushing")
    if part[-1] == order[699]:
        h.flush()
if sys.argv[3] == "hold":
    print("holding", flush=True)
    time.sleep(600)
h.pwrite(bytes([1 + order[-1] % 250]) * 4096, order[-1] * 4096)
h.flush()
h.shutdown()
PY
}

# order_check IMAGE TRACE: the crash order of the refcount table (above).
# A whole cluster written into an L2 table is a new table's zeros or the
# file's extension: no L1 entry names it yet.  Calls of several threads
# interleave: a call's start is its entry line
# (whole, or "<unfinished ...>"), its end its result line (whole, or
# "<... resumed>").  The places of the tables are read from the image.
order_check() {
  /usr/bin/python3 - "$@" <<'PY' || fail "a table was written before what it names was synced"
import re, struct, sys
img = open(sys.argv[1], "rb").read()
cb, = struct.unpack_from(">I", img, 20)
l1n, l1o = struct.unpack_from(">IQ", img, 36)
rto, rtc = struct.unpack_from(">QI", img, 48)
cs, mask = 1 << cb, 0x00fffffffffffe00
l2 = {e & mask for e in struct.unpack_from(">%dQ" % l1n, img, l1o) if e & mask}
rb = {e & mask for e in struct.unpack_from(">%dQ" % (rtc * cs // 8), img, rto)
      if e & mask}
if len(rb) < 4:
    sys.exit("only %d refcount blocks: the test takes no new one" % len(rb))
calls, open_ = [], {}             # [kind, start, end, ok, detail]
for i, line in enumerate(open(sys.argv[2])):
    pid, _, rest = line.strip().partition(" ")
    rest = rest.lstrip()
    m = re.match(r"<\.\.\. (\w+) resumed>.*= (-?\d+)", rest)
    if m:
        c = open_.pop(pid)
        c[2], c[3] = i, int(m.group(2)) >= 0
        continue
    m = re.match(r"(pwrite64|fdatasync)\((.*)", rest)
    if not m:
        continue
    kind = m.group(1)
    if kind == "pwrite64":
        a = re.search(r", (\d+), (\d+)\)?\s*(<unfinished|=)", rest)
        ln, off = int(a.group(1)), int(a.group(2))
        cl = off & ~(cs - 1)
        kind = ("new-rb" if ln == cs else "rb") if cl in rb else \
            "rt" if rto <= off < rto + rtc * cs else \
            "ref" if (cl in l2 and ln < cs) or l1o <= off < l1o + l1n * 8 else \
            "data"
    c = [kind, i, i, True, line.strip()]
    calls.append(c)
    if "<unfinished" in rest:
        open_[pid] = c
    else:
        c[3] = not re.search(r"= -\d+", rest)
def first(pred, after):
    return next((c for c in calls if c[1] > after and pred(c)), None)
# 1. A table entry is written after a sync that began after the last
#    write into a refcount block that had ended before it.
rts = [w for w in calls if w[0] == "rt"]
for w in rts:
    deps = [d[2] for d in calls if d[0] in ("rb", "new-rb") and d[2] < w[1]]
    if deps and not first(lambda s: s[0] == "fdatasync" and s[3] and
                          s[2] < w[1], max(deps)):
        sys.exit("refcount table written before the blocks it names were "
                 "synced: %s" % w[4])
# 2. From a new block's write until the sync that follows the write of
#    the table entry naming it, nothing names a cluster (L1, L2).
news = [b for b in calls if b[0] == "new-rb"]
for b in news:
    rt = first(lambda c: c[0] == "rt", b[2])
    s = rt and first(lambda c: c[0] == "fdatasync" and c[3], rt[2])
    end = s[2] if s else float("inf")
    w = next((c for c in calls if c[0] == "ref" and b[2] < c[1] < end), None)
    if w:
        sys.exit("an L1/L2 entry was written before the table entry of a new "
                 "refcount block was synced: %s" % w[4])
if not news or not rts:
    sys.exit("no new refcount block or no table write seen in the trace")
print("%d new refcount blocks, %d refcount table writes: each after its "
      "sync, no L1/L2 entry written before it was synced" % (len(news),
                                                            len(rts)))
PY
}

qemu-img create -q -f qcow2 -o cluster_size=4k,refcount_bits=64 "$img" 6M
qemu-img create -q -f raw "$ref" 6M
start_nbd_traced fdatasync,pwrite64 -f qcow2 "$img"
fill "$nbd_sock" "$VD_TMP/strace" flush || fail "writes through vdisk-nbd"
stop_nbd_traced
order_check "$img" "$VD_TMP/strace"
fill - | qemu-io -f raw "$ref" >/dev/null
qemu-img compare -q "$ref" "$img" || fail "writes differ from qemu's"
qemu-img check -q "$img" || fail "clean stop: $(qemu-img check "$img" 2>&1)"

# kill -9 with the new blocks not yet named by the table.
rm -f "$img"
qemu-img create -q -f qcow2 -o cluster_size=4k,refcount_bits=64 "$img" 6M
start_nbd_traced fdatasync -f qcow2 "$img"
fill "$nbd_sock" "$VD_TMP/strace" hold > "$VD_TMP/hold" &
fpid=$!
on_exit "kill $fpid 2>/dev/null"
for _ in $(seq 600); do
  grep -q holding "$VD_TMP/hold" 2>/dev/null && break
  kill -0 $fpid 2>/dev/null || fail "writes before kill -9: $(cat "$VD_TMP/hold")"
  sleep 0.1
done
grep -q holding "$VD_TMP/hold" || fail "writes before kill -9 did not end"
cat "$VD_TMP/hold"
kill -9 "$(cat "$nbd_pidfile")"
for _ in $(seq 100); do kill -0 "$(cat "$nbd_pidfile")" 2>/dev/null || break; sleep 0.05; done
rm -f "$nbd_pidfile"
kill $fpid 2>/dev/null; wait $fpid 2>/dev/null || true
wait "$nbd_strace_pid" 2>/dev/null || true
rc=0; qemu-img check "$img" > "$VD_TMP/chk" 2>&1 || rc=$?
[ $rc = 0 ] || [ $rc = 3 ] || fail "after kill -9: qemu-img check exit $rc: $(cat "$VD_TMP/chk")"
echo "after kill -9: qemu-img check exit $rc"
for c in 0 512; do
  qemu-io -f qcow2 -r -c "read -P $((1 + c % 250)) $((c * 4096)) 4096" "$img" |
    grep -q "^read 4096" || fail "flushed write to cluster $c lost by kill -9"
done
echo PASS
