/* vdtool raid — create and manage RAID arrays, in mdadm's spirit.
 *
 * Commands that change an array talk to the process serving it (vdisk-nbd,
 * vdisk-fuse) when there is one: it holds the members' locks, so vdtool
 * finds its control socket through the array's runtime entry
 * (raid/runtime.c) and asks it over QMP (vdisk-raid-fail, -replace,
 * -scrub, query-vdisk-raid; vdisk/control/cmd-raid.c).  Otherwise vdtool
 * opens the array itself. */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/cmd-raid.h"
#include "tools/qmp-client.h"
#include "tools/vdtool.h"
#include "vdisk/raid.h"

const char vt_summary_raid[] = "create, inspect, repair RAID 0/1/5 arrays";
const char vt_usage_raid[] =
  "Usage: vdtool raid create -l 0|1|5 [-n N] [-c CHUNK] [--size SIZE [-f FMT]]\n"
  "                          [--policy resync|bitmap|ppl] [--bitmap-region SIZE]\n"
  "                          [--assume-clean] [--name NAME] [--force]\n"
  "                          [--member-timeout SECONDS] [--auto-re-add SECONDS]\n"
  "                          [--write-mostly MEMBER]... [--write-behind N]\n"
  "                          ARRAY MEMBER...\n"
  "       vdtool raid detail [--test] [--output=human|json] ARRAY\n"
  "       vdtool raid examine [--output=human|json] MEMBER...\n"
  "       vdtool raid assemble [--run] [--force] ARRAY MEMBER...\n"
  "       vdtool raid status [--output=human|json] ARRAY\n"
  "       vdtool raid fail ARRAY MEMBER\n"
  "       vdtool raid replace [--rate BYTES/S] [--no-wait] [-f FMT] ARRAY OLD NEW\n"
  "       vdtool raid rebuild [--rate BYTES/S] ARRAY\n"
  "       vdtool raid re-add [--rate BYTES/S] [--no-wait] ARRAY MEMBER\n"
  "       vdtool raid add [-f FMT] ARRAY SPARE\n"
  "       vdtool raid remove ARRAY SPARE\n"
  "       vdtool raid scrub [--repair] ARRAY\n"
  "       vdtool raid monitor [-1|--oneshot] [-d|--delay SECONDS]\n"
  "                           [-p|--program PROG] ARRAY...\n"
  "\n"
  "-q (--quiet), anywhere: leave out the line saying what create, fail,\n"
  "assemble, add, remove and re-add did.  JSON keys are kebab-case, as qemu-img's.\n"
  "Options may also follow the operands (detail ARRAY --test, as mdadm);\n"
  "\"--\" ends them (a MEMBER named \"-m1\": fail ARRAY -- -m1).\n"
  "\n"
  "ARRAY is the descriptor file (open it like any image: vdtool info ARRAY,\n"
  "vdisk-nbd ARRAY).  MEMBER is a path, an NBD URI (nbd://HOST:PORT/EXPORT,\n"
  "nbd+unix:///EXPORT?socket=PATH) or a Ceph RBD image (rbd:POOL/IMAGE\n"
  "[:conf=PATH]), both remote members, or a slot number.\n"
  "\n"
  "  create     write a superblock on every MEMBER and the descriptor ARRAY;\n"
  "             with --size, create the member files (format -f, default raw).\n"
  "             -l takes 0, 1, 5 or raid0, raid1, raid5; -n/--raid-devices N\n"
  "             must equal the number of MEMBERs.\n"
  "             Chunk default 512K.  Policy (what makes an unclean stop safe):\n"
  "             RAID5 ppl (write-intent bitmap + partial parity log, closes\n"
  "             the write hole), RAID1 bitmap, RAID0 none.  Existing members\n"
  "             are zeroed unless --assume-clean.  A MEMBER that holds\n"
  "             another array's superblock, a filesystem, swap, LUKS, LVM2\n"
  "             or a partition table is refused (named) unless --force; on\n"
  "             a terminal vdtool asks instead.  --member-timeout: a member\n"
  "             request unanswered this long fails the member (default 5,\n"
  "             0 = wait forever; remote members).  --auto-re-add: retry\n"
  "             failed remote members every SECONDS (default off).\n"
  "             --write-mostly (RAID1): reads avoid MEMBER (a mirror over a\n"
  "             slow link).  --write-behind N (RAID1 with a write-mostly\n"
  "             member, bitmap policy): writes to write-mostly members\n"
  "             complete in the background, at most N outstanding, as\n"
  "             md's --write-behind.\n"
  "  detail     state, members and roles, events, rebuild progress (read from\n"
  "             the superblocks; works on an array that will not start).\n"
  "             --test: exit 0 healthy, 1 degraded, 2 failed (will not\n"
  "             start), 4 cannot be read (as mdadm --detail --test)\n"
  "  examine    the superblock of each MEMBER alone, as mdadm --examine:\n"
  "             array uuid, level, chunk, devices, this member's slot and\n"
  "             state, events, offsets, bitmap and PPL (no descriptor needed)\n"
  "  status     the live state from the process serving ARRAY (rebuild and\n"
  "             scrub jobs included); 'detail' when nothing serves it\n"
  "  assemble   find the array from its members alone, write ARRAY and\n"
  "             start it once.  A member the superblocks record as working\n"
  "             but not given is refused unless --run (start degraded; the\n"
  "             member is not marked faulty, so it comes back without a\n"
  "             rebuild if the array was not written meanwhile).  --force\n"
  "             (implies --run) starts a RAID5 that is dirty and degraded\n"
  "             (replaying the partial parity log).  A member one event\n"
  "             behind (a crash while superblocks were written) is used\n"
  "             if the freshest superblock records it as working\n"
  "  fail       mark MEMBER faulty (refused if the array would stop)\n"
  "  replace    put NEW in OLD's slot and rebuild it (progress shown; stop\n"
  "             with ^C and it resumes from its checkpoint on the next open\n"
  "             or 'vdtool raid rebuild')\n"
  "  rebuild    resume a checkpointed rebuild in the foreground (says so and\n"
  "             exits 0 when no member is rebuilding)\n"
  "  re-add     put a failed MEMBER back (the same device, reachable again)\n"
  "             and copy only the regions the write-intent bitmap marked\n"
  "             while it was out; prints the bytes copied\n"
  "  add        add SPARE as a hot spare (mdadm --add): when a member fails,\n"
  "             or is missing when the array is opened for writing, the\n"
  "             spare takes its slot and is rebuilt in the background.  Added\n"
  "             to a degraded array it takes over at once (offline, vdtool\n"
  "             waits for the rebuild).  SPARE must be at least as large as a\n"
  "             member; RAID0 has no spares\n"
  "  remove     remove SPARE from the array's spares (mdadm --remove of a\n"
  "             spare); its superblock is wiped\n"
  "  scrub      compare parity (or mirrors) with data; --repair rewrites\n"
  "             parity.  Exit status 3 when mismatches were found.\n"
  "  monitor    watch the arrays (served or not: it reads the superblocks\n"
  "             every --delay seconds, default 60) and report, one per line\n"
  "             on stdout as EVENT ARRAY [MEMBER], or by running PROG EVENT\n"
  "             ARRAY [MEMBER] as mdadm --monitor --program: Fail,\n"
  "             DegradedArray, RebuildStarted, RebuildFinished, SpareActive,\n"
  "             DeviceDisappeared, NewArray.  --oneshot: one look (reports\n"
  "             DegradedArray for a degraded array), then exit; otherwise\n"
  "             until SIGINT/SIGTERM\n"
  "\n"
  "When a vdisk-nbd or vdisk-fuse process serves ARRAY, fail, replace,\n"
  "re-add, add, remove, scrub and status are performed by that process (online), through its\n"
  "control socket, found in the runtime entry it keeps for ARRAY\n"
  "($VDISK_RUNTIME_DIR, else $XDG_RUNTIME_DIR/vdisk, else /run/vdisk for\n"
  "root or /tmp/vdisk-UID): run vdtool as the serving user or root.\n";

