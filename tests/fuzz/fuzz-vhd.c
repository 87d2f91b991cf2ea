/* libFuzzer harness for the VHD parsers and the driver's I/O paths.
 *
 * The input is a whole VHD file.  Before use the harness writes correct
 * checksums into the footer copies and the dynamic header it can locate,
 * so mutations reach the validation behind the checksums.  Then:
 *  - the checker runs on it (read-only);
 *  - it is opened read-only: reads spread over the disk, a block-status
 *    walk, info;
 *  - a copy is opened writable without its parent: writes, zero writes,
 *    discard and flush on hostile metadata, then check -r all on the result.
 *
 * vhd.c, vhd-meta.c and vhd-check.c are compiled into this file so their
 * code is instrumented (the program links the internal library, whose own
 * objects for them are then not pulled in: this copy is the VHD driver).
 * In make check, tests/fuzz/fuzz-vhd.sh makes seed images with vdtool and
 * the independent generator and runs the standalone driver over them; for
 * long runs by hand:
 *   ./configure CC=clang --enable-fuzzing && make tests/fuzz/libfuzzer-vhd
 *   VD_FUZZ_SEEDS=seeds tests/fuzz/fuzz-vhd.sh    (keeps the seeds)
 *   tests/fuzz/libfuzzer-vhd -max_total_time=600 seeds
 */
#include "vdisk/vhd-meta.c"
#include "vdisk/vhd-check.c"
#include "vdisk/vhd.c"

#include <sys/mman.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fuzz_fix_footer(uint8_t *b)
{
  if (memcmp(b, "conectix", 8) == 0)
    vd_put_be32(b + 64, vhd_checksum(b, VHD_FOOTER_SIZE, 64));
}

static void
fuzz_fix_checksums(uint8_t *b, size_t size)
{
  if (size < VHD_FOOTER_SIZE)
    return;
  fuzz_fix_footer(b + size - VHD_FOOTER_SIZE);
  if (memcmp(b, "conectix", 8) != 0)
    return;
  fuzz_fix_footer(b);
  uint64_t h = vd_get_be64(b + 16);
  if (h < size && size - h >= VHD_HEADER_SIZE &&
      memcmp(b + h, "cxsparse", 8) == 0)
    vd_put_be32(b + h + 36, vhd_checksum(b + h, VHD_HEADER_SIZE, 36));
}

static void
fuzz_noop(void *opaque, const char *msg)
{
}

/* Open PATH with the harness's own (instrumented) driver. */
static int
fuzz_open(struct vd_dev *dev, struct vhd_priv *priv, const char *path,
          unsigned flags)
{
  struct vd_file *f;
  memset(priv, 0, sizeof *priv);
  memset(dev, 0, sizeof *dev);
  if (vd_file_open(path, VD_FILE_NOLOCK | ((flags & VD_OPEN_RDWR) ? VD_FILE_RDWR : 0),
                   &f) < 0)
    return -1;
  dev->drv = &vd_vhd_driver;
  dev->path = (char *)path;
  dev->file = f;
  dev->priv = priv;
  dev->open_flags = flags | VD_OPEN_NOLOCK;
  dev->read_only = !(flags & VD_OPEN_RDWR);
  dev->logical_block = 512;
  if (vhd_open(dev) < 0) {
    vd_file_close(f);
    return -1;
  }
  return 0;
}

static void
fuzz_close(struct vd_dev *dev)
{
  vhd_close(dev);
  vd_file_close(dev->file);
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
  struct vd_check_report rep = { .message = fuzz_noop };
  struct vhd_priv priv;
  struct vd_dev dev;
  static uint8_t buf[65536];

  if (fd < 0) {
    fd = fuzz_memfd("fuzz-vhd", path, sizeof path);
    fd2 = fuzz_memfd("fuzz-vhd-rw", path2, sizeof path2);
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

  vhd_check(path, 0, &rep);

  if (fuzz_open(&dev, &priv, path, 0) == 0) {
    struct vd_extent ext;
    struct vd_info info;
    uint64_t sectors = dev.size / VHD_SECTOR;
    /* The first 64 KiB, then 16 reads spread over the disk, one of them
     * unaligned. */
    for (int i = 0; i <= 16 && sectors; i++) {
      uint64_t s = i == 0 ? 0 : sectors / 16 * (uint64_t)(i - 1);
      size_t n = sectors - s < 128 ? (size_t)(sectors - s) * VHD_SECTOR
                                   : sizeof buf;
      if (i == 3 && n > 1000)
        vhd_pread(&dev, buf, n - 1000, s * VHD_SECTOR + 17);
      else
        vhd_pread(&dev, buf, n, s * VHD_SECTOR);
    }
    uint64_t off = 0;
    for (int i = 0; i < 256 && off < dev.size; i++, off += ext.length)
      if (vhd_block_status(&dev, off, dev.size - off, &ext) < 0 ||
          ext.length == 0 || ext.length > dev.size - off)
        break;
    memset(&info, 0, sizeof info);
    vhd_info(&dev, &info);
    fuzz_close(&dev);
  }

  int r = fuzz_open(&dev, &priv, path2, VD_OPEN_RDWR | VD_OPEN_NOPARENT);
  if (r == 0) {
    uint64_t sectors = dev.size / VHD_SECTOR;
    memset(buf, 0xA5, sizeof buf);
    if (sectors >= 8) {
      vhd_pwrite(&dev, buf, 4096, 0, 0);
      vhd_pwrite(&dev, buf, 4096, (sectors / 2 >= 8 ? sectors / 2 - 8 : 0) *
                 VHD_SECTOR, 0);
      vhd_write_zeroes(&dev, (sectors - 8) * VHD_SECTOR, 4096, 0);
      vhd_discard(&dev, 0, dev.size, 0);
      vhd_pwrite(&dev, buf, 512, (sectors - 1) * VHD_SECTOR, 0);
    }
    vhd_flush(&dev);
    fuzz_close(&dev);
    memset(&rep, 0, sizeof rep);
    rep.message = fuzz_noop;
    vhd_check(path2, VD_CHECK_FIX_ALL, &rep);
  }
  return 0;
}
