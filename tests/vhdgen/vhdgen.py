#!/usr/bin/python3
"""vhdgen: an independent VHD writer and reader for vdisk's tests.

Written from the Microsoft "Virtual Hard Disk Image Format Specification"
v1.0 (footer, dynamic header, BAT, sector bitmaps MSB first, parent
locators), not from vdisk's C code, so that it can judge it.  It can lay
images out in unusual but valid ways (BAT out of order, 4 KiB-aligned
blocks, locators before or after the BAT, reserved BAT entries, 511-byte
footers, partial last blocks) and read any image, following differencing
chains, into a raw file.

  vhdgen.py create OUT --size N [--type fixed|dynamic|diff] [--block-size N]
        [--parent P] [--write OFF:LEN:SEED ...] [--zero OFF:LEN ...]
        [--shuffle-bat] [--align N] [--reserve N] [--locators-first]
        [--footer511] [--partial-last] [--creator XXXX] [--chs-size]
  vhdgen.py read IMG OUT.raw      contents of IMG (with its parents)
  vhdgen.py size IMG RULE         virtual size as RULE reads it:
                                  qemu7, qemu10, windows
  vhdgen.py uuid IMG              footer UUID as hex
  vhdgen.py setuuid IMG HEX       rewrite both footers with UUID HEX
All integers in the format are big-endian; locator payloads UTF-16LE.
"""
import argparse
import os
import random
import struct
import sys
import time
import uuid as uuidmod

SECTOR = 512
UNUSED = 0xFFFFFFFF


def checksum(buf, skip):
    total = sum(buf[:skip]) + sum(buf[skip + 4:])
    return (~total) & 0xFFFFFFFF


def chs(sectors):
    """CHS from the specification's appendix."""
    if sectors > 65535 * 16 * 255:
        sectors = 65535 * 16 * 255
    if sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = sectors // spt
    else:
        spt = 17
        cth = sectors // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = sectors // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = sectors // spt
    return cth // heads, heads, spt


