#!/usr/bin/env bash
# The README's examples run as written (issue 15): every example line of
# "Using it" that uses vdtool or vdisk-fuse, in the README's order, through
# the build's ./run, in a fresh folder where disk.raw (64 MiB of data) and
# other.vhd exist beforehand.  Left out: lines that need a server or a
# device the example does not start (NBD URIs, vdisk-nbd in the
# foreground, qemu-system, nbd-client, nbdinfo).  Each line must exit 0.
. "$top_srcdir/tests/functions.sh"
requires fusermount3 mountpoint
[ -e /dev/fuse ] || skip "no /dev/fuse"
cd "$VD_TMP"
on_exit "fusermount3 -u '$VD_TMP/mnt' 2>/dev/null"

pattern_bytes $((64 << 20)) 3 > disk.raw
vdtool create -q -f vhd other.vhd 10G

lines=$(sed -n '/^## Using it/,/^## Build options/p' "$top_srcdir/README.md" |
  grep -E '^    (.*\./run (vdtool|vdisk-fuse)|fusermount3)' |
  grep -vE 'nbd(s)?(\+unix)?://|remote=')
[ "$(grep -c . <<<"$lines")" -ge 15 ] ||
  fail "fewer README examples found than expected: $lines"
n=0
while IFS= read -r line; do
  n=$((n + 1))
  cmd=$(sed -e 's/^    //' -E -e 's/ +# .*$//' -e "s|\./run |$top_builddir/run |g" <<<"$line")
  echo "README example $n: $cmd"
  bash -c "set -e -o pipefail; $cmd" > "out.$n" 2>&1 ||
    fail "README example '$(sed 's/^    //' <<<"$line")' failed: $(tail -3 "out.$n")"
  # After an unmount vdisk-fuse flushes, then exits and unlocks: wait
  # for that (at most 30 s) before the next example opens the image.
  if [[ $cmd == fusermount3* ]]; then
    for i in $(seq 300); do
      pgrep -f "run vdisk-fuse|fuse-frontend/.*vdisk-fuse" -u "$(id -u)" >/dev/null || break
      vdtool info disk.vhd >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
done <<<"$lines"
echo "readme-examples: $n examples ran"
