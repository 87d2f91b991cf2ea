/* cmd-raid.c: RAID management over the control socket (see cmd-raid.h).
 *
 * Commands (vdisk extensions; docs/control.md, "RAID"):
 *   query-vdisk-raid    [device]                 state of each array
 *   vdisk-raid-fail     device, member           mark a member faulty
 *   vdisk-raid-replace  device, member, new, [format, speed, job-id]
 *                       put NEW in MEMBER's slot; the rebuild is a block
 *                       job of type "vdisk-raid-rebuild"
 *   vdisk-raid-re-add   device, member, [speed, job-id]
 *                       reopen a failed member (same device, back again)
 *                       and copy only the regions the write-intent bitmap
 *                       marks; a block job of type "vdisk-raid-rebuild"
 *   vdisk-raid-add      device, spare, [format]
 *                       add a hot spare; on a degraded array it takes a
 *                       failed slot at once (returns "slot") and a
 *                       background rebuild starts (query-vdisk-raid)
 *   vdisk-raid-remove   device, spare
 *                       remove a hot spare
 *   vdisk-raid-scrub    device, [repair, speed, job-id]
 *                       a block job of type "vdisk-raid-scrub"; its report
 *                       comes as event VDISK_RAID_SCRUB_REPORT and in
 *                       query-vdisk-raid's "last-scrub"
 * Event VDISK_RAID_SPARE_ACTIVE: a spare took a failed member's slot
 * (sent from the engine's takeover thread, through vd_raid_set_notify).
 * MEMBER is a slot number or a member's path.  Commands are serialised by
 * the control module; the jobs run on their own threads and step the
 * engine's caller-driven rebuild and scrub (vd_raid_rebuild_step,
 * vd_raid_scrub_step), so block-job-pause, -set-speed and -cancel act on
 * the work itself.  Cancelling a rebuild checkpoints it: the member stays
 * "rebuilding" and the rebuild resumes when the array is next opened.
 *
 * Locks: each array's d->lock guards its scrub report (written by the
 * scrub job's thread, read by query-vdisk-raid) and its runtime entry's
 * republishing (control thread, takeover thread); everything else here is
 * touched by the control thread only, or before the server starts.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/control/cmd-raid.h"
#include "vdisk/control/internal.h"
#include "vdisk/vdisk.h"
#include "vdisk/raid.h"

#define RAID_STEP_BYTES (1u << 20)   /* member bytes per job step */
#define RAID_REPORT_STRIPES 64       /* mismatched stripes listed */

struct raid_report {
  bool valid, running, repair;
  char job[128];
  uint64_t stripes, mismatches, repaired, done, total;
  uint64_t list[RAID_REPORT_STRIPES], list_off[RAID_REPORT_STRIPES];
  unsigned nlist;
  char error[256];
};

struct raid_dev {
  struct raid_dev *next;
  struct vc_raid *owner;
  char *name;
  struct vd_node *node;
  struct vd_raid_entry *entry;       /* our runtime entry, or NULL */
  pthread_mutex_t lock;              /* guards scrub */
  struct raid_report scrub;
};

struct vc_raid {
  struct raid_dev *devs;
  struct vc_server *s;
};

int vc_raid_add(struct vc_raid **r, const char *name, struct vd_node *node)
{
  if (!vd_raid_of(vd_node_dev(node)))
    return 0;
  if (!*r && !(*r = calloc(1, sizeof **r)))
    return -ENOMEM;
  struct raid_dev *d = calloc(1, sizeof *d);
  if (!d || !(d->name = strdup(name))) {
    free(d);
    return -ENOMEM;
  }
  d->node = node;
  d->owner = *r;
  pthread_mutex_init(&d->lock, NULL);
  struct raid_dev **p = &(*r)->devs;
  while (*p)
    p = &(*p)->next;
  *p = d;
  return 0;
}

