#!/usr/bin/env bash
# vdtool convert vs qemu-img convert, VMDK -> VHDX, from a monolithicSparse
# and a streamOptimized VMDK (both made by qemu-img from one raw image: the
# first half random data, the second half written zeros, which the VMDK
# writers leave unallocated).  Runs alternate between the two tools; each
# output is flushed (sync) as part of its timing; medians and ratios.
#   bench/vmdk-convert.sh [RUNS] [MIB] [DIR]   (default 5 runs, 1024 MiB)
#   VDTOOL_OPTS="-m 1" bench/vmdk-convert.sh   extra vdtool convert options
# Never part of make check.
set -eu
runs=${1:-5}
mib=${2:-1024}
dir=${3:-$(mktemp -d "${TMPDIR:-/var/tmp}/vmdkbench.XXXXXX")}
. "$(dirname "$0")/convert-lib.sh"

echo "making a $mib MiB source (half random, half written zeros) in $dir"
half_random src.raw "$mib"
qemu-img convert -f raw -O vmdk src.raw sparse.vmdk
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.raw stream.vmdk
sync

alternate "$runs" vmdk vhdx vhdx sparse stream

summary "$runs" "$mib" VHDX sparse stream
