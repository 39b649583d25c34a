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
#include <immintrin.h>
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
_Static_assert(GEMM_MR == 6 || GEMM_MR == 12, "gemm_rows has remainder cases for 6 or 12 rows");
_Static_assert(GEMM_KC % GEMM_QB == 0, "k blocks hold whole q8 blocks");

/* Accumulators (of GEMM_NR floats) a few-row tile may use: mr x np of
 * them. AVX-512 has 32 zmm registers, AVX2 16 ymm (two per accumulator). */
/* Rows of the two-panel tile for many rows (0: not used; see K(gemm_tile2)). */
#ifndef GEMM_MR2
#define GEMM_MR2 0
#endif
#define GEMM_WIDE_NP (GEMM_MR2 > 0 ? 2 : 1)

#ifndef GEMM_SMALL_ACC
#define GEMM_SMALL_ACC 6
#endif

static inline float K(bf16)(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}


/* GCC vector types of one panel row (GEMM_NR = 16 lanes): one zmm on
 * AVX-512, two ymm on AVX2, four xmm on generic x86-64. The widening of
 * bf16 and int8 written with them compiles to full-width conversions (the
 * auto-vectoriser split them into 4-lane pieces through the stack). */
/* These never cross a call (everything below is inlined into K(gemm)), so
 * GCC's note on the ABI of 64-byte vector arguments does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float K(vf) __attribute__((vector_size(64)));
typedef int32_t K(vi) __attribute__((vector_size(64)));
typedef uint32_t K(vu) __attribute__((vector_size(64)));
typedef uint16_t K(vh) __attribute__((vector_size(32)));
_Static_assert(GEMM_NR == 16, "the vector types hold one panel row");

/* Row kk of a panel widened to fp32. For q8, sv holds the block's scales
 * and q its int8 rows (the block starting at b0). */
static inline __attribute__((always_inline)) void K(wrow)(const int fmt,
                                                          const unsigned char *pan, int kk,
                                                          const K(vf) *sv, const int8_t *q,
                                                          int b0, K(vf) *out)
{
    K(vf) v;
    if (fmt == WF_F32) {
        memcpy(&v, pan + (size_t)kk * GEMM_NR * 4, sizeof v);
    } else if (fmt == WF_BF16) {
        K(vh) h;
        memcpy(&h, pan + (size_t)kk * GEMM_NR * 2, sizeof h);
        K(vu) u = __builtin_convertvector(h, K(vu)) << 16;
        memcpy(&v, &u, sizeof v);
    } else {
        const int8_t *qq = q + (size_t)(kk - b0) * GEMM_NR;
        K(vi) i;
#if KISA == 3 /* GCC 12 scalarises the int8 -> int32 convertvector: say vpmovsxbd */
        __m512i x = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qq));
        memcpy(&i, &x, sizeof i);
#elif KISA == 2
        __m256i lo = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)qq));
        __m256i hi = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qq + 8)));
        memcpy(&i, &lo, sizeof lo);
        memcpy((char *)&i + sizeof lo, &hi, sizeof hi);
#else
        int32_t t[GEMM_NR];
        for (int j = 0; j < GEMM_NR; j++)
            t[j] = qq[j];
        memcpy(&i, t, sizeof i);
#endif
        v = __builtin_convertvector(i, K(vf)) * *sv;
    }
    *out = v;
}

/* The scales and int8 rows of the q8 block starting at b0 of a panel. */
static inline __attribute__((always_inline)) const int8_t *
K(q8_block)(const unsigned char *pan, int b0, K(vf) *sv)
{
    const unsigned char *blk = pan + (size_t)(b0 / GEMM_QB) * GEMM_Q8_BLOCK;
    K(vh) h;
    memcpy(&h, blk, sizeof h);
    K(vu) u = __builtin_convertvector(h, K(vu)) << 16;
    memcpy(sv, &u, sizeof *sv);
    return (const int8_t *)(blk + GEMM_NR * 2);
}

/* The k range [k0, k1) in q8 blocks (one block for the other formats). */
#define BLOCK_LOOP(fmt, k0, k1, b0, b1)                                                         \
    for (int b0 = k0, b1; b0 < k1; b0 = b1)                                                     \
        if ((b1 = fmt == WF_Q8 && b0 + GEMM_QB < k1 ? b0 + GEMM_QB : k1), 1)