/* The array registered as NAME, with its entry in R if we know it. */
static struct raid_array *raid_find(struct vc_raid *r, const char *name,
                                    struct raid_dev **dp,
                                    struct vc_error *err)
{
  struct vd_node *node = vc_device_find(r->s, name);
  if (!node) {
    vc_error_set(err, "DeviceNotFound", "Device '%s' not found", name);
    return NULL;
  }
  struct raid_array *a = vd_raid_of(vd_node_dev(node));
  if (!a) {
    vc_error_set(err, "GenericError", "Device '%s' is not a RAID array",
                 name);
    return NULL;
  }
  *dp = NULL;
  for (struct raid_dev *d = r->devs; d; d = d->next)
    if (d->node == node)
      *dp = d;
  return a;
}

/* MEMBER: a slot number (integer or decimal string) or a member's path. */
static int raid_member_arg(struct raid_array *a, json_t *args,
                           struct vc_error *err)
{
  json_t *m = json_object_get(args, "member");
  int slot;
  if (!m) {
    vc_error_set(err, "GenericError", "Parameter 'member' is missing");
    return -1;
  }
  if (json_is_integer(m)) {
    json_int_t v = json_integer_value(m);
    char s[32];
    snprintf(s, sizeof s, "%lld", (long long)(v < 0 ? -1 : v));
    slot = v < 0 || v > 1000 ? -1 : vd_raid_find_member(a, s);
    if (slot < 0)
      vc_error_set(err, "GenericError", "Parameter 'member': no slot %lld",
                   (long long)v);
    return slot;
  }
  if (!json_is_string(m)) {
    vc_error_set(err, "GenericError", "Parameter 'member' expects a slot "
                 "number or a path");
    return -1;
  }
  slot = vd_raid_find_member(a, json_string_value(m));
  if (slot < 0)
    vc_error_set(err, "GenericError", "%s", vd_error());
  return slot;
}

static const char *raid_state_name(int st)
{
  switch (st) {
  case VD_RAID_STATE_ACTIVE: return "active";
  case VD_RAID_STATE_FAULTY: return "faulty";
  case VD_RAID_STATE_REBUILDING: return "rebuilding";
  case VD_RAID_STATE_MISSING: return "missing";
  default: return "stale";
  }
}

static json_t *raid_report_json(const struct raid_report *rp)
{
  json_t *list = json_array();
  for (unsigned i = 0; i < rp->nlist; i++)
    json_array_append_new(list, json_pack("{s:I, s:I}", "stripe",
                                          (json_int_t)rp->list[i], "offset",
                                          (json_int_t)rp->list_off[i]));
  json_t *o = json_pack("{s:s, s:b, s:b, s:I, s:I, s:I, s:I, s:I, s:o}",
                        "job-id", rp->job, "running", rp->running, "repair",
                        rp->repair, "stripes", (json_int_t)rp->stripes,
                        "mismatches", (json_int_t)rp->mismatches, "repaired",
                        (json_int_t)rp->repaired, "offset",
                        (json_int_t)rp->done, "len", (json_int_t)rp->total,
                        "mismatched-stripes", list);
  if (o && rp->error[0])
    json_object_set_new(o, "error", json_string(rp->error));
  return o;
}

