/* cmd-mirror.c: the drive-mirror and block-commit commands, block jobs
 * (type "mirror" and "commit") over libvdisk's live mirror
 * (vd_mirror_*, vdisk/mirror.c).  Arguments, defaults and errors follow
 * QEMU's qapi/block-core.json; what differs is listed in docs/control.md
 * ("Live mirror and commit").  An intermediate commit (top below the
 * active layer) is a job of its own over vd_commit_mid_* (commit-live.c).
 *
 * The job driver maps the runner's callbacks onto the mirror: step ->
 * vd_mirror_step (1 = ready), complete -> vd_mirror_complete (the pivot;
 * the old device is closed), abort -> vd_mirror_cancel (after ready: a
 * consistent copy, no pivot), free -> vd_mirror_free.  A background
 * mirror that switches itself to write-blocking (no progress towards
 * ready, see vd_mirror_args) says so once with the event
 * VDISK_MIRROR_WRITE_BLOCKING. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/control/internal.h"
#include "vdisk/vdisk.h"

struct mirror_job {
  struct vc_server *s;
  struct vd_mirror *m;
  char id[128];
  bool announced;       /* the switch to write-blocking was reported */
};

static void
mj_error(struct vc_error *err, int r)
{
  vc_error_set(err, "GenericError", "%s",
               vd_error()[0] ? vd_error() : strerror(-r));
}

static int
mj_step(void *opaque, uint64_t *done, uint64_t *total, struct vc_error *err)
{
  struct mirror_job *j = opaque;
  int r = vd_mirror_step(j->m, done, total);
  if (r < 0)
    mj_error(err, r);
  struct vd_mirror_status st;
  vd_mirror_status(j->m, &st);
  if (st.switched && !j->announced) {
    j->announced = true;
    vc_event(j->s, "VDISK_MIRROR_WRITE_BLOCKING",
             json_pack("{s:s, s:s, s:I}", "device", j->id, "copy-mode",
                       "write-blocking", "dirty", (json_int_t) st.dirty));
  }
  return r;
}

static int
mj_complete(void *opaque, struct vc_error *err)
{
  struct mirror_job *j = opaque;
  struct vd_dev *old = NULL;
  int r = vd_mirror_complete(j->m, &old);
  if (r < 0) {
    mj_error(err, r);
    return r;
  }
  /* The node serves the target now; the source image is left as it was
   * at the pivot (QEMU drops it too).  A commit closed it itself. */
  if (old)
    vd_close(old);
  return 0;
}

static void
mj_abort(void *opaque, bool was_ready)
{
  struct mirror_job *j = opaque;
  (void) was_ready;   /* the mirror knows whether it was ready */
  vd_mirror_cancel(j->m);
}

static void
mj_free(void *opaque)
{
  struct mirror_job *j = opaque;
  vd_mirror_free(j->m);
  free(j);
}

static const struct vc_job_driver mirror_driver = {
  .type = "mirror",
  .step = mj_step,
  .complete = mj_complete,
  .abort = mj_abort,
  .free = mj_free,
};

/* An active commit is a mirror job of QEMU's type "commit". */
static const struct vc_job_driver commit_driver = {
  .type = "commit",
  .step = mj_step,
  .complete = mj_complete,
  .abort = mj_abort,
  .free = mj_free,
};

/* An intermediate commit (vd_commit_mid_*): no ready state, no complete;
 * its last step re-points the chain and the job completes by itself. */
static int
ic_step(void *opaque, uint64_t *done, uint64_t *total, struct vc_error *err)
{
  int r = vd_commit_mid_step(opaque, done, total);
  if (r < 0)
    mj_error(err, r);
  return r;
}

static void
ic_abort(void *opaque, bool was_ready)
{
  (void) was_ready;   /* never ready */
  vd_commit_mid_cancel(opaque);
}

static void
ic_free(void *opaque)
{
  vd_commit_mid_free(opaque);
}

static const struct vc_job_driver commit_mid_driver = {
  .type = "commit",
  .step = ic_step,
  .abort = ic_abort,
  .free = ic_free,
};

