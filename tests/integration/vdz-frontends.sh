#!/usr/bin/env bash
# The frontends serve vdz images read-only with no change: vdisk-nbd
# (checked with nbdinfo, qemu-img compare, nbdcopy and nbdsh) and
# vdisk-fuse (cmp).  Writes are refused; a corrupted cluster fails reads
# of that range only (EIO over NBD) while the rest reads.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img nbdinfo nbdcopy nbdsh od

raw=$VD_TMP/disk.raw
truncate -s $((12 * 1024 * 1024 + 4096)) "$raw"
pattern_bytes $((2 * 1024 * 1024)) 7 | dd of="$raw" bs=1M seek=1 conv=notrunc status=none
yes 'served over NBD and FUSE' | head -c $((3 * 1024 * 1024)) |
  dd of="$raw" bs=1M seek=6 conv=notrunc status=none
vdtool convert -O vdz -o cluster_size=64K "$raw" "$VD_TMP/disk.vdz"

# Corrupt cluster 100 (in the text at 6.25 MiB) of a copy.
cp "$VD_TMP/disk.vdz" "$VD_TMP/bad.vdz"
index_off=$(od -An -tu8 -j32 -N8 "$VD_TMP/bad.vdz" | tr -d ' ')
c=$(od -An -tu8 -j $((index_off + 100 * 16)) -N8 "$VD_TMP/bad.vdz" | tr -d ' ')
printf '\x00\x01' | dd of="$VD_TMP/bad.vdz" bs=1 seek=$((c + 10)) conv=notrunc status=none

# NBD, without -r: the export is read-only because the image is.
start_nbd disk="$VD_TMP/disk.vdz" bad="$VD_TMP/bad.vdz"
uri=$(nbd_uri_for disk)
buri=$(nbd_uri_for bad)
nbdinfo --json "$uri" > "$VD_TMP/info.json"
/usr/bin/python3 - "$VD_TMP/info.json" "$(stat -c %s "$raw")" <<'PY' || fail "nbdinfo: $(cat "$VD_TMP/info.json")"
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
assert e["is_read_only"], "export is writable"
assert e["export-size"] == int(sys.argv[2]), "wrong size"
PY
qemu-img compare -q -f raw -F raw "$raw" "$uri" || fail "qemu-img compare over NBD differs"
# Served without -r, the image still takes only a shared lock.
vdtool info "$VD_TMP/disk.vdz" >/dev/null || fail "the served vdz is locked exclusively"
nbdcopy --connections=2 --requests=16 --request-size=4096 "$uri" "$VD_TMP/back.raw" ||
  fail "nbdcopy from NBD failed"
cmp "$raw" "$VD_TMP/back.raw" || fail "nbdcopy copy differs"

/usr/bin/python3 - "$uri" "$buri" "$raw" <<'PY' || fail "nbdsh checks failed"
import errno, sys, nbd
good, bad, raw = sys.argv[1:4]
data = open(raw, "rb").read()
h = nbd.NBD(); h.connect_uri(good)
try:
    h.pwrite(b"x" * 512, 0)
    raise SystemExit("write to a vdz export succeeded")
except nbd.Error as e:
    assert e.errnum in (errno.EPERM, errno.EROFS), e
for off, n in ((0, 4096), (1048576 + 512, 70144), (len(data) - 512, 512)):
    assert h.pread(n, off) == data[off:off + n], "read at %d differs" % off
h.shutdown()
b = nbd.NBD(); b.connect_uri(bad)
cs = 65536
# 1 MiB requests take 16 clusters with one read of the file: one bad
# cluster among them fails the request, the 16 before it read.
for off, n in ((100 * cs, cs), (100 * cs + 4096, 4096), (99 * cs, 2 * cs),
               (96 * cs, 16 * cs), (100 * cs - 512, 1048576)):
    try:
        b.pread(n, off)
        raise SystemExit("read of the corrupted cluster at %d succeeded" % off)
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
for off, n in ((99 * cs, cs), (101 * cs, cs), (101 * cs + 512, 1024), (0, 4096),
               (84 * cs, 16 * cs), (101 * cs, 16 * cs)):
    assert b.pread(n, off) == data[off:off + n], "read at %d differs" % off
b.shutdown()
PY
stop_nbd

# FUSE.
if [ -c /dev/fuse ] && command -v fusermount3 >/dev/null; then
  . "$top_srcdir/tests/integration/fuse-functions.sh"
  fuse_mount "$VD_TMP/mnt" "$VD_TMP/disk.vdz"
  cmp "$raw" "$VD_TMP/mnt/disk.raw" || fail "FUSE file differs"
  r=$(errno_of "fd = os.open('$VD_TMP/mnt/disk.raw', os.O_WRONLY); os.pwrite(fd, b'x', 0)")
  [ "$r" = EROFS ] || [ "$r" = EPERM ] || [ "$r" = EACCES ] ||
    fail "writing through FUSE gave $r"
  fuse_umount "$VD_TMP/mnt"
fi
exit 0
