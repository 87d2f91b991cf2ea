#!/usr/bin/env bash
# What vdtool raid assemble and create do with members (issue 10, items 12
# and 13), judged on the superblocks themselves (read here with Python from
# the documented layout) and with e2fsprogs:
#  - assemble with a working member left off refuses without --run and
#    changes nothing; with --run it starts degraded, says so, and does not
#    mark the member faulty: given again, it is active with no rebuild;
#    if the array was written meanwhile, it stays out until replaced;
#  - create refuses a member of another array (naming its UUID), an ext4
#    image (also inside a VHD), swap, GPT and MBR disks unless --force.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
requires cmp qemu-img

cd "$VD_TMP"
# sb MEMBER...: "events E roles R0,R1,R2 dirty D" per member, read straight
# from the superblock at 4 KiB (docs/raid-format.md).
sb() {
  /usr/bin/python3 - "$@" <<'EOF'
import struct, sys
for p in sys.argv[1:]:
    with open(p, "rb") as f:
        f.seek(4096)
        b = f.read(4096)
    assert b[:8] == b"VDRAIDSB", p
    n = struct.unpack_from("<I", b, 44)[0]
    flags = struct.unpack_from("<I", b, 52)[0]
    ev = struct.unpack_from("<Q", b, 56)[0]
    roles = [struct.unpack_from("<I", b, 512 + 32 * i + 16)[0] for i in range(n)]
    print("events %d roles %s dirty %d" % (ev, ",".join(map(str, roles)), flags & 1))
EOF
}
states() {
  vdtool raid detail --output=json a.vdraid |
    /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(" ".join(m["state"] for m in j["members"]), "rebuilding" if j["rebuild"] else "-")'
}

# ---- item 12: assemble with a member left off ----
qemu-img create -q -f raw src.raw 8M
pattern_bytes $((3*1024*1024)) 12 > rnd.bin
dd if=rnd.bin of=src.raw bs=1M seek=2 conv=notrunc status=none
vdtool raid create -l 5 -c 64K --size 5M a.vdraid m0 m1 m2
vdtool convert -n -O raid src.raw a.vdraid
before=$(sb m0 m1 m2)
echo "$before" | grep -qv "roles 0,0,0 dirty 0" && fail "not clean: $before"

expect_error "a.vdraid: slot 1 of array .* is working but was not given: .*--run" \
  vdtool raid assemble a.vdraid m0 m2
[ "$(sb m0 m1 m2)" = "$before" ] ||
  fail "a refused assembly changed the superblocks: $(sb m0 m1 m2)"

rc=0
vdtool raid assemble --run a.vdraid m0 m2 2>assemble.err || rc=$?
[ $rc -eq 0 ] || fail "assemble --run: exit $rc: $(cat assemble.err)"
grep -q "a.vdraid: started degraded: slot 1 (missing)" assemble.err ||
  fail "assemble --run did not say it started degraded: $(cat assemble.err)"
[ "$(sb m0 m1 m2)" = "$before" ] ||
  fail "assemble --run demoted the member left off: $(sb m0 m1 m2)"
[ "$(states)" = "active missing active -" ] || fail "after --run: $(states)"
vdtool convert a.vdraid out.raw          # read while degraded
cmp -s src.raw out.raw || fail "degraded array reads wrong data"
[ "$(sb m0 m1 m2)" = "$before" ] || fail "a read changed the superblocks"

# Given again: active at once, no rebuild, nothing rewritten.
vdtool raid assemble a.vdraid m0 m1 m2
[ "$(states)" = "active active active -" ] || fail "re-added: $(states)"
[ "$(sb m0 m1 m2)" = "$before" ] || fail "re-adding rewrote superblocks"
out=$(vdtool raid scrub a.vdraid) || fail "scrub: $out"
echo "$out" | grep -q " 0 mismatched" || fail "scrub after re-adding: $out"

# Left off and written meanwhile: it is out of date, recorded as faulty at
# the first write, and stays out until rebuilt.
vdtool raid assemble --run a.vdraid m0 m2 2>/dev/null
pattern_bytes $((1024*1024)) 13 > rnd2.bin
dd if=rnd2.bin of=src.raw bs=1M seek=1 conv=notrunc status=none
vdtool convert -n -O raid src.raw a.vdraid
sb m0 m2 | grep -vq "roles 0,1,0 dirty 0" &&
  fail "a write while degraded did not record slot 1: $(sb m0 m2)"
vdtool raid assemble a.vdraid m0 m1 m2 2>assemble.err
grep -q "started degraded: slot 1 (faulty)" assemble.err ||
  fail "an out-of-date member was not kept out: $(cat assemble.err)"
