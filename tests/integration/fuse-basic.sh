#!/usr/bin/env bash
# vdisk-fuse on raw images: naming, sizes, reads and writes at any offset
# and length checked against qemu-img, the error cases (ENOSPC, EPERM,
# EROFS), statfs, the image lock, and SIGTERM.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires qemu-img qemu-io

cd "$VD_TMP"
mnt=$VD_TMP/mnt
size=$((9 * 1024 * 1024 + 1536))

# Command-line errors: one line, non-zero, nothing mounted.
mkdir -p "$mnt" a b
expect_error 'IMAGE' vdisk_fuse
expect_error 'IMAGE' vdisk_fuse "$mnt"
expect_error "unknown option '-x'" vdisk_fuse -x a.img "$mnt"
expect_error "unknown option '--bogus'" vdisk_fuse --bogus a.img "$mnt"
expect_error 'missing\.img' vdisk_fuse missing.img "$mnt"
: > a/disk.img
: > b/disk.qcow2
expect_error 'a/disk\.img and b/disk\.qcow2 would both appear as disk\.raw' \
  vdisk_fuse a/disk.img b/disk.qcow2 "$mnt"
! mountpoint -q "$mnt" || fail "a failed start left $mnt mounted"
vdisk_fuse --help | grep -q 'MOUNTPOINT' || fail "--help says nothing useful"
: > plain.img
expect_error "unknown option.*bogus" vdisk_fuse -f -o bogus plain.img "$mnt"

# A patterned image with an odd size and a second one without extension.
pattern_bytes "$size" 1 > disk.img
qemu-img create -q -f raw data 3M
qemu-io -f raw -c 'write -P 0x5a 1M 64k' data >/dev/null
qemu-img convert -f raw -O raw disk.img ref.raw
qemu-img convert -f raw -O raw data data-ref.raw
cp ref.raw expected.raw

fuse_mount "$mnt" disk.img data
[ "$(cd "$mnt" && echo *)" = "data.raw disk.raw" ] ||
  fail "mount shows '$(cd "$mnt" && echo *)', expected 'data.raw disk.raw'"
[ "$(stat -c %s "$mnt/disk.raw")" -eq "$size" ] ||
  fail "disk.raw has size $(stat -c %s "$mnt/disk.raw"), expected $size"
[ "$(stat -c %F "$mnt/disk.raw")" = "regular file" ] || fail "disk.raw is not a regular file"
cmp "$mnt/disk.raw" ref.raw || fail "disk.raw differs from qemu-img's raw conversion"
cmp "$mnt/data.raw" data-ref.raw || fail "data.raw differs from qemu-img's raw conversion"

# Reads at odd offsets and lengths (bypassing the page cache with O_DIRECT
# where the alignment allows, to reach the daemon with every shape).
/usr/bin/python3 - "$mnt/disk.raw" ref.raw <<'EOF'
import os, random, sys
r = random.Random(7)
ref = open(sys.argv[2], "rb").read()
fd = os.open(sys.argv[1], os.O_RDONLY)
n = len(ref)
for i in range(300):
    off = r.randrange(0, n)
    ln = r.choice([1, 511, 512, 4095, 4097, 65536, 1 << 20, 3 << 20, r.randrange(1, 200000)])
    got = os.pread(fd, ln, off)
    if got != ref[off:off + ln]:
        sys.exit("pread(%d, %d) differs" % (ln, off))
if os.pread(fd, 10, n) != b"" or os.pread(fd, 10, n + 12345) != b"":
    sys.exit("read past the end returned data")
EOF

# Writes at odd offsets and lengths; the same writes go to expected.raw.
/usr/bin/python3 - "$mnt/disk.raw" expected.raw <<'EOF'
import errno, os, random, sys
r = random.Random(11)
fd = os.open(sys.argv[1], os.O_RDWR)
exp = os.open(sys.argv[2], os.O_RDWR)
n = os.fstat(fd).st_size
for i in range(200):
    off = r.randrange(0, n - 1)
    ln = min(r.choice([1, 3, 512, 4096, 5000, 65537, 1 << 20, r.randrange(1, 300000)]), n - off)
    data = r.randbytes(ln)
    if os.pwrite(fd, data, off) != ln:
        sys.exit("short write of %d at %d" % (ln, off))
    os.pwrite(exp, data, off)
