/* vdisk-nbd — TLS through GnuTLS (NBD_OPT_STARTTLS).
 *
 * X.509: DIR/server-cert.pem and DIR/server-key.pem (the layout qemu's
 * tls-creds-x509 and nbdkit use).  DIR/ca-cert.pem, when present, is the
 * CA clients' certificates must chain to: as qemu's verify-peer default,
 * every client must then present a valid certificate for TLS client use
 * (GnuTLS verifies it during the handshake; DIR/ca-crl.pem is honoured),
 * and with an allow-list its subject DN must be on it.  Without
 * ca-cert.pem client certificates are not requested and a warning says so.
 * PSK: a file of "identity:hexkey" lines as written by psktool.
 *
 * The transport under GnuTLS is the connection's nbd_io socket functions,
 * so the handshake deadline (io->deadline) bounds the TLS handshake and
 * everything after it until transmission starts: a silent client makes
 * the pull fail with ETIMEDOUT, never an endless GNUTLS_E_AGAIN.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nbd-server/server.h"

#ifdef HAVE_GNUTLS
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

struct nbd_tls {
  gnutls_certificate_credentials_t x509;
  gnutls_psk_server_credentials_t psk;
  bool verify;                 /* client certificates required and checked */
  char **authz;                /* allowed subject DNs (RFC 4514), or NULL */
  size_t nauthz;
  int verbose;
};

/* Read the allow-list: one distinguished name per line, as certtool -i
 * prints it ("CN=alice,O=Example"); blank lines and '#' comments skipped. */
static int tls_load_authz(struct nbd_tls *t, const char *path)
{
  FILE *f = fopen(path, "re");
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  int ret = -1;

  if (!f) {
    nbd_log("%s: cannot open the TLS allow-list: %s", path, strerror(errno));
    return -1;
  }
  while ((n = getline(&line, &cap, f)) >= 0) {
    char *s = line, *e = line + n, **grown;
    while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' ||
                     e[-1] == '\t'))
      *--e = '\0';
    while (*s == ' ' || *s == '\t')
      s++;
    if (!*s || *s == '#')
      continue;
    grown = realloc(t->authz, (t->nauthz + 1) * sizeof *t->authz);
    if (!grown || !(grown[t->nauthz] = strdup(s))) {
      if (grown)
        t->authz = grown;
      nbd_log("out of memory");
      goto out;
    }
    t->authz = grown;
    t->nauthz++;
  }
  if (ferror(f)) {
    nbd_log("%s: cannot read the TLS allow-list: %s", path, strerror(errno));
    goto out;
  }
  if (t->nauthz == 0) {
    nbd_log("%s: the TLS allow-list is empty: no client could connect", path);
    goto out;
  }
  ret = 0;
out:
  free(line);
  fclose(f);
  return ret;
}

static int tls_load_x509(struct nbd_tls *t, const char *dir, int verify_peer,
                         const char *authz_file)
{
  char cert[4096], key[4096], ca[4096], crl[4096];
  struct stat st;
  bool have_ca;
  int r;

  if (snprintf(cert, sizeof cert, "%s/server-cert.pem", dir) >= (int)sizeof cert ||
      snprintf(key, sizeof key, "%s/server-key.pem", dir) >= (int)sizeof key ||
      snprintf(ca, sizeof ca, "%s/ca-cert.pem", dir) >= (int)sizeof ca ||
      snprintf(crl, sizeof crl, "%s/ca-crl.pem", dir) >= (int)sizeof crl) {
    nbd_log("%s: path too long", dir);
    return -1;
  }
  r = gnutls_certificate_allocate_credentials(&t->x509);
  if (r == 0)
    r = gnutls_certificate_set_x509_key_file(t->x509, cert, key,
                                             GNUTLS_X509_FMT_PEM);
  if (r < 0) {
    nbd_log("%s: cannot load server-cert.pem/server-key.pem: %s", dir,
            gnutls_strerror(r));
    return -1;
  }

  have_ca = stat(ca, &st) == 0;
  if (!have_ca && errno != ENOENT) {
    nbd_log("%s: %s", ca, strerror(errno));
    return -1;
  }
  if (verify_peer == 0 && authz_file) {
    nbd_log("--tls-authz needs client certificates verified: drop "
            "--tls-verify-peer=no");
    return -1;
  }
  if (!have_ca && (verify_peer == 1 || authz_file)) {
    nbd_log("%s: no such file: it is needed to verify client certificates "
            "(--tls-verify-peer, --tls-authz)", ca);
    return -1;
  }
  t->verify = have_ca && verify_peer != 0;
  if (!t->verify) {
    if (!have_ca)
      nbd_log("%s has no ca-cert.pem: client certificates are not checked, "
              "any client that completes TLS is served", dir);
    return 0;
  }

  r = gnutls_certificate_set_x509_trust_file(t->x509, ca, GNUTLS_X509_FMT_PEM);
  if (r <= 0) {
    nbd_log("%s: no usable CA certificate: %s", ca,
            r < 0 ? gnutls_strerror(r) : "the file holds none");
    return -1;
  }
  if (stat(crl, &st) == 0) {
    r = gnutls_certificate_set_x509_crl_file(t->x509, crl,
                                             GNUTLS_X509_FMT_PEM);
    if (r < 0) {
      nbd_log("%s: cannot load the revocation list: %s", crl,
              gnutls_strerror(r));
      return -1;
    }
  }
  if (authz_file && tls_load_authz(t, authz_file) < 0)
    return -1;
  return 0;
}

