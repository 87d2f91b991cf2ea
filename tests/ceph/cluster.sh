# A one-node Ceph cluster for the rbd tests, in the test's private folder.
# Source after tests/functions.sh, then call ceph_start:
#
#   . "$top_srcdir/tests/ceph/cluster.sh"
#   ceph_start            # sets ceph_conf, ceph_pool, ceph_dir, ceph_rbd
#   vdtool create -f rbd "rbd:$ceph_pool/img:conf=$ceph_conf" 1G
#
# One monitor and one OSD on 127.0.0.1 (msgr v2 only), auth none, the
# OSD's object store in memory (memstore: nothing touches the disk, and
# the data is gone when it stops), one pool of size 1 / min_size 1
# initialised for RBD.  No manager: I/O, snapshots, `rbd du` and `rbd
# export` do not need one.  ceph_start waits (bounded) until an object
# write succeeds, prints how long the start took, and registers the
# teardown with on_exit.  Skips (77) only when Ceph's daemons are not
# installed; on CI they are (.ci/deps).

# Every Ceph command the tests run goes through these, bounded: a client
# never waits for a cluster longer than CEPH_CMD_TIMEOUT seconds.
CEPH_CMD_TIMEOUT=${CEPH_CMD_TIMEOUT:-60}
ceph_cli() { timeout "$CEPH_CMD_TIMEOUT" ceph -c "$ceph_conf" --connect-timeout 20 "$@"; }
ceph_rbd() { timeout "$CEPH_CMD_TIMEOUT" rbd -c "$ceph_conf" "$@"; }
ceph_rados() { timeout "$CEPH_CMD_TIMEOUT" rados -c "$ceph_conf" "$@"; }

# ceph_start [POOL]: start the cluster; the pool defaults to "rbd".
ceph_start() {
  requires ceph-mon ceph-osd ceph rbd rados monmaptool
  ceph_pool=${1:-rbd}
  ceph_dir=$VD_TMP/ceph
  ceph_conf=$ceph_dir/ceph.conf
  mkdir -p "$ceph_dir/mon" "$ceph_dir/osd" "$ceph_dir/run" "$ceph_dir/log"
  local t0 fsid port osd_uuid i
  t0=$(date +%s%N)
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  port=$(free_port)
  cat > "$ceph_conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
run dir = $ceph_dir/run
admin socket = $ceph_dir/run/\$name.asok
pid file = $ceph_dir/run/\$name.pid
log file = $ceph_dir/log/\$name.log
crash dir = $ceph_dir/crash
keyring = /dev/null
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
# The OSD's data in RAM: nothing the tests write touches the disk.
osd objectstore = memstore
memstore device bytes = 4294967296
osd data = $ceph_dir/osd
mon data = $ceph_dir/mon
# Quick to notice a dead daemon, quick to give up.
osd heartbeat grace = 5
osd beacon report interval = 5
mon osd report timeout = 20
[client]
rbd cache = true
CONF
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" \
      "$ceph_dir/monmap" >/dev/null ||
    fail "monmaptool could not write a monitor map"
  timeout 60 ceph-mon -c "$ceph_conf" -i a --mkfs --monmap "$ceph_dir/monmap" \
      >"$ceph_dir/log/mkfs-mon.out" 2>&1 ||
    fail "ceph-mon --mkfs failed: $(tail -3 "$ceph_dir/log/mkfs-mon.out")"
  timeout 60 ceph-mon -c "$ceph_conf" -i a \
      >"$ceph_dir/log/mon.out" 2>&1 ||
    fail "ceph-mon did not start: $(tail -3 "$ceph_dir/log/mon.out")"
  on_exit ceph_stop
  # The OSD's id from the monitor, then its store, then the daemon.
  local id
  id=$(ceph_cli osd new "$osd_uuid" 2>"$ceph_dir/log/osd-new.err") ||
    fail "ceph osd new failed: $(tail -3 "$ceph_dir/log/osd-new.err")"
  [ "$id" = 0 ] || fail "ceph osd new gave id '$id', expected 0"
  timeout 60 ceph-osd -c "$ceph_conf" -i 0 --mkfs --osd-uuid "$osd_uuid" \
      >"$ceph_dir/log/mkfs-osd.out" 2>&1 ||
    fail "ceph-osd --mkfs failed: $(tail -3 "$ceph_dir/log/mkfs-osd.out")"
  timeout 60 ceph-osd -c "$ceph_conf" -i 0 \
      >"$ceph_dir/log/osd.out" 2>&1 ||
    fail "ceph-osd did not start: $(tail -3 "$ceph_dir/log/osd.out")"
  ceph_cli osd pool create "$ceph_pool" 8 8 replicated \
      >/dev/null 2>"$ceph_dir/log/pool.err" ||
    fail "pool create failed: $(tail -3 "$ceph_dir/log/pool.err")"
  # Bounded wait: the first write succeeds once the OSD is up and the
  # pool's placement groups are active.
  for i in $(seq 120); do
    if echo probe | timeout 5 rados -c "$ceph_conf" -p "$ceph_pool" \
         put vdisk-probe - 2>/dev/null; then
      break
    fi
    [ "$i" -lt 120 ] || fail "no write to pool $ceph_pool within 120 tries: $(ceph_cli -s 2>&1 | tail -20)"
    sleep 0.5
  done
  ceph_rados -p "$ceph_pool" rm vdisk-probe
  ceph_rbd pool init "$ceph_pool" 2>"$ceph_dir/log/pool.err" ||
    fail "rbd pool init failed: $(tail -3 "$ceph_dir/log/pool.err")"
  ceph_start_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "ceph: cluster writable after $ceph_start_ms ms ($ceph_conf)" >&2
}

# ceph_daemon_pid NAME: the pid of mon.a or osd.0 (from its pid file).
ceph_daemon_pid() { cat "$ceph_dir/run/$1.pid" 2>/dev/null; }

# ceph_stop: kill both daemons and wait (at most ~10 s each) until they
# are gone — also after ceph_pause.  SIGKILL because the data lives in
# the OSD's memory and is thrown away anyway (SIGTERM takes seconds).
ceph_stop() {
  local n pid pids=() i
  for n in osd.0 mon.a; do
    pid=$(ceph_daemon_pid "$n") || continue
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null && pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    for i in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done
}

# ceph_pause / ceph_resume: freeze the whole cluster (SIGSTOP both
# daemons) as a hung network or host would, and thaw it.
ceph_pause() {
  local n
  for n in osd.0 mon.a; do kill -STOP "$(ceph_daemon_pid "$n")"; done
}
ceph_resume() {
  local n
  for n in mon.a osd.0; do kill -CONT "$(ceph_daemon_pid "$n")"; done
}
