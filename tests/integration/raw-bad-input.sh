#!/usr/bin/env bash
# Bad input gets a one-line error naming the object, a non-zero exit, and
# nothing changes on disk: a missing file, a directory, an unknown option,
# a size of "12Q", a read-only file opened for writing, unknown formats
# and commands.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-io md5sum
cd "$VD_TMP"

vdtool create -q img.raw 4M
qemu-io -f raw -c 'write -P 0x42 0 1M' img.raw >/dev/null
sum0=$(md5sum < img.raw)
unchanged() { [ "$(md5sum < img.raw)" = "$sum0" ] || fail "img.raw changed: $*"; }

expect_error "missing\.raw: cannot open for reading: No such file" vdtool info missing.raw
expect_error "missing\.raw: cannot open" vdtool convert missing.raw out.raw
[ ! -e out.raw ] || fail "failed convert left an output file"
expect_error "missing\.raw: cannot open" vdtool map missing.raw
mkdir adir
expect_error "adir: is a directory" vdtool info adir
expect_error "adir: .*[Ii]s a directory" vdtool convert img.raw adir
expect_error "adir: .*[Ii]s a directory" vdtool create adir 1M
expect_error "invalid size '12Q'" vdtool create new.raw 12Q
[ ! -e new.raw ] || fail "create with a bad size made a file"
expect_error "invalid option or missing argument: -5" vdtool create new.raw -5
expect_error "invalid size" vdtool create new.raw 5X
expect_error "invalid option or missing argument: --bogus" vdtool info --bogus img.raw
expect_error "invalid option or missing argument: -Z" vdtool convert -Z img.raw out.raw
expect_error "missing argument: -O" vdtool convert img.raw out.raw -O
expect_error "invalid option" vdtool create -Z img.raw 1M
expect_error "unknown command 'frobnicate'" vdtool frobnicate
expect_error "unknown format 'qcow9'" vdtool create -f qcow9 img.raw 1M
expect_error "unknown format 'qcow9'" vdtool info -f qcow9 img.raw
expect_error "unknown option 'bogus'" vdtool create -o bogus=1 img.raw 1M
expect_error "--output must be human or json" vdtool info --output=xml img.raw
expect_error "missing SIZE" vdtool create img.raw
expect_error "expected FILENAME and OUTPUT" vdtool convert img.raw
expect_error "/dev/null: not a regular file" vdtool info /dev/null
unchanged "after refused commands"

# A read-only file opened for writing.  Root ignores file modes through
# CAP_DAC_OVERRIDE, so run without it (and without DAC_READ_SEARCH): still
# the owner of the build tree, so this works in a private (0700) clone,
# where user nobody could not even run the programs.
if command -v setpriv >/dev/null && [ "$(id -u)" = 0 ]; then
  chmod 444 img.raw
  no_dac() { setpriv --bounding-set=-dac_override,-dac_read_search "$@"; }
  rc=0
  no_dac "$top_builddir/tools/vdtool" create img.raw 1M 2>err.txt || rc=$?
  [ "$rc" -eq 1 ] || fail "create over a read-only file exited $rc"
  [ "$(wc -l < err.txt)" -eq 1 ] && grep -q "img.raw: cannot open for writing: Permission denied" err.txt \
    || fail "read-only create: $(cat err.txt)"
  no_dac "$top_builddir/tools/vdtool" convert -n img.raw img.raw 2>err.txt && fail "convert -n into read-only"
  grep -q "img.raw: cannot open for writing" err.txt || fail "read-only convert: $(cat err.txt)"
  # Reading it is fine.
  no_dac "$top_builddir/tools/vdtool" info img.raw >/dev/null || fail "read-only info"
  chmod 644 img.raw
  unchanged "after read-only attempts"
fi

# help works for every command and exits 0.
vdtool help >/dev/null
for c in create info convert compare map; do
  vdtool "$c" --help | grep -q "^Usage: vdtool $c" || fail "$c --help"
  vdtool help "$c" | grep -q "^Usage: vdtool $c" || fail "help $c"
done
echo "raw-bad-input: OK"
