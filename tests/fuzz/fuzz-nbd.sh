#!/usr/bin/env bash
# Run the NBD handshake/request fuzz harness (standalone driver) over seeds
# shaped like libnbd, qemu and kernel clients plus error paths.
# VD_FUZZ_SEEDS=DIR keeps the seeds in DIR.
. "$top_srcdir/tests/functions.sh"

seeds=${VD_FUZZ_SEEDS:-$VD_TMP/seeds}
/usr/bin/python3 "$top_srcdir/tests/nbd/fuzz-seeds.py" "$seeds"
"$top_builddir/libtool" --mode=execute ${VD_VALGRIND:-} \
  "$top_builddir/tests/fuzz/fuzz-nbd" "$seeds"
