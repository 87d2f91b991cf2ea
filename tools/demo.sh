#!/usr/bin/env bash
# The README's main job: make a demo disk and show what vdisk sees.
# Run from the build tree with `make demo`.
set -euo pipefail
b=${top_builddir:-$(pwd)}
vdtool() { "$b/tools/vdtool" "$@"; }
dir=${VD_DEMO_DIR:-$b/demo}
mkdir -p "$dir"
disk=$dir/demo.raw

echo "== creating the demo disk $disk (1 GiB, sparse)"
vdtool create "$disk" 1G
# Some recognisable content: a 1 MiB pattern at 0 and at 512 MiB.
head -c 1048576 /dev/urandom > "$dir/pattern.bin"
dd if="$dir/pattern.bin" of="$disk" bs=1M seek=0 conv=notrunc,fsync status=none
dd if="$dir/pattern.bin" of="$disk" bs=1M seek=512 conv=notrunc,fsync status=none
echo
echo "== vdtool info"
vdtool info "$disk"
echo
echo "== vdtool map (allocated extents)"
vdtool map "$disk"
