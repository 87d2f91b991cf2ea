/* Unit tests for drive-mirror and block-commit as commands
 * (vdisk/control/cmd-mirror.c): run through the control server as a
 * client would (vc_execute), with a writer thread on the device's node,
 * the events seen through the server's test hook.  Every wait is bounded
 * (10 s) only so that a bug cannot hang the suite. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "vdisk/control/internal.h"
#include "vdisk/vdisk.h"

#define MiB (1024u * 1024u)
#define DISK (8 * MiB)

static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cond = PTHREAD_COND_INITIALIZER;
static json_t *events;

static void
hook(void *opaque, json_t *msg)
{
  (void) opaque;
  pthread_mutex_lock(&ev_lock);
  json_array_append(events, msg);
  pthread_cond_broadcast(&ev_cond);
  pthread_mutex_unlock(&ev_lock);
}

/* The first event NAME after index *FROM (10 s at most); borrowed. */
static json_t *
wait_event(size_t *from, const char *name)
{
  struct timespec dl;
  json_t *found = NULL;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 10;
  pthread_mutex_lock(&ev_lock);
  for (;;) {
    for (; *from < json_array_size(events) && !found; (*from)++) {
      json_t *e = json_array_get(events, *from);
      if (!strcmp(json_string_value(json_object_get(e, "event")), name))
        found = e;
    }
    if (found || pthread_cond_timedwait(&ev_cond, &ev_lock, &dl) != 0)
      break;
  }
  pthread_mutex_unlock(&ev_lock);
  return found;
}

static char tmpdir[64], src[128], dst[128], base[128];
static struct vc_server *srv;
static struct vd_node *node;
static atomic_int stop;
static atomic_long ops, errs;
static uint64_t last[64];    /* writer: last value per 64 KiB block */

static void *
writer(void *arg)
{
  (void) arg;
  static uint64_t buf[65536 / 8];
  unsigned rnd = 1;
  uint64_t seq = 0;
  while (!atomic_load(&stop)) {
    rnd = rnd * 1103515245u + 12345u;
    int b = (int) ((rnd >> 8) % 64);
    seq++;
    for (size_t i = 0; i < 65536 / 8; i++)
      buf[i] = seq;
    if (vd_node_pwrite(node, buf, 65536, (uint64_t) b * 65536, 0) < 0)
      atomic_fetch_add(&errs, 1);
    else
      last[b] = seq;
    atomic_fetch_add(&ops, 1);
  }
  return NULL;
}

/* Bytes of DEV that differ from the writer's blocks (zeros elsewhere). */
static uint64_t
wrong_bytes(struct vd_dev *dev)
{
  uint64_t *b = malloc(65536), wrong = 0;
  for (uint64_t off = 0; off < DISK; off += 65536) {
    uint64_t want = off / 65536 < 64 ? last[off / 65536] : 0;
    if (vd_pread(dev, b, 65536, off) < 0)
      return DISK;
    for (size_t i = 0; i < 65536 / 8; i++)
      wrong += b[i] != want;
  }
  free(b);
  return wrong;
}

static pthread_t wtid;

/* The device: src.vhd alone, or (CHAIN) src.vhd over base.vhd. */
static void
setup_chain(bool chain)
{
  char path[160];
  struct vd_create_args ca = { .size = DISK };
  struct vd_dev *dev;
  strcpy(tmpdir, "/tmp/test-ctlmirror-XXXXXX");
  CU_ASSERT_FATAL(mkdtemp(tmpdir) != NULL);
  snprintf(src, sizeof src, "%s/src.vhd", tmpdir);
  snprintf(dst, sizeof dst, "%s/dst.img", tmpdir);
  snprintf(base, sizeof base, "%s/base.vhd", tmpdir);
  if (chain) {
    CU_ASSERT_FATAL(vd_create(base, "vpc", &ca) == 0);
    ca = (struct vd_create_args) { .backing = base, .backing_format = "vpc" };
  }
  CU_ASSERT_FATAL(vd_create(src, "vpc", &ca) == 0);
  CU_ASSERT_FATAL(vd_open(src, "vpc", VD_OPEN_RDWR, &dev) == 0);
  CU_ASSERT_FATAL(vd_node_new(dev, &node) == 0);
  snprintf(path, sizeof path, "%s/ctl.sock", tmpdir);
  CU_ASSERT_FATAL(vc_server_start(path, "test-control", &srv) == 0);
  srv->event_hook = hook;
  CU_ASSERT_FATAL(vc_device_add(srv, "disk0", node) == 0);
  pthread_mutex_lock(&ev_lock);
  json_decref(events);
  events = json_array();
  pthread_mutex_unlock(&ev_lock);
  memset(last, 0, sizeof last);
  atomic_store(&stop, 0);
  atomic_store(&errs, 0);
  pthread_create(&wtid, NULL, writer, NULL);
}