static json_t *raid_status_json(const char *name, struct vd_node *node,
                                struct raid_array *a, struct raid_dev *d,
                                struct vc_error *err)
{
  struct vd_raid_status *st = malloc(sizeof *st);
  if (!st || vd_raid_status(a, st) < 0) {
    vc_error_set(err, "GenericError", "%s: %s", name,
                 st ? vd_error() : "out of memory");
    free(st);
    return NULL;
  }
  json_t *members = json_array();
  for (unsigned i = 0; i < st->nmembers && i < 32; i++) {
    const struct vd_raid_member_status *m = &st->m[i];
    json_t *mo = json_pack("{s:i, s:s, s:s, s:I}", "slot", m->slot, "path",
                           m->path, "state", raid_state_name(m->state),
                           "events", (json_int_t)m->events);
    if (mo && m->state == VD_RAID_STATE_REBUILDING)
      json_object_set_new(mo, "recovery-offset",
                          json_integer((json_int_t)m->recovery_offset));
    if (mo && m->write_mostly)
      json_object_set_new(mo, "write-mostly", json_true());
    if (mo && m->re_adding)
      json_object_set_new(mo, "re-adding", json_true());
    if (mo && (m->readd_copied || m->readd_skipped))
      json_object_set_new(mo, "re-add",
                          json_pack("{s:I, s:I}", "copied",
                                    (json_int_t)m->readd_copied, "skipped",
                                    (json_int_t)m->readd_skipped));
    json_array_append_new(members, mo);
  }
  json_t *o = json_pack(
    "{s:s, s:s, s:s, s:i, s:s, s:i, s:s, s:s, s:I, s:I, s:b, s:b, s:b, "
    "s:o}",
    "device", name, "descriptor", vd_path(vd_node_dev(node)),
    "uuid", st->uuid, "level", st->level, "layout",
    st->layout ? st->layout : "-", "chunk-size", (int)st->chunk, "policy",
    st->policy ? st->policy : "-", "state", st->state, "size",
    (json_int_t)st->array_size, "events", (json_int_t)st->events, "degraded",
    st->degraded, "failed", st->failed, "dirty", st->dirty, "members",
    members);
  json_t *spares = json_array();
  for (unsigned i = 0; i < st->nspares; i++)
    json_array_append_new(spares, json_pack(
      "{s:s, s:s, s:s}", "path", st->spare[i].path, "device-uuid",
      st->spare[i].dev_uuid, "state", st->spare[i].why[0] ? "unusable"
                                                          : "spare"));
  for (unsigned i = 0; i < st->nspares; i++)
    if (st->spare[i].why[0])
      json_object_set_new(json_array_get(spares, i), "reason",
                          json_string(st->spare[i].why));
  if (o)
    json_object_set_new(o, "spares", spares);
  else
    json_decref(spares);
  if (o && st->rebuilding)
    json_object_set_new(o, "rebuild",
                        json_pack("{s:I, s:I}", "offset",
                                  (json_int_t)st->rebuild_done, "len",
                                  (json_int_t)st->rebuild_total));
  if (o && st->name[0])
    json_object_set_new(o, "name", json_string(st->name));
  if (o) {
    json_object_set_new(o, "member-timeout-ms",
                        json_integer(st->member_timeout_ms));
    json_object_set_new(o, "auto-re-add", json_integer(st->auto_readd_s));
    if (st->write_behind)
      json_object_set_new(o, "write-behind",
                          json_pack("{s:I, s:I}", "limit",
                                    (json_int_t)st->write_behind, "pending",
                                    (json_int_t)st->write_behind_pending));
    json_object_set_new(o, "member-data-size",
                        json_integer((json_int_t)st->member_data_size));
  }
  if (o && d) {
    pthread_mutex_lock(&d->lock);
    if (d->scrub.valid)
      json_object_set_new(o, d->scrub.running ? "scrub" : "last-scrub",
                          raid_report_json(&d->scrub));
    pthread_mutex_unlock(&d->lock);
  }
  free(st);
  if (!o)
    vc_error_set(err, "GenericError", "out of memory");
  return o;
}

static json_t *cmd_query_raid(struct vc_server *s, json_t *args,
                              void *opaque, struct vc_error *err)
{
  static const char *const known[] = { "device", NULL };
  struct vc_raid *r = opaque;
  const char *dev = NULL;
  (void)s;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", false, &dev, err))
    return NULL;
  json_t *list = json_array();
  if (dev) {
    struct raid_dev *d;
    struct raid_array *a = raid_find(r, dev, &d, err);
    json_t *o = a ? raid_status_json(dev, vc_device_find(r->s, dev), a, d,
                                     err) : NULL;
    if (!o) {
      json_decref(list);
      return NULL;
    }
    json_array_append_new(list, o);
    return list;
  }
  for (struct raid_dev *d = r->devs; d; d = d->next) {
    struct vd_node *node = vc_device_find(r->s, d->name);
    struct raid_array *a = node == d->node ? vd_raid_of(vd_node_dev(node))
                                           : NULL;
    json_t *o = a ? raid_status_json(d->name, node, a, d, err) : NULL;
    if (a && !o) {
      json_decref(list);
      return NULL;
    }
    if (o)
      json_array_append_new(list, o);
  }
  return list;
}

static json_t *cmd_raid_fail(struct vc_server *s, json_t *args, void *opaque,
                             struct vc_error *err)
{
  static const char *const known[] = { "device", "member", NULL };
  struct vc_raid *r = opaque;
  const char *dev;
  struct raid_dev *d;
  (void)s;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", true, &dev, err))
    return NULL;
  struct raid_array *a = raid_find(r, dev, &d, err);
  int slot = a ? raid_member_arg(a, args, err) : -1;
  if (slot < 0)
    return NULL;
  if (vd_raid_fail(a, slot) < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    return NULL;
  }
  return json_object();
}