def footer_bytes(size, dtype, data_offset, creator=b'vhdg', geometry=None,
                 uid=None):
    c, h, s = geometry if geometry else chs(size // SECTOR)
    b = bytearray(512)
    b[0:8] = b'conectix'
    struct.pack_into('>IIQI', b, 8, 2, 0x00010000, data_offset,
                     int(time.time()) - 946684800)
    b[28:32] = creator
    struct.pack_into('>I', b, 32, 0x00050003)
    b[36:40] = b'Wi2k'
    struct.pack_into('>QQHBBI', b, 40, size, size, c, h, s, dtype)
    b[68:84] = uid or uuidmod.uuid4().bytes
    struct.pack_into('>I', b, 64, checksum(b, 64))
    return bytes(b)


def parse_footer(b):
    if b[0:8] != b'conectix':
        raise ValueError('no footer cookie')
    if checksum(b, 64) != struct.unpack_from('>I', b, 64)[0]:
        raise ValueError('footer checksum')
    f = {}
    (f['data_offset'],) = struct.unpack_from('>Q', b, 16)
    f['creator'] = bytes(b[28:32])
    f['orig'], f['size'], f['c'], f['h'], f['s'], f['type'] = \
        struct.unpack_from('>QQHBBI', b, 40)
    f['uuid'] = bytes(b[68:84])
    return f


def parse_header(b):
    if b[0:8] != b'cxsparse':
        raise ValueError('no header cookie')
    if checksum(b, 36) != struct.unpack_from('>I', b, 36)[0]:
        raise ValueError('header checksum')
    h = {}
    h['bat'], = struct.unpack_from('>Q', b, 16)
    h['entries'], h['bs'] = struct.unpack_from('>II', b, 28)
    h['puuid'] = bytes(b[40:56])
    h['pname'] = b[64:576].decode('utf-16-be').split('\0')[0]
    h['locs'] = []
    for i in range(8):
        code = bytes(b[576 + 24 * i:580 + 24 * i])
        space, length, _, off = struct.unpack_from('>IIIQ', b, 580 + 24 * i)
        h['locs'].append((code, space, length, off))
    return h


def bitmap_bytes(bs):
    return ((bs // SECTOR + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR


class Image:
    """A readable VHD (any type)."""

    def __init__(self, path, depth=0):
        if depth > 32:
            raise ValueError('chain too deep')
        self.path = path
        self.f = open(path, 'rb')
        self.f.seek(0, 2)
        fsz = self.f.tell()
        self.f.seek(0)
        head = self.f.read(512)
        if head[0:8] == b'conectix' and parse_footer(head)['type'] != 2:
            self.ft = parse_footer(head)
        else:
            self.f.seek(fsz - 512)
            tail = self.f.read(512)
            if tail[0:8] != b'conectix':
                tail = tail[1:] + b'\0'
            self.ft = parse_footer(tail)
        self.size = self.ft['size']
        self.parent = None
        if self.ft['type'] == 2:
            return
        self.f.seek(self.ft['data_offset'])
        self.h = parse_header(self.f.read(1024))
        self.bs = self.h['bs']
        self.bms = bitmap_bytes(self.bs)
        self.f.seek(self.h['bat'])
        raw = self.f.read(4 * self.h['entries'])
        self.bat = list(struct.unpack('>%dI' % self.h['entries'], raw))
        if self.ft['type'] == 4:
            self.parent = Image(self.find_parent(), depth + 1)
            if self.parent.ft['uuid'] != self.h['puuid']:
                raise ValueError('parent uuid mismatch')

    def find_parent(self):
        d = os.path.dirname(os.path.abspath(self.path))
        for want in (b'W2ru', b'W2ku'):
            for code, _, length, off in self.h['locs']:
                if code != want or not length:
                    continue
                self.f.seek(off)
                p = self.f.read(length).decode('utf-16-le').rstrip('\0')
                p = p.replace('\\', '/')
                p = os.path.join(d, p)
                if os.path.exists(p):
                    return p
        p = os.path.join(d, os.path.basename(self.h['pname'].replace('\\', '/')))
        if os.path.exists(p):
            return p
        raise ValueError('parent not found')

    def read(self, off, n):
        """Read n bytes at off (sector aligned)."""
        if self.ft['type'] == 2:
            self.f.seek(off)
            return self.f.read(n).ljust(n, b'\0')
        out = bytearray()
        while n > 0:
            blk, boff = divmod(off, self.bs)
            k = min(n, self.bs - boff)
            e = self.bat[blk]
            if e == UNUSED:
                out += self.below(off, k)
            else:
                self.f.seek(e * SECTOR)
                bm = self.f.read(self.bms)
                for s in range(boff // SECTOR, (boff + k) // SECTOR):
                    if bm[s // 8] & (0x80 >> (s % 8)):
                        self.f.seek(e * SECTOR + self.bms + s * SECTOR)
                        out += self.f.read(SECTOR).ljust(SECTOR, b'\0')
                    else:
                        out += self.below(blk * self.bs + s * SECTOR, SECTOR)
            off += k
            n -= k
        return bytes(out)

    def below(self, off, n):
        if not self.parent or off >= self.parent.size:
            return bytes(n)
        k = min(n, self.parent.size - off)
        return self.parent.read(off, k) + bytes(n - k)


def parse_range(s):
    parts = [int(x, 0) for x in s.split(':')]
    return parts


def create(a):
    size = a.size
    dtype = {'fixed': 2, 'dynamic': 3, 'diff': 4}[a.type]
    geometry = None
    if a.chs_size:
        c, h, s = chs(size // SECTOR)
        size = c * h * s * SECTOR
    else:
        c, h, s = chs(size // SECTOR)
        if c * h * s * SECTOR != size:
            geometry = (65535, 16, 255)
    # The model: the bytes the image must read as.
    writes = []
    for w in a.write or []:
        off, ln, seed = parse_range(w)
        writes.append((off, random.Random(seed).randbytes(ln)))
    for z in a.zero or []:
        off, ln = parse_range(z)
        writes.append((off, bytes(ln)))

    if dtype == 2:
        with open(a.out, 'wb') as f:
            f.truncate(size)
            for off, data in writes:
                f.seek(off)
                f.write(data)
            f.seek(size)
            ft = footer_bytes(size, 2, 0xFFFFFFFFFFFFFFFF, a.creator.encode(),
                              geometry)
            f.write(ft[:511] if a.footer511 else ft)
        return

    bs = a.block_size
    bms = bitmap_bytes(bs)
    nblocks = (size + bs - 1) // bs
    entries = nblocks + a.reserve
    # Sectors each block holds, with data.
    blocks = {}
    for off, data in writes:
        for i in range(0, len(data), SECTOR):
            o = off + i
            blk, boff = divmod(o, bs)
            blocks.setdefault(blk, {})[boff // SECTOR] = data[i:i + SECTOR]
    parent = None
    locs = []
    if dtype == 4:
        parent = Image(a.parent)
        rel = os.path.relpath(os.path.abspath(a.parent),
                              os.path.dirname(os.path.abspath(a.out)))
        if not rel.startswith('.'):
            rel = '.\\' + rel
        locs = [(b'W2ru', rel.replace('/', '\\').encode('utf-16-le')),
                (b'W2ku', os.path.abspath(a.parent).replace('/', '\\')
                 .encode('utf-16-le'))]
    align = max(a.align, SECTOR)

    def up(x, al=align):
        return (x + al - 1) // al * al

    pos = 512 + 1024
    loc_offsets = []
    bat_bytes = up(4 * entries, SECTOR)
    if a.locators_first:
        for code, payload in locs:
            loc_offsets.append(pos)
            pos += up(len(payload), SECTOR)
        bat_off = pos
        pos += bat_bytes
    else:
        bat_off = pos
        pos += bat_bytes
        for code, payload in locs:
            loc_offsets.append(pos)
            pos += up(len(payload), SECTOR)
    order = sorted(blocks)
    if a.shuffle_bat:
        random.Random(7).shuffle(order)
    bat = [UNUSED] * entries
    layout = []
    for blk in order:
        pos = up(pos)
        bat[blk] = pos // SECTOR
        valid = min(bs, size - blk * bs)
        length = bms + (valid if a.partial_last else bs)
        layout.append((blk, pos))
        pos += length
    end = up(pos, SECTOR)

    ft = footer_bytes(size, dtype, 512, a.creator.encode(), geometry)
    hd = bytearray(1024)
    hd[0:8] = b'cxsparse'
    struct.pack_into('>QQIII', hd, 8, 0xFFFFFFFFFFFFFFFF, bat_off,
                     0x00010000, entries, bs)
    if parent:
        hd[40:56] = parent.ft['uuid']
        struct.pack_into('>I', hd, 56, int(os.path.getmtime(a.parent))
                         - 946684800)
        name = os.path.basename(a.parent).encode('utf-16-be')
        hd[64:64 + len(name)] = name
        for i, (code, payload) in enumerate(locs):
            b = 576 + 24 * i
            hd[b:b + 4] = code
            struct.pack_into('>IIIQ', hd, b + 4, up(len(payload), SECTOR),
                             len(payload), 0, loc_offsets[i])
    struct.pack_into('>I', hd, 36, checksum(hd, 36))

    with open(a.out, 'wb') as f:
        f.write(ft)
        f.write(hd)
        for (code, payload), off in zip(locs, loc_offsets):
            f.seek(off)
            f.write(payload)
        f.seek(bat_off)
        f.write(struct.pack('>%dI' % entries, *bat).ljust(bat_bytes, b'\xff'))
        for blk, off in layout:
            bm = bytearray(bms)
            valid = min(bs, size - blk * bs) // SECTOR
            if dtype == 3:
                # Dynamic: every sector of a written block is valid (zeros
                # where not written).
                for s in range(valid):
                    bm[s // 8] |= 0x80 >> (s % 8)
            data = bytearray(min(bs, size - blk * bs) if a.partial_last else bs)
            if dtype == 4:
                # Differencing: only written sectors; the rest reads from
                # the parent.
                for s in blocks[blk]:
                    bm[s // 8] |= 0x80 >> (s % 8)
            for s, chunk in blocks[blk].items():
                data[s * SECTOR:s * SECTOR + len(chunk)] = chunk
            f.seek(off)
            f.write(bm)
            f.write(data)
        f.seek(end)
        f.write(ft[:511] if a.footer511 else ft)


def setuuid(path, hexuuid):
    with open(path, 'r+b') as f:
        f.seek(0, 2)
        fsz = f.tell()
        offsets = [fsz - 512]
        f.seek(0)
        if f.read(8) == b'conectix':
            offsets.append(0)
        for off in offsets:
            f.seek(off)
            b = bytearray(f.read(512))
            b[68:84] = bytes.fromhex(hexuuid)
            struct.pack_into('>I', b, 64, checksum(b, 64))
            f.seek(off)
            f.write(b)


def size_rule(path, rule):
    with open(path, 'rb') as f:
        f.seek(0, 2)
        fsz = f.tell()
        f.seek(fsz - 512)
        ft = parse_footer(f.read(512))
    maxchs = (ft['c'], ft['h'], ft['s']) == (65535, 16, 255)
    chs_size = ft['c'] * ft['h'] * ft['s'] * SECTOR
    if rule == 'windows':
        return ft['size']
    if rule == 'qemu7':
        cur = ft['creator'] in (b'win ', b'qem2', b'd2v ', b'CTXS', b'tap\0')
    elif rule == 'qemu10':
        cur = ft['creator'] not in (b'vpc ', b'qemu')
    else:
        raise ValueError(rule)
    return ft['size'] if cur or maxchs else chs_size


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest='cmd', required=True)
    c = sub.add_parser('create')
    c.add_argument('out')
    c.add_argument('--size', type=lambda x: int(x, 0), required=True)
    c.add_argument('--type', default='dynamic',
                   choices=['fixed', 'dynamic', 'diff'])
    c.add_argument('--block-size', type=lambda x: int(x, 0), default=2 << 20)
    c.add_argument('--parent')
    c.add_argument('--write', action='append')
    c.add_argument('--zero', action='append')
    c.add_argument('--shuffle-bat', action='store_true')
    c.add_argument('--align', type=lambda x: int(x, 0), default=512)
    c.add_argument('--reserve', type=int, default=0)
    c.add_argument('--locators-first', action='store_true')
    c.add_argument('--footer511', action='store_true')
    c.add_argument('--partial-last', action='store_true')
    c.add_argument('--creator', default='vhdg')
    c.add_argument('--chs-size', action='store_true')
    r = sub.add_parser('read')
    r.add_argument('img')
    r.add_argument('out')
    s = sub.add_parser('size')
    s.add_argument('img')
    s.add_argument('rule')
    u = sub.add_parser('uuid')
    u.add_argument('img')
    u = sub.add_parser('setuuid')
    u.add_argument('img')
    u.add_argument('hex')
    a = ap.parse_args()
    if a.cmd == 'create':
        create(a)
    elif a.cmd == 'read':
        img = Image(a.img)
        with open(a.out, 'wb') as f:
            step = 1 << 20
            for off in range(0, img.size, step):
                f.write(img.read(off, min(step, img.size - off)))
    elif a.cmd == 'size':
        print(size_rule(a.img, a.rule))
    elif a.cmd == 'setuuid':
        setuuid(a.img, a.hex)
    elif a.cmd == 'uuid':
        print(Image(a.img).ft['uuid'].hex())
    return 0


if __name__ == '__main__':
    sys.exit(main())
