/*
 * forward.c — the model's forward pass over a ragged batch.
 *
 * Per layer, over all N tokens of the batch at once:
 *   xn   = RMSNorm(resid)                          N x d_model
 *   proj = xn in_proj^T                            N x d_in_proj   (one GEMM)
 * Mamba-2 (proj row = [z | xBC | dt]):
 *   xbc  = SiLU(causal conv(xBC)), per segment from its conv state
 *   dt   = clamp(softplus(dt + dt_bias))           N x nheads
 *   y    = scan, per (segment, head) from its SSM state
 *   y    = RMSNorm_group(y * SiLU(z)) * w
 * Mamba-1 (proj row = [x | z]):
 *   xbc  = SiLU(causal conv(x))
 *   xdbl = xbc x_proj^T = [dt_low | B | C]         (one GEMM)
 *   dt   = softplus(dt_low dt_proj^T + dt_proj_b)  (one GEMM)
 *   y    = scan(...) * SiLU(z)
 * then
 *   resid += y out_proj^T                          (one GEMM, beta = 1)
 * and finally RMSNorm(resid, norm_f): the rows handed back and each
 * segment's last row kept in its state.
 */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "errors.h"
#include "kernels.h"
#include "model_impl.h"
#include "pool.h"
#include "state.h"

struct seg_meta {
    int off, n;         /* rows [off, off + n) of the batch */
    struct mstate *s;
};

struct fwd {
    const struct model *m;
    const struct kernels *k;
    int max_tokens;
    float *resid;          /* max x d_model */
    float *xn;             /* max x d_model */
    float *proj;           /* max x d_in_proj */
    float *xbc;            /* max x conv_dim */
    float *dt;             /* max x (M2: nheads, M1: d_inner) */
    float *y;              /* max x d_inner */
    float *xdbl;           /* max x (dt_rank + 2 d_state), Mamba-1 only */
    struct seg_meta *meta; /* max segments (<= max tokens) */
    struct mstate **seen;  /* duplicate-state check scratch */
    struct pool *pool;     /* scan/conv workers (this thread + nproc-1) */
    float *wide;           /* per pool thread: a bf16/q8 panel widened (linear_item) */
    float *gla_scratch;    /* GLA: per pool thread, gla_scan's scratch */
    size_t gla_stride;     /* floats per thread in gla_scratch */
    float *ones;           /* GLA without norm weights: d_inner ones */
    size_t wide_stride;    /* floats per thread in wide */
    int layer, nseg;       /* the layer the pool's work items belong to */
    int gate_n;            /* rows of the batch, for gate_item */
    struct fwd_profile *prof; /* NULL unless profiling */
    double t_mark;         /* profiling: the end of the last phase */
    void *block;           /* the one allocation behind the float buffers */
};

void fwd_free(struct fwd *f)
{
    if (!f)
        return;
    pool_free(f->pool);
    rc_free(f->wide);
    rc_free(f->gla_scratch);
    rc_free(f->ones);
    rc_free(f->block);
    rc_free(f->meta);
    rc_free(f->seen);
    rc_free(f);
}

int fwd_max_tokens(const struct fwd *f) { return f->max_tokens; }
const struct model *fwd_model(const struct fwd *f) { return f->m; }

int fwd_create(const struct model *m, int max_tokens, struct fwd **out)
{
    return fwd_create_threads(m, max_tokens, 0, out);
}

