#!/usr/bin/env bash
# RAID members on another "host": NBD exports (nbdkit's file plugin on a
# Unix socket) next to local images, served by vdisk-nbd while fio writes
# with crc32c verification.
#  - RAID1 of a local VHD and a remote export: the remote server is
#    stopped (SIGSTOP: requests hang) mid-write; the member timeout (5 s) fails
#    it, the array continues degraded and fio sees no error.  The server is
#    then killed and restarted; 'vdtool raid re-add' copies only the
#    regions the write-intent bitmap marked (bytes copied < member size),
#    scrub finds no mismatch, every byte fio wrote verifies, and the
#    members' data areas compare equal with qemu-img.
#  - RAID5 with one remote member (auto-re-add 1): the server is killed
#    (kill -9: the connection drops, requests fail at once), the array runs
#    degraded, the restarted server's member is re-added by itself.
#  - write-mostly: reads avoid the remote mirror (nbdkit's stats filter
#    counts what it served).
# Every wait is bounded.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires fio nbdkit qemu-img
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

cd "$VD_TMP"
rsock=$VD_TMP/remote.sock
ruri="nbd+unix:///?socket=$rsock"

# start_remote FILE [--FILTER-OPTION...] [KEY=VALUE...]: serve FILE on
# $rsock (nbdkit forks).
start_remote() {
  local f=$1 a opts=() params=(); shift
  for a in "$@"; do
    case $a in --*) opts+=("$a") ;; *) params+=("$a") ;; esac
  done
  rm -f "$rsock" remote.pid
  nbdkit -U "$rsock" -P "$VD_TMP/remote.pid" "${opts[@]}" file "$f" \
    "${params[@]}" ||
    fail "nbdkit did not start"
  local i
  for i in $(seq 100); do [ -s remote.pid ] && [ -S "$rsock" ] && break; sleep 0.1; done
  [ -S "$rsock" ] || fail "nbdkit did not listen"
  on_exit "kill -9 $(cat remote.pid) 2>/dev/null; kill -CONT $(cat remote.pid) 2>/dev/null"
}
# kill_remote SIGNAL: signal the server; with KILL wait (10 s) for it to go.
kill_remote() {
  local pid i
  pid=$(cat remote.pid)
  kill "-$1" "$pid"
  [ "$1" = KILL ] || return 0
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  fail "nbdkit $pid did not die"
}
# vdtool_t SECONDS ARGS: vdtool with a bound on its run time.
vdtool_t() { local t=$1; shift; timeout "$t" "$top_builddir/tools/vdtool" "$@"; }
run_fio() {
  local out=$VD_TMP/fio.$RANDOM.out
  timeout 120 fio --name=remote --ioengine=nbd --uri="$nbd_uri" --iodepth=8 \
      --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
      --output="$out" "$@" ||
    { cat "$out" >&2; fail "fio $* failed"; }
}
# status_json ARRAY: the live state from the serving process.
status_json() { vdtool_t 30 raid status --output=json "$1"; }
# slot_state ARRAY SLOT
slot_state() {
  status_json "$1" | /usr/bin/python3 -c '
import json, sys
print(json.load(sys.stdin)["members"][int(sys.argv[1])]["state"])' "$2"
}
# data_opts IMAGE-OPTS-FILE-PART: a qemu image-opts string for a member's
# data area (offset and size from the superblock).
data_opts() {
  echo "driver=raw,offset=$doff,size=$dsize,$1"
}
region=$((1 << 20))

## RAID1: local VHD + remote export, the default member timeout (5 s:
## long enough that a loaded CI machine does not fail a member by itself).
truncate -s 72M r1.img
start_remote r1.img
vdtool create -f vpc l0.vhd 72M >/dev/null
vdtool raid create -l 1 -c 64K --bitmap-region 1M a.vdraid l0.vhd "$ruri"
grep -qx "member 1 nbd $ruri" a.vdraid || fail "descriptor: $(cat a.vdraid)"
! grep -q "member-timeout" a.vdraid || fail "descriptor: $(cat a.vdraid)"
read -r doff dsize < <(vdtool raid detail --output=json a.vdraid |
  /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin)
print(j["data-offset"], j["member-data-size"])')

start_nbd a.vdraid
A="--offset=0 --size=16M"
B="--offset=32M --size=8M"
C="--offset=48M --size=4M"
run_fio --rw=randwrite --bs=4k $A --do_verify=1 --end_fsync=1
# Stopped mid-write: the requests to it hang until the member timeout.
run_fio --rw=randwrite --bs=4k $B --do_verify=1 &
fpid=$!
sleep 0.5
kill_remote STOP
wait $fpid || fail "fio saw an error while the remote member hung"
run_fio --rw=write --bs=64k $C --do_verify=1
[ "$(slot_state a.vdraid 1)" = faulty ] ||
  fail "remote member not failed: $(status_json a.vdraid)"
[ "$(slot_state a.vdraid 0)" = active ] || fail "local member not active"
run_fio --rw=randread --bs=4k $A --verify_only
# Killed and restarted (the file keeps what it had): re-add copies only
# what the bitmap marked while it was out.
kill_remote KILL
start_remote r1.img
# The failure is in the survivor's superblock (as md records it): read from
# the superblocks, the member that came back is "faulty".
vdtool_t 30 raid detail a.vdraid | grep -Eq "^ +1  faulty " ||
  fail "failure not recorded: $(vdtool raid detail a.vdraid)"
