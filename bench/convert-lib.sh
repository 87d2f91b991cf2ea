# shellcheck shell=bash
# Shared by the convert benchmarks (bench/*-convert.sh); sourced after
# `set -eu` and after the caller has set $dir, its scratch directory.
# Checks for vdtool (VDTOOL, default tools/vdtool of this tree; VDTOOL_OPTS
# into the array opts) and qemu-img, enters $dir and removes it on exit.
top=$(cd "$(dirname "$0")/.." && pwd)
vdtool=${VDTOOL:-$top/tools/vdtool}
# In a build tree tools/vdtool is libtool's wrapper script, which costs
# 0.1-0.15 s per run before vdtool starts (an installed vdtool has none):
# run the program itself, with the tree's library.
if [ -z "${VDTOOL:-}" ] && [ -x "$top/tools/.libs/vdtool" ]; then
  vdtool=$top/tools/.libs/vdtool
  export LD_LIBRARY_PATH=$top/vdisk/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
read -r -a opts <<< "${VDTOOL_OPTS:-}"
[ -x "$vdtool" ] || { echo "build vdtool first ($vdtool)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "qemu-img is not installed" >&2; exit 1; }
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
cd "$dir"

# half_random FILE MIB [hex]: a raw image of MIB MiB, the first half
# (rounded down) random data from a fixed seed, the rest written zeros (not
# a hole).  With "hex" the random half is random hex digits, which deflate
# compresses to about half.
half_random() {
  /usr/bin/python3 -c '
import random, sys
n = int(sys.argv[2]); r = random.Random(1)
hexdigits = bytes.maketrans(bytes(range(256)), b"0123456789abcdef" * 16)
with open(sys.argv[1], "wb") as f:
    for _ in range(n // 2):
        b = r.randbytes(1 << 20)
        f.write(b.translate(hexdigits) if sys.argv[3:] == ["hex"] else b)
    z = bytes(1 << 20)
    for _ in range(n - n // 2):
        f.write(z)
' "$@"
}

# t FILE CMD...: append "WALL CPU" for CMD to FILE: wall-clock seconds
# including the sync that makes the output durable, and user+system CPU
# seconds of CMD (less sensitive to other load on the machine).
t() {
  local file=$1 s e cpu; shift
  s=$(date +%s.%N)
  cpu=$( { /usr/bin/time -f "%U %S" "$@" >/dev/null; } 2>&1 | tail -1)
  sync
  e=$(date +%s.%N)
  echo "$(echo "$e - $s" | bc) $(echo "$cpu" | awk '{print $1 + $2}')" >> "$file"
}

# median FILE COLUMN
median() { awk -v c="$2" '{print $c}' "$1" | sort -n |
           awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# ratios LABEL VDFILE QFILE: the median wall and CPU times of vdtool
# (VDFILE) and qemu-img (QFILE), and qemu-img/vdtool (above 1: vdtool is
# faster).
ratios() {
  local vw qw vc qc
  vw=$(median "$2" 1); qw=$(median "$3" 1)
  vc=$(median "$2" 2); qc=$(median "$3" 2)
  printf "  %s  wall (with sync): vdtool %6.2f s, qemu-img %6.2f s, qemu-img/vdtool %.2fx\n" \
    "$1" "$vw" "$qw" "$(echo "$qw / $vw" | bc -l)"
  printf "  %s  cpu (user+sys):   vdtool %6.2f s, qemu-img %6.2f s, qemu-img/vdtool %.2fx\n" \
    "$1" "$vc" "$qc" "$(echo "$qc / ($vc + 0.001)" | bc -l)"
}

# alternate RUNS FROM TO EXT SOURCE...: RUNS rounds, each converting every
# SOURCE.FROM (format FROM) to format TO, first with vdtool into a.EXT, then
# with qemu-img into b.EXT, timed by t into vd_SOURCE.txt and q_SOURCE.txt.
# In the first round both outputs are compared with src.raw (outside the
# timings; compare's default mode accepts a longer image whose extra
# sectors read as zeros, as qemu-img's CHS-rounded VHDs).
alternate() {
  local runs=$1 from=$2 to=$3 ext=$4 i s; shift 4
  for s; do : > vd_$s.txt; : > q_$s.txt; done
  for i in $(seq "$runs"); do
    for s; do
      rm -f a.$ext b.$ext
      t vd_$s.txt "$vdtool" convert "${opts[@]}" -O $to $s.$from a.$ext
      t q_$s.txt qemu-img convert -f $from -O $to $s.$from b.$ext
      echo "run $i $s (wall s, cpu s): vdtool $(tail -1 vd_$s.txt), qemu-img $(tail -1 q_$s.txt)"
      [ "$i" = 1 ] || continue
      qemu-img compare -f $to -F raw a.$ext src.raw >/dev/null &&
        qemu-img compare -f $to -F raw b.$ext src.raw >/dev/null ||
        { echo "$s: a converted image differs from the source" >&2; exit 1; }
    done
  done
}

# summary RUNS MIB TO SOURCE...: the medians and ratios of alternate's runs,
# one pair of lines per SOURCE, labelled "SOURCE -> TO".
summary() {
  local runs=$1 mib=$2 to=$3 s; shift 3
  echo
  echo "medians over $runs runs, $mib MiB, vdtool options '${VDTOOL_OPTS:-}':"
  for s; do
    ratios "$(printf "%-6s -> %s" "$s" "$to")" vd_$s.txt q_$s.txt
  done
}
