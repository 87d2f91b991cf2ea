#!/usr/bin/env bash
# vdtool compact of dynamic VHDX images (issue 13): fully present blocks
# that hold only zeros become ZERO with no space, zero / unmapped blocks
# give up the space they kept, the last blocks move into the gaps and the
# file is cut after its last block.  Judged by qemu-img (compare against
# the raw model, check), vdtool check and the independent reader
# (tests/vhdxgen: content, block states and offsets).
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
cd "$VD_TMP"
M=$((1 << 20))
states() { gen states "$1" | awk '$2 != 0 { print $1, $2, $3 }' | tr '\n' ' '; }

# Blocks allocated in write order, 1 MiB each after the BAT (4 MiB):
# 0 data, 3 zeros, 20 data, 10 zeros, 12 data then discarded (UNMAPPED,
# space kept), 23 zeros, 5 data.
vdtool create -q -f vhdx -o block_size=1M c.vhdx 24M
truncate -s 24M c.raw
vd_nbd_io c.vhdx c.raw 'write -P 0x61 0 1M' 'write -P 0 3M 1M' \
  'write -P 0x62 20M 64k' 'write -P 0 10M 1M' 'write -P 0x63 12M 1M' \
  'discard 12M 1M' 'write -P 0 23M 1M' 'write -P 0x64 5M 1M'
[ "$(states c.vhdx)" = "0 6 4194304 3 6 5242880 5 6 10485760 10 6 7340032 12 3 8388608 20 6 6291456 23 6 9437184 " ] ||
  fail "unexpected layout before compact: $(states c.vhdx)"
[ "$(stat -c %s c.vhdx)" = $((11 * M)) ] || fail "file of $(stat -c %s c.vhdx) bytes before compact"
out=$(vdtool compact c.vhdx) || fail "compact failed: $out"
[ "$out" = "Image compacted: $((4 * M)) bytes freed." ] || fail "compact said '$out'"
[ "$(stat -c %s c.vhdx)" = $((7 * M)) ] || fail "file of $(stat -c %s c.vhdx) bytes after compact, want 7 MiB"
# Block 5 moved from the end into block 3's place; the rest keep theirs.
[ "$(states c.vhdx)" = "0 6 4194304 3 2 0 5 6 5242880 10 2 0 12 3 0 20 6 6291456 23 2 0 " ] ||
  fail "unexpected layout after compact: $(states c.vhdx)"
qemu-img compare -q -f vhdx -F raw c.vhdx c.raw || fail "qemu-img compare: differs from the raw model"
qemu-img check -q -f vhdx c.vhdx || fail "qemu-img check not clean"
vdtool check c.vhdx >chk.txt || fail "vdtool check: $(cat chk.txt)"
gen read c.vhdx g.raw && cmp -s g.raw c.raw || fail "the independent reader reads other bytes"
# Still writable where blocks moved and where space went.
vd_nbd_io c.vhdx c.raw 'write -P 0x65 3M 4k' 'write -P 0x66 23M 1M'
qemu-img compare -q -f vhdx -F raw c.vhdx c.raw || fail "after writes: differs from the raw model"
qemu-img check -q -f vhdx c.vhdx || fail "after writes: qemu-img check not clean"
# Nothing to do: nothing freed, nothing moved.
vdtool compact -q c.vhdx || fail "second compact failed"
qemu-img compare -q -f vhdx -F raw c.vhdx c.raw || fail "second compact changed the content"

# Refusals.
qemu-img create -q -f vhdx -o subformat=fixed,block_size=1M f.vhdx 4M
vdtool create -q -f vhdx -b c.vhdx child.vhdx
expect_error 'a fixed VHDX has no blocks to compact' vdtool compact f.vhdx
expect_error 'compacting a differencing VHDX is not supported' vdtool compact child.vhdx
exit 0
