#!/usr/bin/env bash
# A failed flush stays failed (issue 10, item 10).  An LD_PRELOAD shim
# (tests/unit/vdtest-shim.c) makes the first fdatasync of the image fail
# with EIO, once, as the kernel reports a lost write-back once and then
# forgets it.  Every later flush must fail too and the error must reach
# the client: NBD_CMD_FLUSH and FUA writes through vdisk-nbd (judged by
# libnbd), fsync through vdisk-fuse, vdtool's exit code; a dynamic VHD
# must not have written its BAT, nor a dynamic VHDX, whose new blocks wait
# for the flush that failed (their BAT page stays pending and is never
# written).
. "${top_srcdir:-.}/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"
need_shim

cd "$VD_TMP"

# nbd_py: run the Python on stdin with h connected to the export "disk"
# at $nbd_sock and expect_eio(WHAT, FN, ARGS...) defined.
cat > eio.py <<'PY'
import errno, sys
import nbd
h = nbd.NBD()
h.set_export_name("disk")
h.connect_unix(sys.argv[1])
def expect_eio(what, fn, *args):
    try:
        fn(*args)
    except nbd.Error as e:
        if e.errnum != errno.EIO:
            sys.exit("%s: errno %s (%s), expected EIO" % (what, e.errnum, e.string))
        return
    sys.exit("%s: succeeded, expected EIO" % what)
PY
nbd_py() { cat eio.py - | /usr/bin/python3 - "$nbd_sock"; }

# nbd_round FORMAT IMAGE [N]: serve IMAGE with the Nth fdatasync (default
# the first) failing.
nbd_round() {
  local fmt=$1 img=$2
  LD_PRELOAD=$shim VDTEST_SHIM_FILE=$img VDTEST_FAIL_SYNC=${3:-1} \
    start_nbd -f "$fmt" "disk=$img"
  nbd_py <<'PY' || fail "$fmt: vdisk-nbd forgot a failed flush"
h.pwrite(b"\x5a" * 65536, 0)
expect_eio("first flush", h.flush)
# The kernel would report success now: the server must not.
h.pwrite(b"\xa5" * 65536, 1 << 20)
expect_eio("second flush", h.flush)
expect_eio("FUA write", h.pwrite, b"\x33" * 4096, 2 << 20, nbd.CMD_FLAG_FUA)
expect_eio("third flush", h.flush)
# Reads and plain writes still work.
assert h.pread(65536, 0) == b"\x5a" * 65536
h.pwrite(b"\x11" * 512, 4 << 20)
h.shutdown()
PY
  stop_nbd
  rm -f "$nbd_errlog"
}

truncate -s 8M disk.img
nbd_round raw disk.img

vdtool create -q -f vhd -o block_size=512K disk.vhd 8M
nbd_round vpc disk.vhd
# The blocks written before the failed flush may be lost: the BAT on disk
# must not reference them (it is written only after a successful flush).
/usr/bin/python3 - disk.vhd <<'PY' || fail "the VHD BAT was written after a failed flush"
import struct, sys
d = open(sys.argv[1], "rb").read()
bat_off = struct.unpack(">Q", d[512 + 16:512 + 24])[0]
n = struct.unpack(">I", d[512 + 28:512 + 32])[0]
bat = struct.unpack(">%dI" % n, d[bat_off:bat_off + 4 * n])
used = [i for i, e in enumerate(bat) if e != 0xFFFFFFFF]
assert not used, used
PY
rc=0; vdtool check disk.vhd >/dev/null 2>&1 || rc=$?
[ $rc = 0 ] || [ $rc = 3 ] || fail "check after the failed flush exited $rc"

# VHDX: the first write's session start takes two syncs (each header), so
# the third, the first flush's (its log entry), fails; then the fourth,
# the header write that names the entry's LogGuid.  That header may be on
# disk after all (its write went through): the entry must never be
# overwritten (before, a later commit reused its place under another
# LogGuid, and check found "no valid log sequence").
for n in 3 4; do
  rm -f disk.vhdx
  vdtool create -q -f vhdx disk.vhdx 8M
  nbd_round vhdx disk.vhdx $n
  /usr/bin/python3 - disk.vhdx <<'PY' || fail "the VHDX BAT was written after a failed flush"
import struct, sys
d = open(sys.argv[1], "rb").read()
bat = struct.unpack("<8Q", d[3 << 20:(3 << 20) + 64])   # vdtool's layout
assert not any(bat), bat
PY
  rc=0; vdtool check disk.vhdx > chk.txt 2>&1 || rc=$?
  [ $rc = 0 ] || [ $rc = 3 ] || fail "check of the VHDX after failed sync $n exited $rc: $(cat chk.txt)"
done

