/* RAID superblock and descriptor codecs.
 *
 * Format: vdisk RAID superblock version 1 (docs/raid-format.md).  One
 * 4096-byte superblock sits 4 KiB into every member (md v1.2's place), all
 * integers little-endian:
 *
 *   0    8  magic "VDRAIDSB"          116  4  policy (0 resync, 1 bitmap,
 *   8    4  version = 1                          2 ppl)
 *  12    4  superblock size = 4096     120  8  PPL area offset (bytes)
 *  16   16  array UUID                 128  4  PPL slots
 *  32    4  level (0, 1, 5)            132  4  PPL slot size (bytes)
 *  36    4  layout (0 left-symmetric)  136  8  creation time (Unix s)
 *  40    4  chunk size (bytes)         144  8  update time (Unix s)
 *  44    4  member count               152 32  name, NUL padded
 *  48    4  this member's slot         184 16  spare: its device UUID
 *  52    4  flags (bit 0 dirty,        200 .. 511 zero
 *               bit 1 spare)           512 32*32 role table, entry i:
 *  56    8  events                          0 16 device UUID of slot i
 *  64    8  array size (bytes)             16  4 state (0 active, 1 faulty,
 *  72    8  data offset (bytes)                      2 rebuilding)
 *  80    8  data size per member           20  4 flags (bit 0: rebuilding
 *                                                  by re-add)
 *  88    8  resync offset                  24  8 recovery offset
 *                                                (faulty: failed at events)
 *  96    8  bitmap offset (bytes)     1536  4 spare count (0..8)
 * 104    8  bitmap region (bytes)     1540  4 zero
 * 112    4  bitmap size (bytes)       1544 16*8 spare device UUIDs
 *                                     1672 .. 4091 zero
 *                                     4092  4 CRC-32C of bytes 0..4091
 *
 * The spare table (1536..1671) is ignorable: readers before it never
 * looked at those bytes, so they open the array without its spares.  A
 * spare's own superblock (flag bit 1, slot 0xffffffff) is refused by
 * those readers (unknown flag) and by every reader as a data member.
 *
 * Offsets "resync" and "recovery" are member bytes counted from the data
 * offset; UINT64_MAX means nothing pending.
 *
 * The descriptor is a small text file (see raid_desc_read).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vdisk/crc32c.h"
#include "vdisk/endian.h"
#include "raid/raid.h"

static const char sb_magic[8] = { 'V', 'D', 'R', 'A', 'I', 'D', 'S', 'B' };

_Static_assert(512 + RAID_MAX_MEMBERS * 32 <= 4092, "role table fits");

bool raid_sb_is_magic(const uint8_t *buf)
{
  return memcmp(buf, sb_magic, 8) == 0;
}

void raid_sb_encode(const struct raid_sb *sb, uint8_t *b)
{
  memset(b, 0, RAID_SB_SIZE);
  memcpy(b, sb_magic, 8);
  vd_put_le32(b + 8, 1);
  vd_put_le32(b + 12, RAID_SB_SIZE);
  memcpy(b + 16, sb->uuid, 16);
  vd_put_le32(b + 32, sb->level);
  vd_put_le32(b + 36, sb->layout);
  vd_put_le32(b + 40, sb->chunk);
  vd_put_le32(b + 44, sb->nmembers);
  vd_put_le32(b + 48, sb->slot);
  vd_put_le32(b + 52, sb->flags);
  vd_put_le64(b + 56, sb->events);
  vd_put_le64(b + 64, sb->array_size);
  vd_put_le64(b + 72, sb->data_offset);
  vd_put_le64(b + 80, sb->data_size);
  vd_put_le64(b + 88, sb->resync_offset);
  vd_put_le64(b + 96, sb->bitmap_offset);
  vd_put_le64(b + 104, sb->bitmap_region);
  vd_put_le32(b + 112, sb->bitmap_bytes);
  vd_put_le32(b + 116, sb->policy);
  vd_put_le64(b + 120, sb->ppl_offset);
  vd_put_le32(b + 128, sb->ppl_slots);
  vd_put_le32(b + 132, sb->ppl_slot_size);
  vd_put_le64(b + 136, sb->ctime);
  vd_put_le64(b + 144, sb->utime);
  memcpy(b + 152, sb->name, strnlen(sb->name, 32));
  for (unsigned i = 0; i < RAID_MAX_MEMBERS; i++) {
    uint8_t *r = b + 512 + 32 * i;
    memcpy(r, sb->role[i].dev_uuid, 16);
    vd_put_le32(r + 16, sb->role[i].state);
    vd_put_le32(r + 20, sb->role[i].flags);
    vd_put_le64(r + 24, sb->role[i].recovery_offset);
  }
  if (sb->flags & RAID_SB_SPARE)
    memcpy(b + 184, sb->spare_self, 16);
  vd_put_le32(b + 1536, sb->nspares);
  for (unsigned i = 0; i < sb->nspares && i < RAID_MAX_SPARES; i++)
    memcpy(b + 1544 + 16 * i, sb->spare_uuid[i], 16);
  vd_put_le32(b + 4092, vd_crc32c(0, b, 4092));
}

int raid_sb_decode(const uint8_t *b, struct raid_sb *sb, const char *what)
{
  if (!raid_sb_is_magic(b))
    return vd_set_error(EINVAL, "%s: no RAID superblock", what);
  if (vd_get_le32(b + 8) != 1)
    return vd_set_error(EINVAL, "%s: RAID superblock version %u not supported",
                        what, vd_get_le32(b + 8));
  if (vd_get_le32(b + 12) != RAID_SB_SIZE)
    return vd_set_error(EINVAL, "%s: RAID superblock size %u invalid", what,
                        vd_get_le32(b + 12));
  uint32_t crc = vd_crc32c(0, b, 4092);
  if (crc != vd_get_le32(b + 4092))
    return vd_set_error(EINVAL, "%s: RAID superblock checksum mismatch "
                        "(stored %08x, computed %08x)", what,
                        vd_get_le32(b + 4092), crc);
  memset(sb, 0, sizeof *sb);
  memcpy(sb->uuid, b + 16, 16);
  sb->level = vd_get_le32(b + 32);
  sb->layout = vd_get_le32(b + 36);
  sb->chunk = vd_get_le32(b + 40);
  sb->nmembers = vd_get_le32(b + 44);
  sb->slot = vd_get_le32(b + 48);
  sb->flags = vd_get_le32(b + 52);
  sb->events = vd_get_le64(b + 56);
  sb->array_size = vd_get_le64(b + 64);
  sb->data_offset = vd_get_le64(b + 72);
  sb->data_size = vd_get_le64(b + 80);
  sb->resync_offset = vd_get_le64(b + 88);
  sb->bitmap_offset = vd_get_le64(b + 96);
  sb->bitmap_region = vd_get_le64(b + 104);
  sb->bitmap_bytes = vd_get_le32(b + 112);
  sb->policy = vd_get_le32(b + 116);
  sb->ppl_offset = vd_get_le64(b + 120);
  sb->ppl_slots = vd_get_le32(b + 128);
  sb->ppl_slot_size = vd_get_le32(b + 132);
  sb->ctime = vd_get_le64(b + 136);
  sb->utime = vd_get_le64(b + 144);
  memcpy(sb->name, b + 152, 32);
  sb->name[32] = '\0';
  for (unsigned i = 0; i < RAID_MAX_MEMBERS; i++) {
    const uint8_t *r = b + 512 + 32 * i;
    memcpy(sb->role[i].dev_uuid, r, 16);
    sb->role[i].state = vd_get_le32(r + 16);
    sb->role[i].flags = vd_get_le32(r + 20);
    sb->role[i].recovery_offset = vd_get_le64(r + 24);
  }
  if (sb->flags & RAID_SB_SPARE)   /* else reserved: not kept */
    memcpy(sb->spare_self, b + 184, 16);
  sb->nspares = vd_get_le32(b + 1536);
  if (sb->nspares > RAID_MAX_SPARES)
    return vd_set_error(EINVAL, "%s: RAID spare count %u invalid (at most "
                        "%u)", what, sb->nspares, RAID_MAX_SPARES);
  for (unsigned i = 0; i < sb->nspares; i++)
    memcpy(sb->spare_uuid[i], b + 1544 + 16 * i, 16);

  /* Validate every field before anything trusts it. */
  const struct raid_level_ops *ops = raid_level_find(sb->level);
  if (!ops)
    return vd_set_error(EINVAL, "%s: RAID level %u not supported", what,
                        sb->level);
  if (sb->layout != RAID_LAYOUT_LEFT_SYMMETRIC)
    return vd_set_error(EINVAL, "%s: RAID layout %u not supported", what,
                        sb->layout);
  if (!vd_is_pow2(sb->chunk) || sb->chunk < RAID_MIN_CHUNK ||
      sb->chunk > RAID_MAX_CHUNK)
    return vd_set_error(EINVAL, "%s: RAID chunk size %u invalid", what,
                        sb->chunk);
  if (sb->nmembers < ops->min_members || sb->nmembers > RAID_MAX_MEMBERS)
    return vd_set_error(EINVAL, "%s: RAID%u with %u members invalid", what,
                        sb->level, sb->nmembers);
  bool spare = (sb->flags & RAID_SB_SPARE) != 0;
  if (spare ? sb->slot != RAID_SPARE_SLOT : sb->slot >= sb->nmembers)
    return vd_set_error(EINVAL, "%s: RAID slot %u out of %u", what, sb->slot,
                        sb->nmembers);
  if (sb->flags & ~(RAID_SB_DIRTY | RAID_SB_SPARE) ||
      (spare && (sb->flags & RAID_SB_DIRTY)))
    return vd_set_error(EINVAL, "%s: RAID superblock flags %#x unknown", what,
                        sb->flags);
  if (sb->policy > RAID_POLICY_PPL ||
      (sb->policy == RAID_POLICY_PPL && !ops->parity_log))
    return vd_set_error(EINVAL, "%s: RAID consistency policy %u invalid",
                        what, sb->policy);
  if (sb->data_size == 0 || sb->data_size % sb->chunk ||
      sb->data_offset % 4096 || sb->data_offset < RAID_PPL_OFFSET ||
      sb->data_offset > (1ull << 40))
    return vd_set_error(EINVAL, "%s: RAID data area %llu+%llu invalid", what,
                        (unsigned long long)sb->data_offset,
                        (unsigned long long)sb->data_size);
  uint64_t end;
  if (vd_add_overflow(sb->data_offset, sb->data_size, &end) ||
      sb->data_size > (UINT64_MAX >> 6) ||
      sb->array_size != ops->capacity(sb->nmembers, sb->data_size))
    return vd_set_error(EINVAL, "%s: RAID array size %llu inconsistent", what,
                        (unsigned long long)sb->array_size);
  if (sb->bitmap_bytes) {
    if (sb->bitmap_bytes > RAID_BITMAP_MAX ||
        sb->bitmap_offset != RAID_BITMAP_OFFSET ||
        !vd_is_pow2(sb->bitmap_region) || sb->bitmap_region < sb->chunk ||
        (sb->data_size + sb->bitmap_region - 1) / sb->bitmap_region >
            (uint64_t)sb->bitmap_bytes * 8)
      return vd_set_error(EINVAL, "%s: RAID bitmap (%u bytes, region %llu) "
                          "invalid", what, sb->bitmap_bytes,
                          (unsigned long long)sb->bitmap_region);
  } else if (sb->policy != RAID_POLICY_RESYNC) {
    return vd_set_error(EINVAL, "%s: RAID policy needs a bitmap", what);
  }
  if (sb->policy == RAID_POLICY_PPL) {
    uint64_t pend;
    if (sb->ppl_offset != RAID_PPL_OFFSET || sb->ppl_slots == 0 ||
        sb->ppl_slots > 1024 ||
        sb->ppl_slot_size != RAID_PPL_HDR + sb->chunk ||
        vd_mul_overflow(sb->ppl_slots, sb->ppl_slot_size, &pend) ||
        vd_add_overflow(pend, sb->ppl_offset, &pend) ||
        pend > sb->data_offset)
      return vd_set_error(EINVAL, "%s: RAID partial parity log area invalid",
                          what);
  }
  if (sb->resync_offset != RAID_NO_OFFSET &&
      sb->resync_offset > sb->data_size)
    return vd_set_error(EINVAL, "%s: RAID resync offset past the end", what);
  for (unsigned i = 0; i < sb->nmembers; i++) {
    const struct raid_role *r = &sb->role[i];
    if (r->state > RAID_ROLE_REBUILDING)
      return vd_set_error(EINVAL, "%s: RAID role %u state %u invalid", what,
                          i, r->state);
    if (r->flags & ~RAID_ROLE_F_READD ||
        (r->flags && (r->state != RAID_ROLE_REBUILDING ||
                      sb->bitmap_bytes == 0)))
      return vd_set_error(EINVAL, "%s: RAID role %u flags %#x invalid", what,
                          i, r->flags);
    if (r->state == RAID_ROLE_FAULTY && r->recovery_offset > sb->events)
      return vd_set_error(EINVAL, "%s: RAID role %u failed in the future "
                          "(events %llu > %llu)", what, i,
                          (unsigned long long)r->recovery_offset,
                          (unsigned long long)sb->events);
    if (r->state == RAID_ROLE_REBUILDING &&
        r->recovery_offset > sb->data_size)
      return vd_set_error(EINVAL, "%s: RAID role %u recovery offset past the "
                          "end", what, i);
  }
  return 0;
}