/* ---- the rebuild job ---- */

struct rebuild_job {
  struct raid_array *a;
};

static int rebuild_step(void *opaque, uint64_t *done, uint64_t *total,
                        struct vc_error *err)
{
  struct rebuild_job *j = opaque;
  int r = vd_raid_rebuild_step(j->a, RAID_STEP_BYTES, done, total);
  if (r < 0)
    vc_error_set(err, "GenericError", "%s", vd_error());
  return r;
}

static void rebuild_abort(void *opaque, bool was_ready)
{
  struct rebuild_job *j = opaque;
  (void)was_ready;
  vd_raid_rebuild_end(j->a);         /* checkpointed: resumes at next open */
}

static void rebuild_free(void *opaque)
{
  struct rebuild_job *j = opaque;
  if (j)
    vd_raid_rebuild_end(j->a);       /* no-op once given up */
  free(j);
}

static const struct vc_job_driver rebuild_driver = {
  .type = "vdisk-raid-rebuild",
  .step = rebuild_step,
  .abort = rebuild_abort,
  .free = rebuild_free,
};

/* SPEED or its alias RATE (bytes/s). */
static bool raid_speed_arg(json_t *args, uint64_t *speed,
                           struct vc_error *err)
{
  *speed = 0;
  if (json_object_get(args, "speed") && json_object_get(args, "rate")) {
    vc_error_set(err, "GenericError", "Give 'speed' or 'rate', not both");
    return false;
  }
  return vc_arg_uint(args, "speed", false, speed, err) &&
         vc_arg_uint(args, "rate", false, speed, err);
}

static json_t *cmd_raid_replace(struct vc_server *s, json_t *args,
                                void *opaque, struct vc_error *err)
{
  static const char *const known[] = { "device", "member", "new", "format",
                                       "speed", "rate", "job-id", NULL };
  struct vc_raid *r = opaque;
  const char *dev, *newp, *fmt = NULL, *id = NULL;
  uint64_t speed;
  struct raid_dev *d;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", true, &dev, err) ||
      !vc_arg_str(args, "new", true, &newp, err) ||
      !vc_arg_str(args, "format", false, &fmt, err) ||
      !vc_arg_str(args, "job-id", false, &id, err) ||
      !raid_speed_arg(args, &speed, err))
    return NULL;
  struct raid_array *a = raid_find(r, dev, &d, err);
  int slot = a ? raid_member_arg(a, args, err) : -1;
  if (slot < 0)
    return NULL;
  /* The server may run in another folder than the client (a daemon runs
   * in /): a relative path would name another file. */
  if (newp[0] != '/') {
    vc_error_set(err, "GenericError", "Parameter 'new' must be an absolute "
                 "path");
    return NULL;
  }
  if (vc_device_busy(s, dev)) {
    vc_error_set(err, "GenericError", "Device '%s' is busy with a block job",
                 dev);
    return NULL;
  }
  struct rebuild_job *j = calloc(1, sizeof *j);
  if (!j) {
    vc_error_set(err, "GenericError", "out of memory");
    return NULL;
  }
  j->a = a;
  if (vd_raid_replace_begin(a, slot, newp, fmt) < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    free(j);
    return NULL;
  }
  /* The replace rewrote the descriptor (new inode): follow it. */
  if (d && d->entry && vd_raid_republish(d->entry) < 0)
    fprintf(stderr, "vdisk: %s\n", vd_error());
  if (vc_job_start(s, id, dev, &rebuild_driver, j, speed, err) < 0)
    return NULL;                     /* rebuild_free gave the rebuild up */
  return json_object();
}

/* The descriptor was rewritten (a new inode): publish D's runtime entry
 * under it. */
static void raid_republish(struct raid_dev *d)
{
  if (!d)
    return;
  pthread_mutex_lock(&d->lock);
  if (d->entry && vd_raid_republish(d->entry) < 0)
    fprintf(stderr, "vdisk: %s\n", vd_error());
  pthread_mutex_unlock(&d->lock);
}