/* Look one keyword up in a NULL-terminated list: its index, or -1 with
 * QEMU's error. */
static int
enum_arg(const char *key, const char *val, const char *const *names,
         struct vc_error *err)
{
  for (int i = 0; names[i]; i++)
    if (strcmp(names[i], val) == 0)
      return i;
  vc_error_set(err, "GenericError", "Parameter '%s' does not accept value "
               "'%s'", key, val);
  return -1;
}

/* Start job DRV over mirror M on DEVICE; takes M in every case. */
static json_t *
start_job(struct vc_server *s, const struct vc_job_driver *drv,
          struct vd_mirror *m, const char *device, const char *job_id,
          uint64_t speed, struct vc_error *err)
{
  struct mirror_job *j = calloc(1, sizeof *j);
  if (!j) {
    vd_mirror_free(m);
    vc_error_set(err, "GenericError", "out of memory");
    return NULL;
  }
  j->s = s;
  j->m = m;
  snprintf(j->id, sizeof j->id, "%s", job_id && *job_id ? job_id : device);
  if (vc_job_start(s, job_id, device, drv, j, speed, err) < 0)
    return NULL;   /* mj_free released the mirror */
  return json_object();
}

/* The node of DEVICE, free for a job, or NULL with ERR set. */
static struct vd_node *
job_node(struct vc_server *s, const char *device, struct vc_error *err)
{
  struct vd_node *node = vc_device_find(s, device);
  if (!node)
    vc_error_set(err, "DeviceNotFound", "Device '%s' not found", device);
  else if (vc_device_busy(s, device)) {
    vc_error_set(err, "GenericError", "Node '%s' is busy: block device is "
                 "in use by block job", device);
    node = NULL;
  }
  return node;
}

static json_t *
cmd_drive_mirror(struct vc_server *s, json_t *args, void *opaque,
                 struct vc_error *err)
{
  static const char *const known[] = {
    "device", "target", "format", "sync", "mode", "speed", "copy-mode",
    "job-id", "granularity", "buf-size", "timeout", NULL };
  static const char *const syncs[] = { "full", "top", "none", NULL };
  static const char *const modes[] = { "absolute-paths", "existing", NULL };
  static const char *const copy_modes[] = { "background", "write-blocking",
                                            NULL };
  (void) opaque;
  const char *device = NULL, *target = NULL, *format = NULL, *sync = NULL,
             *mode = "absolute-paths", *copy_mode = "background",
             *job_id = NULL;
  uint64_t speed = 0, granularity = 0, buf_size = 0,
           timeout = VD_MIRROR_REMOTE_TIMEOUT_MS / 1000;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", true, &device, err) ||
      !vc_arg_str(args, "target", true, &target, err) ||
      !vc_arg_str(args, "format", false, &format, err) ||
      !vc_arg_str(args, "sync", true, &sync, err) ||
      !vc_arg_str(args, "mode", false, &mode, err) ||
      !vc_arg_uint(args, "speed", false, &speed, err) ||
      !vc_arg_str(args, "copy-mode", false, &copy_mode, err) ||
      !vc_arg_str(args, "job-id", false, &job_id, err) ||
      !vc_arg_uint(args, "granularity", false, &granularity, err) ||
      !vc_arg_uint(args, "buf-size", false, &buf_size, err) ||
      !vc_arg_uint(args, "timeout", false, &timeout, err))
    return NULL;
  int sy = enum_arg("sync", sync, syncs, err);
  int mo = sy < 0 ? -1 : enum_arg("mode", mode, modes, err);
  int cm = mo < 0 ? -1 : enum_arg("copy-mode", copy_mode, copy_modes, err);
  if (cm < 0)
    return NULL;
  if (granularity && (granularity < 512 || granularity > (64u << 20) ||
                      (granularity & (granularity - 1)))) {
    vc_error_set(err, "GenericError", "Parameter 'granularity' expects a "
                 "power of 2 between 512 and 64M");
    return NULL;
  }
  /* vdisk's own: a remote target's request timeout, in seconds. */
  if (timeout < 1 || timeout > 3600) {
    vc_error_set(err, "GenericError", "Parameter 'timeout' expects seconds "
                 "from 1 to 3600");
    return NULL;
  }
  struct vd_node *node = job_node(s, device, err);
  if (!node)
    return NULL;
  /* QEMU's default target format is the source's; a remote export is
   * the image's raw bytes (format raw or nbd). */
  if (!format && !vd_is_remote_name(target))
    format = vd_format(vd_node_dev(node));
  struct vd_dev *t = NULL;
  int r = vd_mirror_open_target(node, target, format, mo == 0, sy,
                                (unsigned)timeout * 1000, &t);
  if (r < 0) {
    mj_error(err, r);
    return NULL;
  }
  struct vd_mirror_args ma = {
    .sync = sy, .write_blocking = cm == 1, .granularity = granularity,
    .buf_size = buf_size };
  struct vd_mirror *m = NULL;
  r = vd_mirror_start(node, t, &ma, &m);
  if (r < 0) {
    mj_error(err, r);
    vd_close(t);
    if (mo == 0)
      unlink(target);   /* we created it a moment ago */
    return NULL;
  }
  return start_job(s, &mirror_driver, m, device, job_id, speed, err);
}

