/* libvdisk — RAID 0, 1 and 5 over member vd_devs (internal header).
 *
 * An array is a vd_dev (driver "raid") opened through a small text
 * descriptor naming its members; the authoritative state lives in a
 * superblock on every member (raid/super.c, docs/raid-format.md).  Members
 * are any vd_dev: raw files, block devices, VHD images.
 *
 * Files: raid.c (assembly, member I/O pool, failure handling, bitmap, the
 * driver ops, the level table), raid0.c / raid1.c / raid5.c (one per
 * level, each its struct raid_level_ops), parity.c (XOR),
 * super.c (superblock and descriptor codecs), assemble.c (create,
 * assemble), members.c (fail, replace, member signatures), rebuild.c
 * (resync, rebuild, scrub), runtime.c (the runtime entries that lead
 * vdtool to the serving process's control socket), check.c (vdtool
 * check).  Faults are injected by a filter stacked over the members
 * (tests/unit/fault.h), not here.
 *
 * Locks of an array, outer first (a thread holding one never takes one
 * listed above it; an array's locks come before those of its members):
 *   stripe_lock[h(s)]  raid_stripe_lock(a, s): stripe s (RAID5) or chunk s
 *                      (RAID1) on the members: writes, read-modify-write,
 *                      resync/scrub/rebuild of it, read repair.  Held
 *                      across that member I/O: that is what it orders.
 *                      One at a time (the rebuild alone takes a run of
 *                      them, raid_stripes_lock: no cycle, since nobody
 *                      else waits for a second); hashed, so unrelated
 *                      stripes share.
 *   ppl_lock[slot]     a PPL slot (member, stripe mod slots): ppl_stripe[]
 *                      and ppl_done_gen[] of the slot and its entry on
 *                      disk.  Held from the log write (and flush; maybe a
 *                      flush of every member) until the in-place writes it
 *                      protects are done (raid5_ppl_done): the entry must
 *                      not be replaced under them.
 *   sb_lock            sb (events, flags, resync_offset, roles), the
 *                      member swap of a replace (m[].dev, path, dev_uuid),
 *                      retired[]/nretired, rebuild_running and the rebuild
 *                      thread handle; writers of m[].state and .recovery
 *                      that must reach the superblocks.  Held across the
 *                      superblock writes and flushes of every member
 *                      (raid_sb_write_all_locked), so that each update is
 *                      one event and all members get the same one.
 *   bm_lock            bm[], bm_inflight[], bm_gen[], flush_gen.  Held
 *                      across bitmap block writes (and their flush in
 *                      raid_bitmap_start): a region's bit is durable
 *                      before the write it covers starts, and an older copy
 *                      of a bitmap block never lands after a newer one.
 *   pool lock, batch lock (raid.c): leaves, never held across I/O.
 * sb_lock and bm_lock are never held together today.  Lock-free: m[].state,
 * .recovery, .inflight, .next_read, .read_errors, failed, dirty, crashed,
 * rebuild_active/stop/ret/rate/caller, rr (atomics; a reader may see a
 * state one update old, and rechecks under the lock where it matters).
 *
 * Generation counters (which writes a flush made durable):
 *   flush_gen      bm_lock; bumped by each raid_flush before its member
 *                  flush, which also stamps regions with writes in flight
 *   bm_gen[r]      bm_lock; flush_gen when the last write to region r
 *                  started: after flush G completes, region r's bit is
 *                  cleared only if bm_gen[r] < G and nothing is in flight
 *   ppl_gen        atomic; bumped when a member flush starts
 *                  (raid5_ppl_flush_begin)
 *   ppl_durable    atomic, only grows: the ppl_gen of the newest completed
 *                  member flush; writes completed before it are durable
 *   ppl_done_gen[] the slot's ppl_lock; ppl_gen when the slot's in-place
 *                  writes completed: the slot is busy (its entry still
 *                  protects volatile writes) while >= ppl_durable
 *   ppl_seq        atomic; sequence number of log entries
 * Functions named *_locked assert their lock in debug builds
 * (VD_ASSERT_HELD, vdisk/driver.h).
 */
#ifndef VDISK_RAID_RAID_H
#define VDISK_RAID_RAID_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "vdisk/vdisk.h"
#include "vdisk/crc32c.h"
#include "vdisk/driver.h"

