#!/usr/bin/env bash
# An ext4 file system made, filled and checked by e2fsprogs through the
# vdisk-fuse file, across a remount; the kernel's ext4 on a loop device
# over the same file (when loop devices are available here); finally
# e2fsck on qemu-img's raw conversion of the image, without vdisk-fuse.
# Once on a raw image, once on a dynamic VHD.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires qemu-img mkfs.ext4 debugfs e2fsck

cd "$VD_TMP"
mnt=$VD_TMP/mnt
pattern_bytes $((1024 * 1024 + 77)) 21 > f1
pattern_bytes 100000 22 > f2
printf 'abc' > f3

e2fsck_ok() {   # FILE WHAT
  e2fsck -fn "$1" >e2fsck.log 2>&1 || { cat e2fsck.log; fail "e2fsck finds errors $2"; }
}

ext4_on() {   # FORMAT IMAGE
  local fmt=$1 img=$2 name=${2%.*}.raw loop
  vdtool create -q -f "$fmt" "$img" 64M

  fuse_mount "$mnt" "$img"
  mkfs.ext4 -F -q "$mnt/$name"
  for f in f1 f2 f3; do
    debugfs -w -R "write $f $f" "$mnt/$name" >/dev/null 2>&1
  done
  fuse_umount "$mnt"

  fuse_mount "$mnt" "$img"
  e2fsck_ok "$mnt/$name" "($fmt, after a remount)"
  for f in f1 f2 f3; do
    rm -f "out-$f"
    debugfs -R "dump $f out-$f" "$mnt/$name" >/dev/null 2>&1
    cmp "$f" "out-$f" || fail "$fmt: $f read back from the file system differs"
  done

  # Loop devices are shared with every other test on the machine: detach
  # ours once, and at exit only if still attached.
  if command -v losetup >/dev/null &&
     loop=$(losetup --find --show "$mnt/$name" 2>/dev/null); then
    loop_dev=$loop
    mkdir -p fs
    if mount -t ext4 "$loop" fs 2>/dev/null; then
      fs_mounted=1
      cmp f1 fs/f1 || fail "$fmt: f1 read through the loop device differs"
      cp f2 fs/f4
      umount fs
      fs_mounted=
      cmp f2 <(debugfs -R "cat f4" "$mnt/$name" 2>/dev/null) ||
        fail "$fmt: a file written by the kernel's ext4 reads back differently"
    else
      echo "note: mounting ext4 from a loop device is not possible here"
    fi
    losetup -d "$loop"
    loop_dev=
  else
    echo "note: no loop device available here"
  fi
  e2fsck_ok "$mnt/$name" "($fmt, after the loop mount)"
  fuse_umount "$mnt"

  qemu-img convert -O raw "$img" check.raw
  e2fsck_ok check.raw "($fmt, in qemu-img's conversion of the image)"
  cmp f3 <(debugfs -R "cat f3" check.raw 2>/dev/null) || fail "$fmt: f3 missing in qemu-img's view"
}

loop_dev= fs_mounted=
on_exit '[ -z "$loop_dev" ] || losetup -d "$loop_dev"'
on_exit '[ -z "$fs_mounted" ] || umount "$VD_TMP/fs"'
ext4_on raw disk.img
ext4_on vpc disk.vhd
echo OK
