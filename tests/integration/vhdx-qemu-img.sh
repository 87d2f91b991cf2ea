#!/usr/bin/env bash
# VHDX reading against qemu-img: fixed and dynamic images qemu-img makes
# (several sizes and block sizes, written by qemu-io and by qemu-img
# convert) read byte-exact in vdtool against `qemu-img convert -O raw`;
# `vdtool info` shows the format's fields and agrees with qemu-img on the
# keys both print; block status reports the unallocated blocks as holes.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
cd "$VD_TMP"

# A raw source: random data, a zero run, holes, data in the last sector.
size=$((40*1024*1024 + 3*512))
truncate -s "$size" src.raw
qemu-io -f raw -c 'write -P 0xa5 0 4k' -c 'write -P 0x11 1M 65536' \
  -c 'write -P 0x5a 10M 3M' -c "write -P 0xee $((size - 512)) 512" \
  src.raw >/dev/null
pattern_bytes 3000000 7 | dd of=src.raw bs=1M seek=20 conv=notrunc status=none

n=0
check_image() {   # IMAGE WHAT: vdtool reads IMAGE exactly as qemu-img does
  qemu-img convert -f vhdx -O raw "$1" qref.raw
  vdtool convert -f vhdx -O raw "$1" mine.raw
  cmp qref.raw mine.raw || fail "$2: vdtool reads different data"
  # Probed, too (no -f).
  vdtool info "$1" | grep -q '^file format: vhdx$' || fail "$2: not probed as vhdx"
  n=$((n + 1))
}

for sub in dynamic fixed; do
  for bs in 1M 8M 32M 256M; do
    qemu-img convert -f raw -O vhdx -o subformat=$sub,block_size=$bs src.raw c-$sub-$bs.vhdx
    check_image c-$sub-$bs.vhdx "convert $sub block_size=$bs"
    cmp src.raw mine.raw || fail "convert $sub $bs: differs from the source"
  done
  # Sizes that are not a multiple of the block size; data at the very end.
  for s in 1M 3M 100M 1G 5000000000; do
    # (fixed images are written out in full: keep those small)
    [ $sub = fixed ] && case $s in 1G|5000000000) continue ;; esac
    qemu-img create -q -f vhdx -o subformat=$sub q-$sub.vhdx $s
    bytes=$(qemu-img info -f vhdx --output=json q-$sub.vhdx |
            /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    qemu-io -f vhdx -c "write -P 0x33 0 64k" -c "write -P 0x44 $((bytes / 2)) 4k" \
      -c "write -P 0x55 $((bytes - 4096)) 4096" -c "write -z $((bytes / 2)) 512" \
      q-$sub.vhdx >/dev/null
    check_image q-$sub.vhdx "qemu-io $sub size=$s"
    vdtool info --output=json q-$sub.vhdx > v.json
    qemu-img info -f vhdx --output=json q-$sub.vhdx > q.json
    /usr/bin/python3 - <<'PY' || fail "$sub $s: info --output=json disagrees with qemu-img"
import json
v = json.load(open("v.json")); q = json.load(open("q.json"))
for k in ("virtual-size", "cluster-size", "format", "filename"):
    assert v.get(k) == q.get(k), (k, v.get(k), q.get(k))
PY
  done
done
echo "byte-exact: $n qemu-made images"

# info: the format-specific fields.
vdtool info c-dynamic-8M.vhdx > info.txt
for f in 'subformat: dynamic' 'block-size: 8388608' 'logical-sector-size: 512' \
         'physical-sector-size: 512' 'log: clean'; do
  grep -q "^ *$f\$" info.txt || { cat info.txt; fail "info lacks '$f'"; }
done
grep -Eq '^ *page83: [0-9a-f]{8}-' info.txt || { cat info.txt; fail "info lacks page83"; }
grep -Eq '^ *data-write-guid: [0-9a-f]{8}-' info.txt || fail "info lacks data-write-guid"
grep -q '^cluster_size: 8388608$' info.txt || fail "cluster_size"
vdtool info c-fixed-1M.vhdx | grep -q '^ *subformat: fixed$' || fail "fixed not reported"

# Block status (qemu has none for VHDX): qemu-img convert allocates only the
# 1 MiB blocks of the source that hold a non-zero byte; vdtool map must
# report exactly those as data and the rest as holes.
vdtool map --output=json c-dynamic-1M.vhdx > vmap.json
/usr/bin/python3 - <<'PY' || fail "vdtool map disagrees with the source's non-zero blocks"
import json
src = open("src.raw", "rb").read()
B = 1 << 20
want = []
for i in range(0, len(src), B):
    d = any(src[i:i + B])
    n = min(B, len(src) - i)
    if want and want[-1][2] == d:
        want[-1][1] += n
    else:
        want.append([i, n, d])
got = []
for e in json.load(open("vmap.json")):
    if got and got[-1][2] == e["data"] and got[-1][0] + got[-1][1] == e["start"]:
        got[-1][1] += e["length"]
    else:
        got.append([e["start"], e["length"], e["data"]])
assert got == want, (got, want)
PY

exit 0