int raid_sb_read(struct vd_dev *dev, struct raid_sb *sb, const char *what)
{
  if (vd_size(dev) < RAID_SB_OFFSET + RAID_SB_SIZE)
    return vd_set_error(EINVAL, "%s: too small to hold a RAID superblock",
                        what);
  uint8_t *buf = vd_alloc_aligned(RAID_SB_SIZE);
  if (!buf)
    return vd_set_error(ENOMEM, "%s: out of memory", what);
  int r = vd_pread(dev, buf, RAID_SB_SIZE, RAID_SB_OFFSET);
  if (r == 0)
    r = raid_sb_decode(buf, sb, what);
  vd_free_aligned(buf);
  return r;
}

/* ---- UUIDs ---- */

void raid_uuid_generate(uint8_t *u)
{
  if (getrandom(u, 16, 0) != 16) {
    /* Not cryptographic; uniqueness is all we need. */
    for (int i = 0; i < 16; i++)
      u[i] = (uint8_t)random();
  }
  u[6] = (u[6] & 0x0f) | 0x40;
  u[8] = (u[8] & 0x3f) | 0x80;
}

void raid_uuid_format(const uint8_t *u, char *out)
{
  snprintf(out, 37,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
           u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10],
           u[11], u[12], u[13], u[14], u[15]);
}

