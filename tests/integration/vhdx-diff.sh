#!/usr/bin/env bash
# Differencing VHDX made and written by vdisk: `vdtool create -f vhdx -b`
# (parent locator with parent_linkage = the parent's DataWriteGuid,
# relative_path and absolute_win32_path) and writes through vdisk-nbd
# (qemu-io as the client) that leave partially present blocks (sector
# bitmaps through the log), fully present ones and untouched ones reading
# from the parent.  Judged by the independent reader in tests/vhdxgen
# (`read`: checksums, overlaps, the linkage, the chain) against a raw
# model written with the same qemu-io commands, and by libvhdi: vhdiinfo
# (type, parent identifier, parent file name) and vhdimount byte-exact for
# the 4K-sector parent.  qemu cannot open differencing VHDX; Debian 12's
# vhdimount (20210425) reads the parent's data where a differencing
# child holds sectors, for vdisk's images and the independent writer's
# alike, so it does not judge the children's content.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3 vhdiinfo
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
cd "$VD_TMP"
M=$((1 << 20))

same() {  # same IMAGE MODEL: vdtool and the independent reader agree
  vdtool compare -F raw "$1" "$2" >/dev/null || fail "$1 differs from the model (vdtool)"
  gen read "$1" g.raw || fail "$1: the independent reader refuses it"
  cmp g.raw "$2" || fail "$1 differs from the model (independent reader)"
  vdtool info "$1" | grep -q '^ *log: clean$' || fail "$1: log left dirty"
}
# vhdimount: libvhdi's FUSE view, byte-exact.
vhdi_same() {  # IMAGE MODEL
  [ -e /dev/fuse ] && command -v vhdimount >/dev/null && command -v fusermount >/dev/null || return 0
  local mnt
  mnt=$(mktemp -d "$VD_TMP/mnt.XXXXXX")
  timeout 30 vhdimount "$1" "$mnt" > vm.txt 2>&1 || { cat vm.txt; fail "$1: vhdimount"; }
  on_exit "fusermount -u '$mnt'"
  cmp "$mnt/vhdi1" "$2" || fail "$1 differs from the model (vhdimount)"
  fusermount -u "$mnt"
}

# The base: a dynamic VHDX with data in some blocks.
truncate -s $((64 * M)) base.raw
qemu-io -f raw -c 'write -P 0x11 0 3M' -c 'write -P 0x12 20M 1M' \
  -c "write -P 0x13 $((64 * M - 4096)) 4096" base.raw >/dev/null
pattern_bytes 1500000 3 | dd of=base.raw bs=1M seek=40 conv=notrunc status=none
vdtool convert -O vhdx -o block_size=1M base.raw base.vhdx

# create -b: an empty child that reads as its parent.
vdtool create -q -f vhdx -b base.vhdx -F vhdx top.vhdx
vdtool info top.vhdx > info.txt
grep -q '^ *subformat: differencing$' info.txt || fail "create -b: subformat"
grep -q '^backing file: \./base.vhdx$' info.txt || fail "create -b: backing file"
grep -q '^ *parent-relative-path: \./base.vhdx$' info.txt || { cat info.txt; fail "create -b: relative path"; }
grep -q "^ *parent-absolute-path: $(realpath base.vhdx)\$" info.txt || { cat info.txt; fail "create -b: absolute path"; }
want=$(vdtool info base.vhdx | sed -n 's/^ *data-write-guid: //p')
grep -qi "^ *parent-linkage: {$want}\$" info.txt || { cat info.txt; fail "parent_linkage is not the parent's DataWriteGuid ($want)"; }
vdtool info --output=json top.vhdx | grep -q '"virtual-size": '$((64 * M)) || fail "create -b: size"
vdtool info --output=json top.vhdx | grep -q '"cluster-size": '$M || fail "create -b: the parent's block size"
cp base.raw model.raw
same top.vhdx model.raw
vhdiinfo top.vhdx > vi.txt || fail "vhdiinfo differencing"
grep -qi 'differential' vi.txt || { cat vi.txt; fail "vhdiinfo: type"; }
grep -qi "parent identifier.*: $want\$" vi.txt || { cat vi.txt; fail "vhdiinfo: parent identifier"; }
grep -qF "$(realpath base.vhdx | tr / '\\')" vi.txt || { cat vi.txt; fail "vhdiinfo: parent file name"; }