# Straddling the end: a short write, then ENOSPC at the end.
data = r.randbytes(8192)
got = os.pwrite(fd, data, n - 1000)
if got != 1000:
    sys.exit("write across the end wrote %d bytes, expected 1000" % got)
os.pwrite(exp, data[:1000], n - 1000)
for off in (n, n + 4096):
    try:
        os.pwrite(fd, b"x", off)
        sys.exit("write at %d (end %d) succeeded" % (off, n))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG):
            sys.exit("write past the end: %s, expected ENOSPC" % e)
os.fsync(fd)
os.fdatasync(fd)
if os.pread(fd, n, 0) != os.pread(exp, n, 0):
    sys.exit("read-back after writes differs")
EOF
[ "$(stat -c %s "$mnt/disk.raw")" -eq "$size" ] || fail "writes changed the size"

# The size is the disk's: truncate fails with EPERM, and so do creating
# and removing files.
[ "$(errno_of "os.truncate('$mnt/disk.raw', 4096)")" = EPERM ] ||
  fail "truncate did not fail with EPERM"
[ "$(errno_of "os.truncate('$mnt/disk.raw', $size + 512)")" = EPERM ] ||
  fail "growing truncate did not fail with EPERM"
[ "$(errno_of "os.truncate('$mnt/disk.raw', $size)")" = OK ] ||
  fail "same-size truncate failed"
[ "$(errno_of "open('$mnt/new.raw', 'w')")" = EPERM ] || fail "file creation was not refused"
[ "$(errno_of "os.unlink('$mnt/disk.raw')")" = EPERM ] || fail "unlink was not refused"
[ "$(errno_of "os.stat('$mnt/nothere.raw')")" = ENOENT ] || fail "lookup of a missing name"

# statfs: the file system holds the disks and has no room for more.
read -r blocks bsize free < <(stat -f -c '%b %S %f' "$mnt")
[ $((blocks * bsize)) -ge $((size + 3 * 1024 * 1024)) ] ||
  fail "statfs: $blocks blocks of $bsize do not hold the disks"
[ "$free" -eq 0 ] || fail "statfs: $free free blocks"

# A second mount of the image is refused by the lock, naming the holder;
# -U reads it anyway (and only with -r).
mkdir -p mnt2
expect_error "disk\.img: image is in use by process $fuse_pid .*write lock" \
  vdisk_fuse -f disk.img mnt2
expect_error "disk\.img: image is in use by process $fuse_pid .*read lock" \
  vdisk_fuse -f -r disk.img mnt2
expect_error 'needs -r' vdisk_fuse -f -U disk.img mnt2
! mountpoint -q mnt2 || fail "the second mount went ahead"
# Without -f the same: whatever fails on the way to serving (the image
# lock, a FUSE option, the mount point) prints one line and makes the
# command exit non-zero, leaving nothing mounted and no process behind.
bg=$VD_TMP/mnt2
expect_error "disk\.img: image is in use by process $fuse_pid .*write lock" \
  vdisk_fuse disk.img "$bg"
expect_error "unknown option.*bogus" vdisk_fuse -o bogus plain.img "$bg"
expect_error "$VD_TMP/nosuch" vdisk_fuse plain.img "$VD_TMP/nosuch"
! mountpoint -q mnt2 || fail "a failed background start left mnt2 mounted"
! pgrep -f -- "vdisk-fuse .*$VD_TMP/(mnt2|nosuch)\$" >/dev/null ||
  fail "a failed background start left a process behind"
# A background start returns 0 once the mount is ready and the daemon has
# said what it had to (the probed-raw warning); a relative image path
# means the caller's folder.
head -c 65536 /dev/zero > bg.img
rc=0
vdisk_fuse bg.img "$bg" 2>bg.err || rc=$?
on_exit "fusermount3 -uz '$bg'"
[ "$rc" -eq 0 ] || fail "background start exited with $rc: $(cat bg.err)"
mountpoint -q mnt2 || fail "vdisk-fuse returned before the mount was ready"
grep -q "warning: bg\.img: image format was not specified" bg.err ||
  fail "the warning of a background start is missing: '$(cat bg.err)'"
