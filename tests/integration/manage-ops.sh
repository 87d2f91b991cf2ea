#!/usr/bin/env bash
# The management operations (vd_truncate, vd_compact, vd_make_empty,
# vd_change_backing, vd_commit) through vdtool, for any format: raw resize
# judged against qemu-img resize on a copy, one-line errors for operations
# a format cannot do, commit through the engine's generic copy followed by
# qemu-img's emptying of the top (unless -d), and images whose parent is
# missing, which the lone (VD_OPEN_NOPARENT) opens must not need.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io cmp
cd "$VD_TMP"
MB=$((1024*1024))

# 1. raw resize as qemu-img resize -f raw: same size, same bytes, same
# refusals, on a patterned copy each.
vdtool create -q a.raw $((10*MB + 3*512))
qemu-io -f raw -c 'write -P 0x5a 0 64k' -c 'write -P 0xa5 9M 1M' \
  -c "write -P 0x33 $((10*MB)) 1536" a.raw >/dev/null
cp a.raw q.raw
both() {  # both WANT-RC ARGS...: vdtool and qemu-img resize -f raw agree
  local want=$1 rc=0 qrc=0; shift
  vdtool resize -f raw "$@" > v.out 2>v.err || rc=$?
  qemu-img resize -f raw "${@/a.raw/q.raw}" > q.out 2>q.err || qrc=$?
  [ "$rc" = "$want" ] && [ "$qrc" = "$want" ] ||
    fail "resize $*: vdtool rc $rc ($(cat v.err)), qemu-img rc $qrc ($(cat q.err))"
  [ "$(stat -c %s a.raw)" = "$(stat -c %s q.raw)" ] ||
    fail "resize $*: vdtool size $(stat -c %s a.raw), qemu-img $(stat -c %s q.raw)"
  cmp a.raw q.raw || fail "resize $*: the data differs from qemu-img's"
  if [ "$want" = 0 ]; then
    cmp v.out q.out || fail "resize $*: vdtool said '$(cat v.out)', qemu-img '$(cat q.out)'"
  fi
}
both 0 a.raw +1G
both 1 a.raw -1M                  # shrinking needs --shrink
both 1 a.raw $((5*MB))
grep -q -- '--shrink' v.err || fail "no --shrink hint: $(cat v.err)"
both 0 --shrink a.raw -1G
both 0 --shrink a.raw $((9*MB + 512))   # cuts into the 0xa5 data
both 0 a.raw 12M
both 0 a.raw 12M                  # the same size: nothing to do
both 0 --shrink a.raw 4096
both 0 a.raw +0
# Probed (no -f): growing is allowed, shrinking would show other bytes to
# the probe and is refused.
vdtool resize a.raw +1M >/dev/null
[ "$(stat -c %s a.raw)" = $((4096 + MB)) ] || fail "probed raw did not grow"
expect_error 'a\.raw: probed as raw: name the format \(-f raw\)' \
  vdtool resize --shrink a.raw 4096
expect_error 'cannot shrink by more than the size' vdtool resize -f raw --shrink a.raw -2G

# 2. One line naming the image and the format for what a format cannot do.
vdtool convert -O vdz a.raw a.vdz
expect_error "^vdtool: a\.raw: format 'raw' cannot be compacted$" vdtool compact -f raw a.raw
expect_error "^vdtool: a\.vdz: format 'vdz' cannot be compacted$" vdtool compact a.vdz
expect_error "^vdtool: a\.vdz: format 'vdz' cannot be resized$" vdtool resize a.vdz +1M
expect_error "^vdtool: a\.raw: format 'raw' cannot have a backing file$" \
  vdtool rebase -f raw -b a.vdz a.raw
# A format with backing files vdisk cannot rewrite says that, not "none".
qemu-img create -q -f qcow2 q.qcow2 1M
expect_error "^vdtool: q\.qcow2: format 'qcow2' cannot have its backing file changed by vdisk$" \
  vdtool rebase -u -b a.raw -F raw q.qcow2
expect_error "^vdtool: a\.raw: has no backing file to commit into$" vdtool commit -f raw a.raw
vdtool create -q -f vpc -o subformat=fixed fixed.vhd 1M
expect_error "fixed\.vhd: a fixed VHD has no blocks to compact" vdtool compact fixed.vhd

