#!/usr/bin/env bash
# VHDX images no qemu-img can make, from the independent writer
# (tests/vhdxgen): 4096-byte logical sectors, differencing chains with
# partially present blocks (reads fall through to the parent by sector
# bitmap), parents found by relative and absolute paths under the
# confinement rules, the parent's DataWriteGuid checked.  libvhdi
# (vhdiinfo) reads them too where installed.
. "$top_srcdir/tests/functions.sh"
requires /usr/bin/python3
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
cd "$VD_TMP"
M=$((1 << 20))

# 4096-byte sectors, several block sizes; data at the very end.
for bs in 1 2 32; do
  gen create k$bs.vhdx --size $((100 * M)) --lss 4096 --block-size $((bs * M)) \
    --write 0:8192:1 --write $((50 * M + 4096)):12288:2 --write $((100 * M - 4096)):4096:3
  gen expect k$bs.vhdx want.raw
  vdtool convert -O raw k$bs.vhdx got.raw
  cmp want.raw got.raw || fail "4K sectors, block $bs MiB: reads differently"
  vdtool info k$bs.vhdx | grep -q '^ *logical-sector-size: 4096$' || fail "4K: info"
  vdtool info --output=json k$bs.vhdx | grep -q '"cluster-size": '$((bs * M)) || fail "4K: cluster size"
done
# A fixed 4K image.
gen create kf.vhdx --size $((8 * M)) --lss 4096 --fixed --write 4096:4096:4
gen expect kf.vhdx want.raw
vdtool convert -O raw kf.vhdx got.raw
cmp want.raw got.raw || fail "fixed 4K"
vdtool info kf.vhdx | grep -q '^ *subformat: fixed$' || fail "fixed 4K: subformat"

# A chain base <- mid <- top: partial blocks over partial blocks.
gen create base.vhdx --size $((64 * M)) --write 0:$((3 * M)):5 --write $((40 * M)):$((M)):6
gen expect base.vhdx base.raw
gen create mid.vhdx --size $((64 * M)) --parent base.vhdx --write 4096:512:7 \
  --write $((2 * M)):8192:8 --write $((40 * M + 512)):1024:9
gen expect mid.vhdx mid.raw --parent-raw base.raw
gen create top.vhdx --size $((64 * M)) --parent mid.vhdx --write 4608:512:10 \
  --write $((10 * M)):$((2 * M)):11
gen expect top.vhdx top.raw --parent-raw mid.raw
# Fully present blocks in a differencing image hide the parent entirely.
gen create full.vhdx --size $((64 * M)) --parent mid.vhdx --write 4608:512:15 --full
gen expect full.vhdx full.raw --parent-raw mid.raw
for l in mid top full; do
  vdtool convert -O raw $l.vhdx got.raw
  cmp $l.raw got.raw || fail "chain: $l reads differently"
done
vdtool info top.vhdx | grep -q '^backing file: mid.vhdx' || fail "chain: backing file"
vdtool info --backing-chain top.vhdx | grep -c 'subformat: differencing' | grep -qx 2 ||
  fail "chain: two differencing layers"
# Block status: a sector held by the child is data at depth 0, one only in
# the base at depth 2.
vdtool map --output=json top.vhdx > map.json
/usr/bin/python3 - <<'PY' || fail "chain: map depths"
import json
m = json.load(open("map.json"))
def at(o):
    return next(e for e in m if e["start"] <= o < e["start"] + e["length"])
assert at(4608)["depth"] == 0 and at(4608)["data"], at(4608)
assert at(4096)["depth"] == 1 and at(4096)["data"], at(4096)
assert at(0)["depth"] == 2 and at(0)["data"], at(0)
assert not at(60 << 20)["data"], at(60 << 20)
PY
# 4K-sector differencing.
gen create kb.vhdx --size $((16 * M)) --lss 4096 --write 0:$((2 * M)):12
gen expect kb.vhdx kb.raw
gen create kc.vhdx --size $((16 * M)) --lss 4096 --parent kb.vhdx --write 8192:4096:13
gen expect kc.vhdx kc.raw --parent-raw kb.raw
vdtool convert -O raw kc.vhdx got.raw
cmp kc.raw got.raw || fail "4K differencing"

# Parent lookup: relative path in a sub-folder; the absolute path when the
# relative one is missing; a parent outside the child's folder refused
# unless named with --backing; a wrong DataWriteGuid refused.
mkdir -p d/sub out
cp base.vhdx d/sub/p.vhdx
gen create d/c.vhdx --size $((64 * M)) --parent d/sub/p.vhdx --write 0:512:14
gen expect d/c.vhdx want.raw --parent-raw base.raw
vdtool convert -O raw d/c.vhdx got.raw
cmp want.raw got.raw || fail "relative path in a sub-folder"
gen create d/a.vhdx --size $((64 * M)) --parent d/sub/p.vhdx --rel 'gone\p.vhdx' \
  --abs "$PWD/d/sub/p.vhdx" --write 0:512:14
vdtool convert -O raw d/a.vhdx got.raw
cmp want.raw got.raw || fail "absolute path"
cp base.vhdx out/p.vhdx
gen create d/o.vhdx --size $((64 * M)) --parent out/p.vhdx --write 0:512:14
expect_error "outside the child's folder" vdtool info --backing-chain d/o.vhdx
vdtool convert --backing=out/p.vhdx -O raw d/o.vhdx got.raw || fail "--backing override"
cmp want.raw got.raw || fail "--backing override reads differently"
gen create d/w.vhdx --size $((64 * M)) --parent d/sub/p.vhdx \
  --linkage '{01234567-89ab-cdef-0123-456789abcdef}'
expect_error 'does not match: its DataWriteGuid' vdtool info --backing-chain d/w.vhdx
gen create d/n.vhdx --size $((64 * M)) --parent d/sub/p.vhdx --rel 'nothere.vhdx'
expect_error 'parent image not found' vdtool info --backing-chain d/n.vhdx
# A loop: an image that names itself.
gen create d/self.vhdx --size $((64 * M)) --parent d/sub/p.vhdx --rel 'self.vhdx' \
  --linkage '{01234567-89ab-cdef-0123-456789abcdef}'
expect_error 'loop' vdtool info --backing-chain d/self.vhdx

# libvhdi reads the 4K and differencing images.
if command -v vhdiinfo >/dev/null; then
  vhdiinfo k2.vhdx > vi.txt || fail "vhdiinfo 4K"
  grep -qi 'bytes per sector.*4096' vi.txt || { cat vi.txt; fail "vhdiinfo: sector size"; }
  vhdiinfo top.vhdx > vi.txt || fail "vhdiinfo differencing"
  grep -qi 'differential' vi.txt || { cat vi.txt; fail "vhdiinfo: type"; }
fi
exit 0
