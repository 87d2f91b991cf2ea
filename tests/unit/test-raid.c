/* Unit tests for raid/: geometry, parity, superblock codec, and every
 * failure scenario of the reference notes, driven through the fault layer
 * and checked against a reference model (a plain buffer holding what the
 * array must contain). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/vdisk.h"
#include "vdisk/driver.h"
#include "vdisk/endian.h"
#include "raid/raid.h"
#include "tests/unit/fault.h"

#define MIB (1024u * 1024)

static char tmpdir[256];
static unsigned test_no;

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void)
{
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static void fill(uint8_t *b, size_t n, uint64_t seed)
{
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    b[i] = (uint8_t)x;
  }
}

struct tarr {
  char dir[300];
  char desc[340];
  char mem[8][340];
  unsigned n;
  int level;
  uint32_t chunk;
  struct vd_dev *dev;
  struct raid_array *a;
  const char *filter;          /* open option for the members: "fault" once
                                  tarr_fault attached one */
  uint8_t *model;
  uint64_t size;
};

static void tarr_create(struct tarr *t, int level, unsigned n, uint32_t chunk,
                        uint64_t msize, int policy, uint64_t region)
{
  memset(t, 0, sizeof *t);
  snprintf(t->dir, sizeof t->dir, "%s/t%u", tmpdir, ++test_no);
  CU_ASSERT_FATAL(mkdir(t->dir, 0700) == 0);
  snprintf(t->desc, sizeof t->desc, "%s/array.vdraid", t->dir);
  const char *names[8];
  for (unsigned i = 0; i < n; i++) {
    snprintf(t->mem[i], sizeof t->mem[i], "%s/m%u.img", t->dir, i);
    names[i] = t->mem[i];
  }
  t->n = n;
  t->level = level;
  t->chunk = chunk;
  struct vd_raid_create_args ca = {
    .level = level, .chunk = chunk, .nmembers = n, .members = names,
    .member_size = msize, .member_format = "raw", .policy = policy,
    .bitmap_region = region,
  };
  int r = vd_raid_create(t->desc, &ca);
  if (r < 0)
    fprintf(stderr, "create: %s\n", vd_error());
  CU_ASSERT_FATAL(r == 0);
}

static int tarr_open(struct tarr *t)
{
  struct vd_open_args oa = { .flags = VD_OPEN_RDWR, .filter = t->filter };
  int r = vd_open_opts(t->desc, &oa, &t->dev);
  if (r < 0) {
    t->dev = NULL;
    return r;
  }
  t->a = vd_raid_of(t->dev);
  CU_ASSERT_FATAL(t->a != NULL);
  if (!t->model) {
    t->size = vd_size(t->dev);
    t->model = calloc(1, t->size);
    CU_ASSERT_FATAL(t->model != NULL);
  }
  CU_ASSERT(vd_size(t->dev) == t->size);
  return 0;
}

/* Attach a fault to member SLOT; tarr_open opens the members through the
 * fault filter from now on (members with no fault pass through). */
static struct vd_fault *tarr_fault(struct tarr *t, unsigned slot)
{
  struct vd_fault *f = vd_fault_attach(t->mem[slot]);
  CU_ASSERT_FATAL(f != NULL);
  t->filter = "fault";
  return f;
}

static void tarr_close(struct tarr *t)
{
  if (t->dev)
    CU_ASSERT(vd_close(t->dev) == 0);
  t->dev = NULL;
  t->a = NULL;
}

static void tarr_free(struct tarr *t)
{
  if (t->dev)
    vd_close(t->dev);
  t->dev = NULL;
  free(t->model);
  t->model = NULL;
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cannot remove %s\n", t->dir);
}

static int mwrite(struct tarr *t, uint64_t off, size_t len, uint64_t seed)
{
  uint8_t *b = malloc(len);
  CU_ASSERT_FATAL(b != NULL);
  fill(b, len, seed);
  int r = vd_pwrite(t->dev, b, len, off, 0);
  if (r == 0)
    memcpy(t->model + off, b, len);
  free(b);
  return r;
}

/* Check [off, off+len) against the model; returns the number of bad
 * bytes (0 = good), -1 if the read failed. */
static long mcheck(struct tarr *t, uint64_t off, size_t len)
{
  uint8_t *b = malloc(len);
  CU_ASSERT_FATAL(b != NULL);
  int r = vd_pread(t->dev, b, len, off);
  long bad = 0;
  if (r < 0)
    bad = -1;
  else
    for (size_t i = 0; i < len; i++)
      bad += b[i] != t->model[off + i];
  free(b);
  return bad;
}

static long verify_all(struct tarr *t)
{
  long bad = 0;
  for (uint64_t o = 0; o < t->size; o += MIB) {
    size_t n = t->size - o < MIB ? (size_t)(t->size - o) : MIB;
    long b = mcheck(t, o, n);
    if (b < 0)
      return -1;
    bad += b;
  }
  return bad;
}

/* A random request: small unaligned, chunk-sized, full stripe, or long. */
static void rnd_req(struct tarr *t, uint64_t lo, uint64_t hi, uint64_t *off,
                    size_t *len)
{
  uint64_t span = hi - lo;
  size_t l;
  switch (rnd() % 5) {
  case 0: l = 1 + rnd() % 9000; break;
  case 1: l = t->chunk; break;
  case 2: l = (size_t)t->chunk * (t->level == 5 ? t->n - 1 : t->n); break;
  case 3: l = 512 * (1 + rnd() % 64); break;
  default: l = 1 + rnd() % (3 * t->chunk * t->n); break;
  }
  if (l > span)
    l = (size_t)span;
  uint64_t o = lo + rnd() % (span - l + 1);
  if (rnd() % 2)
    o = o / 512 * 512;
  if (o + l > hi)
    o = hi - l;
  *off = o;
  *len = l;
}

/* NOPS random writes (each verified by a read of a random range). */
static void random_ops(struct tarr *t, unsigned nops)
{
  for (unsigned i = 0; i < nops; i++) {
    uint64_t off;
    size_t len;
    rnd_req(t, 0, t->size, &off, &len);
    CU_ASSERT(mwrite(t, off, len, rnd()) == 0);
    rnd_req(t, 0, t->size, &off, &len);
    CU_ASSERT(mcheck(t, off, len) == 0);
  }
}

static uint64_t noted[4];
static unsigned nnoted;
static void note_mismatch(void *o, uint64_t s, uint64_t off)
{
  if (nnoted < 4)
    noted[nnoted++] = s;
}

static long scrub_mismatches(struct tarr *t, bool repair)
{
  struct vd_raid_scrub_report rep = { 0 };
  int r = vd_raid_scrub(t->a, repair, &rep, NULL, NULL);
  if (r < 0) {
    fprintf(stderr, "scrub: %s\n", vd_error());
    return -1;
  }
  return (long)rep.mismatches;
}

static int member_state(struct tarr *t, int slot)
{
  struct vd_raid_status st;
  CU_ASSERT_FATAL(vd_raid_status(t->a, &st) == 0);
  return st.m[slot].state;
}

/* ---- geometry, parity, codecs ---- */

static void test_geometry(void)
{
  /* md left-symmetric, 4 members: parity 3,2,1,0 and data continuing
   * after the parity member (md's raid5_compute_sector). */
  static const unsigned want[4][3] = {
    { 0, 1, 2 }, { 3, 0, 1 }, { 2, 3, 0 }, { 1, 2, 3 },
  };
  for (unsigned s = 0; s < 8; s++) {
    CU_ASSERT(raid5_parity_member(4, s) == 3 - s % 4);
    for (unsigned d = 0; d < 3; d++)
      CU_ASSERT(raid5_data_member(4, s, d) == want[s % 4][d]);
  }
  struct raid5_map m;
  raid5_map(4, 65536, 3 * 65536 + 100, &m);   /* stripe 1, chunk 0 */
  CU_ASSERT(m.stripe == 1 && m.dchunk == 0 && m.member == 3 &&
            m.parity == 2 && m.moff == 65536 + 100);
  raid5_map(3, 4096, 5 * 4096 + 7, &m);       /* stripe 2, chunk 1 */
  CU_ASSERT(m.stripe == 2 && m.dchunk == 1 && m.parity == 0 &&
            m.member == 2 && m.moff == 2 * 4096 + 7);
}

/* The level table: the rules the rest of the driver takes from it, for
 * every level in one place (members needed, sizes, what applies). */
static void test_level_ops(void)
{
  static const struct {
    uint32_t level;
    unsigned min_members, need_of_4;
    uint64_t capacity_of_4, row_of_4;   /* members of 1 MiB, chunk 64 KiB */
    bool redundant, parity_log;
    int policy;
  } want[] = {
    { 0, 2, 4, 4 * MIB, 4 * 65536, false, false, RAID_POLICY_RESYNC },
    { 1, 2, 1, MIB, 65536, true, false, RAID_POLICY_BITMAP },
    { 5, 3, 3, 3 * MIB, 3 * 65536, true, true, RAID_POLICY_PPL },
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    const struct raid_level_ops *ops = raid_level_find(want[i].level);
    CU_ASSERT_FATAL(ops != NULL);
    CU_ASSERT(ops->level == want[i].level);
    CU_ASSERT(ops->min_members == want[i].min_members);
    CU_ASSERT(ops->members_needed(4) == want[i].need_of_4);
    CU_ASSERT(raid_level_viable(ops, 4, want[i].need_of_4));
    CU_ASSERT(!raid_level_viable(ops, 4, want[i].need_of_4 - 1));
    CU_ASSERT(ops->capacity(4, MIB) == want[i].capacity_of_4);
    CU_ASSERT(ops->row_bytes(4, 65536) == want[i].row_of_4);
    CU_ASSERT(ops->redundant == want[i].redundant);
    CU_ASSERT(ops->parity_log == want[i].parity_log);
    CU_ASSERT((int)ops->default_policy == want[i].policy);
    CU_ASSERT(ops->read && ops->write && ops->capacity && ops->row_bytes);
    /* Resync, scrub and rebuild exactly where there is redundancy. */
    CU_ASSERT((ops->sync_row != NULL) == ops->redundant);
    CU_ASSERT((ops->rebuild_rows_locked != NULL) == ops->redundant);
    /* Only a level with a log has its hooks; start and stop pair up. */
    CU_ASSERT((ops->replay_log != NULL) == ops->parity_log);
    CU_ASSERT((ops->start != NULL) == (ops->stop != NULL));
    CU_ASSERT((ops->flush_begin != NULL) == (ops->flush_end != NULL));
  }
  for (uint32_t level = 0; level < 10; level++)
    if (level != 0 && level != 1 && level != 5)
      CU_ASSERT(raid_level_find(level) == NULL);
  CU_ASSERT(raid_level_find(UINT32_MAX) == NULL);
}

static void test_parity(void)
{
  for (unsigned n = 1; n <= 70; n += 7) {
    size_t len = 1 + rnd() % 5000;
    uint8_t **src = calloc(n, sizeof *src);
    uint8_t *want = calloc(1, len), *got = malloc(len + 1);
    for (unsigned k = 0; k < n; k++) {
      src[k] = malloc(len + 1);
      fill(src[k] + 1, len, rnd());   /* unaligned sources */
      for (size_t i = 0; i < len; i++)
        want[i] ^= src[k][1 + i];
    }
    const void *s[70];
    for (unsigned k = 0; k < n; k++)
      s[k] = src[k] + 1;
    raid_xor(got + 1, s, n, len);
    CU_ASSERT(memcmp(got + 1, want, len) == 0);
    /* In place: dst is one of the sources. */
    memcpy(got, src[0] + 1, len);
    s[0] = got;
    raid_xor(got, s, n, len);
    CU_ASSERT(memcmp(got, want, len) == 0);
    for (unsigned k = 0; k < n; k++)
      free(src[k]);
    free(src);
    free(want);
    free(got);
  }
}

