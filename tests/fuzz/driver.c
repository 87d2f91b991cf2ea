/* Standalone driver for the libFuzzer harnesses, so that `make check`
 * runs every harness without clang: each seed file given on the command
 * line (or every file in a given directory) is run as is, then
 * VD_FUZZ_ITERS (default 2000) deterministic mutations of the seeds
 * (bit flips, truncations, extensions, interesting 8/16/32/64-bit values).
 * With --enable-fuzzing and CC=clang the same harnesses are linked with
 * -fsanitize=fuzzer instead, for long coverage-guided runs by hand.
 *
 * A harness defines LLVMFuzzerTestOneInput and nothing else. */
#include <config.h>

#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_SEEDS 256
/* VHDX images start at 4 MiB (header section, log, BAT, metadata). */
#define FUZZ_MAX_LEN (16u << 20)

static uint8_t *seeds[FUZZ_MAX_SEEDS];
static size_t seed_len[FUZZ_MAX_SEEDS];
static int nseeds;

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t
fuzz_rand(void)
{
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void
fuzz_load(const char *path)
{
  struct stat st;
  if (stat(path, &st) != 0)
    return;
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    struct dirent *e;
    char p[4096];
    while (d && (e = readdir(d))) {
      if (e->d_name[0] == '.')
        continue;
      snprintf(p, sizeof p, "%s/%s", path, e->d_name);
      fuzz_load(p);
    }
    if (d)
      closedir(d);
    return;
  }
  if (nseeds >= FUZZ_MAX_SEEDS || st.st_size > FUZZ_MAX_LEN)
    return;
  FILE *f = fopen(path, "rb");
  if (!f)
    return;
  uint8_t *b = malloc((size_t)st.st_size + 1);
  size_t n = b ? fread(b, 1, (size_t)st.st_size, f) : 0;
  fclose(f);
  if (!b)
    return;
  seeds[nseeds] = b;
  seed_len[nseeds++] = n;
  LLVMFuzzerTestOneInput(b, n);
}

static size_t
fuzz_mutate(uint8_t *buf, size_t len, size_t cap)
{
  static const uint64_t interesting[] = {
    0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0xffff, 0x7fffffff, 0xffffffff,
    0x80000000, 0x1000, 0x200, UINT64_MAX, 0x7fffffffffffffffULL
  };
  int rounds = 1 + (int)(fuzz_rand() % 8);
  for (int i = 0; i < rounds; i++) {
    switch (fuzz_rand() % 6) {
    case 0: case 1:  /* flip a bit */
      if (len)
        buf[fuzz_rand() % len] ^= (uint8_t)(1u << (fuzz_rand() % 8));
      break;
    case 2:  /* random byte */
      if (len)
        buf[fuzz_rand() % len] = (uint8_t)fuzz_rand();
      break;
    case 3: {  /* interesting value, either byte order */
      if (len < 8)
        break;
      uint64_t v = interesting[fuzz_rand() % (sizeof interesting / 8)];
      size_t at = fuzz_rand() % (len - 7), w = 1u << (fuzz_rand() % 4);
      bool be = fuzz_rand() & 1;
      for (size_t k = 0; k < w; k++)
        buf[at + k] = (uint8_t)(v >> (8 * (be ? w - 1 - k : k)));
      break;
    }
    case 4:  /* truncate */
      if (len)
        len = fuzz_rand() % len;
      break;
    case 5: {  /* extend with random bytes */
      size_t add = fuzz_rand() % 1024;
      if (len + add > cap)
        add = cap - len;
      for (size_t k = 0; k < add; k++)
        buf[len + k] = (uint8_t)fuzz_rand();
      len += add;
      break;
    }
    }
  }
  return len;
}

int
main(int argc, char **argv)
{
  for (int i = 1; i < argc; i++)
    fuzz_load(argv[i]);
  const char *it = getenv("VD_FUZZ_ITERS");
  long iters = it ? strtol(it, NULL, 10) : 2000;
  size_t cap = FUZZ_MAX_LEN + 1024;
  uint8_t *buf = malloc(cap);
  if (!buf)
    return 99;
  for (long i = 0; i < iters; i++) {
    size_t len = 0;
    if (nseeds) {
      int s = (int)(fuzz_rand() % (uint64_t)nseeds);
      len = seed_len[s];
      memcpy(buf, seeds[s], len);
    }
    len = fuzz_mutate(buf, len, cap);
    LLVMFuzzerTestOneInput(buf, len);
  }
  printf("%s: %d seeds, %ld mutated inputs, no crash\n", argv[0], nseeds,
         iters);
  free(buf);
  for (int i = 0; i < nseeds; i++)
    free(seeds[i]);
  return 0;
}