int fwd_create_threads(const struct model *m, int max_tokens, int threads, struct fwd **out)
{
    const struct model_config *c = &m->cfg;
    if (max_tokens < 1 || max_tokens > (1 << 20))
        return RC_EINVAL;
    struct fwd *f = rc_calloc(1, sizeof *f);
    if (!f)
        return RC_ENOMEM;
    f->m = m;
    f->k = kernels_get();
    f->max_tokens = max_tokens;
    size_t T = (size_t)max_tokens;
    const int gla = c->arch == MODEL_GLA;
    size_t dtw = c->arch == MODEL_MAMBA2 ? (size_t)c->nheads : gla ? 0 : (size_t)c->d_inner;
    size_t xdw = c->arch == MODEL_MAMBA1 ? (size_t)(c->dt_rank + 2 * c->d_state) : 0;
    /* GLA: proj also holds the MLP's gate and up rows. */
    size_t pw = gla && 2 * (size_t)c->gla_ff > (size_t)c->d_in_proj ? 2 * (size_t)c->gla_ff
                                                                      : (size_t)c->d_in_proj;
    /* Each buffer padded to a 64-byte boundary. */
    size_t widths[] = {(size_t)c->d_model, (size_t)c->d_model, pw,
                       (size_t)c->conv_dim, dtw, (size_t)c->d_inner, xdw};
    float **bufs[] = {&f->resid, &f->xn, &f->proj, &f->xbc, &f->dt, &f->y, &f->xdbl};
    size_t total = 0;
    for (int i = 0; i < 7; i++)
        total += (T * widths[i] + 15) & ~(size_t)15;
    f->block = rc_aligned_alloc(total * sizeof(float));
    f->meta = rc_calloc(T, sizeof *f->meta);
    f->seen = rc_calloc(T, sizeof *f->seen);
    f->pool = pool_create(threads);
    if (!f->block || !f->meta || !f->seen || !f->pool) {
        fwd_free(f);
        return RC_ENOMEM;
    }
    if (gla) {
        f->gla_stride = (gla_scratch_floats(c->gla_dk) + 15) & ~(size_t)15;
        f->gla_scratch =
            rc_aligned_alloc((size_t)pool_threads(f->pool) * f->gla_stride * sizeof(float));
        f->ones = rc_aligned_alloc((size_t)c->d_inner * sizeof(float));
        if (!f->gla_scratch || !f->ones) {
            fwd_free(f);
            return RC_ENOMEM;
        }
        for (int i = 0; i < c->d_inner; i++)
            f->ones[i] = 1.0f;
    }
    if (m->wfmt != WF_F32) {
        int kmax = c->d_model > c->d_inner ? c->d_model : c->d_inner;
        kmax = c->dt_rank > kmax ? c->dt_rank : kmax;
        kmax = gla && c->gla_ff > kmax ? c->gla_ff : kmax;
        kmax = gla && c->gla_low_rank > kmax ? c->gla_low_rank : kmax;
        f->wide_stride = wfmt_panel_bytes(WF_F32, kmax) / sizeof(float) * f->k->wide_np;
        f->wide = rc_aligned_alloc((size_t)pool_threads(f->pool) * f->wide_stride * sizeof(float));
        if (!f->wide) {
            fwd_free(f);
            return RC_ENOMEM;
        }
    }
    float *p = f->block;
    for (int i = 0; i < 7; i++) {
        *bufs[i] = p;
        p += (T * widths[i] + 15) & ~(size_t)15;
    }
    *out = f;
    return 0;
}

/* Rows from which a bf16/q8 projection widens each panel to fp32 first. */
#define LINEAR_WIDEN_ROWS 16

const char *const fwd_phase_names[FWD_NPHASES] = {
    "embed", "norm", "in_proj", "conv", "dt", "scan", "gate_norm", "out_proj", "x/dt_proj",
    "final_norm", "lm_head", "mlp"};

void fwd_set_profile(struct fwd *f, struct fwd_profile *p) { f->prof = p; }

static double mono_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Profiling: charge the time since the last mark to phase ph. */
static inline void mark(struct fwd *f, int ph)
{
    if (!f->prof)
        return;
    double t = mono_sec();
    f->prof->sec[ph] += t - f->t_mark;
    f->t_mark = t;
}

