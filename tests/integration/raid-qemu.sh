#!/usr/bin/env bash
# RAID 0, 1 and 5 arrays checked with qemu-img and qemu-io: data written
# into the array by vdtool comes back identical through qemu-img compare,
# sits on the members where md's layout puts it (read with qemu-io
# straight from the member files), and survives a failed member.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
requires qemu-img qemu-io

cd "$VD_TMP"
# Source image written by qemu-io (patterns at known places).
qemu-img create -q -f raw src.raw 12M
qemu-io -f raw -c "write -P 0xa1 0 64k" -c "write -P 0xb2 64k 64k" \
        -c "write -P 0xc3 128k 64k" -c "write -P 0xd4 192k 64k" \
        -c "write -P 0x5e 1000k 3000k" -c "write -P 0x77 7001k 5k" \
        src.raw >/dev/null
pattern_bytes $((2*1024*1024)) 7 > rnd.bin
dd if=rnd.bin of=src.raw bs=1M seek=9 conv=notrunc status=none

for level in 0 1 5; do
  d=l$level; mkdir $d
  case $level in
    0) n=3; msize=5M ;;
    1) n=2; msize=14M ;;
    5) n=3; msize=8M ;;
  esac
  members=()
  for i in $(seq 0 $((n-1))); do members+=("$d/m$i.img"); done
  vdtool raid create -l $level -c 64K --size $msize "$d/a.vdraid" "${members[@]}"
  size=$(vdtool info --output=json "$d/a.vdraid" |
         /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["virtual-size"], j["format"])')
  [ "${size#* }" = raid ] || fail "RAID$level: format is ${size#* }"
  vsize=${size% *}
  [ "$vsize" -ge $((12*1024*1024)) ] || fail "RAID$level: size $vsize too small"

  # A fresh array reads zeros.
  vdtool convert "$d/a.vdraid" "$d/zero.raw"
  qemu-io -f raw -c "read -P 0 0 $vsize" "$d/zero.raw" >/dev/null ||
    fail "RAID$level: fresh array does not read zeros"

  qemu-img resize -q -f raw src.raw "$vsize" 2>/dev/null || true
  vdtool convert -n -O raid src.raw "$d/a.vdraid"
  vdtool convert "$d/a.vdraid" "$d/out.raw"
  qemu-img compare -q -f raw -F raw src.raw "$d/out.raw" ||
    fail "RAID$level: qemu-img compare differs after a round trip"
  qemu-io -f raw -c "read -P 0xa1 0 64k" -c "read -P 0x5e 1000k 3000k" \
          "$d/out.raw" >/dev/null || fail "RAID$level: qemu-io pattern"

  # The members hold md's layout (data area 1 MiB in for RAID0/1, after
  # the partial parity log for RAID5).
  case $level in
    0) # chunk k on member k % 3, row k / 3
       qemu-io -f raw -c "read -P 0xa1 1M 64k" "$d/m0.img" >/dev/null &&
       qemu-io -f raw -c "read -P 0xb2 1M 64k" "$d/m1.img" >/dev/null &&
       qemu-io -f raw -c "read -P 0xc3 1M 64k" "$d/m2.img" >/dev/null &&
       qemu-io -f raw -c "read -P 0xd4 1088k 64k" "$d/m0.img" >/dev/null ||
         fail "RAID0 layout on the members" ;;
    1) for m in "${members[@]}"; do
         qemu-io -f raw -c "read -P 0xb2 1088k 64k" "$m" >/dev/null ||
           fail "RAID1 mirror $m"
       done ;;
    5) # 3 members, ppl area of 8 x (4K + 64K) after 128K: data at 1 MiB.
       # Stripe 0: parity m2, data m0 m1; stripe 1: parity m1, data m2 m0.
       qemu-io -f raw -c "read -P 0xa1 1M 64k" "$d/m0.img" >/dev/null &&
       qemu-io -f raw -c "read -P 0xb2 1M 64k" "$d/m1.img" >/dev/null &&
       qemu-io -f raw -c "read -P 0x13 1M 64k" "$d/m2.img" >/dev/null &&
       qemu-io -f raw -c "read -P 0xc3 1088k 64k" "$d/m2.img" >/dev/null &&
       qemu-io -f raw -c "read -P 0xd4 1088k 64k" "$d/m0.img" >/dev/null &&
       qemu-io -f raw -c "read -P 0x17 1088k 64k" "$d/m1.img" >/dev/null ||
         fail "RAID5 left-symmetric layout or parity on the members" ;;
  esac

  if [ $level != 0 ]; then
    vdtool raid scrub "$d/a.vdraid" | grep -q " 0 mismatched" ||
      fail "RAID$level: scrub found mismatches"
    # Fail a member: data still identical, degraded state shown.
    vdtool raid fail "$d/a.vdraid" 0
    vdtool raid detail "$d/a.vdraid" | grep -q "State : clean, degraded" ||
      fail "RAID$level: detail does not say degraded"
    vdtool convert "$d/a.vdraid" "$d/out2.raw"
    qemu-img compare -q -f raw -F raw src.raw "$d/out2.raw" ||
      fail "RAID$level: data differs with member 0 failed"
    # Writes while degraded, then replace and rebuild.
    qemu-io -f raw -c "write -P 0x42 5M 200k" src.raw >/dev/null
    vdtool convert -n -O raid src.raw "$d/a.vdraid"
    qemu-img create -q -f raw "$d/new.img" $msize
    vdtool raid replace "$d/a.vdraid" 0 "$d/new.img"
    vdtool raid detail --output=json "$d/a.vdraid" | /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
assert j["degraded"] is False, j
assert [m["state"] for m in j["members"]] == ["active"] * len(j["members"]), j
' || fail "RAID$level: not healthy after replace"
    vdtool raid scrub "$d/a.vdraid" | grep -q " 0 mismatched" ||
      fail "RAID$level: scrub after rebuild found mismatches"
    # Now lose another member: the rebuilt one must carry its data.
    vdtool raid fail "$d/a.vdraid" 1
    vdtool convert "$d/a.vdraid" "$d/out3.raw"
    qemu-img compare -q -f raw -F raw src.raw "$d/out3.raw" ||
      fail "RAID$level: rebuilt member holds wrong data"
  fi
done

# Assemble from members alone (descriptor lost).
rm l5/a.vdraid
vdtool raid assemble l5/b.vdraid l5/m2.img l5/new.img l5/m1.img
vdtool convert l5/b.vdraid l5/out4.raw
qemu-img compare -q -f raw -F raw src.raw l5/out4.raw ||
  fail "assembled array differs"
exit 0
