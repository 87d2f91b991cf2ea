#!/usr/bin/python3
# A hostile NBD client on plain sockets: malformed handshakes and requests
# against vdisk-nbd, each checked for the answer doc/proto.md prescribes
# (an error reply that keeps the stream in sync, or a disconnect), then a
# fresh client must be served correctly.
#   hostile.py rw SOCKET SIZE     writable default export of SIZE bytes
#   hostile.py ro SOCKET SIZE     read-only export
import os
import socket
import struct
import sys

mode, path, SIZE = sys.argv[1], sys.argv[2], int(sys.argv[3])
MiB = 1 << 20

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
CHUNK_MAGIC = 0x668E33EF

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META = 6, 7, 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR_UNSUP, ERR_INVALID, ERR_UNKNOWN, ERR_TOO_BIG = (
    0x80000001, 0x80000003, 0x80000006, 0x80000009)
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_CACHE, CMD_ZERO, CMD_BS = 5, 6, 7
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO = 1, 2, 4, 8, 16
EPERM, EINVAL, ENOSPC = 1, 22, 28
FLAG_READ_ONLY, FLAG_SEND_FAST_ZERO = 1 << 1, 1 << 11

failures = 0


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


class Conn:
    def __init__(self, client_flags=3):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(30)
        self.s.connect(path)
        g = self.recv(18)
        if g[:8] != NBDMAGIC or struct.unpack(">Q", g[8:16])[0] != IHAVEOPT:
            fail("bad greeting %r" % g)
        if struct.unpack(">H", g[16:])[0] != 3:
            fail("handshake flags %r" % g[16:])
        if client_flags is not None:
            self.s.sendall(struct.pack(">I", client_flags))
        self.structured = False

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            d = self.s.recv(n - len(buf))
            if not d:
                raise EOFError("closed after %d of %d bytes" % (len(buf), n))
            buf += d
        return buf

    def closed(self):
        """True if the server hung up (possibly after sending something)."""
        try:
            while self.s.recv(65536):
                pass
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def send_opt(self, opt, data=b"", length=None):
        if length is None:
            length = len(data)
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, length) + data)

    def reply(self, want_opt):
        magic, opt, typ, length = struct.unpack(">QIII", self.recv(20))
        if magic != REP_MAGIC or opt != want_opt:
            fail("option reply magic %x opt %d (want %d)"
                 % (magic, opt, want_opt))
        return typ, self.recv(length)

    def opt(self, opt, data=b""):
        self.send_opt(opt, data)
        return self.reply(opt)

    def list(self):
        self.send_opt(OPT_LIST)
        names = []
        while True:
            typ, data = self.reply(OPT_LIST)
            if typ == REP_ACK:
                return names
            if typ != REP_SERVER:
                fail("LIST reply type %x" % typ)
            n = struct.unpack(">I", data[:4])[0]
            names.append(data[4:4 + n])

    def go(self, name=b"", structured=True, meta=False):
        if structured:
            if self.opt(OPT_STRUCTURED)[0] != REP_ACK:
                fail("STRUCTURED_REPLY refused")
            self.structured = True
        if meta:
            q = b"base:allocation"
            typ, data = self.opt(OPT_SET_META, struct.pack(">I", len(name)) +
                                 name + struct.pack(">II", 1, len(q)) + q)
            if typ != REP_META or data != struct.pack(">I", 1) + q:
                fail("SET_META_CONTEXT reply %x %r" % (typ, data))
            if self.reply(OPT_SET_META)[0] != REP_ACK:
                fail("SET_META_CONTEXT not acked")
        self.send_opt(OPT_GO, struct.pack(">I", len(name)) + name +
                      struct.pack(">H", 0))
        info = None
        while True:
            typ, data = self.reply(OPT_GO)
            if typ == REP_ACK:
                break
            if typ != REP_INFO:
                fail("GO failed: %x %r" % (typ, data))
            if struct.unpack(">H", data[:2])[0] == 0:
                info = struct.unpack(">QH", data[2:])
        if info is None:
            fail("GO without NBD_INFO_EXPORT")
        self.size, self.eflags = info
        return self

    def request(self, cmd, off, length, flags=0, cookie=1, payload=b""):
        self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie,
                                   off, length) + payload)

    def simple_reply(self, data_len=0):
        magic, err, cookie = struct.unpack(">IIQ", self.recv(16))
        if magic != SIMPLE_MAGIC:
            fail("expected a simple reply, magic %x" % magic)
        data = self.recv(data_len) if err == 0 and data_len else b""
        return err, cookie, data

    def structured_reply(self):
        """Collect chunks up to DONE: (error, cookie, {offset: bytes})."""
        err, content, cookie = 0, {}, None
        while True:
            magic = struct.unpack(">I", self.recv(4))[0]
            if magic == SIMPLE_MAGIC:
                e, c = struct.unpack(">IQ", self.recv(12))
                return e, c, content
            if magic != CHUNK_MAGIC:
                fail("bad reply magic %x" % magic)
            flags, typ, cookie, length = struct.unpack(">HHQI", self.recv(16))
            body = self.recv(length)
            if typ == 1:
                content[struct.unpack(">Q", body[:8])[0]] = body[8:]
            elif typ == 2:
                off, n = struct.unpack(">QI", body)
                content[off] = bytes(n)
            elif typ & 0x8000:
                err = struct.unpack(">I", body[:4])[0]
            if flags & 1:
                return err, cookie, content

    def reply_any(self, data_len=0):
        if self.structured:
            e, c, content = self.structured_reply()
            return e, c, b"".join(content[k] for k in sorted(content))
        return self.simple_reply(data_len)

    def expect(self, what, want_err, cmd, off, length, flags=0, payload=b""):
        self.request(cmd, off, length, flags, 7, payload)
        err, cookie, _ = self.reply_any(length if cmd == CMD_READ else 0)
        if err != want_err or cookie != 7:
            fail("%s: error %d cookie %d, expected error %d"
                 % (what, err, cookie, want_err))

    def close(self):
        self.s.close()