/* block-commit: the active layer as top (an active commit, a mirror job)
 * or an image below it (an intermediate commit); images are named by
 * file (top, base): the chain's images have no node names, so top-node
 * is accepted only as the device itself and base-node not at all. */
static json_t *
cmd_block_commit(struct vc_server *s, json_t *args, void *opaque,
                 struct vc_error *err)
{
  static const char *const known[] = {
    "device", "top", "top-node", "base", "base-node", "speed", "job-id",
    NULL };
  (void) opaque;
  const char *device = NULL, *top = NULL, *top_node = NULL, *base = NULL,
             *base_node = NULL, *job_id = NULL;
  uint64_t speed = 0;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", true, &device, err) ||
      !vc_arg_str(args, "top", false, &top, err) ||
      !vc_arg_str(args, "top-node", false, &top_node, err) ||
      !vc_arg_str(args, "base", false, &base, err) ||
      !vc_arg_str(args, "base-node", false, &base_node, err) ||
      !vc_arg_uint(args, "speed", false, &speed, err) ||
      !vc_arg_str(args, "job-id", false, &job_id, err))
    return NULL;
  if ((top && top_node) || (base && base_node)) {
    vc_error_set(err, "GenericError", "'%s' and '%s' are mutually exclusive",
                 top ? "top" : "base", top ? "top-node" : "base-node");
    return NULL;
  }
  if ((top_node && strcmp(top_node, device) != 0) || base_node) {
    vc_error_set(err, "GenericError", "Backing images have no node names "
                 "here; name them by file with 'top' and 'base'");
    return NULL;
  }
  struct vd_node *node = job_node(s, device, err);
  if (!node)
    return NULL;
  if (!vd_commit_is_active(node, top)) {
    struct vd_commit *c = NULL;
    int r = vd_commit_mid_start(node, top, base, &c);
    if (r < 0) {
      mj_error(err, r);
      return NULL;
    }
    /* On failure vc_job_start has freed C (ic_free). */
    if (vc_job_start(s, job_id, device, &commit_mid_driver, c, speed,
                     err) < 0)
      return NULL;
    return json_object();
  }
  struct vd_mirror *m = NULL;
  int r = vd_commit_start(node, top, base, NULL, &m);
  if (r < 0) {
    mj_error(err, r);
    return NULL;
  }
  return start_job(s, &commit_driver, m, device, job_id, speed, err);
}

int
vc_mirror_register_commands(struct vc_server *s)
{
  static const struct vc_command_def cmds[] = {
    { "drive-mirror", cmd_drive_mirror },
    { "block-commit", cmd_block_commit },
    { NULL, NULL },
  };
  return vc_command_register_table(s, cmds);
}
