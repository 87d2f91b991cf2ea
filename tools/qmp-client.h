/* A small QMP client (vdtool raid; meant to be shared by `vdtool qmp`):
 * connect to a control socket, read the greeting, negotiate, execute
 * commands and collect the events that arrive meanwhile.  Every read is
 * bounded by a timeout so that vdtool never hangs on a silent server. */
#ifndef VDTOOL_QMP_CLIENT_H
#define VDTOOL_QMP_CLIENT_H

#include <stddef.h>
#include <jansson.h>

struct vt_qmp;

/* Connect to the socket at PATH, read the greeting and send
 * qmp_capabilities.  Returns 0 and *OUT, or -errno with a one-line
 * message naming PATH in MSG. */
int vt_qmp_connect(const char *path, struct vt_qmp **out, char *msg,
                   size_t msglen);
void vt_qmp_close(struct vt_qmp *q);

/* Execute NAME with ARGS (stolen; NULL: none) and wait for its reply
 * (events that arrive first are queued).  Returns 0 with *RET (a new
 * reference to "return", may be NULL to ignore it), or -1 with the
 * server's error description in MSG (its class in CLS if not NULL, 32
 * bytes), or -errno for a transport failure (message in MSG). */
int vt_qmp_execute(struct vt_qmp *q, const char *name, json_t *args,
                   json_t **ret, char *cls, char *msg, size_t msglen);

/* The next event (queued or read within TIMEOUT_MS milliseconds): 1 with
 * *EV (a new reference to the whole event object), 0 on timeout, -errno
 * when the connection failed or closed (message in MSG). */
int vt_qmp_event(struct vt_qmp *q, int timeout_ms, json_t **ev, char *msg,
                 size_t msglen);

#endif