/* mr rows x one panel over kk in [k0, k1), starting from C (load) or zero.
 * Inlined with constant fmt and mr, so a remainder tile does only its rows'
 * work, with the same per-element sequence of multiply-adds as a full one.
 * k0 is a multiple of GEMM_QB. The weight of (kk, j) is widened to fp32
 * first (exactly: bf16 by a shift, q8 by one fp32 product (float)q * s),
 * then one multiply-add per row. fp32 panels: plain C for the vectoriser
 * (measured: as fast as hand-written); the others with the vector types. */
static inline __attribute__((always_inline)) void K(gemm_tile)(const int fmt, float *C, int ldc,
                                                               const float *X, int ldx,
                                                               const unsigned char *w,
                                                               const int mr, int k0, int k1,
                                                               int ncl, int load)
{
    if (fmt == WF_F32) {
        float acc[GEMM_MR][GEMM_NR];
        for (int r = 0; r < mr; r++)
            for (int j = 0; j < GEMM_NR; j++)
                acc[r][j] = load && j < ncl ? C[(size_t)r * ldc + j] : 0.0f;
        for (int kk = k0; kk < k1; kk++) {
            const float *restrict wv = (const float *)w + (size_t)kk * GEMM_NR;
            for (int r = 0; r < mr; r++) {
                const float xv = X[(size_t)r * ldx + kk];
#pragma omp simd
                for (int j = 0; j < GEMM_NR; j++)
                    acc[r][j] += xv * wv[j];
            }
        }
        for (int r = 0; r < mr; r++)
            memcpy(C + (size_t)r * ldc, acc[r], (size_t)ncl * sizeof(float));
        return;
    }
    K(vf) acc[GEMM_MR];
    for (int r = 0; r < mr; r++) {
        float t[GEMM_NR];
        for (int j = 0; j < GEMM_NR; j++)
            t[j] = load && j < ncl ? C[(size_t)r * ldc + j] : 0.0f;
        memcpy(&acc[r], t, sizeof t);
    }
    BLOCK_LOOP(fmt, k0, k1, b0, b1)
    {
        K(vf) sv = {0};
        const int8_t *q = fmt == WF_Q8 ? K(q8_block)(w, b0, &sv) : NULL;
        for (int kk = b0; kk < b1; kk++) {
            K(vf) wv;
            K(wrow)(fmt, w, kk, &sv, q, b0, &wv);
            for (int r = 0; r < mr; r++)
                acc[r] += X[(size_t)r * ldx + kk] * wv;
        }
    }
    for (int r = 0; r < mr; r++)
        memcpy(C + (size_t)r * ldc, &acc[r], (size_t)ncl * sizeof(float));
}

/* The same for few rows (mr <= GEMM_NP_ROWS) and np panels at once: more
 * independent sums for the FMA pipes, the same arithmetic per element. */
static inline __attribute__((always_inline)) void
K(gemm_tile_np)(const int fmt, float *C, int ldc, const float *X, int ldx, const unsigned char *w,
                size_t ps, const int mr, const int np, int k0, int k1, int ncl, int load)
{
    K(vf) acc[GEMM_NP_ROWS][GEMM_NP_MAX];
    for (int r = 0; r < mr; r++)
        for (int p = 0; p < np; p++) {
            float t[GEMM_NR];
            for (int j = 0; j < GEMM_NR; j++)
                t[j] = load && (p < np - 1 || j < ncl) ? C[(size_t)r * ldc + p * GEMM_NR + j]
                                                       : 0.0f;
            memcpy(&acc[r][p], t, sizeof t);
        }
    BLOCK_LOOP(fmt, k0, k1, b0, b1)
    {
        K(vf) sv[GEMM_NP_MAX] = {{0}};
        const int8_t *q[GEMM_NP_MAX];
        for (int p = 0; p < np; p++)
            q[p] = fmt == WF_Q8 ? K(q8_block)(w + p * ps, b0, &sv[p]) : NULL;
        for (int kk = b0; kk < b1; kk++) {
            K(vf) wv[GEMM_NP_MAX];
            for (int p = 0; p < np; p++)
                K(wrow)(fmt, w + p * ps, kk, &sv[p], q[p], b0, &wv[p]);
            for (int r = 0; r < mr; r++) {
                const float xv = X[(size_t)r * ldx + kk];
                for (int p = 0; p < np; p++)
                    acc[r][p] += xv * wv[p];
            }
        }
    }
    for (int r = 0; r < mr; r++) {
        for (int p = 0; p < np - 1; p++)
            memcpy(C + (size_t)r * ldc + p * GEMM_NR, &acc[r][p], GEMM_NR * sizeof(float));
        memcpy(C + (size_t)r * ldc + (np - 1) * GEMM_NR, &acc[r][np - 1],
               (size_t)ncl * sizeof(float));
    }
}

