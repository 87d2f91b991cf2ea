/* vdtool — helpers shared by the commands. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/vdtool.h"

void
vt_error(const char *fmt, ...)
{
  va_list ap;
  fputs("vdtool: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

void
vt_engine_error(int r)
{
  const char *m = vd_error();
  if (m && *m)
    vt_error("%s", m);
  else
    vt_error("%s", strerror(r < 0 ? -r : r));
}

void
vt_usage(const char *cmd, FILE *f)
{
  for (const struct vt_command *c = vt_commands; c->name; c++)
    if (strcmp(c->name, cmd) == 0) {
      fputs(c->usage, f);
      return;
    }
}

int
vt_bad_usage(const char *cmd, const char *fmt, ...)
{
  va_list ap;
  fprintf(stderr, "vdtool %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, " (see 'vdtool %s --help')\n", cmd);
  return VT_EXIT_ERR;
}

int
vt_bad_option(const char *cmd, char **argv)
{
  if (optopt)
    return vt_bad_usage(cmd, "invalid option or missing argument: -%c",
                        optopt);
  return vt_bad_usage(cmd, "invalid option or missing argument: %s",
                      argv[optind - 1]);
}

const char *vt_backing, *vt_backing_format;

int
vt_open(const char *path, const char *format, unsigned flags,
        struct vd_dev **out)
{
  return vt_open_snapshot(path, format, flags, NULL, out);
}

int
vt_open_snapshot(const char *path, const char *format, unsigned flags,
                 const char *snapshot, struct vd_dev **out)
{
  static bool used;
  struct vd_open_args a = { .format = format, .flags = flags,
                            .snapshot = snapshot };
  /* The override belongs to the image named first on the command line,
   * which every command opens first. */
  if (!used) {
    a.backing = vt_backing;
    a.backing_format = vt_backing_format;
    used = true;
  }
  int r = vd_open_opts(path, &a, out);
  if (r < 0)
    vt_engine_error(r);
  return r;
}

int
vt_take_backing_opts(const char *cmd, int *argc, char **argv)
{
  static const char *const takes[] = { "info", "map", "compare", "convert",
                                       "commit", "rebase", NULL };
  int out = 1;
  bool any = false;
  for (int i = 1; i < *argc; i++) {
    const char **dst = NULL, *val = NULL, *a = argv[i];
    if (strcmp(a, "--") == 0) {
      while (i < *argc)
        argv[out++] = argv[i++];
      break;
    }
    if (strncmp(a, "--backing=", 10) == 0) {
      dst = &vt_backing;
      val = a + 10;
    } else if (strncmp(a, "--backing-format=", 17) == 0) {
      dst = &vt_backing_format;
      val = a + 17;
    } else if (strcmp(a, "--backing") == 0 ||
               strcmp(a, "--backing-format") == 0) {
      dst = a[9] ? &vt_backing_format : &vt_backing;
      if (i + 1 >= *argc)
        return vt_bad_usage(cmd, "%s needs an argument", a);
      val = argv[++i];
    }
    if (!dst) {
      argv[out++] = argv[i];
      continue;
    }
    if (!*val)
      return vt_bad_usage(cmd, "%s needs a non-empty argument",
                          *dst == vt_backing ? "--backing" : "--backing-format");
    *dst = val;
    any = true;
  }
  argv[out] = NULL;
  *argc = out;
  if (any) {
    bool ok = false;
    for (const char *const *t = takes; *t; t++)
      ok |= strcmp(*t, cmd) == 0;
    if (!ok)
      return vt_bad_usage(cmd, "--backing and --backing-format are not "
                          "supported by this command");
  }
  return 0;
}

