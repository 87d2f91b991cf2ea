#!/usr/bin/env bash
# Sequential throughput through a FUSE mount of a data-filled dynamic VHD:
# vdisk-fuse against vhdimount (libvhdi-utils, read-only) and
# qemu-storage-daemon's FUSE export (qemu-system-common).
#
#   bench/fuse-bench.sh [SIZE_MIB [RUNS]]      (defaults: 1024 MiB, 5 runs)
#
# Every run mounts afresh, so no kernel cache of the mounted file carries
# over; the image itself is read once first so that all contenders start
# with it in the host page cache.  The contenders alternate within each
# run; the table gives medians over the runs and vdisk-fuse's ratio to
# each peer.  Reads: dd bs=$BS (default 1M) of the whole exposed file to
# /dev/null.  Writes: dd of the same amount of fresh data over the
# allocated disk with conv=notrunc,fsync (vhdimount cannot write).
# Random: fio 4 KiB random reads, then random writes, on the exposed file
# (libaio, O_DIRECT, queue depth 16, RAND_SECS seconds each, default 5;
# RAND_SECS=0 skips them), vdisk-fuse against qemu-storage-daemon.
# Run as root from the build tree; never part of make check.
set -euo pipefail
top_builddir=${top_builddir:-$(cd "$(dirname "$0")/.." && pwd)}
vdisk_fuse=$top_builddir/fuse-frontend/vdisk-fuse
size_mib=${1:-1024}
runs=${2:-5}
bs=${BS:-1M}
rand_secs=${RAND_SECS:-5}

for c in qemu-img qemu-storage-daemon vhdimount fusermount3 mountpoint fio; do
  command -v "$c" >/dev/null || { echo "bench: $c is not installed" >&2; exit 77; }
done
[ -x "$vdisk_fuse" ] || { echo "bench: build vdisk-fuse first" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/fuse-bench.XXXXXX")
qsd_pid=
cleanup() {
  for m in "$tmp"/m-*; do fusermount3 -uz "$m" 2>/dev/null || true; done
  [ -z "$qsd_pid" ] || kill "$qsd_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"
mkdir m-vdisk m-vhdi
: > m-qsd

echo "making a ${size_mib} MiB dynamic VHD full of random data..." >&2
head -c $((size_mib * 1024 * 1024)) /dev/urandom > data.raw
qemu-img convert -f raw -O vpc -o subformat=dynamic data.raw disk.vhd
head -c $((size_mib * 1024 * 1024)) /dev/urandom > fresh.raw
cat disk.vhd data.raw fresh.raw > /dev/null

wait_mounted() {   # PATH PID
  local i
  for i in $(seq 200); do
    mountpoint -q "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench: mount of $1 failed" >&2; exit 1; }
    sleep 0.05
  done
  echo "bench: $1 not mounted" >&2; exit 1
}

# Seconds taken by dd ARGS...
timed_dd() {
  local t0 t1
  t0=$EPOCHREALTIME
  dd "$@" status=none
  t1=$EPOCHREALTIME
  echo "$t0 $t1" | awk '{printf "%.4f\n", $2 - $1}'
}

# mount_X ro|rw: mount and set $file to the exposed file (no command
# substitution: the daemon would hold its pipe open); umount_X: unmount
# and wait for the daemon to finish.
mount_vdisk() {
  local ro=-r
  [ "$1" = rw ] && ro=
  "$vdisk_fuse" -f $ro disk.vhd m-vdisk >/dev/null & fuse_pid=$!
  wait_mounted m-vdisk "$fuse_pid"
  file=m-vdisk/disk.raw
}
umount_vdisk() { fusermount3 -u m-vdisk; wait "$fuse_pid"; }
mount_vhdi() {
  vhdimount disk.vhd m-vhdi >/dev/null
  wait_mounted m-vhdi $$
  file=m-vhdi/vhdi1
}
umount_vhdi() {   # read-only: nothing to wait for once unmounted
  fusermount3 -u m-vhdi
  while mountpoint -q m-vhdi; do sleep 0.05; done
}
mount_qsd() {
  local w=off
  [ "$1" = rw ] && w=on
  qemu-storage-daemon \
    --blockdev driver=file,node-name=file,filename=disk.vhd \
    --blockdev driver=vpc,node-name=disk,file=file \
    --export type=fuse,id=exp,node-name=disk,mountpoint=m-qsd,writable=$w \
    >/dev/null & qsd_pid=$!
  wait_mounted m-qsd "$qsd_pid"
  file=m-qsd
}
umount_qsd() { kill "$qsd_pid"; wait "$qsd_pid" || true; qsd_pid=; }

# IOPS of fio RW (randread or randwrite) on FILE, queue depth 16.
fio_iops() {
  fio --name=r --filename="$1" --rw="$2" --bs=4k --iodepth=16 \
      --ioengine=libaio --direct=1 --runtime="$rand_secs" --time_based \
      --size=$((size_mib))M --output-format=json 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys
s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]
k="read" if j["read"]["io_bytes"] else "write"
print("%.0f" % j[k]["iops"])'
}

