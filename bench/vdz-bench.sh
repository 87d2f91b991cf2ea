#!/usr/bin/env bash
# vdz benchmark: compression and decompression throughput and ratio on an
# ext4 image filled from /usr, against `qemu-img convert -c -O qcow2` and
# the lz4 command; sequential decompressed reads on one thread; random
# 4 KiB reads through vdisk-nbd against the uncompressed image.
#
#   bench/vdz-bench.sh [SIZE_MiB]        (default 2048)
#
# Run from the build directory (or set top_builddir).  Scratch files go to
# $VDZ_BENCH_DIR (default /var/tmp/vdz-bench, about 4 x SIZE needed) and
# are removed at the end unless VDZ_BENCH_KEEP=1.  Everything runs warm:
# the images are in the page cache, so the figures are CPU-bound, which
# is what compression formats differ by.  VDZ_BENCH_CLUSTERS="16 32 64 128"
# adds a table of ratio and read speeds against the cluster size (KiB).
# Not part of make check.
set -eu
export LC_ALL=C

size_mb=${1:-2048}
top_srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
top_builddir=${top_builddir:-$PWD}
vdtool=$top_builddir/tools/vdtool
vdisk_nbd=$top_builddir/nbd-server/vdisk-nbd
work=${VDZ_BENCH_DIR:-/var/tmp/vdz-bench}
[ -x "$vdtool" ] || { echo "run from the build directory: no $vdtool" >&2; exit 1; }
for c in qemu-img lz4 mkfs.ext4 fio; do
  command -v "$c" >/dev/null || { echo "missing: $c" >&2; exit 1; }
done

