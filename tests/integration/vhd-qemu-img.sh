#!/usr/bin/env bash
# VHD interop with qemu-img, qemu-io and vhdiinfo: images vdtool makes open
# with the same virtual size in qemu (and, by the size rules of qemu 10 and
# Windows as the independent generator reads them), compare identical to
# their raw source, and read back byte-exact; images qemu makes read
# byte-exact in vdtool.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdgen/vhdgen.py" "$@"; }
cd "$VD_TMP"

qsize() { qemu-img info -f vpc --output=json "$1" |
          /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }
vsize() { vdtool info --output=json "$1" |
          /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }

# Sizes: the size asked for, seen the same by every reader.
for s in 1G 1000000000 127G 2000G 1M 33554944; do
  bytes=$(/usr/bin/python3 -c "
s='$s'; m={'M':1<<20,'G':1<<30}
print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))")
  types="dynamic"
  case $s in 2000G|127G) ;; *) types="dynamic fixed" ;; esac
  for t in $types; do
    vdtool create -q -f vhd -o subformat=$t img.vhd "$s"
    [ "$(qsize img.vhd)" = "$bytes" ] || fail "$s $t: qemu-img says $(qsize img.vhd)"
    [ "$(vsize img.vhd)" = "$bytes" ] || fail "$s $t: vdtool says $(vsize img.vhd)"
    for rule in qemu7 qemu10 windows; do
      [ "$(gen size img.vhd $rule)" = "$bytes" ] || fail "$s $t: $rule rule reads $(gen size img.vhd $rule)"
    done
    vdtool info img.vhd | grep -q "subformat: $t" || fail "$s: not $t"
  done
done
# Fixed VHDs are recognised by their tail footer (qemu-img would say raw).
vdtool create -q -f vhd -o subformat=fixed f.vhd 8M
vdtool info --output=json f.vhd | grep -q '"format": "vpc"' || fail "fixed VHD not probed"
[ "$(stat -c %s f.vhd)" = $((8*1024*1024 + 512)) ] || fail "fixed VHD file size"
# Block sizes.
vdtool create -q -f vhd -o block_size=512K b.vhd 10M
vdtool info b.vhd | grep -q '^cluster_size: 524288' || fail "block_size option"
expect_error 'block_size' vdtool create -q -f vhd -o block_size=3M x.vhd 10M
expect_error 'subformat' vdtool create -q -f vhd -o subformat=sparse x.vhd 10M
expect_error '2040 GiB' vdtool create -q -f vhd x.vhd 2041G

# A raw source: random data, zero runs, holes, an odd tail.
size=$((48*1024*1024 + 3*512))
vdtool create -q src.raw "$size"
qemu-io -f raw \
  -c 'write -P 0xa5 0 4k' \
  -c 'write -P 0x11 1M 65536' \
  -c 'write -P 0x00 3M 1M' \
  -c 'write -P 0x5a 10M 3M' \
  -c "write -P 0xee $((size - 512)) 512" src.raw >/dev/null
pattern_bytes 5000000 42 | dd of=src.raw bs=1M seek=20 conv=notrunc status=none

for t in dynamic fixed; do
  vdtool convert -O vhd -o subformat=$t src.raw $t.vhd
  qemu-img compare -f raw -F vpc src.raw $t.vhd >/dev/null || fail "$t: qemu-img compare"
  [ "$(qsize $t.vhd)" = "$size" ] || fail "$t: converted size"
  vdtool convert -O raw $t.vhd back-$t.raw
  cmp src.raw back-$t.raw || fail "$t: round trip changed data"
  qemu-img convert -f vpc -O raw $t.vhd q-$t.raw
  cmp src.raw q-$t.raw || fail "$t: qemu-img reads different data"
  qemu-io -f vpc -r -c 'read -P 0x5a 10M 3M' -c 'read -P 0xa5 0 4k' \
    -c "read -P 0xee $((size - 512)) 512" $t.vhd > qio.txt
  ! grep -q 'verification failed' qio.txt || fail "$t: qemu-io pattern mismatch"
  grep -q 'read 512/512 bytes' qio.txt || fail "$t: qemu-io did not read"
  gen read $t.vhd gen-$t.raw
  cmp src.raw gen-$t.raw || fail "$t: the independent reader disagrees"
done
# Sparse: zero blocks stay unallocated, like qemu-img's own convert.
qemu-img convert -f raw -O vpc src.raw q.vhd
[ "$(stat -c %s dynamic.vhd)" -le "$(stat -c %s q.vhd)" ] ||
  fail "dynamic VHD larger than qemu-img's ($(stat -c %s dynamic.vhd) > $(stat -c %s q.vhd))"
vdtool info dynamic.vhd | grep -q 'allocated-blocks: 7$' || { vdtool info dynamic.vhd; fail "allocated blocks"; }

# Images qemu makes (its own writes, with qemu-io patterns) read exactly.
for t in dynamic fixed; do
  qemu-img create -q -f vpc -o subformat=$t qemu-$t.vhd 40M
  qemu-io -f vpc -c 'write -P 0x33 0 1M' -c 'write -P 0x44 5M 64k' \
    -c 'write -P 0x55 39M 1M' -c 'write -z 5M 4k' qemu-$t.vhd >/dev/null
  qemu-img convert -f vpc -O raw qemu-$t.vhd qref-$t.raw
  vdtool convert -O raw qemu-$t.vhd mine-$t.raw
  cmp qref-$t.raw mine-$t.raw || fail "qemu $t image reads differently"
  vdtool compare -f vpc -F vpc qemu-$t.vhd qemu-$t.vhd >/dev/null || fail "compare $t"
  vdtool info qemu-$t.vhd | grep -q "creator: qemu" || fail "creator"
done
# info agrees with qemu-img on the keys both print.
vdtool info --output=json qemu-dynamic.vhd > v.json
qemu-img info -f vpc --output=json qemu-dynamic.vhd > q.json
/usr/bin/python3 - <<'PY' || fail "info --output=json disagrees with qemu-img"
import json
v = json.load(open("v.json")); q = json.load(open("q.json"))
for k in ("virtual-size", "cluster-size", "format", "filename", "dirty-flag"):
    assert v.get(k) == q.get(k), (k, v.get(k), q.get(k))
PY

# vdtool writing into an image qemu made keeps it valid for qemu.
qemu-img create -q -f vpc -o subformat=dynamic into.vhd "$size"
qemu-io -f vpc -c 'write -P 0x77 2M 4M' into.vhd >/dev/null
vdtool convert -n -O vpc src.raw into.vhd
qemu-img compare -f vpc -F raw into.vhd src.raw >/dev/null ||
  fail "qemu disagrees after vdtool wrote into its image"

# vhdiinfo (libvhdi) parses what vdtool makes.
if command -v vhdiinfo >/dev/null; then
  for t in dynamic fixed; do
    vhdiinfo $t.vhd > vi.txt || fail "vhdiinfo $t"
    grep -q "Media size.*$size bytes" vi.txt || { cat vi.txt; fail "vhdiinfo $t size"; }
  done
fi
exit 0