#define RAID_CLI_MAX 32

/* -q/--quiet: leave out the one-line reports of what create, fail,
 * assemble and add did (errors and warnings are still printed). */
static bool raid_quiet;

static int raid_open_rw(const char *desc, struct vd_dev **dev,
                        struct raid_array **a)
{
  if (vt_open(desc, "raid", VD_OPEN_RDWR, dev) < 0)
    return -1;
  *a = vd_raid_of(*dev);
  return 0;
}

static int raid_cmd_create(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "level", required_argument, NULL, 'l' },
    { "chunk", required_argument, NULL, 'c' },
    { "size", required_argument, NULL, 's' },
    { "format", required_argument, NULL, 'f' },
    { "policy", required_argument, NULL, 'p' },
    { "bitmap-region", required_argument, NULL, 'b' },
    { "assume-clean", no_argument, NULL, 'A' },
    { "name", required_argument, NULL, 'N' },
    { "raid-devices", required_argument, NULL, 'n' },
    { "force", no_argument, NULL, 'F' },
    { "member-timeout", required_argument, NULL, 'T' },
    { "auto-re-add", required_argument, NULL, 'R' },
    { "write-mostly", required_argument, NULL, 'W' },
    { "write-behind", required_argument, NULL, 'B' },
    { NULL, 0, NULL, 0 }
  };
  struct vd_raid_create_args ca = { .level = -1, .policy = -1,
                                    .member_format = "raw" };
  const char *wm[RAID_CLI_MAX] = { NULL };
  unsigned nwm = 0;
  bool wmflag[RAID_CLI_MAX] = { false };
  char *end;
  double sec;
  uint64_t v;
  long ndev = -1;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "l:c:f:n:", longopts, NULL)) != -1) {
    switch (c) {
    case 'l': {
      /* mdadm spells levels "raid5" as well as "5". */
      const char *l = strncmp(optarg, "raid", 4) ? optarg : optarg + 4;
      if (strcmp(l, "0") && strcmp(l, "1") && strcmp(l, "5"))
        return vt_bad_usage("raid", "level must be 0, 1 or 5 (or raid0, "
                            "raid1, raid5), not '%s'", optarg);
      ca.level = atoi(l);
      break;
    }
    case 'n':
      ndev = strtol(optarg, &end, 10);
      if (end == optarg || *end || ndev < 1 || ndev > RAID_CLI_MAX)
        return vt_bad_usage("raid", "--raid-devices takes 1 to %d, not '%s'",
                            RAID_CLI_MAX, optarg);
      break;
    case 'c':
      if (vd_parse_size(optarg, &v) < 0 || v > UINT32_MAX)
        return vt_bad_usage("raid", "invalid chunk size '%s'", optarg);
      ca.chunk = (uint32_t)v;
      break;
    case 's':
      if (vd_parse_size(optarg, &ca.member_size) < 0 || !ca.member_size)
        return vt_bad_usage("raid", "invalid size '%s'", optarg);
      break;
    case 'f': ca.member_format = optarg; break;
    case 'p':
      ca.policy = !strcmp(optarg, "resync") ? VD_RAID_POLICY_RESYNC
                  : !strcmp(optarg, "bitmap") ? VD_RAID_POLICY_BITMAP
                  : !strcmp(optarg, "ppl") ? VD_RAID_POLICY_PPL : -2;
      if (ca.policy == -2)
        return vt_bad_usage("raid", "policy must be resync, bitmap or ppl");
      break;
    case 'b':
      if (vd_parse_size(optarg, &ca.bitmap_region) < 0)
        return vt_bad_usage("raid", "invalid bitmap region '%s'", optarg);
      break;
    case 'A': ca.assume_clean = true; break;
    case 'N': ca.name = optarg; break;
    case 'F': ca.force = true; break;
    case 'T':
      sec = strtod(optarg, &end);
      if (end == optarg || *end || !(sec >= 0) || sec > 3600)
        return vt_bad_usage("raid", "--member-timeout takes 0 to 3600 "
                            "seconds, not '%s'", optarg);
      ca.member_timeout_ms = sec == 0 ? VD_RAID_NO_TIMEOUT
                             : (uint32_t)(sec * 1000 + 0.5);
      if (ca.member_timeout_ms == 0)
        ca.member_timeout_ms = 1;
      break;
    case 'R':
      v = strtoull(optarg, &end, 10);
      if (end == optarg || *end || v > 3600)
        return vt_bad_usage("raid", "--auto-re-add takes 0 to 3600 seconds, "
                            "not '%s'", optarg);
      ca.auto_readd_s = (uint32_t)v;
      break;
    case 'B':
      v = strtoull(optarg, &end, 10);
      if (end == optarg || *end || *optarg == '-' || v < 1 || v > 16383)
        return vt_bad_usage("raid", "--write-behind takes 1 to 16383, not "
                            "'%s'", optarg);
      ca.write_behind = (uint32_t)v;
      break;
    case 'W':
      if (nwm == RAID_CLI_MAX)
        return vt_bad_usage("raid", "too many --write-mostly");
      wm[nwm++] = optarg;
      break;
    default: return vt_bad_option("raid", argv);
    }
  }
  if (ca.level < 0)
    return vt_bad_usage("raid", "create needs -l 0|1|5");
  if (argc - optind < 2)
    return vt_bad_usage("raid", "create needs ARRAY and its MEMBERs");
  ca.nmembers = (unsigned)(argc - optind - 1);
  ca.members = (const char *const *)argv + optind + 1;
  if (ndev >= 0 && (unsigned long)ndev != ca.nmembers)
    return vt_bad_usage("raid", "--raid-devices=%ld but %u MEMBERs given",
                        ndev, ca.nmembers);
  for (unsigned k = 0; k < nwm; k++) {
    bool found = false;
    for (unsigned i = 0; i < ca.nmembers && i < RAID_CLI_MAX; i++)
      if (!strcmp(wm[k], ca.members[i]))
        wmflag[i] = found = true;
    if (!found)
      return vt_bad_usage("raid", "--write-mostly %s: not one of the "
                          "MEMBERs", wm[k]);
  }
  if (nwm)
    ca.write_mostly = wmflag;
  if (access(argv[optind], F_OK) == 0) {
    vt_error("%s: already exists (remove it first)", argv[optind]);
    return VT_EXIT_ERR;
  }
  /* On a terminal, ask as mdadm does; elsewhere the library refuses. */
  if (!ca.force && isatty(0) && isatty(2)) {
    bool found = false;
    for (unsigned i = 0; i < ca.nmembers; i++) {
      char what[512];
      int r = vd_raid_member_check(ca.members[i], what, sizeof what);
      if (r < 0) {
        vt_engine_error(r);
        return VT_EXIT_ERR;
      }
      if (r > 0) {
        vt_error("%s: holds %s", ca.members[i], what);
        found = true;
      }
    }
    if (found) {
      char ans[16] = "";
      fputs("Overwrite it and create the array? [y/N] ", stderr);
      fflush(stderr);
      if (!fgets(ans, sizeof ans, stdin) || (ans[0] != 'y' && ans[0] != 'Y')) {
        vt_error("%s: not created", argv[optind]);
        return VT_EXIT_ERR;
      }
      ca.force = true;
    }
  }
  if (vd_raid_create(argv[optind], &ca) < 0) {
    vt_engine_error(-1);
    return VT_EXIT_ERR;
  }
  struct vd_raid_status *st = raid_quiet ? NULL : malloc(sizeof *st);
  if (st && vd_raid_examine(argv[optind], st) == 0) {
    char sz[64];
    fprintf(stderr, "vdtool: array %s created: raid%d, %u members, %s, "
            "policy %s\n", argv[optind], st->level, st->nmembers,
            vd_format_size(st->array_size, sz, sizeof sz), st->policy);
  }
  free(st);
  return VT_EXIT_OK;
}

