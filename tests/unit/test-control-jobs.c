/* Unit tests for the control module's job runner (vdisk/control/jobs.c):
 * a toy job driver run through the runner and steered with the
 * block-job-* commands as a client would (vc_execute), the events seen
 * through the server's test hook.
 *
 * No timing thresholds: a job is held still by the throttle (speed 1
 * byte/s after a step of 1 MiB leaves it waiting for days, until a command
 * interrupts it) or runs freely to its end; every wait for an event is
 * bounded (10 s) only so that a bug cannot hang the suite. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/control/internal.h"
#include "vdisk/vdisk.h"

#define MiB (1024u * 1024u)

/* ---- the toy driver ---- */

struct toy {
  uint64_t size, pos, chunk;
  int fail_at_step;           /* step number that fails with -EIO, 0: none */
  int complete_ret;           /* what complete() returns */
  atomic_int steps, completes, aborts, frees;
  atomic_int abort_was_ready; /* -1: abort not called */
};

static int toy_step(void *opaque, uint64_t *done, uint64_t *total,
                    struct vc_error *err)
{
  struct toy *t = opaque;
  int n = atomic_fetch_add(&t->steps, 1) + 1;
  *total = t->size;
  if (n == t->fail_at_step) {
    vc_error_set(err, "GenericError", "toy: read error at %llu",
                 (unsigned long long)t->pos);
    return -EIO;
  }
  if (t->pos >= t->size)
    return 1;
  uint64_t len = t->size - t->pos < t->chunk ? t->size - t->pos : t->chunk;
  t->pos += len;
  *done += len;
  return t->pos >= t->size ? 1 : 0;
}

static int toy_complete(void *opaque, struct vc_error *err)
{
  struct toy *t = opaque;
  atomic_fetch_add(&t->completes, 1);
  if (t->complete_ret < 0)
    vc_error_set(err, "GenericError", "toy: cannot pivot");
  return t->complete_ret;
}

static void toy_abort(void *opaque, bool was_ready)
{
  struct toy *t = opaque;
  atomic_fetch_add(&t->aborts, 1);
  t->abort_was_ready = was_ready;
}

static void toy_free(void *opaque)
{
  struct toy *t = opaque;
  atomic_fetch_add(&t->frees, 1);
}

static const struct vc_job_driver toy_mirror = {
  .type = "mirror", .step = toy_step, .complete = toy_complete,
  .abort = toy_abort, .free = toy_free,
};
static const struct vc_job_driver toy_stream = {
  .type = "stream", .step = toy_step, .abort = toy_abort, .free = toy_free,
};

static void toy_init(struct toy *t, uint64_t size, uint64_t chunk)
{
  memset(t, 0, sizeof *t);
  t->size = size;
  t->chunk = chunk;
  t->abort_was_ready = -1;
}

/* ---- events ---- */

static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cond = PTHREAD_COND_INITIALIZER;
static json_t *events;        /* every event message so far */

static void hook(void *opaque, json_t *msg)
{
  (void)opaque;
  pthread_mutex_lock(&ev_lock);
  json_array_append(events, msg);
  pthread_cond_broadcast(&ev_cond);
  pthread_mutex_unlock(&ev_lock);
}

/* The first event NAME (with data "status" STATUS if given) after index
 * *FROM, waiting up to 10 s; *FROM moves past it.  Borrowed, or NULL. */
static json_t *wait_event(size_t *from, const char *name, const char *status)
{
  struct timespec dl;
  json_t *found = NULL;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 10;
  pthread_mutex_lock(&ev_lock);
  for (;;) {
    for (; *from < json_array_size(events) && !found; (*from)++) {
      json_t *e = json_array_get(events, *from);
      const char *n = json_string_value(json_object_get(e, "event"));
      const char *st = json_string_value(
        json_object_get(json_object_get(e, "data"), "status"));
      if (strcmp(n, name) == 0 && (!status || (st && !strcmp(st, status))))
        found = e;
    }
    if (found || pthread_cond_timedwait(&ev_cond, &ev_lock, &dl) != 0)
      break;
  }
  pthread_mutex_unlock(&ev_lock);
  return found;
}

