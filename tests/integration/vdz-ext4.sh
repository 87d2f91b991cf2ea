#!/usr/bin/env bash
# An ext4 file system with files survives raw -> vdz -> raw byte for byte;
# e2fsck finds the round-tripped copy clean and its files are intact.
. "$top_srcdir/tests/functions.sh"
requires qemu-img mkfs.ext4 debugfs e2fsck cmp

fs=$VD_TMP/fs.raw
truncate -s 64M "$fs"
mkfs.ext4 -q -F -b 4096 -L vdztest "$fs"

# Files of several kinds: binaries, text, random and zero-filled.
cp /bin/bash "$VD_TMP/f-bash"
find /usr/share/doc -maxdepth 2 -name 'copyright' -print 2>/dev/null |
  head -200 | xargs cat > "$VD_TMP/f-text" 2>/dev/null || true
pattern_bytes $((3 * 1024 * 1024 + 123)) 3 > "$VD_TMP/f-random"
head -c $((2 * 1024 * 1024)) /dev/zero > "$VD_TMP/f-zero"
{
  echo "mkdir /dir"
  for f in f-bash f-text f-random f-zero; do
    echo "write $VD_TMP/$f /dir/$f"
  done
} > "$VD_TMP/cmds"
debugfs -w -f "$VD_TMP/cmds" "$fs" >/dev/null 2>&1
e2fsck -fn "$fs" >/dev/null || fail "the source file system is not clean"

vdtool convert -O vdz -p "$fs" "$VD_TMP/fs.vdz" >/dev/null
vdtool convert -O raw "$VD_TMP/fs.vdz" "$VD_TMP/back.raw"
cmp "$fs" "$VD_TMP/back.raw" || fail "round trip differs"
qemu-img compare -q -f raw -F raw "$fs" "$VD_TMP/back.raw" ||
  fail "qemu-img compare differs"
e2fsck -fn "$VD_TMP/back.raw" >/dev/null || fail "e2fsck: round trip not clean"
for f in f-bash f-text f-random f-zero; do
  debugfs -R "dump /dir/$f $VD_TMP/out-$f" "$VD_TMP/back.raw" >/dev/null 2>&1
  cmp "$VD_TMP/$f" "$VD_TMP/out-$f" || fail "$f differs after the round trip"
done
vdtool check "$VD_TMP/fs.vdz" >/dev/null || fail "check failed"
exit 0