static const char *raid_state_str(int s)
{
  switch (s) {
  case VD_RAID_STATE_ACTIVE: return "active";
  case VD_RAID_STATE_FAULTY: return "faulty";
  case VD_RAID_STATE_REBUILDING: return "rebuilding";
  case VD_RAID_STATE_MISSING: return "missing";
  default: return "stale";
  }
}

/* detail --test exit codes (mdadm's). */
#define RAID_TEST_OK 0
#define RAID_TEST_DEGRADED 1
#define RAID_TEST_FAILED 2
#define RAID_TEST_ERROR 4

/* After DESC failed to read as a descriptor: if it is a member, say so in
 * one line (pointing to examine) instead of the descriptor error. */
static void raid_detail_error(const char *desc)
{
  struct vd_raid_superblock sb;
  char why[512];
  snprintf(why, sizeof why, "%s", vd_error());
  if (vd_raid_examine_member(desc, &sb) == 0 && sb.spare)
    vt_error("%s is a hot spare of array %s, not an array descriptor: use "
             "'vdtool raid examine %s'", desc, sb.uuid, desc);
  else if (vd_raid_examine_member(desc, &sb) == 0)
    vt_error("%s is a member of array %s (slot %d), not an array "
             "descriptor: use 'vdtool raid examine %s'", desc, sb.uuid,
             sb.slot, desc);
  else
    vt_error("%s", why);
}

static int raid_cmd_detail(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "output", required_argument, NULL, 'O' },
    { "test", no_argument, NULL, 't' },
    { NULL, 0, NULL, 0 }
  };
  bool json = false, test = false;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "t", longopts, NULL)) != -1) {
    if (c == 't') {
      test = true;
      continue;
    }
    if (c != 'O')
      return vt_bad_option("raid", argv);
    if (vt_parse_output(optarg, &json) < 0)
      return vt_bad_usage("raid", "--output must be human or json");
  }
  if (argc - optind != 1)
    return vt_bad_usage("raid", "detail needs exactly one ARRAY");
  const char *desc = argv[optind];
  struct vd_raid_status *st = malloc(sizeof *st);
  if (!st || vd_raid_examine(desc, st) < 0) {
    free(st);
    raid_detail_error(desc);
    return test ? RAID_TEST_ERROR : VT_EXIT_ERR;
  }
  int served = vd_raid_served_by(desc);
  char sz[64];
  if (json) {
    printf("{\n    \"uuid\": \"%s\",\n    \"name\": ", st->uuid);
    vt_json_string(stdout, st->name);
    printf(",\n    \"level\": %d,\n    \"layout\": \"%s\",\n"
           "    \"chunk-size\": %u,\n    \"policy\": \"%s\",\n"
           "    \"array-size\": %" PRIu64 ",\n"
           "    \"member-data-size\": %" PRIu64 ",\n"
           "    \"data-offset\": %" PRIu64 ",\n    \"events\": %" PRIu64 ",\n"
           "    \"state\": \"%s\",\n    \"dirty\": %s,\n    \"degraded\": %s,\n"
           "    \"failed\": %s,\n    \"served-by\": %d,\n",
           st->level, st->layout ? st->layout : "-", st->chunk,
           st->policy ? st->policy : "-", st->array_size,
           st->member_data_size, st->data_offset, st->events, st->state,
           st->dirty ? "true" : "false", st->degraded ? "true" : "false",
           st->failed ? "true" : "false", served);
    printf("    \"refusal\": ");
    vt_json_string(stdout, st->refusal);
    printf(",\n    \"rebuild\": ");
    if (st->rebuilding)
      printf("{ \"done\": %" PRIu64 ", \"total\": %" PRIu64 " },\n",
             st->rebuild_done, st->rebuild_total);
    else
      printf("null,\n");
    printf("    \"members\": [\n");
    for (unsigned i = 0; i < st->nmembers && i < 32; i++) {
      const struct vd_raid_member_status *m = &st->m[i];
      printf("        { \"slot\": %d, \"path\": ", m->slot);
      vt_json_string(stdout, m->path);
      printf(", \"state\": \"%s\", \"events\": %" PRIu64 ", "
             "\"device-uuid\": \"%s\", \"recovery-offset\": %" PRIu64 ", "
             "\"reason\": ", raid_state_str(m->state), m->events, m->dev_uuid,
             m->recovery_offset);
      vt_json_string(stdout, m->why);
      printf(" }%s\n", i + 1 < st->nmembers ? "," : "");
    }
    printf("    ],\n    \"spares\": [\n");
    for (unsigned i = 0; i < st->nspares; i++) {
      printf("        { \"path\": ");
      vt_json_string(stdout, st->spare[i].path);
      printf(", \"device-uuid\": \"%s\", \"reason\": ",
             st->spare[i].dev_uuid);
      vt_json_string(stdout, st->spare[i].why);
      printf(" }%s\n", i + 1 < st->nspares ? "," : "");
    }
    printf("    ]\n}\n");
  } else {
    printf("%s:\n", desc);
    printf("           UUID : %s\n", st->uuid);
    if (st->name[0])
      printf("           Name : %s\n", st->name);
    printf("     Raid Level : raid%d\n", st->level);
    printf("     Array Size : %s (%" PRIu64 " bytes)\n",
           vd_format_size(st->array_size, sz, sizeof sz), st->array_size);
    printf("  Used Dev Size : %s (%" PRIu64 " bytes, data at %" PRIu64 ")\n",
           vd_format_size(st->member_data_size, sz, sizeof sz),
           st->member_data_size, st->data_offset);
    printf("   Raid Devices : %u\n", st->nmembers);
    printf("         Layout : %s\n", st->layout ? st->layout : "-");
    printf("     Chunk Size : %uK\n", st->chunk / 1024);
    printf("    Consistency : %s\n", st->policy ? st->policy : "-");
    printf("          State : %s\n", st->state);
    printf("         Events : %" PRIu64 "\n", st->events);
    if (served)
      printf("      Served by : pid %d\n", served);
    if (st->rebuilding)
      printf(" Rebuild Status : %" PRIu64 "%% complete (%" PRIu64 " of %"
             PRIu64 " bytes)\n",
             st->rebuild_total ? st->rebuild_done * 100 / st->rebuild_total
                               : 0, st->rebuild_done, st->rebuild_total);
    if (st->refusal[0])
      printf("  Will not start: %s\n", st->refusal);
    printf("\n   Slot  State       Events  Device\n");
    for (unsigned i = 0; i < st->nmembers && i < 32; i++) {
      const struct vd_raid_member_status *m = &st->m[i];
      printf("   %4d  %-10s  %6" PRIu64 "  %s\n", m->slot,
             raid_state_str(m->state), m->events,
             m->path[0] ? m->path : "-");
    }
    for (unsigned i = 0; i < st->nspares; i++)
      printf("      -  %-10s  %6s  %s\n", st->spare[i].why[0] ? "unusable"
             : "spare", "-", st->spare[i].path);
    for (unsigned i = 0; i < st->nmembers && i < 32; i++)
      if (st->m[i].why[0])
        printf("   slot %u: %s\n", i, st->m[i].why);
    for (unsigned i = 0; i < st->nspares; i++)
      if (st->spare[i].why[0])
        printf("   spare: %s\n", st->spare[i].why);
  }
  int rc = !test ? VT_EXIT_OK : st->failed ? RAID_TEST_FAILED
           : st->degraded ? RAID_TEST_DEGRADED : RAID_TEST_OK;
  free(st);
  return rc;
}

