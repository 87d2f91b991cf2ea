/* vdtool convert — as qemu-img convert: copy an image into a new one,
 * skipping holes (block status) and zero runs (-S), with -p progress.
 *
 * Several worker threads (-m, default 4) claim chunks in order, so the
 * output is written mostly sequentially and dynamic formats allocate
 * blocks in ascending order. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "tools/vdtool.h"

const char vt_summary_convert[] = "copy an image to a new image, any format";
const char vt_usage_convert[] =
  "Usage: vdtool convert [-f FMT] [-O OUTPUT_FMT] [-o OPTIONS] [-S SIZE]\n"
  "                      [-m N] [-t CACHE] [-T CACHE] [-n] [-p] [-q] [-U]\n"
  "                      [-l SNAPSHOT] [-c] [-W] [-B BACKING [-F FMT]]\n"
  "                      FILENAME OUTPUT\n"
  "\n"
  "Copy the virtual disk FILENAME into OUTPUT.  Unallocated ranges of the\n"
  "source are skipped and runs of at least SIZE zero bytes are not written,\n"
  "so the output stays sparse.\n"
  "\n"
  "  -f FMT         source format (default: probe)\n"
  "  -O OUTPUT_FMT  output format (default raw)\n"
  "  -o OPTIONS     output format options (see 'vdtool create --help')\n"
  "  -S SIZE        sparse detection granularity (default 4K; 0 = write\n"
  "                 everything, fully allocating the output)\n"
  "  -m N           worker threads (1..16, default 4)\n"
  "  -t CACHE       output cache mode, as qemu-img: unsafe (default: no\n"
  "                 flush at all, the data is durable once the system\n"
  "                 writes it back), writeback (one flush at the end;\n"
  "                 the data is handed to the disk as the copy goes),\n"
  "                 writethrough (every write durable before the next),\n"
  "                 none (O_DIRECT with libaio, one flush at the end) or\n"
  "                 directsync (O_DIRECT, every write durable); a vdz\n"
  "                 output is always synced before it is renamed in place\n"
  "  -T CACHE       source cache mode: writeback (default) or unsafe, or\n"
  "                 none or directsync (O_DIRECT)\n"
  "  -n             do not create OUTPUT: it must exist and be large enough\n"
  "  -p             show progress\n"
  "  -q             quiet\n"
  "  -U             open the source without taking the image lock\n"
  "  -c             compress the output: only vdz compresses, and always\n"
  "                 does (other formats refuse -c, as qemu-img does)\n"
  "  -W             allow out-of-order writes (vdtool's workers always\n"
  "                 write their chunks concurrently; accepted for qemu-img\n"
  "                 scripts)\n"
  "  -B BACKING     make OUTPUT a differencing image over BACKING, which\n"
  "                 must read as the source's own backing file does: only\n"
  "                 what the source holds itself is copied (zeros written\n"
  "                 as zeros), as qemu-img convert -B\n"
  "  -F FMT         BACKING's format (default: probe)\n"
  "  -l SNAPSHOT    copy the source's internal snapshot (qcow2): an ID or\n"
  "                 name, snapshot.id=ID or snapshot.name=NAME\n"
  "  --backing=FILE the source's parent (needed when it is outside the\n"
  "                 source's folder tree or not a regular file)\n"
  "  --backing-format=FMT  the parent's format\n";

#define CONV_CHUNK (2u << 20)
/* With -t writeback, the written data is handed to the disk every
 * CONV_WRITE_BEHIND bytes of the source (vd_writeback), so the disk
 * works while the copy goes on and the final flush has little left. */
#define CONV_WRITE_BEHIND (8u << 20)

struct conv {
  struct vd_dev *src, *dst;
  uint64_t size;
  uint64_t sparse;        /* 0: no sparse detection */
  bool fresh;             /* output created by us: reads as zeros */
  bool top_only;          /* -B: copy only what the source holds itself */
  unsigned wflags;        /* VD_REQ_FUA for writethrough and directsync */
  bool write_behind;      /* -t writeback: vd_writeback as the copy goes */
  _Atomic uint64_t next;  /* next chunk offset to claim */
  _Atomic uint64_t done;
  _Atomic int err;
  pthread_mutex_t lock;   /* guards the progress bar */
  struct vt_progress prog;
  char errmsg[1024];
};

static void
conv_fail(struct conv *cv, int r)
{
  int expected = 0;
  if (atomic_compare_exchange_strong(&cv->err, &expected, r))
    snprintf(cv->errmsg, sizeof cv->errmsg, "%s",
             *vd_error() ? vd_error() : strerror(-r));
}

