#!/usr/bin/env bash
# VHDX writing: `vdtool create -f vhdx -o subformat=,block_size=,
# logical_sector_size=` and writes through the driver (vdtool convert),
# judged by qemu-img (check clean, compare equal, info) for 512-byte
# sectors and by libvhdi (vhdiinfo) and our reader for 4096-byte ones (qemu
# cannot open those); writes into an image qemu made keep it valid for qemu;
# the headers' DataWriteGuid changes with the data and the log is clean
# after the writer closes.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io /usr/bin/python3
cd "$VD_TMP"
M=$((1 << 20))

size=$((50 * M + 7 * 512))
truncate -s $size src.raw
qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x22 20M 3M' \
  -c "write -P 0x33 $((size - 512)) 512" src.raw >/dev/null
pattern_bytes 2000000 5 | dd of=src.raw bs=1M seek=30 conv=notrunc status=none
size4k=$((50 * M))
head -c $size4k src.raw > src4k.raw

n=0
for sub in dynamic fixed; do
  for bs in 1M 8M 32M; do
    vdtool convert -O vhdx -o subformat=$sub,block_size=$bs src.raw w.vhdx
    qemu-img check -f vhdx w.vhdx > chk.txt 2>&1 || { cat chk.txt; fail "$sub $bs: qemu-img check"; }
    qemu-img compare -f raw -F vhdx src.raw w.vhdx >/dev/null || fail "$sub $bs: qemu-img compare"
    qemu-img info -f vhdx --output=json w.vhdx > q.json
    grep -q "\"virtual-size\": $size" q.json || fail "$sub $bs: qemu's size"
    grep -q "\"cluster-size\": $(( ${bs%M} * M ))" q.json || fail "$sub $bs: qemu's block size"
    vdtool info w.vhdx | grep -q "^ *subformat: $sub\$" || fail "$sub $bs: subformat"
    vdtool info w.vhdx | grep -q '^ *log: clean$' || fail "$sub $bs: log left dirty"
    # 4096-byte logical sectors: qemu refuses them; libvhdi and our reader.
    vdtool convert -O vhdx -o subformat=$sub,block_size=$bs,logical_sector_size=4096 src4k.raw k.vhdx
    vdtool compare -F raw k.vhdx src4k.raw >/dev/null || fail "$sub $bs 4K: reads differently"
    vdtool info k.vhdx | grep -q '^ *logical-sector-size: 4096$' || fail "$sub $bs 4K: sector size"
    if command -v vhdiinfo >/dev/null; then
      vhdiinfo k.vhdx > vi.txt || fail "$sub $bs 4K: vhdiinfo"
      grep -qi 'bytes per sector.*4096' vi.txt || { cat vi.txt; fail "vhdiinfo: sector size"; }
      grep -qi "media size.*$size4k bytes" vi.txt || { cat vi.txt; fail "vhdiinfo: size"; }
    fi
    n=$((n + 1))
  done
done
echo "written: $n variants"
# Dynamic images hold only the blocks with data (sparse convert).
vdtool convert -O vhdx -o block_size=1M src.raw s.vhdx
vdtool info s.vhdx | grep -q '^ *allocated-blocks: 7$' || { vdtool info s.vhdx; fail "allocated blocks"; }

# Create: sizes and options, refused ones with one line.
vdtool create -q -f vhdx -o logical_sector_size=4096 e.vhdx 1G
vdtool info --output=json e.vhdx | grep -q '"virtual-size": 1073741824' || fail "create size"
vdtool create -q -f vhdx big.vhdx 64T
qemu-img info -f vhdx --output=json big.vhdx | grep -q '"virtual-size": 70368744177664' || fail "64 TiB"
expect_error 'block_size 3M' vdtool create -q -f vhdx -o block_size=3M x.vhdx 1G
expect_error 'logical_sector_size 1024' vdtool create -q -f vhdx -o logical_sector_size=1024 x.vhdx 1G
expect_error 'subformat' vdtool create -q -f vhdx -o subformat=sparse x.vhdx 1G
expect_error 'multiple of 4096' vdtool create -q -f vhdx -o logical_sector_size=4096 x.vhdx 5000

# Writing into an image qemu made: qemu still reads it as the source.
qemu-img create -q -f vhdx -o block_size=1M into.vhdx $size
qemu-io -f vhdx -c 'write -P 0x77 2M 4M' into.vhdx >/dev/null
guid() { vdtool info into.vhdx | sed -n 's/^ *data-write-guid: //p'; }
g0=$(guid)
vdtool convert -n -O vhdx src.raw into.vhdx
qemu-img check -f vhdx into.vhdx >/dev/null || fail "qemu-img check after vdtool wrote"
qemu-img compare -f vhdx -F raw into.vhdx src.raw >/dev/null || fail "qemu disagrees after vdtool wrote"
[ "$(guid)" != "$g0" ] || fail "DataWriteGuid unchanged by a write"
# An open that writes nothing changes nothing.
sum=$(md5sum < into.vhdx)
vdtool convert -O raw into.vhdx back.raw
[ "$(md5sum < into.vhdx)" = "$sum" ] || fail "a read changed the file"
exit 0
