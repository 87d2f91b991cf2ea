# Shared helpers for the shell integration tests.  Source it first:
#   . "$top_srcdir/tests/functions.sh"
# Exit codes follow automake: 0 pass, 77 skip, anything else fail.
set -eu

: "${top_srcdir:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${top_builddir:=$top_srcdir}"
top_srcdir=$(cd "$top_srcdir" && pwd)
top_builddir=$(cd "$top_builddir" && pwd)
export LC_ALL=C

# Our programs, optionally under valgrind (make check-valgrind).
_vd_run() {
  local prog=$1; shift
  if [ -n "${VD_VALGRIND:-}" ]; then
    "$top_builddir/libtool" --mode=execute $VD_VALGRIND "$prog" "$@"
  else
    "$prog" "$@"
  fi
}
vdtool()     { _vd_run "$top_builddir/tools/vdtool" "$@"; }
vdisk_nbd()  { _vd_run "$top_builddir/nbd-server/vdisk-nbd" "$@"; }
vdisk_fuse() { _vd_run "$top_builddir/fuse-frontend/vdisk-fuse" "$@"; }

# public_copy PROG: print the path of a copy of the build's PROG
# (tools/vdtool, say) that any user can run: the program and libvdisk in
# a 0755 folder under a 0711 $VD_TMP, for tests that drop privileges while
# the checkout may sit in a folder only root can enter.  The copy finds
# its library through LD_LIBRARY_PATH, which the caller passes
# ("env LD_LIBRARY_PATH=$VD_TMP/public ...").
public_copy() {
  local d="$VD_TMP/public" name
  name=$(basename "$1")
  mkdir -p "$d" && chmod 0755 "$d" && chmod 0711 "$VD_TMP"
  cp "$top_builddir/$(dirname "$1")/.libs/$name" "$d/$name" 2>/dev/null ||
    cp "$top_builddir/$1" "$d/$name"
  cp -P "$top_builddir"/vdisk/.libs/libvdisk.so* "$d/" 2>/dev/null || true
  chmod -R a+rX "$d"
  echo "$d/$name"
}

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*" >&2; exit 77; }

# requires CMD...: skip the test (exit 77) when a peer is missing.
requires() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || skip "$c is not installed"
  done
}

# A private scratch directory, removed at exit together with anything
# registered with on_exit (kept after a failure when VD_KEEP is set).
VD_TMP=$(mktemp -d "${TMPDIR:-/tmp}/vdtest.XXXXXX")
# Servers publish their RAID runtime entries (and vdtool looks them up)
# here rather than in the user's real runtime folder.
export VDISK_RUNTIME_DIR="$VD_TMP/run"
_vd_start=$SECONDS
_vd_exit_cmds=()
on_exit() { _vd_exit_cmds+=("$*"); }
_vd_cleanup() {
  local rc=$? i
  for ((i=${#_vd_exit_cmds[@]}-1; i>=0; i--)); do
    eval "${_vd_exit_cmds[i]}" >/dev/null 2>&1 || true
  done
  # VD_KEEP=1 keeps the scratch folder of a failed test for a look.
  if [ -n "${VD_KEEP:-}" ] && [ "$rc" -ne 0 ]; then
    echo "kept $VD_TMP" >&2
  else
    rm -rf "$VD_TMP"
  fi
  # One line per test for .ci/run's list of the slowest tests.
  echo "vdtest-duration: $((SECONDS - _vd_start)) s" >&2
  exit $rc
}
trap _vd_cleanup EXIT
trap 'exit 130' INT TERM

# expect_error REGEX CMD...: CMD must exit non-zero (not by a signal, not
# 77) and print exactly one line on stderr matching REGEX.
expect_error() {
  local re=$1; shift
  local rc=0 out="$VD_TMP/.stderr"
  "$@" >/dev/null 2>"$out" || rc=$?
  [ "$rc" -ne 0 ] || fail "'$*' succeeded, expected an error matching /$re/"
  [ "$rc" -lt 128 ] || fail "'$*' died with signal $((rc-128)): $(cat "$out")"
  local n
  n=$(grep -vc '^==' "$out" || true)
  [ "$n" -eq 1 ] || fail "'$*' printed $n lines on stderr, expected one: $(cat "$out")"
  grep -Eq -- "$re" "$out" || fail "'$*' said '$(cat "$out")', expected /$re/"
}

# power_cut IMG SEED MAXCUT CMD...: run CMD under the test shim
# (tests/unit/vdtest-shim.c) journaling IMG's writes and killing CMD after
# a random 1st..MAXCUT-th write (RANDOM seeded with SEED), then roll IMG
# back as a power cut would (powercut.py).  Prints "exit RC, CUT" (RC 0:
# CMD finished, no cut); fails the test when CMD exits otherwise.
power_cut() {
  local img=$1 seed=$2 max=$3 rc=0 cut=none j="$VD_TMP/.journal"
  shift 3
  RANDOM=$seed
  rm -f "$j"
  { LD_PRELOAD="$top_builddir/tests/unit/.libs/libvdtest-shim.so" \
      VDTEST_SHIM_FILE="$img" VDTEST_JOURNAL="$j" \
      VDTEST_CUT_AFTER=$((1 + RANDOM % max)) "$@" >"$VD_TMP/.cut" 2>&1; } \
      2>/dev/null || rc=$?
  [ $rc = 0 ] || [ $rc = 137 ] ||
    fail "seed $seed: '$*' exited $rc: $(cat "$VD_TMP/.cut")"
  [ $rc = 0 ] ||
    cut=$(/usr/bin/python3 "$top_srcdir/tests/integration/powercut.py" "$img" "$j" "$seed")
  echo "exit $rc, $cut"
}

# check_leaks_only IMG WHAT: qemu-img check finds IMG clean or with leaks
# only (else the test fails naming WHAT); prints "clean" or "leaks".
check_leaks_only() {
  local rc=0
  qemu-img check "$1" >"$VD_TMP/.check" 2>&1 || rc=$?
  case $rc in
    0) echo clean ;;
    3) echo leaks ;;
    *) fail "$2: qemu-img check exit $rc (only leaks allowed): $(cat "$VD_TMP/.check")" ;;
  esac
}