/* Write BUF (LEN bytes at OFF), leaving out zero runs of cv->sparse. */
static int
conv_write(struct conv *cv, const uint8_t *buf, size_t len, uint64_t off)
{
  if (!cv->sparse)
    return vd_pwrite(cv->dst, buf, len, off, cv->wflags);
  size_t pos = 0;
  while (pos < len) {
    size_t n = len - pos < cv->sparse ? len - pos : (size_t)cv->sparse;
    bool zero = vt_is_zero(buf + pos, n);
    size_t run = n;
    while (pos + run < len) {   /* extend the run of the same kind */
      size_t m = len - pos - run < cv->sparse ? len - pos - run
                                               : (size_t)cv->sparse;
      if (vt_is_zero(buf + pos + run, m) != zero)
        break;
      run += m;
    }
    int r;
    if (!zero)
      r = vd_pwrite(cv->dst, buf + pos, run, off + pos, cv->wflags);
    else if (!cv->fresh)
      r = vd_write_zeroes(cv->dst, off + pos, run, cv->wflags);
    else
      r = 0;
    if (r < 0)
      return r;
    pos += run;
  }
  return 0;
}

static int
conv_chunk(struct conv *cv, uint8_t *buf, uint64_t off, uint64_t len)
{
  uint64_t end = off + len;
  while (off < end) {
    struct vd_extent e;
    int r = vd_block_status(cv->src, off, end - off, &e);
    if (r < 0)
      return r;
    /* -B: what the source's parents hold, OUTPUT's backing file holds. */
    if (cv->top_only && (e.depth > 0 || (e.flags & VD_EXT_HOLE))) {
      off += e.length;
      continue;
    }
    /* -S 0 means "allocate everything": zeros are written as data. */
    if ((e.flags & VD_EXT_ZERO) && cv->sparse) {
      if (!cv->fresh)
        r = vd_write_zeroes(cv->dst, off, e.length, cv->wflags);
    } else {
      r = vd_pread(cv->src, buf, (size_t)e.length, off);
      if (r == 0)
        r = conv_write(cv, buf, (size_t)e.length, off);
    }
    if (r < 0)
      return r;
    off += e.length;
  }
  return 0;
}

static void *
conv_worker(void *opaque)
{
  struct conv *cv = opaque;
  /* One transparent huge page where the system gives them on request:
   * the first copy into the buffer then takes one page fault, not 512. */
  void *mem;
  if (posix_memalign(&mem, CONV_CHUNK, CONV_CHUNK)) {
    conv_fail(cv, -ENOMEM);
    return NULL;
  }
  uint8_t *buf = mem;
  (void)madvise(buf, CONV_CHUNK, MADV_HUGEPAGE);
  while (!atomic_load(&cv->err)) {
    uint64_t off = atomic_fetch_add(&cv->next, CONV_CHUNK);
    if (off >= cv->size)
      break;
    uint64_t len = cv->size - off < CONV_CHUNK ? cv->size - off : CONV_CHUNK;
    int r = conv_chunk(cv, buf, off, len);
    if (r < 0) {
      conv_fail(cv, r);
      break;
    }
    uint64_t d = atomic_fetch_add(&cv->done, len) + len;
    if (cv->write_behind &&
        d / CONV_WRITE_BEHIND != (d - len) / CONV_WRITE_BEHIND)
      vd_writeback(cv->dst);
    pthread_mutex_lock(&cv->lock);
    vt_progress_update(&cv->prog, d, cv->size);
    pthread_mutex_unlock(&cv->lock);
  }
  free(buf);
  return NULL;
}

/* qemu's cache modes (-t, -T) as open flags and whether every write is
 * made durable (FUA); -1 for an unknown mode. */
static int
conv_cache_mode(const char *mode, unsigned *flags, bool *sync)
{
  static const struct { const char *name; unsigned flags; bool sync; }
  modes[] = {
    { "unsafe", VD_OPEN_NO_FLUSH, false },
    { "writeback", 0, false },
    { "writethrough", 0, true },
    { "none", VD_OPEN_DIRECT, false },
    { "directsync", VD_OPEN_DIRECT, true },
  };
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
    if (strcmp(mode, modes[i].name) == 0) {
      *flags |= modes[i].flags;
      *sync = modes[i].sync;
      return 0;
    }
  return -1;
}

