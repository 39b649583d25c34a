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

struct model_config;

/* Parse config.json text. Fills every field it can; derived fields and
 * n_vocab are completed by the model loader, which knows the embedding. */
int config_parse(const char *text, size_t len, const char *label, struct model_config *cfg,
                 char *err, size_t errlen);

#endif
