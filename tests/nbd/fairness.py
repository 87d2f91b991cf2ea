#!/usr/bin/python3
# One client's flood must not starve another's small read.
#   fairness.py SOCKET
# The default export must be at least 64 MiB.  FLOODERS connections each
# queue PER_FLOODER requests -- 32 MiB CACHEs, every fourth a 1 MiB READ --
# then a victim connection, attached beforehand, sends one 4 KiB READ.
# Replies are counted in arrival order; CACHE replies carry no data, so
# arrival order follows completion order.  With fair scheduling the
# victim's read is answered after at most a small fraction of the flood;
# with one FIFO for all connections it waits behind all of it.  The
# assertion is on that order, not on any time.  Also: a CACHE longer than
# the 32 MiB maximum is refused with EINVAL.
import selectors
import socket
import struct
import sys
import time

path = sys.argv[1]
FLOODERS, PER_FLOODER = 4, 64
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQ_MAGIC, SIMPLE_MAGIC = 0x25609513, 0x67446698
OPT_GO, REP_ACK, REP_INFO = 7, 1, 3
CMD_READ, CMD_CACHE = 0, 5
MiB = 1 << 20
EINVAL = 22


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def recv(s, n):
    buf = bytearray()
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            fail("connection closed")
        buf += d
    return bytes(buf)


def attach():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(300)
    s.connect(path)
    if recv(s, 18)[:8] != b"NBDMAGIC":
        fail("bad greeting")
    s.sendall(struct.pack(">I", 3))
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 6) + struct.pack(">IH", 0, 0))
    size = None
    while True:
        magic, opt, typ, ln = struct.unpack(">QIII", recv(s, 20))
        data = recv(s, ln)
        if typ == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
            size = struct.unpack(">Q", data[2:10])[0]
        elif typ == REP_ACK:
            return s, size
        elif typ & 0x80000000:
            fail("GO refused")


def request(typ, cookie, offset, length):
    return struct.pack(">IHHQQI", REQ_MAGIC, 0, typ, cookie, offset, length)


def simple_reply(s, expect_len):
    """Read one simple reply; EXPECT_LEN maps cookie -> payload length."""
    magic, err, cookie = struct.unpack(">IIQ", recv(s, 16))
    if magic != SIMPLE_MAGIC:
        fail("bad reply magic 0x%x" % magic)
    if err == 0 and expect_len.get(cookie):
        recv(s, expect_len[cookie])
    return err, cookie


victim, size = attach()
if size < 64 * MiB:
    fail("export too small: %d" % size)

# A CACHE beyond the maximum request size is refused like a READ.
victim.sendall(request(CMD_CACHE, 1, 0, 33 * MiB))
err, _ = simple_reply(victim, {})
if err != EINVAL:
    fail("CACHE of 33 MiB: error %d, expected EINVAL" % err)

flooders = [attach()[0] for _ in range(FLOODERS)]
lengths = []
for f in flooders:
    reqs, exp = b"", {}
    for i in range(PER_FLOODER):
        if i % 4 == 3:
            reqs += request(CMD_READ, i, 0, MiB)
            exp[i] = MiB
        else:
            reqs += request(CMD_CACHE, i, 0, 32 * MiB)
    lengths.append(exp)
    f.setblocking(False)
    # Queue it all; what the server does not read yet stays in the socket.
    view = memoryview(reqs)
    while view:
        try:
            n = f.send(view)
            view = view[n:]
        except BlockingIOError:
            time.sleep(0.001)
    f.setblocking(True)

start = time.monotonic()
victim.sendall(request(CMD_READ, 7, 0, 4096))

sel = selectors.DefaultSelector()
for i, f in enumerate(flooders):
    sel.register(f, selectors.EVENT_READ, i)
sel.register(victim, selectors.EVENT_READ, -1)
flood_done, victim_rank, victim_time = 0, None, None
total = FLOODERS * PER_FLOODER
while flood_done < total or victim_rank is None:
    for key, _ in sel.select(timeout=300):
        i = key.data
        if i < 0:
            err, cookie = simple_reply(victim, {7: 4096})
            if err or cookie != 7:
                fail("victim read: error %d cookie %d" % (err, cookie))
            victim_rank, victim_time = flood_done, time.monotonic() - start
            sel.unregister(victim)
        else:
            err, cookie = simple_reply(flooders[i], lengths[i])
            if err:
                fail("flood request %d: error %d" % (cookie, err))
            flood_done += 1
flood_time = time.monotonic() - start
print("victim's 4 KiB read answered after %d of %d flood replies "
      "(%.3f s; the flood took %.3f s)" % (victim_rank, total, victim_time,
                                          flood_time))
if victim_rank > total // 4:
    fail("the victim's read waited behind %d of %d flood requests"
         % (victim_rank, total))
