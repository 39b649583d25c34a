/*
 * tiny_model.h — the small random Mamba-2 the state, snapshot and session
 * tests build (header-only; included by tests/unit and tests/fuzz).
 * d_model 16, d_inner 32, headdim 8, d_conv 4, one group, tied embedding;
 * the caller picks the depth, vocabulary and state size. The fields are set
 * exactly as the tests always did, so fingerprints (and the fuzz corpus's
 * snapshots) do not change.
 */
#ifndef RECUR_TESTS_TINY_MODEL_H
#define RECUR_TESTS_TINY_MODEL_H

#include <string.h>

#include "model.h"

static inline int tiny_mamba2(int n_layer, int vocab, int d_state, uint64_t seed,
                              struct model **out)
{
    struct model_config c;
    memset(&c, 0, sizeof c);
    c.arch = MODEL_MAMBA2;
    c.naming = NAMING_STATE_SPACES;
    c.d_model = 16;
    c.n_layer = n_layer;
    c.vocab_size = vocab;
    c.d_state = d_state;
    c.d_conv = 4;
    c.d_inner = 32;
    c.headdim = 8;
    c.ngroups = 1;
    c.conv_bias = 1;
    c.tie_embeddings = 1;
    c.rmsnorm_gated = 1;
    char err[256];
    return model_create_random(&c, seed, out, err, sizeof err);
}

#endif
