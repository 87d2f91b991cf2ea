#!/usr/bin/env bash
# An ext4 file system made, filled and checked by e2fsprogs through the
# vdisk-fuse file, across a remount; then the same file on a loop device
# mounted by the kernel (when loop devices are available here).
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires qemu-img mkfs.ext4 debugfs e2fsck

cd "$VD_TMP"
mnt=$VD_TMP/mnt
qemu-img create -q -f raw disk.img 64M
pattern_bytes $((1024 * 1024 + 77)) 21 > f1
pattern_bytes 100000 22 > f2
printf 'abc' > f3

fuse_mount "$mnt" disk.img
mkfs.ext4 -F -q "$mnt/disk.raw"
for f in f1 f2 f3; do
  debugfs -w -R "write $f $f" "$mnt/disk.raw" >/dev/null 2>&1
done
fuse_umount "$mnt"

fuse_mount "$mnt" disk.img
e2fsck -fn "$mnt/disk.raw" >e2fsck.log 2>&1 || { cat e2fsck.log; fail "e2fsck found errors"; }
for f in f1 f2 f3; do
  rm -f "out-$f"
  debugfs -R "dump $f out-$f" "$mnt/disk.raw" >/dev/null 2>&1
  cmp "$f" "out-$f" || fail "$f read back from the file system differs"
done

# The kernel's ext4 on a loop device over the exposed file.
if command -v losetup >/dev/null && loop=$(losetup --find --show "$mnt/disk.raw" 2>/dev/null); then
  on_exit "losetup -d $loop"
  mkdir -p fs
  if mount -t ext4 "$loop" fs 2>/dev/null; then
    on_exit "umount $VD_TMP/fs"
    cmp f1 fs/f1 || fail "f1 read through the loop device differs"
    cp f2 fs/f4
    sync
    umount fs
    cmp f2 <(debugfs -R "cat f4" "$mnt/disk.raw" 2>/dev/null) ||
      fail "a file written by the kernel's ext4 reads back differently"
  else
    echo "note: mounting ext4 from a loop device is not possible here"
  fi
  losetup -d "$loop"
else
  echo "note: no loop device available here"
fi
e2fsck -fn "$mnt/disk.raw" >e2fsck.log 2>&1 || { cat e2fsck.log; fail "e2fsck found errors after the loop mount"; }
fuse_umount "$mnt"

# The image itself, read by e2fsck without vdisk-fuse in the way.
qemu-img convert -f raw -O raw disk.img check.raw
e2fsck -fn check.raw >e2fsck.log 2>&1 || { cat e2fsck.log; fail "e2fsck on the image found errors"; }
echo OK
