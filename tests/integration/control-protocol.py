# The QMP protocol of the control socket, driven against a running
# vdisk-nbd --control (see control-protocol.sh, which starts it):
#   control-protocol.py CONTROL NBD_URI CHILD MID BASE (a VHD chain)
import json
import os
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import QMP  # noqa: E402

ctl, nbd_uri, child, mid, base = sys.argv[1:6]


def qemu_info(path):
    # QEMU's vpc driver does not follow a differencing VHD's parent
    # locators: each layer is asked on its own.
    return json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", path],
        capture_output=True, text=True, check=True, timeout=30).stdout)


top = qemu_info(child)
vsize = top["virtual-size"]


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def nbd_serves():
    """The NBD export still answers (a real peer reads its size)."""
    out = subprocess.run(["nbdinfo", "--size", nbd_uri], capture_output=True,
                         text=True, timeout=30)
    check(out.returncode == 0 and out.stdout.strip() == str(vsize),
          "the NBD export stopped serving: %r %r" % (out.stdout, out.stderr))


def error_of(reply):
    check(reply is not None and "error" in reply,
          "expected an error, got %r" % (reply,))
    return reply["error"]["class"], reply["error"]["desc"]


# ---- the greeting: the shape QEMU's tools expect ----
q = QMP(ctl, negotiate=False)
g = q.greeting
check(set(g) == {"QMP"}, "greeting %r" % g)
v = g["QMP"]["version"]
check(set(v["qemu"]) == {"major", "minor", "micro"} and
      all(isinstance(x, int) for x in v["qemu"].values()), "version %r" % v)
check(v["package"].startswith("vdisk-nbd "), "package %r" % v)
check(g["QMP"]["capabilities"] == [], "capabilities %r" % g)

# ---- commands before qmp_capabilities are refused ----
cls, desc = error_of(q.execute("query-version", id=1))
check(cls == "CommandNotFound" and "qmp_capabilities" in desc,
      "before negotiation: %s %s" % (cls, desc))
r = q.execute("qmp_capabilities", id="neg")
check(r == {"return": {}, "id": "neg"}, "qmp_capabilities: %r" % r)
cls, desc = error_of(q.execute("qmp_capabilities"))
check(cls == "CommandNotFound", "second qmp_capabilities: %s" % cls)

# ---- id echoed back, whatever its type ----
for ident in [7, "abc", {"a": [1, 2]}, None]:
    req = {"execute": "query-version", "id": ident}
    q.send_raw(json.dumps(req).encode() + b"\n")
    r = q.reply()
    check("return" in r and "id" in r and r["id"] == ident,
          "id %r not echoed: %r" % (ident, r))
    check(r["return"] == v, "query-version %r" % r)
r = q.execute("query-version")
check("id" not in r, "an id appeared from nowhere: %r" % r)

# ---- malformed input: an error, the client stays served ----
q.send_raw(b'{"execute": \n')       # not finished yet ...
q.send_raw(b'"query-version"}')     # ... now it is (no newline needed)
r = q.reply()
check(r.get("return") == v, "message split over two sends: %r" % r)
q.send_raw(b'{"execute": "query-version",, }\n')
cls, desc = error_of(q.reply())
check(cls == "GenericError" and desc.startswith("JSON parse error"),
      "malformed JSON: %s %s" % (cls, desc))
q.send_raw(b'garbage\n')
cls, desc = error_of(q.reply())
check(desc.startswith("JSON parse error"), "garbage: %s" % desc)
q.send_raw(b'[1, 2]\n')
cls, desc = error_of(q.reply())
check(desc == "QMP input must be a JSON object", "array: %s" % desc)
q.send_raw(b'{"execute": "query-version", "id": 1, "id": 2}\n')
cls, desc = error_of(q.reply())
check(desc.startswith("JSON parse error"), "duplicate key: %s" % desc)
check(q.cmd("query-version") == v, "not served after garbage")

# ---- unknown commands and wrong arguments ----
cls, desc = error_of(q.execute("no-such-command", id=3))
check(cls == "CommandNotFound" and "no-such-command" in desc,
      "unknown command: %s %s" % (cls, desc))
cls, desc = error_of(q.execute(42))
check(cls == "GenericError" and "'execute'" in desc, "execute 42: %s" % desc)
cls, desc = error_of(q.execute("query-version", args=[1]))
check("'arguments'" in desc, "arguments not an object: %s" % desc)
cls, desc = error_of(q.execute("query-version", args={"x": 1}))
check(desc == "Parameter 'x' is unexpected", "extra argument: %s" % desc)
cls, desc = error_of(q.execute("block-job-pause", args={"device": 5}))
check(desc == "Parameter 'device' expects a string", "int for str: %s" % desc)
cls, desc = error_of(q.execute("block-job-cancel",
                               args={"device": "x", "force": "yes"}))
check(desc == "Parameter 'force' expects a boolean", "str for bool: %s" % desc)
cls, desc = error_of(q.execute("block-job-set-speed",
                               args={"device": "x", "speed": "fast"}))
