#!/usr/bin/env bash
# Power cuts during management commands, at every write of each: VHD
# resize, rebase -u and compact; VHDX compact, resize and rebase -u (the
# crash rules: docs/vhd.md, "Crash safety"; docs/vhdx.md, "Resize" and
# "Compact").  The command runs under the LD_PRELOAD shim
# (tests/unit/vdtest-shim.c), which journals its writes since the last
# fdatasync and kills it right after write K, for K = 1, 2, ... until it
# runs to the end; powercut.py then keeps, drops or tears each journaled
# write.  Each image must then:
#  - pass `vdtool check` with at most leaks (exit 0 or 3);
#  - read as either the image before the command or the image after it,
#    whole (vdtool, and qemu-img for images without a parent: a VHDX's
#    log replayed on a copy);
#  - after `check -r leaks` (a read-write repair) check clean, same bytes.
# Before the fix, the two VHD footer copies went to disk in one batch: a
# cut could keep one and not the other, which opening refused.  And a
# VHD's dynamic header was rewritten in place: a cut that tore that
# 1024-byte write (its checksum in one sector, the parent locators in the
# other) left a header check refused, one run in ten (MANAGE_CRASH_SEED
# 31240: both rebase cases); now a new header goes past the blocks first
# and the footers name it while the old place is rewritten.
# MANAGE_CRASH_SEED replays a failure.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
need_shim
cd "$VD_TMP"
M=$((1 << 20))
seed0=${MANAGE_CRASH_SEED:-$RANDOM}
echo "seed $seed0"

# VHD: 8 MiB of patterns in a 16 MiB disk; a parent whose bytes differ
# where the child holds nothing.
truncate -s $((16 * M)) src.raw
qemu-io -f raw -c 'write -P 0x31 0 3M' -c 'write -P 0x32 5M 3M' src.raw >/dev/null
truncate -s $((16 * M)) parent.raw
qemu-io -f raw -c 'write -P 0x77 0 16M' parent.raw >/dev/null
vdtool convert -O vpc -o block_size=512K src.raw dyn.vhd
cp dyn.vhd diff.vhd
vdtool rebase -u -b parent.raw -F raw diff.vhd

# view IMAGE OUT: what IMAGE reads (with its parent, if any).
view() { vdtool convert -O raw "$1" "$2"; }

