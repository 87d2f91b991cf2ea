#!/usr/bin/env bash
# vdtool convert vs qemu-img convert in qemu-img's cache modes (issue 16's
# convert goals), on a raw source of MIB MiB (half random data from a
# fixed seed, half written zeros), alternating the tools in every round:
#  - default mode (the output `-t unsafe` for both, qemu-img's default):
#    wall time of the command alone, as a script sees it; the output is
#    synced afterwards, outside the timing, so rounds do not overlap;
#  - `-t writeback`: wall time including a sync of the output, i.e. until
#    the data is durable;
#  - the disk's own durable write speed: dd of the source's data half
#    (bs=1M, conv=fdatasync), and each tool's durable speed as allocated
#    output bytes per second of its writeback run, as a share of dd's.
# The tools alternate, and which goes first alternates by round.
# Conversions: raw -> dynamic VHD, VHD -> raw, raw -> VHDX, VHDX -> raw,
# qcow2 -> VHD (sources made once by qemu-img; each tool reads the same).
# With VDTOOL_BASE (another build's vdtool binary, its libvdisk in
# VDTOOL_BASE_LIB if that is not installed) the base build runs too, between
# the two, and a before/after table (base vs this vdtool) follows.
#   bench/convert-modes.sh [RUNS [MIB [DIR]]]   (defaults 3, 1024, a temp dir)
# Never part of make check.
set -eu
runs=${1:-3} mib=${2:-1024}
dir=${3:-$(mktemp -d "${TMPDIR:-/var/tmp}/convmodes.XXXXXX")}
. "$(dirname "$0")/convert-lib.sh"

echo "making a $mib MiB source (half random, half written zeros) in $dir" >&2
half_random src.raw "$mib"
qemu-img convert -f raw -O vpc -o subformat=dynamic src.raw src.vpc
qemu-img convert -f raw -O vhdx src.raw src.vhdx
qemu-img convert -f raw -O qcow2 src.raw src.qcow2
head -c $((mib / 2 * 1024 * 1024)) src.raw > half.raw
sync

base=${VDTOOL_BASE:+base}

# Conversions: NAME FROM TO.
convs="raw-vpc:raw:vpc vpc-raw:vpc:raw raw-vhdx:raw:vhdx vhdx-raw:vhdx:raw qcow2-vpc:qcow2:vpc"

# run FILE MODE CMD...: one timed conversion appended to FILE as
# "WALL CPU BYTES"; MODE default: no sync in the timing; writeback: the
# sync is in it.  BYTES: the output's allocated bytes.
run() {
  local file=$1 mode=$2 out=${*: -1} s e cpu; shift 2
  rm -f "$out"
  s=$(date +%s.%N)
  cpu=$( { /usr/bin/time -f "%U %S" "$@" >/dev/null; } 2>&1 | tail -1)
  [ "$mode" = default ] || sync -f "$out"
  e=$(date +%s.%N)
  sync
  echo "$(echo "$e - $s" | bc) $(echo "$cpu" | awk '{print $1 + $2}') $(du -B1 "$out" | cut -f1)" >> "$file"
}

: > dd.txt
for i in $(seq "$runs"); do
  rm -f dd.out
  s=$(date +%s.%N)
  dd if=half.raw of=dd.out bs=1M conv=fdatasync status=none
  e=$(date +%s.%N)
  echo "$(echo "$e - $s" | bc)" >> dd.txt
  for c in $convs; do
    IFS=: read -r name from to <<< "$c"
    for mode in default writeback; do
      t=(); [ "$mode" = default ] || t=(-t writeback)
      # Who goes first alternates by round: the first run after a
      # sync meets a different page cache than the second.
      for who in $( ((i % 2)) && echo vd $base q || echo q $base vd); do
        if [ $who = vd ]; then
          run "vd_${name}_$mode.txt" $mode "$vdtool" convert "${opts[@]}" "${t[@]}" -f $from -O $to src.$from a.$to
        elif [ $who = base ]; then
          run "base_${name}_$mode.txt" $mode env LD_LIBRARY_PATH="${VDTOOL_BASE_LIB:-}" \
            "$VDTOOL_BASE" convert "${opts[@]}" "${t[@]}" -f $from -O $to src.$from c.$to
        else
          run "q_${name}_$mode.txt" $mode qemu-img convert "${t[@]}" -f $from -O $to src.$from b.$to
        fi
      done
    done
    if [ "$i" = 1 ]; then
      qemu-img compare -f $to -F raw a.$to src.raw >/dev/null &&
        qemu-img compare -f $to -F raw b.$to src.raw >/dev/null ||
        { echo "$name: an output differs from the source" >&2; exit 1; }
    fi
  done
  echo "round $i/$runs done" >&2
done

ddbytes=$(stat -c %s half.raw)
ddrate=$(echo "$ddbytes / $(median dd.txt 1) / 1000000" | bc -l)
# ratio_table FIRST SECOND REF: a row per conversion with the medians of the
# contenders whose result files start FIRST_ and SECOND_ (default mode,
# writeback + sync, and %dd), the ratios being REF's time over the other's.
ratio_table() {
  local c name from to f1 s1 fw sw fb sb r rw
  for c in $convs; do
    IFS=: read -r name from to <<< "$c"
    f1=$(median "$1_${name}_default.txt" 1); s1=$(median "$2_${name}_default.txt" 1)
    fw=$(median "$1_${name}_writeback.txt" 1); sw=$(median "$2_${name}_writeback.txt" 1)
    fb=$(median "$1_${name}_writeback.txt" 3); sb=$(median "$2_${name}_writeback.txt" 3)
    if [ "$3" = "$1" ]; then r="$f1 / $s1" rw="$fw / $sw"; else r="$s1 / $f1" rw="$sw / $fw"; fi
    printf "%-10s %10.2f %10.2f %6.2fx   %12.2f %12.2f %6.2fx   %8.0f%% %8.0f%%\n" "$name" \
      "$f1" "$s1" "$(echo "$r" | bc -l)" "$fw" "$sw" "$(echo "$rw" | bc -l)" \
      "$(echo "100 * $fb / $fw / 1000000 / $ddrate" | bc -l)" \
      "$(echo "100 * $sb / $sw / 1000000 / $ddrate" | bc -l)"
  done
}
printf "\nconvert, %s MiB source, %s rounds, medians; ratio = qemu-img / vdtool wall (above 1: vdtool faster)\n" "$mib" "$runs"
printf "%-10s %10s %10s %7s   %12s %12s %7s   %9s %9s\n" conversion "vd def s" "qemu def s" ratio "vd wb+sync s" "qemu wb+s s" ratio "vd %dd" "qemu %dd"
ratio_table vd q q
printf "dd of %s MiB with conv=fdatasync: %.0f MB/s (median); %%dd = allocated output bytes per second of the writeback run, against it\n" \
  $((ddbytes >> 20)) "$ddrate"
echo "goals: default 2x, writeback 1.25x, %dd >= 90% (vdtool)"
[ -n "$base" ] || exit 0
printf "\nbefore/after: base %s vs this vdtool, medians; ratio = base / this (above 1: this is faster)\n" "$VDTOOL_BASE"
printf "%-10s %10s %10s %7s   %12s %12s %7s   %9s %9s\n" conversion "base def s" "this def s" ratio "base wb+s s" "this wb+s s" ratio "base %dd" "this %dd"
ratio_table base vd base