static json_t *cmd_raid_add(struct vc_server *s, json_t *args, void *opaque,
                            struct vc_error *err)
{
  static const char *const known[] = { "device", "spare", "format", NULL };
  struct vc_raid *r = opaque;
  const char *dev, *spare, *fmt = NULL;
  struct raid_dev *d;
  (void)s;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", true, &dev, err) ||
      !vc_arg_str(args, "spare", true, &spare, err) ||
      !vc_arg_str(args, "format", false, &fmt, err))
    return NULL;
  struct raid_array *a = raid_find(r, dev, &d, err);
  if (!a)
    return NULL;
  /* As for replace: the server may run in another folder. */
  if (spare[0] != '/') {
    vc_error_set(err, "GenericError", "Parameter 'spare' must be an "
                 "absolute path");
    return NULL;
  }
  if (vd_raid_add(a, spare, fmt) < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    return NULL;
  }
  raid_republish(d);
  /* Added to a degraded array, it took a slot at once. */
  json_t *o = json_object();
  int slot = vd_raid_find_member(a, spare);
  if (slot >= 0)
    json_object_set_new(o, "slot", json_integer(slot));
  return o;
}

static json_t *cmd_raid_remove(struct vc_server *s, json_t *args,
                               void *opaque, struct vc_error *err)
{
  static const char *const known[] = { "device", "spare", NULL };
  struct vc_raid *r = opaque;
  const char *dev, *spare;
  struct raid_dev *d;
  (void)s;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", true, &dev, err) ||
      !vc_arg_str(args, "spare", true, &spare, err))
    return NULL;
  struct raid_array *a = raid_find(r, dev, &d, err);
  if (!a)
    return NULL;
  if (spare[0] != '/') {
    vc_error_set(err, "GenericError", "Parameter 'spare' must be an "
                 "absolute path");
    return NULL;
  }
  if (vd_raid_remove_spare(a, spare) < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    return NULL;
  }
  raid_republish(d);
  return json_object();
}

/* A spare took SLOT (engine's takeover thread). */
static void raid_notify(void *opaque, const char *event, int slot,
                        const char *path)
{
  struct raid_dev *d = opaque;
  if (strcmp(event, "spare-active") != 0)
    return;
  raid_republish(d);
  vc_event(d->owner->s, "VDISK_RAID_SPARE_ACTIVE",
           json_pack("{s:s, s:i, s:s}", "device", d->name, "slot", slot,
                     "spare", path));
}

static json_t *cmd_raid_re_add(struct vc_server *s, json_t *args,
                               void *opaque, struct vc_error *err)
{
  static const char *const known[] = { "device", "member", "speed", "rate",
                                       "job-id", NULL };
  struct vc_raid *r = opaque;
  const char *dev, *id = NULL;
  uint64_t speed;
  struct raid_dev *d;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", true, &dev, err) ||
      !vc_arg_str(args, "job-id", false, &id, err) ||
      !raid_speed_arg(args, &speed, err))
    return NULL;
  struct raid_array *a = raid_find(r, dev, &d, err);
  int slot = a ? raid_member_arg(a, args, err) : -1;
  if (slot < 0)
    return NULL;
  if (vc_device_busy(s, dev)) {
    vc_error_set(err, "GenericError", "Device '%s' is busy with a block job",
                 dev);
    return NULL;
  }
  struct rebuild_job *j = calloc(1, sizeof *j);
  if (!j) {
    vc_error_set(err, "GenericError", "out of memory");
    return NULL;
  }
  j->a = a;
  if (vd_raid_re_add_begin(a, slot) < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    free(j);
    return NULL;
  }
  if (vc_job_start(s, id, dev, &rebuild_driver, j, speed, err) < 0)
    return NULL;                     /* rebuild_free gave the rebuild up */
  return json_object();
}

/* ---- the scrub job ---- */

struct scrub_job {
  struct vc_raid *r;
  struct raid_dev *d;                /* may be NULL: no report kept */
  struct raid_array *a;
  char device[256];
  bool repair;
  uint64_t pos, total;
  struct vd_raid_scrub_report rep;
  struct raid_report out;            /* the job thread's copy */
};

