/* vdisk-nbd — internal interfaces between the server's modules.
 *
 *   main.c       options, listening sockets, accept loop, signals, shutdown
 *   negotiate.c  option haggling (fixed newstyle) over a struct nbd_io
 *   conn.c       transmission phase: reader per connection, worker pool
 *   tls.c        GnuTLS credentials and the STARTTLS upgrade
 *   proto.c      wire encoding, decoding and request validation
 *   exports.c    the export registry, changed while serving (exports.h)
 *   export-node.c  an export's fields from its node
 *   control.c    block-export-add/-del, query-block-exports (QMP)
 *
 * Lock order: nbd_conn.lock and nbd_conn.wlock are never held together;
 * the pool lock is taken with neither held.
 */
#ifndef NBD_SERVER_H
#define NBD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct vd_node;

#include "nbd-server/exports.h"

/* Metadata contexts selected by NBD_OPT_SET_META_CONTEXT: base:allocation,
 * and the export's qemu:allocation-depth (alloc_depth) and
 * qemu:dirty-bitmap:NAME contexts (bitmaps, looked up on the node at every
 * BLOCK_STATUS, so a bitmap removed meanwhile gives an error reply, never
 * another bitmap's bits). */
struct nbd_meta_sel {
  bool alloc;          /* base:allocation */
  bool depth;          /* qemu:allocation-depth */
  uint64_t bitmaps;    /* bit i: qemu:dirty-bitmap:exp->bitmaps[i] */
};

static inline bool nbd_meta_sel_any(const struct nbd_meta_sel *m)
{
  return m->alloc || m->depth || m->bitmaps;
}

enum nbd_tls_mode { NBD_TLS_OFF, NBD_TLS_ON, NBD_TLS_REQUIRE };

struct nbd_tls;

/* Server-wide configuration, read-only once serving (the export set
 * changes inside its registry). */
/* qemu-nbd's --detect-zeroes. */
enum nbd_detect_zeroes { NBD_DZ_OFF, NBD_DZ_ON, NBD_DZ_UNMAP };

struct nbd_server {
  struct nbd_exports *exports;
  enum nbd_tls_mode tls;
  struct nbd_tls *tls_creds;   /* NULL unless tls != OFF */
  int verbose;
  /* qemu-nbd's --discard=ignore: TRIM does nothing and write-zeroes
   * never punches holes. */
  bool discard_ignore;
  enum nbd_detect_zeroes detect_zeroes;
  bool writethrough;           /* --cache=writethrough/directsync: FUA always */
};

/* Options a client may send in one negotiation, STARTTLS and the final
 * GO included (nbdkit's limit); the next one drops the client. */
#define NBD_MAX_OPTIONS 32

/* A connection's byte stream: a socket, possibly upgraded to TLS.  recv
 * returns the number of bytes read (> 0), 0 at end of stream, -1 on
 * error.  sendv writes everything or returns -1.  One thread may receive
 * while another sends (GnuTLS allows that too).  While DEADLINE is set
 * (CLOCK_MONOTONIC milliseconds, see nbd_now_ms), no socket operation
 * waits beyond it: they fail with errno ETIMEDOUT instead.  It is set
 * only while one thread negotiates. */
struct nbd_io {
  ssize_t (*recv)(struct nbd_io *io, void *buf, size_t len);
  int (*sendv)(struct nbd_io *io, const struct iovec *iov, int n);
  int fd;
  void *tls;                   /* gnutls_session_t once upgraded */
  int64_t deadline;            /* 0: none */
};

/* Plain-socket transport on FD, without a deadline. */
void nbd_io_init_socket(struct nbd_io *io, int fd);
/* The monotonic clock in milliseconds. */
int64_t nbd_now_ms(void);
/* True when IO has a deadline and it has passed. */
bool nbd_io_expired(const struct nbd_io *io);
/* IO's socket itself, under the deadline (the transport under TLS):
 * recv and send move at least one byte, or return 0 at end of stream
 * (recv), or -1 with errno (ETIMEDOUT past the deadline).  wait returns 1
 * once data can be read, 0 after MS milliseconds (-1: no limit of its
 * own) or at the deadline, -1 on error. */
ssize_t nbd_io_sock_recv(struct nbd_io *io, void *buf, size_t len);
ssize_t nbd_io_sock_send(struct nbd_io *io, const void *buf, size_t len);
int nbd_io_sock_wait(struct nbd_io *io, int ms);
/* Read exactly LEN bytes: 0, or -1 at end of stream / on error. */
int nbd_io_recv_full(struct nbd_io *io, void *buf, size_t len);
/* Read and drop LEN bytes in bounded pieces: 0 or -1. */
int nbd_io_discard(struct nbd_io *io, uint64_t len);
int nbd_io_send(struct nbd_io *io, const void *buf, size_t len);

