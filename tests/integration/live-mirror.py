#!/usr/bin/python3
"""QMP helper for live-mirror.sh (on tests/integration/qmp.py): run one
command on the control socket and optionally wait (bounded) for an event
about the job on the same connection, so no event can be missed between
the command and the wait.

usage: live-mirror.py SOCKET COMMAND JSON-ARGS [EVENT [TIMEOUT]]
Prints the reply's "return", then the event, as JSON lines.  Exit 1 on an
error reply (its text on stderr) or when the job ends otherwise (an
error, BLOCK_JOB_CANCELLED, a completion with an error), 2 on a timeout
or a closed socket."""
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import QMP, QMPError  # noqa: E402


def main():
    path, cmd, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    want = sys.argv[4] if len(sys.argv) > 4 else None
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
    job = args.get("job-id") or args.get("device")
    q = QMP(path, timeout=timeout)
    try:
        print(json.dumps(q.cmd(cmd, **args)))
    except QMPError as e:
        print(str(e), file=sys.stderr)
        return 1
    if not want:
        return 0
    deadline = time.monotonic() + timeout
    while True:
        while q.events:
            e = q.events.pop(0)
            d = e.get("data", {})
            if d.get("device", job) != job:
                continue
            name = e["event"]
            if name == want:
                print(json.dumps(e))
                return 0
            if name in ("BLOCK_JOB_ERROR", "BLOCK_JOB_CANCELLED") or (
                    name == "BLOCK_JOB_COMPLETED" and "error" in d):
                print("unexpected event: " + json.dumps(e), file=sys.stderr)
                return 1
        left = deadline - time.monotonic()
        if left <= 0:
            break
        q.sock.settimeout(left)
        try:
            m = q.read()
        except socket.timeout:
            break
        if m is None:
            print("socket closed", file=sys.stderr)
            return 2
        if "event" in m:
            q.events.append(m)
    print("timed out waiting for " + want, file=sys.stderr)
    return 2


sys.exit(main())
