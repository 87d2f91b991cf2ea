#!/usr/bin/env bash
# A guest cannot turn its disk into configuration (issue 10, item 1).
# vdisk-nbd (and vdisk-fuse) serve a raw image writable without -f; the
# guest writes a differencing-VHD header into sector 0 and the last sector
# whose parent locators name a host file (absolute C:\... and relative
# ..\..\ forms); the server restarts with the same command; the guest
# reads its whole disk.  The writes must be refused (EPERM) and no byte of
# the host file may appear.  -f raw lifts the restriction.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
. "$top_srcdir/tests/integration/fuse-functions.sh"
requires cmp sha256sum
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"
craft() { /usr/bin/python3 "$top_srcdir/tests/integration/trust-craft.py" "$@"; }

cd "$VD_TMP"
size=$((8 * 1024 * 1024))
mkdir -p host/vm/disks
pattern_bytes $((256 * 1024)) 77 > host/secret.bin
truncate -s $size disk.orig
pattern_bytes $((64 * 1024)) 5 | dd of=disk.orig bs=64k seek=3 conv=notrunc status=none
img=host/vm/disks/disk.raw
winabs='C:'$(printf '%s' "$VD_TMP/host/secret.bin" | tr / '\\')

# guest_attack URI LOCATOR: the guest's writes, each of which must fail
# with EPERM.  A harmless write to sector 0 (an MBR) must still succeed.
guest_attack() {
  craft head $size "$2" > head.bin
  craft tail $size > tail.bin
  /usr/bin/python3 - "$1" $size <<'PY' || fail "guest attack through NBD: see above"
import errno, nbd, sys
h = nbd.NBD()
h.set_strict_mode(0)      # let unaligned writes reach the server
h.connect_uri(sys.argv[1])
size = int(sys.argv[2])
head = open("head.bin", "rb").read()
tail = open("tail.bin", "rb").read()
def refused(what, fn):
    try:
        fn()
    except nbd.Error as e:
        if e.errno not in (errno.EPERM, "EPERM"):
            sys.exit("%s: failed with %s, expected EPERM" % (what, e.errno))
        return
    sys.exit("%s: accepted" % what)
refused("header at sector 0", lambda: h.pwrite(head, 0))
refused("footer in the last sector", lambda: h.pwrite(tail, size - 512))
# Piece by piece: each write alone leaves no magic, together they would.
h.pwrite(b"conec", 0)
refused("second half of the cookie", lambda: h.pwrite(b"tix", 5))
refused("cookie at the end", lambda: h.pwrite(b"conectix", size - 512))
refused("511-byte footer cookie", lambda: h.pwrite(b"conectix", size - 511))
h.pwrite(b"\0" * 5, 0)
mbr = bytearray(512); mbr[510:512] = b"\x55\xaa"
h.pwrite(bytes(mbr), 0)          # a partition table is fine
h.flush()
h.shutdown()
PY
}

# read_all URI OUT: the guest reads its whole disk.
read_all() {
  /usr/bin/python3 - "$1" "$2" <<'PY' || fail "reading the disk back through NBD failed"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
with open(sys.argv[2], "wb") as f:
    size = h.get_size()
    for off in range(0, size, 1 << 20):
        f.write(h.pread(min(1 << 20, size - off), off))
h.shutdown()
PY
}

# no_secret FILE: no 4 KiB piece of the host file appears in FILE.
no_secret() {
  craft no-secret "$1" host/secret.bin ||
    fail "$1: holds bytes of the host's secret file"
}

# The expected disk after the attack: the original plus the MBR signature.
cp disk.orig expect.raw
printf '\x55\xaa' | dd of=expect.raw bs=1 seek=510 conv=notrunc status=none

for loc in "$winabs" '..\..\secret.bin'; do
  cp disk.orig "$img"
  : > "$VD_TMP/nbd.err"
  start_nbd "$img"
  grep -q "warning: .*disk.raw: image format was not specified; probing guessed raw" \
    "$VD_TMP/nbd.err" || fail "no warning for a probed raw image: $(cat "$VD_TMP/nbd.err")"
  [ "$(grep -c . "$VD_TMP/nbd.err")" = 1 ] || fail "the warning is not one line"
  guest_attack "$nbd_uri" "$loc"
  stop_nbd
  start_nbd "$img"                       # the same command again
  read_all "$nbd_uri" seen.raw
  stop_nbd
  no_secret seen.raw
  cmp seen.raw expect.raw || fail "$loc: the disk does not read as the guest left it"
  vdtool info "$img" | grep -q '^file format: raw' || fail "$loc: the image no longer probes as raw"
done

# Read-only serving or -f raw: no warning.
: > "$VD_TMP/nbd.err"
start_nbd -r "$img"
stop_nbd
start_nbd -f raw "$img"
! grep -q warning "$VD_TMP/nbd.err" || fail "warning with -r or -f raw: $(cat "$VD_TMP/nbd.err")"
# -f raw lifts the restriction: the operator said what the file is.
craft head $size "$winabs" > head.bin
/usr/bin/python3 -c '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(open("head.bin", "rb").read(), 0); h.flush(); h.shutdown()' "$nbd_uri" ||
  fail "-f raw: the write was refused"
stop_nbd
cmp -n 3072 head.bin "$img" || fail "-f raw: the header did not reach the file"

# vdtool: the same rule in the dispatcher.  convert -n writes into an
# existing output opened by probing: copying a VHD header into it is refused.
craft file evil.raw $size "$winabs"
cp disk.orig target.raw
expect_error 'target\.raw: write .* refused: the image format was not specified' \
  vdtool convert -n -f raw evil.raw target.raw
vdtool info target.raw | grep -q '^file format: raw' || fail "convert -n: target no longer raw"
# vdisk-fuse: write through the mount, remount, read.
if [ -c /dev/fuse ] && command -v fusermount3 >/dev/null; then
  cp disk.orig "$img"
  craft head $size "$winabs" > head.bin
  fuse_mount mnt "$img"
  [ "$(errno_of "
fd = os.open('mnt/disk.raw', os.O_WRONLY)
os.pwrite(fd, open('head.bin', 'rb').read(), 0)")" = EPERM ] ||
    fail "vdisk-fuse: the header write was not refused with EPERM"
  [ "$(errno_of "
fd = os.open('mnt/disk.raw', os.O_WRONLY)
os.pwrite(fd, open('tail.bin', 'rb').read(), $size - 512)")" = EPERM ] ||
    fail "vdisk-fuse: the footer write was not refused with EPERM"
  fuse_umount mnt
  fuse_mount mnt "$img"
  no_secret mnt/disk.raw
  cmp mnt/disk.raw disk.orig || fail "vdisk-fuse: the disk changed"
  fuse_umount mnt
  # --format=raw lifts it.
  fuse_mount mnt --format=raw "$img"
  [ "$(errno_of "
fd = os.open('mnt/disk.raw', os.O_WRONLY)
os.pwrite(fd, open('head.bin', 'rb').read(), 0)")" = OK ] ||
    fail "vdisk-fuse --format=raw: the write was refused"
  fuse_umount mnt
else
  echo "vdisk-fuse part skipped: no /dev/fuse" >&2
fi
exit 0
