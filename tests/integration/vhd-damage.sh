#!/usr/bin/env bash
# Damaged VHDs: info and convert fail with one line naming the problem,
# check exits 2, nothing crashes, and the file stays byte-for-byte the same
# unless -r was given; -r all repairs what can be repaired.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img /usr/bin/python3 sha256sum
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdgen/vhdgen.py" "$@"; }
cd "$VD_TMP"
MB=$((1024*1024))

# poke FILE OFFSET STRUCTFMT VALUE [footer|header]: write a big-endian
# field, optionally fixing the footer (at OFFSET's 512-byte record) or
# dynamic header (at 512) checksum so only the field itself is wrong.
poke() {
  /usr/bin/python3 - "$@" <<'PY'
import struct, sys
path, off, fmt, val = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4], 0)
fix = sys.argv[5] if len(sys.argv) > 5 else ""
with open(path, "r+b") as f:
    f.seek(off); f.write(struct.pack(">" + fmt, val))
    if fix:
        base, size, csum = (off - off % 512, 512, 64) if fix == "footer" else (512, 1024, 36)
        f.seek(base); b = bytearray(f.read(size))
        b[csum:csum + 4] = b"\0\0\0\0"
        s = (~sum(b)) & 0xFFFFFFFF
        f.seek(base + csum); f.write(struct.pack(">I", s))
PY
}

vdtool create -q src.raw $((8*MB))
pattern_bytes $((3*MB)) 5 | dd of=src.raw conv=notrunc status=none
vdtool convert -O vhd -o block_size=512K src.raw good.vhd
fsz=$(stat -c %s good.vhd)
bat=$((512 + 1024))

# damaged NAME REGEX: the checks every damaged image must pass.
damaged() {
  local img=$1 re=$2 sum rc=0
  sum=$(sha256sum "$img")
  expect_error "$re" vdtool info --backing-chain "$img"
  expect_error "$re" vdtool convert -O raw "$img" out.raw
  vdtool check "$img" > check.txt 2>&1 || rc=$?
  [ $rc = 2 ] || fail "$img: check exit $rc, expected 2: $(cat check.txt)"
  vdtool check --output=json "$img" > check.json 2>/dev/null || true
  grep -q '"corruptions": [1-9]' check.json || fail "$img: no corruptions in JSON"
  [ "$(sha256sum "$img")" = "$sum" ] || fail "$img changed without -r"
}
# repaired NAME: check -r all fixes it and the data of intact blocks stays.
repaired() {
  local rc=0
  vdtool check -r all "$1" >/dev/null 2>&1 || rc=$?
  [ $rc = 0 ] || fail "$1: check -r all exit $rc"
  vdtool check -q "$1" || fail "$1: still damaged after -r all"
  vdtool info "$1" >/dev/null
}

cp good.vhd t.vhd; truncate -s $((fsz - MB)) t.vhd
damaged t.vhd 'BAT entry [0-9]+ points past end of file'
repaired t.vhd

cp good.vhd t.vhd; truncate -s 300 t.vhd
damaged t.vhd 'file too short|no VHD footer'

cp good.vhd t.vhd; poke t.vhd 48 B 0x55
damaged t.vhd 'footer at offset 0.*footer checksum mismatch'
repaired t.vhd
vdtool compare -F raw t.vhd src.raw >/dev/null || fail "head footer repair lost data"

cp good.vhd t.vhd; poke t.vhd $((fsz - 512 + 48)) B 0x55
damaged t.vhd 'footer at end of file.*footer checksum mismatch'
repaired t.vhd
vdtool compare -F raw t.vhd src.raw >/dev/null || fail "tail footer repair lost data"

# Both copies sound but different (a management command cut short between
# them; docs/vhd.md): not damage.  The copy at offset 0 is the newer: it
# gives the size, for qemu too; check counts the stale tail as a leak and
# -r leaks (or a read-write open) rewrites it.
cp good.vhd t.vhd
poke t.vhd $((fsz - 512 + 40)) Q $((4 * MB)) footer   # original size
poke t.vhd $((fsz - 512 + 48)) Q $((4 * MB)) footer   # current size
vdtool info t.vhd | grep -q "virtual size: 8 MiB" || fail "stale tail: not the size of the copy at offset 0"
[ "$(qemu-img info -f vpc --output=json t.vhd | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')" -ge $((8 * MB - 512 * 1024)) ] ||
  fail "stale tail: qemu sees another size"
