#!/usr/bin/env bash
# Benchmark: vdisk-nbd against qemu-nbd and nbdkit's file plugin serving the
# same raw image (and vdisk-nbd against qemu-nbd for a dynamic VHD), with
# fio's nbd engine over a Unix socket: sequential 1 MiB read and write,
# 4 KiB random read and write, iodepth 32, one connection.  Servers
# alternate within each round; the report gives medians and ratios.
#
#   bench/nbd-fio.sh [ROUNDS [SECONDS [SIZE]]]     (defaults 3, 10, 1G)
# Environment: BUILD (build tree, default .), WORK (scratch dir), SERVERS
# (default "vdisk qemu nbdkit"), VHD=0 to skip the VHD comparison.
set -eu
rounds=${1:-3} secs=${2:-10} size=${3:-1G}
build=${BUILD:-.}
vdisk_nbd=$build/nbd-server/vdisk-nbd
vdtool=$build/tools/vdtool
servers=${SERVERS:-vdisk qemu nbdkit}
work=${WORK:-$(mktemp -d /var/tmp/nbd-bench.XXXXXX)}
sock=$work/bench.sock
pid=
for c in fio qemu-nbd nbdkit qemu-img; do
  command -v $c >/dev/null || { echo "$c is not installed" >&2; exit 77; }
done
[ -x "$vdisk_nbd" ] || { echo "build vdisk-nbd first (BUILD=$build)" >&2; exit 1; }
mkdir -p "$work"

raw=$work/bench.raw
if [ ! -s "$raw" ]; then
  echo "writing $size of random data to $raw" >&2
  qemu-img create -q -f raw "$raw" "$size"
  fio --name=fill --filename="$raw" --rw=write --bs=1M --size="$size" \
      --refill_buffers --output=/dev/null
fi
vhd=$work/bench.vhd
if [ "${VHD:-1}" = 1 ] && [ ! -s "$vhd" ]; then
  qemu-img convert -f raw -O vpc -o subformat=dynamic "$raw" "$vhd"
fi
cat "$raw" > /dev/null   # into the page cache

start() {  # start SERVER FORMAT IMAGE
  rm -f "$sock"
  case $1 in
    vdisk)  "$vdisk_nbd" -t -k "$sock" -f "$2" "$3" & pid=$! ;;
    qemu)   qemu-nbd -t -k "$sock" -f "$2" --aio=threads --cache=writeback \
              "$3" & pid=$! ;;
    nbdkit) nbdkit -f -U "$sock" file "$3" & pid=$! ;;
  esac
  for _ in $(seq 100); do [ -S "$sock" ] && return; sleep 0.1; done
  echo "$1 did not start" >&2; exit 1
}
stop() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}

cleanup() { stop; [ -n "${WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

cputicks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

# run WORKLOAD: one fio run; prints MiB/s (seq) or IOPS (rand), then the
# server's CPU time per request in microseconds (user + system).
run() {
  local rw bs out t0 t1
  case $1 in
    seqread)   rw=read bs=1M ;;
    seqwrite)  rw=write bs=1M ;;
    randread)  rw=randread bs=4k ;;
    randwrite) rw=randwrite bs=4k ;;
  esac
  t0=$(cputicks)
  out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
          --rw=$rw --bs=$bs --iodepth=32 --size="$size" --runtime="$secs" \
          --time_based --output-format=json 2>/dev/null)
  t1=$(cputicks)
  /usr/bin/python3 -c 'import json,sys,os
s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]
k="read" if j["read"]["io_bytes"] else "write"
v=j[k]["bw"]/1024 if sys.argv[1].startswith("seq") else j[k]["iops"]
cpu=(int(sys.argv[3])-int(sys.argv[2]))/os.sysconf("SC_CLK_TCK")
print("%.0f %.1f" % (v, cpu*1e6/max(j[k]["total_ios"],1)))' "$1" "$t0" "$t1" <<<"$out"
}

declare -A res cpu
workloads="seqread seqwrite randread randwrite"
cases=""
for s in $servers; do cases="$cases $s:raw"; done
if [ "${VHD:-1}" = 1 ]; then cases="$cases vdisk:vpc qemu:vpc"; fi
for r in $(seq "$rounds"); do
  for c in $cases; do
    s=${c%%:*} f=${c##*:}
    img=$raw; [ "$f" = vpc ] && img=$vhd
    start "$s" "$f" "$img"
    for w in $workloads; do
      read -r v u <<<"$(run $w)"
      res[$c,$w]="${res[$c,$w]:-} $v"
      cpu[$c,$w]="${cpu[$c,$w]:-} $u"
      echo "round $r $c $w $v (server CPU ${u} us/request)" >&2
    done
    stop
  done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "fio nbd engine, iodepth 32, Unix socket, $size image in page cache, $rounds rounds of ${secs}s, medians"
echo "(seq: MiB/s, rand: IOPS; ratio = vdisk-nbd / best peer on the same format)"
printf '%-12s' "server"; for w in $workloads; do printf '%12s' "$w"; done; echo
for c in $cases; do
  printf '%-12s' "$c"
  for w in $workloads; do
    m=$(echo "${res[$c,$w]}" | median); res[$c,$w,m]=$m
    printf '%12s' "$m"
  done
  echo
done
echo
echo "server CPU time per request, microseconds (user+system, medians; lower is better)"
printf '%-12s' "server"; for w in $workloads; do printf '%12s' "$w"; done; echo
for c in $cases; do
  printf '%-12s' "$c"
  for w in $workloads; do
    printf '%12s' "$(echo "${cpu[$c,$w]}" | tr ' ' '\n' | grep . | sort -g |
                     awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
  done
  echo
done
echo
for f in raw vpc; do
  [ -n "${res[vdisk:$f,seqread,m]:-}" ] || continue
  printf '%-12s' "ratio $f"
  for w in $workloads; do
    best=0
    for c in $cases; do
      [ "${c##*:}" = $f ] && [ "${c%%:*}" != vdisk ] || continue
      v=${res[$c,$w,m]}; [ "$v" -gt "$best" ] && best=$v
    done
    if [ "$best" -gt 0 ]; then
      printf '%12s' "$(awk -v a="${res[vdisk:$f,$w,m]}" -v b="$best" 'BEGIN {printf "%.2fx", a/b}')"
    else printf '%12s' "-"; fi
  done
  echo
done
