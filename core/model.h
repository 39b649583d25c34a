/*
 * model.h — a loaded recurrent language model: configuration and weights.
 *
 * A model directory holds config.json and model.safetensors (or shards
 * model-0000x-of-0000y.safetensors listed in model.safetensors.index.json),
 * in either naming:
 *   state-spaces  MambaLMHeadModel config (d_model, n_layer, ssm_cfg, ...),
 *                 keys backbone.embedding.weight, backbone.layers.N.mixer.*
 *   transformers  Mamba2ForCausalLM / MambaForCausalLM config (hidden_size,
 *                 num_hidden_layers, ...), keys backbone.embeddings.weight
 * Weights may be fp32, bf16 or fp16; they are converted to fp32 once at load
 * (fp32 files are used in place through mmap). Every structural fact is
 * checked: file layout, tensor names, dtypes and every shape against the
 * config. A model is immutable after load and may be shared by threads.
 *
 *   struct model *m;
 *   char err[512];
 *   if (model_load("models/recur-sp", &m, err, sizeof err) != 0)
 *       die("%s", err);
 *   const struct model_config *c = model_config(m);
 */
#ifndef RECUR_MODEL_H
#define RECUR_MODEL_H

#include <stddef.h>
#include <stdint.h>

enum model_arch {
    MODEL_MAMBA1 = 1,
    MODEL_MAMBA2 = 2,
};

enum model_naming {
    NAMING_STATE_SPACES = 1, /* backbone.embedding.weight, MambaLMHeadModel config */
    NAMING_HF = 2,           /* backbone.embeddings.weight, transformers config */
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
    int training_context; /* config's "training_context" (tokens per training
                             sequence), 0 when it does not say: informational only */
};

struct model;

/* Load a model directory. On error returns a negative rc_status and writes
 * one line naming the file/tensor/field and the reason into err. */
int model_load(const char *dir, struct model **out, char *err, size_t errlen);

/* A model with random weights for a configuration (benchmarks, soak tests).
 * cfg is completed (derived fields filled in) and validated. Weights are
 * drawn from a seeded generator so runs are reproducible. */
int model_create_random(const struct model_config *cfg, uint64_t seed, struct model **out,
                        char *err, size_t errlen);

/* Fill derived fields of a partly-filled config (d_inner, nheads, conv_dim,
 * d_in_proj, n_vocab if 0, ...) and validate it. */
int model_config_complete(struct model_config *cfg, char *err, size_t errlen);

/* Read and validate a config.json (either naming) without loading weights. */
int model_config_read(const char *path, struct model_config *cfg, char *err, size_t errlen);

/* Named shapes: "mamba2-130m", "mamba2-370m", "mamba-130m" (real dims). */
int model_config_named(const char *name, struct model_config *cfg);

void model_free(struct model *m);

const struct model_config *model_config(const struct model *m);

/* 64-bit fingerprint of the model: config, tensor table and all weight
 * values. Two models with the same fingerprint compute the same function. */
uint64_t model_fingerprint(const struct model *m);

/* Parameter counts: all, and those outside the embedding/lm_head. */
size_t model_n_params(const struct model *m);
size_t model_n_params_nonembed(const struct model *m);

/* Forward FLOPs per token (projections, lm_head, conv, scan). */
double model_flops_per_token(const struct model *m, int with_lm_head);

/* Bytes of weights held in memory (fp32). */
size_t model_weight_bytes(const struct model *m);

#endif
