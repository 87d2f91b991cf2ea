#!/usr/bin/env bash
# Power cuts at random moments under a writer, many times (issue 10, 10b;
# VHD_CRASH_ITERATIONS, default 30, VHD_CRASH_SEED to replay a failure).
# The writer runs with an LD_PRELOAD shim (tests/unit/vdtest-shim.c) that
# journals every write since the last fdatasync and kills the writer right
# after a random write; then powercut.py rolls the image back to its last sync and replays a random
# subset of the later writes, some torn, the file size grown or not.
# (Keeping all of them is the plain kill -9 case.)  Then each image must:
#  - pass `vdtool check` with at most leaks (exit 0 or 3), before any repair;
#  - hold every byte written before the last completed flush, and show
#    later writes whole-sector or not at all;
#  - after one read-write open (which repairs what the cut left) end with
#    its footer, still check clean or leaks only, with the same contents;
#  - be cleaned up by `check -r leaks` without a change of contents.
# Two write patterns: "spread" jumps around the disk, "alloc" appends a new
# block beyond the old end of file in every round (the case a cut breaks
# most easily: block kept, footer after it lost).
. "${top_srcdir:-.}/tests/functions.sh"
requires /usr/bin/python3
need_crash_writer
cd "$VD_TMP"
nslots=1024                      # 32 MiB of 32 KiB slots, 64 blocks
iterations=${VHD_CRASH_ITERATIONS:-30}
seed0=${VHD_CRASH_SEED:-$RANDOM}
echo "seed $seed0, $iterations iterations"

# verify IMAGE PATTERN LAST: the contents as described above.
verify() {
  vdtool convert -O raw "$1" out.raw
  /usr/bin/python3 - out.raw $nslots "$2" "$3" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
nslots, pattern, last = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
SLOT, SPB = 32 << 10, 16
nblk = nslots // SPB
def slot(i):
    if pattern == "alloc":
        return (i % nblk) * SPB + (i // nblk) % SPB
    return i * 7919 % nslots
owner = {slot(i): i for i in range(nslots)}
whole = [bytes([v % 251 + 1]) * SLOT for v in range(251)]
zero = bytes(SLOT)
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
            assert sec == want or sec == bytes(512), (s, i, k, "torn or foreign data")
PY
}

for it in $(seq "$iterations"); do
  seed=$((seed0 + it))
  pattern=alloc; [ $((it % 3)) = 0 ] && pattern=spread
  rm -f img.vhd journal
  vdtool create -q -f vhd -o block_size=512K img.vhd 32M
  # The crash: right after a random write of the first ~130 rounds (the
  # "alloc" pattern appends a block in each of the first 64).
  RANDOM=$seed
  cut_after=$((1 + RANDOM % 300))
  rc=0
  { LD_PRELOAD=$shim VDTEST_SHIM_FILE=img.vhd VDTEST_JOURNAL=journal \
      VDTEST_CUT_AFTER=$cut_after "$writer" img.vhd $nslots $pattern \
      > log.txt 2>err.txt; } 2>/dev/null || rc=$?
  [ $rc = 137 ] || fail "iteration $it: the writer exited $rc, not killed: $(cat err.txt)"
  last=$(awk '/^flushed/ {n=$2} END {print (n == "" ? -1 : n)}' log.txt)
  cut=$(/usr/bin/python3 "$top_srcdir/tests/integration/powercut.py" img.vhd journal "$seed")
  what="iteration $it (seed $seed, $pattern, cut after write $cut_after, last flushed round $last, $cut)"
  cp --sparse=always img.vhd cut.vhd

  rc=0; vdtool check img.vhd > check.txt 2>&1 || rc=$?
  [ $rc = 0 ] || [ $rc = 3 ] || fail "$what: check exit $rc: $(cat check.txt)"
  verify img.vhd $pattern "$last" || fail "$what: contents after the cut"
  mv out.raw before.raw

  # The next user opens it read-write: that repairs the tail footer.
  "$writer" img.vhd 0 || fail "$what: read-write open failed"
  /usr/bin/python3 -c '
import sys; d = open(sys.argv[1], "rb"); d.seek(-512, 2)
sys.exit(d.read(8) != b"conectix")' img.vhd || fail "$what: no footer at the end after a read-write open"
  rc=0; vdtool check img.vhd > check.txt 2>&1 || rc=$?
  [ $rc = 0 ] || [ $rc = 3 ] || fail "$what: check after open exit $rc: $(cat check.txt)"
  vdtool compare -F raw img.vhd before.raw >/dev/null || fail "$what: the read-write open changed the contents"

  # check -r leaks on the state the cut left (no open in between).
  rc=0; vdtool check -q -r leaks cut.vhd || rc=$?
  [ $rc = 0 ] || fail "$what: check -r leaks exit $rc"
  rc=0; vdtool check cut.vhd > check.txt 2>&1 || rc=$?
  [ $rc = 0 ] || fail "$what: still not clean after check -r leaks: $(cat check.txt)"
  vdtool compare -F raw cut.vhd before.raw >/dev/null || fail "$what: -r leaks changed the contents"
done
echo PASS