struct linear_job {
    const struct kernels *k;
    float *out;
    const float *x;
    const unsigned char *w;
    float *scratch; /* per pool thread: one panel widened to fp32 */
    size_t ps, sstride;
    int fmt, ldo, ldx, rows, n, kdim, accumulate, per_item;
};

/* Work item i: panels [i * per_item, ...). Few rows: several panels in one
 * kernel call (independent sums for the FMA pipes). Many rows of a bf16 or
 * q8 projection: the panel is widened to fp32 once and the fp32 kernel runs
 * over it (the same arithmetic, kernels.h). */
static void linear_item(void *ctx, int i)
{
    const struct linear_job *j = ctx;
    const int panels = (j->n + GEMM_NR - 1) / GEMM_NR, p0 = i * j->per_item;
    const int np = panels - p0 < j->per_item ? panels - p0 : j->per_item;
    const int c0 = p0 * GEMM_NR, ncl = j->n - (p0 + np - 1) * GEMM_NR;
    const unsigned char *w = j->w + (size_t)p0 * j->ps;
    const int last = ncl < GEMM_NR ? ncl : GEMM_NR;
    if (j->fmt != WF_F32 && j->rows >= LINEAR_WIDEN_ROWS) {
        float *tmp = j->scratch + (size_t)pool_self() * j->sstride;
        const size_t fs = wfmt_panel_bytes(WF_F32, j->kdim);
        for (int p = 0; p < np; p++)
            j->k->widen_panel(j->fmt, (float *)((char *)tmp + p * fs), w + p * j->ps, j->kdim);
        j->k->gemm(WF_F32, j->out + c0, j->ldo, j->x, j->ldx, tmp, fs, np, j->rows, j->kdim, last,
                   j->accumulate);
        return;
    }
    j->k->gemm(j->fmt, j->out + c0, j->ldo, j->x, j->ldx, w, j->ps, np, j->rows, j->kdim, last,
               j->accumulate);
}

/* out (rows x n, row stride ldo) = x (rows x k, row stride ldx) . W^T, or
 * += when accumulate; W (n x k) packed in panels of the model's format
 * (kernels.h). Panels are spread over the pool; each output element is
 * computed the same way whatever the batch, so rows do not depend on each
 * other. */
static void linear(struct fwd *f, float *out, int ldo, const float *x, int ldx, const void *w,
                   int rows, int n, int k, int accumulate)
{
    const int fmt = f->m->wfmt, panels = (n + GEMM_NR - 1) / GEMM_NR;
    const int per = rows <= GEMM_NP_ROWS ? GEMM_NP_MAX : f->k->wide_np;
    struct linear_job j = {f->k,  out, x,   w,    f->wide, wfmt_panel_bytes(fmt, k), f->wide_stride,
                           fmt,   ldo, ldx, rows, n,       k,                        accumulate,
                           per};
    pool_run(f->pool, (panels + per - 1) / per, linear_item, &j);
}

static void add_bias(float *out, int ldo, const float *b, int rows, int n)
{
    if (!b)
        return;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++)
            out[(size_t)r * ldo + i] += b[i];
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
    return (x > y) - (x < y);
}