#define RAID_MAX_MEMBERS 32
#define RAID_SB_OFFSET 4096u          /* as md v1.2: 4 KiB into the member */
#define RAID_SB_SIZE 4096u
#define RAID_BITMAP_OFFSET 8192u
#define RAID_BITMAP_MAX (120u * 1024) /* bytes: 983040 regions at most */
#define RAID_PPL_OFFSET (128u * 1024)
#define RAID_PPL_HDR 4096u            /* header block of one PPL slot */
#define RAID_PPL_SLOTS 8u
#define RAID_DATA_ALIGN (1024u * 1024)
#define RAID_DEFAULT_CHUNK (512u * 1024)
#define RAID_MIN_CHUNK 4096u
#define RAID_MAX_CHUNK (64u * 1024 * 1024)
#define RAID_NO_OFFSET UINT64_MAX     /* resync/recovery: nothing pending */

enum raid_level { RAID_LEVEL0 = 0, RAID_LEVEL1 = 1, RAID_LEVEL5 = 5 };
enum raid_layout { RAID_LAYOUT_LEFT_SYMMETRIC = 0 };
/* What keeps redundancy consistent across an unclean stop. */
enum raid_policy {
  RAID_POLICY_RESYNC = 0,  /* dirty flag only: full resync */
  RAID_POLICY_BITMAP = 1,  /* write-intent bitmap: resync dirty regions */
  RAID_POLICY_PPL = 2,     /* bitmap + partial parity log (RAID5) */
};
/* Role of a slot, as recorded in the superblock role table. */
enum raid_role_state {
  RAID_ROLE_ACTIVE = 0,
  RAID_ROLE_FAULTY = 1,
  RAID_ROLE_REBUILDING = 2, /* valid below its recovery offset */
};
#define RAID_SB_DIRTY 0x1u
#define RAID_SB_SPARE 0x2u      /* a hot spare's superblock: no slot (slot
                                   field RAID_SPARE_SLOT), its own device
                                   UUID in spare_self */
#define RAID_SPARE_SLOT UINT32_MAX
#define RAID_MAX_SPARES 8u
/* Role entry flags (bytes 20..23 of an entry). */
#define RAID_ROLE_F_READD 0x1u  /* REBUILDING by re-add: regions the bitmap
                                   does not mark are already good */

struct raid_role {
  uint8_t dev_uuid[16];        /* identity of the device in this slot */
  uint32_t state;              /* enum raid_role_state */
  uint32_t flags;              /* RAID_ROLE_F_* */
  uint64_t recovery_offset;    /* REBUILDING: member bytes (from the data
                                  offset) known good; FAULTY: the events
                                  of the superblock write that first
                                  recorded the failure (0 = unknown) */
};

/* Decoded superblock; the byte layout is in super.c. */
struct raid_sb {
  uint8_t uuid[16];
  uint32_t level, layout, chunk, nmembers, slot, flags, policy;
  uint64_t events;
  uint64_t array_size;         /* bytes */
  uint64_t data_offset;        /* bytes from the member's start */
  uint64_t data_size;          /* usable bytes per member (chunk multiple) */
  uint64_t resync_offset;      /* member bytes below which redundancy is
                                  known good; RAID_NO_OFFSET = all */
  uint64_t bitmap_offset, bitmap_region;
  uint32_t bitmap_bytes;
  uint64_t ppl_offset;
  uint32_t ppl_slots, ppl_slot_size;
  uint64_t ctime, utime;
  char name[33];
  struct raid_role role[RAID_MAX_MEMBERS];
  /* Hot spares (docs/raid-format.md, "Hot spares"): the device UUIDs of
   * the array's spares (members' superblocks), and in a spare's own
   * superblock (flag RAID_SB_SPARE) its device UUID. */
  uint32_t nspares;
  uint8_t spare_uuid[RAID_MAX_SPARES][16];
  uint8_t spare_self[16];
};

/* ---- super.c ---- */
/* Encode SB into a RAID_SB_SIZE buffer (checksum included). */
void raid_sb_encode(const struct raid_sb *sb, uint8_t *buf);
/* Decode and validate; WHAT names the member in messages.  -EINVAL (message
 * set) if it is not a valid superblock, whatever is wrong with it. */
int raid_sb_decode(const uint8_t *buf, struct raid_sb *sb, const char *what);
/* Read DEV's superblock (at RAID_SB_OFFSET) and decode it into SB; WHAT
 * names DEV in messages.  0 or a negative errno (message set). */
