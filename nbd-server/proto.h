/* vdisk-nbd — NBD wire format: constants, message encoding and decoding,
 * and the protocol-level validation of requests.
 *
 * Follows doc/proto.md of the NetworkBlockDevice/nbd project (fixed
 * newstyle negotiation, structured replies, base:allocation).  All
 * integers on the wire are big-endian; every function here converts
 * through vdisk/endian.h and nothing here does I/O, so the module is
 * unit-tested and fuzzed on its own.
 *
 * Handshake (server first):
 *   S: u64 "NBDMAGIC"  u64 "IHAVEOPT"  u16 handshake flags
 *   C: u32 client flags
 *   C: u64 "IHAVEOPT"  u32 option  u32 length  <length bytes>     (repeated)
 *   S: u64 0x3e889045565a9  u32 option  u32 reply type  u32 length  <data>
 * Transmission:
 *   C: u32 0x25609513  u16 flags  u16 type  u64 cookie  u64 offset  u32 length
 *   S: u32 0x67446698  u32 error  u64 cookie                   (simple)
 *   S: u32 0x668e33ef  u16 flags  u16 type  u64 cookie  u32 length (chunk)
 */
#ifndef NBD_PROTO_H
#define NBD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NBD_MAGIC               UINT64_C(0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC          UINT64_C(0x49484156454f5054) /* "IHAVEOPT" */
#define NBD_REP_MAGIC           UINT64_C(0x0003e889045565a9)
#define NBD_REQUEST_MAGIC       UINT32_C(0x25609513)
#define NBD_SIMPLE_REPLY_MAGIC  UINT32_C(0x67446698)
#define NBD_CHUNK_MAGIC         UINT32_C(0x668e33ef)

/* Handshake flags (server) and client flags. */
#define NBD_FLAG_FIXED_NEWSTYLE   0x0001u
#define NBD_FLAG_NO_ZEROES        0x0002u
#define NBD_FLAG_C_FIXED_NEWSTYLE 0x0001u
#define NBD_FLAG_C_NO_ZEROES      0x0002u

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS         (1u << 0)
#define NBD_FLAG_READ_ONLY         (1u << 1)
#define NBD_FLAG_SEND_FLUSH        (1u << 2)
#define NBD_FLAG_SEND_FUA          (1u << 3)
#define NBD_FLAG_ROTATIONAL        (1u << 4)
#define NBD_FLAG_SEND_TRIM         (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF           (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN    (1u << 8)
#define NBD_FLAG_SEND_CACHE        (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO    (1u << 11)

/* Options. */
#define NBD_OPT_EXPORT_NAME       1u
#define NBD_OPT_ABORT             2u
#define NBD_OPT_LIST              3u
#define NBD_OPT_STARTTLS          5u
#define NBD_OPT_INFO              6u
#define NBD_OPT_GO                7u
#define NBD_OPT_STRUCTURED_REPLY  8u
#define NBD_OPT_LIST_META_CONTEXT 9u
#define NBD_OPT_SET_META_CONTEXT  10u

/* Option replies. */
#define NBD_REP_ACK          1u
#define NBD_REP_SERVER       2u
#define NBD_REP_INFO         3u
#define NBD_REP_META_CONTEXT 4u
#define NBD_REP_ERR(n)       (UINT32_C(0x80000000) | (n))
#define NBD_REP_ERR_UNSUP    NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY   NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID  NBD_REP_ERR(3)
#define NBD_REP_ERR_TLS_REQD NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN  NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN NBD_REP_ERR(7)
#define NBD_REP_ERR_TOO_BIG  NBD_REP_ERR(9)

/* NBD_REP_INFO types. */
#define NBD_INFO_EXPORT      0u
#define NBD_INFO_NAME        1u
#define NBD_INFO_DESCRIPTION 2u
#define NBD_INFO_BLOCK_SIZE  3u

/* Commands and command flags. */
#define NBD_CMD_READ         0u
#define NBD_CMD_WRITE        1u
#define NBD_CMD_DISC         2u
#define NBD_CMD_FLUSH        3u
#define NBD_CMD_TRIM         4u
#define NBD_CMD_CACHE        5u
#define NBD_CMD_WRITE_ZEROES 6u
#define NBD_CMD_BLOCK_STATUS 7u

