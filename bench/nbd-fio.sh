#!/usr/bin/env bash
# Benchmark: vdisk-nbd against qemu-nbd and nbdkit's file plugin serving the
# same raw image (and vdisk-nbd against qemu-nbd for a dynamic VHD and/or a
# qcow2 of the same contents), with fio's nbd engine over a Unix socket:
# sequential 1 MiB read and write, 4 KiB random read and write, iodepth 32,
# one connection.  Servers alternate within each round; the report gives
# medians of throughput, completion latency (p50, p99) and server CPU time
# per request, and ratios against the best peer.
#
#   bench/nbd-fio.sh [ROUNDS [SECONDS [SIZE]]]     (defaults 3, 10, 1G)
# Environment: BUILD (build tree, default .), WORK (scratch dir), SERVERS
# for the raw image (default "vdisk qemu nbdkit"; empty: no raw runs),
# FORMATS served by vdisk-nbd and qemu-nbd (default "vpc"; also "qcow2",
# 64 KiB clusters, and "vhdx", dynamic; "overlay", a new qcow2 (64 KiB
# clusters) over the filled raw image for every run, as a VM's snapshot:
# its writes allocate and copy from the base, its reads fall through to
# it; and two remote sources, each server reading through its
# own client: "nbd", an nbdkit file-plugin export of the raw image on a
# second Unix socket, which vdisk-nbd opens with its nbd driver (libnbd)
# and qemu-nbd with qemu's; "rbd", the raw image imported into a one-node
# Ceph cluster the script starts (tests/ceph/cluster.sh, memstore), which
# vdisk-nbd opens with its rbd driver and qemu-nbd with qemu's, both
# librbd), VHD=0 (FORMATS then defaults to ""), WORKLOADS (default
# "seqread seqwrite randread randwrite"; also "syncwrite", 4 KiB random
# writes each followed by a flush, as fio --fsync=1), IODEPTHS (default 32), VDISK_ARGS
# (more options for vdisk-nbd, e.g. "--threads 8"), FRESH=1 (every run
# gets a new empty image, made by qemu-img create, instead of the filled
# one: allocating writes, as to a new VM disk; for write workloads).
set -eu
rounds=${1:-3} secs=${2:-10} size=${3:-1G}
build=${BUILD:-.}
vdisk_nbd=$build/nbd-server/vdisk-nbd
servers=${SERVERS-vdisk qemu nbdkit}
formats=${FORMATS-vpc}; [ "${VHD:-1}" = 1 ] || formats=${FORMATS:-}
workloads=${WORKLOADS:-seqread seqwrite randread randwrite}
iodepths=${IODEPTHS:-32}
declare -A mkopts=([vpc]="-o subformat=dynamic" [qcow2]="-o cluster_size=65536"
                   [vhdx]="-o subformat=dynamic" [overlay]="-o cluster_size=65536")
for f in $formats; do
  case $f in nbd|rbd|overlay) [ "${FRESH:-0}" = 0 ] && continue
    echo "FRESH=1: no $f (it has no empty image to start from)" >&2; exit 1 ;; esac
  [ -n "${mkopts[$f]:-}" ] || { echo "FORMATS: no $f (vpc, qcow2, vhdx, overlay, nbd, rbd)" >&2; exit 1; }
done
work=${WORK:-$(mktemp -d /var/tmp/nbd-bench.XXXXXX)}
sock=$work/bench.sock
pid=
for c in fio qemu-nbd nbdkit qemu-img; do
  command -v $c >/dev/null || { echo "$c is not installed" >&2; exit 77; }
done
[ -x "$vdisk_nbd" ] || { echo "build vdisk-nbd first (BUILD=$build)" >&2; exit 1; }
mkdir -p "$work"

raw=$work/bench.raw
if [ ! -s "$raw" ] && [ "${FRESH:-0}" = 0 ]; then
  echo "writing $size of random data to $raw" >&2
  qemu-img create -q -f raw "$raw" "$size"
  fio --name=fill --filename="$raw" --rw=write --bs=1M --size="$size" \
      --refill_buffers --output=/dev/null
fi
declare -A img=([raw]=$raw [vpc]=$work/bench.vhd [qcow2]=$work/bench.qcow2
                [vhdx]=$work/bench.vhdx)
