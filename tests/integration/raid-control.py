# QMP side of raid-control.sh: drives a served RAID5 over its control
# socket.  Usage: raid-control.py CTL DEVICE STEP [ARGS...]; every wait is
# bounded.
import sys
import threading
import time

sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])
from qmp import QMP  # noqa: E402

ctl, dev, step = sys.argv[1], sys.argv[2], sys.argv[3]
args = sys.argv[4:]


def wait_event(q, names, job, timeout=300):
    """The first event of NAMES about JOB (events kept by q.reply too)."""
    end = time.time() + timeout
    while time.time() < end:
        while q.events:
            e = q.events.pop(0)
            d = e.get("data", {})
            if e["event"] in names and (d.get("device") == job or
                                        d.get("job-id") == job):
                return e
        m = q.read()
        assert m is not None, "connection closed"
        if "event" in m:
            q.events.append(m)
    raise AssertionError("no %s for %s within %d s" % (names, job, timeout))


def raid(q):
    r = q.cmd("query-vdisk-raid", device=dev)
    assert len(r) == 1 and r[0]["device"] == dev, r
    return r[0]


def states(q):
    return [m["state"] for m in raid(q)["members"]]


def jobs(q, job):
    return [j for j in q.cmd("query-block-jobs") if j["device"] == job]


q = QMP(ctl)
if step == "fail":
    # vdisk-raid-fail by path
    q.cmd("vdisk-raid-fail", device=dev, member=args[0])
    assert "faulty" in states(q), states(q)
elif step == "replace":
    # A rate-limited rebuild: visible in query-block-jobs while it runs,
    # then BLOCK_JOB_COMPLETED without error.
    slot, new = int(args[0]), args[1]
    q.cmd("vdisk-raid-replace", device=dev, member=slot, new=new,
          speed=4 << 20, **{"job-id": "rb"})
    js = jobs(q, "rb")
    assert js and js[0]["type"] == "vdisk-raid-rebuild", js
    end = time.time() + 30              # len is known after a first step
    while js and js[0]["len"] == 0 and time.time() < end:
        time.sleep(0.05)
        js = jobs(q, "rb")
    assert js and 0 < js[0]["offset"] < js[0]["len"], js
    assert states(q)[slot] == "rebuilding", states(q)
    assert "rebuild" in raid(q), raid(q)
    q.cmd("block-job-set-speed", device="rb", speed=0)
    e = wait_event(q, ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), "rb")
    assert e["event"] == "BLOCK_JOB_COMPLETED" and "error" not in e["data"], e
    assert e["data"]["type"] == "vdisk-raid-rebuild", e
    assert e["data"]["offset"] == e["data"]["len"] > 0, e
    assert states(q) == ["active"] * 3, states(q)
    assert not jobs(q, "rb")
elif step == "cancel-rebuild":
    # A cancelled rebuild is checkpointed: the member stays rebuilding.
    slot, new = int(args[0]), args[1]
    q.cmd("vdisk-raid-replace", device=dev, member=slot, new=new,
          speed=1 << 20, **{"job-id": "rb2"})
    time.sleep(0.5)
    q.cmd("block-job-cancel", device="rb2")
    e = wait_event(q, ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), "rb2")
    assert e["event"] == "BLOCK_JOB_CANCELLED", e
    r = raid(q)
    assert r["members"][slot]["state"] == "rebuilding", r
    assert 0 < r["members"][slot]["recovery-offset"] < r["rebuild"]["len"], r
elif step == "scrub":
    # Scrub as a job; the report comes as an event and in last-scrub.
    q.cmd("vdisk-raid-scrub", device=dev, repair=False,
          **{"job-id": "sc"})
    rep = wait_event(q, ("VDISK_RAID_SCRUB_REPORT",), "sc")
    e = wait_event(q, ("BLOCK_JOB_COMPLETED",), "sc")
    assert e["data"]["type"] == "vdisk-raid-scrub" and "error" not in e["data"], e
    d = rep["data"]
    assert d["device"] == dev and d["stripes"] > 0, d
    assert d["mismatches"] == 0 and d["mismatched-stripes"] == [], d
    assert raid(q)["last-scrub"]["stripes"] == d["stripes"], raid(q)
elif step == "two-clients":
    # Client A runs a slow scrub; client B, meanwhile, is refused a second
    # job on the device, queries, then cancels A's job; two more clients
    # query in a loop all along.  Every answer is well formed.
    b = QMP(ctl)
    stop = threading.Event()
    errors = []

    def poll():
        try:
            c = QMP(ctl)
            n = 0
            while not stop.is_set():
                assert raid(c)["device"] == dev
                c.cmd("query-block-jobs")
                n += 1
            assert n > 0
            c.close()
        except Exception as ex:  # noqa: BLE001 - reported below
            errors.append(repr(ex))

    th = [threading.Thread(target=poll) for _ in range(2)]
    for t in th:
        t.start()
    q.cmd("vdisk-raid-scrub", device=dev, speed=1 << 20, **{"job-id": "slow"})
    r = b.execute("vdisk-raid-scrub", {"device": dev, "job-id": "other"})
    assert "error" in r, r
    assert [j["type"] for j in jobs(b, "slow")] == ["vdisk-raid-scrub"]
    time.sleep(0.3)
    b.cmd("block-job-cancel", device="slow")
    rep = wait_event(q, ("VDISK_RAID_SCRUB_REPORT",), "slow")
    e = wait_event(q, ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), "slow")
    assert e["event"] == "BLOCK_JOB_CANCELLED", e
    assert rep["data"]["error"].startswith("cancelled at offset"), rep
    assert 0 < rep["data"]["offset"] < rep["data"]["len"], rep
    # fail is not a job: B may fail a member while the others query.
    b.cmd("vdisk-raid-fail", device=dev, member=0)
    assert states(b)[0] == "faulty", states(b)
    time.sleep(0.3)
    stop.set()
    for t in th:
        t.join(60)
    assert not errors, errors
    b.close()
else:
    raise SystemExit("unknown step " + step)
q.close()
