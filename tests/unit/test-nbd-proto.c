/* Unit tests of the NBD wire format (nbd-server/proto.c): byte layouts
 * checked against the values of doc/proto.md, request validation rules,
 * option payload parsers on malformed input. */
#include <config.h>

#include <errno.h>
#include <string.h>

#include "tests/unit/cu.h"
#include "nbd-server/proto.h"
#include "vdisk/endian.h"

static const uint8_t req_bytes[28] = {
  0x25, 0x60, 0x95, 0x13,                         /* magic */
  0x00, 0x01,                                     /* flags: FUA */
  0x00, 0x01,                                     /* type: WRITE */
  0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, /* cookie */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, /* offset 1 MiB */
  0x00, 0x00, 0x10, 0x00,                         /* length 4096 */
};

static void test_request_roundtrip(void)
{
  struct nbd_request r;
  uint8_t buf[28];

  CU_ASSERT_TRUE(nbd_request_decode(req_bytes, &r));
  CU_ASSERT_EQUAL(r.flags, NBD_CMD_FLAG_FUA);
  CU_ASSERT_EQUAL(r.type, NBD_CMD_WRITE);
  CU_ASSERT_EQUAL(r.cookie, UINT64_C(0x0102030405060708));
  CU_ASSERT_EQUAL(r.offset, 1024 * 1024);
  CU_ASSERT_EQUAL(r.length, 4096);
  nbd_request_encode(buf, &r);
  CU_ASSERT_EQUAL(memcmp(buf, req_bytes, 28), 0);

  memcpy(buf, req_bytes, 28);
  buf[0] = 0x26;
  CU_ASSERT_FALSE(nbd_request_decode(buf, &r));
}

static void test_encoders(void)
{
  uint8_t b[32];
  static const uint8_t greeting[18] = {
    'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C',
    'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0x00, 0x03,
  };
  static const uint8_t simple[16] = {
    0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 9,
  };
  static const uint8_t chunk[20] = {
    0x66, 0x8e, 0x33, 0xef, 0x00, 0x01, 0x00, 0x02,
    0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 12,
  };
  static const uint8_t rep[20] = {
    0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9,
    0, 0, 0, 7, 0x80, 0, 0, 6, 0, 0, 0, 0,
  };

  CU_ASSERT_EQUAL(nbd_encode_greeting(b), 18);
  CU_ASSERT_EQUAL(memcmp(b, greeting, 18), 0);
  CU_ASSERT_EQUAL(nbd_encode_simple_reply(b, 9, NBD_ENOSPC), 16);
  CU_ASSERT_EQUAL(memcmp(b, simple, 16), 0);
  CU_ASSERT_EQUAL(nbd_encode_chunk_hdr(b, 7, NBD_REPLY_FLAG_DONE,
                                       NBD_REPLY_TYPE_OFFSET_HOLE, 12), 20);
  CU_ASSERT_EQUAL(memcmp(b, chunk, 20), 0);
  CU_ASSERT_EQUAL(nbd_encode_opt_reply(b, NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, 0),
                  20);
  CU_ASSERT_EQUAL(memcmp(b, rep, 20), 0);
  CU_ASSERT_EQUAL(nbd_encode_info_export(b, 0x100000000ull, 0x1234), 12);
  CU_ASSERT_EQUAL(vd_get_be16(b), NBD_INFO_EXPORT);
  CU_ASSERT_EQUAL(vd_get_be64(b + 2), 0x100000000ull);
  CU_ASSERT_EQUAL(vd_get_be16(b + 10), 0x1234);
  CU_ASSERT_EQUAL(nbd_encode_info_block_size(b, 512, 4096, 1u << 25), 14);
  CU_ASSERT_EQUAL(vd_get_be16(b), NBD_INFO_BLOCK_SIZE);
  CU_ASSERT_EQUAL(vd_get_be32(b + 2), 512);
  CU_ASSERT_EQUAL(vd_get_be32(b + 6), 4096);
  CU_ASSERT_EQUAL(vd_get_be32(b + 10), 1u << 25);
}

static const struct nbd_req_ctx rw_ctx = {
  .size = 1 << 20,
  .eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
            NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
            NBD_FLAG_SEND_DF | NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FAST_ZERO,
  .structured = true,
  .meta_any = true,
  .max_payload = NBD_MAX_PAYLOAD,
};

