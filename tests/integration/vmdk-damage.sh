#!/usr/bin/env bash
# Damaged and hostile VMDK images: truncated grain tables, grain entries
# past the end, corrupt compressed grains, broken headers, descriptor
# garbage, extents escaping the folder (../, absolute paths, symlinks,
# devices, FIFOs): one line on stderr naming the problem, a non-zero exit,
# the image unchanged, and (strace) nothing opened outside the folder.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io /usr/bin/python3 timeout
cd "$VD_TMP"
mkdir img
cd img
echo "secret outside the folder" > ../secret.raw
truncate -s 1M ../secret.raw

qemu-img create -q -f vmdk good.vmdk 16M
qemu-io -f vmdk -c 'write -P 0x61 0 1M' -c 'write -P 0x62 9M 64k' good.vmdk >/dev/null
qemu-img create -q -f raw src.raw 16M
qemu-io -f raw -c 'write -P 0x63 0 2M' src.raw >/dev/null
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.raw stream.vmdk

hdr() {   # FILE FIELD-OFFSET FORMAT: a header field
  /usr/bin/python3 -c 'import struct,sys; print(struct.unpack_from(sys.argv[3], open(sys.argv[1],"rb").read(512), int(sys.argv[2]))[0])' "$@"
}
poke() {   # FILE OFFSET BYTES(printf format)
  printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
refused() {   # REGEX FILE: FILE is refused by open and by a full read
  local sum
  sum=$(md5sum < "$2")
  expect_error "$1" vdtool info --backing-chain -f vmdk "$2"
  expect_error "$1" vdtool convert -f vmdk -O raw "$2" out.raw
  [ "$(md5sum < "$2")" = "$sum" ] || fail "a refused image was written"
}
read_fails() {   # REGEX FILE: FILE opens, but reading it fails in one line
  vdtool info -f vmdk "$2" >/dev/null || fail "$2: info failed"
  expect_error "$1" vdtool convert -f vmdk -O raw "$2" out.raw
  expect_error "$1" vdtool compare -f vmdk -F raw "$2" src.raw
}

gd=$(hdr good.vmdk 56 '<Q')
gte=$(/usr/bin/python3 -c 'import struct,sys; b=open(sys.argv[1],"rb").read(); print(struct.unpack_from("<I", b, int(sys.argv[2]) * 512)[0])' good.vmdk "$gd")

# ---- sparse extent: header, grain directory, grain tables ----
cp good.vmdk bad.vmdk; poke bad.vmdk 0 'KDMW'
refused 'no createType: not a VMDK descriptor|not a VMDK' bad.vmdk
cp good.vmdk bad.vmdk; poke bad.vmdk 4 '\x09'
refused 'unsupported VMDK version 9' bad.vmdk
cp good.vmdk bad.vmdk; poke bad.vmdk 44 '\x00\x00\x00\x00'
refused '0 entries per grain table' bad.vmdk
cp good.vmdk bad.vmdk; poke bad.vmdk 20 '\x00\x00\x00\x00\x00\x00\x00\x00'
refused 'grain of 0 sectors' bad.vmdk
cp good.vmdk bad.vmdk; poke bad.vmdk 12 '\x00\x00\x00\x00\x00\x00\x00\x10'
refused 'capacity of [0-9]+ sectors is too large' bad.vmdk
cp good.vmdk bad.vmdk; poke bad.vmdk 73 '\n \n\n'
refused 'newline check bytes damaged' bad.vmdk
cp good.vmdk bad.vmdk; poke bad.vmdk 77 '\x07\x00'
refused 'unsupported compression algorithm 7' bad.vmdk
# The grain directory itself, then a grain table, past the end.
cp good.vmdk bad.vmdk; poke bad.vmdk 56 '\x00\x00\x00\x00\x00\x10\x00\x00'
refused 'grain directory .* lies past the end of the file' bad.vmdk
cp good.vmdk bad.vmdk; poke bad.vmdk $((gd * 512)) '\x00\x00\x00\x70'
refused 'grain table 0 \(sector 1879048192\) lies past the end of the file' bad.vmdk
# Truncated in the middle of the grain tables.
cp good.vmdk bad.vmdk; truncate -s $((gte * 512 + 1024)) bad.vmdk
refused 'grain table 0 .* lies past the end of the file|file truncated' bad.vmdk
# A grain entry past the end: the open succeeds, the read fails.
cp good.vmdk bad.vmdk; poke bad.vmdk $((gte * 512 + 4)) '\x00\x00\x00\x70'
read_fails 'grain 1 \(sector 1879048192\) lies past the end of the file' bad.vmdk
# The embedded descriptor past the end, or garbage.
cp good.vmdk bad.vmdk; poke bad.vmdk 28 '\x00\x00\x00\x00\x00\x01\x00\x00'
refused 'embedded descriptor lies past the end' bad.vmdk
cp good.vmdk bad.vmdk; poke bad.vmdk $(($(hdr good.vmdk 28 '<Q') * 512 + 30)) '\x01garbage'
refused 'embedded descriptor: line [0-9]+: ' bad.vmdk

# ---- streamOptimized: a corrupt compressed grain, a bad marker size ----
sgd=$(hdr stream.vmdk 56 '<Q')
g0=$(/usr/bin/python3 -c '
import struct, sys
b = open(sys.argv[1], "rb").read()
gt = struct.unpack_from("<I", b, int(sys.argv[2]) * 512)[0]
print(struct.unpack_from("<I", b, gt * 512)[0])' stream.vmdk "$sgd")
cp stream.vmdk bad.vmdk; poke bad.vmdk $((g0 * 512 + 12 + 20)) '\xff\xff\xff\xff\xff\xff\xff\xff'
read_fails 'compressed grain at byte [0-9]+ does not inflate' bad.vmdk
cp stream.vmdk bad.vmdk; poke bad.vmdk $((g0 * 512 + 8)) '\xff\xff\xff\x0f'
read_fails 'compressed grain at byte [0-9]+ says [0-9]+ bytes' bad.vmdk
cp stream.vmdk bad.vmdk; poke bad.vmdk 56 '\xff\xff\xff\xff\xff\xff\xff\xff'
refused 'grain directory at the end, but no valid footer' bad.vmdk

# ---- descriptor files ----
qemu-img create -q -f raw flat-flat.vmdk 1M
desc() {   # LINES...: a descriptor file d.vmdk
  { echo '# Disk DescriptorFile'; echo 'version=1'; echo 'CID=12345678'
    echo 'parentCID=ffffffff'; echo 'createType="monolithicFlat"'
    printf '%s\n' "$@"; } > d.vmdk
}
desc 'RW 2048 FLAT "flat-flat.vmdk" 0' 'RW 2048 ZERO' 'ddb.adapterType = "ide"'
vdtool convert -f vmdk -O raw d.vmdk out.raw || fail "a good descriptor is refused"
[ "$(stat -c %s out.raw)" = $((2 * 1024 * 1024)) ] || fail "FLAT + ZERO size"
desc 'RW 2048 FLAT "flat-flat.vmdk" 0' 'RW 2048 SESPARSE "x.vmdk"'
refused "line 7: unsupported extent type 'SESPARSE'" d.vmdk
desc 'NOACCESS 2048 FLAT "flat-flat.vmdk" 0'
refused 'line 6: NOACCESS extents are not supported' d.vmdk
desc 'RW 2048 FLAT "flat-flat.vmdk"'
refused 'line 6: FLAT extent without a valid offset' d.vmdk
desc 'RW 2048 FLAT "flat-flat.vmdk 0'
refused 'line 6: extent file name missing' d.vmdk
desc 'RW 99999999999999999999 FLAT "flat-flat.vmdk" 0'
refused 'line 6: extent size is not a sector count' d.vmdk
desc 'RW 2048 FLAT "flat-flat.vmdk" 0 junk'
refused 'line 6: trailing characters' d.vmdk
desc 'CID=87654321' 'RW 2048 FLAT "flat-flat.vmdk" 0'
refused 'line 6: CID given twice' d.vmdk
desc 'RW 2048 FLAT "flat-flat.vmdk" 0' 'this is not a descriptor line'
refused 'line 7: not a descriptor line' d.vmdk
desc "RW 2048 FLAT \"$(head -c 2000 /dev/zero | tr '\0' a)\" 0"
refused 'line 6: extent file name .* longer than 1024 bytes' d.vmdk
desc "ddb.comment = \"$(head -c 5000 /dev/zero | tr '\0' a)\""
refused 'line 6 longer than 4096 bytes' d.vmdk
desc
refused 'descriptor names no extent' d.vmdk
{ echo 'version=1'; head -c 3000 /dev/urandom; } > d.vmdk
expect_error 'd.vmdk: ' vdtool info --backing-chain -f vmdk d.vmdk
{ echo 'version=1'; head -c 2000000 /dev/zero | tr '\0' '#'; } > d.vmdk
refused 'too large .* for a descriptor' d.vmdk
# A sparse extent whose header is broken, named by a descriptor.
cp good.vmdk s1.vmdk; poke s1.vmdk 4 '\x09'
desc 'RW 32768 SPARSE "s1.vmdk"'
refused 'extent s1.vmdk: unsupported VMDK version 9' d.vmdk

# ---- extents escaping the folder ----
desc 'RW 2048 FLAT "../secret.raw" 0'
refused "extent ../secret.raw is outside the child's folder" d.vmdk
desc "RW 2048 FLAT \"$VD_TMP/secret.raw\" 0"
refused "extent $VD_TMP/secret.raw is outside the child's folder" d.vmdk
ln -s ../secret.raw link.raw
desc 'RW 2048 FLAT "link.raw" 0'
refused "extent link.raw is outside the child's folder" d.vmdk
desc 'RW 2048 FLAT "/dev/zero" 0'
refused "extent /dev/zero (is not a regular file|is outside)" d.vmdk
mkfifo fifo.raw
desc 'RW 2048 FLAT "fifo.raw" 0'
sum=$(md5sum < d.vmdk)
timeout 20 bash -c ". '$top_srcdir/tests/functions.sh'; top_builddir='$top_builddir'; \
  expect_error 'extent fifo.raw is not a regular file' vdtool info --backing-chain -f vmdk '$PWD/d.vmdk'" ||
  fail "a FIFO extent was not refused in time"
desc 'RW 2048 FLAT "d.vmdk" 0'
refused 'extent d.vmdk is an image of the chain itself' d.vmdk
desc 'RW 2048 FLAT "nothere.raw" 0'
refused 'extent nothere.raw No such file or directory' d.vmdk
desc 'RW 2048 FLAT "flat-flat.vmdk" 0' 'parentFileNameHint="../secret.raw"'
refused "parent .*secret.raw is outside the child's folder" d.vmdk

# Nothing outside the folder is ever opened (strace sees every open).
if command -v strace >/dev/null 2>&1; then
  for line in 'RW 2048 FLAT "../secret.raw" 0' "RW 2048 FLAT \"$VD_TMP/secret.raw\" 0" \
              'RW 2048 FLAT "link.raw" 0'; do
    desc "$line"
    # (LeakSanitizer cannot run under ptrace.)
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
      strace -f -o trace.txt -e trace=open,openat,openat2 \
      "$top_builddir/tools/vdtool" info -f vmdk d.vmdk >/dev/null 2>&1 || true
    grep -q 'd\.vmdk' trace.txt || fail "strace saw no open of the descriptor"
    if grep -E 'open.*secret\.raw' trace.txt; then
      fail "a file outside the folder was opened ($line)"
    fi
  done
fi
# A guest of a probed raw image cannot make it a VMDK: writing a sparse
# magic or a descriptor into its first sector is refused (EPERM).
truncate -s 8M guest.img
start_nbd guest.img
/usr/bin/python3 - "$nbd_uri" <<'EOF' || fail "a guest turned a raw image into a VMDK"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for data in (b"KDMV", b"COWD", b"# Disk DescriptorFile\nversion=1\n"):
    try:
        h.pwrite(data + bytes(512 - len(data)), 0)
        sys.exit("written: %r" % data)
    except nbd.Error as e:
        assert "EPERM" in str(e) or "not permitted" in str(e), e
h.pwrite(b"harmless" + bytes(504), 0)
h.shutdown()
EOF
stop_nbd
[ "$(head -c 8 guest.img)" = harmless ] || fail "the harmless write is missing"
echo PASS
