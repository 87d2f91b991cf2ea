#!/usr/bin/env bash
# Parents are confined and verified (issue 10, items 1, 9 and 14):
#  - vdtool convert of a crafted differencing image whose locators name a
#    host file (absolute C:\... and relative ..\..\) copies no byte of it;
#  - a parent outside the child's folder tree is refused, and accepted when
#    the operator names it (--backing) in vdtool, vdisk-nbd and vdisk-fuse;
#  - a child with a parent UUID opens its parent only as a VHD with that
#    UUID; a FIFO parent gives an error within seconds (no hang);
#  - loops at depth 3 and chains deeper than 64 give one line, no crash;
#  - create -F raw records a non-VHD base, -F vpc over raw is refused.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires cmp timeout mkfifo
craft() { /usr/bin/python3 "$top_srcdir/tests/integration/trust-craft.py" "$@"; }

cd "$VD_TMP"
MB=$((1024 * 1024))
size=$((8 * MB))
mkdir -p host/vm/disks out
pattern_bytes $((256 * 1024)) 77 > host/secret.bin
winabs='C:'$(printf '%s' "$VD_TMP/host/secret.bin" | tr / '\\')
no_secret() {
  [ -e "$1" ] || return 0
  craft no-secret "$1" host/secret.bin ||
    fail "$1: holds bytes of the host's secret file"
}

# 1. A crafted image (any parent UUID) naming a host file outside its
# folder: convert, info and the server all refuse it; nothing is copied.
for loc in "$winabs" '..\..\secret.bin'; do
  for uuid in 0 0123456789abcdef0123456789abcdef; do
    craft file host/vm/disks/evil.vhd $size "$loc" $uuid
    rm -f out/copy.raw
    expect_error "evil\.vhd: parent .*secret\.bin is outside the child's folder" \
      vdtool convert host/vm/disks/evil.vhd out/copy.raw
    no_secret out/copy.raw
    expect_error "outside the child's folder" vdtool info --backing-chain host/vm/disks/evil.vhd
    expect_error "outside the child's folder" vdisk_nbd -r -k "$VD_TMP/s.sock" host/vm/disks/evil.vhd
    ! [ -e s.sock ] || fail "vdisk-nbd listened although the image did not open"
  done
done
# A symlink inside the folder that leads outside is outside (realpath).
ln -s ../../secret.bin host/vm/disks/link.bin
craft file host/vm/disks/evil.vhd $size '.\link.bin' 0
expect_error "link\.bin is outside the child's folder" vdtool convert host/vm/disks/evil.vhd out/copy.raw
no_secret out/copy.raw

# 2. Inside the folder, a child with a parent UUID gets a VHD parent only.
cp host/secret.bin host/vm/disks/sec.bin
craft file host/vm/disks/evil.vhd $size '.\sec.bin' 0123456789abcdef0123456789abcdef
expect_error "evil\.vhd: parent: .*sec\.bin: .*VHD" vdtool convert host/vm/disks/evil.vhd out/copy.raw
no_secret out/copy.raw
vdtool create -q -f vhd host/vm/disks/other.vhd $size
craft file host/vm/disks/evil.vhd $size '.\other.vhd' 0123456789abcdef0123456789abcdef
expect_error "parent UUID mismatch" vdtool info --backing-chain host/vm/disks/evil.vhd
# A UUID-less child probes its parent among raw and vdz only: a VHD parent
# is read as its raw bytes, never followed into its own parent.
vdtool create -q -f vhd -b ../../secret.bin host/vm/disks/mid.vhd
craft file host/vm/disks/evil.vhd $((size / 4)) '.\mid.vhd' 0
vdtool info --backing-chain host/vm/disks/evil.vhd | grep -q '^backing file format: raw' ||
  fail "a UUID-less child's VHD parent was not read as raw"
vdtool convert host/vm/disks/evil.vhd out/copy.raw
no_secret out/copy.raw

# 3. Special files as parents: an error within seconds, never a hang.
mkfifo host/vm/disks/fifo.vhd
craft file host/vm/disks/evil.vhd $size '.\fifo.vhd' 0123456789abcdef0123456789abcdef
for cmd in "info --backing-chain" "convert -O raw" \
           "info --backing-chain --backing=host/vm/disks/fifo.vhd"; do
  rc=0
  extra=""; [ "${cmd%% *}" = convert ] && extra=out/x.raw
  timeout 20 "$top_builddir/tools/vdtool" $cmd host/vm/disks/evil.vhd $extra \
    >/dev/null 2>err.txt || rc=$?
  [ $rc != 124 ] || fail "vdtool $cmd: hung on a FIFO parent"
  [ $rc != 0 ] || fail "vdtool $cmd: accepted a FIFO parent"
  grep -q 'fifo\.vhd is not a regular file' err.txt || fail "vdtool $cmd: $(cat err.txt)"
