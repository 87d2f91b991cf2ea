/* vdtool raid examine and monitor: mdadm's --examine and --monitor.
 *
 * examine reads one member's superblock (vd_raid_examine_member), nothing
 * else: it works on a member of an array that is served, missing its
 * descriptor or unable to start.
 *
 * monitor polls the arrays' superblocks (vd_raid_examine) every DELAY
 * seconds and reports what changed between two looks as mdadm's events.
 * Polling the members rather than a server's QMP events means it watches
 * served and offline arrays alike, with no socket to trust: a serving
 * process records every failure, rebuild step and completion in the
 * superblocks (that is what makes them survive a crash), so nothing it
 * reports is missed, only seen up to DELAY later.  A rebuild that starts
 * and ends between two looks is reported as finished (RebuildFinished,
 * SpareActive) without a RebuildStarted. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tools/cmd-raid.h"
#include "tools/vdtool.h"
#include "vdisk/raid.h"

/* ---- examine ---- */

static const char *role_name(int s)
{
  return s == VD_RAID_STATE_ACTIVE ? "active"
         : s == VD_RAID_STATE_REBUILDING ? "rebuilding" : "faulty";
}

static void examine_time(uint64_t t, char *out, size_t len)
{
  time_t tt = (time_t)t;
  struct tm tm;
  if (!gmtime_r(&tt, &tm) || !strftime(out, len, "%Y-%m-%d %H:%M:%S UTC",
                                       &tm))
    snprintf(out, len, "%" PRIu64, t);
}

static void examine_human(const char *path, const struct vd_raid_superblock *s)
{
  char sz[64], t[64];
  printf("%s:\n", path);
  printf("          Magic : VDRAIDSB\n");
  printf("        Version : 1\n");
  printf("     Array UUID : %s\n", s->uuid);
  if (s->name[0])
    printf("           Name : %s\n", s->name);
  examine_time(s->ctime, t, sizeof t);
  printf("  Creation Time : %s\n", t);
  printf("     Raid Level : raid%d\n", s->level);
  printf("   Raid Devices : %u\n", s->raid_devices);
  printf("         Format : %s\n", s->format);
  printf("     Array Size : %s (%" PRIu64 " bytes)\n",
         vd_format_size(s->array_size, sz, sizeof sz), s->array_size);
  printf("  Used Dev Size : %s (%" PRIu64 " bytes)\n",
         vd_format_size(s->data_size, sz, sizeof sz), s->data_size);
  printf("    Data Offset : %" PRIu64 " bytes\n", s->data_offset);
  printf("   Super Offset : %" PRIu64 " bytes\n", s->super_offset);
  if (s->resync_offset != UINT64_MAX)
    printf("  Resync Offset : %" PRIu64 " bytes\n", s->resync_offset);
  printf("          State : %s\n", s->dirty ? "active" : "clean");
  printf("    Device UUID : %s\n", s->dev_uuid);
  examine_time(s->utime, t, sizeof t);
  printf("    Update Time : %s\n", t);
  printf("    Consistency : %s\n", s->policy);
  if (s->bitmap)
    printf("         Bitmap : yes (at %" PRIu64 ", %" PRIu64 " bytes per "
           "bit)\n", s->bitmap_offset, s->bitmap_region);
  else
    printf("         Bitmap : no\n");
  if (s->ppl)
    printf("            PPL : yes (at %" PRIu64 ", %u slots)\n",
           s->ppl_offset, s->ppl_slots);
  else
    printf("            PPL : no\n");
  printf("         Events : %" PRIu64 "\n", s->events);
  printf("         Layout : %s\n", s->layout);
  printf("     Chunk Size : %uK\n", s->chunk / 1024);
  if (s->spare)
    printf("    Device Role : spare\n");
  else if (s->role_state == VD_RAID_STATE_ACTIVE)
    printf("    Device Role : Active device %d\n", s->slot);
  else if (s->role_state == VD_RAID_STATE_REBUILDING)
    printf("    Device Role : Rebuilding device %d (%" PRIu64 " bytes "
           "done)\n", s->slot, s->recovery_offset);
  else
    printf("    Device Role : Faulty device %d\n", s->slot);
  printf("    Array State : %s ('A' == active, 'R' == rebuilding, "
         "'.' == faulty)\n", s->array_state);
}

