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

/* One block's weights, all in the model's arena. Projections are packed in
 * GEMM_NR-column panels (kernels.h) of the model's format (struct
 * model.wfmt); everything else is fp32. NULL marks a weight the
 * configuration does not have (biases). */
struct layer {
    const float *norm;       /* (d_model) pre-norm of the block */
    const void *in_proj;     /* (d_in_proj, d_model), packed */
    const float *in_proj_b;  /* (d_in_proj) or NULL */
    const float *conv_wt;    /* (d_conv, conv_dim): conv1d weight transposed, tap-major */
    const float *conv_b;     /* (conv_dim) or NULL */
    const void *out_proj;    /* (d_model, d_inner), packed */
    const float *out_proj_b; /* (d_model) or NULL */
    const float *D;          /* M2: (nheads) or (d_inner) if d_has_hdim; M1: (d_inner) */
    /* Mamba-2 */
    const float *dt_bias;    /* (nheads) */
    const float *A;          /* (nheads) = -exp(A_log), derived */
    const float *gnorm;      /* (d_inner) gated-norm weight, or NULL if !rmsnorm_gated */
    /* Mamba-1 */
    const void *x_proj;      /* (dt_rank + 2*d_state, d_inner), packed */
    const void *dt_proj;     /* (d_inner, dt_rank), packed */
    const float *dt_proj_b;  /* (d_inner) */
    const float *A1;         /* (d_inner, d_state) = -exp(A_log), derived */
    /* GLA (norm = attn_norm, out_proj = o_proj, gnorm = the head norm's
     * weight tiled over the heads (d_inner), conv_wt = q, k, v convs side by
     * side (conv_dim channels)) */
    const void *q_proj;      /* (key_dim, d_model), packed */
    const void *k_proj;      /* (key_dim / g, d_model), packed */
    const void *v_proj;      /* (d_inner / g, d_model), packed */
    const void *g_proj;      /* (d_inner, d_model), packed, or NULL */
    const void *gk0;         /* (low_rank, d_model), packed */
    const void *gk1;         /* (key_dim / g, low_rank), packed */
    const float *gk1_b;      /* (key_dim / g) */
    const float *mlp_norm;   /* (d_model) */
    const void *ff_gate;     /* (ff, d_model), packed */
    const void *ff_up;       /* (ff, d_model), packed */
    const void *ff_down;     /* (d_model, ff), packed */
};

struct model {
    struct model_config cfg;
    const void *embed;       /* (n_vocab, d_model), packed; NULL when tied (see model_embed_row) */
    const void *lm_head;     /* (n_vocab, d_model), packed; the embedding when tied */
    int wfmt;                /* enum wfmt of every packed projection */
    const float *norm_f;     /* (d_model) */
    struct layer *layers;    /* n_layer */
    unsigned char *arena;    /* converted and derived weights (owned) */
    size_t arena_bytes;
    struct st_file **files;  /* mapped shards, open only while loading */
    int nfiles;
    uint64_t fingerprint;
    size_t n_params;         /* parameters as stored (tied lm_head counted once) */
    size_t n_params_embed;   /* embedding (+ untied lm_head) */
};

/* The embedding row of token v (v checked by the caller), widened to fp32. */
void model_embed_row(const struct model *m, int32_t v, float *out);

#endif
