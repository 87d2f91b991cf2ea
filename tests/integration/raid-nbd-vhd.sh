#!/usr/bin/env bash
# A RAID5 of three dynamic VHDs served by vdisk-nbd, written and verified
# by fio (crc32c) through its nbd engine; a member is failed online with
# vdtool raid fail while verification runs, replaced by a new VHD and
# rebuilt online under more checksummed writes, then scrubbed clean.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires fio qemu-img
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

cd "$VD_TMP"
vdtool raid create -l 5 -c 64K --size 48M -f vpc a.vdraid m0.vhd m1.vhd m2.vhd
for m in m0.vhd m1.vhd m2.vhd; do
  qemu-img info --output=json "$m" | /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
assert j["format"] == "vpc", j
assert j["virtual-size"] >= 48 * 1024 * 1024, j
' || fail "$m is not a VHD that qemu-img reads"
done
start_nbd a.vdraid

# fio JOB-ARGS...: run one fio job against the array, fail on any error.
run_fio() {
  local out=$VD_TMP/fio.$RANDOM.out
  fio --name=raid --ioengine=nbd --uri="$nbd_uri" --iodepth=16 \
      --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
      --output="$out" "$@" ||
    { cat "$out" >&2; fail "fio $* failed"; }
  if grep -q 'verify:' "$out" && grep -qi 'bad' "$out"; then
    cat "$out" >&2
    fail "fio $*: verification errors"
  fi
}
A="--rw=write --bs=192k --offset=0 --size=24M"
B="--rw=randwrite --bs=4k --offset=32M --size=8M"
run_fio $A --do_verify=1
run_fio $B --do_verify=1

# Fail member 1 while fio re-verifies region A.
run_fio $A --verify_only --loops=6 &
fio_pid=$!
sleep 0.3
vdtool raid fail a.vdraid 1
kill -0 $fio_pid 2>/dev/null ||
  echo "note: fio had finished before the member failed" >&2
wait $fio_pid || fail "fio verification failed while a member was failed"
vdtool raid detail a.vdraid | grep -q "State : .*degraded" ||
  fail "detail does not show the array degraded"
run_fio $B --verify_only

# Replace it with a new dynamic VHD and rebuild, while fio writes more.
vdtool create -q -f vpc new.vhd 48M 2>/dev/null || vdtool create -f vpc new.vhd 48M >/dev/null
run_fio --rw=randwrite --bsrange=512-96k --offset=56M --size=8M --do_verify=1 &
fio_pid=$!
vdtool raid replace --rate 16M a.vdraid 1 new.vhd
wait $fio_pid || fail "fio failed during the rebuild"
vdtool raid detail --output=json a.vdraid | /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
assert not j["degraded"], j
assert [m["state"] for m in j["members"]] == ["active"] * 3, j
assert j["members"][1]["path"].endswith("new.vhd"), j
' || fail "array not healthy after the rebuild"
out=$(vdtool raid scrub a.vdraid) || fail "online scrub: $out"
echo "$out" | grep -q " 0 mismatched" || fail "online scrub: $out"
run_fio $A --verify_only
stop_nbd

# Offline: clean, consistent, and the rebuilt VHD carries its share.
vdtool raid detail a.vdraid | grep -q "State : clean$" ||
  fail "array not clean after the server stopped"
vdtool raid scrub a.vdraid | grep -q " 0 mismatched" || fail "offline scrub"
vdtool raid fail a.vdraid 2
start_nbd a.vdraid
run_fio $A --verify_only
run_fio $B --verify_only
stop_nbd
exit 0
