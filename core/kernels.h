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

/* Projection weights are stored as column panels of GEMM_NR output features:
 * W (n x k, row-major as PyTorch stores Linear weights) becomes
 * ceil(n / GEMM_NR) panels, each k x GEMM_NR floats (feature j of panel p at
 * [kk * GEMM_NR + j] is W[p * GEMM_NR + j][kk]); the last panel is padded
 * with zeros. */
#define GEMM_NR 16

struct kernels {
    const char *name; /* "avx512", "avx2", "generic" */

    /* One panel of a projection: C (M x ncols, row stride ldc) = X (M x k,
     * row stride ldx) . panel (k x GEMM_NR), or C += ... when accumulate.
     * ncols <= GEMM_NR of the panel's columns are real. Every output element
     * is one running sum over kk = 0..k-1 in order (starting from C when
     * accumulating): the same arithmetic whatever M, the row's place in X or
     * the split of panels over threads. So a session's numbers do not depend
     * on what else is in the batch. */
    void (*gemm_panel)(float *C, int ldc, const float *X, int ldx, const float *panel, int M,
                       int k, int ncols, int accumulate);

    /* out[r] = x[r] / rms(x[r]) * w, rows x n (out may equal x). */
    void (*rmsnorm_rows)(float *out, const float *x, const float *w, int rows, int n, float eps);

    /* Mamba-2 output gate + norm, in place on y (rows x n), z rows with
     * stride zs. mode 0: y = norm_g(y * silu(z)) * w; mode 1:
     * y = norm_g(y) * w * silu(z); mode 2: y = y * silu(z) (no norm).
     * norm_g normalises each group of `group` channels separately. */
    void (*gate_norm_rows)(float *y, const float *z, int zs, const float *w, int rows, int n,
                           int group, float eps, int mode);

    /* Causal depthwise conv + SiLU over one segment of n rows.
     * in: n rows (C channels) with stride in_s; state: (K-1) x C rows of the
     * inputs before the segment, oldest first, updated to the last K-1
     * inputs; wt: K x C tap-major weights; bias: C or NULL; out: n x C. */
    void (*conv_silu)(float *out, const float *in, int in_s, float *state, const float *wt,
                      const float *bias, int n, int C, int K);

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
