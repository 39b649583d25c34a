/* test_logits.h — a seeded row of logits in [-4, 4) for the sampler and
 * scoring tests (the sampler's own generator, so rows are reproducible). */
#ifndef RECUR_TEST_LOGITS_H
#define RECUR_TEST_LOGITS_H

#include <stdint.h>

#include "sampler.h"

static inline void make_logits(float *l, int n, uint64_t seed)
{
    struct sampler_rng r;
    sampler_seed(&r, seed);
    for (int i = 0; i < n; i++)
        l[i] = (float)(sampler_uniform(&r) * 8.0 - 4.0);
}

#endif