def handshake_cases():
    # Unknown client flag: the server must drop the connection.
    c = Conn(client_flags=0x80000003)
    if not c.closed():
        fail("unknown client flag not rejected")
    # Bad option magic.
    c = Conn()
    c.s.sendall(struct.pack(">QII", 0x1122334455667788, OPT_LIST, 0))
    if not c.closed():
        fail("bad option magic not rejected")

    c = Conn()
    # Unknown option with data: ERR_UNSUP and still in sync.
    if c.opt(99, b"x" * 100)[0] != ERR_UNSUP:
        fail("unknown option not ERR_UNSUP")
    if c.opt(0xFFFFFFFF)[0] != ERR_UNSUP:
        fail("option 0xffffffff not ERR_UNSUP")
    # Known options, malformed.
    if c.opt(OPT_LIST, b"junk")[0] != ERR_INVALID:
        fail("LIST with data not ERR_INVALID")
    if c.opt(OPT_STRUCTURED, b"j")[0] != ERR_INVALID:
        fail("STRUCTURED_REPLY with data not ERR_INVALID")
    if c.opt(OPT_SET_META, struct.pack(">II", 0, 0))[0] != ERR_INVALID:
        fail("SET_META_CONTEXT before STRUCTURED_REPLY accepted")
    if c.opt(OPT_STARTTLS)[0] != ERR_UNSUP:
        fail("STARTTLS without TLS not ERR_UNSUP")
    for bad in [b"", b"\0\0\0", struct.pack(">I", 0xFFFFFFFF) + b"\0\0",
                struct.pack(">I", 10) + b"abc\0\0",
                struct.pack(">IH", 0, 5) + b"\0\0",
                struct.pack(">I", 2) + b"a\0" + struct.pack(">H", 0)]:
        if c.opt(OPT_INFO, bad)[0] != ERR_INVALID:
            fail("malformed INFO %r not ERR_INVALID" % bad)
    if c.opt(OPT_INFO, struct.pack(">I", 5) + b"nosuc" +
             struct.pack(">H", 0))[0] != ERR_UNKNOWN:
        fail("INFO for an unknown export not ERR_UNKNOWN")
    # A known option claiming 300 KiB: skipped, refused, stream in sync.
    c.send_opt(OPT_INFO, b"\xAA" * (300 << 10))
    if c.reply(OPT_INFO)[0] != ERR_TOO_BIG:
        fail("oversized INFO not ERR_TOO_BIG")
    if c.list() == []:
        fail("LIST after errors returned nothing")
    # Structured replies, then malformed meta context queries.
    c.opt(OPT_STRUCTURED)
    for bad in [b"", struct.pack(">III", 0, 1, 100),
                struct.pack(">III", 0, 2, 4) + b"base",
                struct.pack(">II", 0xFFFFFFF0, 0)]:
        if c.opt(OPT_LIST_META, bad)[0] != ERR_INVALID:
            fail("malformed LIST_META_CONTEXT %r accepted" % bad)
    if c.opt(OPT_STRUCTURED)[0] != ERR_INVALID:
        fail("second STRUCTURED_REPLY accepted")
    if c.opt(OPT_ABORT)[0] != REP_ACK:
        fail("ABORT not acked")
    c.close()

    # An unknown option claiming 2 GiB, then the client goes away.
    c = Conn()
    c.send_opt(77, b"y" * 1000, length=0x7FFFFFFF)
    c.close()
    # EXPORT_NAME of an unknown or oversized name: disconnect, no reply.
    c = Conn()
    c.send_opt(OPT_EXPORT_NAME, b"n" * 5000)
    if not c.closed():
        fail("EXPORT_NAME of 5000 bytes not dropped")
    c = Conn()
    c.send_opt(OPT_EXPORT_NAME, b"nosuch")
    if not c.closed():
        fail("EXPORT_NAME of an unknown export not dropped")
    # Truncated messages.
    c = Conn(client_flags=None)
    c.s.sendall(b"\0\0")
    c.close()
    c = Conn()
    c.s.sendall(struct.pack(">QI", IHAVEOPT, OPT_GO))
    c.close()
    c = Conn()
    c.send_opt(OPT_GO, b"\0\0\0\0", length=6)
    c.close()
    # EXPORT_NAME works (with NO_ZEROES and without).
    for flags, extra in ((3, 0), (1, 124)):
        c = Conn(client_flags=flags)
        c.send_opt(OPT_EXPORT_NAME)
        size, _ = struct.unpack(">QH", c.recv(10))
        if size != SIZE:
            fail("EXPORT_NAME size %d" % size)
        if extra and c.recv(extra) != bytes(extra):
            fail("124 zero bytes missing")
        c.request(CMD_DISC, 0, 0)
        if not c.closed():
            fail("DISC did not close")


