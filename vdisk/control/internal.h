/* Internals shared by the control module's files (server.c: sockets,
 * clients, framing, events; qmp.c: the protocol; jobs.c: the job runner;
 * commands.c: the generic commands).  Not installed; the unit tests
 * include it to drive the server without a client. */
#ifndef VDISK_CONTROL_INTERNAL_H
#define VDISK_CONTROL_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "vdisk/control/control.h"
#include "vdisk/control/unixsock.h"

#define VC_MAX_CLIENTS 16
#define VC_MAX_MESSAGE (1u << 20)        /* bytes, one incoming message */
#define VC_MAX_QUEUE (4u << 20)          /* bytes queued to one client */

struct vc_command {
  struct vc_command *next;
  char *name;
  vc_cmd_fn fn;
  void *opaque;
};

struct vc_device {
  struct vc_device *next;
  char *name;
  struct vd_node *node;
};

struct vc_client;
struct vc_job;

struct vc_server {
  char *program;
  int listen_fd;
  int wake[2];                  /* wakes the control thread (output, stop) */
  struct vc_own_file own;       /* the socket, removed at stop if ours */
  pthread_t thread;
  bool thread_started;

  /* Serialises command handlers (the "one mutex" of the protocol). */
  pthread_mutex_t cmd_lock;

  /* lock guards: commands, devices, clients' list and queues, stopping. */
  pthread_mutex_t lock;
  struct vc_command *commands;  /* lock */
  struct vc_device *devices;    /* lock */
  struct vc_client *clients;    /* lock; touched by the control thread and
                                   vc_event */
  unsigned nclients;            /* lock */
  bool stopping;                /* lock */

  /* Jobs (jobs.c): jobs_lock guards every job field that changes. */
  pthread_mutex_t jobs_lock;
  pthread_cond_t jobs_cond;     /* any job's state or request changed */
  struct vc_job *jobs;          /* jobs_lock; not yet dismissed */
  unsigned job_threads;         /* jobs_lock; job threads still running */
  bool jobs_closed;             /* jobs_lock; stopping: no new job */

  /* Tests: called for every event (any thread) with the event message,
   * borrowed. */
  void (*event_hook)(void *opaque, json_t *msg);
  void *event_hook_opaque;
};

/* qmp.c */
json_t *vc_greeting(struct vc_server *s);
/* The reply to one incoming message (never NULL): REQ borrowed, or NULL
 * when the text did not parse (PARSE_ERR then says why).  *CAPS is the
 * client's negotiation state, updated by qmp_capabilities. */
json_t *vc_handle_message(struct vc_server *s, json_t *req,
                          const char *parse_err, bool *caps);
json_t *vc_error_reply(const char *cls, const char *desc, json_t *id);
/* Run command NAME with ARGS (borrowed, NULL: none) under the command
 * mutex, as a client would.  Returns the "return" value or NULL with
 * *ERR set. */
json_t *vc_execute(struct vc_server *s, const char *name, json_t *args,
                   struct vc_error *err);

/* server.c: queue MSG (borrowed) to every client past qmp_capabilities. */
void vc_broadcast(struct vc_server *s, json_t *msg);

/* commands.c */
int vc_commands_register_generic(struct vc_server *s);
/* Register every command of TABLE (ended by a NULL name; opaque NULL).
 * Returns 0 or the first vc_command_register error. */
struct vc_command_def { const char *name; vc_cmd_fn fn; };
int vc_command_register_table(struct vc_server *s,
                              const struct vc_command_def *table);
/* cmd-bitmap.c: the block-dirty-bitmap-* commands, and query-block's
 * "dirty-bitmaps" list of NODE (a new reference, NULL when it has none:
 * QEMU then leaves the member out). */
int vc_bitmap_register_commands(struct vc_server *s);
json_t *vc_bitmap_query(struct vd_node *node);
/* jobs.c */
int vc_jobs_register_commands(struct vc_server *s);
/* Cancel every job (force) and wait for their threads. */
void vc_jobs_shutdown(struct vc_server *s);
/* cmd-snapshot.c: blockdev-snapshot-sync. */
int vc_snapshot_register_commands(struct vc_server *s);
/* cmd-mirror.c: drive-mirror, block-commit. */
int vc_mirror_register_commands(struct vc_server *s);

/* Argument helpers for command handlers (commands.c).  Each returns false
 * with *ERR set (GenericError, QEMU's wording) when the argument is
 * missing (required) or has the wrong type. */
bool vc_arg_str(json_t *args, const char *key, bool required,
                const char **out, struct vc_error *err);
bool vc_arg_bool(json_t *args, const char *key, bool required, bool *out,
                 struct vc_error *err);
bool vc_arg_uint(json_t *args, const char *key, bool required,
                 uint64_t *out, struct vc_error *err);
/* Refuse any key of ARGS not in the NULL-terminated KNOWN list (QEMU:
 * "Parameter 'x' is unexpected"). */
bool vc_arg_only(json_t *args, const char *const *known,
                 struct vc_error *err);

#endif
