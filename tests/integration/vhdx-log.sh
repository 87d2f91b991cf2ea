#!/usr/bin/env bash
# VHDX log replay ([MS-VHDX] 2.3.3) on dirty images made by the independent
# writer (tests/vhdxgen): the new blocks' BAT pages and a zeroed BAT page
# exist only in the log.  A read-only open shows the replayed content and
# leaves the file byte-identical; a writable open (vdisk-nbd) replays into
# the file and clears the log; qemu, replaying with its own code
# (qemu-img check -r all), sees the same content.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img nbdinfo /usr/bin/python3
gen() { /usr/bin/python3 "$top_srcdir/tests/vhdxgen/vhdxgen.py" "$@"; }
cd "$VD_TMP"

M=$((1 << 20))
# 600 MiB, 1 MiB blocks: a 4 KiB BAT page maps 512 blocks, so block 0 and
# blocks from 520 on are in different pages.
base() {
  gen create "$1" --size $((600 * M)) --write 0:65536:1 --write $((530 * M)):4096:2 \
    --write $((560 * M)):8192:3
}
n=0
for variant in one three-entries junk-before zero-page; do
  img=$variant.vhdx
  base $img
  case $variant in
    one)          gen dirty $img --write $((30 * M)):8192:9 ;;
    three-entries) gen dirty $img --write $((30 * M)):8192:9 --write $((540 * M)):4096:10 \
                     --write $((590 * M)):512:11 --entries 3 ;;
    junk-before)  gen dirty $img --write $((31 * M)):4096:12 --junk-before ;;
    zero-page)    gen dirty $img --zero-block 0 --write $((550 * M)):4096:13 ;;
  esac
  gen expect $img want.raw
  # The file as written by the "crashed" writer does not show the change.
  cp $img before.vhdx
  sum=$(md5sum < $img)
  # Read-only: replayed in memory, the file untouched.
  vdtool convert -O raw $img ro.raw
  cmp want.raw ro.raw || fail "$variant: read-only open reads different data"
  [ "$(md5sum < $img)" = "$sum" ] || fail "$variant: a read-only open wrote to the file"
  vdtool info $img | grep -q '^ *log: dirty (replayed in memory)$' || fail "$variant: info log state"
  # qemu replays with its own code and agrees.
  cp $img q.vhdx
  qemu-img check -q -r all q.vhdx >/dev/null 2>&1 || true
  qemu-img convert -f vhdx -O raw q.vhdx q.raw
  cmp want.raw q.raw || fail "$variant: qemu's replay reads differently"
  # Writable open: the replay reaches the file, the log is spent.
  start_nbd "d=$PWD/$img"
  nbdinfo --size "$(nbd_uri_for d)" >/dev/null || fail "$variant: export"
  stop_nbd
  [ "$(md5sum < $img)" != "$sum" ] || fail "$variant: a writable open did not replay"
  vdtool info $img | grep -q '^ *log: clean$' || fail "$variant: log not clean after replay"
  vdtool convert -O raw $img rw.raw
  cmp want.raw rw.raw || fail "$variant: content after replay"
  qemu-img check $img > chk.txt 2>&1 || { cat chk.txt; fail "$variant: qemu-img check after replay"; }
  qemu-img convert -f vhdx -O raw $img q2.raw
  cmp want.raw q2.raw || fail "$variant: qemu reads the replayed file differently"
  n=$((n + 1))
done
echo "replayed: $n dirty images"

# A dirty base opened read-only under a child (log replayed in memory), then
# switched to read-write in place by `vdtool commit -b`: the pending log must
# reach the file before the commit's own writes start a new log ([MS-VHDX]
# 2.3.3: a log is replayed before the file is modified), or the blocks only
# the log maps are lost.
base cb.vhdx
gen dirty cb.vhdx --write $((30 * M)):8192:9 --write $((540 * M)):4096:10 --entries 2
gen expect cb.vhdx want.raw
vdtool create -q -f vhdx -b cb.vhdx -F vhdx cc.vhdx
start_nbd "c=$PWD/cc.vhdx"
qemu-io -f raw -c "write -P 0x5a $((30 * M + 4096)) 8192" -c "write -P 0x6b $((100 * M)) 4096" \
  "$(nbd_uri_for c)" >/dev/null || fail "write into the child"
stop_nbd
/usr/bin/python3 - want.raw $((30 * M + 4096)) 8192 90 $((100 * M)) 4096 107 <<'PY'
import sys
f = open(sys.argv[1], "r+b")
a = sys.argv[2:]
for i in range(0, len(a), 3):
    f.seek(int(a[i])); f.write(bytes([int(a[i + 2])]) * int(a[i + 1]))
PY
vdtool commit -b cb.vhdx cc.vhdx >/dev/null || fail "commit into a dirty base"
vdtool info cb.vhdx | grep -q '^ *log: clean$' || fail "the base's log is not clean after the commit"
qemu-img check cb.vhdx > chk.txt 2>&1 || { cat chk.txt; fail "qemu-img check of the committed base"; }
qemu-img convert -f vhdx -O raw cb.vhdx q3.raw
cmp want.raw q3.raw || fail "the committed dirty base reads differently in qemu"

# A log whose entries are all damaged while the header says there is one:
# refused, naming the log, and nothing written.
base bad.vhdx
gen dirty bad.vhdx --write $((30 * M)):4096:9
printf 'XXXX' | dd of=bad.vhdx bs=1 seek=$((M + 64)) conv=notrunc status=none
sum=$(md5sum < bad.vhdx)
expect_error 'log: no valid log sequence' vdtool info bad.vhdx
[ "$(md5sum < bad.vhdx)" = "$sum" ] || fail "a refused open wrote"
# A truncated file (shorter than the head's FlushedFileOffset).
base tr.vhdx
gen dirty tr.vhdx --write $((30 * M)):4096:9
truncate -s $(( $(stat -c %s tr.vhdx) - M )) tr.vhdx
expect_error 'log: file truncated' vdtool info tr.vhdx
exit 0
