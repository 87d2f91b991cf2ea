#!/usr/bin/env bash
# vdtool commit -b BASE commits into an image below the immediate parent,
# as qemu-img commit -b (issue 15), each form beside qemu-img's:
#  - the same three-layer chain (base <- mid <- top, each layer holding
#    its own data, top zeroing some of base's) is committed with
#    qemu-img in one folder and with vdtool in another: BASE then holds
#    what TOP read before; as qemu-img, -b implies -d: TOP and MID are
#    left as they are (every image reads the same as qemu-img's copy,
#    and qemu-img check finds them clean); chains with a qcow2 base and
#    with a raw base (qemu-img compare judges);
#  - -b naming the immediate parent also leaves TOP's data (no emptying);
#  - a relative BASE is found from the folder of the image that names it
#    as its backing file, as qemu-img finds it; a name not in the chain
#    (TOP itself included) fails as qemu-img fails, nothing written; a
#    base vdisk cannot write (internal snapshots) is refused in one line;
#  - a base smaller than the image is grown to the image's size first, as
#    qemu-img commit grows it (with and without -b; qcow2 and raw bases):
#    same virtual size, same bytes as qemu-img's;
#  - a VHD chain (qemu reads no differencing VHD, so it is written
#    through vdisk-nbd and judged by the bytes: the dynamic base with
#    qemu-img directly, top flattened by vdtool convert).
. "${top_srcdir:-.}/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io
cd "$VD_TMP"

# The writes of each layer (qemu-io commands), base first.
w_base=(-c 'write -P 0x11 0 2M' -c 'write -P 0x12 3M 512k')
w_mid=(-c 'write -P 0x22 1M 2M' -c 'write -z 3M 64k')
w_top=(-c 'write -P 0x33 2M 1M' -c 'write -z 0 64k')

# chain DIR BASEFMT: base.BASEFMT <- mid.qcow2 <- top.qcow2 in DIR.
chain() {
  mkdir -p "$1"
  qemu-img create -q -f "$2" "$1/base.$2" 4M
  qemu-img create -q -f qcow2 -b "base.$2" -F "$2" "$1/mid.qcow2"
  qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$1/top.qcow2"
  qemu-io -f "$2" "${w_base[@]}" "$1/base.$2" >/dev/null
  qemu-io -f qcow2 "${w_mid[@]}" "$1/mid.qcow2" >/dev/null
  qemu-io -f qcow2 "${w_top[@]}" "$1/top.qcow2" >/dev/null
}

for fmt in qcow2 raw; do
  chain "peer-$fmt" "$fmt"
  chain "ours-$fmt" "$fmt"
  qemu-img convert -O raw "ours-$fmt/top.qcow2" "before-$fmt.raw"
  (cd "peer-$fmt" && qemu-img commit -q -b "base.$fmt" top.qcow2)
  (cd "ours-$fmt" && vdtool commit -q -b "base.$fmt" top.qcow2) ||
    fail "vdtool commit -b base.$fmt top.qcow2 failed"
  qemu-img compare -q -f "$fmt" -F raw "ours-$fmt/base.$fmt" \
      "before-$fmt.raw" ||
    fail "$fmt base does not hold what top read before the commit"
  for img in "base.$fmt" mid.qcow2 top.qcow2; do
    qemu-img compare -q "peer-$fmt/$img" "ours-$fmt/$img" ||
      fail "$fmt chain: $img differs from qemu-img commit -b's"
    [ "$fmt.${img##*.}" = raw.raw ] ||
      qemu-img check -q "ours-$fmt/$img" || fail "$img is not clean"
  done
  # -b implies -d: top still holds its own data (qemu-img's map agrees).
  for side in peer ours; do
    qemu-img map --output=json "$side-$fmt/top.qcow2" |
      sed 's/, "offset": [0-9]*//' >"$side.map"
  done
  grep -q '"depth": 0, "present": true, "zero": false, "data": true' ours.map ||
    fail "top was emptied: $(cat ours.map)"
  diff peer.map ours.map >&2 || fail "top's map differs from qemu-img's"
done

# -b naming the immediate parent: committed, top not emptied.
chain peer-p qcow2
chain ours-p qcow2
qemu-img commit -q -b mid.qcow2 peer-p/top.qcow2
vdtool commit -q -b mid.qcow2 ours-p/top.qcow2 ||
  fail "vdtool commit -b PARENT failed"
for img in base.qcow2 mid.qcow2 top.qcow2; do
  qemu-img compare -q "peer-p/$img" "ours-p/$img" ||
    fail "-b PARENT: $img differs from qemu-img's"
done
qemu-img map --output=json ours-p/top.qcow2 | grep -q '"depth": 0, "present": true, "zero": false, "data": true' ||
  fail "-b PARENT emptied top"

# Relative BASE, named from outside the chain's folder: relative to the
# image that names it (found), not to the working folder.
chain peer-r qcow2
chain ours-r qcow2
qemu-img commit -q -b base.qcow2 peer-r/top.qcow2
vdtool commit -q -b base.qcow2 ours-r/top.qcow2 ||
  fail "vdtool commit -b base.qcow2 DIR/top.qcow2 failed"