/* The event names, in order, from index FROM, joined by spaces. */
static char *event_names(size_t from, const char *id)
{
  static char buf[2048];
  buf[0] = 0;
  pthread_mutex_lock(&ev_lock);
  for (size_t i = from; i < json_array_size(events); i++) {
    json_t *e = json_array_get(events, i);
    json_t *d = json_object_get(e, "data");
    const char *jid = json_string_value(json_object_get(d, "id"));
    if (!jid)
      jid = json_string_value(json_object_get(d, "device"));
    if (id && jid && strcmp(jid, id) != 0)
      continue;
    const char *n = json_string_value(json_object_get(e, "event"));
    const char *st = json_string_value(json_object_get(d, "status"));
    size_t l = strlen(buf);
    snprintf(buf + l, sizeof buf - l, "%s%s%s%s", l ? " " : "", n,
             st ? ":" : "", st ? st : "");
  }
  pthread_mutex_unlock(&ev_lock);
  return buf;
}

static size_t nevents(void)
{
  pthread_mutex_lock(&ev_lock);
  size_t n = json_array_size(events);
  pthread_mutex_unlock(&ev_lock);
  return n;
}

/* ---- the server ---- */

static char tmpdir[64];
static struct vc_server *srv;
static struct vd_node *node;

static void setup(void)
{
  char path[128];
  struct vd_create_args ca = { .size = MiB };
  struct vd_dev *dev;
  strcpy(tmpdir, "/tmp/test-control-XXXXXX");
  CU_ASSERT_FATAL(mkdtemp(tmpdir) != NULL);
  snprintf(path, sizeof path, "%s/disk.raw", tmpdir);
  CU_ASSERT_FATAL(vd_create(path, "raw", &ca) == 0);
  CU_ASSERT_FATAL(vd_open(path, "raw", VD_OPEN_RDWR, &dev) == 0);
  CU_ASSERT_FATAL(vd_node_new(dev, &node) == 0);
  snprintf(path, sizeof path, "%s/ctl.sock", tmpdir);
  CU_ASSERT_FATAL(vc_server_start(path, "test-control", &srv) == 0);
  srv->event_hook = hook;
  CU_ASSERT_FATAL(vc_device_add(srv, "disk0", node) == 0);
  pthread_mutex_lock(&ev_lock);
  json_decref(events);
  events = json_array();
  pthread_mutex_unlock(&ev_lock);
}

static void teardown(void)
{
  char path[128];
  vc_server_stop(srv);
  srv = NULL;
  vd_node_free(node);
  snprintf(path, sizeof path, "%s/disk.raw", tmpdir);
  unlink(path);
  snprintf(path, sizeof path, "%s/ctl.sock", tmpdir);
  CU_ASSERT(access(path, F_OK) < 0);      /* stop removed our socket */
  rmdir(tmpdir);
}

/* Run command NAME with ARGS (a JSON text, NULL: none); the reply's
 * "return" (new reference) or NULL with ERR set. */
static json_t *run(const char *name, const char *args, struct vc_error *err)
{
  json_t *a = args ? json_loads(args, 0, NULL) : NULL;
  json_t *r = vc_execute(srv, name, a, err);
  json_decref(a);
  return r;
}

static bool run_ok(const char *name, const char *args)
{
  struct vc_error err;
  json_t *r = run(name, args, &err);
  if (!r)
    fprintf(stderr, "%s %s: %s: %s\n", name, args ? args : "", err.cls,
            err.desc);
  json_decref(r);
  return r != NULL;
}

/* The error of a command expected to fail ("" if it succeeded). */
static const char *run_err(const char *name, const char *args)
{
  static struct vc_error err;
  json_t *r = run(name, args, &err);
  if (r) {
    json_decref(r);
    return "";
  }
  return err.desc;
}

/* One query-block-jobs entry, for job ID (new reference) or NULL. */
static json_t *query_job(const char *id)
{
  struct vc_error err;
  json_t *list = run("query-block-jobs", NULL, &err), *v, *found = NULL;
  size_t i;
  json_array_foreach(list, i, v)
    if (!strcmp(json_string_value(json_object_get(v, "device")), id))
      found = json_incref(v);
  json_decref(list);
  return found;
}

static const char *jstr(json_t *o, const char *k)
{
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "";
}

/* Wait until toy T was freed (its job ended), bounded. */
static void wait_freed(struct toy *t)
{
  for (int i = 0; i < 10000 && !atomic_load(&t->frees); i++)
    usleep(1000);
}

/* Wait until toy T made N steps (bounded): a job held by the throttle
 * has made exactly its first. */