static int raid_cmd_assemble(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "force", no_argument, NULL, 'F' },
    { "run", no_argument, NULL, 'R' },
    { NULL, 0, NULL, 0 }
  };
  unsigned flags = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    if (c == 'F')
      flags |= VD_RAID_ASSEMBLE_FORCE;
    else if (c == 'R')
      flags |= VD_RAID_ASSEMBLE_RUN;
    else
      return vt_bad_option("raid", argv);
  }
  if (argc - optind < 2)
    return vt_bad_usage("raid", "assemble needs ARRAY and MEMBERs");
  const char *desc = argv[optind];
  if (vd_raid_assemble(desc, (const char *const *)argv + optind + 1,
                       (unsigned)(argc - optind - 1), flags) < 0) {
    vt_engine_error(-1);
    return VT_EXIT_ERR;
  }
  /* Say so when it runs degraded (only possible with --run or --force,
   * or when the missing members had failed before). */
  struct vd_raid_status *st = malloc(sizeof *st);
  if (!st || vd_raid_examine(desc, st) < 0) {
    free(st);
    vt_engine_error(-1);
    return VT_EXIT_ERR;
  }
  if (!st->degraded) {
    if (!raid_quiet)
      fprintf(stderr, "vdtool: array %s started with %u of %u members\n",
              desc, st->nmembers, st->nmembers);
  } else {
    char list[256] = "";
    size_t l = 0;
    for (unsigned i = 0; i < st->nmembers && i < 32 && l < sizeof list; i++)
      if (st->m[i].state != VD_RAID_STATE_ACTIVE)
        l += (size_t)snprintf(list + l, sizeof list - l, "%s%u (%s)",
                              l ? ", " : "", i,
                              raid_state_str(st->m[i].state));
    unsigned up = 0;
    for (unsigned i = 0; i < st->nmembers && i < 32; i++)
      up += st->m[i].state == VD_RAID_STATE_ACTIVE;
    vt_error("%s: started degraded: slot%s %s (%u of %u members)", desc,
             strchr(list, ',') ? "s" : "", list, up, st->nmembers);
  }
  free(st);
  return VT_EXIT_OK;
}

/* ---- online: the serving process's control socket ---- */

/* Connect to the process serving DESC.  1: connected (*Q, its device name
 * in DEV); 0: nobody serves it (work offline); -1: error printed. */
static int raid_online(const char *desc, struct vt_qmp **q, char *dev,
                       size_t devlen)
{
  struct vd_raid_served sv;
  int r = vd_raid_served_lookup(desc, &sv);
  if (r < 0) {
    vt_engine_error(r);
    return -1;
  }
  if (r == 0)
    return 0;
  if (!sv.alive && vd_raid_remove_stale(&sv) == 0) {
    /* Left by a server that was killed: nothing serves the array. */
    fprintf(stderr, "vdtool: note: %s: removed the stale runtime entry %s "
            "of process %d, which is gone\n", desc, sv.entry, sv.pid);
    return 0;
  }
  char msg[600];
  if (vt_qmp_connect(sv.socket, q, msg, sizeof msg) < 0) {
    vt_error("%s: served by process %d (runtime entry %s), but its control "
             "socket does not answer: %s", desc, sv.pid, sv.entry, msg);
    return -1;
  }
  snprintf(dev, devlen, "%s", sv.device);
  return 1;
}

/* The end of an offline subcommand: print R's error (the engine's
 * result) or the close's, and close DEV. */
static int raid_offline_end(struct vd_dev *dev, int r)
{
  if (r < 0) {
    vt_engine_error(r);
    vd_close(dev);
    return VT_EXIT_ERR;
  }
  if (vd_close(dev) < 0) {
    vt_engine_error(-1);
    return VT_EXIT_ERR;
  }
  return VT_EXIT_OK;
}

/* The absolute path of a device to join an array (the server may run in
 * another folder); a remote one (NBD URI, rbd: image) is kept as typed.
 * NULL with the error printed. */
static char *raid_abs_device(const char *path)
{
  char *abs = vd_is_remote_name(path) ? strdup(path) : realpath(path, NULL);
  if (!abs)
    vt_error("%s: cannot find it (create it first, e.g. with vdtool create)",
             path);
  return abs;
}

/* Execute NAME with ARGS (stolen) on Q; *RET (may be NULL) gets the
 * answer.  Prints the error and returns -1 on failure. */
static int raid_exec(struct vt_qmp *q, const char *name, json_t *args,
                     json_t **ret)
{
  char msg[600];
  if (vt_qmp_execute(q, name, args, ret, NULL, msg, sizeof msg) < 0) {
    vt_error("%s", msg);
    return -1;
  }
  return 0;
}

/* The query-vdisk-raid object of device DEV, or NULL (printed). */
static json_t *raid_query(struct vt_qmp *q, const char *dev)
{
  json_t *list = NULL;
  if (raid_exec(q, "query-vdisk-raid", json_pack("{s:s}", "device", dev),
                &list) < 0)
    return NULL;
  json_t *o = json_incref(json_array_get(list, 0));
  json_decref(list);
  if (!o)
    vt_error("%s: the server reports no such RAID device", dev);
  return o;
}

/* Whether EV is the end of job ID: 1 completed, 2 cancelled, 0 not. */
static int raid_job_end(json_t *ev, const char *id, const char **error)
{
  const char *name = json_string_value(json_object_get(ev, "event"));
  json_t *data = json_object_get(ev, "data");
  const char *dev = json_string_value(json_object_get(data, "device"));
  const char *jid = json_string_value(json_object_get(data, "id"));
  if (!name || !((dev && !strcmp(dev, id)) || (jid && !strcmp(jid, id))))
    return 0;
  *error = json_string_value(json_object_get(data, "error"));
  if (!strcmp(name, "BLOCK_JOB_COMPLETED"))
    return 1;
  return !strcmp(name, "BLOCK_JOB_CANCELLED") ? 2 : 0;
}

