#!/usr/bin/env bash
# Power cuts during VHD management commands (resize, rebase -u), at every
# write of each (issue 10's crash rule for the commands that rewrite the
# footers; docs/vhd.md, "Crash safety").  The command runs under the
# LD_PRELOAD shim (tests/unit/vdtest-shim.c), which journals its writes
# since the last fdatasync and kills it right after write K, for K = 1, 2,
# ... until it runs to the end; powercut.py then keeps, drops or tears
# each journaled write.  Each image must then:
#  - pass `vdtool check` with at most leaks (exit 0 or 3);
#  - open and read as either the image before the command or the image
#    after it, whole (vdtool, and qemu-img for dynamic images);
#  - after `check -r leaks` (a read-write repair) check clean, same bytes.
# Before the fix, the two footer copies went to disk in one batch: a cut
# could keep one and not the other, which opening refuses.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
need_shim
cd "$VD_TMP"
M=$((1 << 20))
seed0=${VHD_MANAGE_CRASH_SEED:-$RANDOM}
echo "seed $seed0"

# Source data: 8 MiB of patterns in a 16 MiB disk; a parent whose bytes
# differ where the child holds nothing.
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
  cp "$img" before.vhd
  view before.vhd before.raw
  cp "$img" after.vhd
  "$@" after.vhd
  view after.vhd after.raw
  local k=0 seed
  while :; do
    k=$((k + 1))
    [ $k -le 200 ] || fail "$name: still writing after 200 writes"
    seed=$((seed0 + k))
    cp "$img" t.vhd
    rm -f journal
    local rc=0
    { LD_PRELOAD=$shim VDTEST_SHIM_FILE=t.vhd VDTEST_JOURNAL=journal \
        VDTEST_CUT_AFTER=$k "$@" t.vhd > log.txt 2>&1; } 2>/dev/null || rc=$?
    [ $rc = 0 ] && break        # finished before write K: all cuts done
    [ $rc = 137 ] || fail "$name: the command exited $rc, not killed: $(cat log.txt)"
    local cut what
    cut=$(/usr/bin/python3 "$top_srcdir/tests/integration/powercut.py" t.vhd journal "$seed")
    what="$name, cut after write $k (seed $seed, $cut)"
    rc=0; vdtool check t.vhd > check.txt 2>&1 || rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || fail "$what: check exit $rc: $(cat check.txt)"
    view t.vhd t.raw 2> view.txt || fail "$what: cannot read it: $(cat view.txt)"
    local state=
    cmp -s t.raw before.raw && state=before
    cmp -s t.raw after.raw && state=${state:-after}
    [ -n "$state" ] || fail "$what: reads as neither the image before nor after the command"
    if ! vdtool info t.vhd | grep -q differencing; then
      qemu-img convert -f vpc -O raw t.vhd q.raw 2> q.txt || fail "$what: qemu-img cannot read it: $(cat q.txt)"
      truncate -s "$(stat -c %s t.raw)" q.raw   # qemu rounds the size to CHS
      cmp -s q.raw t.raw || fail "$what: qemu-img reads other bytes than vdtool"
    fi
    rc=0; vdtool check -r leaks t.vhd > fix.txt 2>&1 || rc=$?
    [ $rc = 0 ] || fail "$what: check -r leaks exit $rc: $(cat fix.txt)"
    vdtool check t.vhd > check.txt 2>&1 || fail "$what: not clean after the repair: $(cat check.txt)"
    view t.vhd t2.raw
    cmp -s t.raw t2.raw || fail "$what: the repair changed the contents"
    echo "$what: $state"
  done
  [ $k -gt 2 ] || fail "$name: only $((k - 1)) writes: nothing was cut"
  echo "$name: $((k - 1)) cut points"
}

grow() { vdtool resize -q "$1" 48M; }                 # the BAT moves
shrink() { vdtool resize -q --shrink "$1" 12M; }      # blocks past 12M freed
to_diff() { vdtool rebase -u -b parent.raw -F raw "$1"; }
to_dynamic() { vdtool rebase -u -b "" "$1"; }
case_run "resize to 48M" dyn.vhd grow
case_run "resize --shrink to 12M" dyn.vhd shrink
case_run "rebase -u of a dynamic image onto a parent" dyn.vhd to_diff
case_run "rebase -u of a differencing image onto none" diff.vhd to_dynamic
