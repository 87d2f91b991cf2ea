#!/usr/bin/env bash
# Incremental backup through vdisk-nbd's qemu:dirty-bitmap:NAME context, and
# qemu:allocation-depth over a VHD chain, judged by real peers:
#  1. full copy with nbdcopy; writes, write-zeroes and a trim through NBD
#     with qemu-io; nbdinfo --map=qemu:dirty-bitmap:b0 reports exactly the
#     64 KiB granules touched; copying only those extents onto the full copy
#     makes it equal to the source (qemu-img compare; it differed before).
#  2. clean restart: the bitmap (IMAGE.bitmaps) is the same; kill -9, then
#     restart: the bitmap is refused as inconsistent, never served wrong.
#  3. qemu:allocation-depth over a three-level VHD chain equals what
#     qemu-nbd -A serves for a qcow2 chain with the same writes (qemu cannot
#     read VHD chains), and qemu-img map's depths of that qcow2 chain.
. "${top_srcdir:-.}/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io qemu-nbd nbdinfo nbdcopy /usr/bin/python3
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd missing"
cd "$VD_TMP"
MB=$((1024 * 1024))
G=65536
py() { /usr/bin/python3 "$top_srcdir/tests/nbd/$1" "${@:2}"; }
norm() { py map-norm.py "$@"; }

# ---- 1. incremental backup ----
pattern_bytes $((16 * MB)) 1 > src.raw
start_nbd -f raw -B b0 src.raw
uri=$nbd_uri
[ -f src.raw.bitmaps ] || fail "-B b0 made no persistent bitmap file"
nbdinfo --map=qemu:dirty-bitmap:b0 "$uri" > map0
[ "$(norm nbdinfo map0)" = "0 $((16 * MB)) 0" ] ||
  fail "a new bitmap is not all clean: $(cat map0)"

nbdcopy "$uri" full.raw
qemu-img compare -q -f raw -F raw full.raw src.raw || fail "full copy differs"

# Writes at known places: aligned, unaligned across granules, at the end,
# write-zeroes and a trim.
qemu-io -f raw -c "write -P 0x11 $((1 * MB)) 4096" \
  -c "write -P 0x22 $((5 * MB + 100)) 70000" \
  -c "write -P 0x33 $((16 * MB - 512)) 512" \
  -c "write -z $((9 * MB)) $G" \
  -c "discard $((12 * MB)) $((2 * G))" "$uri" > io.out ||
  fail "qemu-io: $(cat io.out)"
nbdinfo --map=qemu:dirty-bitmap:b0 "$uri" > map1
norm nbdinfo map1 | awk '$3 == 1 { print $1, $2 }' > dirty1
cat > want1 <<EOF
$((1 * MB)) $G
$((5 * MB)) $((2 * G))
$((9 * MB)) $G
$((12 * MB)) $((2 * G))
$((16 * MB - G)) $G
EOF
diff want1 dirty1 > /dev/null ||
  fail "dirty extents: got $(tr '\n' ' ' < dirty1), want $(tr '\n' ' ' < want1)"
# Several contexts on one connection (one chunk each), the qemu:
# namespace queries, REQ_ONE (libnbd).
stop_nbd
start_nbd -f raw -A -B b0 -B other src.raw
uri=$nbd_uri
py meta-contexts.py "$uri" b0 other > meta.out || fail "$(cat meta.out)"

# The full copy is now stale; the dirty extents alone bring it up to date.
if qemu-img compare -q -f raw "$uri" full.raw 2>/dev/null; then
  fail "the writes did not change the source?"
fi
copied=$(py copy-extents.py "$uri" map1 full.raw) || fail "copy-extents"
[ "$copied" -eq $((7 * G)) ] || fail "copied $copied bytes, want $((7 * G))"
qemu-img compare -q -f raw "$uri" full.raw ||
  fail "full copy + dirty extents differs from the source"

# ---- 2. persistence ----
stop_nbd
start_nbd -f raw -B b0 src.raw
nbdinfo --map=qemu:dirty-bitmap:b0 "$nbd_uri" > map2
diff map1 map2 > /dev/null ||
  fail "bitmap after a clean restart differs: $(cat map2)"