check("'speed' expects" in desc, "str for int: %s" % desc)
cls, desc = error_of(q.execute("block-job-pause", args={"device": "x"}))
check(cls == "DeviceNotActive", "no such job: %s %s" % (cls, desc))
req = {"execute": "query-version", "extra": 1}
q.send_raw(json.dumps(req).encode() + b"\n")
cls, desc = error_of(q.reply())
check("'extra' is unexpected" in desc, "extra member: %s" % desc)
names = {c["name"] for c in q.cmd("query-commands")}
for n in ["qmp_capabilities", "query-version", "query-commands",
          "query-block", "query-block-jobs", "query-jobs", "block-job-pause",
          "block-job-resume", "block-job-cancel", "block-job-complete",
          "block-job-set-speed", "block-job-dismiss"]:
    check(n in names, "query-commands lacks %s" % n)
check(q.cmd("query-block-jobs") == [], "jobs from nowhere")
check(q.cmd("query-jobs") == [], "jobs from nowhere")
nbd_serves()

# ---- query-block against qemu-img info of the same chain ----
blocks = q.cmd("query-block")
check(len(blocks) == 1, "query-block: %r" % blocks)
b = blocks[0]
check(b["device"] == "disk", "device name %r" % b["device"])
ins = b["inserted"]
img = ins["image"]
check(ins["node-name"] == "disk", "node-name %r" % ins)
check(os.path.realpath(ins["file"]) == os.path.realpath(top["filename"]),
      "file %r vs %r" % (ins["file"], top["filename"]))
check(ins["drv"] == top["format"] == "vpc", "drv %r vs %r" %
      (ins["drv"], top["format"]))
check(ins["ro"] is False, "ro %r" % ins["ro"])
check(img["virtual-size"] == top["virtual-size"] == ins["image-size"],
      "size %r vs %r" % (img["virtual-size"], top["virtual-size"]))
check(os.path.realpath(img["filename"]) == os.path.realpath(top["filename"]),
      "image filename %r" % img["filename"])
check(img["format"] == top["format"], "image format %r" % img["format"])
# Each layer of the nested "backing-image" against qemu-img info of that
# file alone.
layer = img
for path in [child, mid, base]:
    q_info = qemu_info(path)
    check(os.path.realpath(layer["filename"]) == os.path.realpath(path),
          "layer %r is not %s" % (layer, path))
    for key in ["format", "virtual-size", "cluster-size", "dirty-flag"]:
        check(layer.get(key) == q_info.get(key), "%s: %s %r, qemu-img %r" %
              (path, key, layer.get(key), q_info.get(key)))
    if path != base:
        check(os.path.realpath(layer["full-backing-filename"]) ==
              os.path.realpath({child: mid, mid: base}[path]),
              "%s: backing %r" % (path, layer["full-backing-filename"]))
        check(layer["backing-filename-format"] == "vpc", "backing format")
        layer = layer["backing-image"]
check("backing-image" not in layer and "backing-filename" not in layer,
      "the base has a backing image: %r" % layer)
check(ins["backing_file_depth"] == 2, "depth %r" % ins["backing_file_depth"])
check(os.path.realpath(ins["backing_file"]) == os.path.realpath(mid),
      "backing_file %r" % ins["backing_file"])

# ---- two clients at once; the 17th is refused ----
q2 = QMP(ctl)
check(q2.cmd("query-block") == blocks, "second client sees another block")
check(q.cmd("query-version") == v, "first client lost")
extra = [QMP(ctl) for _ in range(14)]       # 16 in all
s17 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s17.settimeout(10)
s17.connect(ctl)
m = json.loads(s17.makefile().readline())
check(m["error"]["desc"].startswith("too many clients"), "17th: %r" % m)
check(s17.recv(10) == b"", "17th client not closed")
s17.close()
for e in extra:
    e.close()
check(q2.cmd("query-version") == v, "second client lost")

# ---- a message longer than 1 MiB: error, closed; others unharmed ----
q3 = QMP(ctl)
big = b'{"execute": "query-version", "arguments": {"pad": "' + \
    b"x" * (2 << 20) + b'"}}\n'
try:
    q3.send_raw(big)
except (BrokenPipeError, ConnectionResetError):
    pass                        # closed while we were still sending
m = q3.reply()
check(m is not None and "1 MiB" in m["error"]["desc"],
      "2 MiB message: %r" % (m,))
try:
    check(q3.read() is None, "still open after a 2 MiB message")
except ConnectionResetError:
    pass
check(q.cmd("query-version") == v, "others hurt by the 2 MiB message")
nbd_serves()

# ---- a client that never reads does not hold the others up ----
slow = QMP(ctl)
for i in range(200):
    slow.send_raw(b'{"execute": "query-commands"}\n')
check(q2.cmd("query-version") == v, "a slow client blocks the others")
slow.close()

# ---- a peer of another uid is refused ----
other = subprocess.run(
    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
     sys.executable, "-c",
     "import socket,sys\n"
     "s=socket.socket(socket.AF_UNIX)\n"
     "s.settimeout(10)\n"
     "s.connect(sys.argv[1])\n"
     "f=s.makefile()\n"
     "print(f.readline())\n"
     "print(repr(f.read(1)))\n", ctl],
    capture_output=True, text=True, timeout=30)
check(other.returncode == 0, "other uid could not connect at all "
      "(the test must open the socket's mode): %s" % other.stderr)
out = other.stdout.strip()
check('"error"' in out and "permission denied" in out and '"QMP"' not in out,
      "another uid was served: %r" % out)
check(out.endswith("''"), "another uid's connection was not closed: %r" % out)
check(q2.cmd("query-version") == v, "refusing a peer hurt the others")
nbd_serves()
q.close()
q2.close()
print("control-protocol.py: all checks passed")
