#!/usr/bin/env bash
# VHDX allocations batched until the next flush (vdisk/vhdx-write.c): a
# write that allocates a block publishes its BAT entry at once and leaves
# its page pending; the next flush writes every pending page in one log
# entry (one data descriptor each) between flushes.
#  - fdatasync/fsync calls (strace) of `vdtool convert -t writeback` into a
#    VHDX: the same count for 8 allocated blocks as for 1 (it was three
#    more per block), and the output judged by qemu-img check and compare;
#  - fio with crc32c verification over vdisk-nbd on a fresh VHDX with
#    1 MiB blocks (many first touches from 32 requests in flight): reads
#    see acknowledged writes at once, the image is clean for qemu-img check
#    after the server closes it, and a second server reads back the same;
#  - a writer killed right after a flush wrote its multi-descriptor log
#    entry, before the pages are in place: qemu's replay (qemu-img check
#    -r all) and ours (read-only in memory, read-write into the file) give
#    the content the flush covered.
. "${top_srcdir:-.}/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires strace qemu-img qemu-io /usr/bin/python3
need_crash_writer
# LeakSanitizer cannot run under ptrace.
export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0"
cd "$VD_TMP"
M=$((1 << 20))

# syncs SOURCE: the fdatasync and fsync calls of a writeback convert of
# SOURCE into out.vhdx (32 MiB blocks), which qemu-img must accept.
syncs() {
  rm -f out.vhdx
  strace -f -qq -e trace=fdatasync,fsync -o st.txt \
    "$top_builddir/tools/vdtool" convert -t writeback -O vhdx "$1" out.vhdx ||
    fail "convert of $1"
  qemu-img check -f vhdx out.vhdx > chk.txt 2>&1 || { cat chk.txt; fail "$1: qemu-img check"; }
  qemu-img compare -f raw -F vhdx "$1" out.vhdx >/dev/null || fail "$1: qemu-img compare"
  grep -cE '(fdatasync|fsync)\(' st.txt
}
truncate -s $((256 * M)) one.raw eight.raw
qemu-io -f raw -c 'write -P 0x41 4096 64k' one.raw >/dev/null
for b in 0 1 2 3 4 5 6 7; do
  qemu-io -f raw -c "write -P $((0x50 + b)) $((b * 32 * M + 12288)) 64k" eight.raw >/dev/null
done
n1=$(syncs one.raw)
n8=$(syncs eight.raw)
echo "convert -t writeback: $n1 syncs for 1 block, $n8 for 8"
[ "$n8" = "$n1" ] || fail "8 new blocks cost $n8 syncs, 1 block $n1: allocations flush one by one"

# fio, 32 requests in flight, onto a fresh image whose 1 MiB blocks are
# allocated as the writes first touch them.
if command -v fio >/dev/null && fio --enghelp=nbd >/dev/null 2>&1; then
  vdtool create -q -f vhdx -o block_size=1M f.vhdx 96M
  fio_run() {  # NAME EXTRA-ARGS...
    local name=$1; shift
    fio --name="$name" --ioengine=nbd --uri="$nbd_uri" --iodepth=32 \
      --rw=randwrite --bs=4k --size=96M --io_size=24M --randseed=17 \
      --verify=crc32c --verify_fatal=1 --output=fio.out "$@" ||
      fail "fio $name: $(cat fio.out)"
  }
  start_nbd f.vhdx
  fio_run write
  stop_nbd
  qemu-img check -f vhdx f.vhdx > chk.txt 2>&1 || { cat chk.txt; fail "fio image: qemu-img check"; }
  vdtool info f.vhdx | grep -q '^ *log: clean$' || fail "fio image: log left dirty"
  start_nbd f.vhdx
  fio_run verify --verify_only
  stop_nbd
else
  echo "fio with its nbd engine is not installed: no fio run"
fi

