#!/usr/bin/env bash
# Every benchmark of issue 16's goals, one after the other, from a build
# tree (after make), as root (FUSE mounts):
#   bench/run-all.sh [OUT]        (OUT default bench-results-DATE.txt)
# Each script's report (its stdout) goes to OUT under a header with the
# exact command and the load average before and after; progress goes to
# stderr.  Sizes and rounds: ROUNDS (3), SECS per fio run (3), SIZE of the
# NBD images (512M), MIB for the convert, FUSE and vdz images (512), and
# REMOTE=1 adds the NBD and Ceph RBD remote sources (starts a one-node
# Ceph cluster).  About 24 minutes with the defaults on 2 CPUs.  Never part
# of make check; the numbers belong in bench/README.md with the load.
set -u
out=${1:-bench-results-$(date -u +%Y%m%d-%H%M).txt}
b=$(cd "$(dirname "$0")" && pwd)
rounds=${ROUNDS:-3} secs=${SECS:-3} size=${SIZE:-512M} mib=${MIB:-512}
export BUILD=${BUILD:-.} top_builddir=${top_builddir:-$PWD}
[ -x "$BUILD/nbd-server/vdisk-nbd" ] && [ -x "$BUILD/bench/parity-bench" ] ||
  { echo "run from a build tree after make" >&2; exit 1; }
shm=$(mktemp -d /dev/shm/raid-bench.XXXXXX)
trap 'rm -rf "$shm"' EXIT

load() { cut -d' ' -f1-3 /proc/loadavg; }
# section TITLE CMD...: run CMD, its stdout into OUT under a header.
section() {
  local title=$1 s rc; shift
  echo "== $title" >&2
  s=$(date +%s)
  {
    echo
    echo "=== $title"
    echo "\$ $*"
    echo "(load before: $(load))"
  } >> "$out"
  "$@" >> "$out"; rc=$?
  echo "(load after: $(load); $(( $(date +%s) - s )) s; exit $rc)" >> "$out"
}

{
  echo "vdisk benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r)"
  echo "commit $(git -C "$b/.." rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$out"

section "NBD: raw vs qemu-nbd and nbdkit; VHD, VHDX, qcow2 vs qemu-nbd; iodepth 32 and 1" \
  env IODEPTHS="32 1" FORMATS="vpc vhdx qcow2" bash "$b/nbd-fio.sh" "$rounds" "$secs" "$size"
section "NBD: new empty images (allocating writes, with and without a flush after each), every format" \
  env FRESH=1 SERVERS="vdisk nbdkit" FORMATS="qcow2 vhdx vpc" WORKLOADS="randwrite syncwrite" \
  bash "$b/nbd-fio.sh" "$rounds" "$secs" 2G
section "NBD: a new qcow2 overlay over the raw image per run (copy-on-write allocations; reads fall through) vs qemu-nbd" \
  env SERVERS= FORMATS=overlay WORKLOADS="randwrite syncwrite randread" \
  bash "$b/nbd-fio.sh" "$rounds" "$secs" "$size"
section "NBD: nbdcopy read and write, 4 connections; nbdkit memory plugin as the read ceiling" \
  bash "$b/nbdcopy.sh" "$rounds" "$size"
[ "${REMOTE:-0}" != 1 ] ||
  section "NBD: remote sources (NBD, Ceph RBD) vs qemu-nbd" \
    env SERVERS= FORMATS="nbd rbd" bash "$b/nbd-fio.sh" "$rounds" "$secs" "$size"
section "convert: qemu-img's cache modes, raw<->VHD, raw<->VHDX, qcow2->VHD" \
  bash "$b/convert-modes.sh" "$rounds" "$mib"
section "vdz: compression, decompression, sequential read vs lz4 -b, random reads" \
  bash "$b/vdz-bench.sh" "$mib"
section "FUSE: sequential and 4K random QD16 vs qemu-storage-daemon (and vhdimount)" \
  bash "$b/fuse-bench.sh" "$mib" "$rounds"
section "RAID: parity kernels vs memcpy, RAID0/5 on tmpfs members, degraded, rebuild" \
  bash "$b/raid-bench.sh" "$shm" 128 4

echo "results in $out" >&2
grep -E "^ratio|ratio =|/ raw|x  \(goal|goal|parity|x members|healthy|rebuild|vdz-read" "$out" >&2 || true
