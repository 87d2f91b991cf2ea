#!/bin/sh
# /init of the TCG test guest (tests/guest/build.sh).  Runs the scenario
# named by vd.scenario= on the kernel command line and reports on the
# serial console (ttyS0), one line per check:
#   VDISK-CHECK PASS name        VDISK-CHECK FAIL name: why
#   VDISK-SUM export sha256 path (the files' checksums, for the host)
#   VDISK-HOST action args       (asks the host to act; the host answers
#                                 one line on the console: its exit status)
#   VDISK-RESULT PASS|FAIL checks=N failed=M   (last line, then poweroff)
# Scenarios:
#   nbd-client  the kernel NBD client (nbd.ko + nbd-client) against
#               vdisk-nbd at 10.0.2.100 (QEMU guestfwd, one port per
#               connection from vd.port= on); vd.exports=NAME:MODE,...
#               where MODE is mkfs (make ext4 here), fs (the host made
#               it: verify /cfg/NAME.sums first) or raid (mkfs; the host
#               fails a member half-way through the writes); vd.tls=NAME
#               re-attaches that export over TLS (/cfg/tls/*.pem)
#   boot-write  /dev/vda (a vdisk-nbd export attached by QEMU itself):
#               mkfs, write the tree, print its checksums
#   boot-verify /dev/vda: check the tree against /cfg/vda.sums, e2fsck
#   boot-live   /dev/vda: write generations of the tree while the host
#               snapshots, mirrors and commits the disk under the guest
# The checksum list the host passes in /cfg comes in a second cpio archive
# appended to the initramfs.
PATH=/sbin:/bin
export PATH
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

checks=0
failed=0
pass() { checks=$((checks + 1)); echo "VDISK-CHECK PASS $1"; }
bad() { checks=$((checks + 1)); failed=$((failed + 1)); echo "VDISK-CHECK FAIL $1: $2"; }
# check NAME CMD...: PASS if CMD succeeds, else FAIL with its last output line
check() {
  n=$1; shift
  if "$@" >/tmp/out 2>&1; then pass "$n"; return 0; fi
  bad "$n" "$* -> $(tail -n 3 /tmp/out | tr '\n' ' ')"
  return 1
}
in_mnt() { (cd /mnt && "$@"); }
finish() {
  if [ "$failed" -eq 0 ] && [ "$checks" -gt 0 ]; then r=PASS; else r=FAIL; fi
  echo "VDISK-RESULT $r checks=$checks failed=$failed"
  sync
  poweroff -f
  sleep 10
}
# host ACTION ARGS: ask the host to act, wait (at most 300 s) for its status
host() {
  echo "VDISK-HOST $*" >/dev/console
  reply=
  read -t 300 -r reply </dev/console || true
  reply=$(echo "$reply" | tr -dc '0-9')
  [ "${reply:-1}" = 0 ]
}

param() { tr ' ' '\n' </proc/cmdline | sed -n "s/^vd\.$1=//p" | tail -n 1; }
scenario=$(param scenario)
echo "VDISK-BOOT $(cut -d' ' -f1 /proc/uptime) s scenario=$scenario"

while read -r m; do
  insmod "/lib/modules/$m" || bad "insmod-$m" "insmod failed"
done </lib/modules/load-order

# write_tree DIR TAG: files of assorted sizes (empty, sub-sector, unaligned,
# several MiB) in nested folders, random contents.
write_tree() {
  d=$1/$2
  mkdir -p "$d/a/b/c" "$d/empty-dir"
  : > "$d/empty"
  dd if=/dev/urandom of="$d/one" bs=1 count=1 2>/dev/null
  dd if=/dev/urandom of="$d/a/sub-sector" bs=511 count=1 2>/dev/null
  dd if=/dev/urandom of="$d/a/page-less-1" bs=4095 count=1 2>/dev/null
  dd if=/dev/urandom of="$d/a/b/odd" bs=65537 count=3 2>/dev/null
  dd if=/dev/urandom of="$d/a/b/c/big" bs=1048576 count=3 2>/dev/null
  i=0
  while [ $i -lt 40 ]; do
    dd if=/dev/urandom of="$d/a/many-$i" bs=$((i * 97 + 3)) count=1 2>/dev/null
    i=$((i + 1))
  done
}
# sums DIR OUT: checksums of every file under DIR, paths relative to DIR
sums() { (cd "$1" && find . -type f | sort | xargs sha256sum) >"$2"; }
print_sums() { sed "s/^/VDISK-SUM $1 /" "$2"; }
# verify_sums LIST: sha256sum -c, printing only the files that differ
verify_sums() {
  sha256sum -c "$1" >/tmp/verify 2>&1
  r=$?
  grep -v ': OK$' /tmp/verify
  return $r
}

