#!/usr/bin/env bash
# nbdcopy (libnbd) both ways with several connections and deep queues.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires nbdcopy

img=$VD_TMP/disk.img
truncate -s 48M "$img"
start_nbd "$img"

pattern_bytes $((48 * 1024 * 1024)) 3 > "$VD_TMP/src.img"
dd if=/dev/zero of="$VD_TMP/src.img" bs=1M seek=20 count=8 conv=notrunc status=none
nbdcopy --connections=4 --requests=64 --request-size=262144 \
  "$VD_TMP/src.img" "$nbd_uri" || fail "nbdcopy to NBD failed"
cmp "$VD_TMP/src.img" "$img" || fail "image differs after nbdcopy to NBD"

nbdcopy --connections=4 --requests=64 "$nbd_uri" "$VD_TMP/back.img" ||
  fail "nbdcopy from NBD failed"
cmp "$VD_TMP/src.img" "$VD_TMP/back.img" || fail "copy back differs"

# Small requests, many in flight, one connection.
nbdcopy --connections=1 --requests=128 --request-size=4096 \
  "$nbd_uri" "$VD_TMP/back2.img" || fail "nbdcopy (4 KiB requests) failed"
cmp "$VD_TMP/src.img" "$VD_TMP/back2.img" || fail "4 KiB copy differs"
stop_nbd
echo PASS