upstream=
cleanup_remote() { :; }
for f in $formats; do
  case $f in
    nbd)  # the remote export: nbdkit's file plugin, any number of clients
      nbdkit -f -U "$work/up.sock" file "$raw" & upstream=$!
      for _ in $(seq 100); do [ -S "$work/up.sock" ] && break; sleep 0.1; done
      img[nbd]="nbd+unix:///?socket=$work/up.sock" ;;
    rbd)  # a cluster of our own; the test helpers it needs, then its start
      top_srcdir=${top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
      . "$top_srcdir/tests/functions.sh"
      . "$top_srcdir/tests/ceph/cluster.sh"
      cleanup_remote() { _vd_cleanup; }
      ceph_start >&2
      ceph_rbd import --no-progress "$raw" "$ceph_pool/bench" >&2
      img[rbd]="rbd:$ceph_pool/bench:conf=$ceph_conf" ;;
    overlay) ;;  # one per run (fresh)
    *)
      [ "${FRESH:-0}" = 0 ] || continue
      [ -s "${img[$f]}" ] ||
        qemu-img convert -f raw -O "$f" ${mkopts[$f]} "$raw" "${img[$f]}"
      cat "${img[$f]}" > /dev/null ;;  # page cache
  esac
done
[ "${FRESH:-0}" = 1 ] || cat "$raw" > /dev/null

start() {  # start SERVER FORMAT IMAGE
  rm -f "$sock"
  case $1 in
    vdisk)  vf=$2; [ "$2" = overlay ] && vf=qcow2
            "$vdisk_nbd" -t -k "$sock" ${VDISK_ARGS:-} -f "$vf" "$3" & pid=$! ;;
    qemu)   case $2 in nbd|rbd) qf=raw ;; overlay) qf=qcow2 ;; *) qf=$2 ;; esac  # over qemu's driver
            qemu-nbd -t -k "$sock" -f "$qf" --aio=threads --cache=writeback \
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

cleanup() {
  stop
  [ -z "$upstream" ] || { kill "$upstream"; wait "$upstream"; } 2>/dev/null || true
  [ -n "${WORK:-}" ] || rm -rf "$work"
  cleanup_remote
}
trap cleanup EXIT

cputicks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

# run WORKLOAD IODEPTH: one fio run; prints MiB/s (seq) or IOPS (rand), the
# server's CPU time per request in microseconds (user + system), and the
# p50 and p99 completion latency in microseconds.
run() {
  local rw bs out t0 t1 extra=
  case $1 in
    seqread)   rw=read bs=1M ;;
    seqwrite)  rw=write bs=1M ;;
    randread)  rw=randread bs=4k ;;
    randwrite) rw=randwrite bs=4k ;;
    syncwrite) rw=randwrite bs=4k extra=--fsync=1 ;;  # a flush after each
  esac
  t0=$(cputicks)
  out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
          --rw=$rw --bs=$bs $extra --iodepth="$2" --size="$size" \
          --runtime="$secs" \
          --time_based --output-format=json 2>/dev/null)
  t1=$(cputicks)
  /usr/bin/python3 -c 'import json,sys,os
s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]
k="read" if j["read"]["io_bytes"] else "write"
v=j[k]["bw"]/1024 if sys.argv[1].startswith("seq") else j[k]["iops"]
cpu=(int(sys.argv[3])-int(sys.argv[2]))/os.sysconf("SC_CLK_TCK")
p=j[k]["clat_ns"]["percentile"]
print("%.0f %.1f %.0f %.0f" % (v, cpu*1e6/max(j[k]["total_ios"],1),
      p["50.000000"]/1e3, p["99.000000"]/1e3))' "$1" "$t0" "$t1" <<<"$out"
}

