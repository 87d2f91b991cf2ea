#!/usr/bin/env bash
# qcow2: new metadata tables are not synced on their own, under the
# writer's lock, in the middle of the guest's writes (vdisk/qcow2-write.c):
#  - a refcount block taken while writing (q_block): the refcount table
#    names it at the next sync that comes before an L1 or L2 entry is
#    written (q_sync), usually the next flush's;
#  - a new L2 table (q_l2_new): written whole, its L1 entry at the next
#    write-back (usually the next flush's), after a sync of the table.
# Before, each cost an fdatasync of all the image's dirty data with every
# write waiting (two per L2 table; bench/README.md, "Session 17").  Rules
# checked (docs/qcow2.md, "Crash order"):
#  - no fdatasync while the guest writes without flushing, though the
#    writes take new refcount blocks and new L2 tables (strace);
#  - the order in the strace: a refcount table entry is written after a
#    sync that follows the writes of the refcount blocks; from a new
#    block's write until the sync after its table entry is written, no L1
#    or L2 entry is written; an L1 entry is written after a sync that
#    follows the writes of the new L2 tables;
#  - the bytes equal qemu-io's on a raw copy; qemu-img check is clean;
#  - kill -9 before the flush: qemu-img check finds at worst leaks and
#    the flushed bytes are there.
# 4 KiB clusters and 64-bit refcounts: an L2 table maps 2 MiB, and a
# refcount block covers 2 MiB of the file, so 1536 writes to a 10 MiB
# image take new tables and new blocks while no flush comes.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io strace
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"

img=$VD_TMP/r.qcow2 ref=$VD_TMP/r.raw

# fill SOCKET|- TRACE STOP: a write of 4 KiB to cluster 0 and a flush; 699
# writes to clusters of the first three L2 tables, 16 at a time (two new
# tables, a new refcount block), and a flush; the other 836 of those
# clusters (two more blocks); with STOP "flush", zeros written over cluster
# 0 (an L2 entry written at once: the refcount table entries still waiting
# are written before it, with no flush before), a write to the fourth
# table (new), a flush, and a write to the fifth (new: its L1 entry is
# written when the server closes the image).  Through the NBD server at SOCKET, or as a
# qemu-io script on stdout.  Through the server, the fdatasyncs TRACE
# holds must not grow during the 699 and the 836 writes; with STOP "hold"
# it waits after them, connected, to be killed.
fill() {
  /usr/bin/python3 - "$@" <<'PY'
import random, sys, time
rest = random.Random(3).sample(range(1, 1536), 1535)
parts = (rest[:699], rest[699:])
def v(c):
    return 1 + c % 250
if sys.argv[1] == "-":
    for c in [0] + rest + [1536, 2048]:
        print("write -P %d %d 4096" % (v(c), c * 4096))
    print("write -z 0 4096")
    sys.exit(0)
import nbd
def syncs():
    return sum(l.count("fdatasync(") for l in open(sys.argv[2]))
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.pwrite(bytes([v(0)]) * 4096, 0)
h.flush()
for part in parts:
    before = syncs()
    for c in part:
        while h.aio_in_flight() >= 16:
            h.poll(-1)
        h.aio_pwrite(bytes([v(c)]) * 4096, c * 4096)
    while h.aio_in_flight():
        h.poll(-1)
    time.sleep(0.2)
    after = syncs()
    print("%d allocating writes without a flush: %d fdatasyncs"
          % (len(part), after - before))
    if after != before:
        sys.exit("fdatasync while the guest wrote without flushing")
    if part is parts[0]:
        h.flush()
if sys.argv[3] == "hold":
    print("holding", flush=True)
    time.sleep(600)
h.zero(4096, 0)
h.pwrite(bytes([v(1536)]) * 4096, 1536 * 4096)
h.flush()
h.pwrite(bytes([v(2048)]) * 4096, 2048 * 4096)
h.shutdown()
PY
}

