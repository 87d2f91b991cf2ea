#!/usr/bin/env bash
# A/B benchmark of two vdisk builds' frontends on the same raw image in the
# page cache, alternating builds within each round (to tell whether an
# engine change made the data path slower):
#   fio nbd engine against vdisk-nbd over a Unix socket, iodepth 32:
#     sequential read 1 MiB (MiB/s) and random read 4 KiB (IOPS);
#   dd bs=1M of the whole file exposed by vdisk-fuse -r (MiB/s).
# Prints each run, then medians and B/A ratios, and for NBD the server's
# CPU time per request (user+system, microseconds), which a busy machine
# disturbs less than throughput.
#
#   bench/ab-frontends.sh BUILD_A BUILD_B [ROUNDS [SECONDS [SIZE_MIB]]]
#                                              (defaults 3, 5, 512)
# Environment: TESTS (default "seqread randread fuseread"; also randwrite,
# 4 KiB random writes, and syncwrite, the same with a flush after each
# write as fio --fsync=1), IODEPTH (default 32) for the NBD tests.
# Run as root (FUSE) from anywhere; never part of make check.
set -euo pipefail
a=$1 b=$2 rounds=${3:-3} secs=${4:-5} size_mib=${5:-512}
for c in fio fusermount3 mountpoint; do
  command -v $c >/dev/null || { echo "$c is not installed" >&2; exit 77; }
done
work=$(mktemp -d /var/tmp/ab-frontends.XXXXXX)
sock=$work/nbd.sock
pid=
cleanup() {
  fusermount3 -uz "$work/m" 2>/dev/null || true
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/m"
img=$work/disk.raw
head -c $((size_mib << 20)) /dev/urandom > "$img"
cat "$img" > /dev/null

nbd_run() {   # BUILD RW BS [FIO_OPTION]: prints MiB/s (seq) or IOPS (rand)
  rm -f "$sock"
  local ro=-r; [ "$2" = randwrite ] && ro=
  "$1/nbd-server/vdisk-nbd" -t $ro -k "$sock" -f raw "$img" & pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  local t0 t1 out
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
      --rw="$2" --bs="$3" ${4:-} --iodepth="${IODEPTH:-32}" --size=$((size_mib))M \
      --runtime="$secs" --time_based --output-format=json 2>/dev/null)
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  /usr/bin/python3 -c 'import json,sys,os
s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]
j=j["write" if sys.argv[1]=="randwrite" else "read"]
cpu=(int(sys.argv[3])-int(sys.argv[2]))/os.sysconf("SC_CLK_TCK")
print("%.0f %.1f" % (j["bw"]/1024 if sys.argv[1]=="read" else j["iops"],
                     cpu*1e6/max(j["total_ios"],1)))' "$2" "$t0" "$t1" <<<"$out"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

fuse_run() {  # BUILD: prints MiB/s of a dd read of the whole file
  local t0 t1
  "$1/fuse-frontend/vdisk-fuse" -f -r --format=raw "$img" "$work/m" \
    >/dev/null 2>&1 & pid=$!
  for _ in $(seq 200); do mountpoint -q "$work/m" && break; sleep 0.05; done
  t0=$EPOCHREALTIME
  dd if="$work/m/disk.raw" of=/dev/null bs=1M status=none
  t1=$EPOCHREALTIME
  fusermount3 -u "$work/m"; wait "$pid" 2>/dev/null || true; pid=
  awk -v s="$size_mib" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f\n", s/(b-a)}'
}

declare -A res cpu
tests=${TESTS:-seqread randread fuseread}
for r in $(seq "$rounds"); do
  for t in $tests; do
    for side in A B; do
      build=$a; [ $side = B ] && build=$b
      u=
      case $t in
        seqread)  read -r v u <<<"$(nbd_run "$build" read 1M)" ;;
        randread) read -r v u <<<"$(nbd_run "$build" randread 4k)" ;;
        randwrite) read -r v u <<<"$(nbd_run "$build" randwrite 4k)" ;;
        syncwrite) read -r v u <<<"$(nbd_run "$build" randwrite 4k --fsync=1)" ;;
        fuseread) v=$(fuse_run "$build") ;;
      esac
      res[$side,$t]="${res[$side,$t]:-} $v"
      cpu[$side,$t]="${cpu[$side,$t]:-} $u"
      echo "round $r $t $side $v ${u:+(server CPU $u us/request)}" >&2
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "A=$a B=$b; ${size_mib} MiB raw in page cache, $rounds rounds, medians"
echo "(nbd seqread 1M MiB/s, nbd randread/randwrite/syncwrite 4K iodepth ${IODEPTH:-32} IOPS, fuse dd read MiB/s)"
printf '%-8s' ""; printf '%12s' $tests; echo
for side in A B; do
  printf '%-8s' $side
  for t in $tests; do printf '%12s' "$(echo "${res[$side,$t]}" | median)"; done
  echo
done
printf '%-8s' "B/A"
for t in $tests; do
  printf '%12s' "$(awk -v x="$(echo "${res[A,$t]}" | median)" \
                     -v y="$(echo "${res[B,$t]}" | median)" \
                     'BEGIN {printf "%.3f", y/x}')"
done
echo
echo "server CPU per request, us (medians; lower is better)"
for side in A B; do
  printf '%-8s' $side
  for t in $tests; do
    [ $t = fuseread ] && continue
    printf '%12s' "$(echo "${cpu[$side,$t]}" | median)"
  done
  echo
done
