#!/usr/bin/env bash
# Intermediate live commit (block-commit with a top below the active
# layer; vdisk/commit-live.c, vdisk/control/cmd-mirror.c) on a real
# vdisk-nbd --control serving base.vhd <- mid.vhd <- top.vhd while fio
# --verify=crc32c writes through NBD: the job (type commit) copies what
# mid holds into base and completes by itself (no READY, as QEMU's
# intermediate commit); afterwards top.vhd's backing file is base.vhd on
# disk (vdtool info; qemu cannot read differencing VHDs) and on the live
# chain (query-block), base equals mid's flattened view from before
# (qemu-img compare reads base), mid is unchanged, the chain on disk
# equals what the client read (qemu-img compare), every image checks
# clean (vdtool check) and fio's verify passes.  The errors (top not in
# the chain, base == top, base not below top) are one-line QMP errors and
# the export keeps serving.  Then a slow commit of a fresh chain is cut by
# kill -9 of the server: the chain on disk still reads what was served
# (qemu-img compare), top still names mid, and no image is corrupt.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires fio qemu-img qemu-io nbdcopy nbdinfo sha256sum
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

base=$VD_TMP/base.vhd
mid=$VD_TMP/mid.vhd
top=$VD_TMP/top.vhd
ctl=$VD_TMP/ctl.sock
qmp() { /usr/bin/python3 "$top_srcdir/tests/integration/live-mirror.py" "$ctl" "$@"; }

# serve_chain: make base <- mid <- top and serve top with the control
# socket (sets uri).  base: data at [0, 16M) and [40M, 48M); mid: data
# over part of base's, zeros over base's data, data over holes; top: hides
# part of mid.
serve_chain() {
  rm -f "$base" "$mid" "$top"
  qemu-img create -q -f vpc -o subformat=dynamic "$base" 64M
  qemu-io -f vpc -c 'write -P 0x11 0 16M' -c 'write -P 0x22 40M 8M' \
    "$base" >/dev/null
  vdtool create -q -f vpc -b "$base" -F vpc "$mid"
  start_nbd "disk=$mid"
  qemu-io -f raw "$(nbd_uri_for disk)" -c 'write -P 0x33 8M 16M' \
    -c 'write -z 44M 2M' -c 'write -P 0x44 60M 1M' >/dev/null ||
    fail "qemu-io could not write mid.vhd"
  stop_nbd
  vdtool create -q -f vpc -b "$mid" -F vpc "$top"
  start_nbd --control "$ctl" "disk=$top"
  uri=$(nbd_uri_for disk)
  qemu-io -f raw "$uri" -c 'write -P 0x55 20M 2M' >/dev/null ||
    fail "qemu-io could not write top.vhd"
}
serve_chain

# What base must hold afterwards: mid's view (mid is read-only now).
vdtool convert -O raw "$mid" "$VD_TMP/mid-flat.raw"
sum_mid=$(sha256sum <"$mid")

# The errors: each one line, nothing started.
expect_error "not in the backing chain" \
  vdtool qmp "$ctl" block-commit device=disk "top=$VD_TMP/nosuch.vhd"
expect_error "top and base are the same image" \
  vdtool qmp "$ctl" block-commit device=disk "top=$mid" "base=$mid"
expect_error "is not below" \
  vdtool qmp "$ctl" block-commit device=disk "top=$base" "base=$mid"
nbdinfo --size "$uri" >/dev/null || fail "the export stopped serving"

# Random 4 KiB writes over [16M, 32M) (on mid's data and a hole of it),
# rate-limited to span the commit, then fio reads back and verifies.
timeout 300 fio --name=w --ioengine=nbd --uri="$uri" --iodepth=8 \
  --rw=randwrite --bs=4k --offset=16M --size=16M --rate=,2m \
  --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
  --output="$VD_TMP/fio.out" &
fio_pid=$!
on_exit "kill $fio_pid"
sleep 1
# The job completes by itself, with no block-job-complete (a job that
# waited in READY for one would time out here).
qmp block-commit "{\"device\": \"disk\", \"top\": \"$mid\",
                   \"base\": \"$base\", \"speed\": 67108864}" \
  BLOCK_JOB_COMPLETED >"$VD_TMP/events" || fail "block-commit failed"
grep -q '"type": "commit"' "$VD_TMP/events" || fail "not a commit job: $(cat "$VD_TMP/events")"

# The live chain: top over base.
out=$(vdtool qmp "$ctl" query-block)
/usr/bin/python3 -c 'import json,sys
b=json.loads(sys.argv[1])[0]["inserted"]
assert b["file"].endswith("/top.vhd"), b
assert b["backing_file"].endswith("/base.vhd"), b
assert b["backing_file_depth"] == 1, b' "$out" || fail "query-block: $out"

wait $fio_pid || fail "fio failed (verify): $(cat "$VD_TMP/fio.out")"
nbdcopy "$uri" "$VD_TMP/served.raw" || fail "nbdcopy"
stop_nbd

vdtool info "$top" | grep -q "^backing file: .*base\.vhd$" ||
  fail "top.vhd does not name base.vhd: $(vdtool info "$top")"
[ "$(sha256sum <"$mid")" = "$sum_mid" ] || fail "mid.vhd changed"
for f in "$base" "$mid" "$top"; do
  vdtool check "$f" >/dev/null || fail "vdtool check $f"
done
qemu-img compare -q -f vpc "$base" -F raw "$VD_TMP/mid-flat.raw" ||
  fail "base.vhd does not hold what mid.vhd showed"
vdtool convert -O raw "$top" "$VD_TMP/flat.raw"
qemu-img compare -q -f raw -F raw "$VD_TMP/flat.raw" "$VD_TMP/served.raw" ||
  fail "the chain on disk differs from what the client read"

# ---- kill -9 during a slow commit (1 MiB/s: some 24 s of copying) ----
serve_chain
nbdcopy "$uri" "$VD_TMP/before.raw" || fail "nbdcopy"
qmp block-commit "{\"device\": \"disk\", \"top\": \"$mid\",
                   \"speed\": 1048576}" >/dev/null || fail "block-commit failed"
sleep 2
kill -9 "$(cat "$nbd_pidfile")"
for i in $(seq 100); do kill -0 "$(cat "$nbd_pidfile")" 2>/dev/null || break; sleep 0.1; done
rm -f "$nbd_pidfile" "$ctl"
vdtool info "$top" | grep -q "^backing file: .*mid\.vhd$" ||
  fail "after kill -9 mid-copy, top.vhd does not name mid.vhd: $(vdtool info "$top")"
# Unflushed copies into base may have leaked space (3: leaks only).
for f in "$base" "$mid" "$top"; do
  rc=0; vdtool check "$f" >/dev/null || rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 3 ] || fail "vdtool check $f after kill -9: $rc"
done
vdtool convert -O raw "$top" "$VD_TMP/flat2.raw"
qemu-img compare -q -f raw -F raw "$VD_TMP/flat2.raw" "$VD_TMP/before.raw" ||
  fail "after kill -9 the chain reads other data than was served"
