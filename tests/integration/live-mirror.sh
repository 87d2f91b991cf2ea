#!/usr/bin/env bash
# Live storage migration and live commit on a real vdisk-nbd --control
# while fio --verify=crc32c writes through NBD (drive-mirror, block-commit,
# block-job-complete/-cancel; vdisk/mirror.c, vdisk/control/cmd-mirror.c):
#  1. mirror a dynamic VHD to a new VHD under load, pivot: fio's verify
#     (after the pivot, so it reads the target) passes, and the target
#     file equals what the server served (qemu-img compare, vdtool check)
#  2. mirror to a raw file, cancel after ready: a consistent copy,
#     qemu-img compare source vs target after the server stopped
#  3. cancel before ready: the source is what it was (compare)
#  4. kill -9 of the server during a mirror: the source is byte-exact what
#     was acknowledged and flushed before (compare), and checks clean (vdtool)
#  5. block-commit of a snapshot layer (vdtool create -b) under load: the
#     export moves onto the base, which equals what was served and checks
#     clean (qemu-img compare, vdtool check)
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
. "$top_srcdir/tests/integration/mirror-functions.sh"

serve() { rm -f "$VD_TMP/nbd.err"; start_nbd --control "$ctl" "disk=$1"; uri=$(nbd_uri_for disk); }

# ---- 1. VHD target, pivot under load ----
new_source
serve "$VD_TMP/src.vhd"
pivot_under_load "$VD_TMP/fio1.out" drive-mirror "{\"device\": \"disk\",
  \"target\": \"$VD_TMP/dst1.vhd\", \"format\": \"vpc\", \"sync\": \"full\"}" \
  "$VD_TMP/dst1.vhd"
nbdcopy "$uri" "$VD_TMP/served1.raw"
stop_nbd
qemu-img compare -q -f vpc "$VD_TMP/dst1.vhd" -F raw "$VD_TMP/served1.raw" ||
  fail "the VHD target differs from what was served after the pivot"
vdtool check "$VD_TMP/dst1.vhd" >/dev/null || fail "vdtool check of the VHD target"

# ---- 2. raw target, cancel after ready: a consistent copy ----
new_source
serve "$VD_TMP/src.vhd"
fio_bg "$VD_TMP/fio2.out" --rate=,2m
sleep 1
qmp drive-mirror "{\"device\": \"disk\", \"target\": \"$VD_TMP/dst2.raw\",
  \"format\": \"raw\", \"sync\": \"full\", \"job-id\": \"m2\"}" \
  BLOCK_JOB_READY >/dev/null || fail "drive-mirror to raw: no BLOCK_JOB_READY"
fio_wait "$VD_TMP/fio2.out"        # writes after ready, not yet copied
qmp block-job-cancel '{"device": "m2"}' BLOCK_JOB_COMPLETED >/dev/null ||
  fail "block-job-cancel after ready: no BLOCK_JOB_COMPLETED"
[ "$(served_path)" = "$VD_TMP/src.vhd" ] || fail "cancel pivoted"
stop_nbd
qemu-img compare -q -f vpc "$VD_TMP/src.vhd" -F raw "$VD_TMP/dst2.raw" ||
  fail "cancel after ready: the raw target is not a copy of the source"

# ---- 3. cancel before ready: the source untouched ----
new_source
serve "$VD_TMP/src.vhd"
nbdcopy "$uri" "$VD_TMP/before3.raw"
qmp drive-mirror "{\"device\": \"disk\", \"target\": \"$VD_TMP/dst3.raw\",
  \"format\": \"raw\", \"sync\": \"full\", \"speed\": 1048576}" >/dev/null ||
  fail "drive-mirror (slow) failed"
qmp block-job-cancel '{"device": "disk"}' BLOCK_JOB_CANCELLED >/dev/null ||
  fail "block-job-cancel before ready: no BLOCK_JOB_CANCELLED"
[ "$(served_path)" = "$VD_TMP/src.vhd" ] || fail "cancel before ready pivoted"
nbdinfo --size "$uri" >/dev/null || fail "the export stopped serving"
stop_nbd
qemu-img compare -q -f raw "$VD_TMP/before3.raw" -F vpc "$VD_TMP/src.vhd" ||
  fail "cancel before ready changed the source"

# ---- 4. kill -9 during the mirror ----
new_source
serve "$VD_TMP/src.vhd"
fio_bg "$VD_TMP/fio4.out"
fio_wait "$VD_TMP/fio4.out"        # writers stopped: all acknowledged
/usr/bin/python3 -c 'import nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1]); h.flush(); h.shutdown()' "$uri" ||
  fail "NBD flush failed"
nbdcopy "$uri" "$VD_TMP/acked4.raw"
qmp drive-mirror "{\"device\": \"disk\", \"target\": \"$VD_TMP/dst4.vhd\",
  \"format\": \"vpc\", \"sync\": \"full\", \"speed\": 4194304}" >/dev/null ||
  fail "drive-mirror (slow) failed"
wait_copy_started
kill -KILL "$(cat "$nbd_pidfile")"
for i in $(seq 100); do kill -0 "$(cat "$nbd_pidfile")" 2>/dev/null || break; sleep 0.1; done
rm -f "$nbd_pidfile"
qemu-img compare -q -f raw "$VD_TMP/acked4.raw" -F vpc "$VD_TMP/src.vhd" ||
  fail "kill -9 during the mirror: the source is not what was acknowledged"
vdtool check "$VD_TMP/src.vhd" >/dev/null || fail "vdtool check of the source"
rm -f "$ctl"

# ---- 5. block-commit of a snapshot layer under load ----
rm -f "$VD_TMP/base.vhd" "$VD_TMP/top.vhd"
qemu-img create -q -f vpc -o subformat=dynamic "$VD_TMP/base.vhd" 64M
qemu-io -f vpc -c 'write -P 0x3c 0 24M' "$VD_TMP/base.vhd" >/dev/null
vdtool create -q -f vpc -b "$VD_TMP/base.vhd" -F vpc "$VD_TMP/top.vhd"
serve "$VD_TMP/top.vhd"
pivot_under_load "$VD_TMP/fio5.out" block-commit '{"device": "disk"}' \
  "$VD_TMP/base.vhd"
nbdcopy "$uri" "$VD_TMP/served5.raw"
stop_nbd
qemu-img compare -q -f vpc "$VD_TMP/base.vhd" -F raw "$VD_TMP/served5.raw" ||
  fail "the committed base differs from what was served"
vdtool check "$VD_TMP/base.vhd" >/dev/null || fail "vdtool check of the base"
echo PASS