int nbd_tls_load(const char *x509_dir, const char *psk_file, int verify_peer,
                 const char *authz_file, int verbose, struct nbd_tls **out)
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
  t->verbose = verbose;
  if (x509_dir) {
    if (tls_load_x509(t, x509_dir, verify_peer, authz_file) < 0) {
      nbd_tls_free(t);
      return -1;
    }
  } else {
    FILE *f;
    if (verify_peer == 1 || authz_file) {
      nbd_log("--tls-verify-peer and --tls-authz need X.509 credentials "
              "(--tls-creds), not --tls-psk");
      nbd_tls_free(t);
      return -1;
    }
    f = fopen(psk_file, "re");
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
  size_t i;
  if (!t)
    return;
  if (t->x509)
    gnutls_certificate_free_credentials(t->x509);
  if (t->psk)
    gnutls_psk_free_server_credentials(t->psk);
  for (i = 0; i < t->nauthz; i++)
    free(t->authz[i]);
  free(t->authz);
  free(t);
  gnutls_global_deinit();
}

/* ---- transport: the connection's socket, under its deadline ---- */

static ssize_t tls_pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
  return nbd_io_sock_recv(p, buf, len);
}

static ssize_t tls_push(gnutls_transport_ptr_t p, const void *buf, size_t len)
{
  return nbd_io_sock_send(p, buf, len);
}

static int tls_pull_timeout(gnutls_transport_ptr_t p, unsigned int ms)
{
  return nbd_io_sock_wait(p, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int)ms);
}

/* ---- client certificates ---- */

/* Called by GnuTLS once the client's certificate chain arrived: GnuTLS
 * verifies it against the CA (signature, validity, revocation, key
 * purpose TLS client); then the subject must be on the allow-list. */
static int tls_verify_client(gnutls_session_t s)
{
  struct nbd_tls *t = gnutls_session_get_ptr(s);
  gnutls_typed_vdata_st purpose = {
    .type = GNUTLS_DT_KEY_PURPOSE_OID,
    .data = (unsigned char *)GNUTLS_KP_TLS_WWW_CLIENT,
  };
  const gnutls_datum_t *chain;
  unsigned int status = 0, n = 0;
  gnutls_x509_crt_t crt = NULL;
  gnutls_datum_t dn = { NULL, 0 };
  int r, ret = GNUTLS_E_CERTIFICATE_ERROR;
  size_t i;

  r = gnutls_certificate_verify_peers(s, &purpose, 1, &status);
  if (r < 0) {
    if (t->verbose)
      nbd_log("TLS: client certificate refused: %s", gnutls_strerror(r));
    return GNUTLS_E_CERTIFICATE_ERROR;
  }
  if (status) {
    gnutls_datum_t why = { NULL, 0 };
    if (t->verbose) {
      gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509,
                                                   &why, 0);
      nbd_log("TLS: client certificate refused: %s",
              why.data ? (char *)why.data : "not trusted");
    }
    gnutls_free(why.data);
    return GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR;
  }
  if (!t->nauthz)
    return 0;

  chain = gnutls_certificate_get_peers(s, &n);
  if (!chain || n == 0 || gnutls_x509_crt_init(&crt) < 0)
    return GNUTLS_E_CERTIFICATE_ERROR;
  if (gnutls_x509_crt_import(crt, &chain[0], GNUTLS_X509_FMT_DER) < 0 ||
      gnutls_x509_crt_get_dn3(crt, &dn, 0) < 0)
    goto out;
  for (i = 0; i < t->nauthz; i++)
    if (strlen(t->authz[i]) == dn.size &&
        memcmp(t->authz[i], dn.data, dn.size) == 0) {
      ret = 0;
      break;
    }
  if (ret && t->verbose)
    nbd_log("TLS: client certificate %.*s is not in the allow-list",
            (int)(dn.size > 512 ? 512 : dn.size), (const char *)dn.data);
