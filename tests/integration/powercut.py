#!/usr/bin/python3
"""Simulate a power cut on a file written under tests/unit/vdtest-shim.c.

  powercut.py FILE JOURNAL SEED

The journal holds every write to FILE since its last successful
fdatasync/fsync, in order, with pre-images and the file size before each.
FILE is rolled back to the state of that sync (what stable storage held),
then a random subset of the writes is replayed in order, as a disk with a
volatile cache and a file system without ordering guarantees may leave
them: each write is kept whole, dropped, or torn (only some of its 512-byte
sectors land).  Overlapping writes replayed in order also model a later
write lost while an earlier one landed, i.e. reordering.  The file size
grows to cover what was kept; sometimes (a file system that persisted the
new size but not the data) it grows to the size the writer reached, the
missing bytes reading as zeros.  Prints one line describing the cut.
"""
import os
import random
import struct
import sys

MAGIC = 0x5644504352454331
HDR = struct.Struct("<5Q")
SECTOR = 512


def records(path):
    data = open(path, "rb").read()
    pos, out = 0, []
    while pos + HDR.size <= len(data):
        magic, seq, off, length, old_size = HDR.unpack_from(data, pos)
        if magic != MAGIC:
            sys.exit("powercut.py: %s: bad record at %d" % (path, pos))
        end = pos + HDR.size + 2 * length
        if end > len(data):
            break               # killed while recording: write not issued
        pre = data[pos + HDR.size:pos + HDR.size + length]
        new = data[pos + HDR.size + length:end]
        out.append((off, pre, new, old_size))
        pos = end
    return out


def main():
    path, journal, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    recs = records(journal)
    rnd = random.Random(seed)
    if not recs:
        print("power cut: nothing written since the last sync")
        return
    fd = os.open(path, os.O_RDWR)
    reached = os.fstat(fd).st_size
    # Back to the last sync (one truncation: each one costs a write-back).
    for off, pre, new, old_size in reversed(recs):
        keep = max(0, min(len(pre), old_size - off))
        if keep:
            os.pwrite(fd, pre[:keep], off)
    size = recs[0][3]
    os.ftruncate(fd, size)
    keep_p = rnd.choice([0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
    tear_p = rnd.choice([0.0, 0.1, 0.3])
    kept = dropped = torn = 0
    for off, pre, new, old_size in recs:
        if rnd.random() >= keep_p:
            dropped += 1
            continue
        if rnd.random() < tear_p and len(new) > SECTOR:
            torn += 1
            # Sector boundaries of the absolute offsets.
            a = off
            while a < off + len(new):
                b = min((a // SECTOR + 1) * SECTOR, off + len(new))
                if rnd.random() < 0.5:
                    os.pwrite(fd, new[a - off:b - off], a)
                    size = max(size, b)
                a = b
        else:
            kept += 1
            os.pwrite(fd, new, off)
            size = max(size, off + len(new))
    grown = rnd.random() < 0.25
    if grown:
        size = max(size, reached)
    os.ftruncate(fd, size)
    os.close(fd)
    print("power cut: %d writes since the last sync: %d kept, %d torn, "
          "%d dropped; size %d%s" % (len(recs), kept, torn, dropped, size,
                                     " (grown)" if grown else ""))


main()