# Results: res (throughput), cpu, p50, p99, each [CASE,COLUMN] = samples;
# a column is WORKLOAD:IODEPTH.
declare -A res cpu p50 p99
cols=""
for w in $workloads; do for d in $iodepths; do cols="$cols $w:$d"; done; done
cases=""
for s in $servers; do cases="$cases $s:raw"; done
for f in $formats; do cases="$cases vdisk:$f qemu:$f"; done
# fresh FORMAT: a new empty image of FORMAT (overlay: a new qcow2 over the
# raw image) for the next run; its name.
fresh() {
  local f=$1 i=$work/fresh.$1
  rm -f "$i"
  if [ "$f" = overlay ]; then
    qemu-img create -q -f qcow2 ${mkopts[$f]} -b "$raw" -F raw "$i"
  else
    qemu-img create -q -f "$f" ${mkopts[$f]:-} "$i" "$size"
  fi
  echo "$i"
}
# measure CASE COLUMN: one run, its numbers kept.
measure() {
  read -r v u l50 l99 <<<"$(run ${2%%:*} ${2##*:})"
  res[$1,$2]="${res[$1,$2]:-} $v"
  cpu[$1,$2]="${cpu[$1,$2]:-} $u"
  p50[$1,$2]="${p50[$1,$2]:-} $l50"
  p99[$1,$2]="${p99[$1,$2]:-} $l99"
  echo "round $r $1 $2 $v, p50 $l50 us, p99 $l99 us (server CPU ${u} us/request)" >&2
}
for r in $(seq "$rounds"); do
  for c in $cases; do
    s=${c%%:*} f=${c##*:}
    if [ "${FRESH:-0}" = 1 ] || [ "$f" = overlay ]; then
      for k in $cols; do
        start "$s" "$f" "$(fresh "$f")"
        measure "$c" "$k"
        stop
      done
      continue
    fi
    start "$s" "$f" "${img[$f]}"
    for k in $cols; do measure "$c" "$k"; done
    stop
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
label() {  # label COLUMN: the workload, and the iodepth if several
  if [ "$(echo $iodepths | wc -w)" = 1 ]; then echo "${1%%:*}"
  else echo "${1%%:*}/qd${1##*:}"; fi
}
# table ARRAY: its medians, one row per case; also stored as ARRAY[CASE,COLUMN,m].
table() {
  local -n a=$1
  local c k
  printf '%-12s' server; for k in $cols; do printf '%15s' "$(label $k)"; done; echo
  for c in $cases; do
    printf '%-12s' "$c"
    for k in $cols; do
      a[$c,$k,m]=$(echo "${a[$c,$k]}" | median)
      printf '%15s' "${a[$c,$k,m]}"
    done
    echo
  done
}
# ratios ARRAY HIGHER: per format served by vdisk-nbd and a peer,
# vdisk-nbd's median against the best peer's, as a factor above 1 when
# vdisk-nbd is better (HIGHER=1: higher values are better, else lower ones).
ratios() {
  local -n a=$1
  local f k c best
  for f in raw $formats; do
    printf '%s\n' $cases | grep -qx "vdisk:$f" &&
      printf '%s\n' $cases | grep -v '^vdisk:' | grep -q ":$f\$" || continue
    printf '%-12s' "ratio $f"
    for k in $cols; do
      best=""
      for c in $cases; do
        [ "${c##*:}" = $f ] && [ "${c%%:*}" != vdisk ] || continue
        best=$(awk -v h="$2" -v b="$best" -v v="${a[$c,$k,m]}" \
               'BEGIN {print (b == "" || (h ? v > b : v < b)) ? v : b}')
      done
      printf '%15s' "$(awk -v h="$2" -v a="${a[vdisk:$f,$k,m]}" -v b="$best" \
        'BEGIN {if (b == "" || a == 0 || b == 0) print "-";
                else printf "%.2fx", h ? a / b : b / a}')"
    done
    echo
  done
}

echo
if [ "${FRESH:-0}" = 1 ]; then
  echo "fio nbd engine, iodepth $iodepths, Unix socket, a new empty $size image per run (FRESH=1), $rounds rounds of ${secs}s, medians"
else
  echo "fio nbd engine, iodepth $iodepths, Unix socket, $size image in page cache, $rounds rounds of ${secs}s, medians"
  case " $formats " in *" overlay "*)
    echo "(overlay: a new qcow2 over the raw image for every run)" ;; esac
fi
echo "(seq: MiB/s, rand: IOPS; ratio = vdisk-nbd / best peer on the same format)"
table res; echo; ratios res 1
for q in p50 p99; do
  echo
  echo "completion latency $q, microseconds (medians; ratio = best peer / vdisk-nbd)"
  table $q; echo; ratios $q 0
done
echo
echo "server CPU time per request, microseconds (user+system, medians; lower is better)"
table cpu