int
vt_parse_manage(const char *cmd, int argc, char **argv,
                const char *extra_short, const struct option *extra_long,
                vt_manage_opt_fn on_opt, void *ctx, int noper,
                const char *operands, struct vt_manage_opts *o)
{
  enum { MAXLONG = 16 };
  struct option longopts[MAXLONG + 2] = {
    { "format", required_argument, NULL, 'f' },
  };
  char shortopts[64];
  size_t nl = 1;
  for (const struct option *l = extra_long; l && l->name && nl < MAXLONG; l++)
    longopts[nl++] = *l;
  /* Options may follow the operands, as qemu-img takes them (commit IMG
   * -d); "--" ends them.  resize takes its size out first (qemu's rule),
   * so "-1G" is never read as options. */
  snprintf(shortopts, sizeof shortopts, "f:pq%s",
           extra_short ? extra_short : "");
  *o = (struct vt_manage_opts){ .prog = { false, 0 } };
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
    switch (c) {
    case 'f': o->format = optarg; break;
    case 'p': o->prog.enabled = true; break;
    case 'q': o->quiet = true; break;
    case '?': return vt_bad_option(cmd, argv);
    default:
      if (!on_opt || on_opt(c, optarg, ctx) != 0)
        return VT_EXIT_ERR;
    }
  }
  if (noper >= 0 ? argc - optind != noper : argc - optind > -noper)
    return vt_bad_usage(cmd, "expected %s", operands);
  return 0;
}

int
vt_manage_flag(int c, const char *arg, void *ctx)
{
  (void)c;
  (void)arg;
  *(bool *)ctx = true;
  return 0;
}

int
vt_manage_done(struct vt_manage_opts *o, int r, const char *done)
{
  if (o->prog.enabled)
    vt_progress_end(&o->prog);
  if (r < 0) {
    vt_engine_error(r);
    return VT_EXIT_ERR;
  }
  if (done && !o->quiet)
    printf("%s\n", done);
  return VT_EXIT_OK;
}

int
vt_parse_output(const char *arg, bool *json)
{
  if (strcmp(arg, "json") == 0)
    *json = true;
  else if (strcmp(arg, "human") == 0)
    *json = false;
  else
    return -1;
  return 0;
}

void
vt_progress_update(struct vt_progress *p, uint64_t done, uint64_t total)
{
  if (!p || !p->enabled)
    return;
  double pct = total ? (double)done * 100.0 / (double)total : 100.0;
  if (pct - p->last < 1.0 && pct < 100.0 && p->last >= 0)
    return;
  p->last = pct;
  fprintf(stdout, "    (%.2f/100%%)\r", pct);
  fflush(stdout);
}

void
vt_progress_end(struct vt_progress *p)
{
  if (!p || !p->enabled)
    return;
  fprintf(stdout, "    (100.00/100%%)\n");
  fflush(stdout);
}

void
vt_progress_cb(void *opaque, uint64_t done, uint64_t total)
{
  vt_progress_update(opaque, done, total);
}

void
vt_json_string(FILE *f, const char *s)
{
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

bool
vt_is_zero(const void *buf, size_t len)
{
  const unsigned char *p = buf;
  if (len == 0)
    return true;
  /* First 16 bytes by hand, then compare the buffer with itself shifted. */
  size_t head = len < 16 ? len : 16;
  for (size_t i = 0; i < head; i++)
    if (p[i])
      return false;
  return len <= 16 || memcmp(p, p + 16, len - 16) == 0;
}

bool
vt_options_want_help(const char *opts)
{
  for (const char *p = opts; p && *p;) {
    size_t n = strcspn(p, ",");
    if ((n == 4 && strncmp(p, "help", 4) == 0) || (n == 1 && *p == '?'))
      return true;
    p += n + (p[n] == ',');
  }
  return false;
}

int
vt_options_help(const char *format)
{
  const char *h = vd_create_options_help(format);
  if (!h) {
    vt_error("Unknown file format '%s'", format);
    return VT_EXIT_ERR;
  }
  printf("Supported options:\n"
         "  size=<size>            - Virtual disk size\n%s", h);
  return VT_EXIT_OK;
}
