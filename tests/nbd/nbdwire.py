# NBD wire helpers shared by the raw-socket test clients in tests/nbd
# (handshake.py, tlsclient.py, fairness.py): constants from the NBD
# protocol (doc/proto.md), exact receives, option requests and replies.
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQ_MAGIC, SIMPLE_MAGIC = 0x25609513, 0x67446698
OPT_STARTTLS, OPT_GO, OPT_STRUCTURED = 5, 7, 8
REP_ACK, REP_INFO = 1, 3
CMD_READ, CMD_CACHE = 0, 5
EINVAL = 22


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def recv(s, n):
    """Exactly N bytes from S; EOFError if the server closes first."""
    buf = bytearray()
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise EOFError("connection closed by the server")
        buf += d
    return bytes(buf)


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def reply(s):
    """One option reply: (type, payload)."""
    magic, opt, typ, ln = struct.unpack(">QIII", recv(s, 20))
    if magic != REP_MAGIC:
        raise ValueError("bad reply magic")
    return typ, recv(s, ln)