/* The cases of a switch over a remainder tile's rows, each an inlined copy
 * T(n) with a constant n (the row loops below). */
#define ROW_CASES_6(T)                                                                          \
    case 6: T(6); break;                                                                        \
    case 5: T(5); break;                                                                        \
    case 4: T(4); break;                                                                        \
    case 3: T(3); break;                                                                        \
    case 2: T(2); break;                                                                        \
    default: T(1); break;
#define ROW_CASES_8(T)                                                                          \
    case 8: T(8); break;                                                                        \
    case 7: T(7); break;                                                                        \
    ROW_CASES_6(T)
#define ROW_CASES_12_7(T)                                                                       \
    case 12: T(12); break;                                                                      \
    case 11: T(11); break;                                                                      \
    case 10: T(10); break;                                                                      \
    case 9: T(9); break;                                                                        \
    case 8: T(8); break;                                                                        \
    case 7: T(7); break;

#if GEMM_MR2 > 0
/* Two panels x mr <= GEMM_MR2 rows (AVX-512's tile for many rows: per kk,
 * 2 panel loads and mr broadcasts feed 2 mr multiply-adds, where one panel
 * of 12 rows needs 13 loads for 12): the same arithmetic per element. */
static inline __attribute__((always_inline)) void
K(gemm_tile2)(const int fmt, float *C, int ldc, const float *X, int ldx, const unsigned char *w,
              size_t ps, const int mr, int k0, int k1, int ncl, int load)
{
    K(vf) acc[GEMM_MR2][2];
    for (int r = 0; r < mr; r++)
        for (int p = 0; p < 2; p++) {
            if (load) {
                float t[GEMM_NR] = {0};
                memcpy(t, C + (size_t)r * ldc + p * GEMM_NR,
                       (size_t)(p ? ncl : GEMM_NR) * sizeof(float));
                memcpy(&acc[r][p], t, sizeof t);
            } else {
                acc[r][p] = (K(vf)){0};
            }
        }
    BLOCK_LOOP(fmt, k0, k1, b0, b1)
    {
        K(vf) sv[2] = {{0}};
        const int8_t *q[2];
        for (int p = 0; p < 2; p++)
            q[p] = fmt == WF_Q8 ? K(q8_block)(w + p * ps, b0, &sv[p]) : NULL;
        for (int kk = b0; kk < b1; kk++) {
            K(vf) wv[2];
            K(wrow)(fmt, w, kk, &sv[0], q[0], b0, &wv[0]);
            K(wrow)(fmt, w + ps, kk, &sv[1], q[1], b0, &wv[1]);
            for (int r = 0; r < mr; r++) {
                const float xv = X[(size_t)r * ldx + kk];
                acc[r][0] += xv * wv[0];
                acc[r][1] += xv * wv[1];
            }
        }
    }
    for (int r = 0; r < mr; r++) {
        memcpy(C + (size_t)r * ldc, &acc[r][0], GEMM_NR * sizeof(float));
        memcpy(C + (size_t)r * ldc + GEMM_NR, &acc[r][1], (size_t)ncl * sizeof(float));
    }
}

