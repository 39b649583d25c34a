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

#include "config.h"

struct model;

/* Load a model directory. On error returns a negative rc_status and writes
 * one line naming the file/tensor/field and the reason into err. */
int model_load(const char *dir, struct model **out, char *err, size_t errlen);

/* A model with random weights for a configuration (benchmarks, soak tests).
 * cfg is completed (derived fields filled in) and validated. Weights are
 * drawn from a seeded generator so runs are reproducible. */
int model_create_random(const struct model_config *cfg, uint64_t seed, struct model **out,
                        char *err, size_t errlen);

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

/* Bytes of weights held in memory (fp32). */
size_t model_weight_bytes(const struct model *m);

#endif
