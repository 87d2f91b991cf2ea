#!/usr/bin/env bash
# RAID refusals and bad input: one line naming the object and the way out,
# non-zero exit, nothing changed.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/functions.sh"
requires cmp

cd "$VD_TMP"
expect_error "invalid option or missing argument: --bogus" vdtool raid scrub --bogus a.vdraid
expect_error "invalid option or missing argument: -Z" vdtool raid create -Z a.vdraid m0 m1
expect_error "level must be 0, 1 or 5" vdtool raid create -l 6 a.vdraid m0 m1
expect_error "RAID5 needs 3 to 32 members" \
  vdtool raid create -l 5 --size 8M a.vdraid m0 m1
expect_error "power of two" vdtool raid create -l 0 -c 3000 --size 8M a.vdraid m0 m1
expect_error "members must hold at least" \
  vdtool raid create -l 1 --size 100K a.vdraid m0 m1
[ ! -e m0 ] || fail "a refused create left member files behind"
expect_error "given twice" vdtool raid create -l 1 --size 8M a.vdraid m0 m0

vdtool raid create -l 5 -c 16K --size 4M a.vdraid m0 m1 m2
expect_error "already exists" vdtool raid create -l 5 --size 4M a.vdraid x0 x1 x2
pattern_bytes 1000000 3 > data.bin
qemu_free=$(vdtool info a.vdraid | grep -c "raid level: 5")
[ "$qemu_free" = 1 ] || fail "info does not show the level"

# Broken descriptors.
printf 'VDRAID 1\nbogus line\n' > bad1.vdraid
expect_error "bad1.vdraid: line 2: unknown keyword" vdtool info bad1.vdraid
head -c 9 a.vdraid > bad2.vdraid
expect_error "bad2.vdraid: RAID descriptor lacks" vdtool info bad2.vdraid
sed 's/^member 1 raw m1$/member 1 raw m2/' a.vdraid > bad3.vdraid
vdtool info bad3.vdraid | grep -q "state: clean, degraded" ||
  fail "a member in the wrong slot was not left out"
vdtool raid detail bad3.vdraid | grep -q "m2: superblock says slot 2 of 3, descriptor says 1 of 3" ||
  fail "detail does not say why slot 1 is unused"
# A member of another array.
vdtool raid create -l 1 --size 4M other.vdraid o0 o1
sed 's/^member 2 raw m2$/member 2 raw o0/' a.vdraid > bad4.vdraid
vdtool info bad4.vdraid | grep -q "state: clean, degraded" ||
  fail "a foreign member was not left out"
expect_error "belongs to another array" vdtool raid assemble x.vdraid m0 o0
# Corrupted superblock on every member: refuse, naming the member.
cp m0 m0.bak; cp m1 m1.bak; cp m2 m2.bak
printf '\xff' | dd of=m0 bs=1 seek=4200 conv=notrunc status=none
printf '\xff' | dd of=m1 bs=1 seek=4200 conv=notrunc status=none
printf '\xff' | dd of=m2 bs=1 seek=4200 conv=notrunc status=none
expect_error "a.vdraid: .*checksum mismatch" vdtool info a.vdraid
mv m0.bak m0; mv m1.bak m1; mv m2.bak m2

# Two members missing: refuse, saying how many are needed.
mv m1 m1.away; mv m2 m2.away
expect_error "RAID5 needs 2 of 3 members, 1 usable" vdtool info a.vdraid
vdtool raid detail a.vdraid | grep -q "Will not start: RAID5 needs 2 of 3" ||
  fail "detail does not explain the refusal"
mv m1.away m1; mv m2.away m2

# fail: the last redundancy cannot be failed away.
vdtool raid fail a.vdraid m1
expect_error "slot 1 is already faulty" vdtool raid fail a.vdraid 1
cp m0 m0.before
expect_error "failing slot 2 would stop the RAID5" vdtool raid fail a.vdraid 2
expect_error "not a member" vdtool raid fail a.vdraid nosuch
# Scrub needs redundancy.
expect_error "degraded: nothing to compare" vdtool raid scrub a.vdraid
# replace with a too small device.
vdtool create -f raw small.img 1M
expect_error "small.img: too small for slot 1" vdtool raid replace a.vdraid 1 small.img
# replace of a working member while degraded: it would stop the array.
vdtool create -f raw big.img 8M >/dev/null
expect_error "slot 2 is active and the array is degraded" vdtool raid replace a.vdraid 2 big.img
expect_error "RAID0 has no redundancy" sh -c '
  vdtool raid create -q -l 0 --size 4M z.vdraid z0 z1 && vdtool create -f raw z2 4M >/dev/null &&
  vdtool raid replace z.vdraid 0 z2'
exit 0