# VHDX: the session start's own header writes fail (sync 1: the first
# header, sync 2: the second).  The write that needed the session start
# fails, and so does every later write and flush (no header or log is
# written again until the image is reopened); reads still work; the file
# opens and checks clean, or with leaks, and the first header update of a
# new session succeeds.
for n in 1 2; do
  rm -f disk.vhdx
  vdtool create -q -f vhdx disk.vhdx 8M
  LD_PRELOAD=$shim VDTEST_SHIM_FILE=disk.vhdx VDTEST_FAIL_SYNC=$n \
    start_nbd -f vhdx "disk=disk.vhdx"
  nbd_py <<'PY' || fail "vhdx: a failed session start (sync $n) was not reported"
expect_eio("first write", h.pwrite, b"\x5a" * 65536, 0)
expect_eio("second write", h.pwrite, b"\xa5" * 65536, 1 << 20)
expect_eio("flush", h.flush)
assert h.pread(65536, 0) == bytes(65536)
h.shutdown()
PY
  stop_nbd
  rm -f "$nbd_errlog"
  rc=0; vdtool check disk.vhdx > chk.txt 2>&1 || rc=$?
  [ $rc = 0 ] || [ $rc = 3 ] || fail "check of the VHDX after failed session start sync $n exited $rc: $(cat chk.txt)"
  truncate -s 8M model.raw
  vd_nbd_io disk.vhdx model.raw 'write -P 0x42 0 64k' 'flush'
  vdtool compare -q disk.vhdx model.raw ||
    fail "the VHDX lost the write of a new session after failed sync $n"
  rm -f model.raw
done