/* Everything is checked before any state is touched. */
static int validate(struct fwd *f, const struct fwd_seg *segs, int nseg, int *total, char *err,
                    size_t errlen)
{
    const struct model_config *c = &f->m->cfg;
    if (nseg < 1 || nseg > f->max_tokens)
        return rc_fail(err, errlen, RC_EINVAL, "batch of %d segments (1..%d)", nseg,
                       f->max_tokens);
    long sum = 0;
    for (int i = 0; i < nseg; i++) {
        const struct fwd_seg *s = &segs[i];
        if (!s->state || s->state->model != f->m)
            return rc_fail(err, errlen, RC_EINVAL, "segment %d: state of another model", i);
        if (s->n < 1 || !s->tokens)
            return rc_fail(err, errlen, RC_EINVAL, "segment %d: %d tokens", i, s->n);
        sum += s->n;
        if (sum > f->max_tokens)
            return rc_fail(err, errlen, RC_ERANGE, "batch over %d tokens", f->max_tokens);
        for (int j = 0; j < s->n; j++)
            if (s->tokens[j] < 0 || s->tokens[j] >= c->n_vocab)
                return rc_fail(err, errlen, RC_EINVAL,
                               "segment %d: token %d is %d, outside the vocabulary [0, %d)", i,
                               j, s->tokens[j], c->n_vocab);
        if (s->state->pos < 0 || (uint64_t)s->state->pos > STATE_MAX_POS - (uint64_t)s->n)
            return rc_fail(err, errlen, RC_ERANGE,
                           "segment %d: reading %d tokens at position %lld would pass the "
                           "maximum position 2^53",
                           i, s->n, (long long)s->state->pos);
        f->seen[i] = s->state;
    }
    qsort(f->seen, (size_t)nseg, sizeof *f->seen, cmp_ptr);
    for (int i = 1; i < nseg; i++)
        if (f->seen[i] == f->seen[i - 1])
            return rc_fail(err, errlen, RC_EINVAL, "one state appears in two segments");
    *total = (int)sum;
    return 0;
}

/* Work item it of a Mamba-2 layer: (segment it / nheads, head it % nheads). */
static void m2_scan_item(void *ctx, int it)
{
    struct fwd *f = ctx;
    const struct model_config *c = &f->m->cfg;
    const struct layer *L = &f->m->layers[f->layer];
    const int DI = c->d_inner, CD = c->conv_dim, NS = c->d_state, P = c->headdim;
    const int H = c->nheads, G = c->ngroups, h = it % H, g = h / (H / G);
    const struct seg_meta *sm = &f->meta[it / H];
    const size_t off = (size_t)sm->off;
    const float *xb = f->xbc + off * CD;
    f->k->m2_scan(sm->s->ssm + (size_t)f->layer * sm->s->ssm_per_layer + (size_t)h * P * NS,
                  xb + (size_t)h * P, CD, xb + DI + (size_t)g * NS,
                  xb + DI + (size_t)G * NS + (size_t)g * NS, CD, f->dt + off * H + h, H, L->A[h],
                  L->D + (c->d_has_hdim ? (size_t)h * P : (size_t)h), c->d_has_hdim ? 1 : 0,
                  f->y + off * DI + (size_t)h * P, DI, sm->n, P, NS);
}

/* Work item it: the causal conv of one block of channels of one segment
 * (the input starts `in_off` floats into each in_proj row). */
enum { CONV_CH = 512 }; /* channels per conv work item */

static void conv_item(void *ctx, int it)
{
    struct fwd *f = ctx;
    const struct model_config *c = &f->m->cfg;
    const struct layer *L = &f->m->layers[f->layer];
    const int CD = c->conv_dim, blocks = (CD + CONV_CH - 1) / CONV_CH;
    const struct seg_meta *sm = &f->meta[it / blocks];
    const int c0 = (it % blocks) * CONV_CH, w = CD - c0 < CONV_CH ? CD - c0 : CONV_CH;
    const int in_off = c->arch == MODEL_MAMBA2 ? c->d_inner : 0;
    f->k->conv_silu(f->xbc + (size_t)sm->off * CD + c0,
                    f->proj + (size_t)sm->off * c->d_in_proj + in_off + c0, c->d_in_proj,
                    sm->s->conv + (size_t)f->layer * sm->s->conv_per_layer + c0,
                    L->conv_wt + c0, L->conv_b ? L->conv_b + c0 : NULL, sm->n, w, CD, c->d_conv);
}

/* Work items of the conv: (segment, block of CONV_CH channels). */
static int conv_items(const struct fwd *f, int nseg)
{
    return nseg * ((f->m->cfg.conv_dim + CONV_CH - 1) / CONV_CH);
}

enum { GATE_ROWS = 32 }; /* rows per gated-norm work item */

