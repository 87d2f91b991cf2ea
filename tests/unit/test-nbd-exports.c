/* The NBD export registry (nbd-server/exports.c): lookups, the default
 * export, references per user, safe and hard deletion, release after the
 * last reference. */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/unit/cu.h"
#include "nbd-server/exports.h"

static int released;
static const char *released_id;

static void on_release(struct nbd_export *e, void *opaque)
{
  (void)opaque;
  released++;
  released_id = e->id;
}

static void mk(struct nbd_export *e, const char *id, const char *name)
{
  memset(e, 0, sizeof *e);
  e->id = (char *)id;
  e->name = (char *)name;
  e->release = on_release;
}

static void test_lookup(void)
{
  struct nbd_exports *r = nbd_exports_new();
  struct nbd_export a, b, c, d, *x;

  mk(&a, "a", "disk");
  mk(&b, "b", "other");
  CU_ASSERT_EQUAL(nbd_exports_add(r, &a, true), 0);
  CU_ASSERT_EQUAL(nbd_exports_add(r, &b, true), 0);  /* a stays default */
  mk(&c, "a", "third");
  CU_ASSERT_EQUAL(nbd_exports_add(r, &c, false), -EEXIST);
  mk(&c, "c", "other");
  CU_ASSERT_EQUAL(nbd_exports_add(r, &c, false), -EADDRINUSE);

  x = nbd_exports_get(r, "other", 5);
  CU_ASSERT_PTR_EQUAL(x, &b);
  nbd_export_put(r, x);
  x = nbd_exports_get(r, "oth", 3);
  CU_ASSERT_PTR_NULL(x);
  x = nbd_exports_get(r, "", 0);
  CU_ASSERT_PTR_EQUAL(x, &a);
  nbd_export_put(r, x);
  /* An export really named "" wins over the default. */
  mk(&d, "d", "");
  CU_ASSERT_EQUAL(nbd_exports_add(r, &d, false), 0);
  x = nbd_exports_get(r, "", 0);
  CU_ASSERT_PTR_EQUAL(x, &d);
  nbd_export_put(r, x);

  struct nbd_export **v;
  long n = nbd_exports_list(r, true, &v);
  CU_ASSERT_EQUAL(n, 3);
  if (n == 3) {
    CU_ASSERT_PTR_EQUAL(v[0], &a);
    CU_ASSERT_PTR_EQUAL(v[1], &b);
    CU_ASSERT_PTR_EQUAL(v[2], &d);
    CU_ASSERT_EQUAL(a.refs, 2);
  }
  nbd_exports_put_all(r, v, (size_t)n);
  CU_ASSERT_EQUAL(a.refs, 1);

  released = 0;
  nbd_exports_free(r);
  CU_ASSERT_EQUAL(released, 3);
}

static void test_del_safe(void)
{
  struct nbd_exports *r = nbd_exports_new();
  struct nbd_export a, *x;
  struct nbd_export_user *u;
  int sv[2];

  CU_ASSERT_EQUAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  mk(&a, "a", "disk");
  CU_ASSERT_EQUAL(nbd_exports_add(r, &a, true), 0);
  x = nbd_exports_get(r, "disk", 4);
  u = nbd_export_attach(r, x, sv[0]);
  nbd_export_put(r, x);
  CU_ASSERT_PTR_NOT_NULL(u);
  /* A lookup alone is no user; an attached connection is. */
  CU_ASSERT_EQUAL(nbd_exports_del(r, "a", NBD_DEL_SAFE), -EBUSY);
  CU_ASSERT_EQUAL(nbd_exports_del(r, "zz", NBD_DEL_SAFE), -ENOENT);
  nbd_export_detach(r, &a, u);
  released = 0;
  CU_ASSERT_EQUAL(nbd_exports_del(r, "a", NBD_DEL_SAFE), 0);
  CU_ASSERT_EQUAL(released, 1);
  CU_ASSERT_PTR_NULL(nbd_exports_get(r, "disk", 4));
  CU_ASSERT_PTR_NULL(nbd_exports_get(r, "", 0));
  CU_ASSERT_PTR_NULL(nbd_exports_get_id(r, "a"));
  /* The id is free again. */
  mk(&a, "a", "disk");
  CU_ASSERT_EQUAL(nbd_exports_add(r, &a, false), 0);
  nbd_exports_free(r);
  close(sv[0]);
  close(sv[1]);
}

static void test_del_hard(void)
{
  struct nbd_exports *r = nbd_exports_new();
  struct nbd_export a, b, *x;
  struct nbd_export_user *u;
  char c;
  int sv[2];

  CU_ASSERT_EQUAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  mk(&a, "a", "disk");
  CU_ASSERT_EQUAL(nbd_exports_add(r, &a, false), 0);
  x = nbd_exports_get(r, "disk", 4);
  u = nbd_export_attach(r, x, sv[0]);
  CU_ASSERT_PTR_NOT_NULL(u);
  released = 0;
  CU_ASSERT_EQUAL(nbd_exports_del(r, "a", NBD_DEL_HARD), 0);
  /* The user's read side is shut: its reader sees the end at once. */
  CU_ASSERT_EQUAL(recv(sv[0], &c, 1, MSG_DONTWAIT), 0);
  /* Unlisted at once, but alive while referenced; its id is taken. */
  CU_ASSERT_EQUAL(released, 0);
  CU_ASSERT_PTR_NULL(nbd_exports_get(r, "disk", 4));
  CU_ASSERT_EQUAL(nbd_exports_del(r, "a", NBD_DEL_HARD), -EALREADY);
  mk(&b, "a", "new");
  CU_ASSERT_EQUAL(nbd_exports_add(r, &b, false), -EEXIST);
  /* A late GO on the looked-up export is refused. */
  CU_ASSERT_PTR_NULL(nbd_export_attach(r, x, sv[0]));
  nbd_export_put(r, x);
  CU_ASSERT_EQUAL(released, 0);
  nbd_export_detach(r, &a, u);
  CU_ASSERT_EQUAL(released, 1);
  CU_ASSERT_STRING_EQUAL(released_id, "a");
  CU_ASSERT_EQUAL(nbd_exports_add(r, &b, false), 0);
  nbd_exports_free(r);
  close(sv[0]);
  close(sv[1]);
}

int main(void)
{
  static const struct cu_test tests[] = {
    { "lookup, default export, list", test_lookup },
    { "safe delete", test_del_safe },
    { "hard delete", test_del_hard },
    { NULL, NULL },
  };
  return cu_main("nbd-exports", tests);
}
