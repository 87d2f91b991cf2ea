#!/usr/bin/env bash
# vdtool keeps qemu-img's habits (issue 15), each beside qemu-img doing
# the same:
#  - map (human) names the file that holds each extent: the backing file
#    for the extents that come from it.  The peer is qemu-img map on a
#    qcow2 over the same raw base with the same write: offsets, lengths
#    and file names must agree line by line (only the host offsets, which
#    are the formats' own, may differ);
#  - resize of a VHD updates the footer's original size with the current
#    size, so libvhdi (vhdiinfo) sees the size qemu-img and vdtool see;
#  - create and convert take -o help (the option names qemu-img lists for
#    the same format are among ours), and create names the format as info
#    does ("vhd" is created as vpc);
#  - convert takes qemu-img's five cache modes (-t) with its default,
#    unsafe: as qemu-img, the default convert leaves the data unsynced
#    (strace counts the fdatasync calls), writeback syncs at the end,
#    writethrough and directsync after each write, none and directsync
#    open the output O_DIRECT; writeback writes behind the copy
#    (sync_file_range) and the default does not; every mode writes the
#    same image;
#  - convert -B BACKING -F FMT makes a differencing output holding only
#    what the source holds itself (qemu-img convert -B to qcow2 beside it:
#    the same extents come from the new image, the rest from BACKING);
#    -c compresses to vdz and is refused for other formats as qemu-img
#    refuses it for raw; -W is accepted;
#  - info names the backing file as the image records it
#    (backing-filename) and as it is reached from the current folder
#    (full-backing-filename; human: "(actual path: ...)"), as qemu-img
#    does for qcow2 and VMDK chains in a subfolder;
#  - commit, rebase, resize and compact take their options after the
#    operands too, as qemu-img does (resize's size is always the last
#    argument, so "-1M" stays a size); "--" ends the options.
. "${top_srcdir:-.}/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io
cd "$VD_TMP"

qemu-img create -q -f raw base.raw 4M
qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x22 2M 1M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw peer.qcow2
qemu-io -f qcow2 -c 'write -P 0x33 512k 1M' peer.qcow2 >/dev/null
vdtool create -q -f vpc -b base.raw -F raw ours.vhd
# qemu cannot write a differencing VHD: through vdisk-nbd.
start_nbd -f vpc ours.vhd
qemu-io -f raw -c 'write -P 0x33 512k 1M' "$nbd_uri" >/dev/null
stop_nbd
qemu-img compare -f qcow2 -F raw peer.qcow2 "$(vdtool convert -q -O raw ours.vhd ours.raw && echo ours.raw)" >/dev/null ||
  fail "the two chains differ"

# Offset, length and the file's base name of each line.
cols() { awk 'NR > 1 { n = split($4, p, "/"); print $1, $2, p[n] }' | sed 's/peer\.qcow2/TOP/; s/ours\.vhd/TOP/'; }
qemu-img map -f qcow2 peer.qcow2 | cols > peer.map
vdtool map ours.vhd | cols > ours.map
grep -q ' base\.raw$' peer.map || fail "peer map names no backing file: $(cat peer.map)"
diff peer.map ours.map >&2 || fail "map (human) differs from qemu-img's"