static int hexval(int c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int raid_uuid_parse(const char *s, uint8_t *u)
{
  int k = 0;
  for (const char *p = s; *p && k < 32; p++) {
    if (*p == '-')
      continue;
    int h = hexval((unsigned char)*p);
    if (h < 0)
      return -EINVAL;
    if (k % 2 == 0)
      u[k / 2] = (uint8_t)(h << 4);
    else
      u[k / 2] |= (uint8_t)h;
    k++;
  }
  return k == 32 && strlen(s) == 36 ? 0 : -EINVAL;
}

/* ---- descriptor ----
 *
 *   VDRAID 1
 *   uuid 2f1c4a52-0b8e-4c47-9a53-7d8f3e5a0c11
 *   members 2
 *   member 0 raw disk0.img
 *   member 1 - /dev/loop3
 *
 * "members N" gives the slot count; one "member SLOT FORMAT PATH" line per
 * slot that has a device ("-" = probe the format);
 * PATH is the rest of the line and is relative to the descriptor's
 * directory unless absolute or an NBD URI (docs/remote.md).  Options:
 * "member-timeout SECONDS" (default 5, 0 = none), "auto-re-add SECONDS"
 * (0 = off), "write-mostly SLOT" (one line per slot), "write-behind N"
 * (RAID1 with a write-mostly member: at most N writes to write-mostly
 * members outstanding, 1 to 16383), "spare FORMAT PATH" (a hot spare, at
 * most 8; older readers refuse the keyword).  Lines starting with '#' are
 * comments.  At
 * most 64 KiB.
 */

void raid_desc_free(struct raid_desc *d)
{
  for (unsigned i = 0; i < RAID_MAX_MEMBERS; i++) {
    free(d->member[i]);
    free(d->format[i]);
    d->member[i] = d->format[i] = NULL;
  }
  for (unsigned i = 0; i < RAID_MAX_SPARES; i++) {
    free(d->spare[i]);
    free(d->spare_format[i]);
    d->spare[i] = d->spare_format[i] = NULL;
  }
  d->nspares = 0;
}

/* "FORMAT PATH" at P (a member or spare line's tail): the format (NULL
 * for "-") to *FMT, the path to *PATH.  -EINVAL if malformed. */
static int raid_desc_fmt_path(char *p, char **fmt, char **path)
{
  char *sp = strchr(p, ' ');
  if (!sp || sp == p || sp[1] == '\0' || sp - p > 15)
    return -EINVAL;
  *sp = '\0';
  *fmt = strcmp(p, "-") ? strdup(p) : NULL;
  *path = strdup(sp + 1);
  return !*path || (strcmp(p, "-") && !*fmt) ? -ENOMEM : 0;
}

int raid_desc_read(const char *path, struct raid_desc *d)
{
  memset(d, 0, sizeof *d);
  /* O_NONBLOCK: a FIFO planted as the descriptor must not block us. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return vd_set_error(errno, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return vd_set_error(EINVAL, "%s: a RAID descriptor must be a regular "
                        "file", path);
  }
  char *text = malloc(65537);
  if (!text) {
    close(fd);
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  }
  size_t len = 0;
  for (;;) {
    ssize_t r = read(fd, text + len, 65537 - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      int e = errno;
      close(fd);
      free(text);
      return vd_set_error(e, "%s: read: %s", path, strerror(e));
    }
    if (r == 0)
      break;
    len += (size_t)r;
    if (len == 65537)
      break;
  }
  close(fd);
  int ret = 0;
  bool have_uuid = false, have_count = false, have_timeout = false;
  unsigned lineno = 0, count = 0;
  /* The magic first: a member or an image given by mistake is "not a
   * descriptor", whatever its size. */
  if (len < strlen(RAID_DESC_MAGIC) ||
      strncmp(text, RAID_DESC_MAGIC, strlen(RAID_DESC_MAGIC)) != 0) {
    ret = vd_set_error(EINVAL, "%s: not a RAID descriptor", path);
    goto out;
  }
  if (len > 65536) {
    ret = vd_set_error(EINVAL, "%s: RAID descriptor larger than 64 KiB", path);
    goto out;
  }
  text[len] = '\0';
  if (memchr(text, '\0', len)) {
    ret = vd_set_error(EINVAL, "%s: RAID descriptor contains NUL bytes", path);
    goto out;
  }
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save)) {
    lineno++;
    if (lineno == 1 || line[0] == '#' || line[0] == '\0')
      continue;
    if (strncmp(line, "uuid ", 5) == 0) {
      if (raid_uuid_parse(line + 5, d->uuid) < 0) {
        ret = vd_set_error(EINVAL, "%s: line %u: bad uuid", path, lineno);
        goto out;
      }
      have_uuid = true;
    } else if (strncmp(line, "members ", 8) == 0) {
      char *end;
      unsigned long v = strtoul(line + 8, &end, 10);
      if (*end || v == 0 || v > RAID_MAX_MEMBERS || have_count) {
        ret = vd_set_error(EINVAL, "%s: line %u: bad member count", path,
                           lineno);
        goto out;
      }
      have_count = true;
      count = (unsigned)v;
    } else if (strncmp(line, "member ", 7) == 0) {
      char *p = line + 7, *end;
      errno = 0;
      unsigned long slot = strtoul(p, &end, 10);
      if (end == p || *end != ' ' || slot >= RAID_MAX_MEMBERS ||
          d->member[slot]) {
        ret = vd_set_error(EINVAL, "%s: line %u: bad or duplicate member slot",
                           path, lineno);
        goto out;
      }
      int e = raid_desc_fmt_path(end + 1, &d->format[slot], &d->member[slot]);
      if (e < 0) {
        ret = e == -ENOMEM ? vd_set_error(ENOMEM, "%s: out of memory", path)
              : vd_set_error(EINVAL, "%s: line %u: expected 'member SLOT "
                             "FORMAT PATH'", path, lineno);
        goto out;
      }
      if (slot + 1 > d->nmembers)
        d->nmembers = (unsigned)slot + 1;
    } else if (strncmp(line, "spare ", 6) == 0) {
      if (d->nspares == RAID_MAX_SPARES) {
        ret = vd_set_error(EINVAL, "%s: line %u: more than %u spares", path,
                           lineno, RAID_MAX_SPARES);
        goto out;
      }
      unsigned k = d->nspares++;
      int e = raid_desc_fmt_path(line + 6, &d->spare_format[k], &d->spare[k]);
      if (e < 0) {
        ret = e == -ENOMEM ? vd_set_error(ENOMEM, "%s: out of memory", path)
              : vd_set_error(EINVAL, "%s: line %u: expected 'spare FORMAT "
                             "PATH'", path, lineno);
        goto out;
      }
    } else if (strncmp(line, "member-timeout ", 15) == 0 ||
               strncmp(line, "auto-re-add ", 12) == 0) {
      /* Whole seconds, or with a fraction for the timeout ("0.5"). */
      bool tmo = line[1] == 'e';
      const char *v = line + (tmo ? 15 : 12);
      char *end;
      errno = 0;
      double sec = strtod(v, &end);
      if (end == v || *end || errno || !(sec >= 0) ||
          sec > RAID_MAX_TIMEOUT_S || (!tmo && sec != (double)(uint32_t)sec)) {
        ret = vd_set_error(EINVAL, "%s: line %u: expected '%s SECONDS' "
                           "(0 to %u)", path, lineno,
                           tmo ? "member-timeout" : "auto-re-add",
                           RAID_MAX_TIMEOUT_S);
        goto out;
      }
      if (tmo) {
        d->timeout_ms = (uint32_t)(sec * 1000 + 0.5);
        have_timeout = true;
      } else {
        d->auto_readd_s = (uint32_t)sec;
      }
    } else if (strncmp(line, "write-mostly ", 13) == 0) {
      char *end;
      unsigned long slot = strtoul(line + 13, &end, 10);
      if (end == line + 13 || *end || slot >= RAID_MAX_MEMBERS) {
        ret = vd_set_error(EINVAL, "%s: line %u: expected 'write-mostly "
                           "SLOT'", path, lineno);
        goto out;
      }
      d->write_mostly[slot] = true;
    } else if (strncmp(line, "write-behind ", 13) == 0) {
      char *end;
      unsigned long n = strtoul(line + 13, &end, 10);
      if (end == line + 13 || *end || line[13] == '-' || n < 1 ||
          n > RAID_MAX_WRITE_BEHIND) {
        ret = vd_set_error(EINVAL, "%s: line %u: expected 'write-behind N' "
                           "(1 to %u)", path, lineno, RAID_MAX_WRITE_BEHIND);
        goto out;
      }
      d->write_behind = (uint32_t)n;
    } else {
      ret = vd_set_error(EINVAL, "%s: line %u: unknown keyword", path, lineno);
      goto out;
    }
  }
  if (!have_uuid || !have_count)
    ret = vd_set_error(EINVAL, "%s: RAID descriptor lacks a uuid or a "
                       "member count", path);
  else if (d->nmembers > count)
    ret = vd_set_error(EINVAL, "%s: RAID descriptor names slot %u of %u",
                       path, d->nmembers - 1, count);
  else
    d->nmembers = count;
  if (ret == 0 && !have_timeout)
    d->timeout_ms = RAID_DEFAULT_TIMEOUT_MS;
  for (unsigned i = count; ret == 0 && i < RAID_MAX_MEMBERS; i++)
    if (d->write_mostly[i])
      ret = vd_set_error(EINVAL, "%s: write-mostly names slot %u of %u",
                         path, i, count);
