#!/usr/bin/env bash
# The Linux kernel NBD client (nbd.ko + Debian's nbd-client) against
# vdisk-nbd, in the TCG test guest (tests/guest): one boot, four exports
# of one server on a Unix socket, which the guest reaches through QEMU's
# user-mode network with guestfwd (no host network at all):
#   vhd    a dynamic VHD                       (mkfs.ext4 in the guest)
#   diff   a differencing VHD over a VHD       (the host's ext4 in the parent)
#   vdz    a VHD overlay over a vdz base       (the host's ext4 in the base)
#   raid5  a RAID5 of three VHDs, member 1 failed (vdtool raid fail) half-way
#          through the guest's writes          (mkfs.ext4 in the guest)
# For each: attach with nbd-client -N, write a tree of files (checksums
# recorded), sync, umount, flush, detach.  Then the host cuts the power:
# the first server runs with a volatile write cache on every image file it
# writes (raid-cut-shim.so, LD_PRELOAD: writes reach the file only when the
# cache writes them back on its own, in random order and sometimes torn, or
# when the server flushes), and SIGKILL loses what it still holds; so only
# what the guest flushed survives.  The host starts the server again,
# the guest re-attaches each export (vhd over TLS, certificates from
# certtool), verifies the files, runs e2fsck -fn, deletes half the tree,
# fstrims and flushes.  The host then runs vdtool check on every image,
# e2fsck -fn on a raw copy (vdtool convert), extracts the files with
# debugfs and checks them against the guest's checksums; parents are
# unchanged.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-system-x86_64 mkfs.ext4 e2fsck debugfs certtool
T=$VD_TMP
guest=$(bash "$top_srcdir/tests/guest/build.sh") || {
  rc=$?; [ $rc -eq 77 ] && skip "no test guest (see above)"; fail "guest build failed"; }
cd "$T"

# ---- images ----
# a host-made ext4 with known files, as the parent of diff and vdz
mkdir -p hostfiles/h/d
pattern_bytes 300000 1 > hostfiles/h/one
pattern_bytes 4097 2 > hostfiles/h/d/two
echo "made on the host" > hostfiles/h/note
(cd hostfiles && find . -type f | sort | xargs sha256sum) > hostfiles.sums
mkfs.ext4 -q -F -b 4096 -d hostfiles host.raw 48M || fail "mkfs.ext4 -d"
mkdir cfg
cp hostfiles.sums cfg/diff.sums
cp hostfiles.sums cfg/vdz.sums

vdtool create -q -f vpc vhd.vhd 64M
vdtool convert -O vpc host.raw parent.vhd
vdtool create -q -f vpc -b parent.vhd diff.vhd
vdtool convert -O vdz host.raw base.vdz
vdtool create -q -f vhd -b base.vdz over.vhd
vdtool raid create -l 5 -c 64K --size 32M -f vpc r5.vdraid m0.vhd m1.vhd m2.vhd >/dev/null
sha256sum parent.vhd base.vdz > parents.sums

# ---- TLS: the server's and the guest's certificates ----
make_ca g
mkdir -p pki cfg/tls
cp g-ca-cert.pem pki/ca-cert.pem
cp g-ca-cert.pem cfg/tls/ca-cert.pem
make_cert g server localhost pki/server
make_cert g client guest cfg/tls/client

# ---- the server: every idle guestfwd connection waits, so no handshake
# limit; --tls=on keeps plain clients too ----
args=(-v --handshake-limit 0 -e 64 --tls-creds "$T/pki" --tls=on
      vhd=vhd.vhd diff=diff.vhd vdz=over.vhd raid5=r5.vdraid)
# The power-cut cache: VDCUT_SEED picks its write-backs (printed, to
# replay a failure).  Sanitizer builds: the shim precedes their runtime.
shim="$top_builddir/tests/integration/.libs/raid-cut-shim.so"
[ -f "$shim" ] || fail "raid-cut-shim.so not built"
seed=${VDCUT_SEED:-$(( $(date +%s) % 100000 ))}
echo "power-cut cache seed: VDCUT_SEED=$seed"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
VDCUT_FILES="$T/vhd.vhd:$T/diff.vhd:$T/over.vhd:$T/m0.vhd:$T/m1.vhd:$T/m2.vhd" \
  VDCUT_SEED=$seed LD_PRELOAD="$shim" start_nbd "${args[@]}"

