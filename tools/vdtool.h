/* vdtool — shared declarations between the command files. */
#ifndef VDTOOL_H
#define VDTOOL_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "vdisk/vdisk.h"

/* Exit codes (qemu-img's): 0 success, 1 error; compare and check have
 * their own, documented in their help. */
#define VT_EXIT_OK 0
#define VT_EXIT_ERR 1

struct vt_command {
  const char *name;
  int (*run)(int argc, char **argv);   /* argv[0] is the command name */
  const char *summary;                 /* one line for `vdtool help` */
  const char *usage;                   /* full help text */
};

/* The command table (vdtool.c). */
extern const struct vt_command vt_commands[];

/* Print "vdtool: MESSAGE" on stderr (one line). */
void vt_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print vd_error() (or strerror) after a failed engine call. */
void vt_engine_error(int r);
/* Print the usage of CMD to F. */
void vt_usage(const char *cmd, FILE *f);
/* Report a bad command line: one line plus a hint, returns VT_EXIT_ERR. */
int vt_bad_usage(const char *cmd, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

/* After getopt returned '?': report the offending option (one line). */
int vt_bad_option(const char *cmd, char **argv);

/* Open with an error message printed on failure.  The first call also
 * passes the operator's backing override (vt_backing, vt_backing_format)
 * for the image named first on the command line. */
int vt_open(const char *path, const char *format, unsigned flags,
            struct vd_dev **out);
/* vt_open reading the internal snapshot SNAPSHOT (NULL: the current
 * state; convert -l). */
int vt_open_snapshot(const char *path, const char *format, unsigned flags,
                     const char *snapshot, struct vd_dev **out);
/* --backing=FILE / --backing-format=FMT (qemu's backing.file idea), or
 * NULL: set by vt_take_backing_opts. */
extern const char *vt_backing, *vt_backing_format;
/* Remove --backing[=]FILE and --backing-format[=]FMT from ARGV (ARGV[0]
 * is the command CMD; stops at "--") into vt_backing*, refusing them for
 * commands that do not take them.  Returns 0 or VT_EXIT_ERR (printed). */
int vt_take_backing_opts(const char *cmd, int *argc, char **argv);

/* --output=human|json */
int vt_parse_output(const char *arg, bool *json);

/* A terminal progress bar like qemu-img's "(42.00/100%)". */
struct vt_progress {
  bool enabled;
  double last;
};
void vt_progress_update(struct vt_progress *p, uint64_t done, uint64_t total);
void vt_progress_end(struct vt_progress *p);
/* vd_progress_fn adapter: OPAQUE is a struct vt_progress. */
void vt_progress_cb(void *opaque, uint64_t done, uint64_t total);

/* Options shared by the image management commands (commit, rebase,
 * resize, compact): -f FMT, -p, -q. */
struct vt_manage_opts {
  const char *format;          /* -f/--format, NULL: probe */
  bool quiet;                  /* -q */
  struct vt_progress prog;     /* -p */
};
/* A command's own option for vt_parse_manage: called with getopt's
 * character (or a long option's val) and optarg; returns 0, or
 * VT_EXIT_ERR after printing why. */
typedef int (*vt_manage_opt_fn)(int c, const char *arg, void *ctx);
/* Parse ARGV of CMD (getopt_long from the start, stopping at the first
 * operand so that "-1G" after FILENAME is an operand): the shared options
 * into *O, and EXTRA_SHORT / EXTRA_LONG (NULL-ended, may be NULL) through
 * ON_OPT(c, optarg, CTX).  Exactly NOPER operands must follow, or at most
 * -NOPER when NOPER is negative (OPERANDS names them for the message).  Returns 0 with optind at the first
 * operand, or VT_EXIT_ERR (printed). */
int vt_parse_manage(const char *cmd, int argc, char **argv,
                    const char *extra_short, const struct option *extra_long,
                    vt_manage_opt_fn on_opt, void *ctx, int noper,
                    const char *operands, struct vt_manage_opts *o);
/* A vt_manage_opt_fn for a command whose one extra option is a flag: sets
 * the bool CTX points to. */
int vt_manage_flag(int c, const char *arg, void *ctx);
/* Finish a management command whose engine call returned R: end the
 * progress bar, then print the engine error and return VT_EXIT_ERR, or
 * print DONE (unless -q or DONE is NULL) and return VT_EXIT_OK. */
int vt_manage_done(struct vt_manage_opts *o, int r, const char *done);

/* JSON string output with escaping. */
void vt_json_string(FILE *f, const char *s);

/* qemu-img's -o help (or -o ?): true if OPTS asks for the list. */
bool vt_options_want_help(const char *opts);
/* Print the -o options FORMAT takes as qemu-img does ("Supported
 * options:" then one per line); the exit status. */
int vt_options_help(const char *format);

/* True if BUF holds only zero bytes. */
bool vt_is_zero(const void *buf, size_t len);

/* qemu's snapshot table of N snapshots (nothing when N is 0). */
void vt_snapshot_table(const struct vd_snapshot *list, size_t n);

#endif
