#!/usr/bin/env bash
# vdtool convert from VMDK (a sparse delta chain and a streamOptimized
# image) to VHD, VHDX, raw and vdz: byte-exact (qemu-img compare where
# qemu reads the output, vdtool compare across formats otherwise), sparse
# (qemu-img map: the source's holes stay holes; du: the raw output holds
# no more than the data), with -p progress and several threads (-m);
# vdtool compare between formats finds a one-byte difference.
. "$top_srcdir/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
cd "$VD_TMP"
M=$((1 << 20))

qemu-img create -q -f vmdk base.vmdk 256M
qemu-io -f vmdk -c 'write -P 0x41 0 8M' -c 'write -P 0x42 100M 3M' base.vmdk >/dev/null
qemu-img create -q -f vmdk -b base.vmdk -F vmdk src.vmdk
qemu-io -f vmdk -c 'write -P 0x43 4M 64k' -c 'write -P 0x44 200M 1M' \
  -c 'write -P 0x45 255M 1M' src.vmdk >/dev/null
qemu-img convert -f vmdk -O raw src.vmdk want.raw
qemu-img convert -f vmdk -O vmdk -o subformat=streamOptimized src.vmdk stream.vmdk

data_mib() {   # IMG FMT: MiB of data qemu-img map reports
  qemu-img map -f "$2" --output=json "$1" |
    /usr/bin/python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]) >> 20)'
}
src_data=$(data_mib src.vmdk vmdk)     # 8 + 3 + 1 + 1 (+ the 64k inside the 8)

for src in src.vmdk stream.vmdk; do
  for fmt in vpc vhdx raw vdz; do
    out=out-$src.$fmt
    vdtool convert -p -m 4 -O $fmt "$src" "$out" > progress.txt ||
      fail "convert $src -O $fmt failed"
    grep -q '(100.00/100%)' progress.txt || fail "convert -p showed no progress"
    if [ $fmt = vdz ]; then
      vdtool compare "$out" want.raw >/dev/null || fail "$out differs"
      vdtool convert -O raw "$out" back.raw
      cmp want.raw back.raw || fail "$out reads back differently"
      continue
    fi
    qemu-img compare -f $fmt -F raw "$out" want.raw >/dev/null ||
      fail "qemu-img compare: $out differs from the source"
    vdtool compare "$src" "$out" >/dev/null || fail "vdtool compare $src $out"
    # Sparse: holes stay holes.  qemu-img map judges raw and VHD (VHD
    # rounds up to its 2 MiB blocks); qemu's VHDX driver reports no block
    # status, so there the host file's allocation (du) is the judge.
    case $fmt in
      raw) got=$(data_mib "$out" $fmt)
           [ "$got" -le "$src_data" ] ||
             fail "$out: $got MiB of data, the source has $src_data" ;;
      vpc) got=$(data_mib "$out" $fmt)
           [ "$got" -le 20 ] || fail "$out: $got MiB of data (not sparse)" ;;
      vhdx) used=$(du -k "$out" | cut -f1)
           [ "$used" -le $((40 * 1024)) ] || fail "$out: $used KiB on disk" ;;
    esac
  done
done
# du: the raw output occupies about the data, not 256 MiB.
used=$(du -k out-src.vmdk.raw | cut -f1)
[ "$used" -le $(( (src_data + 1) * 1024 )) ] ||
  fail "out-src.vmdk.raw uses $used KiB on disk"

# Threads: -m 1 and -m 8 give the same bytes.
vdtool convert -m 1 -O vhdx src.vmdk m1.vhdx
vdtool convert -m 8 -O vhdx src.vmdk m8.vhdx
qemu-img compare -f vhdx -F vhdx m1.vhdx m8.vhdx >/dev/null || fail "-m 1 and -m 8 differ"

# compare between formats: one changed byte is found, at its sector.
cp want.raw diff.raw
printf 'X' | dd of=diff.raw bs=1 seek=$((200 * M + 777)) conv=notrunc status=none
rc=0; vdtool compare src.vmdk diff.raw > cmp.txt || rc=$?
[ $rc = 1 ] || fail "compare of different images exited $rc"
grep -q "offset $((200 * M + 512))" cmp.txt || fail "compare: $(cat cmp.txt)"
rc=0; vdtool compare out-stream.vmdk.vdz out-src.vmdk.vhdx >/dev/null || rc=$?
[ $rc = 0 ] || fail "compare vdz / vhdx exited $rc"
echo PASS