# Writes: sectors in a block the parent holds (partial), a whole block
# (fully present), two writes into one partial block, the last sector,
# zeros written over the parent's data, a write across two blocks.
vd_nbd_io top.vhdx model.raw 'write -P 0x41 4096 512' 'write -P 0x42 8M 1M' \
  "write -P 0x43 $((2 * M + 512)) 8192" "write -P 0x44 $((5 * M)) 4096" \
  "write -P 0x45 $((5 * M + 65536)) 4096" "write -P 0x46 $((64 * M - 512)) 512" \
  "write -z $((20 * M + 4096)) 8192" "write -P 0x47 $((41 * M - 4096)) 12288"
same top.vhdx model.raw
# A second session: more bits in partial blocks, one of them filled whole.
vd_nbd_io top.vhdx model.raw 'write -P 0x51 0 512' "write -P 0x52 $((5 * M)) 1M" \
  "write -P 0x53 $((2 * M + 1024)) 512"
same top.vhdx model.raw
vdtool info top.vhdx | grep -q '^ *allocated-blocks: 8$' || { vdtool info top.vhdx; fail "allocated blocks"; }

# A chain of three: a child of the child, written; the base untouched.
vdtool create -q -f vhdx -b top.vhdx c2.vhdx
cp model.raw model2.raw
vd_nbd_io c2.vhdx model2.raw 'write -P 0x61 4608 512' "write -P 0x62 $((30 * M)) 4096"
same c2.vhdx model2.raw
same top.vhdx model.raw
vdtool compare -F raw base.vhdx base.raw >/dev/null || fail "the base changed"
vdtool info --backing-chain c2.vhdx | grep -c 'subformat: differencing' | grep -qx 2 ||
  fail "chain: two differencing layers"
# Writing into the parent changes its DataWriteGuid: the child refuses it.
cp base.vhdx b2.vhdx
vdtool create -q -f vhdx -b b2.vhdx k.vhdx
cp base.raw scratch.raw
vd_nbd_io b2.vhdx scratch.raw 'write -P 0x71 0 512'
expect_error 'does not match: its DataWriteGuid' vdtool info --backing-chain k.vhdx

# 4096-byte sectors: the child inherits them.
truncate -s $((16 * M)) b4.raw
qemu-io -f raw -c 'write -P 0x21 0 2M' b4.raw >/dev/null
vdtool convert -O vhdx -o logical_sector_size=4096,block_size=1M b4.raw b4.vhdx
vhdi_same b4.vhdx b4.raw
vdtool create -q -f vhdx -b b4.vhdx c4.vhdx
vdtool info c4.vhdx | grep -q '^ *logical-sector-size: 4096$' || fail "4K child: sector size"
cp b4.raw m4.raw
vd_nbd_io c4.vhdx m4.raw 'write -P 0x22 8192 4096' "write -P 0x23 $((3 * M)) 8192"
same c4.vhdx m4.raw
vhdiinfo c4.vhdx > vi.txt || fail "vhdiinfo 4K differencing"
grep -qi 'bytes per sector.*4096' vi.txt || { cat vi.txt; fail "vhdiinfo: 4K sectors"; }

# A parent in another folder: recorded relative (..), which the reader
# confines (outside the child's folder) unless named with --backing.
mkdir d
vdtool create -q -f vhdx -b ../base.vhdx d/o.vhdx
vdtool info --backing="$PWD/base.vhdx" d/o.vhdx | grep -q '^ *parent-relative-path: \.\./base.vhdx$' || fail "relative path with .."
expect_error "outside the child's folder" vdtool info --backing-chain d/o.vhdx
vdtool compare --backing="$PWD/base.vhdx" -F raw d/o.vhdx base.raw >/dev/null || fail "--backing override"

# Refused with one line.
expect_error "can only have a VHDX parent" vdtool create -q -f vhdx -b base.raw x.vhdx
expect_error "differs from the parent's 512" vdtool create -q -f vhdx -o logical_sector_size=4096 -b base.vhdx x.vhdx
expect_error "fixed VHDX cannot have a parent" vdtool create -q -f vhdx -o subformat=fixed -b base.vhdx x.vhdx
exit 0