/* Follow job ID to its end, showing its progress on a terminal; SEEN, if
 * not NULL, is called with every other event (scrub reports).  Returns 0
 * when it completed, -1 (printed) otherwise. */
static int raid_follow_job(struct vt_qmp *q, const char *desc, const char *id,
                           const char *what, void (*seen)(void *, json_t *),
                           void *opaque)
{
  struct vt_progress prog = { .enabled = isatty(2) };
  char msg[600];
  int rc = -1;
  for (;;) {
    json_t *ev = NULL;
    int r = vt_qmp_event(q, 200, &ev, msg, sizeof msg);
    if (r < 0) {
      vt_progress_end(&prog);
      vt_error("%s: the serving process stopped during the %s (%s)%s", desc,
               what, msg, strcmp(what, "rebuild") ? "" : "; the rebuild "
               "resumes at the next open (or 'vdtool raid rebuild')");
      return -1;
    }
    if (r > 0) {
      const char *error = NULL;
      int end = raid_job_end(ev, id, &error);
      if (!end && seen)
        seen(opaque, ev);
      if (end) {
        vt_progress_end(&prog);
        if (end == 2)
          vt_error("%s: the %s was cancelled", desc, what);
        else if (error)
          vt_error("%s: %s failed: %s", desc, what, error);
        else
          rc = 0;
        json_decref(ev);
        return rc;
      }
      json_decref(ev);
      continue;
    }
    if (!prog.enabled)
      continue;
    json_t *jobs = NULL;
    if (raid_exec(q, "query-block-jobs", NULL, &jobs) < 0)
      return -1;
    size_t i;
    json_t *j;
    json_array_foreach(jobs, i, j) {
      const char *dev = json_string_value(json_object_get(j, "device"));
      if (dev && !strcmp(dev, id))
        vt_progress_update(&prog, (uint64_t)json_integer_value(
                             json_object_get(j, "offset")),
                           (uint64_t)json_integer_value(
                             json_object_get(j, "len")));
    }
    json_decref(jobs);
  }
}

/* Slot number of MEMBER (path or number), from the descriptor's view. */
static int raid_slot_of(const char *desc, const char *member)
{
  struct vd_raid_status *st = malloc(sizeof *st);
  char *end;
  long v = strtol(member, &end, 10);
  int slot = -1;
  if (!st)
    return -1;
  if (vd_raid_examine(desc, st) < 0) {
    free(st);
    vt_engine_error(-1);
    return -1;
  }
  if (*member && !*end && v >= 0 && (unsigned long)v < st->nmembers)
    slot = (int)v;
  char *want = realpath(member, NULL);
  for (unsigned i = 0; i < st->nmembers && slot < 0; i++) {
    char *have = st->m[i].path[0] ? realpath(st->m[i].path, NULL) : NULL;
    if (!strcmp(st->m[i].path, member) ||
        (want && have && !strcmp(want, have)))
      slot = (int)i;
    free(have);
  }
  free(want);
  free(st);
  if (slot < 0)
    vt_error("%s: %s is not a member (give a path or a slot number)", desc,
             member);
  return slot;
}

/* MEMBER as the operator names it: GIVEN unless it is a slot number, then
 * the descriptor's path of SLOT (GIVEN when it has none). */
static void raid_member_name(const char *desc, int slot, const char *given,
                             char *out, size_t len)
{
  char *end;
  snprintf(out, len, "%s", given);
  (void)strtol(given, &end, 10);
  if (!*given || *end)
    return;
  struct vd_raid_status *st = malloc(sizeof *st);
  if (st && vd_raid_examine(desc, st) == 0 && st->m[slot].path[0])
    snprintf(out, len, "%s", st->m[slot].path);
  free(st);
}

/* Live state from the serving process; 'detail' when nothing serves it. */
static int raid_cmd_status(int argc, char **argv)
{
  bool json = false;
  int r = vt_raid_output_opt(argc, argv, &json);
  if (r)
    return r;
  if (argc - optind != 1)
    return vt_bad_usage("raid", "status needs exactly one ARRAY");
  const char *desc = argv[optind];
  struct vt_qmp *q;
  char name[256];
  int on = raid_online(desc, &q, name, sizeof name);
  if (on < 0)
    return VT_EXIT_ERR;
  if (!on)
    return raid_cmd_detail(argc, argv);
  json_t *o = raid_query(q, name);
  json_t *jobs = NULL;
  if (o && raid_exec(q, "query-block-jobs", NULL, &jobs) < 0) {
    json_decref(o);
    o = NULL;
  }
  vt_qmp_close(q);
  if (!o)
    return VT_EXIT_ERR;
  json_t *mine = json_array();
  size_t i;
  json_t *j;
  json_array_foreach(jobs, i, j) {
    const char *type = json_string_value(json_object_get(j, "type"));
    if (type && !strncmp(type, "vdisk-raid-", 11))
      json_array_append(mine, j);
  }
  json_decref(jobs);
  json_object_set_new(o, "jobs", mine);
  if (json) {
    json_dumpf(o, stdout, JSON_INDENT(4));
    putchar('\n');
    json_decref(o);
    return VT_EXIT_OK;
  }
  printf("%s: served as '%s'\n", desc, name);
  printf("     Raid Level : raid%d\n",
         (int)json_integer_value(json_object_get(o, "level")));
  printf("          State : %s\n",
         json_string_value(json_object_get(o, "state")));
  printf("         Events : %" PRIu64 "\n",
         (uint64_t)json_integer_value(json_object_get(o, "events")));
  json_t *wb = json_object_get(o, "write-behind");
  if (wb)
    printf("   Write Behind : %" PRIu64 " pending (at most %" PRIu64 ")\n",
           (uint64_t)json_integer_value(json_object_get(wb, "pending")),
           (uint64_t)json_integer_value(json_object_get(wb, "limit")));
  json_t *rb = json_object_get(o, "rebuild");
  if (rb)
    printf(" Rebuild Status : %" PRIu64 " of %" PRIu64 " bytes\n",
           (uint64_t)json_integer_value(json_object_get(rb, "offset")),
           (uint64_t)json_integer_value(json_object_get(rb, "len")));
  json_array_foreach(mine, i, j)
    printf("            Job : %s %s (%s): %" PRIu64 " of %" PRIu64 " bytes\n",
           json_string_value(json_object_get(j, "type")),
           json_string_value(json_object_get(j, "device")),
           json_string_value(json_object_get(j, "status")) ?: "running",
           (uint64_t)json_integer_value(json_object_get(j, "offset")),
           (uint64_t)json_integer_value(json_object_get(j, "len")));
  json_t *ls = json_object_get(o, "last-scrub");
  if (ls)
    printf("     Last Scrub : %" PRIu64 " stripes, %" PRIu64 " mismatched, %"
           PRIu64 " repaired%s%s\n",
           (uint64_t)json_integer_value(json_object_get(ls, "stripes")),
           (uint64_t)json_integer_value(json_object_get(ls, "mismatches")),
           (uint64_t)json_integer_value(json_object_get(ls, "repaired")),
           json_object_get(ls, "error") ? ": " : "",
           json_string_value(json_object_get(ls, "error")) ?: "");
  printf("\n   Slot  State       Events  Device\n");
  json_array_foreach(json_object_get(o, "members"), i, j)
    printf("   %4d  %-10s  %6" PRIu64 "  %s\n",
           (int)json_integer_value(json_object_get(j, "slot")),
           json_string_value(json_object_get(j, "state")),
           (uint64_t)json_integer_value(json_object_get(j, "events")),
           json_string_value(json_object_get(j, "path")));
  json_array_foreach(json_object_get(o, "spares"), i, j)
    printf("      -  %-10s  %6s  %s\n",
           json_string_value(json_object_get(j, "state")), "-",
           json_string_value(json_object_get(j, "path")));
  json_decref(o);
  return VT_EXIT_OK;
}

