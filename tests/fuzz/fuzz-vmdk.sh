#!/usr/bin/env bash
# Run the VMDK fuzz harness (standalone driver) over seeds: sparse,
# stream-optimized (compressed grains), delta and COWD-free descriptor
# images from qemu-img, plus descriptor texts.  VD_FUZZ_SEEDS=DIR keeps
# the seeds.
. "$top_srcdir/tests/functions.sh"
requires qemu-img qemu-io
seeds=${VD_FUZZ_SEEDS:-$VD_TMP/seeds}
mkdir -p "$seeds"
cd "$seeds"
qemu-img create -q -f raw src.raw 2M
qemu-io -f raw -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 4k' src.raw >/dev/null
qemu-img convert -f raw -O vmdk src.raw sparse.vmdk
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.raw stream.vmdk
qemu-img create -q -f vmdk -o zeroed_grain=on -b sparse.vmdk -F vmdk delta.vmdk
qemu-io -f vmdk -c 'write -z 0 64k' -c 'write -P 0x33 128k 64k' delta.vmdk >/dev/null
qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentFlat flat.vmdk 1M
rm -f src.raw flat-f001.vmdk
printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="vmfs"\nRW 10 FLAT "a" 0\nRW 20 ZERO\nRW 30 VMFSSPARSE "b"\nRDONLY 4 VMFS "c"\nddb.x = "y"\n' > desc.txt
cd - >/dev/null
"$top_builddir/libtool" --mode=execute ${VD_VALGRIND:-} \
  "$top_builddir/tests/fuzz/fuzz-vmdk" "$seeds"/*.vmdk "$seeds"/desc.txt
