# Driven by export-live.sh: CTL NBD_SOCK LIVE_IMAGE.  Every wait is
# bounded (socket timeouts, the shell's timeout).
import errno
import subprocess
import sys
import time

import nbd
from export_checks import Checks

ctl, sock, live = sys.argv[1:4]
t = Checks(ctl)
check, cmd, error, wait_event = t.check, t.cmd, t.error, t.wait_event


def uri(name):
    return "nbd+unix:///%s?socket=%s" % (name, sock)


def listed():
    out = subprocess.run(["nbdinfo", "--list", "--json", uri("")],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError("nbdinfo --list: " + out.stderr)
    import json
    return sorted(e["export-name"] for e in json.loads(out.stdout)["exports"])


def connect(name):
    h = nbd.NBD()
    h.connect_uri(uri(name))
    return h


def disk_ok():
    """The command line's export serves its data all along."""
    h = connect("disk")
    check(h.pread(4096, 0) == b"\x11" * 4096, "export 'disk' data")
    h.shutdown()


check(listed() == ["disk"], "only the command line's export at first")
check(cmd("query-block-exports") ==
      [{"id": "disk", "type": "nbd", "node-name": "disk",
        "shutting-down": False}], "query-block-exports at start")

# ---- an image by file name, writable ----
check(cmd("block-export-add", {"type": "nbd", "id": "e1", "filename": live,
                               "format": "vpc", "name": "live",
                               "writable": True}) == {}, "add e1")
check(listed() == ["disk", "live"], "nbdinfo --list shows 'live'")
h = connect("live")
info = subprocess.run(["qemu-img", "info", "-U", "-f", "vpc", "--output=json",
                       live], capture_output=True, text=True, timeout=60)
import json
check(h.get_size() == json.loads(info.stdout)["virtual-size"],
      "live export size: qemu-img info's")
check(not h.is_read_only(), "live export writable")
check(h.pread(1 << 20, 0) == b"\x5a" * (1 << 20), "live export data")
h.pwrite(b"\xa5" * 65536, 2 << 20)
h.flush()
check(h.pread(65536, 2 << 20) == b"\xa5" * 65536, "live export write")
disk_ok()

# ---- an existing node, read-only ----
check(cmd("block-export-add", {"type": "nbd", "id": "e2", "node-name": "disk",
                               "name": "disk-ro",
                               "description": "the disk, read-only"}) == {},
      "add e2")
check(listed() == ["disk", "disk-ro", "live"], "nbdinfo --list shows both")
r = connect("disk-ro")
check(r.is_read_only(), "writable=false: read-only flag")
check(r.pread(4096, 4096) == b"\x11" * 4096, "disk-ro data")
try:
    r.pwrite(b"x" * 512, 0)
    check(False, "writable=false export accepted a write")
except nbd.Error as ex:
    check(ex.errnum == errno.EPERM, "write to disk-ro: %s" % ex)
r.shutdown()

# ---- errors, with QEMU's wording ----
error("block-export-add", {"type": "nbd", "id": "e1", "node-name": "disk",
                              "name": "other"}, "Block export id 'e1' is already in use")
error("block-export-add", {"type": "nbd", "id": "e3", "node-name": "nope"},
      "Cannot find device='' nor node-name='nope'")
error("block-export-add", {"type": "nbd", "id": "e3", "node-name": "disk"},
      "NBD server already has export named 'disk'")
error("block-export-add", {"type": "nbd", "node-name": "disk"},
      "Parameter 'id' is missing")
error("block-export-add", {"type": "nbd", "id": "1bad", "node-name": "disk"},
      "Invalid block export id '1bad'")
error("block-export-add", {"type": "vhost-user-blk", "id": "e3",
                              "node-name": "disk"}, "Parameter 'type'")
error("block-export-add", {"type": "nbd", "id": "e3", "node-name": "disk",
                              "filename": live}, "Exactly one of")
error("block-export-add", {"type": "nbd", "id": "e3", "node-name": "disk",
                              "bogus": 1}, "Parameter 'bogus' is unexpected")
error("block-export-add", {"type": "nbd", "id": "e3", "node-name": "disk",
                              "writable": "yes"}, "Parameter 'writable' expects")
error("block-export-add", {"type": "nbd", "id": "e3",
                              "filename": live + ".missing"}, "")
error("block-export-add", {"type": "nbd", "id": "e3", "node-name": "disk",
                           "name": "b", "bitmaps": ["x" * 4096]},
      "too long")
error("block-export-add", {"type": "nbd", "id": "e3", "node-name": "disk",
                           "name": "b", "bitmaps": "b0"},
      "Parameter 'bitmaps' expects an array")
error("block-export-del", {"id": "nope"}, "Export 'nope' is not found")
error("block-export-del", {"id": "e1", "mode": "gentle"}, "Parameter 'mode'")
check(listed() == ["disk", "disk-ro", "live"], "errors changed nothing")

# ---- safe deletion while a client is connected: refused ----
error("block-export-del", {"id": "e1"}, "export 'e1' still in use")
error("block-export-del", {"id": "e1", "mode": "safe"},
      "export 'e1' still in use")
check(h.pread(4096, 0) == b"\x5a" * 4096, "client unaffected by safe del")
check(listed() == ["disk", "disk-ro", "live"], "still listed after safe del")

# ---- hard deletion: the client is disconnected ----
check(cmd("block-export-del", {"id": "e1", "mode": "hard"}) == {},
      "hard del e1")
check(wait_event("BLOCK_EXPORT_DELETED", {"id": "e1"}),
      "BLOCK_EXPORT_DELETED for e1")
try:
    h.pread(4096, 0)
    check(False, "the client of a hard-deleted export can still read")
except nbd.Error:
    pass
h = None
check(listed() == ["disk", "disk-ro"], "'live' gone from nbdinfo --list")
try:
    connect("live")
    check(False, "a deleted export accepted a client")
except nbd.Error:
    pass
ids = [e["id"] for e in cmd("query-block-exports")]
check(ids == ["disk", "e2"], "query-block-exports after del: %r" % ids)
disk_ok()

# ---- safe deletion once the client left ----
r = connect("disk-ro")
error("block-export-del", {"id": "e2"}, "still in use")
r.shutdown()
r = None
deadline = time.monotonic() + 20
while True:   # the server notices the client left asynchronously
    res = t.q.execute("block-export-del", {"id": "e2"})
    if "return" in res or time.monotonic() > deadline:
        break
    time.sleep(0.1)
check(res == {"return": {}}, "safe del of e2 once idle: %r" % res)
check(wait_event("BLOCK_EXPORT_DELETED", {"id": "e2"}),
      "BLOCK_EXPORT_DELETED for e2")
check(listed() == ["disk"], "only 'disk' left")
disk_ok()

# ---- the id and the name are free again; the default export stays ----
check(cmd("block-export-add", {"type": "nbd", "id": "e1", "node-name": "disk",
                               "name": "again"}) == {}, "re-add id e1")
h = connect("")
check(h.get_size() == 8 << 20, "the default export is still 'disk'")
h.shutdown()
check(cmd("block-export-del", {"id": "e1"}) == {}, "del e1 again")
check(wait_event("BLOCK_EXPORT_DELETED", {"id": "e1"}), "event again")

t.finish()
