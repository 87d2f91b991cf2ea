#!/usr/bin/env bash
# Whole-disk copies with nbdcopy (4 connections where the server allows
# several, libnbd's default) through vdisk-nbd, qemu-nbd and nbdkit's file
# plugin serving the same raw image: read (server -> null:) and write (a
# raw file -> the server), and, as the transport's ceiling for reads,
# nbdkit's memory plugin holding the same data.  Servers alternate within
# each round; medians and ratios (vdisk-nbd against the best peer, and
# vdisk-nbd's read against the memory plugin's).
#
#   bench/nbdcopy.sh [ROUNDS [SIZE]]      (defaults 3, 1G)
# Environment: BUILD (build tree, default .), WORK (scratch dir).
# Never part of make check.
set -eu
rounds=${1:-3} size=${2:-1G}
build=${BUILD:-.}
vdisk_nbd=$build/nbd-server/vdisk-nbd
for c in nbdcopy qemu-nbd nbdkit qemu-img fio; do
  command -v $c >/dev/null || { echo "$c is not installed" >&2; exit 77; }
done
[ -x "$vdisk_nbd" ] || { echo "build vdisk-nbd first (BUILD=$build)" >&2; exit 1; }
work=${WORK:-$(mktemp -d /var/tmp/nbdcopy-bench.XXXXXX)}
mkdir -p "$work"
sock=$work/s.sock raw=$work/disk.raw src=$work/src.raw
pid=
stop() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}
cleanup() { stop; [ -n "${WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

for f in "$raw" "$src"; do
  [ -s "$f" ] && continue
  qemu-img create -q -f raw "$f" "$size"
  fio --name=fill --filename="$f" --rw=write --bs=1M --size="$size" \
      --refill_buffers --output=/dev/null
done
cat "$raw" "$src" > /dev/null
bytes=$(stat -c %s "$raw")

start() {  # start SERVER
  rm -f "$sock"
  case $1 in
    vdisk)  "$vdisk_nbd" -t -k "$sock" -f raw "$raw" & pid=$! ;;
    qemu)   qemu-nbd -t -e 8 -k "$sock" -f raw --aio=threads \
              --cache=writeback "$raw" & pid=$! ;;
    nbdkit) nbdkit -f -U "$sock" file "$raw" & pid=$! ;;
    memory) nbdkit -f -U "$sock" memory "$bytes" & pid=$! ;;
  esac
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { echo "$1 did not start" >&2; exit 1; }
  # The memory plugin starts empty: give it the data first (untimed).
  [ "$1" != memory ] || nbdcopy "$src" "nbd+unix:///?socket=$sock"
}

# secs CMD...: wall seconds of CMD.
secs() {
  local s e
  s=$EPOCHREALTIME; "$@"; e=$EPOCHREALTIME
  awk -v s="$s" -v e="$e" 'BEGIN {printf "%.4f", e - s}'
}

declare -A t
uri="nbd+unix:///?socket=$sock"
for r in $(seq "$rounds"); do
  for s in vdisk qemu nbdkit memory; do
    start $s
    t[read,$s]+="$(secs nbdcopy "$uri" null:) "
    [ $s = memory ] || t[write,$s]+="$(secs nbdcopy "$src" "$uri") "
    stop
    echo "round $r $s: read $(echo ${t[read,$s]} | awk '{print $NF}') s" >&2
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mbs() { awk -v b="$bytes" -v s="$1" 'BEGIN {printf "%.0f", b / s / 1048576}'; }
echo
echo "nbdcopy of a $size raw image in page cache, $rounds rounds, medians, MiB/s"
printf '%-16s %10s %10s\n' server read write
declare -A m
for s in vdisk qemu nbdkit memory; do
  for op in read write; do
    [ -n "${t[$op,$s]:-}" ] && m[$op,$s]=$(mbs "$(echo "${t[$op,$s]}" | median)") || m[$op,$s]=-
  done
  name=$s; [ $s = memory ] && name="nbdkit memory"
  printf '%-16s %10s %10s\n' "$name" "${m[read,$s]}" "${m[write,$s]}"
done
for op in read write; do
  best=$(( m[$op,qemu] > m[$op,nbdkit] ? m[$op,qemu] : m[$op,nbdkit] ))
  printf 'ratio %-5s vdisk-nbd / best of qemu-nbd, nbdkit = %s  (goal 1.25x)\n' $op \
    "$(awk -v a="${m[$op,vdisk]}" -v b="$best" 'BEGIN {printf "%.2fx", a / b}')"
done
printf 'read: vdisk-nbd / nbdkit memory plugin = %s  (goal 0.90x)\n' \
  "$(awk -v a="${m[read,vdisk]}" -v b="${m[read,memory]}" 'BEGIN {printf "%.2fx", a / b}')"