# Deterministic pattern data: pattern_file FILE SIZE SEED writes SIZE bytes.
pattern_bytes() {
  local n=$1 seed=$2
  /usr/bin/python3 -c 'import sys,random
r=random.Random(int(sys.argv[2])); n=int(sys.argv[1])
sys.stdout.buffer.write(r.randbytes(n))' "$n" "$seed"
}

# Wait until a TCP port on 127.0.0.1 or a Unix socket accepts, at most ~10 s.
wait_for_socket() {
  local what=$1 i
  for i in $(seq 100); do
    if [ -S "$what" ] || { [[ "$what" =~ ^[0-9]+$ ]] && (exec 3<>"/dev/tcp/127.0.0.1/$what") 2>/dev/null; }; then
      return 0
    fi
    sleep 0.1
  done
  fail "nothing listening on $what after 10 s"
}

# A free TCP port on 127.0.0.1.
free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# vd_nbd_io IMAGE MODEL CMD...: the qemu-io commands CMD through vdisk-nbd
# into IMAGE (qemu-io as the NBD client), and the same onto the raw MODEL.
vd_nbd_io() {
  local img=$1 model=$2; shift 2
  local args=() c
  for c in "$@"; do args+=(-c "$c"); done
  vdisk_nbd -k "$VD_TMP/sock" --fork --pid-file "$VD_TMP/pid" "$img"
  wait_for_socket "$VD_TMP/sock"
  qemu-io -f raw "${args[@]}" "nbd+unix:///?socket=$VD_TMP/sock" > "$VD_TMP/io.txt" ||
    fail "qemu-io through vdisk-nbd: $(cat "$VD_TMP/io.txt")"
  ! grep -qi 'error\|fail' "$VD_TMP/io.txt" || fail "qemu-io: $(cat "$VD_TMP/io.txt")"
  # The server exits after its only client; wait so the image is closed.
  for _ in $(seq 100); do
    [ -f "$VD_TMP/pid" ] && kill -0 "$(cat "$VD_TMP/pid")" 2>/dev/null || break
    sleep 0.05
  done
  rm -f "$VD_TMP/sock"
  qemu-io -f raw "${args[@]}" "$model" >/dev/null
}

# need_shim: $shim, the LD_PRELOAD test shim (tests/unit/vdtest-shim.c), or
# skip; a sanitized binary wants its runtime first in the library list.
need_shim() {
  shim="$top_builddir/tests/unit/.libs/libvdtest-shim.so"
  [ -f "$shim" ] || skip "the test shim is not built"
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
}

# need_crash_writer: $writer (tests/unit/test-vhd-crash-writer) and $shim,
# or skip.
need_crash_writer() {
  writer="$top_builddir/tests/unit/test-vhd-crash-writer"
  [ -x "$writer" ] || skip "test-vhd-crash-writer not built"
  need_shim
}
