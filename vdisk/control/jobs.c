/* jobs.c: the block job runner and its commands, QEMU's job model
 * (qemu/job.c): one thread per job that calls the driver's step()
 * repeatedly, honours pause/resume, cancel, complete and the speed limit,
 * and reports every state change (JOB_STATUS_CHANGE) and the block job
 * events (BLOCK_JOB_READY, _COMPLETED, _CANCELLED, _ERROR).
 *
 * States and transitions, as QEMU:
 *   created -> running <-> paused
 *   running -> ready <-> standby          (a driver with complete())
 *   running/ready -> waiting -> pending -> concluded -> null   (success)
 *   any live state -> aborting -> concluded -> null     (cancel, error)
 * auto-finalize is always on; with auto-dismiss (the default) a concluded
 * job goes to null at once, else it waits for block-job-dismiss.
 *
 * Memory: a job is freed once it left the list (dismissed), its thread
 * finished and no block-job-complete waits on it (job_maybe_free). */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vdisk/control/internal.h"

enum job_status {
  JS_CREATED, JS_RUNNING, JS_PAUSED, JS_READY, JS_STANDBY, JS_WAITING,
  JS_PENDING, JS_ABORTING, JS_CONCLUDED, JS_NULL, JS_COUNT
};
static const char *const status_name[JS_COUNT] = {
  "created", "running", "paused", "ready", "standby", "waiting", "pending",
  "aborting", "concluded", "null"
};

enum job_verb { JV_CANCEL, JV_PAUSE, JV_RESUME, JV_SET_SPEED, JV_COMPLETE,
                JV_DISMISS, JV_COUNT };
static const char *const verb_name[JV_COUNT] = {
  "cancel", "pause", "resume", "set-speed", "complete", "dismiss"
};
/* QEMU's JobVerbTable (job.c), in the order of enum job_status. */
static const bool verb_ok[JV_COUNT][JS_COUNT] = {
  [JV_CANCEL]    = { 1, 1, 1, 1, 1, 1, 1, 0, 0, 0 },
  [JV_PAUSE]     = { 1, 1, 1, 1, 1, 1, 1, 0, 0, 0 },
  [JV_RESUME]    = { 1, 1, 1, 1, 1, 1, 1, 0, 0, 0 },
  [JV_SET_SPEED] = { 1, 1, 1, 1, 1, 0, 0, 0, 0, 0 },
  [JV_COMPLETE]  = { 0, 0, 0, 1, 0, 0, 0, 0, 0, 0 },
  [JV_DISMISS]   = { 0, 0, 0, 0, 0, 0, 0, 0, 1, 0 },
};

/* While a ready job has nothing to copy it is stepped at this period (a
 * mirror must keep copying what the guest writes). */
#define IDLE_NS 10000000L

struct vc_job {
  struct vc_job *next;
  struct vc_server *s;
  char *id, *device;
  const struct vc_job_driver *drv;
  void *opaque;
  bool auto_dismiss;
  /* s->jobs_lock guards everything below. */
  enum job_status status;
  uint64_t speed, done, total;
  bool user_paused;           /* block-job-pause, until -resume */
  bool cancel, force;         /* block-job-cancel */
  bool ready;                 /* has been ready */
  bool busy;                  /* not waiting for a pause or the throttle */
  int complete_req;           /* 0 none, 1 asked, 2 answered */
  int complete_ret;
  struct vc_error complete_err;
  int waiters;                /* block-job-complete calls waiting */
  bool failed;
  char error[256];
  bool listed;                /* in s->jobs */
  bool thread_done;
};

static void set_status_locked(struct vc_job *j, enum job_status st)
{
  j->status = st;
  vc_event(j->s, "JOB_STATUS_CHANGE",
           json_pack("{s:s, s:s}", "id", j->id, "status", status_name[st]));
}

/* The data of BLOCK_JOB_READY/_COMPLETED/_CANCELLED. */
static json_t *job_info_locked(struct vc_job *j)
{
  return json_pack("{s:s, s:s, s:I, s:I, s:I}", "type", j->drv->type,
                   "device", j->id, "len", (json_int_t)j->total,
                   "offset", (json_int_t)j->done,
                   "speed", (json_int_t)j->speed);
}