def transmission_cases():
    ro = mode == "ro"
    for structured in (False, True):
        c = Conn().go(structured=structured)
        if bool(c.eflags & FLAG_READ_ONLY) != ro:
            fail("read-only flag %x" % c.eflags)
        c.expect("unknown command 42", EINVAL, 42, 0, 512)
        c.expect("unknown command 0xffff", EINVAL, 0xFFFF, 0, 512)
        c.expect("read with flag 0x100", EINVAL, CMD_READ, 0, 512, 0x100)
        c.expect("read with REQ_ONE", EINVAL, CMD_READ, 0, 512, F_REQ_ONE)
        c.expect("trim with FAST_ZERO", EPERM if ro else EINVAL, CMD_TRIM, 0,
                 512, F_FAST_ZERO)
        c.expect("zero-length read", EINVAL, CMD_READ, 0, 0)
        c.expect("read past end", EINVAL, CMD_READ, SIZE, 512)
        c.expect("read at 2^64-1", EINVAL, CMD_READ, 2**64 - 1, 512)
        c.expect("64 MiB read", EINVAL, CMD_READ, 0, 64 * MiB)
        c.expect("block status without contexts", EINVAL, CMD_BS, 0, 512)
        c.expect("flush with a length", EINVAL, CMD_FLUSH, 0, 512)
        if not structured:
            c.expect("DF without structured replies", EINVAL, CMD_READ, 0,
                     512, F_DF)
        # Writes: the payload is consumed whatever the verdict.
        if ro:
            c.expect("write on read-only", EPERM, CMD_WRITE, 0, 512,
                     payload=b"w" * 512)
            c.expect("FAST_ZERO zero on read-only", EPERM, CMD_ZERO, 0, 512,
                     F_FAST_ZERO)
        else:
            c.expect("zero-length write", EINVAL, CMD_WRITE, 0, 0)
            c.expect("write past end", ENOSPC, CMD_WRITE, SIZE - 256, 512,
                     payload=b"w" * 512)
            c.expect("zero past end", ENOSPC, CMD_ZERO, SIZE, 512)
            c.expect("64 MiB write", EINVAL, CMD_WRITE, 0, 64 * MiB,
                     payload=bytes(64 * MiB))
            big = os.urandom(32 * MiB)
            c.expect("32 MiB write", 0, CMD_WRITE, 0, len(big), payload=big)
            c.request(CMD_READ, 0, len(big), cookie=7)
            err, _, data = c.reply_any(len(big))
            if err or data != big:
                fail("32 MiB read back differs")
        # 200 requests in flight: every cookie answered exactly once.
        for i in range(200):
            c.request(CMD_READ, (i * 4096) % (SIZE - 4096), 4096, cookie=1000 + i)
        seen = set()
        for i in range(200):
            err, cookie, data = c.reply_any(4096)
            if err or len(data) != 4096 or cookie in seen:
                fail("pipelined read %d: error %d cookie %d" % (i, err, cookie))
            seen.add(cookie)
        if seen != set(range(1000, 1200)):
            fail("pipelined cookies wrong")
        # Bad request magic: disconnect.
        c.s.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, 0, 1, 0, 512))
        if not c.closed():
            fail("bad request magic not dropped")

    # FAST_ZERO on a connection that did not see it advertised cannot be
    # produced on a writable export (it is always advertised there); the
    # read-only case above covers the nbdkit-crash scenario.
    # Truncated request header, truncated write payload, vanishing client.
    c = Conn().go()
    c.s.sendall(struct.pack(">IHH", REQ_MAGIC, 0, CMD_READ))
    c.close()
    c = Conn().go()
    c.request(CMD_WRITE, 0, MiB, payload=b"p" * 1000)
    c.close()
    c = Conn().go()
    for i in range(100):      # more than fit in flight; replies unread
        c.request(CMD_READ, 0, MiB, cookie=i)
    c.close()