/* Work item i: the gated norm of rows [i * GATE_ROWS, ...) of layer f->layer
 * (rows are independent: the same numbers however they are split). */
static void gate_item(void *ctx, int i)
{
    struct fwd *f = ctx;
    const struct model_config *c = &f->m->cfg;
    const struct layer *L = &f->m->layers[f->layer];
    const int DI = c->d_inner, IP = c->d_in_proj, r0 = i * GATE_ROWS;
    const int n = f->gate_n - r0 < GATE_ROWS ? f->gate_n - r0 : GATE_ROWS;
    const int mode = !c->rmsnorm_gated ? 2 : c->norm_before_gate ? 1 : 0;
    f->k->gate_norm_rows(f->y + (size_t)r0 * DI, f->proj + (size_t)r0 * IP, IP, L->gnorm, n, DI,
                         DI / c->ngroups, c->norm_eps, mode);
}

static void mamba2_mixer(struct fwd *f, int l, int N, int nseg)
{
    const struct model_config *c = &f->m->cfg;
    const struct layer *L = &f->m->layers[l];
    const int DI = c->d_inner, H = c->nheads, IP = c->d_in_proj;
    pool_run(f->pool, conv_items(f, nseg), conv_item, f);
    mark(f, FWD_CONV);
    f->k->softplus_rows(f->dt, H, f->proj + DI + c->conv_dim, IP, L->dt_bias, N, H, c->dt_min,
                        c->dt_max);
    mark(f, FWD_DT);
    pool_run(f->pool, nseg * H, m2_scan_item, f);
    mark(f, FWD_SCAN);
    f->gate_n = N;
    pool_run(f->pool, (N + GATE_ROWS - 1) / GATE_ROWS, gate_item, f);
    mark(f, FWD_GATE_NORM);
}

enum { M1_CHUNK = 128 }; /* channels per Mamba-1 scan work item */

/* Work item it of a Mamba-1 layer: (segment, block of M1_CHUNK channels). */
static void m1_scan_item(void *ctx, int it)
{
    struct fwd *f = ctx;
    const struct model_config *c = &f->m->cfg;
    const struct layer *L = &f->m->layers[f->layer];
    const int DI = c->d_inner, NS = c->d_state, R = c->dt_rank, IP = c->d_in_proj;
    const int XW = R + 2 * NS, chunks = (DI + M1_CHUNK - 1) / M1_CHUNK;
    const struct seg_meta *sm = &f->meta[it / chunks];
    const int c0 = (it % chunks) * M1_CHUNK, c1 = c0 + M1_CHUNK < DI ? c0 + M1_CHUNK : DI;
    const size_t off = (size_t)sm->off;
    const float *xd = f->xdbl + off * XW;
    f->k->m1_scan(sm->s->ssm + (size_t)f->layer * sm->s->ssm_per_layer, f->xbc + off * DI, DI,
                  f->dt + off * DI, DI, xd + R, xd + R + NS, XW, L->A1, L->D,
                  f->proj + off * IP + DI, IP, f->y + off * DI, DI, sm->n, c0, c1, NS);
}

static void mamba1_mixer(struct fwd *f, int l, int N, int nseg)
{
    const struct model_config *c = &f->m->cfg;
    const struct layer *L = &f->m->layers[l];
    const int DI = c->d_inner, R = c->dt_rank, XW = R + 2 * c->d_state;
    pool_run(f->pool, conv_items(f, nseg), conv_item, f);
    mark(f, FWD_CONV);
    linear(f, f->xdbl, XW, f->xbc, DI, L->x_proj, N, XW, DI, 0);
    linear(f, f->dt, DI, f->xdbl, XW, L->dt_proj, N, DI, R, 0);
    mark(f, FWD_X_DT_PROJ);
    f->k->softplus_rows(f->dt, DI, f->dt, DI, L->dt_proj_b, N, DI, 0.0f, __builtin_inff());
    mark(f, FWD_DT);
    pool_run(f->pool, nseg * ((DI + M1_CHUNK - 1) / M1_CHUNK), m1_scan_item, f);
    mark(f, FWD_SCAN);
}

