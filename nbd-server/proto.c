/* vdisk-nbd — NBD wire format (see proto.h for the layouts). */
#include <config.h>

#include <errno.h>
#include <string.h>

#include "vdisk/endian.h"
#include "nbd-server/proto.h"

bool nbd_request_decode(const uint8_t *buf, struct nbd_request *req)
{
  req->magic = vd_get_be32(buf);
  req->flags = vd_get_be16(buf + 4);
  req->type = vd_get_be16(buf + 6);
  req->cookie = vd_get_be64(buf + 8);
  req->offset = vd_get_be64(buf + 16);
  req->length = vd_get_be32(buf + 24);
  return req->magic == NBD_REQUEST_MAGIC;
}

void nbd_request_encode(uint8_t *buf, const struct nbd_request *req)
{
  vd_put_be32(buf, req->magic);
  vd_put_be16(buf + 4, req->flags);
  vd_put_be16(buf + 6, req->type);
  vd_put_be64(buf + 8, req->cookie);
  vd_put_be64(buf + 16, req->offset);
  vd_put_be32(buf + 24, req->length);
}

/* Command flags a command accepts, before looking at what was advertised. */
static uint16_t nbd_cmd_valid_flags(uint16_t type)
{
  switch (type) {
  case NBD_CMD_READ:         return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF;
  case NBD_CMD_WRITE:        return NBD_CMD_FLAG_FUA;
  case NBD_CMD_FLUSH:        return NBD_CMD_FLAG_FUA;
  case NBD_CMD_TRIM:         return NBD_CMD_FLAG_FUA;
  case NBD_CMD_CACHE:        return NBD_CMD_FLAG_FUA;
  case NBD_CMD_WRITE_ZEROES:
    return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
  case NBD_CMD_BLOCK_STATUS: return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
  default:                   return 0;
  }
}

uint32_t nbd_request_check(const struct nbd_request *req,
                           const struct nbd_req_ctx *ctx, const char **why)
{
  uint16_t ef = ctx->eflags;
  const char *dummy;

  if (!why)
    why = &dummy;
#define BAD(err, msg) do { *why = (msg); return (err); } while (0)

  /* A read-only export refuses writes as such, advertised or not. */
  if ((ef & NBD_FLAG_READ_ONLY) &&
      (req->type == NBD_CMD_WRITE || req->type == NBD_CMD_TRIM ||
       req->type == NBD_CMD_WRITE_ZEROES))
    BAD(NBD_EPERM, "the export is read-only");

  /* The command must exist and have been advertised. */
  switch (req->type) {
  case NBD_CMD_READ:
  case NBD_CMD_WRITE:
  case NBD_CMD_DISC:
    break;
  case NBD_CMD_FLUSH:
    if (!(ef & NBD_FLAG_SEND_FLUSH))
      BAD(NBD_EINVAL, "FLUSH was not advertised");
    break;
  case NBD_CMD_TRIM:
    if (!(ef & NBD_FLAG_SEND_TRIM))
      BAD(NBD_EINVAL, "TRIM was not advertised");
    break;
  case NBD_CMD_CACHE:
    if (!(ef & NBD_FLAG_SEND_CACHE))
      BAD(NBD_EINVAL, "CACHE was not advertised");
    break;
  case NBD_CMD_WRITE_ZEROES:
    if (!(ef & NBD_FLAG_SEND_WRITE_ZEROES))
      BAD(NBD_EINVAL, "WRITE_ZEROES was not advertised");
    break;
  case NBD_CMD_BLOCK_STATUS:
    if (!ctx->structured || !ctx->meta_any)
      BAD(NBD_EINVAL, "no metadata context was negotiated");
    break;
  default:
    BAD(NBD_EINVAL, "unknown command");
  }

  /* Flags: valid for this command, and advertised. */
  if (req->flags & ~nbd_cmd_valid_flags(req->type))
    BAD(NBD_EINVAL, "flag not valid for this command");
  if ((req->flags & NBD_CMD_FLAG_FUA) && !(ef & NBD_FLAG_SEND_FUA))
    BAD(NBD_EINVAL, "FUA was not advertised");
  if ((req->flags & NBD_CMD_FLAG_DF) && !(ef & NBD_FLAG_SEND_DF))
    BAD(NBD_EINVAL, "DF was not advertised");
  if ((req->flags & NBD_CMD_FLAG_FAST_ZERO) &&
      !(ef & NBD_FLAG_SEND_FAST_ZERO))
    BAD(NBD_EINVAL, "FAST_ZERO was not advertised");

  if (req->type == NBD_CMD_DISC)
    return 0;
  if (req->type == NBD_CMD_FLUSH) {
    if (req->offset || req->length)
      BAD(NBD_EINVAL, "FLUSH takes no offset or length");
    return 0;
  }

  if (req->length == 0)
    BAD(NBD_EINVAL, "zero-length request");
  /* CACHE reads as much as READ does: the same bound, so that one
   * request cannot make the server read gigabytes. */
  if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE ||
       req->type == NBD_CMD_CACHE) &&
      req->length > ctx->max_payload)
    BAD(NBD_EINVAL, "request larger than the maximum block size");
  if (!vd_range_ok(req->offset, req->length, ctx->size)) {
    if (req->type == NBD_CMD_WRITE || req->type == NBD_CMD_WRITE_ZEROES)
      BAD(NBD_ENOSPC, "write beyond the end of the export");
    BAD(NBD_EINVAL, "request beyond the end of the export");
  }