declare -A t
count=$((size_mib * 1024 * 1024))
for run in $(seq "$runs"); do
  for who in vdisk vhdi qsd; do
    mount_$who ro
    t[read,$who]+="$(timed_dd if="$file" of=/dev/null bs="$bs" iflag=count_bytes count=$count) "
    umount_$who
  done
  for who in vdisk qsd; do
    mount_$who rw
    t[write,$who]+="$(timed_dd if=fresh.raw of="$file" bs="$bs" conv=notrunc,fsync) "
    umount_$who
  done
  [ "$rand_secs" = 0 ] || for who in vdisk qsd; do
    mount_$who rw
    for rw in randread randwrite; do
      t[$rw,$who]+="$(fio_iops "$file" $rw) "
    done
    umount_$who
  done
  echo "run $run/$runs done" >&2
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mbs() { awk -v m="$size_mib" -v s="$1" 'BEGIN{printf "%.0f", m * 1.048576 / s}'; }

printf '%-6s %-22s %12s %10s\n' op contender "median s" "MB/s"
for op in read write; do
  for who in vdisk vhdi qsd; do
    [ -n "${t[$op,$who]:-}" ] || continue
    med=$(echo "${t[$op,$who]}" | median)
    eval "med_${op}_$who=$med"
    case $who in vdisk) name=vdisk-fuse;; vhdi) name=vhdimount;; qsd) name=qemu-storage-daemon;; esac
    printf '%-6s %-22s %12s %10s\n' "$op" "$name" "$med" "$(mbs "$med")"
  done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b / a}'; }
echo
echo "read:  vdisk-fuse / vhdimount           = $(ratio "$med_read_vdisk" "$med_read_vhdi")x  (goal 2x)"
echo "read:  vdisk-fuse / qemu-storage-daemon = $(ratio "$med_read_vdisk" "$med_read_qsd")x  (goal 1.5x)"
echo "write: vdisk-fuse / qemu-storage-daemon = $(ratio "$med_write_vdisk" "$med_write_qsd")x  (goal 1.5x)"
if [ "$rand_secs" != 0 ]; then
  echo
  printf '%-10s %-22s %12s\n' op contender "median IOPS"
  for rw in randread randwrite; do
    for who in vdisk qsd; do
      med=$(echo "${t[$rw,$who]}" | median)
      eval "med_${rw}_$who=$med"
      case $who in vdisk) name=vdisk-fuse;; qsd) name=qemu-storage-daemon;; esac
      printf '%-10s %-22s %12s\n' "$rw" "$name" "$med"
    done
    echo "$rw 4K QD16: vdisk-fuse / qemu-storage-daemon = $(eval "ratio \$med_${rw}_qsd \$med_${rw}_vdisk")x  (goal 1.5x)"
  done
fi
echo "(size ${size_mib} MiB, dd bs=$bs, $runs runs, medians; raw times: read ${t[read,vdisk]}| ${t[read,vhdi]}| ${t[read,qsd]}; write ${t[write,vdisk]}| ${t[write,qsd]})"
