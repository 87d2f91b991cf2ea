#!/usr/bin/env bash
# VHD <-> VHDX conversion both ways with vdtool convert (sparse-aware,
# -p), judged by qemu-img compare against the raw source and by the
# allocation the outputs keep; a differencing VHDX converts to a flat VHD
# that qemu reads as the chain; a VHD chain converts to a VHDX chain.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
cd "$VD_TMP"
M=$((1 << 20))

size=$((40 * M))
truncate -s $size src.raw
qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x22 9M 3M' \
  -c "write -P 0x33 $((size - 4096)) 4096" src.raw >/dev/null
pattern_bytes 700000 4 | dd of=src.raw bs=1M seek=20 conv=notrunc status=none
qemu-img convert -f raw -O vpc -o subformat=dynamic src.raw q.vhd

# VHD (qemu-made) -> VHDX -> VHD, with progress.
vdtool convert -p -O vhdx -o block_size=1M q.vhd a.vhdx > prog.txt
grep -q '100' prog.txt || fail "-p: no progress shown"
qemu-img compare -f vhdx -F raw a.vhdx src.raw >/dev/null || fail "VHD -> VHDX: qemu-img compare"
qemu-img check -f vhdx a.vhdx >/dev/null || fail "VHD -> VHDX: qemu-img check"
# Sparse: only the blocks with data (0, 9-11, 20, 39).
vdtool info a.vhdx | grep -q '^ *allocated-blocks: 6$' || { vdtool info a.vhdx; fail "VHD -> VHDX: not sparse"; }
vdtool convert -O vpc a.vhdx b.vhd
qemu-img compare -f vpc -F raw b.vhd src.raw >/dev/null || fail "VHDX -> VHD: qemu-img compare"
vdtool check -q b.vhd || fail "VHDX -> VHD: check"
[ "$(du -k b.vhd | cut -f1)" -lt $((size / 1024 / 2)) ] || fail "VHDX -> VHD: not sparse"
# Fixed both ways, and a 4K-sector VHDX from a VHD.
vdtool convert -O vpc -o subformat=fixed a.vhdx f.vhd
qemu-img compare -f vpc -F raw f.vhd src.raw >/dev/null || fail "VHDX -> fixed VHD"
vdtool convert -O vhdx -o subformat=fixed f.vhd f.vhdx
qemu-img compare -f vhdx -F raw f.vhdx src.raw >/dev/null || fail "fixed VHD -> fixed VHDX"
# (qemu's VHD sizes follow the CHS geometry, not a multiple of 4 KiB:
# a VHD vdtool made from the raw source keeps the size.)
vdtool convert -O vpc src.raw v.vhd
vdtool convert -O vhdx -o logical_sector_size=4096 v.vhd k.vhdx
vdtool compare -F raw k.vhdx src.raw >/dev/null || fail "VHD -> 4K VHDX"
gen read k.vhdx g.raw && cmp g.raw src.raw || fail "VHD -> 4K VHDX: independent reader"
# qemu-made VHDX -> VHD.
qemu-img convert -f raw -O vhdx src.raw q.vhdx
vdtool convert -O vpc q.vhdx c.vhd
qemu-img compare -f vpc -F raw c.vhd src.raw >/dev/null || fail "qemu's VHDX -> VHD"

# A differencing VHDX chain flattened into one VHD.
vdtool create -q -f vhdx -b a.vhdx top.vhdx
cp src.raw model.raw
vd_nbd_io top.vhdx model.raw 'write -P 0x44 4096 512' 'write -P 0x55 30M 1M'
vdtool convert -O vpc top.vhdx flat.vhd
qemu-img compare -f vpc -F raw flat.vhd model.raw >/dev/null || fail "differencing VHDX -> VHD"

# A VHD chain becomes a VHDX chain layer by layer (a VHDX takes only a
# VHDX parent, [MS-VHDX] 2.6.2.6): the base converted, then the child
# with -B onto the new base.  The new child holds only its own blocks,
# and the independent reader follows the new chain to the same bytes.
vdtool create -q -f vpc -b q.vhd -F vpc kid.vhd
cp src.raw kmodel.raw
vd_nbd_io kid.vhd kmodel.raw 'write -P 0x66 8M 2M' 'write -P 0x77 35M 4096'
vdtool convert -O vhdx -o block_size=1M q.vhd qb.vhdx
vdtool convert -O vhdx -o block_size=1M -B qb.vhdx -F vhdx kid.vhd kid.vhdx ||
  fail "VHD child -> VHDX child over the converted base"
gen read kid.vhdx kid.raw || fail "VHD chain -> VHDX chain: the independent reader refused it"
# (the child VHD's size is its geometry's, the extra bytes read as zeros)
truncate -s "$(stat -c %s kid.raw)" kmodel.raw
cmp kid.raw kmodel.raw ||
  fail "VHD chain -> VHDX chain: the independent reader reads other bytes"
vdtool info kid.vhdx | grep -q '^ *allocated-blocks: 3$' ||
  { vdtool info kid.vhdx; fail "VHD chain -> VHDX chain: the child holds more than its own blocks"; }
exit 0
