#!/usr/bin/env bash
# Where the CPU goes: fio's nbd engine (the client) and the server, CPU
# time per request (user+system), vdisk-nbd and nbdkit's file plugin
# alternating on the same raw image in the page cache.  On a machine
# where client and server share few CPUs, the throughput ratio can be at
# most (client + peer) / (client + vdisk-nbd) per request.
#
#   bench/cpu-split.sh [ROUNDS [SECONDS [SIZE_MIB]]]   (defaults 2, 5, 512)
# Environment: BUILD (build tree, default .), TESTS (default "randread:4k:32
# randwrite:4k:32 read:1M:32 write:1M:32 randread:4k:1 randwrite:4k:1").
# Never part of make check.
set -eu
rounds=${1:-2} secs=${2:-5} size_mib=${3:-512}
build=${BUILD:-.}
for c in fio nbdkit; do
  command -v $c >/dev/null || { echo "$c is not installed" >&2; exit 77; }
done
[ -x "$build/nbd-server/vdisk-nbd" ] || { echo "build vdisk-nbd first" >&2; exit 1; }
work=$(mktemp -d /var/tmp/cpu-split.XXXXXX)
img=$work/disk.raw sock=$work/s.sock pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
head -c $((size_mib << 20)) /dev/urandom > "$img"
tck=$(getconf CLK_TCK)
run() {  # SERVER RW BS QD
  rm -f "$sock"
  case $1 in
    vdisk)  "$build/nbd-server/vdisk-nbd" -t -k "$sock" -f raw "$img" & pid=$! ;;
    nbdkit) nbdkit -f -U "$sock" file "$img" & pid=$! ;;
  esac
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  local t0 t1 out
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
    --rw="$2" --bs="$3" --iodepth="$4" --size=${size_mib}M --runtime="$secs" \
    --time_based --output-format=json 2>/dev/null)
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  /usr/bin/python3 -c '
import json, sys
s = sys.stdin.read(); j = json.loads(s[s.index("{"):])["jobs"][0]
srv, rw, bs, qd, t0, t1, tck, secs = sys.argv[1:9]
d = j["write" if "write" in rw else "read"]
n = max(d["total_ios"], 1)
cli = (j["usr_cpu"] + j["sys_cpu"]) / 100 * float(secs)
print("%-7s %-9s %-3s qd%-2s %8.0f IOPS %6.0f MiB/s  client %6.1f us/req  server %6.1f us/req"
      % (srv, rw, bs, qd, d["iops"], d["bw"] / 1024, cli * 1e6 / n,
         (int(t1) - int(t0)) / int(tck) * 1e6 / n))' \
    "$1" "$2" "$3" "$4" "$t0" "$t1" "$tck" "$secs" <<<"$out"
}
for r in $(seq "$rounds"); do
  for t in ${TESTS:-randread:4k:32 randwrite:4k:32 read:1M:32 write:1M:32 randread:4k:1 randwrite:4k:1}; do
    IFS=: read -r rw bs qd <<<"$t"
    for s in vdisk nbdkit; do run $s "$rw" "$bs" "$qd"; done
  done
done
