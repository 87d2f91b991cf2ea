# Shared by export-live.py and export-fuse.py: a QMP session with counted
# checks, commands whose error replies are checked, and bounded waits for
# events.
import sys
import time

from qmp import QMP


class Checks:
    def __init__(self, ctl):
        self.q = QMP(ctl)
        self.failures = 0

    def check(self, cond, what):
        if not cond:
            self.failures += 1
            print("FAIL:", what, file=sys.stderr)

    def cmd(self, name, args=None):
        """The command's return value, or the error reply itself."""
        r = self.q.execute(name, args)
        if r is None:
            raise RuntimeError("control connection closed")
        return r.get("return", r)

    def error(self, name, args, want):
        r = self.q.execute(name, args)
        self.check(r is not None and "error" in r and
                   want in r["error"]["desc"],
                   "%s %s: expected an error with %r, got %r"
                   % (name, args, want, r))

    def wait_event(self, name, data, seconds=20):
        """True once event NAME with DATA came (at most SECONDS)."""
        q = self.q
        deadline = time.monotonic() + seconds
        while True:
            for i, e in enumerate(q.events):
                if e["event"] == name and e.get("data") == data:
                    del q.events[i]
                    return True
            if time.monotonic() > deadline:
                return False
            q.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                m = q.read()
            except OSError:
                continue
            if m is None:
                return False
            if "event" in m:
                q.events.append(m)

    def finish(self):
        self.q.close()
        sys.exit(1 if self.failures else 0)