static void job_maybe_free_locked(struct vc_job *j)
{
  if (j->listed || !j->thread_done || j->waiters > 0)
    return;
  free(j->id);
  free(j->device);
  free(j);
}

static void unlist_locked(struct vc_job *j)
{
  for (struct vc_job **p = &j->s->jobs; *p; p = &(*p)->next)
    if (*p == j) {
      *p = j->next;
      break;
    }
  j->listed = false;
}

static void deadline_after(struct timespec *ts, double seconds)
{
  clock_gettime(CLOCK_MONOTONIC, ts);
  long ns = (long)(seconds * 1e9);
  ts->tv_sec += ns / 1000000000L;
  ts->tv_nsec += ns % 1000000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Something the runner must act on at once. */
static bool interrupted_locked(const struct vc_job *j)
{
  return j->cancel || j->user_paused || j->complete_req == 1;
}

/* Wait on the job condition until DEADLINE or an interruption.  The
 * condition uses CLOCK_MONOTONIC (job_cond_init). */
static void wait_until_locked(struct vc_job *j, const struct timespec *dl,
                              uint64_t speed)
{
  struct vc_server *s = j->s;
  while (!interrupted_locked(j) && j->speed == speed &&
         pthread_cond_timedwait(&s->jobs_cond, &s->jobs_lock, dl) == 0)
    ;
}

enum job_end { END_SUCCESS, END_CANCELLED, END_FAILED };

static void job_end_locked(struct vc_job *j, enum job_end how, bool soft)
{
  struct vc_server *s = j->s;
  bool was_ready = j->ready;

  j->busy = false;
  if (how == END_SUCCESS) {
    set_status_locked(j, JS_WAITING);
    set_status_locked(j, JS_PENDING);
  } else {
    set_status_locked(j, JS_ABORTING);
  }
  /* The driver's last calls run unlocked: they may take long (close a
   * target, flush) and must not hold up queries. */
  pthread_mutex_unlock(&s->jobs_lock);
  if ((how != END_SUCCESS || soft) && j->drv->abort)
    j->drv->abort(j->opaque, was_ready);
  if (j->drv->free)
    j->drv->free(j->opaque);
  pthread_mutex_lock(&s->jobs_lock);
  j->opaque = NULL;
  json_t *data = job_info_locked(j);
  if (how == END_FAILED && data)
    json_object_set_new(data, "error", json_string(j->error));
  vc_event(s, how == END_CANCELLED ? "BLOCK_JOB_CANCELLED"
                                   : "BLOCK_JOB_COMPLETED", data);
  set_status_locked(j, JS_CONCLUDED);
  if (j->auto_dismiss) {
    set_status_locked(j, JS_NULL);
    unlist_locked(j);
  }
  /* A block-job-complete still waiting gets its answer. */
  if (j->complete_req == 1) {
    j->complete_req = 2;
    j->complete_ret = -ECANCELED;
    vc_error_set(&j->complete_err, "GenericError",
                 "The block job '%s' ended before it could complete", j->id);
  }
}

static void *job_thread(void *arg)
{
  struct vc_job *j = arg;
  struct vc_server *s = j->s;
  enum job_end how = END_SUCCESS;
  bool soft = false;                 /* cancel of a ready job: completed */
  double slice_start = now_s();
  uint64_t slice_bytes = 0, slice_speed;

  pthread_mutex_lock(&s->jobs_lock);
  set_status_locked(j, JS_RUNNING);
  slice_speed = j->speed;
  for (;;) {
    uint64_t done = 0, total;
    struct vc_error err = { "", "" };
    int r;

    /* The pause point. */
    if (j->user_paused && !j->cancel) {
      j->busy = false;
      set_status_locked(j, j->ready ? JS_STANDBY : JS_PAUSED);
      while (j->user_paused && !j->cancel)
        pthread_cond_wait(&s->jobs_cond, &s->jobs_lock);
      j->busy = true;
      set_status_locked(j, j->ready ? JS_READY : JS_RUNNING);
      slice_start = now_s();
      slice_bytes = 0;
    }
    if (j->cancel) {
      /* QEMU: cancelling a ready job without force completes it without
       * pivoting (BLOCK_JOB_COMPLETED); the source is left as it is. */
      if (j->ready && !j->force) {
        soft = true;
        how = END_SUCCESS;
      } else {
        how = END_CANCELLED;
      }
      break;
    }
    if (j->complete_req == 1) {
      pthread_mutex_unlock(&s->jobs_lock);
      r = j->drv->complete(j->opaque, &err);
      pthread_mutex_lock(&s->jobs_lock);
      j->complete_ret = r;
      j->complete_err = err;
      if (r < 0 && !j->complete_err.cls[0])
        vc_error_set(&j->complete_err, "GenericError", "%s", strerror(-r));
      j->complete_req = 2;
      pthread_cond_broadcast(&s->jobs_cond);
      if (r == 0)
        break;                        /* success */
      continue;
    }

    total = j->total;
    pthread_mutex_unlock(&s->jobs_lock);
    r = j->drv->step(j->opaque, &done, &total, &err);
    pthread_mutex_lock(&s->jobs_lock);
    j->done += done;
    j->total = total;
    if (r < 0) {
      how = END_FAILED;
      snprintf(j->error, sizeof j->error, "%s",
               err.desc[0] ? err.desc : strerror(-r));
      j->failed = true;
      vc_event(s, "BLOCK_JOB_ERROR",
               json_pack("{s:s, s:s, s:s}", "device", j->id,
                         "operation", r == -ENOSPC ? "write" : "read",
                         "action", "report"));
      break;
    }
    if (r == 1 && !j->drv->complete)
      break;                          /* success */
    if (r == 1 && !j->ready) {
      j->ready = true;
      set_status_locked(j, JS_READY);
      vc_event(s, "BLOCK_JOB_READY", job_info_locked(j));
    }

    /* The throttle: keep bytes / elapsed time under the speed; a change
     * of speed starts a new slice. */
    double wait = 0;
    if (j->speed != slice_speed) {
      slice_speed = j->speed;
      slice_start = now_s();
      slice_bytes = 0;
    }
    if (j->speed) {
      slice_bytes += done;
      double due = slice_start + (double)slice_bytes / (double)j->speed;
      double now = now_s();
      if (due > now)
        wait = due - now;
      else if (now - slice_start > 1.0) {
        slice_start = now;            /* caught up: forget the past */
        slice_bytes = 0;
      }
    }
    if (r == 1 && wait < IDLE_NS / 1e9)
      wait = IDLE_NS / 1e9;
    if (wait > 0) {
      struct timespec dl;
      deadline_after(&dl, wait);
      j->busy = false;
      wait_until_locked(j, &dl, j->speed);
      j->busy = true;
    }
  }
  job_end_locked(j, how, soft);
  j->thread_done = true;
  s->job_threads--;
  pthread_cond_broadcast(&s->jobs_cond);
  job_maybe_free_locked(j);
  pthread_mutex_unlock(&s->jobs_lock);
  return NULL;
}

static struct vc_job *find_job_locked(struct vc_server *s, const char *id)
{
  for (struct vc_job *j = s->jobs; j; j = j->next)
    if (strcmp(j->id, id) == 0)
      return j;
  return NULL;
}

bool vc_device_busy(struct vc_server *s, const char *device)
{
  bool busy = false;
  pthread_mutex_lock(&s->jobs_lock);
  for (struct vc_job *j = s->jobs; j; j = j->next)
    if (strcmp(j->device, device) == 0 && j->status != JS_CONCLUDED) {
      busy = true;
      break;
    }
  pthread_mutex_unlock(&s->jobs_lock);
  return busy;
}

int vc_job_start_opts(struct vc_server *s, const char *id, const char *device,
                      const struct vc_job_driver *drv, void *opaque,
                      uint64_t speed, bool auto_dismiss,
                      struct vc_error *err)
{
  struct vc_job *j = NULL, *other;
  pthread_attr_t attr;
  pthread_t t;
  int r;

  if (!id || !*id)
    id = device;
  if (!device || !vc_device_find(s, device)) {
    vc_error_set(err, "DeviceNotFound", "Device '%s' not found",
                 device ? device : "");
    r = -ENOENT;
    goto fail;
  }
  if (!drv || !drv->step || !drv->type) {
    vc_error_set(err, "GenericError", "invalid job driver");
    r = -EINVAL;
    goto fail;
  }
  pthread_mutex_lock(&s->jobs_lock);
  if (s->jobs_closed) {
    pthread_mutex_unlock(&s->jobs_lock);
    vc_error_set(err, "GenericError", "the server is shutting down");
    r = -ESHUTDOWN;
    goto fail;
  }
  if (find_job_locked(s, id)) {
    pthread_mutex_unlock(&s->jobs_lock);
    vc_error_set(err, "GenericError", "Job ID '%s' already in use", id);
    r = -EEXIST;
    goto fail;
  }
  for (other = s->jobs; other; other = other->next)
    if (strcmp(other->device, device) == 0 && other->status != JS_CONCLUDED)
      break;
  if (other) {
    vc_error_set(err, "GenericError",
                 "Node '%s' is busy: block device is in use by block job: %s",
                 device, other->drv->type);
    pthread_mutex_unlock(&s->jobs_lock);
    r = -EBUSY;
    goto fail;
  }
  j = calloc(1, sizeof *j);
  if (!j || !(j->id = strdup(id)) || !(j->device = strdup(device))) {
    pthread_mutex_unlock(&s->jobs_lock);
    vc_error_set(err, "GenericError", "out of memory");
    r = -ENOMEM;
    goto fail;
  }
  j->s = s;
  j->drv = drv;
  j->opaque = opaque;
  j->speed = speed;
  j->auto_dismiss = auto_dismiss;
  j->busy = true;
  j->listed = true;
  j->next = s->jobs;
  s->jobs = j;
  set_status_locked(j, JS_CREATED);
  s->job_threads++;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  r = -pthread_create(&t, &attr, job_thread, j);
  pthread_attr_destroy(&attr);
  if (r < 0) {
    s->job_threads--;
    unlist_locked(j);
    pthread_mutex_unlock(&s->jobs_lock);
    vc_error_set(err, "GenericError", "cannot start a thread: %s",
                 strerror(-r));
    goto fail;
  }
  pthread_mutex_unlock(&s->jobs_lock);
  return 0;
fail:
  if (j) {
    free(j->id);
    free(j->device);
    free(j);
  }
  if (drv && drv->free)
    drv->free(opaque);
  return r;
}

int vc_job_start(struct vc_server *s, const char *id, const char *device,
                 const struct vc_job_driver *drv, void *opaque,
                 uint64_t speed, struct vc_error *err)
{
  return vc_job_start_opts(s, id, device, drv, opaque, speed, true, err);
}

void vc_jobs_shutdown(struct vc_server *s)
{
  pthread_mutex_lock(&s->jobs_lock);
  s->jobs_closed = true;
  for (struct vc_job *j = s->jobs; j; j = j->next) {
    j->cancel = true;
    j->force = true;
  }
  pthread_cond_broadcast(&s->jobs_cond);
  while (s->job_threads > 0)
    pthread_cond_wait(&s->jobs_cond, &s->jobs_lock);
  while (s->jobs) {
    struct vc_job *j = s->jobs;
    unlist_locked(j);
    job_maybe_free_locked(j);
  }
  pthread_mutex_unlock(&s->jobs_lock);
}

/* ---- commands ---- */

/* The job named by args "device" (QEMU: the job id), in a state that
 * accepts VERB; NULL with *ERR set.  Called with jobs_lock held. */
static struct vc_job *job_for_verb_locked(struct vc_server *s, json_t *args,
                                          enum job_verb verb,
                                          const char *const *known,
                                          struct vc_error *err)
{
  const char *id;
  struct vc_job *j;
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "device", true, &id, err))
    return NULL;
  j = find_job_locked(s, id);
  if (!j) {
    vc_error_set(err, "DeviceNotActive", "Block job '%s' not found", id);
    return NULL;
  }
  if (!verb_ok[verb][j->status]) {
    vc_error_set(err, "GenericError",
                 "Job '%s' in state '%s' cannot accept command verb '%s'",
                 j->id, status_name[j->status], verb_name[verb]);
    return NULL;
  }
  return j;
}