static inline __attribute__((always_inline)) void K(gemm_rows2)(const int fmt, float *C, int ldc,
                                                                const float *X, int ldx,
                                                                const unsigned char *w,
                                                                size_t ps, int M, int k, int ncl,
                                                                int accumulate)
{
    for (int k0 = 0; k0 < k; k0 += GEMM_KC) {
        const int k1 = k0 + GEMM_KC < k ? k0 + GEMM_KC : k, load = k0 > 0 || accumulate;
        for (int i0 = 0; i0 < M; i0 += GEMM_MR2) {
            float *c = C + (size_t)i0 * ldc;
            const float *x = X + (size_t)i0 * ldx;
#define T(n) K(gemm_tile2)(fmt, c, ldc, x, ldx, w, ps, n, k0, k1, ncl, load)
            switch (M - i0 < GEMM_MR2 ? M - i0 : GEMM_MR2) {
#if GEMM_MR2 != 8
#error "gemm_rows2 has remainder cases for 8 rows"
#endif
                ROW_CASES_8(T)
            }
#undef T
        }
    }
}
#endif

/* One panel, any number of rows: tiles of GEMM_MR rows. */
static inline __attribute__((always_inline)) void K(gemm_rows)(const int fmt, float *C, int ldc,
                                                               const float *X, int ldx,
                                                               const unsigned char *w, int M,
                                                               int k, int ncl, int accumulate)
{
    for (int k0 = 0; k0 < k; k0 += GEMM_KC) {
        const int k1 = k0 + GEMM_KC < k ? k0 + GEMM_KC : k, load = k0 > 0 || accumulate;
        for (int i0 = 0; i0 < M; i0 += GEMM_MR) {
            float *c = C + (size_t)i0 * ldc;
            const float *x = X + (size_t)i0 * ldx;
#define T(n) K(gemm_tile)(fmt, c, ldc, x, ldx, w, n, k0, k1, ncl, load)
            switch (M - i0 < GEMM_MR ? M - i0 : GEMM_MR) {
#if GEMM_MR > 6
                ROW_CASES_12_7(T)
#endif
                ROW_CASES_6(T)
            }
#undef T
        }
    }
}

/* np panels of few rows (M <= GEMM_NP_ROWS), in groups of panels that fit
 * the accumulators. */
static inline __attribute__((always_inline)) void K(gemm_few)(const int fmt, float *C, int ldc,
                                                              const float *X, int ldx,
                                                              const unsigned char *w,
                                                              size_t ps, int np, const int mr,
                                                              int k, int ncl, int accumulate)
{
    const int G = GEMM_SMALL_ACC / mr < 1             ? 1
                  : GEMM_SMALL_ACC / mr > GEMM_NP_MAX ? GEMM_NP_MAX
                                                      : GEMM_SMALL_ACC / mr;
    for (int p0 = 0; p0 < np; p0 += G) {
        const int n = np - p0 < G ? np - p0 : G, last = p0 + n == np;
        const int c = last ? ncl : GEMM_NR;
        float *cc = C + p0 * GEMM_NR;
        const unsigned char *ww = w + (size_t)p0 * ps;
        for (int k0 = 0; k0 < k; k0 += GEMM_KC) {
            const int k1 = k0 + GEMM_KC < k ? k0 + GEMM_KC : k, load = k0 > 0 || accumulate;
            switch (n) {
#if GEMM_NP_MAX != 4
#error "gemm_few has cases for 4 panels"
#endif
            case 4: K(gemm_tile_np)(fmt, cc, ldc, X, ldx, ww, ps, mr, G >= 4 ? 4 : 1, k0, k1, c, load); break;
            case 3: K(gemm_tile_np)(fmt, cc, ldc, X, ldx, ww, ps, mr, G >= 3 ? 3 : 1, k0, k1, c, load); break;
            case 2: K(gemm_tile_np)(fmt, cc, ldc, X, ldx, ww, ps, mr, G >= 2 ? 2 : 1, k0, k1, c, load); break;
            default: K(gemm_tile_np)(fmt, cc, ldc, X, ldx, ww, ps, mr, 1, k0, k1, c, load); break;
            }
        }
    }
}

