/* Concurrency of VHD block allocation: many threads writing into the same
 * unallocated blocks at once (while others read) must allocate each block
 * exactly once, readers must never see anything but zeros or the right
 * writer's bytes, and
 * concurrent sector-bitmap updates in a differencing image must not lose
 * bits.  Verified by reopening, by the checker and by file size. */
#include <config.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/vhd.h"

#define NTHREADS 8
#define NBLOCKS 16
#define BS (512u << 10)
#define PIECE (BS / NTHREADS)

static char tmpdir[] = "/tmp/vhdalloc.XXXXXX";

struct worker {
  struct vd_dev *dev;
  int id;
  pthread_barrier_t *bar;
  int err;
};

static uint8_t
pat(int id, uint32_t blk)
{
  return (uint8_t)(1 + id * 31 + blk * 7);
}

static void *
work(void *opaque)
{
  struct worker *w = opaque;
  uint8_t *buf = malloc(PIECE);
  for (uint32_t blk = 0; blk < NBLOCKS; blk++) {
    memset(buf, pat(w->id, blk), PIECE);
    /* Everyone starts each block at the same moment. */
    pthread_barrier_wait(w->bar);
    int r = vd_pwrite(w->dev, buf, PIECE,
                      (uint64_t)blk * BS + (uint64_t)w->id * PIECE, 0);
    if (r < 0)
      w->err = r;
  }
  free(buf);
  return NULL;
}

/* Readers running alongside the writers: every byte they see is either
 * still zero or the pattern of the writer that owns it, never anything
 * else (another block's data, a bitmap, a footer). */
struct reader {
  struct vd_dev *dev;
  bool *stop;
  int bad, err;
  unsigned seed;
  bool flusher;
};

static void *
read_loop(void *opaque)
{
  struct reader *rd = opaque;
  uint8_t *buf = malloc(PIECE);
  for (unsigned n = 0; !__atomic_load_n(rd->stop, __ATOMIC_ACQUIRE); n++) {
    /* The first reader also flushes now and then: BAT writes racing
     * allocations. */
    if (rd->flusher && n % 8 == 7 && vd_flush(rd->dev) < 0)
      rd->err = 1;
    uint64_t off = (uint64_t)(rand_r(&rd->seed) % (NBLOCKS * (BS / 512))) * 512;
    size_t len = PIECE;
    if (off + len > NBLOCKS * (uint64_t)BS)
      len = (size_t)(NBLOCKS * (uint64_t)BS - off);
    if (vd_pread(rd->dev, buf, len, off) < 0) {
      rd->err = 1;
      break;
    }
    for (size_t s = 0; s < len; s += 512) {
      uint32_t blk = (uint32_t)((off + s) / BS);
      int id = (int)(((off + s) % BS) / PIECE);
      /* Byte by byte: a buffered read racing a write may see part of
       * a page updated, but never bytes from elsewhere. */
      for (size_t b = s; b < s + 512; b++)
        if (buf[b] != 0 && buf[b] != pat(id, blk)) {
          rd->bad++;
          break;
        }
    }
  }
  free(buf);
  return NULL;
}

static void
run_writers(struct vd_dev *dev)
{
  pthread_t th[NTHREADS], rth[2];
  struct worker w[NTHREADS];
  struct reader rd[2];
  bool stop = false;
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, NTHREADS);
  for (int i = 0; i < 2; i++) {
    rd[i] = (struct reader){ dev, &stop, 0, 0, (unsigned)i + 1, i == 0 };
    pthread_create(&rth[i], NULL, read_loop, &rd[i]);
  }
  for (int i = 0; i < NTHREADS; i++) {
    w[i] = (struct worker){ dev, i, &bar, 0 };
    pthread_create(&th[i], NULL, work, &w[i]);
  }
  for (int i = 0; i < NTHREADS; i++) {
    pthread_join(th[i], NULL);
    CU_ASSERT_EQUAL(w[i].err, 0);
  }
  __atomic_store_n(&stop, true, __ATOMIC_RELEASE);
  for (int i = 0; i < 2; i++) {
    pthread_join(rth[i], NULL);
    CU_ASSERT_EQUAL(rd[i].err, 0);
    CU_ASSERT_EQUAL(rd[i].bad, 0);
  }
  pthread_barrier_destroy(&bar);
}

static uint64_t
field(struct vd_dev *dev, const char *key)
{
  struct vd_info info;
  CU_ASSERT_EQUAL_FATAL(vd_get_info(dev, &info), 0);
  for (unsigned i = 0; i < info.nfields; i++)
    if (strcmp(info.fields[i].key, key) == 0)
      return info.fields[i].u64;
  CU_FAIL("field missing");
  return 0;
}

