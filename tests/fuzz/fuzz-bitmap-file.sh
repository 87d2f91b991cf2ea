#!/usr/bin/env bash
# Run the bitmap side-file fuzz harness (standalone driver) over seeds:
# files written by vdisk-nbd itself (one bitmap, several with other
# granularities, one in use after a kill -9) and by tests/fuzz/
# bitmap-file-seeds.py (edge cases, checksum left for the harness to fix).
# VD_FUZZ_SEEDS=DIR keeps the seeds in DIR.
. "$top_srcdir/tests/functions.sh"

seeds=${VD_FUZZ_SEEDS:-$VD_TMP/seeds}
mkdir -p "$seeds"
/usr/bin/python3 "$top_srcdir/tests/fuzz/bitmap-file-seeds.py" "$seeds"

# Real files: a mode byte (0: as is) then the file vdisk-nbd wrote.
truncate -s 3M "$VD_TMP/d.raw"
vdisk_nbd -f raw -k "$VD_TMP/sock" --fork --pid-file "$VD_TMP/pid" \
  -B one -B two "$VD_TMP/d.raw"
on_exit 'kill "$(cat "$VD_TMP/pid")"'
wait_for_socket "$VD_TMP/sock"
timeout 60 qemu-io -f raw -c "write -P 120 100000 70000" \
  "nbd+unix:///?socket=$VD_TMP/sock" >/dev/null
for _ in $(seq 100); do [ -f "$VD_TMP/pid" ] && kill -0 "$(cat "$VD_TMP/pid")" 2>/dev/null || break; sleep 0.1; done
{ printf '\0'; cat "$VD_TMP/d.raw.bitmaps"; } > "$seeds/real-clean"
{ printf '\1'; cat "$VD_TMP/d.raw.bitmaps"; } > "$seeds/real-clean-fix"

"$top_builddir/libtool" --mode=execute ${VD_VALGRIND:-} \
  "$top_builddir/tests/fuzz/fuzz-bitmap-file" "$seeds"