# order_check IMAGE TRACE: the crash order (above), from a trace that
# shows whole buffers (calls of several threads: qcow2_trace.py).  A new
# table is the first whole cluster written into it with a byte other than
# zero (the file's extension over it writes zeros); the L1 entries written
# are decoded from the buffer.  The places of the tables are read from the
# image.
order_check() {
  /usr/bin/python3 - "$@" <<'PY' || fail "a table was written before what it names was synced"
import os, struct, sys
sys.path.insert(0, os.environ["top_srcdir"] + "/tests/integration")
import qcow2_trace
t = qcow2_trace.layout(sys.argv[1])
cs, l2, rb, l1o, rto = t.cs, t.l2, t.rb, t.l1o, t.rto
if len(rb) < 4 or len(l2) < 4:
    sys.exit("%d refcount blocks, %d L2 tables: the test takes too few"
             % (len(rb), len(l2)))
made = set()
def classify(buf, ln, off):
    cl = off & ~(cs - 1)
    kind = ("new-rb" if ln == cs else "rb") if cl in rb else \
        "rt" if rto <= off < rto + t.rtc * cs else \
        "l2" if cl in l2 else \
        "l1" if l1o <= off < l1o + t.l1n * 8 else "data"
    if kind == "l2" and ln == cs and any(buf) and cl not in made:
        made.add(cl)
        return "new-l2", off
    if kind == "l1":
        return kind, {e & qcow2_trace.MASK
                      for e in struct.unpack(">%dQ" % (ln // 8), buf)}
    return kind, None
calls = qcow2_trace.read(sys.argv[2], classify)
def first(pred, after):
    return next((c for c in calls if c[1] > after and pred(c)), None)
def synced_after(w, deps):
    # W began after a sync that began after the last of DEPS that had
    # ended before W began.
    ends = [d[2] for d in deps if d[2] < w[1]]
    return not ends or first(lambda s: s[0] == "fdatasync" and s[3] and
                             s[2] < w[1], max(ends))
# 1. A refcount table entry after a sync after the blocks' writes.
for w in calls:
    if w[0] == "rt" and not synced_after(w, [d for d in calls
                                             if d[0] in ("rb", "new-rb")]):
        sys.exit("refcount table written before the blocks it names were "
                 "synced: %s" % w[4])
# 3. An L1 entry after a sync after the writes of the new tables it names.
for w in calls:
    if w[0] == "l1" and not synced_after(w, [d for d in calls
                                             if d[0] == "new-l2" and
                                             d[5] in w[5]]):
        sys.exit("L1 entry written before the new L2 table it names was "
                 "synced: %s" % w[4][:120])
# 2. From a new block's write until the sync that follows the write of
#    the table entry naming it, nothing names a cluster (L1, L2).
news = [b for b in calls if b[0] == "new-rb"]
for b in news:
    rt = first(lambda c: c[0] == "rt", b[2])
    s = rt and first(lambda c: c[0] == "fdatasync" and c[3], rt[2])
    end = s[2] if s else float("inf")
    w = next((c for c in calls if c[0] in ("l1", "l2") and b[2] < c[1] < end),
             None)
    if w:
        sys.exit("an L1/L2 entry was written before the table entry of a new "
                 "refcount block was synced: %s" % w[4][:120])
n = {k: sum(c[0] == k for c in calls) for k in ("new-rb", "rt", "new-l2", "l1")}
if not all(n.values()):
    sys.exit("missing from the trace: %s" % n)
print("new refcount blocks %(new-rb)d, refcount table writes %(rt)d, new L2 "
      "tables %(new-l2)d, L1 writes %(l1)d: each after its sync" % n)
PY
}

qemu-img create -q -f qcow2 -o cluster_size=4k,refcount_bits=64 "$img" 10M
qemu-img create -q -f raw "$ref" 10M
STRACE_STRLEN=4096 start_nbd_traced fdatasync,pwrite64 -f qcow2 "$img"
fill "$nbd_sock" "$VD_TMP/strace" flush || fail "writes through vdisk-nbd"
stop_nbd_traced
order_check "$img" "$VD_TMP/strace"
fill - | qemu-io -f raw "$ref" >/dev/null
qemu-img compare -q "$ref" "$img" || fail "writes differ from qemu's"
qemu-img check -q "$img" || fail "clean stop: $(qemu-img check "$img" 2>&1)"

# kill -9 with new blocks and tables not yet named by their tables.
rm -f "$img"
qemu-img create -q -f qcow2 -o cluster_size=4k,refcount_bits=64 "$img" 10M
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
disown "$nbd_strace_pid"          # strace dies of the same signal: no notice
kill -9 "$(cat "$nbd_pidfile")"
for _ in $(seq 100); do
  kill -0 "$(cat "$nbd_pidfile")" 2>/dev/null ||
    kill -0 "$nbd_strace_pid" 2>/dev/null || break
  sleep 0.05
done
rm -f "$nbd_pidfile"
kill $fpid 2>/dev/null; wait $fpid 2>/dev/null || true
rc=0; qemu-img check "$img" > "$VD_TMP/chk" 2>&1 || rc=$?
[ $rc = 0 ] || [ $rc = 3 ] || fail "after kill -9: qemu-img check exit $rc: $(cat "$VD_TMP/chk")"
echo "after kill -9: qemu-img check exit $rc"
# The writes before the second flush are there; the later ones there or
# not (zeros).
qemu-img convert -O raw "$img" "$VD_TMP/k.raw" || fail "after kill -9: qemu cannot read the image"
/usr/bin/python3 - "$VD_TMP/k.raw" <<'PY' || fail "after kill -9: flushed writes lost"
import random, sys
data = open(sys.argv[1], "rb").read()
rest = random.Random(3).sample(range(1, 1536), 1535)
flushed = {0} | set(rest[:699])
for c in range(1536):
    got, want = data[c * 4096:(c + 1) * 4096], bytes([1 + c % 250]) * 4096
    if got != want and (c in flushed or got != bytes(4096)):
        sys.exit("cluster %d: %s" % (c, "flushed write lost" if c in flushed
                                    else "neither the write nor zeros"))
print("flushed writes kept")
PY
echo PASS
