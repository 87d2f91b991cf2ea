#!/usr/bin/env bash
# The rbd driver (vdisk/rbd.c) against a real one-node Ceph cluster
# (tests/ceph/cluster.sh), judged by Ceph's own rbd tool and by qemu's rbd
# driver (qemu-block-extra): create; qemu-io patterns, write-zeroes and
# discard through vdisk-nbd serving rbd:; qemu-img compare against qemu's
# rbd driver and against `rbd export`; block status equal to `rbd diff`;
# VHD -> RBD -> VHD byte-exact and sparse (`rbd diff` / `rbd du` show
# only the written extents); resize; snapshots listed as `rbd snap ls`
# and qemu-img list them, readable @SNAP, deleted; an rbd: name is never
# taken from an image (VHD parent) nor opened under -f rbd as a file; the
# cluster frozen mid-write gives one clear error within the timeout, no
# hang, and what was flushed before survives; librbd is loaded only when
# an rbd: image is used.  One cluster for all.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
. "$top_srcdir/tests/ceph/cluster.sh"
requires qemu-img qemu-io
/usr/bin/python3 -c "import nbd" 2>/dev/null || skip "python3-libnbd is not installed"
qemu-img --help | grep -qw rbd ||
  skip "qemu-img has no rbd driver (Debian package qemu-block-extra)"
T=$VD_TMP
vdt() { timeout 120 "$top_builddir/tools/vdtool" "$@"; }

# ---- bad names: one line each, before any cluster exists ----
expect_error 'no image name' vdt info rbd:pool
expect_error "unknown option 'rados_osd_op_timeout'" \
  vdt info 'rbd:p/i:rados_osd_op_timeout=5'
expect_error 'timeout must be' vdt create -f rbd 'rbd:p/i:timeout=0' 1M
expect_error 'empty snapshot name' vdt info 'rbd:p/i@'
# a local file under -f rbd is not an RBD image (and never connects)
vdt create -q -f raw "$T/local.raw" 1M
expect_error 'opens only rbd: names' vdt info -f rbd "$T/local.raw"

# ---- librbd is loaded on first use (vdisk/rbd-lib.h), not at start ----
# A server of a local image never maps it (linking it cost every process
# ~50 ms of start-up); a librbd that cannot be loaded is one clear line.
start_nbd -f raw "$T/local.raw"
grep -E 'librbd|librados|libceph' "/proc/$(cat "$nbd_pidfile")/maps" &&
  fail "vdisk-nbd serving a raw file mapped librbd"
stop_nbd
mkdir "$T/badlib" && : > "$T/badlib/librbd.so.1"
LD_LIBRARY_PATH="$T/badlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  expect_error 'rbd: cannot load librbd.so.1' vdt info rbd:p/i
# a library that loads but lacks the functions (an old or foreign one)
if command -v "${CC:-cc}" >/dev/null; then
  mkdir "$T/oldlib"
  echo 'int vd_not_librbd;' | "${CC:-cc}" -shared -fPIC -x c - \
    -o "$T/oldlib/librbd.so.1"
  LD_LIBRARY_PATH="$T/oldlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    expect_error 'rbd: librbd.so.1 has no rados_create: too old' \
    vdt info rbd:p/i
fi

ceph_start
P=$ceph_pool
Q=":conf=$ceph_conf"          # what qemu's rbd driver takes
O="$Q:timeout=20"             # ours, with a timeout
rbd_json() { ceph_rbd "$@" --format json; }

# ---- create ----
vdt create -f rbd "rbd:$P/a$O" 64M >/dev/null
rbd_json info "$P/a" | /usr/bin/python3 -c '
import json, sys; i = json.load(sys.stdin)
assert i["size"] == 64 << 20 and i["order"] == 22, i' ||
  fail "rbd info disagrees with create"
expect_error 'already exists' vdt create -f rbd "rbd:$P/a$O" 64M
expect_error 'cannot create a snapshot' vdt create -f rbd "rbd:$P/a@s$O" 1M
expect_error "pool 'nopool' does not exist" vdt create -f rbd "rbd:nopool/a$O" 1M
expect_error 'cluster_size must be' vdt create -f rbd -o cluster_size=3K "rbd:$P/c$O" 1M
vdt create -q -f rbd -o cluster_size=64K "rbd:$P/c$O" 1M
rbd_json info "$P/c" | /usr/bin/python3 -c '
import json, sys; assert json.load(sys.stdin)["order"] == 16' ||
  fail "cluster_size=64K did not give 64 KiB objects"
