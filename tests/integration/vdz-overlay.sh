#!/usr/bin/env bash
# A differencing VHD over a vdz parent: `vdtool create -f vhd -b base.vdz`
# makes it (vhdiinfo sees the parent), qemu-io writes to it through
# vdisk-nbd, reads fall through to the compressed parent (qemu-img
# compare), the parent never changes, the chain flattens back into a vdz,
# and commit into the read-only parent is refused with one line.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io cmp

cd "$VD_TMP"
size=$((10 * 1024 * 1024))
truncate -s "$size" base.raw
pattern_bytes $((3 * 1024 * 1024)) 11 | dd of=base.raw bs=1M seek=2 conv=notrunc status=none
yes 'the golden image' | head -c $((2 * 1024 * 1024)) |
  dd of=base.raw bs=1M seek=7 conv=notrunc status=none
vdtool convert -O vdz base.raw base.vdz
cp base.vdz base.vdz.orig

vdtool create -f vhd -b base.vdz child.vhd >/dev/null
vdtool info --backing-chain child.vhd > info.txt
grep -q 'backing file: base.vdz' info.txt || fail "info: $(cat info.txt)"
grep -q 'backing file format: vdz' info.txt || fail "info: $(cat info.txt)"
if command -v vhdiinfo >/dev/null; then
  vhdiinfo child.vhd > vhdi.txt 2>&1 || fail "vhdiinfo failed: $(cat vhdi.txt)"
  grep -q 'Differential' vhdi.txt || fail "vhdiinfo: not differencing"
  grep -Eq 'Parent filename[[:space:]]*: base\.vdz' vhdi.txt ||
    fail "vhdiinfo: wrong parent: $(cat vhdi.txt)"
fi
vdtool compare base.raw child.vhd >/dev/null || fail "fresh overlay differs from its parent"

# Writes through NBD, over a compressed text cluster, random data and a hole.
start_nbd child.vhd
qemu-io -f raw -c 'write -P 0x5a 7340032 65536' -c 'write -P 0x33 2101248 4096' \
  -c 'write -P 0x77 9437184 512' "$nbd_uri" >/dev/null || fail "qemu-io write failed"
cp base.raw expect.raw
/usr/bin/python3 - <<'PY'
f = open("expect.raw", "r+b")
for off, val, n in ((7340032, 0x5a, 65536), (2101248, 0x33, 4096), (9437184, 0x77, 512)):
    f.seek(off); f.write(bytes([val]) * n)
PY
qemu-img compare -q -f raw -F raw expect.raw "$nbd_uri" || fail "reads through NBD differ"
stop_nbd

vdtool convert -O raw child.vhd out.raw
cmp expect.raw out.raw || fail "flattened overlay differs"
cmp base.vdz base.vdz.orig || fail "the vdz parent changed"
vdtool check base.vdz >/dev/null || fail "the vdz parent does not check clean"
vdtool check child.vhd >/dev/null || fail "the overlay does not check clean"

# The chain compresses again into a new vdz.
vdtool convert -O vdz child.vhd flat.vdz
vdtool compare expect.raw flat.vdz >/dev/null || fail "re-compressed chain differs"

expect_error 'base\.vdz: .*read-only' vdtool commit child.vhd
cmp base.vdz base.vdz.orig || fail "a refused commit changed the parent"
exit 0
