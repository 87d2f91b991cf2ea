#!/usr/bin/env bash
# Live storage migration between two servers: drive-mirror of a served
# disk to an NBD export of another vdisk-nbd (vdisk/mirror.c through the
# nbd driver, vdisk/nbd-client.c), while fio --verify=crc32c writes
# through the first server:
#  1. A serves src.vhd, B serves dst.vhd; sync=full to B's URI under load,
#     block-job-complete: A's export now forwards to B (query-block names
#     the URI), fio keeps writing through A after the pivot and verifies,
#     A and B serve the same bytes (cmp), and after both stopped dst.vhd
#     equals what A served (qemu-img compare) and checks clean (vdtool)
#  2. the refusals: a URI with mode absolute-paths, a container format
#  3. kill -9 of B (serving dst.raw; "format": "nbd") during the mirror:
#     the job fails (BLOCK_JOB_ERROR), A keeps serving src.vhd (fio
#     verifies), which then checks clean
#  4. B stopped (SIGSTOP: connections open, no answers) during a
#     write-blocking mirror with "timeout": 2: the job fails, the guest's
#     writes go on (fio verifies), A serves src.vhd
#  5. cancel before ready (A serves src.vhd on), after ready (no pivot;
#     dst.raw a copy of src.vhd: qemu-img compare)
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
. "$top_srcdir/tests/integration/mirror-functions.sh"

b_sock=$VD_TMP/b.sock
b_pidfile=$VD_TMP/b.pid
b_uri="nbd+unix:///dst?socket=$b_sock"

# serve_a IMAGE: server A (the one with the control socket), export disk.
serve_a() {
  rm -f "$ctl"
  start_nbd --control "$ctl" "disk=$1"
  uri=$(nbd_uri_for disk)
}
# serve_b IMAGE: server B, export dst, writable, on its own socket.
serve_b() {
  rm -f "$b_sock" "$b_pidfile"
  vdisk_nbd --fork --pid-file "$b_pidfile" -t -k "$b_sock" "dst=$1" \
      2>>"$VD_TMP/b.err" || fail "vdisk-nbd B did not start: $(cat "$VD_TMP/b.err")"
  on_exit stop_b
}
# stop_b [SIGNAL]: stop B (TERM by default) and wait for it (20 s max).
stop_b() {
  [ -s "$b_pidfile" ] || return 0
  local pid i
  pid=$(cat "$b_pidfile")
  kill "-${1:-TERM}" "$pid" 2>/dev/null || true
  for i in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$b_pidfile"; return 0; }
    sleep 0.1
  done
  fail "vdisk-nbd B (pid $pid) did not stop"
}

# new_images: src.vhd (new_source) and B's dst.vhd and dst.raw, each
# of the source's virtual size.
new_images() {
  new_source
  rm -f "$VD_TMP/dst.vhd" "$VD_TMP/dst.raw"
  qemu-img create -q -f vpc -o subformat=dynamic "$VD_TMP/dst.vhd" 64M
  truncate -s "$(qemu-img info --output=json "$VD_TMP/src.vhd" |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" \
    "$VD_TMP/dst.raw"
}
mirror_args() {
  echo "{\"device\": \"disk\", \"target\": \"$b_uri\", \"sync\": \"full\",
         \"mode\": \"existing\" $*}"
}

# ---- 1. mirror to B under load, pivot: A forwards to B ----
new_images
serve_b "$VD_TMP/dst.vhd"
serve_a "$VD_TMP/src.vhd"
pivot_under_load "$VD_TMP/fio1.out" drive-mirror "$(mirror_args)" "$b_uri" \
  --size=16M
nbdcopy "$uri" "$VD_TMP/served-a.raw"
nbdcopy "$b_uri" "$VD_TMP/served-b.raw"
cmp "$VD_TMP/served-a.raw" "$VD_TMP/served-b.raw" ||
  fail "A (forwarding) and B serve different bytes"
stop_nbd
stop_b
qemu-img compare -q -f vpc "$VD_TMP/dst.vhd" -F raw "$VD_TMP/served-a.raw" ||
  fail "dst.vhd differs from what A served after the pivot"
vdtool check "$VD_TMP/dst.vhd" >/dev/null || fail "vdtool check of dst.vhd"

# ---- 2. refusals: one clear error each, nothing started ----
new_images
serve_b "$VD_TMP/dst.vhd"
serve_a "$VD_TMP/src.vhd"
expect_error "must be 'existing'" qmp drive-mirror \
  "{\"device\": \"disk\", \"target\": \"$b_uri\", \"sync\": \"full\"}"
