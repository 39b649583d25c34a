/*
 * score.h: position buckets, and the scorer against the reference log-probs.
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

#include "engine_fixture.h"
#include "errors.h"
#include "forward.h"
#include "model.h"
#include "score.h"
#include "state.h"

static char err[1024];

static void buckets(void **u)
{
    assert_int_equal(score_bucket_of(0), 0);
    assert_int_equal(score_bucket_of(1), 1);
    assert_int_equal(score_bucket_of(2), 2);
    assert_int_equal(score_bucket_of(3), 2);
    assert_int_equal(score_bucket_of(4), 3);
    assert_int_equal(score_bucket_of(131071), 17);
    assert_int_equal(score_bucket_of(131072), 18);
    struct score_stats a, b;
    score_stats_init(&a);
    score_stats_init(&b);
    score_stats_add(&a, 0, -1.0);
    score_stats_add(&a, 5, -2.0);
    score_stats_add(&b, 5, -4.0);
    score_stats_merge(&a, &b);
    assert_int_equal(a.n, 3);
    assert_int_equal(a.nb, 4);
    assert_int_equal(a.b[3].start, 4);
    assert_int_equal(a.b[3].end, 8);
    assert_int_equal(a.b[3].n, 2);
    assert_true(fabs(score_ppl(a.b[3].nll, a.b[3].n) - exp(3.0)) < 1e-12);
    assert_true(isnan(score_ppl(0, 0)));
}

struct lp_list {
    double lp[256];
    int64_t pos[256];
    int n;
};

static int collect(void *ud, const struct score_token *t)
{
    struct lp_list *l = ud;
    l->lp[l->n] = t->logprob;
    l->pos[l->n++] = t->pos;
    assert_true(t->n_top == 3);
    assert_true(t->top_logprobs[0] >= t->top_logprobs[1]);
    assert_true(t->top_logprobs[1] >= t->top_logprobs[2]);
    assert_true(t->logprob <= t->top_logprobs[0] + 1e-6f);
    return 0;
}

/* Scored log-probs equal log_softmax of transformers' logits at the next
 * token, and scoring in two calls equals one. */
static void scorer_matches_reference(void **u)
{
    struct model *m = load_fixture("m2_small");
    int32_t *ids;
    int T, V;
    float *ref;
    fixture_ids("m2_small", &ids, &T, &ref, &V);
    struct fwd *f;
    struct scorer *sc;
    struct mstate *s;
    assert_int_equal(fwd_create(m, 16, &f), 0);
    assert_int_equal(scorer_create(f, 3, &sc), 0);
    assert_int_equal(state_create(m, &s), 0);
    struct lp_list one = {0}, two = {0};
    struct score_stats st1, st2;
    score_stats_init(&st1);
    score_stats_init(&st2);
    assert_int_equal(scorer_run(sc, s, ids, (size_t)T, &st1, collect, &one, err, sizeof err), 0);
    assert_int_equal(one.n, T - 1);
    for (int t = 1; t < T; t++) {
        const float *row = ref + (size_t)(t - 1) * V;
        double want = row[ids[t]] - score_logsumexp(row, V);
        if (fabs(one.lp[t - 1] - want) > 1e-4 * (1 + fabs(want)))
            fail_msg("token %d: logprob %.7f, transformers %.7f", t, one.lp[t - 1], want);
        assert_int_equal(one.pos[t - 1], t);
    }
    state_reset(s);
    assert_int_equal(scorer_run(sc, s, ids, 23, &st2, collect, &two, err, sizeof err), 0);
    assert_int_equal(scorer_run(sc, s, ids + 23, (size_t)T - 23, &st2, collect, &two, err,
                                sizeof err),
                     0);
    assert_int_equal(two.n, T - 1);
    for (int i = 0; i < T - 1; i++)
        assert_true(fabs(one.lp[i] - two.lp[i]) < 1e-5);
    assert_int_equal(st1.nb, st2.nb);
    assert_true(fabs(st1.nll - st2.nll) < 1e-4);
    /* a bad id is refused before the state moves */
    int64_t pos = s->pos;
    int32_t badids[2] = {1, 96};
    assert_int_equal(scorer_run(sc, s, badids, 2, &st2, NULL, NULL, err, sizeof err), RC_EINVAL);
    assert_int_equal(s->pos, pos);
    free(ids), free(ref);
    state_free(s);
    scorer_free(sc);
    fwd_free(f);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(buckets),
        cmocka_unit_test(scorer_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