#define NBD_CMD_FLAG_FUA       (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1u << 1)
#define NBD_CMD_FLAG_DF        (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* Structured reply chunks. */
#define NBD_REPLY_FLAG_DONE         (1u << 0)
#define NBD_REPLY_TYPE_NONE         0u
#define NBD_REPLY_TYPE_OFFSET_DATA  1u
#define NBD_REPLY_TYPE_OFFSET_HOLE  2u
#define NBD_REPLY_TYPE_BLOCK_STATUS 5u
#define NBD_REPLY_TYPE_ERROR        0x8001u
#define NBD_REPLY_TYPE_ERROR_OFFSET 0x8002u

/* base:allocation states. */
#define NBD_STATE_HOLE 1u
#define NBD_STATE_ZERO 2u
/* qemu:dirty-bitmap:NAME state (QEMU's docs/interop/nbd.txt); the
 * qemu:allocation-depth value is the whole 32-bit word: 0 unallocated in
 * the whole chain, 1 the top image, 2 its parent, ... */
#define NBD_STATE_DIRTY 1u

/* Error values on the wire (not the host's errno values by definition). */
#define NBD_EPERM     1u
#define NBD_EIO       5u
#define NBD_ENOMEM    12u
#define NBD_EINVAL    22u
#define NBD_ENOSPC    28u
#define NBD_EOVERFLOW 75u
#define NBD_ENOTSUP   95u
#define NBD_ESHUTDOWN 108u

/* Sizes and limits. */
#define NBD_HANDSHAKE_LEN   18u   /* server greeting */
#define NBD_OPT_HDR_LEN     16u
#define NBD_REP_HDR_LEN     20u
#define NBD_REQUEST_LEN     28u
#define NBD_SIMPLE_REPLY_LEN 16u
#define NBD_CHUNK_HDR_LEN   20u
#define NBD_MAX_STRING      4096u /* names, queries, messages */
#define NBD_MAX_OPTION_LEN  65536u /* longer options are skipped: ERR_TOO_BIG */
#define NBD_MAX_PAYLOAD     (32u * 1024 * 1024) /* largest READ / WRITE */
#define NBD_META_ALLOC_ID   1u    /* context id of base:allocation */
#define NBD_META_ALLOC_NAME "base:allocation"
#define NBD_META_DEPTH_ID   2u    /* context id of qemu:allocation-depth */
#define NBD_META_DEPTH_NAME "qemu:allocation-depth"
#define NBD_META_BITMAP_ID0 3u    /* qemu:dirty-bitmap:<bitmaps[i]>: 3 + i */
#define NBD_META_BITMAP_PREFIX "qemu:dirty-bitmap:"
#define NBD_MAX_EXPORT_BITMAPS 64u /* bitmaps one export may offer */

/* A decoded request header. */
struct nbd_request {
  uint32_t magic;
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t length;
};

/* What the validator needs to know about the connection and export. */
struct nbd_req_ctx {
  uint64_t size;         /* export size */
  uint16_t eflags;       /* transmission flags advertised */
  bool structured;       /* structured replies negotiated */
  bool meta_any;         /* at least one metadata context selected */
  uint32_t max_payload;  /* advertised maximum payload */
};

/* Decode 28 bytes into *REQ.  Returns false if the magic is wrong (the
 * connection must then be dropped). */
bool nbd_request_decode(const uint8_t *buf, struct nbd_request *req);
/* Encode a request (for tests and tools). */
void nbd_request_encode(uint8_t *buf, const struct nbd_request *req);

/* Protocol-level validation of a decoded request against what was
 * negotiated: command known and advertised, flags valid for the command
 * and advertised, lengths, bounds (EINVAL for reads, ENOSPC for writes),
 * read-only.  Returns 0 if the request may run, else the NBD error
 * value to reply with and (if WHY is not NULL) a static message in *WHY.  Never decides to disconnect: a WRITE's payload is
 * always consumed by the caller whatever this returns. */
uint32_t nbd_request_check(const struct nbd_request *req,
                           const struct nbd_req_ctx *ctx, const char **why);

