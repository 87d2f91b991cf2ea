#!/usr/bin/env bash
# Damaged VHDX images: every header, region table, metadata, BAT and log
# corruption gives one line naming the structure; a damaged copy of a
# header or region table is survived through the other copy; nothing is
# written to a refused image.
. "$top_srcdir/tests/functions.sh"
requires qemu-img /usr/bin/python3
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
cd "$VD_TMP"
M=$((1 << 20)); K=1024

qemu-img create -q -f vhdx -o block_size=1M good.vhdx 64M
qemu-io -f vhdx -c 'write -P 0x61 0 1M' -c 'write -P 0x62 9M 4k' good.vhdx >/dev/null
qemu-img convert -f vhdx -O raw good.vhdx good.raw

poke() {   # FILE OFFSET BYTES(printf format)
  printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
refused() {   # REGEX: a copy of good.vhdx, damaged by the caller, is refused
  local sum
  sum=$(md5sum < bad.vhdx)
  expect_error "$1" vdtool info -f vhdx bad.vhdx
  expect_error "$1" vdtool convert -f vhdx -O raw bad.vhdx out.raw
  [ "$(md5sum < bad.vhdx)" = "$sum" ] || fail "a refused image was written"
}
survives() {   # WHAT: the damaged copy still reads as the original
  vdtool convert -f vhdx -O raw bad.vhdx out.raw || fail "$1: not survived"
  cmp good.raw out.raw || fail "$1: reads differently"
}

cp good.vhdx bad.vhdx; poke bad.vhdx 0 'vhdy'
refused 'file type identifier'
# Header: one damaged copy is survived (signature, then checksum); both refused.
cp good.vhdx bad.vhdx; poke bad.vhdx $((64 * K)) 'xxxx'
survives "header 1 signature"
cp good.vhdx bad.vhdx; poke bad.vhdx $((128 * K + 200)) '\x01'
survives "header 2 checksum"
cp good.vhdx bad.vhdx; poke bad.vhdx $((64 * K + 100)) '\x01'; poke bad.vhdx $((128 * K)) 'xxxx'
refused 'no valid header \(header 1: checksum mismatch; header 2: bad signature\)'
# Region table: one copy survived, both refused.
cp good.vhdx bad.vhdx; poke bad.vhdx $((192 * K + 40)) '\x07'
survives "region table 1"
cp good.vhdx bad.vhdx; poke bad.vhdx $((192 * K + 40)) '\x07'; poke bad.vhdx $((256 * K)) 'xxxx'
refused 'no valid region table \(region table 1: checksum mismatch; region table 2: bad signature\)'
# Metadata region: its table's signature.
meta=$(/usr/bin/python3 - <<'PY'
import struct, uuid
f = open("good.vhdx", "rb"); f.seek(192 * 1024); rt = f.read(65536)
META = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
BAT = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
for i in range(struct.unpack_from("<I", rt, 8)[0]):
    g, off, ln, _ = struct.unpack_from("<16sQII", rt, 16 + 32 * i)
    if g == META: m = off
    if g == BAT: b = off
print(m, b)
PY
)
set -- $meta; moff=$1; boff=$2
cp good.vhdx bad.vhdx; poke bad.vhdx $moff 'METADATA'
refused 'metadata: bad signature'
# The block size item (the first 4 bytes of the file parameters item).
fp=$(/usr/bin/python3 - "$moff" <<'PY'
import struct, sys, uuid
moff = int(sys.argv[1]); f = open("good.vhdx", "rb"); f.seek(moff); t = f.read(65536)
FP = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
for i in range(struct.unpack_from("<H", t, 10)[0]):
    g, off, ln, fl = struct.unpack_from("<16sIII", t, 32 + 32 * i)
    if g == FP: print(moff + off)
PY
)
cp good.vhdx bad.vhdx; poke bad.vhdx $fp '\x00\x00\x30\x00'
refused 'metadata: block size 3145728'
# An unknown required metadata item.
cp good.vhdx bad.vhdx; poke bad.vhdx $((moff + 32)) '\xee'; poke bad.vhdx $((moff + 32 + 24)) '\x04'
refused 'metadata: unknown required item'
# BAT: a reserved state; an offset past the end of the file; a partially
# present block in an image without a parent.
cp good.vhdx bad.vhdx; poke bad.vhdx $boff '\x04'
refused 'BAT entry 0 \(block 0\) has reserved state 4'
cp good.vhdx bad.vhdx; poke bad.vhdx $((boff + 8 * 9)) '\x06\x00\xf0\xff\x0f'
refused 'BAT entry 9 \(block 9\) points outside the file'
cp good.vhdx bad.vhdx; poke bad.vhdx $boff '\x07'
refused 'BAT entry 0 \(block 0\) is partially present in an image without a parent'
# A BAT region that cannot hold the disk's entries (region length 0 -> not
# aligned is caught earlier; here: 1 MiB for a disk needing more entries is
# made by growing the virtual size item).
sz=$(/usr/bin/python3 - "$moff" <<'PY'
import struct, sys, uuid
moff = int(sys.argv[1]); f = open("good.vhdx", "rb"); f.seek(moff); t = f.read(65536)
S = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
for i in range(struct.unpack_from("<H", t, 10)[0]):
    g, off, ln, fl = struct.unpack_from("<16sIII", t, 32 + 32 * i)
    if g == S: print(moff + off)
PY
)
cp good.vhdx bad.vhdx; poke bad.vhdx $sz '\x00\x00\x00\x00\x00\x01\x00\x00'
refused 'BAT region of 1048576 bytes holds fewer than the [0-9]+ entries'
# Log: a header that names a log with no valid entry.
gen create g.vhdx --size $((64 * M)) --write 0:4096:1
gen dirty g.vhdx --write $((8 * M)):4096:2
cp g.vhdx bad.vhdx; poke bad.vhdx $((M + 4096 + 100)) '\x55'
refused 'log: no valid log sequence'
exit 0