static json_t *cmd_query_block_jobs(struct vc_server *s, json_t *args,
                                    void *opaque, struct vc_error *err)
{
  static const char *const known[] = { NULL };
  json_t *list;
  (void)opaque;
  if (!vc_arg_only(args, known, err))
    return NULL;
  list = json_array();
  pthread_mutex_lock(&s->jobs_lock);
  for (struct vc_job *j = s->jobs; j && list; j = j->next) {
    json_t *o = json_pack(
      "{s:s, s:s, s:I, s:I, s:b, s:b, s:I, s:s, s:b, s:s, s:b, s:b}",
      "type", j->drv->type, "device", j->id, "len", (json_int_t)j->total,
      "offset", (json_int_t)j->done, "busy", j->busy,
      "paused", j->user_paused, "speed", (json_int_t)j->speed,
      "io-status", "ok", "ready",
      j->status == JS_READY || j->status == JS_STANDBY,
      "status", status_name[j->status], "auto-finalize", 1,
      "auto-dismiss", j->auto_dismiss);
    if (o && j->failed && j->status == JS_CONCLUDED)
      json_object_set_new(o, "error", json_string(j->error));
    json_array_append_new(list, o);
  }
  pthread_mutex_unlock(&s->jobs_lock);
  return list;
}

static json_t *cmd_query_jobs(struct vc_server *s, json_t *args, void *opaque,
                              struct vc_error *err)
{
  static const char *const known[] = { NULL };
  json_t *list;
  (void)opaque;
  if (!vc_arg_only(args, known, err))
    return NULL;
  list = json_array();
  pthread_mutex_lock(&s->jobs_lock);
  for (struct vc_job *j = s->jobs; j && list; j = j->next) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I}", "id", j->id,
                          "type", j->drv->type,
                          "status", status_name[j->status],
                          "current-progress", (json_int_t)j->done,
                          "total-progress", (json_int_t)j->total);
    if (o && j->failed && j->status == JS_CONCLUDED)
      json_object_set_new(o, "error", json_string(j->error));
    json_array_append_new(list, o);
  }
  pthread_mutex_unlock(&s->jobs_lock);
  return list;
}