/* Whether the request carries a payload after the header. */
static inline bool nbd_request_has_payload(const struct nbd_request *req)
{
  return req->type == NBD_CMD_WRITE;
}

/* Map a negative errno from libvdisk to an NBD error value. */
uint32_t nbd_errno_to_wire(int err);

/* Encoders.  Each writes into BUF (of at least the stated size) and
 * returns the number of bytes written. */
size_t nbd_encode_greeting(uint8_t *buf);                     /* 18 */
size_t nbd_encode_opt_reply(uint8_t *buf, uint32_t opt, uint32_t type,
                            uint32_t len);                    /* 20 */
size_t nbd_encode_simple_reply(uint8_t *buf, uint64_t cookie,
                               uint32_t err);                 /* 16 */
size_t nbd_encode_chunk_hdr(uint8_t *buf, uint64_t cookie, uint16_t flags,
                            uint16_t type, uint32_t len);     /* 20 */
/* NBD_INFO_EXPORT payload: type, size, flags. */
size_t nbd_encode_info_export(uint8_t *buf, uint64_t size,
                              uint16_t eflags);               /* 12 */
/* NBD_INFO_BLOCK_SIZE payload. */
size_t nbd_encode_info_block_size(uint8_t *buf, uint32_t min, uint32_t pref,
                                  uint32_t max);              /* 14 */

/* Parsed NBD_OPT_INFO / NBD_OPT_GO payload.  NAME points into the
 * payload (not NUL-terminated). */
struct nbd_opt_info {
  const char *name;
  uint32_t name_len;
  uint16_t nreqs;
  const uint8_t *reqs;   /* nreqs big-endian u16 */
};
/* Returns 0 or -EINVAL if the payload is malformed. */
int nbd_parse_opt_info(const uint8_t *data, uint32_t len,
                       struct nbd_opt_info *out);

/* Parsed NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload. */
struct nbd_opt_meta {
  const char *name;
  uint32_t name_len;
  uint32_t nqueries;
  const uint8_t *queries; /* nqueries x (u32 length, bytes), validated */
  uint32_t queries_len;
};
int nbd_parse_opt_meta(const uint8_t *data, uint32_t len,
                       struct nbd_opt_meta *out);
/* Iterate the queries of a parsed meta option: *POS starts at 0; returns
 * false at the end. */
bool nbd_meta_next_query(const struct nbd_opt_meta *m, uint32_t *pos,
                         const char **q, uint32_t *qlen);
/* Whether query Q selects base:allocation.  LIST also accepts the bare
 * namespace "base:". */
bool nbd_meta_query_matches_alloc(const char *q, uint32_t qlen, bool list);

/* What a meta context query names.  NBD_META_BITMAP: the bitmap whose
 * export name is [*LEAF, *LEAF + *LEAF_LEN) (pointing into Q; maybe not an
 * existing one).  The namespace queries (QEMU_ALL: "qemu:", every qemu
 * context; BITMAPS_ALL: "qemu:dirty-bitmap:", every bitmap; "base:") are
 * only valid when LIST is true (NBD_OPT_LIST_META_CONTEXT), as in
 * qemu-nbd. */
enum nbd_meta_match {
  NBD_META_NONE, NBD_META_ALLOC, NBD_META_DEPTH, NBD_META_QEMU_ALL,
  NBD_META_BITMAPS_ALL, NBD_META_BITMAP,
};
enum nbd_meta_match nbd_meta_query_match(const char *q, uint32_t qlen,
                                         bool list, const char **leaf,
                                         uint32_t *leaf_len);

/* Check that a string from the wire is acceptable: at most NBD_MAX_STRING
 * bytes and no NUL. */
bool nbd_string_ok(const char *s, uint32_t len);

/* Name of an option / command, for -v logging ("unknown" if not known). */
const char *nbd_opt_name(uint32_t opt);
static inline bool nbd_opt_known(uint32_t opt)
{
  return opt >= NBD_OPT_EXPORT_NAME && opt <= NBD_OPT_SET_META_CONTEXT &&
         opt != 4;   /* 4 was PEEK_EXPORT, withdrawn */
}
const char *nbd_cmd_name(uint16_t type);

#endif /* NBD_PROTO_H */