/* Every version of the block kernel this CPU runs (raid_xor_impl_select)
 * gives the byte-wise result: aligned sources (the vector path) of
 * lengths that are and are not multiples of its 2 KiB block, a tail that
 * is not a multiple of 8, in place and not. */
static void test_parity_versions(void)
{
  const size_t lens[] = { 8, 2048, 2056, 4096 + 24 + 5, 65536 };
  const char *name;
  unsigned versions = 0;
  for (unsigned v = 0; (name = raid_xor_impl_select(v)) != NULL; v++) {
    versions++;
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++)
      for (unsigned n = 1; n <= 6; n++) {
        size_t len = lens[li];
        uint8_t *src[6], *want = calloc(1, len), *got = vd_alloc_aligned(len);
        const void *s[6];
        for (unsigned k = 0; k < n; k++) {
          src[k] = vd_alloc_aligned(len);
          fill(src[k], len, rnd());
          for (size_t i = 0; i < len; i++)
            want[i] ^= src[k][i];
          s[k] = src[k];
        }
        raid_xor(got, s, n, len);
        CU_ASSERT(memcmp(got, want, len) == 0);
        if (memcmp(got, want, len) != 0)
          fprintf(stderr, "parity %s: %u sources of %zu bytes differ\n",
                  name, n, len);
        memcpy(got, src[0], len);   /* in place: dst is source 0 */
        s[0] = got;
        raid_xor(got, s, n, len);
        CU_ASSERT(memcmp(got, want, len) == 0);
        for (unsigned k = 0; k < n; k++)
          vd_free_aligned(src[k]);
        vd_free_aligned(got);
        free(want);
      }
  }
  CU_ASSERT(versions >= 1);
  raid_xor_impl_select(0);   /* back to the default */
}

static void test_superblock(void)
{
  /* CRC-32C check value (RFC 3720). */
  CU_ASSERT(vd_crc32c(0, "123456789", 9) == 0xE3069283);
  struct raid_sb sb, back;
  memset(&sb, 0, sizeof sb);
  raid_uuid_generate(sb.uuid);
  sb.level = 5; sb.chunk = 65536; sb.nmembers = 3; sb.slot = 2;
  sb.events = 42; sb.data_offset = MIB; sb.data_size = 8 * 65536;
  sb.array_size = 2 * sb.data_size; sb.resync_offset = RAID_NO_OFFSET;
  sb.policy = RAID_POLICY_BITMAP; sb.bitmap_offset = RAID_BITMAP_OFFSET;
  sb.bitmap_region = 65536; sb.bitmap_bytes = 4096; sb.flags = RAID_SB_DIRTY;
  sb.role[1].state = RAID_ROLE_FAULTY;
  uint8_t buf[RAID_SB_SIZE];
  raid_sb_encode(&sb, buf);
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == 0);
  CU_ASSERT(back.events == 42 && back.slot == 2 && back.level == 5 &&
            back.role[1].state == RAID_ROLE_FAULTY &&
            back.flags == RAID_SB_DIRTY &&
            memcmp(back.uuid, sb.uuid, 16) == 0);
  /* Any flipped byte is caught. */
  for (int i = 0; i < 200; i++) {
    size_t at = rnd() % RAID_SB_SIZE;
    buf[at] ^= 0x10;
    CU_ASSERT(raid_sb_decode(buf, &back, "t") < 0);
    buf[at] ^= 0x10;
  }
  /* A valid checksum over invalid fields is refused too. */
  struct raid_sb bad = sb;
  bad.array_size++;
  raid_sb_encode(&bad, buf);
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == -EINVAL);
  bad = sb;
  bad.chunk = 65536 + 512;
  raid_sb_encode(&bad, buf);
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == -EINVAL);
  bad = sb;
  bad.slot = 3;
  raid_sb_encode(&bad, buf);
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == -EINVAL);
}

/* Hot spares: the spare table and a spare's own superblock (bytes 184,
 * 1536..1671; docs/raid-format.md "Hot spares"). */
static void test_superblock_spares(void)
{
  struct raid_sb sb, back;
  memset(&sb, 0, sizeof sb);
  raid_uuid_generate(sb.uuid);
  sb.level = 1; sb.chunk = 65536; sb.nmembers = 2; sb.slot = 0;
  sb.data_offset = MIB; sb.data_size = 8 * 65536;
  sb.array_size = sb.data_size; sb.resync_offset = RAID_NO_OFFSET;
  sb.nspares = 2;
  raid_uuid_generate(sb.spare_uuid[0]);
  raid_uuid_generate(sb.spare_uuid[1]);
  uint8_t buf[RAID_SB_SIZE];
  raid_sb_encode(&sb, buf);
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == 0);
  CU_ASSERT(memcmp(&sb, &back, sizeof sb) == 0);
  /* The table is where the format says, and nothing else moved: a reader
   * that ignores bytes 1536..4091 sees the same superblock. */
  CU_ASSERT(buf[1536] == 2 && memcmp(buf + 1544 + 16, sb.spare_uuid[1],
                                     16) == 0);
  /* A spare's superblock: slot 0xffffffff, its UUID at 184. */
  struct raid_sb sp = sb;
  sp.flags = RAID_SB_SPARE;
  sp.slot = RAID_SPARE_SLOT;
  memcpy(sp.spare_self, sb.spare_uuid[1], 16);
  raid_sb_encode(&sp, buf);
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == 0);
  CU_ASSERT(memcmp(&sp, &back, sizeof sp) == 0);
  CU_ASSERT(vd_get_le32(buf + 48) == UINT32_MAX &&
            memcmp(buf + 184, sp.spare_self, 16) == 0);
  /* Refused: a spare with a slot, a member without one, a dirty spare, a
   * table of more than 8. */
  struct raid_sb bad = sp;
  bad.slot = 1;
  raid_sb_encode(&bad, buf);
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == -EINVAL);
  bad = sb;
  bad.slot = RAID_SPARE_SLOT;
  raid_sb_encode(&bad, buf);
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == -EINVAL);
  bad = sp;
  bad.flags |= RAID_SB_DIRTY;
  raid_sb_encode(&bad, buf);
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == -EINVAL);
  raid_sb_encode(&sb, buf);
  vd_put_le32(buf + 1536, RAID_MAX_SPARES + 1);
  vd_put_le32(buf + 4092, vd_crc32c(0, buf, 4092));
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == -EINVAL);
  /* Bytes 184..199 of a member's superblock are reserved, not read. */
  raid_sb_encode(&sb, buf);
  buf[184] = 1;
  vd_put_le32(buf + 4092, vd_crc32c(0, buf, 4092));
  CU_ASSERT(raid_sb_decode(buf, &back, "t") == 0 && back.spare_self[0] == 0);
}

/* ---- data paths against the model ---- */

static void model_level(int level, unsigned n, uint32_t chunk)
{
  struct tarr t;
  tarr_create(&t, level, n, chunk, 3 * MIB, -1, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 60);
  CU_ASSERT(verify_all(&t) == 0);
  if (level != 0)
    CU_ASSERT(scrub_mismatches(&t, false) == 0);
  tarr_close(&t);
  /* The members hold the documented layout: check them directly. */
  if (level != 1) {
    struct vd_dev *m[8];
    uint64_t doff = 0;
    for (unsigned i = 0; i < n; i++)
      CU_ASSERT_FATAL(vd_open(t.mem[i], "raw", 0, &m[i]) == 0);
    struct raid_sb sb;
    uint8_t sbuf[RAID_SB_SIZE];
    CU_ASSERT_FATAL(vd_pread(m[0], sbuf, RAID_SB_SIZE, RAID_SB_OFFSET) == 0);
    CU_ASSERT_FATAL(raid_sb_decode(sbuf, &sb, "m0") == 0);
    doff = sb.data_offset;
    uint8_t *c = malloc(chunk);
    for (uint64_t x = 0; x < t.size; x += chunk) {
      unsigned mem;
      uint64_t moff;
      if (level == 0) {
        mem = (unsigned)((x / chunk) % n);
        moff = (x / chunk / n) * chunk;
      } else {
        struct raid5_map mp;
        raid5_map(n, chunk, x, &mp);
        mem = mp.member;
        moff = mp.moff;
      }
      CU_ASSERT(vd_pread(m[mem], c, chunk, doff + moff) == 0);
      CU_ASSERT(memcmp(c, t.model + x, chunk) == 0);
    }
    free(c);
    for (unsigned i = 0; i < n; i++)
      vd_close(m[i]);
  }
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_free(&t);
}

static void test_raid0(void) { model_level(0, 2, 16384); model_level(0, 3, 4096); }
static void test_raid1(void) { model_level(1, 2, 16384); model_level(1, 3, 65536); }
static void test_raid5(void)
{
  model_level(5, 3, 16384);
  model_level(5, 4, 4096);
  model_level(5, 5, 65536);
}

/* Every member failed in turn, for each level; reads and writes go on
 * degraded, survive a reopen, and the failed member is never read again. */
static void fail_each(int level, unsigned n)
{
  for (unsigned slot = 0; slot < n; slot++) {
    struct tarr t;
    tarr_create(&t, level, n, 16384, 3 * MIB, -1, 0);
    struct vd_fault *f = tarr_fault(&t, slot);
    CU_ASSERT_FATAL(tarr_open(&t) == 0);
    random_ops(&t, 15);
    struct vd_fault_cfg fc = { .mode = VD_FAULT_FAIL_ALL };
    vd_fault_set(f, &fc);
    if (level == 0) {
      /* No redundancy: the first I/O touching the member fails the array,
       * everything after is EIO, never wrong data. */
      uint8_t b[4096];
      int r = 0;
      for (uint64_t o = 0; o < t.size && r == 0; o += t.chunk)
        r = vd_pread(t.dev, b, sizeof b, o);
      CU_ASSERT(r == -EIO);
      CU_ASSERT(vd_pread(t.dev, b, sizeof b, 0) == -EIO);
      CU_ASSERT(vd_pwrite(t.dev, b, sizeof b, 0, 0) == -EIO);
      vd_close(t.dev);
      t.dev = NULL;
      vd_fault_detach(f);
      tarr_free(&t);
      continue;
    }
    random_ops(&t, 15);
    CU_ASSERT(verify_all(&t) == 0);
    CU_ASSERT(member_state(&t, (int)slot) == VD_RAID_STATE_FAULTY);
    tarr_close(&t);
    /* The failed member comes back healthy-looking: stale, not read. */
    vd_fault_detach(f);
    CU_ASSERT_FATAL(tarr_open(&t) == 0);
    CU_ASSERT(member_state(&t, (int)slot) != VD_RAID_STATE_ACTIVE);
    CU_ASSERT(verify_all(&t) == 0);
    random_ops(&t, 5);
    CU_ASSERT(verify_all(&t) == 0);
    tarr_free(&t);
  }
}

static void test_fail_each_member(void)
{
  fail_each(0, 3);
  fail_each(1, 2);
  fail_each(1, 3);
  fail_each(5, 3);
  fail_each(5, 4);
}

/* A degraded RAID5 read of whole stripes reads each survivor once per
 * stripe, as a healthy one reads each member once: the data chunks the
 * request asks for are also the sources of the lost chunk.  Partial
 * stripes read back right too. */
