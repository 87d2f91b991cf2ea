/* vdtool qmp — a small QMP client for the control socket of vdisk-nbd
 * and vdisk-fuse (--control=PATH, docs/control.md): run one command and
 * print its "return" as JSON, and/or follow the events.  The protocol
 * itself is tools/qmp-client.c, shared with vdtool raid. */
#include <config.h>

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "tools/qmp-client.h"
#include "tools/vdtool.h"

const char vt_summary_qmp[] = "send a command to a control socket";
const char vt_usage_qmp[] =
  "Usage: vdtool qmp [--events] SOCKET [COMMAND [KEY=VALUE...] | COMMAND -]\n"
  "\n"
  "Connect to the QMP control socket of vdisk-nbd or vdisk-fuse\n"
  "(--control=SOCKET), negotiate, run COMMAND and print its \"return\" as\n"
  "JSON.  Each KEY=VALUE is an argument: VALUE is taken as JSON if it\n"
  "parses (42, true, {\"a\": 1}, \"text\"), else as a string.  With '-'\n"
  "the arguments are a JSON object read from standard input.  On an error\n"
  "reply the error's text goes to standard error and the exit status is 1.\n"
  "\n"
  "  --events   then print every event as one JSON line until the server\n"
  "             closes the connection (without COMMAND: only that)\n"
  "\n"
  "Example: vdtool qmp /run/disk.qmp query-block\n"
  "         vdtool qmp /run/disk.qmp block-job-set-speed device=job0 speed=0\n";

static void print_line(json_t *m)
{
  json_dumpf(m, stdout, JSON_COMPACT);
  putchar('\n');
  fflush(stdout);
}

/* Print the events read so far (they come before the reply they arrived
 * ahead of).  Returns 0, or -1 when the connection failed (printed). */
static int print_queued_events(struct vt_qmp *q)
{
  json_t *ev;
  char msg[600];
  int r;
  while ((r = vt_qmp_event(q, 0, &ev, msg, sizeof msg)) > 0) {
    print_line(ev);
    json_decref(ev);
  }
  if (r < 0)
    vt_error("qmp: %s", msg);
  return r < 0 ? -1 : 0;
}

/* KEY=VALUE... into an object: VALUE as JSON when it parses. */
static json_t *qmp_args(int argc, char **argv)
{
  json_t *o = json_object();
  for (int i = 0; o && i < argc; i++) {
    char *eq = strchr(argv[i], '=');
    if (!eq || eq == argv[i]) {
      vt_bad_usage("qmp", "'%s' is not KEY=VALUE", argv[i]);
      json_decref(o);
      return NULL;
    }
    json_t *v = json_loads(eq + 1, JSON_DECODE_ANY, NULL);
    if (!v)
      v = json_string(eq + 1);
    *eq = 0;
    json_object_set_new(o, argv[i], v);
    *eq = '=';
  }
  return o;
}

int vt_cmd_qmp(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "events", no_argument, NULL, 'e' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
  };
  struct vt_qmp *q = NULL;
  char msg[600];
  bool events = false;
  json_t *args = NULL, *ret = NULL;
  int opt, status = VT_EXIT_ERR;

  while ((opt = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'e': events = true; break;
    case 'h': vt_usage("qmp", stdout); return VT_EXIT_OK;
    default: return vt_bad_option("qmp", argv);
    }
  }
  if (optind >= argc)
    return vt_bad_usage("qmp", "no SOCKET given");
  if (optind + 1 >= argc && !events)
    return vt_bad_usage("qmp", "no COMMAND given (or --events)");
  const char *path = argv[optind], *cmd = argv[optind + 1];
  if (optind + 1 < argc) {
    if (optind + 3 == argc && strcmp(argv[optind + 2], "-") == 0) {
      json_error_t jerr;
      args = json_loadf(stdin, 0, &jerr);
      if (!json_is_object(args)) {
        vt_error("qmp: standard input is not a JSON object%s%s",
                 args ? "" : ": ", args ? "" : jerr.text);
        json_decref(args);
        return VT_EXIT_ERR;
      }
    } else if (!(args = qmp_args(argc - optind - 2, argv + optind + 2))) {
      return VT_EXIT_ERR;
    }
  }
  if (vt_qmp_connect(path, &q, msg, sizeof msg) < 0) {
    vt_error("%s", msg);
    goto out;
  }
  if (events && print_queued_events(q) < 0)
    goto out;
  if (optind + 1 < argc) {
    int r = vt_qmp_execute(q, cmd, args, &ret, NULL, msg, sizeof msg);
    args = NULL;
    if (events && print_queued_events(q) < 0)
      goto out;
    if (r < 0) {
      vt_error(r == -1 ? "%s" : "qmp: %s", msg);
      goto out;
    }
    json_dumpf(ret, stdout, JSON_INDENT(2));
    putchar('\n');
    fflush(stdout);
  }
  status = VT_EXIT_OK;
  /* Until the server closes the connection (no timeout: that is what
   * following events means). */
  while (events) {
    json_t *ev;
    int r = vt_qmp_event(q, 3600 * 1000, &ev, msg, sizeof msg);
    if (r < 0)
      break;
    if (r > 0) {
      print_line(ev);
      json_decref(ev);
    }
  }
out:
  json_decref(args);
  json_decref(ret);
  vt_qmp_close(q);
  return status;
}