static void wait_steps(struct toy *t, int n)
{
  for (int i = 0; i < 10000 && atomic_load(&t->steps) < n; i++)
    usleep(1000);
}

/* ---- tests ---- */

static void test_run_to_completion(void)
{
  struct toy t;
  struct vc_error err;
  size_t from = 0;
  setup();
  toy_init(&t, 10 * MiB, 64 * 1024);
  CU_ASSERT_FATAL(vc_job_start(srv, "j1", "disk0", &toy_stream, &t, 0,
                               &err) == 0);
  json_t *done = wait_event(&from, "BLOCK_JOB_COMPLETED", NULL);
  CU_ASSERT_FATAL(done != NULL);
  json_t *d = json_object_get(done, "data");
  CU_ASSERT_STRING_EQUAL(jstr(d, "type"), "stream");
  CU_ASSERT_STRING_EQUAL(jstr(d, "device"), "j1");
  CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "len")), 10 * MiB);
  CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "offset")), 10 * MiB);
  CU_ASSERT_PTR_NULL(json_object_get(d, "error"));
  CU_ASSERT_PTR_NOT_NULL(wait_event(&from, "JOB_STATUS_CHANGE", "null"));
  CU_ASSERT_STRING_EQUAL(event_names(0, "j1"),
    "JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
    "JOB_STATUS_CHANGE:waiting JOB_STATUS_CHANGE:pending "
    "BLOCK_JOB_COMPLETED JOB_STATUS_CHANGE:concluded "
    "JOB_STATUS_CHANGE:null");
  wait_freed(&t);
  CU_ASSERT_EQUAL(t.frees, 1);
  CU_ASSERT_EQUAL(t.aborts, 0);
  CU_ASSERT_EQUAL(t.steps, 160);
  json_t *q = query_job("j1");       /* auto-dismissed */
  CU_ASSERT_PTR_NULL(q);
  json_decref(q);
  teardown();
}

static void test_ready_complete(void)
{
  struct toy t;
  struct vc_error err;
  size_t from = 0;
  setup();
  toy_init(&t, 4 * MiB, MiB);
  CU_ASSERT_FATAL(vc_job_start(srv, "m", "disk0", &toy_mirror, &t, 0,
                               &err) == 0);
  /* complete before ready: refused by the verb table */
  json_t *ready = wait_event(&from, "BLOCK_JOB_READY", NULL);
  CU_ASSERT_FATAL(ready != NULL);
  CU_ASSERT_EQUAL(json_integer_value(json_object_get(
                    json_object_get(ready, "data"), "offset")), 4 * MiB);
  json_t *q = query_job("m");
  CU_ASSERT_FATAL(q != NULL);
  CU_ASSERT_STRING_EQUAL(jstr(q, "status"), "ready");
  CU_ASSERT(json_is_true(json_object_get(q, "ready")));
  CU_ASSERT_STRING_EQUAL(jstr(q, "type"), "mirror");
  json_decref(q);
  CU_ASSERT(run_ok("block-job-complete", "{\"device\": \"m\"}"));
  CU_ASSERT_EQUAL(t.completes, 1);
  json_t *done = wait_event(&from, "BLOCK_JOB_COMPLETED", NULL);
  CU_ASSERT_FATAL(done != NULL);
  CU_ASSERT_PTR_NULL(json_object_get(json_object_get(done, "data"),
                                     "error"));
  wait_freed(&t);
  CU_ASSERT_EQUAL(t.aborts, 0);
  CU_ASSERT_EQUAL(t.frees, 1);
  teardown();
}

