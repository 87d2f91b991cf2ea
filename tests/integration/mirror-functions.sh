# Helpers shared by live-mirror.sh and live-migrate.sh; source after
# functions.sh and tests/nbd/lib.sh.  $ctl is the control socket of the
# server, $uri the export fio writes through (set it before fio_bg).
requires fio qemu-img qemu-io nbdcopy nbdinfo
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "no python3-nbd"
ctl=$VD_TMP/ctl.sock

# qmp COMMAND JSON-ARGS [EVENT [TIMEOUT]]: see live-mirror.py.
qmp() { /usr/bin/python3 "$top_srcdir/tests/integration/live-mirror.py" "$ctl" "$@"; }

# fio_bg OUT ARGS: random 4 KiB writes over [16M, 48M) through $uri, then
# the verify pass, in the background (bounded); sets fio_pid.  At
# --rate=,2m the writes last about 16 s, which spans the mirror of 64 MiB
# and its pivot (not asserted: no timing in tests; correctness holds
# either way).  fio's nbd engine spins on a connection that died (a
# failed test stopped the server) and then ignores SIGTERM: the bound
# and the cleanup use SIGKILL (--thread: one process).
fio_bg() {
  local out=$1; shift
  timeout -s KILL 300 fio --name=w --thread --ioengine=nbd --uri="$uri" \
    --iodepth=8 --rw=randwrite --bs=4k --offset=16M --size=32M \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
    --output="$out" "$@" &
  fio_pid=$!
  on_exit "kill -KILL \$(pgrep -P $fio_pid) $fio_pid"
}
fio_wait() {
  wait "$fio_pid" || { cat "$1" >&2; fail "fio failed (verify?)"; }
  if grep -q 'verify:' "$1" && grep -q 'bad' "$1"; then
    cat "$1" >&2; fail "fio: verification errors"
  fi
}

# served_path: the file (or URI) the first device of the server serves.
served_path() {
  vdtool qmp "$ctl" query-block |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["inserted"]["file"])'
}

# new_source: $VD_TMP/src.vhd, a dynamic 64 MiB VHD with data at both ends.
new_source() {
  rm -f "$VD_TMP/src.vhd"
  qemu-img create -q -f vpc -o subformat=dynamic "$VD_TMP/src.vhd" 64M
  qemu-io -f vpc -c 'write -P 0x5a 0 8M' -c 'write -P 0xa5 56M 4M' \
    "$VD_TMP/src.vhd" >/dev/null
}

# pivot_under_load OUT COMMAND JSON-ARGS EXPECT [FIO-ARGS]: start COMMAND
# (a job on device "disk") while fio_bg writes, wait for BLOCK_JOB_READY,
# complete it; the device must then serve EXPECT, and fio's verify (after
# the pivot, so it reads the new device) must pass.
pivot_under_load() {
  local out=$1 cmd=$2 args=$3 expect=$4
  shift 4
  fio_bg "$out" --rate=,2m "$@"
  sleep 1
  qmp "$cmd" "$args" BLOCK_JOB_READY >/dev/null || fail "$cmd: no BLOCK_JOB_READY"
  qmp block-job-complete '{"device": "disk"}' BLOCK_JOB_COMPLETED >/dev/null ||
    fail "block-job-complete of $cmd failed"
  [ "$(served_path)" = "$expect" ] || fail "$cmd did not pivot: $(served_path)"
  fio_wait "$out"
}

# wait_copy_started: until the first job has copied something (10 s max).
wait_copy_started() {
  local i off
  for i in $(seq 100); do
    off=$(vdtool qmp "$ctl" query-block-jobs |
          /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(j[0]["offset"] if j else -1)')
    [ "$off" -gt 0 ] && return 0
    sleep 0.1
  done
  fail "the mirror did not start copying"
}