# 3. commit: the engine's generic copy (block status of the top alone) into
# the parent, then the top is emptied unless -d.  Writes go through
# vdisk-nbd, the same writes onto a raw model.
io() {  # io IMAGE MODEL QEMU-IO-COMMAND...
  local img=$1 model=$2 c args=(); shift 2
  for c in "$@"; do args+=(-c "$c"); done
  vdisk_nbd -k "$VD_TMP/sock" --fork --pid-file "$VD_TMP/pid" "$img"
  wait_for_socket "$VD_TMP/sock"
  qemu-io -f raw "${args[@]}" "nbd+unix:///?socket=$VD_TMP/sock" > io.txt ||
    fail "qemu-io through vdisk-nbd: $(cat io.txt)"
  for _ in $(seq 100); do [ -f "$VD_TMP/pid" ] && kill -0 "$(cat "$VD_TMP/pid")" 2>/dev/null || break; sleep 0.05; done
  rm -f "$VD_TMP/sock"
  qemu-io -f raw "${args[@]}" "$model" >/dev/null
}
vdtool create -q -f vpc -o block_size=512K base.vhd 8M
vdtool create -q model.raw 8M
io base.vhd model.raw 'write -P 0x11 0 8M'
vdtool create -q -f vpc -b base.vhd top.vhd
io top.vhd model.raw 'write -P 0x22 1M 3000' 'write -z 3M 64k' 'write -P 0x23 8190k 2k'
cp base.vhd base0.vhd; cp top.vhd top0.vhd
own() {  # own IMAGE: bytes the image holds itself (map depth 0, data)
  vdtool map --output=json "$1" | /usr/bin/python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["depth"] == 0 and e["data"]))'
}
[ "$(own top.vhd)" -gt 0 ] || fail "the top holds nothing before the commit"
vdtool commit -d top.vhd | grep -qx 'Image committed.' || fail "commit -d"
vdtool compare -F raw base.vhd model.raw >/dev/null || fail "commit -d: the base differs"
vdtool compare -F raw top.vhd model.raw >/dev/null || fail "commit -d: the top reads differently"
cmp top.vhd top0.vhd || fail "commit -d changed the top"
cp base0.vhd base.vhd
vdtool commit -p top.vhd > out.txt
grep -q '100.00/100%' out.txt && grep -q 'Image committed' out.txt || fail "commit -p: $(cat out.txt)"
vdtool compare -F raw base.vhd model.raw >/dev/null || fail "commit: the base differs"
vdtool compare -F raw top.vhd model.raw >/dev/null || fail "commit: the top reads differently"
[ "$(own top.vhd)" = 0 ] || fail "commit did not empty the top: $(own top.vhd) bytes left"
vdtool check -q base.vhd && vdtool check -q top.vhd || fail "check after commit"
qemu-img compare -f vpc -F raw base.vhd model.raw >/dev/null || fail "qemu reads the base differently"

# rebase (safe) of an image without a backing file onto one: a dynamic VHD
# becomes a differencing one that reads the same; -b "" turns it back.
vdtool convert -f raw -O vpc model.raw dyn.vhd
vdtool rebase -b base.vhd dyn.vhd
vdtool info dyn.vhd | grep -q 'subformat: differencing' || fail "rebase of a dynamic VHD"
vdtool compare -F raw dyn.vhd model.raw >/dev/null || fail "rebase of a dynamic VHD: contents"
vdtool rebase -b "" dyn.vhd
vdtool info dyn.vhd | grep -q 'subformat: dynamic' || fail "rebase -b '' back"
qemu-img compare -f vpc -F raw dyn.vhd model.raw >/dev/null || fail "qemu reads the round trip differently"

# 4. A child whose parent is missing: the lone opens (resize, compact,
# rebase -u) never look for it; what reads through it says so.
cp base0.vhd base.vhd; cp top0.vhd top.vhd
mv base.vhd gone.vhd
expect_error 'parent image not found' vdtool info --backing-chain top.vhd
vdtool info top.vhd | grep -q '^backing file: base.vhd$' ||
  fail "info without the parent: $(vdtool info top.vhd 2>&1)"
expect_error 'parent image not found' vdtool commit top.vhd
expect_error 'parent image not found' vdtool rebase -b "" top.vhd
vdtool resize top.vhd +1M | grep -qx 'Image resized.' || fail "resize without the parent"
vdtool compact top.vhd | grep -q 'bytes freed' || fail "compact without the parent"
vdtool rebase -u -b gone.vhd top.vhd
vdtool info top.vhd | grep -q '^backing file: gone.vhd' || fail "rebase -u without the parent"
vdtool resize --shrink top.vhd 8M >/dev/null
vdtool compare -F raw top.vhd model.raw >/dev/null || fail "the top lost data"
exit 0
