#!/usr/bin/python3
"""copy-extents.py URI MAP DEST: copy from the NBD export URI into the file
DEST the extents that MAP (the output of `nbdinfo --map=CONTEXT`: offset,
length, type, description per line) marks with a non-zero type (for
qemu:dirty-bitmap:NAME, the dirty ones), each at its own offset, as an
incremental backup does.  Prints the number of bytes copied."""
import sys

import nbd

uri, mapfile, dest = sys.argv[1:4]
h = nbd.NBD()
h.connect_uri(uri)
copied = 0
with open(mapfile) as m, open(dest, "r+b") as out:
    for line in m:
        f = line.split()
        if len(f) < 3:
            continue
        off, length, typ = int(f[0]), int(f[1]), int(f[2])
        if typ == 0:
            continue
        pos = off
        while pos < off + length:
            n = min(off + length - pos, 4 << 20)
            out.seek(pos)
            out.write(h.pread(n, pos))
            pos += n
        copied += length
h.shutdown()
print(copied)