vdtool convert a.vdraid out.raw
cmp -s src.raw out.raw || fail "stale member data was read"
vdtool raid replace a.vdraid 1 m1
[ "$(states)" = "active active active -" ] || fail "after rebuild: $(states)"
vdtool raid fail a.vdraid 0
vdtool convert a.vdraid out.raw
cmp -s src.raw out.raw || fail "the rebuilt member holds wrong data"

# ---- item 13: create over a member of another array or a filesystem ----
uuid=$(sed -n 's/^uuid //p' a.vdraid)
vdtool create -f raw f0 5M >/dev/null
vdtool create -f raw f1 5M >/dev/null
cp m2 m2.orig
expect_error "m2: holds a vdisk RAID superblock of array $uuid \(RAID5, slot 2 of 3\): not overwritten \(--force" \
  vdtool raid create -l 1 n.vdraid f0 m2
cmp -s m2 m2.orig || fail "a refused create changed the member"
[ ! -e n.vdraid ] || fail "a refused create wrote a descriptor"
expect_error "m2: holds a vdisk RAID superblock of array $uuid" \
  vdtool raid create -l 1 --size 5M n.vdraid f0 m2
cmp -s m2 m2.orig || fail "a refused create --size changed the member"

if command -v mkfs.ext4 >/dev/null 2>&1; then
  qemu-img create -q -f raw e4.img 8M
  mkfs.ext4 -q -F e4.img
  cp e4.img e4.orig
  expect_error "e4.img: holds an ext4 filesystem \(magic 0xEF53 at byte 1080\)" \
    vdtool raid create -l 1 n.vdraid e4.img f1 </dev/null
  cmp -s e4.img e4.orig || fail "a refused create changed the ext4 image"
  # The same filesystem inside a VHD is seen through the VHD.
  vdtool convert -O vpc e4.img e4.vhd
  expect_error "e4.vhd: holds an ext4 filesystem" \
    vdtool raid create -l 1 n.vdraid e4.vhd f1
  qemu-img create -q -f raw e2.img 4M
  mkfs.ext2 -q -F e2.img
  expect_error "e2.img: holds an ext2 filesystem" \
    vdtool raid create -l 1 n.vdraid e2.img f1
  e2fsck -n -f e4.img >/dev/null 2>&1 || fail "e4.img is not a clean ext4 to start with"
  # On a terminal vdtool asks (script(1) gives it one): no keeps the data.
  if command -v script >/dev/null 2>&1; then
    out=$(printf 'n\n' | script -qec "'$top_builddir/tools/vdtool' raid create -l 1 n.vdraid e4.img f1" /dev/null) &&
      fail "answering no on a terminal still created the array: $out"
    echo "$out" | grep -q "e4.img: holds an ext4 filesystem" ||
      fail "the terminal question does not name the filesystem: $out"
    echo "$out" | grep -q "Overwrite it and create the array? \[y/N\]" ||
      fail "no question on a terminal: $out"
    cmp -s e4.img e4.orig || fail "answering no changed the image"
    [ ! -e n.vdraid ] || fail "answering no wrote a descriptor"
  fi
  vdtool raid create --force -l 1 n.vdraid e4.img f1
  e2fsck -n -f e4.img >/dev/null 2>&1 && fail "--force did not overwrite the filesystem"
  vdtool raid detail n.vdraid | grep -q "State : clean$" || fail "forced create"
fi
if command -v mkswap >/dev/null 2>&1; then
  qemu-img create -q -f raw sw.img 4M
  mkswap -q sw.img >/dev/null
  expect_error "sw.img: holds Linux swap space \(at byte 4086\)" \
    vdtool raid create -l 1 s.vdraid sw.img f0
fi
if command -v sfdisk >/dev/null 2>&1; then
  qemu-img create -q -f raw gpt.img 4M
  echo 'label: gpt' | sfdisk -q gpt.img >/dev/null
  expect_error "gpt.img: holds a GPT partition table \(\"EFI PART\" at byte 512\)" \
    vdtool raid create -l 1 s.vdraid gpt.img f0
  qemu-img create -q -f raw mbr.img 4M
  printf 'label: dos\n,,83\n' | sfdisk -q mbr.img >/dev/null
  expect_error "mbr.img: holds an MBR partition table \(0x55AA at byte 510\)" \
    vdtool raid create -l 1 s.vdraid mbr.img f0
fi
# A FIFO is never a member, even forced, and never blocks.
mkfifo pipe
expect_error "pipe: not a regular file or block device" \
  timeout 60 "$top_builddir/tools/vdtool" raid create --force -l 1 p.vdraid pipe f0
# Empty and zeroed members are fine without --force.
vdtool create -f raw z0 5M >/dev/null
vdtool create -f raw z1 5M >/dev/null
vdtool raid create -l 1 z.vdraid z0 z1
exit 0
