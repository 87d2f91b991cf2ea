#!/usr/bin/python3
"""Boot the TCG test guest (tests/guest/build.sh) once and judge its run.

run-guest.py --guest DIR --log FILE --scenario NAME [--param K=V]...
             [--cfg DIR] [--hook CMD] [--timeout SECONDS] [-- QEMU-ARGS...]

The guest's initramfs gets a second cpio archive appended holding the
files of --cfg DIR as /cfg/... (checksum lists, TLS credentials).  The
serial console is logged to FILE.  A console line "VDISK-HOST ACTION ARGS"
runs "CMD ACTION ARGS" on the host and answers its exit status on the
console.  Exit 0 when the guest printed "VDISK-RESULT PASS" and powered
off; 1 otherwise (FAIL lines, a hang past --timeout, a crash), with the
reason on stderr.  Prints the boot and total times on stdout.
"""
import argparse
import os
import shlex
import subprocess
import sys
import threading
import time


def newc(entries):
    """A cpio archive (newc) of (name, mode, data) entries."""
    out = bytearray()
    ino = 1000

    def put(name, mode, data):
        nonlocal ino
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        ino += 1
        out.extend(hdr.encode() + nb)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for name, mode, data in entries:
        put(name, mode, data)
    put("TRAILER!!!", 0, b"")
    return bytes(out)


def cfg_archive(cfg):
    entries = [("cfg", 0o40755, b"")]
    for root, dirs, files in os.walk(cfg):
        dirs.sort()
        rel = os.path.relpath(root, cfg)
        for d in dirs:
            entries.append((os.path.normpath(os.path.join("cfg", rel, d)), 0o40755, b""))
        for f in sorted(files):
            with open(os.path.join(root, f), "rb") as fh:
                entries.append((os.path.normpath(os.path.join("cfg", rel, f)),
                                0o100600, fh.read()))
    return newc(entries)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--guest", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--cfg")
    ap.add_argument("--hook")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--memory", default="256")
    ap.add_argument("qemu", nargs="*")
    a = ap.parse_args()

    initrd = a.log + ".initrd"
    with open(os.path.join(a.guest, "initrd.gz"), "rb") as fh:
        data = fh.read()
    if a.cfg:
        # the kernel looks for the next archive at a 4-byte boundary
        data += b"\0" * (-len(data) % 4) + cfg_archive(a.cfg)
    with open(initrd, "wb") as fh:
        fh.write(data)
    append = "console=ttyS0 panic=-1 quiet loglevel=4 vd.scenario=" + a.scenario
    for p in a.param:
        append += " vd." + p
    cmd = ["qemu-system-x86_64", "-nodefaults", "-display", "none",
           "-machine", "pc,accel=tcg", "-cpu", "max", "-m", a.memory,
           "-no-reboot", "-serial", "stdio", "-monitor", "none",
           "-kernel", os.path.join(a.guest, "vmlinuz"), "-initrd", initrd,
           "-append", append] + a.qemu

    start = time.monotonic()
    q = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    timed_out = []

    def kill():
        timed_out.append(1)
        q.kill()
    timer = threading.Timer(a.timeout, kill)
    timer.start()
    result = None
    fails = []
    boot = None
    with open(a.log, "w") as log:
        log.write("# " + shlex.join(cmd) + "\n")
        for raw in q.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            log.write("%7.2f %s\n" % (time.monotonic() - start, line))
            log.flush()
            s = line.strip()
            if s.startswith("VDISK-BOOT") and boot is None:
                boot = time.monotonic() - start
            elif s.startswith("VDISK-CHECK FAIL"):
                fails.append(s)
            elif s.startswith("VDISK-RESULT"):
                result = s
            elif s.startswith("VDISK-HOST ") and a.hook:
                args = shlex.split(a.hook) + s.split()[1:]
                rc = subprocess.call(args, stdout=log, stderr=log,
                                     timeout=max(1, a.timeout - (time.monotonic() - start)))
                log.write("# host %s -> %d\n" % (" ".join(args), rc))
                log.flush()
                q.stdin.write(b"%d\n" % rc)
                q.stdin.flush()
    rc = q.wait()
    timer.cancel()
    total = time.monotonic() - start
    print("guest %s: boot %.1f s, total %.1f s" % (
        a.scenario, boot if boot is not None else -1, total))
    for f in fails:
        print(f, file=sys.stderr)
    if timed_out:
        print("guest %s: no result after %d s (see %s)" % (a.scenario, a.timeout, a.log),
              file=sys.stderr)
        return 1
    if result is None:
        print("guest %s: no VDISK-RESULT line, qemu exit %d (see %s)" % (a.scenario, rc, a.log),
              file=sys.stderr)
        return 1
    if not result.startswith("VDISK-RESULT PASS") or rc != 0:
        print("guest %s: %s, qemu exit %d" % (a.scenario, result, rc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
