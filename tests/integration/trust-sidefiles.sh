#!/usr/bin/env bash
# Files libvdisk creates beside an image never follow a planted symlink
# (issue 10, item 3, vdisk/ side): `vdtool convert -O vdz` writes into a
# temporary file beside the target and renames it into place.  A symlink
# planted at the name the old code used (TARGET.tmp-PID) must not lead the
# write into its victim.
. "$top_srcdir/tests/functions.sh"
requires cmp sha256sum

cd "$VD_TMP"
printf 'precious host file\n' > victim.txt
sum=$(sha256sum < victim.txt)
truncate -s 4M src.raw
pattern_bytes 65536 4 | dd of=src.raw conv=notrunc status=none

# The subshell plants the link for its own pid, then becomes vdtool (the
# libtool wrapper execs too), so the pid in the name is vdtool's.
( ln -s "$VD_TMP/victim.txt" "out.vdz.tmp-$BASHPID"
  exec "$top_builddir/tools/vdtool" convert -O vdz src.raw out.vdz ) ||
  fail "convert -O vdz failed"
[ "$(sha256sum < victim.txt)" = "$sum" ] || fail "the symlink's victim was overwritten"
[ -f out.vdz ] && ! [ -L out.vdz ] || fail "out.vdz is not a regular file"
vdtool compare src.raw out.vdz >/dev/null || fail "out.vdz differs from its source"
[ "$(ls -d out.vdz.tmp-* | wc -l)" = 1 ] || fail "temporary files left: $(ls out.vdz.tmp-*)"
[ -L "$(ls -d out.vdz.tmp-*)" ] || fail "the planted link was replaced"
exit 0
