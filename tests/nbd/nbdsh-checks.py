#!/usr/bin/python3
# Protocol checks of vdisk-nbd through libnbd (python3-libnbd):
#   nbdsh-checks.py rw SOCKET IMAGE   writable export "disk" backed by IMAGE
#   nbdsh-checks.py ro SOCKET IMAGE   read-only export
# Client-side strictness is turned off so that the server's own checks
# (EINVAL, ENOSPC, EPERM) are what is tested.
import errno
import os
import sys

import nbd

mode, sock, image = sys.argv[1:4]
MiB = 1024 * 1024


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def connect(export="disk"):
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.set_export_name(export)
    h.connect_unix(sock)
    h.set_strict_mode(0)
    return h


def expect_errno(what, want, fn, *args):
    try:
        fn(*args)
    except nbd.Error as e:
        if e.errnum != want:
            fail("%s: errno %s (%s), expected %s"
                 % (what, e.errnum, e.string, errno.errorcode[want]))
        return
    fail("%s: succeeded, expected %s" % (what, errno.errorcode[want]))


def extents(h, count, offset, flags=0):
    got = []

    def cb(metacontext, off, entries, err):
        if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
            got.extend(zip(entries[0::2], entries[1::2]))
        return 0
    h.block_status(count, offset, cb, flags)
    return got


def file_bytes(off, n):
    with open(image, "rb") as f:
        f.seek(off)
        return f.read(n)


def check_rw():
    h = connect()
    size = h.get_size()
    if not h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
        fail("base:allocation not negotiated")

    # Fresh sparse image: one hole,zero extent covering the request.
    ext = extents(h, 4 * MiB, 0)
    if ext != [(4 * MiB, 3)]:
        fail("extents of an empty image: %r" % ext)

    # FUA write: in the file (hence durable as far as we can tell here).
    data = os.urandom(64 * 1024)
    h.pwrite(data, MiB, nbd.CMD_FLAG_FUA)
    if file_bytes(MiB, len(data)) != data:
        fail("FUA write not in the image file")
    if h.pread(len(data), MiB) != data:
        fail("read back after FUA write differs")

    ext = extents(h, 2 * MiB, 0)
    if ext[:3] != [(MiB, 3), (64 * 1024, 0), (MiB - 64 * 1024, 3)]:
        fail("extents after one write: %r" % ext)
    # REQ_ONE: exactly one extent, never past the request.
    ext = extents(h, 2 * MiB, 0, nbd.CMD_FLAG_REQ_ONE)
    if ext != [(MiB, 3)]:
        fail("REQ_ONE extents: %r" % ext)
    ext = extents(h, 4096, MiB, nbd.CMD_FLAG_REQ_ONE)
    if ext != [(4096, 0)]:
        fail("REQ_ONE extents inside data: %r" % ext)

    # Structured read spanning data and hole: the client reassembles it.
    buf = h.pread(3 * MiB, 0)
    if buf[MiB:MiB + len(data)] != data or buf[:MiB] != bytes(MiB) or \
            buf[MiB + len(data):] != bytes(2 * MiB - len(data)):
        fail("read across data and holes is wrong")
    # DF: one data chunk, same bytes.
    if h.pread(3 * MiB, 0, nbd.CMD_FLAG_DF) != buf:
        fail("DF read differs")

    # Write zeroes (plain, NO_HOLE, FUA); FAST_ZERO may say ENOTSUP.
    h.zero(4096, MiB)
    h.zero(4096, MiB + 8192, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
    got = h.pread(16384, MiB)
    want = bytes(4096) + data[4096:8192] + bytes(4096) + data[12288:16384]
    if got != want:
        fail("write zeroes result wrong")
    try:
        h.zero(65536, 2 * MiB, nbd.CMD_FLAG_FAST_ZERO)
    except nbd.Error as e:
        if e.errnum != errno.ENOTSUP:
            fail("FAST_ZERO failed with %s, not ENOTSUP" % e.errnum)

    # Trim, flush, cache.
    h.pwrite(os.urandom(65536), 3 * MiB)
    h.trim(65536, 3 * MiB)
    h.flush()
    h.cache(MiB, 0)

    # Out-of-range and invalid requests: errors, the connection lives on.
    expect_errno("read past end", errno.EINVAL, h.pread, 512, size)
    expect_errno("read across end", errno.EINVAL, h.pread, 1024, size - 512)
    expect_errno("read at 2^64-512", errno.EINVAL, h.pread, 4096,
                 2**64 - 512)
    expect_errno("write past end", errno.ENOSPC, h.pwrite, b"x" * 512, size)
    expect_errno("write across end", errno.ENOSPC, h.pwrite, b"x" * 1024,
                 size - 512)
    expect_errno("zero past end", errno.ENOSPC, h.zero, 512, size)
    expect_errno("trim past end", errno.EINVAL, h.trim, 512, size)
    expect_errno("cache past end", errno.EINVAL, h.cache, 512, size)
    expect_errno("block status past end", errno.EINVAL, extents, h, 512, size)
    expect_errno("read with an unknown flag", errno.EINVAL, h.pread, 512, 0,
                 0x40)
    expect_errno("write with REQ_ONE", errno.EINVAL, h.pwrite, b"x" * 512, 0,
                 nbd.CMD_FLAG_REQ_ONE)
    expect_errno("zero-length read", errno.EINVAL, h.pread, 0, 0)
    expect_errno("read of 64 MiB", errno.EINVAL, h.pread, 64 * MiB, 0)
    if h.pread(4096, MiB + 4096) != data[4096:8192]:
        fail("connection unusable after errors")
    h.shutdown()

    # A second connection sees the first one's writes (multi-conn).
    if h.can_multi_conn():
        h2 = connect()
        if h2.pread(4096, MiB + 4096) != data[4096:8192]:
            fail("second connection reads stale data")
        h2.shutdown()

    # Simple replies (no structured replies negotiated).
    h3 = nbd.NBD()
    h3.set_request_structured_replies(False)
    h3.set_export_name("disk")
    h3.connect_unix(sock)
    h3.set_strict_mode(0)
    if h3.pread(4096, MiB + 4096) != data[4096:8192]:
        fail("simple-reply read differs")
    expect_errno("simple read past end", errno.EINVAL, h3.pread, 512, size)
    expect_errno("simple write past end", errno.ENOSPC, h3.pwrite, b"y" * 512,
                 size)
    h3.shutdown()


def check_ro():
    h = connect()
    size = h.get_size()
    if not h.is_read_only():
        fail("export not read-only")
    h.pread(4096, 0)
    h.flush()
    expect_errno("write on read-only", errno.EPERM, h.pwrite, b"z" * 512, 0)
    expect_errno("trim on read-only", errno.EPERM, h.trim, 512, 0)
    expect_errno("zero on read-only", errno.EPERM, h.zero, 512, 0)
    expect_errno("FUA read on read-only (FUA not offered)", errno.EINVAL,
                 h.pread, 512, 0, nbd.CMD_FLAG_FUA)
    expect_errno("FAST_ZERO on read-only", errno.EPERM, h.zero, 512, 0,
                 nbd.CMD_FLAG_FAST_ZERO)
    expect_errno("read past end", errno.EINVAL, h.pread, 512, size)
    h.pread(512, size - 512)
    h.shutdown()


{"rw": check_rw, "ro": check_ro}[mode]()
print("nbdsh checks (%s) passed" % mode)