static void test_complete_not_ready_and_failing(void)
{
  struct toy t;
  struct vc_error err;
  size_t from = 0;
  setup();
  /* Held by the throttle after its first 1 MiB step: never ready. */
  toy_init(&t, 4 * MiB, MiB);
  CU_ASSERT_FATAL(vc_job_start(srv, "m", "disk0", &toy_mirror, &t, 1,
                               &err) == 0);
  CU_ASSERT_FATAL(wait_event(&from, "JOB_STATUS_CHANGE", "running") != NULL);
  CU_ASSERT_STRING_EQUAL(run_err("block-job-complete", "{\"device\": \"m\"}"),
    "Job 'm' in state 'running' cannot accept command verb 'complete'");
  CU_ASSERT(run_ok("block-job-set-speed", "{\"device\": \"m\", \"speed\": 0}"));
  CU_ASSERT_FATAL(wait_event(&from, "BLOCK_JOB_READY", NULL) != NULL);
  /* A complete() that fails: the command fails, the job stays ready. */
  t.complete_ret = -EINVAL;
  CU_ASSERT_STRING_EQUAL(run_err("block-job-complete", "{\"device\": \"m\"}"),
                         "toy: cannot pivot");
  json_t *q = query_job("m");
  CU_ASSERT_STRING_EQUAL(jstr(q, "status"), "ready");
  json_decref(q);
  t.complete_ret = 0;
  CU_ASSERT(run_ok("block-job-complete", "{\"device\": \"m\"}"));
  CU_ASSERT_EQUAL(t.completes, 2);
  wait_freed(&t);
  CU_ASSERT_EQUAL(t.aborts, 0);
  teardown();
}

static void test_cancel_before_ready(void)
{
  struct toy t;
  struct vc_error err;
  size_t from = 0;
  setup();
  toy_init(&t, 4 * MiB, MiB);
  CU_ASSERT_FATAL(vc_job_start(srv, "m", "disk0", &toy_mirror, &t, 1,
                               &err) == 0);
  wait_steps(&t, 1);
  CU_ASSERT(run_ok("block-job-cancel", "{\"device\": \"m\"}"));
  json_t *c = wait_event(&from, "BLOCK_JOB_CANCELLED", NULL);
  CU_ASSERT_FATAL(c != NULL);
  CU_ASSERT_PTR_NOT_NULL(wait_event(&from, "JOB_STATUS_CHANGE", "null"));
  CU_ASSERT_STRING_EQUAL(event_names(0, "m"),
    "JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
    "JOB_STATUS_CHANGE:aborting BLOCK_JOB_CANCELLED "
    "JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null");
  wait_freed(&t);
  CU_ASSERT_EQUAL(t.aborts, 1);
  CU_ASSERT_EQUAL(t.abort_was_ready, 0);
  CU_ASSERT_EQUAL(t.completes, 0);
  /* The throttle held it: one 1 MiB step at 1 byte/s, then nothing. */
  CU_ASSERT_EQUAL(t.steps, 1);
  CU_ASSERT_STRING_EQUAL(run_err("block-job-cancel", "{\"device\": \"m\"}"),
                         "Block job 'm' not found");
  teardown();
}

/* Cancel after ready: without force the job completes (a point-in-time
 * copy, QEMU's BLOCK_JOB_COMPLETED), with force it is cancelled; either
 * way abort() runs with was_ready and complete() never does. */
static void cancel_after_ready(bool force)
{
  struct toy t;
  struct vc_error err;
  size_t from = 0;
  setup();
  toy_init(&t, 2 * MiB, MiB);
  CU_ASSERT_FATAL(vc_job_start(srv, "m", "disk0", &toy_mirror, &t, 0,
                               &err) == 0);
  CU_ASSERT_FATAL(wait_event(&from, "BLOCK_JOB_READY", NULL) != NULL);
  CU_ASSERT(run_ok("block-job-cancel", force
                   ? "{\"device\": \"m\", \"force\": true}"
                   : "{\"device\": \"m\"}"));
  json_t *e = wait_event(&from, force ? "BLOCK_JOB_CANCELLED"
                                      : "BLOCK_JOB_COMPLETED", NULL);
  CU_ASSERT_PTR_NOT_NULL(e);
  CU_ASSERT_PTR_NULL(json_object_get(json_object_get(e, "data"), "error"));
  wait_freed(&t);
  CU_ASSERT_EQUAL(t.aborts, 1);
  CU_ASSERT_EQUAL(t.abort_was_ready, 1);
  CU_ASSERT_EQUAL(t.completes, 0);
  teardown();
}

static void test_cancel_after_ready(void)
{
  cancel_after_ready(false);
}

static void test_cancel_after_ready_force(void)
{
  cancel_after_ready(true);
}