/* The one line of 'fail' (unless -q): mdadm's "set DEV faulty in MD". */
static void raid_say_failed(const char *desc, const char *member, int slot)
{
  if (!raid_quiet)
    fprintf(stderr, "vdtool: set %s faulty in %s (slot %d)\n", member, desc,
            slot);
}

static int raid_cmd_fail(int argc, char **argv)
{
  static const struct option none[] = { { NULL, 0, NULL, 0 } };
  /* No options; "--" ends them, so a MEMBER may start with '-'. */
  optind = 1;
  if (getopt_long(argc, argv, "", none, NULL) != -1)
    return vt_bad_option("raid", argv);
  if (argc - optind != 2)
    return vt_bad_usage("raid", "fail needs ARRAY and MEMBER");
  const char *desc = argv[optind], *given = argv[optind + 1];
  int slot = raid_slot_of(desc, given);
  if (slot < 0)
    return VT_EXIT_ERR;
  /* Name the member as the descriptor does when given by slot number. */
  char member[4096];
  raid_member_name(desc, slot, given, member, sizeof member);
  struct vt_qmp *q;
  char name[256];
  int on = raid_online(desc, &q, name, sizeof name);
  if (on < 0)
    return VT_EXIT_ERR;
  if (on) {
    int r = raid_exec(q, "vdisk-raid-fail",
                      json_pack("{s:s, s:i}", "device", name, "member", slot),
                      NULL);
    vt_qmp_close(q);
    if (r < 0)
      return VT_EXIT_ERR;
    raid_say_failed(desc, member, slot);
    return VT_EXIT_OK;
  }
  struct vd_dev *dev;
  struct raid_array *a;
  if (raid_open_rw(desc, &dev, &a) < 0)
    return VT_EXIT_ERR;
  int r = vd_raid_fail(a, slot);
  if (r < 0) {
    vt_engine_error(r);
    vd_close(dev);
    return VT_EXIT_ERR;
  }
  if (vd_close(dev) < 0) {
    vt_engine_error(-1);
    return VT_EXIT_ERR;
  }
  raid_say_failed(desc, member, slot);
  return VT_EXIT_OK;
}

/* Follow the background rebuild of a served array (one resumed at open)
 * until no member is rebuilding. */
static int raid_watch_rebuild(struct vt_qmp *q, const char *desc,
                              const char *dev)
{
  struct vt_progress prog = { .enabled = isatty(2) };
  for (;;) {
    json_t *o = raid_query(q, dev), *rb = o ? json_object_get(o, "rebuild")
                                            : NULL;
    if (!o)
      return VT_EXIT_ERR;
    if (!rb) {
      vt_progress_end(&prog);
      bool degraded = json_is_true(json_object_get(o, "degraded"));
      if (degraded)
        vt_error("%s: rebuild did not complete (state: %s)", desc,
                 json_string_value(json_object_get(o, "state")));
      json_decref(o);
      return degraded ? VT_EXIT_ERR : VT_EXIT_OK;
    }
    vt_progress_update(&prog, (uint64_t)json_integer_value(
                         json_object_get(rb, "offset")),
                       (uint64_t)json_integer_value(
                         json_object_get(rb, "len")));
    json_decref(o);
    usleep(200000);
  }
}

static int raid_cmd_replace(int argc, char **argv, bool resume)
{
  static const struct option longopts[] = {
    { "rate", required_argument, NULL, 'r' },
    { "no-wait", no_argument, NULL, 'N' },
    { "format", required_argument, NULL, 'f' },
    { NULL, 0, NULL, 0 }
  };
  uint64_t rate = 0;
  bool wait = true;
  const char *fmt = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "f:", longopts, NULL)) != -1) {
    switch (c) {
    case 'r':
      if (vd_parse_size(optarg, &rate) < 0)
        return vt_bad_usage("raid", "invalid rate '%s'", optarg);
      break;
    case 'N': wait = false; break;
    case 'f': fmt = optarg; break;
    default: return vt_bad_option("raid", argv);
    }
  }
  if (argc - optind != (resume ? 1 : 3))
    return vt_bad_usage("raid", resume ? "rebuild needs ARRAY"
                                       : "replace needs ARRAY OLD NEW");
  const char *desc = argv[optind];
  if (resume) {
    /* The superblocks record a rebuild in progress (served or not). */
    struct vd_raid_status *st = malloc(sizeof *st);
    if (!st || vd_raid_examine(desc, st) < 0) {
      free(st);
      raid_detail_error(desc);
      return VT_EXIT_ERR;
    }
    bool idle = !st->rebuilding;
    free(st);
    if (idle) {
      fprintf(stderr, "vdtool: %s: nothing to rebuild (no member is "
              "rebuilding)\n", desc);
      return VT_EXIT_OK;
    }
  }
  int slot = resume ? -1 : raid_slot_of(desc, argv[optind + 1]);
  if (!resume && slot < 0)
    return VT_EXIT_ERR;
  const char *newp = resume ? NULL : argv[optind + 2];
  char *absnew = newp ? raid_abs_device(newp) : NULL;
  if (newp && !absnew)
    return VT_EXIT_ERR;
  struct vt_qmp *q;
  char name[256];
  int on = raid_online(desc, &q, name, sizeof name);
  if (on < 0) {
    free(absnew);
    return VT_EXIT_ERR;
  }
  if (on && resume) {
    /* A checkpointed rebuild resumes by itself when the server opens the
     * array: follow it. */
    int rc = VT_EXIT_ERR;
    if (rate)
      vt_error("%s: --rate applies to an offline rebuild; online, give the "
               "rate to 'vdtool raid replace' or use block-job-set-speed",
               desc);
    else
      rc = raid_watch_rebuild(q, desc, name);
    vt_qmp_close(q);
    return rc;
  }
  if (on) {
    char id[64];
    snprintf(id, sizeof id, "vdtool-replace-%ld", (long)getpid());
    json_t *args = json_pack("{s:s, s:i, s:s, s:s, s:I}", "device", name,
                             "member", slot, "new", absnew, "job-id", id,
                             "speed", (json_int_t)rate);
    if (args && fmt)
      json_object_set_new(args, "format", json_string(fmt));
    free(absnew);
    int rc = VT_EXIT_OK;
    if (raid_exec(q, "vdisk-raid-replace", args, NULL) < 0)
      rc = VT_EXIT_ERR;
    else if (wait && raid_follow_job(q, desc, id, "rebuild", NULL, NULL) < 0)
      rc = VT_EXIT_ERR;
    if (rc == VT_EXIT_OK && wait) {
      json_t *o = raid_query(q, name);
      if (!o)
        rc = VT_EXIT_ERR;
      else if (json_is_true(json_object_get(o, "degraded"))) {
        vt_error("%s: rebuild did not complete (state: %s)", desc,
                 json_string_value(json_object_get(o, "state")));
        rc = VT_EXIT_ERR;
      }
      json_decref(o);
    }
    vt_qmp_close(q);
    return rc;
  }
  struct vd_dev *dev;
  struct raid_array *a;
  if (raid_open_rw(desc, &dev, &a) < 0) {
    free(absnew);
    return VT_EXIT_ERR;
  }
  struct vt_progress prog = { .enabled = isatty(2) };
  int r = resume ? vd_raid_resume_rebuild(a, rate, vt_progress_cb, &prog)
                 : vd_raid_replace(a, slot, absnew, fmt, rate, vt_progress_cb,
                                   &prog);
  vt_progress_end(&prog);
  free(absnew);
  return raid_offline_end(dev, r);
}