static inline __attribute__((always_inline)) void
K(gemm_fmt)(const int fmt, float *C, int ldc, const float *X, int ldx, const unsigned char *w,
            size_t ps, int np, int M, int k, int ncl, int accumulate)
{
    if (M > GEMM_NP_ROWS || np == 1) {
        int p = 0;
#if GEMM_MR2 > 0
        for (; p + 2 <= np; p += 2)
            K(gemm_rows2)(fmt, C + p * GEMM_NR, ldc, X, ldx, w + p * ps, ps, M, k,
                          p + 2 == np ? ncl : GEMM_NR, accumulate);
#endif
        for (; p < np; p++)
            K(gemm_rows)(fmt, C + p * GEMM_NR, ldc, X, ldx, w + p * ps, M, k,
                         p == np - 1 ? ncl : GEMM_NR, accumulate);
        return;
    }
#if GEMM_NP_ROWS != 4
#error "gemm has cases for up to 4 rows"
#endif
    switch (M) {
    case 4: K(gemm_few)(fmt, C, ldc, X, ldx, w, ps, np, 4, k, ncl, accumulate); break;
    case 3: K(gemm_few)(fmt, C, ldc, X, ldx, w, ps, np, 3, k, ncl, accumulate); break;
    case 2: K(gemm_few)(fmt, C, ldc, X, ldx, w, ps, np, 2, k, ncl, accumulate); break;
    default: K(gemm_few)(fmt, C, ldc, X, ldx, w, ps, np, 1, k, ncl, accumulate); break;
    }
}

static void K(gemm)(int fmt, float *C, int ldc, const float *X, int ldx, const void *panels,
                    size_t pstride, int np, int M, int k, int ncols_last, int accumulate)
{
    const unsigned char *w = panels;
    if (fmt == WF_BF16)
        K(gemm_fmt)(WF_BF16, C, ldc, X, ldx, w, pstride, np, M, k, ncols_last, accumulate);
    else if (fmt == WF_Q8)
        K(gemm_fmt)(WF_Q8, C, ldc, X, ldx, w, pstride, np, M, k, ncols_last, accumulate);
    else
        K(gemm_fmt)(WF_F32, C, ldc, X, ldx, w, pstride, np, M, k, ncols_last, accumulate);
}

static void K(widen_panel)(int fmt, float *dst, const void *panel, int k)
{
    if (fmt == WF_F32) {
        memcpy(dst, panel, (size_t)k * GEMM_NR * sizeof(float));
    } else if (fmt == WF_BF16) {
        const uint16_t *restrict h = panel;
#pragma omp simd
        for (size_t i = 0; i < (size_t)k * GEMM_NR; i++)
            dst[i] = K(bf16)(h[i]);
    } else {
        const unsigned char *w = panel;
        for (int b0 = 0; b0 < k; b0 += GEMM_QB) {
            const unsigned char *blk = w + (size_t)(b0 / GEMM_QB) * GEMM_Q8_BLOCK;
            const uint16_t *sc = (const uint16_t *)blk;
            const int8_t *restrict q = (const int8_t *)(blk + GEMM_NR * 2);
            float s[GEMM_NR];
            for (int j = 0; j < GEMM_NR; j++)
                s[j] = K(bf16)(sc[j]);
            const int kb = k - b0 < GEMM_QB ? k - b0 : GEMM_QB;
            for (int t = 0; t < kb; t++)
#pragma omp simd
                for (int j = 0; j < GEMM_NR; j++)
                    dst[(size_t)(b0 + t) * GEMM_NR + j] = (float)q[t * GEMM_NR + j] * s[j];
        }
    }
}

/* Independent multiply-add chains for the peak: enough to cover the FMA
 * latency on both pipes, few enough to stay in registers. */
#if KISA == 3
#define FMA_CHAINS 12 /* zmm */
#elif KISA == 2
#define FMA_CHAINS 6 /* two ymm each */
#else
#define FMA_CHAINS 3 /* four xmm each */
#endif