/* GLA's projection row (config.h): offsets of its parts. */
struct gla_row {
    int q, k, v, g, gk, low;
};

static struct gla_row gla_row(const struct model_config *c)
{
    const int G = c->nheads / c->gla_kv_heads, KK = c->gla_key_dim / G, VV = c->d_inner / G;
    struct gla_row r;
    r.q = 0;
    r.k = c->gla_key_dim;
    r.v = r.k + KK;
    r.g = r.v + VV;
    r.gk = r.g + (c->gla_out_gate ? c->d_inner : 0);
    r.low = r.gk + KK;
    return r;
}

/* Work item it of a GLA layer: (segment it / kv_heads, key/value head). */
static void gla_scan_item(void *ctx, int it)
{
    struct fwd *f = ctx;
    const struct model_config *c = &f->m->cfg;
    const int HK = c->gla_kv_heads, G = c->nheads / HK, h = it % HK;
    const int dk = c->gla_dk, dv = c->gla_dv, IP = c->d_in_proj;
    const struct seg_meta *sm = &f->meta[it / HK];
    const size_t off = (size_t)sm->off;
    const struct gla_row r = gla_row(c);
    /* q, k, v: after the short conv (xbc, conv_dim wide, same offsets) or
     * straight from the projections */
    const float *src = c->gla_short_conv ? f->xbc : f->proj;
    const int ss = c->gla_short_conv ? c->conv_dim : IP;
    f->k->gla_scan(sm->s->ssm + (size_t)f->layer * sm->s->ssm_per_layer + (size_t)h * dk * dv,
                   dk, dv, src + off * ss + r.q + (size_t)h * G * dk, ss, G,
                   src + off * ss + r.k + (size_t)h * dk, src + off * ss + r.v + (size_t)h * dv,
                   ss, f->proj + off * IP + r.gk + (size_t)h * dk, IP,
                   f->y + off * c->d_inner + (size_t)h * G * dv, c->d_inner, sm->n,
                   1.0f / sqrtf((float)dk),
                   f->gla_scratch + (size_t)pool_self() * f->gla_stride);
}

/* Work item i: the head norm (and swish gate) of rows [i * GATE_ROWS, ...). */
static void gla_gate_item(void *ctx, int i)
{
    struct fwd *f = ctx;
    const struct model_config *c = &f->m->cfg;
    const struct layer *L = &f->m->layers[f->layer];
    const int DI = c->d_inner, IP = c->d_in_proj, r0 = i * GATE_ROWS;
    const int n = f->gate_n - r0 < GATE_ROWS ? f->gate_n - r0 : GATE_ROWS;
    f->k->gate_norm_rows(f->y + (size_t)r0 * DI, f->proj + (size_t)r0 * IP + gla_row(c).g, IP,
                         L->gnorm ? L->gnorm : f->ones, n, DI, c->gla_dv, c->norm_eps,
                         c->gla_out_gate ? 1 : 3);
}

/* Work item i, rows [i * GATE_ROWS, ...) of the batch: gk = max(logsigmoid(x) /
 * normaliser, clamp_min) in place (f->gate_n rows). */
static void gla_gk_item(void *ctx, int i)
{
    struct fwd *f = ctx;
    const struct model_config *c = &f->m->cfg;
    const int IP = c->d_in_proj, n = c->gla_key_dim / (c->nheads / c->gla_kv_heads);
    const int r0 = i * GATE_ROWS, r1 = r0 + GATE_ROWS < f->gate_n ? r0 + GATE_ROWS : f->gate_n;
    const float inv = 1.0f / c->gla_gate_norm, lo = c->gla_clamp_min;
    const int gk = gla_row(c).gk;
    for (int r = r0; r < r1; r++) {
        float *xr = f->proj + (size_t)r * IP + gk;
        for (int j = 0; j < n; j++) {
            const float v = xr[j];
            const float ls = ((v < 0.0f ? v : 0.0f) - log1pf(expf(-fabsf(v)))) * inv;
            xr[j] = ls < lo ? lo : ls;
        }
    }
}