static void test_pause_resume_speed(void)
{
  struct toy t;
  struct vc_error err;
  size_t from = 0;
  setup();
  toy_init(&t, 4 * MiB, MiB);
  CU_ASSERT_FATAL(vc_job_start(srv, "j", "disk0", &toy_stream, &t, 1,
                               &err) == 0);
  wait_steps(&t, 1);
  CU_ASSERT_STRING_EQUAL(run_err("block-job-resume", "{\"device\": \"j\"}"),
                         "Can't resume a job that was not paused");
  CU_ASSERT(run_ok("block-job-pause", "{\"device\": \"j\"}"));
  CU_ASSERT_STRING_EQUAL(run_err("block-job-pause", "{\"device\": \"j\"}"),
                         "Job is already paused");
  CU_ASSERT_FATAL(wait_event(&from, "JOB_STATUS_CHANGE", "paused") != NULL);
  json_t *q = query_job("j");
  CU_ASSERT_STRING_EQUAL(jstr(q, "status"), "paused");
  CU_ASSERT(json_is_true(json_object_get(q, "paused")));
  CU_ASSERT(json_is_false(json_object_get(q, "busy")));
  CU_ASSERT_EQUAL(json_integer_value(json_object_get(q, "speed")), 1);
  CU_ASSERT_EQUAL(json_integer_value(json_object_get(q, "offset")), MiB);
  json_decref(q);
  /* Lifting the speed limit while paused must not run it. */
  CU_ASSERT(run_ok("block-job-set-speed", "{\"device\": \"j\", \"speed\": 0}"));
  int steps = t.steps;
  CU_ASSERT_EQUAL(steps, 1);
  CU_ASSERT(run_ok("block-job-resume", "{\"device\": \"j\"}"));
  CU_ASSERT_FATAL(wait_event(&from, "JOB_STATUS_CHANGE", "running") != NULL);
  CU_ASSERT_FATAL(wait_event(&from, "BLOCK_JOB_COMPLETED", NULL) != NULL);
  wait_freed(&t);
  CU_ASSERT_EQUAL(t.pos, 4 * MiB);
  CU_ASSERT_EQUAL(t.aborts, 0);
  /* Wrong arguments. */
  CU_ASSERT_STRING_EQUAL(run_err("block-job-set-speed",
                                 "{\"device\": \"j\", \"speed\": -1}"),
                         "Parameter 'speed' expects a non-negative integer");
  CU_ASSERT_STRING_EQUAL(run_err("block-job-pause", "{\"device\": 3}"),
                         "Parameter 'device' expects a string");
  CU_ASSERT_STRING_EQUAL(run_err("block-job-pause", "{}"),
                         "Parameter 'device' is missing");
  teardown();
}

static void test_pause_ready_is_standby(void)
{
  struct toy t;
  struct vc_error err;
  size_t from = 0;
  setup();
  toy_init(&t, MiB, MiB);
  CU_ASSERT_FATAL(vc_job_start(srv, "m", "disk0", &toy_mirror, &t, 0,
                               &err) == 0);
  CU_ASSERT_FATAL(wait_event(&from, "BLOCK_JOB_READY", NULL) != NULL);
  CU_ASSERT(run_ok("block-job-pause", "{\"device\": \"m\"}"));
  CU_ASSERT_FATAL(wait_event(&from, "JOB_STATUS_CHANGE", "standby") != NULL);
  CU_ASSERT_STRING_EQUAL(run_err("block-job-complete", "{\"device\": \"m\"}"),
    "Job 'm' in state 'standby' cannot accept command verb 'complete'");
  CU_ASSERT(run_ok("block-job-resume", "{\"device\": \"m\"}"));
  CU_ASSERT_FATAL(wait_event(&from, "JOB_STATUS_CHANGE", "ready") != NULL);
  CU_ASSERT(run_ok("block-job-complete", "{\"device\": \"m\"}"));
  wait_freed(&t);
  CU_ASSERT_EQUAL(t.completes, 1);
  teardown();
}