static void test_degraded_read_once(void)
{
  struct tarr t;
  tarr_create(&t, 5, 4, 16384, 3 * MIB, -1, 0);
  struct vd_fault *f[4];
  for (unsigned i = 0; i < 4; i++)
    f[i] = tarr_fault(&t, i);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  size_t stripe = 3 * 16384;
  CU_ASSERT(mwrite(&t, 0, 8 * stripe, 1) == 0);
  CU_ASSERT_FATAL(vd_raid_fail(t.a, 1) == 0);
  uint64_t before[4];
  for (unsigned i = 0; i < 4; i++)
    before[i] = vd_fault_count(f[i]);
  /* Stripes 0-3 put data, parity and data chunks on member 1. */
  CU_ASSERT(mcheck(&t, 0, 4 * stripe) == 0);
  for (unsigned i = 0; i < 4; i++)
    if (i != 1)
      CU_ASSERT_EQUAL(vd_fault_count(f[i]) - before[i], 4);
  CU_ASSERT(mcheck(&t, 4 * stripe + 5000, 2 * stripe + 777) == 0);
  CU_ASSERT(mcheck(&t, 16384 + 100, 16384) == 0);
  tarr_close(&t);
  for (unsigned i = 0; i < 4; i++)
    vd_fault_detach(f[i]);
  tarr_free(&t);
}

/* Member errors in the middle of a write: the Nth write or read of one
 * member fails (data member, parity member, RMW pre-read). */
static void test_fail_midwrite(void)
{
  for (int kind = 0; kind < 3; kind++) {
    for (unsigned nth = 1; nth <= 3; nth++) {
      struct tarr t;
      tarr_create(&t, 5, 4, 16384, 3 * MIB, -1, 0);
      /* Stripe 0: parity member 3, data members 0, 1, 2. */
      unsigned victim = kind == 1 ? 3 : 1;
      struct vd_fault *f = tarr_fault(&t, victim);
      CU_ASSERT_FATAL(tarr_open(&t) == 0);
      CU_ASSERT(mwrite(&t, 0, 3 * 16384, 1) == 0);  /* full stripe */
      struct vd_fault_cfg fc = { .mode = VD_FAULT_FAIL_NTH, .nth = nth,
                                      .sticky = true,
                                      .reads = kind == 2,
                                      .writes = kind != 2 };
      vd_fault_set(f, &fc);
      /* Small writes to chunk 1 (member 1) of stripe 0: RMW reads old
       * data of member 1 and old parity. */
      for (int i = 0; i < 4; i++)
        CU_ASSERT(mwrite(&t, 16384 + 1000 * (uint64_t)i, 700, 10 + i) == 0);
      random_ops(&t, 10);
      CU_ASSERT(verify_all(&t) == 0);
      CU_ASSERT(member_state(&t, (int)victim) == VD_RAID_STATE_FAULTY);
      tarr_close(&t);
      vd_fault_detach(f);
      CU_ASSERT_FATAL(tarr_open(&t) == 0);
      CU_ASSERT(verify_all(&t) == 0);
      tarr_free(&t);
    }
  }
}

/* A failed write is acknowledged only after the survivors' superblocks
 * record the failure. */
