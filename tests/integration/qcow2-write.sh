#!/usr/bin/env bash
# qcow2 writes: vdtool create -f qcow2 (options, -b/-F) as qemu-img info
# reads it, convert -O qcow2 from raw, VHD and VHDX (qemu-img compare equal),
# writes through vdisk-nbd (qemu-io on the NBD URI) into images qemu made
# and ours, checked against the same writes on a raw copy and by
# `qemu-img check` after every batch: allocating, in-place, unaligned,
# write zeroes, discard, overwriting compressed clusters, partial-cluster
# copy-on-write from a backing file (against qemu-io doing the same on a
# copy), a chain qcow2 over VHD over raw; and what is refused.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io /usr/bin/python3 cmp
T=$VD_TMP
M=$((1 << 20))

qcheck() {   # IMAGE WHAT: qemu-img check clean (no leaks either)
  qemu-img check -U "$1" > "$T/chk.txt" 2>&1 || fail "$2: qemu-img check: $(cat "$T/chk.txt")"
}
# IMAGE WHAT: while vdisk-nbd serves IMAGE, after a flush: no corruption;
# leaks only of the clusters reserved for new data (qcow2-write.c,
# q_resv_fill: refcounts raised ahead, given back at close; at most 64 MiB,
# or 64 clusters when they are larger).
qcheck_live() {
  local rc=0 cl max
  qemu-img check -U "$1" > "$T/chk.txt" 2>&1 || rc=$?
  [ $rc = 0 ] || [ $rc = 3 ] || fail "$2: qemu-img check: $(cat "$T/chk.txt")"
  cl=$(qemu-img info -U --output=json "$1" | /usr/bin/python3 -c '
import json, sys; print(json.load(sys.stdin)["cluster-size"])')
  max=$(( (64 << 20) / cl )); [ $max -ge 64 ] || max=64
  [ $rc = 0 ] || [ "$(grep -c '^Leaked cluster' "$T/chk.txt")" -le $max ] ||
    fail "$2: more leaks than the reserve ($max): $(cat "$T/chk.txt")"
}
same() {     # IMAGE RAW WHAT: qemu reads IMAGE as RAW
  qemu-img convert -U -O raw "$1" "$T/same.raw" || fail "$3: qemu cannot read $1"
  cmp "$T/same.raw" "$2" || fail "$3: qemu reads $1 differently from the reference"
}
info_json() {  # the fields vdtool and qemu-img must agree on
  /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
keep = ("virtual-size", "cluster-size", "format", "format-specific",
        "backing-filename", "backing-filename-format", "dirty-flag")
print(json.dumps({k: j.get(k) for k in keep}, sort_keys=True))'
}

# ---- create ----
for o in "" "cluster_size=512" "cluster_size=2M" "compat=0.10" \
         "lazy_refcounts=on,cluster_size=4k" "refcount_bits=64" \
         "compression_type=zstd,extended_l2=off"; do
  rm -f "$T/n.qcow2"
  vdtool create -q -f qcow2 ${o:+-o "$o"} "$T/n.qcow2" 3G || fail "create -o '$o'"
  qcheck "$T/n.qcow2" "create -o '$o'"
  a=$(qemu-img info --output=json "$T/n.qcow2" | info_json)
  b=$(vdtool info --output=json "$T/n.qcow2" | info_json)
  [ "$a" = "$b" ] || fail "create -o '$o': qemu-img info $a, vdtool info $b"
done
for o in extended_l2=on compat=0.9 cluster_size=1000 lazy_refcounts=maybe \
         compat=0.10,lazy_refcounts=on preallocation=full bogus=1; do
  out=$(vdtool create -f qcow2 -o "$o" "$T/bad.qcow2" 1G 2>&1) &&
    fail "create -o $o was accepted"
  [ "$(wc -l <<<"$out")" = 1 ] || fail "create -o $o: not one line: $out"
done
vdtool create -f qcow2 -o help 2>&1 | grep -q 'cluster_size=' ||
  fail "create -o help does not list qcow2's options"

# ---- convert -O qcow2 from raw, VHD, VHDX ----
qemu-img create -q -f raw "$T/src.raw" 40M
qemu-io -f raw -c 'write -P 0x41 0 3M' -c 'write -P 0x42 10M 300k' \
  -c 'write -P 0x43 33333 7777' -c 'write -P 0x44 39M 1M' "$T/src.raw" >/dev/null
for f in raw vpc vhdx; do
  [ $f = raw ] || qemu-img convert -f raw -O $f "$T/src.raw" "$T/src.$f"
  for o in "" "cluster_size=4k,compat=0.10"; do
    rm -f "$T/cv.qcow2"
    vdtool convert -O qcow2 ${o:+-o "$o"} "$T/src.$f" "$T/cv.qcow2" ||
      fail "convert $f -o '$o'"
    qcheck "$T/cv.qcow2" "convert from $f -o '$o'"
    qemu-img compare -q "$T/src.raw" "$T/cv.qcow2" ||
      fail "convert from $f -o '$o': qemu-img compare differs"
  done
done
# Sparse: only what holds data is allocated (4 runs, at most ~5 MiB).
alloc=$(qemu-img map --output=json "$T/cv.qcow2" | /usr/bin/python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
[ "$alloc" -le $((6 * M)) ] || fail "convert -O qcow2 is not sparse ($alloc bytes of data)"

# ---- writes through vdisk-nbd ----
# The same qemu-io commands on the NBD export and on a raw reference.
ops=(
  "write -P 0x51 0 64k"          # whole cluster
  "write -P 0x52 70000 5000"     # unaligned, inside one cluster
  "write -P 0x53 1M 1M"          # allocating run
  "write -P 0x54 1048000 100000" # over allocated and new clusters
  "write -z 1M 128k"             # zero clusters
  "write -z 2000000 300000"      # unaligned zeroing
  "discard 0 64k"
  "write -P 0x55 0 512"          # after discard
  "write -P 0x56 38M 2M"         # to the end of the disk
  "write -P 0x57 12M 4k"
)
nbd_writes() {   # IMAGE REF WHAT [vdisk-nbd options]
  local img=$1 ref=$2 what=$3; shift 3
  start_nbd "$@" "$img"
  for op in "${ops[@]}"; do
    qemu-io -f raw -c "$op" -c flush "$nbd_uri" >/dev/null 2>"$T/io.err" ||
      fail "$what: qemu-io '$op' via NBD: $(cat "$T/io.err")"
    grep -qi 'fail\|error' "$T/io.err" && fail "$what: '$op': $(cat "$T/io.err")"
    qemu-io -f raw -c "$op" "$ref" >/dev/null
    qcheck_live "$img" "$what: after '$op'"
  done
  stop_nbd
  qcheck "$img" "$what: after the stop"
  same "$img" "$ref" "$what"
}
cp "$T/src.raw" "$T/ref.raw"
nbd_writes "$T/cv.qcow2" "$T/ref.raw" "ours (4k clusters, v2)" -f qcow2
# qemu's own images: plain, compressed (overwrites allocate, the old
# compressed cluster's refcount drops), lazy refcounts.
for o in "" "-c" "-o lazy_refcounts=on,cluster_size=16k"; do
  rm -f "$T/q.qcow2"
  qemu-img convert -f raw -O qcow2 $o "$T/src.raw" "$T/q.qcow2"
  cp "$T/src.raw" "$T/ref.raw"
  nbd_writes "$T/q.qcow2" "$T/ref.raw" "qemu's ($o)" -f qcow2
done

# ---- copy-on-write from a backing file, against qemu-io on a copy ----
vdtool create -q -f qcow2 -o cluster_size=64k -b src.raw -F raw "$T/top.qcow2"
qemu-img info --output=json "$T/top.qcow2" | grep -q '"backing-filename-format": "raw"' ||
  fail "the backing format is not recorded"
a=$(qemu-img info --output=json "$T/top.qcow2" | info_json)
b=$(vdtool info --output=json "$T/top.qcow2" | info_json)
[ "$a" = "$b" ] || fail "create -b: qemu-img info $a, vdtool info $b"
# info opens no parent (qemu-img info's BDRV_O_NO_BACKING): with the backing
# file gone both still show the image and the name it records.
mv "$T/src.raw" "$T/src.away"
b=$(vdtool info --output=json "$T/top.qcow2" | info_json) ||
  fail "info without the backing file"
[ "$a" = "$b" ] || fail "backing file gone: qemu-img info $a, vdtool info $b"
expect_error 'src\.raw' vdtool info --backing-chain "$T/top.qcow2"
mv "$T/src.away" "$T/src.raw"
cp "$T/top.qcow2" "$T/qtop.qcow2"
start_nbd -f qcow2 "$T/top.qcow2"
for op in "write -P 0x61 100 200" "write -P 0x62 10M 8k" "write -P 0x63 3000000 70000" \
          "write -z 9M 64k" "write -z 33000 1000" "discard 10M 64k"; do
  qemu-io -f raw -c "$op" -c flush "$nbd_uri" >/dev/null || fail "COW: '$op' via NBD"
  qemu-io -c "$op" "$T/qtop.qcow2" >/dev/null
  qcheck_live "$T/top.qcow2" "COW: after '$op'"
done
stop_nbd
qcheck "$T/top.qcow2" "COW: after the server stopped"
# discard may drop to the backing file in qemu and read zeros in vdisk:
# compare everything but that cluster.
qemu-img convert -O raw "$T/top.qcow2" "$T/a.raw"
qemu-img convert -O raw "$T/qtop.qcow2" "$T/b.raw"
dd if=/dev/zero of="$T/a.raw" bs=64k seek=160 count=1 conv=notrunc status=none
dd if=/dev/zero of="$T/b.raw" bs=64k seek=160 count=1 conv=notrunc status=none
cmp "$T/a.raw" "$T/b.raw" || fail "COW over a backing file differs from qemu's"

# ---- a chain: qcow2 over VHD over raw ----
# qemu reads no differencing VHD: the reference is the raw file with the
# same writes; qemu-img checks the qcow2 on a copy without its backing.
vdtool create -q -f vpc -F raw -b src.raw "$T/mid.vhd" || fail "create the VHD child"
vdtool create -q -f qcow2 -b mid.vhd -F vpc "$T/chain.qcow2" || fail "create qcow2 over VHD"
qemu-img info "$T/chain.qcow2" |
  grep -q 'backing file format: vpc' || fail "qcow2 over VHD: backing format not recorded"
cp "$T/src.raw" "$T/chain.raw"
start_nbd -f qcow2 --backing "$T/mid.vhd" --backing-format vpc "$T/chain.qcow2"
for op in "write -P 0x72 5100000 3000" "write -P 0x73 20M 100k" "write -z 5M 64k"; do
  qemu-io -f raw -c "$op" -c flush "$nbd_uri" >/dev/null || fail "chain: '$op' via NBD"
  qemu-io -f raw -c "$op" "$T/chain.raw" >/dev/null
  cp "$T/chain.qcow2" "$T/nob.qcow2"
  qemu-img rebase -u -b '' "$T/nob.qcow2"
  qcheck_live "$T/nob.qcow2" "chain: after '$op'"
done
stop_nbd
cp "$T/chain.qcow2" "$T/nob.qcow2"
qemu-img rebase -u -b '' "$T/nob.qcow2"
qcheck "$T/nob.qcow2" "chain: after the server stopped"
vdtool convert --backing "$T/mid.vhd" --backing-format vpc -O raw \
  "$T/chain.qcow2" "$T/chain.out" || fail "chain: read back"
cmp "$T/chain.out" "$T/chain.raw" || fail "qcow2 over VHD over raw reads differently"

# ---- refused: internal snapshots stay read-only, with the reason ----
qemu-img create -q -f qcow2 "$T/snap.qcow2" 1M
qemu-img snapshot -c s1 "$T/snap.qcow2"
sum=$(md5sum < "$T/snap.qcow2")
head -c 1M /dev/urandom > "$T/small.raw"
out=$(vdtool convert -n -f raw -O qcow2 "$T/small.raw" "$T/snap.qcow2" 2>&1) &&
  fail "a write into an image with snapshots was accepted"
grep -q 'internal snapshots is not supported' <<<"$out" ||
  fail "the refusal does not say why: $out"
[ "$(wc -l <<<"$out")" = 1 ] || fail "the refusal is not one line: $out"
start_nbd -f qcow2 "$T/snap.qcow2"
out=$(qemu-io -f raw -c 'write -P 0x55 0 4k' "$nbd_uri" 2>&1) || true
grep -qi 'permission denied\|read-only' <<<"$out" ||
  fail "a write to a qcow2 export with snapshots was not refused: $out"
stop_nbd
[ "$(md5sum < "$T/snap.qcow2")" = "$sum" ] || fail "the refused image changed"
echo "qcow2-write: ok"
