#!/usr/bin/env bash
# vdtool convert vs qemu-img convert, qcow2 -> dynamic VHD, from a plain and
# a compressed (-c, zlib) qcow2 with 64 KiB clusters (both made by qemu-img
# from one raw image: the first half random hex digits, which deflate
# compresses to about half, the second half written zeros, which qemu-img
# leaves unallocated).  Runs alternate between the two
# tools; each output is flushed (sync) as part of its timing; medians and
# ratios.
#   bench/qcow2-convert.sh [RUNS] [MIB] [DIR]  (default 3 runs, 1024 MiB)
#   VDTOOL_OPTS="-m 1" bench/qcow2-convert.sh  extra vdtool convert options
# Never part of make check.
set -eu
runs=${1:-3}
mib=${2:-1024}
dir=${3:-$(mktemp -d "${TMPDIR:-/var/tmp}/qcow2bench.XXXXXX")}
. "$(dirname "$0")/convert-lib.sh"

echo "making a $mib MiB source (half random hex digits, half written zeros) in $dir"
half_random src.raw "$mib" hex
qemu-img convert -f raw -O qcow2 -o cluster_size=65536 src.raw plain.qcow2
qemu-img convert -f raw -O qcow2 -c -o cluster_size=65536 src.raw zlib.qcow2
sync

alternate "$runs" qcow2 vpc vhd plain zlib

summary "$runs" "$mib" VHD plain zlib
printf "  file sizes: vdtool %s, qemu-img %s bytes\n" "$(stat -c %s a.vhd)" "$(stat -c %s b.vhd)"