out:
  gnutls_free(dn.data);
  gnutls_x509_crt_deinit(crt);
  return ret;
}

/* ---- records ---- */

static ssize_t tls_recv(struct nbd_io *io, void *buf, size_t len)
{
  for (;;) {
    ssize_t r = gnutls_record_recv(io->tls, buf, len);
    if (r >= 0)
      return r;
    /* The pull never asks for a retry; these come from GnuTLS's own
     * state machine and make progress, but never beyond the deadline. */
    if ((r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN) &&
        !nbd_io_expired(io))
      continue;
    if (r == GNUTLS_E_PREMATURE_TERMINATION)
      return 0;
    if (nbd_verbose)
      nbd_log("TLS receive: %s", gnutls_strerror((int)r));
    return -1;
  }
}

static int tls_send_all(struct nbd_io *io, const char *p, size_t len)
{
  while (len) {
    ssize_t r = gnutls_record_send(io->tls, p, len);
    if ((r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN) &&
        !nbd_io_expired(io))
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
    if (tls_send_all(io, iov[i].iov_base, iov[i].iov_len) < 0) {
      gnutls_record_uncork(s, 0);
      return -1;
    }
  for (;;) {
    int r = gnutls_record_uncork(s, GNUTLS_RECORD_WAIT);
    if (r >= 0)
      return 0;
    if ((r != GNUTLS_E_INTERRUPTED && r != GNUTLS_E_AGAIN) ||
        nbd_io_expired(io))
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
    if (t->verify) {
      gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
      gnutls_session_set_ptr(s, t);
      gnutls_session_set_verify_function(s, tls_verify_client);
    } else
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
  gnutls_transport_set_ptr(s, io);
  gnutls_transport_set_pull_function(s, tls_pull);
  gnutls_transport_set_pull_timeout_function(s, tls_pull_timeout);
  gnutls_transport_set_push_function(s, tls_push);
  do
    r = gnutls_handshake(s);
  while (r < 0 && !gnutls_error_is_fatal(r) && !nbd_io_expired(io));
  if (r < 0) {
    gnutls_deinit(s);
    if (r == GNUTLS_E_NO_CERTIFICATE_FOUND ||
        r == GNUTLS_E_CERTIFICATE_REQUIRED) {
      if (verbose)
        nbd_log("TLS: no client certificate: client refused");
      return -1;
    }
    goto fail_msg;
  }
  io->tls = s;
  io->recv = tls_recv;
  io->sendv = tls_sendv;
  if (verbose)
    nbd_log("TLS session started%s", t->verify ? " (client certificate "
                                                 "verified)" : "");
  return 0;

fail_msg:
  if (verbose)
    nbd_log("TLS handshake failed: %s", nbd_io_expired(io)
            ? "handshake time limit reached" : gnutls_strerror(r));
  return -1;
}

void nbd_tls_close(struct nbd_io *io)
{
  if (!io->tls)
    return;
  /* Never wait long for a client to take our close_notify. */
  if (!nbd_io_expired(io)) {
    io->deadline = nbd_now_ms() + 1000;
    gnutls_bye(io->tls, GNUTLS_SHUT_WR);
  }
  gnutls_deinit(io->tls);
  io->tls = NULL;
}

#else /* !HAVE_GNUTLS */

int nbd_tls_load(const char *x509_dir, const char *psk_file, int verify_peer,
                 const char *authz_file, int verbose, struct nbd_tls **out)
{
  (void)x509_dir;
  (void)psk_file;
  (void)verify_peer;
  (void)authz_file;
  (void)verbose;
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