static void
setup(void)
{
  setup_chain(false);
}

static void
stop_writer(void)
{
  if (!atomic_exchange(&stop, 1))
    pthread_join(wtid, NULL);
}

static void
teardown(void)
{
  stop_writer();
  vc_server_stop(srv);
  srv = NULL;
  vd_node_free(node);
  unlink(src);
  unlink(dst);
  unlink(base);
  char path[160];
  snprintf(path, sizeof path, "%s/ctl.sock", tmpdir);
  unlink(path);
  rmdir(tmpdir);
}

static json_t *
run(const char *name, const char *fmt, struct vc_error *err)
{
  json_t *a = fmt ? json_loads(fmt, 0, NULL) : NULL;
  json_t *r = vc_execute(srv, name, a, err);
  json_decref(a);
  return r;
}

static bool
run_ok(const char *name, const char *args)
{
  struct vc_error err;
  json_t *r = run(name, args, &err);
  if (!r)
    fprintf(stderr, "%s %s: %s: %s\n", name, args ? args : "", err.cls,
            err.desc);
  json_decref(r);
  return r != NULL;
}

static char *
mirror_args(const char *format, const char *extra)
{
  static char buf[512];
  snprintf(buf, sizeof buf, "{\"device\": \"disk0\", \"target\": \"%s\", "
           "\"format\": \"%s\", \"sync\": \"full\"%s}", dst, format, extra);
  return buf;
}

static void
check_file(const char *path, const char *format)
{
  struct vd_dev *d = NULL;
  /* The node may still hold it (no lock taken: a reader, as -U). */
  CU_ASSERT_FATAL(vd_open(path, format, VD_OPEN_NOLOCK, &d) == 0);
  CU_ASSERT_EQUAL(wrong_bytes(d), 0);
  vd_close(d);
}

static void
pivot(const char *format, const char *extra, const char *id)
{
  char cargs[64];
  snprintf(cargs, sizeof cargs, "{\"device\": \"%s\"}", id);
  setup();
  size_t at = 0;
  CU_ASSERT_FATAL(run_ok("drive-mirror", mirror_args(format, extra)));
  CU_ASSERT_PTR_NOT_NULL(wait_event(&at, "BLOCK_JOB_READY"));
  CU_ASSERT(run_ok("block-job-complete", cargs));
  json_t *e = wait_event(&at, "BLOCK_JOB_COMPLETED");
  CU_ASSERT_PTR_NOT_NULL(e);
  CU_ASSERT_PTR_NULL(json_object_get(json_object_get(e, "data"), "error"));
  stop_writer();
  CU_ASSERT_EQUAL(atomic_load(&errs), 0);
  CU_ASSERT_STRING_EQUAL(vd_path(vd_node_dev(node)), dst);
  CU_ASSERT_EQUAL(wrong_bytes(vd_node_dev(node)), 0);
  /* Another open reads the same once the writes since the pivot (the
   * target's new blocks) are flushed. */
  CU_ASSERT_EQUAL(vd_node_flush(node), 0);
  check_file(dst, format);
  teardown();
}

static void
test_pivot_raw(void)
{
  pivot("raw", "", "disk0");
}

static void
test_pivot_vhd_write_blocking(void)
{
  pivot("vpc", ", \"copy-mode\": \"write-blocking\", \"job-id\": \"j1\"", "j1");
}

static void
test_cancel_after_ready(void)
{
  setup();
  size_t at = 0;
  CU_ASSERT_FATAL(run_ok("drive-mirror", mirror_args("raw", "")));
  CU_ASSERT_PTR_NOT_NULL(wait_event(&at, "BLOCK_JOB_READY"));
  stop_writer();
  CU_ASSERT(run_ok("block-job-cancel", "{\"device\": \"disk0\"}"));
  /* QEMU: a cancel after ready is a completion without the pivot. */
  CU_ASSERT_PTR_NOT_NULL(wait_event(&at, "BLOCK_JOB_COMPLETED"));
  CU_ASSERT_STRING_EQUAL(vd_path(vd_node_dev(node)), src);
  CU_ASSERT_EQUAL(wrong_bytes(vd_node_dev(node)), 0);
  check_file(dst, "raw");
  teardown();
}

