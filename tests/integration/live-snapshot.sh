#!/usr/bin/env bash
# Live external snapshots over the control socket (blockdev-snapshot-sync)
# on a real vdisk-nbd --control serving a dynamic VHD, while fio writes
# through the NBD export with crc32c verification: two snapshots during
# the load, then the final chain flattened by vdtool must equal, per
# qemu-img compare, the bytes the client read from the export; every
# image checks clean (vdtool check); each old top is unchanged from its
# snapshot on and gives up its write lock (qemu-img info, which takes the
# shared lock, works on it then and not before); vdtool info shows the
# chain.  The errors (file exists, symlink, unknown device, unsupported
# format, mode existing) are QMP errors and the export keeps serving.
# qemu cannot read differencing VHDs, so the chain is read by vdtool and
# qemu-img judges the flattened bytes.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires fio nbdcopy nbdinfo qemu-img sha256sum

base=$VD_TMP/base.vhd
s1=$VD_TMP/s1.vhd
s2=$VD_TMP/s2.vhd
ctl=$VD_TMP/ctl.sock
vdtool create -q -f vhd "$base" 64M
start_nbd --control "$ctl" "disk=$base"
uri=$(nbd_uri_for disk)
snap() { vdtool qmp "$ctl" blockdev-snapshot-sync "$@"; }

# A VHD export is multi-connection safe (a flush covers every connection's
# completed writes), so a raw export may take a VHD snapshot and a VHD
# export keeps its promise across one.
nbdinfo --can multi-conn "$uri" || fail "a VHD export should be multi-conn"
# Held writable by the server: qemu-img cannot take its shared lock.
qemu-img info "$base" >/dev/null 2>&1 && fail "qemu-img opened the served base"

# ~16 s of random 4 KiB writes (rate-limited so the snapshots land inside
# the write phase), then fio reads everything back and checks crc32c.
timeout 300 fio --name=load --ioengine=nbd --uri="$uri" --rw=randwrite \
  --bs=4k --size=64M --iodepth=8 --rate=4m --verify=crc32c \
  --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
  --output="$VD_TMP/fio.out" &
fio_pid=$!
on_exit "kill $fio_pid"

sleep 1.5
out=$(snap device=disk "snapshot-file=$s1" format=vhd) || fail "snapshot 1: $out"
[ "$out" = "{}" ] || fail "snapshot 1 returned $out"
sum_base=$(sha256sum <"$base")
qemu-img info "$base" >/dev/null || fail "the old top kept its write lock"

# The errors, while fio writes: each a QMP error, nothing created.
echo precious >"$VD_TMP/exists.vhd"
expect_error "the snapshot file already exists" \
  snap device=disk "snapshot-file=$VD_TMP/exists.vhd"
[ "$(cat "$VD_TMP/exists.vhd")" = precious ] || fail "an existing file was touched"
ln -s "$VD_TMP/target.vhd" "$VD_TMP/link.vhd"
expect_error "the snapshot file already exists" \
  snap device=disk "snapshot-file=$VD_TMP/link.vhd"
[ ! -e "$VD_TMP/target.vhd" ] || fail "the symlink was followed"
expect_error "^vdtool: Cannot find device='nosuch' nor node-name=''$" \
  snap device=nosuch "snapshot-file=$VD_TMP/x.vhd"
expect_error "format 'qcow2' is not supported" \
  snap device=disk "snapshot-file=$VD_TMP/x.qcow2" format=qcow2
expect_error "mode 'existing' is not supported" \
  snap node-name=disk "snapshot-file=$VD_TMP/x.vhd" mode=existing
expect_error "Parameter 'snapshot-file' is missing" snap device=disk
ls "$VD_TMP" | grep -Eq '^x\.|tmp-' && fail "a refused snapshot left a file"
nbdinfo --size "$uri" >/dev/null || fail "the export stopped serving"

out=$(snap node-name=disk "snapshot-file=$s2") || fail "snapshot 2: $out"
sum_s1=$(sha256sum <"$s1")
kill -0 $fio_pid 2>/dev/null || fail "fio's write phase ended before the second snapshot: the load did not overlap (raise its size)"

wait $fio_pid || fail "fio failed (verify): $(cat "$VD_TMP/fio.out")"

# What the client sees now, then the chain on disk must be the same.
nbdcopy "$uri" "$VD_TMP/seen.raw" || fail "nbdcopy"
out=$(vdtool qmp "$ctl" query-block)
/usr/bin/python3 -c 'import json,sys
b=json.loads(sys.argv[1])[0]["inserted"]
assert b["file"].endswith("s2.vhd"), b["file"]
assert b["backing_file"].endswith("s1.vhd"), b
assert b["backing_file_depth"] == 2, b
assert b["image"]["backing-image"]["backing-image"]["filename"].endswith("base.vhd"), b
assert "backing-image" not in b["image"]["backing-image"]["backing-image"], b' "$out" || fail "query-block: $out"
stop_nbd

[ "$(sha256sum <"$base")" = "$sum_base" ] || fail "the base changed after the first snapshot"
[ "$(sha256sum <"$s1")" = "$sum_s1" ] || fail "s1 changed after the second snapshot"
for f in "$base" "$s1" "$s2"; do
  vdtool check "$f" >/dev/null || fail "vdtool check $f"
done
vdtool convert -O raw "$s2" "$VD_TMP/flat.raw"
qemu-img compare -f raw -F raw "$VD_TMP/flat.raw" "$VD_TMP/seen.raw" >/dev/null ||
  fail "the chain on disk differs from what the client read"
chain=$(vdtool info --backing-chain "$s2" | grep '^image:' | tr '\n' ' ')
[ "$chain" = "image: $s2 image: $s1 image: $base " ] ||
  fail "vdtool info --backing-chain shows: $chain"
# qemu reads the (dynamic) base and agrees with vdtool about it.
vdtool convert -O raw "$base" "$VD_TMP/base.raw"
qemu-img compare -f vpc -F raw "$base" "$VD_TMP/base.raw" >/dev/null ||
  fail "qemu-img reads the base differently"