# Kill right after a multi-descriptor log entry is written.  The writer
# (single-threaded, see vhdx-crash.sh) writes 32 KiB slots i * 7919 mod
# 32768 of a 1 GiB image with 1 MiB blocks, flushing every 4 rounds: the
# first flush commits blocks 0, 247, 494 (BAT page 0) and 742 (page 1).
# The entry goes live with the header write that follows it (naming its
# LogGuid).  A first run under strace finds the index of that header's
# write among the image's writes; the second run is killed by the shim
# right after it.
nslots=32768
vdtool create -q -f vhdx -o block_size=1M img.vhdx 1G
cp img.vhdx dry.vhdx
{ strace -f -qq -s 0 -e trace=pwrite64 -o w.txt env LD_PRELOAD="$shim" \
    VDTEST_SHIM_FILE=dry.vhdx VDTEST_CUT_AFTER=80 "$writer" dry.vhdx $nslots spread \
    > /dev/null 2>&1; } 2>/dev/null || true
k=$(/usr/bin/python3 - w.txt $M <<'PY'
import re, sys
M = int(sys.argv[2])
n, entry = 0, False
for line in open(sys.argv[1]):
    # Every pwrite of the writer goes to the image.
    m = re.search(r'pwrite64\(\d+, .*, (\d+), (\d+)\) += \d+$', line)
    if not m:
        continue
    ln, off = (int(x) for x in m.groups())
    n += 1
    if entry:
        if off in (64 << 10, 128 << 10):
            print(n)                 # the header that makes it live
        break
    entry = M <= off < 2 * M and ln >= 3 * 4096   # two descriptors or more
PY
)
[ -n "$k" ] || fail "no log entry with several data descriptors, then a header, among the writer's first writes"
rc=0
{ LD_PRELOAD=$shim VDTEST_SHIM_FILE=img.vhdx VDTEST_CUT_AFTER=$k \
    "$writer" img.vhdx $nslots spread > log.txt 2>err.txt; } 2>/dev/null || rc=$?
[ $rc = 137 ] || fail "the writer exited $rc, not killed after write $k: $(cat err.txt)"
grep -q . log.txt && fail "the writer finished a flush: $(cat log.txt)"
# The pages are only in the log: block 742's entry is still zero in place.
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
[ "$(gen states img.vhdx | awk '$1 == 742 {print $2}')" = 0 ] ||
  fail "block 742's BAT page is in place already: not the cut this test is after"
vdtool info img.vhdx | grep -q '^ *log: dirty' || fail "no log to replay"
# What the flush covers: rounds 0-3.
/usr/bin/python3 - want.raw $nslots <<'PY'
import sys
f = open(sys.argv[1], "wb")
f.truncate(1 << 30)
for i in range(4):
    f.seek(i * 7919 % int(sys.argv[2]) * 32768)
    f.write(bytes([i % 251 + 1]) * 32768)
PY
sum=$(md5sum < img.vhdx)
vdtool convert -O raw img.vhdx ro.raw || fail "read-only open of the dirty image"
cmp want.raw ro.raw || fail "our replay (in memory) reads differently"
[ "$(md5sum < img.vhdx)" = "$sum" ] || fail "a read-only open wrote"
cp --sparse=always img.vhdx q.vhdx
qemu-img check -q -r all q.vhdx >/dev/null 2>&1 || true
qemu-img check q.vhdx > chk.txt 2>&1 || { cat chk.txt; fail "qemu-img check after its replay"; }
qemu-img compare -f vhdx -F raw q.vhdx want.raw >/dev/null || fail "qemu's replay reads differently"
"$writer" img.vhdx 0 || fail "read-write open"
vdtool info img.vhdx | grep -q '^ *log: clean$' || fail "log not clean after our replay"
qemu-img check img.vhdx > chk.txt 2>&1 || { cat chk.txt; fail "qemu-img check after our replay"; }
qemu-img compare -f vhdx -F raw img.vhdx want.raw >/dev/null || fail "our replay into the file reads differently"
exit 0
