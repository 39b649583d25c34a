/*
 * model_impl.h — the inside of struct model, for core/ only (forward.c,
 * state.c). Everyone else uses the accessors in model.h.
 */
#ifndef RECUR_MODEL_IMPL_H
#define RECUR_MODEL_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "model.h"

struct st_file;

/* One block's weights, fp32, all in the model's arena. Projections are
 * packed in GEMM_NR-column panels (kernels.h). NULL marks a weight the
 * configuration does not have (biases). */
struct layer {
    const float *norm;       /* (d_model) pre-norm of the block */
    const float *in_proj;    /* (d_in_proj, d_model), packed */
    const float *in_proj_b;  /* (d_in_proj) or NULL */
    const float *conv_wt;    /* (d_conv, conv_dim): conv1d weight transposed, tap-major */
    const float *conv_b;     /* (conv_dim) or NULL */
    const float *out_proj;   /* (d_model, d_inner), packed */
    const float *out_proj_b; /* (d_model) or NULL */
    const float *D;          /* M2: (nheads) or (d_inner) if d_has_hdim; M1: (d_inner) */
    /* Mamba-2 */
    const float *dt_bias;    /* (nheads) */
    const float *A;          /* (nheads) = -exp(A_log), derived */
    const float *gnorm;      /* (d_inner) gated-norm weight, or NULL if !rmsnorm_gated */
    /* Mamba-1 */
    const float *x_proj;     /* (dt_rank + 2*d_state, d_inner), packed */
    const float *dt_proj;    /* (d_inner, dt_rank), packed */
    const float *dt_proj_b;  /* (d_inner) */
    const float *A1;         /* (d_inner, d_state) = -exp(A_log), derived */
};

struct model {
    struct model_config cfg;
    const float *embed;      /* (n_vocab, d_model) rows; NULL when tied (see model_embed_row) */
    const float *lm_head;    /* (n_vocab, d_model), packed; the embedding when tied */
    const float *norm_f;     /* (d_model) */
    struct layer *layers;    /* n_layer */
    float *arena;            /* converted and derived weights (owned) */
    struct st_file **files;  /* mapped shards, open only while loading */
    int nfiles;
    uint64_t fingerprint;
    size_t n_params;         /* parameters as stored (tied lm_head counted once) */
    size_t n_params_embed;   /* embedding (+ untied lm_head) */
};

/* The embedding row of token v (v checked by the caller). */
static inline void model_embed_row(const struct model *m, int32_t v, float *out)
{
    const int D = m->cfg.d_model;
    if (m->embed) {
        for (int d = 0; d < D; d++)
            out[d] = m->embed[(size_t)v * D + d];
        return;
    }
    const float *p = m->lm_head + ((size_t)(v / GEMM_NR) * D) * GEMM_NR + v % GEMM_NR;
    for (int d = 0; d < D; d++)
        out[d] = p[(size_t)d * GEMM_NR];
}

#endif
