#!/usr/bin/env bash
# A hostile client on raw sockets (bad magic, unknown options and flags,
# huge claimed lengths, truncated messages, unknown commands, FAST_ZERO
# where not allowed, zero-length and 64 MiB requests, vanishing clients,
# clients that stop reading replies);
# afterwards a fresh client (ours and nbdinfo) must be served correctly.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires nbdinfo

img=$VD_TMP/disk.img
size=$((48 * 1024 * 1024))
truncate -s $size "$img"
for m in rw ro; do
  # Two workers: the stalled clients outnumber them.
  if [ $m = ro ]; then start_nbd --threads 2 -r "$img"
  else start_nbd --threads 2 "$img"; fi
  /usr/bin/python3 "$top_srcdir/tests/nbd/hostile.py" $m "$nbd_sock" $size ||
    fail "hostile client ($m)"
  nbdinfo --size "$nbd_uri" | grep -qx $size || fail "server unusable after the hostile client"
  stop_nbd
done
echo PASS