/* A block-job-* command that changes one job's requests: check the
 * arguments and the verb, then APPLY under jobs_lock (false: *ERR set);
 * the runner is woken to see the change. */
typedef bool (*job_apply_fn)(struct vc_job *j, json_t *args,
                             struct vc_error *err);

static json_t *job_command(struct vc_server *s, json_t *args,
                           enum job_verb verb, const char *const *known,
                           job_apply_fn apply, struct vc_error *err)
{
  struct vc_job *j;
  json_t *ret = NULL;
  pthread_mutex_lock(&s->jobs_lock);
  j = job_for_verb_locked(s, args, verb, known, err);
  if (j && apply(j, args, err)) {
    pthread_cond_broadcast(&s->jobs_cond);
    ret = json_object();
  }
  pthread_mutex_unlock(&s->jobs_lock);
  return ret;
}

static bool apply_pause(struct vc_job *j, json_t *args, struct vc_error *err)
{
  (void)args;
  if (j->user_paused) {
    vc_error_set(err, "GenericError", "Job is already paused");
    return false;
  }
  j->user_paused = true;
  return true;
}

static bool apply_resume(struct vc_job *j, json_t *args, struct vc_error *err)
{
  (void)args;
  if (!j->user_paused) {
    vc_error_set(err, "GenericError",
                 "Can't resume a job that was not paused");
    return false;
  }
  j->user_paused = false;
  return true;
}