[ "$(wc -l < bg.err)" -eq 1 ] || fail "background start said: $(cat bg.err)"
bgpid=$(pgrep -f -- "vdisk-fuse bg\.img $bg\$") || fail "no vdisk-fuse daemon found"
printf 'daemon' | dd of=mnt2/bg.raw bs=1 seek=512 conv=notrunc status=none
fusermount3 -u mnt2
for i in $(seq 300); do kill -0 "$bgpid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$bgpid" 2>/dev/null || fail "the background vdisk-fuse did not exit after unmount"
[ "$(dd if=bg.img bs=1 skip=512 count=6 status=none)" = daemon ] ||
  fail "data written through a background mount is missing"
fuse_pid1=$fuse_pid
fuse_mount mnt2 -r -U disk.img
cmp mnt2/disk.raw "$mnt/disk.raw" || fail "-U mount reads differently"
fuse_umount mnt2
fuse_pid=$fuse_pid1

fuse_umount "$mnt"
qemu-img compare -q -f raw -F raw expected.raw disk.img ||
  fail "image differs from the expected contents after unmount"
qemu-img compare -q -f raw -F raw data-ref.raw data || fail "untouched image changed"

# Read-only: reads work, every kind of write fails with EROFS, and the
# file shows the image file's mode without write bits.
chmod 664 disk.img
fuse_mount "$mnt" -r disk.img
cmp "$mnt/disk.raw" expected.raw || fail "read-only mount reads differently"
[ "$(stat -c %a "$mnt/disk.raw")" = 444 ] || fail "read-only file is writable by mode"
[ "$(errno_of "os.open('$mnt/disk.raw', os.O_WRONLY)")" = EROFS ] ||
  fail "open for writing on a read-only mount did not fail with EROFS"
[ "$(errno_of "os.truncate('$mnt/disk.raw', 0)")" = EROFS ] ||
  fail "truncate on a read-only mount did not fail with EROFS"
# -o passes FUSE options through; -o ro is -r.
fuse_pid1=$fuse_pid
fuse_mount mnt2 -o allow_other -o ro disk.img
grep -q " $VD_TMP/mnt2 fuse.vdisk ro,.*allow_other" /proc/mounts ||
  fail "mount options not passed: $(grep " $VD_TMP/mnt2 " /proc/mounts)"
[ "$(errno_of "os.open('mnt2/disk.raw', os.O_WRONLY)")" = EROFS ] || fail "-o ro is not read-only"
fuse_umount mnt2
# Read-only mounts share the image.
fuse_mount mnt2 -r disk.img
cmp mnt2/disk.raw expected.raw || fail "second read-only mount reads differently"
fuse_umount mnt2
fuse_pid=$fuse_pid1
fuse_umount "$mnt"
qemu-img compare -q -f raw -F raw expected.raw disk.img || fail "read-only mount changed the image"

# --page-cache: the kernel caches pages, so mmap works too.
fuse_mount "$mnt" --page-cache disk.img
/usr/bin/python3 - "$mnt/disk.raw" expected.raw <<'EOF'
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 0)
exp = open(sys.argv[2], "rb").read()
if m[:] != exp:
    sys.exit("mmap of the file reads differently")
m[100:104] = b"mmap"
m.flush()
m.close()
os.close(fd)
EOF
printf 'mmap' | dd of=expected.raw bs=1 seek=100 conv=notrunc status=none
cmp "$mnt/disk.raw" expected.raw || fail "write through mmap reads back wrong"
fuse_umount "$mnt"
qemu-img compare -q -f raw -F raw expected.raw disk.img || fail "write through mmap is missing"

# SIGTERM: unmounts, flushes and exits 0 with the written data in place.
fuse_mount "$mnt" disk.img
printf 'sigterm-test' | dd of="$mnt/disk.raw" bs=1 seek=4096 conv=notrunc status=none
printf 'sigterm-test' | dd of=expected.raw bs=1 seek=4096 conv=notrunc status=none
kill -TERM "$fuse_pid"
rc=0
wait "$fuse_pid" || rc=$?
[ "$rc" -eq 0 ] || fail "vdisk-fuse exited with $rc on SIGTERM"
! mountpoint -q "$mnt" || fail "SIGTERM left $mnt mounted"
qemu-img compare -q -f raw -F raw expected.raw disk.img || fail "data written before SIGTERM is missing"
echo OK