int raid_sb_read(struct vd_dev *dev, struct raid_sb *sb, const char *what);
bool raid_sb_is_magic(const uint8_t *buf);
/* Whether X and Y describe the same array and geometry (raid.c). */
bool raid_sb_same_array(const struct raid_sb *x, const struct raid_sb *y);

/* The descriptor: "VDRAID 1" + uuid + member lines (docs/raid-format.md). */
#define RAID_DESC_MAGIC "VDRAID 1\n"
struct raid_desc {
  uint8_t uuid[16];
  unsigned nmembers;
  char *member[RAID_MAX_MEMBERS];  /* as written (maybe relative), or NULL */
  char *format[RAID_MAX_MEMBERS];  /* member format, or NULL to probe */
  /* Options (docs/remote.md), kept across rewrites of the descriptor: */
  uint32_t timeout_ms;             /* "member-timeout SECONDS"; 0 = none;
                                      RAID_DEFAULT_TIMEOUT_MS when absent */
  uint32_t auto_readd_s;           /* "auto-re-add SECONDS"; 0 = off */
  bool write_mostly[RAID_MAX_MEMBERS]; /* "write-mostly SLOT" (RAID1) */
  uint32_t write_behind;           /* "write-behind N" (RAID1); 0 = off */
  unsigned nspares;                /* "spare FORMAT PATH" lines */
  char *spare[RAID_MAX_SPARES];    /* as written, like member[] */
  char *spare_format[RAID_MAX_SPARES]; /* or NULL to probe */
};
/* md's limit for outstanding write-behind requests. */
#define RAID_MAX_WRITE_BEHIND 16383u
#define RAID_DEFAULT_TIMEOUT_MS 5000u
#define RAID_MAX_TIMEOUT_S 3600u
int raid_desc_read(const char *path, struct raid_desc *d);
int raid_desc_write(const char *path, const struct raid_desc *d);
void raid_desc_free(struct raid_desc *d);
/* Replace PATH by a file holding DATA: a fresh temporary name (O_EXCL |
 * O_NOFOLLOW, never a planted file or symlink), fdatasync, rename, then
 * fsync of the folder.  MODE for a new file (umask applies); an existing
 * regular file's mode and owner are kept. */
int raid_file_replace(const char *path, const void *data, size_t len,
                      mode_t mode);
/* Check that PATH may be opened as a member without blocking: it must be
 * a regular file or a block device (a FIFO or a terminal would block the
 * opener).  A path that does not exist passes (vd_open reports it).
 * Message names the path. */
int raid_check_member_type(const char *path);
/* Resolve a member path relative to the descriptor's directory.  A
 * remote name (an NBD URI or an rbd: image, vd_is_remote_name) is kept as
 * it is. */
char *raid_desc_resolve(const char *desc_path, const char *member);
void raid_uuid_format(const uint8_t *u, char *out /* 37 bytes */);
int raid_uuid_parse(const char *s, uint8_t *u);
void raid_uuid_generate(uint8_t *u);

/* ---- parity.c ---- */
/* DST = SRC[0] ^ SRC[1] ^ ... ^ SRC[N-1], one pass over the sources.  DST
 * may be one of the sources. */
void raid_xor(void *dst, const void *const *src, unsigned n, size_t len);
/* DST ^= SRC. */
void raid_xor_into(void *dst, const void *src, size_t len);
/* Make raid_xor use the I-th (from 0) version of its kernel that this CPU
 * runs, widest first, and return its name; NULL (nothing changed) when
 * there are fewer.  raid_xor picks version 0 by itself: for tests and
 * benchmarks only. */
const char *raid_xor_impl_select(unsigned i);
/* A 4096-aligned buffer of at least LEN bytes owned by the calling thread
 * (contents undefined), valid until its next call with the same SLOT;
 * NULL when out of memory.  Slot 0: a request's data path; slot 1: the
 * partial parity log entry written inside it. */
#define RAID_SCRATCH_SLOTS 2
void *raid_scratch(int slot, size_t len);

/* ---- the array ---- */
/* RAID_MIO_CALL: not a member request but one lane of raid_run_lanes. */
enum raid_mio_op { RAID_MIO_READ, RAID_MIO_WRITE, RAID_MIO_FLUSH,
                   RAID_MIO_CALL };

