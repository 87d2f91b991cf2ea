#!/usr/bin/env bash
# Run the vdz fuzz harness (standalone driver) over seed images made with
# vdtool: text, random and zero clusters, small and default clusters,
# LZ4HC, an empty image.  VD_FUZZ_SEEDS=DIR keeps the seeds in DIR.
. "$top_srcdir/tests/functions.sh"

seeds=${VD_FUZZ_SEEDS:-$VD_TMP/seeds}
mkdir -p "$seeds"
raw=$VD_TMP/seed.raw
truncate -s 40K "$raw"
yes 'fuzz me' | head -c 9000 | dd of="$raw" conv=notrunc status=none
pattern_bytes 4096 1 | dd of="$raw" bs=4K seek=5 conv=notrunc status=none
vdtool convert -O vdz -o cluster_size=4K "$raw" "$seeds/small.vdz"
vdtool convert -O vdz -o cluster_size=4K,level=9 "$raw" "$seeds/hc.vdz"
vdtool convert -O vdz "$raw" "$seeds/default.vdz"
truncate -s 0 "$VD_TMP/empty.raw"
vdtool convert -O vdz "$VD_TMP/empty.raw" "$seeds/empty.vdz"

"$top_builddir/libtool" --mode=execute ${VD_VALGRIND:-} \
  "$top_builddir/tests/fuzz/fuzz-vdz" "$seeds"