/* Print the last re-add's numbers of SLOT from a query-vdisk-raid object. */
static void raid_print_readd(const char *desc, int slot, json_t *o)
{
  json_t *m = json_array_get(json_object_get(o, "members"), (size_t)slot);
  json_t *ra = json_object_get(m, "re-add");
  uint64_t copied = (uint64_t)json_integer_value(json_object_get(ra,
                                                                 "copied"));
  uint64_t skipped = (uint64_t)json_integer_value(json_object_get(ra,
                                                                  "skipped"));
  uint64_t size = (uint64_t)json_integer_value(json_object_get(
                    o, "member-data-size"));
  printf("%s: slot %d re-added: copied %" PRIu64 " of %" PRIu64 " bytes "
         "(%" PRIu64 " skipped: regions not written while it was out)\n",
         desc, slot, copied, size, skipped);
}

static int raid_cmd_re_add(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "rate", required_argument, NULL, 'r' },
    { "no-wait", no_argument, NULL, 'N' },
    { NULL, 0, NULL, 0 }
  };
  uint64_t rate = 0;
  bool wait = true;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
    case 'r':
      if (vd_parse_size(optarg, &rate) < 0)
        return vt_bad_usage("raid", "invalid rate '%s'", optarg);
      break;
    case 'N': wait = false; break;
    default: return vt_bad_option("raid", argv);
    }
  }
  if (argc - optind != 2)
    return vt_bad_usage("raid", "re-add needs ARRAY MEMBER");
  const char *desc = argv[optind];
  int slot = raid_slot_of(desc, argv[optind + 1]);
  if (slot < 0)
    return VT_EXIT_ERR;
  struct vt_qmp *q;
  char name[256];
  int on = raid_online(desc, &q, name, sizeof name);
  if (on < 0)
    return VT_EXIT_ERR;
  if (on) {
    char id[64];
    snprintf(id, sizeof id, "vdtool-re-add-%ld", (long)getpid());
    int rc = VT_EXIT_OK;
    if (raid_exec(q, "vdisk-raid-re-add",
                  json_pack("{s:s, s:i, s:s, s:I}", "device", name, "member",
                            slot, "job-id", id, "speed", (json_int_t)rate),
                  NULL) < 0)
      rc = VT_EXIT_ERR;
    else if (wait && raid_follow_job(q, desc, id, "re-add", NULL, NULL) < 0)
      rc = VT_EXIT_ERR;
    if (rc == VT_EXIT_OK && wait) {
      json_t *o = raid_query(q, name);
      if (!o)
        rc = VT_EXIT_ERR;
      else if (!raid_quiet)
        raid_print_readd(desc, slot, o);
      json_decref(o);
    }
    vt_qmp_close(q);
    return rc;
  }
  struct vd_dev *dev;
  struct raid_array *a;
  if (raid_open_rw(desc, &dev, &a) < 0)
    return VT_EXIT_ERR;
  struct vt_progress prog = { .enabled = isatty(2) };
  int r = vd_raid_re_add(a, slot, rate, vt_progress_cb, &prog);
  vt_progress_end(&prog);
  struct vd_raid_status *st = r == 0 ? malloc(sizeof *st) : NULL;
  if (r == 0 && (!st || vd_raid_status(a, st) < 0))
    r = -1;
  if (r < 0) {
    free(st);
    vt_engine_error(r);
    vd_close(dev);
    return VT_EXIT_ERR;
  }
  if (!raid_quiet)
    printf("%s: slot %d re-added: copied %" PRIu64 " of %" PRIu64 " bytes "
           "(%" PRIu64 " skipped: regions not written while it was out)\n",
           desc, slot, st->m[slot].readd_copied, st->member_data_size,
           st->m[slot].readd_skipped);
  free(st);
  if (vd_close(dev) < 0) {
    vt_engine_error(-1);
    return VT_EXIT_ERR;
  }
  return VT_EXIT_OK;
}

/* The scrub report event of our job (raid_follow_job's SEEN). */
struct raid_scrub_seen {
  char id[64];
  json_t *report;
};

static void raid_scrub_seen(void *opaque, json_t *ev)
{
  struct raid_scrub_seen *sn = opaque;
  json_t *data = json_object_get(ev, "data");
  const char *jid = json_string_value(json_object_get(data, "job-id"));
  if (!strcmp(json_string_value(json_object_get(ev, "event")) ?: "",
              "VDISK_RAID_SCRUB_REPORT") && jid && !strcmp(jid, sn->id)) {
    json_decref(sn->report);
    sn->report = json_incref(data);
  }
}

static void raid_print_mismatch(void *opaque, uint64_t stripe, uint64_t off)
{
  printf("mismatch: stripe %" PRIu64 " (array offset %" PRIu64 ")\n", stripe,
         off);
}

static int raid_cmd_scrub(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "repair", no_argument, NULL, 'R' },
    { NULL, 0, NULL, 0 }
  };
  bool repair = false;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    if (c != 'R')
      return vt_bad_option("raid", argv);
    repair = true;
  }
  if (argc - optind != 1)
    return vt_bad_usage("raid", "scrub needs ARRAY");
  const char *desc = argv[optind];
  uint64_t stripes, mism, rep;
  struct vt_qmp *q;
  char name[256];
  int on = raid_online(desc, &q, name, sizeof name);
  if (on < 0)
    return VT_EXIT_ERR;
  if (on) {
    struct raid_scrub_seen sn = { .report = NULL };
    snprintf(sn.id, sizeof sn.id, "vdtool-scrub-%ld", (long)getpid());
    int r = raid_exec(q, "vdisk-raid-scrub",
                      json_pack("{s:s, s:b, s:s}", "device", name, "repair",
                                repair, "job-id", sn.id), NULL);
    if (r == 0)
      r = raid_follow_job(q, desc, sn.id, "scrub", raid_scrub_seen, &sn);
    vt_qmp_close(q);
    if (r == 0 && !sn.report) {
      vt_error("%s: the server sent no scrub report", desc);
      r = -1;
    }
    if (r < 0) {
      json_decref(sn.report);
      return VT_EXIT_ERR;
    }
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(sn.report, "mismatched-stripes"), i,
                       m)
      printf("mismatch: stripe %" PRIu64 " (array offset %" PRIu64 ")\n",
             (uint64_t)json_integer_value(json_object_get(m, "stripe")),
             (uint64_t)json_integer_value(json_object_get(m, "offset")));
    stripes = (uint64_t)json_integer_value(json_object_get(sn.report,
                                                           "stripes"));
    mism = (uint64_t)json_integer_value(json_object_get(sn.report,
                                                        "mismatches"));
    rep = (uint64_t)json_integer_value(json_object_get(sn.report,
                                                       "repaired"));
    if (mism > i)
      printf("(%" PRIu64 " more mismatched stripes not listed)\n", mism - i);
    json_decref(sn.report);
  } else {
    struct vd_dev *dev;
    if (vt_open(desc, "raid", repair ? VD_OPEN_RDWR : 0, &dev) < 0)
      return VT_EXIT_ERR;
    struct vd_raid_scrub_report r = { .mismatch = raid_print_mismatch };
    struct vt_progress prog = { .enabled = isatty(2) };
    int e = vd_raid_scrub(vd_raid_of(dev), repair, &r, vt_progress_cb, &prog);
    vt_progress_end(&prog);
    if (e < 0) {
      vt_engine_error(e);
      vd_close(dev);
      return VT_EXIT_ERR;
    }
    if (vd_close(dev) < 0) {
      vt_engine_error(-1);
      return VT_EXIT_ERR;
    }
    stripes = r.stripes;
    mism = r.mismatches;
    rep = r.repaired;
  }
  printf("scrubbed %" PRIu64 " stripes: %" PRIu64 " mismatched, %" PRIu64
         " repaired\n", stripes, mism, rep);
  return mism && !repair ? 3 : VT_EXIT_OK;
}