# case_run NAME IMAGE COMMAND: the images before and after COMMAND (a
# function given the image's path), then a cut after each of its writes.
case_run() {
  local name=$1 img=$2; shift 2
  local ext=${img##*.} fmt=vpc
  [ "$ext" = vhdx ] && fmt=vhdx
  cp "$img" before.$ext
  view before.$ext before.raw
  cp "$img" after.$ext
  "$@" after.$ext
  view after.$ext after.raw
  local k=0 seed
  while :; do
    k=$((k + 1))
    [ $k -le 200 ] || fail "$name: still writing after 200 writes"
    seed=$((seed0 + k))
    local t=t.$ext
    cp "$img" $t
    rm -f journal
    local rc=0
    { LD_PRELOAD=$shim VDTEST_SHIM_FILE=$t VDTEST_JOURNAL=journal \
        VDTEST_CUT_AFTER=$k "$@" $t > log.txt 2>&1; } 2>/dev/null || rc=$?
    [ $rc = 0 ] && break        # finished before write K: all cuts done
    [ $rc = 137 ] || fail "$name: the command exited $rc, not killed: $(cat log.txt)"
    local cut what
    cut=$(/usr/bin/python3 "$top_srcdir/tests/integration/powercut.py" $t journal "$seed")
    what="$name, cut after write $k (seed $seed, $cut)"
    rc=0; vdtool check $t > check.txt 2>&1 || rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "$what: check exit $rc: $(cat check.txt)"
    view $t t.raw 2> view.txt || fail "$what: cannot read it: $(cat view.txt)"
    local state=
    cmp -s t.raw before.raw && state=before
    cmp -s t.raw after.raw && state=${state:-after}
    [ -n "$state" ] || fail "$what: reads as neither the image before nor after the command"
    if ! vdtool info $t | grep -q '^backing file:'; then
      cp $t q.$ext    # qemu replays a VHDX log: on a copy
      if [ $fmt = vhdx ]; then
        rc=0; qemu-img check -r all -f vhdx q.vhdx > q.txt 2>&1 || rc=$?
        [ $rc = 0 ] || [ $rc = 3 ] || fail "$what: qemu-img check -r all exit $rc: $(cat q.txt)"
      fi
      qemu-img convert -f $fmt -O raw q.$ext q.raw 2> q.txt || fail "$what: qemu-img cannot read it: $(cat q.txt)"
      truncate -s "$(stat -c %s t.raw)" q.raw   # qemu rounds a VHD's size to CHS
      cmp -s q.raw t.raw || fail "$what: qemu-img reads other bytes than vdtool"
    fi
    rc=0; vdtool check -r leaks $t > fix.txt 2>&1 || rc=$?
    [ $rc = 0 ] || fail "$what: check -r leaks exit $rc: $(cat fix.txt)"
    vdtool check $t > check.txt 2>&1 || fail "$what: not clean after the repair: $(cat check.txt)"
    view $t t2.raw
    cmp -s t.raw t2.raw || fail "$what: the repair changed the contents"
    echo "$what: $state"
  done
  [ $k -gt 2 ] || fail "$name: only $((k - 1)) writes: nothing was cut"
  echo "$name: $((k - 1)) cut points"
}

# A dynamic image for compact: a block of zeros and a discarded one below
# data (compact frees them and moves the last blocks down).
vdtool create -q -f vpc -o block_size=512K comp.vhd 16M
cp src.raw comp.raw
vd_nbd_io comp.vhd comp.raw 'write -P 0x31 0 3M' 'write -P 0 3M 512k' \
  'write -P 0x33 4M 512k' 'discard 4M 512k' 'write -P 0x32 5M 3M'
compact() { vdtool compact -q "$1"; }
grow() { vdtool resize -q "$1" 48M; }                 # the BAT moves
shrink() { vdtool resize -q --shrink "$1" 12M; }      # nothing there: footers
to_diff() { vdtool rebase -u -b parent.raw -F raw "$1"; }
to_dynamic() { vdtool rebase -u -b "" "$1"; }
case_run "resize to 48M" dyn.vhd grow
case_run "resize --shrink to 12M" dyn.vhd shrink
case_run "rebase -u of a dynamic image onto a parent" dyn.vhd to_diff
case_run "rebase -u of a differencing image onto none" diff.vhd to_dynamic
case_run "compact" comp.vhd compact

# VHDX, 1 MiB blocks: data, a block of zeros (compact frees it), a
# discarded one, data last (compact moves it down); a differencing child.
vdtool create -q -f vhdx -o block_size=1M c.vhdx 12M
truncate -s 12M c.raw
vd_nbd_io c.vhdx c.raw 'write -P 0x61 0 1M' 'write -P 0 3M 1M' \
  'write -P 0x63 6M 1M' 'discard 6M 1M' 'write -P 0x64 9M 512k'
mkdir -p sub
cp c.vhdx sub/c.vhdx
vdtool create -q -f vhdx -b c.vhdx -F vhdx child.vhdx
vd_nbd_io child.vhdx c.raw 'write -P 0x71 1M 64k'
grow_x() { vdtool resize -q "$1" 40M; }
shrink_x() { vdtool resize -q --shrink "$1" 9728K; }   # inside block 9
onto_copy() { vdtool rebase -u -b sub/c.vhdx -F vhdx "$1"; }
case_run "VHDX compact" c.vhdx compact
case_run "VHDX resize to 40M" c.vhdx grow_x
case_run "VHDX resize --shrink to 9.5M" c.vhdx shrink_x
case_run "VHDX rebase -u onto a copy of the parent" child.vhdx onto_copy
exit 0
