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
. "$(dirname "$0")/convert-lib.sh"

size=$((2 * 1024 * 1024 * 1024))
echo "making a 2 GiB source (1 GiB random, 1 GiB of written zeros) in $dir"
half_random src.raw 2048
sync

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
  ratios "$name" vd_$d.txt q_$d.txt
done
printf "  file sizes: vdtool %s, qemu-img %s bytes\n" "$(stat -c %s a.vhd)" "$(stat -c %s b.vhd)"