/* The one line of 'add' (unless -q), as mdadm's "added DEV". */
static void raid_say_added(const char *desc, const char *spare, int slot)
{
  if (raid_quiet)
    return;
  if (slot >= 0)
    fprintf(stderr, "vdtool: added %s to %s: it took slot %d (rebuilding)\n",
            spare, desc, slot);
  else
    fprintf(stderr, "vdtool: added %s to %s as a spare\n", spare, desc);
}

static int raid_cmd_add(int argc, char **argv)
{
  const char *fmt = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "f:", NULL, NULL)) != -1) {
    if (c != 'f')
      return vt_bad_option("raid", argv);
    fmt = optarg;
  }
  if (argc - optind != 2)
    return vt_bad_usage("raid", "add needs ARRAY SPARE");
  const char *desc = argv[optind], *spare = argv[optind + 1];
  char *abs = raid_abs_device(spare);
  if (!abs)
    return VT_EXIT_ERR;
  struct vt_qmp *q;
  char name[256];
  int on = raid_online(desc, &q, name, sizeof name);
  if (on < 0) {
    free(abs);
    return VT_EXIT_ERR;
  }
  if (on) {
    json_t *args = json_pack("{s:s, s:s}", "device", name, "spare", abs);
    json_t *ret = NULL;
    if (args && fmt)
      json_object_set_new(args, "format", json_string(fmt));
    free(abs);
    int r = raid_exec(q, "vdisk-raid-add", args, &ret);
    vt_qmp_close(q);
    if (r < 0)
      return VT_EXIT_ERR;
    json_t *slot = json_object_get(ret, "slot");
    raid_say_added(desc, spare, slot ? (int)json_integer_value(slot) : -1);
    json_decref(ret);
    return VT_EXIT_OK;
  }
  struct vd_dev *dev;
  struct raid_array *a;
  if (raid_open_rw(desc, &dev, &a) < 0) {
    free(abs);
    return VT_EXIT_ERR;
  }
  int r = vd_raid_add(a, abs, fmt);
  /* Added to a degraded array, it took a failed member's slot. */
  int slot = r == 0 ? vd_raid_find_member(a, abs) : -1;
  free(abs);
  if (r == 0 && slot >= 0) {
    /* The rebuild runs now, as for replace. */
    raid_say_added(desc, spare, slot);
    struct vt_progress prog = { .enabled = isatty(2) };
    r = vd_raid_resume_rebuild(a, 0, vt_progress_cb, &prog);
    vt_progress_end(&prog);
  } else if (r == 0) {
    raid_say_added(desc, spare, -1);
  }
  return raid_offline_end(dev, r);
}

static int raid_cmd_remove(int argc, char **argv)
{
  static const struct option none[] = { { NULL, 0, NULL, 0 } };
  optind = 1;
  if (getopt_long(argc, argv, "", none, NULL) != -1)
    return vt_bad_option("raid", argv);
  if (argc - optind != 2)
    return vt_bad_usage("raid", "remove needs ARRAY SPARE");
  const char *desc = argv[optind], *spare = argv[optind + 1];
  char *abs = raid_abs_device(spare);
  if (!abs)
    return VT_EXIT_ERR;
  struct vt_qmp *q;
  char name[256];
  int on = raid_online(desc, &q, name, sizeof name);
  int r;
  if (on > 0) {
    r = raid_exec(q, "vdisk-raid-remove",
                  json_pack("{s:s, s:s}", "device", name, "spare", abs),
                  NULL) < 0 ? VT_EXIT_ERR : VT_EXIT_OK;
    vt_qmp_close(q);
  } else if (on == 0) {
    struct vd_dev *dev;
    struct raid_array *a;
    r = raid_open_rw(desc, &dev, &a) < 0 ? VT_EXIT_ERR
        : raid_offline_end(dev, vd_raid_remove_spare(a, abs));
  } else {
    r = VT_EXIT_ERR;
  }
  free(abs);
  if (r == VT_EXIT_OK && !raid_quiet)
    fprintf(stderr, "vdtool: removed %s from %s\n", spare, desc);
  return r;
}

int vt_cmd_raid(int argc, char **argv)
{
  if (argc < 2)
    return vt_bad_usage("raid", "missing subcommand");
  /* -q/--quiet anywhere before "--" (mdadm takes it in any place). */
  int k = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--")) {
      while (i < argc)
        argv[k++] = argv[i++];
      break;
    }
    if (!strcmp(argv[i], "-q") || !strcmp(argv[i], "--quiet"))
      raid_quiet = true;
    else
      argv[k++] = argv[i];
  }
  argc = k;
  argv[argc] = NULL;
  if (argc < 2)
    return vt_bad_usage("raid", "missing subcommand");
  const char *sub = argv[1];
  argc--;
  argv++;
  opterr = 0;  /* errors are reported in one line by vt_bad_option */
  if (!strcmp(sub, "create")) return raid_cmd_create(argc, argv);
  if (!strcmp(sub, "detail")) return raid_cmd_detail(argc, argv);
  if (!strcmp(sub, "assemble")) return raid_cmd_assemble(argc, argv);
  if (!strcmp(sub, "status")) return raid_cmd_status(argc, argv);
  if (!strcmp(sub, "fail")) return raid_cmd_fail(argc, argv);
  if (!strcmp(sub, "replace")) return raid_cmd_replace(argc, argv, false);
  if (!strcmp(sub, "rebuild")) return raid_cmd_replace(argc, argv, true);
  if (!strcmp(sub, "re-add")) return raid_cmd_re_add(argc, argv);
  if (!strcmp(sub, "add")) return raid_cmd_add(argc, argv);
  if (!strcmp(sub, "remove")) return raid_cmd_remove(argc, argv);
  if (!strcmp(sub, "scrub")) return raid_cmd_scrub(argc, argv);
  if (!strcmp(sub, "examine")) return vt_raid_examine(argc, argv);
  if (!strcmp(sub, "monitor")) return vt_raid_monitor(argc, argv);
  if (!strcmp(sub, "--help") || !strcmp(sub, "-h")) {
    vt_usage("raid", stdout);
    return VT_EXIT_OK;
  }
  return vt_bad_usage("raid", "unknown subcommand '%s'", sub);
}