qemu-img compare -q peer-r/base.qcow2 ours-r/base.qcow2 ||
  fail "relative BASE: base differs from qemu-img's"

# Names not in the chain: both refuse, nothing is written.
cp ours-r/base.qcow2 base-copy.qcow2
for b in nothere.qcow2 top.qcow2 ../base-copy.qcow2; do
  if qemu-img commit -q -b "$b" peer-r/top.qcow2 2>peer.err; then
    fail "qemu-img commit -b $b succeeded"
  fi
  expect_error "Did not find '$b' in the backing chain of 'ours-r/top.qcow2'" \
    vdtool commit -q -b "$b" ours-r/top.qcow2
  grep -q "Did not find '$b' in the backing chain" peer.err ||
    fail "qemu-img said: $(cat peer.err)"
done
cmp ours-r/base.qcow2 base-copy.qcow2 || fail "a refused commit wrote base"

# A base vdisk does not write (here: an internal snapshot) is refused in
# one line when it is made writable, nothing written (qemu-img writes
# snapshotted images; vdisk does not).
qemu-img snapshot -c s1 ours-r/base.qcow2
cp ours-r/base.qcow2 base-copy.qcow2
expect_error "cannot write the base .*internal snapshots is not supported" \
  vdtool commit -q -b base.qcow2 ours-r/top.qcow2
cmp ours-r/base.qcow2 base-copy.qcow2 || fail "a refused commit wrote base"

# A base smaller than the image: qemu-img commit grows it to the image's
# size first (block/commit.c truncates a shorter base); so does vdtool.
# small DIR BASEFMT: base.BASEFMT (2M) <- top.qcow2 (4M), top writing
# both below and above 2M.
small() {
  mkdir -p "$1"
  qemu-img create -q -f "$2" "$1/base.$2" 2M
  qemu-io -f "$2" -c 'write -P 0x41 0 2M' "$1/base.$2" >/dev/null
  qemu-img create -q -f qcow2 -b "base.$2" -F "$2" "$1/top.qcow2" 4M
  qemu-io -f qcow2 -c 'write -P 0x42 1M 2M' -c 'write -P 0x43 3M 512k' \
    "$1/top.qcow2" >/dev/null
}
vsize() { qemu-img info --output=json "$1" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p'; }
for fmt in qcow2 raw; do
  for b in "" "-b base.$fmt"; do
    rm -rf peer-s ours-s
    small peer-s $fmt
    small ours-s $fmt
    qemu-img commit -q $b peer-s/top.qcow2
    vdtool commit -q $b ours-s/top.qcow2 ||
      fail "commit ${b:+$b }into a smaller $fmt base failed"
    [ "$(vsize ours-s/base.$fmt)" = "$(vsize peer-s/base.$fmt)" ] ||
      fail "commit ${b:+$b }: the $fmt base is $(vsize ours-s/base.$fmt) bytes, qemu-img's $(vsize peer-s/base.$fmt)"
    qemu-img compare -q peer-s/base.$fmt ours-s/base.$fmt ||
      fail "commit ${b:+$b }into a smaller $fmt base: base differs from qemu-img's"
    [ $fmt = raw ] || qemu-img check -q ours-s/base.$fmt || fail "grown base is not clean"
  done
done

# A VHD chain: the same writes, the differencing layers through
# vdisk-nbd; then vdtool commit -b and the bytes against qemu-img's
# qcow2 result (peer-qcow2 above).
mkdir vhd
qemu-img create -q -f vpc vhd/base.vhd 4M
qemu-io -f vpc "${w_base[@]}" vhd/base.vhd >/dev/null
vdtool create -q -f vpc -b base.vhd -F vpc vhd/mid.vhd
vdtool create -q -f vpc -b mid.vhd -F vpc vhd/top.vhd
start_nbd -f vpc vhd/mid.vhd
qemu-io -f raw "${w_mid[@]}" "$nbd_uri" >/dev/null
stop_nbd
start_nbd -f vpc vhd/top.vhd
qemu-io -f raw "${w_top[@]}" "$nbd_uri" >/dev/null
stop_nbd
vdtool convert -O raw vhd/top.vhd vhd-before.raw
qemu-img compare -q -f raw -F raw vhd-before.raw before-qcow2.raw ||
  fail "the VHD chain does not read as the qcow2 chain"
vdtool commit -q -b base.vhd vhd/top.vhd || fail "vdtool commit -b on VHD"
qemu-img compare -q -f vpc -F qcow2 vhd/base.vhd peer-qcow2/base.qcow2 ||
  fail "VHD base differs from qemu-img's committed qcow2 base"
vdtool convert -O raw vhd/top.vhd vhd-after.raw
qemu-img compare -q -f raw -F raw vhd-after.raw vhd-before.raw ||
  fail "VHD top reads differently after commit -b"
vdtool check -q vhd/base.vhd || fail "VHD base is not clean"
exit 0
