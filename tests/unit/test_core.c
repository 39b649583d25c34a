/*
 * State layout, scoring, kernels, pool, batch validation and allocation
 * failure handling of librecur.
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
#include <jansson.h>

#include "alloc.h"
#include "errors.h"
#include "forward.h"
#include "kernels.h"
#include "model.h"
#include "pool.h"
#include "safetensors.h"
#include "score.h"
#include "state.h"

static char err[1024];

static struct model *load_fixture(const char *name)
{
    char dir[512];
    struct model *m = NULL;
    snprintf(dir, sizeof dir, "%s/engine/%s", RECUR_FIXTURES, name);
    if (model_load(dir, &m, err, sizeof err))
        fail_msg("%s: %s", dir, err);
    return m;
}

static void fixture_ids(const char *name, int32_t **ids, int *T, float **logits, int *V)
{
    char path[512];
    struct st_file *f;
    snprintf(path, sizeof path, "%s/engine/%s/reference.safetensors", RECUR_FIXTURES, name);
    assert_int_equal(st_open(path, &f, err, sizeof err), 0);
    const struct st_tensor *t = st_find(f, "input_ids"), *l = st_find(f, "logits");
    *T = (int)t->shape[0];
    *ids = malloc((size_t)*T * 4);
    memcpy(*ids, t->data, (size_t)*T * 4);
    if (logits) {
        *V = (int)l->shape[1];
        *logits = malloc(l->nelem * 4);
        st_to_f32(l, *logits);
    }
    st_close(f);
}

/* ------------------------------------------------------------- state */

static void state_sizes(void **u)
{
    struct model_config c;
    struct model *m;
    assert_int_equal(model_config_named("mamba2-130m", &c), 0);
    assert_int_equal(model_create_random(&c, 1, &m, err, sizeof err), 0);
    /* 24 layers x (3 x 1792 conv + 24 x 64 x 128 ssm) + 768 last, fp32 */
    assert_int_equal(state_bytes(m), (size_t)4 * (768 + 24 * (3 * 1792 + 24 * 64 * 128)));
    assert_true(state_bytes(m) > 18 * 1048576 && state_bytes(m) < 19 * 1048576);
    model_free(m);
}

static void state_roundtrip_and_rejects(void **u)
{
    struct model *m = load_fixture("m2_small"), *m1 = load_fixture("m1_small");
    struct fwd *f;
    struct mstate *a, *b, *other;
    int32_t *ids;
    int T;
    fixture_ids("m2_small", &ids, &T, NULL, NULL);
    assert_int_equal(fwd_create(m, 32, &f), 0);
    assert_int_equal(state_create(m, &a), 0);
    assert_int_equal(state_create(m, &b), 0);
    assert_int_equal(state_create(m1, &other), 0);
    assert_int_equal(fwd_prefill(f, a, ids, (size_t)T, err, sizeof err), 0);
    size_t n = state_serialized_bytes(m);
    uint8_t *buf = malloc(n), *bad = malloc(n);
    assert_int_equal(state_serialize(a, buf, n), 0);
    assert_int_equal(state_serialize(a, buf, n - 1), RC_ERANGE);
    assert_int_equal(state_deserialize(b, buf, n, err, sizeof err), 0);
    assert_int_equal(b->pos, T);
    assert_int_equal(b->has_last, 1);
    assert_memory_equal(a->block, b->block, state_bytes(m));
    /* another model's state */
    assert_int_equal(state_copy(other, a), RC_EMISMATCH);
    assert_int_not_equal(state_deserialize(other, buf, n, err, sizeof err), 0);
    /* every truncation is refused and leaves the target unchanged */
    state_reset(b);
    for (size_t len = 0; len < n; len += 1 + len / 16)
        assert_int_not_equal(state_deserialize(b, buf, len, err, sizeof err), 0);
    assert_int_equal(b->pos, 0);
    /* version, dims, flag, position, NaN */
    size_t off[] = {0, 8, 12, 28, 32};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++) {
        memcpy(bad, buf, n);
        bad[off[i]] ^= 0x40;
        assert_int_not_equal(state_deserialize(b, bad, n, err, sizeof err), 0);
        assert_int_equal(b->pos, 0);
    }
    memcpy(bad, buf, n);
    float nan = NAN;
    memcpy(bad + n - 4, &nan, 4);
    assert_int_equal(state_deserialize(b, bad, n, err, sizeof err), RC_EFORMAT);
    assert_non_null(strstr(err, "not finite"));
    assert_int_equal(b->pos, 0);
    free(buf), free(bad), free(ids);
    state_free(a), state_free(b), state_free(other);
    fwd_free(f);
    model_free(m), model_free(m1);
}

