#!/usr/bin/env bash
# Run the VHDX fuzz harness (standalone driver) over seed images: fixed and
# dynamic ones from qemu-img, and from the independent writer 4K-sector,
# differencing and dirty-log ones.  VD_FUZZ_SEEDS=DIR keeps the seeds.
. "$top_srcdir/tests/functions.sh"
requires /usr/bin/python3 qemu-img qemu-io
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
M=$((1 << 20))

seeds=${VD_FUZZ_SEEDS:-$VD_TMP/seeds}
mkdir -p "$seeds"
qemu-img create -q -f vhdx -o block_size=1M,log_size=1M "$seeds/dynamic.vhdx" 8M
qemu-io -f vhdx -c 'write -P 0x11 0 64k' -c 'write -P 0x22 5M 4k' "$seeds/dynamic.vhdx" >/dev/null
gen create "$seeds/k4.vhdx" --size $((8 * M)) --lss 4096 --write 0:8192:1 --write $((7 * M)):4096:2
gen create "$VD_TMP/p.vhdx" --size $((8 * M)) --write 0:$((2 * M)):3
gen create "$seeds/diff.vhdx" --size $((8 * M)) --parent "$VD_TMP/p.vhdx" --write 4096:512:4
gen create "$seeds/dirty.vhdx" --size $((8 * M)) --write 0:4096:5
gen dirty "$seeds/dirty.vhdx" --write $((3 * M)):4096:6 --entries 1
gen create "$seeds/zeroed.vhdx" --size $((8 * M)) --write 0:4096:7
gen dirty "$seeds/zeroed.vhdx" --zero-block 0 --junk-before
rm -f "$seeds"/*.json

"$top_builddir/libtool" --mode=execute ${VD_VALGRIND:-} \
  "$top_builddir/tests/fuzz/fuzz-vhdx" "$seeds"/*.vhdx
