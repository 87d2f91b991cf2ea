#!/usr/bin/env bash
# Discard and write-zeroes on VHDX as block states ([MS-VHDX] 2.5.1.1):
# whole blocks become UNMAPPED (discard) or ZERO (write-zeroes, and
# discard in a differencing image, where a block must not show the
# parent's data) through the log, their space punched out of the file and
# kept in the entry, so a later write takes it back (not at a place a
# hostile entry names); partial blocks get zeros written; NO_HOLE and
# fixed images keep their blocks.  Requests come from qemu-io through
# vdisk-nbd; judged by qemu-img (compare, check), the independent reader
# (tests/vhdxgen: content and block states) and vdtool map (holes).
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
cd "$VD_TMP"
M=$((1 << 20))
state() { gen states "$1" | awk -v b="$2" '$1 == b { print $2 }'; }
offset() { gen states "$1" | awk -v b="$2" '$1 == b { print $3 }'; }
same() {  # IMAGE MODEL
  vdtool compare -F raw "$1" "$2" >/dev/null || fail "$1 differs from the model (vdtool)"
  gen read "$1" g.raw || fail "$1: the independent reader refuses it"
  cmp g.raw "$2" || fail "$1 differs from the model (independent reader)"
}

truncate -s $((16 * M)) src.raw
qemu-io -f raw -c "write -P 0x31 0 16M" src.raw >/dev/null
vdtool convert -O vhdx -o block_size=1M src.raw z.vhdx
cp src.raw model.raw
alloc0=$(du -k z.vhdx | cut -f1)
size0=$(stat -c %s z.vhdx)
off1=$(offset z.vhdx 1)
vd_nbd_io z.vhdx model.raw 'discard 1M 1M' 'write -z -u 2M 2M' \
  "write -z -u $((5 * M + 512)) 4096" 'write -z 8M 1M' 'write -z -u 15M 1M'
same z.vhdx model.raw
qemu-img compare -f vhdx -F raw z.vhdx model.raw >/dev/null || fail "qemu-img compare"
qemu-img check -f vhdx z.vhdx > chk.txt 2>&1 || { cat chk.txt; fail "qemu-img check"; }
[ "$(state z.vhdx 1)" = 3 ] || fail "discarded block: state $(state z.vhdx 1), not UNMAPPED"
[ "$(offset z.vhdx 1)" = "$off1" ] || fail "discarded block: its space was not kept in the entry"
for b in 2 3 15; do
  [ "$(state z.vhdx $b)" = 2 ] || fail "zeroed block $b: state $(state z.vhdx $b), not ZERO"
done
[ "$(state z.vhdx 5)" = 6 ] || fail "a partial write-zeroes changed the block's state"
[ "$(state z.vhdx 8)" = 6 ] || fail "write-zeroes with NO_HOLE dropped the block"
# Block status: the zero and unmapped blocks are holes.
vdtool map --output=json z.vhdx > map.json
/usr/bin/python3 - <<'PY' || fail "map: zero and unmapped blocks are not holes"
import json
M = 1 << 20
m = json.load(open("map.json"))
def at(o):
    return next(e for e in m if e["start"] <= o < e["start"] + e["length"])
for o in (1 * M, 2 * M, 3 * M + 4096, 15 * M + 7):
    assert at(o)["zero"] and not at(o)["data"], at(o)
for o in (0, 4 * M, 5 * M, 8 * M):
    assert at(o)["data"], at(o)
PY
# The space went back to the host (where the file system can punch).  The
# log entries written meanwhile may take up to the log's 1 MiB of space the
# file did not use yet.
if fallocate -p -o 0 -l 4096 z.vhdx.probe 2>/dev/null || { truncate -s 8192 z.vhdx.probe && fallocate -p -o 0 -l 4096 z.vhdx.probe; }; then
  alloc1=$(du -k z.vhdx | cut -f1)
  [ $((alloc0 - alloc1)) -ge 3072 ] || fail "4 MiB of blocks not given back ($alloc0 KiB -> $alloc1 KiB)"
fi
# A write into the unmapped block takes its old space back.
vd_nbd_io z.vhdx model.raw "write -P 0x55 $((M + 4096)) 4096"
same z.vhdx model.raw
[ "$(state z.vhdx 1)" = 6 ] && [ "$(offset z.vhdx 1)" = "$off1" ] ||
  fail "rewritten block: state $(state z.vhdx 1) at $(offset z.vhdx 1), not fully present at $off1"
[ "$(stat -c %s z.vhdx)" = "$size0" ] || fail "the file grew for a block that had space"
qemu-img compare -f vhdx -F raw z.vhdx model.raw >/dev/null || fail "qemu-img compare after the rewrite"
# A partial discard is advisory: nothing changes.
cp model.raw scratch.raw
vd_nbd_io z.vhdx scratch.raw "discard $((10 * M + 4096)) 8192"
same z.vhdx model.raw

# A hostile ZERO entry naming the BAT region's space: a write must not
# land there.
truncate -s $((8 * M)) h.raw
vdtool convert -O vhdx -o block_size=1M h.raw h.vhdx
/usr/bin/python3 - <<'PY'
import struct
f = open("h.vhdx", "r+b")
f.seek(3 * (1 << 20) + 4 * 8)          # block 4's entry (BAT at 3 MiB)
f.write(struct.pack("<Q", (3 << 20) | 2))
PY
cp h.raw hm.raw
vd_nbd_io h.vhdx hm.raw "write -P 0x66 $((4 * M)) 4096"
same h.vhdx hm.raw
[ "$(offset h.vhdx 4)" != $((3 * M)) ] || fail "a write reused space a hostile entry named"

# Differencing: zeros hide the parent's data, as ZERO blocks.
vdtool create -q -f vhdx -b z.vhdx c.vhdx
cp model.raw cm.raw
vd_nbd_io c.vhdx cm.raw 'write -z -u 4M 1M' 'discard 6M 1M' "write -z -u $((7 * M)) 4096"
# The model: qemu-io's discard on a raw file reads zeros too.
same c.vhdx cm.raw
[ "$(state c.vhdx 4)" = 2 ] && [ "$(state c.vhdx 6)" = 2 ] || fail "differencing: zero blocks"
[ "$(state c.vhdx 7)" = 7 ] || fail "differencing: a partial write-zeroes must be written"

# Fixed images keep every block.
vdtool convert -O vhdx -o subformat=fixed,block_size=1M src.raw f.vhdx
cp src.raw fm.raw
vd_nbd_io f.vhdx fm.raw 'write -z -u 1M 2M'
same f.vhdx fm.raw
[ "$(state f.vhdx 1)" = 6 ] || fail "fixed: a block left the fully present state"
qemu-img check -f vhdx f.vhdx >/dev/null || fail "fixed: qemu-img check"
exit 0