static void scrub_mismatch(void *opaque, uint64_t stripe, uint64_t off)
{
  struct scrub_job *j = opaque;
  if (j->out.nlist < RAID_REPORT_STRIPES) {
    j->out.list[j->out.nlist] = stripe;
    j->out.list_off[j->out.nlist++] = off;
  }
}

/* Publish the job's report to query-vdisk-raid. */
static void scrub_publish(struct scrub_job *j)
{
  j->out.stripes = j->rep.stripes;
  j->out.mismatches = j->rep.mismatches;
  j->out.repaired = j->rep.repaired;
  j->out.done = j->pos;
  if (j->d) {
    pthread_mutex_lock(&j->d->lock);
    j->d->scrub = j->out;
    pthread_mutex_unlock(&j->d->lock);
  }
}

static void scrub_event(struct scrub_job *j)
{
  json_t *data = raid_report_json(&j->out);
  if (data)
    json_object_set_new(data, "device", json_string(j->device));
  vc_event(j->r->s, "VDISK_RAID_SCRUB_REPORT", data);
}

static int scrub_step(void *opaque, uint64_t *done, uint64_t *total,
                      struct vc_error *err)
{
  struct scrub_job *j = opaque;
  uint64_t before = j->pos;
  int r = vd_raid_scrub_step(j->a, j->repair, &j->pos, RAID_STEP_BYTES,
                             &j->rep);
  *done += j->pos - before;
  *total = j->total;
  if (r < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    snprintf(j->out.error, sizeof j->out.error, "%s", vd_error());
  }
  if (r != 0) {
    j->out.running = false;
    scrub_publish(j);
    scrub_event(j);
  } else {
    scrub_publish(j);
  }
  return r;
}

static void scrub_abort(void *opaque, bool was_ready)
{
  struct scrub_job *j = opaque;
  (void)was_ready;
  if (j->out.running) {
    /* Cancelled: what was compared so far is reported as such. */
    j->out.running = false;
    snprintf(j->out.error, sizeof j->out.error, "cancelled at offset %"
             PRIu64 " of %" PRIu64, j->pos, j->total);
    scrub_publish(j);
    scrub_event(j);
  }
}

static void scrub_free(void *opaque)
{
  free(opaque);
}

static const struct vc_job_driver scrub_driver = {
  .type = "vdisk-raid-scrub",
  .step = scrub_step,
  .abort = scrub_abort,
  .free = scrub_free,
};

static json_t *cmd_raid_scrub(struct vc_server *s, json_t *args,
                              void *opaque, struct vc_error *err)
{
  static const char *const known[] = { "device", "repair", "speed",
                                       "job-id", NULL };
  struct vc_raid *r = opaque;
  const char *dev, *id = NULL;
  bool repair = false;
  uint64_t speed = 0;
  struct raid_dev *d;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", true, &dev, err) ||
      !vc_arg_bool(args, "repair", false, &repair, err) ||
      !vc_arg_uint(args, "speed", false, &speed, err) ||
      !vc_arg_str(args, "job-id", false, &id, err))
    return NULL;
  struct raid_array *a = raid_find(r, dev, &d, err);
  if (!a)
    return NULL;
  if (vc_device_busy(s, dev)) {
    vc_error_set(err, "GenericError", "Device '%s' is busy with a block job",
                 dev);
    return NULL;
  }
  struct vd_raid_status *st = malloc(sizeof *st);
  struct scrub_job *j = calloc(1, sizeof *j);
  if (!st || !j || vd_raid_status(a, st) < 0) {
    vc_error_set(err, "GenericError", "%s", st && j ? vd_error()
                                                    : "out of memory");
    free(st);
    free(j);
    return NULL;
  }
  j->total = st->member_data_size;
  free(st);
  /* The engine's refusals (no redundancy, degraded, read-only) now, as
   * an error of the command rather than of the job: a step at the end
   * checks them and compares nothing. */
  uint64_t probe = j->total;
  struct vd_raid_scrub_report none = { 0 };
  if (vd_raid_scrub_step(a, repair, &probe, 0, &none) < 0) {
    vc_error_set(err, "GenericError", "%s", vd_error());
    free(j);
    return NULL;
  }
  j->r = r;
  j->d = d;
  j->a = a;
  j->repair = repair;
  snprintf(j->device, sizeof j->device, "%s", dev);
  j->rep.mismatch = scrub_mismatch;
  j->rep.opaque = j;
  j->out.valid = j->out.running = true;
  j->out.repair = repair;
  j->out.total = j->total;
  snprintf(j->out.job, sizeof j->out.job, "%s", id && *id ? id : dev);
  if (vc_job_start(s, id, dev, &scrub_driver, j, speed, err) < 0)
    return NULL;
  return json_object();
}

