#!/usr/bin/env bash
# vdtool amend changes qcow2 options as qemu-img amend does (issue 15):
# copies of the same image amended by both have the same format-specific
# info (and backing file and format: the extensions are kept), check
# clean in qemu-img and hold the same bytes (qemu-img compare):
#  - compat=1.1 from 0.10 (with a backing file), with lazy_refcounts=on;
#  - compat=0.10 from 1.1 with zero clusters (with and without a backing
#    file: they are expanded), and with lazy refcounts on (dropped, even
#    with lazy_refcounts=on, as qemu-img drops them);
#  - lazy_refcounts=off on a dirty image (qemu-io killed mid-write): it is
#    repaired first;
#  - refusals in one line, the file unchanged: what qemu-img refuses
#    (lazy refcounts with compat=0.10, compat=0.10 with refcount_bits=8 or
#    extended L2, creation options, unknown options, raw images);
#  - -o help lists compat and lazy_refcounts.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
cd "$VD_TMP"

# The fields both must agree on.
fields() {
  qemu-img info --output=json "$1" | /usr/bin/python3 -c 'import json, sys
d = json.load(sys.stdin)
print(json.dumps([d["format-specific"], d.get("dirty-flag"),
                  d.get("backing-filename"), d.get("backing-filename-format")],
                 sort_keys=True))'
}
# amended IMAGE OPTIONS: amend copies of IMAGE by qemu-img and vdtool.
amended() {
  cp "$1" peer.qcow2
  cp "$1" ours.qcow2
  qemu-img amend -o "$2" peer.qcow2 2>peer.err || fail "$1, $2: qemu-img amend: $(cat peer.err)"
  vdtool amend -o "$2" ours.qcow2 || fail "$1, $2: vdtool amend failed"
  [ "$(fields ours.qcow2)" = "$(fields peer.qcow2)" ] ||
    fail "$1, $2: $(fields ours.qcow2), qemu-img's $(fields peer.qcow2)"
  qemu-img check -q ours.qcow2 || fail "$1, $2: not clean after amend"
  qemu-img compare -q peer.qcow2 ours.qcow2 || fail "$1, $2: bytes differ from qemu-img's"
}
# refused REGEX IMAGE OPTIONS: both refuse, vdtool in one line, nothing
# written.
refused() {
  local sum
  sum=$(md5sum < "$2")
  ! qemu-img amend -o "$3" "$2" 2>/dev/null || fail "qemu-img took $3 on $2"
  expect_error "$1" vdtool amend -o "$3" "$2"
  [ "$(md5sum < "$2")" = "$sum" ] || fail "a refused amend ($3) wrote to $2"
}

qemu-img create -q -f raw back.raw 4M
qemu-io -f raw -c 'write -P 0x5a 0 4M' back.raw >/dev/null

qemu-img create -q -f qcow2 -o compat=0.10 -b back.raw -F raw v2b.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x12 1M 192k' v2b.qcow2 >/dev/null
amended v2b.qcow2 compat=1.1
amended v2b.qcow2 compat=1.1,lazy_refcounts=on

for b in "" "-b back.raw -F raw"; do
  qemu-img create -q -f qcow2 $b v3.qcow2 4M
  qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x12 1M 192k' \
    -c 'write -z 1M 64k' -c 'write -z 2M 128k' v3.qcow2 >/dev/null
  amended v3.qcow2 compat=0.10
done
qemu-img create -q -f qcow2 -o lazy_refcounts=on lazy.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x13 0 1M' lazy.qcow2 >/dev/null
amended lazy.qcow2 compat=0.10
amended lazy.qcow2 compat=0.10,lazy_refcounts=on
amended lazy.qcow2 lazy_refcounts=off
echo "amended as qemu-img amends"

# A dirty image: qemu-io killed with lazy refcounts on.
{ qemu-io -f qcow2 -c 'write -P 0x14 2M 1M' -c abort lazy.qcow2 >/dev/null 2>&1; } 2>/dev/null || true
[ "$(qemu-img info --output=json lazy.qcow2 | grep -c '"dirty-flag": true')" = 1 ] ||
  skip "qemu-io left no dirty image"
amended lazy.qcow2 lazy_refcounts=off
echo "a dirty image repaired first"

qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
qemu-img create -q -f qcow2 plain.qcow2 1M
qemu-img create -q -f qcow2 -o refcount_bits=8 rc8.qcow2 1M
qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 1M
qemu-img create -q -f raw plain.raw 1M
refused 'compatibility level 1.1' v2.qcow2 lazy_refcounts=on
refused 'compatibility level 1.1' plain.qcow2 compat=0.10,lazy_refcounts=on
refused 'requires refcount_bits=16' rc8.qcow2 compat=0.10
refused 'incompatible features 0x10' ext.qcow2 compat=0.10
refused "Invalid parameter 'cluster_size'.*image creation" v2.qcow2 cluster_size=4k
refused "Invalid parameter 'foo'" v2.qcow2 foo=on
refused 'Unknown compatibility level 0.9' v2.qcow2 compat=0.9
refused "Format driver 'raw' does not support option amendment" plain.raw compat=1.1
vdtool amend -o help v2.qcow2 > help.txt
grep -q '^  compat=' help.txt && grep -q '^  lazy_refcounts=' help.txt ||
  fail "amend -o help: $(cat help.txt)"
echo "refused as qemu-img refuses"
exit 0
