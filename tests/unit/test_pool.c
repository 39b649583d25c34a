/*
 * pool.h: the fork-join pool runs each item exactly once.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "pool.h"

struct sum_ctx {
    long hits[1000];
};

static void add_item(void *ctx, int i) { __atomic_fetch_add(&((struct sum_ctx *)ctx)->hits[i], 1, __ATOMIC_RELAXED); }

static void pool_runs_each_item_once(void **u)
{
    struct pool *p = pool_create(3);
    assert_non_null(p);
    assert_int_equal(pool_threads(p), 3);
    static struct sum_ctx c;
    for (int round = 0; round < 20000; round++) {
        int n = 1 + round % 97;
        memset(c.hits, 0, sizeof c.hits);
        pool_run(p, n, add_item, &c);
        for (int i = 0; i < n; i++)
            if (c.hits[i] != 1)
                fail_msg("round %d: item %d ran %ld times", round, i, c.hits[i]);
        for (int i = n; i < 100; i++)
            assert_int_equal(c.hits[i], 0);
    }
    pool_free(p);
    pool_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pool_runs_each_item_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