for sub in dynamic fixed; do
  vdtool create -q -f vpc -o subformat=$sub rz-$sub.vhd 8M
  vdtool resize -q rz-$sub.vhd 16M
  q=$(qemu-img info -f vpc --output=json rz-$sub.vhd |
      /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
  [ "$q" = 16777216 ] || fail "$sub: qemu-img sees $q bytes after resize"
  if command -v vhdiinfo >/dev/null; then
    vhdiinfo rz-$sub.vhd | grep -q 'Media size.*(16777216 bytes)' ||
      fail "$sub: vhdiinfo disagrees after resize: $(vhdiinfo rz-$sub.vhd | grep -i 'media size')"
  fi
done

# option names: "  name=<type> - ..." lines
names() { sed -n 's/^  \([a-z_]*\)=.*/\1/p' | sort; }
for f in vpc vhdx raw; do
  qemu-img create -f $f -o help | names > q.$f
  vdtool create -f $f -o help > o.$f || fail "create -f $f -o help failed"
  names < o.$f > v.$f
  head -1 o.$f | grep -qx 'Supported options:' || fail "$f: -o help heading"
  vdtool convert -O $f -o help > c.$f || fail "convert -O $f -o help failed"
  cmp -s o.$f c.$f || fail "$f: create and convert -o help differ"
done
for n in size subformat force_size; do
  grep -qx $n q.vpc && grep -qx $n v.vpc || fail "vpc -o help lacks $n"
done
for n in size subformat block_size; do
  grep -qx $n q.vhdx && grep -qx $n v.vhdx || fail "vhdx -o help lacks $n"
done
grep -qx preallocation v.raw || fail "raw -o help lacks preallocation"
expect_error "Unknown file format 'nosuch'" vdtool create -f nosuch -o help
out=$(vdtool create -f vhd named.vhd 1M)
[ "$out" = "Formatting 'named.vhd', fmt=vpc size=1048576" ] ||
  fail "create -f vhd printed: $out"

# Cache modes.  syncs MODE...: fdatasync+fsync calls of a convert to VHD.
# LeakSanitizer cannot run under ptrace: off for the straced commands.
requires strace
noleak="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
head -c 8M /dev/urandom > cm.raw
syncs() {
  rm -f cm.vhd
  ASAN_OPTIONS=$noleak strace -f -qq -c -e trace=fdatasync,fsync -o cm.strace \
    "$top_builddir/tools/vdtool" convert "$@" -O vpc cm.raw cm.vhd ||
    fail "convert $* failed"
  qemu-img compare -f raw -F vpc cm.raw cm.vhd >/dev/null ||
    fail "convert $* wrote different data"
  awk '$NF == "fdatasync" || $NF == "fsync" {n += $4} END {print n + 0}' cm.strace
}
rm -f qcm.vhd
strace -f -qq -c -e trace=fdatasync,fsync -o q.strace \
  qemu-img convert -O vpc cm.raw qcm.vhd
peer=$(awk '$NF == "fdatasync" || $NF == "fsync" {n += $4} END {print n + 0}' q.strace)
dflt=$(syncs) unsafe=$(syncs -t unsafe) wb=$(syncs -t writeback)
wt=$(syncs -t writethrough -m 1) ds=$(syncs -t directsync -m 1)
none=$(syncs -t none)
echo "syncs: qemu-img default $peer; vdtool default $dflt unsafe $unsafe" \
  "writeback $wb writethrough $wt none $none directsync $ds"
# The default writes no data durably, like qemu-img's (which syncs once,
# as it creates the file); the image's creation may sync twice (the file
# and its folder).
[ "$dflt" = "$unsafe" ] && [ "$dflt" -le $((peer + 1)) ] ||
  fail "the default convert syncs $dflt times (qemu-img: $peer)"
[ "$wb" -gt "$unsafe" ] || fail "-t writeback does not sync at the end"
[ "$wt" -gt $((wb + 2)) ] && [ "$ds" -gt $((wb + 2)) ] ||
  fail "-t writethrough/directsync do not sync each write"
[ "$none" -ge "$wb" ] || fail "-t none does not sync at the end"
# Write-behind: -t writeback hands the written data to the disk during
# the copy (sync_file_range), so its final flush has little left; the
# default (unsafe) never pushes data out.
behind() {
  rm -f cm.vhd
  ASAN_OPTIONS=$noleak strace -f -qq -c -e trace=sync_file_range \
    -o wb.strace "$top_builddir/tools/vdtool" convert "$@" -O vpc cm.raw \
    cm.vhd || fail "convert $* failed"
  awk '$NF == "sync_file_range" {n += $4} END {print n + 0}' wb.strace
}
[ "$(behind -t writeback)" -ge 1 ] ||
  fail "-t writeback does not write behind the copy"
[ "$(behind)" = 0 ] || fail "the default convert writes behind the copy"
rm -f cm.vhd
# (the file is opened, then switched to O_DIRECT with fcntl)
ASAN_OPTIONS=$noleak strace -f -qq -e trace=fcntl -o open.strace \
  "$top_builddir/tools/vdtool" convert -t none -O vpc cm.raw cm.vhd
grep -q 'F_SETFL, .*O_DIRECT' open.strace || fail "-t none is not O_DIRECT"
rm -f cm.vhd
ASAN_OPTIONS=$noleak strace -f -qq -e trace=fcntl -o open.strace \
  "$top_builddir/tools/vdtool" convert -O vpc cm.raw cm.vhd
! grep -q 'F_SETFL, .*O_DIRECT' open.strace || fail "the default is O_DIRECT"
expect_error "cache mode must be unsafe, writeback, writethrough, none or directsync" \
  vdtool convert -t bogus cm.raw x.raw

# convert -B, -c, -W.
qemu-img create -q -f raw cb.raw 8M
qemu-io -f raw -c 'write -P 0x11 0 8M' cb.raw >/dev/null
qemu-img create -q -f qcow2 -b cb.raw -F raw ct.qcow2
qemu-io -f qcow2 -c 'write -P 0x22 1M 1M' -c 'write -z 4M 1M' ct.qcow2 >/dev/null
cp cb.raw cb2.raw
vdtool convert -B cb2.raw -F raw -O vpc ct.qcow2 cb.vhd || fail "convert -B failed"
qemu-img convert -B cb2.raw -F raw -O qcow2 ct.qcow2 cq.qcow2
vdtool convert -O raw cb.vhd cb.out && qemu-img compare -F qcow2 cb.out ct.qcow2 >/dev/null ||
  fail "convert -B: the output reads differently from the source"
[ "$(vdtool info --output=json cb.vhd | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename"])')" = cb2.raw ] ||
  fail "convert -B: the output's backing file is not cb2.raw"
