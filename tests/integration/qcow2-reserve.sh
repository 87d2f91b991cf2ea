#!/usr/bin/env bash
# qcow2 reserved clusters (vdisk/qcow2-write.c, q_resv_fill): in an image
# without a backing file, a new data cluster where nothing was allocated
# comes from a reserve whose refcounts were raised once for 64 clusters,
# doubling at each fill up to 64 MiB, and synced before any L2 entry is
# written, so an allocating write needs no sync of its own (before: one
# fdatasync per allocating write, refcounts before the L2 entry), and only
# its new bytes are written (the reserve is fresh space: zeros).  Rules
# checked against qemu (docs/qcow2.md, "Crash order"):
#  - the bytes: random 4 KiB and unaligned writes through vdisk-nbd equal
#    the same writes by qemu-io on a raw copy (qemu-img compare);
#  - strace counts the pwrites (L2 entries wait in the cache until the
#    flush) and fdatasyncs of 200 allocating 4 KiB writes, and of
#    2000 to a 1 GiB image (the reserve grows: 16, not 53);
#  - a clean stop gives the unused reserve back: qemu-img check finds no
#    leak and the file ends at the last cluster in use, and the space of
#    a reserve that tables follow is punched (it is allocated when taken);
#  - kill -9 after a flush: every flushed byte is there and qemu-img check
#    finds at worst leaks (the reserve not yet used); also with more L2
#    tables holding new entries than the cache keeps dirty;
#  - the order in an strace: an L2 entry is written only after a sync that
#    follows the refcount writes (and, over a backing file, the data copied
#    into the reserved cluster), also with writes in flight while flushes
#    run (a flush syncs before it takes the writer's lock);
#  - over a backing file the copied cluster comes from the reserve too: the
#    bytes equal qemu-io's, and the backing bytes around a 4 KiB write
#    survive.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io strace
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"

M=$((1024 * 1024))
img=$VD_TMP/d.qcow2 ref=$VD_TMP/ref.raw
qemu-img create -q -f qcow2 -o cluster_size=64k "$img" 64M
qemu-img create -q -f raw "$ref" 64M

# writes SEED N SOCKET|- [CLUSTERS]: N random writes (4 KiB at places
# random among the first CLUSTERS (1024) 64 KiB clusters, every fifth
# unaligned and crossing a cluster edge), through the NBD server at
# SOCKET, or as a qemu-io script on stdout for the raw copy.
writes() {
  /usr/bin/python3 - "$@" <<'PY'
import random, sys
seed, n, sock = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ncl = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
r = random.Random(seed)
reqs = []
for i in range(n):
    if i % 5 == 4:
        off, ln = r.randrange(1, ncl) * 65536 - r.randrange(1, 3000), 5000
    else:
        off, ln = r.randrange(ncl) * 65536 + r.randrange(16) * 4096, 4096
    reqs.append((off, ln, 1 + i % 250))
if sock == "-":
    for off, ln, v in reqs:
        print("write -P %d %d %d" % (v, off, ln))
    sys.exit(0)
import nbd
h = nbd.NBD()
h.connect_unix(sock)
for off, ln, v in reqs:
    h.pwrite(bytes([v]) * ln, off)
h.flush()
h.shutdown()
PY
}

