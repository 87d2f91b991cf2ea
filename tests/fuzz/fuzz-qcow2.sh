#!/usr/bin/env bash
# Run the qcow2 fuzz harness (standalone driver) over seed images made by
# qemu-img: versions 2 and 3, small clusters, compressed (zlib, zstd),
# extended L2, zero clusters, a backing file name and format, internal
# snapshots, a feature table with lazy refcounts.  VD_FUZZ_SEEDS=DIR keeps
# the seeds.
. "$top_srcdir/tests/functions.sh"
requires qemu-img qemu-io
seeds=${VD_FUZZ_SEEDS:-$VD_TMP/seeds}
mkdir -p "$seeds"
w() { qemu-io -f qcow2 "$@" >/dev/null; }
qemu-img create -q -f qcow2 -o cluster_size=512 "$seeds/c512.qcow2" 256k
w -c 'write -P 1 0 3k' -c 'write -z 8k 1k' -c 'write -P 2 100k 512' "$seeds/c512.qcow2"
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=1k "$seeds/v2.qcow2" 256k
w -c 'write -P 3 0 5k' -c 'write -P 4 200k 1k' "$seeds/v2.qcow2"
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k "$seeds/extl2.qcow2" 1M
w -c 'write -P 5 0 1k' -c 'write -z 2k 1k' -c 'write -P 6 40k 3k' "$seeds/extl2.qcow2"
qemu-img create -q -f raw "$VD_TMP/src.raw" 256k
qemu-io -f raw -c 'write -P 7 0 64k' -c 'write -P 8 128k 4k' "$VD_TMP/src.raw" >/dev/null
for ct in zlib zstd; do
  qemu-img convert -q -c -O qcow2 -o compression_type=$ct,cluster_size=4k \
    "$VD_TMP/src.raw" "$seeds/comp-$ct.qcow2"
done
qemu-img create -q -u -f qcow2 -o cluster_size=4k,lazy_refcounts=on \
  -b base.raw -F raw "$seeds/backing.qcow2" 256k
qemu-img create -q -f qcow2 -o cluster_size=4k "$seeds/snap.qcow2" 256k
w -c 'write -P 9 0 8k' "$seeds/snap.qcow2"
qemu-img snapshot -c one "$seeds/snap.qcow2"
w -c 'write -P 10 4k 8k' "$seeds/snap.qcow2"
qemu-img snapshot -c two "$seeds/snap.qcow2"

"$top_builddir/libtool" --mode=execute ${VD_VALGRIND:-} \
  "$top_builddir/tests/fuzz/fuzz-qcow2" "$seeds"/*.qcow2
