/*
 * kernels_body.h — kernel bodies, included once per target (see kernels.h).
 * The includer defines KSFX (the symbol suffix) and KNAME (the set's name)
 * and sets the target with #pragma GCC target before including this.
 *
 * fexp() is a polynomial exp that vectorises on every target (glibc's
 * vector expf is only declared under -ffast-math): range reduction by
 * ln 2 with a hi/lo split, degree-6 Taylor on |r| <= ln2/2 (error < 2e-7
 * relative), exponent by integer shift. Inputs are clamped to [-87, 88].
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

#define KCAT2(a, b) a##b
#define KCAT(a, b) KCAT2(a, b)
#define K(name) KCAT(name, KSFX)

static inline float K(fexp)(float x)
{
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    /* round(x / ln2) by the 1.5 * 2^23 trick: exact under round-to-nearest. */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, 4);
    return p * s;
}

static inline float K(silu)(float x) { return x / (1.0f + K(fexp)(-x)); }

/* The tile shape is per kernel set; it changes which rows are computed
 * together and where partial sums pass through C (an exact float store and
 * load), never an element's sequence of multiply-adds, so each set stays
 * batch-invariant. AVX2/generic: 6 rows (12 ymm accumulators), k in blocks
 * of 256 (the panel block stays in L1). AVX-512 (kernels_avx512.c): 12 rows
 * (12 zmm accumulators; 6 leave the two FMA pipes waiting on latency) and
 * all of k in one block (re-reading and re-writing C between blocks cost
 * more than streaming the panel from L2): measured +10 % prefill. */
#ifndef GEMM_MR
#define GEMM_MR 6
#endif
#ifndef GEMM_KC
#define GEMM_KC 256
#endif
_Static_assert(GEMM_MR == 6 || GEMM_MR == 12, "gemm_panel has remainder cases for 6 or 12 rows");

/* mr rows x GEMM_NR columns over kk in [k0, k1), starting from C (load) or
 * zero. Inlined with a constant mr, so a remainder tile does only its rows'
 * work, with the same per-element sequence of multiply-adds as a full one. */
static inline __attribute__((always_inline)) void K(gemm_tile)(float *C, int ldc,
                                                               const float *X, int ldx,
                                                               const float *panel, const int mr,
                                                               int k0, int k1, int ncols,
                                                               int load)
{
    float acc[GEMM_MR][GEMM_NR];
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < GEMM_NR; j++)
            acc[r][j] = load && j < ncols ? C[(size_t)r * ldc + j] : 0.0f;
    for (int kk = k0; kk < k1; kk++) {
        const float *restrict w = panel + (size_t)kk * GEMM_NR;
        for (int r = 0; r < mr; r++) {
            const float xv = X[(size_t)r * ldx + kk];
#pragma omp simd
            for (int j = 0; j < GEMM_NR; j++)
                acc[r][j] += xv * w[j];
        }
    }
    for (int r = 0; r < mr; r++)
        memcpy(C + (size_t)r * ldc, acc[r], (size_t)ncols * sizeof(float));
}

static void K(gemm_panel)(float *C, int ldc, const float *X, int ldx, const float *panel, int M,
                          int k, int ncols, int accumulate)
{
    for (int k0 = 0; k0 < k; k0 += GEMM_KC) {
        const int k1 = k0 + GEMM_KC < k ? k0 + GEMM_KC : k, load = k0 > 0 || accumulate;
        for (int i0 = 0; i0 < M; i0 += GEMM_MR) {
            float *c = C + (size_t)i0 * ldc;
            const float *x = X + (size_t)i0 * ldx;
            switch (M - i0 < GEMM_MR ? M - i0 : GEMM_MR) {
#if GEMM_MR > 6
            case 12: K(gemm_tile)(c, ldc, x, ldx, panel, 12, k0, k1, ncols, load); break;
            case 11: K(gemm_tile)(c, ldc, x, ldx, panel, 11, k0, k1, ncols, load); break;
            case 10: K(gemm_tile)(c, ldc, x, ldx, panel, 10, k0, k1, ncols, load); break;
            case 9: K(gemm_tile)(c, ldc, x, ldx, panel, 9, k0, k1, ncols, load); break;
            case 8: K(gemm_tile)(c, ldc, x, ldx, panel, 8, k0, k1, ncols, load); break;
            case 7: K(gemm_tile)(c, ldc, x, ldx, panel, 7, k0, k1, ncols, load); break;
#endif
            case 6: K(gemm_tile)(c, ldc, x, ldx, panel, 6, k0, k1, ncols, load); break;
            case 5: K(gemm_tile)(c, ldc, x, ldx, panel, 5, k0, k1, ncols, load); break;
            case 4: K(gemm_tile)(c, ldc, x, ldx, panel, 4, k0, k1, ncols, load); break;
            case 3: K(gemm_tile)(c, ldc, x, ldx, panel, 3, k0, k1, ncols, load); break;
            case 2: K(gemm_tile)(c, ldc, x, ldx, panel, 2, k0, k1, ncols, load); break;
            default: K(gemm_tile)(c, ldc, x, ldx, panel, 1, k0, k1, ncols, load); break;
            }
        }
    }
}