struct raid_member {
  char *path;                  /* resolved path, NULL if none in descriptor */
  struct vd_dev *dev;          /* NULL when missing or closed after failure */
  _Atomic int state;           /* enum raid_role_state, or RAID_ROLE_FAULTY
                                  when missing */
  _Atomic uint64_t recovery;   /* REBUILDING: data bytes known good */
  uint8_t dev_uuid[16];
  _Atomic unsigned inflight;   /* RAID1 read balancing */
  _Atomic uint64_t next_read;  /* RAID1: end of this member's last read */
  _Atomic unsigned read_errors;
  int assembled;               /* VD_RAID_STATE_* decided at assembly */
  char *format;                /* descriptor's format, NULL = probe */
  bool write_mostly;           /* RAID1: reads avoid it (descriptor) */
  _Atomic bool readd;          /* REBUILDING by re-add: only the regions
                                  the bitmap marks are copied */
  uint64_t failed_events;      /* events of the superblock write that
                                  first recorded it faulty (0: unknown);
                                  guarded by sb_lock */
  bool failed_recorded;        /* failed_events is set; sb_lock */
  _Atomic uint64_t readd_copied;  /* last re-add: member bytes copied */
  _Atomic uint64_t readd_skipped; /* ... and skipped (clean regions) */
};

struct raid_mio {
  int slot;
  int op;                      /* enum raid_mio_op */
  void *buf;
  size_t len;
  uint64_t off;                /* data-relative member offset, or from the
                                  member's start when abs_off */
  bool abs_off;                /* metadata (superblock, bitmap, log): OFF
                                  is not moved past sb.data_offset */
  int ret;
  /* RAID_MIO_CALL: CALL(BUF, LANE, NLANES) instead of a request. */
  void (*call)(void *arg, unsigned lane, unsigned nlanes);
  unsigned lane, nlanes;
  struct raid_batch *batch;
  struct raid_mio *next;
};

struct raid_pool;
struct raid_level_ops;

/* A hot spare of an open array (spares.c). */
struct raid_spare {
  char *path;                  /* resolved path */
  char *format;                /* descriptor's format, NULL = probe */
  struct vd_dev *dev;          /* open (and locked) while usable, else NULL */
  uint8_t dev_uuid[16];        /* from its superblock */
  char why[160];               /* why it is not usable, or "" */
};

/* Stripe locks (RAID5 read-modify-write, RAID1 regions, rebuild): a
 * stripe takes one of RAID_STRIPE_LOCKS mutexes, picked by the top
 * RAID_STRIPE_LOCK_BITS bits of a multiplicative hash of its number. */
#define RAID_STRIPE_LOCK_BITS 8
#define RAID_STRIPE_LOCKS (1 << RAID_STRIPE_LOCK_BITS)

struct raid_array {
  struct raid_sb sb;           /* guarded by sb_lock (role[] mirrors the
                                  members' states at the last sb write) */
  unsigned n;
  const struct raid_level_ops *ops; /* of sb.level, set at open */
  struct raid_member m[RAID_MAX_MEMBERS];
  char *desc_path;             /* as opened: for messages */
  char *desc_abs;              /* absolute (realpath at open): for the
                                  descriptor's rewrites and its side files,
                                  which must not move when the serving
                                  process changes folder (a daemon's
                                  chdir("/")) */
  bool writable;
  bool force;                  /* assembled with --force */
  const char *member_filter;   /* open option filter the members are
                                  opened with (the array device's), or NULL */
  unsigned member_flags;       /* VD_OPEN_* the members are opened with */
  uint32_t timeout_ms;         /* member request timeout (descriptor) */
  uint32_t auto_readd_s;       /* auto re-add period, 0 = off */
  uint32_t wb_limit;           /* write-behind: most outstanding, 0 = off */
  struct raid_wb *wb;          /* its queue and worker (write-behind.c) */
  bool member_uris;            /* members may be NBD URIs: the array was
                                  named by the operator (operator_named) */
  pthread_t readd_thread;      /* auto re-add (raid_readd_auto_*) */
  bool readd_running;          /* thread joinable; open/close only */
  _Atomic bool readd_stop;
  pthread_mutex_t readd_lock;  /* with readd_cond: the thread's sleep */
  pthread_cond_t readd_cond;
  uint64_t stripe_bytes;       /* array bytes per row: ops->row_bytes */
  uint64_t region;             /* lock unit in member bytes */

