#!/usr/bin/python3
"""meta-contexts.py URI BITMAP...: libnbd against a vdisk-nbd started with
-A and -B BITMAP...: NBD_OPT_LIST_META_CONTEXT answers the "qemu:" and
"qemu:dirty-bitmap:" namespace queries with exactly the offered contexts;
a connection that selects base:allocation, qemu:allocation-depth and every
bitmap gets one block status chunk per context (libnbd calls back once
per context), each starting at the offset asked, never past the range;
REQ_ONE gives one extent per context.  Exits non-zero with a message."""
import sys

import nbd

uri, bitmaps = sys.argv[1], sys.argv[2:]
want_qemu = {"qemu:allocation-depth"} | {"qemu:dirty-bitmap:" + b
                                         for b in bitmaps}


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def listed(queries):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(uri)
    for q in queries:
        h.add_meta_context(q)
    got = set()
    h.opt_list_meta_context(lambda name: got.add(name) or 0)
    h.opt_abort()
    return got


if listed(["qemu:"]) != want_qemu:
    fail("LIST qemu: gave %s" % listed(["qemu:"]))
if listed(["qemu:dirty-bitmap:"]) != want_qemu - {"qemu:allocation-depth"}:
    fail("LIST qemu:dirty-bitmap: gave %s" % listed(["qemu:dirty-bitmap:"]))
if listed([]) != want_qemu | {"base:allocation"}:
    fail("LIST with no query gave %s" % listed([]))
if listed(["qemu:dirty-bitmap:nope", "other:x"]):
    fail("unknown contexts listed")

h = nbd.NBD()
ctxs = ["base:allocation"] + sorted(want_qemu)
for c in ctxs:
    h.add_meta_context(c)
h.connect_uri(uri)
for c in ctxs:
    if not h.can_meta_context(c):
        fail("%s not negotiated" % c)
size = h.get_size()
for off, length, flags in ((0, size, 0), (4096, min(size - 4096, 3 << 20), 0),
                           (512, 1 << 20, nbd.CMD_FLAG_REQ_ONE)):
    seen = {}

    def cb(meta, start, entries, err):
        if meta in seen:
            fail("two chunks for %s" % meta)
        seen[meta] = entries
        if start != off:
            fail("%s chunk starts at %d, asked %d" % (meta, start, off))
        n = len(entries) // 2
        if n == 0 or (flags and n != 1):
            fail("%s: %d extents (flags %d)" % (meta, n, flags))
        if sum(entries[0::2]) > length:
            fail("%s extents go past the range" % meta)
        return 0

    h.block_status(length, off, cb, flags)
    if set(seen) != set(ctxs):
        fail("chunks for %s, want %s" % (sorted(seen), ctxs))
h.shutdown()
print("ok")
