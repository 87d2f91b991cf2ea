#!/usr/bin/python3
# Seeds for tests/fuzz/fuzz-nbd: what real clients send (libnbd, qemu,
# the kernel), plus error paths.  Usage: fuzz-seeds.py DIR
import os
import struct
import sys

out = sys.argv[1]
IHAVEOPT = 0x49484156454F5054


def opt(o, data=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(data)) + data


def s32(b):
    return struct.pack(">I", len(b)) + b


def req(cmd, off, length, flags=0, payload=b""):
    return struct.pack(">IHHQQI", 0x25609513, flags, cmd, 7, off,
                       length) + payload


meta = s32(b"disk") + struct.pack(">I", 1) + s32(b"base:allocation")
info = s32(b"disk") + struct.pack(">HHHH", 3, 0, 1, 2)
requests = (req(0, 0, 4096) + req(1, 512, 8, 1, b"abcdefgh") +
            req(3, 0, 0) + req(4, 0, 4096) + req(5, 0, 65536) +
            req(6, 4096, 4096, 2 | 16) + req(7, 0, 1 << 20, 8) +
            req(0, 0, 512, 4) + req(9, 0, 1) + req(2, 0, 0))
def metaq(name, *qs):
    return s32(name) + struct.pack(">I", len(qs)) + b"".join(s32(q) for q in qs)


qemu_meta = metaq(b"disk", b"base:allocation", b"qemu:allocation-depth",
                  b"qemu:dirty-bitmap:b0", b"qemu:dirty-bitmap:b1",
                  b"qemu:dirty-bitmap:nope", b"qemu:dirty-bitmap:b0")
seeds = {
    # qemu-nbd -A -B: every context, listed by namespace then set.
    "qemu-contexts": b"\0" + struct.pack(">I", 3) + opt(8) +
                     opt(9, metaq(b"disk")) + opt(9, metaq(b"disk", b"qemu:")) +
                     opt(9, metaq(b"disk", b"qemu:dirty-bitmap:")) +
                     opt(10, metaq(b"disk", b"qemu:", b"qemu:dirty-bitmap:")) +
                     opt(10, qemu_meta) + opt(9, metaq(b"ro", b"qemu:")) +
                     opt(7, info) + req(7, 0, 1 << 20) + req(7, 0, 1 << 20, 8),
    "libnbd": b"\0" + struct.pack(">I", 3) + opt(8) + opt(10, meta) +
              opt(9, meta) + opt(3) + opt(6, info) + opt(7, info) + requests,
    "qemu": b"\0" + struct.pack(">I", 3) + opt(8) + opt(10, meta) +
            opt(7, s32(b"") + struct.pack(">HH", 1, 3)) + requests,
    "kernel": b"\0" + struct.pack(">I", 1) + opt(1, b"disk") + requests,
    "readonly": b"\0" + struct.pack(">I", 3) + opt(7, s32(b"ro") +
                struct.pack(">H", 0)) + requests,
    "errors": b"\0" + struct.pack(">I", 3) + opt(99, b"xyz") + opt(5) +
              opt(3, b"junk") + opt(6, b"\xff\xff\xff\xff\0\0") +
              opt(10, meta) + opt(8) + opt(8) + opt(9, b"\0\0") + opt(2),
    "tls-required": b"\1" + struct.pack(">I", 3) + opt(3) + opt(5) +
                    opt(7, info) + opt(1, b"disk"),
    # 31 options and GO: the most a negotiation may use.
    "option-limit": b"\0" + struct.pack(">I", 3) + opt(8) * 31 +
                    opt(7, info) + requests + req(5, 0, 32 << 20),
    # A 33rd option drops the client before it reaches transmission.
    "too-many-options": b"\0" + struct.pack(">I", 3) + opt(3) * 32 +
                        opt(7, info) + requests,
    # CACHE beyond the maximum payload is refused like READ.
    "cache-big": b"\0" + struct.pack(">I", 3) + opt(7, info) +
                 req(5, 0, (32 << 20) + 1) + req(5, 0, 0xffffffff) + requests,
}
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
