#!/usr/bin/env bash
# VMDK images made by qemu-img (create of every subformat plus qemu-io
# writes, and convert -O vmdk of a patterned raw image, streamOptimized
# included) read byte-exact against qemu-img convert -O raw (cmp and
# qemu-img compare); block status agrees with qemu-img map; info reports
# qemu-img's cid / parent-cid / create-type; writes are refused; served
# over vdisk-nbd and read with nbdcopy.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io nbdcopy /usr/bin/python3
cd "$VD_TMP"
M=$((1 << 20))
SUBS="monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized"

# A patterned source: data, a zero run written as data, holes, an
# unaligned tail write, and the last grain.
qemu-img create -q -f raw src.raw 72M
qemu-io -f raw -c 'write -P 0x5a 1M 1M' -c 'write -P 0x00 3M 64k' \
  -c 'write -P 0x33 40M 100k' -c 'write -P 0x71 71M 1M' src.raw >/dev/null
pattern_bytes $((300 * 1024)) 7 | dd of=src.raw bs=1k seek=20000 conv=notrunc status=none

judge() {   # IMG [nocmp]: vdtool reads IMG exactly as qemu-img does
  local img=$1
  qemu-img convert -f vmdk -O raw "$img" want.raw
  vdtool convert -f vmdk -O raw "$img" got.raw || fail "$img: convert failed"
  # (cmp reads every byte of the sparse 3 GiB ones: compare suffices there.)
  [ $# -gt 1 ] || cmp want.raw got.raw ||
    fail "$img: vdtool reads differently from qemu-img"
  qemu-img compare -f vmdk -F raw "$img" got.raw >/dev/null ||
    fail "$img: qemu-img compare says different"
  vdtool compare "$img" want.raw >/dev/null || fail "$img: vdtool compare"
  # Probed, the same (no -f).
  vdtool compare "$img" got.raw >/dev/null || fail "$img: not probed as vmdk"
  # Holes: every range qemu-img map calls a hole reads as a hole here too.
  qemu-img map -f vmdk --output=json "$img" > qmap.json
  vdtool map -f vmdk --output=json "$img" > vmap.json
  /usr/bin/python3 - qmap.json vmap.json "$img" <<'EOF' || fail "$img: holes differ from qemu-img map"
import json, sys
q = json.load(open(sys.argv[1])); v = json.load(open(sys.argv[2]))
def spans(m, pred):
    out = []
    for e in m:
        if pred(e):
            if out and out[-1][1] == e["start"]:
                out[-1][1] += e["length"]
            else:
                out.append([e["start"], e["start"] + e["length"]])
    return out
# Zero ranges by qemu are zero here (a flat file's holes may be finer).
qz = spans(q, lambda e: e["zero"]); vz = spans(v, lambda e: e["zero"])
def covered(a, b):
    return all(any(s >= bs and e <= be for bs, be in b) for s, e in a)
ok = covered(qz, vz)
# Sparse extents: exactly the same unallocated ranges.
if "Flat" not in sys.argv[3]:
    ok = ok and spans(q, lambda e: not e["data"]) == spans(v, lambda e: not e["data"])
if not ok:
    print("qemu", qz, "vdisk", vz, file=sys.stderr); sys.exit(1)
EOF
}

for s in $SUBS; do
  qemu-img convert -f raw -O vmdk -o subformat=$s src.raw conv-$s.vmdk
  judge conv-$s.vmdk
  cmp src.raw got.raw || fail "conv-$s.vmdk does not hold the source"
  # Info: the keys and values qemu-img prints.
  qemu-img info --output=json conv-$s.vmdk > qi.json
  vdtool info --output=json conv-$s.vmdk > vi.json
  /usr/bin/python3 - qi.json vi.json <<'EOF' || fail "conv-$s.vmdk: info differs"
import json, sys
q = json.load(open(sys.argv[1])); v = json.load(open(sys.argv[2]))
assert v["format"] == "vmdk" and v["virtual-size"] == q["virtual-size"], (q, v)
qd, vd = q["format-specific"]["data"], v["format-specific"]["data"]
for k in ("cid", "parent-cid", "create-type"):
    assert qd[k] == vd[k], (k, qd[k], vd[k])
assert vd["extents"] == len(qd["extents"]), (vd, qd)
assert v.get("cluster-size") == q.get("cluster-size"), (q, v)
EOF
done

# A VMware-style stream: the header defers the grain directory to the
# footer (qemu writes it up front; qemu reads both).
/usr/bin/python3 - conv-streamOptimized.vmdk footer.vmdk <<'EOF'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
hdr = bytes(b[:512])
b[56:64] = struct.pack("<Q", 0xffffffffffffffff)
b += bytes(-len(b) % 512)
b += struct.pack("<QII", 1, 0, 3) + bytes(496) + hdr + bytes(512)
open(sys.argv[2], "wb").write(b)
EOF
judge footer.vmdk
cmp src.raw got.raw || fail "footer.vmdk does not hold the source"

# Made by create, then written by qemu-io (zero-grain writes included).
for s in $SUBS; do
  qemu-img create -q -f vmdk -o subformat=$s new-$s.vmdk 3G
  [ $s = streamOptimized ] && continue   # qemu-io cannot write those
  qemu-io -f vmdk -c 'write -P 0x11 0 64k' -c 'write -P 0x22 2047M 2M' \
    -c 'write -P 0x44 2900M 4k' -c 'write -z 2048M 64k' new-$s.vmdk >/dev/null
  judge new-$s.vmdk nocmp
done
judge new-streamOptimized.vmdk nocmp

# Read-only: a write-type operation is refused in one line.
expect_error 'device is read-only; VMDK images are read-only' \
  vdtool convert -n -O vmdk src.raw conv-monolithicSparse.vmdk

# Served over NBD (read-only whatever asked), copied out with nbdcopy.
start_nbd -f vmdk conv-streamOptimized.vmdk
nbdcopy --connections=4 --requests=16 "$nbd_uri" nbd.raw ||
  fail "nbdcopy from the VMDK export failed"
cmp src.raw nbd.raw || fail "the NBD export differs from the source"
nbdinfo "$nbd_uri" | grep -q 'is_read_only: true' ||
  fail "the VMDK export is not read-only"
stop_nbd
echo PASS
