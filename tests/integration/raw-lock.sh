#!/usr/bin/env bash
# Image locking interoperates with qemu's: while qemu-io has an image
# open for writing, vdtool refuses to open it (naming the holder) and does
# not change it; -U reads it anyway.  While vdtool holds it, qemu refuses.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-io qemu-img md5sum
cd "$VD_TMP"

vdtool create -q img.raw 8M
qemu-io -f raw -c 'write -P 0x33 0 1M' img.raw >/dev/null
sum0=$(md5sum < img.raw)

# qemu-io holds the image open (read-write) while its stdin stays open.
mkfifo ctl
qemu-io -f raw img.raw < ctl > qemu-io.out 2>&1 &
qpid=$!
exec 3>ctl
on_exit "exec 3>&-; kill $qpid"
for i in $(seq 50); do
  grep -q . /proc/$qpid/fdinfo/* 2>/dev/null && \
    ls -l /proc/$qpid/fd 2>/dev/null | grep -q img.raw && break
  sleep 0.1
done

expect_error "img\.raw: image is in use by process $qpid \(qemu-io\)" vdtool create img.raw 1M
expect_error "img\.raw: image is in use by process $qpid" vdtool convert -n img.raw img.raw
expect_error "img\.raw: image is in use" vdtool info img.raw
[ "$(md5sum < img.raw)" = "$sum0" ] || fail "a refused open changed the image"
vdtool info -U img.raw | grep -q "virtual size: 8 MiB" || fail "info -U"
vdtool compare -U img.raw img.raw >/dev/null || fail "compare -U"
exec 3>&-
wait $qpid || true

# The other way round: qemu refuses to write an image vdtool is writing.
# A slow convert from a big sparse source holds the output open.
vdtool create -q big.raw 16G
qemu-io -f raw -c 'write -P 0x44 0 64M' big.raw >/dev/null
vdtool convert -S 0 -m 1 big.raw out.raw &
vpid=$!
on_exit "kill $vpid"
held=false
for i in $(seq 100); do
  if [ -e out.raw ] && grep -q ":$(stat -c %i out.raw) 201 201" /proc/locks; then
    held=true; break
  fi
  sleep 0.05
done
$held || fail "vdtool convert did not lock its output"
rc=0
qemu-io -f raw -c 'write -P 0x55 0 512' out.raw > q.out 2>&1 || rc=$?
kill $vpid 2>/dev/null || true
wait $vpid 2>/dev/null || true
grep -qi "lock" q.out || fail "qemu-io wrote an image vdtool was writing: $(cat q.out)"
echo "raw-lock: OK"
