#!/usr/bin/env bash
# A booted guest whose only disk is a vdisk-nbd export: QEMU (TCG) boots
# the test guest (tests/guest) with -drive file=nbd+unix://...,if=virtio,
# so QEMU's own NBD client carries the guest's I/O.  For a dynamic VHD and
# a dynamic VHDX: boot 1 makes ext4 on /dev/vda, writes a tree of files,
# prints their checksums and powers off; the host kills vdisk-nbd with
# SIGKILL (what QEMU flushed must survive) and starts it again; boot 2
# checks the files (the checksums from boot 1, passed in its initramfs),
# runs e2fsck and writes more.  The host then runs vdtool check (qemu-img
# check for the VHDX), qemu-img compare and e2fsck -fn on a raw copy and compares every file (debugfs) with boot 2's checksums.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-system-x86_64 qemu-img e2fsck debugfs
T=$VD_TMP
guest=$(bash "$top_srcdir/tests/guest/build.sh") || {
  rc=$?; [ $rc -eq 77 ] && skip "no test guest (see above)"; fail "guest build failed"; }
cd "$T"

vdtool create -q -f vpc disk.vhd 64M
vdtool create -q -f vhdx disk.vhdx 64M
args=(-v vhd=disk.vhd vhdx=disk.vhdx)
start_nbd "${args[@]}"

# boot EXPORT SCENARIO LOG: one boot with the export as the only disk
boot() {
  local t0=$SECONDS
  /usr/bin/python3 "$top_srcdir/tests/guest/run-guest.py" --guest "$guest" \
    --log "$T/$3" --scenario "$2" --cfg "$T/cfg" --timeout 600 -- \
    -drive "file=nbd+unix:///$1?socket=$T/nbd.sock,format=raw,if=virtio,cache=writeback" ||
    { grep -v VDISK-SUM "$T/$3" | tail -n 40 >&2; fail "$1: boot $2 failed"; }
  echo "$1 $2: $((SECONDS - t0)) s"
}
sums_of() { sed -n "s/^ *[0-9.]* VDISK-SUM vda //p" "$1" | tr -d '\r'; }
# crash_restart: SIGKILL (no flush at exit), then the same server again
crash_restart() {
  local pid i
  pid=$(cat "$nbd_pidfile")
  kill -KILL "$pid"
  for i in $(seq 100); do
    { ! kill -0 "$pid" 2>/dev/null || [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" = Z ]; } && break
    sleep 0.1
  done
  echo "--- restart ---" >> "$nbd_errlog"
  vdisk_nbd --fork --pid-file "$nbd_pidfile" -t -k "$nbd_sock" "${args[@]}" 2>>"$nbd_errlog" ||
    fail "vdisk-nbd did not start again: $(tail -n 3 "$nbd_errlog")"
}

for e in vhd vhdx; do
  rm -rf cfg && mkdir cfg
  boot "$e" boot-write "$e-1.log"
  sums_of "$e-1.log" > cfg/vda.sums
  [ "$(wc -l < cfg/vda.sums)" -ge 40 ] || fail "$e: boot 1 listed $(wc -l < cfg/vda.sums) files"
  crash_restart
  boot "$e" boot-verify "$e-2.log"
  sums_of "$e-2.log" > "$e.sums"
  [ "$(wc -l < "$e.sums")" -ge 80 ] || fail "$e: boot 2 listed $(wc -l < "$e.sums") files"
done
stop_nbd

for e in vhd vhdx; do
  if [ "$e" = vhd ]; then
    vdtool check "disk.$e" > "check-$e.txt" 2>&1 || fail "vdtool check disk.$e: $(cat "check-$e.txt")"
  else   # vdtool checks no VHDX yet: qemu-img does
    qemu-img check -f vhdx "disk.$e" > "check-$e.txt" 2>&1 ||
      fail "qemu-img check disk.$e: $(cat "check-$e.txt")"
  fi
  vdtool convert -O raw "disk.$e" "$e.raw" || fail "convert disk.$e"
  fmt=vpc; [ "$e" = vhdx ] && fmt=vhdx
  qemu-img compare -q -f "$fmt" -F raw "disk.$e" "$e.raw" || fail "qemu-img compare disk.$e"
  e2fsck -fn "$e.raw" > "fsck-$e.txt" 2>&1 || fail "e2fsck -fn disk.$e: $(cat "fsck-$e.txt")"
  mkdir "x-$e"
  debugfs -R "rdump / x-$e" "$e.raw" >/dev/null 2>&1 || fail "debugfs rdump $e"
  (cd "x-$e" && sha256sum -c --quiet "../$e.sums") || fail "$e: files differ on the host"
  rm -rf "x-$e" "$e.raw"
done
echo "guest-boot: passed in $SECONDS s"
