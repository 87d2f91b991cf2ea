#!/usr/bin/env bash
# vdtool resize grows qcow2 images as qemu-img resize does (issue 15):
#  - the same image grown by both (absolute and +SIZE, 64 KiB clusters and
#    512-byte ones, where the L1 table must move to a larger one spanning
#    many clusters) has the same virtual size and bytes, checks clean in
#    qemu-img, and takes writes past the old end afterwards;
#  - a backing file longer than the old size does not show through the new
#    space (qemu's truncate zeroes it): the same bytes as qemu-img's;
#  - a missing backing file is refused in one line, the file unchanged
#    (shrinking: qcow2-shrink.sh);
#  - power cuts at random moments of a resize (the LD_PRELOAD shim and
#    powercut.py, as qcow2-crash.sh): qemu-img check finds at worst leaks,
#    the size is the old or the new one and the old bytes are intact.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
cd "$VD_TMP"

vsize() { qemu-img info --output=json "$1" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p'; }

for cs in 65536 512; do
  for new in 100M +50M; do
    qemu-img create -q -f qcow2 -o cluster_size=$cs base.qcow2 1M
    qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x12 960k 64k' base.qcow2 >/dev/null
    cp base.qcow2 peer.qcow2
    cp base.qcow2 ours.qcow2
    qemu-img resize -q peer.qcow2 $new
    vdtool resize ours.qcow2 $new >/dev/null || fail "vdtool resize ($cs, $new) failed"
    [ "$(vsize ours.qcow2)" = "$(vsize peer.qcow2)" ] ||
      fail "cluster $cs, $new: virtual size $(vsize ours.qcow2), qemu-img's $(vsize peer.qcow2)"
    qemu-img check -q ours.qcow2 || fail "cluster $cs, $new: not clean after resize"
    qemu-img compare -q peer.qcow2 ours.qcow2 || fail "cluster $cs, $new: bytes differ from qemu-img's"
    end=$(( $(vsize ours.qcow2) - 65536 ))
    qemu-io -f qcow2 -c "write -P 0x13 $end 64k" ours.qcow2 >/dev/null
    qemu-io -f qcow2 -c "write -P 0x13 $end 64k" peer.qcow2 >/dev/null
    qemu-img check -q ours.qcow2 || fail "cluster $cs, $new: not clean after a write past the old end"
    qemu-img compare -q peer.qcow2 ours.qcow2 || fail "cluster $cs, $new: bytes differ after the write"
  done
done
echo "grown as qemu-img grows"

# A longer backing file: the new space reads zeros, not the backing bytes.
qemu-img create -q -f raw back.raw 4M
qemu-io -f raw -c 'write -P 0x5a 0 4M' back.raw >/dev/null
for side in peer ours; do
  qemu-img create -q -f qcow2 -b back.raw -F raw $side.qcow2 2M
done
qemu-img resize -q peer.qcow2 6M
vdtool resize ours.qcow2 6M >/dev/null || fail "resize over a longer backing file"
qemu-img compare -q peer.qcow2 ours.qcow2 || fail "over a longer backing file: bytes differ from qemu-img's"
qemu-io -f qcow2 -c 'read -P 0 2M 4M' -c 'read -P 0x5a 0 2M' ours.qcow2 | grep -q '^read 4194304/' ||
  fail "the backing file shows through the new space"
qemu-img check -q ours.qcow2 || fail "not clean after a resize over a longer backing file"

# A backing file that cannot be opened: refused in one line, as qemu-img
# refuses, nothing written.
qemu-img create -q -f raw gone.raw 4M
qemu-img create -q -f qcow2 -b gone.raw -F raw orphan.qcow2 2M
rm gone.raw
sum=$(md5sum < orphan.qcow2)
expect_error 'backing file .*gone\.raw' vdtool resize orphan.qcow2 6M
[ "$(md5sum < orphan.qcow2)" = "$sum" ] || fail "a refused resize wrote"
! qemu-img resize -q orphan.qcow2 6M 2>/dev/null || fail "qemu-img resized an orphan"

# Power cuts during resizes that move the L1 table (512-byte clusters).
[ -f "$top_builddir/tests/unit/.libs/libvdtest-shim.so" ] || skip "the test shim is not built"
iterations=${QCOW2_RESIZE_CRASH_ITERATIONS:-8}
seed0=${QCOW2_RESIZE_SEED:-$RANDOM}
echo "power cuts: seed $seed0, $iterations iterations"
# Every other round the image lies over a longer backing file (back.raw,
# 4M of 0x5a), so the resize zeroes the new space before the header says
# the new size: compare's rule (the longer image's extra bytes read as
# zeros) then also checks that no backing byte shows through.
qemu-img create -q -f qcow2 -o cluster_size=512 orig.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x21 0 1M' -c 'write -P 0x22 3M 1M' orig.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 -b back.raw -F raw origb.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x23 0 512k' origb.qcow2 >/dev/null
news=0; olds=0; leaks=0
for it in $(seq "$iterations"); do
  seed=$((seed0 + it))
  src=orig.qcow2 small=$((4 << 20))
  [ $((it % 2)) = 0 ] && src=origb.qcow2 small=$((1 << 20))
  cp $src img.qcow2
  what="iteration $it (seed $seed, $(power_cut img.qcow2 $seed 8 vdtool resize img.qcow2 64M))"
  state=$(check_leaks_only img.qcow2 "$what")
  [ "$state" = leaks ] && leaks=$((leaks + 1))
  case $(vsize img.qcow2) in
    $((64 << 20))) news=$((news + 1)) ;;
    $small) olds=$((olds + 1)) ;;
    *) fail "$what: size $(vsize img.qcow2) is neither the old nor the new one" ;;
  esac
  qemu-img compare -q $src img.qcow2 ||
    fail "$what: the old bytes changed, or the new space does not read as zeros"
done
echo "power cuts: $news new size, $olds old size, $leaks with leaks"
exit 0