out=$(vdtool_t 120 raid re-add a.vdraid 1) || fail "re-add: $out"
echo "$out"
read -r copied total < <(echo "$out" |
  sed -n 's/.*copied \([0-9]*\) of \([0-9]*\) bytes.*/\1 \2/p')
[ -n "$copied" ] || fail "re-add printed no byte count: $out"
[ "$total" = "$dsize" ] || fail "member size $total, expected $dsize"
[ "$copied" -gt 0 ] && [ "$copied" -lt "$total" ] ||
  fail "re-add copied $copied of $total bytes"
# B and C (12 MiB) plus at most one partial region at each end.
[ "$copied" -le $(( (12 << 20) + 4 * region )) ] ||
  fail "re-add copied $copied bytes, more than the regions written (12 MiB)"
[ "$(slot_state a.vdraid 1)" = active ] || fail "not active after re-add"
out=$(vdtool_t 120 raid scrub a.vdraid) || fail "scrub: $out"
echo "$out" | grep -q " 0 mismatched" || fail "after re-add: $out"
run_fio --rw=randread --bs=4k $A --verify_only
run_fio --rw=randread --bs=4k $B --verify_only
run_fio --rw=read --bs=64k $C --verify_only
stop_nbd
qemu-img compare --image-opts \
  "$(data_opts "file.driver=vpc,file.file.driver=file,file.file.filename=l0.vhd")" \
  "$(data_opts "file.driver=file,file.filename=r1.img")" ||
  fail "the mirrors' data areas differ after the re-add"
vdtool check a.vdraid > check.out || fail "check: $(cat check.out)"
kill_remote KILL

## RAID5: two local members and one remote, auto re-add every second.
truncate -s 40M r5.img
start_remote r5.img
vdtool create -f vpc m1.vhd 40M >/dev/null
truncate -s 40M m0.img
vdtool raid create -l 5 -c 64K --bitmap-region 1M --member-timeout 7.5 \
  --auto-re-add 1 b.vdraid m0.img m1.vhd "$ruri"
grep -qx "auto-re-add 1" b.vdraid || fail "descriptor: $(cat b.vdraid)"
grep -qx "member-timeout 7.500" b.vdraid || fail "descriptor: $(cat b.vdraid)"
start_nbd b.vdraid
run_fio --rw=randwrite --bsrange=512-64k --offset=0 --size=24M \
  --do_verify=1 --end_fsync=1
kill_remote KILL
run_fio --rw=randwrite --bs=4k --offset=40M --size=8M --do_verify=1
[ "$(slot_state b.vdraid 2)" = faulty ] ||
  fail "remote RAID5 member not failed: $(status_json b.vdraid)"
run_fio --rw=randread --bsrange=512-64k --offset=0 --size=24M --verify_only
start_remote r5.img
state=
for i in $(seq 300); do
  state=$(status_json b.vdraid | /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
m = j["members"][2]
print(m["state"], m.get("re-add", {}).get("copied", -1), j["member-data-size"])')
  case $state in active\ *) break ;; esac
  sleep 0.1
done
echo "RAID5 auto re-add: slot state, bytes copied, member size: $state"
read -r st copied total <<<"$state"
[ "$st" = active ] || fail "RAID5 member not re-added automatically: $state"
[ "$copied" -gt 0 ] && [ "$copied" -lt "$total" ] ||
  fail "RAID5 re-add copied $copied of $total bytes"
out=$(vdtool_t 120 raid scrub b.vdraid) || fail "scrub: $out"
echo "$out" | grep -q " 0 mismatched" || fail "RAID5 after re-add: $out"
run_fio --rw=randread --bsrange=512-64k --offset=0 --size=24M --verify_only
run_fio --rw=randread --bs=4k --offset=40M --size=8M --verify_only
stop_nbd
kill_remote KILL

## write-mostly: reads avoid the remote mirror.
truncate -s 40M w1.img
rm -f stats.txt
start_remote w1.img --filter=stats statsfile="$VD_TMP/stats.txt"
truncate -s 40M w0.img
vdtool raid create -l 1 -c 64K --write-mostly "$ruri" c.vdraid w0.img "$ruri"
grep -qx "write-mostly 1" c.vdraid || fail "descriptor: $(cat c.vdraid)"
start_nbd c.vdraid
run_fio --rw=randwrite --bs=64k --offset=0 --size=16M --do_verify=1
run_fio --rw=read --bs=64k --offset=0 --size=16M --verify_only
stop_nbd
pid=$(cat remote.pid)
kill -TERM "$pid"
for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
[ -s stats.txt ] || fail "nbdkit wrote no statistics"
cat stats.txt
# "read: 4 ops, 0.001732 s, 204.00 KiB, ...": bytes per request type.
stat_bytes() {
  /usr/bin/python3 -c '
import re, sys
units = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
for line in open(sys.argv[1]):
    m = re.match(sys.argv[2] + r": \d+ ops, [\d.]+ s, ([\d.]+) (\w+),", line)
    if m:
        print(int(float(m.group(1)) * units[m.group(2)]))
        break
else:
    print(0)' stats.txt "$1"
}
read_bytes=$(stat_bytes read)
write_bytes=$(stat_bytes write)
[ "$write_bytes" -ge $((16 << 20)) ] ||
  fail "the write-mostly mirror got $write_bytes bytes of writes"
# fio read 32 MiB back; the mirror served only metadata (superblock,
# bitmap at assembly).
[ "$read_bytes" -lt $((1 << 20)) ] ||
  fail "the write-mostly mirror served $read_bytes bytes of reads"
exit 0