/* ---- start and stop ---- */

int vc_raid_start(struct vc_raid **rp, struct vc_server **s,
                  const char *control_path, const char *program, char *msg,
                  size_t msglen)
{
  struct vc_raid *r = *rp;
  char path[PATH_MAX], *sock = NULL;
  int e;
  if (!*s && (!r || !r->devs))
    return 0;                        /* nothing to manage, no socket */
  if (!r && !(r = *rp = calloc(1, sizeof *r))) {
    snprintf(msg, msglen, "out of memory");
    return -ENOMEM;
  }
  if (!*s) {
    /* No --control: a socket of our own in the runtime folder, named
     * after us (never after a name somebody else chose). */
    if ((e = vd_raid_runtime_dir(path, sizeof path, true)) < 0) {
      snprintf(msg, msglen, "%s", vd_error());
      return e;
    }
    size_t l = strlen(path);
    snprintf(path + l, sizeof path - l, "/%s-%ld.sock", program,
             (long)getpid());
    if ((e = vc_server_start(path, program, s)) < 0) {
      snprintf(msg, msglen, "%s", vc_last_error());
      return e;
    }
    for (struct raid_dev *d = r->devs; d; d = d->next)
      if ((e = vc_device_add(*s, d->name, d->node)) < 0) {
        snprintf(msg, msglen, "%s: cannot register '%s': %s", path, d->name,
                 strerror(-e));
        return e;
      }
    control_path = path;
  }
  r->s = *s;
  static const struct { const char *name; vc_cmd_fn fn; } cmds[] = {
    { "query-vdisk-raid", cmd_query_raid },
    { "vdisk-raid-fail", cmd_raid_fail },
    { "vdisk-raid-replace", cmd_raid_replace },
    { "vdisk-raid-re-add", cmd_raid_re_add },
    { "vdisk-raid-add", cmd_raid_add },
    { "vdisk-raid-remove", cmd_raid_remove },
    { "vdisk-raid-scrub", cmd_raid_scrub },
  };
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
    if ((e = vc_command_register(*s, cmds[i].name, cmds[i].fn, r)) < 0) {
      snprintf(msg, msglen, "cannot register %s: %s", cmds[i].name,
               strerror(-e));
      return e;
    }
  if (!r->devs)
    return 0;
  sock = realpath(control_path, NULL);
  if (!sock) {
    e = -errno;
    snprintf(msg, msglen, "%s: %s", control_path, strerror(-e));
    return e;
  }
  for (struct raid_dev *d = r->devs; d; d = d->next)
    vd_raid_set_notify(vd_raid_of(vd_node_dev(d->node)), raid_notify, d);
  for (struct raid_dev *d = r->devs; d; d = d->next)
    if (vd_raid_publish(vd_path(vd_node_dev(d->node)), sock, d->name,
                        &d->entry) < 0)
      fprintf(stderr, "%s: warning: %s (vdtool raid cannot find this "
              "server)\n", program, vd_error());
  free(sock);
  return 0;
}

void vc_raid_stop(struct vc_raid *r)
{
  /* The arrays outlive the server (the frontend closes them later): no
   * event may reach it once it is stopped. */
  for (struct raid_dev *d = r ? r->devs : NULL; d; d = d->next)
    vd_raid_set_notify(vd_raid_of(vd_node_dev(d->node)), NULL, NULL);
}

void vc_raid_free(struct vc_raid *r)
{
  if (!r)
    return;
  while (r->devs) {
    struct raid_dev *d = r->devs;
    r->devs = d->next;
    vd_raid_unpublish(d->entry);
    pthread_mutex_destroy(&d->lock);
    free(d->name);
    free(d);
  }
  free(r);
}
