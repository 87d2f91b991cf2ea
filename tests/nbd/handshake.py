#!/usr/bin/python3
# Clients that try to hold vdisk-nbd's negotiation open, on plain sockets
# and Python's ssl module.
#   handshake.py hold PORT LIMIT MARGIN       two clients dripping a byte
#       a second; then a third client must be served within LIMIT+MARGIN s
#   handshake.py hold-tls PORT LIMIT MARGIN   one client idle after a
#       finished STARTTLS, one dripping its TLS ClientHello; same check
#   handshake.py options PORT                 32 options are answered
#       (the 32nd may be GO), a 33rd drops the client
# The server runs with -e 2 (both slots taken by the holders) and offers
# TLS (--tls=on) for hold-tls.  Exit 0 on success, 1 with a message.
import socket
import ssl
import struct
import sys
import threading
import time

from nbdwire import (IHAVEOPT, OPT_GO, OPT_STARTTLS, OPT_STRUCTURED, REP_ACK,
                     fail, option, recv, reply)

mode, port = sys.argv[1], int(sys.argv[2])


def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    return s


def go(s):
    """Select the default export; True once the server says ACK."""
    option(s, OPT_GO, struct.pack(">IH", 0, 0))
    while True:
        typ, _ = reply(s)
        if typ == REP_ACK:
            return True
        if typ & 0x80000000:
            return False


# Each holder runs in a thread and records when the server dropped it.
dropped = {}


def drip(name, s, data, interval=1.0):
    """Send DATA one byte per INTERVAL seconds until the server hangs up."""
    try:
        for b in data:
            s.send(bytes([b]))
            time.sleep(interval)
        # Out of data: stay silent, still holding the connection.
        while s.recv(4096):
            pass
    except (OSError, EOFError, ssl.SSLError):
        pass
    dropped[name] = time.monotonic()


def plain_holder(name):
    s = connect()
    recv(s, 18)
    # Client flags, then an option header announcing a long payload,
    # then the payload itself: weeks at a byte a second.
    data = struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, OPT_GO, 60000)
    data += bytes(60000)
    t = threading.Thread(target=drip, args=(name, s, data), daemon=True)
    t.start()


def tls_idle_holder(name):
    s = connect()
    recv(s, 18)
    s.sendall(struct.pack(">I", 3))
    option(s, OPT_STARTTLS)
    typ, _ = reply(s)
    if typ != REP_ACK:
        fail("STARTTLS refused: 0x%x" % typ)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t = ctx.wrap_socket(s, server_hostname="localhost")
    # TLS is up; now say nothing at all.
    th = threading.Thread(target=drip, args=(name, t, b""), daemon=True)
    th.start()


def tls_drip_holder(name):
    s = connect()
    recv(s, 18)
    s.sendall(struct.pack(">I", 3))
    option(s, OPT_STARTTLS)
    typ, _ = reply(s)
    if typ != REP_ACK:
        fail("STARTTLS refused: 0x%x" % typ)
    # A TLS handshake record header announcing 16000 bytes, then a
    # byte a second.
    data = bytes([0x16, 0x03, 0x01, 0x3E, 0x80]) + bytes(16000)
    th = threading.Thread(target=drip, args=(name, s, data), daemon=True)
    th.start()


def third_client(deadline):
    """Retry (the server refuses beyond -e) until served or DEADLINE."""
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        try:
            s = connect()
            s.settimeout(max(1.0, deadline - time.monotonic()))
            g = recv(s, 18)
            if g[:8] != b"NBDMAGIC":
                fail("bad greeting")
            s.sendall(struct.pack(">I", 3))
            if go(s):
                s.close()
                return tries
            fail("GO refused")
        except (EOFError, ConnectionResetError, BrokenPipeError):
            time.sleep(0.2)
        except socket.timeout:
            break
    return None


if mode in ("hold", "hold-tls"):
    limit, margin = float(sys.argv[3]), float(sys.argv[4])
    start = time.monotonic()
    if mode == "hold":
        plain_holder("drip1")
        plain_holder("drip2")
    else:
        tls_idle_holder("tls-idle")
        tls_drip_holder("tls-drip")
    time.sleep(0.5)
    tries = third_client(start + limit + margin)
    took = time.monotonic() - start
    if tries is None:
        fail("%s: a third client was not served within %.0f s (limit %.0f s)"
             " while two clients held the negotiation open"
             % (mode, limit + margin, limit))
    # The holders must be dropped too (a dripper notices at its next
    # byte or two).
    names = ["drip1", "drip2"] if mode == "hold" else ["tls-idle", "tls-drip"]
    while (time.monotonic() < start + limit + margin and
           any(n not in dropped for n in names)):
        time.sleep(0.2)
    held = [n for n in names if n not in dropped]
    if held:
        fail("%s: still connected after %.0f s: %s" % (mode, took, held))
    print("%s: third client served after %.1f s (%d tries)" % (mode, took, tries))
elif mode == "options":
    # 31 options and GO: 32 in all, served.
    s = connect()
    recv(s, 18)
    s.sendall(struct.pack(">I", 3))
    for i in range(31):
        option(s, OPT_STRUCTURED)
        reply(s)
    if not go(s):
        fail("GO as the 32nd option was refused")
    s.close()
    # 32 answered options, then the 33rd gets no answer: dropped.
    s = connect()
    recv(s, 18)
    s.sendall(struct.pack(">I", 3))
    for i in range(32):
        option(s, OPT_STRUCTURED)
        try:
            reply(s)
        except EOFError:
            fail("option %d was not answered" % (i + 1))
    try:
        option(s, OPT_STRUCTURED)
        typ, _ = reply(s)
        fail("the 33rd option was answered (0x%x)" % typ)
    except (EOFError, ConnectionResetError, BrokenPipeError):
        pass
    print("options: 32 answered, the 33rd dropped the client")
else:
    fail("unknown mode " + mode)
