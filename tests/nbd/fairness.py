#!/usr/bin/python3
# One client's flood must not starve another's small read.
#   fairness.py SOCKET [--no-bound-check]
# The default export must be at least 64 MiB.  In each round, flooder
# connections queue many requests, then a victim connection, attached
# beforehand, sends one 4 KiB READ.  Replies are counted in arrival order;
# CACHE replies carry no data, so arrival order follows completion order.
# The victim sends its read once every flooder has had one reply.  With
# fair scheduling it is answered after a small fraction of the flood; with
# one FIFO for all connections the last flooder's first reply, and so the
# victim's read, comes after nearly all the other flooders' requests.
# The assertion is on that order, not on any time.
#   big:  4 flooders x 64 requests, 32 MiB CACHEs and every fourth a
#         1 MiB READ (bounded by each connection's 64 MiB budget);
#   many: 8 flooders x 128 CACHEs of 512 KiB, all within the budget, so
#         only the round robin between connections keeps the victim out
#         of the queue's tail.
# First, a CACHE longer than the 32 MiB maximum must get EINVAL.
import selectors
import socket
import struct
import sys
import time

from nbdwire import (CMD_CACHE, CMD_READ, EINVAL, IHAVEOPT, OPT_GO,
                     REP_ACK, REP_INFO, REQ_MAGIC, SIMPLE_MAGIC,
                     fail, recv)

path = sys.argv[1]
MiB = 1 << 20


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


def flood_round(name, FLOODERS, PER_FLOODER, cache_len, read_every):
    victim, _ = attach()
    flooders = [attach()[0] for _ in range(FLOODERS)]
    lengths = []
    for f in flooders:
        reqs, exp = b"", {}
        for i in range(PER_FLOODER):
            if read_every and i % read_every == read_every - 1:
                reqs += request(CMD_READ, i, 0, MiB)
                exp[i] = MiB
            else:
                reqs += request(CMD_CACHE, i, 0, cache_len)
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

    sel = selectors.DefaultSelector()
    for i, f in enumerate(flooders):
        sel.register(f, selectors.EVENT_READ, i)
    flood_done, victim_rank, victim_time = 0, None, None
    total = FLOODERS * PER_FLOODER
    per = [0] * FLOODERS

    def flood_reply(i):
        nonlocal flood_done
        err, cookie = simple_reply(flooders[i], lengths[i])
        if err:
            fail("flood request %d: error %d" % (cookie, err))
        flood_done += 1
        per[i] += 1

    # The victim asks only once every flooder has had a reply: then every
    # flooder's requests are being served, and (the reader queues all it
    # has read without waiting) queued.  No sleeping, no timing.
    while min(per) == 0:
        for key, _ in sel.select(timeout=300):
            flood_reply(key.data)
    start = time.monotonic()
    victim.sendall(request(CMD_READ, 7, 0, 4096))
    sel.register(victim, selectors.EVENT_READ, -1)
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
                flood_reply(i)
    flood_time = time.monotonic() - start
    print(name + ": victim's 4 KiB read answered after %d of %d flood replies "
          "(%.3f s after it was sent; the flood ended %.3f s after it)"
          % (victim_rank, total, victim_time, flood_time))
    if victim_rank > total // 4:
        fail(name + ": the victim's read waited behind %d of %d flood requests"
             % (victim_rank, total))
    for f in flooders + [victim]:
        f.close()


victim, size = attach()
if size < 64 * MiB:
    fail("export too small: %d" % size)
if "--no-bound-check" not in sys.argv:
    # A CACHE beyond the maximum request size is refused like a READ.
    victim.sendall(request(CMD_CACHE, 1, 0, 33 * MiB))
    err, _ = simple_reply(victim, {})
    if err != EINVAL:
        fail("CACHE of 33 MiB: error %d, expected EINVAL" % err)
victim.close()
flood_round("big", 4, 64, 32 * MiB, 4)
flood_round("many", 8, 128, MiB // 2, 0)