  pthread_mutex_t sb_lock;
  _Atomic bool failed;         /* too many failures: EIO, no more writes */
  _Atomic bool dirty;          /* sb DIRTY flag written */
  _Atomic bool crashed;        /* vd_raid_crash: close writes nothing */
  _Atomic unsigned unrecorded; /* member failures that no completed
                                  superblock write records yet: a flush
                                  waits for that write (raid_flush_members) */

  pthread_mutex_t stripe_lock[RAID_STRIPE_LOCKS]; /* raid_stripe_lock */

  /* Write-intent bitmap (member regions of sb.bitmap_region bytes). */
  pthread_mutex_t bm_lock;
  uint8_t *bm;                 /* sb.bitmap_bytes, guarded by bm_lock */
  uint32_t *bm_inflight;       /* per region, guarded by bm_lock */
  uint64_t *bm_gen;            /* flush generation of the last write start,
                                  guarded by bm_lock */
  uint64_t nregions;
  uint64_t flush_gen;          /* guarded by bm_lock */

  /* PPL slot locks, per member and slot. */
  pthread_mutex_t *ppl_lock;
  int64_t *ppl_stripe;         /* stripe whose entry is on disk, or -1;
                                  guarded by the slot's ppl_lock */
  uint64_t *ppl_done_gen;      /* ppl_gen when its writes completed;
                                  guarded by the slot's ppl_lock */
  _Atomic uint64_t ppl_gen;    /* bumped when a member flush starts */
  _Atomic uint64_t ppl_durable;/* writes done before this gen are durable */
  _Atomic uint64_t ppl_seq;
  struct raid5_ppl_ro *ppl_ro; /* read-only open of a dirty degraded array:
                                  the log entries reads apply (raid5.c) */

  struct raid_pool *pool;

  pthread_t rebuild;
  bool rebuild_running;        /* thread joinable; guarded by sb_lock */
  _Atomic bool rebuild_active; /* thread still working */
  pthread_cond_t rebuild_done; /* with sb_lock: rebuild_active cleared */
  _Atomic bool rebuild_stop;
  _Atomic int rebuild_ret;
  _Atomic uint64_t rebuild_rate; /* bytes/s, 0 = unlimited */
  _Atomic bool rebuild_caller; /* the rebuild is driven by a caller
                                  (vd_raid_rebuild_step), not a thread;
                                  rebuild_active is set meanwhile */
  int rb_slot;                 /* the rebuild owner's slot and checkpoint */
  uint64_t rb_ckpt_off;        /* state (raid_rebuild_step_rows): the */
  double rb_last_ckpt;         /* rebuild thread or the stepping caller */
  uint8_t *rb_scratch;         /* the rebuild owner's buffers, kept for the
                                  next rebuild (raid_rebuild_scratch) */
  struct vd_dev *retired[RAID_MAX_MEMBERS * 4]; /* replaced members, closed
                                  at the end (I/O may still use them) */
  unsigned nretired;           /* guarded by sb_lock */

  atomic_uint_fast64_t rr;     /* RAID1 round robin */

  /* Hot spares (spares.c).  spare[] and nspares are guarded by sb_lock
   * (set at open, changed by add, remove and a takeover); the takeover
   * thread sleeps on spare_cond under spare_wlock (a leaf). */
  struct raid_spare spare[RAID_MAX_SPARES];
  unsigned nspares;
  pthread_t spare_thread;
  bool spare_running;          /* thread joinable; open/close only */
  bool spare_stop, spare_kick; /* spare_wlock */
  pthread_mutex_t spare_wlock;
  pthread_cond_t spare_cond;
  pthread_mutex_t notify_lock; /* notify, notify_opaque; held across the
                                  call (a leaf for the engine: taken with
                                  no array lock held) */
  void (*notify)(void *opaque, const char *event, int slot,
                 const char *path);  /* takeover events (vd_raid_set_notify) */
  void *notify_opaque;
};

/* ---- write-behind.c: RAID1 writes to write-mostly members in the
 * background (descriptor option write-behind) ---- */
/* Start the worker when A is writable and has a limit (open). */
int raid_wb_start(struct raid_array *a);
/* Queue a copy of BUF for SLOT at data offset OFF, its bitmap region held
 * dirty until written; waits while the limit is reached. */
int raid_wb_queue(struct raid_array *a, int slot, const void *buf, size_t len,
                  uint64_t off);