static uint32_t check(const struct nbd_req_ctx *ctx, uint16_t type,
                      uint16_t flags, uint64_t off, uint32_t len)
{
  struct nbd_request r = { NBD_REQUEST_MAGIC, flags, type, 1, off, len };
  const char *why = NULL;
  uint32_t err = nbd_request_check(&r, ctx, &why);
  CU_ASSERT_TRUE(err == 0 || (why && *why));
  return err;
}

static void test_check_valid(void)
{
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_READ, 0, 0, 4096), 0);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1 << 20), 0);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 512, 512), 0);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_FLUSH, 0, 0, 0), 0);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, 0, 1 << 20), 0);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_CACHE, 0, 0, 1 << 20), 0);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_WRITE_ZEROES,
                        NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO |
                        NBD_CMD_FLAG_FUA, 0, 4096), 0);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE,
                        0, 4096), 0);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_DISC, 0, 0, 0), 0);
}

static void test_check_errors(void)
{
  struct nbd_req_ctx ro = rw_ctx;
  struct nbd_req_ctx plain = rw_ctx;
  uint64_t end = rw_ctx.size;

  /* Bounds: EINVAL for reads, ENOSPC for writes, overflow included. */
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_READ, 0, end, 1), NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_READ, 0, end - 1, 2), NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_READ, 0, UINT64_MAX - 10, 4096),
                  NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_WRITE, 0, end - 1, 2), NBD_ENOSPC);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_WRITE, 0, UINT64_MAX, 1), NBD_ENOSPC);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_WRITE_ZEROES, 0, end, 512),
                  NBD_ENOSPC);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_TRIM, 0, end, 512), NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_CACHE, 0, end, 512), NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_BLOCK_STATUS, 0, end, 512),
                  NBD_EINVAL);
  /* Lengths. */
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_READ, 0, 0, 0), NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_WRITE, 0, 0, 0), NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_READ, 0, 0, NBD_MAX_PAYLOAD + 1),
                  NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_FLUSH, 0, 0, 1), NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_FLUSH, 0, 1, 0), NBD_EINVAL);
  /* CACHE is bounded like READ (it reads as much), on a big export too. */
  {
    struct nbd_req_ctx big = rw_ctx;
    big.size = UINT64_C(1) << 40;
    CU_ASSERT_EQUAL(check(&big, NBD_CMD_CACHE, 0, 0, NBD_MAX_PAYLOAD), 0);
    CU_ASSERT_EQUAL(check(&big, NBD_CMD_CACHE, 0, 0, NBD_MAX_PAYLOAD + 1),
                    NBD_EINVAL);
    CU_ASSERT_EQUAL(check(&big, NBD_CMD_READ, 0, 0, NBD_MAX_PAYLOAD + 1),
                    NBD_EINVAL);
    CU_ASSERT_EQUAL(check(&big, NBD_CMD_TRIM, 0, 0, NBD_MAX_PAYLOAD + 1), 0);
  }
  /* Unknown commands and flags; flags on the wrong command. */
  CU_ASSERT_EQUAL(check(&rw_ctx, 8, 0, 0, 512), NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, 0xffff, 0, 0, 512), NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_READ, 0x20, 0, 512), NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_READ, NBD_CMD_FLAG_REQ_ONE, 0, 512),
                  NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_WRITE, NBD_CMD_FLAG_NO_HOLE, 0, 512),
                  NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&rw_ctx, NBD_CMD_TRIM, NBD_CMD_FLAG_FAST_ZERO, 0, 512),
                  NBD_EINVAL);

  /* Read-only: EPERM for writes, FUA and FAST_ZERO not advertised. */
  ro.eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH |
              NBD_FLAG_SEND_DF;
  CU_ASSERT_EQUAL(check(&ro, NBD_CMD_WRITE, 0, 0, 512), NBD_EPERM);
  CU_ASSERT_EQUAL(check(&ro, NBD_CMD_WRITE, 0, end, 512), NBD_EPERM);
  CU_ASSERT_EQUAL(check(&ro, NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 512),
                  NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&ro, NBD_CMD_TRIM, 0, 0, 512), NBD_EPERM);
  CU_ASSERT_EQUAL(check(&ro, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0,
                        512), NBD_EPERM);
  CU_ASSERT_EQUAL(check(&ro, NBD_CMD_READ, 0, 0, 512), 0);

  /* Without structured replies: no DF, no block status. */
  plain.structured = false;
  plain.meta_any = false;
  plain.eflags &= (uint16_t)~NBD_FLAG_SEND_DF;
  CU_ASSERT_EQUAL(check(&plain, NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512),
                  NBD_EINVAL);
  CU_ASSERT_EQUAL(check(&plain, NBD_CMD_BLOCK_STATUS, 0, 0, 512), NBD_EINVAL);
  /* FAST_ZERO when not advertised. */
  plain.eflags &= (uint16_t)~NBD_FLAG_SEND_FAST_ZERO;
  CU_ASSERT_EQUAL(check(&plain, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO,
                        0, 512), NBD_EINVAL);
}

