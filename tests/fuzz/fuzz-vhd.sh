#!/usr/bin/env bash
# Run the VHD fuzz harness (standalone driver) over seed images: fixed,
# dynamic and differencing ones from vdtool, and unusual layouts from the
# independent generator (tiny blocks, shuffled BAT, 511-byte footer,
# partial last block, locators first).  VD_FUZZ_SEEDS=DIR keeps the seeds.
. "$top_srcdir/tests/functions.sh"
requires /usr/bin/python3
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdgen/vhdgen.py" "$@"; }

seeds=${VD_FUZZ_SEEDS:-$VD_TMP/seeds}
mkdir -p "$seeds"
raw=$VD_TMP/seed.raw
truncate -s 1M "$raw"
pattern_bytes 8192 1 | dd of="$raw" bs=4K seek=3 conv=notrunc status=none
vdtool convert -O vhd -o block_size=512K "$raw" "$seeds/dynamic.vhd"
vdtool convert -O vhd -o subformat=fixed "$raw" "$seeds/fixed.vhd"
vdtool create -q -f vhd -b "$seeds/dynamic.vhd" "$VD_TMP/child.vhd"
cp "$VD_TMP/child.vhd" "$seeds/child.vhd"
w=(--write 0:1024:1 --write 70144:4096:2 --write 200704:512:3)
gen create "$seeds/tiny.vhd" --size 262144 --block-size 4096 --shuffle-bat "${w[@]}"
gen create "$seeds/odd.vhd" --size 263680 --block-size 8192 --footer511 \
  --partial-last --reserve 5 --align 4096 "${w[@]}"
gen create "$VD_TMP/p.vhd" --size 262144 --block-size 4096 "${w[@]}"
gen create "$seeds/diff.vhd" --type diff --parent "$VD_TMP/p.vhd" --size 262144 \
  --block-size 4096 --locators-first --write 4096:512:4

"$top_builddir/libtool" --mode=execute ${VD_VALGRIND:-} \
  "$top_builddir/tests/fuzz/fuzz-vhd" "$seeds"