out:
  free(text);
  if (ret < 0)
    raid_desc_free(d);
  return ret;
}

/* ---- files beside the descriptor ----
 *
 * The only file the RAID code writes next to the descriptor is the
 * descriptor itself (create, assemble, replace).  It is written to a fresh temporary name created with O_CREAT|O_EXCL|O_NOFOLLOW
 * (so a planted symlink or file at any name is never followed or reused),
 * synced, renamed over the final name (rename replaces a symlink, it does
 * not write through it) and the folder is synced, so the new name is
 * durable. */

int raid_file_replace(const char *path, const void *data, size_t len,
                      mode_t mode)
{
  size_t tl = strlen(path) + 64;
  char *tmp = malloc(tl);
  if (!tmp)
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  /* Keep the mode and owner of the file being replaced (the descriptor):
   * its owner set them. */
  struct stat old;
  bool have_old = lstat(path, &old) == 0 && S_ISREG(old.st_mode);
  int fd = -1, e = 0;
  for (int tries = 0; tries < 100 && fd < 0; tries++) {
    uint64_t rnd;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
      rnd = ((uint64_t)getpid() << 32) ^ (uint64_t)random();
    snprintf(tmp, tl, "%s.tmp-%ld-%016" PRIx64, path, (long)getpid(), rnd);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
              mode);
    e = errno;
    if (fd < 0 && e != EEXIST)
      break;
  }
  if (fd < 0) {
    free(tmp);
    return vd_set_error(e, "%s: cannot create a temporary file: %s", path,
                        strerror(e));
  }
  int r = 0;
  if (have_old) {
    if (geteuid() == 0 && (old.st_uid != 0 || old.st_gid != 0))
      (void)!fchown(fd, old.st_uid, old.st_gid);
    (void)!fchmod(fd, old.st_mode & 07777);
  }
  const char *p = data;
  size_t done = 0;
  while (r == 0 && done < len) {
    ssize_t w = write(fd, p + done, len - done);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      r = vd_set_error(w < 0 ? errno : EIO, "%s: write: %s", tmp,
                       strerror(w < 0 ? errno : EIO));
    else
      done += (size_t)w;
  }
  if (r == 0 && fdatasync(fd) != 0)
    r = vd_set_error(errno, "%s: sync: %s", tmp, strerror(errno));
  if (close(fd) != 0 && r == 0)
    r = vd_set_error(errno, "%s: write: %s", tmp, strerror(errno));
  if (r == 0 && rename(tmp, path) != 0)
    r = vd_set_error(errno, "%s: rename: %s", path, strerror(errno));
  if (r < 0)
    unlink(tmp);
  else
    r = vd_file_sync_dir(path);
  free(tmp);
  return r;
}

