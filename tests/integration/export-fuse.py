# Driven by export-fuse.sh: CTL MOUNTPOINT LIVE_IMAGE REF_IMAGE.  Every
# wait is bounded (socket timeouts, the shell's timeout).
import errno
import os
import subprocess
import sys

from export_checks import Checks

ctl, mnt, live, ref = sys.argv[1:5]
t = Checks(ctl)
check, cmd, error, wait_event = t.check, t.cmd, t.error, t.wait_event




def files():
    return sorted(os.listdir(mnt))


def errno_of(fn):
    try:
        fn()
        return 0
    except OSError as ex:
        return ex.errno


def main_ok():
    with open(os.path.join(mnt, "main.raw"), "rb") as f:
        check(f.read(4096) == b"\x11" * 4096, "main.raw data")


check(files() == ["main.raw"], "only the command line's disk at first")
check(cmd("query-block-exports") ==
      [{"id": "main.raw", "type": "fuse", "node-name": "main.raw",
        "shutting-down": False}], "query-block-exports at start")

# ---- an image by file name, writable ----
check(cmd("block-export-add", {"type": "fuse", "id": "e1", "filename": live,
                               "format": "vpc", "writable": True}) == {},
      "add e1")
check(files() == ["live.raw", "main.raw"], "live.raw appears")
path = os.path.join(mnt, "live.raw")
fd = os.open(path, os.O_RDWR)
check(os.pread(fd, 1 << 20, 0) == b"\x5a" * (1 << 20), "live.raw data")
check(os.pwrite(fd, b"\xa5" * 65536, 2 << 20) == 65536, "live.raw write")
os.fsync(fd)
r = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "vpc",
                    path, ref], timeout=120)
check(r.returncode == 0, "qemu-img compare of live.raw with qemu-io's image")
main_ok()

# ---- an existing node, read-only ----
check(cmd("block-export-add", {"type": "fuse", "id": "e2",
                               "node-name": "main.raw",
                               "name": "main-ro.raw"}) == {}, "add e2")
check(files() == ["live.raw", "main-ro.raw", "main.raw"], "both appear")
ro = os.path.join(mnt, "main-ro.raw")
with open(ro, "rb") as f:
    check(f.read(4096) == b"\x11" * 4096, "main-ro.raw data")
e = errno_of(lambda: os.close(os.open(ro, os.O_RDWR)))
check(e in (errno.EACCES, errno.EROFS, errno.EPERM),
      "writable=false: open for writing gave %s" % errno.errorcode.get(e, e))

# ---- errors ----
error("block-export-add", {"type": "fuse", "id": "e1", "node-name": "main.raw",
                           "name": "x.raw"}, "Block export id 'e1' is already in use")
error("block-export-add", {"type": "fuse", "id": "e3", "node-name": "nope"},
      "Cannot find device='' nor node-name='nope'")
error("block-export-add", {"type": "fuse", "id": "e3", "node-name": "main.raw"},
      "already has a file named 'main.raw'")
error("block-export-add", {"type": "fuse", "id": "e3", "node-name": "main.raw",
                           "name": "a/b"}, "is not a file name")
error("block-export-add", {"type": "nbd", "id": "e3", "node-name": "main.raw",
                           "name": "y.raw"}, "Parameter 'type'")
error("block-export-add", {"type": "fuse", "id": "e3"}, "Exactly one of")
error("block-export-add", {"type": "fuse", "node-name": "main.raw"},
      "Parameter 'id' is missing")
error("block-export-del", {"id": "nope"}, "Export 'nope' is not found")
check(files() == ["live.raw", "main-ro.raw", "main.raw"], "errors changed nothing")

# ---- safe deletion while a file is open: refused ----
error("block-export-del", {"id": "e1"}, "export 'e1' still in use")
check(os.pread(fd, 4096, 0) == b"\x5a" * 4096, "handle unaffected by safe del")

# ---- hard deletion: the file goes, its open handle fails with EIO ----
check(cmd("block-export-del", {"id": "e1", "mode": "hard"}) == {}, "hard del e1")
check(files() == ["main-ro.raw", "main.raw"], "live.raw gone from the mount")
check(errno_of(lambda: os.stat(path)) == errno.ENOENT, "stat of live.raw: ENOENT")
check(errno_of(lambda: os.open(path, os.O_RDONLY)) == errno.ENOENT,
      "open of live.raw: ENOENT")
check(errno_of(lambda: os.pread(fd, 4096, 0)) == errno.EIO,
      "read on the hard-deleted file's handle: EIO")
check(errno_of(lambda: os.pwrite(fd, b"x" * 512, 0)) == errno.EIO,
      "write on the hard-deleted file's handle: EIO")
check(not wait_event("BLOCK_EXPORT_DELETED", {"id": "e1"}, 0.5),
      "BLOCK_EXPORT_DELETED before the last handle went")
os.close(fd)
check(wait_event("BLOCK_EXPORT_DELETED", {"id": "e1"}),
      "BLOCK_EXPORT_DELETED for e1 once closed")
ids = [x["id"] for x in cmd("query-block-exports")]
check(ids == ["main.raw", "e2"], "query-block-exports after del: %r" % ids)
r = subprocess.run(["qemu-img", "compare", "-q", "-f", "vpc", "-F", "vpc",
                    live, ref], timeout=120)
check(r.returncode == 0, "live.vhd closed with the data written")

# ---- safe deletion of an unused file ----
check(cmd("block-export-del", {"id": "e2"}) == {}, "safe del e2")
check(wait_event("BLOCK_EXPORT_DELETED", {"id": "e2"}), "event for e2")
check(files() == ["main.raw"], "only main.raw left")
main_ok()

# ---- the id and the file name are free again ----
check(cmd("block-export-add", {"type": "fuse", "id": "e1", "filename": live,
                               "format": "vpc"}) == {}, "re-add e1")
r = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "vpc",
                    path, ref], timeout=120)
check(r.returncode == 0, "re-added live.raw reads as qemu-io's image")
check(errno_of(lambda: os.close(os.open(path, os.O_RDWR))) in
      (errno.EACCES, errno.EROFS), "writable defaults to false")
check(cmd("block-export-del", {"id": "e1"}) == {}, "del e1 again")
check(wait_event("BLOCK_EXPORT_DELETED", {"id": "e1"}), "event again")

t.finish()
