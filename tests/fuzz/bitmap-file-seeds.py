#!/usr/bin/python3
"""Seeds for tests/fuzz/fuzz-bitmap-file: bitmap side files (layout in
docs/bitmap-file.md) prefixed by the harness's mode byte 1, so the harness
fills in the length field and the CRC-32C."""
import os
import struct
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def entry(name, gran, size, flags=2, fill=0):
    nbits = size // gran + (size % gran != 0)
    dl = nbits // 8 + (nbits % 8 != 0)
    bits = bytearray([fill]) * dl
    if nbits % 8 and dl:
        bits[-1] &= (1 << (nbits % 8)) - 1
    return struct.pack("<IIQHHI", flags, gran, size, len(name), 0, 0) + \
        name + bytes(bits)


def file(entries):
    body = b"".join(entries)
    hdr = b"VDBITMAP" + struct.pack("<IIQ", 1, len(entries),
                                    24 + len(body) + 4)
    return b"\1" + hdr + body + b"\0\0\0\0"


seeds = {
    "empty": file([]),
    "one": file([entry(b"b0", 65536, 1 << 20)]),
    "odd-size": file([entry(b"x", 512, 512 * 13 + 7, fill=0xff)]),
    "in-use": file([entry(b"crashed", 4096, 1 << 16, flags=3, fill=0x5a)]),
    "many": file([entry(b"n%d" % i, 512 << i, 1 << 20, flags=i % 4)
                  for i in range(8)]),
    "dup": file([entry(b"same", 65536, 1 << 20)] * 2),
    "big-gran": file([entry(b"g", 1 << 31, 1 << 40)]),
    "long-name": file([entry(b"n" * 1023, 65536, 1 << 17)]),
}
for k, v in seeds.items():
    with open(os.path.join(out, k), "wb") as f:
        f.write(v)
