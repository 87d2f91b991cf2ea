#!/usr/bin/env bash
# vdtool on raw images must agree with qemu-img: map extent for extent,
# info's virtual size, convert byte for byte (and sparse where qemu-img's
# own convert is sparse), compare's messages and exit codes.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
cd "$VD_TMP"

# A patterned sparse image: data at odd offsets and lengths, a zero write,
# a size that is not a multiple of 1 MiB.
size=$((64*1024*1024 + 7*512))
vdtool create -q src.raw "$size"
qemu-io -f raw \
  -c 'write -P 0xa5 0 4k' \
  -c 'write -P 0x11 1M 65537' \
  -c 'write -P 0x00 3M 1M' \
  -c 'write -P 0x5a 10M 3M' \
  -c 'write -z 11M 512k' \
  -c "write -P 0xee $((size - 512)) 512" \
  src.raw >/dev/null

# info: same virtual size and format as qemu-img.
vdtool info --output=json src.raw > info.json
qemu-img info --output=json src.raw > qinfo.json
/usr/bin/python3 - <<'PY'
import json
a = json.load(open("info.json")); b = json.load(open("qinfo.json"))
for k in ("virtual-size", "format", "filename", "dirty-flag"):
    assert a[k] == b[k], (k, a[k], b[k])
PY
vdtool info src.raw | grep -q "^virtual size: .*($size bytes)" || fail "human info"

# map: identical JSON, extent for extent.
vdtool map --output=json src.raw > map.json
qemu-img map --output=json src.raw > qmap.json
diff -u qmap.json map.json || fail "map --output=json differs from qemu-img"
vdtool map src.raw > map.txt
qemu-img map src.raw > qmap.txt
diff -u qmap.txt map.txt || fail "human map differs from qemu-img"
vdtool map --output=json --start-offset=1M --max-length=2M src.raw > part.json
qemu-img map --output=json --start-offset=1M --max-length=2M src.raw > qpart.json
diff -u qpart.json part.json || fail "map with a range differs"

# convert: byte-exact, and as sparse as qemu-img's own convert.
vdtool convert -p src.raw out.raw > progress.txt
grep -q '100.00/100%' progress.txt || fail "no progress bar with -p"
qemu-img compare -f raw -F raw src.raw out.raw >/dev/null || fail "convert changed data"
qemu-img convert -f raw -O raw src.raw qout.raw
qemu-img map --output=json out.raw > omap.json
qemu-img map --output=json qout.raw > qomap.json
diff -u qomap.json omap.json || fail "convert is not sparse the way qemu-img's is"
# -S 0 allocates everything; -m 1 works the same.
vdtool convert -S 0 -m 1 src.raw full.raw
qemu-img compare src.raw full.raw >/dev/null || fail "convert -S 0 changed data"
[ "$(qemu-img map --output=json full.raw | grep -c '"data": false')" -eq 0 ] \
  || fail "convert -S 0 left holes"
# cache=none (O_DIRECT + libaio) both ways gives the same bytes.
vdtool convert -t none -T none src.raw direct.raw
qemu-img compare src.raw direct.raw >/dev/null || fail "convert -t none changed data"
expect_error "cache mode must be unsafe, writeback, writethrough, none or directsync" vdtool convert -t bogus src.raw x.raw
# -n writes into an existing image (zeros must overwrite old data).
qemu-img create -q -f raw dirty.raw "$size"
qemu-io -f raw -c "write -P 0x77 0 $size" dirty.raw >/dev/null
vdtool convert -n src.raw dirty.raw
qemu-img compare src.raw dirty.raw >/dev/null || fail "convert -n left stale data"
# Converting into a file that is smaller with -n is refused.
vdtool create -q small.raw 1M
expect_error "small.raw: output is smaller" vdtool convert -n src.raw small.raw

# compare: same messages and exit codes as qemu-img.
check_compare() {
  local rc1=0 rc2=0
  qemu-img compare "$@" > q.out 2>&1 || rc1=$?
  vdtool compare "$@" > v.out 2>&1 || rc2=$?
  [ "$rc1" -eq "$rc2" ] || fail "compare $*: exit $rc2, qemu-img $rc1"
  diff -u q.out v.out || fail "compare $*: output differs"
}
check_compare src.raw out.raw
cp --sparse=always out.raw diff.raw
qemu-io -f raw -c 'write -P 0x01 20000000 1' diff.raw >/dev/null
check_compare src.raw diff.raw
vdtool create -q bigger.raw $((size + 1048576))
vdtool convert -n src.raw bigger.raw
check_compare src.raw bigger.raw
check_compare -s src.raw bigger.raw
qemu-io -f raw -c "write -P 0x02 $((size + 4096)) 1" bigger.raw >/dev/null
check_compare src.raw bigger.raw
rc=0; vdtool compare src.raw missing.raw 2>/dev/null || rc=$?
[ "$rc" -eq 2 ] || fail "compare with a missing file exited $rc, not 2"

# create: qemu-img sees the size we asked for.
vdtool create -q made.raw 1000000000
[ "$(qemu-img info --output=json made.raw | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = 1000000000 ] \
  || fail "created size"
vdtool create -q -o preallocation=full pre.raw 1M
[ "$(stat -c %b pre.raw)" -ge 2048 ] || fail "preallocation=full did not allocate"

# A block device member works like a file (loop device, if available).
if losetup -f >/dev/null 2>&1; then
  if dev=$(losetup --show -f src.raw 2>/dev/null); then
    on_exit losetup -d "$dev"
    vdtool info "$dev" | grep -q "($size bytes)" || fail "block device size"
    vdtool convert "$dev" fromdev.raw
    qemu-img compare src.raw fromdev.raw >/dev/null || fail "block device read"
  fi
fi
echo "raw-qemu-img: OK"
