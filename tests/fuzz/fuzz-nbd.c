/* Fuzz harness: the NBD handshake and request parser of vdisk-nbd.
 *
 * Input: one mode byte (bit 0: the server requires TLS), then the byte
 * stream a client sends.  The whole option haggling (nbd-server/
 * negotiate.c) runs over it against two fake exports; if the client
 * reaches transmission, the rest is parsed as requests (decode, validate,
 * skip write payloads) the way the connection reader does.  Every byte
 * the server would send is read back, so that a reply built from
 * out-of-bounds memory shows up under the sanitizers.
 *
 * The first export offers qemu:allocation-depth and two dirty bitmaps
 * (qemu-nbd -A -B b0 -B b1), the second nothing but base:allocation.
 *
 * Invariants checked (abort on violation): a client never reaches
 * transmission after more than NBD_MAX_OPTIONS options, the contexts it
 * selected are ones its export offers, and no READ,
 * WRITE or CACHE longer than the export's maximum payload is accepted.
 * The transport has no deadline (io.deadline 0): the handshake time
 * limit is tested by tests/integration/nbd-handshake.sh.
 */
#include <config.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/endian.h"
#include "nbd-server/proto.h"
#include "nbd-server/server.h"

struct fuzz_io {
  struct nbd_io io;            /* first: the callbacks get &io */
  const uint8_t *p;
  size_t left;
  uint32_t sum;
};

static ssize_t fuzz_recv(struct nbd_io *io, void *buf, size_t len)
{
  struct fuzz_io *f = (struct fuzz_io *)io;
  size_t n = len < f->left ? len : f->left;
  if (n == 0)
    return 0;
  memcpy(buf, f->p, n);
  f->p += n;
  f->left -= n;
  return (ssize_t)n;
}

static int fuzz_sendv(struct nbd_io *io, const struct iovec *iov, int n)
{
  struct fuzz_io *f = (struct fuzz_io *)io;
  int i;
  for (i = 0; i < n; i++) {
    const uint8_t *b = iov[i].iov_base;
    size_t k;
    for (k = 0; k < iov[i].iov_len; k++)
      f->sum = f->sum * 31 + b[k];
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static char *bitmaps[] = { (char *)"b0", (char *)"b1", NULL };
  static struct nbd_export exps[2] = {
    { .id = (char *)"disk", .name = (char *)"disk", .description = (char *)"fuzz disk",
      .bitmaps = bitmaps, .alloc_depth = true,
      .size = UINT64_C(1) << 40, .multi_conn = true,
      .min_block = 512, .pref_block = 4096, .max_block = NBD_MAX_PAYLOAD },
    { .id = (char *)"ro", .name = (char *)"ro", .size = 12345, .read_only = true,
      .min_block = 1, .pref_block = 4096, .max_block = NBD_MAX_PAYLOAD },
  };
  /* Static exports without a release callback: the registry frees
   * nothing of them. */
  static struct nbd_exports *reg;
  if (!reg) {
    reg = nbd_exports_new();
    if (!reg || nbd_exports_add(reg, &exps[0], true) < 0 ||
        nbd_exports_add(reg, &exps[1], false) < 0)
      abort();
  }
  struct nbd_server srv = { .exports = reg };
  struct fuzz_io f = { .io = { .recv = fuzz_recv, .sendv = fuzz_sendv,
                               .fd = -1 } };
  struct nbd_session s;
  struct nbd_req_ctx ctx;

  if (size < 1)
    return 0;
  srv.tls = data[0] & 1 ? NBD_TLS_REQUIRE : NBD_TLS_OFF;
  f.p = data + 1;
  f.left = size - 1;
  if (nbd_negotiate(&srv, &f.io, &s) != 1)
    return 0;
  /* Count the options the server consumed: after the 4 flag bytes,
   * headers of 16 bytes each followed by their payload, read whole or
   * skipped whole. */
  {
    const uint8_t *in = data + 1;
    size_t used = size - 1 - f.left, pos = 4;
    unsigned nopts = 0;
    while (pos + NBD_OPT_HDR_LEN <= used) {
      nopts++;
      pos += NBD_OPT_HDR_LEN + (size_t)vd_get_be32(in + pos + 12);
    }
    if (nopts > NBD_MAX_OPTIONS)
      abort();
  }

  if ((s.meta.depth && !s.exp->alloc_depth) ||
      (s.meta.bitmaps && s.exp->bitmaps != bitmaps) ||
      (s.meta.bitmaps & ~UINT64_C(3)) ||
      ((s.meta.alloc || s.meta.depth || s.meta.bitmaps) && !s.structured))
    abort();
  ctx = (struct nbd_req_ctx){ .size = s.exp->size, .eflags = s.eflags,
                              .structured = s.structured,
                              .meta_any = nbd_meta_sel_any(&s.meta),
                              .max_payload = s.exp->max_block };
  while (f.left >= NBD_REQUEST_LEN) {
    struct nbd_request req;
    uint32_t err;
    bool ok = nbd_request_decode(f.p, &req);
    f.p += NBD_REQUEST_LEN;
    f.left -= NBD_REQUEST_LEN;
    if (!ok)
      break;
    err = nbd_request_check(&req, &ctx, NULL);
    if (err == 0 && req.length > ctx.max_payload &&
        (req.type == NBD_CMD_READ || req.type == NBD_CMD_WRITE ||
         req.type == NBD_CMD_CACHE))
      abort();
    if (err == 0 && req.type == NBD_CMD_DISC)
      break;
    if (nbd_request_has_payload(&req)) {
      size_t skip = req.length < f.left ? req.length : f.left;
      f.p += skip;
      f.left -= skip;
    }
  }
  nbd_export_detach(reg, s.exp, s.user);
  /* Every reference the negotiation took was given back. */
  if (exps[0].refs != 1 || exps[1].refs != 1)
    abort();
  return 0;
}