# qcow2_serve VAR=VALUE [OPTIONS [SIZE]]: a new qcow2 (qemu-img create -o
# OPTIONS, SIZE 8M) holding 0x77 at 7 MiB, served with the shim set by VAR.
# qcow2_after WHAT: the server stopped, the image checks with at worst
# leaks and the 0x77 bytes are intact.
qcow2_serve() {
  rm -f disk.qcow2
  qemu-img create -q -f qcow2 ${2:+-o "$2"} disk.qcow2 "${3:-8M}"
  qemu-io -f qcow2 -c 'write -P 0x77 7M 64k' disk.qcow2 >/dev/null
  eval "LD_PRELOAD=\$shim VDTEST_SHIM_FILE=disk.qcow2 $1 \
    start_nbd -f qcow2 disk=disk.qcow2"
}
qcow2_after() {
  stop_nbd
  rm -f "$nbd_errlog"
  local rc=0
  qemu-img check disk.qcow2 >/dev/null 2>&1 || rc=$?
  [ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check of the qcow2 after $1 exited $rc"
  qemu-io -f qcow2 -c 'read -P 0x77 7M 64k' disk.qcow2 | grep -q 'read 65536' ||
    fail "qcow2: data written before $1's session changed"
}

# qcow2: the L2 entries of new clusters taken from the reserve wait in the
# cache until the next flush (docs/qcow2.md, "Dirty L2 entries").  The
# shim fails the first 8-byte pwrite (such an entry: the L2 table exists
# already, so no L1 entry is written): the flush that writes it back must
# fail, and every later one; the data stays readable through the server;
# qemu-img check then finds at worst leaks.
qcow2_serve VDTEST_FAIL_WRITE_LEN=8
nbd_py <<'PY' || fail "qcow2: a failed write-back of L2 entries was not reported"
h.pwrite(b"\x5a" * 4096, 0)
expect_eio("first flush", h.flush)
expect_eio("second flush", h.flush)
assert h.pread(4096, 0) == b"\x5a" * 4096
assert h.pread(4096, 7 << 20) == b"\x77" * 4096
h.shutdown()
PY
qcow2_after "the failed flush"

# qcow2, the same write-back failing at close instead (no flush came):
# the server says so and exits; the unflushed write may be lost, the
# image checks with at worst leaks and older data is intact.
qcow2_serve VDTEST_FAIL_WRITE_LEN=8
nbd_py <<'PY' || fail "qcow2: a write before the close failed"
h.pwrite(b"\x5a" * 4096, 0)
h.shutdown()
PY
stop_nbd
grep -q 'disk.qcow2: .*Input/output error' "$nbd_errlog" ||
  fail "qcow2: a failed write-back at close was not reported"
qcow2_after "the failed close"

# qcow2: the first allocating write fills the reserve of new clusters.
# Their refcounts become durable with the first sync before an L2 entry
# naming one is written: here the flush's, and that sync fails.  The flush
# fails, and so does every later flush and write (the image takes no more
# writes until it is reopened); what was written still reads back;
# qemu-img check then finds at worst leaks.
qcow2_serve VDTEST_FAIL_SYNC=1
nbd_py <<'PY' || fail "qcow2: a failed sync of the reserve was not reported"
h.pwrite(b"\x5a" * 4096, 0)
h.pwrite(b"\x5b" * 4096, 1 << 20)
expect_eio("first flush", h.flush)
expect_eio("second flush", h.flush)
expect_eio("allocating write", h.pwrite, b"\x5c" * 4096, 2 << 20)
expect_eio("overwrite", h.pwrite, b"\x5d" * 4096, 7 << 20)
assert h.pread(4096, 0) == b"\x5a" * 4096
assert h.pread(4096, 7 << 20) == b"\x77" * 4096
h.shutdown()
PY
qcow2_after "the failed reserve fill"

# qcow2: a new L2 table is written whole and its L1 entry waits for the
# next flush (docs/qcow2.md, "New tables wait for the next sync").  A
# write to the second table of a 1 GiB image (64 KiB clusters: 512 MiB
# each) makes it; the flush's first 8-byte pwrite is that L1 entry, and
# the shim fails it.  The flush fails, and every later flush and write;
# the data still reads back; qemu-img check finds at worst leaks.
qcow2_serve VDTEST_FAIL_WRITE_LEN=8 "" 1G
nbd_py <<'PY' || fail "qcow2: a failed L1 entry of a new table was not reported"
h.pwrite(b"\x5a" * 4096, 600 << 20)
expect_eio("first flush", h.flush)
expect_eio("second flush", h.flush)
expect_eio("write", h.pwrite, b"\x5c" * 4096, 700 << 20)
assert h.pread(4096, 600 << 20) == b"\x5a" * 4096
assert h.pread(4096, 7 << 20) == b"\x77" * 4096
h.shutdown()
PY
qcow2_after "the failed L1 entry"

# qcow2: the same for the refcount table entry of a new refcount block,
# written by the first sync before an L1 or L2 entry (here the flush's).
# 4 KiB clusters and 16-bit refcounts: a block covers 8 MiB of the file,
# and 9 MiB of writes (after the 0x77 bytes) take a second one; its table
# entry is the flush's first 8-byte pwrite (refcounts change 2 bytes a
# cluster, the L1 entries of the four new L2 tables go in one 40-byte
# pwrite after it).
qcow2_serve VDTEST_FAIL_WRITE_LEN=8 cluster_size=4k 24M
nbd_py <<'PY' || fail "qcow2: a failed refcount table entry was not reported"
h.pwrite(b"\x5a" * (9 << 20), 8 << 20)
expect_eio("first flush", h.flush)
expect_eio("second flush", h.flush)
expect_eio("write", h.pwrite, b"\x5c" * 4096, 20 << 20)
assert h.pread(9 << 20, 8 << 20) == b"\x5a" * (9 << 20)
assert h.pread(4096, 7 << 20) == b"\x77" * 4096
h.shutdown()
PY
qcow2_after "the failed refcount table entry"

# vdisk-fuse: fsync of the disk file gets EIO, and again the second time.
if [ -c /dev/fuse ] && [ -r /dev/fuse ] && command -v fusermount3 >/dev/null &&
   command -v mountpoint >/dev/null; then
  . "$top_srcdir/tests/integration/fuse-functions.sh"
  truncate -s 8M fuse.img
  LD_PRELOAD=$shim VDTEST_SHIM_FILE=fuse.img VDTEST_FAIL_SYNC=1 \
    fuse_mount "$VD_TMP/mnt" fuse.img
  f=$(ls "$VD_TMP/mnt")
  [ "$(echo "$f" | wc -l)" = 1 ] || fail "vdisk-fuse shows '$f'"
  /usr/bin/python3 - "$VD_TMP/mnt/$f" <<'PY' || fail "vdisk-fuse forgot a failed flush"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for n in ("first", "second"):
    os.pwrite(fd, b"\x77" * 4096, 0)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EIO:
            sys.exit("%s fsync: %s, expected EIO" % (n, e))
        continue
    sys.exit("%s fsync succeeded, expected EIO" % n)
os.close(fd)
PY
  fusermount3 -u "$VD_TMP/mnt"
  wait "$fuse_pid" || true    # its closing flush fails too
else
  echo "vdisk-fuse part skipped: /dev/fuse or fusermount3 missing"
fi

# vdtool: a convert that flushes (-t writeback; qemu-img's default,
# unsafe, flushes nothing) and whose final flush fails exits non-zero with
# one line.
pattern_bytes 1048576 3 > src.raw
vdtool create -q -f raw dst.raw 1M
LD_PRELOAD=$shim VDTEST_SHIM_FILE=dst.raw VDTEST_FAIL_SYNC=1 \
  expect_error 'dst.raw: .*flush.*Input/output error' \
  vdtool convert -t writeback -n -f raw -O raw src.raw dst.raw
echo PASS
