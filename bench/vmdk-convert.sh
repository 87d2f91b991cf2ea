#!/usr/bin/env bash
# vdtool convert vs qemu-img convert, VMDK -> VHDX, from a monolithicSparse
# and a streamOptimized VMDK (both made by qemu-img from one raw image: the
# first half random data, the second half written zeros, which the VMDK
# writers leave unallocated).  Runs alternate between the two tools; each
# output is flushed (sync) as part of its timing; medians and ratios.
#   bench/vmdk-convert.sh [RUNS] [MIB] [DIR]   (default 5 runs, 1024 MiB)
#   VDTOOL_OPTS="-m 1" bench/vmdk-convert.sh   extra vdtool convert options
# Never part of make check.
set -eu
runs=${1:-5}
mib=${2:-1024}
dir=${3:-$(mktemp -d "${TMPDIR:-/var/tmp}/vmdkbench.XXXXXX")}
top=$(cd "$(dirname "$0")/.." && pwd)
vdtool=${VDTOOL:-$top/tools/vdtool}
read -r -a opts <<< "${VDTOOL_OPTS:-}"
[ -x "$vdtool" ] || { echo "build vdtool first ($vdtool)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "qemu-img is not installed" >&2; exit 1; }
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
cd "$dir"

echo "making a $mib MiB source (half random, half written zeros) in $dir"
/usr/bin/python3 -c '
import random, sys
n = int(sys.argv[1]); r = random.Random(1)
with open("src.raw", "wb") as f:
    for _ in range(n // 2):
        f.write(r.randbytes(1 << 20))
    z = bytes(1 << 20)
    for _ in range(n - n // 2):
        f.write(z)
' "$mib"
qemu-img convert -f raw -O vmdk src.raw sparse.vmdk
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.raw stream.vmdk
sync

# t FILE CMD...: append "WALL CPU" (wall seconds including the sync that
# makes the output durable; user+system CPU seconds of CMD).
t() {
  local file=$1 s e cpu; shift
  s=$(date +%s.%N)
  cpu=$( { /usr/bin/time -f "%U %S" "$@" >/dev/null; } 2>&1 | tail -1)
  sync
  e=$(date +%s.%N)
  echo "$(echo "$e - $s" | bc) $(echo "$cpu" | awk '{print $1 + $2}')" >> "$file"
}
median() { awk -v c="$2" '{print $c}' "$1" | sort -n |
           awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for s in sparse stream; do : > vd_$s.txt; : > q_$s.txt; done
for i in $(seq "$runs"); do
  for s in sparse stream; do
    rm -f a.vhdx b.vhdx
    t vd_$s.txt "$vdtool" convert "${opts[@]}" -O vhdx $s.vmdk a.vhdx
    t q_$s.txt qemu-img convert -f vmdk -O vhdx $s.vmdk b.vhdx
    echo "run $i $s (wall s, cpu s): vdtool $(tail -1 vd_$s.txt), qemu-img $(tail -1 q_$s.txt)"
  done
done
qemu-img compare -f vhdx -F raw a.vhdx src.raw >/dev/null &&
  qemu-img compare -f vhdx -F raw b.vhdx src.raw >/dev/null ||
  { echo "a converted image differs from the source" >&2; exit 1; }

echo
echo "medians over $runs runs, $mib MiB, vdtool options '${VDTOOL_OPTS:-}':"
for s in sparse stream; do
  vw=$(median vd_$s.txt 1); qw=$(median q_$s.txt 1)
  vc=$(median vd_$s.txt 2); qc=$(median q_$s.txt 2)
  printf "  %-6s -> VHDX  wall (with sync): vdtool %6.2f s, qemu-img %6.2f s, qemu-img/vdtool %.2fx\n" \
    "$s" "$vw" "$qw" "$(echo "$qw / $vw" | bc -l)"
  printf "  %-6s -> VHDX  cpu (user+sys):   vdtool %6.2f s, qemu-img %6.2f s, qemu-img/vdtool %.2fx\n" \
    "$s" "$vc" "$qc" "$(echo "$qc / ($vc + 0.001)" | bc -l)"
done
