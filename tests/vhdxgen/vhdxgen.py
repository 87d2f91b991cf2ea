#!/usr/bin/python3
"""An independent VHDX writer for the tests, written from [MS-VHDX] alone
(no code shared with vdisk/vhdx*.c), for what qemu-img cannot make:
4096-byte logical sectors, differencing images with partially present
blocks, and dirty logs.

  vhdxgen.py create OUT --size N [--block-size B] [--lss 512|4096]
        [--pss 512|4096] [--fixed] [--parent P [--rel PATH] [--abs PATH]
        [--linkage GUID]] [--full] [--write OFF:LEN:SEED ...]
      Writes OUT.  --write puts LEN pseudo-random bytes (seeded) at OFF of
      the virtual disk (LEN and OFF multiples of the logical sector).  In a
      differencing image written sectors make their block partially present
      (sector bitmap) unless --full.
  vhdxgen.py dirty IMG [--write OFF:LEN:SEED ...] [--zero-block N ...]
        [--entries K] [--junk-before]
      Leaves IMG as a writer that crashed after flushing its log: payload of
      the writes in new blocks at the end of the file, their BAT pages (and
      a zero descriptor over the BAT page of each --zero-block) only in the
      log, split over K entries, headers carrying the LogGuid.  --junk-before
      puts an older, complete entry with another LogGuid in front.
  vhdxgen.py expect IMG OUT [--parent-raw P]
      Writes the virtual content this tool intended (from its side file
      IMG.expect.json) to OUT.
  vhdxgen.py read IMG OUT
      An independent reader: checks IMG (checksums of the current header
      and region table, a clean log, BAT entries inside the file, no two
      blocks, sector bitmaps or regions overlapping, the parent's
      DataWriteGuid equal to parent_linkage) and writes its virtual content
      to OUT, following relative_path to the parents.  Exits 1 with a line
      on stderr on anything it does not accept.
  vhdxgen.py states IMG
      Prints each payload block's BAT entry: "BLOCK STATE OFFSET" (state
      0 not present, 1 undefined, 2 zero, 3 unmapped, 6 fully present,
      7 partially present; the offset in bytes).
"""
import argparse, json, os, random, struct, sys, uuid

MiB = 1 << 20

def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t
_T = _crc_table()

