/* vdisk-nbd — fixed newstyle option haggling.
 *
 * Every option is read whole (at most NBD_MAX_OPTION_LEN bytes; longer
 * ones are skipped in bounded pieces and refused), so the stream never
 * loses sync: a malformed option gets NBD_REP_ERR_INVALID, an unknown one
 * NBD_REP_ERR_UNSUP, and only a bad magic, an unknown client flag, an
 * unusable NBD_OPT_EXPORT_NAME, more than NBD_MAX_OPTIONS options or a
 * transport failure drop the client.  The time a client may spend here is
 * bounded by the caller through io->deadline (main.c, --handshake-limit).
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "nbd-server/proto.h"
#include "nbd-server/server.h"

struct nbd_neg {
  const struct nbd_server *srv;
  struct nbd_io *io;
  bool no_zeroes;
  bool structured;
  struct nbd_meta_sel meta;            /* contexts set ... */
  struct nbd_export *meta_exp;         /* ... for this export
                                          (a reference, so that its address
                                          cannot be reused meanwhile) */
  uint8_t *data;                       /* current option payload */
};

uint16_t nbd_export_flags(const struct nbd_export *exp, bool structured)
{
  uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE;

  if (exp->read_only)
    f |= NBD_FLAG_READ_ONLY;
  else
    f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
         NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
  if (structured)
    f |= NBD_FLAG_SEND_DF;
  if (exp->multi_conn)
    f |= NBD_FLAG_CAN_MULTI_CONN;
  return f;
}

static int neg_reply(struct nbd_neg *n, uint32_t opt, uint32_t type,
                     const void *data, uint32_t len)
{
  uint8_t hdr[NBD_REP_HDR_LEN];
  struct iovec iov[2] = {
    { hdr, nbd_encode_opt_reply(hdr, opt, type, len) },
    { (void *)data, len },
  };
  return n->io->sendv(n->io, iov, len ? 2 : 1);
}

/* An error reply carrying a message for the human at the client. */
static int neg_error(struct nbd_neg *n, uint32_t opt, uint32_t type,
                     const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));
static int neg_error(struct nbd_neg *n, uint32_t opt, uint32_t type,
                     const char *fmt, ...)
{
  char msg[256];
  va_list ap;
  int len;

  va_start(ap, fmt);
  len = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (len < 0)
    len = 0;
  if ((size_t)len >= sizeof msg)
    len = sizeof msg - 1;
  if (n->srv->verbose)
    nbd_log("option %s: %s", nbd_opt_name(opt), msg);
  return neg_reply(n, opt, type, msg, (uint32_t)len);
}

/* The export called NAME (LEN bytes), with a reference, or NULL. */
static struct nbd_export *find_export(const struct nbd_server *srv,
                                      const char *name, uint32_t len)
{
  return nbd_exports_get(srv->exports, name, len);
}

/* Attach the connection to EXP (the client chose it) and fill *S.
 * Returns 0, or -1 if EXP was deleted meanwhile (or memory is short). */
static int choose_export(struct nbd_neg *n, struct nbd_export *exp,
                         uint16_t eflags, struct nbd_session *s)
{
  struct nbd_export_user *u = nbd_export_attach(n->srv->exports, exp,
                                                n->io->fd);
  if (!u)
    return -1;
  s->exp = exp;
  s->user = u;
  s->eflags = eflags;
  s->structured = n->structured;
  if (n->meta_exp == exp)
    s->meta = n->meta;
  else
    s->meta = (struct nbd_meta_sel){ 0 };
  return 0;
}