static float K(fma_loop)(long iters, float m)
{
    K(vf) acc[FMA_CHAINS], mv, bv;
    for (int j = 0; j < GEMM_NR; j++)
        mv[j] = m, bv[j] = 1e-7f;
    for (int i = 0; i < FMA_CHAINS; i++)
        for (int j = 0; j < GEMM_NR; j++)
            acc[i][j] = 1e-3f * (float)(i * GEMM_NR + j);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < FMA_CHAINS; i++)
            acc[i] = acc[i] * mv + bv;
    float sum = 0;
    for (int i = 0; i < FMA_CHAINS; i++)
        for (int j = 0; j < GEMM_NR; j++)
            sum += acc[i][j];
    return sum;
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
        if (mode == 0 || mode == 2) {
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
                         const float *bias, int n, int C, int ld, int taps)
{
    for (int t = 0; t < n; t++) {
        float *restrict o = out + (size_t)t * ld;
        if (bias) {
            memcpy(o, bias, (size_t)C * sizeof *o);
        } else {
            memset(o, 0, (size_t)C * sizeof *o);
        }
        for (int k = 0; k < taps; k++) {
            int j = t - (taps - 1) + k; /* input time, < 0: from the carried state */
            const float *restrict row =
                j >= 0 ? in + (size_t)j * in_s : state + (size_t)(taps - 1 + j) * ld;
            const float *restrict wk = wt + (size_t)k * ld;
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
        const float *src = j >= 0 ? in + (size_t)j * in_s : state + (size_t)(taps - 1 + j) * ld;
        if (src != state + (size_t)r * ld)
            memmove(state + (size_t)r * ld, src, (size_t)C * sizeof *state);
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

/* C (M x N, row stride ldc) += A (M x Kd, stride lda) . B (Kd x N, stride
 * ldb): GLA's small matrix products. Tiles of mr rows x 32 columns (8
 * accumulators), then 16, then single columns. */
static inline __attribute__((always_inline)) void K(mm_tile)(float *C, int ldc, const float *A,
                                                             int lda, const float *B, int ldb,
                                                             const int mr, int Kd, int c, int nv)
{
    K(vf) acc[4][2];
    for (int r = 0; r < mr; r++)
        for (int h = 0; h < nv; h++)
            memcpy(&acc[r][h], C + (size_t)r * ldc + c + 16 * h, sizeof(K(vf)));
    for (int kk = 0; kk < Kd; kk++) {
        K(vf) b[2];
        for (int h = 0; h < nv; h++)
            memcpy(&b[h], B + (size_t)kk * ldb + c + 16 * h, sizeof(K(vf)));
        for (int r = 0; r < mr; r++) {
            const float a = A[(size_t)r * lda + kk];
            for (int h = 0; h < nv; h++)
                acc[r][h] += a * b[h];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int h = 0; h < nv; h++)
            memcpy(C + (size_t)r * ldc + c + 16 * h, &acc[r][h], sizeof(K(vf)));
}

static void K(mm_acc)(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                      int Kd, int N)
{
    for (int r0 = 0; r0 < M; r0 += 4) {
        const int mr = M - r0 < 4 ? M - r0 : 4;
        float *Cr = C + (size_t)r0 * ldc;
        const float *Ar = A + (size_t)r0 * lda;
        int c = 0;
        for (; c + 32 <= N; c += 32)
            switch (mr) {
            case 4: K(mm_tile)(Cr, ldc, Ar, lda, B, ldb, 4, Kd, c, 2); break;
            case 3: K(mm_tile)(Cr, ldc, Ar, lda, B, ldb, 3, Kd, c, 2); break;
            case 2: K(mm_tile)(Cr, ldc, Ar, lda, B, ldb, 2, Kd, c, 2); break;
            default: K(mm_tile)(Cr, ldc, Ar, lda, B, ldb, 1, Kd, c, 2); break;
            }
        for (; c + 16 <= N; c += 16)
            switch (mr) {
            case 4: K(mm_tile)(Cr, ldc, Ar, lda, B, ldb, 4, Kd, c, 1); break;
            case 3: K(mm_tile)(Cr, ldc, Ar, lda, B, ldb, 3, Kd, c, 1); break;
            case 2: K(mm_tile)(Cr, ldc, Ar, lda, B, ldb, 2, Kd, c, 1); break;
            default: K(mm_tile)(Cr, ldc, Ar, lda, B, ldb, 1, Kd, c, 1); break;
            }
        for (; c < N; c++)
            for (int r = 0; r < mr; r++) {
                float acc = Cr[(size_t)r * ldc + c];
                for (int kk = 0; kk < Kd; kk++)
                    acc += Ar[(size_t)r * lda + kk] * B[(size_t)kk * ldb + c];
                Cr[(size_t)r * ldc + c] = acc;
            }
    }
}

/* GLA, one key/value head and the nq query heads that share it, over n
 * tokens from state S (dk x dv, row i = key channel i), updated in place:
 *   S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,   o_t = scale q_t S_t.
 * One token: that recurrence, fused (one pass over S). More: the chunkwise
 * form of the GLA paper, GLA_CHUNK tokens at a time, in matrix products
 * (mm_acc): with b_t = g_0 + ... + g_t inside the chunk (b <= 0,
 * decreasing),
 *   o_t = scale [ (q_t . e^{b_t}) S_0 + sum_{s<=t} A_ts v_s ],
 *   A_ts = sum_i q_ti k_si e^{b_ti - b_si},
 *   S_L = e^{b_L} . S_0 + sum_s (k_s . e^{b_L - b_s})^T v_s.
 * Every exponent is <= 0: A between sub-blocks (GLA_SUB rows) is taken
 * relative to r, the b just before the later sub-block I
 * ((q_t e^{b_t - r}) (k_s e^{r - b_s})^T, t in I, s before I); inside a
 * sub-block each pair is exact (e^{b_ti - b_si}, s <= t). So nothing
 * overflows whatever the gates.
 * q: rows stride qs, head j at +j*dk; k, v: rows stride kvs; g: rows
 * stride gs (log decays, <= 0); o: rows stride os, head j at +j*dv.
 * scratch: gla_scratch_floats(dk) floats. */
static void K(gla_scan)(float *S, int dk, int dv, const float *q, int qs, int nq, const float *k,
                        const float *v, int kvs, const float *g, int gs, float *o, int os, int n,
                        float scale, float *scratch)
{
    if (n == 1) {
        for (int j = 0; j < nq; j++)
            memset(o + (size_t)j * dv, 0, (size_t)dv * sizeof *o);
        for (int i = 0; i < dk; i++) {
            float *restrict Si = S + (size_t)i * dv;
            const float a = K(fexp)(g[i]), ki = k[i];
#pragma omp simd
            for (int c = 0; c < dv; c++)
                Si[c] = Si[c] * a + ki * v[c];
            for (int j = 0; j < nq; j++) {
                const float qi = q[(size_t)j * dk + i] * scale;
                float *restrict oj = o + (size_t)j * dv;
#pragma omp simd
                for (int c = 0; c < dv; c++)
                    oj[c] += qi * Si[c];
            }
        }
        return;
    }
    const int CH = GLA_CHUNK;
    float *b = scratch;                    /* CH x dk: cumulative log decays */
    float *kt = b + (size_t)CH * dk;       /* dk x CH: k scaled, transposed */
    float *qh = kt + (size_t)CH * dk;      /* GLA_SUB x dk (inter: CH x dk, see below) */
    float *A = qh + (size_t)GLA_SUB * dk;  /* GLA_SUB x CH */
    for (int t0 = 0; t0 < n; t0 += CH) {
        const int L = n - t0 < CH ? n - t0 : CH;
        for (int t = 0; t < L; t++) {
            const float *restrict gt = g + (size_t)(t0 + t) * gs;
            float *restrict bt = b + (size_t)t * dk;
            if (t) {
                const float *restrict bp = bt - dk;
#pragma omp simd
                for (int i = 0; i < dk; i++)
                    bt[i] = bp[i] + gt[i];
            } else {
                memcpy(bt, gt, (size_t)dk * sizeof *bt);
            }
        }
        const float *vv = v + (size_t)t0 * kvs;
        for (int j = 0; j < nq; j++) {
            const float *qj = q + (size_t)t0 * qs + (size_t)j * dk;
            float *oj = o + (size_t)t0 * os + (size_t)j * dv;
            /* inter: o = scale (q . e^b) S_0, GLA_SUB rows at a time */
            for (int I0 = 0; I0 < L; I0 += GLA_SUB) {
                const int ni = L - I0 < GLA_SUB ? L - I0 : GLA_SUB;
                for (int t = I0; t < I0 + ni; t++) {
                    const float *restrict qt = qj + (size_t)t * qs;
                    const float *restrict bt = b + (size_t)t * dk;
                    float *restrict e = qh + (size_t)(t - I0) * dk;
#pragma omp simd
                    for (int i = 0; i < dk; i++)
                        e[i] = qt[i] * K(fexp)(bt[i]) * scale;
                    memset(oj + (size_t)t * os, 0, (size_t)dv * sizeof *oj);
                }
                K(mm_acc)(oj + (size_t)I0 * os, os, qh, dk, S, dv, ni, dk, dv);
            }
        }
        /* intra, sub-block by sub-block */
        for (int I0 = 0; I0 < L; I0 += GLA_SUB) {
            const int I1 = I0 + GLA_SUB < L ? I0 + GLA_SUB : L, ni = I1 - I0;
            const float *restrict r = I0 ? b + (size_t)(I0 - 1) * dk : NULL;
            /* kt[i][s] = k_si e^{r_i - b_si} for every s before the sub-block */
            for (int s = 0; s < I0; s++) {
                const float *restrict ks = k + (size_t)(t0 + s) * kvs;
                const float *restrict bs = b + (size_t)s * dk;
                for (int i = 0; i < dk; i++)
                    kt[(size_t)i * CH + s] = ks[i] * K(fexp)(r[i] - bs[i]);
            }
            for (int j = 0; j < nq; j++) {
                const float *qj = q + (size_t)t0 * qs + (size_t)j * dk;
                float *oj = o + (size_t)t0 * os + (size_t)j * dv;
                for (int t = I0; t < I1; t++) {
                    const float *restrict qt = qj + (size_t)t * qs;
                    const float *restrict bt = b + (size_t)t * dk;
                    float *restrict At = A + (size_t)(t - I0) * CH;
                    memset(At, 0, (size_t)I1 * sizeof *At);
                    if (r) {
                        float *restrict qht = qh + (size_t)(t - I0) * dk;
#pragma omp simd
                        for (int i = 0; i < dk; i++)
                            qht[i] = qt[i] * K(fexp)(bt[i] - r[i]) * scale;
                    }
                    for (int s = I0; s <= t; s++) { /* the diagonal block, pair by pair */
                        const float *restrict ks = k + (size_t)(t0 + s) * kvs;
                        const float *restrict bs = b + (size_t)s * dk;
                        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                        for (int i = 0; i < dk; i++)
                            acc += qt[i] * ks[i] * K(fexp)(bt[i] - bs[i]);
                        At[s] = acc * scale;
                    }
                }
                if (I0) /* A[:, 0:I0] = (q e^{b - r}) (k e^{r - b})^T */
                    K(mm_acc)(A, CH, qh, dk, kt, CH, ni, dk, I0);
                /* o += A V */
                K(mm_acc)(oj + (size_t)I0 * os, os, A, CH, vv, kvs, ni, I1, dv);
            }
        }
        /* state: S = e^{b_L} . S + (k . e^{b_L - b})^T V */
        const float *restrict bl = b + (size_t)(L - 1) * dk;
        for (int s = 0; s < L; s++) {
            const float *restrict ks = k + (size_t)(t0 + s) * kvs;
            const float *restrict bs = b + (size_t)s * dk;
            for (int i = 0; i < dk; i++)
                kt[(size_t)i * CH + s] = ks[i] * K(fexp)(bl[i] - bs[i]);
        }
        for (int i = 0; i < dk; i++) {
            float *restrict Si = S + (size_t)i * dv;
            const float a = K(fexp)(bl[i]);
#pragma omp simd
            for (int c = 0; c < dv; c++)
                Si[c] *= a;
        }
        K(mm_acc)(S, dv, kt, CH, vv, kvs, dk, L, dv);
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
    .gemm = K(gemm),
    .widen_panel = K(widen_panel),
    .fma_loop = K(fma_loop),
    .fma_lanes = FMA_CHAINS * GEMM_NR,
    .wide_np = GEMM_WIDE_NP,
    .rmsnorm_rows = K(rmsnorm_rows),
    .gate_norm_rows = K(gate_norm_rows),
    .conv_silu = K(conv_silu),
    .m2_scan = K(m2_scan),
    .m1_scan = K(m1_scan),
    .gla_scan = K(gla_scan),
    .max_sumexp = K(max_sumexp),
    .softplus_rows = K(softplus_rows),
};
