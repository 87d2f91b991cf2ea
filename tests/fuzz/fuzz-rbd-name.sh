#!/usr/bin/env bash
# Run the rbd: name fuzz harness (standalone driver) over seeds: plain and
# full names, escapes, every option, and the errors of each kind.
# VD_FUZZ_SEEDS=DIR keeps the seeds.
. "$top_srcdir/tests/functions.sh"

seeds=${VD_FUZZ_SEEDS:-$VD_TMP/seeds}
mkdir -p "$seeds"
i=0
while IFS= read -r s; do
  printf '%s' "$s" > "$seeds/name$i"
  i=$((i + 1))
done <<'SEEDS'
rbd:pool/img
rbd:p/ns/im@snap1:conf=/etc/ceph/ceph.conf:id=admin:timeout=30
pool/img@s:timeout=3600
rbd:po\/ol/im\:a\@b@s\:1:conf=/a\:b/c\\d
rbd:a/b/c/d
rbd:p/i@s@t
rbd:p/i:conf:id=
rbd:p/i:conf=a:conf=b
rbd:p/i:timeout=99999999999999999999
rbd:p/i:rados_osd_op_timeout=5
rbd:p//i\
SEEDS
"$top_builddir/libtool" --mode=execute ${VD_VALGRIND:-} \
  "$top_builddir/tests/fuzz/fuzz-rbd-name" "$seeds"
