#!/usr/bin/env bash
# Damaged vdz images fail cleanly with one line naming the object: a
# corrupted cluster fails reads of that cluster and makes check exit 2;
# truncated files and bad indexes refuse to open; vdz cannot be created
# empty or repaired.
. "$top_srcdir/tests/functions.sh"
requires od

raw=$VD_TMP/disk.raw
truncate -s 4M "$raw"
yes 'some compressible text for cluster data' | head -c 2M |
  dd of="$raw" conv=notrunc status=none
vdtool convert -O vdz "$raw" "$VD_TMP/good.vdz"

le64() { od -An -tu8 -j "$2" -N8 "$1" | tr -d ' '; }
le32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
index_off=$(le64 "$VD_TMP/good.vdz" 32)

# Corrupt one byte in the middle of cluster 5's stored data.
cp "$VD_TMP/good.vdz" "$VD_TMP/bad.vdz"
c5=$(le64 "$VD_TMP/bad.vdz" $((index_off + 5 * 16)))
l5=$(le32 "$VD_TMP/bad.vdz" $((index_off + 5 * 16 + 8)))
[ "$l5" -gt 0 ] || fail "cluster 5 is not stored"
printf '\xa5' | dd of="$VD_TMP/bad.vdz" bs=1 seek=$((c5 + l5 / 2)) conv=notrunc status=none
cmp -s "$VD_TMP/good.vdz" "$VD_TMP/bad.vdz" && fail "corruption did not change the file"

rc=0
vdtool check "$VD_TMP/bad.vdz" > "$VD_TMP/check.out" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "check on a corrupted image exited $rc, expected 2"
grep -q 'cluster 5 ' "$VD_TMP/check.out" || fail "check does not name cluster 5: $(cat "$VD_TMP/check.out")"
vdtool check "$VD_TMP/good.vdz" >/dev/null || fail "check on a good image failed"
expect_error 'bad\.vdz: cluster 5 .*checksum' vdtool convert -O raw "$VD_TMP/bad.vdz" "$VD_TMP/out.raw"
expect_error 'bad\.vdz: cluster 5 ' vdtool compare "$raw" "$VD_TMP/bad.vdz"

# Truncated images.
good_size=$(stat -c %s "$VD_TMP/good.vdz")
for size in 0 100 4096 $((good_size / 2)) $((good_size - 1)); do
  cp "$VD_TMP/good.vdz" "$VD_TMP/trunc.vdz"
  truncate -s "$size" "$VD_TMP/trunc.vdz"
  expect_error 'trunc\.vdz: ' vdtool info -f vdz "$VD_TMP/trunc.vdz"
done
cp "$VD_TMP/good.vdz" "$VD_TMP/trunc.vdz"
truncate -s $((index_off + 8)) "$VD_TMP/trunc.vdz"
expect_error 'trunc\.vdz: .*truncated' vdtool info "$VD_TMP/trunc.vdz"
rc=0; vdtool check "$VD_TMP/trunc.vdz" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "check on a truncated image exited $rc, expected 2"

# A damaged index entry.
cp "$VD_TMP/good.vdz" "$VD_TMP/index.vdz"
printf '\x7f' | dd of="$VD_TMP/index.vdz" bs=1 seek=$((index_off + 3 * 16 + 6)) conv=notrunc status=none
expect_error 'index\.vdz: .*index checksum' vdtool info "$VD_TMP/index.vdz"
rc=0; vdtool check "$VD_TMP/index.vdz" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "check on a bad index exited $rc, expected 2"

# A damaged header.
cp "$VD_TMP/good.vdz" "$VD_TMP/header.vdz"
printf '\x01' | dd of="$VD_TMP/header.vdz" bs=1 seek=17 conv=notrunc status=none
expect_error 'header\.vdz: .*header checksum' vdtool info -f vdz "$VD_TMP/header.vdz"

# Not creatable empty; not repairable; bad options.
expect_error 'new\.vdz: .*convert' vdtool create -f vdz "$VD_TMP/new.vdz" 1M
expect_error 'cluster_size' vdtool convert -O vdz -o cluster_size=1000 "$raw" "$VD_TMP/x.vdz"
expect_error 'level' vdtool convert -O vdz -o level=99 "$raw" "$VD_TMP/x.vdz"
[ ! -e "$VD_TMP/x.vdz" ] || fail "a failed conversion left its target"
exit 0
