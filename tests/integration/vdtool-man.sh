#!/usr/bin/env bash
# vdtool's and vdisk-fuse's man pages agree with their --help (issue 15),
# as nbd-man.sh checks vdisk-nbd's: every vdtool command has an entry in
# docs/vdtool.1 naming the options of its usage lines
# (tests/integration/vdtool-man.py), and every vdisk-fuse option of
# --help has an entry in docs/vdisk-fuse.1 and the other way round, with
# the same short/long pairing (tests/integration/man-options.py).
. "${top_srcdir:-.}/tests/functions.sh"
PY=/usr/bin/python3
[ -x "$PY" ] || skip "no /usr/bin/python3"
cd "$VD_TMP"
"$PY" "$top_srcdir/tests/integration/vdtool-man.py" "$top_builddir/tools/vdtool" \
  "$top_srcdir/docs/vdtool.1" || fail "vdtool's --help and vdtool.1 differ"
vdisk_fuse --help > help.txt
"$PY" "$top_srcdir/tests/integration/man-options.py" help.txt "$top_srcdir/docs/vdisk-fuse.1" ||
  fail "vdisk-fuse --help and vdisk-fuse.1 differ"
exit 0