# order_check IMAGE TRACE WHAT: from an strace -f of vdisk-nbd writing
# IMAGE, every pwrite of entries into an L2 table (less than a cluster: a
# whole cluster is a new table's zeros or the file's extension) begins
# after an fdatasync that began after the last pwrite into a refcount
# block (WHAT "refcounts"), or into a refcount block or a data cluster
# (WHAT "data": over a backing file a new cluster holds copied data, which
# must be durable before an entry names it), that ended before it began,
# had ended (calls of several threads: qcow2_trace.py).  The tables'
# places are read from the image at the end; the workloads checked free
# nothing and overwrite nothing, so no such write may trail a table
# unsynced.
order_check() {
  /usr/bin/python3 - "$@" <<'PY' || fail "$3: an L2 table was written before what its entries name was synced"
import os, sys
sys.path.insert(0, os.environ["top_srcdir"] + "/tests/integration")
import qcow2_trace
t = qcow2_trace.layout(sys.argv[1])
data_too = sys.argv[3] == "data"
cs, l2, rb = t.cs, t.l2, t.rb
meta = {0, t.l1o & ~(cs - 1)} | {t.rto + i * cs for i in range(t.rtc)}
def classify(buf, ln, off):
    cl = off & ~(cs - 1)
    return ("l2" if ln < cs else "other") if cl in l2 else \
        "dep" if cl in rb or (data_too and cl not in meta) else "other", None
calls = qcow2_trace.read(sys.argv[2], classify)
l2_writes = 0
for w in calls:
    if w[0] != "l2":
        continue
    l2_writes += 1
    deps = [d[2] for d in calls if d[0] == "dep" and d[2] < w[1]]
    if deps and not any(s[0] == "fdatasync" and s[3] and s[1] > max(deps)
                        and s[2] < w[1] for s in calls):
        sys.exit("L2 table written with what it may name not yet synced: "
                 "%s" % w[4])
if not l2_writes:
    sys.exit("no write of L2 entries seen in the trace")
print("%s: %d writes of L2 entries, each after the sync" % (sys.argv[3],
                                                           l2_writes))
PY
}

start_nbd_traced fdatasync,pwrite64 -f qcow2 "$img"
writes 1 200 "$nbd_sock" || fail "writes through vdisk-nbd"
stop_nbd_traced
syncs=$(grep -c fdatasync "$VD_TMP/strace" || true)
echo "200 allocating writes: $syncs fdatasyncs (open, flush and close included)"
[ "$syncs" -le 40 ] || fail "$syncs fdatasyncs for 200 allocating writes"
# Their L2 entries wait in the cache until the flush (docs/qcow2.md,
# "Dirty L2 entries"): one pwrite per cluster written (240: every fifth
# write covers two), a few for refcounts and the flush's write-back; with
# an entry written per write it was 440.
pw=$(grep -c pwrite64 "$VD_TMP/strace" || true)
echo "200 allocating writes: $pw pwrites"
[ "$pw" -le 280 ] || fail "$pw pwrites for 200 allocating writes: L2 entries written one by one"
# Crash order (docs/qcow2.md): the reserve's refcounts are durable before
# any L2 entry naming one of its clusters is (order_check, below).
cp "$VD_TMP/strace" "$VD_TMP/strace.order"
order_check "$img" "$VD_TMP/strace.order" refcounts
writes 1 200 - | qemu-io -f raw "$ref" >/dev/null
qemu-img compare -q "$ref" "$img" || fail "writes differ from qemu's"
qemu-img check -q "$img" || fail "clean stop: $(qemu-img check "$img" 2>&1)"
used=$(qemu-img check --output=json "$img" | /usr/bin/python3 -c \
  'import json,sys; j=json.load(sys.stdin); print(j["image-end-offset"])')
size=$(stat -c %s "$img")
[ "$size" -le "$used" ] || fail "clean stop left the reserve: file $size, used $used"

# The reserve doubles at each fill (64, 128, ... 1024 clusters): 2000
# allocating writes (2400 clusters) spread over a 1 GiB image cost 7 fills
# and 11 fdatasyncs in all (16 when each fill synced, 53 with a fixed
# 64-cluster reserve).
big=$VD_TMP/big.qcow2 bigref=$VD_TMP/big.raw
qemu-img create -q -f qcow2 -o cluster_size=64k "$big" 1G
qemu-img create -q -f raw "$bigref" 1G
start_nbd_traced fdatasync -f qcow2 "$big"
writes 3 2000 "$nbd_sock" 16384 || fail "2000 writes through vdisk-nbd"
stop_nbd_traced
syncs=$(grep -c fdatasync "$VD_TMP/strace" || true)
echo "2000 allocating writes to 1 GiB: $syncs fdatasyncs"
[ "$syncs" -le 24 ] || fail "$syncs fdatasyncs for 2000 allocating writes: the reserve does not grow"
writes 3 2000 - 16384 | qemu-io -f raw "$bigref" >/dev/null
qemu-img compare -q "$bigref" "$big" || fail "2000 writes differ from qemu's"
qemu-img check -q "$big" || fail "clean stop (1 GiB): $(qemu-img check "$big" 2>&1)"
rm -f "$big" "$bigref"

