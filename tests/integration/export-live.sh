#!/usr/bin/env bash
# Exports added and removed while vdisk-nbd serves (block-export-add,
# block-export-del, query-block-exports over --control): an export of an
# image by file name and one of an existing node, read and written with
# libnbd and listed by nbdinfo --list; safe deletion refused while a
# client is connected (QEMU's rule), hard deletion disconnecting it, the
# export gone from the list and BLOCK_EXPORT_DELETED emitted once its
# last client left; the command line's export unaffected throughout;
# QEMU's errors for a duplicate id, a missing node and bad arguments; a
# writable=false export refusing writes (EPERM).  The data written
# through the added export is checked against qemu-io's with
# qemu-img compare once the export closed the image.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires nbdinfo qemu-img qemu-io
[ -x /usr/bin/python3 ] || skip "no /usr/bin/python3"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "no libnbd python bindings"

main=$VD_TMP/main.raw
live=$VD_TMP/live.vhd
ref=$VD_TMP/ref.vhd
ctl=$VD_TMP/ctl.sock
qemu-img create -q -f raw "$main" 8M
qemu-io -f raw -c 'write -P 0x11 0 1M' "$main" >/dev/null
qemu-img create -q -f vpc -o subformat=dynamic "$live" 16M
qemu-io -f vpc -c 'write -P 0x5a 0 1M' "$live" >/dev/null
cp "$live" "$ref"
# What the test writes through the export, written by qemu-io instead.
qemu-io -f vpc -c 'write -P 0xa5 2M 64k' "$ref" >/dev/null

start_nbd --control "$ctl" -f raw "disk=$main"
export PYTHONPATH=$top_srcdir/tests/integration
timeout 300 /usr/bin/python3 "$top_srcdir/tests/integration/export-live.py" \
  "$ctl" "$nbd_sock" "$live" || fail "live export checks failed"
qemu-img compare -q -f vpc -F vpc "$live" "$ref" ||
  fail "the data written through the added export differs from qemu-io's"
nbdinfo --size "$(nbd_uri_for disk)" >/dev/null || fail "export 'disk' gone"
stop_nbd
