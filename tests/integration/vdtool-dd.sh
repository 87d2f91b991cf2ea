#!/usr/bin/env bash
# vdtool dd (issue 15) beside qemu-img dd, operand by operand: bs (with a
# suffix, and one that is not a sector multiple), skip, count (which, as
# qemu-img's, counts from the start of the input), an output in another
# format, an input in another format, and the errors (skip past the end,
# a missing if=/of=, an unknown operand) in one line with a non-zero exit.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img
cd "$VD_TMP"

pattern_bytes 5000000 7 > in.raw
qemu-img convert -f raw -O vpc in.raw in.vhd

# same ARGS...: both tools' outputs, read as raw, are byte-identical.
n=0
same() {
  n=$((n + 1))
  qemu-img dd "$@" of=q$n.img || fail "qemu-img dd $* failed"
  vdtool dd "$@" of=v$n.img || fail "vdtool dd $* failed"
  qemu-img convert -O raw q$n.img q$n.raw
  vdtool convert -O raw v$n.img v$n.raw
  # qemu-img rounds the output's size up (to 512 bytes; a VHD to its CHS
  # geometry); vdtool keeps the exact size (a VHD's rounded to 512): the
  # same bytes, then only qemu-img's zero padding.
  local vs qs
  vs=$(stat -c %s v$n.raw) qs=$(stat -c %s q$n.raw)
  [ "$qs" -ge "$vs" ] || fail "dd $*: sizes $vs, qemu-img $qs"
  cmp -n "$vs" q$n.raw v$n.raw || fail "dd $*: the outputs differ"
  cmp -s <(tail -c +$((vs + 1)) q$n.raw) <(head -c $((qs - vs)) /dev/zero) ||
    fail "dd $*: qemu-img has data past vdtool's end"
  echo "dd $*: $(stat -c %s v$n.raw) bytes, same as qemu-img"
}
same -f raw -O raw if=in.raw
same -f raw -O raw bs=4k skip=3 count=100 if=in.raw
same -f raw -O raw bs=1M skip=2 if=in.raw
same -f raw -O raw bs=3 skip=1000 count=300000 if=in.raw
same -f raw -O raw bs=1k count=0 if=in.raw
same -f raw -O vpc bs=64k skip=5 if=in.raw
same -f vpc -O raw bs=512 skip=7 count=5000 if=in.vhd
# skip exactly to the end: an empty output.
same -f raw -O raw bs=1000000 skip=5 if=in.raw
[ "$(stat -c %s v$n.raw)" = 0 ] || fail "skip to the end is not empty"

expect_error "cannot skip to specified offset" vdtool dd bs=1M skip=9 if=in.raw of=x.raw
[ ! -e x.raw ] || fail "a failed dd left an output behind"
expect_error "must specify an input file" vdtool dd of=x.raw
expect_error "must specify an output file" vdtool dd if=in.raw
expect_error "unrecognized operand 'conv=notrunc'" vdtool dd if=in.raw of=x.raw conv=notrunc
expect_error "invalid number in 'count=-1'" vdtool dd count=-1 if=in.raw of=x.raw
echo "vdtool-dd: OK"