# The extents each new image holds itself (data, or zeros it records):
# the same ranges.
vdtool map --output=json cb.vhd | /usr/bin/python3 -c '
import json, sys
print([(e["start"], e["length"]) for e in json.load(sys.stdin) if e["depth"] == 0 and (e["data"] or e["zero"])])' > v.ext
qemu-img map --output=json cq.qcow2 | /usr/bin/python3 -c '
import json, sys
print([(e["start"], e["length"]) for e in json.load(sys.stdin) if e["depth"] == 0 and (e["data"] or e["zero"])])' > q.ext
cmp -s v.ext q.ext || fail "convert -B copied other extents than qemu-img: $(cat v.ext) vs $(cat q.ext)"
qemu_c=$(qemu-img convert -c -O raw ct.qcow2 c.raw 2>&1) && fail "qemu-img convert -c -O raw succeeded"
echo "qemu-img: $qemu_c"
expect_error "-c: format 'raw' cannot compress" vdtool convert -c -O raw ct.qcow2 c.raw
vdtool convert -c -W -O vdz ct.qcow2 c.vdz || fail "convert -c -W -O vdz failed"
vdtool convert -O raw c.vdz cz.raw && qemu-img compare -F qcow2 cz.raw ct.qcow2 >/dev/null ||
  fail "convert -c -O vdz differs"

# Backing file names as recorded and as reached.
mkdir -p bsub/deep
qemu-img create -q -f raw bsub/deep/b.raw 1M
qemu-img create -q -f qcow2 -b deep/b.raw -F raw bsub/c.qcow2
qemu-img create -q -f vmdk bsub/deep/b.vmdk 1M
qemu-img create -q -f vmdk -b deep/b.vmdk -F vmdk bsub/c.vmdk
for img in bsub/c.qcow2 bsub/c.vmdk; do
  for k in backing-filename full-backing-filename backing-filename-format; do
    q=$(qemu-img info --output=json "$img" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['$k'])")
    v=$(vdtool info --output=json "$img" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['$k'])")
    [ "$q" = "$v" ] || fail "$img: $k is '$v', qemu-img: '$q'"
  done
  q=$(qemu-img info "$img" | grep '^backing file:')
  v=$(vdtool info "$img" | grep '^backing file:')
  [ "$q" = "$v" ] || fail "$img: '$v', qemu-img: '$q'"
done
# Options after the operands, each form beside qemu-img's.
mkdir -p late && cd late
for side in peer ours; do
  qemu-img create -q -f qcow2 $side-b.qcow2 4M
  qemu-img create -q -f qcow2 -b $side-b.qcow2 -F qcow2 $side-t.qcow2
  qemu-io -f qcow2 -c 'write -P 0x61 0 1M' $side-t.qcow2 >/dev/null
  qemu-img create -q -f raw $side.raw 4M
done
qemu-img commit peer-t.qcow2 -d -q
vdtool commit ours-t.qcow2 -d -q || fail "commit IMG -d -q"
qemu-img compare -q peer-b.qcow2 ours-b.qcow2 || fail "commit IMG -d: base differs from qemu-img's"
qemu-img compare -q peer-t.qcow2 ours-t.qcow2 || fail "commit IMG -d: top differs (emptied?)"
# rebase: qemu-img's form on qcow2; vdisk rebases VHD (vhdiinfo judges).
qemu-img create -q -f qcow2 peer-n.qcow2 4M
qemu-img rebase peer-t.qcow2 -u -b peer-n.qcow2 -F qcow2
vdtool create -q -f vpc b.vhd 4M
vdtool create -q -f vpc -b b.vhd -F vpc t.vhd
vdtool create -q -f vpc n.vhd 4M
vdtool rebase t.vhd -u -b n.vhd -F vpc || fail "rebase IMG -u -b X -F FMT"
if command -v vhdiinfo >/dev/null; then
  vhdiinfo t.vhd | grep -q 'Parent filename.*: n\.vhd$' ||
    fail "rebase with options last: vhdiinfo says $(vhdiinfo t.vhd | grep -i 'parent filename')"
fi
qemu-img resize peer.raw --shrink -f raw -1M >/dev/null
vdtool resize ours.raw --shrink -f raw -1M >/dev/null || fail "resize IMG --shrink -f raw -1M"
[ "$(stat -c %s ours.raw)" = "$(stat -c %s peer.raw)" ] || fail "resize with options last: $(stat -c %s ours.raw) bytes"
qemu-img resize -q peer.raw -f raw +2M
vdtool resize -q ours.raw -f raw +2M || fail "resize -q IMG -f raw +2M"
[ "$(stat -c %s ours.raw)" = "$(stat -c %s peer.raw)" ] || fail "resize -q IMG -f raw +2M: $(stat -c %s ours.raw) bytes"
vdtool create -q -f vpc c.vhd 4M
vdtool compact c.vhd -q >out.txt || fail "compact IMG -q"
[ ! -s out.txt ] || fail "compact IMG -q printed: $(cat out.txt)"
# "--" ends the options: an image named like one.
cp ours.raw ./-d
expect_error "has no backing file" vdtool commit -f raw -- -d
cd ..
echo "vdtool-habits: OK"
