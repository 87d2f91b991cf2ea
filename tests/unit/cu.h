/* Tiny CUnit harness shared by the unit-test programs: each program
 * defines its tests in a table and calls cu_main(). */
#ifndef VD_TEST_CU_H
#define VD_TEST_CU_H

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>

struct cu_test {
  const char *name;
  void (*fn)(void);
};

/* Run one suite; exit status 0 only if every assertion passed. */
static inline int
cu_main(const char *suite, const struct cu_test *tests)
{
  if (CU_initialize_registry() != CUE_SUCCESS)
    return 99;
  CU_pSuite s = CU_add_suite(suite, NULL, NULL);
  if (!s)
    return 99;
  for (const struct cu_test *t = tests; t->name; t++)
    if (!CU_add_test(s, t->name, t->fn))
      return 99;
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failed = CU_get_number_of_failures() +
                    CU_get_number_of_tests_failed();
  unsigned run = CU_get_number_of_tests_run();
  CU_cleanup_registry();
  if (run == 0) {
    fprintf(stderr, "%s: no test ran\n", suite);
    return 99;
  }
  return failed ? 1 : 0;
}

#endif
