#!/usr/bin/env bash
# vdtool rebase of differencing VHDX images (issue 13): the parent
# locator (parent_linkage = the new parent's DataWriteGuid,
# relative_path, absolute_win32_path) rewritten through the log.  Unsafe
# (-u) onto a copy of the parent in another folder, safe onto a parent
# with other bytes (the engine copies what differs into the child first).
# Judged by the independent reader (tests/vhdxgen `read`, which follows
# relative_path and checks parent_linkage) and libvhdi's vhdiinfo.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3 vhdiinfo
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
cd "$VD_TMP"
M=$((1 << 20))
guid() { vdtool info "$1" | sed -n 's/^ *data-write-guid: //p'; }
same() {  # IMAGE MODEL
  gen read "$1" g.raw || fail "$1: the independent reader refuses it"
  cmp -s g.raw "$2" || fail "$1 differs from the model (independent reader)"
  vdtool compare -F raw "$1" "$2" >/dev/null || fail "$1 differs from the model (vdtool)"
  vdtool check "$1" >chk.txt || fail "$1: vdtool check: $(cat chk.txt)"
}
parent_is() {  # IMAGE PARENT RELATIVE
  local g; g=$(guid "$2")
  vdtool info "$1" > info.txt
  grep -qi "^ *parent-linkage: {$g}\$" info.txt || { cat info.txt; fail "$1: parent_linkage is not $2's DataWriteGuid"; }
  grep -q "^ *parent-relative-path: $3\$" info.txt || { cat info.txt; fail "$1: relative path"; }
  grep -q "^ *parent-absolute-path: $(realpath "$2")\$" info.txt || { cat info.txt; fail "$1: absolute path"; }
  vhdiinfo "$1" > vi.txt || fail "vhdiinfo $1"
  grep -qi "parent identifier.*: $g\$" vi.txt || { cat vi.txt; fail "vhdiinfo: parent identifier of $1"; }
  grep -qF "$(realpath "$2" | tr / '\\')" vi.txt || { cat vi.txt; fail "vhdiinfo: parent file name of $1"; }
}

truncate -s $((16 * M)) base.raw
qemu-io -f raw -c 'write -P 0x11 0 2M' -c 'write -P 0x12 8M 1M' base.raw >/dev/null
vdtool convert -O vhdx -o block_size=1M base.raw base.vhdx
vdtool create -q -f vhdx -b base.vhdx -F vhdx child.vhdx
cp base.raw model.raw
vd_nbd_io child.vhdx model.raw 'write -P 0x21 1M 64k' 'write -P 0x22 12M 1M'
same child.vhdx model.raw

# Unsafe, onto a copy in a subfolder (a new DataWriteGuid, same bytes).
mkdir sub
vdtool convert -O vhdx -o block_size=1M base.vhdx sub/copy.vhdx
vdtool rebase -u -b sub/copy.vhdx -F vhdx child.vhdx || fail "unsafe rebase failed"
parent_is child.vhdx sub/copy.vhdx './sub/copy.vhdx'
same child.vhdx model.raw
rm base.vhdx    # nothing reads the old parent any more
gen read child.vhdx g.raw || fail "the old parent is still needed"

# Safe, onto a parent with other bytes: the child keeps reading the same.
truncate -s $((16 * M)) other.raw
qemu-io -f raw -c 'write -P 0x33 0 16M' other.raw >/dev/null
vdtool convert -O vhdx -o block_size=1M other.raw other.vhdx
vdtool rebase -b other.vhdx -F vhdx child.vhdx || fail "safe rebase failed"
parent_is child.vhdx other.vhdx './other.vhdx'
same child.vhdx model.raw

# Refusals, nothing written.
vdtool convert -O vhdx -o block_size=1M other.raw plain.vhdx
sum=$(md5sum < child.vhdx)
expect_error "a VHDX can only have a VHDX parent" vdtool rebase -u -b other.raw -F raw child.vhdx
expect_error "removing a VHDX's parent is not supported" vdtool rebase -u -b '' child.vhdx
[ "$(md5sum < child.vhdx)" = "$sum" ] || fail "a refused rebase wrote"
expect_error "a VHDX without a parent cannot be given one" vdtool rebase -u -b other.vhdx -F vhdx plain.vhdx
exit 0