def stalled_clients(n):
    """Clients that queue reads and never read the replies: they must not
    hold up anyone else (the server runs with fewer workers than this)."""
    stalled = []
    for _ in range(n):
        c = Conn().go()
        c.s.settimeout(5)
        try:
            for i in range(100):
                c.request(CMD_READ, 0, 256 << 10, cookie=i)
        except socket.timeout:
            pass        # the server stopped reading: that is the point
        stalled.append(c)
    return stalled


def fresh_client():
    c = Conn().go(meta=True)
    if c.size != SIZE:
        fail("fresh client: size %d" % c.size)
    if mode == "rw":
        data = os.urandom(65536)
        c.expect("fresh write", 0, CMD_WRITE, MiB, len(data), F_FUA, data)
        c.request(CMD_READ, MiB, len(data), cookie=9)
        err, _, got = c.reply_any(len(data))
        if err or got != data:
            fail("fresh client reads back other data")
    c.request(CMD_BS, 0, 4096, F_REQ_ONE, cookie=10)
    err, cookie, _ = c.structured_reply()
    if err or cookie != 10:
        fail("fresh client: block status error %d" % err)
    c.request(CMD_DISC, 0, 0)
    c.close()


handshake_cases()
transmission_cases()
stalled = stalled_clients(3)
fresh_client()
for c in stalled:
    c.close()
fresh_client()
print("hostile client checks (%s) passed" % mode)
