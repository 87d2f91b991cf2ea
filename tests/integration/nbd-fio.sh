#!/usr/bin/env bash
# fio's nbd engine (libnbd) at iodepth 32 with crc32c verification.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires fio
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

img=$VD_TMP/disk.img
truncate -s 64M "$img"
start_nbd "$img"

run_fio() {
  fio --name=verify --ioengine=nbd --uri="$nbd_uri" --iodepth=32 \
      --size=16M --verify=crc32c --do_verify=1 --verify_fatal=1 \
      --verify_state_save=0 --output="$VD_TMP/fio.out" "$@" ||
    { cat "$VD_TMP/fio.out" >&2; fail "fio $* failed"; }
  if grep -q 'verify:' "$VD_TMP/fio.out" && grep -q 'bad' "$VD_TMP/fio.out"; then
    cat "$VD_TMP/fio.out" >&2
    fail "fio $*: verification errors"
  fi
}
run_fio --rw=randwrite --bs=4k
run_fio --rw=write --bs=1M --offset=32M
run_fio --rw=randwrite --bsrange=512-128k --offset=16M
stop_nbd
echo PASS