static void examine_json(const struct vd_raid_superblock *s, bool last)
{
  printf("{\n    \"array-uuid\": \"%s\",\n    \"name\": ", s->uuid);
  vt_json_string(stdout, s->name);
  printf(",\n    \"format\": ");
  vt_json_string(stdout, s->format);
  printf(",\n    \"level\": %d,\n    \"layout\": \"%s\",\n"
         "    \"chunk-size\": %u,\n    \"raid-devices\": %u,\n"
         "    \"slot\": %d,\n    \"state\": \"%s\",\n"
         "    \"device-uuid\": \"%s\",\n    \"recovery-offset\": %" PRIu64
         ",\n    \"events\": %" PRIu64 ",\n    \"array-size\": %" PRIu64
         ",\n    \"super-offset\": %" PRIu64 ",\n    \"data-offset\": %"
         PRIu64 ",\n    \"data-size\": %" PRIu64 ",\n    \"resync-offset\": ",
         s->level, s->layout, s->chunk, s->raid_devices, s->slot,
         s->spare ? "spare" : role_name(s->role_state), s->dev_uuid,
         s->recovery_offset,
         s->events, s->array_size, s->super_offset, s->data_offset,
         s->data_size);
  if (s->resync_offset == UINT64_MAX)
    printf("null");
  else
    printf("%" PRIu64, s->resync_offset);
  printf(",\n    \"dirty\": %s,\n    \"policy\": \"%s\",\n"
         "    \"bitmap\": %s,\n    \"bitmap-offset\": %" PRIu64 ",\n"
         "    \"bitmap-region\": %" PRIu64 ",\n    \"ppl\": %s,\n"
         "    \"ppl-offset\": %" PRIu64 ",\n    \"ppl-slots\": %u,\n"
         "    \"creation-time\": %" PRIu64 ",\n    \"update-time\": %" PRIu64
         ",\n    \"array-state\": \"%s\"\n}%s\n",
         s->dirty ? "true" : "false", s->policy,
         s->bitmap ? "true" : "false", s->bitmap_offset, s->bitmap_region,
         s->ppl ? "true" : "false", s->ppl_offset, s->ppl_slots, s->ctime,
         s->utime, s->array_state, last ? "" : ",");
}

int
vt_raid_output_opt(int argc, char **argv, bool *json)
{
  static const struct option longopts[] = {
    { "output", required_argument, NULL, 'O' },
    { NULL, 0, NULL, 0 }
  };
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    if (c != 'O')
      return vt_bad_option("raid", argv);
    if (vt_parse_output(optarg, json) < 0)
      return vt_bad_usage("raid", "--output must be human or json");
  }
  return 0;
}

int vt_raid_examine(int argc, char **argv)
{
  bool json = false;
  int r = vt_raid_output_opt(argc, argv, &json);
  if (r)
    return r;
  if (argc - optind < 1)
    return vt_bad_usage("raid", "examine needs a MEMBER");
  int n = argc - optind, rc = VT_EXIT_OK;
  /* Several members: a JSON array, as qemu-img info --backing-chain. */
  if (json && n > 1)
    printf("[\n");
  for (int i = optind; i < argc; i++) {
    struct vd_raid_superblock sb;
    if (vd_raid_examine_member(argv[i], &sb) < 0) {
      vt_engine_error(-1);
      rc = VT_EXIT_ERR;
      continue;
    }
    if (json)
      examine_json(&sb, n == 1 || i + 1 == argc);
    else {
      if (i > optind)
        putchar('\n');
      examine_human(argv[i], &sb);
    }
  }
  if (json && n > 1)
    printf("]\n");
  return rc;
}

/* ---- monitor ---- */

#define MON_MAX_ARRAYS 64

struct mon_array {
  const char *desc;
  bool seen, readable, degraded;
  int state[32];
  char dev_uuid[32][37];
};

struct mon_ctx {
  const char *program;         /* --program, or NULL: stdout */
  bool failed;                 /* the program could not be run */
};

/* Report EVENT on DESC (MEMBER may be NULL): a line on stdout, or PROGRAM
 * EVENT DEVICE [MEMBER] run to its end (mdadm waits for it too). */
static void mon_event(struct mon_ctx *m, const char *event, const char *desc,
                      const char *member)
{
  if (!m->program) {
    printf("%s %s%s%s\n", event, desc, member ? " " : "", member ? member
                                                                 : "");
    fflush(stdout);
    return;
  }
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) {
    vt_error("--program %s: fork: %s", m->program, strerror(errno));
    m->failed = true;
    return;
  }
  if (pid == 0) {
    char *const args[] = { (char *)m->program, (char *)event, (char *)desc,
                           (char *)member, NULL };
    execvp(m->program, args);
    fprintf(stderr, "vdtool: --program %s: %s\n", m->program,
            strerror(errno));
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
    ;
  if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
    m->failed = true;
}

