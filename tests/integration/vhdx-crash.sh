#!/usr/bin/env bash
# Power cuts at random moments under a VHDX writer (VHDX_CRASH_ITERATIONS,
# default 10; VHDX_CRASH_SEED replays a failure).  As vhd-crash.sh: the
# writer (tests/unit/test-vhd-crash-writer, which opens any format) runs
# under the LD_PRELOAD shim that journals writes since the last fdatasync
# and kills it after a random write; powercut.py rolls the image back to
# its last sync and replays a random subset of the later writes, some
# torn, the file grown or not.  Then:
#  - a read-only open (log replayed in memory) holds every byte written
#    before the last completed flush, `vdtool check` finds it clean or
#    reports only leaks (exit 0 or 3) and writes nothing, later writes whole-sector or not at
#    all, and leaves the file unchanged;
#  - qemu, replaying the log with its own code (qemu-img check -r all),
#    reads the same content, and then checks clean;
#  - a read-write open (which replays into the file) keeps the content and
#    leaves a clean log.
# Every other round writes into a differencing child of a parent holding
# 0xfe everywhere (partially present blocks, sector bitmaps through the
# log): unflushed sectors read as the parent's or the new data, never
# zeros; qemu cannot open such a child, so the independent reader
# (tests/vhdxgen `read`) judges it after the read-write open.
# Every fourth round ("wide") spreads the writes over a 640 MiB image, so
# that the blocks a flush commits sit in two BAT pages (one log entry of
# two data descriptors); cuts before a flush leave blocks nothing names
# (leaks, which both checks accept).
. "${top_srcdir:-.}/tests/functions.sh"
requires /usr/bin/python3 qemu-img
need_crash_writer
cd "$VD_TMP"
nslots=1024                      # 32 MiB of 32 KiB slots, 32 blocks of 1 MiB
wide=20480                       # 640 MiB: BAT pages 0 and 1
iterations=${VHDX_CRASH_ITERATIONS:-10}
seed0=${VHDX_CRASH_SEED:-$RANDOM}
echo "seed $seed0, $iterations iterations"

verify() {   # RAW NSLOTS PATTERN LAST OLD (the byte unwritten sectors hold)
  /usr/bin/python3 - "$@" <<'PY'
import mmap, sys
f = open(sys.argv[1], "rb")
data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
nslots, pattern, last = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
old = int(sys.argv[5])
SLOT, SPB = 32 << 10, 16
nblk = nslots // SPB
def slot(i):
    if pattern == "alloc":
        return (i % nblk) * SPB + (i // nblk) % SPB
    return i * 7919 % nslots
owner = {slot(i): i for i in range(nslots)}
whole = [bytes([v % 251 + 1]) * SLOT for v in range(251)]
zero = bytes([old]) * SLOT
view = memoryview(data)
for s in range(nslots):
    i = owner[s]
    chunk = view[s * SLOT:(s + 1) * SLOT]
    if chunk == whole[i % 251] or (i > last and chunk == zero):
        continue
    chunk = bytes(chunk)
    want = bytes([i % 251 + 1]) * 512
    for k in range(0, SLOT, 512):
        sec = chunk[k:k + 512]
        if i <= last:
            assert sec == want, (s, i, k, "flushed write lost")
        else:
            assert sec == want or sec == bytes([old]) * 512, (s, i, k, "torn or foreign data")
PY
}

gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
head -c $((nslots * 32 * 1024)) /dev/zero | tr '\0' '\376' > parent.raw
vdtool convert -O vhdx -o block_size=1M parent.raw parent.vhdx
dirty=0
for it in $(seq "$iterations"); do
  seed=$((seed0 + it))
  pattern=alloc; [ $((it % 3)) = 0 ] && pattern=spread
  diff=$((it % 2 == 0))
  n=$nslots
  if [ $((it % 4)) = 1 ]; then
    pattern=spread n=$wide
  fi
  old=0
  rm -f img.vhdx journal
  if [ $diff = 1 ]; then
    vdtool create -q -f vhdx -b parent.vhdx img.vhdx
    old=254
  else
    vdtool create -q -f vhdx -o block_size=1M img.vhdx $((n / 32))M
  fi
  RANDOM=$seed
  cut_after=$((1 + RANDOM % 300))
  rc=0
  { LD_PRELOAD=$shim VDTEST_SHIM_FILE=img.vhdx VDTEST_JOURNAL=journal \
      VDTEST_CUT_AFTER=$cut_after "$writer" img.vhdx $n $pattern \
      > log.txt 2>err.txt; } 2>/dev/null || rc=$?
  [ $rc = 137 ] || fail "iteration $it: the writer exited $rc, not killed: $(cat err.txt)"
  last=$(awk '/^flushed/ {n=$2} END {print (n == "" ? -1 : n)}' log.txt)
  cut=$(/usr/bin/python3 "$top_srcdir/tests/integration/powercut.py" img.vhdx journal "$seed")
  what="iteration $it (seed $seed, $pattern over $n slots, differencing $diff, cut after write $cut_after, last flushed round $last, $cut)"

  sum=$(md5sum < img.vhdx)
  vdtool convert -O raw img.vhdx ro.raw || fail "$what: read-only open"
  verify ro.raw $n $pattern "$last" $old || fail "$what: contents after the cut"
  [ "$(md5sum < img.vhdx)" = "$sum" ] || fail "$what: a read-only open wrote"
  rc=0; vdtool check img.vhdx > chk.txt 2>&1 || rc=$?
  [ $rc = 0 ] || [ $rc = 3 ] || fail "$what: check exit $rc (only leaks allowed): $(cat chk.txt)"
  [ "$(md5sum < img.vhdx)" = "$sum" ] || fail "$what: check without -r wrote"
  vdtool info img.vhdx | grep -q '^ *log: clean$' || dirty=$((dirty + 1))

  if [ $diff = 0 ]; then
    cp --sparse=always img.vhdx q.vhdx
    qemu-img check -q -r all q.vhdx >/dev/null 2>&1 || true
    qemu-img check q.vhdx > chk.txt 2>&1 || fail "$what: qemu-img check after its replay: $(cat chk.txt)"
    qemu-img compare -f vhdx -F raw q.vhdx ro.raw >/dev/null || fail "$what: qemu's replay reads differently"
  fi

  "$writer" img.vhdx 0 || fail "$what: read-write open failed"
  vdtool info img.vhdx | grep -q '^ *log: clean$' || fail "$what: log not clean after a read-write open"
  vdtool compare -F raw img.vhdx ro.raw >/dev/null || fail "$what: the read-write open changed the contents"
  if [ $diff = 0 ]; then
    qemu-img check img.vhdx > chk.txt 2>&1 || fail "$what: qemu-img check after our replay: $(cat chk.txt)"
  else
    gen read img.vhdx g.raw || fail "$what: the independent reader refuses the child"
    cmp g.raw ro.raw >/dev/null || fail "$what: the independent reader reads the child differently"
  fi
done
echo "PASS ($dirty of $iterations cuts left a log to replay)"