static void K(rmsnorm_rows)(float *out, const float *x, const float *w, int rows, int n,
                            float eps)
{
    for (int r = 0; r < rows; r++) {
        const float *restrict xr = x + (size_t)r * n;
        float *restrict o = out + (size_t)r * n;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < n; i++)
            ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)n + eps);
#pragma omp simd
        for (int i = 0; i < n; i++)
            o[i] = xr[i] * inv * w[i];
    }
}

static void K(gate_norm_rows)(float *y, const float *z, int zs, const float *w, int rows, int n,
                              int group, float eps, int mode)
{
    for (int r = 0; r < rows; r++) {
        float *restrict yr = y + (size_t)r * n;
        const float *restrict zr = z + (size_t)r * zs;
        if (mode != 1) {
#pragma omp simd
            for (int i = 0; i < n; i++)
                yr[i] *= K(silu)(zr[i]);
            if (mode == 2)
                continue;
        }
        for (int g0 = 0; g0 < n; g0 += group) {
            float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
            for (int i = g0; i < g0 + group; i++)
                ss += yr[i] * yr[i];
            float inv = 1.0f / sqrtf(ss / (float)group + eps);
#pragma omp simd
            for (int i = g0; i < g0 + group; i++)
                yr[i] = yr[i] * inv * w[i];
        }
        if (mode == 1) {
#pragma omp simd
            for (int i = 0; i < n; i++)
                yr[i] *= K(silu)(zr[i]);
        }
    }
}

static void K(conv_silu)(float *out, const float *in, int in_s, float *state, const float *wt,
                         const float *bias, int n, int C, int taps)
{
    for (int t = 0; t < n; t++) {
        float *restrict o = out + (size_t)t * C;
        if (bias) {
            memcpy(o, bias, (size_t)C * sizeof *o);
        } else {
            memset(o, 0, (size_t)C * sizeof *o);
        }
        for (int k = 0; k < taps; k++) {
            int j = t - (taps - 1) + k; /* input time, < 0: from the carried state */
            const float *restrict row =
                j >= 0 ? in + (size_t)j * in_s : state + (size_t)(taps - 1 + j) * C;
            const float *restrict wk = wt + (size_t)k * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                o[c] += wk[c] * row[c];
        }
#pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] = K(silu)(o[c]);
    }
    /* New state: the last K-1 inputs. Ascending r reads rows >= r of the
     * old state before they are overwritten. */
    for (int r = 0; r < taps - 1; r++) {
        int j = n - (taps - 1) + r;
        const float *src = j >= 0 ? in + (size_t)j * in_s : state + (size_t)(taps - 1 + j) * C;
        if (src != state + (size_t)r * C)
            memmove(state + (size_t)r * C, src, (size_t)C * sizeof *state);
    }
}

/* Four rows of the state at a time: B and C are loaded once for all four,
 * and the four dot products are independent chains (a single running sum
 * is bound by the FMA latency). */
