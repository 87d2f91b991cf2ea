/* libvdisk RAID — RAID1 write-behind (md's --write-behind): writes to the
 * write-mostly members (a mirror over a slow link) complete in the
 * background, so a request is acknowledged once the other members hold
 * it.  At most a->wb_limit such writes are outstanding; a writer beyond
 * that waits (backpressure, never an unbounded queue).
 *
 * Why acknowledged stays durable: a behind write holds its bitmap region
 * dirty (raid_bitmap_start before it is queued, raid_bitmap_end after it
 * has been written), and a flush clears only regions with no write in
 * flight since it began (raid_flush).  After a crash the region is
 * resynced from a member that is not write-mostly (raid1.c), which had
 * the data before the request was acknowledged.  One worker applies the
 * queue in order, and writes are queued under their region's lock, so
 * overlapping writes land on the slow member in the order they were
 * made.  Readers that must read a write-mostly member, resync, scrub,
 * rebuild and close first wait for the queue to drain (raid_wb_drain).
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "raid/raid.h"

struct raid_wb_item {
  struct raid_wb_item *next;
  int slot;
  uint64_t off;
  size_t len;
  uint8_t data[];
};

struct raid_wb {
  pthread_mutex_t lock;
  pthread_cond_t cond;            /* queue changed: work, room or drained */
  struct raid_wb_item *head, *tail;
  unsigned outstanding;           /* queued + being written */
  bool stop;
  pthread_t thread;
};

static void *raid_wb_worker(void *arg)
{
  struct raid_array *a = arg;
  struct raid_wb *w = a->wb;
  pthread_mutex_lock(&w->lock);
  for (;;) {
    while (!w->head && !w->stop)
      pthread_cond_wait(&w->cond, &w->lock);
    struct raid_wb_item *it = w->head;
    if (!it)
      break;                      /* stopping, and nothing left */
    w->head = it->next;
    if (!w->head)
      w->tail = NULL;
    pthread_mutex_unlock(&w->lock);
    /* A member that failed meanwhile takes nothing more; its bitmap bits
     * stay set for a re-add, as for any write it misses. */
    if (raid_member_writable(a, it->slot, it->off)) {
      int r = raid_mio_one(a, it->slot, RAID_MIO_WRITE, it->data, it->len,
                           it->off);
      if (r < 0)
        raid_member_failed(a, it->slot, r);
    }
    raid_bitmap_end(a, it->off, it->len);
    free(it);
    pthread_mutex_lock(&w->lock);
    w->outstanding--;
    pthread_cond_broadcast(&w->cond);
  }
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

int raid_wb_start(struct raid_array *a)
{
  if (!a->wb_limit || !a->writable || a->wb)
    return 0;
  struct raid_wb *w = calloc(1, sizeof *w);
  if (!w)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  pthread_mutex_init(&w->lock, NULL);
  pthread_cond_init(&w->cond, NULL);
  a->wb = w;
  int e = pthread_create(&w->thread, NULL, raid_wb_worker, a);
  if (e) {
    a->wb = NULL;
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
    return vd_set_error(e, "%s: cannot start the write-behind thread",
                        a->desc_path);
  }
  return 0;
}

int raid_wb_queue(struct raid_array *a, int slot, const void *buf, size_t len,
                  uint64_t off)
{
  struct raid_wb *w = a->wb;
  struct raid_wb_item *it = malloc(sizeof *it + len);
  if (!it)
    return vd_set_error(ENOMEM, "%s: out of memory", a->desc_path);
  int r = raid_bitmap_start(a, off, len);
  if (r < 0) {
    free(it);
    return r;
  }
  it->next = NULL;
  it->slot = slot;
  it->off = off;
  it->len = len;
  memcpy(it->data, buf, len);
  pthread_mutex_lock(&w->lock);
  while (w->outstanding >= a->wb_limit)
    pthread_cond_wait(&w->cond, &w->lock);
  w->outstanding++;
  if (w->tail)
    w->tail->next = it;
  else
    w->head = it;
  w->tail = it;
  pthread_cond_broadcast(&w->cond);
  pthread_mutex_unlock(&w->lock);
  return 0;
}

void raid_wb_drain(struct raid_array *a)
{
  struct raid_wb *w = a->wb;
  if (!w)
    return;
  pthread_mutex_lock(&w->lock);
  while (w->outstanding)
    pthread_cond_wait(&w->cond, &w->lock);
  pthread_mutex_unlock(&w->lock);
}

unsigned raid_wb_outstanding(struct raid_array *a)
{
  struct raid_wb *w = a->wb;
  if (!w)
    return 0;
  pthread_mutex_lock(&w->lock);
  unsigned n = w->outstanding;
  pthread_mutex_unlock(&w->lock);
  return n;
}

void raid_wb_stop(struct raid_array *a)
{
  struct raid_wb *w = a->wb;
  if (!w)
    return;
  pthread_mutex_lock(&w->lock);
  w->stop = true;
  pthread_cond_broadcast(&w->cond);
  pthread_mutex_unlock(&w->lock);
  pthread_join(w->thread, NULL);  /* the queue is written out first */
  a->wb = NULL;
  pthread_cond_destroy(&w->cond);
  pthread_mutex_destroy(&w->lock);
  free(w);
}