static int send_info(struct nbd_neg *n, uint32_t opt, uint16_t type,
                     const char *s)
{
  uint8_t buf[2 + NBD_MAX_STRING];
  size_t len = strlen(s);
  if (len > NBD_MAX_STRING)
    len = NBD_MAX_STRING;
  vd_put_be16(buf, type);
  memcpy(buf + 2, s, len);
  return neg_reply(n, opt, NBD_REP_INFO, buf, (uint32_t)(2 + len));
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Returns 1 if GO succeeded, 0 to keep
 * haggling, -1 on transport failure. */
static int opt_info_exp(struct nbd_neg *n, uint32_t opt,
                        const struct nbd_opt_info *oi,
                        struct nbd_export *exp, struct nbd_session *s);

static int opt_info(struct nbd_neg *n, uint32_t opt, uint32_t len,
                    struct nbd_session *s)
{
  struct nbd_opt_info oi;
  struct nbd_export *exp;
  int r;

  if (nbd_parse_opt_info(n->data, len, &oi) < 0)
    return neg_error(n, opt, NBD_REP_ERR_INVALID, "malformed request");
  exp = find_export(n->srv, oi.name, oi.name_len);
  if (!exp)
    return neg_error(n, opt, NBD_REP_ERR_UNKNOWN, "no export named '%.*s'",
                     (int)oi.name_len, oi.name);
  r = opt_info_exp(n, opt, &oi, exp, s);
  nbd_export_put(n->srv->exports, exp);   /* a chosen one is held by s */
  return r;
}

/* opt_info on the export found, EXP. */
static int opt_info_exp(struct nbd_neg *n, uint32_t opt,
                        const struct nbd_opt_info *oi,
                        struct nbd_export *exp, struct nbd_session *s)
{
  uint8_t buf[16];
  bool want_name = false, want_desc = false;
  uint16_t i;

  for (i = 0; i < oi->nreqs; i++) {
    uint16_t t = vd_get_be16(oi->reqs + 2 * i);
    if (t == NBD_INFO_NAME)
      want_name = true;
    else if (t == NBD_INFO_DESCRIPTION)
      want_desc = true;
  }

  uint16_t eflags = nbd_export_flags(exp, n->structured);
  /* Attached before the final ACK, so that a client told it may go is
   * counted as a user by the time it is told (block-export-del's safe
   * mode sees it). */
  if (opt == NBD_OPT_GO && choose_export(n, exp, eflags, s) < 0)
    return neg_error(n, opt, NBD_REP_ERR_UNKNOWN, "export '%s' was removed",
                     exp->name);
  if (neg_reply(n, opt, NBD_REP_INFO, buf,
                (uint32_t)nbd_encode_info_export(buf, exp->size, eflags)) < 0)
    goto fail;
  /* Always sent: clients that did not ask must ignore it, and it tells
   * the others the engine's alignment and our payload limit. */
  if (neg_reply(n, opt, NBD_REP_INFO, buf,
                (uint32_t)nbd_encode_info_block_size(buf, exp->min_block,
                                                     exp->pref_block,
                                                     exp->max_block)) < 0)
    goto fail;
  if (want_name && send_info(n, opt, NBD_INFO_NAME, exp->name) < 0)
    goto fail;
  if (want_desc && exp->description &&
      send_info(n, opt, NBD_INFO_DESCRIPTION, exp->description) < 0)
    goto fail;
  if (neg_reply(n, opt, NBD_REP_ACK, NULL, 0) < 0)
    goto fail;
  return opt == NBD_OPT_GO ? 1 : 0;

fail:
  if (opt == NBD_OPT_GO)
    nbd_export_detach(n->srv->exports, exp, s->user);
  return -1;
}

/* How many of EXP's bitmaps are offered (block-export-add and -B refuse
 * more; the cap keeps a selection in one word). */
static unsigned export_nbitmaps(const struct nbd_export *exp)
{
  unsigned nb = 0;
  while (exp->bitmaps && exp->bitmaps[nb] && nb < NBD_MAX_EXPORT_BITMAPS)
    nb++;
  return nb;
}

/* One NBD_REP_META_CONTEXT: ID (0 when listing), then PREFIX NAME. */
static int meta_reply(struct nbd_neg *n, uint32_t opt, uint32_t id,
                      const char *prefix, const char *name)
{
  uint8_t buf[4 + NBD_MAX_STRING];
  size_t plen = strlen(prefix), nlen = strlen(name);

  if (plen + nlen > NBD_MAX_STRING)   /* refused when the export is made */
    return 0;
  vd_put_be32(buf, id);
  memcpy(buf + 4, prefix, plen);
  memcpy(buf + 4 + plen, name, nlen);
  return neg_reply(n, opt, NBD_REP_META_CONTEXT, buf,
                   (uint32_t)(4 + plen + nlen));
}

/* What the queries of M select on EXP. */
static struct nbd_meta_sel meta_select(const struct nbd_opt_meta *m,
                                       const struct nbd_export *exp,
                                       bool list)
{
  struct nbd_meta_sel sel = { 0 };
  unsigned nb = export_nbitmaps(exp), i;
  uint64_t all = nb == 64 ? ~UINT64_C(0) : (UINT64_C(1) << nb) - 1;
  uint32_t pos = 0, qlen, leaf_len = 0;
  const char *q, *leaf = NULL;

  if (list && m->nqueries == 0) {
    sel.alloc = true;
    sel.depth = exp->alloc_depth;
    sel.bitmaps = all;
  }
  while (nbd_meta_next_query(m, &pos, &q, &qlen)) {
    switch (nbd_meta_query_match(q, qlen, list, &leaf, &leaf_len)) {
    case NBD_META_ALLOC:
      sel.alloc = true;
      break;
    case NBD_META_DEPTH:
      sel.depth |= exp->alloc_depth;
      break;
    case NBD_META_QEMU_ALL:
      sel.depth |= exp->alloc_depth;
      sel.bitmaps |= all;
      break;
    case NBD_META_BITMAPS_ALL:
      sel.bitmaps |= all;
      break;
    case NBD_META_BITMAP:
      for (i = 0; i < nb; i++)
        if (strlen(exp->bitmaps[i]) == leaf_len &&
            memcmp(exp->bitmaps[i], leaf, leaf_len) == 0)
          sel.bitmaps |= UINT64_C(1) << i;
      break;
    case NBD_META_NONE:
      break;
    }
  }
  return sel;
}

/* The replies for SEL on EXP, then the ACK.  0 or -1. */
static int meta_replies(struct nbd_neg *n, uint32_t opt, bool list,
                        const struct nbd_export *exp,
                        const struct nbd_meta_sel *sel)
{
  unsigned nb = export_nbitmaps(exp), i;

  if (sel->alloc &&
      meta_reply(n, opt, list ? 0 : NBD_META_ALLOC_ID, NBD_META_ALLOC_NAME,
                 "") < 0)
    return -1;
  if (sel->depth &&
      meta_reply(n, opt, list ? 0 : NBD_META_DEPTH_ID, NBD_META_DEPTH_NAME,
                 "") < 0)
    return -1;
  for (i = 0; i < nb; i++)
    if ((sel->bitmaps >> i & 1) &&
        meta_reply(n, opt, list ? 0 : NBD_META_BITMAP_ID0 + i,
                   NBD_META_BITMAP_PREFIX, exp->bitmaps[i]) < 0)
      return -1;
  return neg_reply(n, opt, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: base:allocation
 * always, qemu:allocation-depth and qemu:dirty-bitmap:NAME when the export
 * offers them (qemu-nbd's names and query rules, see proto.h).  Each
 * context is answered once however many queries name it; a SET replaces
 * the whole selection. */
static int opt_meta(struct nbd_neg *n, uint32_t opt, uint32_t len)
{
  struct nbd_opt_meta m;
  struct nbd_export *exp;
  struct nbd_meta_sel sel;
  bool list = opt == NBD_OPT_LIST_META_CONTEXT;
  int r;

  if (!n->structured)
    return neg_error(n, opt, NBD_REP_ERR_INVALID,
                     "structured replies not negotiated");
  if (nbd_parse_opt_meta(n->data, len, &m) < 0)
    return neg_error(n, opt, NBD_REP_ERR_INVALID, "malformed request");
  exp = find_export(n->srv, m.name, m.name_len);
  if (!exp)
    return neg_error(n, opt, NBD_REP_ERR_UNKNOWN, "no export named '%.*s'",
                     (int)m.name_len, m.name);

  sel = meta_select(&m, exp, list);
  r = meta_replies(n, opt, list, exp, &sel);   /* EXP still referenced */
  if (!list) {
    n->meta = sel;
    nbd_export_put(n->srv->exports, n->meta_exp);
    n->meta_exp = exp;                /* keeps the reference */
  } else
    nbd_export_put(n->srv->exports, exp);
  return r;
}

static int opt_list(struct nbd_neg *n, uint32_t len)
{
  struct nbd_export **v;
  long nv;
  size_t i;
  int r = 0;
  uint8_t buf[4 + 2 * NBD_MAX_STRING];

  if (len != 0)
    return neg_error(n, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                     "NBD_OPT_LIST takes no data");
  /* A snapshot of the listed exports, held while we send (never under
   * the registry's lock: a slow client must not stall other lookups). */
  nv = nbd_exports_list(n->srv->exports, false, &v);
  if (nv < 0)
    return -1;                        /* out of memory */
  /* Name, then the description as the human-readable details. */
  for (i = 0; i < (size_t)nv && r == 0; i++) {
    const struct nbd_export *e = v[i];
    size_t nlen = strlen(e->name);
    size_t dlen = e->description ? strlen(e->description) : 0;
    if (nlen > NBD_MAX_STRING)
      nlen = NBD_MAX_STRING;
    if (dlen > NBD_MAX_STRING)
      dlen = NBD_MAX_STRING;
    vd_put_be32(buf, (uint32_t)nlen);
    memcpy(buf + 4, e->name, nlen);
    if (dlen)
      memcpy(buf + 4 + nlen, e->description, dlen);
    r = neg_reply(n, NBD_OPT_LIST, NBD_REP_SERVER, buf,
                  (uint32_t)(4 + nlen + dlen));
  }
  nbd_exports_put_all(n->srv->exports, v, (size_t)nv);
  if (r < 0)
    return -1;
  return neg_reply(n, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_EXPORT_NAME: no error reply is possible. */
static int opt_export_name(struct nbd_neg *n, uint32_t len,
                           struct nbd_session *s)
{
  static const uint8_t zeroes[124];
  struct nbd_export *exp;
  uint8_t buf[10];
  uint16_t eflags;
  int r;

  if (!nbd_string_ok((const char *)n->data, len) ||
      !(exp = find_export(n->srv, (const char *)n->data, len))) {
    if (n->srv->verbose)
      nbd_log("NBD_OPT_EXPORT_NAME: no export named '%.*s'",
              (int)(len > 256 ? 256 : len), (const char *)n->data);
    return -1;
  }
  eflags = nbd_export_flags(exp, n->structured);
  r = choose_export(n, exp, eflags, s);
  nbd_export_put(n->srv->exports, exp);   /* held by s from here on */
  if (r < 0)
    return -1;
  vd_put_be64(buf, exp->size);
  vd_put_be16(buf + 8, eflags);
  struct iovec iov[2] = { { buf, 10 }, { (void *)zeroes, 124 } };
  if (n->io->sendv(n->io, iov, n->no_zeroes ? 1 : 2) < 0) {
    nbd_export_detach(n->srv->exports, exp, s->user);
    return -1;
  }
  return 1;
}

static int opt_starttls(struct nbd_neg *n, uint32_t len)
{
  if (len != 0)
    return neg_error(n, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                     "NBD_OPT_STARTTLS takes no data");
  if (n->srv->tls == NBD_TLS_OFF || !n->srv->tls_creds)
    return neg_error(n, NBD_OPT_STARTTLS, NBD_REP_ERR_UNSUP,
                     "TLS is not configured on this server");
  if (n->io->tls)
    return neg_error(n, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                     "TLS already negotiated");
  if (neg_reply(n, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0) < 0)
    return -1;
  if (nbd_tls_upgrade(n->srv->tls_creds, n->io, n->srv->verbose) < 0)
    return -1;
  /* Nothing negotiated in clear text survives the upgrade. */
  n->structured = false;
  n->meta = (struct nbd_meta_sel){ 0 };
  nbd_export_put(n->srv->exports, n->meta_exp);
  n->meta_exp = NULL;
  return 0;
}

int nbd_negotiate(const struct nbd_server *srv, struct nbd_io *io,
                  struct nbd_session *s)
{
  struct nbd_neg n = { .srv = srv, .io = io };
  _Static_assert(NBD_HANDSHAKE_LEN >= NBD_OPT_HDR_LEN, "buffer size");
  uint8_t buf[NBD_HANDSHAKE_LEN];     /* also holds an option header */
  uint32_t cflags;
  int r = -1;

  if (nbd_io_send(io, buf, nbd_encode_greeting(buf)) < 0)
    return -1;
  if (nbd_io_recv_full(io, buf, 4) < 0)
    return -1;
  cflags = vd_get_be32(buf);
  if (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
    if (srv->verbose)
      nbd_log("client sent unknown flags 0x%x: dropped", cflags);
    return -1;
  }
  n.no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
  n.data = malloc(NBD_MAX_OPTION_LEN);
  if (!n.data) {
    nbd_log("out of memory");
    return -1;
  }

  for (unsigned nopts = 0;; nopts++) {
    uint32_t opt, len;

    /* Every option costs a reply: a client that never picks an export
     * is not served, before or after STARTTLS. */
    if (nopts == NBD_MAX_OPTIONS) {
      if (srv->verbose)
        nbd_log("client sent %u options without choosing an export: "
                "dropped", NBD_MAX_OPTIONS);
      break;
    }
    if (nbd_io_recv_full(io, buf, NBD_OPT_HDR_LEN) < 0)
      break;
    if (vd_get_be64(buf) != NBD_OPTS_MAGIC) {
      if (srv->verbose)
        nbd_log("bad option magic: client dropped");
      break;
    }
    opt = vd_get_be32(buf + 8);
    len = vd_get_be32(buf + 12);
    if (srv->verbose > 1)
      nbd_log("option %s (%u), %u bytes", nbd_opt_name(opt), opt, len);

    if (len > NBD_MAX_OPTION_LEN) {
      if (opt == NBD_OPT_EXPORT_NAME || nbd_io_discard(io, len) < 0)
        break;
      r = neg_error(&n, opt, nbd_opt_known(opt) ? NBD_REP_ERR_TOO_BIG
                                                : NBD_REP_ERR_UNSUP,
                    "option of %u bytes is too long", len);
      if (r < 0)
        break;
      continue;
    }
    if (nbd_io_recv_full(io, n.data, len) < 0)
      break;

    if (srv->tls == NBD_TLS_REQUIRE && !io->tls &&
        opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT) {
      if (opt == NBD_OPT_EXPORT_NAME) {
        if (srv->verbose)
          nbd_log("NBD_OPT_EXPORT_NAME without TLS: client dropped");
        r = -1;
        break;
      }
      r = neg_error(&n, opt, NBD_REP_ERR_TLS_REQD, "TLS is required");
      if (r < 0)
        break;
      continue;
    }

    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
      r = opt_export_name(&n, len, s);
      goto out;
    case NBD_OPT_ABORT:
      neg_reply(&n, opt, NBD_REP_ACK, NULL, 0);
      r = 0;
      goto out;
    case NBD_OPT_LIST:
      r = opt_list(&n, len);
      break;
    case NBD_OPT_STARTTLS:
      r = opt_starttls(&n, len);
      break;
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
      r = opt_info(&n, opt, len, s);
      if (r == 1)
        goto out;
      break;
    case NBD_OPT_STRUCTURED_REPLY:
      if (len != 0)
        r = neg_error(&n, opt, NBD_REP_ERR_INVALID,
                      "NBD_OPT_STRUCTURED_REPLY takes no data");
      else if (n.structured)
        r = neg_error(&n, opt, NBD_REP_ERR_INVALID,
                      "structured replies already negotiated");
      else {
        n.structured = true;
        r = neg_reply(&n, opt, NBD_REP_ACK, NULL, 0);
      }
      break;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
      r = opt_meta(&n, opt, len);
      break;
    default:
      r = neg_error(&n, opt, NBD_REP_ERR_UNSUP, "unknown option %u", opt);
      break;
    }
    if (r < 0)
      break;
  }
  r = -1;
out:
  nbd_export_put(srv->exports, n.meta_exp);
  free(n.data);
  return r;
}
