#!/usr/bin/python3
"""map-norm.py nbdinfo|qemu-img FILE: one "offset length value" line per
run of equal values, adjacent runs merged, from `nbdinfo --map=CONTEXT`
output or from `qemu-img map --output=json` (value: the allocation depth
as qemu:allocation-depth encodes it: 0 when not present, else depth+1)."""
import json
import sys

kind, path = sys.argv[1:3]
runs = []
with open(path) as f:
    if kind == "qemu-img":
        for e in json.load(f):
            present = e.get("present", e["data"] or e["zero"])
            runs.append((e["start"], e["length"],
                         e["depth"] + 1 if present else 0))
    else:
        for line in f:
            p = line.split()
            if len(p) >= 3:
                runs.append((int(p[0]), int(p[1]), int(p[2])))
out = []
for off, length, v in runs:
    if out and out[-1][2] == v and out[-1][0] + out[-1][1] == off:
        out[-1][1] += length
    else:
        out.append([off, length, v])
for off, length, v in out:
    print(off, length, v)
