#!/usr/bin/env bash
# A dynamic VHD made by qemu-img, served by vdisk-nbd: nbdinfo --map shows
# holes where nothing was written, qemu-io reads and writes through the
# export, and qemu's own vpc driver reads back what the clients wrote.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io nbdinfo nbdcopy

vhd=$VD_TMP/disk.vhd
qemu-img create -q -f vpc -o subformat=dynamic "$vhd" 64M
qemu-io -f vpc -c 'write -P 0x31 1M 64k' -c 'write -P 0x32 40M 64k' "$vhd" >/dev/null
size=$(qemu-img info --output=json "$vhd" | /usr/bin/python3 -c \
  'import json,sys; print(json.load(sys.stdin)["virtual-size"])')

start_nbd "disk=$vhd"
uri=$(nbd_uri_for disk)
nbdinfo --size "$uri" | grep -qx "$size" || fail "size differs from qemu's"

# The map: data at 1 MiB and 40 MiB, holes far from them.
map=$(nbdinfo --map "$uri")
echo "$map"
/usr/bin/python3 - "$map" <<'PY' || fail "unexpected map"
import sys
ext = []
for line in sys.argv[1].splitlines():
    off, length, typ = (int(x) for x in line.split()[:3])
    ext.append((off, off + length, typ))
def state(a, b):
    """Types of the extents overlapping [a, b)."""
    return {t for s, e, t in ext if s < b and e > a}
M = 1 << 20
assert state(1 * M, 1 * M + 65536) == {0}, "written data at 1M not data"
assert state(40 * M, 40 * M + 65536) == {0}, "written data at 40M not data"
assert state(8 * M, 32 * M) == {3}, "never-written 8M..32M not a hole"
assert state(48 * M, 64 * M) == {3}, "never-written 48M..64M not a hole"
PY

out=$(qemu-io -f raw -c 'read -P 0x31 1M 64k' -c 'read -P 0 2M 1M' \
  -c 'write -P 0x33 20M 1M' -c 'write -z 1M 4k' -c 'read -P 0x33 20M 1M' \
  -c 'read -P 0 1M 4k' -c 'flush' "$uri" 2>&1)
grep -q 'fail' <<<"$out" && fail "qemu-io through NBD: $out"
nbdinfo --map "$uri" | awk '$1 <= 20971520 && $1 + $2 > 20971520 {print $3}' |
  grep -qx 0 || fail "new write at 20M is not data"

nbdcopy "$uri" "$VD_TMP/copy.raw" || fail "nbdcopy"
stop_nbd
qemu-img compare -f vpc -F raw "$vhd" "$VD_TMP/copy.raw" ||
  fail "qemu's vpc driver reads something else than the export served"
out=$(qemu-io -f vpc -r -c 'read -P 0x33 20M 1M' -c 'read -P 0x32 40M 64k' "$vhd" 2>&1)
grep -q 'fail' <<<"$out" && fail "qemu reads the VHD wrong: $out"
echo PASS
