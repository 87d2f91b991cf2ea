#!/usr/bin/env bash
# RAID side files and the online request file against a hostile neighbour
# (issue 10, items 3, 4, 9 and 11):
#  - symlinks planted at every temporary name the RAID code ever used, and
#    at the final names, never make create / fail / replace / serve write
#    through them (the victim file stays byte-identical);
#  - the descriptor rewrite fsyncs its folder after the rename (strace);
#  - a request written by another uid (setpriv as nobody) into a
#    world-writable folder, a symlinked or world-writable request file are
#    ignored with a log line; malformed requests are answered with an error
#    and change nothing;
#  - a FIFO as the request file never blocks the server (SIGTERM stops it),
#    a FIFO as a member never blocks an opener, and a descriptor naming
#    itself (directly or through another) fails in one line, no crash.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires cmp timeout

cd "$VD_TMP"
printf 'precious host data\n' > victim
cp victim victim.orig
victim_unchanged() {
  cmp -s victim victim.orig || fail "$1: the symlinked victim file was written"
  [ ! -L "$2" ] || fail "$1: $2 is now a symlink"
}

# ---- item 3: symlinks at every temporary name ----
# The names the RAID code used before (fixed), and the final names.
for n in a.vdraid.tmpXX a.vdraid.result.tmp a.vdraid.served.tmp \
         a.vdraid.request.tmp a.vdraid.result a.vdraid.served; do
  ln -s "$VD_TMP/victim" "$n"
done
vdtool raid create -l 1 -c 64K --size 4M a.vdraid m0 m1 m2
victim_unchanged "raid create" a.vdraid
grep -q '^VDRAID 1$' a.vdraid || fail "the descriptor was not written"
ls a.vdraid.tmp-* >/dev/null 2>&1 && fail "a temporary file was left behind"

start_nbd a.vdraid
for i in $(seq 100); do [ -f a.vdraid.served ] && [ ! -L a.vdraid.served ] && break; sleep 0.1; done
victim_unchanged "serving" a.vdraid.served
[ "$(cat a.vdraid.served)" = "$(cat "$nbd_pidfile")" ] ||
  fail "a.vdraid.served does not hold the server's pid"
ln -s "$VD_TMP/victim" a.vdraid.result 2>/dev/null || true
vdtool raid fail a.vdraid 1
victim_unchanged "online fail" a.vdraid.result
vdtool create -f raw new.img 4M >/dev/null
ln -sf "$VD_TMP/victim" a.vdraid.result
ln -sf "$VD_TMP/victim" a.vdraid.tmpXX
vdtool raid replace a.vdraid 1 new.img
victim_unchanged "online replace" a.vdraid
grep -q '^member 1 raw new.img$' a.vdraid ||
  fail "the server did not rewrite the descriptor: $(cat a.vdraid)"
stop_nbd
victim_unchanged "stop" a.vdraid
vdtool raid detail --output=json a.vdraid | /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
assert [m["state"] for m in j["members"]] == ["active"] * 3, j' ||
  fail "array not healthy after the online replace"

# ---- item 11: the descriptor rewrite fsyncs its folder ----
if command -v strace >/dev/null 2>&1; then
  vdtool raid fail a.vdraid 2
  vdtool create -f raw new2.img 4M >/dev/null
  # (LeakSanitizer cannot run under ptrace.)
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
  strace -f -o trace.txt -e trace=openat,fsync,fdatasync,rename,renameat,renameat2 \
    "$top_builddir/tools/vdtool" raid replace a.vdraid 2 new2.img ||
    fail "offline replace under strace"
  /usr/bin/python3 - trace.txt <<'EOF' || fail "descriptor rewrite is not durable"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
# the temporary descriptor: created O_EXCL|O_NOFOLLOW, synced, renamed
tmp = [l for l in lines if re.search(r'openat\(.*a\.vdraid\.tmp-', l)]
assert tmp, "no temporary descriptor"
assert all("O_EXCL" in l and "O_NOFOLLOW" in l for l in tmp), tmp
ren = [i for i, l in enumerate(lines) if re.search(r'rename.*a\.vdraid\.tmp-[^"]*", .*"[^"]*a\.vdraid"', l)]
assert ren, "no rename of the descriptor"
after = lines[ren[-1]:]
dirfd = None
for l in after:
    m = re.search(r'openat\(.*O_DIRECTORY.*\)\s+= (\d+)', l)
    if m:
        dirfd = m.group(1)
    if dirfd and re.search(r'fsync\(%s\)\s+= 0' % dirfd, l):
        sys.exit(0)
sys.exit("no fsync of the folder after the rename")
EOF
else
  echo "strace missing: folder fsync not checked" >&2
fi

