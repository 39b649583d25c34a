/*
 * sampler.h — choosing the next token from logits: temperature, top-k,
 * top-p, min-p, with a seeded generator.
 *
 * Determinism: a request's generator is seeded once (splitmix64 of the
 * seed into xoshiro256**) and draws exactly one number per sampled token,
 * so the same seed over the same logits gives the same tokens whatever
 * else the server is doing at the time (batch composition, other
 * requests). Candidate order is fixed (probability descending, then id
 * ascending) and sums run in that order, so results do not depend on
 * sort stability or memory layout.
 *
 * Order of operations (documented in docs/server.md):
 *   temperature == 0            greedy: the highest logit, lowest id on ties
 *   otherwise, on softmax(logits / temperature):
 *     top_k  > 0                keep the k most probable
 *     top_p  < 1                keep the smallest prefix whose mass >= top_p
 *     min_p  > 0                keep p >= min_p * p(most probable)
 *   then draw from what is kept, renormalised.
 * The most probable token always survives every filter.
 *
 *   struct sampler_rng r;  sampler_seed(&r, seed);
 *   struct sampler_scratch *sc;  sampler_scratch_create(n_vocab, &sc);
 *   int32_t id = sampler_pick(&params, &r, logits, vocab_size, sc);
 */
#ifndef RECUR_SAMPLER_H
#define RECUR_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

struct sampler_params {
    float temperature; /* >= 0; 0 = greedy */
    int top_k;         /* 0 = off */
    float top_p;       /* (0, 1]; 1 = off */
    float min_p;       /* [0, 1); 0 = off */
};

struct sampler_rng {
    uint64_t s[4];
};

/* Seed a generator; any 64-bit seed (including 0) is fine. */
void sampler_seed(struct sampler_rng *r, uint64_t seed);
uint64_t sampler_next_u64(struct sampler_rng *r);
/* Uniform double in [0, 1) from the top 53 bits of one draw. */
double sampler_uniform(struct sampler_rng *r);

/* Scratch for candidates: one per compute thread, sized for n logits. */
struct sampler_scratch;
int sampler_scratch_create(int n, struct sampler_scratch **out);
void sampler_scratch_free(struct sampler_scratch *sc);

/* Validate params: RC_EINVAL (with err naming the field) if out of range. */
int sampler_params_check(const struct sampler_params *p, char *err, size_t errlen);

/* Pick a token among logits[0..n) (n <= the scratch's size; pass the
 * tokenizer's vocabulary size so padding rows are never chosen). Draws one
 * number from r unless greedy. Non-finite logits count as -inf. Returns
 * the id (always in [0, n)). */
int32_t sampler_pick(const struct sampler_params *p, struct sampler_rng *r, const float *logits,
                     int n, struct sampler_scratch *sc);

#endif