int
vt_cmd_convert(int argc, char **argv)
{
  const char *fmt = NULL, *ofmt = "raw", *opts = NULL, *snap = NULL;
  const char *obase = NULL, *obasefmt = NULL;
  bool compress = false;
  uint64_t sparse = 4096, threads = 4;
  bool no_create = false, progress = false, quiet = false;
  /* qemu-img convert's defaults: -t unsafe, -T writeback. */
  unsigned sflags = 0, dflags = VD_OPEN_RDWR | VD_OPEN_NO_FLUSH;
  bool wsync = false;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt(argc, argv, "f:O:o:S:m:t:T:npqUl:cWB:F:")) != -1) {
    switch (c) {
    case 'f': fmt = optarg; break;
    case 'O': ofmt = optarg; break;
    case 'o': opts = optarg; break;
    case 'S':
      if (vd_parse_size(optarg, &sparse) < 0) {
        vt_error("-S: %s", vd_error());
        return VT_EXIT_ERR;
      }
      if (sparse % 512 && sparse != 0)
        return vt_bad_usage("convert", "-S must be a multiple of 512");
      break;
    case 'm': {
      char *end;
      threads = strtoull(optarg, &end, 10);
      if (*end || threads < 1 || threads > 16)
        return vt_bad_usage("convert", "-m must be between 1 and 16");
      break;
    }
    case 't':
    case 'T': {
      unsigned *fl = c == 't' ? &dflags : &sflags;
      bool *sync = c == 't' ? &wsync : &(bool){ false };
      *fl &= ~(VD_OPEN_DIRECT | VD_OPEN_NO_FLUSH);
      if (conv_cache_mode(optarg, fl, sync) < 0)
        return vt_bad_usage("convert", "-%c: cache mode must be unsafe, "
                            "writeback, writethrough, none or directsync, "
                            "not '%s'", c, optarg);
      break;
    }
    case 'n': no_create = true; break;
    case 'p': progress = true; break;
    case 'q': quiet = true; break;
    case 'U': sflags |= VD_OPEN_NOLOCK; break;
    case 'l': snap = optarg; break;
    case 'c': compress = true; break;
    case 'W': break;
    case 'B': obase = optarg; break;
    case 'F': obasefmt = optarg; break;
    default: return vt_bad_option("convert", argv);
    }
  }
  if (vt_options_want_help(opts))
    return vt_options_help(ofmt);
  if (argc - optind != 2)
    return vt_bad_usage("convert", "expected FILENAME and OUTPUT");
  const char *in = argv[optind], *out = argv[optind + 1];
  const char *oname = vd_format_name(ofmt);
  if (compress && (!oname || strcmp(oname, "vdz") != 0)) {
    vt_error("-c: format '%s' cannot compress (vdz is the compressed "
             "format)", ofmt);
    return VT_EXIT_ERR;
  }
  if (obasefmt && !obase)
    return vt_bad_usage("convert", "-F needs -B");
  if (obase && no_create)
    return vt_bad_usage("convert", "-B needs a new OUTPUT (not -n)");

  struct conv cv = { .sparse = sparse, .fresh = !no_create && !obase,
                     .top_only = obase != NULL,
                     .wflags = wsync ? VD_REQ_FUA : 0,
                     .write_behind = !wsync && !(dflags & (VD_OPEN_NO_FLUSH |
                                                           VD_OPEN_DIRECT)) };
  cv.prog.enabled = progress && !quiet;
  cv.prog.last = -1;
  pthread_mutex_init(&cv.lock, NULL);
  int rc = VT_EXIT_ERR, r;

  if (vt_open_snapshot(in, fmt, sflags, snap, &cv.src) < 0)
    return VT_EXIT_ERR;
  cv.size = vd_size(cv.src);
  struct vd_create_args args = { .size = cv.size, .options = opts,
                                 .backing = obase,
                                 .backing_format = obasefmt };

  if (!no_create) {
    /* A format that writes its output in one pass (vdz) imports it. */
    r = obase ? -ENOTSUP
              : vd_import(out, ofmt, cv.src, &args,
                          progress ? vt_progress_cb : NULL, &cv.prog);
    if (r == 0) {
      vt_progress_end(&cv.prog);
      rc = VT_EXIT_OK;
      goto out;
    }
    if (r != -ENOTSUP) {
      vt_engine_error(r);
      goto out;
    }
    r = vd_create(out, ofmt, &args);
    if (r < 0) {
      vt_engine_error(r);
      goto out;
    }
  }
  if (vt_open(out, no_create ? NULL : ofmt, dflags, &cv.dst) < 0)
    goto out;
  if (vd_size(cv.dst) < cv.size) {
    vt_error("%s: output is smaller (%" PRIu64 " bytes) than the source (%"
             PRIu64 " bytes)", out, vd_size(cv.dst), cv.size);
    goto out;
  }
  if (vd_logical_block(cv.dst) > 512 && cv.sparse % vd_logical_block(cv.dst))
    cv.sparse = vd_logical_block(cv.dst);

  vt_progress_update(&cv.prog, 0, cv.size);
  pthread_t tids[16];
  unsigned started = 0;
  for (unsigned i = 0; i < threads; i++) {
    if (pthread_create(&tids[i], NULL, conv_worker, &cv) != 0)
      break;
    started++;
  }
  if (!started)
    conv_worker(&cv);
  for (unsigned i = 0; i < started; i++)
    pthread_join(tids[i], NULL);
  if (atomic_load(&cv.err)) {
    vt_error("%s", cv.errmsg);
    goto out;
  }
  r = vd_flush(cv.dst);
  if (r < 0) {
    vt_engine_error(r);
    goto out;
  }
  vt_progress_end(&cv.prog);
  rc = VT_EXIT_OK;
out:
  if (cv.dst && vd_close(cv.dst) < 0 && rc == VT_EXIT_OK) {
    vt_engine_error(-EIO);
    rc = VT_EXIT_ERR;
  }
  vd_close(cv.src);
  pthread_mutex_destroy(&cv.lock);
  return rc;
}
