# Background writer for raid-control.sh: random 4 KiB-aligned writes of
# 4-64 KiB through NBD, each also applied to a local reference file, until
# STOPFILE appears; then a flush.  Prints the number of writes.
import os
import random
import sys
import time

import nbd

uri, ref, stopfile, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
r = random.Random(seed)
n = 0
deadline = time.time() + 600            # never runs away
with open(ref, "r+b") as f:
    while not os.path.exists(stopfile) and time.time() < deadline:
        ln = 4096 * r.randint(1, 16)
        off = 4096 * r.randrange(0, (size - ln) // 4096)
        data = r.randbytes(ln)
        h.pwrite(data, off)
        f.seek(off)
        f.write(data)
        n += 1
h.flush()
h.shutdown()
print(n)
