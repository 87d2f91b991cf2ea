#!/usr/bin/env bash
# A vdz written onto a block device (a loop device): written in place with
# the header last, read back identical; a conversion killed half-way over
# an existing image leaves a device that does not open as vdz, or holds
# the old image intact (killed before it started), or the complete new
# one.  Skips without root or loop devices.
. "$top_srcdir/tests/functions.sh"
requires losetup
[ "$(id -u)" -eq 0 ] || skip "needs root for a loop device"

truncate -s 48M "$VD_TMP/backing.img"
loop=$(losetup -f --show "$VD_TMP/backing.img" 2>/dev/null) || skip "no loop device available"
on_exit "losetup -d $loop"

truncate -s 8M "$VD_TMP/src.raw"
yes 'on a block device' | head -c 3M | dd of="$VD_TMP/src.raw" conv=notrunc status=none
vdtool convert -O vdz "$VD_TMP/src.raw" "$loop"
[ -b "$loop" ] || fail "$loop is no longer a block device"
vdtool compare "$VD_TMP/src.raw" "$loop" >/dev/null || fail "vdz on $loop differs"
vdtool check "$loop" >/dev/null || fail "vdz on $loop does not check clean"

pattern_bytes $((32 * 1024 * 1024)) 2 > "$VD_TMP/big.raw"
for delay in 0.05 0.2; do
  "$top_builddir/tools/vdtool" convert -O vdz -o threads=1,level=2 \
    "$VD_TMP/big.raw" "$loop" &
  pid=$!
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if vdtool info -f vdz "$loop" >/dev/null 2>&1; then
    vdtool compare "$VD_TMP/big.raw" "$loop" >/dev/null 2>&1 ||
      vdtool compare "$VD_TMP/src.raw" "$loop" >/dev/null 2>&1 ||
      fail "killed after ${delay}s: $loop opens as vdz but holds neither image"
  fi
  # Start each round from the old image.
  vdtool convert -O vdz "$VD_TMP/src.raw" "$loop"
done
exit 0
