/* vdisk-nbd — TLS through GnuTLS (NBD_OPT_STARTTLS).
 *
 * X.509: DIR/server-cert.pem and DIR/server-key.pem (the layout qemu's
 * tls-creds-x509 and nbdkit use; DIR/ca-cert.pem is the clients' CA and
 * is not needed to serve).  PSK: a file of "identity:hexkey" lines as
 * written by psktool.  Client certificates are not requested.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

#ifdef HAVE_GNUTLS
#include <gnutls/gnutls.h>

struct nbd_tls {
  gnutls_certificate_credentials_t x509;
  gnutls_psk_server_credentials_t psk;
};

int nbd_tls_load(const char *x509_dir, const char *psk_file,
                 struct nbd_tls **out)
{
  struct nbd_tls *t = calloc(1, sizeof *t);
  int r;

  if (!t) {
    nbd_log("out of memory");
    return -1;
  }
  r = gnutls_global_init();
  if (r < 0) {
    nbd_log("GnuTLS: %s", gnutls_strerror(r));
    free(t);
    return -1;
  }
  if (x509_dir) {
    char cert[4096], key[4096];
    snprintf(cert, sizeof cert, "%s/server-cert.pem", x509_dir);
    snprintf(key, sizeof key, "%s/server-key.pem", x509_dir);
    r = gnutls_certificate_allocate_credentials(&t->x509);
    if (r == 0)
      r = gnutls_certificate_set_x509_key_file(t->x509, cert, key,
                                               GNUTLS_X509_FMT_PEM);
    if (r < 0) {
      nbd_log("%s: cannot load server-cert.pem/server-key.pem: %s",
              x509_dir, gnutls_strerror(r));
      nbd_tls_free(t);
      return -1;
    }
  } else {
    FILE *f = fopen(psk_file, "r");
    if (!f) {
      nbd_log("%s: cannot open PSK file: %s", psk_file, strerror(errno));
      nbd_tls_free(t);
      return -1;
    }
    fclose(f);
    r = gnutls_psk_allocate_server_credentials(&t->psk);
    if (r == 0)
      r = gnutls_psk_set_server_credentials_file(t->psk, psk_file);
    if (r < 0) {
      nbd_log("%s: cannot load PSK file: %s", psk_file, gnutls_strerror(r));
      nbd_tls_free(t);
      return -1;
    }
  }
  *out = t;
  return 0;
}

void nbd_tls_free(struct nbd_tls *t)
{
  if (!t)
    return;
  if (t->x509)
    gnutls_certificate_free_credentials(t->x509);
  if (t->psk)
    gnutls_psk_free_server_credentials(t->psk);
  free(t);
  gnutls_global_deinit();
}

static ssize_t tls_recv(struct nbd_io *io, void *buf, size_t len)
{
  for (;;) {
    ssize_t r = gnutls_record_recv(io->tls, buf, len);
    if (r >= 0)
      return r;
    if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN)
      continue;
    if (r == GNUTLS_E_PREMATURE_TERMINATION)
      return 0;
    if (nbd_verbose)
      nbd_log("TLS receive: %s", gnutls_strerror((int)r));
    return -1;
  }
}

static int tls_send_all(gnutls_session_t s, const char *p, size_t len)
{
  while (len) {
    ssize_t r = gnutls_record_send(s, p, len);
    if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN)
      continue;
    if (r < 0)
      return -1;
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

static int tls_sendv(struct nbd_io *io, const struct iovec *iov, int n)
{
  gnutls_session_t s = io->tls;
  int i;

  gnutls_record_cork(s);
  for (i = 0; i < n; i++)
    if (tls_send_all(s, iov[i].iov_base, iov[i].iov_len) < 0) {
      gnutls_record_uncork(s, 0);
      return -1;
    }
  for (;;) {
    int r = gnutls_record_uncork(s, GNUTLS_RECORD_WAIT);
    if (r >= 0)
      return 0;
    if (r != GNUTLS_E_INTERRUPTED && r != GNUTLS_E_AGAIN)
      return -1;
  }
}

int nbd_tls_upgrade(struct nbd_tls *t, struct nbd_io *io, int verbose)
{
  gnutls_session_t s;
  int r;

  r = gnutls_init(&s, GNUTLS_SERVER);
  if (r < 0)
    goto fail_msg;
  if (t->x509) {
    r = gnutls_set_default_priority(s);
    if (r == 0)
      r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, t->x509);
    gnutls_certificate_server_set_request(s, GNUTLS_CERT_IGNORE);
  } else {
    r = gnutls_priority_set_direct(s, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK",
                                   NULL);
    if (r == 0)
      r = gnutls_credentials_set(s, GNUTLS_CRD_PSK, t->psk);
  }
  if (r < 0) {
    gnutls_deinit(s);
    goto fail_msg;
  }
  gnutls_transport_set_int(s, io->fd);
  gnutls_handshake_set_timeout(s, GNUTLS_DEFAULT_HANDSHAKE_TIMEOUT);
  do
    r = gnutls_handshake(s);
  while (r < 0 && !gnutls_error_is_fatal(r));
  if (r < 0) {
    gnutls_deinit(s);
    goto fail_msg;
  }
  io->tls = s;
  io->recv = tls_recv;
  io->sendv = tls_sendv;
  if (verbose)
    nbd_log("TLS session started");
  return 0;

fail_msg:
  if (verbose)
    nbd_log("TLS handshake failed: %s", gnutls_strerror(r));
  return -1;
}

void nbd_tls_close(struct nbd_io *io)
{
  if (!io->tls)
    return;
  gnutls_bye(io->tls, GNUTLS_SHUT_WR);
  gnutls_deinit(io->tls);
  io->tls = NULL;
}

#else /* !HAVE_GNUTLS */

int nbd_tls_load(const char *x509_dir, const char *psk_file,
                 struct nbd_tls **out)
{
  (void)x509_dir;
  (void)psk_file;
  (void)out;
  nbd_log("TLS: this vdisk-nbd was built without GnuTLS");
  return -1;
}

void nbd_tls_free(struct nbd_tls *t)
{
  (void)t;
}

int nbd_tls_upgrade(struct nbd_tls *t, struct nbd_io *io, int verbose)
{
  (void)t;
  (void)io;
  (void)verbose;
  return -1;
}

void nbd_tls_close(struct nbd_io *io)
{
  (void)io;
}

#endif