# Writes after the restart are recorded too.
qemu-io -f raw -c "write -P 0x44 $((3 * MB)) 1" "$nbd_uri" > /dev/null
nbdinfo --map=qemu:dirty-bitmap:b0 "$nbd_uri" > map3
norm nbdinfo map3 > n3
grep -q "^$((3 * MB)) $G 1\$" n3 ||
  fail "write after restart not recorded: $(cat map3)"

# Writes through vdisk-fuse are recorded in the same persistent bitmap
# (else the next backup would trust bits that missed them).
if [ -c /dev/fuse ] && [ -w /dev/fuse ] && command -v fusermount3 >/dev/null; then
  . "$top_srcdir/tests/integration/fuse-functions.sh"
  stop_nbd
  fuse_mount "$VD_TMP/mnt" --format=raw src.raw
  fimg=$(ls "$VD_TMP/mnt")
  dd if=/dev/urandom of="$VD_TMP/mnt/$fimg" bs=4096 count=1 \
    seek=$((7 * MB / 4096)) conv=notrunc,fsync status=none
  fuse_umount "$VD_TMP/mnt"
  start_nbd -f raw -B b0 src.raw
  nbdinfo --map=qemu:dirty-bitmap:b0 "$nbd_uri" > map4
  norm nbdinfo map4 > n4
  grep -q "^$((7 * MB)) $G 1\$" n4 || fail "write through FUSE not recorded: $(cat n4)"
fi

# The QMP commands (control socket): query-block's dirty-bitmaps, add,
# errors as QEMU words them, clear, disable/enable, merge, remove.
q() { vdtool qmp "$VD_TMP/qmp" "$@"; }
# bm NAME FIELD: FIELD of bitmap NAME in query-block ("-" if absent).
bm() {
  q query-block | /usr/bin/python3 -c 'import json, sys
d = json.load(sys.stdin)[0]["inserted"].get("dirty-bitmaps", [])
b = [x for x in d if x["name"] == sys.argv[1]]
v = b[0].get(sys.argv[2]) if b else None
print("-" if v is None else json.dumps(v))' "$1" "$2"
}
stop_nbd
start_nbd -f raw --control "$VD_TMP/qmp" src.raw
dev=src.raw
nfuse=0; [ -f n4 ] && nfuse=$G
[ "$(bm b0 count)" = $((8 * G + nfuse)) ] || fail "b0 count: $(bm b0 count)"
[ "$(bm b0 granularity)" = $G ] && [ "$(bm b0 persistent)" = true ] &&
  [ "$(bm b0 recording)" = true ] && [ "$(bm b0 busy)" = false ] &&
  [ "$(bm b0 inconsistent)" = - ] || fail "b0: $(q query-block)"
q block-dirty-bitmap-add node=$dev name=b1 granularity=4096 > /dev/null
expect_error "already exists" q block-dirty-bitmap-add node=$dev name=b1
expect_error "Granularity must be power of 2" \
  q block-dirty-bitmap-add node=$dev name=b2 granularity=1000
expect_error "Cannot find device='nope'" \
  q block-dirty-bitmap-add node=nope name=b2
expect_error "not found" q block-dirty-bitmap-clear node=$dev name=b2
q block-dirty-bitmap-clear node=$dev name=b0 > /dev/null
[ "$(bm b0 count)" = 0 ] || fail "b0 not cleared: $(bm b0 count)"
qemu-io -f raw -c "write -P 0x55 $((2 * MB)) 1" "$nbd_uri" > /dev/null
[ "$(bm b0 count)" = $G ] && [ "$(bm b1 count)" = 4096 ] ||
  fail "after one write: b0 $(bm b0 count), b1 $(bm b1 count)"
[ "$(bm b1 persistent)" = false ] || fail "b1 persistent?"
q block-dirty-bitmap-disable node=$dev name=b1 > /dev/null
[ "$(bm b1 recording)" = false ] || fail "b1 still recording"
qemu-io -f raw -c "write -P 0x66 $((4 * MB)) 1" "$nbd_uri" > /dev/null
[ "$(bm b1 count)" = 4096 ] || fail "a disabled bitmap recorded"
q block-dirty-bitmap-enable node=$dev name=b1 > /dev/null
expect_error "granularit" \
  q block-dirty-bitmap-merge node=$dev target=b0 'bitmaps=["b1"]'