/* ------------------------------------------------------------- score */

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

/* ------------------------------------------------------- fwd validation */

static void batch_validation(void **u)
{
    struct model *m = load_fixture("m2_small");
    struct fwd *f;
    struct mstate *a, *b;
    assert_int_equal(fwd_create(m, 8, &f), 0);
    assert_int_equal(state_create(m, &a), 0);
    assert_int_equal(state_create(m, &b), 0);
    int32_t good[4] = {1, 2, 3, 4}, bad[3] = {5, -1, 7}, big[3] = {5, 96, 7};
    assert_int_equal(fwd_prefill(f, a, good, 4, err, sizeof err), 0);
    size_t nb = state_bytes(m);
    void *snap = malloc(nb);
    memcpy(snap, a->block, nb);
    struct fwd_seg segs[2] = {{b, good, 4, NULL}, {a, bad, 3, NULL}};
    assert_int_equal(fwd_run(f, segs, 2, err, sizeof err), RC_EINVAL);
    assert_non_null(strstr(err, "segment 1: token 1 is -1"));
    segs[1].tokens = big;
    assert_int_equal(fwd_run(f, segs, 2, err, sizeof err), RC_EINVAL);
    assert_non_null(strstr(err, "token 1 is 96"));
    segs[1] = (struct fwd_seg){b, good, 4, NULL}; /* b twice */
    assert_int_equal(fwd_run(f, segs, 2, err, sizeof err), RC_EINVAL);
    int32_t nine[9] = {0};
    segs[0] = (struct fwd_seg){a, nine, 9, NULL};
    assert_int_equal(fwd_run(f, segs, 1, err, sizeof err), RC_ERANGE);
    /* nothing moved */
    assert_memory_equal(snap, a->block, nb);
    assert_int_equal(a->pos, 4);
    assert_int_equal(b->pos, 0);
    free(snap);
    state_free(a), state_free(b);
    fwd_free(f);
    model_free(m);
}

/* ----------------------------------------------------------- kernels */

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

static double max_rel(const float *a, const float *b, size_t n)
{
    double num = 0, den = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        num = d > num ? d : num;
        den = fabs(b[i]) > den ? fabs(b[i]) : den;
    }
    return num / den;
}

/* Every kernel set this CPU runs computes what the generic one does. */
static void kernel_sets_agree(void **u)
{
    const struct kernels *g = kernels_named("generic");
    const char *names[] = {"avx2", "avx512"};
    assert_non_null(g);
    assert_non_null(kernels_get());
    int tested = 0;
    enum { P = 14, N = 20, T = 9, C = 37, K = 4 }; /* P % 4 != 0: the row tail too */
    for (int k = 0; k < 2; k++) {
        const struct kernels *o = kernels_named(names[k]);
        if (!o)
            continue;
        tested++;
        uint64_t s = 42 + k;
        float x[T * C], w[C], z[T * C], wt[K * C], st1[(K - 1) * C], st2[(K - 1) * C];
        float o1[T * C], o2[T * C], S1[P * N], S2[P * N], B[T * N], Cm[T * N], dt[T], D[P];
        for (int i = 0; i < T * C; i++)
            x[i] = frand(&s) * 3, z[i] = frand(&s) * 4;
        for (int i = 0; i < C; i++)
            w[i] = 1 + frand(&s) * 0.2f;
        for (int i = 0; i < K * C; i++)
            wt[i] = frand(&s);
        for (int i = 0; i < (K - 1) * C; i++)
            st1[i] = st2[i] = frand(&s);
        g->rmsnorm_rows(o1, x, w, T, C, 1e-5f);
        o->rmsnorm_rows(o2, x, w, T, C, 1e-5f);
        assert_true(max_rel(o2, o1, T * C) < 1e-6);
        g->conv_silu(o1, x, C, st1, wt, w, T, C, K);
        o->conv_silu(o2, x, C, st2, wt, w, T, C, K);
        assert_true(max_rel(o2, o1, T * C) < 1e-6);
        assert_memory_equal(st1, st2, sizeof st1);
        for (int mode = 0; mode < 3; mode++) {
            memcpy(o1, x, sizeof x);
            memcpy(o2, x, sizeof x);
            g->gate_norm_rows(o1, z, C, w, T, C, C, 1e-5f, mode);
            o->gate_norm_rows(o2, z, C, w, T, C, C, 1e-5f, mode);
            assert_true(max_rel(o2, o1, T * C) < 1e-6);
        }
        for (int i = 0; i < P * N; i++)
            S1[i] = S2[i] = frand(&s);
        for (int i = 0; i < T * N; i++)
            B[i] = frand(&s), Cm[i] = frand(&s);
        for (int i = 0; i < T; i++)
            dt[i] = 0.01f + 0.2f * (frand(&s) + 1);
        for (int i = 0; i < P; i++)
            D[i] = frand(&s);
        g->m2_scan(S1, x, C, B, Cm, N, dt, 1, -1.7f, D, 1, o1, P, T, P, N);
        o->m2_scan(S2, x, C, B, Cm, N, dt, 1, -1.7f, D, 1, o2, P, T, P, N);
        assert_true(max_rel(o2, o1, T * P) < 1e-5);
        assert_true(max_rel(S2, S1, P * N) < 1e-5);
        float m1, m2;
        double se1, se2;
        g->max_sumexp(x, T * C, &m1, &se1);
        o->max_sumexp(x, T * C, &m2, &se2);
        assert_true(m1 == m2 && fabs(se1 - se2) < 1e-5 * se1);
    }
    printf("  kernel sets compared with generic: %d (best: %s)\n", tested, kernels_get()->name);
}

