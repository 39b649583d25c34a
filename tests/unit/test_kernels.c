/*
 * kernels.h: the generic, AVX2 and AVX-512 kernel sets agree, and the fast
 * exp is accurate.
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

#include "kernels.h"

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
        g->conv_silu(o1, x, C, st1, wt, w, T, C, C, K);
        o->conv_silu(o2, x, C, st2, wt, w, T, C, C, K);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(kernel_sets_agree),
        cmocka_unit_test(fast_exp_accuracy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
