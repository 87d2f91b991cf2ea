/* libFuzzer harness for the RAID parsers of untrusted bytes: the member
 * superblock (raid_sb_decode), the descriptor (raid_desc_read), and what
 * assembly reads from the members (write-intent bitmap, partial parity
 * log, role table), through a whole open / read / write / close.
 *
 * Input ("bundle"; missing bytes read as zeros):
 *      0      1  flags: bit 0 open read-write, bit 1 --force,
 *                bits 2-4 members left out of the descriptor (bit 2+i:
 *                slot i), bit 5 two members instead of three
 *      1      2  member size in 16 KiB units (little-endian, mod 160)
 *      3      1  unused
 *      4  3 x 16 KiB, one per member i:
 *                [0, 8K)   -> member bytes [4K, 12K): superblock, bitmap
 *                [8K, 16K) -> member bytes [128K, 136K): PPL slot 0
 *                             header and partial parity
 *  49156   ...  descriptor text, given to raid_desc_read on its own
 * The harness writes correct checksums into every superblock and PPL
 * header that has its magic, so mutations reach the checks behind them.
 *
 * Each input runs:
 *  - raid_sb_decode on each member's superblock; a superblock that decodes
 *    must encode and decode again to the same thing;
 *  - raid_desc_read on the descriptor text, then raid_desc_resolve on each
 *    member it names (nothing is opened: a fuzzed descriptor may name any
 *    host file);
 *  - vd_raid_examine and a full assembly of an array whose descriptor the
 *    harness writes (uuid from member 0's superblock, members in memfds),
 *    with reads over the array and, read-write, a few writes and a flush
 *    (resync, PPL replay and superblock updates run on hostile input).
 * Everything lives in memfds: nothing on disk is read or written.
 *
 * The raid/ sources are compiled into this program (see
 * tests/fuzz/Makefile.inc) so their code is instrumented (the registry
 * finds this copy of the driver: the internal library's raid objects are
 * not linked), and members are raw images opened through the library.  In make check, tests/fuzz/fuzz-raid.sh makes seed
 * bundles from arrays made by `vdtool raid create` and runs the standalone
 * driver over them; for long runs by hand:
 *   ./configure CC=clang --enable-fuzzing && make tests/fuzz/libfuzzer-raid
 *   VD_FUZZ_SEEDS=seeds tests/fuzz/fuzz-raid.sh    (keeps the seeds)
 *   tests/fuzz/libfuzzer-raid -max_total_time=600 seeds
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/crc32c.h"
#include "vdisk/endian.h"
#include "raid/raid.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The instrumented copy, compiled into this program. */
extern const struct vd_driver vd_raid_driver;

#define FUZZ_MEMBERS 3
#define FUZZ_HDR 4
#define FUZZ_PART (16u * 1024)
#define FUZZ_DESC_AT (FUZZ_HDR + FUZZ_MEMBERS * FUZZ_PART)
#define FUZZ_UNIT (16u * 1024)
#define FUZZ_PPL_AT RAID_PPL_OFFSET

/* VD_FUZZ_VERBOSE set: say whether each input assembled (seed checks). */
static bool fuzz_verbose;
static int member_fd[FUZZ_MEMBERS] = { -1, -1, -1 };
static char member_path[FUZZ_MEMBERS][64];
static int desc_fd = -1, text_fd = -1;
static char desc_path[64], text_path[64];

static int
fuzz_memfd(const char *name, char *path, size_t len)
{
  int fd = memfd_create(name, 0);
  if (fd < 0)
    abort();
  snprintf(path, len, "/proc/self/fd/%d", fd);
  return fd;
}

static void
fuzz_set(int fd, const void *buf, size_t len)
{
  if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)len) < 0 ||
      (len && pwrite(fd, buf, len, 0) != (ssize_t)len))
    abort();
}

/* Byte I of the bundle (zero past its end). */
static uint8_t
fuzz_byte(const uint8_t *d, size_t size, size_t i)
{
  return i < size ? d[i] : 0;
}

