#!/usr/bin/env bash
# Live snapshot latency over NBD (not part of make check): fio's 4 KiB
# random writes at queue depth 1 through vdisk-nbd, SECS seconds without
# snapshots, then SECS seconds with a blockdev-snapshot-sync (vdtool qmp)
# every EVERY seconds; prints IOPS and completion latency percentiles of
# each run and each snapshot command's wall time.  Both runs write into
# a VHD child (a first snapshot is taken before them), over a 256 MiB raw
# base.  Usage: BUILD=. bench/snapshot-fio.sh [SECS [EVERY]]
set -eu
build=${BUILD:-.}
secs=${1:-20}
every=${2:-2}
command -v fio >/dev/null || { echo "needs fio" >&2; exit 1; }

run() {   # run EVERY (0: no snapshots)
  local d fp i=1
  d=$(mktemp -d /tmp/snapfio.XXXXXX)
  "$build/tools/vdtool" create -q -f raw "$d/base.raw" 256M
  "$build/nbd-server/vdisk-nbd" --fork --pid-file "$d/pid" -t \
    -k "$d/nbd.sock" --control "$d/ctl.sock" -f raw "disk=$d/base.raw"
  "$build/tools/vdtool" qmp "$d/ctl.sock" blockdev-snapshot-sync \
    device=disk "snapshot-file=$d/s0.vhd" >/dev/null
  fio --name=lat --ioengine=nbd --uri="nbd+unix:///disk?socket=$d/nbd.sock" \
    --rw=randwrite --bs=4k --size=256M --iodepth=1 --time_based \
    --runtime="$secs" --percentile_list=50:99:99.9 --output-format=json \
    --output="$d/fio.json" &
  fp=$!
  while [ "$1" != 0 ] && sleep "$1" && kill -0 $fp 2>/dev/null; do
    local t0 t1
    t0=$(date +%s.%N)
    "$build/tools/vdtool" qmp "$d/ctl.sock" blockdev-snapshot-sync \
      device=disk "snapshot-file=$d/s$i.vhd" >/dev/null
    t1=$(date +%s.%N)
    echo "  snapshot $i: $(echo "$t1 - $t0" | bc) s"
    i=$((i + 1))
  done
  wait $fp
  /usr/bin/python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["write"]
p = j["clat_ns"]["percentile"]
print("%s: %.0f IOPS, p50 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f ms" % (
    sys.argv[2], j["iops"], p["50.000000"] / 1e3, p["99.000000"] / 1e3,
    p["99.900000"] / 1e3, j["clat_ns"]["max"] / 1e6))' "$d/fio.json" \
    "$([ "$1" = 0 ] && echo "no snapshots" || echo "snapshot every $1 s")"
  kill "$(cat "$d/pid")"
  sleep 1
  rm -rf "$d"
}
run 0
run "$every"
