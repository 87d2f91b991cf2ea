#!/usr/bin/env bash
# Files added to and removed from a vdisk-fuse mount while it serves
# (block-export-add/-del of type "fuse", query-block-exports over
# --control): an image by file name and an existing node appear as files,
# are read and written, disappear; safe deletion refused while a file is
# open (QEMU's rule), hard deletion making the open handle fail with EIO;
# BLOCK_EXPORT_DELETED once the last handle went; the command line's disk
# unaffected; QEMU's errors; a writable=false file cannot be opened for
# writing.  Data checked with qemu-img compare against qemu-io's writes.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires qemu-img qemu-io
[ -x /usr/bin/python3 ] || skip "no /usr/bin/python3"

main=$VD_TMP/main.raw
live=$VD_TMP/live.vhd
ref=$VD_TMP/ref.vhd
qemu-img create -q -f raw "$main" 8M
qemu-io -f raw -c 'write -P 0x11 0 1M' "$main" >/dev/null
qemu-img create -q -f vpc -o subformat=dynamic "$live" 16M
qemu-io -f vpc -c 'write -P 0x5a 0 1M' "$live" >/dev/null
cp "$live" "$ref"
qemu-io -f vpc -c 'write -P 0xa5 2M 64k' "$ref" >/dev/null
cp "$main" "$VD_TMP/main-ref.raw"

fuse_mount "$VD_TMP/mnt" --control "$VD_TMP/ctl.sock" --format=raw "$main"
export PYTHONPATH=$top_srcdir/tests/integration
timeout 300 /usr/bin/python3 "$top_srcdir/tests/integration/export-fuse.py" \
  "$VD_TMP/ctl.sock" "$VD_TMP/mnt" "$live" "$ref" ||
  fail "live FUSE export checks failed"
qemu-img compare -q -f vpc -F vpc "$live" "$ref" ||
  fail "the data written through the added file differs from qemu-io's"
qemu-img compare -q -f raw -F raw "$VD_TMP/mnt/main.raw" "$VD_TMP/main-ref.raw" ||
  fail "the command line's disk changed"
fuse_umount "$VD_TMP/mnt"