static void
test_cancel_before_ready(void)
{
  setup();
  size_t at = 0;
  /* 1 byte/s: the first step copies one granule, then the throttle holds
   * the job far from ready until the cancel. */
  CU_ASSERT_FATAL(run_ok("drive-mirror",
                         mirror_args("raw", ", \"speed\": 1")));
  CU_ASSERT(run_ok("block-job-cancel", "{\"device\": \"disk0\"}"));
  CU_ASSERT_PTR_NOT_NULL(wait_event(&at, "BLOCK_JOB_CANCELLED"));
  stop_writer();
  CU_ASSERT_STRING_EQUAL(vd_path(vd_node_dev(node)), src);
  CU_ASSERT_EQUAL(wrong_bytes(vd_node_dev(node)), 0);
  teardown();
}

static void
test_bad_arguments(void)
{
  setup();
  struct vc_error err;
  CU_ASSERT_PTR_NULL(run("drive-mirror", "{\"device\": \"nope\", "
                         "\"target\": \"/x\", \"sync\": \"full\"}", &err));
  CU_ASSERT_STRING_EQUAL(err.cls, "DeviceNotFound");
  CU_ASSERT_PTR_NULL(run("drive-mirror", mirror_args("raw",
                         ", \"copy-mode\": \"fast\""), &err));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.desc, "copy-mode"));
  CU_ASSERT_PTR_NULL(run("drive-mirror", mirror_args("raw",
                         ", \"granularity\": 1000"), &err));
  /* absolute-paths never overwrites a file */
  FILE *f = fopen(dst, "w");
  fclose(f);
  CU_ASSERT_PTR_NULL(run("drive-mirror", mirror_args("raw", ""), &err));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.desc, "exists"));
  /* existing: size must match */
  CU_ASSERT_PTR_NULL(run("drive-mirror", mirror_args("raw",
                         ", \"mode\": \"existing\""), &err));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.desc, "source"));
  CU_ASSERT_STRING_EQUAL(vd_path(vd_node_dev(node)), src);
  teardown();
}

/* block-commit of the active layer: the device moves onto base.vhd. */
static void
test_commit(void)
{
  setup_chain(true);
  struct vc_error err;
  char a[300];
  size_t at = 0;
  snprintf(a, sizeof a, "{\"device\": \"disk0\", \"top\": \"%s\"}", base);
  /* The bottom image as top: an intermediate commit with nothing below. */
  CU_ASSERT_PTR_NULL(run("block-commit", a, &err));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.desc, "has no backing file"));
  CU_ASSERT_PTR_NULL(run("block-commit", "{\"device\": \"disk0\", "
                         "\"base-node\": \"x\"}", &err));
  snprintf(a, sizeof a, "{\"device\": \"disk0\", \"base\": \"%s\", "
           "\"job-id\": \"c1\"}", base);
  CU_ASSERT_FATAL(run_ok("block-commit", a));
  json_t *e = wait_event(&at, "BLOCK_JOB_READY");
  CU_ASSERT_PTR_NOT_NULL(e);
  CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(
    json_object_get(e, "data"), "type")), "commit");
  CU_ASSERT(run_ok("block-job-complete", "{\"device\": \"c1\"}"));
  e = wait_event(&at, "BLOCK_JOB_COMPLETED");
  CU_ASSERT_PTR_NOT_NULL(e);
  CU_ASSERT_PTR_NULL(json_object_get(json_object_get(e, "data"), "error"));
  stop_writer();
  CU_ASSERT_EQUAL(atomic_load(&errs), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(vd_path(vd_node_dev(node)), "base.vhd"));
  CU_ASSERT_EQUAL(wrong_bytes(vd_node_dev(node)), 0);
  CU_ASSERT_EQUAL(vd_node_flush(node), 0);
  check_file(base, "vpc");
  teardown();
}

int
main(void)
{
  static const struct cu_test tests[] = {
    { "drive-mirror to raw, complete", test_pivot_raw },
    { "drive-mirror write-blocking to vhd", test_pivot_vhd_write_blocking },
    { "cancel after ready", test_cancel_after_ready },
    { "cancel before ready", test_cancel_before_ready },
    { "bad arguments", test_bad_arguments },
    { "block-commit of the active layer", test_commit },
    { NULL, NULL },
  };
  return cu_main("control-mirror", tests);
}