static void test_fail_recorded_before_ack(void)
{
  struct tarr t;
  tarr_create(&t, 5, 3, 16384, 3 * MIB, -1, 0);
  struct vd_fault *f = tarr_fault(&t, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  struct vd_fault_cfg fc = { .mode = VD_FAULT_FAIL_ALL };
  vd_fault_set(f, &fc);
  CU_ASSERT(mwrite(&t, 0, 100000, 5) == 0);
  /* Read member 1's superblock straight from the file, now. */
  struct vd_dev *m;
  uint8_t buf[RAID_SB_SIZE];
  struct raid_sb sb;
  CU_ASSERT_FATAL(vd_open(t.mem[1], "raw", VD_OPEN_NOLOCK, &m) == 0);
  CU_ASSERT(vd_pread(m, buf, RAID_SB_SIZE, RAID_SB_OFFSET) == 0);
  CU_ASSERT(raid_sb_decode(buf, &sb, "m1") == 0);
  CU_ASSERT(sb.role[0].state == RAID_ROLE_FAULTY);
  vd_close(m);
  vd_raid_crash(t.a);     /* even without a clean stop */
  vd_close(t.dev);
  t.dev = NULL;
  vd_fault_detach(f);
  /* Dirty and degraded: refused unless forced. */
  CU_ASSERT(vd_open(t.desc, NULL, VD_OPEN_RDWR, &t.dev) == -EIO);
  t.dev = NULL;
  const char *mem[3] = { t.mem[0], t.mem[1], t.mem[2] };
  CU_ASSERT(vd_raid_assemble(t.desc, mem, 3, true) == 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  CU_ASSERT(member_state(&t, 0) != VD_RAID_STATE_ACTIVE);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_free(&t);
}

/* Member missing at assembly: a clean array starts degraded; a dirty
 * degraded RAID5 refuses unless forced; too few members refuse. */
static void test_missing_member(void)
{
  struct tarr t;
  tarr_create(&t, 5, 3, 16384, 3 * MIB, -1, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 20);
  tarr_close(&t);
  char saved[400];
  snprintf(saved, sizeof saved, "%s.saved", t.mem[2]);
  CU_ASSERT(rename(t.mem[2], saved) == 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);   /* clean: starts degraded */
  CU_ASSERT(member_state(&t, 2) == VD_RAID_STATE_MISSING);
  CU_ASSERT(verify_all(&t) == 0);
  random_ops(&t, 10);
  CU_ASSERT(verify_all(&t) == 0);
  /* Unclean stop while degraded. */
  vd_raid_crash(t.a);
  vd_close(t.dev);
  t.dev = NULL;
  CU_ASSERT(vd_open(t.desc, NULL, VD_OPEN_RDWR, &t.dev) == -EIO);
  CU_ASSERT(strstr(vd_error(), "--force") != NULL);
  t.dev = NULL;
  /* Read-only access still works (nothing is written). */
  CU_ASSERT_FATAL(vd_open(t.desc, NULL, 0, &t.dev) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  vd_close(t.dev);
  t.dev = NULL;
  /* Assemble from the members alone, forced. */
  const char *mem[2] = { t.mem[0], t.mem[1] };
  CU_ASSERT(vd_raid_assemble(t.desc, mem, 2, false) < 0);
  int ar = vd_raid_assemble(t.desc, mem, 2, true);
  if (ar < 0)
    fprintf(stderr, "assemble: %s\n", vd_error());
  CU_ASSERT(ar == 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_close(&t);
  /* Two of three gone: refuse, naming the member. */
  char saved1[400];
  snprintf(saved1, sizeof saved1, "%s.saved", t.mem[1]);
  CU_ASSERT(rename(t.mem[1], saved1) == 0);
  CU_ASSERT(vd_open(t.desc, NULL, VD_OPEN_RDWR, &t.dev) == -EIO);
  CU_ASSERT(strstr(vd_error(), "needs 2 of 3") != NULL);
  t.dev = NULL;
  tarr_free(&t);
}

/* The force of vdtool raid assemble --force is an open flag: it starts a
 * dirty degraded RAID5 for that open only, and reaches no member. */
static void test_open_force(void)
{
  struct tarr t;
  tarr_create(&t, 5, 3, 16384, 3 * MIB, -1, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 20);
  tarr_close(&t);
  char saved[400];
  snprintf(saved, sizeof saved, "%s.saved", t.mem[2]);
  CU_ASSERT(rename(t.mem[2], saved) == 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);   /* clean: starts degraded */
  random_ops(&t, 10);
  vd_raid_crash(t.a);                    /* unclean stop while degraded */
  vd_close(t.dev);
  t.dev = NULL;
  CU_ASSERT(vd_open(t.desc, NULL, VD_OPEN_RDWR, &t.dev) == -EIO);
  t.dev = NULL;
  struct vd_open_args args = { .format = "raid",
                               .flags = VD_OPEN_RDWR | VD_OPEN_FORCE };
  int r = vd_open_opts(t.desc, &args, &t.dev);
  if (r < 0)
    fprintf(stderr, "forced open: %s\n", vd_error());
  CU_ASSERT_FATAL(r == 0);
  t.a = vd_raid_of(t.dev);
  CU_ASSERT(t.a->force);
  CU_ASSERT(member_state(&t, 2) == VD_RAID_STATE_MISSING);
  CU_ASSERT(verify_all(&t) == 0);
  /* Not remembered: crashed dirty and degraded again, an open without
   * the flag refuses as before. */
  random_ops(&t, 10);
  vd_raid_crash(t.a);
  vd_close(t.dev);
  t.dev = NULL;
  CU_ASSERT(vd_open(t.desc, NULL, VD_OPEN_RDWR, &t.dev) == -EIO);
  CU_ASSERT(strstr(vd_error(), "--force") != NULL);
  t.dev = NULL;
  CU_ASSERT_FATAL(vd_open(t.desc, NULL, VD_OPEN_RDWR | VD_OPEN_FORCE,
                          &t.dev) == 0);
  t.a = vd_raid_of(t.dev);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_free(&t);
}

/* An old copy of a member (lower event count) is never read. */
static void test_stale_member(void)
{
  for (int level = 1; level <= 5; level += 4) {
    struct tarr t;
    tarr_create(&t, level, 3, 16384, 3 * MIB, -1, 0);
    CU_ASSERT_FATAL(tarr_open(&t) == 0);
    random_ops(&t, 10);
    tarr_close(&t);
    char cmd[800], old[400];
    snprintf(old, sizeof old, "%s.old", t.mem[1]);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", t.mem[1], old);
    CU_ASSERT_FATAL(system(cmd) == 0);
    CU_ASSERT_FATAL(tarr_open(&t) == 0);
    /* Overwrite everything so any read of the old copy would show. */
    for (uint64_t o = 0; o < t.size; o += 65536)
      CU_ASSERT(mwrite(&t, o, 65536, o + 99) == 0);
    tarr_close(&t);
    CU_ASSERT(rename(old, t.mem[1]) == 0);
    CU_ASSERT_FATAL(tarr_open(&t) == 0);
    CU_ASSERT(member_state(&t, 1) == VD_RAID_STATE_STALE);
    for (int i = 0; i < 20; i++)   /* RAID1 reads spread over members */
      CU_ASSERT(verify_all(&t) == 0);
    tarr_close(&t);
    struct vd_raid_status st;
    CU_ASSERT(vd_raid_examine(t.desc, &st) == 0);
    CU_ASSERT(st.m[1].state == VD_RAID_STATE_FAULTY ||
              st.m[1].state == VD_RAID_STATE_STALE);
    tarr_free(&t);
  }
}

/* Superblock of member SLOT straight from its file. */
static void sb_raw(struct tarr *t, unsigned slot, uint8_t *buf, bool write)
{
  int fd = open(t->mem[slot], write ? O_WRONLY : O_RDONLY);
  CU_ASSERT_FATAL(fd >= 0);
  ssize_t n = write ? pwrite(fd, buf, RAID_SB_SIZE, RAID_SB_OFFSET)
                    : pread(fd, buf, RAID_SB_SIZE, RAID_SB_OFFSET);
  CU_ASSERT(n == RAID_SB_SIZE);
  close(fd);
}

static uint64_t sb_events(struct tarr *t, unsigned slot)
{
  uint8_t buf[RAID_SB_SIZE];
  struct raid_sb sb;
  sb_raw(t, slot, buf, false);
  CU_ASSERT_FATAL(raid_sb_decode(buf, &sb, t->mem[slot]) == 0);
  return sb.events;
}

/* A crash while the superblocks are written (they go to the members in
 * parallel) leaves some members one event behind the others.  As md and
 * mdadm (event margin 1), those are used without --force when the
 * freshest role table names them active: refusing them turned a kill -9
 * right after a spare takeover into an array that would not start.
 * Both ways round: one member behind, and all but one behind. */
static void test_sb_write_interrupted(void)
{
  for (int level = 1; level <= 5; level += 4)
    for (unsigned ahead = 1; ahead <= 2; ahead++) {
      struct tarr t;
      tarr_create(&t, level, 3, 16384, 3 * MIB, -1, 0);
      CU_ASSERT_FATAL(tarr_open(&t) == 0);
      random_ops(&t, 10);              /* dirty: written superblocks */
      uint8_t old[3][RAID_SB_SIZE];
      for (unsigned i = 0; i < 3; i++)
        sb_raw(&t, i, old[i], false);
      CU_ASSERT(raid_sb_update(t.a) == 0);       /* events + 1 */
      random_ops(&t, 10);              /* no superblock write: dirty */
      vd_raid_crash(t.a);
      vd_close(t.dev);
      t.dev = NULL;
      /* The crash cut the last superblock write: only AHEAD members got
       * it. */
      for (unsigned i = ahead; i < 3; i++)
        sb_raw(&t, i, old[i], true);
      CU_ASSERT(sb_events(&t, 0) == sb_events(&t, 2) + 1);
      /* vdtool check agrees: no stale member (the unclean stop may leave
       * parity to resync: leaks at worst). */
      struct vd_check_report rep = { .message = NULL };
      CU_ASSERT(vd_check(t.desc, NULL, 0, &rep) == 0);
      CU_ASSERT(rep.corruptions == 0 && rep.check_errors == 0);
      CU_ASSERT_FATAL(tarr_open(&t) == 0);
      for (int i = 0; i < 3; i++)
        CU_ASSERT(member_state(&t, i) == VD_RAID_STATE_ACTIVE);
      for (int i = 0; i < 10; i++)   /* RAID1 reads spread over members */
        CU_ASSERT(verify_all(&t) == 0);
      /* The open brought every member level. */
      uint64_t e = sb_events(&t, 0);
      CU_ASSERT(sb_events(&t, 1) == e && sb_events(&t, 2) == e);
      tarr_close(&t);
      tarr_free(&t);
    }
}

struct bg_write {
  struct tarr *t;
  uint64_t off;
  bool flush;
  int ret;
  _Atomic bool done;
};

static void *bg_write_fn(void *p)
{
  struct bg_write *w = p;
  w->ret = mwrite(w->t, w->off, 65536, w->off + 7);
  if (w->ret == 0 && w->flush)
    w->ret = vd_flush(w->t->dev);
  atomic_store(&w->done, true);
  return NULL;
}

/* A member fails in one thread while another writes and flushes.  The
 * second thread's write skips the failed member, so its flush must not
 * return before the survivors' superblocks record the failure: after a
 * crash the member would otherwise be taken back as active (every
 * superblock still naming it so) with data that misses a write
 * acknowledged as durable.  The superblock write to member 1 is held to
 * keep the recording in progress. */
static void test_flush_waits_for_failure_record(void)
{
  for (int level = 1; level <= 5; level += 4) {
    struct tarr t;
    tarr_create(&t, level, 3, 16384, 3 * MIB, -1, 0);
    struct vd_fault *f0 = tarr_fault(&t, 0);
    struct vd_fault *f1 = tarr_fault(&t, 1);
    CU_ASSERT_FATAL(tarr_open(&t) == 0);
    random_ops(&t, 5);
    struct vd_fault_cfg hold = { .mode = VD_FAULT_HOLD_RANGE, .writes = true,
                                 .start = RAID_SB_OFFSET,
                                 .end = RAID_SB_OFFSET + RAID_SB_SIZE };
    vd_fault_set(f1, &hold);
    struct vd_fault_cfg gone = { .mode = VD_FAULT_FAIL_ALL };
    vd_fault_set(f0, &gone);
    struct bg_write a = { .t = &t, .off = 0 };
    struct bg_write b = { .t = &t, .off = 1 * MIB, .flush = true };
    pthread_t ta, tb;
    CU_ASSERT_FATAL(pthread_create(&ta, NULL, bg_write_fn, &a) == 0);
    for (int i = 0; i < 10000 && vd_fault_held(f1) == 0; i++)
      usleep(1000);
    CU_ASSERT_FATAL(vd_fault_held(f1) == 1);  /* recording the failure */
    CU_ASSERT_FATAL(pthread_create(&tb, NULL, bg_write_fn, &b) == 0);
    /* B's write goes ahead degraded; its flush waits for the record.
     * (Without the wait it returns within microseconds.) */
    usleep(300000);
    CU_ASSERT(!atomic_load(&b.done));
    struct vd_fault_cfg none = { .mode = VD_FAULT_NONE };
    vd_fault_set(f1, &none);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CU_ASSERT(a.ret == 0);
    CU_ASSERT(b.ret == 0);
    for (unsigned i = 1; i < 3; i++) {
      uint8_t buf[RAID_SB_SIZE];
      struct raid_sb sb;
      sb_raw(&t, i, buf, false);
      CU_ASSERT(raid_sb_decode(buf, &sb, t.mem[i]) == 0);
      CU_ASSERT(sb.role[0].state == RAID_ROLE_FAULTY);
    }
    CU_ASSERT(verify_all(&t) == 0);
    tarr_close(&t);
    vd_fault_detach(f0);
    vd_fault_detach(f1);
    tarr_free(&t);
  }
}

/* Second failure on RAID5: EIO, never wrong data, no further writes. */
static void test_two_failures(void)
{
  struct tarr t;
  tarr_create(&t, 5, 3, 16384, 3 * MIB, -1, 0);
  struct vd_fault *f0 = tarr_fault(&t, 0);
  struct vd_fault *f1 = tarr_fault(&t, 1);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 10);
  struct vd_fault_cfg fc = { .mode = VD_FAULT_FAIL_ALL };
  vd_fault_set(f0, &fc);
  random_ops(&t, 5);
  CU_ASSERT(verify_all(&t) == 0);
  vd_fault_set(f1, &fc);
  uint64_t before = vd_fault_count(f1);
  uint8_t b[65536];
  int eio = 0, wrong = 0;
  for (uint64_t o = 0; o < t.size; o += sizeof b) {
    int r = vd_pread(t.dev, b, sizeof b, o);
    if (r == -EIO)
      eio++;
    else if (r == 0 && memcmp(b, t.model + o, sizeof b))
      wrong++;
  }
  CU_ASSERT(eio > 0);
  CU_ASSERT(wrong == 0);
  /* Survivor (member 2) must not be written any more. */
  struct stat st0, st1;
  CU_ASSERT(stat(t.mem[2], &st0) == 0);
  char cmd[800];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s.copy'", t.mem[2], t.mem[2]);
  CU_ASSERT(system(cmd) == 0);
  CU_ASSERT(vd_pwrite(t.dev, b, sizeof b, 0, 0) == -EIO);
  CU_ASSERT(vd_flush(t.dev) == -EIO);
  CU_ASSERT(vd_pread(t.dev, b, 512, 0) == -EIO);
  CU_ASSERT(vd_fault_count(f1) >= before);
  vd_close(t.dev);
  t.dev = NULL;
  snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s.copy'", t.mem[2], t.mem[2]);
  CU_ASSERT(system(cmd) == 0);
  (void)st1;
  vd_fault_detach(f0);
  vd_fault_detach(f1);
  tarr_free(&t);
}

/* Power cut during partial-stripe writes, then a member lost: every byte
 * flushed before the cut (and not rewritten after) is still there. */
static void powercut_case(int policy, unsigned lost, unsigned keep, bool
                          restart_first)
{
  struct tarr t;
  tarr_create(&t, 5, 4, 16384, 3 * MIB, policy, 256 * 1024);
  struct vd_fault *f[4];
  for (unsigned i = 0; i < 4; i++)
    f[i] = tarr_fault(&t, i);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  for (uint64_t o = 0; o < t.size; o += 3 * 16384)
    CU_ASSERT(mwrite(&t, o, 3 * 16384, o + 1) == 0);
  CU_ASSERT(vd_flush(t.dev) == 0);
  for (unsigned i = 0; i < 4; i++)
    vd_fault_powercut_arm(f[i], true);
  /* Unflushed partial-stripe writes; remember what they touched. */
  uint8_t *touched = calloc(1, t.size);
  for (int i = 0; i < 40; i++) {
    uint64_t off = rnd() % (t.size - 20000);
    size_t len = 1 + rnd() % 20000;
    if (rnd() % 4 == 0) {
      off = off / 16384 * 16384;
      len = 16384;
    }
    CU_ASSERT(mwrite(&t, off, len, rnd()) == 0);
    memset(touched + off, 1, len);
  }
  vd_raid_crash(t.a);
  for (unsigned i = 0; i < 4; i++)
    CU_ASSERT(vd_fault_powercut(f[i], keep, 7 + i) == 0);
  vd_close(t.dev);
  t.dev = NULL;
  for (unsigned i = 0; i < 4; i++)
    vd_fault_detach(f[i]);

  char saved[400];
  snprintf(saved, sizeof saved, "%s.gone", t.mem[lost]);
  if (restart_first) {
    /* Restart with every member (bitmap resync), then lose one. */
    CU_ASSERT_FATAL(tarr_open(&t) == 0);
    CU_ASSERT(scrub_mismatches(&t, false) == 0);
    tarr_close(&t);
    CU_ASSERT(rename(t.mem[lost], saved) == 0);
    CU_ASSERT_FATAL(tarr_open(&t) == 0);
  } else {
    /* Lost at the same time: dirty + degraded, started by force. */
    CU_ASSERT(rename(t.mem[lost], saved) == 0);
    CU_ASSERT(vd_open(t.desc, NULL, VD_OPEN_RDWR, &t.dev) < 0);
    t.dev = NULL;
    const char *mem[3];
    unsigned k = 0;
    for (unsigned i = 0; i < 4; i++)
      if (i != lost)
        mem[k++] = t.mem[i];
    CU_ASSERT_FATAL(vd_raid_assemble(t.desc, mem, 3, true) == 0);
    CU_ASSERT_FATAL(tarr_open(&t) == 0);
  }
  uint8_t *b = malloc(t.size);
  CU_ASSERT_FATAL(vd_pread(t.dev, b, t.size, 0) == 0);
  uint64_t lostbytes = 0, undone = 0;
  for (uint64_t i = 0; i < t.size; i++) {
    if (!touched[i] && b[i] != t.model[i])
      lostbytes++;
    if (touched[i] && b[i] != t.model[i])
      undone++;
  }
  if (lostbytes)
    fprintf(stderr, "policy %d lost %u keep %u restart %d: %llu flushed "
            "bytes lost\n", policy, lost, keep, restart_first,
            (unsigned long long)lostbytes);
  CU_ASSERT(lostbytes == 0);
  /* The cut took effect: with nothing kept, unflushed writes are gone. */
  if (keep == 0)
    CU_ASSERT(undone > 0);
  free(b);
  free(touched);
  tarr_free(&t);
}

static void test_powercut(void)
{
  for (unsigned lost = 0; lost < 4; lost++) {
    powercut_case(RAID_POLICY_PPL, lost, 0, true);
    powercut_case(RAID_POLICY_PPL, lost, 50, true);
    powercut_case(RAID_POLICY_PPL, lost, 50, false);
    powercut_case(RAID_POLICY_PPL, lost, 30, false);
    powercut_case(RAID_POLICY_BITMAP, lost, 50, true);
  }
}

/* ---- power cuts with partial, full-row and full-stripe writes ----
 * A cut run keeps the data as of the last acknowledged flush and every
 * write since (pending).  After a cut and the loss of a member, each byte
 * of the array must be its flushed value or the value of a pending write
 * covering it.  The one exception is PPL's documented limit (md's too): a
 * byte being written (pending) to the member that is lost in the same
 * crash may read back as anything.  A byte no pending write covers must
 * be exactly its flushed value. */
struct pend {
  uint64_t off;
  size_t len;
  uint8_t *data;
};

struct cutrun {
  struct tarr t;
  struct vd_fault *f[8];
  uint8_t *flushed;            /* array contents at the last flush */
  struct pend *p;
  size_t np, cap;
};

static void cr_start(struct cutrun *c, unsigned n, uint32_t chunk,
                     uint64_t msize, int policy)
{
  memset(c, 0, sizeof *c);
  tarr_create(&c->t, 5, n, chunk, msize, policy, 64 * 1024);
  for (unsigned i = 0; i < n; i++)
    c->f[i] = tarr_fault(&c->t, i);
  CU_ASSERT_FATAL(tarr_open(&c->t) == 0);
  c->flushed = calloc(1, c->t.size);
  CU_ASSERT_FATAL(c->flushed != NULL);
}

static void cr_pend_clear(struct cutrun *c)
{
  for (size_t i = 0; i < c->np; i++)
    free(c->p[i].data);
  c->np = 0;
}

static void cr_flush(struct cutrun *c)
{
  CU_ASSERT(vd_flush(c->t.dev) == 0);
  memcpy(c->flushed, c->t.model, c->t.size);
  cr_pend_clear(c);
}

static void cr_arm(struct cutrun *c)
{
  for (unsigned i = 0; i < c->t.n; i++)
    vd_fault_powercut_arm(c->f[i], true);
}

static void cr_write(struct cutrun *c, uint64_t off, size_t len, uint64_t seed)
{
  CU_ASSERT_FATAL(mwrite(&c->t, off, len, seed) == 0);
  if (c->np == c->cap) {
    c->cap = c->cap ? 2 * c->cap : 64;
    c->p = realloc(c->p, c->cap * sizeof *c->p);
    CU_ASSERT_FATAL(c->p != NULL);
  }
  struct pend *p = &c->p[c->np++];
  p->off = off;
  p->len = len;
  p->data = malloc(len);
  CU_ASSERT_FATAL(p->data != NULL);
  memcpy(p->data, c->t.model + off, len);
}

/* Kill -9 and power cut: every member loses its unflushed writes the way
 * FLAGS says (VD_FAULT_CUT_*), keeping KEEP percent of them. */
static void cr_cut(struct cutrun *c, unsigned keep, unsigned flags,
                   uint64_t seed)
{
  vd_raid_crash(c->t.a);
  for (unsigned i = 0; i < c->t.n; i++)
    CU_ASSERT(vd_fault_powercut_ex(c->f[i], keep, flags,
                                        seed * 31 + i) == 0);
  vd_close(c->t.dev);
  c->t.dev = NULL;
  c->t.a = NULL;
  for (unsigned i = 0; i < c->t.n; i++) {
    vd_fault_detach(c->f[i]);
    c->f[i] = NULL;
  }
}

static void cr_free(struct cutrun *c)
{
  cr_pend_clear(c);
  free(c->p);
  free(c->flushed);
  for (unsigned i = 0; i < c->t.n; i++)
    if (c->f[i])
      vd_fault_detach(c->f[i]);
  tarr_free(&c->t);
}

/* Save or restore the members and descriptor after a cut (to lose each
 * member in turn from the same crashed state). */
static void cr_files(struct cutrun *c, bool save)
{
  char cmd[2048];
  int k = snprintf(cmd, sizeof cmd, "cd '%s' && ", c->t.dir);
  for (unsigned i = 0; i < c->t.n; i++)
    k += snprintf(cmd + k, sizeof cmd - (size_t)k, save
                  ? "cp m%u.img m%u.cut && " : "cp m%u.cut m%u.img && ", i, i);
  snprintf(cmd + k, sizeof cmd - (size_t)k, save
           ? "cp array.vdraid array.cut" : "cp array.cut array.vdraid");
  CU_ASSERT_FATAL(system(cmd) == 0);
}

struct cr_result {
  uint64_t flushed_lost;       /* bytes no pending write covers, changed */
  uint64_t never_written;      /* covered, but neither flushed nor written */
  uint64_t inflight_lost;      /* allowed: in flight on the lost member */
  uint64_t undone;             /* differ from the last value written: a
                                  cut keeping nothing must undo some */
};

/* Read the whole array and judge every byte.  LOST: the member lost in
 * the same crash, or -1 (none, or lost only after a consistent restart:
 * then no exception applies). */
static void cr_judge(struct cutrun *c, int lost, struct cr_result *res)
{
  memset(res, 0, sizeof *res);
  struct tarr *t = &c->t;
  uint8_t *b = malloc(t->size);
  CU_ASSERT_FATAL(b != NULL);
  int r = vd_pread(t->dev, b, t->size, 0);
  if (r < 0)
    fprintf(stderr, "read: %s\n", vd_error());
  CU_ASSERT_FATAL(r == 0);
  for (uint64_t i = 0; i < t->size; i++) {
    res->undone += b[i] != t->model[i];
    if (b[i] == c->flushed[i])
      continue;
    bool covered = false, match = false;
    for (size_t k = 0; k < c->np && !match; k++) {
      const struct pend *p = &c->p[k];
      if (i >= p->off && i < p->off + p->len) {
        covered = true;
        match = p->data[i - p->off] == b[i];
      }
    }
    if (match)
      continue;
    if (!covered) {
      res->flushed_lost++;
      continue;
    }
    struct raid5_map m;
    raid5_map(t->n, t->chunk, i, &m);
    if (lost >= 0 && m.member == (unsigned)lost)
      res->inflight_lost++;
    else
      res->never_written++;
  }
  free(b);
}

/* vdtool check's judgement of the array at DESC (closed). */
struct chk_seen {
  uint64_t stripes[64];
  unsigned n;
  bool other;                  /* a message not about a stripe */
};

static void chk_note(void *opaque, const char *msg)
{
  struct chk_seen *cs = opaque;
  unsigned long long s;
  if (sscanf(msg, "stripe %llu ", &s) == 1) {
    if (cs->n < 64)
      cs->stripes[cs->n++] = s;
  } else {
    cs->other = true;
    fprintf(stderr, "check: %s\n", msg);
  }
}

/* Right after a cut, all members present: check finds at worst leaks
 * (parity to resync), and only in stripes with unflushed writes. */
static unsigned cr_check_after_cut(struct cutrun *c)
{
  struct chk_seen cs = { .n = 0 };
  struct vd_check_report rep = { .message = chk_note, .opaque = &cs };
  int r = vd_check(c->t.desc, NULL, 0, &rep);
  unsigned bad = 0;
  if (r < 0 || rep.corruptions || rep.check_errors || cs.other) {
    fprintf(stderr, "check after the cut: r %d, %llu corruptions, %llu "
            "check errors: %s\n", r, (unsigned long long)rep.corruptions,
            (unsigned long long)rep.check_errors, r < 0 ? vd_error() : "");
    bad++;
  }
  if (getenv("RAID_CUT_SEED"))
    fprintf(stderr, "check after the cut: %llu leaks (stripes to resync)\n",
            (unsigned long long)rep.leaks);
  uint64_t sb = (uint64_t)c->t.chunk * (c->t.n - 1);
  for (unsigned i = 0; i < cs.n; i++) {
    bool pending = false;
    for (size_t k = 0; k < c->np && !pending; k++)
      pending = c->p[k].off < (cs.stripes[i] + 1) * sb &&
                c->p[k].off + c->p[k].len > cs.stripes[i] * sb;
    if (!pending) {
      fprintf(stderr, "check after the cut: stripe %llu inconsistent "
              "without an unflushed write\n",
              (unsigned long long)cs.stripes[i]);
      bad++;
    }
  }
  return bad;
}

static bool check_clean(const char *desc)
{
  struct chk_seen cs = { .n = 0 };
  struct vd_check_report rep = { .message = chk_note, .opaque = &cs };
  int r = vd_check(desc, NULL, 0, &rep);
  return r == 0 && !rep.corruptions && !rep.leaks && !rep.check_errors;
}

/* How the array goes on after a cut: LOSE_AT_CUT, the member is lost
 * with the crash and the array started by force (PPL replay); LOSE_LATER,
 * restarted with every member first (bitmap resync), lost afterwards;
 * LOSE_READ_ONLY, lost with the crash and the array only opened read-only
 * (nothing replayed on disk: reads must apply the log themselves). */
enum { LOSE_AT_CUT, LOSE_LATER, LOSE_READ_ONLY, LOSE_MODES };
static const char *const lose_name[] = { "at the cut", "after a restart",
                                         "at the cut, read-only open" };

/* After a cut: lose LOST as MODE says, then judge. */
static void cr_lose(struct cutrun *c, unsigned lost, int mode,
                    struct cr_result *res)
{
  struct tarr *t = &c->t;
  char saved[400];
  snprintf(saved, sizeof saved, "%s.gone", t->mem[lost]);
  if (mode == LOSE_LATER) {
    CU_ASSERT_FATAL(tarr_open(t) == 0);
    CU_ASSERT(scrub_mismatches(t, false) == 0);
    tarr_close(t);
    CU_ASSERT(check_clean(t->desc));
    CU_ASSERT(rename(t->mem[lost], saved) == 0);
    CU_ASSERT_FATAL(tarr_open(t) == 0);
  } else if (mode == LOSE_READ_ONLY) {
    CU_ASSERT(rename(t->mem[lost], saved) == 0);
    int r = vd_open(t->desc, NULL, 0, &t->dev);
    if (r < 0)
      fprintf(stderr, "read-only open: %s\n", vd_error());
    CU_ASSERT_FATAL(r == 0);
    t->a = vd_raid_of(t->dev);
  } else {
    CU_ASSERT(rename(t->mem[lost], saved) == 0);
    const char *mem[8];
    unsigned k = 0;
    for (unsigned i = 0; i < t->n; i++)
      if (i != lost)
        mem[k++] = t->mem[i];
    int r = vd_raid_assemble(t->desc, mem, k, true);
    if (r < 0)
      fprintf(stderr, "assemble: %s\n", vd_error());
    CU_ASSERT_FATAL(r == 0);
    CU_ASSERT_FATAL(tarr_open(t) == 0);
  }
  cr_judge(c, mode == LOSE_LATER ? -1 : (int)lost, res);
  tarr_close(t);
  CU_ASSERT(rename(saved, t->mem[lost]) == 0);
}

/* Issue 10 item 2, as reported: 3 members, 16 KiB chunks, data flushed;
 * a partial-stripe write, then [8K,28K) (rows [8K,12K) of stripe 0 are a
 * full row), no flush; power cut; lose a member.  Before the fix the
 * full-row segment wiped the stripe's log entry without a flush and the
 * next segment reused the slot at once, so the flushed bytes of chunk 0
 * rows [0,8K) reconstructed from a half-written parity. */
static void test_powercut_full_row(void)
{
  static const unsigned keeps[] = { 0, 30, 70, 100 };
  static const unsigned flags[] = {
    0, VD_FAULT_CUT_REORDER, VD_FAULT_CUT_TEAR,
    VD_FAULT_CUT_REORDER | VD_FAULT_CUT_TEAR };
  unsigned bad = 0;
  for (unsigned ki = 0; ki < 4; ki++)
    for (unsigned fi = 0; fi < 4; fi++)
      for (unsigned seed = 1; seed <= 3; seed++) {
        struct cutrun c;
        cr_start(&c, 3, 16384, 2 * MIB, RAID_POLICY_PPL);
        for (uint64_t o = 0; o < c.t.size; o += 32768)
          cr_write(&c, o, 32768, o + 11);
        cr_flush(&c);
        cr_arm(&c);
        cr_write(&c, 20 * 1024, 2048, 101);        /* partial, chunk 1 */
        cr_write(&c, 8 * 1024, 20 * 1024, 102);    /* has a full row */
        cr_cut(&c, keeps[ki], flags[fi], seed);
        cr_files(&c, true);
        for (unsigned lost = 0; lost < 3; lost++)
          for (int mode = 0; mode < LOSE_MODES; mode++) {
            struct cr_result res;
            cr_files(&c, false);
            cr_lose(&c, lost, mode, &res);
            /* With nothing kept the cut must undo the two writes:
             * a cut that did nothing would pass the rest unseen. */
            bool no_cut = keeps[ki] == 0 && res.undone == 0;
            if (res.flushed_lost || res.never_written || no_cut) {
              fprintf(stderr, "full row: keep %u flags %u seed %u member %u "
                      "lost %s: %llu flushed bytes lost, %llu never "
                      "written%s\n", keeps[ki], flags[fi], seed, lost,
                      lose_name[mode],
                      (unsigned long long)res.flushed_lost,
                      (unsigned long long)res.never_written,
                      no_cut ? ", the cut undid nothing" : "");
              bad++;
            }
          }
        cr_free(&c);
      }
  CU_ASSERT(bad == 0);
}

/* One random write for the power-cut rounds: full rows (the shape of
 * issue 10's reproducer) and full stripes are common. */
static void cr_random_write(struct cutrun *c)
{
  struct tarr *t = &c->t;
  uint64_t C = t->chunk, nd = t->n - 1, sb = C * nd;
  uint64_t nstripes = t->size / sb, s = rnd() % nstripes;
  uint64_t off, len;
  switch (rnd() % 6) {
  case 0:
  case 1: {   /* full rows [r0, r1) with partial rows around them */
    uint64_t r0 = rnd() % C, r1 = 1 + rnd() % C;
    if (rnd() % 2) {
      r0 = r0 / 512 * 512;
      r1 = (r1 + 511) / 512 * 512;
    }
    off = s * sb + r0;
    len = (nd - 1) * C + r1 - r0;
    break;
  }
  case 2:     /* full stripe(s) */
    off = s * sb;
    len = sb * (1 + rnd() % 2);
    break;
  case 3:     /* small partial */
    off = s * sb + rnd() % sb;
    len = 1 + rnd() % 6000;
    break;
  case 4:     /* one chunk */
    off = s * sb + (rnd() % nd) * C;
    len = C;
    break;
  default:    /* anything up to three stripes */
    off = rnd() % t->size;
    len = 1 + rnd() % (3 * sb);
    break;
  }
  if (off >= t->size)
    off = t->size - 1;
  if (len > t->size - off)
    len = t->size - off;
  cr_write(c, off, (size_t)len, rnd());
}

/* One seeded round: random writes and flushes on a random geometry, a
 * power cut of a random kind, then every member lost in turn at the cut
 * and one after a restart.  Returns the number of failed judgements. */
static unsigned powercut_round(uint64_t seed, bool verbose)
{
  rng_state = seed * 0x9E3779B97F4A7C15ull + 12345;
  unsigned n = 3 + (unsigned)(rnd() % 3);
  uint32_t chunk = 4096u << (rnd() % 3);
  static const unsigned keeps[] = { 0, 25, 50, 75, 100 };
  unsigned keep = keeps[rnd() % 5];
  unsigned flags = (unsigned)(rnd() % 4);
  struct cutrun c;
  cr_start(&c, n, chunk, 2 * MIB, RAID_POLICY_PPL);
  cr_arm(&c);
  unsigned nops = 10 + (unsigned)(rnd() % 40), flushes = 0;
  for (unsigned i = 0; i < nops; i++) {
    cr_random_write(&c);
    if (rnd() % 6 == 0) {
      cr_flush(&c);
      flushes++;
    }
  }
  /* Pending writes that change something (random data over flushed). */
  bool pending = false;
  for (size_t k = 0; k < c.np && !pending; k++)
    pending = memcmp(c.p[k].data, c.flushed + c.p[k].off, c.p[k].len) != 0;
  cr_cut(&c, keep, flags, seed);
  unsigned bad = cr_check_after_cut(&c);
  if (bad)
    fprintf(stderr, "power-cut round seed %llu: check found more than "
            "leaks\n", (unsigned long long)seed);
  cr_files(&c, true);
  unsigned late = (unsigned)(rnd() % n), ro = (unsigned)(rnd() % n);
  for (unsigned lost = 0; lost <= n + 1; lost++) {
    int mode = lost < n ? LOSE_AT_CUT : lost == n ? LOSE_LATER
                                                  : LOSE_READ_ONLY;
    unsigned who = lost < n ? lost : lost == n ? late : ro;
    struct cr_result res;
    cr_files(&c, false);
    cr_lose(&c, who, mode, &res);
    /* Writes pending at the cut and nothing kept: some must be undone
     * (a cut that did nothing would pass the rest unseen). */
    bool no_cut = keep == 0 && pending && res.undone == 0;
    if (verbose || res.flushed_lost || res.never_written || no_cut)
      fprintf(stderr, "power-cut round seed %llu (%u members, chunk %u, %u "
              "writes, %u flushes, keep %u%%, flags %u): member %u lost %s: "
              "%llu flushed bytes lost, %llu never written, %llu in flight "
              "on the lost member, %llu undone\n", (unsigned long long)seed,
              n, chunk, nops, flushes, keep, flags, who, lose_name[mode],
              (unsigned long long)res.flushed_lost,
              (unsigned long long)res.never_written,
              (unsigned long long)res.inflight_lost,
              (unsigned long long)res.undone);
    if (res.flushed_lost || res.never_written || no_cut)
      bad++;
  }
  cr_free(&c);
  return bad;
}

/* Many seeded rounds (RAID_CUT_ROUNDS, default 40; RAID_CUT_SEED=N runs
 * round N alone, verbosely).  Each failure prints its seed. */
static void test_powercut_random(void)
{
  const char *one = getenv("RAID_CUT_SEED");
  const char *nr = getenv("RAID_CUT_ROUNDS");
  unsigned rounds = nr ? (unsigned)strtoul(nr, NULL, 10) : 40;
  unsigned bad = 0, badrounds = 0;
  if (one) {
    bad = powercut_round(strtoull(one, NULL, 10), true);
  } else {
    for (unsigned i = 1; i <= rounds; i++) {
      unsigned b = powercut_round(i, false);
      bad += b;
      badrounds += b > 0;
    }
    if (badrounds)
      fprintf(stderr, "%u of %u power-cut rounds lost data\n", badrounds,
              rounds);
  }
  CU_ASSERT(bad == 0);
}

/* Bitmap-driven resync: after an unclean stop only dirty regions are
 * resynced (a parity error planted in a clean region stays visible). */
static void test_bitmap_resync(void)
{
  struct tarr t;
  tarr_create(&t, 5, 3, 16384, 3 * MIB, RAID_POLICY_BITMAP, 256 * 1024);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  CU_ASSERT(vd_flush(t.dev) == 0);
  CU_ASSERT(mwrite(&t, 0, 1000, 3) == 0);   /* region 0 (stripe 0) dirty */
  struct vd_raid_status st;
  CU_ASSERT(vd_raid_status(t.a, &st) == 0);
  CU_ASSERT(st.bitmap_dirty_regions == 1);
  vd_raid_crash(t.a);
  vd_close(t.dev);
  t.dev = NULL;
  /* Plant bad parity in stripe 0 (dirty region) and stripe 40 (clean:
   * member offset 40*16K = 640K, region 2).  Parity of stripe s is on
   * member 2 - s % 3. */
  uint64_t doff = 0;
  {
    struct vd_dev *m;
    uint8_t sbuf[RAID_SB_SIZE];
    struct raid_sb sb;
    CU_ASSERT_FATAL(vd_open(t.mem[0], "raw", 0, &m) == 0);
    CU_ASSERT(vd_pread(m, sbuf, RAID_SB_SIZE, RAID_SB_OFFSET) == 0);
    CU_ASSERT(raid_sb_decode(sbuf, &sb, "m0") == 0);
    CU_ASSERT(sb.flags & RAID_SB_DIRTY);
    doff = sb.data_offset;
    vd_close(m);
  }
  CU_ASSERT(vd_fault_corrupt(t.mem[2], doff + 10, 1) == 0);
  CU_ASSERT(vd_fault_corrupt(t.mem[2 - 40 % 3], doff + 40 * 16384 + 5,
                                  1) == 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  struct vd_raid_scrub_report rep = { .mismatch = note_mismatch };
  nnoted = 0;
  CU_ASSERT(vd_raid_scrub(t.a, false, &rep, NULL, NULL) == 0);
  CU_ASSERT(rep.mismatches == 1 && nnoted == 1 && noted[0] == 40);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_free(&t);
}

/* Bit rot: scrub names the stripe, repair fixes parity, next scrub clean. */
static void test_bitrot(void)
{
  struct tarr t;
  tarr_create(&t, 5, 3, 16384, 3 * MIB, -1, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 20);
  tarr_close(&t);
  struct vd_dev *m;
  uint8_t sbuf[RAID_SB_SIZE];
  struct raid_sb sb;
  CU_ASSERT_FATAL(vd_open(t.mem[0], "raw", 0, &m) == 0);
  CU_ASSERT(vd_pread(m, sbuf, RAID_SB_SIZE, RAID_SB_OFFSET) == 0);
  CU_ASSERT(raid_sb_decode(sbuf, &sb, "m0") == 0);
  vd_close(m);
  /* Stripe 7's parity lives on member 2 - 7 % 3 = 1. */
  CU_ASSERT(vd_fault_corrupt(t.mem[1], sb.data_offset + 7 * 16384 + 123,
                                  3) == 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  struct vd_raid_scrub_report rep = { .mismatch = note_mismatch };
  nnoted = 0;
  CU_ASSERT(vd_raid_scrub(t.a, false, &rep, NULL, NULL) == 0);
  CU_ASSERT(rep.mismatches == 1 && nnoted == 1 && noted[0] == 7);
  CU_ASSERT(scrub_mismatches(&t, true) == 1);
  CU_ASSERT(scrub_mismatches(&t, false) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  /* Parity is right again: losing a data member of stripe 7 reads back
   * the right data. */
  CU_ASSERT(vd_raid_fail(t.a, 0) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_free(&t);
}

/* Online rebuild under concurrent checksummed I/O (each thread owns a
 * region of the array and checks its reads against the model). */
struct worker {
  struct tarr *t;
  uint64_t lo, hi;
  _Atomic bool *stop;
  unsigned long bad, ops;
  uint64_t seed;
};

static void *worker_main(void *opaque)
{
  struct worker *w = opaque;
  uint64_t x = w->seed;
  uint8_t *b = malloc(65536);
  while (!atomic_load(w->stop)) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    size_t len = 1 + x % 65536;
    if (len > w->hi - w->lo)
      len = (size_t)(w->hi - w->lo);
    uint64_t off = w->lo + (x >> 20) % (w->hi - w->lo - len + 1);
    if (x & 1) {
      fill(b, len, x);
      if (vd_pwrite(w->t->dev, b, len, off, 0) == 0)
        memcpy(w->t->model + off, b, len);
      else
        w->bad++;
    } else {
      if (vd_pread(w->t->dev, b, len, off) != 0 ||
          memcmp(b, w->t->model + off, len) != 0)
        w->bad++;
    }
    w->ops++;
  }
  free(b);
  return NULL;
}

static void rebuild_online(int level)
{
  struct tarr t;
  tarr_create(&t, level, 3, 16384, 4 * MIB, -1, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 10);
  CU_ASSERT(vd_raid_fail(t.a, 1) == 0);
  char newp[400];
  snprintf(newp, sizeof newp, "%s/new.img", t.dir);
  struct vd_create_args ca = { .size = 4 * MIB };
  CU_ASSERT_FATAL(vd_create(newp, "raw", &ca) == 0);
  _Atomic bool stop = false;
  struct worker w[3];
  pthread_t th[3];
  for (int i = 0; i < 3; i++) {
    w[i] = (struct worker){ .t = &t, .lo = t.size / 3 * i,
                            .hi = t.size / 3 * (i + 1), .stop = &stop,
                            .seed = 1234567 + i };
    pthread_create(&th[i], NULL, worker_main, &w[i]);
  }
  /* Rate-limited so the workers overlap the whole rebuild. */
  int r = vd_raid_replace(t.a, 1, newp, "raw", 8 * MIB, NULL, NULL);
  atomic_store(&stop, true);
  for (int i = 0; i < 3; i++) {
    pthread_join(th[i], NULL);
    CU_ASSERT(w[i].bad == 0);
    CU_ASSERT(w[i].ops > 0);
  }
  CU_ASSERT(r == 0);
  CU_ASSERT(member_state(&t, 1) == VD_RAID_STATE_ACTIVE);
  CU_ASSERT(scrub_mismatches(&t, false) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  /* The rebuilt member carries the data: lose another one. */
  CU_ASSERT(vd_raid_fail(t.a, 0) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_close(&t);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_free(&t);
}

static void test_rebuild_online(void)
{
  rebuild_online(5);
  rebuild_online(1);
}

/* A rebuild whose steps span several blocks (64 KiB chunks: 32 rows, 2 MiB
 * of each member per step, sixteen 128 KiB blocks shared out to the lanes)
 * rebuilds every byte: the data reads back, parity matches, and the rebuilt
 * member serves reconstruction once another one fails. */
static void test_rebuild_pipeline(void)
{
  struct tarr t;
  tarr_create(&t, 5, 4, 65536, 9 * MIB, -1, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 20);
  CU_ASSERT(vd_raid_fail(t.a, 1) == 0);
  random_ops(&t, 5);
  char newp[400];
  snprintf(newp, sizeof newp, "%s/new.img", t.dir);
  struct vd_create_args ca = { .size = 9 * MIB };
  CU_ASSERT_FATAL(vd_create(newp, "raw", &ca) == 0);
  CU_ASSERT(vd_raid_replace(t.a, 1, newp, "raw", 0, NULL, NULL) == 0);
  CU_ASSERT(member_state(&t, 1) == VD_RAID_STATE_ACTIVE);
  CU_ASSERT(verify_all(&t) == 0);
  CU_ASSERT(scrub_mismatches(&t, false) == 0);
  CU_ASSERT(vd_raid_fail(t.a, 2) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_free(&t);
}

/* An I/O error in the last block of a RAID5 rebuild step (the last lane's,
 * while the other lanes run) ends the rebuild with that error, recorded on
 * the right member: a source's fails the array (a second member lost), the
 * new member's fails only the new member, and the array still serves every
 * byte. */
static void rebuild_lane_error(bool source)
{
  struct tarr t;
  tarr_create(&t, 5, 4, 65536, 9 * MIB, -1, 0);
  struct vd_fault *f = source ? tarr_fault(&t, 2) : NULL;
  char newp[400];
  snprintf(newp, sizeof newp, "%s/new.img", t.dir);
  struct vd_create_args ca = { .size = 9 * MIB };
  CU_ASSERT_FATAL(vd_create(newp, "raw", &ca) == 0);
  if (!source) {
    f = vd_fault_attach(newp);
    CU_ASSERT_FATAL(f != NULL);
    t.filter = "fault";
  }
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 20);
  CU_ASSERT(vd_raid_fail(t.a, 1) == 0);
  uint64_t d0 = t.a->sb.data_offset;
  struct vd_fault_cfg fc = { .mode = VD_FAULT_FAIL_RANGE,
                             .start = d0 + 2 * MIB - 4096,
                             .end = d0 + 2 * MIB };
  vd_fault_set(f, &fc);
  CU_ASSERT(vd_raid_replace(t.a, 1, newp, "raw", 0, NULL, NULL) == -EIO);
  if (source) {
    CU_ASSERT(member_state(&t, 2) == VD_RAID_STATE_FAULTY);
  } else {
    CU_ASSERT(member_state(&t, 1) == VD_RAID_STATE_FAULTY);
    CU_ASSERT(member_state(&t, 2) == VD_RAID_STATE_ACTIVE);
    CU_ASSERT(verify_all(&t) == 0);
    tarr_close(&t);
  }
  tarr_free(&t);       /* a failed array's close reports the failure */
  vd_fault_detach(f);
}

static void test_rebuild_lane_error(void)
{
  rebuild_lane_error(true);
  rebuild_lane_error(false);
}

/* A rebuild killed midway resumes from its checkpoint. */
static void test_rebuild_killed(void)
{
  struct tarr t;
  tarr_create(&t, 5, 3, 16384, 6 * MIB, -1, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 20);
  CU_ASSERT(vd_raid_fail(t.a, 2) == 0);
  tarr_close(&t);
  /* Replace through a server-like open: the rebuild runs in the
   * background; kill the "process" once a checkpoint is written. */
  char newp[400];
  snprintf(newp, sizeof newp, "%s/new.img", t.dir);
  struct vd_create_args ca = { .size = 6 * MIB };
  CU_ASSERT_FATAL(vd_create(newp, "raw", &ca) == 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  /* Rebuild at 1 MiB/s: checkpoints every 1/16 (320 KiB) of 5 MiB. */
  CU_ASSERT(vd_raid_replace_start(t.a, 2, newp, "raw", 1 * MIB) == 0);
  uint64_t done = 0;
  for (int i = 0; i < 100 && done < 2 * MIB; i++) {
    usleep(50000);
    done = atomic_load(&t.a->m[2].recovery);
  }
  vd_raid_crash(t.a);       /* kill -9: no final checkpoint */
  vd_close(t.dev);
  t.dev = NULL;
  struct vd_raid_status st;
  CU_ASSERT(vd_raid_examine(t.desc, &st) == 0);
  CU_ASSERT(st.rebuilding);
  CU_ASSERT(st.rebuild_done > 0 && st.rebuild_done < st.rebuild_total);
  uint64_t ckpt = st.rebuild_done;
  /* Reopen: resumes from the checkpoint, not from zero. */
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  CU_ASSERT(atomic_load(&t.a->m[2].recovery) >= ckpt);
  CU_ASSERT(vd_raid_resume_rebuild(t.a, 0, NULL, NULL) == 0);
  CU_ASSERT(member_state(&t, 2) == VD_RAID_STATE_ACTIVE);
  CU_ASSERT(verify_all(&t) == 0);
  CU_ASSERT(scrub_mismatches(&t, false) == 0);
  CU_ASSERT(vd_raid_fail(t.a, 0) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_free(&t);
}

/* A caller-driven rebuild (a control job) advances only when stepped, by
 * at least the asked size; a second owner or a background resume is
 * refused meanwhile; a rebuild given up midway is checkpointed and
 * resumes at the next open; writes between steps land on both sides of the
 * recovery offset. */
static void test_rebuild_steps(void)
{
  struct tarr t;
  tarr_create(&t, 5, 3, 16384, 4 * MIB, -1, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 10);
  tarr_close(&t);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  CU_ASSERT(vd_raid_fail(t.a, 1) == 0);
  char newp[400], newp2[400];
  snprintf(newp, sizeof newp, "%s/new.img", t.dir);
  snprintf(newp2, sizeof newp2, "%s/new2.img", t.dir);
  struct vd_create_args ca = { .size = 4 * MIB };
  CU_ASSERT_FATAL(vd_create(newp, "raw", &ca) == 0);
  CU_ASSERT_FATAL(vd_create(newp2, "raw", &ca) == 0);
  CU_ASSERT_FATAL(vd_raid_replace_begin(t.a, 1, newp, "raw") == 0);
  struct vd_raid_status st;
  CU_ASSERT(vd_raid_status(t.a, &st) == 0);
  CU_ASSERT(st.rebuilding && st.m[1].state == VD_RAID_STATE_REBUILDING);
  /* Nobody else rebuilds meanwhile. */
  CU_ASSERT(vd_raid_replace_begin(t.a, 1, newp2, "raw") == -EBUSY);
  CU_ASSERT(vd_raid_replace_start(t.a, 1, newp2, "raw", 0) == -EBUSY);
  CU_ASSERT(vd_raid_resume_rebuild(t.a, 0, NULL, NULL) == -EBUSY);
  usleep(100000);
  CU_ASSERT(atomic_load(&t.a->m[1].recovery) == 0);
  uint64_t done = 0, total = 0;
  int r = vd_raid_rebuild_step(t.a, 3 * 16384, &done, &total);
  CU_ASSERT(r == 0);
  CU_ASSERT(done == 3 * 16384);
  CU_ASSERT(total == st.member_data_size);
  CU_ASSERT(atomic_load(&t.a->m[1].recovery) == done);
  /* No writes in this part: a dirty degraded RAID5 would not reopen
   * after the simulated kill without --force (writes between steps are
   * checked below). */
  for (int i = 0; i < 5; i++)
    CU_ASSERT(vd_raid_rebuild_step(t.a, 16384, &done, &total) == 0);
  CU_ASSERT(done == 8 * 16384);
  /* Given up midway: checkpointed where it stopped, even if the process
   * is killed right after (no clean close to write the superblocks). */
  vd_raid_rebuild_end(t.a);
  vd_raid_crash(t.a);
  vd_close(t.dev);
  t.dev = NULL;
  CU_ASSERT(vd_raid_examine(t.desc, &st) == 0);
  CU_ASSERT(st.rebuilding && st.rebuild_done == 8 * 16384);
  /* The next open resumes it (in the background); let it finish. */
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  CU_ASSERT(vd_raid_resume_rebuild(t.a, 0, NULL, NULL) == 0);
  CU_ASSERT(member_state(&t, 1) == VD_RAID_STATE_ACTIVE);
  CU_ASSERT(verify_all(&t) == 0);
  /* Replace again, stepped to the end, under writes. */
  CU_ASSERT(vd_raid_fail(t.a, 1) == 0);
  CU_ASSERT_FATAL(vd_raid_replace_begin(t.a, 1, newp2, "raw") == 0);
  done = 0;
  int steps = 0;
  while ((r = vd_raid_rebuild_step(t.a, 256 * 1024, &done, &total)) == 0) {
    if (++steps % 4 == 0)
      random_ops(&t, 2);
  }
  CU_ASSERT(r == 1);
  CU_ASSERT(done == total);
  vd_raid_rebuild_end(t.a);
  CU_ASSERT(member_state(&t, 1) == VD_RAID_STATE_ACTIVE);
  CU_ASSERT(scrub_mismatches(&t, false) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  CU_ASSERT(vd_raid_fail(t.a, 0) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  /* A member failed during a stepped rebuild ends it with an error. */
  tarr_close(&t);
  tarr_free(&t);
  tarr_create(&t, 1, 2, 16384, 2 * MIB, -1, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 5);
  CU_ASSERT(vd_raid_fail(t.a, 1) == 0);
  snprintf(newp, sizeof newp, "%s/new.img", t.dir);
  CU_ASSERT_FATAL(vd_create(newp, "raw", &ca) == 0);
  CU_ASSERT_FATAL(vd_raid_replace_begin(t.a, 1, newp, "raw") == 0);
  done = 0;
  CU_ASSERT(vd_raid_rebuild_step(t.a, 16384, &done, &total) == 0);
  CU_ASSERT(vd_raid_fail(t.a, 1) == 0);
  CU_ASSERT(vd_raid_rebuild_step(t.a, 16384, &done, &total) == -EIO);
  vd_raid_rebuild_end(t.a);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_free(&t);
}

/* A stepped scrub finds and repairs exactly what the one-call scrub does,
 * and resumes from the position it is given. */
static void test_scrub_steps(void)
{
  struct tarr t;
  tarr_create(&t, 5, 3, 16384, 3 * MIB, -1, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 20);
  tarr_close(&t);
  struct vd_dev *m;
  uint8_t sbuf[RAID_SB_SIZE];
  struct raid_sb sb;
  CU_ASSERT_FATAL(vd_open(t.mem[0], "raw", 0, &m) == 0);
  CU_ASSERT(vd_pread(m, sbuf, RAID_SB_SIZE, RAID_SB_OFFSET) == 0);
  CU_ASSERT(raid_sb_decode(sbuf, &sb, "m0") == 0);
  vd_close(m);
  /* Parity of stripes 7 (member 1) and 40 (member 2 - 40 % 3 = 1). */
  CU_ASSERT(vd_fault_corrupt(t.mem[1], sb.data_offset + 7 * 16384 + 5, 3) == 0);
  CU_ASSERT(vd_fault_corrupt(t.mem[1], sb.data_offset + 40 * 16384, 1) == 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  for (int repair = 0; repair <= 1; repair++) {
    struct vd_raid_scrub_report rep = { .mismatch = note_mismatch };
    uint64_t pos = 0;
    int r, steps = 0;
    nnoted = 0;
    /* Unaligned positions are refused. */
    uint64_t bad = 100;
    CU_ASSERT(vd_raid_scrub_step(t.a, false, &bad, 16384, &rep) == -EINVAL);
    while ((r = vd_raid_scrub_step(t.a, repair, &pos, 5 * 16384, &rep)) == 0) {
      CU_ASSERT(pos == (uint64_t)(steps + 1) * 5 * 16384);
      steps++;
    }
    CU_ASSERT(r == 1);
    CU_ASSERT(pos == sb.data_size);
    CU_ASSERT(rep.stripes == sb.data_size / 16384);
    CU_ASSERT(rep.mismatches == 2 && nnoted == 2);
    CU_ASSERT(noted[0] == 7 && noted[1] == 40);
    CU_ASSERT(rep.repaired == (repair ? 2u : 0u));
  }
  CU_ASSERT(scrub_mismatches(&t, false) == 0);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_free(&t);
}

/* A read error is repaired from the others and the block rewritten: a
 * transient error keeps the member, a persistent one fails it. */
static void read_error(int level, bool persistent)
{
  struct tarr t;
  tarr_create(&t, level, 3, 16384, 3 * MIB, -1, 0);
  struct vd_fault *f[3];
  for (int i = 0; i < 3; i++)
    f[i] = tarr_fault(&t, i);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  random_ops(&t, 10);
  for (uint64_t o = 0; o < t.size; o += 65536)
    CU_ASSERT(mwrite(&t, o, 65536, o + 5) == 0);
  uint64_t doff = t.a->sb.data_offset;
  struct vd_fault_cfg fc = { .mode = persistent ? VD_FAULT_FAIL_RANGE
                                                     : VD_FAULT_FAIL_NTH,
                                  .nth = 1, .reads = true,
                                  .start = doff + 20000, .end = doff + 20001 };
  /* Member 0 only: stripe 1 row 3616 holds data chunk 1 there. */
  vd_fault_set(f[0], &fc);
  for (int pass = 0; pass < 3; pass++)
    CU_ASSERT(verify_all(&t) == 0);
  struct vd_raid_status st;
  CU_ASSERT(vd_raid_status(t.a, &st) == 0);
  int failed = 0;
  for (int i = 0; i < 3; i++)
    failed += st.m[i].state != VD_RAID_STATE_ACTIVE;
  CU_ASSERT(vd_fault_count(f[0]) > 0);
  /* RAID1 may have served every read from the other mirrors. */
  CU_ASSERT(persistent || failed == 0);
  CU_ASSERT(!persistent || level != 5 ||
            (failed == 1 && st.m[0].state == VD_RAID_STATE_FAULTY));
  CU_ASSERT(!persistent || failed <= 1);
  if (!persistent && level == 5)
    CU_ASSERT(scrub_mismatches(&t, false) == 0);
  struct vd_fault_cfg none = { .mode = VD_FAULT_NONE };
  vd_fault_set(f[0], &none);
  CU_ASSERT(verify_all(&t) == 0);
  tarr_close(&t);
  for (int i = 0; i < 3; i++)
    vd_fault_detach(f[i]);
  tarr_free(&t);
}

static void test_read_errors(void)
{
  read_error(5, false);
  read_error(5, true);
  read_error(1, false);
  read_error(1, true);
}

/* Concurrent writes into the same stripes (disjoint bytes, so the model is
 * exact): the stripe lock keeps parity right. */
struct sworker {
  struct tarr *t;
  unsigned id, nthreads;
  unsigned long bad;
};

static void *sworker_main(void *opaque)
{
  struct sworker *w = opaque;
  const size_t unit = 1000;   /* not sector aligned: many RMW segments */
  uint64_t units = 4 * 3 * 4096 / unit;      /* the first 4 stripes */
  uint64_t x = 99 + w->id;
  uint8_t b[1000];
  for (int i = 0; i < 1500; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    uint64_t u = (x % (units / w->nthreads)) * w->nthreads + w->id;
    fill(b, unit, x);
    if (vd_pwrite(w->t->dev, b, unit, u * unit, 0) == 0)
      memcpy(w->t->model + u * unit, b, unit);
    else
      w->bad++;
  }
  return NULL;
}

static void test_same_stripe_concurrency(void)
{
  for (int policy = RAID_POLICY_BITMAP; policy <= RAID_POLICY_PPL; policy++) {
    struct tarr t;
    tarr_create(&t, 5, 4, 4096, 3 * MIB, policy, 0);
    CU_ASSERT_FATAL(tarr_open(&t) == 0);
    struct sworker w[4];
    pthread_t th[4];
    for (unsigned i = 0; i < 4; i++) {
      w[i] = (struct sworker){ .t = &t, .id = i, .nthreads = 4 };
      pthread_create(&th[i], NULL, sworker_main, &w[i]);
    }
    for (unsigned i = 0; i < 4; i++) {
      pthread_join(th[i], NULL);
      CU_ASSERT(w[i].bad == 0);
    }
    CU_ASSERT(verify_all(&t) == 0);
    CU_ASSERT(scrub_mismatches(&t, false) == 0);
    /* Parity right means any member can go. */
    CU_ASSERT(vd_raid_fail(t.a, 1) == 0);
    CU_ASSERT(verify_all(&t) == 0);
    tarr_free(&t);
  }
}

/* ---- lock assertions (debug builds) ---- */

#ifndef NDEBUG
static void *hold_main(void *opaque)
{
  pthread_mutex_t *m = opaque;
  pthread_mutex_lock(m);
  return NULL;            /* exits holding it */
}

/* Run FN(A) in a child process; whether it died of SIGABRT (an assert). */
static bool aborts(void (*fn)(struct raid_array *), struct raid_array *a)
{
  fflush(NULL);
  pid_t pid = fork();
  CU_ASSERT_FATAL(pid >= 0);
  if (pid == 0) {
    /* Only this thread exists here: FN must assert before any I/O (which
     * would wait for the array's threads forever: the alarm ends that). */
    alarm(30);
    if (!freopen("/dev/null", "w", stderr))
      _exit(98);
    fn(a);
    _exit(0);
  }
  int st;
  CU_ASSERT_FATAL(waitpid(pid, &st, 0) == pid);
  return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}

static void call_sb_write_all(struct raid_array *a)
{
  raid_sb_write_all_locked(a);
}

static void call_rebuild_stripe(struct raid_array *a)
{
  uint8_t *scratch = raid_scratch(0, (size_t)2 * a->n * a->sb.chunk);
  a->ops->rebuild_rows_locked(a, 3 * (uint64_t)a->sb.chunk, a->sb.chunk, 1,
                              scratch);
}
#endif

/* vd_mutex_held knows the owner, and the _locked functions assert that
 * their caller holds the lock (in debug builds; nothing to test with
 * NDEBUG). */
static void test_lock_asserts(void)
{
#ifndef NDEBUG
  pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
  CU_ASSERT(!vd_mutex_held(&m));
  pthread_mutex_lock(&m);
  CU_ASSERT(vd_mutex_held(&m));
  pthread_mutex_unlock(&m);
  CU_ASSERT(!vd_mutex_held(&m));
  pthread_t th;
  CU_ASSERT_FATAL(pthread_create(&th, NULL, hold_main, &m) == 0);
  pthread_join(th, NULL);
#ifdef __GLIBC__
  CU_ASSERT(!vd_mutex_held(&m));   /* held, but by another thread */
#endif

  struct tarr t;
  tarr_create(&t, 5, 3, 64 * 1024, 4 * MIB, RAID_POLICY_PPL, 0);
  CU_ASSERT_FATAL(tarr_open(&t) == 0);
  CU_ASSERT(aborts(call_sb_write_all, t.a));
  CU_ASSERT(aborts(call_rebuild_stripe, t.a));
  /* With the locks held they run. */
  pthread_mutex_lock(&t.a->sb_lock);
  CU_ASSERT(raid_sb_write_all_locked(t.a) == 0);
  pthread_mutex_unlock(&t.a->sb_lock);
  uint8_t *scratch = raid_scratch(0, (size_t)2 * t.a->n * t.a->sb.chunk);
  raid_stripe_lock(t.a, 3);
  CU_ASSERT(t.a->ops->rebuild_rows_locked(t.a, 3 * (uint64_t)t.a->sb.chunk,
                                         t.a->sb.chunk, 1, scratch) == 0);
  raid_stripe_unlock(t.a, 3);
  tarr_close(&t);
  tarr_free(&t);
#endif
}

int main(void)
{
  /* Thousands of fdatasync calls: on a tmpfs when there is one (crashes
   * are simulated by the fault layer, not by the host). */
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  if (!getenv("TMPDIR") && access("/dev/shm", W_OK) == 0)
    base = "/dev/shm";
  snprintf(tmpdir, sizeof tmpdir, "%s/vdraid.XXXXXX", base);
  if (!mkdtemp(tmpdir))
    return 99;
  static const struct cu_test tests[] = {
    { "geometry (md left-symmetric)", test_geometry },
    { "level table: members needed, sizes, hooks", test_level_ops },
    { "parity, one pass", test_parity },
    { "parity, every kernel version", test_parity_versions },
    { "superblock codec", test_superblock },
    { "superblock spares", test_superblock_spares },
    { "RAID0 against the model", test_raid0 },
    { "RAID1 against the model", test_raid1 },
    { "RAID5 against the model", test_raid5 },
    { "every member failed in turn", test_fail_each_member },
    { "member error mid-write and in RMW pre-read", test_fail_midwrite },
    { "failure recorded before the write is acked",
      test_fail_recorded_before_ack },
    { "missing member at assembly", test_missing_member },
    { "forced start through the open flags", test_open_force },
    { "stale member never read", test_stale_member },
    { "superblock write cut by a crash: one event behind is used",
      test_sb_write_interrupted },
    { "flush waits until a member failure is recorded",
      test_flush_waits_for_failure_record },
    { "two failures: EIO, no more writes", test_two_failures },
    { "degraded read: each survivor read once", test_degraded_read_once },
    { "power cut then member loss", test_powercut },
    { "power cut after a full-row write (issue 10)", test_powercut_full_row },
    { "randomized power cuts, each member lost", test_powercut_random },
    { "bitmap-driven resync", test_bitmap_resync },
    { "bit rot found and repaired by scrub", test_bitrot },
    { "online rebuild under concurrent I/O", test_rebuild_online },
    { "rebuild in multi-block steps on lanes", test_rebuild_pipeline },
    { "rebuild: an I/O error in a lane", test_rebuild_lane_error },
    { "killed rebuild resumes", test_rebuild_killed },
    { "caller-driven rebuild, step by step", test_rebuild_steps },
    { "caller-driven scrub, step by step", test_scrub_steps },
    { "read errors repaired or failing the member", test_read_errors },
    { "concurrent writes to the same stripes", test_same_stripe_concurrency },
    { "_locked functions assert their lock", test_lock_asserts },
    { NULL, NULL }
  };
  int rc = cu_main("raid", tests);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0)
    return 99;
  return rc;
}