static bool apply_cancel(struct vc_job *j, json_t *args, struct vc_error *err)
{
  bool force = false;
  if (!vc_arg_bool(args, "force", false, &force, err))
    return false;
  j->cancel = true;
  j->force = j->force || force;
  return true;
}

static bool apply_speed(struct vc_job *j, json_t *args, struct vc_error *err)
{
  uint64_t speed;
  if (!vc_arg_uint(args, "speed", true, &speed, err))
    return false;
  j->speed = speed;
  return true;
}

static json_t *cmd_pause(struct vc_server *s, json_t *args, void *opaque,
                         struct vc_error *err)
{
  static const char *const known[] = { "device", NULL };
  (void)opaque;
  return job_command(s, args, JV_PAUSE, known, apply_pause, err);
}

static json_t *cmd_resume(struct vc_server *s, json_t *args, void *opaque,
                          struct vc_error *err)
{
  static const char *const known[] = { "device", NULL };
  (void)opaque;
  return job_command(s, args, JV_RESUME, known, apply_resume, err);
}

static json_t *cmd_cancel(struct vc_server *s, json_t *args, void *opaque,
                          struct vc_error *err)
{
  static const char *const known[] = { "device", "force", NULL };
  bool force;
  (void)opaque;
  /* Argument types are checked before the job is looked up, as QEMU. */
  if (!vc_arg_bool(args, "force", false, &force, err))
    return NULL;
  return job_command(s, args, JV_CANCEL, known, apply_cancel, err);
}