expect_error "an NBD URI .*not as 'vpc'" qmp drive-mirror \
  "$(mirror_args ', "format": "vpc"')"
[ "$(vdtool qmp "$ctl" query-block-jobs)" = "[]" ] || fail "a job was left"
stop_nbd

# ---- 3. kill -9 of B during the mirror: the job fails, A serves on ----
stop_b
serve_b "$VD_TMP/dst.raw"
serve_a "$VD_TMP/src.vhd"
fio_bg "$VD_TMP/fio3.out" --rate=,2m --size=8M
qmp drive-mirror "$(mirror_args ', "format": "nbd", "speed": 4194304')" \
  BLOCK_JOB_COMPLETED \
  >/dev/null 2>"$VD_TMP/job3.err" &
job_pid=$!
wait_copy_started
stop_b KILL
rc=0; wait "$job_pid" || rc=$?
[ "$rc" = 1 ] && grep -Eq 'BLOCK_JOB_ERROR|BLOCK_JOB_COMPLETED.*"error"' "$VD_TMP/job3.err" ||
  fail "kill -9 of B: the job did not fail (rc $rc): $(cat "$VD_TMP/job3.err")"
[ "$(served_path)" = "$VD_TMP/src.vhd" ] || fail "A no longer serves src.vhd"
fio_wait "$VD_TMP/fio3.out"
nbdinfo --size "$uri" >/dev/null || fail "A stopped serving"
stop_nbd
vdtool check "$VD_TMP/src.vhd" >/dev/null || fail "vdtool check of src.vhd"

# ---- 4. B stops answering (SIGSTOP) during a write-blocking mirror ----
# Its connections stay open: without the target's request timeout the
# job, its cancel and the guest's writes (each also written to B) would
# wait for ever.  With "timeout": 2 the job fails, A serves on.
serve_b "$VD_TMP/dst.raw"
serve_a "$VD_TMP/src.vhd"
fio_bg "$VD_TMP/fio4.out" --rate=,2m --size=8M
qmp drive-mirror "$(mirror_args ', "copy-mode": "write-blocking",
  "speed": 4194304, "timeout": 2')" BLOCK_JOB_COMPLETED \
  >/dev/null 2>"$VD_TMP/job4.err" &
job_pid=$!
wait_copy_started
kill -STOP "$(cat "$b_pidfile")"
on_exit "kill -CONT $(cat "$b_pidfile")"
rc=0; wait "$job_pid" || rc=$?
[ "$rc" = 1 ] && grep -q 'BLOCK_JOB_ERROR' "$VD_TMP/job4.err" ||
  fail "B stopped: the job did not fail (rc $rc): $(cat "$VD_TMP/job4.err")"
fio_wait "$VD_TMP/fio4.out"
[ "$(served_path)" = "$VD_TMP/src.vhd" ] || fail "A no longer serves src.vhd"
kill -CONT "$(cat "$b_pidfile")"
stop_b
stop_nbd
vdtool check "$VD_TMP/src.vhd" >/dev/null || fail "vdtool check of src.vhd"

# ---- 5. cancel before ready, then after ready, as for a local target ----
new_images
serve_b "$VD_TMP/dst.raw"
serve_a "$VD_TMP/src.vhd"
qmp drive-mirror "$(mirror_args ', "speed": 1048576')" >/dev/null ||
  fail "drive-mirror (slow) failed"
qmp block-job-cancel '{"device": "disk"}' BLOCK_JOB_CANCELLED >/dev/null ||
  fail "cancel before ready: no BLOCK_JOB_CANCELLED"
qmp drive-mirror "$(mirror_args)" BLOCK_JOB_READY >/dev/null ||
  fail "drive-mirror to B (again): no BLOCK_JOB_READY"
qemu-io -f raw -c 'write -P 0x77 20M 1M' "$uri" >/dev/null   # dirty again
qmp block-job-cancel '{"device": "disk"}' BLOCK_JOB_COMPLETED >/dev/null ||
  fail "cancel after ready: no BLOCK_JOB_COMPLETED"
[ "$(served_path)" = "$VD_TMP/src.vhd" ] || fail "cancel pivoted"
stop_nbd
stop_b
qemu-img compare -q -f vpc "$VD_TMP/src.vhd" -F raw "$VD_TMP/dst.raw" ||
  fail "cancel after ready: B's dst.raw is not a copy of the source"
echo PASS
