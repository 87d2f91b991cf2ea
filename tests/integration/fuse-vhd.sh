#!/usr/bin/env bash
# vdisk-fuse on dynamic VHD images made by qemu-img: reads equal qemu-img's
# raw conversion; writes, hole punching and zeroing through the mount
# leave an image that vdtool check finds clean and qemu-img compare finds
# identical to the expected bytes.  A differencing child made by vdtool
# shows its parent through the mount, takes writes, and reads the same
# in vhdimount (libvhdi), an independent reader of differencing chains.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires qemu-img fallocate

cd "$VD_TMP"
mnt=$VD_TMP/mnt
mib=$((1024 * 1024))

# Random data in some 2 MiB blocks, partly filled ones, zeros elsewhere.
qemu-img create -q -f raw src.raw 40M
/usr/bin/python3 - src.raw <<'PY'
import os, random, sys
r = random.Random(5)
fd = os.open(sys.argv[1], os.O_RDWR)
for off, ln in ((0, 65536), (3 * 2**20 + 512, 100000), (10 * 2**20, 3 * 2**20 + 1024),
                (21 * 2**20 - 4096, 8192), (40 * 2**20 - 512, 512)):
    os.pwrite(fd, r.randbytes(ln), off)
PY
qemu-img convert -f raw -O vpc -o subformat=dynamic src.raw disk.vhd
qemu-img convert -f vpc -O raw disk.vhd ref.raw
vsize=$(qemu-img info --output=json disk.vhd | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
cp ref.raw expected.raw

fuse_mount "$mnt" disk.vhd
[ "$(stat -c %s "$mnt/disk.raw")" -eq "$vsize" ] ||
  fail "disk.raw has size $(stat -c %s "$mnt/disk.raw"), qemu-img says $vsize"
cmp "$mnt/disk.raw" ref.raw || fail "disk.raw differs from qemu-img's raw conversion"

# Writes anywhere (allocating blocks, partial sectors), then a punch and
# a zeroed range across block boundaries.
/usr/bin/python3 - "$mnt/disk.raw" expected.raw <<'PY'
import os, random, sys
r = random.Random(6)
fd = os.open(sys.argv[1], os.O_RDWR)
exp = os.open(sys.argv[2], os.O_RDWR)
n = os.fstat(fd).st_size
for i in range(120):
    off = r.randrange(0, n - 1)
    ln = min(r.choice([1, 3, 511, 512, 4096, 70000, 2**20, 2**21 + 5]), n - off)
    data = r.randbytes(ln)
    if os.pwrite(fd, data, off) != ln:
        sys.exit("short write")
    os.pwrite(exp, data, off)
for off, ln in ((10 * 2**20 + 1000, 2**21), (30 * 2**20, 4 * 2**20), (5, 700)):
    os.pwrite(exp, bytes(ln), off)
os.fsync(fd)
PY
fallocate -p -o $((10 * mib + 1000)) -l $((2 * mib)) "$mnt/disk.raw"
fallocate -p -o $((30 * mib)) -l $((4 * mib)) "$mnt/disk.raw"
fallocate -z -o 5 -l 700 "$mnt/disk.raw"
cmp "$mnt/disk.raw" expected.raw || fail "reads after writes/punch/zero differ"
# Every hole lseek reports reads as zeros.
/usr/bin/python3 - "$mnt/disk.raw" <<'PY'
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
n = os.fstat(fd).st_size
pos, holes = 0, 0
while pos < n:
    h = os.lseek(fd, pos, os.SEEK_HOLE)
    if h >= n:
        break
    try:
        d = os.lseek(fd, h, os.SEEK_DATA)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        d = n
    if os.pread(fd, d - h, h) != bytes(d - h):
        sys.exit("hole [%d, %d) does not read as zeros" % (h, d))
    holes += 1
    pos = d
if holes == 0:
    sys.exit("no holes reported in a sparse dynamic VHD")
PY
fuse_umount "$mnt"
vdtool check disk.vhd >check.log 2>&1 || { cat check.log; fail "vdtool check finds errors after writes through the mount"; }
qemu-img compare -f raw -F vpc expected.raw disk.vhd >/dev/null || fail "qemu-img compare: image differs from the expected bytes"

# A differencing child: the parent's view, then its own writes.  These are
# 4 KiB-aligned because libvhdi (20210425) reads a child's sector bitmap a
# byte (8 sectors) at a time: sectors next to a written one come back as
# the child's unwritten zeros instead of the parent's data.  Unaligned
# writes to a child are covered by the comparisons through the mount.
cp disk.vhd parent.vhd
cp expected.raw parent.raw
vdtool create -q -f vpc -b parent.vhd -F vpc child.vhd
cp parent.raw child-expected.raw
fuse_mount "$mnt" child.vhd
cmp "$mnt/child.raw" parent.raw || fail "the child does not show its parent's data"
/usr/bin/python3 - "$mnt/child.raw" child-expected.raw <<'PY'
import os, random, sys
r = random.Random(8)
fd = os.open(sys.argv[1], os.O_RDWR)
exp = os.open(sys.argv[2], os.O_RDWR)
n = os.fstat(fd).st_size
for i in range(40):
    off = r.randrange(0, n // 4096) * 4096
    ln = min(r.choice([4096, 8192, 20480, 2**20]), n - off)
    data = r.randbytes(ln)
    os.pwrite(fd, data, off)
    os.pwrite(exp, data, off)
PY
fallocate -z -o $((12 * mib)) -l $((mib + 4096)) "$mnt/child.raw"
dd if=/dev/zero of=child-expected.raw bs=4096 seek=$((12 * mib / 4096)) count=$((mib / 4096 + 1)) conv=notrunc status=none
cmp "$mnt/child.raw" child-expected.raw || fail "child reads wrong after writes"
fuse_umount "$mnt"
qemu-img compare -q -f raw -F vpc parent.raw parent.vhd || fail "writes to the child changed the parent"
vdtool check child.vhd >check.log 2>&1 || { cat check.log; fail "vdtool check finds errors in the child"; }

# vhdimount reads the chain on its own: its last file is the child's view.
if command -v vhdimount >/dev/null; then
  mkdir -p vm
  vhdimount child.vhd vm >/dev/null
  on_exit "fusermount3 -uz $VD_TMP/vm"
  last=$(ls vm | sort -V | tail -1)
  cmp "vm/$last" child-expected.raw || fail "vhdimount reads the child differently"
  fusermount3 -u vm
else
  echo "note: vhdimount (libvhdi-utils) missing: no independent chain check"
fi
echo OK
