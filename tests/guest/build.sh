#!/usr/bin/env bash
# Build (or find in the cache) the tiny TCG test guest of issue 18: Debian's
# kernel (linux-image-amd64's current package, fetched with apt-get download
# and unpacked with dpkg -x, never installed) and an initramfs holding
# busybox-static, nbd-client, e2fsprogs (mkfs.ext4, e2fsck, debugfs) and
# util-linux's fstrim with the libraries ldd names, the modules for virtio,
# nbd and ext4 with their dependencies (modules.dep made by depmod), and
# tests/guest/init.sh as /init.
#
# Prints the guest's folder (vmlinuz, initrd.gz, version) on stdout.
# Exit 77 with the reason on stderr when Debian's archive cannot be
# reached and no guest is cached; any other failure exits 1.
#
# Cache: $VDISK_GUEST_CACHE, else $XDG_CACHE_HOME/vdisk-guest, else
# ~/.cache/vdisk-guest, else (not writable) BUILDDIR/tests/guest/cache.
# One folder per key (kernel package version + the hash of this script, the
# init and the host tools' package versions), built in a temporary folder
# and renamed into place under flock, so concurrent callers build it once
# and never see half a guest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
say() { echo "guest-build: $*" >&2; }
die() { say "$*"; exit 1; }

pick_cache() {
  local d
  for d in "${VDISK_GUEST_CACHE:-}" \
           "${XDG_CACHE_HOME:+$XDG_CACHE_HOME/vdisk-guest}" \
           "${HOME:+$HOME/.cache/vdisk-guest}" \
           "${top_builddir:-$here/../..}/tests/guest/cache"; do
    [ -n "$d" ] || continue
    if mkdir -p "$d" 2>/dev/null && [ -w "$d" ]; then
      (cd "$d" && pwd); return 0
    fi
  done
  return 1
}
cache=$(pick_cache) || die "no writable cache folder"
exec 9>"$cache/.lock"
flock -w 900 9 || die "waited 15 min for $cache/.lock"

# The newest complete guest in the cache (the fallback when the archive
# cannot be reached).
newest_cached() {
  local d
  d=$(ls -1dt "$cache"/guest-*/ 2>/dev/null | head -n1) || true
  [ -n "$d" ] && [ -s "$d/initrd.gz" ] && [ -s "$d/vmlinuz" ] && echo "${d%/}"
}
offline() {
  local d
  if d=$(newest_cached); then
    say "$1; using the cached guest $d"
    echo "$d"; exit 0
  fi
  say "$1, and no guest is cached in $cache"
  exit 77
}

for t in dpkg dpkg-deb apt-get apt-cache depmod busybox sha256sum gzip; do
  command -v "$t" >/dev/null || offline "$t is not installed"
done

# The kernel package linux-image-amd64 points at, and its version.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
       sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
