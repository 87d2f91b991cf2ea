#!/usr/bin/env bash
# vdisk-fuse on RAID arrays made by vdtool raid over dynamic VHD members:
# a RAID1 whose members, read by qemu-img, hold exactly the bytes written
# through the mount; a RAID5 whose parity scrubs clean after writes and
# punches through the mount, and which reads the same once a member has
# failed.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
fuse_requires
requires qemu-img fallocate

cd "$VD_TMP"
mnt=$VD_TMP/mnt
mib=$((1024 * 1024))

vsize() { vdtool info --output=json "$1" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }

# random_writes FILE EXPECTED SEED: the same writes (any offset/length)
# to the exposed file and to a plain file.
random_writes() {
  /usr/bin/python3 - "$@" <<'PY'
import os, random, sys
r = random.Random(int(sys.argv[3]))
fd = os.open(sys.argv[1], os.O_RDWR)
exp = os.open(sys.argv[2], os.O_RDWR)
n = os.fstat(fd).st_size
for i in range(80):
    off = r.randrange(0, n - 1)
    ln = min(r.choice([1, 700, 4096, 65536, 65537, 200000, 2**20]), n - off)
    data = r.randbytes(ln)
    if os.pwrite(fd, data, off) != ln:
        sys.exit("short write")
    os.pwrite(exp, data, off)
os.fsync(fd)
PY
}

# RAID1: every member's data area (its offset from the superblock, the
# member read by qemu-img) equals what was written to the array.
vdtool raid create -l 1 --size 12M -f vpc mirror.vdraid a.vhd b.vhd >/dev/null
size=$(vsize mirror.vdraid)
head -c "$size" /dev/zero > mirror-expected.raw
fuse_mount "$mnt" mirror.vdraid
[ "$(stat -c %s "$mnt/mirror.raw")" -eq "$size" ] || fail "mirror.raw has the wrong size"
random_writes "$mnt/mirror.raw" mirror-expected.raw 1
cmp "$mnt/mirror.raw" mirror-expected.raw || fail "RAID1 reads back wrong through the mount"
fuse_umount "$mnt"
for m in a.vhd b.vhd; do
  vdtool check "$m" >check.log 2>&1 || { cat check.log; fail "vdtool check: $m"; }
  qemu-img convert -f vpc -O raw "$m" member.raw
  doff=$(od -An -tu8 -j $((4096 + 72)) -N 8 member.raw | tr -d ' ')
  cmp <(tail -c +$((doff + 1)) member.raw | head -c "$size") mirror-expected.raw ||
    fail "RAID1 member $m (read by qemu-img) does not hold the array's data"
done

# RAID5: parity stays consistent; a degraded array reads the same.
vdtool raid create -l 5 -c 64K --size 8M -f vpc array.vdraid m0.vhd m1.vhd m2.vhd >/dev/null
size=$(vsize array.vdraid)
head -c "$size" /dev/zero > expected.raw
fuse_mount "$mnt" array.vdraid
random_writes "$mnt/array.raw" expected.raw 2
fallocate -p -o $((mib + 1000)) -l $((3 * mib)) "$mnt/array.raw"
fallocate -z -o 70000 -l 5000 "$mnt/array.raw"
/usr/bin/python3 - expected.raw <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, bytes(3 * 2**20), 2**20 + 1000)
os.pwrite(fd, bytes(5000), 70000)
PY
cmp "$mnt/array.raw" expected.raw || fail "RAID5 reads back wrong through the mount"
fuse_umount "$mnt"
vdtool raid scrub array.vdraid > scrub.log 2>&1 || { cat scrub.log; fail "scrub failed"; }
grep -q ' 0 mismatched' scrub.log || fail "parity mismatches after writes through the mount: $(cat scrub.log)"
vdtool raid fail array.vdraid m1.vhd >/dev/null 2>&1 || fail "could not fail a member"
fuse_mount "$mnt" -r array.vdraid
cmp "$mnt/array.raw" expected.raw || fail "degraded RAID5 reads differently through the mount"
fuse_umount "$mnt"

# Without -f vdisk-fuse opens the array, then detaches (forks): the array
# must keep working in the daemon and be flushed when it exits.
vdtool raid create -l 5 -c 64K --size 8M -f vpc bg.vdraid n0.vhd n1.vhd n2.vhd >/dev/null
head -c "$(vsize bg.vdraid)" /dev/zero > bg-expected.raw
vdtool create -f vpc n3.vhd "$(vsize n1.vhd)" >/dev/null   # a replacement
mkdir -p "$mnt"
# (A relative path: the daemon runs in "/", yet its runtime entry and the
# descriptor must stay those of the array it opened.)
vdisk_fuse bg.vdraid "$mnt"
on_exit "fusermount3 -uz '$mnt'"
mountpoint -q "$mnt" || fail "vdisk-fuse returned before the mount was ready"
pid=$(pgrep -f -- "vdisk-fuse bg\.vdraid $mnt\$") || fail "no vdisk-fuse daemon found"
random_writes "$mnt/bg.raw" bg-expected.raw 3
cmp "$mnt/bg.raw" bg-expected.raw || fail "RAID5 in a detached vdisk-fuse reads back wrong"
# The daemon runs the array's threads: it answers online management on
# its control socket (found through its runtime entry), and a replacement
# is rebuilt by its rebuild job.
vdtool raid detail bg.vdraid | grep -q "Served by : pid $pid\$" ||
  fail "detail does not name the daemon $pid: $(vdtool raid detail bg.vdraid)"
vdtool raid fail bg.vdraid 1 >/dev/null || fail "online fail through the daemon"
vdtool raid replace --no-wait bg.vdraid 1 n3.vhd >/dev/null ||
  fail "online replace through the daemon"
# (Polled: a look at the superblocks while the daemon rewrites them may
# see a transient state.)
rebuilt() {
  vdtool raid detail --output=json bg.vdraid 2>/dev/null | /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
assert not j["degraded"], j
assert [m["state"] for m in j["members"]] == ["active"] * 3, j
assert j["members"][1]["path"].endswith("n3.vhd"), j
' 2>/dev/null
}
for i in $(seq 300); do rebuilt && break; sleep 0.2; done
rebuilt || fail "the detached vdisk-fuse did not rebuild the replaced member: $(vdtool raid detail bg.vdraid 2>&1)"
cmp "$mnt/bg.raw" bg-expected.raw || fail "RAID5 reads back wrong after the rebuild"
fusermount3 -u "$mnt"
for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$pid" 2>/dev/null || fail "the detached vdisk-fuse did not exit after unmount"
vdtool raid scrub bg.vdraid > scrub.log 2>&1 || { cat scrub.log; fail "scrub failed"; }
grep -q ' 0 mismatched' scrub.log || fail "parity mismatches after a detached mount: $(cat scrub.log)"
fuse_mount "$mnt" -r bg.vdraid
cmp "$mnt/bg.raw" bg-expected.raw || fail "data written through a detached mount is missing"
fuse_umount "$mnt"
echo OK