done
# Without --backing-chain info opens no parent (as qemu-img info): it names
# the FIFO and never opens it.
rc=0; timeout 20 "$top_builddir/tools/vdtool" info host/vm/disks/evil.vhd \
  >out.txt 2>err.txt || rc=$?
[ $rc = 0 ] && grep -q '^backing file: .*fifo\.vhd' out.txt ||
  fail "info of a FIFO's child: rc $rc: $(cat out.txt err.txt)"
rc=0; timeout 20 "$top_builddir/tools/vdtool" info host/vm/disks/fifo.vhd 2>err.txt || rc=$?
[ $rc != 124 ] && [ $rc != 0 ] && grep -q 'not a regular file' err.txt ||
  fail "info on a FIFO: rc $rc: $(cat err.txt)"
rc=0; timeout 20 "$top_builddir/tools/vdtool" info -f raw host/vm/disks/fifo.vhd 2>err.txt || rc=$?
[ $rc != 124 ] && [ $rc != 0 ] || fail "info -f raw on a FIFO: rc $rc"
# A lone open (resize opens the child without its parent) never touches it.
rc=0; timeout 20 "$top_builddir/tools/vdtool" resize host/vm/disks/evil.vhd +1M \
  >/dev/null 2>err.txt || rc=$?
[ $rc = 0 ] || fail "resize of a child whose parent is a FIFO: rc $rc: $(cat err.txt)"
rm host/vm/disks/fifo.vhd

# 4. Outside the folder: refused, then named by the operator.
mkdir -p a/b p
vdtool create -q -f vhd -o block_size=512K p/par.vhd 4M
pattern_bytes $MB 9 > par.raw; truncate -s 4M par.raw
vdtool convert -n -f raw -O vpc par.raw p/par.vhd
vdtool create -q -f vhd -b ../../p/par.vhd a/b/kid.vhd
expect_error "kid\.vhd: parent a/b/\.\./\.\./p/par\.vhd is outside the child's folder \(name it with --backing" \
  vdtool info --backing-chain a/b/kid.vhd
expect_error "outside the child's folder" vdtool convert a/b/kid.vhd out/kid.raw
vdtool convert --backing=p/par.vhd a/b/kid.vhd out/kid.raw
cmp out/kid.raw par.raw || fail "--backing: convert differs"
vdtool compare --backing p/par.vhd a/b/kid.vhd par.raw >/dev/null || fail "--backing: compare"
vdtool map --backing=p/par.vhd a/b/kid.vhd >/dev/null || fail "--backing: map"
vdtool info --backing-chain --backing=p/par.vhd a/b/kid.vhd | grep -c '^image:' | grep -qx 2 ||
  fail "--backing: info --backing-chain"
expect_error "not supported by this command" vdtool resize --backing=p/par.vhd a/b/kid.vhd +1M
# The override is checked like any parent: a VHD with another UUID is not it.
vdtool create -q -f vhd p/stranger.vhd 4M
expect_error "parent UUID mismatch" vdtool info --backing-chain --backing=p/stranger.vhd a/b/kid.vhd
expect_error "outside the child's folder" vdisk_nbd -r -k "$VD_TMP/s.sock" a/b/kid.vhd
start_nbd -r --backing=p/par.vhd a/b/kid.vhd
if command -v qemu-img >/dev/null; then
  qemu-img compare -f raw -F raw "$nbd_uri" par.raw >/dev/null || fail "vdisk-nbd --backing: contents"
fi
stop_nbd
expect_error "one image" vdisk_nbd -r -k "$VD_TMP/s.sock" --backing=p/par.vhd a/b/kid.vhd par.raw
if [ -c /dev/fuse ] && command -v fusermount3 >/dev/null; then
  . "$top_srcdir/tests/integration/fuse-functions.sh"
  rc=0; timeout 60 "$top_builddir/fuse-frontend/vdisk-fuse" -f -r a/b/kid.vhd mnt 2>err.txt || rc=$?
  [ $rc != 0 ] && grep -q "outside the child's folder" err.txt || fail "vdisk-fuse: rc $rc: $(cat err.txt)"
  fuse_mount mnt -r --backing=p/par.vhd a/b/kid.vhd
  cmp mnt/kid.raw par.raw || fail "vdisk-fuse --backing: contents"
  fuse_umount mnt
fi

