/*
 * The projection kernel (kernels.h gemm, widen_panel, wfmt_pack_rows) in
 * each weight format and kernel set this CPU runs:
 *   - it computes X . W^T for the widened weights (against a double
 *     reference), including a q8 block tail and a panel tail;
 *   - a row's result is bit-identical whatever the number of rows, the
 *     number of panels per call, accumulation, or whether the panel was
 *     widened to fp32 first (what makes batch invariance hold per format);
 *   - bf16 of bf16 values and fp32 compute exactly the same thing;
 *   - q8's error per weight is at most half its block's scale.
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

#include "alloc.h"
#include "kernels.h"

enum { N = 77, KD = 83, MMAX = 40 }; /* 5 panels, the last of 13 features; k: 2 blocks + 19 */

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

struct packed {
    int fmt, panels;
    size_t ps;
    unsigned char *w;
    float *wide; /* panels x KD x GEMM_NR, the widened weights */
};

static void pack(struct packed *p, int fmt, const float *W, int *lossy)
{
    p->fmt = fmt;
    p->panels = (N + GEMM_NR - 1) / GEMM_NR;
    p->ps = wfmt_panel_bytes(fmt, KD);
    p->w = rc_aligned_alloc(p->ps * (size_t)p->panels);
    p->wide = rc_aligned_alloc((size_t)p->panels * KD * GEMM_NR * sizeof(float));
    assert_non_null(p->w);
    assert_non_null(p->wide);
    *lossy = 0;
    /* in two calls, as the loader does tensor slices */
    wfmt_pack_rows(fmt, W, N, KD, 0, 32, p->w, lossy);
    wfmt_pack_rows(fmt, W + 32 * KD, N, KD, 32, N - 32, p->w, lossy);
    const struct kernels *g = kernels_named("generic");
    for (int i = 0; i < p->panels; i++)
        g->widen_panel(fmt, p->wide + (size_t)i * KD * GEMM_NR, p->w + i * p->ps, KD);
}

static void unpack(struct packed *p)
{
    rc_free(p->w);
    rc_free(p->wide);
}

/* C (M x N) with the kernel: np panels per call when M is small. */
static void run(const struct kernels *k, const struct packed *p, const float *X, int M, int np,
                int widen, float *C)
{
    float *tmp = rc_aligned_alloc((size_t)KD * GEMM_NR * sizeof(float));
    for (int p0 = 0; p0 < p->panels; p0 += np) {
        int n = p->panels - p0 < np ? p->panels - p0 : np;
        int last = N - (p0 + n - 1) * GEMM_NR;
        last = last < GEMM_NR ? last : GEMM_NR;
        if (widen) {
            k->widen_panel(p->fmt, tmp, p->w + p0 * p->ps, KD);
            k->gemm(WF_F32, C + p0 * GEMM_NR, N, X, KD, tmp, 0, 1, M, KD, last, 0);
        } else {
            k->gemm(p->fmt, C + p0 * GEMM_NR, N, X, KD, p->w + p0 * p->ps, p->ps, n, M, KD, last,
                    0);
        }
    }
    rc_free(tmp);
}

