#!/usr/bin/env bash
# RAID benchmark: parity vs memcpy, RAID0/RAID5 full-stripe write and
# sequential read vs the members' own bandwidth, degraded vs healthy read,
# rebuild rate.  Usage (from a build directory):
#   bench/raid-bench.sh [DIR [MEMBER_MIB [MEMBERS]]]
# DIR holds the member files (default: a scratch directory in $TMPDIR or
# /tmp, i.e. buffered I/O through the page cache).  Numbers go to
# bench/README-raid.md by hand; nothing here passes or fails.
set -eu
prog=${RAID_BENCH:-./bench/raid-bench}
parity=${PARITY_BENCH:-./bench/parity-bench}
[ -x "$prog" ] && [ -x "$parity" ] ||
  { echo "run from a build directory after make" >&2; exit 1; }
dir=${1:-}
if [ -z "$dir" ]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/raid-bench.XXXXXX")
  trap 'rm -rf "$dir"' EXIT
fi
echo "# raid-bench on $(nproc) CPUs, members in $dir ($(df -T "$dir" | awk 'NR==2 {print $2}'))"
"$parity"
"$prog" "$dir" "${2:-128}" "${3:-4}"