static void test_errno_map(void)
{
  CU_ASSERT_EQUAL(nbd_errno_to_wire(0), 0);
  CU_ASSERT_EQUAL(nbd_errno_to_wire(-EROFS), NBD_EPERM);
  CU_ASSERT_EQUAL(nbd_errno_to_wire(-EDQUOT), NBD_ENOSPC);
  CU_ASSERT_EQUAL(nbd_errno_to_wire(-EFBIG), NBD_ENOSPC);
  CU_ASSERT_EQUAL(nbd_errno_to_wire(-ENOTSUP), NBD_ENOTSUP);
  CU_ASSERT_EQUAL(nbd_errno_to_wire(-EOVERFLOW), NBD_EOVERFLOW);
  CU_ASSERT_EQUAL(nbd_errno_to_wire(-ENOENT), NBD_EIO);
  CU_ASSERT_EQUAL(nbd_errno_to_wire(-EIO), NBD_EIO);
}

static void test_parse_info(void)
{
  uint8_t b[64];
  struct nbd_opt_info oi;

  vd_put_be32(b, 4);
  memcpy(b + 4, "disk", 4);
  vd_put_be16(b + 8, 2);
  vd_put_be16(b + 10, NBD_INFO_NAME);
  vd_put_be16(b + 12, NBD_INFO_BLOCK_SIZE);
  CU_ASSERT_EQUAL(nbd_parse_opt_info(b, 14, &oi), 0);
  CU_ASSERT_EQUAL(oi.name_len, 4);
  CU_ASSERT_EQUAL(memcmp(oi.name, "disk", 4), 0);
  CU_ASSERT_EQUAL(oi.nreqs, 2);
  CU_ASSERT_EQUAL(vd_get_be16(oi.reqs + 2), NBD_INFO_BLOCK_SIZE);
  /* One byte too few / too many, a name longer than the option, a NUL. */
  CU_ASSERT_EQUAL(nbd_parse_opt_info(b, 13, &oi), -EINVAL);
  CU_ASSERT_EQUAL(nbd_parse_opt_info(b, 15, &oi), -EINVAL);
  CU_ASSERT_EQUAL(nbd_parse_opt_info(b, 5, &oi), -EINVAL);
  vd_put_be32(b, 0xffffffffu);
  CU_ASSERT_EQUAL(nbd_parse_opt_info(b, 14, &oi), -EINVAL);
  vd_put_be32(b, 4);
  b[5] = 0;
  CU_ASSERT_EQUAL(nbd_parse_opt_info(b, 14, &oi), -EINVAL);
}

