/* libFuzzer harness for the VHDX parsers and the driver's read paths.
 *
 * The input is a whole VHDX file.  Before use the harness writes correct
 * CRC-32C checksums into both headers, both region tables and the first
 * log entry, so mutations reach the validation behind the checksums.
 * Then it is opened read-only (a dirty log replayed in memory): reads
 * spread over the disk (one unaligned), a block-status walk, info; and a
 * copy is opened writable without its parent, which replays a dirty log
 * into the file and rewrites the headers, then takes writes (allocating
 * blocks through the log) and a flush.
 *
 * vhdx.c, vhdx-meta.c, vhdx-log.c and vhdx-write.c are compiled into this file so their
 * code is instrumented (the internal library's objects for them are then
 * not pulled in).  In make check, tests/fuzz/fuzz-vhdx.sh makes seed images
 * with qemu-img and the independent writer tests/vhdxgen and runs the
 * standalone driver over them; for long runs by hand:
 *   ./configure CC=clang --enable-fuzzing && make tests/fuzz/libfuzzer-vhdx
 *   VD_FUZZ_SEEDS=seeds tests/fuzz/fuzz-vhdx.sh    (keeps the seeds)
 *   tests/fuzz/libfuzzer-vhdx -max_total_time=600 seeds
 */
#include "vdisk/vhdx-meta.c"
#include "vdisk/vhdx-log.c"
#include "vdisk/vhdx.c"
#include "vdisk/vhdx-write.c"

#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fuzz_fix(uint8_t *b, size_t size, uint64_t off, size_t len, const char *sig)
{
  if (off + len <= size && memcmp(b + off, sig, 4) == 0)
    vd_put_le32(b + off + 4, vhdx_checksum(b + off, len));
}

static void
fuzz_fix_checksums(uint8_t *b, size_t size)
{
  for (int i = 0; i < 2; i++) {
    fuzz_fix(b, size, VHDX_HEADER_OFF(i), VHDX_HEADER_SIZE, "head");
    fuzz_fix(b, size, VHDX_RT_OFF(i), VHDX_RT_SIZE, "regi");
  }
  /* The first log entry of the current header's log. */
  if (VHDX_HEADER_OFF(1) + VHDX_HEADER_SIZE > size)
    return;
  uint64_t lo = vd_get_le64(b + VHDX_HEADER_OFF(0) + 72);
  if (lo < size && size - lo >= 64) {
    uint32_t el = vd_get_le32(b + lo + 8);
    if (el >= 64 && el <= size - lo)
      fuzz_fix(b, size, lo, el, "loge");
  }
}

static int
fuzz_open(struct vd_dev *dev, struct vhdx_priv *priv, const char *path,
          unsigned flags)
{
  struct vd_file *f;
  memset(priv, 0, sizeof *priv);
  memset(dev, 0, sizeof *dev);
  if (vd_file_open(path, VD_FILE_NOLOCK |
                   ((flags & VD_OPEN_RDWR) ? VD_FILE_RDWR : 0), &f) < 0)
    return -1;
  dev->drv = &vd_vhdx_driver;
  dev->path = (char *)path;
  dev->file = f;
  dev->priv = priv;
  dev->open_flags = flags | VD_OPEN_NOLOCK | VD_OPEN_NOPARENT;
  dev->read_only = !(flags & VD_OPEN_RDWR);
  dev->logical_block = 512;
  if (vhdx_open(dev) < 0) {
    vd_file_close(f);
    return -1;
  }
  return 0;
}

static int
fuzz_memfd(const char *name, char *path, size_t len)
{
  int fd = memfd_create(name, 0);
  if (fd < 0)
    abort();
  snprintf(path, len, "/proc/self/fd/%d", fd);
  return fd;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static int fd = -1, fd2 = -1;
  static char path[64], path2[64];
  static uint8_t buf[65536];
  struct vhdx_priv priv;
  struct vd_dev dev;

  if (fd < 0) {
    fd = fuzz_memfd("fuzz-vhdx", path, sizeof path);
    fd2 = fuzz_memfd("fuzz-vhdx-rw", path2, sizeof path2);
  }
  uint8_t *copy = malloc(size ? size : 1);
  if (!copy)
    return 0;
  memcpy(copy, data, size);
  fuzz_fix_checksums(copy, size);
  if (ftruncate(fd, 0) < 0 || pwrite(fd, copy, size, 0) != (ssize_t)size ||
      ftruncate(fd2, 0) < 0 || pwrite(fd2, copy, size, 0) != (ssize_t)size)
    abort();
  free(copy);

  if (fuzz_open(&dev, &priv, path, 0) == 0) {
    struct vd_extent ext;
    struct vd_info info;
    for (int i = 0; i <= 16; i++) {
      uint64_t off = dev.size / 16 * (uint64_t)i;
      size_t n = dev.size - off < sizeof buf ? (size_t)(dev.size - off)
                                             : sizeof buf;
      if (n == 0)
        continue;
      if (i == 3 && n > 1000)
        vhdx_pread(&dev, buf, n - 1000, off + 17);
      else
        vhdx_pread(&dev, buf, n, off);
    }
    uint64_t off = 0;
    for (int i = 0; i < 256 && off < dev.size; i++, off += ext.length)
      if (vhdx_block_status(&dev, off, dev.size - off, &ext) < 0 ||
          ext.length == 0 || ext.length > dev.size - off)
        break;
    memset(&info, 0, sizeof info);
    vhdx_info(&dev, &info);
    vhdx_close(&dev);
    vd_file_close(dev.file);
  }
  if (fuzz_open(&dev, &priv, path2, VD_OPEN_RDWR) == 0) {
    if (dev.size)
      vhdx_pread(&dev, buf, dev.size < sizeof buf ? dev.size : sizeof buf, 0);
    /* Writes on hostile metadata: in place and allocating, then flush. */
    memset(buf, 0xA5, sizeof buf);
    uint32_t lb = dev.logical_block;
    if (dev.size >= 2 * (uint64_t)lb) {
      vhdx_pwrite(&dev, buf, lb, 0, 0);
      vhdx_pwrite(&dev, buf, lb, (dev.size / 2) / lb * lb, 0);
      vhdx_pwrite(&dev, buf, lb, dev.size - lb, 0);
      /* Block states: a whole block zeroed and discarded (kept space
       * taken back by the next write), a partial range zeroed. */
      uint64_t bs = priv.meta.block_size, span = 2 * bs;
      if (span <= dev.size) {
        vhdx_write_zeroes(&dev, 0, span, 0);
        vhdx_discard(&dev, span <= dev.size - span ? span : 0, span, 0);
        vhdx_pwrite(&dev, buf, lb, lb, 0);
        vhdx_pwrite(&dev, buf, lb, span + lb < dev.size ? span : 0, 0);
      }
      vhdx_write_zeroes(&dev, lb, lb, 0);
    }
    vhdx_flush(&dev);
    vhdx_close(&dev);
    vd_file_close(dev.file);
  }
  return 0;
}