# ---- item 4: the request file is checked before it is trusted ----
vdtool raid create -l 1 --size 4M other.vdraid o0 o1
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
  chmod 0711 "$VD_TMP"
  W=$VD_TMP/shared
  mkdir "$W"; chmod 0777 "$W"
  vdtool raid create -l 1 --size 4M "$W/s.vdraid" "$W/s0" "$W/s1" "$W/s2"
  start_nbd "$W/s.vdraid"
  for i in $(seq 100); do [ -f "$W/s.vdraid.served" ] && break; sleep 0.1; done
  states() {
    vdtool raid detail --output=json "$W/s.vdraid" |
      /usr/bin/python3 -c 'import json,sys; print(" ".join(m["state"] for m in json.load(sys.stdin)["members"]))'
  }
  # wait_log REGEX: the server logs it within 20 s.
  wait_log() {
    local i
    for i in $(seq 200); do
      grep -Eq -- "$1" "$nbd_errlog" && return 0
      sleep 0.1
    done
    fail "the server did not log /$1/: $(cat "$nbd_errlog")"
  }
  as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }

  # Another uid writes a request: ignored, logged, nothing happens.
  as_nobody sh -c "umask 077; printf 'fail 1\n' > '$W/s.vdraid.request'" ||
    fail "nobody could not write into the shared folder"
  wait_log "s.vdraid.request: request ignored: owned by uid 65534"
  sleep 0.5
  [ "$(states)" = "active active active" ] ||
    fail "a request from uid nobody was executed: $(states)"
  [ ! -e "$W/s.vdraid.result" ] || fail "a foreign request was answered"
  as_nobody rm -f "$W/s.vdraid.request"

  # A symlink to a file of ours that reads like a request: not followed.
  printf 'fail 2\n' > "$VD_TMP/looks-like-a-request"
  chmod 600 "$VD_TMP/looks-like-a-request"
  as_nobody ln -s "$VD_TMP/looks-like-a-request" "$W/s.vdraid.request"
  wait_log "s.vdraid.request: request ignored: it is a symbolic link"
  as_nobody rm -f "$W/s.vdraid.request"
  # Ours, but writable by others: anyone could have rewritten it.
  printf 'fail 2\n' > "$W/s.vdraid.request.new"
  chmod 666 "$W/s.vdraid.request.new"
  mv "$W/s.vdraid.request.new" "$W/s.vdraid.request"
  wait_log "s.vdraid.request: request ignored: writable by group or others"
  rm -f "$W/s.vdraid.request"
  sleep 0.3
  [ "$(states)" = "active active active" ] ||
    fail "a symlinked or world-writable request was executed: $(states)"

  # Malformed requests from ourselves: answered with an error.
  # send_raw TEXT: leave TEXT (printf format) as the request, print the answer.
  send_raw() {
    rm -f "$W/s.vdraid.result"
    (umask 077; printf "$1" > "$W/req.tmp")
    mv "$W/req.tmp" "$W/s.vdraid.request"
    local i
    for i in $(seq 200); do
      if [ -f "$W/s.vdraid.result" ]; then
        cat "$W/s.vdraid.result"; rm -f "$W/s.vdraid.result"; return 0
      fi
      sleep 0.1
    done
    fail "no answer to '$1'"
  }
  expect_answer() {
    local re=$1 text=$2 ans
    ans=$(send_raw "$text")
    echo "$ans" | grep -Eq -- "^error .*$re" ||
      fail "request '$text' answered '$ans', expected an error /$re/"
  }
  expect_answer "fail needs a slot number below 3" 'fail 1x\n'
  expect_answer "fail needs a slot number below 3" 'fail -1\n'
  expect_answer "fail needs a slot number below 3" 'fail  1\n'
  expect_answer "fail needs a slot number below 3" 'fail 4294967297\n'
  expect_answer "fail needs a slot number below 3" 'fail 18446744073709551617\n'
  expect_answer "fail needs a slot number below 3" 'fail 3\n'
  expect_answer "fail needs a slot number below 3" 'fail \n'
  expect_answer "rate needs bytes per second" 'rate 12k\n'
  expect_answer "one line" 'fail 1'
  expect_answer "one line" 'fail 1\nfail 2\n'
  expect_answer "control characters" 'fail 1\r\n'
  expect_answer "unknown request" 'format everything\n'
  expect_answer "slot number out of range" "replace 9 raw $W/s1\n"
  expect_answer "unknown format" "replace 1 nosuchformat $W/s1\n"
  expect_answer "the path must be absolute" 'replace 1 raw s1\n'
  expect_answer "expected 'replace SLOT FORMAT PATH'" 'replace 1\n'
  expect_answer "/dev/null: not a regular file or block device" \
    'replace 1 raw /dev/null\n'
  mkfifo "$W/fifo"
  expect_answer "fifo: not a regular file or block device" \
    "replace 1 raw $W/fifo\n"
  expect_answer "s.vdraid: is the array's descriptor" \
    "replace 1 raw $W/s.vdraid\n"
  expect_answer "s.vdraid.served: is the array's control file" \
    "replace 1 raw $W/s.vdraid.served\n"
  expect_answer "s2 is already member 2" "replace 1 raw $W/s2\n"
  uuid=$(sed -n 's/^uuid //p' other.vdraid)
  expect_answer "o0: holds the superblock of another RAID array \\($uuid\\)" \
    "replace 1 raw $VD_TMP/o0\n"
  cmp -s victim victim.orig || fail "victim changed"
  [ "$(states)" = "active active active" ] ||
    fail "a malformed request changed the array: $(states)"
  # And a well-formed one still works.
  [ "$(send_raw 'fail 2\n')" = ok ] || fail "a valid request was not executed"
  [ "$(states)" = "active active faulty" ] || fail "fail 2: $(states)"

  # ---- item 9: a FIFO as the request file blocks nothing ----
  mkfifo "$W/s.vdraid.request"
  wait_log "s.vdraid.request: request ignored: it is not a regular file"
  # The monitor still answers once the FIFO is replaced by a request.
  vdtool raid scrub "$W/s.vdraid" 2>&1 | grep -q "degraded" ||
    fail "the server stopped answering after a FIFO request file"
  mkfifo "$W/s.vdraid.request" 2>/dev/null || true
  sleep 0.5
  pid=$(cat "$nbd_pidfile")
  kill -TERM "$pid"
  for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"
    fail "vdisk-nbd ignored SIGTERM with a FIFO as the request file"
  fi
  rm -f "$nbd_pidfile"
  check_nbd_log 2>/dev/null
  rm -f "$W/s.vdraid.request"
