#!/usr/bin/env bash
# One mount exposing a raw image, a dynamic VHD (made by qemu-img), a
# compressed vdz image and a RAID0 array side by side: each reads as its
# source, the compressed one is read-only (mode 0444, EROFS) in an
# otherwise writable mount, and writes to the others land in their images.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires qemu-img

cd "$VD_TMP"
mnt=$VD_TMP/mnt
mib=$((1024 * 1024))
qemu-img create -q -f raw src.raw 6M
pattern_bytes $((2 * mib + 3)) 51 | dd of=src.raw bs=1M seek=1 conv=notrunc status=none
yes 'compressible text' | head -c $mib | dd of=src.raw bs=1M seek=4 conv=notrunc status=none
cp src.raw plain.img
qemu-img convert -f raw -O vpc -o subformat=dynamic src.raw disk.vhd
qemu-img convert -f vpc -O raw disk.vhd disk-ref.raw
vdtool convert -O vdz -o cluster_size=64K src.raw packed.vdz
vdtool raid create -l 0 -c 64K --size 4M stripe.vdraid s0.img s1.img >/dev/null

# The disks show their image files' modes (whatever the umask made them).
chmod 644 plain.img packed.vdz
fuse_mount "$mnt" plain.img disk.vhd packed.vdz stripe.vdraid
[ "$(cd "$mnt" && echo *)" = "disk.raw packed.raw plain.raw stripe.raw" ] ||
  fail "the mount shows '$(cd "$mnt" && echo *)'"
cmp "$mnt/plain.raw" src.raw || fail "plain.raw differs from its source"
cmp "$mnt/disk.raw" disk-ref.raw || fail "disk.raw differs from qemu-img's conversion"
cmp "$mnt/packed.raw" src.raw || fail "packed.raw differs from the raw image it was compressed from"
[ "$(stat -c %a "$mnt/packed.raw")" = 444 ] || fail "the compressed image is not shown read-only"
[ "$(stat -c %a "$mnt/plain.raw")" = 644 ] || fail "the raw image is not shown writable"
[ "$(errno_of "os.open('$mnt/packed.raw', os.O_RDWR)")" = EROFS ] ||
  fail "opening the compressed image for writing did not fail with EROFS"

# Writes to the writable ones, checked after unmount in the images.
pattern_bytes $((3 * mib)) 52 > new
for f in plain disk stripe; do
  dd if=new of="$mnt/$f.raw" bs=64k seek=1 conv=notrunc,fsync status=none
done
cmp <(head -c $((3 * mib)) "$mnt/stripe.raw" | tail -c +65537) <(head -c $((3 * mib - 65536)) new) ||
  fail "stripe.raw reads back wrong"
fuse_umount "$mnt"
cp src.raw plain-expected.raw
dd if=new of=plain-expected.raw bs=64k seek=1 conv=notrunc status=none
qemu-img compare -q -f raw -F raw plain-expected.raw plain.img || fail "plain.img lacks the writes"
cp disk-ref.raw disk-expected.raw
dd if=new of=disk-expected.raw bs=64k seek=1 conv=notrunc status=none
qemu-img compare -q -f raw -F vpc disk-expected.raw disk.vhd || fail "disk.vhd lacks the writes"
vdtool check disk.vhd >/dev/null || fail "vdtool check finds errors in disk.vhd"
vdtool compare src.raw packed.vdz >/dev/null || fail "the compressed image changed"

# An engine error reaches the reader as EIO, for the damaged range only,
# with one line naming the image; the mount keeps working.  Damage: one
# byte inside stored cluster 70 (in the text) of a copy, located through
# the index (docs/vdz-format.md: index_offset at byte 32, 16-byte entries
# starting with the cluster's offset), so its checksum fails.
cp packed.vdz bad.vdz
index_off=$(od -An -tu8 -j32 -N8 bad.vdz | tr -d ' ')
c=$(od -An -tu8 -j $((index_off + 70 * 16)) -N8 bad.vdz | tr -d ' ')
printf '\x00\x01' | dd of=bad.vdz bs=1 seek=$((c + 10)) conv=notrunc status=none
mkdir -p mnt2
vdisk_fuse -f bad.vdz mnt2 2>fuse.err &
bad_pid=$!
on_exit "fusermount3 -uz $VD_TMP/mnt2"
for i in $(seq 300); do mountpoint -q mnt2 && break; sleep 0.1; done
mountpoint -q mnt2 || fail "bad.vdz did not mount"
cs=$((64 * 1024))
[ "$(errno_of "os.pread(os.open('mnt2/bad.raw', os.O_RDONLY), $cs, 70 * $cs)")" = EIO ] ||
  fail "reading the damaged cluster did not fail with EIO"
[ "$(errno_of "os.pread(os.open('mnt2/bad.raw', os.O_RDONLY), 4096, 69 * $cs + 4096)")" = OK ] ||
  fail "reading next to the damaged cluster failed"
cmp <(head -c $((70 * cs)) mnt2/bad.raw) <(head -c $((70 * cs)) src.raw) ||
  fail "the undamaged start reads wrong"
cmp <(tail -c +$((71 * cs + 1)) mnt2/bad.raw) <(tail -c +$((71 * cs + 1)) src.raw) ||
  fail "the undamaged end reads wrong"
grep -q '^vdisk-fuse: bad\.raw: read at [0-9]*: .*bad\.vdz' fuse.err ||
  fail "no error line naming the image: $(cat fuse.err)"
fusermount3 -u mnt2
rc=0
wait "$bad_pid" || rc=$?
[ "$rc" -eq 0 ] || fail "vdisk-fuse exited with $rc after serving read errors"
echo OK
