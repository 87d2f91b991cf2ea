#!/usr/bin/env bash
# qcow2 images served by vdisk-nbd (compressed zstd, extended L2 over a
# qcow2 backing file): nbdcopy reads them byte-exact against qemu-img's
# raw conversion, nbdinfo --map shows the holes, qemu-io reads unaligned
# ranges, and writes to the extended-L2 image are refused (vdisk does not
# write subclusters: it serves that image read-only, saying why).
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io nbdinfo nbdcopy cmp
T=$VD_TMP
M=$((1 << 20))

qemu-img create -q -f raw "$T/src.raw" 16M
qemu-io -f raw -c 'write -P 0x41 0 2M' -c 'write -P 0x42 9M 300k' "$T/src.raw" >/dev/null
qemu-img convert -q -c -f raw -O qcow2 -o compression_type=zstd,cluster_size=16k \
  "$T/src.raw" "$T/z.qcow2"
qemu-img create -q -f qcow2 -o extended_l2=on -b z.qcow2 -F qcow2 "$T/top.qcow2"
qemu-io -c 'write -P 0x43 1M 4k' -c 'write -z 12k 8k' -c 'write -P 0x44 14M 64k' \
  "$T/top.qcow2" >/dev/null
qemu-img convert -O raw "$T/z.qcow2" "$T/z.raw"
qemu-img convert -O raw "$T/top.qcow2" "$T/top.raw"

start_nbd -r -f qcow2 "z=$T/z.qcow2" "top=$T/top.qcow2"
for e in z top; do
  nbdcopy "$(nbd_uri_for $e)" "$T/$e.copy" || fail "nbdcopy $e"
  cmp "$T/$e.copy" "$T/$e.raw" || fail "$e: nbdcopy differs from qemu-img's read"
done
# Holes: nothing was ever written between 3M and 9M.
nbdinfo --map "$(nbd_uri_for z)" |
  awk -v a=$((3 * M)) -v b=$((9 * M)) '$1 < b && $1 + $2 > a && $3 != 3 {bad=1} END {exit bad}' ||
  fail "the never-written range is not a hole"
out=$(qemu-io -f raw -r -c 'read -P 0x43 1M 4k' -c 'read -P 0 12k 8k' \
  -c 'read -P 0x41 32345 1000' -c 'read -P 0x44 14M 64k' "$(nbd_uri_for top)" 2>&1)
if grep -q "fail\|error" <<<"$out"; then fail "qemu-io through NBD: $out"; fi
stop_nbd

# Served "writable": the export is read-only (extended L2 is not
# written), and a write fails without changing the image.
sum=$(md5sum < "$T/top.qcow2")
start_nbd -f qcow2 "top=$T/top.qcow2"
nbdinfo --json "$(nbd_uri_for top)" | grep -q '"is_read_only": true' ||
  fail "the qcow2 export is not read-only"
out=$(qemu-io -f raw -c 'write -P 0x55 0 4k' "$(nbd_uri_for top)" 2>&1) || true
grep -qi 'permission denied\|read-only' <<<"$out" ||
  fail "a write to a qcow2 export was not refused: $out"
stop_nbd
[ "$(md5sum < "$T/top.qcow2")" = "$sum" ] || fail "the image changed"
echo "qcow2-nbd: ok"