int raid_desc_write(const char *path, const struct raid_desc *d)
{
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f)
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  char u[37];
  raid_uuid_format(d->uuid, u);
  fprintf(f, "%s# vdisk RAID array: open this file like any image.\n"
          "uuid %s\nmembers %u\n", RAID_DESC_MAGIC, u, d->nmembers);
  for (unsigned i = 0; i < d->nmembers; i++)
    if (d->member[i])
      fprintf(f, "member %u %s %s\n", i, d->format[i] ? d->format[i] : "-",
              d->member[i]);
  for (unsigned i = 0; i < d->nspares; i++)
    fprintf(f, "spare %s %s\n", d->spare_format[i] ? d->spare_format[i] : "-",
            d->spare[i]);
  if (d->timeout_ms != RAID_DEFAULT_TIMEOUT_MS)
    fprintf(f, "member-timeout %u.%03u\n", d->timeout_ms / 1000,
            d->timeout_ms % 1000);
  if (d->auto_readd_s)
    fprintf(f, "auto-re-add %u\n", d->auto_readd_s);
  for (unsigned i = 0; i < d->nmembers; i++)
    if (d->write_mostly[i])
      fprintf(f, "write-mostly %u\n", i);
  if (d->write_behind)
    fprintf(f, "write-behind %u\n", d->write_behind);
  if (fclose(f) != 0) {
    free(text);
    return vd_set_error(ENOMEM, "%s: out of memory", path);
  }
  int r = raid_file_replace(path, text, len, 0666);
  free(text);
  return r;
}

int raid_check_member_type(const char *path)
{
  struct stat st;
  if (vd_is_remote_name(path))
    return 0;   /* an export: nothing local to block on */
  if (stat(path, &st) != 0)
    return 0;
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    return vd_set_error(EINVAL, "%s: not a regular file or block device "
                        "(cannot be a RAID member)", path);
  return 0;
}

char *raid_desc_resolve(const char *desc_path, const char *member)
{
  if (member[0] == '/' || vd_is_remote_name(member))
    return strdup(member);
  const char *slash = strrchr(desc_path, '/');
  if (!slash)
    return strdup(member);
  size_t dl = (size_t)(slash - desc_path) + 1;
  char *r = malloc(dl + strlen(member) + 1);
  if (r) {
    memcpy(r, desc_path, dl);
    strcpy(r + dl, member);
  }
  return r;
}
