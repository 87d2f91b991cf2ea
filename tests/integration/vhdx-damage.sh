#!/usr/bin/env bash
# Damaged VHDX images: every header, region table, metadata, BAT and log
# corruption gives one line naming the structure; a damaged copy of a
# header or region table is survived through the other copy; nothing is
# written to a refused image.  `vdtool check` reports each of them with
# one ERROR line naming the structure and exits 2 (qemu-img's code)
# without writing; `check -r all` puts a damaged copy back.
. "$top_srcdir/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
cd "$VD_TMP"
M=$((1 << 20)); K=1024

qemu-img create -q -f vhdx -o block_size=1M good.vhdx 64M
qemu-io -f vhdx -c 'write -P 0x61 0 1M' -c 'write -P 0x62 9M 4k' good.vhdx >/dev/null
qemu-img convert -f vhdx -O raw good.vhdx good.raw

poke() {   # FILE OFFSET BYTES(printf format)
  printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
checked() {   # REGEX: check exits 2 with ERROR lines matching, writes nothing
  local sum rc=0
  sum=$(md5sum < bad.vhdx)
  vdtool check -f vhdx bad.vhdx > chk.out 2> chk.err || rc=$?
  [ $rc = 2 ] || fail "check exit $rc, not 2, for /$1/: $(cat chk.err)"
  [ "$(grep -c '^ERROR ' chk.err)" -ge 1 ] && ! grep -v '^ERROR ' chk.err | grep -q . ||
    fail "check: not only ERROR lines: $(cat chk.err)"
  grep -Eq "^ERROR bad.vhdx: .*$1" chk.err || fail "check does not say /$1/: $(cat chk.err)"
  [ "$(md5sum < bad.vhdx)" = "$sum" ] || fail "check without -r wrote"
}
refused() {   # REGEX: a copy of good.vhdx, damaged by the caller, is refused
  local sum
  sum=$(md5sum < bad.vhdx)
  expect_error "$1" vdtool info -f vhdx bad.vhdx
  expect_error "$1" vdtool convert -f vhdx -O raw bad.vhdx out.raw
  [ "$(md5sum < bad.vhdx)" = "$sum" ] || fail "a refused image was written"
  checked "$1"
  [ "$(grep -c '^ERROR ' chk.err)" = 1 ] || fail "check: more than one line: $(cat chk.err)"
}
survives() {   # WHAT REGEX: the damaged copy still reads as the original;
               # check reports it, -r all repairs it
  vdtool convert -f vhdx -O raw bad.vhdx out.raw || fail "$1: not survived"
  cmp good.raw out.raw || fail "$1: reads differently"
  checked "$2"
  vdtool check -q -r all bad.vhdx || fail "$1: check -r all exit $?"
  vdtool check -q bad.vhdx || fail "$1: check after -r all exit $?"
  vdtool compare -F raw bad.vhdx good.raw >/dev/null || fail "$1: repair changed the content"
  qemu-img check -f vhdx bad.vhdx >/dev/null || fail "$1: qemu-img check after the repair"
}
vdtool check good.vhdx >/dev/null || fail "check of a good image: exit $?"

cp good.vhdx bad.vhdx; poke bad.vhdx 0 'vhdy'
refused 'file type identifier'
# Header: one damaged copy is survived (signature, then checksum); both refused.
cp good.vhdx bad.vhdx; poke bad.vhdx $((64 * K)) 'xxxx'
survives "header 1 signature" "header 1: bad signature"
cp good.vhdx bad.vhdx; poke bad.vhdx $((128 * K + 200)) '\x01'
survives "header 2 checksum" "header 2: checksum mismatch"
cp good.vhdx bad.vhdx; poke bad.vhdx $((64 * K + 100)) '\x01'; poke bad.vhdx $((128 * K)) 'xxxx'
refused 'no valid header \(header 1: checksum mismatch; header 2: bad signature\)'
# Region table: one copy survived, both refused.
cp good.vhdx bad.vhdx; poke bad.vhdx $((192 * K + 40)) '\x07'
survives "region table 1" "region table 1: checksum mismatch"
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
# A log entry's checksum with the log clean (no LogGuid): not used, fine;
# with the LogGuid set it is the sequence above.
# Overlapping blocks: block 9 made to point at block 0's space.
cp good.vhdx bad.vhdx
dd if=good.vhdx of=bad.vhdx bs=1 skip=$boff seek=$((boff + 8 * 9)) count=8 conv=notrunc status=none
checked 'BAT entry 9 \(payload block\) at offset [0-9]+ overlaps BAT entry 0 \(payload block\)'
# -r all gives block 9 a copy of its own: both read what they read, then
# take writes apart; qemu-img checks the repaired image clean.
vdtool convert -f vhdx -O raw bad.vhdx before.raw
vdtool check -q -r all bad.vhdx || fail "overlap: check -r all exit $?"
vdtool check -q bad.vhdx || fail "overlap: check after -r all exit $?"
qemu-img check -q -f vhdx bad.vhdx || fail "overlap: qemu-img check after -r all"
qemu-img compare -q -f vhdx -F raw bad.vhdx before.raw || fail "overlap: -r all changed what the disk reads"
bs=$(vdtool info --output=json bad.vhdx | sed -n 's/.*"cluster-size": \([0-9]*\).*/\1/p')
qemu-io -f vhdx -c "write -P 0x5c $((9 * bs)) 4k" bad.vhdx >/dev/null
qemu-io -f raw -c "write -P 0x5c $((9 * bs)) 4k" before.raw >/dev/null
qemu-img compare -q -f vhdx -F raw bad.vhdx before.raw || fail "overlap: blocks 0 and 9 still share space after -r all"
# A block over the BAT region.
cp good.vhdx bad.vhdx; poke bad.vhdx $((boff + 8 * 9)) "\\x06\\x00\\x$(printf %x $((boff >> 20 << 4)))"
checked 'overlaps the BAT region|the BAT region at offset [0-9]+ overlaps'
# Leaks: blocks appended after the last structure; -r leaks cuts them.
cp good.vhdx bad.vhdx; head -c $((3 * M)) /dev/urandom >> bad.vhdx
rc=0; vdtool check bad.vhdx > chk.out 2> chk.err || rc=$?
[ $rc = 3 ] || fail "leaks: check exit $rc, not 3: $(cat chk.err)"
grep -q '^ERROR bad.vhdx: leaked space' chk.err || fail "leaks: no ERROR line"
vdtool check -q -r leaks bad.vhdx || fail "check -r leaks exit $?"
vdtool check -q bad.vhdx || fail "after -r leaks: exit $?"
[ "$(stat -c %s bad.vhdx)" = "$(stat -c %s good.vhdx)" ] || fail "-r leaks did not cut the file"
# A dirty log is not damage: check reads it replayed; -r replays it.
cp g.vhdx d.vhdx
vdtool check d.vhdx >/dev/null || fail "dirty log: check exit $?"
vdtool check -q -r all d.vhdx || fail "dirty log: check -r exit $?"
vdtool info d.vhdx | grep -q '^ *log: clean$' || fail "dirty log: check -r did not replay"
exit 0