# commit and rebase take the override too (the parent they read or write).
expect_error "outside the child's folder" vdtool commit a/b/kid.vhd
expect_error "outside the child's folder" vdtool rebase -b "" a/b/kid.vhd
if command -v qemu-io >/dev/null; then
  start_nbd --backing=p/par.vhd a/b/kid.vhd
  qemu-io -f raw -c 'write -P 0x3c 64k 4k' "$nbd_uri" >/dev/null || fail "write into kid"
  stop_nbd
  cp par.raw want.raw
  head -c 4096 /dev/zero | tr '\0' '\074' |
    dd of=want.raw bs=4096 seek=16 conv=notrunc status=none
  cp a/b/kid.vhd kid0.vhd; cp p/par.vhd par0.vhd
  vdtool commit --backing=p/par.vhd a/b/kid.vhd | grep -q 'Image committed' ||
    fail "commit --backing"
  vdtool convert -f vpc -O raw p/par.vhd out/par-committed.raw
  cmp out/par-committed.raw want.raw || fail "commit --backing: the parent differs"
  cp kid0.vhd a/b/kid.vhd; cp par0.vhd p/par.vhd
  vdtool rebase --backing=p/par.vhd -b "" a/b/kid.vhd
  vdtool compare a/b/kid.vhd want.raw >/dev/null || fail "rebase --backing: contents"
fi

# 5. Loops at depth 3 and the depth bound.
mkdir l
vdtool create -q -f vhd -o block_size=512K l/a.vhd 4M
vdtool create -q -f vhd -b a.vhd l/b.vhd
vdtool create -q -f vhd -b b.vhd l/c.vhd
/usr/bin/python3 "$top_srcdir/tests/vhdgen/vhdgen.py" uuid l/a.vhd > uuid.txt
vdtool create -q -f vhd -b c.vhd l/a2.vhd
/usr/bin/python3 "$top_srcdir/tests/vhdgen/vhdgen.py" setuuid l/a2.vhd "$(cat uuid.txt)"
mv l/a2.vhd l/a.vhd                      # a -> c -> b -> a
for img in a b c; do
  expect_error "parent loop: .* is already in the chain" vdtool info --backing-chain l/$img.vhd
  expect_error "parent loop" vdtool convert l/$img.vhd out/loop.raw
done
mkdir d; vdtool create -q -f vhd -o block_size=512K d/c0.vhd 1M
i=0; rc=0
while [ $i -lt 70 ]; do
  vdtool create -q -f vhd -b c$i.vhd d/c$((i + 1)).vhd 2>err.txt || { rc=$?; break; }
  i=$((i + 1))
done
[ $rc = 1 ] || fail "a chain of 70 was created (rc $rc)"
[ "$(wc -l < err.txt)" = 1 ] && grep -q 'deeper than 64' err.txt || fail "depth: $(cat err.txt)"
vdtool info --backing-chain d/c$((i - 1)).vhd >/dev/null || fail "the deepest allowed chain does not open"

# 6. create -F (qemu-img's rule: the backing opens in that format or the
# create fails, "Image is not in qcow2 format").
vdtool create -q -f vhd base.vhd 2M
pattern_bytes 4096 3 > pat.bin
vdtool convert -n -f raw pat.bin base.vhd
vdtool create -q -f vhd -b base.vhd -F raw rawkid.vhd
vdtool info --backing-chain rawkid.vhd > info.txt
grep -q '^backing file format: raw' info.txt || fail "-F raw: $(cat info.txt)"
grep -q 'parent-uuid: 00000000-0000-0000-0000-000000000000' info.txt || fail "-F raw: UUID recorded"
[ "$(vdtool info rawkid.vhd | sed -n 's/^virtual size: .*(\([0-9]*\) bytes)/\1/p')" = \
  "$(stat -c %s base.vhd)" ] || fail "-F raw: size is not base.vhd's file size"
vdtool compare -F raw rawkid.vhd base.vhd >/dev/null || fail "-F raw: child does not read base.vhd's bytes"
truncate -s 2M base.raw
expect_error "rawkid2\.vhd: backing file is not a 'vpc' image: .*base\.raw" \
  vdtool create -f vhd -b base.raw -F vpc rawkid2.vhd
! [ -e rawkid2.vhd ] || fail "-F vpc over raw left a file"
vdtool convert -O vdz base.raw base.vdz
expect_error "cannot be recorded as 'raw': a VHD child would reopen it as 'vdz'" \
  vdtool create -f vhd -b base.vdz -F raw vdzkid.vhd
vdtool create -q -f vhd -b base.vhd -F vpc vkid.vhd
vdtool info vkid.vhd | grep -q '^backing file format: vpc' || fail "-F vpc"
exit 0