static void
verify(const char *path, bool diff)
{
  struct vd_dev *dev;
  struct vd_check_report rep = { 0 };
  uint8_t *buf = malloc(BS);

  int r = vd_open(path, NULL, 0, &dev);
  if (r < 0)
    fprintf(stderr, "%s\n", vd_error());
  CU_ASSERT_EQUAL_FATAL(r, 0);
  CU_ASSERT_EQUAL(field(dev, "allocated-blocks"), NBLOCKS);
  for (uint32_t blk = 0; blk < NBLOCKS; blk++) {
    CU_ASSERT_EQUAL_FATAL(vd_pread(dev, buf, BS, (uint64_t)blk * BS), 0);
    for (int id = 0; id < NTHREADS; id++) {
      /* In the child, odd threads wrote only half of their piece; the
       * other half comes from the parent (0xEE). */
      for (uint32_t i = 0; i < PIECE; i += 512) {
        uint8_t want = pat(id, blk);
        if (diff && (id & 1) && i >= PIECE / 2)
          want = 0xEE;
        if (buf[id * PIECE + i] != want || buf[id * PIECE + i + 511] != want) {
          CU_FAIL("wrong data");
          goto out;
        }
      }
    }
  }
out:
  vd_close(dev);
  free(buf);
  CU_ASSERT_EQUAL(vd_check(path, NULL, 0, &rep), 0);
  CU_ASSERT_EQUAL(rep.corruptions, 0);
  CU_ASSERT_EQUAL(rep.leaks, 0);
  /* Exactly NBLOCKS slots were appended. */
  struct stat st;
  CU_ASSERT_EQUAL(stat(path, &st), 0);
  uint64_t meta = 512 + 1024 + 512;   /* footer, header, BAT (1 sector) */
  if (diff)
    meta += 2 * 512 * ((strlen(tmpdir) * 2 + 64 + 511) / 512);
  CU_ASSERT(st.st_size <= (off_t)(meta + 4096 + NBLOCKS * (uint64_t)(BS + 512) + 512));
  CU_ASSERT(st.st_size >= (off_t)(NBLOCKS * (uint64_t)(BS + 512)));
}

static void
test_dynamic_race(void)
{
  char path[64];
  struct vd_dev *dev;
  struct vd_create_args a = { .size = NBLOCKS * (uint64_t)BS,
                              .options = "block_size=512K" };
  snprintf(path, sizeof path, "%s/d.vhd", tmpdir);
  CU_ASSERT_EQUAL_FATAL(vd_create(path, "vhd", &a), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(path, NULL, VD_OPEN_RDWR, &dev), 0);
  run_writers(dev);
  CU_ASSERT_EQUAL(vd_close(dev), 0);
  verify(path, false);
}

/* Differencing: the parent is all 0xEE; odd threads write only the first
 * half of their piece, so bitmaps stay partial and every bitmap update
 * races with the others. */
static void *
work_half(void *opaque)
{
  struct worker *w = opaque;
  uint8_t *buf = malloc(PIECE);
  for (uint32_t blk = 0; blk < NBLOCKS; blk++) {
    memset(buf, pat(w->id, blk), PIECE);
    pthread_barrier_wait(w->bar);
    uint32_t len = (w->id & 1) ? PIECE / 2 : PIECE;
    for (uint32_t o = 0; o < len; o += 4096) {
      int r = vd_pwrite(w->dev, buf, 4096,
                        (uint64_t)blk * BS + (uint64_t)w->id * PIECE + o, 0);
      if (r < 0)
        w->err = r;
    }
  }
  free(buf);
  return NULL;
}

static void
test_diff_race(void)
{
  char parent[64], child[64];
  struct vd_dev *dev;
  struct vd_create_args a = { .size = NBLOCKS * (uint64_t)BS,
                              .options = "block_size=512K" };
  snprintf(parent, sizeof parent, "%s/p.vhd", tmpdir);
  snprintf(child, sizeof child, "%s/c.vhd", tmpdir);
  CU_ASSERT_EQUAL_FATAL(vd_create(parent, "vhd", &a), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(parent, NULL, VD_OPEN_RDWR, &dev), 0);
  uint8_t *buf = malloc(BS);
  memset(buf, 0xEE, BS);
  for (uint32_t blk = 0; blk < NBLOCKS; blk++)
    CU_ASSERT_EQUAL(vd_pwrite(dev, buf, BS, (uint64_t)blk * BS, 0), 0);
  free(buf);
  CU_ASSERT_EQUAL(vd_close(dev), 0);

  struct vd_create_args c = { .size = 0, .options = "block_size=512K",
                              .backing = parent };
  CU_ASSERT_EQUAL_FATAL(vd_create(child, "vhd", &c), 0);
  CU_ASSERT_EQUAL_FATAL(vd_open(child, NULL, VD_OPEN_RDWR, &dev), 0);
  pthread_t th[NTHREADS];
  struct worker w[NTHREADS];
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, NTHREADS);
  for (int i = 0; i < NTHREADS; i++) {
    w[i] = (struct worker){ dev, i, &bar, 0 };
    pthread_create(&th[i], NULL, work_half, &w[i]);
  }
  for (int i = 0; i < NTHREADS; i++) {
    pthread_join(th[i], NULL);
    CU_ASSERT_EQUAL(w[i].err, 0);
  }
  pthread_barrier_destroy(&bar);
  CU_ASSERT_EQUAL(vd_close(dev), 0);
  verify(child, true);
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "dynamic: racing allocations", test_dynamic_race },
    { "differencing: racing bitmap updates", test_diff_race },
    { NULL, NULL }
  };
  if (!mkdtemp(tmpdir))
    return 99;
  int r = cu_main("vhd-alloc", tests);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  if (system(cmd) != 0)
    r = r ? r : 99;
  return r;
}