static void test_error(void)
{
  struct toy t;
  struct vc_error err;
  size_t from = 0;
  setup();
  toy_init(&t, 8 * MiB, MiB);
  t.fail_at_step = 3;
  CU_ASSERT_FATAL(vc_job_start(srv, "j", "disk0", &toy_mirror, &t, 0,
                               &err) == 0);
  json_t *e = wait_event(&from, "BLOCK_JOB_ERROR", NULL);
  CU_ASSERT_FATAL(e != NULL);
  CU_ASSERT_STRING_EQUAL(jstr(json_object_get(e, "data"), "action"),
                         "report");
  json_t *c = wait_event(&from, "BLOCK_JOB_COMPLETED", NULL);
  CU_ASSERT_FATAL(c != NULL);
  CU_ASSERT_STRING_EQUAL(jstr(json_object_get(c, "data"), "error"),
                         "toy: read error at 2097152");
  CU_ASSERT_EQUAL(json_integer_value(json_object_get(
                    json_object_get(c, "data"), "offset")), 2 * MiB);
  CU_ASSERT_PTR_NOT_NULL(wait_event(&from, "JOB_STATUS_CHANGE", "null"));
  CU_ASSERT_STRING_EQUAL(event_names(0, "j"),
    "JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running BLOCK_JOB_ERROR "
    "JOB_STATUS_CHANGE:aborting BLOCK_JOB_COMPLETED "
    "JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null");
  wait_freed(&t);
  CU_ASSERT_EQUAL(t.aborts, 1);
  CU_ASSERT_EQUAL(t.abort_was_ready, 0);
  teardown();
}

static void test_no_auto_dismiss(void)
{
  struct toy t;
  struct vc_error err;
  size_t from = 0;
  setup();
  toy_init(&t, MiB, MiB);
  t.fail_at_step = 1;
  CU_ASSERT_FATAL(vc_job_start_opts(srv, "j", "disk0", &toy_stream, &t, 0,
                                    false, &err) == 0);
  CU_ASSERT_FATAL(wait_event(&from, "JOB_STATUS_CHANGE", "concluded")
                  != NULL);
  json_t *q = query_job("j");
  CU_ASSERT_FATAL(q != NULL);
  CU_ASSERT_STRING_EQUAL(jstr(q, "status"), "concluded");
  CU_ASSERT_STRING_EQUAL(jstr(q, "error"), "toy: read error at 0");
  CU_ASSERT(json_is_false(json_object_get(q, "auto-dismiss")));
  json_decref(q);
  /* The device is free again; the id is still taken until dismissed. */
  CU_ASSERT_STRING_EQUAL(run_err("block-job-cancel", "{\"device\": \"j\"}"),
    "Job 'j' in state 'concluded' cannot accept command verb 'cancel'");
  CU_ASSERT(run_ok("block-job-dismiss", "{\"id\": \"j\"}"));
  CU_ASSERT_PTR_NOT_NULL(wait_event(&from, "JOB_STATUS_CHANGE", "null"));
  q = query_job("j");
  CU_ASSERT_PTR_NULL(q);
  json_decref(q);
  CU_ASSERT_EQUAL(nevents() > 0, 1);
  teardown();
}

static void test_start_errors(void)
{
  struct toy a, b, c;
  struct vc_error err;
  setup();
  toy_init(&a, 4 * MiB, MiB);
  toy_init(&b, 4 * MiB, MiB);
  toy_init(&c, 4 * MiB, MiB);
  CU_ASSERT(vc_job_start(srv, "j", "nodisk", &toy_stream, &a, 0, &err)
            == -ENOENT);
  CU_ASSERT_STRING_EQUAL(err.cls, "DeviceNotFound");
  CU_ASSERT_EQUAL(a.frees, 1);
  CU_ASSERT_FATAL(vc_job_start(srv, NULL, "disk0", &toy_stream, &b, 1,
                               &err) == 0);
  CU_ASSERT(vc_device_busy(srv, "disk0"));
  CU_ASSERT(vc_job_start(srv, "disk0", "disk0", &toy_stream, &c, 0, &err)
            == -EEXIST);
  CU_ASSERT_STRING_EQUAL(err.desc, "Job ID 'disk0' already in use");
  CU_ASSERT_EQUAL(c.frees, 1);
  toy_init(&c, 4 * MiB, MiB);
  CU_ASSERT(vc_job_start(srv, "other", "disk0", &toy_stream, &c, 0, &err)
            == -EBUSY);
  CU_ASSERT_EQUAL(c.frees, 1);
  json_t *q = query_job("disk0");       /* the id defaults to the device */
  CU_ASSERT_PTR_NOT_NULL(q);
  json_decref(q);
  /* Stopping the server cancels the job that is still running. */
  vc_server_stop(srv);
  srv = NULL;
  CU_ASSERT_EQUAL(b.aborts, 1);
  CU_ASSERT_EQUAL(b.frees, 1);
  vd_node_free(node);
  char path[128];
  snprintf(path, sizeof path, "%s/disk.raw", tmpdir);
  unlink(path);
  rmdir(tmpdir);
}