#undef BAD
  return 0;
}

uint32_t nbd_errno_to_wire(int err)
{
  if (err < 0)
    err = -err;
  switch (err) {
  case 0:         return 0;
  case EPERM:
  case EROFS:
  case EACCES:    return NBD_EPERM;
  case ENOMEM:    return NBD_ENOMEM;
  case EINVAL:    return NBD_EINVAL;
  case ENOSPC:
  case EDQUOT:
  case EFBIG:     return NBD_ENOSPC;
  case EOVERFLOW: return NBD_EOVERFLOW;
  case ENOTSUP:   return NBD_ENOTSUP;
  case ESHUTDOWN: return NBD_ESHUTDOWN;
  default:        return NBD_EIO;
  }
}

size_t nbd_encode_greeting(uint8_t *buf)
{
  vd_put_be64(buf, NBD_MAGIC);
  vd_put_be64(buf + 8, NBD_OPTS_MAGIC);
  vd_put_be16(buf + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  return NBD_HANDSHAKE_LEN;
}

size_t nbd_encode_opt_reply(uint8_t *buf, uint32_t opt, uint32_t type,
                            uint32_t len)
{
  vd_put_be64(buf, NBD_REP_MAGIC);
  vd_put_be32(buf + 8, opt);
  vd_put_be32(buf + 12, type);
  vd_put_be32(buf + 16, len);
  return NBD_REP_HDR_LEN;
}

size_t nbd_encode_simple_reply(uint8_t *buf, uint64_t cookie, uint32_t err)
{
  vd_put_be32(buf, NBD_SIMPLE_REPLY_MAGIC);
  vd_put_be32(buf + 4, err);
  vd_put_be64(buf + 8, cookie);
  return NBD_SIMPLE_REPLY_LEN;
}

size_t nbd_encode_chunk_hdr(uint8_t *buf, uint64_t cookie, uint16_t flags,
                            uint16_t type, uint32_t len)
{
  vd_put_be32(buf, NBD_CHUNK_MAGIC);
  vd_put_be16(buf + 4, flags);
  vd_put_be16(buf + 6, type);
  vd_put_be64(buf + 8, cookie);
  vd_put_be32(buf + 16, len);
  return NBD_CHUNK_HDR_LEN;
}

size_t nbd_encode_info_export(uint8_t *buf, uint64_t size, uint16_t eflags)
{
  vd_put_be16(buf, NBD_INFO_EXPORT);
  vd_put_be64(buf + 2, size);
  vd_put_be16(buf + 10, eflags);
  return 12;
}

size_t nbd_encode_info_block_size(uint8_t *buf, uint32_t min, uint32_t pref,
                                  uint32_t max)
{
  vd_put_be16(buf, NBD_INFO_BLOCK_SIZE);
  vd_put_be32(buf + 2, min);
  vd_put_be32(buf + 6, pref);
  vd_put_be32(buf + 10, max);
  return 14;
}

bool nbd_string_ok(const char *s, uint32_t len)
{
  return len <= NBD_MAX_STRING && memchr(s, 0, len) == NULL;
}

int nbd_parse_opt_info(const uint8_t *data, uint32_t len,
                       struct nbd_opt_info *out)
{
  uint32_t nlen;

  if (len < 6)
    return -EINVAL;
  nlen = vd_get_be32(data);
  if (nlen > len - 6)
    return -EINVAL;
  out->name = (const char *)data + 4;
  out->name_len = nlen;
  if (!nbd_string_ok(out->name, nlen))
    return -EINVAL;
  out->nreqs = vd_get_be16(data + 4 + nlen);
  if ((uint64_t)len != 6 + (uint64_t)nlen + 2 * (uint64_t)out->nreqs)
    return -EINVAL;
  out->reqs = data + 6 + nlen;
  return 0;
}

int nbd_parse_opt_meta(const uint8_t *data, uint32_t len,
                       struct nbd_opt_meta *out)
{
  uint32_t nlen, pos, i;

  if (len < 8)
    return -EINVAL;
  nlen = vd_get_be32(data);
  if (nlen > len - 8)
    return -EINVAL;
  out->name = (const char *)data + 4;
  out->name_len = nlen;
  if (!nbd_string_ok(out->name, nlen))
    return -EINVAL;
  out->nqueries = vd_get_be32(data + 4 + nlen);
  out->queries = data + 8 + nlen;
  out->queries_len = len - 8 - nlen;
  /* Walk the queries once so that iteration can trust the lengths. */
  pos = 0;
  for (i = 0; i < out->nqueries; i++) {
    uint32_t qlen;
    if (out->queries_len - pos < 4)
      return -EINVAL;
    qlen = vd_get_be32(out->queries + pos);
    pos += 4;
    if (qlen > out->queries_len - pos)
      return -EINVAL;
    if (!nbd_string_ok((const char *)out->queries + pos, qlen))
      return -EINVAL;
    pos += qlen;
  }
  if (pos != out->queries_len)
    return -EINVAL;
  return 0;
}

bool nbd_meta_next_query(const struct nbd_opt_meta *m, uint32_t *pos,
                         const char **q, uint32_t *qlen)
{
  if (*pos >= m->queries_len)
    return false;
  *qlen = vd_get_be32(m->queries + *pos);
  *q = (const char *)m->queries + *pos + 4;
  *pos += 4 + *qlen;
  return true;
}

bool nbd_meta_query_matches_alloc(const char *q, uint32_t qlen, bool list)
{
  static const char full[] = NBD_META_ALLOC_NAME;
  if (qlen == sizeof full - 1 && memcmp(q, full, qlen) == 0)
    return true;
  return list && qlen == 5 && memcmp(q, "base:", 5) == 0;
}

/* Whether Q is exactly the NUL-terminated LIT. */
static bool meta_is(const char *q, uint32_t qlen, const char *lit)
{
  size_t n = strlen(lit);
  return qlen == n && memcmp(q, lit, n) == 0;
}

enum nbd_meta_match nbd_meta_query_match(const char *q, uint32_t qlen,
                                         bool list, const char **leaf,
                                         uint32_t *leaf_len)
{
  static const char pfx[] = NBD_META_BITMAP_PREFIX;
  const uint32_t plen = sizeof pfx - 1;

  if (nbd_meta_query_matches_alloc(q, qlen, list))
    return NBD_META_ALLOC;
  if (meta_is(q, qlen, NBD_META_DEPTH_NAME))
    return NBD_META_DEPTH;
  if (list && meta_is(q, qlen, "qemu:"))
    return NBD_META_QEMU_ALL;
  if (qlen >= plen && memcmp(q, pfx, plen) == 0) {
    if (qlen == plen)
      return list ? NBD_META_BITMAPS_ALL : NBD_META_NONE;
    *leaf = q + plen;
    *leaf_len = qlen - plen;
    return NBD_META_BITMAP;
  }
  return NBD_META_NONE;
}

const char *nbd_opt_name(uint32_t opt)
{
  switch (opt) {
  case NBD_OPT_EXPORT_NAME:       return "EXPORT_NAME";
  case NBD_OPT_ABORT:             return "ABORT";
  case NBD_OPT_LIST:              return "LIST";
  case NBD_OPT_STARTTLS:          return "STARTTLS";
  case NBD_OPT_INFO:              return "INFO";
  case NBD_OPT_GO:                return "GO";
  case NBD_OPT_STRUCTURED_REPLY:  return "STRUCTURED_REPLY";
  case NBD_OPT_LIST_META_CONTEXT: return "LIST_META_CONTEXT";
  case NBD_OPT_SET_META_CONTEXT:  return "SET_META_CONTEXT";
  default:                        return "unknown";
  }
}

const char *nbd_cmd_name(uint16_t type)
{
  switch (type) {
  case NBD_CMD_READ:         return "READ";
  case NBD_CMD_WRITE:        return "WRITE";
  case NBD_CMD_DISC:         return "DISC";
  case NBD_CMD_FLUSH:        return "FLUSH";
  case NBD_CMD_TRIM:         return "TRIM";
  case NBD_CMD_CACHE:        return "CACHE";
  case NBD_CMD_WRITE_ZEROES: return "WRITE_ZEROES";
  case NBD_CMD_BLOCK_STATUS: return "BLOCK_STATUS";
  default:                   return "unknown";
  }
}