# kill -9 after a flush: flushed bytes kept, leaks at worst.
start_nbd -f qcow2 "$img"
writes 2 150 "$nbd_sock" || fail "writes before kill -9"
kill -9 "$(cat "$nbd_pidfile")"
for _ in $(seq 100); do kill -0 "$(cat "$nbd_pidfile")" 2>/dev/null || break; sleep 0.05; done
rm -f "$nbd_pidfile"
writes 2 150 - | qemu-io -f raw "$ref" >/dev/null
rc=0; qemu-img check "$img" > "$VD_TMP/chk" 2>&1 || rc=$?
[ $rc = 0 ] || [ $rc = 3 ] || fail "after kill -9: qemu-img check exit $rc: $(cat "$VD_TMP/chk")"
echo "after kill -9: qemu-img check exit $rc"
qemu-img compare -q "$ref" "$img" || fail "flushed writes lost by kill -9"

# More L2 tables dirty than the cache keeps dirty (16): 4 KiB clusters,
# so a table maps 2 MiB and 300 writes over 40 MiB touch 20 tables before
# the flush; entries past the 16th table are written through.  The bytes
# equal qemu's, and a kill -9 after the flush loses none of them.
small=$VD_TMP/small.qcow2 smallref=$VD_TMP/small.raw
qemu-img create -q -f qcow2 -o cluster_size=4k "$small" 40M
qemu-img create -q -f raw "$smallref" 40M
start_nbd -f qcow2 "$small"
writes 4 300 "$nbd_sock" 640 || fail "writes over 20 L2 tables"
kill -9 "$(cat "$nbd_pidfile")"
for _ in $(seq 100); do kill -0 "$(cat "$nbd_pidfile")" 2>/dev/null || break; sleep 0.05; done
rm -f "$nbd_pidfile"
writes 4 300 - 640 | qemu-io -f raw "$smallref" >/dev/null
rc=0; qemu-img check "$small" > "$VD_TMP/chk" 2>&1 || rc=$?
[ $rc = 0 ] || [ $rc = 3 ] || fail "20 L2 tables, kill -9: qemu-img check exit $rc: $(cat "$VD_TMP/chk")"
qemu-img compare -q "$smallref" "$small" || fail "20 L2 tables: flushed writes differ from qemu's"
rm -f "$small" "$smallref"

# The reserve is allocated in the file when it is taken (fallocate:
# unwritten, reads zeros); a clean stop gives back the part no entry
# names, in space too, even where tables taken after it keep the file from
# being cut there.  4 KiB clusters (a table maps 2 MiB), 600 writes over
# 1 GiB: most touch a table not made yet, taken after the reserve.  The
# image takes no more disk space than the same writes to a sparse raw
# file, plus 2 MiB for its tables.
sp=$VD_TMP/sp.qcow2 spref=$VD_TMP/sp.raw
qemu-img create -q -f qcow2 -o cluster_size=4k "$sp" 1G
qemu-img create -q -f raw "$spref" 1G
start_nbd -f qcow2 "$sp"
writes 5 600 "$nbd_sock" 16384 || fail "writes over 512 L2 tables"
stop_nbd
writes 5 600 - 16384 | qemu-io -f raw "$spref" >/dev/null
qemu-img compare -q "$spref" "$sp" || fail "4 KiB clusters: writes differ from qemu's"
qemu-img check -q "$sp" || fail "4 KiB clusters, clean stop: $(qemu-img check "$sp" 2>&1)"
used=$(( $(stat -c '%b * %B' "$sp") )) want=$(( $(stat -c '%b * %B' "$spref") ))
echo "4 KiB clusters, 600 writes: $used bytes on disk (raw: $want)"
[ "$used" -le $((want + 2 * 1024 * 1024)) ] ||
  fail "clean stop kept the unused reserve's space: $used bytes on disk, the raw copy $want"