static void K(m2_scan)(float *S, const float *x, int xs, const float *B, const float *C, int bcs,
                       const float *dt, int dts, float A, const float *D, int dstride, float *y,
                       int ys, int n, int P, int N)
{
    for (int t = 0; t < n; t++) {
        const float d = dt[(size_t)t * dts];
        const float dA = K(fexp)(d * A);
        const float *restrict xt = x + (size_t)t * xs;
        const float *restrict Bt = B + (size_t)t * bcs;
        const float *restrict Ct = C + (size_t)t * bcs;
        float *restrict yt = y + (size_t)t * ys;
        int p = 0;
        for (; p + 4 <= P; p += 4) {
            const float x0 = xt[p] * d, x1 = xt[p + 1] * d, x2 = xt[p + 2] * d,
                        x3 = xt[p + 3] * d;
            float *restrict s0 = S + (size_t)p * N;
            float *restrict s1 = s0 + N, *restrict s2 = s1 + N, *restrict s3 = s2 + N;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (int i = 0; i < N; i++) {
                const float b = Bt[i], c = Ct[i];
                const float v0 = s0[i] * dA + x0 * b, v1 = s1[i] * dA + x1 * b;
                const float v2 = s2[i] * dA + x2 * b, v3 = s3[i] * dA + x3 * b;
                s0[i] = v0, s1[i] = v1, s2[i] = v2, s3[i] = v3;
                a0 += v0 * c, a1 += v1 * c, a2 += v2 * c, a3 += v3 * c;
            }
            yt[p] = a0 + D[(size_t)p * dstride] * xt[p];
            yt[p + 1] = a1 + D[(size_t)(p + 1) * dstride] * xt[p + 1];
            yt[p + 2] = a2 + D[(size_t)(p + 2) * dstride] * xt[p + 2];
            yt[p + 3] = a3 + D[(size_t)(p + 3) * dstride] * xt[p + 3];
        }
        for (; p < P; p++) {
            const float xv = xt[p] * d;
            float *restrict s = S + (size_t)p * N;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int i = 0; i < N; i++) {
                float v = s[i] * dA + xv * Bt[i];
                s[i] = v;
                acc += v * Ct[i];
            }
            yt[p] = acc + D[(size_t)p * dstride] * xt[p];
        }
    }
}

static void K(m1_scan)(float *S, const float *x, int xs, const float *dt, int dts, const float *B,
                       const float *C, int bcs, const float *A, const float *D, const float *z,
                       int zs, float *y, int ys, int n, int c0, int c1, int N)
{
    for (int t = 0; t < n; t++) {
        const float *restrict xt = x + (size_t)t * xs;
        const float *restrict dtt = dt + (size_t)t * dts;
        const float *restrict Bt = B + (size_t)t * bcs;
        const float *restrict Ct = C + (size_t)t * bcs;
        const float *restrict zt = z + (size_t)t * zs;
        float *restrict yt = y + (size_t)t * ys;
        for (int c = c0; c < c1; c++) {
            const float d = dtt[c], xv = xt[c], dx = d * xv;
            float *restrict s = S + (size_t)c * N;
            const float *restrict a = A + (size_t)c * N;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int i = 0; i < N; i++) {
                float v = s[i] * K(fexp)(d * a[i]) + dx * Bt[i];
                s[i] = v;
                acc += v * Ct[i];
            }
            yt[c] = (acc + D[c] * xv) * K(silu)(zt[c]);
        }
    }
}

static void K(max_sumexp)(const float *x, int n, float *maxp, double *sump)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int i = 0; i < n; i++)
        m = x[i] > m ? x[i] : m;
    /* Blocks of float sums folded into a double: 50k terms in one float
     * accumulator would lose ~1e-4 relative. */
    double total = 0.0;
    for (int i0 = 0; i0 < n; i0 += 1024) {
        int i1 = i0 + 1024 < n ? i0 + 1024 : n;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = i0; i < i1; i++)
            s += K(fexp)(x[i] - m);
        total += s;
    }
    *maxp = m;
    *sump = total;
}

static void K(softplus_rows)(float *y, int ys, const float *x, int xs, const float *b, int rows,
                             int n, float lo, float hi)
{
    for (int r = 0; r < rows; r++) {
        const float *restrict xr = x + (size_t)r * xs;
        float *restrict yr = y + (size_t)r * ys;
        for (int i = 0; i < n; i++) {
            float v = xr[i] + b[i];
            /* torch.nn.functional.softplus: linear above 20 */
            v = v > 20.0f ? v : log1pf(expf(v));
            yr[i] = v < lo ? lo : v > hi ? hi : v;
        }
    }
}

const struct kernels KCAT(kernels_, KSFX) = {
    .name = KNAME,
    .gemm_panel = K(gemm_panel),
    .rmsnorm_rows = K(rmsnorm_rows),
    .gate_norm_rows = K(gate_norm_rows),
    .conv_silu = K(conv_silu),
    .m2_scan = K(m2_scan),
    .m1_scan = K(m1_scan),
    .max_sumexp = K(max_sumexp),
    .softplus_rows = K(softplus_rows),
};
