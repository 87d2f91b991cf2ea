#!/usr/bin/env bash
# SEEK_DATA/SEEK_HOLE through the mount against qemu-img map, hole
# punching and zeroing with fallocate, and their error cases.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires qemu-img qemu-io fallocate

cd "$VD_TMP"
mnt=$VD_TMP/mnt
size=$((16 * 1024 * 1024))
qemu-img create -q -f raw disk.img $size
qemu-io -f raw -c 'write -P 0x11 0 64k' -c 'write -P 0x22 3M 1M' \
  -c 'write -P 0x33 9M 512k' -c 'write -P 0x44 15M 1M' disk.img >/dev/null

# Data extents ("start length" lines, adjacent ones merged) as qemu-img
# map sees the image and as lseek sees the exposed file.
qemu_data() {
  qemu-img map -f "$1" --output=json "$2" | /usr/bin/python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    if e["data"]:
        if out and out[-1][0] + out[-1][1] == e["start"]:
            out[-1][1] += e["length"]
        else:
            out.append([e["start"], e["length"]])
for s, l in out:
    print(s, l)'
}
seek_data() {
  /usr/bin/python3 - "$1" <<'PY'
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
n = os.fstat(fd).st_size
pos = 0
while pos < n:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    print(d, h - d)
    pos = h
for off in (n, n + 1):
    for w in (os.SEEK_DATA, os.SEEK_HOLE):
        try:
            os.lseek(fd, off, w)
            sys.exit("lseek at the end did not fail")
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
PY
}

qemu_data raw disk.img > want
fuse_mount "$mnt" disk.img
seek_data "$mnt/disk.raw" > got
[ -s want ] || fail "qemu-img map shows no data; the test image is wrong"
diff -u want got || fail "SEEK_DATA/SEEK_HOLE disagree with qemu-img map"

# Punch inside data, across a data/hole boundary, and unaligned; zero a
# range; all must read zeros at once and the rest stay intact.
cp disk.img expected.raw
/usr/bin/python3 - expected.raw <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for off, ln in ((3 * 2**20 + 4096, 65536), (9 * 2**20 + 256 * 1024, 2**20),
                (15 * 2**20 + 1000, 3000), (4096, 8192)):
    os.pwrite(fd, bytes(ln), off)
PY
fallocate -p -o $((3 * 1024 * 1024 + 4096)) -l 65536 "$mnt/disk.raw"
fallocate -p -o $((9 * 1024 * 1024 + 256 * 1024)) -l $((1024 * 1024)) "$mnt/disk.raw"
fallocate -p -o $((15 * 1024 * 1024 + 1000)) -l 3000 "$mnt/disk.raw"
fallocate -z -o 4096 -l 8192 "$mnt/disk.raw"
cmp "$mnt/disk.raw" expected.raw || fail "punched/zeroed ranges read back wrong"
# Beyond the end: with KEEP_SIZE a no-op, without it ENOSPC.
fallocate -p -o $((size - 4096)) -l 65536 "$mnt/disk.raw" || fail "punch across the end failed"
fallocate -z -n -o $((size + 4096)) -l 4096 "$mnt/disk.raw" || fail "zero past the end with KEEP_SIZE failed"
expect_error 'No space left' fallocate -z -o $((size - 4096)) -l 65536 "$mnt/disk.raw"
expect_error 'not supported' fallocate -o 0 -l 65536 "$mnt/disk.raw"
dd if=/dev/zero bs=4096 count=1 status=none | cmp -n 4096 - <(tail -c 4096 "$mnt/disk.raw") ||
  fail "the last 4 KiB do not read as zeros after the punch across the end"
/usr/bin/python3 - expected.raw <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
n = os.fstat(fd).st_size
os.pwrite(fd, bytes(4096), n - 4096)
PY
cmp "$mnt/disk.raw" expected.raw || fail "contents wrong after the end cases"

# The punched 1 MiB is a hole again, as lseek and the image itself say.
seek_data "$mnt/disk.raw" > got
fuse_umount "$mnt"
qemu-img compare -q -f raw -F raw expected.raw disk.img || fail "image differs after unmount"
qemu_data raw disk.img > want
diff -u want got || fail "after punching, SEEK_DATA/SEEK_HOLE disagree with qemu-img map"
grep -q "^$((9 * 1024 * 1024)) $((256 * 1024))\$" want ||
  fail "punching did not free the 1 MiB range in the image: $(cat want)"
echo OK