rm -f "$sp" "$spref"

# With a backing file a new cluster is copied first, into a reserved
# cluster: its entry may wait in the cache too, so the copied data, like
# the reserve's refcounts, is synced before any entry is written.  60
# writes to distinct new clusters (nothing overwritten) of an overlay, a
# flush after the 40th and one at the end (the second with no reserve fill
# since the first: only the copied data asks for the sync), traced: the
# order, then the bytes against qemu-io's on a raw copy.
ovl=$VD_TMP/ovl.qcow2 oref=$VD_TMP/oref.raw
pattern_bytes $((64 * M)) 5 > "$VD_TMP/obase.raw"
# distinct SEED N DEPTH EVERY SOCKET|-: N writes of 4 KiB to distinct
# clusters, through the NBD server at SOCKET (up to DEPTH in flight, a
# flush after every EVERYth and one at the end), or as a qemu-io script on
# stdout.
distinct() {
  /usr/bin/python3 - "$@" <<'PY'
import random, sys
seed, n, depth, every = map(int, sys.argv[1:5])
r = random.Random(seed)
reqs = [(c * 65536 + r.randrange(16) * 4096, 1 + i % 250)
        for i, c in enumerate(r.sample(range(1024), n))]
if sys.argv[5] == "-":
    for off, v in reqs:
        print("write -P %d %d 4096" % (v, off))
    sys.exit(0)
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[5])
for i, (off, v) in enumerate(reqs):
    while h.aio_in_flight() >= depth:
        h.poll(-1)
    h.aio_pwrite(bytes([v]) * 4096, off)
    if i % every == every - 1:
        while depth == 1 and h.aio_in_flight():
            h.poll(-1)            # one at a time: the flush after the write
        h.aio_flush()
while h.aio_in_flight():
    h.poll(-1)
h.flush()
h.shutdown()
PY
}
# overlay_run SEED N DEPTH EVERY: distinct's writes to a new overlay
# through a traced vdisk-nbd: the order, then the bytes against qemu-io's
# on a raw copy of the base, and a clean check.
overlay_run() {
  qemu-img create -q -f qcow2 -o cluster_size=64k -b "$VD_TMP/obase.raw" -F raw "$ovl"
  cp "$VD_TMP/obase.raw" "$oref"
  start_nbd_traced fdatasync,pwrite64 -f qcow2 "$ovl"
  distinct "$@" "$nbd_sock" || fail "$*: writes to the overlay"
  stop_nbd_traced
  order_check "$ovl" "$VD_TMP/strace" data
  distinct "$@" - | qemu-io -f raw "$oref" >/dev/null
  qemu-img compare -q "$oref" "$ovl" || fail "$*: overlay writes differ from qemu's"
  qemu-img check -q "$ovl" || fail "$*: overlay, clean stop: $(qemu-img check "$ovl" 2>&1)"
}
overlay_run 7 60 1 40
# The same with writes in flight while flushes run: 600 writes to distinct
# new clusters of an overlay, up to 16 at a time, a flush (not waited for)
# after every 20th.  A flush syncs what the entries may name before it
# takes the writer's lock, then writes the entries under it; copies that
# landed in between must be synced too (under the lock) before the
# entries that name them are written.
overlay_run 11 600 16 20
rm -f "$ovl" "$oref" "$VD_TMP/obase.raw"

# A write over a backing file keeps the backing bytes around it.

base=$VD_TMP/base.raw top=$VD_TMP/top.qcow2
pattern_bytes $((4 * M)) 3 > "$base"
qemu-img create -q -f qcow2 -o cluster_size=64k -b "$base" -F raw "$top"
cp "$base" "$VD_TMP/bref.raw"
start_nbd -f qcow2 "$top"
qemu-io -f raw -c 'write -P 0x44 69632 4096' "$nbd_uri" >/dev/null || fail "write over the backing file"
stop_nbd
qemu-io -f raw -c 'write -P 0x44 69632 4096' "$VD_TMP/bref.raw" >/dev/null
qemu-img compare -q "$VD_TMP/bref.raw" "$top" || fail "the backing bytes around a write were lost"
echo PASS
