/* core/sampler: filters checked against brute-force definitions written
 * independently here (sorting in double precision), frequencies against
 * the softmax, determinism of seeded draws. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sampler.h"
#include "test_logits.h"

#define V 1000

static int by_prob(const void *a, const void *b, void *ctx) { return 0; }

/* Brute force: the allowed set under the documented definitions. */
static void allowed_set(const float *l, int n, const struct sampler_params *p, char *ok)
{
    double *q = malloc(sizeof(double) * (size_t)n);
    int *idx = malloc(sizeof(int) * (size_t)n);
    double mx = -INFINITY;
    for (int i = 0; i < n; i++)
        mx = fmax(mx, l[i]);
    for (int i = 0; i < n; i++) {
        q[i] = exp((l[i] - mx) / p->temperature);
        idx[i] = i;
    }
    /* selection sort by (q desc, id asc): slow and obviously right */
    for (int i = 0; i < n; i++) {
        int b = i;
        for (int j = i + 1; j < n; j++)
            if (q[idx[j]] > q[idx[b]] || (q[idx[j]] == q[idx[b]] && idx[j] < idx[b]))
                b = j;
        int t = idx[i];
        idx[i] = idx[b];
        idx[b] = t;
    }
    int m = n;
    if (p->top_k > 0 && p->top_k < m)
        m = p->top_k;
    if (p->top_p < 1) {
        double z = 0, acc = 0;
        for (int i = 0; i < m; i++)
            z += q[idx[i]];
        int k = 0;
        while (k < m) {
            acc += q[idx[k++]];
            if (acc >= p->top_p * z)
                break;
        }
        m = k;
    }
    memset(ok, 0, (size_t)n);
    for (int i = 0; i < m; i++)
        if (q[idx[i]] >= p->min_p * q[idx[0]])
            ok[idx[i]] = 1;
    (void)by_prob;
    free(q);
    free(idx);
}

static void check_support(const struct sampler_params *p, uint64_t seed, int draws, int need_all)
{
    float l[V];
    char ok[V], seen[V] = {0};
    make_logits(l, V, seed);
    allowed_set(l, V, p, ok);
    struct sampler_scratch *sc;
    assert_int_equal(sampler_scratch_create(V, &sc), 0);
    struct sampler_rng r;
    sampler_seed(&r, seed + 1);
    for (int i = 0; i < draws; i++) {
        int32_t id = sampler_pick(p, &r, l, V, sc);
        assert_true(id >= 0 && id < V);
        if (!ok[id])
            fail_msg("drew %d outside the allowed set (T=%g k=%d p=%g min_p=%g)", id,
                     p->temperature, p->top_k, p->top_p, p->min_p);
        seen[id] = 1;
    }
    if (need_all)
        for (int i = 0; i < V; i++)
            if (ok[i] && !seen[i])
                fail_msg("allowed id %d never drawn in %d draws", i, draws);
    sampler_scratch_free(sc);
}

static void test_filters(void **u)
{
    struct sampler_params p = {1.0f, 5, 1.0f, 0};
    check_support(&p, 1, 4000, 1);
    p = (struct sampler_params){1.0f, 0, 0.3f, 0};
    check_support(&p, 2, 20000, 0);
    p = (struct sampler_params){0.7f, 0, 1.0f, 0.2f};
    check_support(&p, 3, 20000, 0);
    p = (struct sampler_params){1.3f, 50, 0.9f, 0.05f};
    check_support(&p, 4, 20000, 0);
    p = (struct sampler_params){1.0f, 0, 0.05f, 0};
    check_support(&p, 5, 2000, 1); /* tiny nucleus: all of it shows up */
}

