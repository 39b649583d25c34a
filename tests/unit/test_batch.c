/* server/batch: tick planning. Decode rows first and in order, whole
 * prefill chunks within the budget, streamed input waiting for a whole
 * chunk, the decode scratch limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "batch.h"

#define GEN(rows) {(rows), 0, 0}
#define INPUT(left, eof) {0, (left), (eof)}

static void test_prefill_chunking(void **u)
{
    (void)u;
    struct batch_limits lim = {64, 16, 100};
    struct batch_want w[3] = {INPUT(40, 1), INPUT(5, 1), INPUT(16, 1)};
    struct batch_take t[3];
    assert_int_equal(batch_plan(&lim, w, 3, t), 16 + 5 + 16);
    assert_int_equal(t[0].prefill, 16); /* at most a chunk per job */
    assert_int_equal(t[1].prefill, 5);  /* the last, short chunk */
    assert_int_equal(t[2].prefill, 16);
    for (int i = 0; i < 3; i++)
        assert_int_equal(t[i].decode_rows, 0);
}

static void test_streamed_input_waits_for_whole_chunk(void **u)
{
    (void)u;
    struct batch_limits lim = {64, 16, 100};
    struct batch_want w[3] = {INPUT(15, 0), INPUT(15, 1), INPUT(33, 0)};
    struct batch_take t[3];
    batch_plan(&lim, w, 3, t);
    assert_int_equal(t[0].prefill, 0);  /* more may come: wait */
    assert_int_equal(t[1].prefill, 15); /* the end is known: go */
    assert_int_equal(t[2].prefill, 16);
    assert_int_equal(batch_prefill_chunk(&lim, &w[0]), 0);
    assert_int_equal(batch_prefill_chunk(&lim, &w[2]), 16);
}

static void test_decode_rows_first_and_budget(void **u)
{
    (void)u;
    /* budget 20: three decode rows (one job with two choices) go first
     * even though the input job comes first in order; the 16-token chunk
     * then fits (3 + 16 <= 20), the next one does not and waits whole,
     * while a smaller one later in the order still fits */
    struct batch_limits lim = {20, 16, 100};
    struct batch_want w[5] = {INPUT(16, 1), GEN(1), INPUT(16, 1), GEN(2), INPUT(1, 1)};
    struct batch_take t[5];
    assert_int_equal(batch_plan(&lim, w, 5, t), 20);
    assert_int_equal(t[1].decode_rows, 1);
    assert_int_equal(t[3].decode_rows, 2);
    assert_int_equal(t[0].prefill, 16);
    assert_int_equal(t[2].prefill, 0); /* never cut by the budget */
    assert_int_equal(t[4].prefill, 1);
}

static void test_batch_tokens_cap_on_decode(void **u)
{
    (void)u;
    /* more generating rows than the budget: the first ones in order get
     * theirs, a job with lanes may get only its first lanes, no prefill */
    struct batch_limits lim = {4, 4, 100};
    struct batch_want w[4] = {GEN(1), GEN(2), GEN(3), INPUT(2, 1)};
    struct batch_take t[4];
    assert_int_equal(batch_plan(&lim, w, 4, t), 4);
    assert_int_equal(t[0].decode_rows, 1);
    assert_int_equal(t[1].decode_rows, 2);
    assert_int_equal(t[2].decode_rows, 1);
    assert_int_equal(t[3].prefill, 0);
}

static void test_decode_scratch_limit(void **u)
{
    (void)u;
    struct batch_limits lim = {64, 16, 3};
    struct batch_want w[3] = {GEN(2), GEN(2), INPUT(8, 1)};
    struct batch_take t[3];
    assert_int_equal(batch_plan(&lim, w, 3, t), 3 + 8);
    assert_int_equal(t[0].decode_rows, 2);
    assert_int_equal(t[1].decode_rows, 1); /* the rest wait */
    assert_int_equal(t[2].prefill, 8);     /* the budget still serves input */
}

/* Fairness is the caller's rotation: the same wants in another order give
 * the budget to whoever comes first. */
static void test_order_decides_who_waits(void **u)
{
    (void)u;
    struct batch_limits lim = {16, 16, 100};
    struct batch_want a[2] = {INPUT(16, 1), INPUT(16, 1)};
    struct batch_take t[2];
    batch_plan(&lim, a, 2, t);
    assert_int_equal(t[0].prefill, 16);
    assert_int_equal(t[1].prefill, 0);
    struct batch_want idle[2] = {{0, 0, 1}, {0, 0, 0}};
    assert_int_equal(batch_plan(&lim, idle, 2, t), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_chunking),
        cmocka_unit_test(test_streamed_input_waits_for_whole_chunk),
        cmocka_unit_test(test_decode_rows_first_and_budget),
        cmocka_unit_test(test_batch_tokens_cap_on_decode),
        cmocka_unit_test(test_decode_scratch_limit),
        cmocka_unit_test(test_order_decides_who_waits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
