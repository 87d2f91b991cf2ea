#!/usr/bin/env bash
# qcow2 images made by qemu-img (cluster sizes 512 B..2 MiB, compat=0.10,
# extended L2 with subclusters, zero clusters, compressed with zlib and
# zstd, a backing chain of three formats, internal snapshots) read by
# vdtool byte-exact against qemu-img convert -O raw; the copies stay
# sparse; info and its JSON as qemu-img's; convert -l for snapshots.
. "$top_srcdir/tests/functions.sh"
requires qemu-img qemu-io cmp /usr/bin/python3
T=$VD_TMP
M=$((1 << 20))

# Same bytes as qemu reads them.
same() {  # same IMAGE [vdtool convert options...]
  local img=$1; shift
  vdtool convert "$@" -O raw "$img" "$T/v.raw" || fail "$img: vdtool convert $*"
  qemu-img convert "$@" -O raw "$img" "$T/q.raw" || fail "$img: qemu-img convert $*"
  cmp "$T/v.raw" "$T/q.raw" || fail "$img ($*): differs from qemu-img's read"
}
# The raw copy is as sparse as qemu-img's (holes and zeros not written).
sparse() {
  local v q
  v=$(du -k "$T/v.raw" | cut -f1); q=$(du -k "$T/q.raw" | cut -f1)
  [ "$v" -le $((q + 64)) ] || fail "$1: copy holds $v KiB, qemu-img's $q KiB"
}

# A source with data, explicit zeros and holes.
qemu-img create -q -f raw "$T/src.raw" 24M
qemu-io -f raw -c 'write -P 0x33 0 3M' -c 'write -P 0x44 9M 700k' \
  -c 'write -P 0x55 23M 1M' -c 'write -P 0x66 12345k 5k' "$T/src.raw" >/dev/null
for o in cluster_size=512 cluster_size=4k cluster_size=64k cluster_size=2M \
         compat=0.10 compat=0.10,cluster_size=1k extended_l2=on \
         extended_l2=on,cluster_size=16k extended_l2=on,cluster_size=2M \
         refcount_bits=1 refcount_bits=64; do
  qemu-img convert -q -f raw -O qcow2 -o "$o" "$T/src.raw" "$T/a.qcow2"
  same "$T/a.qcow2"; sparse "$o"
  cmp "$T/v.raw" "$T/src.raw" || fail "$o: differs from the source"
done
for ct in zlib zstd; do
  for cs in 4k 64k 1M; do
    qemu-img convert -q -c -f raw -O qcow2 -o compression_type=$ct,cluster_size=$cs \
      "$T/src.raw" "$T/c.qcow2"
    same "$T/c.qcow2"; sparse "compressed $ct $cs"
  done
done
vdtool info --output=json "$T/c.qcow2" | grep -q '"compression-type": "zstd"' ||
  fail "info does not say zstd"

# Writes by qemu-io: zero clusters (v3), subclusters and partial clusters.
for o in compat=1.1 extended_l2=on; do
  qemu-img create -q -f qcow2 -o $o "$T/w.qcow2" 8M
  qemu-io -f qcow2 -c 'write -P 1 0 4k' -c 'write -z 8k 4k' -c 'write -P 2 70k 3k' \
    -c 'write -P 3 1M 1M' -c 'write -z 1280k 64k' -c 'discard 1536k 64k' \
    "$T/w.qcow2" >/dev/null
  same "$T/w.qcow2"
  # Block status: vdtool map agrees with qemu-img map on what is data.
  vdtool map --output=json "$T/w.qcow2" > "$T/vmap.json"
  qemu-img map --output=json "$T/w.qcow2" > "$T/qmap.json"
  /usr/bin/python3 - "$T/vmap.json" "$T/qmap.json" <<'PY' || fail "$o: map differs from qemu-img's"