/* Wait until every queued write has been written (or dropped with its
 * member's failure).  No-op without write-behind. */
void raid_wb_drain(struct raid_array *a);
unsigned raid_wb_outstanding(struct raid_array *a);
/* Write out the queue and end the worker (close). */
void raid_wb_stop(struct raid_array *a);

/* ---- raid.c: member I/O and state ---- */
/* Run N member requests in parallel; each mio->ret gets its result.
 * Returns 0 if all succeeded, else the first error. */
int raid_mio_run(struct raid_array *a, struct raid_mio *mio, int n);
/* Run N member requests on the pool while the caller runs FN(ARG) (CPU
 * work that overlaps them); returns as raid_mio_run once all are done. */
int raid_mio_run_while(struct raid_array *a, struct raid_mio *mio, int n,
                       void (*fn)(void *), void *arg);
/* At most this many lanes (the pool's threads and the caller). */
#define RAID_MAX_LANES 17
/* Run FN(ARG, LANE, NLANES) for every LANE in [0, NLANES) at once: lane 0
 * in the caller, the others on the pool; returns when all have.  NLANES is
 * MAX, or fewer: at most the CPUs online and the pool's threads + 1.  FN
 * runs its member requests with raid_mio_one, never raid_mio_run (the
 * pool's threads may all be running lanes). */
void raid_run_lanes(struct raid_array *a,
                    void (*fn)(void *arg, unsigned lane, unsigned nlanes),
                    void *arg, unsigned max);
/* Single member request, inline: at data-relative OFF, or (_abs) at OFF
 * from the member's start (metadata areas). */
int raid_mio_one(struct raid_array *a, int slot, int op, void *buf,
                 size_t len, uint64_t off);
int raid_mio_one_abs(struct raid_array *a, int slot, int op, void *buf,
                     size_t len, uint64_t off);
/* Whether SLOT can be read (and written) at member data offset OFF. */
bool raid_member_usable(struct raid_array *a, int slot, uint64_t off);
/* Whether SLOT should receive writes at OFF (usable, or rebuilding). */
bool raid_member_writable(struct raid_array *a, int slot, uint64_t off);
/* Record a failure of SLOT (error ERR): mark it faulty and write the
 * survivors' superblocks before returning.  Returns 0 if the array can
 * carry on, -EIO if it has failed. */
int raid_member_failed(struct raid_array *a, int slot, int err);
/* The operator fails SLOT: refused (-EBUSY) if it is active and failing
 * it would stop the array or, with WHOLE, if the array is degraded; the
 * check and the marking are one step under sb_lock. */
int raid_member_fail_request(struct raid_array *a, int slot, bool whole);
/* Number of members currently active (not faulty/missing). */
unsigned raid_active_count(struct raid_array *a);
/* Write every usable member's superblock (events + 1) and flush.  Caller
 * holds sb_lock (asserted). */
int raid_sb_write_all_locked(struct raid_array *a);
int raid_sb_update(struct raid_array *a);
void raid_stripe_lock(struct raid_array *a, uint64_t stripe);
void raid_stripe_unlock(struct raid_array *a, uint64_t stripe);
/* The mutex raid_stripe_lock takes for STRIPE (for VD_ASSERT_HELD). */
pthread_mutex_t *raid_stripe_mutex(struct raid_array *a, uint64_t stripe);
/* The locks of stripes [STRIPE, STRIPE+K), each mutex once, in index
 * order: only the rebuild (one owner at a time) holds several. */
void raid_stripes_lock(struct raid_array *a, uint64_t stripe, unsigned k);
void raid_stripes_unlock(struct raid_array *a, uint64_t stripe, unsigned k);
/* Write-intent bitmap: mark member range [off, off+len) dirty before a
 * write, and done after. */
int raid_bitmap_start(struct raid_array *a, uint64_t off, uint64_t len);
void raid_bitmap_end(struct raid_array *a, uint64_t off, uint64_t len);
/* Mark the array dirty (first write after open). */
int raid_mark_dirty(struct raid_array *a);
/* Flush every usable member; failures are recorded.  -EIO if the array
 * failed. */
int raid_flush_members(struct raid_array *a);
/* Background rebuild (rebuild.c). */
void raid_rebuild_start(struct raid_array *a);
void raid_rebuild_stop(struct raid_array *a);