static void test_parse_meta(void)
{
  uint8_t b[128];
  struct nbd_opt_meta m;
  uint32_t pos = 0, qlen, len;
  const char *q;

  vd_put_be32(b, 0);                 /* export "" */
  vd_put_be32(b + 4, 2);             /* two queries */
  vd_put_be32(b + 8, 15);
  memcpy(b + 12, "base:allocation", 15);
  vd_put_be32(b + 27, 5);
  memcpy(b + 31, "base:", 5);
  len = 36;
  CU_ASSERT_EQUAL(nbd_parse_opt_meta(b, len, &m), 0);
  CU_ASSERT_EQUAL(m.nqueries, 2);
  CU_ASSERT_TRUE(nbd_meta_next_query(&m, &pos, &q, &qlen));
  CU_ASSERT_TRUE(nbd_meta_query_matches_alloc(q, qlen, false));
  CU_ASSERT_TRUE(nbd_meta_next_query(&m, &pos, &q, &qlen));
  CU_ASSERT_FALSE(nbd_meta_query_matches_alloc(q, qlen, false));
  CU_ASSERT_TRUE(nbd_meta_query_matches_alloc(q, qlen, true));
  CU_ASSERT_FALSE(nbd_meta_next_query(&m, &pos, &q, &qlen));
  CU_ASSERT_FALSE(nbd_meta_query_matches_alloc("base:alloc", 10, true));

  /* Truncated, trailing garbage, query count larger than the data. */
  CU_ASSERT_EQUAL(nbd_parse_opt_meta(b, len - 1, &m), -EINVAL);
  CU_ASSERT_EQUAL(nbd_parse_opt_meta(b, len + 1, &m), -EINVAL);
  vd_put_be32(b + 4, 3);
  CU_ASSERT_EQUAL(nbd_parse_opt_meta(b, len, &m), -EINVAL);
  vd_put_be32(b + 4, 2);
  vd_put_be32(b + 27, 0x7fffffffu);
  CU_ASSERT_EQUAL(nbd_parse_opt_meta(b, len, &m), -EINVAL);
  CU_ASSERT_EQUAL(nbd_parse_opt_meta(b, 7, &m), -EINVAL);
}

/* The qemu: namespace as qemu-nbd parses it (docs/interop/nbd.txt):
 * full names in both options, the bare namespace and the bare
 * "qemu:dirty-bitmap:" prefix only when listing. */
static void test_meta_match(void)
{
  const char *leaf = NULL;
  uint32_t ll = 0;
#define M(s, list) nbd_meta_query_match(s, (uint32_t)strlen(s), list, &leaf, &ll)
  CU_ASSERT_EQUAL(M("base:allocation", false), NBD_META_ALLOC);
  CU_ASSERT_EQUAL(M("base:", true), NBD_META_ALLOC);
  CU_ASSERT_EQUAL(M("base:", false), NBD_META_NONE);
  CU_ASSERT_EQUAL(M("qemu:allocation-depth", false), NBD_META_DEPTH);
  CU_ASSERT_EQUAL(M("qemu:allocation-depth", true), NBD_META_DEPTH);
  CU_ASSERT_EQUAL(M("qemu:allocation-dept", true), NBD_META_NONE);
  CU_ASSERT_EQUAL(M("qemu:", true), NBD_META_QEMU_ALL);
  CU_ASSERT_EQUAL(M("qemu:", false), NBD_META_NONE);
  CU_ASSERT_EQUAL(M("qemu:dirty-bitmap:", true), NBD_META_BITMAPS_ALL);
  CU_ASSERT_EQUAL(M("qemu:dirty-bitmap:", false), NBD_META_NONE);
  CU_ASSERT_EQUAL(M("qemu:dirty-bitmap:b0", false), NBD_META_BITMAP);
  CU_ASSERT_EQUAL(ll, 2);
  CU_ASSERT_NSTRING_EQUAL(leaf, "b0", 2);
  CU_ASSERT_EQUAL(M("qemu:dirty-bitmap:b0", true), NBD_META_BITMAP);
  CU_ASSERT_EQUAL(M("qemu:dirty-bitmap", true), NBD_META_NONE);
  CU_ASSERT_EQUAL(M("qemu", true), NBD_META_NONE);
  CU_ASSERT_EQUAL(M("", true), NBD_META_NONE);
  CU_ASSERT_EQUAL(M("QEMU:allocation-depth", false), NBD_META_NONE);
#undef M
}

int main(void)
{
  static const struct cu_test tests[] = {
    { "request encode/decode", test_request_roundtrip },
    { "reply encoders", test_encoders },
    { "valid requests", test_check_valid },
    { "invalid requests", test_check_errors },
    { "errno mapping", test_errno_map },
    { "INFO/GO payload", test_parse_info },
    { "META_CONTEXT payload", test_parse_meta },
    { "meta context names", test_meta_match },
    { NULL, NULL },
  };
  return cu_main("nbd-proto", tests);
}