import json, sys
def data(path):
    out = set()
    for e in json.load(open(path)):
        if e["data"]:
            out.update(range(e["start"] // 512, (e["start"] + e["length"]) // 512))
    return out
v, q = data(sys.argv[1]), data(sys.argv[2])
assert v == q, (sorted(v ^ q)[:10])
PY
done

# A backing chain: raw <- qcow2 (compat=0.10) <- qcow2 (extended L2) with
# a smaller base; backing_fmt recorded; the relative name resolved
# against the child's folder.
mkdir -p "$T/chain"
qemu-img create -q -f raw "$T/chain/base.raw" 6M
qemu-io -f raw -c 'write -P 7 0 6M' "$T/chain/base.raw" >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 -b base.raw -F raw "$T/chain/mid.qcow2" 12M
qemu-io -c 'write -P 8 1M 64k' -c 'write -P 8 7M 64k' "$T/chain/mid.qcow2" >/dev/null
qemu-img create -q -f qcow2 -o extended_l2=on -b mid.qcow2 -F qcow2 "$T/chain/top.qcow2"
qemu-io -c 'write -P 9 1M 4k' -c 'write -z 4k 4k' -c 'write -P 10 11M 4k' \
  "$T/chain/top.qcow2" >/dev/null
same "$T/chain/top.qcow2"
(cd "$T/chain" && vdtool info top.qcow2) | grep -q '^backing file format: qcow2' ||
  fail "info shows no backing format"
# A VHD as the backing file, named by the operator.
qemu-img create -q -f vpc -o subformat=dynamic "$T/chain/b.vhd" 8M
qemu-io -f vpc -c 'write -P 11 0 1M' "$T/chain/b.vhd" >/dev/null
qemu-img create -q -f qcow2 -b b.vhd -F vpc "$T/chain/onvhd.qcow2" 8M
qemu-io -c 'write -P 12 512k 4k' "$T/chain/onvhd.qcow2" >/dev/null
expect_error "references other files.*--backing" \
  vdtool convert -O raw "$T/chain/onvhd.qcow2" "$T/v.raw"
vdtool convert --backing="$T/chain/b.vhd" --backing-format=vpc -O raw \
  "$T/chain/onvhd.qcow2" "$T/v.raw"
qemu-img convert -O raw "$T/chain/onvhd.qcow2" "$T/q.raw"
cmp "$T/v.raw" "$T/q.raw" || fail "qcow2 over a VHD differs"

# Internal snapshots: listed as qemu-img lists them, read with -l.
qemu-img create -q -f qcow2 "$T/sn.qcow2" 8M
qemu-io -c 'write -P 1 0 64k' "$T/sn.qcow2" >/dev/null
qemu-img snapshot -c first "$T/sn.qcow2"
qemu-io -c 'write -P 2 0 64k' -c 'write -P 3 1M 64k' "$T/sn.qcow2" >/dev/null
qemu-img snapshot -c second "$T/sn.qcow2"
qemu-img resize -q "$T/sn.qcow2" 12M
qemu-io -c 'write -P 4 0 4k' -c 'write -P 5 10M 4k' "$T/sn.qcow2" >/dev/null
vdtool info --output=json "$T/sn.qcow2" > "$T/vi.json"
qemu-img info --output=json "$T/sn.qcow2" > "$T/qi.json"
/usr/bin/python3 - "$T/vi.json" "$T/qi.json" <<'PY' || fail "info JSON differs from qemu-img's"
import json, sys
v, q = (json.load(open(p)) for p in sys.argv[1:])
for k in ("snapshots", "virtual-size", "cluster-size", "format", "dirty-flag"):
    assert v.get(k) == q.get(k), (k, v.get(k), q.get(k))
assert v["format-specific"] == q["format-specific"], (v["format-specific"], q["format-specific"])
PY
vdtool info "$T/sn.qcow2" | grep -A3 '^Snapshot list:' > "$T/vi.txt"
qemu-img info "$T/sn.qcow2" | grep -A3 '^Snapshot list:' > "$T/qi.txt"
cmp "$T/vi.txt" "$T/qi.txt" || fail "snapshot table differs: $(diff "$T/vi.txt" "$T/qi.txt")"
vdtool snapshot -l "$T/sn.qcow2" > "$T/vl.txt"
qemu-img snapshot -l "$T/sn.qcow2" > "$T/ql.txt"
cmp "$T/vl.txt" "$T/ql.txt" || fail "snapshot -l differs: $(diff "$T/vl.txt" "$T/ql.txt")"
expect_error "qcow2': snapshot create is not supported" \
  vdtool snapshot -c third "$T/sn.qcow2"
same "$T/sn.qcow2"
for s in 1 first second snapshot.id=2 snapshot.name=first; do
  same "$T/sn.qcow2" -l "$s"
done
cmp -n 65536 "$T/v.raw" <(/usr/bin/python3 -c 'import sys; sys.stdout.buffer.write(b"\1"*65536)') ||
  fail "snapshot 'first' does not read its data"
expect_error "no snapshot 'third'" vdtool convert -l third -O raw "$T/sn.qcow2" "$T/v.raw"
expect_error "has no internal snapshots" vdtool convert -l 1 -O raw "$T/src.raw" "$T/v.raw"

# compat=0.10 info: no v3 fields, as qemu-img.
qemu-img create -q -f qcow2 -o compat=0.10 "$T/old.qcow2" 1M
vdtool info --output=json "$T/old.qcow2" > "$T/vi.json"
qemu-img info --output=json "$T/old.qcow2" > "$T/qi.json"
/usr/bin/python3 - "$T/vi.json" "$T/qi.json" <<'PY' || fail "compat=0.10 info differs"
import json, sys
v, q = (json.load(open(p)) for p in sys.argv[1:])
assert v["format-specific"] == q["format-specific"], (v["format-specific"], q["format-specific"])
PY

# Extended L2 is read, not written: writes are refused with the reason,
# the file unchanged.
sum=$(md5sum < "$T/w.qcow2")
qemu-img create -q -f raw "$T/small.raw" 8M
expect_error "read-only.*extended L2" vdtool convert -n -O qcow2 "$T/small.raw" "$T/w.qcow2"
[ "$(md5sum < "$T/w.qcow2")" = "$sum" ] || fail "a refused write changed the image"
echo "qcow2-read: ok"
