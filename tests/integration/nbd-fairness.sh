#!/usr/bin/env bash
# Fairness between connections: clients flooding 32 MiB CACHE (and READ)
# requests, or many 512 KiB CACHEs within their budget, do not make another
# client's 4 KiB read wait behind the flood (CACHE is bounded and charged
# like READ; the worker pool serves the connections round-robin).  The
# check is on reply order, not on time (see tests/nbd/fairness.py).
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"

img=$VD_TMP/disk.img
truncate -s 64M "$img"
start_nbd --threads 4 "$img"
/usr/bin/python3 "$top_srcdir/tests/nbd/fairness.py" "$nbd_sock" ||
  fail "a flooding client starved another"
echo PASS