static void test_frequencies(void **u)
{
    /* Five tokens; 200k draws; each frequency within 5 standard errors of
     * softmax(l / T). Deterministic (seeded), so never flaky. */
    float l[5] = {0.0f, 1.0f, -1.0f, 0.5f, 2.0f};
    const float temps[] = {1.0f, 0.5f, 2.0f};
    struct sampler_scratch *sc;
    assert_int_equal(sampler_scratch_create(5, &sc), 0);
    for (size_t t = 0; t < 3; t++) {
        struct sampler_params p = {temps[t], 0, 1.0f, 0};
        double z = 0, pr[5];
        for (int i = 0; i < 5; i++)
            z += pr[i] = exp(l[i] / temps[t]);
        struct sampler_rng r;
        sampler_seed(&r, 99 + t);
        int cnt[5] = {0};
        const int N = 200000;
        for (int i = 0; i < N; i++)
            cnt[sampler_pick(&p, &r, l, 5, sc)]++;
        for (int i = 0; i < 5; i++) {
            double e = pr[i] / z, f = (double)cnt[i] / N, se = sqrt(e * (1 - e) / N);
            if (fabs(f - e) > 5 * se)
                fail_msg("T=%g id %d: frequency %f, expected %f", temps[t], i, f, e);
        }
    }
    sampler_scratch_free(sc);
}

static void test_greedy_and_ties(void **u)
{
    float l[6] = {1, 3, NAN, 3, INFINITY, -INFINITY};
    struct sampler_scratch *sc;
    assert_int_equal(sampler_scratch_create(6, &sc), 0);
    struct sampler_rng r;
    sampler_seed(&r, 0);
    struct sampler_params g = {0, 0, 1, 0};
    /* non-finite logits count as -inf; ties go to the lower id */
    assert_int_equal(sampler_pick(&g, &r, l, 6, sc), 1);
    struct sampler_params k1 = {1.0f, 1, 1, 0};
    assert_int_equal(sampler_pick(&k1, &r, l, 6, sc), 1);
    /* never a padding row: n limits the choice */
    float pad[4] = {0, 0, 50, 50};
    assert_int_equal(sampler_pick(&g, &r, pad, 2, sc), 0);
    sampler_scratch_free(sc);
}

static void test_determinism(void **u)
{
    float l[V];
    make_logits(l, V, 7);
    struct sampler_scratch *sc;
    assert_int_equal(sampler_scratch_create(V, &sc), 0);
    struct sampler_params p = {0.9f, 40, 0.95f, 0.01f};
    int32_t a[64], b[64], c[64];
    struct sampler_rng r1, r2, r3;
    sampler_seed(&r1, 1234);
    sampler_seed(&r2, 1234);
    sampler_seed(&r3, 1235);
    for (int i = 0; i < 64; i++) {
        a[i] = sampler_pick(&p, &r1, l, V, sc);
        b[i] = sampler_pick(&p, &r2, l, V, sc);
        c[i] = sampler_pick(&p, &r3, l, V, sc);
    }
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    /* one draw per token: interleaving another generator's draws does not
     * change this one's sequence */
    sampler_seed(&r1, 1234);
    for (int i = 0; i < 64; i++) {
        sampler_pick(&p, &r3, l, V, sc);
        assert_int_equal(sampler_pick(&p, &r1, l, V, sc), a[i]);
    }
    sampler_scratch_free(sc);
}

static void test_params_check(void **u)
{
    char err[128];
    struct sampler_params ok = {1, 0, 1, 0}, bad1 = {-1, 0, 1, 0}, bad2 = {1, -1, 1, 0},
                          bad3 = {1, 0, 0, 0}, bad4 = {1, 0, 1, 1}, bad5 = {NAN, 0, 1, 0};
    assert_int_equal(sampler_params_check(&ok, err, sizeof err), 0);
    assert_int_not_equal(sampler_params_check(&bad1, err, sizeof err), 0);
    assert_int_not_equal(sampler_params_check(&bad2, err, sizeof err), 0);
    assert_int_not_equal(sampler_params_check(&bad3, err, sizeof err), 0);
    assert_int_not_equal(sampler_params_check(&bad4, err, sizeof err), 0);
    assert_int_not_equal(sampler_params_check(&bad5, err, sizeof err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_frequencies),
        cmocka_unit_test(test_greedy_and_ties),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_params_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
