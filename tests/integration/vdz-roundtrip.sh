#!/usr/bin/env bash
# raw -> vdz -> raw is byte-exact on patterned sparse images, with the
# default options, small and large clusters, LZ4HC and one thread, judged
# by qemu-img compare and cmp; vdz -> VHD is read back by qemu-img; no
# temporary file is left behind; a conversion killed half-way never
# leaves a target that opens.
. "$top_srcdir/tests/functions.sh"
requires qemu-img cmp

raw=$VD_TMP/disk.raw
# 24 MiB + 3 sectors: the last cluster is partial.  Random data, text,
# a few scattered sectors and holes.
truncate -s $((24 * 1024 * 1024 + 1536)) "$raw"
pattern_bytes $((1024 * 1024)) 1 | dd of="$raw" bs=64K seek=3 conv=notrunc status=none
yes 'vdisk vdz round trip text' | head -c $((3 * 1024 * 1024)) |
  dd of="$raw" bs=1M seek=8 conv=notrunc status=none
for s in 1 777 20000 49151; do
  pattern_bytes 512 "$s" | dd of="$raw" bs=512 seek="$s" conv=notrunc status=none
done
pattern_bytes 1536 9 | dd of="$raw" bs=512 seek=$((24 * 2048)) conv=notrunc status=none

roundtrip() {
  local name=$1; shift
  vdtool convert -O vdz "$@" "$raw" "$VD_TMP/$name.vdz"
  vdtool info "$VD_TMP/$name.vdz" > "$VD_TMP/$name.info"
  grep -q 'vdz' "$VD_TMP/$name.info" || fail "$name: info does not say vdz"
  grep -q 'compression_ratio' "$VD_TMP/$name.info" ||
    fail "$name: info has no compression ratio"
  vdtool convert -f vdz -O raw "$VD_TMP/$name.vdz" "$VD_TMP/$name.raw"
  cmp "$raw" "$VD_TMP/$name.raw" || fail "$name: round trip differs"
  qemu-img compare -q -f raw -F raw "$raw" "$VD_TMP/$name.raw" ||
    fail "$name: qemu-img compare differs"
  vdtool compare "$raw" "$VD_TMP/$name.vdz" >/dev/null ||
    fail "$name: vdtool compare differs"
  vdtool check "$VD_TMP/$name.vdz" >/dev/null || fail "$name: check failed"
}
roundtrip default -p
roundtrip small -o cluster_size=4K,level=9
roundtrip big -o cluster_size=2M,threads=1

# vdz -> VHD, read by qemu-img; and VHD -> vdz again.
vdtool convert -O vpc "$VD_TMP/default.vdz" "$VD_TMP/default.vhd"
qemu-img compare -q -f raw -F vpc "$raw" "$VD_TMP/default.vhd" ||
  fail "vdz -> vhd: qemu-img compare differs"
vdtool convert -O vdz "$VD_TMP/default.vhd" "$VD_TMP/again.vdz"
vdtool compare "$raw" "$VD_TMP/again.vdz" >/dev/null || fail "vhd -> vdz differs"

# Much smaller than the source, and the default cluster size is 32 KiB.
size=$(stat -c %s "$VD_TMP/default.vdz")
[ "$size" -lt $((6 * 1024 * 1024)) ] || fail "vdz is $size bytes"
grep -Eq 'cluster_size.*32768' "$VD_TMP/default.info" ||
  fail "default cluster size is not 32 KiB: $(cat "$VD_TMP/default.info")"

# Zero clusters are holes: every range qemu-img maps as data in the raw
# file is data in the vdz map, and the vdz map has holes.
vdtool map --output=json "$VD_TMP/default.vdz" > "$VD_TMP/vdz.map"
qemu-img map --output=json -f raw "$raw" > "$VD_TMP/raw.map"
/usr/bin/python3 - "$VD_TMP/raw.map" "$VD_TMP/vdz.map" <<'PY' || fail "maps disagree"
import json, sys
raw = json.load(open(sys.argv[1])); vdz = json.load(open(sys.argv[2]))
data = [(e["start"], e["start"] + e["length"]) for e in vdz if e["data"]]
holes = [e for e in vdz if not e["data"] and e["zero"]]
assert holes, "no holes in the vdz map"
for e in raw:
    if not e["data"]:
        continue
    s, t = e["start"], e["start"] + e["length"]
    for a, b in data:
        if a <= s < b:
            s = b
    assert s >= t, "raw data at %d is a hole in the vdz map" % s
PY

# An empty image round-trips too.
truncate -s 0 "$VD_TMP/empty.raw"
vdtool convert -O vdz "$VD_TMP/empty.raw" "$VD_TMP/empty.vdz"
vdtool convert -O raw "$VD_TMP/empty.vdz" "$VD_TMP/empty2.raw"
[ "$(stat -c %s "$VD_TMP/empty2.raw")" -eq 0 ] || fail "empty image grew"

# No temporary files left.
leftover=$(ls "$VD_TMP" | grep tmp || true)
[ -z "$leftover" ] || fail "temporary files left: $leftover"

# Kill conversions at various moments: the target either does not exist
# or is complete; a leftover temporary file never opens.
pattern_bytes $((32 * 1024 * 1024)) 5 > "$VD_TMP/big.raw"
for delay in 0.02 0.1 0.3; do
  rm -f "$VD_TMP"/crash.vdz*
  "$top_builddir/tools/vdtool" convert -O vdz -o threads=1,level=3 \
    "$VD_TMP/big.raw" "$VD_TMP/crash.vdz" &
  pid=$!
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ -e "$VD_TMP/crash.vdz" ]; then
    vdtool compare "$VD_TMP/big.raw" "$VD_TMP/crash.vdz" >/dev/null ||
      fail "killed after ${delay}s: target exists but is incomplete"
  fi
  for t in "$VD_TMP"/crash.vdz.tmp*; do
    [ -e "$t" ] || continue
    if vdtool info -f vdz "$t" >/dev/null 2>&1; then
      fail "killed after ${delay}s: temporary file $t opens as valid"
    fi
  done
done
exit 0