/* Work item i: the MLP's up * silu(gate) for rows [i * GATE_ROWS, ...),
 * into the up half of each row. */
static void gla_swiglu_item(void *ctx, int i)
{
    struct fwd *f = ctx;
    const int FF = f->m->cfg.gla_ff, r0 = i * GATE_ROWS;
    const int r1 = r0 + GATE_ROWS < f->gate_n ? r0 + GATE_ROWS : f->gate_n;
    for (int r = r0; r < r1; r++) {
        float *row = f->proj + (size_t)r * 2 * FF;
        f->k->gate_norm_rows(row + FF, row, 0, NULL, 1, FF, FF, 0.0f, 2);
    }
}

/* Attention-like half of a GLA block: xn (normed) in, resid += o_proj(o). */
static void gla_mixer(struct fwd *f, int l, int N, int nseg)
{
    const struct model_config *c = &f->m->cfg;
    const struct layer *L = &f->m->layers[l];
    const int D = c->d_model, IP = c->d_in_proj, G = c->nheads / c->gla_kv_heads;
    const int KK = c->gla_key_dim / G, VV = c->d_inner / G, R = c->gla_low_rank;
    const struct gla_row r = gla_row(c);
    linear(f, f->proj + r.q, IP, f->xn, D, L->q_proj, N, c->gla_key_dim, D, 0);
    linear(f, f->proj + r.k, IP, f->xn, D, L->k_proj, N, KK, D, 0);
    linear(f, f->proj + r.v, IP, f->xn, D, L->v_proj, N, VV, D, 0);
    if (c->gla_out_gate)
        linear(f, f->proj + r.g, IP, f->xn, D, L->g_proj, N, c->d_inner, D, 0);
    linear(f, f->proj + r.low, IP, f->xn, D, L->gk0, N, R, D, 0);
    linear(f, f->proj + r.gk, IP, f->proj + r.low, IP, L->gk1, N, KK, R, 0);
    add_bias(f->proj + r.gk, IP, L->gk1_b, N, KK);
    mark(f, FWD_IN_PROJ);
    if (c->gla_short_conv) {
        pool_run(f->pool, conv_items(f, nseg), conv_item, f);
        mark(f, FWD_CONV);
    }
    f->gate_n = N;
    pool_run(f->pool, (N + GATE_ROWS - 1) / GATE_ROWS, gla_gk_item, f);
    mark(f, FWD_DT);
    pool_run(f->pool, nseg * c->gla_kv_heads, gla_scan_item, f);
    mark(f, FWD_SCAN);
    f->gate_n = N;
    pool_run(f->pool, (N + GATE_ROWS - 1) / GATE_ROWS, gla_gate_item, f);
    mark(f, FWD_GATE_NORM);
}

/* SwiGLU MLP half of a GLA block: resid += down(silu(gate(xn)) * up(xn)). */
static void gla_mlp(struct fwd *f, int l, int N)
{
    const struct model_config *c = &f->m->cfg;
    const struct layer *L = &f->m->layers[l];
    const int D = c->d_model, FF = c->gla_ff, W = 2 * FF;
    f->k->rmsnorm_rows(f->xn, f->resid, L->mlp_norm, N, D, c->norm_eps);
    linear(f, f->proj, W, f->xn, D, L->ff_gate, N, FF, D, 0);
    linear(f, f->proj + FF, W, f->xn, D, L->ff_up, N, FF, D, 0);
    f->gate_n = N;
    pool_run(f->pool, (N + GATE_ROWS - 1) / GATE_ROWS, gla_swiglu_item, f);
    linear(f, f->resid, D, f->proj + FF, W, L->ff_down, N, D, FF, 1);
    mark(f, FWD_MLP);
}