/* A superblock that decodes must survive encode + decode unchanged. */
static void
fuzz_sb_roundtrip(const uint8_t *b)
{
  struct raid_sb sb, again;
  static uint8_t enc[RAID_SB_SIZE];

  if (raid_sb_decode(b, &sb, "fuzz") < 0)
    return;
  /* The name is a C string: what follows its NUL is not encoded. */
  size_t nl = strnlen(sb.name, sizeof sb.name);
  memset(sb.name + nl, 0, sizeof sb.name - nl);
  raid_sb_encode(&sb, enc);
  if (raid_sb_decode(enc, &again, "fuzz") < 0 ||
      memcmp(&sb, &again, sizeof sb) != 0)
    abort();
}

static void
fuzz_desc(const uint8_t *text, size_t len)
{
  struct raid_desc d;

  fuzz_set(text_fd, text, len);
  if (raid_desc_read(text_path, &d) < 0)
    return;
  if (d.nmembers == 0 || d.nmembers > RAID_MAX_MEMBERS)
    abort();
  for (unsigned i = 0; i < RAID_MAX_MEMBERS; i++) {
    if (i >= d.nmembers && (d.member[i] || d.format[i]))
      abort();
    if (d.member[i]) {
      char *p = raid_desc_resolve("/a/b/desc.vdraid", d.member[i]);
      if (!p || (d.member[i][0] != '/' && strncmp(p, "/a/b/", 5) != 0))
        abort();
      free(p);
    }
  }
  raid_desc_free(&d);
}

/* Open the array at desc_path with the instrumented driver, as vd_open
 * would; exercise it; close it. */