static json_t *cmd_set_speed(struct vc_server *s, json_t *args, void *opaque,
                             struct vc_error *err)
{
  static const char *const known[] = { "device", "speed", NULL };
  uint64_t speed;
  (void)opaque;
  if (!vc_arg_uint(args, "speed", true, &speed, err))
    return NULL;
  return job_command(s, args, JV_SET_SPEED, known, apply_speed, err);
}

static json_t *cmd_complete(struct vc_server *s, json_t *args, void *opaque,
                            struct vc_error *err)
{
  static const char *const known[] = { "device", NULL };
  struct vc_job *j;
  json_t *ret = NULL;
  (void)opaque;
  pthread_mutex_lock(&s->jobs_lock);
  j = job_for_verb_locked(s, args, JV_COMPLETE, known, err);
  if (j && (j->cancel || !j->drv->complete || j->complete_req == 1))
    vc_error_set(err, "GenericError",
                 "The active block job '%s' cannot be completed", j->id);
  else if (j) {
    /* Runs between two steps on the job's thread; we wait for its
     * answer (the job thread never takes the command mutex). */
    j->complete_req = 1;
    j->waiters++;
    pthread_cond_broadcast(&s->jobs_cond);
    while (j->complete_req == 1)
      pthread_cond_wait(&s->jobs_cond, &s->jobs_lock);
    j->waiters--;
    if (j->complete_ret == 0)
      ret = json_object();
    else
      *err = j->complete_err;
    j->complete_req = 0;
    job_maybe_free_locked(j);
  }
  pthread_mutex_unlock(&s->jobs_lock);
  return ret;
}

static json_t *cmd_dismiss(struct vc_server *s, json_t *args, void *opaque,
                           struct vc_error *err)
{
  static const char *const known[] = { "id", NULL };
  const char *id;
  struct vc_job *j;
  json_t *ret = NULL;
  (void)opaque;
  /* QEMU's block-job-dismiss takes "id", not "device". */
  if (!vc_arg_only(args, known, err) ||
      !vc_arg_str(args, "id", true, &id, err))
    return NULL;
  pthread_mutex_lock(&s->jobs_lock);
  j = find_job_locked(s, id);
  if (!j)
    vc_error_set(err, "DeviceNotActive", "Block job '%s' not found", id);
  else if (!verb_ok[JV_DISMISS][j->status])
    vc_error_set(err, "GenericError",
                 "Job '%s' in state '%s' cannot accept command verb '%s'",
                 j->id, status_name[j->status], verb_name[JV_DISMISS]);
  else {
    set_status_locked(j, JS_NULL);
    unlist_locked(j);
    job_maybe_free_locked(j);
    ret = json_object();
  }
  pthread_mutex_unlock(&s->jobs_lock);
  return ret;
}

int vc_jobs_register_commands(struct vc_server *s)
{
  static const struct vc_command_def cmds[] = {
    { "query-block-jobs", cmd_query_block_jobs },
    { "query-jobs", cmd_query_jobs },
    { "block-job-pause", cmd_pause },
    { "block-job-resume", cmd_resume },
    { "block-job-cancel", cmd_cancel },
    { "block-job-complete", cmd_complete },
    { "block-job-set-speed", cmd_set_speed },
    { "block-job-dismiss", cmd_dismiss },
    { NULL, NULL },
  };
  return vc_command_register_table(s, cmds);
}