else
  echo "not root or no setpriv: the other-uid checks are skipped" >&2
fi

# vdtool believes ARRAY.served (and the answer) only from its own uid or
# root: a pid planted by another user does not make it wait for an answer.
if [ -n "${W:-}" ]; then
  sleep 1000 & sleeper=$!
  on_exit "kill $sleeper"
  as_nobody sh -c "echo $sleeper > '$W/s.vdraid.served'"
  vdtool raid detail "$W/s.vdraid" | grep -q "Served by" &&
    fail "a .served file of uid nobody was believed"
  # Not served: vdtool does the work itself instead of waiting for an answer.
  timeout 30 "$top_builddir/tools/vdtool" raid fail "$W/s.vdraid" 1 ||
    fail "vdtool waited for a server that a planted .served file named"
  [ "$(states)" = "active faulty faulty" ] || fail "offline fail: $(states)"
  vdtool raid detail --output=json "$W/s.vdraid" | grep -q '"served-by": 0' ||
    fail "served-by is not 0"
  kill $sleeper
fi

# ---- item 9: loops and FIFO members ----
vdtool raid create -l 1 --size 4M l.vdraid l0 l1
sed 's/^member 1 raw l1$/member 1 - self.vdraid/' l.vdraid > self.vdraid
expect_error "self.vdraid: RAID member loop: the array contains itself \(self.vdraid -> self.vdraid\)" \
  timeout 60 "$top_builddir/tools/vdtool" info self.vdraid
expect_error "RAID member loop" timeout 60 "$top_builddir/tools/vdtool" raid detail self.vdraid
sed 's/^member 1 raw l1$/member 1 - loop-b.vdraid/' l.vdraid > loop-a.vdraid
sed 's/^member 1 raw l1$/member 1 - loop-a.vdraid/' l.vdraid > loop-b.vdraid
expect_error "loop-a.vdraid: RAID member loop: .*loop-a.vdraid -> .*loop-b.vdraid -> .*loop-a.vdraid" \
  timeout 60 "$top_builddir/tools/vdtool" info loop-a.vdraid
# Through a symlink to itself: the same file.
ln -s self.vdraid link.vdraid
sed 's/^member 1 - self.vdraid$/member 1 - link.vdraid/' self.vdraid > self2.vdraid
mv self2.vdraid self.vdraid
expect_error "RAID member loop" timeout 60 "$top_builddir/tools/vdtool" info link.vdraid

mkfifo fifo-member
sed 's/^member 1 raw l1$/member 1 raw fifo-member/' l.vdraid > fm.vdraid
rc=0
out=$(timeout 60 "$top_builddir/tools/vdtool" raid detail fm.vdraid 2>&1) || rc=$?
[ $rc -eq 0 ] || fail "detail with a FIFO member: exit $rc: $out"
echo "$out" | grep -q "fifo-member: not a regular file or block device" ||
  fail "detail does not say why the FIFO member is unused: $out"
timeout 60 "$top_builddir/tools/vdtool" info fm.vdraid | grep -q "degraded" ||
  fail "a FIFO member did not leave the array degraded"
expect_error "fifo-member: not a regular file or block device" \
  timeout 60 "$top_builddir/tools/vdtool" raid assemble x.vdraid l0 fifo-member
vdtool raid fail l.vdraid 1
expect_error "fifo-member: not a regular file or block device" \
  timeout 60 "$top_builddir/tools/vdtool" raid replace l.vdraid 1 fifo-member
cmp -s victim victim.orig || fail "victim changed"
exit 0