static void
fuzz_array(unsigned flags, bool force)
{
  static uint8_t buf[65536];
  struct vd_dev dev;

  memset(&dev, 0, sizeof dev);
  dev.drv = &vd_raid_driver;
  dev.path = desc_path;
  dev.open_flags = flags | VD_OPEN_NOLOCK | (force ? VD_OPEN_FORCE : 0);
  dev.read_only = !(flags & VD_OPEN_RDWR);
  dev.logical_block = 512;
  dev.preferred_io = 4096;
  dev.priv = calloc(1, vd_raid_driver.priv_size);
  if (!dev.priv)
    return;
  if (vd_raid_driver.open(&dev) < 0) {
    if (fuzz_verbose)
      fprintf(stderr, "fuzz-raid: not opened: %s\n", vd_error());
    free(dev.priv);
    return;
  }
  if (fuzz_verbose) {
    struct raid_array *a = dev.priv;
    fprintf(stderr, "fuzz-raid: opened RAID%u, %u members, %u active, "
            "%s\n", a->sb.level, a->n, raid_active_count(a),
            dev.read_only ? "read-only" : "read-write");
  }
  /* The core guarantees requests inside the device. */
  uint64_t end = dev.size < (1u << 20) ? dev.size : (1u << 20);
  for (uint64_t off = 0; off < end; off += sizeof buf) {
    size_t n = end - off < sizeof buf ? (size_t)(end - off) : sizeof buf;
    vd_raid_driver.pread(&dev, buf, n, off);
  }
  if (!dev.read_only && dev.size >= 3 * 4096) {
    memset(buf, 0x5a, sizeof buf);
    size_t n = dev.size < sizeof buf ? (size_t)dev.size : sizeof buf;
    vd_raid_driver.pwrite(&dev, buf, n, 0, 0);                /* full rows */
    vd_raid_driver.pwrite(&dev, buf, 1000, 4096 + 17, 0);     /* partial */
    vd_raid_driver.pwrite(&dev, buf, 512, dev.size - 512, VD_REQ_FUA);
    vd_raid_driver.flush(&dev);
    vd_raid_driver.pread(&dev, buf, n, 0);
  }
  struct vd_raid_status *st = malloc(sizeof *st);
  if (st) {
    vd_raid_status(dev.priv, st);
    free(st);
  }
  if (!dev.read_only)
    vd_raid_driver.flush(&dev);
  vd_raid_driver.close(&dev);
  free(dev.priv);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static uint8_t part[FUZZ_MEMBERS][FUZZ_PART];

  if (desc_fd < 0) {
    fuzz_verbose = getenv("VD_FUZZ_VERBOSE") != NULL;
    for (int i = 0; i < FUZZ_MEMBERS; i++)
      member_fd[i] = fuzz_memfd("fuzz-raid-member", member_path[i],
                                sizeof member_path[i]);
    desc_fd = fuzz_memfd("fuzz-raid-desc", desc_path, sizeof desc_path);
    text_fd = fuzz_memfd("fuzz-raid-text", text_path, sizeof text_path);
  }
  unsigned flags = fuzz_byte(data, size, 0);
  unsigned units = (fuzz_byte(data, size, 1) |
                    (unsigned)fuzz_byte(data, size, 2) << 8) % 160;
  unsigned nmembers = (flags & 0x20) ? 2 : 3;

  for (unsigned i = 0; i < FUZZ_MEMBERS; i++) {
    uint8_t *p = part[i];
    size_t at = FUZZ_HDR + (size_t)i * FUZZ_PART;
    memset(p, 0, FUZZ_PART);
    if (at < size)
      memcpy(p, data + at, size - at < FUZZ_PART ? size - at : FUZZ_PART);
    /* PPL header at 8K: partial parity CRC, then the header's. */
    uint8_t *ph = p + 8192;
    if (memcmp(ph, "VDRAIDPL", 8) == 0) {
      uint32_t len = vd_get_le32(ph + 36);
      if (len > 4096)
        len = 4096;
      vd_put_le32(ph + 56, vd_crc32c(0, ph + RAID_PPL_HDR, len));
      vd_put_le32(ph + 4092, vd_crc32c(0, ph, 4092));
    }
    if (raid_sb_is_magic(p))
      vd_put_le32(p + 4092, vd_crc32c(0, p, 4092));
    fuzz_sb_roundtrip(p);
  }

  if (size > FUZZ_DESC_AT)
    fuzz_desc(data + FUZZ_DESC_AT, size - FUZZ_DESC_AT);
  else
    fuzz_desc(NULL, 0);

  /* The members: zeros, with the fuzzed metadata in place. */
  for (unsigned i = 0; i < FUZZ_MEMBERS; i++) {
    uint64_t msize = (uint64_t)units * FUZZ_UNIT;
    if (ftruncate(member_fd[i], 0) < 0 ||
        ftruncate(member_fd[i], (off_t)msize) < 0)
      abort();
    if (msize > RAID_SB_OFFSET &&
        pwrite(member_fd[i], part[i], msize - RAID_SB_OFFSET < 8192
               ? (size_t)(msize - RAID_SB_OFFSET) : 8192, RAID_SB_OFFSET) < 0)
      abort();
    if (msize > FUZZ_PPL_AT &&
        pwrite(member_fd[i], part[i] + 8192, msize - FUZZ_PPL_AT < 8192
               ? (size_t)(msize - FUZZ_PPL_AT) : 8192, FUZZ_PPL_AT) < 0)
      abort();
  }

  /* The descriptor the harness writes: member 0's uuid, the members not
   * left out. */
  char text[1024], u[37];
  int len;
  raid_uuid_format(part[0] + 16, u);
  len = snprintf(text, sizeof text, "VDRAID 1\nuuid %s\nmembers %u\n", u,
                 nmembers);
  for (unsigned i = 0; i < nmembers; i++)
    if (!(flags & (0x4u << i)))
      len += snprintf(text + len, sizeof text - (size_t)len,
                      "member %u raw %s\n", i, member_path[i]);
  fuzz_set(desc_fd, text, (size_t)len);

  struct vd_raid_status *st = malloc(sizeof *st);
  if (st) {
    vd_raid_examine(desc_path, st);
    free(st);
  }
  fuzz_array((flags & 1) ? VD_OPEN_RDWR : 0, (flags & 2) != 0);
  return 0;
}