/* ---- RAID levels ----
 * Everything that depends on the level, as md's struct md_personality:
 * one instance per level file (raid0.c, raid1.c, raid5.c), found by the
 * superblock's level number; the rest of the driver calls a->ops->... and
 * never tests the number.  MOFF is a data-relative member offset; a "row"
 * is the chunk at a chunk-aligned MOFF on every member (a RAID5 stripe, one
 * region of the mirrors, a RAID0 stripe): the unit of resync, scrub and
 * rebuild. */
struct raid_level_ops {
  uint32_t level;              /* number in the superblock */
  unsigned min_members;        /* fewest members an array is created with */
  bool redundant;              /* survives the loss of a member: resync,
                                  rebuild, replace and scrub apply */
  bool write_hole;             /* a write torn by an unclean stop can make a
                                  lost member's data unrecoverable: dirty
                                  and degraded starts only when forced */
  bool striped;                /* data striped over the members: the
                                  preferred I/O size is a whole row */
  bool parity_log;             /* the ppl policy applies */
  enum raid_policy default_policy;
  const char *layout_name;     /* for status: "left-symmetric", "-" */
  const char *mismatch_what;   /* what a scrub mismatch means (check) */

  /* Geometry: array bytes given N members of DATA_SIZE usable bytes; array
   * bytes in one row of N members with chunk CHUNK. */
  uint64_t (*capacity)(unsigned n, uint64_t data_size);
  uint64_t (*row_bytes)(unsigned n, uint32_t chunk);
  /* Degraded rule: the fewest active members of N with which the array
   * still serves every byte (see raid_level_viable). */
  unsigned (*members_needed)(unsigned n);

  /* Data path: array range [OFF, OFF+LEN); member failures are recorded. */
  int (*read)(struct raid_array *a, void *buf, size_t len, uint64_t off);
  int (*write)(struct raid_array *a, const void *buf, size_t len,
               uint64_t off, unsigned flags);

  /* Redundant levels only (NULL otherwise).  Resync (or with CHECK_ONLY,
   * compare) the row at MOFF, taking its stripe lock; *MISMATCH says
   * whether the redundancy differed.  Rebuild SLOT's rows [MOFF, MOFF+LEN)
   * (whole rows) from the others; the caller holds
   * their stripe locks (raid_stripes_lock) and SCRATCH holds
   * rebuild_scratch(a, LEN) bytes. */
  int (*sync_row)(struct raid_array *a, uint64_t moff, bool check_only,
                  bool *mismatch);
  int (*rebuild_rows_locked)(struct raid_array *a, uint64_t moff,
                             size_t len, int slot, void *scratch);
  size_t (*rebuild_scratch)(const struct raid_array *a, size_t len);

  /* Optional (NULL: nothing to do).  START sets up the level's state once
   * the members are known (open), STOP frees it (close, failed open);
   * REPLAY_LOG repairs a dirty degraded array from its log before the
   * resync; CLEAR_LOG empties the log once the array is consistent (every
   * read-write open); FLUSH_BEGIN / FLUSH_END bracket a member flush
   * (FLUSH_END only after it succeeded, with FLUSH_BEGIN's result). */
  int (*start)(struct raid_array *a);
  void (*stop)(struct raid_array *a);
  int (*replay_log)(struct raid_array *a);
  int (*clear_log)(struct raid_array *a);
  uint64_t (*flush_begin)(struct raid_array *a);
  void (*flush_end)(struct raid_array *a, uint64_t gen);
};

extern const struct raid_level_ops raid0_ops, raid1_ops, raid5_ops;

/* The ops of LEVEL, or NULL if it is not supported (raid.c). */
const struct raid_level_ops *raid_level_find(uint32_t level);

/* Whether an array of N members of level OPS can run with ACTIVE of them
 * active (every byte served). */
static inline bool raid_level_viable(const struct raid_level_ops *ops,
                                     unsigned n, unsigned active)
{
  return active >= ops->members_needed(n);
}

/* RAID5 geometry (exposed for tests): array offset -> stripe, parity
 * member, data member and member offset. */
struct raid5_map {
  uint64_t stripe;
  unsigned parity, member, dchunk;
  uint64_t moff;               /* data-relative member offset */
};
void raid5_map(unsigned n, uint32_t chunk, uint64_t off, struct raid5_map *m);
unsigned raid5_parity_member(unsigned n, uint64_t stripe);
unsigned raid5_data_member(unsigned n, uint64_t stripe, unsigned d);

