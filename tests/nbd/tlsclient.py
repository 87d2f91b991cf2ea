#!/usr/bin/python3
# A TLS NBD client on Python's ssl module (OpenSSL), which always sends
# the client certificate it is given -- GnuTLS clients (libnbd, qemu) send
# none when its issuer is not one the server asked for -- so that the
# server's own verification is what refuses a certificate.
#   tlsclient.py PORT CA [CERT KEY]
# Prints the size of export "disk" and exits 0 when served, exits 1 when
# the server refused or dropped the connection.
import socket
import ssl
import struct
import sys

from nbdwire import OPT_GO, OPT_STARTTLS, REP_ACK, REP_INFO, option, recv, reply

port, ca = int(sys.argv[1]), sys.argv[2]
cert = sys.argv[3:5]

try:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    g = recv(raw, 18)
    assert g[:8] == b"NBDMAGIC"
    raw.sendall(struct.pack(">I", 3))
    option(raw, OPT_STARTTLS)
    typ, _ = reply(raw)
    if typ != REP_ACK:
        print("STARTTLS refused: 0x%x" % typ, file=sys.stderr)
        sys.exit(1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(cert[0], cert[1])
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    name = b"disk"
    option(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    size = None
    while True:
        typ, data = reply(s)
        if typ == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
            size = struct.unpack(">Q", data[2:10])[0]
        elif typ == REP_ACK:
            break
        elif typ & 0x80000000:
            print("GO refused: 0x%x" % typ, file=sys.stderr)
            sys.exit(1)
    print(size)
except (OSError, EOFError, ssl.SSLError) as e:
    print("refused: %s" % e, file=sys.stderr)
    sys.exit(1)
