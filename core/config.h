/*
 * config.h — config.json (either naming) to struct model_config.
 *
 * Keys that change what the model computes are read and checked; keys that
 * only matter for training or initialisation (dt_min, chunk_size, ...) are
 * ignored; configurations recurd cannot run (MLP or attention layers,
 * LayerNorm instead of RMSNorm, d_ssm != d_inner, activations other than
 * silu) are refused with RC_EUNSUPPORTED naming the key.
 *
 * HF writes non-finite floats as {"__float__": "Infinity"}; Python's json
 * module writes bare Infinity/-Infinity/NaN tokens, which are not JSON:
 * both are accepted.
 */
#ifndef RECUR_CONFIG_H
#define RECUR_CONFIG_H

#include <stddef.h>

enum model_arch {
    MODEL_MAMBA1 = 1,
    MODEL_MAMBA2 = 2,
    MODEL_GLA = 3, /* Gated Linear Attention (fla's GLAForCausalLM) */
};

enum model_naming {
    NAMING_STATE_SPACES = 1, /* backbone.embedding.weight, MambaLMHeadModel config */
    NAMING_HF = 2,           /* backbone.embeddings.weight, transformers config */
    NAMING_FLA = 3,          /* model.embeddings.weight, fla config (model_type gla) */
};

struct model_config {
    int arch;           /* enum model_arch */
    int naming;         /* enum model_naming the directory used */
    int d_model;        /* residual width */
    int n_layer;
    int vocab_size;     /* ids a tokenizer may produce (config's vocab_size) */
    int n_vocab;        /* rows of the embedding and of the logits (>= vocab_size, padded) */
    int d_inner;        /* expand * d_model */
    int d_state;        /* N: SSM state size per channel */
    int d_conv;         /* causal conv kernel width */
    int conv_dim;       /* channels through the conv: M2 d_inner + 2*ngroups*d_state; M1 d_inner */
    int d_in_proj;      /* in_proj output rows: M2 2*d_inner + 2*ngroups*d_state + nheads; M1 2*d_inner */
    /* Mamba-2 */
    int headdim;        /* P */
    int nheads;         /* d_inner / headdim */
    int ngroups;        /* B/C groups; heads per group = nheads / ngroups */
    float dt_min, dt_max; /* clamp of softplus(dt + dt_bias); (0, inf) = none */
    int rmsnorm_gated;  /* 1: gated RMSNorm before out_proj (mamba_ssm default);
                           0: y * silu(z) with no norm */
    int norm_before_gate; /* gated norm order: 0 = norm(y * silu(z)) (default),
                             1 = norm(y) * silu(z) */
    int d_has_hdim;     /* D has d_inner entries instead of nheads */
    /* Mamba-1 */
    int dt_rank;
    /* both */
    int conv_bias;      /* conv1d has a bias */
    int proj_bias;      /* in_proj / out_proj have biases */
    int tie_embeddings; /* lm_head is the embedding */
    float norm_eps;     /* RMSNorm epsilon (blocks, norm_f, gated norm) */
    /* GLA (fla). nheads = num_heads; conv_dim = key_dim + 2 kv widths
     * (q, k, v through the short conv) or 0; d_conv = conv_size, or 1
     * without short conv (no window); d_inner = value_dim (o_proj input);
     * d_in_proj = every attention projection's row: [q | k | v | g | gk |
     * gk_low], see forward.c. */
    int gla_kv_heads;    /* num_kv_heads (divides nheads) */
    int gla_dk, gla_dv;  /* per-head key and value widths */
    int gla_key_dim;     /* nheads * dk */
    int gla_ff;          /* MLP intermediate size */
    int gla_low_rank;    /* gate_low_rank_dim (gk_proj.0 rows) */
    int gla_short_conv;  /* use_short_conv */
    int gla_out_gate;    /* use_output_gate: g_proj and swish gate */
    int gla_affine;      /* elementwise_affine: g_norm has a weight */
    int gla_fuse_norm;   /* fuse_norm: the tensor is g_norm_swish_gate (else g_norm) */
    float gla_gate_norm; /* gate_logit_normalizer */
    float gla_clamp_min; /* clamp_min, or -inf (none) */
    int training_context; /* config's "training_context" (tokens per training
                             sequence), 0 when it does not say: informational only */
};

/* Fill derived fields of a partly-filled config (d_inner, nheads, conv_dim,
 * d_in_proj, n_vocab if 0, ...) and validate it. */
int model_config_complete(struct model_config *cfg, char *err, size_t errlen);

/* Named shapes: "mamba2-130m", "mamba2-370m", "mamba-130m" (real dims). */
int model_config_named(const char *name, struct model_config *cfg);


/* Parse config.json text. Fills every field it can; derived fields and
 * n_vocab are completed by the model loader, which knows the embedding. */
int config_parse(const char *text, size_t len, const char *label, struct model_config *cfg,
                 char *err, size_t errlen);

#endif
