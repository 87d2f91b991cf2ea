#!/usr/bin/env bash
# The README's main job, run by `make demo` from the build tree:
#  1. create a 1 GiB dynamic VHD demo disk and put some data in it;
#  2. inspect it with vdtool (info, map, check);
#  3. mount it with vdisk-fuse, list the mount, read through it, unmount;
#  4. serve it over NBD on 127.0.0.1 in the background and show how to attach.
set -euo pipefail
b=${top_builddir:-$(pwd)}
export PATH="$b/tools:$b/nbd-server:$b/fuse-frontend:$PATH"
dir=${VD_DEMO_DIR:-$b/demo}
port=${VD_DEMO_PORT:-10809}
disk=$dir/demo.vhd
mkdir -p "$dir"

# A server left by an earlier demo still holds the disk: stop it first.
if [ -s "$dir/vdisk-nbd.pid" ]; then
  kill "$(cat "$dir/vdisk-nbd.pid")" 2>/dev/null || true
  sleep 0.5
  rm -f "$dir/vdisk-nbd.pid"
fi

echo "== 1. a 1 GiB dynamic VHD: $disk"
vdtool create -f vhd "$disk" 1G
head -c 1048576 /dev/urandom > "$dir/pattern.bin"
# Write the pattern at 0 and at 512 MiB through a scratch raw copy, then
# convert: vdtool only writes the allocated blocks.
vdtool create -q "$dir/scratch.raw" 1G
dd if="$dir/pattern.bin" of="$dir/scratch.raw" bs=1M seek=0 conv=notrunc status=none
dd if="$dir/pattern.bin" of="$dir/scratch.raw" bs=1M seek=512 conv=notrunc status=none
vdtool convert -O vhd "$dir/scratch.raw" "$disk"
rm -f "$dir/scratch.raw"

echo
echo "== 2. vdtool info / map / check"
vdtool info "$disk"
echo
vdtool map "$disk"
echo
vdtool check "$disk"

echo
echo "== 3. vdisk-fuse: the disk as a plain file"
mnt=$dir/mnt
mkdir -p "$mnt"
if [ -e /dev/fuse ] && command -v fusermount3 >/dev/null; then
  vdisk-fuse "$disk" "$mnt"
  ls -l "$mnt"
  if cmp -s -n 1048576 "$mnt/demo.raw" "$dir/pattern.bin"; then
    echo "read back the first MiB through the mount: matches the pattern"
  else
    echo "read back through the mount: MISMATCH" >&2
    fusermount3 -u "$mnt"
    exit 1
  fi
  fusermount3 -u "$mnt"
  # vdisk-fuse flushes and exits after the unmount; wait for its lock.
  for _ in $(seq 50); do vdtool info "$disk" >/dev/null 2>&1 && break; sleep 0.1; done
else
  echo "(skipped: /dev/fuse or fusermount3 is missing)"
fi

echo
echo "== 4. vdisk-nbd: serving the disk on 127.0.0.1:$port"
vdisk-nbd --fork -t --pid-file "$dir/vdisk-nbd.pid" -p "$port" demo="$disk"
if command -v nbdinfo >/dev/null; then
  nbdinfo "nbd://127.0.0.1:$port/demo" | sed -n '1,8p'
fi
cat <<EOT

The demo disk is being served (export "demo", also the default export).
Attach it with:
  nbdinfo nbd://127.0.0.1:$port/demo
  qemu-img info nbd://127.0.0.1:$port/demo
  qemu-system-x86_64 -drive file=nbd://127.0.0.1:$port/demo,format=raw ...
  nbd-client 127.0.0.1 $port /dev/nbd0 -N demo      (Linux kernel client)
Stop the server with:
  kill \$(cat $dir/vdisk-nbd.pid)
EOT
