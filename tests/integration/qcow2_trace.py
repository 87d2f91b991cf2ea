"""For the crash-order checks of qcow2-reserve.sh and qcow2-tables.sh:
the tables of a qcow2 image, and the pwrite64 and fdatasync calls of an
`strace -f` trace.

Calls of several threads interleave: a call starts at its entry line
(whole, or "<unfinished ...>") and ends at its result line (whole, or
"<... resumed>").  read() returns them in the order they started, each as
[kind, start, end, ok, line, what]: start and end are line numbers, ok
whether it succeeded, and kind and what are CLASSIFY's answer for a pwrite
(given its decoded buffer, length and offset), "fdatasync" and None for a
sync.  Only the first bytes of a buffer are there unless strace ran with
-s (STRACE_STRLEN).
"""
import codecs
import re
import struct
from types import SimpleNamespace

MASK = 0x00fffffffffffe00


def layout(path):
    """The image's cluster size cs; L1 table (l1o, l1n entries); refcount
    table (rto, rtc clusters); host offsets of its L2 tables (l2) and
    refcount blocks (rb)."""
    img = open(path, "rb").read()
    cb, = struct.unpack_from(">I", img, 20)
    l1n, l1o = struct.unpack_from(">IQ", img, 36)
    rto, rtc = struct.unpack_from(">QI", img, 48)
    cs = 1 << cb
    def offsets(n, at):
        return {e & MASK for e in struct.unpack_from(">%dQ" % n, img, at)
                if e & MASK}
    return SimpleNamespace(cs=cs, l1o=l1o, l1n=l1n, rto=rto, rtc=rtc,
                           l2=offsets(l1n, l1o),
                           rb=offsets(rtc * cs // 8, rto))


def read(path, classify):
    calls, pending = [], {}
    for i, line in enumerate(open(path)):
        pid, _, rest = line.strip().partition(" ")
        rest = rest.lstrip()
        m = re.match(r"<\.\.\. (\w+) resumed>.*= (-?\d+)", rest)
        if m:
            c = pending.pop(pid)
            c[2], c[3] = i, int(m.group(2)) >= 0
            continue
        if rest.startswith("pwrite64("):
            a = re.match(r'pwrite64\(\d+, "(.*)"(\.\.\.)?, (\d+), (\d+)\)?'
                         r'\s*(<unfinished|=)', rest)
            buf = codecs.escape_decode(a.group(1).encode())[0]
            kind, what = classify(buf, int(a.group(3)), int(a.group(4)))
        elif rest.startswith("fdatasync("):
            kind, what = "fdatasync", None
        else:
            continue
        c = [kind, i, i, True, line.strip(), what]
        calls.append(c)
        if "<unfinished" in rest:
            pending[pid] = c
        else:
            c[3] = not re.search(r"= -\d+", rest)
    return calls
