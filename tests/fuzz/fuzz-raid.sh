#!/usr/bin/env bash
# Run the RAID fuzz harness (standalone driver) over seed bundles made from
# arrays that `vdtool raid create` wrote: RAID5 with a partial parity log
# (clean; dirty and degraded with a log entry to replay), RAID5 with the
# resync policy (dirty), RAID5 with a member rebuilding, RAID1 with a dirty
# bitmap and with a stale member, RAID0 read-only.  Each bundle carries the
# array's descriptor as its descriptor text (see tests/fuzz/fuzz-raid.c for
# the layout).  VD_FUZZ_SEEDS=DIR keeps the seeds in DIR.
. "$top_srcdir/tests/functions.sh"
requires /usr/bin/python3

seeds=${VD_FUZZ_SEEDS:-$VD_TMP/seeds}
mkdir -p "$seeds"
cd "$VD_TMP"
vdtool raid create -l 5 -c 4K --size 1088K r5.vdraid r5m0 r5m1 r5m2 >/dev/null
vdtool raid create -l 5 -c 4K --size 1088K --policy resync r5r.vdraid \
  r5rm0 r5rm1 r5rm2 >/dev/null
vdtool raid create -l 1 -c 4K --size 1088K r1.vdraid r1m0 r1m1 >/dev/null
# The same array with a write-mostly member and write-behind (its worker
# thread and queue run under the fuzzed writes).
{ cat r1.vdraid; printf 'write-mostly 1\nwrite-behind 8\n'; } > r1wb.vdraid
vdtool raid create -l 0 -c 4K --size 1088K r0.vdraid r0m0 r0m1 >/dev/null
for d in r5 r5r r1 r0; do
  vdtool raid detail "$d.vdraid" >/dev/null || fail "vdtool made a broken $d array"
done

# bundle(NAME, FLAGS, DESC, MEMBERS, EDIT): EDIT(sb, ppl) may change each
# member's superblock + bitmap (sb[i]) and PPL slot 0 header + partial
# parity (ppl[i]) first; the harness fixes the checksums.
/usr/bin/python3 - "$seeds" <<'EOF'
import struct, sys
out = sys.argv[1]
PART = 16384
def member(path):
    b = open(path, "rb").read()
    return bytearray(b[4096:12288]), bytearray(b[131072:139264])
def bundle(name, flags, desc, members, edit=None):
    parts = [member(m) for m in members]
    sb = [p[0] for p in parts]      # superblock (4K) + bitmap (4K)
    ppl = [p[1] for p in parts]     # PPL slot 0 header (4K) + data (4K)
    if edit:
        edit(sb, ppl)
    data = bytearray(struct.pack("<BHB", flags, 68, 0))
    for i in range(3):
        if i < len(parts):
            data += sb[i] + ppl[i]
        else:
            data += bytes(PART)
    data += open(desc, "rb").read()
    open("%s/%s.bundle" % (out, name), "wb").write(data)

def set32(b, off, v): struct.pack_into("<I", b, off, v)
def set64(b, off, v): struct.pack_into("<Q", b, off, v)
RW, FORCE, TWO = 1, 2, 0x20
def omit(slot): return 4 << slot

bundle("r5-clean", RW, "r5.vdraid", ["r5m0", "r5m1", "r5m2"])
bundle("r5-ro", 0, "r5.vdraid", ["r5m0", "r5m1", "r5m2"])

def dirty_ppl(sb, ppl):
    for s in sb:
        set32(s, 52, 1)                       # dirty
    # Stripe 0 (parity on member 2) logged a write of data chunk 1
    # (member 1), rows [512, 1024); member 0 is left out.
    h = ppl[2]
    h[0:8] = b"VDRAIDPL"
    h[8:24] = sb[2][16:32]
    set64(h, 24, 0); set32(h, 32, 512); set32(h, 36, 512)
    set32(h, 40, 2); set32(h, 44, 2); set64(h, 48, 7)
    h[4096:4608] = bytes(range(256)) * 2
bundle("r5-ppl-replay", RW | FORCE | omit(0), "r5.vdraid",
       ["r5m0", "r5m1", "r5m2"], dirty_ppl)

def dirty(sb, ppl):
    for s in sb:
        set32(s, 52, 1)
bundle("r5-resync", RW, "r5r.vdraid", ["r5rm0", "r5rm1", "r5rm2"], dirty)

def rebuilding(sb, ppl):
    for s in sb:
        set32(s, 512 + 32 * 1 + 16, 2)        # slot 1 rebuilding
        set64(s, 512 + 32 * 1 + 24, 16384)    # 16 KiB done
bundle("r5-rebuilding", RW, "r5.vdraid", ["r5m0", "r5m1", "r5m2"], rebuilding)

def bitmap(sb, ppl):
    for s in sb:
        set32(s, 52, 1)
    sb[0][4096] = 0xff                        # regions 0-7 dirty
bundle("r1-bitmap", RW | TWO, "r1.vdraid", ["r1m0", "r1m1"], bitmap)

def stale(sb, ppl):
    set64(sb[0], 56, struct.unpack_from("<Q", sb[1], 56)[0] + 3)
bundle("r1-stale", RW | TWO, "r1.vdraid", ["r1m0", "r1m1"], stale)

bundle("r0-ro", TWO, "r0.vdraid", ["r0m0", "r0m1"])
bundle("r1-write-behind", RW | TWO, "r1wb.vdraid", ["r1m0", "r1m1"])
EOF
[ "$(ls "$seeds" | wc -l)" -eq 9 ] || fail "expected 9 seed bundles in $seeds"
# Every seed must assemble, or the fuzzing stops at the first check.
for f in "$seeds"/*.bundle; do
  out=$(VD_FUZZ_VERBOSE=1 VD_FUZZ_ITERS=0 "$top_builddir/libtool" \
        --mode=execute "$top_builddir/tests/fuzz/fuzz-raid" "$f" 2>&1)
  grep -q 'fuzz-raid: opened RAID' <<<"$out" ||
    fail "seed ${f##*/} does not assemble: $out"
done

"$top_builddir/libtool" --mode=execute ${VD_VALGRIND:-} \
  "$top_builddir/tests/fuzz/fuzz-raid" "$seeds"
