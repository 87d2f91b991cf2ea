#!/usr/bin/env bash
# Proof that the guest scenarios catch a broken server (issue 18): build
# a copy of the committed tree with one deliberate fault from
# tests/guest/broken/ and run a guest test against it; the test must FAIL.
# Not part of make check (it builds the whole tree once per fault).
#   tests/guest/prove-broken.sh [FAULT [TEST]]
#     FAULT  drop-flush (FLUSH acknowledged without flushing, FUA ignored)
#            or corrupt-write (one large write of file data has a byte
#            flipped); default: both, each in turn
#     TEST   default: guest-nbd-client.sh (the power cut catches a dropped
#            flush); guest-boot.sh works too
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
faults=${1:-drop-flush corrupt-write}
test=${2:-guest-nbd-client.sh}
work=$(mktemp -d /tmp/vdisk-broken.XXXXXX)
trap 'rm -rf "$work"' EXIT
rc=0
for fault in $faults; do
  tree=$work/$fault
  mkdir -p "$tree"
  git -C "$src" archive HEAD | tar -x -C "$tree"
  (cd "$tree" && patch -p1 --quiet < "tests/guest/broken/$fault.patch") ||
    { echo "$fault: the patch no longer applies to nbd-server/conn.c"; exit 2; }
  (cd "$tree" && autoreconf -fi >/dev/null 2>&1 && ./configure -q >/dev/null &&
   make -j2 >/dev/null 2>&1) || { echo "$fault: the build failed"; exit 2; }
  if (cd "$tree" && make check TESTS="tests/integration/$test" >/dev/null 2>&1); then
    echo "NOT CAUGHT: $test passed against a server with $fault"
    rc=1
  else
    echo "caught: $test failed against a server with $fault:"
    grep -E 'VDISK-CHECK FAIL|^FAIL' "$tree/tests/integration/${test%.sh}.log" | head -n 4
  fi
done
exit $rc