# ---------------------------------------------------------------- nbd-client
port=$(param port)
[ -n "$port" ] || port=10809
# attach EXPORT [tls]: nbd-client on the next guestfwd port (each port is
# one connection to the host's Unix socket)
attach() {
  p=$port
  port=$((port + 1))
  set -- "$1" "${2:-}"
  tlsargs=
  if [ "$2" = tls ]; then
    # (3.24's short option -F is missing from its option string: --certfile)
    tlsargs="-x -A /cfg/tls/ca-cert.pem --certfile /cfg/tls/client-cert.pem -K /cfg/tls/client-key.pem -H localhost"
  fi
  # shellcheck disable=SC2086
  timeout 60 nbd-client 10.0.2.100 "$p" /dev/nbd0 -N "$1" -t 60 $tlsargs >/tmp/att 2>&1 || {
    cat /tmp/att; return 1; }
  i=0
  while [ "$(cat /sys/block/nbd0/size)" = 0 ] && [ $i -lt 100 ]; do
    sleep 0.1; i=$((i + 1))
  done
  [ "$(cat /sys/block/nbd0/size)" != 0 ]
}
detach() {
  nbd-client -d /dev/nbd0 >/dev/null 2>&1
  i=0
  while [ "$(cat /sys/block/nbd0/size)" != 0 ] && [ $i -lt 100 ]; do
    sleep 0.1; i=$((i + 1))
  done
}

client_write() {
  e=$1 mode=$2
  check "$e-attach" attach "$e" || return 1
  if [ "$mode" != fs ]; then
    check "$e-mkfs" mkfs.ext4 -q -F -b 4096 -L "$e" /dev/nbd0 || { detach; return 1; }
  fi
  check "$e-mount" mount -t ext4 /dev/nbd0 /mnt || { detach; return 1; }
  if [ "$mode" = fs ]; then
    check "$e-host-files" in_mnt sha256sum -c "/cfg/$e.sums"
  fi
  write_tree /mnt guest-1
  if [ "$mode" = raid ]; then
    sync
    check "$e-member-failed" host raid-fail "$e"
  fi
  write_tree /mnt guest-2
  sums /mnt "/tmp/$e.sums"
  check "$e-sync" sync
  check "$e-umount" umount /mnt
  check "$e-flush" blockdev --flushbufs /dev/nbd0
  detach
  check "$e-detached" test "$(cat /sys/block/nbd0/size)" = 0
}

client_verify() {
  e=$1 tls=$2
  check "$e-reattach${tls:+-tls}" attach "$e" "$tls" || return 1
  check "$e-mount-again" mount -t ext4 -o ro /dev/nbd0 /mnt &&
    check "$e-verify" in_mnt verify_sums "/tmp/$e.sums"
  umount /mnt 2>/dev/null
  check "$e-e2fsck" e2fsck -fn /dev/nbd0
  # discard: delete half the tree, fstrim, and the rest must still be there
  if check "$e-mount-rw" mount -t ext4 /dev/nbd0 /mnt; then
    rm -rf /mnt/guest-2
    check "$e-fstrim" fstrim -v /mnt
    sums /mnt "/tmp/$e.final"
    grep -v ' ./guest-2/' "/tmp/$e.sums" >"/tmp/$e.kept"
    check "$e-verify-after-trim" in_mnt verify_sums "/tmp/$e.kept"
    check "$e-umount-final" umount /mnt
  fi
  check "$e-flush-final" blockdev --flushbufs /dev/nbd0
  check "$e-e2fsck-final" e2fsck -fn /dev/nbd0
  detach
  print_sums "$e" "/tmp/$e.final"
}

