/* vdisk control socket: a QMP server (QEMU Machine Protocol) that lets a
 * local user drive a running frontend (vdisk-nbd, vdisk-fuse): query its
 * devices, start and steer block jobs.  docs/control.md describes the
 * protocol and every command.
 *
 * Threads.  The server runs one control thread that accepts clients,
 * reads and parses their messages and runs command handlers one at a time
 * (commands are serialised by one mutex, so a handler never races another
 * handler).  Block jobs run on their own threads (one per job).
 * vc_event may be called from any thread and never blocks on a slow
 * client: each client has a bounded queue of outgoing messages, and a
 * client whose queue overflows is dropped.
 *
 * Lock order: the command mutex, then the job list lock, then a client's
 * output lock.  Job drivers' callbacks run with no control lock held.
 */
#ifndef VDISK_CONTROL_H
#define VDISK_CONTROL_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

struct vd_node;
struct vc_server;                        /* one per process */

/* A QMP error: its class ("GenericError", "CommandNotFound",
 * "DeviceNotFound", ... as QEMU names them) and a human-readable text. */
struct vc_error { char cls[32]; char desc[256]; };

/* Set *E to class CLS and the printf-formatted description (both
 * truncated to fit).  E may be NULL (nothing happens). */
void vc_error_set(struct vc_error *e, const char *cls, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

/* A command handler runs on the control thread (commands are
 * serialised).  ARGS is the request's "arguments" object (an empty object
 * when the request had none), borrowed.  Returns a new reference for
 * "return" (an empty object when there is nothing to return) or NULL with
 * *ERR set. */
typedef json_t *(*vc_cmd_fn)(struct vc_server *s, json_t *args, void *opaque,
                             struct vc_error *err);

/* Create the control socket at PATH (mode 0600, created race-free; an
 * existing path is replaced only if it is a stale socket owned by us;
 * symlinks are never followed), register the generic commands and start
 * the control thread.  PROGRAM names the process in the greeting's
 * "package" ("vdisk-nbd").  Returns 0 and *OUT, or a negative errno with
 * a message in vc_last_error(). */
int vc_server_start(const char *path, const char *program,
                    struct vc_server **out);

/* The message of the last vc_server_start that failed in this thread. */
const char *vc_last_error(void);

/* Stop the server: cancel every block job and wait for its thread (each
 * job's abort() runs), disconnect the clients, join the control thread,
 * remove the socket if the path still names our inode, free everything.
 * Registered devices are forgotten, never freed (the frontend owns them).
 * NULL is a no-op.  Must not be called from a command handler or a job. */
void vc_server_stop(struct vc_server *s);

/* Add command NAME.  Call before or after vc_server_start's return, from
 * the thread that started the server or from a command handler.  Returns
 * 0, -EEXIST if NAME is taken, -ENOMEM. */
int vc_command_register(struct vc_server *s, const char *name, vc_cmd_fn fn,
                        void *opaque);

/* Send asynchronous event NAME with DATA (a JSON object, stolen; NULL for
 * none) to every client past qmp_capabilities, timestamped now.  Any
 * thread, any lock held except the server's own; never blocks on a
 * client. */
void vc_event(struct vc_server *s, const char *name, json_t *data);

/* Named block devices ("device"/"node-name" in QEMU's arguments).  The
 * frontend registers each export's node; commands look them up.  The
 * server only borrows NODE: the caller keeps it alive until
 * vc_device_remove or vc_server_stop returned.  Returns 0, -EEXIST if
 * NAME is taken, -EINVAL for an empty NAME, -ENOMEM. */
int vc_device_add(struct vc_server *s, const char *name, struct vd_node *node);
/* Forget device NAME (no-op if unknown).  Only from a command handler
 * (commands are serialised, so no other command is using the node) or
 * from the thread that owns the server before any client could connect;
 * the frontends otherwise keep their devices until vc_server_stop. */
void vc_device_remove(struct vc_server *s, const char *name);
/* The node registered as NAME, or NULL. */
struct vd_node *vc_device_find(struct vc_server *s, const char *name);
/* True while a block job that has not concluded runs on device NAME (a
 * frontend must not remove or close that device then; vc_job_start
 * refuses a second job on it). */
bool vc_device_busy(struct vc_server *s, const char *name);

/* Block jobs, QEMU's job model (created/running/paused/ready/standby/
 * aborting/concluded/null; events JOB_STATUS_CHANGE, BLOCK_JOB_READY,
 * BLOCK_JOB_COMPLETED, BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR;
 * query-block-jobs; block-job-pause/-resume/-cancel/-complete/-set-speed/
 * -dismiss).  The runner thread calls step() repeatedly unless paused,
 * throttled to the job's speed (bytes/s, 0 = unlimited) from the bytes
 * step reports.  Callbacks run on the job's thread with no control lock
 * held (block-job-complete's complete() excepted: see below). */
struct vc_job_driver {
  const char *type;           /* QEMU's job type: "mirror", "commit", ... */
  /* One unit of work: add the bytes copied to *done, set *total (the
   * job's current estimate).  Return 0 to be called again, 1 when there
   * is nothing left to do right now (a job with complete != NULL then
   * becomes ready and keeps being stepped; one without completes), or a
   * negative errno (the job fails: BLOCK_JOB_ERROR then COMPLETED with
   * the error). */
  int (*step)(void *opaque, uint64_t *done, uint64_t *total,
              struct vc_error *err);
  /* block-job-complete once ready (a mirror pivots): 0 or negative errno
   * with err set.  Runs on the job's thread between two steps (never
   * concurrently with step) while block-job-complete waits for it: on
   * success the job concludes successfully (BLOCK_JOB_COMPLETED without
   * error) and the command returns {}; on failure the command returns
   * ERR and the job stays ready.  Accepted only in state "ready" (QEMU's
   * verb table).  NULL: the job completes when step returns 1. */
  int (*complete)(void *opaque, struct vc_error *err);
  /* The job ends without completing (cancel, error, server stop); READY
   * says whether it had been ready.  Must leave the source untouched. */
  void (*abort)(void *opaque, bool was_ready);
  /* Release OPAQUE; called once, last, whatever happened (also when
   * vc_job_start fails after taking it). */
  void (*free)(void *opaque);
};

/* Start job ID (unique among jobs not yet dismissed; NULL or "" takes
 * DEVICE, as QEMU does) of DRV on registered device DEVICE, at SPEED
 * bytes/s (0 = unlimited).  From a command handler (the usual case) or
 * the thread that owns the server.  On success the job owns OPAQUE
 * (drv->free releases it) and runs on its own thread; returns 0.  On
 * failure returns a negative errno with *ERR set (DeviceNotFound; a
 * duplicate id: GenericError) and calls drv->free(opaque) (if non-NULL).
 * auto-finalize and auto-dismiss are on, as QEMU's block jobs default
 * to: the job goes to "null" and disappears from query-block-jobs once it
 * ended, successfully or not (BLOCK_JOB_COMPLETED carries the error). */
int vc_job_start(struct vc_server *s, const char *id, const char *device,
                 const struct vc_job_driver *drv, void *opaque,
                 uint64_t speed, struct vc_error *err);

/* vc_job_start with QEMU's auto-dismiss option: false keeps the job in
 * state "concluded" after it ended until block-job-dismiss (QEMU's
 * drive-mirror/blockdev-mirror "auto-dismiss": false). */
int vc_job_start_opts(struct vc_server *s, const char *id, const char *device,
                      const struct vc_job_driver *drv, void *opaque,
                      uint64_t speed, bool auto_dismiss,
                      struct vc_error *err);

#endif
