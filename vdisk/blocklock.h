/* libvdisk (internal) — a small table of mutexes that serialises
 * read-modify-write of a range of blocks: block B maps to lock B % N.
 * Used by the device layer (partial logical blocks, dev.c) and the file
 * layer (unaligned O_DIRECT writes, io.c).  A range's first and last block
 * are the only ones a read-modify-write touches partially, so only their
 * locks are taken, always the lower index first (no deadlock between two
 * ranges).  Callers name their own lock in the lock order (driver.h). */
#ifndef VDISK_BLOCKLOCK_H
#define VDISK_BLOCKLOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* Initialise or destroy the N mutexes of LOCKS. */
static inline void
vd_blocklock_init(pthread_mutex_t *locks, unsigned n)
{
  for (unsigned i = 0; i < n; i++)
    pthread_mutex_init(&locks[i], NULL);
}

static inline void
vd_blocklock_destroy(pthread_mutex_t *locks, unsigned n)
{
  for (unsigned i = 0; i < n; i++)
    pthread_mutex_destroy(&locks[i]);
}

/* Take (LOCK) or release the locks of blocks FIRST and LAST. */
static inline void
vd_blocklock(pthread_mutex_t *locks, unsigned n, uint64_t first,
             uint64_t last, bool lock)
{
  unsigned a = (unsigned)(first % n), b = (unsigned)(last % n);
  if (a > b) {
    unsigned t = a;
    a = b;
    b = t;
  }
  if (lock) {
    pthread_mutex_lock(&locks[a]);
    if (b != a)
      pthread_mutex_lock(&locks[b]);
  } else {
    if (b != a)
      pthread_mutex_unlock(&locks[b]);
    pthread_mutex_unlock(&locks[a]);
  }
}

#endif /* VDISK_BLOCKLOCK_H */