int fwd_run(struct fwd *f, struct fwd_seg *segs, int nseg, char *err, size_t errlen)
{
    const struct model *m = f->m;
    const struct model_config *c = &m->cfg;
    const int D = c->d_model;
    int N = 0, rc;
    if ((rc = validate(f, segs, nseg, &N, err, errlen)))
        return rc;

    if (f->prof) {
        f->prof->calls++;
        f->t_mark = mono_sec();
    }
    int off = 0;
    for (int i = 0; i < nseg; i++) {
        f->meta[i] = (struct seg_meta){off, segs[i].n, segs[i].state};
        for (int j = 0; j < segs[i].n; j++)
            model_embed_row(m, segs[i].tokens[j], f->resid + (size_t)(off + j) * D);
        off += segs[i].n;
    }
    mark(f, FWD_EMBED);

    for (int l = 0; l < c->n_layer; l++) {
        const struct layer *L = &m->layers[l];
        f->layer = l;
        f->k->rmsnorm_rows(f->xn, f->resid, L->norm, N, D, c->norm_eps);
        mark(f, FWD_NORM);
        if (c->arch == MODEL_GLA) {
            gla_mixer(f, l, N, nseg);
            linear(f, f->resid, D, f->y, c->d_inner, L->out_proj, N, D, c->d_inner, 1);
            mark(f, FWD_OUT_PROJ);
            gla_mlp(f, l, N);
            continue;
        }
        linear(f, f->proj, c->d_in_proj, f->xn, D, L->in_proj, N, c->d_in_proj, D, 0);
        add_bias(f->proj, c->d_in_proj, L->in_proj_b, N, c->d_in_proj);
        mark(f, FWD_IN_PROJ);
        if (c->arch == MODEL_MAMBA2)
            mamba2_mixer(f, l, N, nseg);
        else
            mamba1_mixer(f, l, N, nseg);
        linear(f, f->resid, D, f->y, c->d_inner, L->out_proj, N, D, c->d_inner, 1);
        add_bias(f->resid, D, L->out_proj_b, N, D);
        mark(f, FWD_OUT_PROJ);
    }

    f->k->rmsnorm_rows(f->xn, f->resid, m->norm_f, N, D, c->norm_eps);
    for (int i = 0; i < nseg; i++) {
        const struct seg_meta *sm = &f->meta[i];
        const float *rows = f->xn + (size_t)sm->off * D;
        if (segs[i].hidden)
            memcpy(segs[i].hidden, rows, (size_t)sm->n * D * sizeof(float));
        memcpy(sm->s->last, rows + (size_t)(sm->n - 1) * D, (size_t)D * sizeof(float));
        sm->s->has_last = 1;
        sm->s->pos += sm->n;
    }
    mark(f, FWD_FINAL);
    return 0;
}

void fwd_logits(struct fwd *f, const float *hidden, int n, float *logits)
{
    const struct model_config *c = &f->m->cfg;
    if (f->prof)
        f->t_mark = mono_sec();
    linear(f, logits, c->n_vocab, hidden, c->d_model, f->m->lm_head, n, c->n_vocab, c->d_model, 0);
    mark(f, FWD_LM_HEAD);
}

int fwd_prefill(struct fwd *f, struct mstate *s, const int32_t *tokens, size_t n, char *err,
                size_t errlen)
{
    while (n > 0) {
        int len = n > (size_t)f->max_tokens ? f->max_tokens : (int)n;
        struct fwd_seg seg = {.state = s, .tokens = tokens, .n = len};
        int rc = fwd_run(f, &seg, 1, err, errlen);
        if (rc)
            return rc;
        tokens += len;
        n -= (size_t)len;
    }
    return 0;
}
