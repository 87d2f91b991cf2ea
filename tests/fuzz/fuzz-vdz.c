/* libFuzzer harness for the vdz header, index and cluster parsers.
 *
 * The input is a whole vdz file.  Before parsing, the harness writes the
 * correct CRC-32C into every checksum field it can locate (cluster CRCs
 * for entries that point inside the input, then the index CRC, then the
 * header CRC), so mutations reach the validation behind the checksums
 * instead of stopping at them.  The file is then opened through the
 * driver's own open, every cluster is read, the extent map walked and
 * the checker run.
 *
 * vdz.c is compiled into this file so its code is instrumented (the
 * program links the internal library, whose vdz object is then not pulled
 * in: this copy is the vdz driver).  In make check, tests/fuzz/fuzz-vdz.sh
 * makes seed images with vdtool and runs the standalone driver over them;
 * for long runs by hand:
 *   ./configure CC=clang --enable-fuzzing && make tests/fuzz/libfuzzer-vdz
 *   VD_FUZZ_SEEDS=seeds tests/fuzz/fuzz-vdz.sh    (keeps the seeds)
 *   tests/fuzz/libfuzzer-vdz -max_total_time=600 seeds
 */
#include "vdisk/vdz.c"

#include <sys/mman.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_fix_crcs(uint8_t *b, size_t size)
{
  uint64_t ioff, isize, end;

  if (size < VDZ_HEADER_LEN)
    return;
  ioff = vd_get_le64(b + 32);
  isize = vd_get_le64(b + 40);
  if (!vd_add_overflow(ioff, isize, &end) && end <= size) {
    for (uint64_t i = 0; i + VDZ_ENTRY_LEN <= isize; i += VDZ_ENTRY_LEN) {
      uint8_t *e = b + ioff + i;
      uint64_t off = vd_get_le64(e), cend;
      uint32_t len = vd_get_le32(e + 8);
      if (len && !vd_add_overflow(off, len, &cend) && cend <= size)
        vd_put_le32(e + 12, vd_crc32c(0, b + off, len));
    }
    vd_put_le32(b + 76, vd_crc32c(0, b + ioff, isize));
  }
  vd_put_le32(b + VDZ_HEADER_LEN - 4, vd_crc32c(0, b, VDZ_HEADER_LEN - 4));
}

static void fuzz_noop(void *opaque, const char *msg)
{
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static int fd = -1;
  static char path[64];
  uint8_t *copy;
  struct vd_file *f = NULL;
  struct vdz_priv priv;
  struct vd_dev dev;
  struct vd_check_report rep = { .message = fuzz_noop };

  if (fd < 0) {
    fd = memfd_create("fuzz-vdz", 0);
    if (fd < 0)
      abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  copy = malloc(size ? size : 1);
  if (!copy)
    return 0;
  memcpy(copy, data, size);
  fuzz_fix_crcs(copy, size);
  if (ftruncate(fd, 0) < 0 || pwrite(fd, copy, size, 0) != (ssize_t)size)
    abort();
  free(copy);

  vdz_check(path, 0, &rep);

  if (vd_file_open(path, VD_FILE_NOLOCK, &f) < 0)
    return 0;
  memset(&priv, 0, sizeof priv);
  memset(&dev, 0, sizeof dev);
  dev.path = path;
  dev.file = f;
  dev.priv = &priv;
  if (vdz_open(&dev) == 0) {
    uint8_t *buf = malloc(priv.cluster_size + 1);
    struct vd_extent ext;

    for (uint64_t off = 0; buf && off < dev.size; off += priv.cluster_size) {
      size_t n = dev.size - off < priv.cluster_size ? dev.size - off
                                                     : priv.cluster_size;
      vdz_pread(&dev, buf, n, off);          /* whole cluster */
      if (n > 1)
        vdz_pread(&dev, buf, n - 1, off + 1); /* through the cache */
    }
    free(buf);
    for (uint64_t off = 0; off < dev.size; off += ext.length)
      if (vdz_block_status(&dev, off, dev.size - off, &ext) < 0 ||
          ext.length == 0)
        abort();
  }
  vdz_close(&dev);
  vd_file_close(f);
  return 0;
}