vdt info "rbd:$P/a$O" > "$T/info.txt"
grep -q '^file format: rbd' "$T/info.txt" &&
  grep -q '(67108864 bytes)' "$T/info.txt" &&
  grep -q '^cluster_size: 4194304' "$T/info.txt" &&
  grep -q 'features: .*layering' "$T/info.txt" ||
  fail "info: $(cat "$T/info.txt")"

# ---- qemu-io patterns through vdisk-nbd serving rbd: ----
start_nbd "a=rbd:$P/a$O"
qemu-io -f raw \
  -c 'write -P 0xa1 0 64k' \
  -c 'write -P 0xb2 4095k 2M' \
  -c 'write -P 0xc3 33333 4444' \
  -c 'write -P 0xd4 60M 4M' \
  -c 'write -P 0xe5 20M 1M' -c 'write -z 20M 256k' \
  -c 'write -P 0xf6 30M 8M' -c 'discard 32M 4M' -c 'write -z 34M 64k' \
  -c flush "$nbd_uri" >/dev/null || fail "qemu-io writes through vdisk-nbd"
qemu-io -f raw \
  -c 'read -P 0xa1 0 33333' -c 'read -P 0xc3 33333 4444' \
  -c 'read -P 0xa1 37777 27759' -c 'read -P 0xb2 4095k 2M' \
  -c 'read -P 0 20M 256k' -c 'read -P 0xe5 20736k 768k' \
  -c 'read -P 0xd4 60M 4M' -c 'read -P 0xf6 30M 2M' -c 'read -P 0 34M 64k' \
  -c 'read -P 0xf6 36M 2M' "$nbd_uri" > "$T/qio.txt" ||
  fail "qemu-io read back: $(grep -v '^read\|^[0-9]' "$T/qio.txt")"
grep -q 'Pattern verification failed' "$T/qio.txt" && fail "pattern mismatch"
# qemu's own rbd driver and `rbd export` see what vdisk-nbd serves
ceph_rbd export "$P/a" "$T/a.export" 2>/dev/null
qemu-img compare -f raw -F raw "rbd:$P/a$Q" "$nbd_uri" ||
  fail "qemu's rbd driver and vdisk-nbd differ"
qemu-img compare -f raw -F raw "$T/a.export" "$nbd_uri" ||
  fail "rbd export and vdisk-nbd differ"
stop_nbd
# block status: vdtool map's data extents are rbd diff's
vdt map --output=json "rbd:$P/a$O" > "$T/vmap.json"
rbd_json diff "$P/a" > "$T/diff.json"
/usr/bin/python3 - "$T/vmap.json" "$T/diff.json" <<'PY' || fail "vdtool map differs from rbd diff"
import json, sys
def merge(ext):
    out = []
    for s, l in ext:
        if out and out[-1][0] + out[-1][1] == s:
            out[-1][1] += l
        else:
            out.append([s, l])
    return out
v = merge([(e["start"], e["length"]) for e in json.load(open(sys.argv[1]))
           if e["data"]])
r = merge([(e["offset"], e["length"]) for e in json.load(open(sys.argv[2]))
           if e["exists"] == "true" or e["exists"] is True])
if v != r or len(v) < 2:
    print("vdtool", v, "\nrbd diff", r); sys.exit(1)
PY

# ---- resize ----
vdt resize "rbd:$P/a$O" 96M >/dev/null
[ "$(rbd_json info "$P/a" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])')" = $((96 << 20)) ] ||
  fail "resize to 96M not seen by rbd info"
qemu-io -f raw -c 'read -P 0 64M 32M' -c 'read -P 0xd4 60M 4M' "rbd:$P/a$Q" |
  grep -q 'Pattern verification failed' && fail "grown image reads wrong"

# ---- VHD -> RBD -> VHD: byte-exact and sparse ----
vdt create -q -f vpc "$T/src.vhd" 64M
qemu-io -f vpc -c 'write -P 0x5a 0 64k' -c 'write -P 0x6b 10M 192k' \
  -c 'write -P 0x7c 41024k 64k' "$T/src.vhd" >/dev/null
vdt convert -O rbd -o cluster_size=64K "$T/src.vhd" "rbd:$P/b$O" ||
  fail "convert VHD -> RBD"
qemu-img compare -f vpc -F raw "$T/src.vhd" "rbd:$P/b$Q" ||
  fail "VHD and its RBD copy differ (qemu's rbd driver)"
