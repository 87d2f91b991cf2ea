#!/usr/bin/env bash
# qcow2 overwrites in place (vdisk/qcow2-write.c, q_overwrite): a write to
# clusters the image alone owns (an L2 entry with the COPIED flag, neither
# compressed nor zero, in an L2 table with the COPIED flag) changes no
# metadata, so it goes in place under the shared lock, without rereading
# the L2 table; the rest of a range that reaches any other cluster takes
# the writer's path.  Checked through vdisk-nbd against qemu: the bytes
# (qemu-io writes over an image mixing owned, compressed, zero and
# unallocated clusters, across their edges, against the same writes on a
# raw copy), concurrent writers (fio, 4 KiB to 256 KiB random writes at
# queue depth 32, crc32c verify), qemu-img check after both, and that
# 4 KiB overwrites read no L2 table (the writer's path reads one per
# write: 64 KiB preads counted with strace).
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io fio strace

M=$((1024 * 1024))
ref=$VD_TMP/ref.raw img=$VD_TMP/d.qcow2
pattern_bytes $((16 * M)) 11 > "$ref"
# Compressed everywhere, then owned data, a zero run and a discarded run.
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=64k "$ref" "$img"
prep=(-c 'write -P 0x21 0 4M' -c 'write -P 0x22 5M 1M' -c 'write -z 7M 512k'
      -c 'discard 9M 512k')
qemu-io -f qcow2 "${prep[@]}" "$img" >/dev/null
qemu-io -f raw "${prep[@]}" "$ref" >/dev/null
qemu-img compare -q "$ref" "$img" || fail "the prepared image differs"

# Writes inside owned clusters, across owned/compressed, compressed/owned,
# into zero and unallocated clusters, unaligned across a cluster edge, and
# one spanning every kind.
writes=(-c 'write -P 0x31 100k 8k' -c 'write -P 0x32 4032k 128k'
        -c 'write -P 0x33 4990k 40k' -c 'write -P 0x34 7100k 4k'
        -c 'write -P 0x35 9100k 4k' -c 'write -P 0x36 65535 2'
        -c 'write -P 0x37 3M 8M' -c 'write -P 0x38 2M 4k')
start_nbd -f qcow2 "$img"
qemu-io -f raw "${writes[@]}" "$nbd_uri" >/dev/null || fail "qemu-io writes"
stop_nbd
qemu-io -f raw "${writes[@]}" "$ref" >/dev/null
qemu-img compare -q "$ref" "$img" || fail "writes through vdisk-nbd differ from qemu's"
qemu-img check -q "$img" || fail "qemu-img check after the writes"

# Concurrent writers over owned and other clusters alike.
start_nbd -f qcow2 "$img"
fio --name=ow --ioengine=nbd --uri="$nbd_uri" --rw=randwrite \
    --bsrange=4k-256k --iodepth=32 --size=16M --verify=crc32c \
    --verify_fatal=1 --verify_state_save=0 --output="$VD_TMP/fio.out" ||
  fail "fio verify: $(tail -5 "$VD_TMP/fio.out")"
stop_nbd
qemu-img check -q "$img" || fail "qemu-img check after fio"

# 4 KiB overwrites of owned clusters read no L2 table.
qemu-img convert -q -f raw -O qcow2 -o cluster_size=64k "$ref" "$VD_TMP/own.qcow2"
cmds=()
for i in $(seq 0 199); do cmds+=(-c "write -P $((i % 250 + 1)) $((i * 77 % 4000))k 4k"); done
start_nbd_traced pread64 -f qcow2 "$VD_TMP/own.qcow2"
qemu-io -f raw "${cmds[@]}" "$nbd_uri" >/dev/null || fail "qemu-io overwrites"
stop_nbd_traced
n=$(grep -c 'pread64([0-9]*, .*, 65536, ' "$VD_TMP/strace" || true)
echo "200 overwrites: $n reads of 64 KiB"
[ "$n" -lt 20 ] || fail "200 overwrites of owned clusters read $n L2 tables"
qemu-io -f raw "${cmds[@]}" "$ref" >/dev/null
qemu-img compare -q "$ref" "$VD_TMP/own.qcow2" || fail "overwrites differ"
echo PASS