scenario_nbd_client() {
  ip link set lo up
  ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up ||
    bad net "no eth0"
  exports=$(param exports | tr ',' ' ')
  tlsexp=$(param tls)
  for em in $exports; do
    client_write "${em%%:*}" "${em#*:}"
  done
  # The host kills vdisk-nbd (SIGKILL: only what was flushed survives) and
  # starts it again.
  check server-restarted host restart
  for em in $exports; do
    e=${em%%:*}
    t=
    [ "$e" = "$tlsexp" ] && t=tls
    client_verify "$e" "$t"
  done
}

# ------------------------------------------------------------------- booted
scenario_boot_write() {
  check vda-present test -b /dev/vda || return
  check vda-mkfs mkfs.ext4 -q -F -b 4096 /dev/vda || return
  check vda-mount mount -t ext4 /dev/vda /mnt || return
  write_tree /mnt boot
  sums /mnt /tmp/vda.sums
  check vda-verify in_mnt sha256sum -c /tmp/vda.sums
  check vda-umount umount /mnt
  check vda-e2fsck e2fsck -fn /dev/vda
  print_sums vda /tmp/vda.sums
}
scenario_boot_verify() {
  check vda-present test -b /dev/vda || return
  check vda-e2fsck e2fsck -fn /dev/vda
  check vda-mount mount -t ext4 /dev/vda /mnt || return
  check vda-verify in_mnt sha256sum -c /cfg/vda.sums
  # one more generation of writes, checked by the host afterwards
  write_tree /mnt boot-2
  sums /mnt /tmp/vda.sums
  check vda-umount umount /mnt
  check vda-e2fsck-after e2fsck -fn /dev/vda
  print_sums vda /tmp/vda.sums
}

# boot-live: /dev/vda is served by a vdisk-nbd that the host changes under
# the guest: a writer keeps writing generations of the tree (keeping the
# last three) while the host, asked one step at a time, snapshots, mirrors
# and pivots, snapshots again and commits; then the files are checked
# after the page cache is dropped.
scenario_boot_live() {
  check vda-present test -b /dev/vda || return
  check vda-mkfs mkfs.ext4 -q -F -b 4096 /dev/vda || return
  check vda-mount mount -t ext4 /dev/vda /mnt || return
  write_tree /mnt gen-0
  rm -f /tmp/stop
  (
    i=1
    while [ ! -e /tmp/stop ]; do
      write_tree /mnt "gen-$i"
      sync
      rm -rf "/mnt/gen-$((i - 3))"
      i=$((i + 1))
    done
    echo "$i" >/tmp/gens
  ) &
  wpid=$!
  for step in snapshot mirror snapshot-again commit; do
    check "host-$step" host live "$step"
  done
  touch /tmp/stop
  wait "$wpid"
  echo "VDISK-INFO $(cat /tmp/gens) generations written"
  check vda-writes-across test "$(cat /tmp/gens)" -ge 2
  # every generation kept is whole (a full disk would cut files short)
  for g in /mnt/gen-*; do
    check "vda-whole-${g#/mnt/}" test "$(wc -c <"$g/a/b/c/big")" = 3145728
  done
  sums /mnt /tmp/vda.sums
  check vda-umount umount /mnt
  echo 3 >/proc/sys/vm/drop_caches
  check vda-e2fsck e2fsck -fn /dev/vda
  check vda-mount-again mount -t ext4 -o ro /dev/vda /mnt &&
    check vda-verify in_mnt verify_sums /tmp/vda.sums
  umount /mnt 2>/dev/null
  print_sums vda /tmp/vda.sums
}

case "$scenario" in
  nbd-client) scenario_nbd_client ;;
  boot-live) scenario_boot_live ;;
  boot-write) scenario_boot_write ;;
  boot-verify) scenario_boot_verify ;;
  *) bad scenario "unknown scenario '$scenario'" ;;
esac
finish