/* Result of a successful negotiation. */
struct nbd_session {
  struct nbd_export *exp;      /* held through USER until the client left */
  struct nbd_export_user *user;
  uint16_t eflags;             /* transmission flags sent */
  bool structured;
  struct nbd_meta_sel meta;
};

/* Option haggling on IO.  Returns 1 when the client entered transmission
 * (*S filled: the caller serves it, then nbd_export_detach(srv->exports,
 * s->exp, s->user)), 0 when it ended the session politely (ABORT), -1 when the
 * connection must be dropped (error, end of stream, protocol violation). */
int nbd_negotiate(const struct nbd_server *srv, struct nbd_io *io,
                  struct nbd_session *s);

/* Transmission flags for EXP given the negotiated structured replies. */
uint16_t nbd_export_flags(const struct nbd_export *exp, bool structured);

/* Worker pool shared by all connections; readers poll their socket up
 * to POLL_MAX_NS before sleeping (conn.c, rd_fill). */
int nbd_pool_start(unsigned nthreads, unsigned poll_max_ns);
void nbd_pool_stop(void);

/* Serve requests until the client disconnects, the transport fails or the
 * server shuts down; returns when every request has been answered. */
void nbd_conn_serve(const struct nbd_server *srv, struct nbd_io *io,
                    const struct nbd_session *s);

/* TLS (tls.c).  Without GnuTLS these fail with a message.
 * nbd_tls_load reads X.509 credentials from X509_DIR or PSKs from
 * PSK_FILE (exactly one is non-NULL).  VERIFY_PEER: 1 require a valid
 * client certificate (X509_DIR/ca-cert.pem must exist), 0 never ask for
 * one, -1 (default) require one when ca-cert.pem exists.  AUTHZ_FILE,
 * if not NULL, lists the client subject DNs allowed (implies
 * verification).  VERBOSE: log refused clients.  0, or -1 after one
 * line on stderr naming the file or option at fault. */
int nbd_tls_load(const char *x509_dir, const char *psk_file, int verify_peer,
                 const char *authz_file, int verbose, struct nbd_tls **out);
void nbd_tls_free(struct nbd_tls *t);
/* Run the server side of a TLS handshake on IO and switch IO to it.
 * Returns 0 or -1 (the connection must be dropped). */
int nbd_tls_upgrade(struct nbd_tls *t, struct nbd_io *io, int verbose);
/* Shut down and free IO's TLS session, if any. */
void nbd_tls_close(struct nbd_io *io);

/* Node-backed exports (export-node.c). */
struct nbd_export_args {
  const char *id, *name, *node_name;
  const char *description;     /* NULL: "FORMAT image, SIZE" */
  const char *format;          /* for that default; NULL: "vdisk node" */
  struct vd_node *node;
  bool read_only;              /* also when NODE is read-only */
  bool owns_node;              /* the release frees NODE */
  const char *const *bitmaps;  /* NULL-terminated, or NULL */
  bool alloc_depth;
  bool direct;                 /* opened O_DIRECT: advertise its alignment */
};
/* A new unlisted export of A->node (strings copied), whose release
 * (after nbd_exports_add, once its last reference went) frees it, frees
 * the node if A->owns_node, counts a failed final flush in
 * nbd_export_release_errors and calls nbd_control_export_deleted.
 * NULL when out of memory. */
struct nbd_export *nbd_export_new(const struct nbd_export_args *a);
/* Free an export nbd_export_new made that was never listed (never its
 * node). */
void nbd_export_discard(struct nbd_export *e);
/* Releases whose node failed to close (its final flush): the exit status
 * turns 1. */
extern unsigned nbd_export_release_errors;

/* Control socket commands (control.c): register block-export-add,
 * block-export-del and query-block-exports of SRV on VC.  0 or a negative
 * errno. */
struct vc_server;
int nbd_control_start(struct vc_server *vc, struct nbd_server *srv);
/* Stop emitting events (before vc_server_stop). */
void nbd_control_stop(void);
/* BLOCK_EXPORT_DELETED for ID, if the control socket runs.  Any thread. */
void nbd_control_export_deleted(const char *id);

/* Logging: messages go to stderr prefixed with the program name. */
void nbd_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int nbd_verbose;

#endif /* NBD_SERVER_H */