[ -n "$kpkg" ] || offline "apt knows no linux-image-amd64 (run apt-get update)"
kver=$(apt-cache show --no-all-versions "$kpkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
[ -n "$kver" ] || offline "apt knows no version of $kpkg"
hostver=$(dpkg-query -W -f='${Package}=${Version} ' busybox-static nbd-client \
          e2fsprogs util-linux libc6 libgnutls30 2>/dev/null || true)
hash=$(cat "$here/build.sh" "$here/init.sh" <(echo "$hostver") | sha256sum | cut -c1-16)
key="guest-${kpkg#linux-image-}-${kver}-$hash"
out=$cache/$key
if [ -s "$out/initrd.gz" ] && [ -s "$out/vmlinuz" ]; then
  echo "$out"; exit 0
fi

# ---- fetch the kernel package (kept beside the guests) ----
debdir=$cache/debs
mkdir -p "$debdir"
deb=$(ls "$debdir/${kpkg}_${kver//:/%3a}_amd64.deb" 2>/dev/null || true)
if [ -z "$deb" ]; then
  say "downloading $kpkg $kver"
  dl=$(mktemp -d "$debdir/.dl.XXXXXX")
  if ! (cd "$dl" && timeout 600 apt-get download -q "$kpkg=$kver" >/dev/null 2>"$dl/err"); then
    if [ "$(id -u)" = 0 ] && timeout 300 apt-get update -qq >/dev/null 2>&1 &&
       (cd "$dl" && timeout 600 apt-get download -q "$kpkg=$kver" >/dev/null 2>"$dl/err"); then
      :
    else
      err=$(grep -v '^W:' "$dl/err" | tail -n1)
      rm -rf "$dl"
      offline "apt-get download $kpkg=$kver failed (${err:-no message})"
    fi
  fi
  f=$(ls "$dl"/*.deb)
  mv "$f" "$debdir/"
  rm -rf "$dl"
  deb=$debdir/$(basename "$f")
  # older kernels are of no further use
  find "$debdir" -name 'linux-image-*.deb' ! -name "$(basename "$f")" -delete
fi

# ---- build into a temporary folder, then rename ----
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dpkg -x "$deb" "$tmp/k"
kdir=$(ls -d "$tmp"/k/lib/modules/*/ | head -n1)
krel=$(basename "$kdir")
depmod -b "$tmp/k" "$krel"
cp "$tmp/k/boot/vmlinuz-$krel" "$tmp/vmlinuz"

r=$tmp/root
mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,mnt,tmp,lib/modules,lib64,run}
cp /bin/busybox "$r/bin/busybox"
ln -s busybox "$r/bin/sh"
cp "$here/init.sh" "$r/init"
chmod 0755 "$r/init"

# Programs and the libraries they load.
progs=(/usr/sbin/nbd-client /sbin/mke2fs /sbin/e2fsck /sbin/debugfs /sbin/fstrim)
for p in "${progs[@]}"; do
  p=$(readlink -f "$p")
  [ -x "$p" ] || die "$p is missing"
  cp "$p" "$r/sbin/"
  ldd "$p" | awk '/=> \//{print $3} /^\t\//{print $1}' | while read -r lib; do
    mkdir -p "$r$(dirname "$lib")"
    [ -e "$r$lib" ] || cp -L "$lib" "$r$lib"
  done
done
ln -s mke2fs "$r/sbin/mkfs.ext4"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$r/etc/"

# Modules, dependencies first (modules.dep lists what each one needs).
want=(virtio_pci virtio_blk virtio_net nbd crc32c_generic ext4)
order=()
declare -A seen=()
add_mod() {
  local name=$1 line path deps d
  line=$(grep -E "(^|/)${name}\.ko(\.[a-z]+)?:" "$kdir/modules.dep" | head -n1) ||
    die "module $name is not in $kpkg"
  path=${line%%:*}
  [ -z "${seen[$path]:-}" ] || return 0
  seen[$path]=1
  deps=${line#*:}
  for d in $deps; do
    d=$(basename "$d"); d=${d%%.ko*}
    add_mod "$d"
  done
  order+=("$path")
}
for m in "${want[@]}"; do add_mod "$m"; done
: > "$r/lib/modules/load-order"
for p in "${order[@]}"; do
  case "$p" in
    *.ko) cp "$kdir/$p" "$r/lib/modules/" ;;
    *.ko.xz) xz -dc "$kdir/$p" > "$r/lib/modules/$(basename "${p%.xz}")" ;;
    *.ko.zst) zstd -qdc "$kdir/$p" > "$r/lib/modules/$(basename "${p%.zst}")" ;;
    *) die "unknown module file $p" ;;
  esac
  b=$(basename "$p"); echo "${b%%.ko*}.ko" >> "$r/lib/modules/load-order"
done

(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) |
  gzip -1 > "$tmp/initrd.gz"
echo "$kpkg $kver $krel" > "$tmp/version"
rm -rf "$tmp/k" "$r"
trap - EXIT
rm -rf "$out"
mv "$tmp" "$out"
# Guests of other keys are stale.
find "$cache" -maxdepth 1 -name "guest-*" ! -name "$key" -mmin +60 -exec rm -rf {} +
say "built $out ($(du -sh "$out/initrd.gz" | cut -f1) initramfs, $krel)"
echo "$out"
