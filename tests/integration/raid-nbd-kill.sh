#!/usr/bin/env bash
# kill -9 of the process serving a RAID5 during partial-stripe writes:
# vdtool check finds at worst leaks (stripes to resync); each member lost
# right after the kill in turn (forced assembly, PPL replay) still yields
# every flushed byte (fio crc32c); after a restart the bitmap resync leaves
# scrub and check clean and a member failed afterwards changes nothing.
# Killed again while degraded, the array refuses to start until
# 'vdtool raid assemble --force' replays the partial parity log.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires fio
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

cd "$VD_TMP"
vdtool raid create -l 5 -c 64K --size 24M a.vdraid m0 m1 m2 m3

run_fio() {
  local out=$VD_TMP/fio.$RANDOM.out
  fio --name=raid --ioengine=nbd --uri="$nbd_uri" --iodepth=16 \
      --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
      --output="$out" "$@" ||
    { cat "$out" >&2; fail "fio $* failed"; }
}
# Partial-stripe writes, killed with the server.
doomed_writes() {
  fio --name=doomed --ioengine=nbd --uri="$nbd_uri" --iodepth=16 \
      --rw=randwrite --bsrange=512-48k --offset=40M --size=24M \
      --time_based --runtime=30 --output=/dev/null >/dev/null 2>&1 &
  local fpid=$! i
  # Kill once writes are under way (the array is marked dirty).
  for i in $(seq 200); do
    vdtool raid detail --output=json a.vdraid |
      grep -q '"dirty": true' && break
    sleep 0.1
  done
  sleep 0.5
  local pid
  pid=$(cat "$nbd_pidfile")
  kill -9 "$pid"
  wait $fpid || true
  rm -f "$nbd_pidfile"
  # Gone before anyone looks at ARRAY.served (bounded: a hang fails later).
  for i in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
}
A="--rw=randwrite --bs=4k --offset=0 --size=16M"

start_nbd a.vdraid
run_fio $A --do_verify=1 --end_fsync=1
doomed_writes
vdtool raid detail --output=json a.vdraid | /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
assert j["dirty"] and not j["degraded"], j' || fail "not dirty after kill -9"

rc=0; vdtool check a.vdraid > check.out 2>&1 || rc=$?
[ $rc = 0 ] || [ $rc = 3 ] || fail "check after kill -9: exit $rc: $(cat check.out)"
# Each member lost with the crash, in turn, from copies of the killed state.
mkdir killed
cp m0 m1 m2 m3 a.vdraid killed/
for lost in 0 1 2 3; do
  keep=()
  for i in 0 1 2 3; do [ $i = $lost ] || keep+=(m$i); done
  cp killed/* .
  vdtool raid assemble --force a.vdraid "${keep[@]}"
  start_nbd a.vdraid
  run_fio $A --verify_only
  stop_nbd
done
cp killed/* .
rm -rf killed

start_nbd a.vdraid          # resyncs the regions the bitmap marks
out=$(vdtool raid scrub a.vdraid) || fail "scrub: $out"
echo "$out" | grep -q " 0 mismatched" || fail "after the kill: $out"
stop_nbd
vdtool check a.vdraid > check.out || fail "check after the resync: $(cat check.out)"
start_nbd a.vdraid
vdtool raid fail a.vdraid 2
run_fio $A --verify_only
# Killed again, now degraded: dirty + degraded must not start silently.
doomed_writes
vdtool raid detail --output=json a.vdraid | grep -q '"dirty": true' ||
  fail "no write reached the array before the kill"
expect_error "not stopped cleanly and is degraded.*assemble --force" \
  vdisk_nbd -k "$VD_TMP/x.sock" a.vdraid
vdtool raid assemble --force a.vdraid m0 m1 m3
start_nbd a.vdraid
run_fio $A --verify_only
stop_nbd
vdtool raid detail a.vdraid | grep -q "State : clean, degraded" ||
  fail "not clean and degraded after the forced assembly"
exit 0
