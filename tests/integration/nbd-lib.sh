#!/usr/bin/env bash
# libnbd is loaded on the first NBD open (vdisk/nbd-lib.h), not at start
# (linking it cost every process ~10 ms): a vdisk-nbd serving a local
# file never maps it and vdtool works on local files without it; a libnbd
# that cannot be loaded, or that loads but lacks a function (an old or
# foreign one), is one clear line; the loaded library serves a URI that
# qemu-img agrees with.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-img qemu-io qemu-nbd
T=$VD_TMP
vdt() { timeout 60 "$top_builddir/tools/vdtool" "$@"; }

qemu-img create -q -f raw "$T/a.raw" 8M
qemu-io -f raw -c 'write -P 0xab 1M 64k' -c 'write -P 0x5e 6M 4k' \
  "$T/a.raw" >/dev/null

# ---- not mapped by a process that names no URI ----
start_nbd -f raw "$T/a.raw"
grep libnbd "/proc/$(cat "$nbd_pidfile")/maps" &&
  fail "vdisk-nbd serving a raw file mapped libnbd"
stop_nbd

# ---- a libnbd that cannot be loaded: one line, local files still work ----
mkdir "$T/badlib" && : > "$T/badlib/libnbd.so.0"
bad() {
  LD_LIBRARY_PATH="$T/badlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"
}
bad vdt convert -O vpc "$T/a.raw" "$T/a.vhd" ||
  fail "vdtool convert of local files needed libnbd"
qemu-img compare -q "$T/a.raw" "$T/a.vhd" || fail "a.vhd differs"

cp "$T/a.raw" "$T/q.raw"   # qemu-nbd locks what it serves
qemu-nbd -f raw -k "$T/qn.sock" -t --pid-file="$T/qn.pid" "$T/q.raw" &
wait_for_socket "$T/qn.sock"
on_exit "kill \$(cat $T/qn.pid)"
U="nbd+unix:///?socket=$T/qn.sock"
bad expect_error \
  'nbd: libnbd.so.0 cannot be loaded: .*: install libnbd0$' vdt info "$U"

# ---- a library that loads but lacks the functions ----
if command -v "${CC:-cc}" >/dev/null; then
  mkdir "$T/oldlib"
  echo 'int vd_not_libnbd;' | "${CC:-cc}" -shared -fPIC -x c - \
    -o "$T/oldlib/libnbd.so.0"
  LD_LIBRARY_PATH="$T/oldlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    expect_error 'nbd: libnbd.so.0 has no nbd_create: too old' \
    vdt info "$U"
fi

# ---- the real one, loaded on first use ----
vdt convert -O vpc "$U" "$T/b.vhd" || fail "vdtool convert from $U"
qemu-img compare -q "$T/a.raw" "$T/b.vhd" || fail "b.vhd differs from a.raw"
qemu-img compare -q -f raw "$U" "$T/b.vhd" || fail "qemu-img: $U differs"
