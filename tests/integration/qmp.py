# A minimal QMP client for the tests (stdlib only): connect to a control
# socket, read the greeting, send commands, read replies and events.
# Every read is bounded by a timeout so that a test cannot hang.
import json
import socket


class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path, timeout=10.0, negotiate=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        self.greeting = self.read()
        if negotiate:
            self.cmd("qmp_capabilities")

    def close(self):
        self.sock.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def read(self):
        """The next message (a dict), or None at end of stream."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def reply(self):
        """The next message that is not an event (events are kept)."""
        while True:
            m = self.read()
            if m is None or "event" not in m:
                return m
            self.events.append(m)

    def execute(self, name, args=None, id=None):
        req = {"execute": name}
        if args is not None:
            req["arguments"] = args
        if id is not None:
            req["id"] = id
        self.send_raw(json.dumps(req).encode() + b"\n")
        return self.reply()

    def cmd(self, name, **args):
        r = self.execute(name, args or None)
        if r is None:
            raise QMPError("connection closed")
        if "error" in r:
            raise QMPError("%s: %s" % (r["error"]["class"], r["error"]["desc"]))
        return r["return"]
