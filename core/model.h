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
 * Weights may be fp32, bf16 or fp16 in the files; they are converted once at
 * load, tensor by tensor, to the format asked for (model_load_as). Every structural fact is
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

#include "config.h"

struct model;

/* Load a model directory. On error returns a negative rc_status and writes
 * one line naming the file/tensor/field and the reason into err. */
int model_load(const char *dir, struct model **out, char *err, size_t errlen);

/* Weight formats in memory (the projections, the embedding and lm_head;
 * norms, conv, dt and A stay fp32): fp32; bf16 (exact on a bf16
 * checkpoint, rounded to nearest even otherwise); int8 in blocks of 32
 * along the input with one bf16 scale per block and output (quantized at
 * load). Every format computes in fp32. MODEL_WEIGHTS_AUTO picks bf16 when
 * that changes no weight, else fp32: always exact. Values are enum wfmt
 * (kernels.h): 0 fp32, 1 bf16, 2 int8. */
#define MODEL_WEIGHTS_AUTO (-1)

/* model_load in a weight format. */
int model_load_as(const char *dir, int weights, struct model **out, char *err, size_t errlen);
/* The format a model holds (never AUTO). */
int model_weights(const struct model *m);
/* "fp32", "bf16", "int8", "auto"; parse returns -2 for an unknown name. */
const char *model_weights_name(int weights);
/* enum model_arch as the API names it ("mamba2", "mamba", "gla") and as
 * logs show it ("Mamba-2", "Mamba-1", "GLA"). */
const char *model_arch_name(int arch);
const char *model_arch_label(int arch);
int model_weights_parse(const char *name);

/* A model with random weights for a configuration (benchmarks, soak tests).
 * cfg is completed (derived fields filled in) and validated. Weights are
 * drawn from a seeded generator so runs are reproducible. */
int model_create_random(const struct model_config *cfg, uint64_t seed, struct model **out,
                        char *err, size_t errlen);
int model_create_random_as(const struct model_config *cfg, uint64_t seed, int weights,
                           struct model **out, char *err, size_t errlen);

/* Read and validate a config.json (either naming) without loading weights. */
int model_config_read(const char *path, struct model_config *cfg, char *err, size_t errlen);

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

/* Bytes of weights held in memory (in the model's format). */
size_t model_weight_bytes(const struct model *m);

#endif