static void formats(void **u)
{
    static const char *sets[] = {"generic", "avx2", "avx512"};
    uint64_t s = 7;
    float *W = malloc((size_t)N * KD * sizeof(float)), *X = malloc((size_t)MMAX * KD * sizeof(float));
    float *C = malloc((size_t)MMAX * N * sizeof(float)), *C1 = malloc((size_t)MMAX * N * sizeof(float));
    for (int i = 0; i < N * KD; i++)
        W[i] = frand(&s) * (1 + (i % 7)); /* scales differ within a block */
    for (int i = 0; i < MMAX * KD; i++)
        X[i] = frand(&s);
    int tested = 0;
    for (int fmt = WF_F32; fmt <= WF_Q8; fmt++) {
        struct packed p;
        int lossy;
        pack(&p, fmt, W, &lossy);
        assert_int_equal(lossy, fmt != WF_F32);
        /* the widened weights: fp32 exact, bf16 within half an ulp of bf16,
         * q8 within half a scale */
        double worst = 0;
        for (int r = 0; r < N; r++)
            for (int kk = 0; kk < KD; kk++) {
                float w = W[(size_t)r * KD + kk];
                float v = p.wide[((size_t)(r / GEMM_NR) * KD + kk) * GEMM_NR + r % GEMM_NR];
                double bound = fmt == WF_F32 ? 0 : fmt == WF_BF16 ? fabs(w) * 0x1p-8 : 0;
                if (fmt == WF_Q8) {
                    float amax = 0;
                    for (int t = kk / GEMM_QB * GEMM_QB; t < KD && t < (kk / GEMM_QB + 1) * GEMM_QB; t++)
                        amax = fmaxf(amax, fabsf(W[(size_t)r * KD + t]));
                    bound = amax / 127.0 * (1 + 0x1p-7) / 2;
                }
                if (!(fabs((double)v - w) <= bound))
                    fail_msg("fmt %d: weight (%d, %d) %.9g widened to %.9g (bound %.3g)", fmt, r,
                             kk, w, v, bound);
                worst = fabs((double)v - w) > worst ? fabs((double)v - w) : worst;
            }
        for (int si = 0; si < 3; si++) {
            const struct kernels *k = kernels_named(sets[si]);
            if (!k)
                continue;
            tested++;
            /* reference: every row alone, in double, from the widened weights */
            run(k, &p, X, MMAX, 1, 0, C);
            for (int m = 0; m < MMAX; m++)
                for (int n = 0; n < N; n++) {
                    double ref = 0, mag = 0;
                    for (int kk = 0; kk < KD; kk++) {
                        double t = (double)X[(size_t)m * KD + kk] *
                                   p.wide[((size_t)(n / GEMM_NR) * KD + kk) * GEMM_NR + n % GEMM_NR];
                        ref += t;
                        mag += fabs(t);
                    }
                    double e = fabs(C[(size_t)m * N + n] - ref);
                    if (!(e <= 1e-6 * mag + 1e-30))
                        fail_msg("%s fmt %d: C[%d][%d] = %.9g, reference %.9g", sets[si], fmt, m,
                                 n, C[(size_t)m * N + n], ref);
                }
            /* the same bits for row m, whatever M, np and widening */
            static const int Ms[] = {1, 2, 3, 4, 5, 12, 13, 17, 40};
            for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
                for (int np = 1; np <= GEMM_NP_MAX; np++)
                    for (int widen = 0; widen < 2; widen++) {
                        int M = Ms[mi];
                        if (np > 1 && widen)
                            continue;
                        run(k, &p, X + (size_t)(MMAX - M) * KD, M, np, widen, C1);
                        if (memcmp(C1, C + (size_t)(MMAX - M) * N, (size_t)M * N * sizeof(float)))
                            fail_msg("%s fmt %d: rows differ at M=%d np=%d widen=%d", sets[si],
                                     fmt, M, np, widen);
                    }
            /* accumulating: C += X W^T is the same running sum started from C */
            float *A = malloc((size_t)3 * N * sizeof(float));
            for (int i = 0; i < 3 * N; i++)
                A[i] = frand(&s);
            memcpy(C1, A, (size_t)3 * N * sizeof(float));
            for (int p0 = 0; p0 < p.panels; p0++) {
                int last = N - p0 * GEMM_NR;
                k->gemm(fmt, C1 + p0 * GEMM_NR, N, X, KD, p.w + p0 * p.ps, p.ps, 1, 3, KD,
                        last < GEMM_NR ? last : GEMM_NR, 1);
            }
            for (int m = 0; m < 3; m++)
                for (int n = 0; n < N; n++) {
                    double ref = A[m * N + n];
                    for (int kk = 0; kk < KD; kk++)
                        ref += (double)X[(size_t)m * KD + kk] *
                               p.wide[((size_t)(n / GEMM_NR) * KD + kk) * GEMM_NR + n % GEMM_NR];
                    assert_true(fabs(C1[m * N + n] - ref) <= 1e-5 * (1 + fabs(ref)));
                }
            free(A);
        }
        printf("  fmt %d: worst |w - widened| %.3g\n", fmt, worst);
        unpack(&p);
    }
    assert_true(tested >= 3);

    /* bf16 values: the bf16 panels compute exactly what fp32 panels do */
    for (int i = 0; i < N * KD; i++) {
        int l = 0;
        W[i] = wfmt_bf16_value(wfmt_bf16_round(W[i], &l));
    }
    struct packed pf, pb;
    int lf, lb;
    pack(&pf, WF_F32, W, &lf);
    pack(&pb, WF_BF16, W, &lb);
    assert_int_equal(lb, 0);
    run(kernels_get(), &pf, X, MMAX, 1, 0, C);
    run(kernels_get(), &pb, X, MMAX, 1, 0, C1);
    assert_memory_equal(C, C1, (size_t)MMAX * N * sizeof(float));
    run(kernels_get(), &pb, X, 1, GEMM_NP_MAX, 0, C1);
    assert_memory_equal(C, C1, (size_t)N * sizeof(float));
    unpack(&pf);
    unpack(&pb);
    free(W), free(X), free(C), free(C1);
}

/* bf16 rounding: nearest even, exact values kept, never to infinity. */
static void bf16_rounding(void **u)
{
    int l = 0;
    assert_int_equal(wfmt_bf16_round(1.0f, &l), 0x3f80);
    assert_int_equal(l, 0);
    assert_int_equal(wfmt_bf16_round(1.0f + 0x1p-8f, &l), 0x3f80); /* tie: to even */
    assert_int_equal(l, 1);
    assert_int_equal(wfmt_bf16_round(1.0f + 0x1p-8f + 0x1p-20f, &l), 0x3f81);
    assert_int_equal(wfmt_bf16_round(1.0f + 3 * 0x1p-8f, &l), 0x3f82); /* tie: to even, up */
    assert_true(isfinite(wfmt_bf16_value(wfmt_bf16_round(3.4028235e38f, &l))));
    assert_true(wfmt_bf16_value(wfmt_bf16_round(-2.5f, &l)) == -2.5f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(formats),
        cmocka_unit_test(bf16_rounding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
