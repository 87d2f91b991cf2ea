/* libFuzzer harness for the VMDK parsers and the driver's read paths.
 *
 * The input is taken three ways: as descriptor text (vmdk_desc_parse), as
 * a sparse extent header (vmdk_sparse_header, its first 512 bytes), and
 * as a whole image opened read-only without its parent (descriptor or
 * hosted/COWD sparse extent: grain directory and tables, compressed
 * grains): reads spread over the disk (one unaligned), a block-status
 * walk, info.  Extents a fuzzed descriptor names resolve next to a memfd
 * (/proc/self/fd), where the confinement rules refuse them.
 *
 * vmdk.c, vmdk-desc.c and vmdk-sparse.c are compiled into this file so
 * their code is instrumented.  In make check, tests/fuzz/fuzz-vmdk.sh
 * makes seeds with qemu-img and runs the standalone driver over them; for
 * long runs by hand:
 *   ./configure CC=clang --enable-fuzzing && make tests/fuzz/libfuzzer-vmdk
 *   VD_FUZZ_SEEDS=seeds tests/fuzz/fuzz-vmdk.sh    (keeps the seeds)
 *   tests/fuzz/libfuzzer-vmdk -max_total_time=600 seeds
 */
#include "vdisk/vmdk-desc.c"
#include "vdisk/vmdk-sparse.c"
#include "vdisk/vmdk.c"

#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static int fd = -1;
  static char path[64];
  static uint8_t buf[65536];
  struct vmdk_priv priv;
  struct vd_dev dev;
  struct vd_file *f;

  if (fd < 0) {
    if ((fd = memfd_create("fuzz-vmdk", 0)) < 0)
      abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  struct vmdk_desc d;
  if (vmdk_desc_parse((const char *)data, size, &d, "fuzz") == 0)
    vmdk_desc_free(&d);
  if (size >= 512) {
    struct vmdk_sparse_hdr h;
    vmdk_sparse_header(data, &h, "fuzz");
  }
  if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
    abort();

  memset(&priv, 0, sizeof priv);
  memset(&dev, 0, sizeof dev);
  if (vd_file_open(path, VD_FILE_NOLOCK, &f) < 0)
    return 0;
  dev.drv = &vd_vmdk_driver;
  dev.path = path;
  dev.file = f;
  dev.priv = &priv;
  dev.open_flags = VD_OPEN_NOLOCK | VD_OPEN_NOPARENT;
  dev.read_only = true;
  dev.logical_block = 512;
  if (vmdk_open(&dev) == 0) {
    struct vd_extent ext;
    struct vd_info info;
    for (int i = 0; i <= 16; i++) {
      uint64_t off = dev.size / 16 * (uint64_t)i;
      size_t n = dev.size - off < sizeof buf ? (size_t)(dev.size - off)
                                             : sizeof buf;
      if (n == 0)
        continue;
      if (i == 3 && n > 1000)
        vmdk_pread(&dev, buf, n - 1000, off + 17);
      else
        vmdk_pread(&dev, buf, n, off);
    }
    uint64_t off = 0;
    for (int i = 0; i < 256 && off < dev.size; i++, off += ext.length)
      if (vmdk_block_status(&dev, off, dev.size - off, &ext) < 0 ||
          ext.length == 0 || ext.length > dev.size - off)
        break;
    memset(&info, 0, sizeof info);
    vmdk_info(&dev, &info);
    vmdk_close(&dev);
  }
  vd_file_close(f);
  return 0;
}