/* fexp (inside max_sumexp) is within 3e-7 of exp over the range used. */
static void fast_exp_accuracy(void **u)
{
    const struct kernels *k = kernels_get();
    double worst = 0;
    for (double v = -80; v < 80; v += 0.0137) {
        float x[2] = {0.0f, (float)v}, m;
        double se;
        k->max_sumexp(x, 2, &m, &se); /* = exp(-m) (1 + exp(...)) form: check via pairs */
        double want = m == 0.0f ? 1.0 + exp((double)(float)v) : exp(-(double)m) + 1.0;
        double rel = fabs(se - want) / want;
        worst = rel > worst ? rel : worst;
    }
    if (worst > 3e-7)
        fail_msg("fexp relative error %.3g", worst);
}

/* -------------------------------------------------------------- pool */

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

/* ---------------------------------------------------- allocation faults */

/* Fail the Nth allocation of loading + creating state and scratch + one
 * scored pass, for every N until it succeeds: each failure is reported
 * (never a crash), nothing leaks (checked by the sanitizer build), and the
 * same call succeeds once injection stops. */
static void allocation_failures(void **u)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/engine/m2_small", RECUR_FIXTURES);
    int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int n;
    for (n = 1; n < 100000; n++) {
        rc_alloc_fail_after(n, 0);
        struct model *m = NULL;
        struct fwd *f = NULL;
        struct scorer *sc = NULL;
        struct mstate *s = NULL;
        struct score_stats st;
        score_stats_init(&st);
        int rc = model_load(dir, &m, err, sizeof err);
        if (rc == 0)
            rc = fwd_create(m, 4, &f);
        if (rc == 0)
            rc = scorer_create(f, 2, &sc);
        if (rc == 0)
            rc = state_create(m, &s);
        if (rc == 0)
            rc = scorer_run(sc, s, ids, 8, &st, NULL, NULL, err, sizeof err);
        long injected = rc_alloc_injected();
        rc_alloc_fail_after(0, 0);
        state_free(s);
        scorer_free(sc);
        fwd_free(f);
        model_free(m);
        if (injected == 0) {
            assert_int_equal(rc, 0);
            break;
        }
        if (rc == 0)
            continue; /* the failed allocation had a fallback (none today) */
        assert_true(rc == RC_ENOMEM || rc == RC_EFORMAT || rc == RC_EIO);
    }
    printf("  allocation failure injected at each of the first %d allocations\n", n - 1);
    assert_true(n > 10);
}

int main(void)
{
    /* JSON parsing allocates through the same countdown as everything else. */
    json_set_alloc_funcs(rc_malloc, rc_free);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(state_sizes),          cmocka_unit_test(state_roundtrip_and_rejects),
        cmocka_unit_test(buckets),              cmocka_unit_test(scorer_matches_reference),
        cmocka_unit_test(batch_validation),     cmocka_unit_test(kernel_sets_agree),
        cmocka_unit_test(fast_exp_accuracy),    cmocka_unit_test(pool_runs_each_item_once),
        cmocka_unit_test(allocation_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
