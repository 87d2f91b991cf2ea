#!/usr/bin/env bash
# Four readers at different offsets at once, then four writers on
# disjoint ranges at once; checked against the image through qemu-img.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires qemu-img

cd "$VD_TMP"
mnt=$VD_TMP/mnt
mib=$((1024 * 1024))
pattern_bytes $((32 * mib)) 31 > disk.img
cp disk.img expected.raw

fuse_mount "$mnt" disk.img
# Readers: O_DIRECT so each read reaches vdisk-fuse rather than the page
# cache; each reads 8 MiB from its own offset and in its own block size.
pids=()
for i in 0 1 2 3; do
  bs=$(( (64 << i) * 1024 ))
  dd if="$mnt/disk.raw" of=r$i bs=$bs skip=$(( (i * 8 * mib + 4096) / bs )) \
     count=$(( 7 * mib / bs )) iflag=direct status=none &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a reader failed"; done
for i in 0 1 2 3; do
  bs=$(( (64 << i) * 1024 ))
  cmp r$i <(dd if=disk.img bs=$bs skip=$(( (i * 8 * mib + 4096) / bs )) \
            count=$(( 7 * mib / bs )) status=none) || fail "reader $i got wrong data"
done

# Writers: each 2 MiB of fresh data in 4 KiB..1 MiB pieces into its own
# quarter, all at once.
for i in 0 1 2 3; do pattern_bytes $((2 * mib)) $((40 + i)) > w$i; done
pids=()
for i in 0 1 2 3; do
  dd if=w$i of="$mnt/disk.raw" bs=$(( (4 << (2 * i)) * 1024 )) \
     seek=$(( (i * 8 + 3) * mib / ((4 << (2 * i)) * 1024) )) conv=notrunc,fsync status=none &
  pids+=($!)
  dd if=w$i of=expected.raw bs=$mib seek=$(( i * 8 + 3 )) conv=notrunc status=none
done
for p in "${pids[@]}"; do wait "$p" || fail "a writer failed"; done
cmp "$mnt/disk.raw" expected.raw || fail "concurrent writes read back wrong"
fuse_umount "$mnt"
qemu-img compare -q -f raw -F raw expected.raw disk.img || fail "image differs after concurrent writes"
echo OK
