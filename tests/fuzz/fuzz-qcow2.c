/* libFuzzer harness for the qcow2 parsers and the driver's read paths.
 *
 * The input is a whole qcow2 file.  It is opened read-only without its
 * backing file (the header, its extensions, the L1 table and the snapshot
 * table are parsed): reads spread over the disk (one unaligned, through
 * the L2 cache, zero, compressed and subcluster entries), a block-status
 * walk, info and the snapshot list; then the first snapshot is opened the
 * same way (its L1 table); then it is opened writable (the refcount table
 * is loaded) and written: an allocating write, a partial-cluster write
 * (copy-on-write through the hostile tables), zeroes, discard, flush; then
 * the checker runs over the file (refcount table and blocks, every L1/L2
 * table, the snapshot table).
 *
 * qcow2.c, qcow2-meta.c, qcow2-write.c and qcow2-check.c are compiled into this file so
 * their code is instrumented.  In make check, tests/fuzz/fuzz-qcow2.sh
 * makes seed images with qemu-img and runs the standalone driver over
 * them; for long runs by hand:
 *   ./configure CC=clang --enable-fuzzing && make tests/fuzz/libfuzzer-qcow2
 *   VD_FUZZ_SEEDS=seeds tests/fuzz/fuzz-qcow2.sh    (keeps the seeds)
 *   tests/fuzz/libfuzzer-qcow2 -max_total_time=600 seeds
 */
#include "vdisk/qcow2-meta.c"
#include "vdisk/qcow2.c"
#include "vdisk/qcow2-check.c"
#include "vdisk/qcow2-write.c"

#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
fuzz_open(struct vd_dev *dev, struct qcow2_priv *priv, const char *path,
          const char *snapshot, bool rw)
{
  struct vd_file *f;
  memset(priv, 0, sizeof *priv);
  memset(dev, 0, sizeof *dev);
  if (vd_file_open(path, VD_FILE_NOLOCK | (rw ? VD_FILE_RDWR : 0), &f) < 0)
    return -1;
  dev->drv = &vd_qcow2_driver;
  dev->path = (char *)path;
  dev->file = f;
  dev->priv = priv;
  dev->open_flags = VD_OPEN_NOLOCK | VD_OPEN_NOPARENT;
  dev->opts.snapshot = snapshot;
  dev->read_only = !rw;
  if (rw)
    dev->open_flags = VD_OPEN_NOLOCK | VD_OPEN_RDWR;
  dev->logical_block = 512;
  if (qcow2_open(dev) < 0) {
    vd_file_close(f);
    return -1;
  }
  return 0;
}

static void
fuzz_reads(struct vd_dev *dev)
{
  static uint8_t buf[65536];
  struct vd_extent ext;
  struct vd_info info;
  for (int i = 0; i <= 16; i++) {
    uint64_t off = dev->size / 16 * (uint64_t)i;
    size_t n = dev->size - off < sizeof buf ? (size_t)(dev->size - off)
                                            : sizeof buf;
    if (n == 0)
      continue;
    if (i == 3 && n > 1000)
      qcow2_pread(dev, buf, n - 1000, off + 17);
    else
      qcow2_pread(dev, buf, n, off);
  }
  uint64_t off = 0;
  for (int i = 0; i < 256 && off < dev->size; i++, off += ext.length)
    if (qcow2_block_status(dev, off, dev->size - off, &ext) < 0 ||
        ext.length == 0 || ext.length > dev->size - off)
      break;
  memset(&info, 0, sizeof info);
  qcow2_info(dev, &info);
}

static void
fuzz_message(void *opaque, const char *msg)
{
  (void)opaque;
  (void)msg;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static int fd = -1;
  static char path[64];
  struct qcow2_priv priv;
  struct vd_dev dev;

  if (fd < 0) {
    fd = memfd_create("fuzz-qcow2", 0);
    if (fd < 0)
      abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
    abort();

  char snap[128] = "";
  if (fuzz_open(&dev, &priv, path, NULL, false) == 0) {
    fuzz_reads(&dev);
    struct vd_snapshot *list;
    size_t n;
    if (qcow2_snapshot_list(&dev, &list, &n) == 0) {
      if (n > 0)
        snprintf(snap, sizeof snap, "snapshot.id=%.100s", list[0].id);
      free(list);
    }
    qcow2_close(&dev);
    vd_file_close(dev.file);
  }
  if (snap[0] && fuzz_open(&dev, &priv, path, snap, false) == 0) {
    fuzz_reads(&dev);
    qcow2_close(&dev);
    vd_file_close(dev.file);
  }
  /* Writable, without the backing file opened (writes are then refused
   * for an image that has one; the others go through). */
  if (fuzz_open(&dev, &priv, path, NULL, true) == 0) {
    if (!dev.read_only && dev.size >= 4096) {
      static uint8_t wbuf[4096];
      memset(wbuf, 0x5a, sizeof wbuf);
      qcow2_pwrite(&dev, wbuf, sizeof wbuf, 0, 0);
      qcow2_pwrite(&dev, wbuf, 1000, dev.size / 2 / 512 * 512 + 512, 0);
      qcow2_write_zeroes(&dev, dev.size / 4 / 512 * 512, 4096 <
                         dev.size / 4 ? 4096 : 512, 0);
      qcow2_discard(&dev, 0, 4096, 0);
      qcow2_flush(&dev);
      fuzz_reads(&dev);
    }
    qcow2_close(&dev);
    vd_file_close(dev.file);
  }
  struct vd_check_report rep = { .message = fuzz_message };
  qcow2_check(path, VD_CHECK_NOLOCK, &rep);
  vd_clear_error();
  return 0;
}