# only the written extents exist in the cluster: rbd diff lists exactly
# them, rbd du counts exactly their 64 KiB objects
rbd_json diff "$P/b" > "$T/bdiff.json"
/usr/bin/python3 - "$T/bdiff.json" <<'PY' || fail "RBD copy is not sparse"
import json, sys
want = [[0, 64 << 10], [10 << 20, 192 << 10], [(40 << 20) + (64 << 10), 64 << 10]]
got = []
for e in json.load(open(sys.argv[1])):
    if got and got[-1][0] + got[-1][1] == e["offset"]:
        got[-1][1] += e["length"]
    else:
        got.append([e["offset"], e["length"]])
if got != want:
    print("rbd diff", got, "expected", want); sys.exit(1)
PY
used=$(rbd_json du "$P/b" | /usr/bin/python3 -c '
import json, sys; print(json.load(sys.stdin)["images"][0]["used_size"])')
[ "$used" = $((320 << 10)) ] || fail "rbd du: $used bytes used, expected 320 KiB"
vdt convert -O vpc "rbd:$P/b$O" "$T/back.vhd" || fail "convert RBD -> VHD"
qemu-img compare -f vpc -F vpc "$T/src.vhd" "$T/back.vhd" ||
  fail "VHD -> RBD -> VHD is not byte-exact"
qemu-img map --output=json -f vpc "$T/src.vhd" | sed 's/"offset": [0-9]*//' > "$T/m1"
qemu-img map --output=json -f vpc "$T/back.vhd" | sed 's/"offset": [0-9]*//' > "$T/m2"
cmp -s "$T/m1" "$T/m2" || fail "the round trip changed the VHD's allocation: $(diff "$T/m1" "$T/m2")"

# ---- snapshots ----
I="rbd:$P/a$O"
qemu-io -f raw -c 'write -P 0x11 0 1M' "rbd:$P/a$Q" >/dev/null
vdt snapshot -c first "$I" || fail "snapshot -c first"
qemu-img convert -f raw -O raw "rbd:$P/a$Q" "$T/first.raw"
qemu-io -f raw -c 'write -P 0x22 0 1M' "rbd:$P/a$Q" >/dev/null
vdt snapshot -c second "$I" || fail "snapshot -c second"
expect_error "snapshot 'first' already exists" vdt snapshot -c first "$I"
vdt snapshot -l "$I" > "$T/snaps.txt"
rbd_json snap ls "$P/a" > "$T/snaps.json"
qemu-img snapshot -l "rbd:$P/a$Q" > "$T/qsnaps.txt"
/usr/bin/python3 - "$T/snaps.txt" "$T/snaps.json" "$T/qsnaps.txt" <<'PY' || fail "snapshot -l differs from rbd snap ls / qemu-img snapshot -l"
import json, sys, time
lines = open(sys.argv[1]).read().splitlines()
q = open(sys.argv[3]).read().splitlines()
# qemu-img's header, word for word
assert lines[:2] == q[:2], (lines[:2], q[:2])
rows = [l.split() for l in lines[2:]]
ours = [(r[0], r[1], r[2] + " " + r[3],
         int(time.mktime(time.strptime(r[4] + " " + r[5], "%Y-%m-%d %H:%M:%S"))))
        for r in rows]
theirs = [(str(s["id"]), s["name"], "%d MiB" % (s["size"] >> 20),
           int(time.mktime(time.strptime(s["timestamp"], "%a %b %d %H:%M:%S %Y"))))
          for s in json.load(open(sys.argv[2]))]
assert ours == theirs, (ours, theirs)
# qemu-img's TAG and VM SIZE columns for the same image
qrows = [l.split() for l in q[2:]]
assert [(r[1], r[2] + " " + r[3]) for r in qrows] == \
       [(o[1], o[2]) for o in ours], (qrows, ours)
assert [o[1] for o in ours] == ["first", "second"]
PY
# @SNAP opens read-only and holds what was written before it
qemu-img compare -f raw -F raw "$T/first.raw" "rbd:$P/a@first$Q" ||
  fail "rbd:...@first does not read as the image did"
qemu-io -r -f raw -c 'read -P 0x22 0 1M' "rbd:$P/a@second$Q" | grep -q 'verification failed' &&
  fail "snapshot second reads wrong"
expect_error 'read-only' qemu-io -f raw -c 'write 0 512' "rbd:$P/a@first$Q"
start_nbd "s=rbd:$P/a@first$O"
expect_error 'write|read-only' /usr/bin/python3 -c '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
try:
    h.pwrite(b"x" * 512, 0)
except nbd.Error as e:
    sys.exit(str(e).splitlines()[0])' "$nbd_uri"
stop_nbd
vdt snapshot -d first "$I" || fail "snapshot -d first"
expect_error "no snapshot 'first'" vdt snapshot -d first "$I"
[ "$(rbd_json snap ls "$P/a" | /usr/bin/python3 -c 'import json,sys; print(" ".join(s["name"] for s in json.load(sys.stdin)))')" = second ] ||
  fail "rbd snap ls after delete"
expect_error 'no such image or snapshot' vdt info "rbd:$P/a@first$O"
expect_error 'no internal snapshots' vdt snapshot -l "$T/src.vhd"

# ---- an rbd: name is never taken from an image ----
# The operator may name an RBD image as a VHD's parent (--backing each
# time); the name the child records is then a file name like any other.
vdt create -q -f vpc -b "rbd:$P/b$O" -F rbd "$T/child.vhd"
vdt compare --backing="rbd:$P/b$O" --backing-format=rbd "$T/child.vhd" "$T/src.vhd" ||
  fail "a VHD over an RBD parent named by --backing"
expect_error 'parent|backing' vdt info --backing-chain "$T/child.vhd"
ls "$T" | grep -q '^rbd:' && fail "something was created under the rbd: name"

# ---- the cluster frozen mid-write ----
# A server on an image with a 3 s timeout; a client writes and flushes
# (acknowledged: durable), the cluster freezes (SIGSTOP, as a hung host),
# the next writes and flushes fail with EIO within the timeout, not later
# than a bounded wait; after the thaw the flushed data is there.
vdt create -q -f rbd "rbd:$P/w$O" 16M
start_nbd "w=rbd:$P/w$Q:timeout=3"
cat > "$T/writer.py" <<'PY'
import nbd, os, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x42" * (1 << 20), 0)
h.flush()
open(sys.argv[2], "w").close()          # tell the test: acknowledged
while not os.path.exists(sys.argv[3]):  # wait for the freeze
    time.sleep(0.05)
errors = 0
for i in range(2):
    try:
        h.pwrite(b"\x43" * (1 << 20), (2 + i) << 20)
        h.flush()
    except nbd.Error as e:
        errors += 1
        print(e.errno if hasattr(e, "errno") else e, flush=True)
sys.exit(0 if errors else 3)
PY
rm -f "$T/acked" "$T/frozen"
timeout 120 /usr/bin/python3 "$T/writer.py" "$nbd_uri" "$T/acked" "$T/frozen" \
  > "$T/writer.out" 2>&1 &
wpid=$!
for i in $(seq 300); do [ -e "$T/acked" ] && break; sleep 0.1; done
[ -e "$T/acked" ] || fail "the writer never got its first flush acknowledged"
ceph_pause
touch "$T/frozen"
wrc=0
wait $wpid || wrc=$?
[ "$wrc" -eq 0 ] || fail "writes to a frozen cluster: exit $wrc (124: hung): $(cat "$T/writer.out")"
echo "frozen cluster, client saw: $(tr '\n' ' ' < "$T/writer.out")" >&2
grep -q 'EIO\|Input/output error\|^5$' "$T/writer.out" ||
  fail "frozen cluster: not EIO: $(cat "$T/writer.out")"
# vdtool on the frozen cluster: one line naming the timeout
expect_error 'did not answer within 3 s \(timeout\)' vdt info "rbd:$P/w$Q:timeout=3"
expect_error 'did not answer within 3 s' vdt convert -O rbd "$T/src.vhd" "rbd:$P/x$Q:timeout=3"
ceph_resume
qemu-io -f raw -c 'read -P 0x42 0 1M' "$nbd_uri" | grep -q 'verification failed' &&
  fail "data flushed before the freeze is gone"
# and a server closing on a frozen cluster ends (each step bounded)
ceph_pause
pid=$(cat "$nbd_pidfile")
t0=$SECONDS
kill -TERM "$pid"
for i in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "vdisk-nbd still closing a frozen RBD image after 60 s"
echo "vdisk-nbd closed the frozen image in $((SECONDS - t0)) s" >&2
rm -f "$nbd_pidfile"
check_nbd_log
ceph_resume
echo "rbd-driver: cluster start ${ceph_start_ms} ms"
