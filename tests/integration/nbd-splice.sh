#!/usr/bin/env bash
# Zero-copy READ replies (nbd-server/conn.c): a large read of data that the
# image stores plainly in its own file is spliced from the file into the
# socket.  Clients must read the image's content whatever the format (raw;
# VHD, whose data sits 512 bytes past a page boundary; qcow2; VHDX), the
# request size (64 KiB to 32 MiB: larger than the pipe, so a spliced head
# and a copied tail), the alignment, the reply type (structured or simple);
# holes must still come back as hole chunks; and --cache=none (O_DIRECT,
# whose writes bypass the page cache) must not splice.  TLS never splices
# (nbd-client-tls.sh reads through TLS).  Pipes are kept by a connection's
# jobs until it closes and take at most a quarter of the server's
# descriptors: a client with 64 large reads in flight under a limit of 48
# descriptors leaves room for four more clients.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires nbdcopy qemu-img strace

mib=$((1024 * 1024))
ref=$VD_TMP/ref.raw           # 40 MiB data, 8 MiB hole, 16 MiB data
pattern_bytes $((64 * mib)) 7 > "$ref"
dd if=/dev/zero of="$ref" bs=1M seek=40 count=8 conv=notrunc status=none
cp --sparse=always "$ref" "$VD_TMP/disk.raw"
for f in vpc qcow2 vhdx; do
  qemu-img convert -q -f raw -O $f "$ref" "$VD_TMP/disk.$f"
done

# py SIMPLE: reads at page-unaligned offsets and odd lengths, compared with
# the reference; with structured replies, a read across the data/hole edge
# must give a hole chunk.
py() {
  /usr/bin/python3 - "$nbd_sock" "$ref" "$1" <<'PY'
import nbd, sys
sock, ref, simple = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
data = open(ref, "rb").read()
h = nbd.NBD()
h.set_request_structured_replies(not simple)
h.connect_unix(sock)
for off, n in [(512, 1 << 20), (3 * 4096 + 512, (1 << 20) + 4096),
               ((5 << 20) - 512, 65536), (7 << 20, 4 << 20),
               ((1 << 20) + 1536, (32 << 20) - 3 * 512),
               ((48 << 20) + 512, (16 << 20) - 512)]:
    got = h.pread(n, off)
    if got != data[off:off + n]:
        sys.exit("read of %d bytes at %d differs" % (n, off))
if not simple:
    holes = []
    def chunk(buf, off, status, err):
        if status == nbd.READ_HOLE:
            holes.append(off)
        return 0
    buf = h.pread_structured(2 << 20, 39 << 20, chunk)
    if buf != data[39 << 20:41 << 20]:
        sys.exit("read across the hole differs")
    if (40 << 20) not in holes:
        sys.exit("no hole chunk at 40 MiB: %r" % holes)
h.shutdown()
PY
}

# serve FORMAT IMAGE ARGS...: the server under strace, counting splices.
serve() { local f=$1 img=$2; shift 2; start_nbd_traced splice -f "$f" "$@" "$img"; }
splices() { grep -c '^[0-9]* *splice(' "$VD_TMP/strace" || true; }

for f in raw vpc qcow2 vhdx; do
  serve $f "$VD_TMP/disk.$f"
  for rs in 65536 1048576 33554432; do
    nbdcopy --connections=2 --request-size=$rs "$nbd_uri" "$VD_TMP/out.raw" ||
      fail "$f: nbdcopy --request-size=$rs failed"
    qemu-img compare -q -U -f raw -F $f "$VD_TMP/out.raw" "$VD_TMP/disk.$f" ||
      fail "$f: nbdcopy --request-size=$rs read other bytes than qemu-img"
  done
  py 0 || fail "$f: structured reads"
  py 1 || fail "$f: simple reads"
  stop_nbd_traced
  n=$(splices)
  echo "$f: $n splice calls"
  [ "$n" -gt 0 ] || fail "$f: no read was spliced"
done

# O_DIRECT: the page cache is not what was written; reads are copied.
serve raw "$VD_TMP/disk.raw" --cache=none
nbdcopy --request-size=1048576 "$nbd_uri" "$VD_TMP/out.raw" ||
  fail "--cache=none: nbdcopy failed"
cmp "$VD_TMP/out.raw" "$ref" || fail "--cache=none: read other bytes"
stop_nbd_traced
[ "$(splices)" = 0 ] || fail "--cache=none spliced $(splices) reads"
# Descriptors: a server allowed 48 (prlimit, before its first large
# read); a first client keeps 64 reads of 256 KiB in flight and stays
# connected (its jobs keep their pipes), then four more clients connect and
# read; every byte equals the image's.  With pipes bounded only by a fixed
# count, the first client's took every descriptor and the next clients
# were never accepted.
requires prlimit
start_nbd -f raw "$VD_TMP/disk.raw"
prlimit --pid "$(cat "$nbd_pidfile")" --nofile=48:48 ||
  fail "prlimit on vdisk-nbd"
timeout 60 /usr/bin/python3 - "$nbd_sock" "$ref" <<'PY' || fail "clients after one that holds 64 large reads"
import nbd, sys
sock, data = sys.argv[1], open(sys.argv[2], "rb").read()
a = nbd.NBD()
a.connect_unix(sock)
bufs = [nbd.Buffer(262144) for _ in range(64)]
for i, b in enumerate(bufs):
    a.aio_pread(b, i * 262144 + 512)
while a.aio_in_flight():
    a.poll(-1)
for i, b in enumerate(bufs):
    off = i * 262144 + 512
    if b.to_bytearray() != data[off:off + 262144]:
        sys.exit("first client: read at %d differs" % off)
more = []
for k in range(4):
    h = nbd.NBD()
    h.connect_unix(sock)
    off = (k * 7 + 1) << 20
    if h.pread(1 << 20, off) != data[off:off + (1 << 20)]:
        sys.exit("client %d: read at %d differs" % (k + 2, off))
    more.append(h)
if a.pread(1 << 20, 3 << 20) != data[3 << 20:4 << 20]:
    sys.exit("first client: read after the others differs")
for h in more + [a]:
    h.shutdown()
PY
stop_nbd
echo PASS