q block-dirty-bitmap-add node=$dev name=b3 disabled=true > /dev/null
q block-dirty-bitmap-merge node=$dev target=b3 'bitmaps=["b0"]' > /dev/null
[ "$(bm b3 count)" = $((2 * G)) ] || fail "merge: b3 $(bm b3 count)"
q block-dirty-bitmap-remove node=$dev name=b1 > /dev/null
[ "$(bm b1 count)" = - ] || fail "b1 not removed"
stop_nbd
# Cleared, then two writes: that is what the restarted export serves.
start_nbd -f raw -B b0 --control "$VD_TMP/qmp" src.raw
[ "$(bm b0 busy)" = true ] || fail "an exported bitmap is not busy"
expect_error "in use" q block-dirty-bitmap-remove node=$dev name=b0
expect_error "in use" q block-dirty-bitmap-clear node=$dev name=b0
nbdinfo --map=qemu:dirty-bitmap:b0 "$nbd_uri" > map5
norm nbdinfo map5 | awk '$3 == 1 { print $1, $2 }' > dirty5
printf '%s\n' "$((2 * MB)) $G" "$((4 * MB)) $G" > want5
diff want5 dirty5 > /dev/null ||
  fail "after clear and restart: $(tr '\n' ' ' < dirty5)"
[ "$(bm b3 count)" = - ] || fail "a non-persistent bitmap survived"
# block-export-add offers only existing, consistent bitmaps; an
# image it opens itself records into its persistent bitmaps too.
expect_error "'nope' not found" q block-export-add type=nbd id=e1 \
  node-name=$dev name=e1 'bitmaps=["nope"]'
q block-export-add type=nbd id=e1 node-name=$dev name=e1 \
  'bitmaps=["b0"]' allocation-depth=true > /dev/null
nbdinfo --map=qemu:dirty-bitmap:b0 "$(nbd_uri_for e1)" > map6
diff map5 map6 > /dev/null || fail "block-export-add's b0 differs: $(cat map6)"
nbdinfo --map=qemu:allocation-depth "$(nbd_uri_for e1)" > /dev/null ||
  fail "block-export-add allocation-depth=true"
truncate -s 4M other.raw
q block-export-add type=nbd id=e2 filename="$VD_TMP/other.raw" format=raw \
  writable=true > /dev/null
q block-dirty-bitmap-add node=e2 name=ob persistent=true > /dev/null
qemu-io -f raw -c "write -P 1 $MB 512" "$(nbd_uri_for e2)" > /dev/null
[ -f other.raw.bitmaps ] || fail "no side file for an image block-export-add opened"
q block-export-del id=e2 > /dev/null

# kill -9: the file still says "in use"; the next start refuses to serve
# the bitmap as if it were consistent.
pid=$(cat "$nbd_pidfile")
kill -KILL "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
rm -f "$nbd_pidfile" "$nbd_sock"
expect_error "b0.*inconsistent" \
  timeout 30 "$top_builddir/nbd-server/vdisk-nbd" -f raw -k "$VD_TMP/s2" -B b0 src.raw
[ ! -e "$VD_TMP/s2" ] || fail "the refused start left its socket"
# Without -B the image is served; query-block says inconsistent (as
# QEMU), the bitmap is neither offered nor usable, and stays so on disk.
start_nbd -f raw --control "$VD_TMP/qmp" src.raw
nbdinfo --map=qemu:dirty-bitmap:b0 "$nbd_uri" > /dev/null 2>&1 &&
  fail "an inconsistent bitmap was offered"
[ "$(bm b0 inconsistent)" = true ] && [ "$(bm b0 recording)" = false ] ||
  fail "after kill -9: $(q query-block)"
[ "$(bm other inconsistent)" = true ] || fail "other: $(q query-block)"
expect_error "inconsistent" q block-dirty-bitmap-clear node=$dev name=b0
expect_error "inconsistent" q block-dirty-bitmap-enable node=$dev name=b0
stop_nbd
expect_error "b0.*inconsistent" \
  timeout 30 "$top_builddir/nbd-server/vdisk-nbd" -f raw -k "$VD_TMP/s2" -B b0 src.raw
# Removed, they can be added again (a new full backup starts).
start_nbd -f raw --control "$VD_TMP/qmp" src.raw
q block-dirty-bitmap-remove node=$dev name=b0 > /dev/null
q block-dirty-bitmap-remove node=$dev name=other > /dev/null
[ ! -e src.raw.bitmaps ] || fail "removing the last bitmap left the file"
q block-dirty-bitmap-add node=$dev name=b0 persistent=true > /dev/null
[ "$(bm b0 inconsistent)" = - ] && [ "$(bm b0 count)" = 0 ] ||
  fail "re-added b0: $(q query-block)"
