/*
 * kernels.h — the element-wise and scan loops of the forward pass.
 *
 * Written as plain C for the auto-vectoriser and compiled three times
 * (kernels_body.h included by kernels_generic.c, kernels_avx2.c,
 * kernels_avx512.c under different target pragmas). kernels_get() picks the
 * widest set this CPU runs, once. GCC's target_clones cannot be used for
 * this: its resolver for arch=x86-64-v3 picks the default clone on AMD Zen.
 *
 * Shapes are in the comments; "rows with stride s" means row t starts at
 * ptr + t*s. Nothing here allocates or fails.
 */
#ifndef RECUR_KERNELS_H
#define RECUR_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Projection weights are stored as column panels of GEMM_NR output features:
 * W (n x k, row-major as PyTorch stores Linear weights) becomes
 * ceil(n / GEMM_NR) panels (the last padded with zero features), each
 * holding, for kk = 0..k-1, the GEMM_NR weights W[p * GEMM_NR + j][kk], in
 * one of three formats (enum wfmt):
 *
 *   WF_F32   k x GEMM_NR floats;
 *   WF_BF16  k x GEMM_NR bfloat16 (the top 16 bits of the fp32 value);
 *   WF_Q8    k in blocks of GEMM_QB: per block, GEMM_NR bfloat16 scales s[j]
 *            (one per feature) then (up to) GEMM_QB x GEMM_NR int8 q; the
 *            weight is (float)q * s[j] (an fp32 product). The last block may
 *            be shorter.
 *
 * Panels are wfmt_panel_bytes(fmt, k) apart (rounded up to 64 bytes). Every
 * format is widened to fp32 in registers and multiplied in fp32: a bf16
 * panel of a bf16 checkpoint computes exactly what its fp32 panel computes. */
#define GEMM_NR 16
#define GEMM_QB 32
/* Bytes of one GEMM_QB block of a WF_Q8 panel: scales, then int8 rows. */
#define GEMM_Q8_BLOCK (GEMM_NR * 2 + GEMM_QB * GEMM_NR)

enum wfmt { WF_F32 = 0, WF_BF16 = 1, WF_Q8 = 2 };

static inline size_t wfmt_panel_bytes(int fmt, int k)
{
    size_t b = fmt == WF_F32    ? (size_t)k * GEMM_NR * 4
               : fmt == WF_BF16 ? (size_t)k * GEMM_NR * 2
                                : (size_t)(k + GEMM_QB - 1) / GEMM_QB * GEMM_NR * 2 +
                                      (size_t)k * GEMM_NR;
    return (b + 63) & ~(size_t)63;
}

/* Pack rows [r0, r0 + n) of a projection W (rows x k, fp32; src holds
 * those rows) into its panels at dst (ceil(rows / GEMM_NR) panels of
 * wfmt_panel_bytes(fmt, k)). r0 is a multiple of GEMM_NR; features past the
 * end of W are zero. Sets *lossy when a value changes: bf16 rounds to
 * nearest even; q8 takes, per block of GEMM_QB along k and per feature, the
 * scale s = max |w| / 127 rounded up to bf16 and q = round(w / s), so
 * |w - q s| <= s / 2. */
void wfmt_pack_rows(int fmt, const float *src, size_t rows, size_t k, size_t r0, size_t n,
                    void *dst, int *lossy);
/* fp32 <-> bf16 (round to nearest even; *lossy set when x changes). */
uint16_t wfmt_bf16_round(float x, int *lossy);
float wfmt_bf16_value(uint16_t h);

/* Most panels one gemm call takes (for few rows: more independent sums). */
#define GEMM_NP_MAX 4
#define GEMM_NP_ROWS 4

/* GLA's chunkwise scan (gla_scan): tokens per chunk and per sub-block,
 * and the scratch one call needs. */
#define GLA_CHUNK 64
#define GLA_SUB 16
static inline size_t gla_scratch_floats(int dk)
{
    return (size_t)2 * GLA_CHUNK * dk + (size_t)GLA_SUB * dk + (size_t)GLA_SUB * GLA_CHUNK;
}

struct kernels {
    const char *name; /* "avx512", "avx2", "generic" */

    /* np consecutive panels (pstride bytes apart, format fmt) of a
     * projection: C (M x cols, row stride ldc) = X (M x k, row stride ldx) .
     * panels, or C += ... when accumulate. All panels are full but the last,
     * of which ncols_last <= GEMM_NR columns are real. With few rows
     * (M <= GEMM_NP_ROWS) up to GEMM_NP_MAX panels are taken at once (the
     * FMA pipes get independent sums to work on); with more, pairs of panels
     * where the set has a two-panel tile (wide_np), else one at a time. Every output element is one running sum over
     * kk = 0..k-1 in order (starting from C when accumulating) of x * w, w
     * the weight widened to fp32: the same arithmetic whatever M, np, the
     * row's place in X or the split of panels over threads. So a session's
     * numbers do not depend on what else is in the batch. */
    void (*gemm)(int fmt, float *C, int ldc, const float *X, int ldx, const void *panels,
                 size_t pstride, int np, int M, int k, int ncols_last, int accumulate);