# The guest's requests to the host (tests/guest/run-guest.py runs this).
cat > hook.sh <<EOF
#!/usr/bin/env bash
set -u
cd "$T"
case "\$1" in
  raid-fail)
    exec timeout 60 "$top_builddir/tools/vdtool" raid fail r5.vdraid 1 ;;
  restart)
    pid=\$(cat nbd.pid)
    kill -KILL "\$pid"
    # gone, or a zombie nobody reaped yet
    gone() { ! kill -0 "\$pid" 2>/dev/null || [ "\$(cut -d' ' -f3 /proc/\$pid/stat 2>/dev/null)" = Z ]; }
    for i in \$(seq 100); do gone && break; sleep 0.1; done
    gone || exit 1
    echo "--- restart (after a power cut) ---" >> nbd.err
    # VD_KEEP: the images as the power cut left them, for a post-mortem
    [ -z "\${VD_KEEP:-}" ] || { mkdir -p cut && cp --sparse=always m?.vhd r5.vdraid vhd.vhd diff.vhd over.vhd cut/; }
    # the RAID5 is now dirty and degraded: as after a real crash, the
    # operator forces it up (the partial parity log is replayed)
    timeout 60 "$top_builddir/tools/vdtool" raid assemble --force r5.vdraid m0.vhd m1.vhd m2.vhd >&2 ||
      exit 1
    timeout 60 ${VD_VALGRIND:-} "$top_builddir/nbd-server/vdisk-nbd" --fork \
      --pid-file nbd.pid -t -U nbd.sock $(printf '%q ' "${args[@]}") 2>>nbd.err ||
      { rc=\$?; tail -n 5 nbd.err >&2; exit \$rc; }
    exit 0 ;;
esac
exit 2
EOF
chmod +x hook.sh

# One guestfwd rule per connection the guest makes (two per export and
# spares): each is a chardev connected to the Unix socket, reconnecting
# after the server restarts.
fwd=
for p in $(seq 10809 10822); do
  fwd+=",guestfwd=tcp:10.0.2.100:$p-unix:$T/nbd.sock,,reconnect=1"
done
start=$(date +%s)
/usr/bin/python3 "$top_srcdir/tests/guest/run-guest.py" --guest "$guest" \
  --log "$T/console.log" --scenario nbd-client --cfg "$T/cfg" --hook "$T/hook.sh" \
  --timeout 900 --param port=10809 \
  --param exports=vhd:mkfs,diff:fs,vdz:fs,raid5:raid --param tls=vhd \
  -- -netdev "user,id=n0,restrict=on$fwd" -device virtio-net-pci,netdev=n0 ||
  { grep -v VDISK-SUM console.log | tail -n 60 >&2; fail "the guest's scenario failed"; }
echo "guest scenario: $(( $(date +%s) - start )) s"
stop_nbd

# ---- what the guest did, seen by the server ----
grep -q 'TLS session started' nbd.err || fail "the TLS re-attach did not use TLS"
grep -c 'VDISK-CHECK PASS' console.log | grep -qv '^0$' || fail "no checks ran"

# ---- the host's judgement of every image ----
sha256sum -c --quiet parents.sums || fail "a parent image changed"
[ "$(vdtool raid status --output=json r5.vdraid |
     /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["degraded"])')" = True ] ||
  fail "the RAID5 is not degraded: $(vdtool raid status r5.vdraid)"
for e in vhd:vhd.vhd diff:diff.vhd vdz:over.vhd raid5:r5.vdraid; do
  name=${e%%:*} img=${e#*:}
  if [ "$name" = raid5 ]; then
    # a degraded array's parity cannot be checked: its members can
    for m in m0.vhd m1.vhd m2.vhd; do
      vdtool check "$m" > "check-$m.txt" 2>&1 || fail "vdtool check $m: $(cat "check-$m.txt")"
    done
    vdtool check "$img" > "check-$name.txt" 2>&1 && fail "vdtool check passed a degraded array"
    grep -q 'array is degraded (slot 1' "check-$name.txt" || fail "vdtool check $img: $(cat "check-$name.txt")"
  else
    vdtool check "$img" > "check-$name.txt" 2>&1 || fail "vdtool check $img: $(cat "check-$name.txt")"
  fi
  vdtool convert -O raw "$img" "$name.raw" || fail "convert $img"
  e2fsck -fn "$name.raw" > "fsck-$name.txt" 2>&1 || fail "e2fsck -fn $img: $(cat "fsck-$name.txt")"
  sed -n "s/^ *[0-9.]* VDISK-SUM $name //p" console.log | tr -d '\r' > "$name.sums"
  [ "$(wc -l < "$name.sums")" -ge 40 ] || fail "$name: the guest listed $(wc -l < "$name.sums") files"
  mkdir "x-$name"
  debugfs -R "rdump / x-$name" "$name.raw" >/dev/null 2>&1 || fail "debugfs rdump $name"
  (cd "x-$name" && sha256sum -c --quiet "../$name.sums") || fail "$name: files differ on the host"
  if [ "$name" = diff ] || [ "$name" = vdz ]; then
    grep -q ' \./h/one$' "$name.sums" || fail "$name: the host's files are gone"
  fi
  rm -rf "x-$name" "$name.raw"
done
echo "guest-nbd-client: $(grep -c "VDISK-CHECK PASS" console.log) guest checks passed in $SECONDS s"