stop_nbd
[ -e src.raw.bitmaps ] || fail "a persistent add wrote no file"

# A corrupt side file stops the start with a message naming it.
printf 'garbage' | dd of=src.raw.bitmaps bs=1 seek=30 conv=notrunc status=none
expect_error "src\.raw\.bitmaps: bad checksum" \
  timeout 30 "$top_builddir/nbd-server/vdisk-nbd" -f raw -k "$VD_TMP/s2" src.raw
rm -f src.raw.bitmaps

# ---- 3. allocation depth over a chain ----
# The same 64 KiB-aligned writes into a VHD chain (through vdisk-nbd) and a
# qcow2 chain (qemu-io), layer by layer; the children record 64 KiB-aligned
# writes exactly in both (VHD sector bitmaps, qcow2 64 KiB clusters).
layer_writes=(
  "write -P 1 0 $((2 * G))|write -P 2 $((3 * MB)) $G|write -P 3 $((8 * MB)) $((4 * G))"
  "write -P 4 $G $((2 * G))|write -P 5 $((8 * MB + G)) $G|write -P 6 $((10 * MB)) $G"
  "write -P 7 $((2 * G)) $G|write -P 8 $((8 * MB + 3 * G)) $((2 * G))"
)
prev=
for i in 0 1 2; do
  IFS='|' read -r -a cmds <<< "${layer_writes[$i]}"
  args=()
  for c in "${cmds[@]}"; do args+=(-c "$c"); done
  if [ -z "$prev" ]; then
    vdtool create -q -f vhd "l$i.vhd" $((16 * MB))
    # vdisk fills a whole 2 MiB block of a VHD without parent (as qemu's
    # vpc): a base whose clusters are that size allocates the same.
    qemu-img create -q -f qcow2 -o cluster_size=2M "l$i.qcow2" $((16 * MB))
  else
    vdtool create -q -f vhd -b "$prev.vhd" "l$i.vhd"
    qemu-img create -q -f qcow2 -b "$prev.qcow2" -F qcow2 "l$i.qcow2"
  fi
  qemu-io -f qcow2 "${args[@]}" "l$i.qcow2" > /dev/null
  start_nbd -f vhd "l$i.vhd"
  qemu-io -f raw "${args[@]}" "$nbd_uri" > io.out || fail "qemu-io: $(cat io.out)"
  stop_nbd
  prev=l$i
done

start_nbd -A -r l2.vhd
nbdinfo --map=qemu:allocation-depth "$nbd_uri" > depth.vd
qemu-img compare -q -f raw -F qcow2 "$nbd_uri" l2.qcow2 ||
  fail "the VHD and qcow2 chains differ in content"
stop_nbd
qemu-nbd -r -A -f qcow2 --fork --pid-file="$VD_TMP/qn.pid" \
  -k "$VD_TMP/qn.sock" l2.qcow2
on_exit 'kill $(cat "$VD_TMP/qn.pid")'
wait_for_socket "$VD_TMP/qn.sock"
nbdinfo --map=qemu:allocation-depth "nbd+unix:///?socket=$VD_TMP/qn.sock" > depth.qemu
kill "$(cat "$VD_TMP/qn.pid")"
qemu-img map --output=json -f qcow2 l2.qcow2 > map.json

norm nbdinfo depth.vd > d.vd
norm nbdinfo depth.qemu > d.qemu
norm qemu-img map.json > d.map
grep -q " 3\$" d.vd || fail "no extent at depth 3: $(cat d.vd)"
grep -q " 0\$" d.vd || fail "no unallocated extent: $(cat d.vd)"
diff d.qemu d.vd > /dev/null ||
  fail "allocation depth differs from qemu-nbd -A: $(diff d.qemu d.vd)"
diff d.map d.vd > /dev/null ||
  fail "allocation depth differs from qemu-img map: $(diff d.map d.vd)"
# The context is offered only with -A.
start_nbd -r l2.vhd
nbdinfo --map=qemu:allocation-depth "$nbd_uri" > /dev/null 2>&1 &&
  fail "qemu:allocation-depth offered without -A"
stop_nbd
exit 0
