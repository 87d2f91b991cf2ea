#!/usr/bin/env bash
# kill -9 a writer at random moments, many times: each image must open,
# hold every byte written before the last completed flush, show later
# writes whole-sector or not at all, and check must report at most leaks,
# which check -r leaks reclaims without changing the contents.
. "${top_srcdir:-.}/tests/functions.sh"
requires /usr/bin/python3
writer="$top_builddir/tests/unit/test-vhd-crash-writer"
[ -x "$writer" ] || skip "test-vhd-crash-writer not built"
cd "$VD_TMP"
nslots=2048                      # 64 MiB of 32 KiB slots
iterations=${VHD_CRASH_ITERATIONS:-12}
rnd() { /usr/bin/python3 -c "import random; print(random.Random($1).randint(30, 900))"; }

for it in $(seq "$iterations"); do
  vdtool create -q -f vhd -o block_size=512K img.vhd 64M
  "$writer" img.vhd $nslots > log.txt &
  pid=$!
  sleep "$(( $(rnd "$it") ))e-3"
  kill -9 $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  last=$(awk '/^flushed/ {n=$2} END {print (n == "" ? -1 : n)}' log.txt)

  rc=0; vdtool check img.vhd > check.txt 2>&1 || rc=$?
  [ $rc = 0 ] || [ $rc = 3 ] || fail "iteration $it: check exit $rc: $(cat check.txt)"
  vdtool convert -O raw img.vhd out.raw
  /usr/bin/python3 - out.raw $nslots "$last" <<'PY' || fail "iteration $it: flushed data lost (last flushed round $last)"
import sys
data = open(sys.argv[1], "rb").read()
nslots, last = int(sys.argv[2]), int(sys.argv[3])
SLOT = 32 << 10
owner = {}
for i in range(nslots):
    owner[i * 7919 % nslots] = i
for s in range(nslots):
    i = owner[s]
    chunk = data[s * SLOT:(s + 1) * SLOT]
    want = bytes([i % 251 + 1]) * 512
    for k in range(0, SLOT, 512):
        sec = chunk[k:k + 512]
        if i <= last:
            assert sec == want, (s, i, k, "flushed write lost")
        else:
            assert sec == want or sec == bytes(512), (s, i, k, "torn or foreign data")
PY
  if [ $rc = 3 ]; then
    vdtool check -q -r leaks img.vhd || fail "iteration $it: check -r leaks did not clean up"
    vdtool compare -F raw img.vhd out.raw >/dev/null || fail "iteration $it: -r leaks changed the contents"
  fi
done
exit 0
