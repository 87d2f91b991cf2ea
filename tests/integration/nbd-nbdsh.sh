#!/usr/bin/env bash
# libnbd (python3-libnbd, as nbdsh uses it) against vdisk-nbd: FUA, block
# status, structured and simple reads, out-of-range errors, read-only EPERM.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"

img=$VD_TMP/disk.img
truncate -s 8M "$img"
start_nbd "disk=$img"
/usr/bin/python3 "$top_srcdir/tests/nbd/nbdsh-checks.py" rw "$nbd_sock" "$img" ||
  fail "read-write checks"
stop_nbd

start_nbd -r "disk=$img"
/usr/bin/python3 "$top_srcdir/tests/nbd/nbdsh-checks.py" ro "$nbd_sock" "$img" ||
  fail "read-only checks"
stop_nbd
echo PASS
