/*
 * core/score: position buckets; the scorer against the reference log-probs;
 * the one top-k and the one row-scoring path, checked against brute force;
 * padded vocabularies (n_vocab > vocab_size) rank only real tokens, in
 * score_row and in the scorer over a padded model.
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
#include "sampler.h"
#include "score.h"
#include "state.h"
#include "test_logits.h"
#include "tiny_model.h"

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

#define V 1000

static double brute_lse(const float *l, int n)
{
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++)
        mx = fmax(mx, l[i]);
    for (int i = 0; i < n; i++)
        s += exp(l[i] - mx);
    return mx + log(s);
}

static void test_top_and_logprob(void **u)
{
    (void)u;
    float l[V];
    make_logits(l, V, 11);
    l[17] = l[18] = 10.0f; /* a tie at the top: lower id first */
    double lse = brute_lse(l, V);
    int32_t ids[8];
    float lps[8];
    int nt;
    double lp5 = score_row(l, V, V, 5, 8, ids, lps, &nt);
    assert_int_equal(nt, 8);
    assert_int_equal(ids[0], 17);
    assert_int_equal(ids[1], 18);
    for (int i = 0; i < 8; i++) {
        assert_true(fabs(lps[i] - (l[ids[i]] - lse)) < 1e-5);
        if (i)
            assert_true(lps[i] <= lps[i - 1]);
        /* nothing outside the list beats its last entry */
        int above = 0;
        for (int j = 0; j < V; j++)
            above += l[j] > l[ids[7]];
        assert_true(above <= 7);
    }
    assert_true(fabs(lp5 - (l[5] - lse)) < 1e-5);
}

static void test_top_k_nonfinite_and_short(void **u)
{
    (void)u;
    float x[6] = {1.0f, NAN, INFINITY, 2.0f, -INFINITY, 2.0f};
    int32_t ids[8];
    /* non-finite values count as -inf: they come after every finite one,
     * in id order among themselves */
    assert_int_equal(score_top_k(x, 6, 8, ids), 6);
    int32_t want[6] = {3, 5, 0, 1, 2, 4};
    for (int i = 0; i < 6; i++)
        assert_int_equal(ids[i], want[i]);
    assert_int_equal(score_top_k(x, 6, 2, ids), 2);
    assert_int_equal(ids[0], 3);
    assert_int_equal(ids[1], 5);
    assert_int_equal(score_top_k(x, 0, 2, ids), 0);
}

/* A padded row: ids [50, 64) are lm_head rows but not tokens. Their
 * logits are the largest here; they count in the normaliser (as the
 * reference models' log-softmax) but are never an alternative. */
static void test_row_padded_vocab(void **u)
{
    (void)u;
    enum { NV = 64, VS = 50 };
    float l[NV];
    make_logits(l, NV, 3);
    for (int i = VS; i < NV; i++)
        l[i] = 20.0f + (float)i;
    int32_t ids[64];
    float lps[64];
    int nt = -1;
    double lp = score_row(l, NV, VS, 7, 64, ids, lps, &nt);
    assert_int_equal(nt, VS); /* at most every real token */
    for (int i = 0; i < nt; i++) {
        assert_true(ids[i] >= 0 && ids[i] < VS);
        if (i)
            assert_true(l[ids[i]] <= l[ids[i - 1]]);
    }
    double lse = brute_lse(l, NV);
    assert_true(fabs(lp - (l[7] - lse)) < 1e-6 * (1 + fabs(lp)));
    assert_true(fabs(lps[0] - (l[ids[0]] - lse)) < 1e-4);
}

struct tops {
    int calls, max_top, bad;
};

static int check_tops(void *ud, const struct score_token *t)
{
    struct tops *c = ud;
    c->calls++;
    if (t->n_top > c->max_top)
        c->max_top = t->n_top;
    for (int i = 0; i < t->n_top; i++)
        c->bad += t->top_ids[i] < 0 || t->top_ids[i] >= 50;
    return 0;
}

/* The scorer over a model whose vocabulary is padded (50 tokens, 64 rows):
 * asking for 64 alternatives gives the 50 real tokens, never a padded id. */
static void test_scorer_padded_model(void **u)
{
    (void)u;
    struct model *m;
    assert_int_equal(tiny_mamba2(1, 50, 16, 7, &m), 0);
    assert_true(model_config(m)->n_vocab > model_config(m)->vocab_size);
    struct fwd *f;
    struct scorer *sc;
    struct mstate *s;
    assert_int_equal(fwd_create(m, 8, &f), 0);
    assert_int_equal(scorer_create(f, 64, &sc), 0);
    assert_int_equal(state_create(m, &s), 0);
    int32_t ids[12];
    for (int i = 0; i < 12; i++)
        ids[i] = (int32_t)(i * 7 % 50);
    struct score_stats st;
    score_stats_init(&st);
    struct tops c = {0};
    char why[256];
    assert_int_equal(scorer_run(sc, s, ids, 12, &st, check_tops, &c, why, sizeof why), 0);
    assert_int_equal(c.calls, 11);
    assert_int_equal(c.max_top, 50);
    assert_int_equal(c.bad, 0);
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
        cmocka_unit_test(test_top_and_logprob),
        cmocka_unit_test(test_top_k_nonfinite_and_short),
        cmocka_unit_test(test_row_padded_vocab),
        cmocka_unit_test(test_scorer_padded_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
