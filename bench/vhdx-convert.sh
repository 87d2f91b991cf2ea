#!/usr/bin/env bash
# vdtool convert vs qemu-img convert, raw <-> VHDX (issue 13): a raw
# image, half random data and half written zeros, converted to a dynamic
# VHDX (both tools' defaults: 32 MiB blocks), and a VHDX made by qemu-img
# from it converted back to raw.  Runs alternate between the two tools;
# each output is flushed (sync) as part of its timing; medians and ratios.
#   bench/vhdx-convert.sh [RUNS] [MIB] [DIR]  (default 3 runs, 1024 MiB)
#   VDTOOL_OPTS="-m 1" bench/vhdx-convert.sh  extra vdtool convert options
# Never part of make check.
set -eu
runs=${1:-3}
mib=${2:-1024}
dir=${3:-$(mktemp -d "${TMPDIR:-/var/tmp}/vhdxbench.XXXXXX")}
. "$(dirname "$0")/convert-lib.sh"

echo "making a $mib MiB source (half random, half written zeros) in $dir"
half_random src.raw "$mib"
qemu-img convert -f raw -O vhdx src.raw q.vhdx
sync

alternate "$runs" raw vhdx vhdx src
alternate "$runs" vhdx raw raw q

summary "$runs" "$mib" vhdx src
summary "$runs" "$mib" raw q
printf "  VHDX file sizes: vdtool %s, qemu-img %s bytes\n" "$(stat -c %s a.vhdx)" "$(stat -c %s b.vhdx)"