mkdir -p "$work"
[ "${VDZ_BENCH_KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
cd "$work"
fs=$work/fs.raw
cores=$(nproc)

# secs CMD...: run it; print its wall and CPU (user + sys) seconds.
secs() {
  /usr/bin/time -f "%e %U %S" -o "$work/time.out" "$@" >/dev/null
  awk '{ printf "%.2f %.2f\n", $1, $2 + $3 }' "$work/time.out"
}
rate() { echo "scale=1; $1 / $2 / 1000000" | bc -l; }   # bytes, s -> MB/s
ratio() { echo "scale=2; $1 / $2" | bc -l; }
# secs_durable OUT CMD...: the same for a command that does not fsync its
# output OUT: timed until OUT is durable, as vdtool's output is (it fsyncs
# before renaming the image into place).
secs_durable() {
  local out=$1; shift
  secs /bin/sh -c '"$@" && sync "$0"' "$out" "$@"
}

# ---- the image: ext4 filled from /usr with hard links, ~75% full ----
if [ ! -s "$fs" ]; then
  rm -rf stage
  mkdir stage
  /usr/bin/python3 - "$work/stage" $((size_mb * 1024 * 1024 * 75 / 100)) <<'PY'
import os, sys
dst, limit = sys.argv[1], int(sys.argv[2])
total = 0
for root, dirs, files in os.walk("/usr"):
    dirs.sort(); files.sort()
    for f in files:
        p = os.path.join(root, f)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if not os.path.isfile(p) or os.path.islink(p):
            continue
        if total + st.st_size > limit:
            continue
        d = os.path.join(dst, os.path.relpath(root, "/"))
        os.makedirs(d, exist_ok=True)
        try:
            os.link(p, os.path.join(d, f))
        except OSError:
            continue
        total += (st.st_size + 4095) // 4096 * 4096
    if total >= limit * 0.99:
        break
PY
  truncate -s "${size_mb}M" "$fs"
  mkfs.ext4 -q -F -b 4096 -d stage "$fs"
  rm -rf stage
fi
vsize=$(stat -c %s "$fs")
used=$(( $(du -B1 "$fs" | cut -f1) ))
echo "image: ext4 ${size_mb} MiB filled from /usr ($((used / 1048576)) MiB allocated), $cores CPUs"
echo

# ---- compression ----
echo "compress (wall s until the output is durable; CPU s = user + sys)"
printf "%-42s %7s %7s %10s %9s %6s\n" "" "wall s" "CPU s" "MB/s(virt)" "size MiB" "ratio"
row() {  # name "wall cpu" output
  local w=${2% *} c=${2#* } o
  o=$(stat -c %s "$3")
  printf "%-42s %7.2f %7.2f %10.1f %9.1f %6.2f\n" "$1" "$w" "$c" \
    "$(rate "$vsize" "$w")" "$(echo "$o / 1048576" | bc -l)" "$(ratio "$used" "$o")"
}
cat "$fs" > /dev/null
t_v=$(secs "$vdtool" convert -O vdz "$fs" fs.vdz)
row "vdtool convert -O vdz ($cores threads)" "$t_v" fs.vdz
row "vdtool convert -O vdz -o threads=1" "$(secs "$vdtool" convert -O vdz -o threads=1 "$fs" fs1.vdz)" fs1.vdz
row "vdtool convert -O vdz -o level=9 (LZ4HC)" "$(secs "$vdtool" convert -O vdz -o level=9 "$fs" fs9.vdz)" fs9.vdz
t_q=$(secs_durable fs.qcow2 qemu-img convert -c -f raw -O qcow2 "$fs" fs.qcow2)
row "qemu-img convert -c -O qcow2 (zlib)" "$t_q" fs.qcow2
row "lz4 -1 (one thread, whole file)" "$(secs_durable fs.lz4 lz4 -1 -q -f "$fs" fs.lz4)" fs.lz4
rm -f fs1.vdz fs9.vdz
echo "vdz convert speed-up over qemu-img -c qcow2: $(ratio "${t_q% *}" "${t_v% *}")x wall, $(ratio "${t_q#* }" "${t_v#* }")x CPU"
echo

# ---- decompression ----
echo "decompress to a raw file (until durable)"
drow() { printf "%-42s %7.2f %7.2f %10.1f\n" "$1" "${2% *}" "${2#* }" "$(rate "$vsize" "${2% *}")"; }
drow "vdtool convert fs.vdz -O raw" "$(secs "$vdtool" convert -f vdz -O raw fs.vdz out.raw)"; rm -f out.raw
drow "qemu-img convert fs.qcow2 -O raw" "$(secs_durable out.raw qemu-img convert -f qcow2 -O raw fs.qcow2 out.raw)"; rm -f out.raw
drow "lz4 -d" "$(secs_durable out.raw lz4 -d -q -f fs.lz4 out.raw)"; rm -f out.raw
if command -v nbdcopy >/dev/null && command -v qemu-nbd >/dev/null && [ -x "$vdisk_nbd" ]; then
  echo "decompress through NBD into nbdcopy's null: (no disk writes)"
  for srv in "vdisk-nbd fs.vdz" "qemu-nbd fs.qcow2" "vdisk-nbd fs.raw"; do
    sock=$work/nbd.sock
    rm -f "$sock" nbd.pid
    case $srv in
      vdisk-nbd*) "$vdisk_nbd" --fork --pid-file nbd.pid -r -k "$sock" "${srv#* }" ;;
      qemu-nbd*)  qemu-nbd --fork --pid-file=nbd.pid -e 4 -r -f qcow2 -k "$sock" "${srv#* }" ;;
    esac
    drow "$srv | nbdcopy null:" "$(secs nbdcopy "nbd+unix:///?socket=$sock" null:)"
    [ -s nbd.pid ] && kill "$(cat nbd.pid)" 2>/dev/null || true
    sleep 0.5
  done
fi
echo

# ---- sequential reads on one thread ----
vdz_read=$top_builddir/bench/vdz-read    # built by make (bench/Makefile.inc)
echo "sequential reads through libvdisk, one thread, 1 MiB requests:"
for img in fs.vdz fs.raw; do
  "$vdz_read" "$img" | sed "s/^/  $img  /"
done
echo "  fs.vdz, 64 KiB requests:"
"$vdz_read" fs.vdz 65536 | sed "s/^/  fs.vdz  /"
# The same data decompressed by liblz4 alone, in blocks of fs.vdz's
# cluster size (lz4 -b: in memory, no file reads, no checksums),
# alternating with vdz-read three times; medians.
cluster_kb=$(( $("$vdtool" info fs.vdz | awk '$1 == "cluster_size:" {print $2}') / 1024 ))
lz4_gb() {  # lz4 -b decompression GB/s of the raw image in $1 KiB blocks
  lz4 -b1 -B"$1"KB "$fs" 2>&1 | grep -o ',[0-9.]* MB/s' | tail -1 | tr -d , |
    awk '{printf "%.2f", $1 / 1000}'
}
med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
vdz_gbs= lz4_gbs=
for _ in 1 2 3; do
  vdz_gbs="$vdz_gbs $("$vdz_read" fs.vdz | awk '$1 == "all" {print $6}')"
  lz4_gbs="$lz4_gbs $(lz4_gb "$cluster_kb")"
done
vm=$(echo "$vdz_gbs" | med) lm=$(echo "$lz4_gbs" | med)
echo "  vdz-read (whole disk, 1 MiB) $vm GB/s vs lz4 -b1 -B${cluster_kb}KB decompression $lm GB/s: $(ratio "$vm" "$lm") (goal 0.90)"
echo

# ---- cluster sizes (VDZ_BENCH_CLUSTERS="16 32 64 128", in KiB; off by default) ----
if [ -n "${VDZ_BENCH_CLUSTERS:-}" ]; then
  echo "cluster sizes: stored ratio, one-thread sequential (1 MiB) and random 4 KiB reads"
  echo "through libvdisk (vdz-read; 20000 reads at fixed random offsets), lz4 -b at that block size:"
  printf "  %8s %6s %10s %10s %12s\n" cluster ratio "seq GB/s" "lz4 GB/s" "rand 4K/s"
  for kb in $VDZ_BENCH_CLUSTERS; do
    "$vdtool" convert -O vdz -o cluster_size="$kb"K "$fs" cs.vdz
    r=$("$vdtool" info cs.vdz | awk '$1 == "compression_ratio:" {print $2}')
    s=$("$vdz_read" cs.vdz | awk '$1 == "all" {print $6}')
    q=$("$vdz_read" cs.vdz 4096 20000 | awk '{print $(NF - 1)}')
    printf "  %6s K %6s %10s %10s %12s\n" "$kb" "$r" "$s" "$(lz4_gb "$kb")" "$q"
    rm -f cs.vdz
  done
  echo
fi

# ---- random 4 KiB reads over NBD ----
if fio --enghelp=nbd >/dev/null 2>&1 && [ -x "$vdisk_nbd" ]; then
  echo "random 4 KiB reads through vdisk-nbd (fio nbd engine, iodepth 32, 15 s, alternating):"
  sum_raw=0 sum_vdz=0
  for round in 1 2; do
    for img in fs.raw fs.vdz; do
      sock=$work/nbd.sock
      rm -f "$sock" nbd.pid
      "$vdisk_nbd" --fork --pid-file nbd.pid -t -r -k "$sock" "$img"
      fio --name=rr --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
          --rw=randread --bs=4k --iodepth=32 --runtime=15 --time_based \
          --size="$vsize" --output-format=terse --terse-version=3 \
          --output=fio.out >/dev/null
      kill "$(cat nbd.pid)"
      sleep 0.5
      # terse v3: field 8 = read IOPS
      iops=$(cut -d';' -f8 fio.out)
      printf "  round %d %-8s %8s IOPS\n" "$round" "$img" "$iops"
      if [ "$img" = fs.raw ]; then sum_raw=$((sum_raw + iops)); else sum_vdz=$((sum_vdz + iops)); fi
    done
  done
  echo "  vdz / raw: $(ratio "$sum_vdz" "$sum_raw")"
fi
