#!/usr/bin/env bash
# vdisk-nbd seen by nbdinfo (libnbd): size, flags, contexts, block sizes,
# export list, allocation map of a sparse image, default and unknown names.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires nbdinfo

img=$VD_TMP/disk.img
img2=$VD_TMP/second.img
truncate -s 64M "$img"
truncate -s 3M "$img2"
# Data at 1 MiB and 40 MiB; the rest is never written.
pattern_bytes 65536 1 | dd of="$img" bs=64K seek=16 conv=notrunc status=none
pattern_bytes 65536 2 | dd of="$img" bs=64K seek=640 conv=notrunc status=none

start_nbd "disk=$img" "$img2"

info() { nbdinfo --json "$@" | /usr/bin/python3 -c 'import json,sys
d=json.load(sys.stdin)["exports"][0]
for k in sys.argv[1:]:
    v=d.get(k)
    print(k, json.dumps(v) if not isinstance(v,str) else v)' \
  export-size is_read_only can_flush can_fua can_trim can_zero can_fast_zero \
  can_cache can_df contexts block_size_minimum block_size_preferred \
  block_size_maximum export-name; }

out=$(info "$(nbd_uri_for disk)")
echo "$out"
grep -qx 'export-size 67108864' <<<"$out" || fail "wrong size"
grep -qx 'is_read_only false' <<<"$out" || fail "export should be writable"
for f in can_flush can_fua can_trim can_zero can_fast_zero can_cache can_df; do
  grep -qx "$f true" <<<"$out" || fail "$f not advertised"
done
grep -q 'contexts \["base:allocation"\]' <<<"$out" || fail "base:allocation missing"
# The engine read-modify-writes partial blocks of a raw image, so any byte
# offset is served (qemu-nbd and nbdkit also advertise 1 here).
grep -qx 'block_size_minimum 1' <<<"$out" || fail "minimum block size"
grep -qx 'block_size_preferred 4096' <<<"$out" || fail "preferred block size"
grep -qx 'block_size_maximum 33554432' <<<"$out" || fail "maximum block size"

# The first export is also the default one; the second is named after
# its file.
out=$(info "$nbd_uri")
grep -qx 'export-size 67108864' <<<"$out" || fail "default export is not the first"
out=$(info "$(nbd_uri_for second.img)")
grep -qx 'export-size 3145728' <<<"$out" || fail "second export: wrong size"

# Export list.
list=$(nbdinfo --list "$nbd_uri")
echo "$list"
grep -q 'export="disk"' <<<"$list" || fail "--list lacks disk"
grep -q 'export="second.img"' <<<"$list" || fail "--list lacks second.img"
grep -q 'description: raw image' <<<"$list" || fail "--list lacks descriptions"

# Allocation map: data exactly where written, holes elsewhere.
map=$(nbdinfo --map "$(nbd_uri_for disk)")
echo "$map"
expected="0 1048576 3 hole,zero
1048576 65536 0 data
1114112 40828928 3 hole,zero
41943040 65536 0 data
42008576 25100288 3 hole,zero"
[ "$(awk '{print $1, $2, $3, $4}' <<<"$map")" = "$expected" ] ||
  fail "unexpected map"

# An unknown export is refused with a message, and the server goes on.
if nbdinfo "$(nbd_uri_for nosuch)" 2>"$VD_TMP/err"; then
  fail "unknown export accepted"
fi
grep -q 'nosuch' "$VD_TMP/err" || fail "no useful error: $(cat "$VD_TMP/err")"
info "$nbd_uri" | grep -qx 'export-size 67108864' || fail "server died"

# Read-only server: flag set, write-type features not offered.
stop_nbd
start_nbd -r "$img"
out=$(info "$nbd_uri")
grep -qx 'is_read_only true' <<<"$out" || fail "-r not advertised"
grep -qx 'can_trim false' <<<"$out" || fail "trim offered on a read-only export"
grep -qx 'can_zero false' <<<"$out" || fail "zero offered on a read-only export"
nbdinfo --can multi-conn "$nbd_uri" || fail "read-only export should be multi-conn"
stop_nbd
echo PASS