rc=0; vdtool check t.vhd > check.txt 2>&1 || rc=$?
[ $rc = 3 ] || fail "stale tail: check exit $rc, expected 3 (leaks): $(cat check.txt)"
grep -q 'older than the one at offset 0' check.txt || fail "stale tail: check says: $(cat check.txt)"
vdtool check -q -r leaks t.vhd || fail "stale tail: check -r leaks failed"
vdtool check -q t.vhd || fail "stale tail: not clean after -r leaks"
cmp -s good.vhd t.vhd || fail "stale tail: the repair did not restore the image"
cp good.vhd t.vhd
poke t.vhd $((fsz - 512 + 48)) Q $((4 * MB)) footer
vd_nbd_io t.vhd src.raw 'read -P 0 7M 4k' >/dev/null || fail "stale tail: a read-write open failed"
cmp -s good.vhd t.vhd || fail "stale tail: a read-write open did not rewrite it"

# A sound tail copy that is a fixed VHD's footer behind a dynamic one at
# offset 0 is not a copy cut short (no command writes one over the
# other): damage, not a stale tail; -r all rewrites it from offset 0.
cp good.vhd t.vhd; poke t.vhd $((fsz - 512 + 60)) I 2 footer
damaged t.vhd "the footer at offset 0 is not a fixed VHD's, the one at the end of file is"
repaired t.vhd
cmp -s good.vhd t.vhd || fail "fixed tail: -r all did not restore the copy at offset 0"

cp good.vhd t.vhd; poke t.vhd $((512 + 100)) B 0x41
damaged t.vhd 'dynamic header checksum mismatch'
repaired t.vhd

cp good.vhd t.vhd; poke t.vhd $((bat + 4)) I 0x00FFFFFF
damaged t.vhd 'BAT entry 1 points past end of file'
repaired t.vhd

cp good.vhd t.vhd; poke t.vhd $((bat + 4)) I 1
damaged t.vhd 'BAT entry 1 overlaps the image metadata'
repaired t.vhd

cp good.vhd t.vhd; e2=$(od -An -tu1 -j$((bat + 8)) -N4 t.vhd | awk '{print $1*16777216+$2*65536+$3*256+$4}')
poke t.vhd $((bat + 4)) I $((e2 + 1))
damaged t.vhd 'BAT entries [0-9]+ and [0-9]+ overlap'
repaired t.vhd

cp good.vhd t.vhd; poke t.vhd $((512 + 28)) I 0x7fffffff header
damaged t.vhd 'BAT of 2147483647 entries'

cp good.vhd t.vhd; poke t.vhd $((512 + 32)) I 3 header
damaged t.vhd 'block size 3 is not a power of two'

cp good.vhd t.vhd; poke t.vhd 48 Q 0x4000000000000000 footer
poke t.vhd $((fsz - 512 + 48)) Q 0x4000000000000000 footer
damaged t.vhd 'exceeds the VHD limit'

# Fixed VHDs: a bad footer, a truncated file.
vdtool convert -O vhd -o subformat=fixed src.raw fixed.vhd
cp fixed.vhd t.vhd; poke t.vhd $((8*MB + 20)) B 0x12
expect_error 'footer checksum mismatch' vdtool info --backing-chain -f vpc t.vhd
rc=0; vdtool check -f vpc t.vhd >/dev/null 2>&1 || rc=$?; [ $rc = 2 ] || fail "fixed: check exit $rc"

# Differencing: a missing parent, a UUID mismatch, a parent loop.
vdtool convert -O vhd src.raw par.vhd
vdtool create -q -f vhd -b par.vhd kid.vhd
mv par.vhd gone.vhd
damaged kid.vhd 'parent image not found'
mv gone.vhd par.vhd
gen setuuid par.vhd 00112233445566778899aabbccddeeff
damaged kid.vhd 'parent UUID mismatch'
# A -> B -> C -> A: replace A by a child of C carrying A's UUID.
vdtool create -q -f vhd -o block_size=512K a.vhd 4M
vdtool create -q -f vhd -b a.vhd b.vhd
vdtool create -q -f vhd -b b.vhd c.vhd
uuid=$(gen uuid a.vhd)
vdtool create -q -f vhd -b c.vhd a2.vhd
gen setuuid a2.vhd "$uuid"
mv a2.vhd a.vhd
damaged c.vhd 'parent loop'
exit 0