    /* One panel of format fmt widened to fp32 (k x GEMM_NR floats, the
     * WF_F32 layout): gemm over the result computes exactly what gemm over
     * the panel computes (for many rows, widening once is cheaper). */
    void (*widen_panel)(int fmt, float *dst, const void *panel, int k);

    /* The multiply-add peak of this set, in registers: iters rounds of
     * fma_lanes independent a = a * m + b; returns a value that depends on
     * every one (so nothing is optimised away). recurd bench's reference:
     * fma_lanes * 2 * iters flops per call, per thread. */
    float (*fma_loop)(long iters, float m);
    int fma_lanes;
    /* Panels per gemm call that suit many rows (M > GEMM_NP_ROWS). */
    int wide_np;

    /* out[r] = x[r] / rms(x[r]) * w, rows x n (out may equal x). */
    void (*rmsnorm_rows)(float *out, const float *x, const float *w, int rows, int n, float eps);

    /* Mamba-2 output gate + norm, in place on y (rows x n), z rows with
     * stride zs. mode 0: y = norm_g(y * silu(z)) * w; mode 1:
     * y = norm_g(y) * w * silu(z); mode 2: y = y * silu(z) (no norm);
     * mode 3: y = norm_g(y) * w (no gate; z unused).
     * norm_g normalises each group of `group` channels separately. */
    void (*gate_norm_rows)(float *y, const float *z, int zs, const float *w, int rows, int n,
                           int group, float eps, int mode);

    /* Causal depthwise conv + SiLU over one segment of n rows, C channels
     * (channels are independent: a block of them is the pointers offset to
     * its first channel and C its width, ld the full width).
     * in: n rows with stride in_s; state: (K-1) rows (stride ld) of the
     * inputs before the segment, oldest first, updated to the last K-1
     * inputs; wt: K tap-major rows (stride ld); bias: C or NULL; out: n rows
     * (stride ld). */
    void (*conv_silu)(float *out, const float *in, int in_s, float *state, const float *wt,
                      const float *bias, int n, int C, int ld, int K);

    /* Mamba-2 scan of one head over n tokens. S: P x N state (in/out).
     * x: rows stride xs (P values); B, C: rows stride bcs (N values);
     * dt: rows stride dts (one value, already softplus'ed and clamped);
     * D: P values with stride dstride (0: one scalar); y: rows stride ys. */
    void (*m2_scan)(float *S, const float *x, int xs, const float *B, const float *C, int bcs,
                    const float *dt, int dts, float A, const float *D, int dstride, float *y,
                    int ys, int n, int P, int N);

    /* Mamba-1 scan of channels [c0, c1) over n tokens, with the output
     * gate. S: d_inner x N (rows of N). x, dt, z, y: rows stride xs/dts/zs/ys
     * indexed by channel; B, C: rows stride bcs (N values); A: d_inner x N;
     * D: d_inner. y = (S.C + D x) * silu(z). */
    void (*m1_scan)(float *S, const float *x, int xs, const float *dt, int dts, const float *B,
                    const float *C, int bcs, const float *A, const float *D, const float *z,
                    int zs, float *y, int ys, int n, int c0, int c1, int N);

    /* GLA: one key/value head and its nq query heads over n tokens
     * (kernels_body.h says how). S: dk x dv, in/out. */
    void (*gla_scan)(float *S, int dk, int dv, const float *q, int qs, int nq, const float *k,
                     const float *v, int kvs, const float *g, int gs, float *o, int os, int n,
                     float scale, float *scratch);

    /* max and sum of exp(x - max) over n values (for log-softmax). */
    void (*max_sumexp)(const float *x, int n, float *max, double *sumexp);

    /* y[i] = softplus(x[i] + b[i]) clamped to [lo, hi], rows x n with
     * strides xs (in) and ys (out). */
    void (*softplus_rows)(float *y, int ys, const float *x, int xs, const float *b, int rows,
                          int n, float lo, float hi);
};

/* The best set for this CPU (never NULL). */
const struct kernels *kernels_get(void);
/* A named set ("generic", "avx2", "avx512") if this CPU runs it, else NULL:
 * lets tests compare implementations. */
const struct kernels *kernels_named(const char *name);

#endif