/* ---- rebuild.c ---- */
/* Resync regions marked in the bitmap (or everything). */
int raid_resync(struct raid_array *a, bool all);
/* Monotonic seconds; sleep SEC seconds (nothing when SEC <= 0). */
double raid_now(void);
void raid_sleep(double sec);
/* *TS = NS nanoseconds from now on CLOCK_MONOTONIC (a timed wait's
 * deadline, for a condition variable on that clock). */
void raid_deadline(struct timespec *ts, long ns);
/* Wait for the running rebuild to end, reporting to PROGRESS; its result. */
int raid_rebuild_wait(struct raid_array *a, vd_progress_fn progress,
                      void *opaque);

/* ---- members.c ---- */
/* Re-add SLOT (failed, same device): reopen its path, check its superblock
 * (this array, this slot, this device, failed recently enough that the
 * bitmap covers everything it missed) and install it as rebuilding by
 * re-add (only marked regions are copied).  No rebuild is started. */
int raid_readd_install(struct raid_array *a, int slot);
/* Auto re-add (descriptor option auto-re-add): a thread that retries
 * failed members named by NBD URIs every a->auto_readd_s seconds. */
void raid_readd_auto_start(struct raid_array *a);
void raid_readd_auto_stop(struct raid_array *a);
/* Path to store in descriptor DESC for member PATH: relative to the
 * descriptor's folder when below it, else absolute (malloc'd; NULL on
 * out of memory). */
char *raid_desc_relpath(const char *desc, const char *path);
/* Whether paths X and Y name the same existing file (device and inode). */
bool raid_same_file(const char *x, const char *y);
/* Rewrite the descriptor: SLOT (>= 0) gets PATH (format FORMAT, NULL to
 * probe), and the spare lines become a->spare[].  Takes sb_lock. */
int raid_desc_update(struct raid_array *a, int slot, const char *path,
                     const char *format);
/* Whether DEV holds a valid superblock of an array other than UUID; its
 * UUID goes to OTHER (37 bytes). */
bool raid_foreign_sb(struct vd_dev *dev, const uint8_t *uuid, char *other);
/* Open NEWPATH (format FMT, NULL to probe) read-write to join A, in SLOT
 * or as a spare (SLOT -1): a regular file or block device (or a remote
 * member), not a member or spare already, not the descriptor, large
 * enough, no other array's superblock. */
int raid_new_device_open(struct raid_array *a, int slot, const char *newpath,
                         const char *fmt, struct vd_dev **ndp);
/* Put ND (PATH and FMT, both taken over) in SLOT as a rebuilding member
 * with device UUID DEV_UUID, from recovery offset 0; the old device is
 * retired.  The caller writes the superblocks.  sb_lock held. */
void raid_slot_install_locked(struct raid_array *a, int slot,
                              struct vd_dev *nd, char *path, char *fmt,
                              const uint8_t *dev_uuid);
/* Put NEWPATH (format FMT, NULL to probe) in SLOT as a rebuilding member
 * and record it in the descriptor; no rebuild is started. */
int raid_replace_install(struct raid_array *a, int slot, const char *newpath,
                         const char *fmt);

/* ---- spares.c: hot spares ---- */
/* Open the spares the descriptor D names (DESC: its path), keeping those
 * whose superblock is a spare of A (as FRESH, the freshest member
 * superblock, records it); the others are kept with the reason. */
int raid_spares_open(struct raid_array *a, const char *desc,
                     const struct raid_desc *d);
/* Start the takeover thread (writable redundant array) and, when a slot
 * is faulty already, wake it. */
void raid_spares_start(struct raid_array *a);
/* A member failed: wake the takeover thread (no-op without spares). */
void raid_spares_kick(struct raid_array *a);
/* The spares of an open array, or (examine) of descriptor D (at DESC)
 * judged by their superblocks against FRESH (NULL: unknown). */
struct vd_raid_status;
void raid_spares_status(struct raid_array *a, struct vd_raid_status *st);
void raid_spares_examine(const char *desc, const struct raid_desc *d,
                         const struct raid_sb *fresh,
                         struct vd_raid_status *st);
/* End the thread and close the spares. */
void raid_spares_stop(struct raid_array *a);

/* ---- public-ish API for vdtool and tests (vd_raid_*) ---- */
#include "raid/raid-api.h"

#endif /* VDISK_RAID_RAID_H */