def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _T[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF

def with_crc(buf):
    buf = bytearray(buf)
    buf[4:8] = b"\0\0\0\0"
    buf[4:8] = struct.pack("<I", crc32c(bytes(buf)))
    return bytes(buf)

G = lambda s: uuid.UUID(s).bytes_le
BAT = G("2DC27766-F623-4200-9D64-115E9BFD4A08")
META = G("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FP = G("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
SIZE = G("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
P83 = G("BECA12AB-B2E6-4523-93EF-C309E000C746")
LSS = G("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PSS = G("CDA348C7-445D-4471-9CC9-E9885251C556")
LOC = G("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
LOC_VHDX = G("B04AEFB7-D19E-4A81-B789-25B8E9445913")

LOG_OFF, LOG_LEN, META_OFF, META_LEN, BAT_OFF = MiB, MiB, 2 * MiB, MiB, 3 * MiB

def header(seq, fwg, dwg, logg):
    h = bytearray(4096)
    h[0:4] = b"head"
    struct.pack_into("<Q16s16s16sHHIQ", h, 8, seq, fwg, dwg, logg, 0, 1,
                     LOG_LEN, LOG_OFF)
    return with_crc(h)

def geometry(size, bs, lss, diff):
    ratio = (1 << 23) * lss // bs
    db = -(-size // bs)
    sb = -(-db // ratio)
    total = sb * (ratio + 1) if diff else db + (db - 1) // ratio
    return ratio, db, total

def pattern(n, seed):
    return random.Random(seed).randbytes(n)

def parse_write(s):
    o, l, seed = (int(x, 0) for x in s.split(":"))
    return o, l, seed

def read_current_header(f):
    best = None
    for off in (64 * 1024, 128 * 1024):
        f.seek(off)
        h = f.read(4096)
        if h[0:4] != b"head" or struct.unpack_from("<I", h, 4)[0] != crc32c(h[:4] + b"\0" * 4 + h[8:]):
            continue
        seq = struct.unpack_from("<Q", h, 8)[0]
        if best is None or seq > best[0]:
            best = (seq, h[16:32], h[32:48], h[48:64])
    if best is None:
        sys.exit("vhdxgen: no valid header")
    return best

def utf16(s):
    return s.encode("utf-16-le")

def locator(items):
    n = len(items)
    hdr = bytearray(20 + 12 * n)
    hdr[0:16] = LOC_VHDX
    struct.pack_into("<HH", hdr, 16, 0, n)
    body = bytearray()
    for i, (k, v) in enumerate(items):
        kb, vb = utf16(k), utf16(v)
        ko = len(hdr) + len(body); body += kb
        vo = len(hdr) + len(body); body += vb
        struct.pack_into("<IIHH", hdr, 20 + 12 * i, ko, vo, len(kb), len(vb))
    return bytes(hdr + body)

def create(a):
    size, bs, lss = a.size, a.block_size, a.lss
    diff = a.parent is not None
    ratio, db, total = geometry(size, bs, lss, diff)
    bat_len = -(-total * 8 // MiB) * MiB
    nxt = BAT_OFF + bat_len
    bat = [0] * total
    blocks = {}          # block -> bytearray(bs)
    present = {}         # block -> bytearray bitmap (diff, partial)
    expect = {"size": size, "writes": [], "parent": diff, "lss": lss}
    for w in a.write:
        o, l, seed = parse_write(w)
        assert o % lss == 0 and l % lss == 0 and o + l <= size
        data = pattern(l, seed)
        expect["writes"].append([o, l, seed])
        p = 0
        while p < l:
            blk, boff = divmod(o + p, bs)
            n = min(bs - boff, l - p)
            b = blocks.setdefault(blk, bytearray(bs))
            b[boff:boff + n] = data[p:p + n]
            if diff and not a.full:
                bm = present.setdefault(blk, bytearray(bs // lss // 8))
                for s in range(boff // lss, (boff + n) // lss):
                    bm[s // 8] |= 1 << (s % 8)
            p += n
    if diff and a.full:
        # Fully present blocks are this image's alone: zeros where not written.
        expect["full"] = [[b * bs, min(bs, size - b * bs)] for b in sorted(blocks)]
    out = open(a.out, "wb")
    def put(off, data):
        out.seek(off); out.write(data)
    if a.fixed:
        for blk in range(db):
            blocks.setdefault(blk, bytearray(bs))
    for blk in sorted(blocks):
        idx = blk + blk // ratio
        state = 7 if blk in present else 6
        bat[idx] = (nxt // MiB) << 20 | state
        put(nxt, bytes(blocks[blk]))
        nxt += bs
    # Sector bitmap blocks: one per chunk holding a partial block.
    chunks = {}
    for blk, bm in present.items():
        c = blk // ratio
        sb = chunks.setdefault(c, bytearray(MiB))
        start = (blk % ratio) * (bs // lss) // 8
        sb[start:start + len(bm)] = bm
    for c in sorted(chunks):
        bat[c * (ratio + 1) + ratio] = (nxt // MiB) << 20 | 6
        put(nxt, bytes(chunks[c]))
        nxt += MiB
    put(BAT_OFF, b"".join(struct.pack("<Q", e) for e in bat))
    # File type identifier, headers, region tables.
    put(0, b"vhdxfile" + utf16("vhdxgen"))
    fwg, dwg = uuid.uuid4().bytes_le, uuid.uuid4().bytes_le
    put(64 * 1024, header(10, fwg, dwg, b"\0" * 16))
    put(128 * 1024, header(11, fwg, dwg, b"\0" * 16))
    rt = bytearray(65536)
    rt[0:4] = b"regi"
    struct.pack_into("<I", rt, 8, 2)
    struct.pack_into("<16sQII", rt, 16, BAT, BAT_OFF, bat_len, 1)
    struct.pack_into("<16sQII", rt, 48, META, META_OFF, META_LEN, 1)
    rt = with_crc(rt)
    put(192 * 1024, rt); put(256 * 1024, rt)
    # Metadata.
    items = [(FP, struct.pack("<II", bs, (2 if diff else 0) | (1 if a.fixed else 0)), 4),
             (SIZE, struct.pack("<Q", size), 6),
             (P83, uuid.uuid4().bytes_le, 6),
             (LSS, struct.pack("<I", lss), 6),
             (PSS, struct.pack("<I", a.pss), 6)]
    if diff:
        with open(a.parent, "rb") as pf:
            pdwg = read_current_header(pf)[2]
        link = a.linkage or "{%s}" % uuid.UUID(bytes_le=pdwg)
        kv = [("parent_linkage", link)]
        rel = a.rel if a.rel is not None else \
            os.path.relpath(os.path.abspath(a.parent), os.path.dirname(os.path.abspath(a.out))).replace("/", "\\")
        if rel:
            kv.append(("relative_path", rel))
        if a.abs:
            kv.append(("absolute_win32_path", "\\\\?\\C:" + a.abs.replace("/", "\\")))
        items.append((LOC, locator(kv), 4))
    mt = bytearray(65536)
    mt[0:8] = b"metadata"
    struct.pack_into("<H", mt, 10, len(items))
    for i, (g, data, flags) in enumerate(items):
        off = 65536 + 4096 * i
        struct.pack_into("<16sIII", mt, 32 + 32 * i, g, off, len(data), flags)
        put(META_OFF + off, data)
    put(META_OFF, bytes(mt))
    out.truncate(max(nxt, META_OFF + META_LEN))
    out.close()
    json.dump(expect, open(a.out + ".expect.json", "w"))

def load(f):
    f.seek(192 * 1024)
    rt = f.read(65536)
    n = struct.unpack_from("<I", rt, 8)[0]
    reg = {}
    for i in range(n):
        g, off, ln, _ = struct.unpack_from("<16sQII", rt, 16 + 32 * i)
        reg[g] = (off, ln)
    mo = reg[META][0]
    f.seek(mo)
    mt = f.read(65536)
    vals = {}
    for i in range(struct.unpack_from("<H", mt, 10)[0]):
        g, off, ln, _ = struct.unpack_from("<16sIII", mt, 32 + 32 * i)
        f.seek(mo + off)
        vals[g] = f.read(ln)
    bs, flags = struct.unpack("<II", vals[FP])
    size = struct.unpack("<Q", vals[SIZE])[0]
    lss = struct.unpack("<I", vals[LSS])[0]
    return reg[BAT][0], bs, lss, size, bool(flags & 2)

def dirty(a):
    f = open(a.img, "r+b")
    bat_off, bs, lss, size, diff = load(f)
    ratio, db, total = geometry(size, bs, lss, diff)
    f.seek(bat_off)
    bat = list(struct.unpack("<%dQ" % total, f.read(8 * total)))
    orig = list(bat)
    f.seek(0, 2)
    nxt = -(-f.tell() // MiB) * MiB
    expect = json.load(open(a.img + ".expect.json"))
    for w in a.write:
        o, l, seed = parse_write(w)
        blk, boff = divmod(o, bs)
        assert boff + l <= bs and bat[blk + blk // ratio] & 7 == 0, "one fresh block"
        data = bytearray(bs)
        data[boff:boff + l] = pattern(l, seed)
        f.seek(nxt); f.write(data)
        bat[blk + blk // ratio] = (nxt // MiB) << 20 | 6
        nxt += bs
        expect["writes"].append([o, l, seed])
    f.truncate(nxt)
    zero_pages = set()
    for blk in a.zero_block:
        idx = blk + blk // ratio
        page = idx * 8 // 4096
        zero_pages.add(page)
        lo = page * 512
        for i in range(lo, min(lo + 512, total)):
            assert bat[i] == orig[i], "a write in a zeroed BAT page"
            bat[i] = 0
            if i % (ratio + 1) != ratio:
                b = i - i // (ratio + 1)
                expect.setdefault("zeroed", []).append([b * bs, min(bs, size - b * bs)])
    pages = sorted({i * 8 // 4096 for i in range(total) if bat[i] != orig[i]} - zero_pages)
    def page_bytes(p):
        raw = b"".join(struct.pack("<Q", e) for e in bat[p * 512:(p + 1) * 512])
        return raw + b"\0" * (4096 - len(raw))
    descs = [("zero", bat_off + p * 4096) for p in sorted(zero_pages)] + \
            [("data", bat_off + p * 4096, page_bytes(p)) for p in pages]
    k = max(1, min(a.entries, len(descs)))
    # Split in order, so the replay order stays: zero descriptors first.
    groups = [descs[i * len(descs) // k:(i + 1) * len(descs) // k] for i in range(k)]
    logg = uuid.uuid4().bytes_le
    log = bytearray()
    seq = 1000
    if a.junk_before:
        # A complete, older entry of another log session: never replayed.
        log += entry(uuid.uuid4().bytes_le, 7, 0, [("zero", bat_off)], nxt)
    tail = len(log)
    for g in groups:
        log += entry(logg, seq, tail, g, nxt)
        seq += 1
    assert len(log) <= LOG_LEN
    f.seek(LOG_OFF); f.write(bytes(log))
    s, fwg, dwg, _ = read_current_header(f)
    f.seek(64 * 1024); f.write(header(s + 1, fwg, dwg, logg))
    f.seek(128 * 1024); f.write(header(s + 2, fwg, dwg, logg))
    f.close()
    json.dump(expect, open(a.img + ".expect.json", "w"))

def entry(logg, seq, tail, descs, fsize):
    nd = len(descs)
    dsec = -(-(64 + 32 * nd) // 4096)
    datas = [d for d in descs if d[0] == "data"]
    length = (dsec + len(datas)) * 4096
    e = bytearray(length)
    e[0:4] = b"loge"
    struct.pack_into("<IIQII16sQQ", e, 8, length, tail, seq, nd, 0, logg,
                     fsize, fsize)
    di = 0
    for i, d in enumerate(descs):
        o = 64 + 32 * i
        if d[0] == "zero":
            e[o:o + 4] = b"zero"
            struct.pack_into("<IQQQ", e, o + 4, 0, 4096, d[1], seq)
        else:
            e[o:o + 4] = b"desc"
            page = d[2]
            e[o + 4:o + 8] = page[4092:4096]
            e[o + 8:o + 16] = page[0:8]
            struct.pack_into("<QQ", e, o + 16, d[1], seq)
            so = (dsec + di) * 4096
            e[so:so + 4] = b"data"
            struct.pack_into("<I", e, so + 4, seq >> 32)
            e[so + 8:so + 4092] = page[8:4092]
            struct.pack_into("<I", e, so + 4092, seq & 0xFFFFFFFF)
            di += 1
    return with_crc(e)

def expect_out(a):
    ex = json.load(open(a.img + ".expect.json"))
    size = ex["size"]
    buf = bytearray(open(a.parent_raw, "rb").read()[:size]) if a.parent_raw else bytearray(size)
    buf += bytearray(size - len(buf))
    for o, l in ex.get("full", []):
        buf[o:o + l] = bytearray(l)
    for o, l, seed in ex["writes"]:
        buf[o:o + l] = pattern(l, seed)
    # Blocks whose BAT page the log zeroed read as not present.
    for o, l in ex.get("zeroed", []):
        if ex["parent"]:
            buf[o:o + l] = (open(a.parent_raw, "rb").read()[o:o + l] if a.parent_raw else b"")
            buf[o:o + l] += bytearray(l - len(buf[o:o + l]))
        else:
            buf[o:o + l] = bytearray(l)
    open(a.out, "wb").write(bytes(buf))

class Bad(Exception):
    pass

def read_image(path, depth=0):
    """The virtual content of PATH (bytes), parents followed."""
    if depth > 16:
        raise Bad("chain too deep")
    f = open(path, "rb")
    fsize = os.fstat(f.fileno()).st_size
    if f.read(8) != b"vhdxfile":
        raise Bad("%s: no file type identifier" % path)
    best = None
    for i in (1, 2):
        f.seek(i * 64 * 1024)
        h = f.read(4096)
        if h[0:4] != b"head" or struct.unpack_from("<I", h, 4)[0] != crc32c(h[:4] + b"\0" * 4 + h[8:]):
            continue
        seq, fwg, dwg, logg = struct.unpack_from("<Q16s16s16s", h, 8)
        if best is None or seq > best[0]:
            best = (seq, fwg, dwg, logg, struct.unpack_from("<IQ", h, 68))
    if best is None:
        raise Bad("%s: no valid header" % path)
    if best[3] != b"\0" * 16:
        raise Bad("%s: log not clean (LogGuid set)" % path)
    log_len, log_off = best[4]
    f.seek(192 * 1024)
    rt = f.read(65536)
    if rt[0:4] != b"regi" or struct.unpack_from("<I", rt, 4)[0] != crc32c(rt[:4] + b"\0" * 4 + rt[8:]):
        raise Bad("%s: region table 1 invalid" % path)
    bat_off, bs, lss, size, diff = load(f)
    reg = {}
    for i in range(struct.unpack_from("<I", rt, 8)[0]):
        g, off, ln, _ = struct.unpack_from("<16sQII", rt, 16 + 32 * i)
        reg[g] = (off, ln)
    used = [(0, MiB, "header section"), (log_off, log_len, "log"),
            (reg[BAT][0], reg[BAT][1], "BAT"), (reg[META][0], reg[META][1], "metadata")]
    ratio, db, total = geometry(size, bs, lss, diff)
    f.seek(bat_off)
    bat = struct.unpack("<%dQ" % total, f.read(8 * total))
    out = bytearray(size)
    parent = None
    if diff:
        mo = reg[META][0]
        f.seek(mo)
        mt = f.read(65536)
        loc = None
        for i in range(struct.unpack_from("<H", mt, 10)[0]):
            g, off, ln, _ = struct.unpack_from("<16sIII", mt, 32 + 32 * i)
            if g == LOC:
                f.seek(mo + off)
                loc = f.read(ln)
        if loc is None or loc[0:16] != LOC_VHDX:
            raise Bad("%s: no VHDX parent locator" % path)
        kv = {}
        for i in range(struct.unpack_from("<H", loc, 18)[0]):
            ko, vo, kl, vl = struct.unpack_from("<IIHH", loc, 20 + 12 * i)
            kv[loc[ko:ko + kl].decode("utf-16-le")] = loc[vo:vo + vl].decode("utf-16-le")
        ppath = os.path.join(os.path.dirname(path), kv["relative_path"].replace("\\", "/"))
        with open(ppath, "rb") as pf:
            pdwg = read_current_header(pf)[2]
        if uuid.UUID(kv["parent_linkage"].strip("{}")).bytes_le != pdwg:
            raise Bad("%s: parent %s: DataWriteGuid is not parent_linkage" % (path, ppath))
        parent = read_image(ppath, depth + 1)
        out[:min(size, len(parent))] = parent[:size]
    sbs = {}
    for c in range(-(-db // ratio)):
        if c * (ratio + 1) + ratio >= total:
            break
        e = bat[c * (ratio + 1) + ratio]
        if e & 7 == 6:
            o = (e >> 20) << 20
            if o + MiB > fsize:
                raise Bad("%s: sector bitmap %d outside the file" % (path, c))
            used.append((o, MiB, "sector bitmap %d" % c))
            f.seek(o)
            sbs[c] = f.read(MiB)
        elif e & 7 != 0:
            raise Bad("%s: sector bitmap entry %d state %d" % (path, c, e & 7))
    spb = bs // lss
    for b in range(db):
        e = bat[b + b // ratio]
        st, o = e & 7, (e >> 20) << 20
        lo, n = b * bs, min(bs, size - b * bs)
        if st in (1, 2, 3) or (st == 0 and not diff):
            out[lo:lo + n] = bytes(n)
        elif st == 0:
            pass
        elif st in (6, 7):
            if o < MiB or o >= fsize:
                raise Bad("%s: block %d outside the file" % (path, b))
            used.append((o, bs, "block %d" % b))
            f.seek(o)
            data = f.read(n)
            data += bytes(n - len(data))
            if st == 6:
                out[lo:lo + n] = data
                continue
            if not diff or (b // ratio) not in sbs:
                raise Bad("%s: block %d partially present without a sector bitmap" % (path, b))
            bm = sbs[b // ratio]
            first = (b % ratio) * spb
            for s in range(n // lss):
                k = first + s
                if bm[k // 8] >> (k % 8) & 1:
                    out[lo + s * lss:lo + (s + 1) * lss] = data[s * lss:(s + 1) * lss]
        else:
            raise Bad("%s: block %d state %d" % (path, b, st))
    used.sort()
    for (a, al, an), (b2, bl, bn) in zip(used, used[1:]):
        if a + al > b2:
            raise Bad("%s: %s and %s overlap" % (path, an, bn))
    return bytes(out)

def read_out(a):
    try:
        data = read_image(a.img)
    except (Bad, OSError, KeyError, struct.error) as e:
        print("vhdxgen read: %s" % e, file=sys.stderr)
        sys.exit(1)
    open(a.out, "wb").write(data)

def states_out(a):
    f = open(a.img, "rb")
    bat_off, bs, lss, size, diff = load(f)
    ratio, db, total = geometry(size, bs, lss, diff)
    f.seek(bat_off)
    bat = struct.unpack("<%dQ" % total, f.read(8 * total))
    for b in range(db):
        e = bat[b + b // ratio]
        print(b, e & 7, (e >> 20) << 20)

def main():
    ap = argparse.ArgumentParser()
    sp = ap.add_subparsers(dest="cmd", required=True)
    c = sp.add_parser("create")
    c.add_argument("out")
    c.add_argument("--size", type=lambda s: int(s, 0), required=True)
    c.add_argument("--block-size", type=lambda s: int(s, 0), default=MiB)
    c.add_argument("--lss", type=int, default=512)
    c.add_argument("--pss", type=int, default=4096)
    c.add_argument("--fixed", action="store_true")
    c.add_argument("--full", action="store_true")
    c.add_argument("--parent")
    c.add_argument("--rel")
    c.add_argument("--abs")
    c.add_argument("--linkage")
    c.add_argument("--write", action="append", default=[])
    d = sp.add_parser("dirty")
    d.add_argument("img")
    d.add_argument("--write", action="append", default=[])
    d.add_argument("--zero-block", type=int, action="append", default=[])
    d.add_argument("--entries", type=int, default=1)
    d.add_argument("--junk-before", action="store_true")
    e = sp.add_parser("expect")
    e.add_argument("img")
    e.add_argument("out")
    e.add_argument("--parent-raw")
    r = sp.add_parser("read")
    r.add_argument("img")
    r.add_argument("out")
    st = sp.add_parser("states")
    st.add_argument("img")
    a = ap.parse_args()
    {"create": create, "dirty": dirty, "expect": expect_out,
     "read": read_out, "states": states_out}[a.cmd](a)

if __name__ == "__main__":
    main()
