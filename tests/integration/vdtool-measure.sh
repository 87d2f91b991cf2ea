#!/usr/bin/env bash
# vdtool measure (issue 15), as qemu-img measure:
#  - raw: the same numbers as qemu-img measure, human and JSON, for --size
#    and for a sparse file;
#  - vpc and vhdx (dynamic with several block sizes, fixed; 4K sectors):
#    what convert then writes fits the "required size" (a source's block
#    status may count a block that holds only zeros: at most one block
#    more), and a fully allocated convert (-S 0) is exactly the "fully
#    allocated size";
#  - formats that cannot tell, and bad command lines, fail in one line.
. "${top_srcdir:-.}/tests/functions.sh"
requires qemu-img qemu-io
cd "$VD_TMP"

qemu-img create -q -f raw s.raw 200M
qemu-io -f raw -c 'write -P 1 1M 3M' -c 'write -P 2 100M 100k' \
  -c 'write -P 3 190M 4k' s.raw >/dev/null

# raw beside qemu-img.
for args in "--size 1G" "s.raw" "--size 1536M -o preallocation=falloc"; do
  for out in human json; do
    # shellcheck disable=SC2086
    q=$(qemu-img measure --output=$out -O raw $args) || fail "qemu-img measure $args"
    # shellcheck disable=SC2086
    v=$(vdtool measure --output=$out -O raw $args) || fail "vdtool measure $args"
    [ "$q" = "$v" ] || fail "measure -O raw $args ($out): '$v', qemu-img: '$q'"
  done
done

# vpc and vhdx against what convert writes.
while read -r fmt opts slot; do
  o=; [ "$opts" = - ] || o="-o $opts"
  # shellcheck disable=SC2086
  read -r req full < <(vdtool measure --output=json -O $fmt $o s.raw |
    /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["required"], d["fully-allocated"])')
  rm -f o.img f.img
  # shellcheck disable=SC2086
  vdtool convert -O $fmt $o s.raw o.img && vdtool convert -S 0 -O $fmt $o s.raw f.img ||
    fail "convert -O $fmt $o failed"
  got=$(stat -c %s o.img) gotf=$(stat -c %s f.img)
  echo "$fmt $opts: required $req (convert wrote $got), fully $full (wrote $gotf)"
  [ "$got" -le "$req" ] && [ "$((req - got))" -le "$slot" ] ||
    fail "$fmt $opts: required size $req, but convert wrote $got"
  [ "$gotf" = "$full" ] || fail "$fmt $opts: fully allocated size $full, but convert -S 0 wrote $gotf"
done <<'LIST'
vpc - 2097664
vpc block_size=512K 524800
vpc subformat=fixed 0
vhdx - 33554432
vhdx block_size=1M 1048576
vhdx block_size=8M,logical_sector_size=4096 8388608
vhdx subformat=fixed 0
LIST

# An empty image: what create makes.
for fmt in vpc vhdx; do
  vdtool create -q -f $fmt e.$fmt 1G
  req=$(vdtool measure -O $fmt --size 1G | sed -n 's/^required size: //p')
  [ "$req" = "$(stat -c %s e.$fmt)" ] ||
    fail "empty 1 GiB $fmt: required $req, create made $(stat -c %s e.$fmt)"
done

expect_error "format 'vdz' does not support size measurement" vdtool measure -O vdz s.raw
expect_error "expected either --size SIZE or one FILENAME" vdtool measure --size 1G s.raw
expect_error "expected either --size SIZE or one FILENAME" vdtool measure
expect_error "unknown option 'nosuch'|nosuch" vdtool measure -O vpc -o nosuch=1 --size 1G
echo "vdtool-measure: OK"
