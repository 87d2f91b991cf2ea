#!/usr/bin/env bash
# A booted guest keeps writing while its disk is changed under it (issue
# 12): QEMU (TCG) boots the test guest (tests/guest) with a vdisk-nbd
# export as its only virtio disk; the guest makes ext4 and keeps writing
# generations of a tree of files while the host, over the control socket,
# takes a live snapshot (blockdev-snapshot-sync), mirrors the disk to a new
# VHD and pivots onto it (drive-mirror, block-job-complete), snapshots
# again, and commits that snapshot back into the mirror (block-commit of
# the active layer).  The guest then checks its files after dropping its
# page cache and runs e2fsck.  The host checks that the export ends on the
# mirror, that every image checks clean (vdtool check), that the images
# left behind did not change after the step that left them, and judges
# the final image with e2fsck -fn and the guest's checksums (debugfs).
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-system-x86_64 e2fsck debugfs /usr/bin/python3
T=$VD_TMP
guest=$(bash "$top_srcdir/tests/guest/build.sh") || {
  rc=$?; [ $rc -eq 77 ] && skip "no test guest (see above)"; fail "guest build failed"; }
cd "$T"

vdtool create -q -f vpc base.vhd 64M
start_nbd -v --control "$T/ctl.sock" disk=base.vhd

# The guest's steps (tests/guest/run-guest.py runs this hook); each QMP
# command waits, bounded, for its job's event on the same connection.
qmp="/usr/bin/python3 $top_srcdir/tests/integration/live-mirror.py $T/ctl.sock"
cat > hook.sh <<EOF
#!/usr/bin/env bash
set -eu
cd "$T"
step=\$2
echo "--- \$step ---" >> nbd.err
case "\$step" in
  snapshot)
    $qmp blockdev-snapshot-sync '{"device": "disk", "snapshot-file": "$T/s1.vhd", "format": "vpc"}' ;;
  mirror)
    sha256sum base.vhd > base.sum
    $qmp drive-mirror '{"device": "disk", "target": "$T/m.vhd", "format": "vpc", "sync": "full", "job-id": "mig"}' BLOCK_JOB_READY 300
    $qmp block-job-complete '{"device": "mig"}' BLOCK_JOB_COMPLETED 300
    sha256sum s1.vhd > s1.sum ;;
  snapshot-again)
    $qmp blockdev-snapshot-sync '{"device": "disk", "snapshot-file": "$T/s2.vhd", "format": "vpc"}' ;;
  commit)
    $qmp block-commit '{"device": "disk", "job-id": "cm"}' BLOCK_JOB_READY 300
    $qmp block-job-complete '{"device": "cm"}' BLOCK_JOB_COMPLETED 300
    sha256sum s2.vhd > s2.sum ;;
  *) exit 2 ;;
esac
EOF
chmod +x hook.sh

t0=$SECONDS
/usr/bin/python3 "$top_srcdir/tests/guest/run-guest.py" --guest "$guest" \
  --log "$T/console.log" --scenario boot-live --cfg "$T/cfg" --hook "$T/hook.sh" \
  --timeout 900 -- \
  -drive "file=nbd+unix:///disk?socket=$T/nbd.sock,format=raw,if=virtio,cache=writeback" ||
  { grep -v VDISK-SUM console.log | tail -n 40 >&2; fail "the guest's scenario failed"; }
echo "guest boot-live: $((SECONDS - t0)) s"

# The export ends on the mirror's image, the snapshot committed into it.
out=$(vdtool qmp "$T/ctl.sock" query-block) || fail "query-block: $out"
echo "$out" | grep -q "m.vhd" || fail "the export is not on the mirror: $out"
echo "$out" | grep -q "s2.vhd" && fail "the committed snapshot is still in the chain: $out"
stop_nbd

# Images left behind did not change after their step, and all check clean.
sha256sum -c --quiet base.sum s1.sum s2.sum || fail "an image changed after it was left"
for i in base.vhd s1.vhd m.vhd s2.vhd; do
  vdtool check "$i" > "check-$i.txt" 2>&1 || fail "vdtool check $i: $(cat "check-$i.txt")"
done
vdtool info --output=json m.vhd | grep -q backing-filename &&
  fail "the final image still has a backing file"

# The final image, judged by e2fsprogs and the guest's own checksums.
vdtool convert -O raw m.vhd final.raw || fail "convert m.vhd"
e2fsck -fn final.raw > fsck.txt 2>&1 || fail "e2fsck -fn: $(cat fsck.txt)"
sed -n "s/^ *[0-9.]* VDISK-SUM vda //p" console.log | tr -d '\r' > guest.sums
[ "$(wc -l < guest.sums)" -ge 40 ] || fail "the guest listed $(wc -l < guest.sums) files"
mkdir x
debugfs -R "rdump / x" final.raw >/dev/null 2>&1 || fail "debugfs rdump"
(cd x && sha256sum -c --quiet ../guest.sums) || fail "files differ on the host"
grep -E "VDISK-(HOST|INFO|RESULT)" console.log
echo "guest-live: $(grep -c 'VDISK-CHECK PASS' console.log) guest checks passed in $SECONDS s"
