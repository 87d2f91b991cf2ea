#!/usr/bin/env bash
# vdtool convert vs qemu-img convert, raw -> dynamic VHD and back, on a
# 2 GiB raw image: the first half random data, the second half zeros
# (written, not a hole).  Runs alternate between the two tools; each file is
# flushed to disk (sync) as part of its timing; medians and ratios printed.
#   bench/vhd-convert.sh [RUNS] [DIR]     (default 5 runs, a temp dir)
#   VDTOOL_OPTS="-m 1" bench/vhd-convert.sh   extra vdtool convert options
# Never part of make check.
set -eu
runs=${1:-5}
dir=${2:-$(mktemp -d "${TMPDIR:-/var/tmp}/vhdbench.XXXXXX")}
top=$(cd "$(dirname "$0")/.." && pwd)
vdtool=${VDTOOL:-$top/tools/vdtool}
read -r -a opts <<< "${VDTOOL_OPTS:-}"
[ -x "$vdtool" ] || { echo "build vdtool first ($vdtool)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "qemu-img is not installed" >&2; exit 1; }
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
cd "$dir"

size=$((2 * 1024 * 1024 * 1024))
echo "making a 2 GiB source (1 GiB random, 1 GiB of written zeros) in $dir"
/usr/bin/python3 -c '
import os, random, sys
r = random.Random(1)
with open("src.raw", "wb") as f:
    for _ in range(1024):
        f.write(r.randbytes(1 << 20))
    z = bytes(1 << 20)
    for _ in range(1024):
        f.write(z)
'
sync

# t FILE CMD...: append "WALL CPU" for CMD to FILE: wall-clock seconds
# including the sync that makes the output durable, and user+system CPU
# seconds of CMD (less sensitive to other load on the machine).
t() {
  local file=$1 s e cpu; shift
  s=$(date +%s.%N)
  cpu=$( { /usr/bin/time -f "%U %S" "$@" >/dev/null; } 2>&1 | tail -1)
  sync
  e=$(date +%s.%N)
  echo "$(echo "$e - $s" | bc) $(echo "$cpu" | awk '{print $1 + $2}')" >> "$file"
}
# median FILE COLUMN
median() { awk -v c="$2" '{print $c}' "$1" | sort -n |
           awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

: > vd_to.txt; : > q_to.txt; : > vd_from.txt; : > q_from.txt
for i in $(seq "$runs"); do
  rm -f a.vhd b.vhd a.raw b.raw
  t vd_to.txt "$vdtool" convert "${opts[@]}" -O vpc src.raw a.vhd
  t q_to.txt qemu-img convert -f raw -O vpc src.raw b.vhd
  t q_from.txt qemu-img convert -f vpc -O raw b.vhd b.raw
  t vd_from.txt "$vdtool" convert "${opts[@]}" -O raw a.vhd a.raw
  echo "run $i (wall s, cpu s): to VHD vdtool $(tail -1 vd_to.txt), qemu-img $(tail -1 q_to.txt);" \
       "back to raw vdtool $(tail -1 vd_from.txt), qemu-img $(tail -1 q_from.txt)"
done
# qemu-img rounds the VHD size up to a CHS geometry: compare the 2 GiB.
cmp src.raw a.raw && cmp -n $size src.raw b.raw ||
  { echo "round trip changed data" >&2; exit 1; }

echo
echo "medians over $runs runs, vdtool options '${VDTOOL_OPTS:-}':"
for d in to from; do
  name=$([ $d = to ] && echo "raw -> VHD" || echo "VHD -> raw")
  vw=$(median vd_$d.txt 1); qw=$(median q_$d.txt 1)
  vc=$(median vd_$d.txt 2); qc=$(median q_$d.txt 2)
  printf "  %s  wall (with sync): vdtool %6.2f s, qemu-img %6.2f s, qemu-img/vdtool %.2fx\n" \
    "$name" "$vw" "$qw" "$(echo "$qw / $vw" | bc -l)"
  printf "  %s  cpu (user+sys):   vdtool %6.2f s, qemu-img %6.2f s, qemu-img/vdtool %.2fx\n" \
    "$name" "$vc" "$qc" "$(echo "$qc / ($vc + 0.001)" | bc -l)"
done
printf "  file sizes: vdtool %s, qemu-img %s bytes\n" "$(stat -c %s a.vhd)" "$(stat -c %s b.vhd)"