/* ---- events over the socket ---- */

/* A raw client: connect to the test server's socket. */
static int client_connect(void)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct timeval tv = { .tv_sec = 10 };
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s/ctl.sock", tmpdir);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
    return -1;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);   /* no hang */
  return fd;
}

/* Read lines from FD until one contains NEEDLE (true) or 10 s passed or
 * the stream ended (false).  What follows that line stays for the next
 * call on FD.  Lines are at most 64 KiB here. */
static char last_line[65536];  /* the line client_wait_for matched */

static bool client_wait_for(int fd, const char *needle)
{
  static char bufs[64][65536];
  static size_t lens[64];
  CU_ASSERT_FATAL(fd >= 0 && fd < 64);
  char *buf = bufs[fd];
  size_t *len = &lens[fd];
  for (;;) {
    char *nl;
    buf[*len] = 0;
    while ((nl = strchr(buf, '\n')) != NULL) {
      *nl = 0;
      bool hit = strstr(buf, needle) != NULL;
      if (hit)
        snprintf(last_line, sizeof last_line, "%s", buf);
      *len -= (size_t)(nl + 1 - buf);
      memmove(buf, nl + 1, *len + 1);
      if (hit)
        return true;
    }
    ssize_t n = recv(fd, buf + *len, sizeof bufs[0] - 1 - *len, 0);
    if (n <= 0)
      return false;
    *len += (size_t)n;
  }
}

static void client_send(int fd, const char *text)
{
  CU_ASSERT((size_t)send(fd, text, strlen(text), MSG_NOSIGNAL) ==
            strlen(text));
}

static void test_events_over_socket(void)
{
  struct toy t;
  struct vc_error err;
  setup();
  int a = client_connect(), b = client_connect(), c = client_connect();
  CU_ASSERT_FATAL(a >= 0 && b >= 0 && c >= 0);
  CU_ASSERT(client_wait_for(a, "\"QMP\""));
  CU_ASSERT(client_wait_for(b, "\"QMP\""));
  CU_ASSERT(client_wait_for(c, "\"QMP\""));
  client_send(a, "{\"execute\": \"qmp_capabilities\"}");
  client_send(b, "{\"execute\": \"qmp_capabilities\", \"id\": 1}\n");
  CU_ASSERT(client_wait_for(a, "\"return\""));
  CU_ASSERT(client_wait_for(b, "\"id\":1"));
  toy_init(&t, 2 * MiB, MiB);
  CU_ASSERT_FATAL(vc_job_start(srv, "ev", "disk0", &toy_stream, &t, 0,
                               &err) == 0);
  /* Both negotiated clients see the job through to its end ... */
  CU_ASSERT(client_wait_for(a, "\"BLOCK_JOB_COMPLETED\""));
  CU_ASSERT(client_wait_for(b, "\"BLOCK_JOB_COMPLETED\""));
  CU_ASSERT(client_wait_for(a, "\"status\":\"null\""));
  /* ... the one that did not negotiate sees no event: its next message
   * is the answer to what it sends now. */
  client_send(c, "{\"execute\": \"query-version\"}\n");
  CU_ASSERT(client_wait_for(c, ""));               /* its next line */
  CU_ASSERT(strstr(last_line, "\"event\"") == NULL);
  CU_ASSERT(strstr(last_line, "CommandNotFound") != NULL);
  close(a);
  close(b);
  close(c);
  wait_freed(&t);
  teardown();
}

int main(void)
{
  static const struct cu_test tests[] = {
    { "run to completion", test_run_to_completion },
    { "ready, then complete", test_ready_complete },
    { "complete: not ready, failing", test_complete_not_ready_and_failing },
    { "cancel before ready", test_cancel_before_ready },
    { "cancel after ready", test_cancel_after_ready },
    { "cancel after ready, force", test_cancel_after_ready_force },
    { "pause, resume, speed", test_pause_resume_speed },
    { "pause when ready: standby", test_pause_ready_is_standby },
    { "error path", test_error },
    { "auto-dismiss off, dismiss", test_no_auto_dismiss },
    { "start errors, stop cancels", test_start_errors },
    { "events over the socket", test_events_over_socket },
    { NULL, NULL },
  };
  int r = cu_main("control-jobs", tests);
  json_decref(events);
  return r;
}
