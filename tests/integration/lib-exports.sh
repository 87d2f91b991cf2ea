#!/usr/bin/env bash
# libvdisk.so exports exactly its public API (issue 11, item 5): every
# function declared in an installed header (vdisk/vdisk.h, vdisk/raid.h)
# and nothing else -- no driver struct, no vd_file_* I/O helper, no raid_*
# or vhd_* internals.  The version script vdisk/libvdisk.sym is the list;
# this test keeps it and the headers in step.
. "${top_srcdir:-.}/tests/functions.sh"
requires nm cpp

lib="$top_builddir/vdisk/.libs/libvdisk.so"
[ -f "$lib" ] || skip "no shared libvdisk built"

# The installed headers, as vdisk/Makefile.inc installs them.
headers=("$top_srcdir/vdisk/vdisk.h")
[ -f "$top_srcdir/vdisk/raid.h" ] && headers+=("$top_srcdir/vdisk/raid.h")

# Function names declared in the headers, comments removed first so a
# name mentioned in prose does not count.
for h in "${headers[@]}"; do
  cpp -fpreprocessed -P "$h"
done | tr '\n' ' ' | grep -oE '\bvd_[a-z0-9_]+[[:space:]]*\(' \
  | sed 's/[[:space:]]*($//' | sort -u > "$VD_TMP/declared"
[ -s "$VD_TMP/declared" ] || fail "no function declared in ${headers[*]}"

# Defined dynamic symbols (functions and data alike).
nm -D --defined-only "$lib" | awk '{ print $NF }' | sed 's/@.*//' \
  | sort -u > "$VD_TMP/exported"

extra=$(comm -13 "$VD_TMP/declared" "$VD_TMP/exported")
missing=$(comm -23 "$VD_TMP/declared" "$VD_TMP/exported")
[ -z "$extra" ] || fail "libvdisk.so exports symbols no installed header declares:" $extra
[ -z "$missing" ] || fail "declared in an installed header but not exported:" $missing
echo "libvdisk.so exports the $(wc -l < "$VD_TMP/declared") public functions and nothing else"
