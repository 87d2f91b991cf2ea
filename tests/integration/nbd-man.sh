#!/usr/bin/env bash
# vdisk-nbd's man page and --help agree (issue 15): every option of
# --help has an entry in docs/vdisk-nbd.1 and every entry is in --help,
# with the same short/long pairing and the same listed values (--tls=on|
# require|off); and -D/--description is what the page says: the
# NBD_INFO_DESCRIPTION (and the NBD_OPT_LIST details) nbdinfo shows,
# beside qemu-nbd -D doing the same.
. "${top_srcdir:-.}/tests/functions.sh"
. "$top_srcdir/tests/nbd/lib.sh"
requires qemu-nbd qemu-img nbdinfo
PY=/usr/bin/python3
[ -x "$PY" ] || skip "no /usr/bin/python3"
cd "$VD_TMP"

# ---- the option lists ----
vdisk_nbd --help >help.txt
"$PY" "$top_srcdir/tests/integration/man-options.py" help.txt "$top_srcdir/docs/vdisk-nbd.1" ||
  fail "vdisk-nbd --help and vdisk-nbd.1 differ"

# ---- -D beside qemu-nbd -D ----
qemu-img create -q -f raw img.raw 4M
desc="Büro disk: one line, as given"
qemu-nbd -f raw -r -t -k "$VD_TMP/q.sock" -x disk -D "$desc" img.raw &
qpid=$!
on_exit "kill $qpid 2>/dev/null; wait $qpid 2>/dev/null"
wait_for_socket "$VD_TMP/q.sock"
start_nbd -r -x disk -D "$desc" img.raw
for side in peer ours; do
  if [ $side = peer ]; then sock=$VD_TMP/q.sock; else sock=$nbd_sock; fi
  nbdinfo --json "nbd+unix:///disk?socket=$sock" |
    "$PY" -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["description"])' \
    >"$side.desc" || fail "$side: nbdinfo --json"
  nbdinfo --list "nbd+unix:///?socket=$sock" | grep '^	description:' \
    >"$side.list" || fail "$side: nbdinfo --list shows no description"
done
[ "$(cat ours.desc)" = "$desc" ] || fail "NBD_INFO_DESCRIPTION is '$(cat ours.desc)'"
cmp peer.desc ours.desc || fail "description differs from qemu-nbd -D's"
cmp peer.list ours.list || fail "nbdinfo --list: $(cat peer.list) vs $(cat ours.list)"
exit 0
