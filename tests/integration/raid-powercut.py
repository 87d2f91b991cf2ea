#!/usr/bin/python3
"""Helper of raid-powercut.sh (not a test by itself).

write URI SIZE CHUNK N SEED LOG: write to the RAID5 served at URI until
  the server dies: random writes (full rows and full stripes common) and
  flushes, each logged to LOG before it is issued ("W id off len") or
  after it returned ("F id": every write before it is durable).
judge BASE LOG OUT CHUNK N LOST: OUT (the array read back after the cut,
  member LOST lost with it, or -1) must hold, at every byte, its flushed
  value or the value of a write not yet flushed; bytes of such writes on
  the lost member may read back as anything (PPL's limit, as md's).
"""
import errno
import random
import sys


def data_of(wid, length):
    return random.Random(wid * 7919 + 17).randbytes(length)


def shape(rnd, size, chunk, n):
    nd = n - 1
    sb = chunk * nd
    s = rnd.randrange(size // sb)
    k = rnd.randrange(6)
    if k < 2:                               # full rows inside partial ones
        r0, r1 = rnd.randrange(chunk), 1 + rnd.randrange(chunk)
        off, length = s * sb + r0, (nd - 1) * chunk + r1 - r0
    elif k == 2:                            # full stripes
        off, length = s * sb, sb * (1 + rnd.randrange(2))
    elif k == 3:                            # small partial
        off, length = s * sb + rnd.randrange(sb), 1 + rnd.randrange(6000)
    elif k == 4:                            # one chunk
        off, length = s * sb + rnd.randrange(nd) * chunk, chunk
    else:
        off, length = rnd.randrange(size), 1 + rnd.randrange(3 * sb)
    # NBD requests are in 512-byte units (the export's minimum block size).
    off = min(off // 512 * 512, size - 512)
    length = max(512, (length + 511) // 512 * 512)
    return off, min(length, size - off)


def write(uri, size, chunk, n, seed, log):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    rnd = random.Random(seed)
    wid = 0
    with open(log, "w", buffering=1) as f:
        try:
            while True:
                if rnd.randrange(10) == 0:
                    h.flush()
                    f.write("F %d\n" % wid)
                    continue
                wid += 1
                off, length = shape(rnd, size, chunk, n)
                f.write("W %d %d %d\n" % (wid, off, length))
                h.pwrite(data_of(wid, length), off)
        except nbd.Error as e:
            # Only the kill may end the run: a refused request is a bug.
            if e.errnum not in (None, 0, errno.ECONNRESET, errno.EPIPE,
                               errno.ENOTCONN, errno.ESHUTDOWN):
                sys.exit("writer: %s" % e)


def member_of(off, chunk, n):
    sb = chunk * (n - 1)
    s = off // sb
    p = (n - 1) - s % n
    return (p + 1 + (off % sb) // chunk) % n


def judge(base, log, out, chunk, n, lost):
    img = bytearray(open(base, "rb").read())
    ops, flushed_upto = [], 0
    for line in open(log):
        t = line.split()
        if t[0] == "W":
            ops.append((int(t[1]), int(t[2]), int(t[3])))
        elif t[0] == "F":
            flushed_upto = len(ops)
    for wid, off, length in ops[:flushed_upto]:
        img[off:off + length] = data_of(wid, length)
    pending = [(off, data_of(wid, length)) for wid, off, length
               in ops[flushed_upto:]]
    got = open(out, "rb").read()
    assert len(got) == len(img), (len(got), len(img))
    lostb = never = inflight = 0
    B = 4096
    for blk in range(0, len(img), B):
        if got[blk:blk + B] == img[blk:blk + B]:
            continue
        for i in range(blk, min(blk + B, len(img))):
            if got[i] == img[i]:
                continue
            cover = [d[i - o] for o, d in pending if o <= i < o + len(d)]
            if got[i] in cover:
                continue
            if not cover:
                lostb += 1
            elif lost >= 0 and member_of(i, chunk, n) == lost:
                inflight += 1
            else:
                never += 1
    print("%d writes, %d flushed, %d pending: %d flushed bytes lost, %d "
          "never written, %d in flight on the lost member"
          % (len(ops), flushed_upto, len(pending), lostb, never, inflight))
    return 1 if lostb or never else 0


if __name__ == "__main__":
    a = sys.argv
    if a[1] == "write":
        write(a[2], int(a[3]), int(a[4]), int(a[5]), int(a[6]), a[7])
    else:
        sys.exit(judge(a[2], a[3], a[4], int(a[5]), int(a[6]), int(a[7])))
