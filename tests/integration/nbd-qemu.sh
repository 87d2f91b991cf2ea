#!/usr/bin/env bash
# vdisk-nbd driven by QEMU's NBD client: qemu-io patterns (write -P,
# read -P, write -z, discard, flush, FUA), qemu-img convert to and from
# the export, qemu-img compare.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-io qemu-img

img=$VD_TMP/disk.img
truncate -s 32M "$img"
start_nbd "disk=$img"
uri=$(nbd_uri_for disk)

qio() { qemu-io -f raw "$@"; }
# qemu-io exits 0 even when a pattern check fails: look at its output.
qio_ok() {
  local out
  out=$(qemu-io -f raw "$@" 2>&1) || fail "qemu-io $*: $out"
  if grep -Eq 'Pattern verification failed|failed|error' <<<"$out"; then
    fail "qemu-io $*: $out"
  fi
}

qio_ok -c 'write -P 0xab 0 1M' -c 'write -P 0xcd 1M 64k' "$uri"
qio_ok -c 'write -f -P 0x5a 4M 128k' "$uri"                 # FUA
qio_ok -c 'read -P 0xab 0 1M' -c 'read -P 0xcd 1M 64k' \
       -c 'read -P 0x5a 4M 128k' -c 'read -P 0 8M 1M' "$uri"
qio_ok -c 'write -z 512k 256k' -c 'read -P 0 512k 256k' \
       -c 'read -P 0xab 0 512k' -c 'read -P 0xab 768k 256k' "$uri"
qio_ok -c 'write -P 0x11 16M 2M' -c 'discard 16M 1M' -c 'flush' "$uri"
# Unaligned I/O (qemu does the read-modify-write against our 512 minimum).
qio_ok -c 'write -P 0x77 1000 3000' -c 'read -P 0x77 1000 3000' "$uri"
qio_ok -c 'read -P 0xab 0 1000' "$uri"

# The image file holds what the clients wrote.
qio_ok -r -c 'read -P 0x5a 4M 128k' -c 'read -P 0x11 17M 1M' -c 'read -P 0 512k 256k' "$img"

# qemu-img convert from the export, then back into it, then compare.
qemu-img convert -f raw -O raw "$uri" "$VD_TMP/copy.img" ||
  fail "qemu-img convert from NBD failed"
cmp "$img" "$VD_TMP/copy.img" || fail "copy differs from the image"

pattern_bytes $((32 * 1024 * 1024)) 7 > "$VD_TMP/src.img"
# Leave a hole in the source so that convert sends zero requests too.
dd if=/dev/zero of="$VD_TMP/src.img" bs=1M seek=8 count=4 conv=notrunc status=none
qemu-img convert -n -f raw -O raw "$VD_TMP/src.img" "$uri" ||
  fail "qemu-img convert to NBD failed"
qemu-img compare -f raw -F raw "$VD_TMP/src.img" "$uri" ||
  fail "qemu-img compare: export differs from source"
cmp "$VD_TMP/src.img" "$img" || fail "image file differs from source"

# qemu-img info and map see the export as qemu-nbd would show it.
qemu-img info "$uri" | grep -q 'virtual size: 32 MiB' || fail "qemu-img info"
qemu-img map --output=json -f raw "$uri" >/dev/null || fail "qemu-img map"
stop_nbd
echo PASS