static bool mon_up(int s)
{
  return s == VD_RAID_STATE_ACTIVE || s == VD_RAID_STATE_REBUILDING;
}

/* Look at A once and report what changed since the last look (the first
 * look reports DegradedArray only, as mdadm --oneshot does). */
static void mon_look(struct mon_ctx *m, struct mon_array *a,
                     struct vd_raid_status *st)
{
  if (vd_raid_examine(a->desc, st) < 0) {
    if (!a->seen || a->readable)
      mon_event(m, "DeviceDisappeared", a->desc, NULL);
    a->seen = true;
    a->readable = false;
    return;
  }
  unsigned n = st->nmembers < 32 ? st->nmembers : 32;
  if (a->seen && !a->readable)
    mon_event(m, "NewArray", a->desc, NULL);
  if (a->seen && a->readable) {
    for (unsigned i = 0; i < n; i++) {
      const char *path = st->m[i].path[0] ? st->m[i].path : NULL;
      int was = a->state[i], now = st->m[i].state;
      bool same = !strcmp(a->dev_uuid[i], st->m[i].dev_uuid);
      if (mon_up(was) && (!mon_up(now) || !same))
        mon_event(m, "Fail", a->desc, path);
      if (now == VD_RAID_STATE_REBUILDING &&
          (was != VD_RAID_STATE_REBUILDING || !same))
        mon_event(m, "RebuildStarted", a->desc, path);
      if (now == VD_RAID_STATE_ACTIVE &&
          (was != VD_RAID_STATE_ACTIVE || !same)) {
        mon_event(m, "RebuildFinished", a->desc, path);
        mon_event(m, "SpareActive", a->desc, path);
      }
    }
  }
  if (st->degraded && (!a->seen || !a->readable || !a->degraded))
    mon_event(m, "DegradedArray", a->desc, NULL);
  a->seen = a->readable = true;
  a->degraded = st->degraded;
  for (unsigned i = 0; i < n; i++) {
    a->state[i] = st->m[i].state;
    snprintf(a->dev_uuid[i], sizeof a->dev_uuid[i], "%s", st->m[i].dev_uuid);
  }
}

static volatile sig_atomic_t mon_stop;

static void mon_on_signal(int sig)
{
  (void)sig;
  mon_stop = 1;
}

int vt_raid_monitor(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "oneshot", no_argument, NULL, '1' },
    { "delay", required_argument, NULL, 'd' },
    { "program", required_argument, NULL, 'p' },
    { "alert", required_argument, NULL, 'p' },
    { NULL, 0, NULL, 0 }
  };
  struct mon_ctx m = { .program = NULL };
  bool oneshot = false;
  double delay = 60;           /* mdadm's default */
  char *end;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "1d:p:", longopts, NULL)) != -1) {
    switch (c) {
    case '1': oneshot = true; break;
    case 'd':
      delay = strtod(optarg, &end);
      if (end == optarg || *end || !(delay > 0) || delay > 86400)
        return vt_bad_usage("raid", "--delay takes more than 0 and at most "
                            "86400 seconds, not '%s'", optarg);
      break;
    case 'p': m.program = optarg; break;
    default: return vt_bad_option("raid", argv);
    }
  }
  int n = argc - optind;
  if (n < 1 || n > MON_MAX_ARRAYS)
    return vt_bad_usage("raid", "monitor needs 1 to %d ARRAYs",
                        MON_MAX_ARRAYS);
  struct mon_array *arr = calloc((size_t)n, sizeof *arr);
  struct vd_raid_status *st = malloc(sizeof *st);
  if (!arr || !st) {
    free(arr);
    free(st);
    vt_error("out of memory");
    return VT_EXIT_ERR;
  }
  for (int i = 0; i < n; i++)
    arr[i].desc = argv[optind + i];
  struct sigaction sa = { .sa_handler = mon_on_signal };
  sigemptyset(&sa.sa_mask);
  if (!oneshot) {
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
  }
  for (;;) {
    for (int i = 0; i < n && !m.failed; i++)
      mon_look(&m, &arr[i], st);
    if (oneshot || mon_stop || m.failed)
      break;
    struct timespec ts = { .tv_sec = (time_t)delay,
                           .tv_nsec = (long)((delay - (double)(time_t)delay)
                                             * 1e9) };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !mon_stop)
      ;
    if (mon_stop)
      break;
  }
  free(arr);
  free(st);
  return m.failed ? VT_EXIT_ERR : VT_EXIT_OK;
}
