/* vdtool — create, inspect, convert and compare virtual disks.
 * Commands and options follow qemu-img where qemu-img has the command.
 * One file per command (tools/cmd-*.c); one line each in the table. */
#include <config.h>

#include <stdio.h>
#include <string.h>

#include "tools/vdtool.h"

#define VT_CMD(n) \
  int vt_cmd_##n(int argc, char **argv); \
  extern const char vt_usage_##n[]; \
  extern const char vt_summary_##n[];
VT_CMD(create)
VT_CMD(info)
VT_CMD(convert)
VT_CMD(compare)
VT_CMD(map)
VT_CMD(check)
VT_CMD(commit)
VT_CMD(rebase)
VT_CMD(resize)
VT_CMD(amend)
VT_CMD(compact)
VT_CMD(raid)
VT_CMD(qmp)
VT_CMD(snapshot)
VT_CMD(measure)
VT_CMD(dd)
#undef VT_CMD

#define VT_ENTRY(n) { #n, vt_cmd_##n, vt_summary_##n, vt_usage_##n }
const struct vt_command vt_commands[] = {
  VT_ENTRY(create),
  VT_ENTRY(info),
  VT_ENTRY(convert),
  VT_ENTRY(compare),
  VT_ENTRY(map),
  VT_ENTRY(check),
  VT_ENTRY(commit),
  VT_ENTRY(rebase),
  VT_ENTRY(resize),
  VT_ENTRY(amend),
  VT_ENTRY(compact),
  VT_ENTRY(raid),
  VT_ENTRY(qmp),
  VT_ENTRY(snapshot),
  VT_ENTRY(measure),
  VT_ENTRY(dd),
  { NULL, NULL, NULL, NULL }
};

static void
vt_main_help(FILE *f)
{
  fprintf(f,
          "Usage: vdtool COMMAND [OPTIONS] ...\n"
          "       vdtool help [COMMAND]\n"
          "       vdtool COMMAND --help\n"
          "\n"
          "vdisk's image tool: create, inspect, check, convert and compare\n"
          "virtual disks (raw and the other formats below).\n"
          "\nCommands:\n");
  for (const struct vt_command *c = vt_commands; c->name; c++)
    fprintf(f, "  %-10s %s\n", c->name, c->summary);
  fprintf(f, "\nFormats:");
  for (const char *const *n = vd_format_names(); *n; n++)
    fprintf(f, " %s", *n);
  fprintf(f,
          "\n\nImages are opened by probing their format unless -f names it.\n"
          "A differencing image's parent must be a regular file inside the\n"
          "child's folder tree; info, map, compare, convert, commit and\n"
          "rebase take --backing=FILE (and --backing-format=FMT) to name the\n"
          "parent of the first image explicitly, wherever it is.\n"
          "\nSizes take K, M, G, T, P and E suffixes (powers of 1024).\n"
          "Exit status: 0 on success, 1 on error (compare and check document\n"
          "their own codes).\n");
}

int
main(int argc, char **argv)
{
  if (argc < 2) {
    vt_main_help(stderr);
    return VT_EXIT_ERR;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 ||
      strcmp(cmd, "-h") == 0) {
    if (argc > 2 && strcmp(cmd, "help") == 0) {
      for (const struct vt_command *c = vt_commands; c->name; c++)
        if (strcmp(c->name, argv[2]) == 0) {
          fputs(c->usage, stdout);
          return VT_EXIT_OK;
        }
      vt_error("unknown command '%s' (see 'vdtool help')", argv[2]);
      return VT_EXIT_ERR;
    }
    vt_main_help(stdout);
    return VT_EXIT_OK;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
    printf("vdtool (vdisk) %s\n", PACKAGE_VERSION);
    return VT_EXIT_OK;
  }
  for (const struct vt_command *c = vt_commands; c->name; c++)
    if (strcmp(c->name, cmd) == 0) {
      for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
          break;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
          fputs(c->usage, stdout);
          return VT_EXIT_OK;
        }
      }
      int sub_argc = argc - 1;
      if (vt_take_backing_opts(c->name, &sub_argc, argv + 1) != 0)
        return VT_EXIT_ERR;
      return c->run(sub_argc, argv + 1);
    }
  vt_error("unknown command '%s' (see 'vdtool help')", cmd);
  return VT_EXIT_ERR;
}
