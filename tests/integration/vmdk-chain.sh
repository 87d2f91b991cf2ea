#!/usr/bin/env bash
# VMDK delta disks: a chain made by qemu-img create -b (three layers) reads
# byte-exact against qemu-img convert -O raw, over vdisk-nbd too (nbdcopy);
# block status walks into the parents (depth); the parent CID is checked;
# a parent outside the folder needs the operator's --backing; a parent
# loop fails in one line.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io nbdcopy /usr/bin/python3
cd "$VD_TMP"
mkdir d
cd d

# desc_edit FILE OLD NEW: replace OLD by NEW in the descriptor embedded in
# the sparse extent FILE, in place (the text stays inside its sectors).
desc_edit() {
  /usr/bin/python3 - "$@" <<'EOF'
import struct, sys
f, old, new = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
b = bytearray(open(f, "rb").read())
off, n = (x * 512 for x in struct.unpack_from("<QQ", b, 28))
text = bytes(b[off:off + n]).split(b"\0")[0]
assert old in text, (old, text)
text = text.replace(old, new)
assert len(text) <= n
b[off:off + n] = text + bytes(n - len(text))
open(f, "wb").write(b)
EOF
}

qemu-img create -q -f vmdk base.vmdk 64M
qemu-io -f vmdk -c 'write -P 0x11 0 4M' -c 'write -P 0x12 60M 4M' base.vmdk >/dev/null
qemu-img create -q -f vmdk -o zeroed_grain=on -b base.vmdk -F vmdk mid.vmdk
qemu-io -f vmdk -c 'write -P 0x21 1M 64k' -c 'write -z 2M 1M' mid.vmdk >/dev/null
qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse -b mid.vmdk -F vmdk top.vmdk
qemu-io -f vmdk -c 'write -P 0x31 1M 4k' -c 'write -P 0x32 30M 100k' top.vmdk >/dev/null

qemu-img convert -f vmdk -O raw top.vmdk want.raw
vdtool convert -O raw top.vmdk got.raw || fail "convert of the chain failed"
cmp want.raw got.raw || fail "the chain reads differently from qemu-img"
qemu-img compare -f vmdk -F raw top.vmdk got.raw >/dev/null || fail "qemu-img compare"

# Info: the parent as qemu-img names it; the chain listing.
vdtool info --output=json top.vmdk > vi.json
qemu-img info --output=json top.vmdk > qi.json
/usr/bin/python3 - qi.json vi.json <<'EOF' || fail "info of the delta disk differs"
import json, sys
q = json.load(open(sys.argv[1])); v = json.load(open(sys.argv[2]))
assert v["backing-filename"].endswith(q["backing-filename"]), (q, v)
assert v["backing-filename-format"] == "vmdk", v
qd, vd = q["format-specific"]["data"], v["format-specific"]["data"]
assert qd["parent-cid"] == vd["parent-cid"] and qd["cid"] == vd["cid"], (qd, vd)
EOF
[ "$(vdtool info --backing-chain top.vmdk | grep -c '^image:')" = 3 ] ||
  fail "info --backing-chain does not list three images"

# Block status: the base's data is seen at depth 2, holes stay holes.
vdtool map --output=json top.vmdk > map.json
/usr/bin/python3 - map.json <<'EOF' || fail "block status of the chain"
import json, sys
m = json.load(open(sys.argv[1]))
def at(off):
    return next(e for e in m if e["start"] <= off < e["start"] + e["length"])
assert at(0)["depth"] == 2 and at(0)["data"], at(0)
assert at(1 << 20)["depth"] == 0 and at(1 << 20)["data"], at(1 << 20)
assert at(2 << 20)["zero"] and at(2 << 20)["depth"] == 1, at(2 << 20)
assert not at(10 << 20)["data"] and at(10 << 20)["zero"], at(10 << 20)
EOF

# Served over NBD and copied with nbdcopy.
start_nbd top.vmdk
nbdcopy --connections=2 "$nbd_uri" nbd.raw || fail "nbdcopy failed"
cmp want.raw nbd.raw || fail "the NBD export of the chain differs"
stop_nbd

# The parent's CID must be the one the child records.
cp mid.vmdk mid.keep
/usr/bin/python3 - mid.vmdk <<'EOF'
import re, struct, sys
# qemu writes the CID without leading zeros ("CID=%x"), so the new number
# may be longer: rewrite the descriptor text within its sectors.
b = bytearray(open(sys.argv[1], "rb").read())
off, n = (x * 512 for x in struct.unpack_from("<QQ", b, 28))
text = bytes(b[off:off + n]).split(b"\0")[0]
text = re.sub(rb"\nCID=[0-9a-f]+\n", b"\nCID=0badc0de\n", text, count=1)
b[off:off + n] = text + bytes(n - len(text))
open(sys.argv[1], "wb").write(b)
EOF
expect_error 'parent .*mid.vmdk does not match: its CID is 0badc0de, parentCID says' \
  vdtool info --backing-chain top.vmdk
cp mid.keep mid.vmdk

# A parent outside the child's folder (even through a symlink inside it)
# is refused unless the operator names it.
qemu-img convert -f vmdk -O raw mid.vmdk mid-want.raw
mkdir ../out
mv base.vmdk ../out/b.vmdk
desc_edit mid.vmdk 'parentFileNameHint="base.vmdk"' \
  'parentFileNameHint="../out/b.vmdk"'
expect_error "parent .*b.vmdk is outside the child's folder" vdtool info --backing-chain mid.vmdk
vdtool convert --backing ../out/b.vmdk -O raw mid.vmdk mid.raw ||
  fail "the operator's --backing is refused"
cmp mid-want.raw mid.raw || fail "mid.vmdk over the operator's parent differs"
cp mid.keep mid.vmdk
ln -s ../out/b.vmdk base.vmdk
expect_error "parent .*base.vmdk is outside the child's folder" vdtool info --backing-chain mid.vmdk
rm base.vmdk
mv ../out/b.vmdk base.vmdk

# A parent loop: base names top as its parent (CIDs made to match).  The
# embedded descriptor is edited in place, within its sectors.
/usr/bin/python3 - base.vmdk top.vmdk <<'EOF'
import re, struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
t = open(sys.argv[2], "rb").read().decode()
tcid = re.search(r"CID=([0-9a-f]+)", t).group(1)
off, n = (x * 512 for x in struct.unpack_from("<QQ", b, 28))
text = bytes(b[off:off + n]).split(b"\0")[0].decode()
old = 'parentCID=ffffffff\ncreateType="monolithicSparse"\n'
assert old in text, "unexpected base descriptor"
text = text.replace(old, 'parentCID=%s\ncreateType="monolithicSparse"\n'
                    'parentFileNameHint="top.vmdk"\n' % tcid).encode()
assert len(text) <= n
b[off:off + n] = text + bytes(n - len(text))
open(sys.argv[1], "wb").write(b)
EOF
expect_error 'parent loop' vdtool info --backing-chain top.vmdk
expect_error 'parent loop' vdtool convert -O raw top.vmdk loop.raw
echo PASS
