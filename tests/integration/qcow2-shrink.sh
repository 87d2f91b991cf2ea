#!/usr/bin/env bash
# vdtool resize --shrink shrinks qcow2 images as qemu-img resize --shrink
# does (issue 15):
#  - the same image (data, compressed and zero clusters, 64 KiB and
#    512-byte clusters) shrunk by both to a size inside an L2 table's span
#    and by -SIZE: the same virtual size, qemu-img check clean, the bytes of
#    a raw copy truncated the same way, the file cut to qemu-img's length;
#    grown again, the old tail reads zeros;
#  - refusals in one line, nothing written: without --shrink and a size
#    that is not a multiple of 512 (qemu-img refuses both); internal
#    snapshots (qemu-img shrinks them; vdisk does not write such images);
#  - power cuts at random moments of a shrink (the LD_PRELOAD shim and
#    powercut.py, as qcow2-resize.sh): qemu-img check finds at worst leaks,
#    the size is the old or the new one, the bytes below the new size are
#    intact, and a second shrink finishes the job.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
cd "$VD_TMP"

vsize() { qemu-img info --output=json "$1" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p'; }
fsize() { stat -c %s "$1"; }

for cs in 65536 512; do
  for new in 3146240 -5M; do
    what="cluster $cs, size $new"
    qemu-img create -q -f qcow2 -o cluster_size=$cs base.qcow2 8M
    qemu-io -f qcow2 -c 'write -P 0x11 0 4M' -c 'write -c -P 0x12 4M 64k' \
      -c 'write -z 5M 1M' -c 'write -P 0x13 6M 2M' -c 'discard 7M 64k' \
      base.qcow2 >/dev/null
    cp base.qcow2 peer.qcow2
    cp base.qcow2 ours.qcow2
    qemu-img resize -q --shrink peer.qcow2 -- $new
    vdtool resize --shrink ours.qcow2 $new >/dev/null || fail "$what: vdtool resize failed"
    [ "$(vsize ours.qcow2)" = "$(vsize peer.qcow2)" ] ||
      fail "$what: virtual size $(vsize ours.qcow2), qemu-img's $(vsize peer.qcow2)"
    qemu-img check -q ours.qcow2 || fail "$what: not clean after the shrink"
    qemu-img convert -f qcow2 -O raw base.qcow2 cut.raw
    truncate -s "$(vsize peer.qcow2)" cut.raw
    qemu-img compare -q -f raw -F qcow2 cut.raw ours.qcow2 ||
      fail "$what: bytes differ from a truncated raw copy"
    [ "$(fsize ours.qcow2)" = "$(fsize peer.qcow2)" ] ||
      fail "$what: file of $(fsize ours.qcow2) bytes, qemu-img's $(fsize peer.qcow2)"
    vdtool resize ours.qcow2 8M >/dev/null
    qemu-img resize -q peer.qcow2 8M
    qemu-img check -q ours.qcow2 || fail "$what: not clean grown again"
    qemu-img compare -q peer.qcow2 ours.qcow2 || fail "$what: grown again, bytes differ from qemu-img's"
  done
done
echo "shrunk as qemu-img shrinks"

# Refusals: one line, the file unchanged.
sum=$(md5sum < base.qcow2)
expect_error 'use --shrink' vdtool resize base.qcow2 1M
expect_error 'multiple of 512' vdtool resize --shrink base.qcow2 1000
! qemu-img resize -q --shrink base.qcow2 1000 2>/dev/null || fail "qemu-img took 1000 bytes"
cp base.qcow2 snap.qcow2
qemu-img snapshot -c s1 snap.qcow2
snapsum=$(md5sum < snap.qcow2)
expect_error 'internal snapshots' vdtool resize --shrink snap.qcow2 1M
[ "$(md5sum < base.qcow2)" = "$sum" ] && [ "$(md5sum < snap.qcow2)" = "$snapsum" ] ||
  fail "a refused shrink wrote"

# Power cuts during shrinks (512-byte clusters: many L2 tables dropped).
[ -f "$top_builddir/tests/unit/.libs/libvdtest-shim.so" ] || skip "the test shim is not built"
iterations=${QCOW2_SHRINK_CRASH_ITERATIONS:-8}
seed0=${QCOW2_SHRINK_SEED:-$RANDOM}
echo "power cuts: seed $seed0, $iterations iterations"
qemu-img create -q -f qcow2 -o cluster_size=512 orig.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x21 0 4M' orig.qcow2 >/dev/null
new=1024000
qemu-img convert -f qcow2 -O raw orig.qcow2 cut.raw
truncate -s $new cut.raw
news=0; olds=0; leaks=0
for it in $(seq "$iterations"); do
  seed=$((seed0 + it))
  cp orig.qcow2 img.qcow2
  what="iteration $it (seed $seed, $(power_cut img.qcow2 $seed 300 vdtool resize --shrink img.qcow2 $new))"
  state=$(check_leaks_only img.qcow2 "$what")
  [ "$state" = leaks ] && leaks=$((leaks + 1))
  case $(vsize img.qcow2) in
    $new) news=$((news + 1)) ;;
    $((4 << 20))) olds=$((olds + 1)) ;;
    *) fail "$what: size $(vsize img.qcow2) is neither the old nor the new one" ;;
  esac
  qemu-io -f qcow2 -r -c "read -P 0x21 0 $new" img.qcow2 | grep -q "^read $new/" ||
    fail "$what: the bytes below the new size changed"
  vdtool resize -q --shrink img.qcow2 $new || fail "$what: a second shrink failed"
  check_leaks_only img.qcow2 "$what, then a second shrink" >/dev/null
  qemu-img compare -q -f raw -F qcow2 cut.raw img.qcow2 || fail "$what: after a second shrink, bytes differ"
done
echo "power cuts: $news new size, $olds old size, $leaks with leaks"
exit 0
