/*
 * forward.h — running a model over tokens: one ragged batch at a time.
 *
 * A batch is a list of segments; each segment continues one stream's state
 * with n >= 1 tokens. Prefill is one segment of a chunk of tokens; batched
 * decode is B segments of one token each; the server's scheduler mixes
 * both in one call. Every projection (in_proj, out_proj, lm_head) is one
 * matrix product over all the batch's tokens; conv and scan run per
 * segment from its carried state. Layers are processed one at a time over
 * the whole batch so each layer's weights are read once per call.
 *
 * A `struct fwd` is the scratch of one compute thread: allocated once for
 * a maximum number of tokens per call and never grown. Not thread-safe;
 * one per thread. The model it reads may be shared.
 *
 *   struct fwd *f;
 *   fwd_create(m, 256, &f);
 *   struct fwd_seg seg = { .state = s, .tokens = ids, .n = 200 };
 *   fwd_run(f, &seg, 1, err, sizeof err);   // s advanced by 200 tokens,
 *                                           // s->last holds token 199's row
 *   fwd_logits(f, s->last, 1, logits);      // next-token logits (n_vocab)
 */
#ifndef RECUR_FORWARD_H
#define RECUR_FORWARD_H

#include <stddef.h>
#include <stdint.h>

struct model;
struct mstate;
struct fwd;

struct fwd_seg {
    struct mstate *state;  /* advanced in place; pos += n; last = row of the last token */
    const int32_t *tokens; /* n ids; each checked against the model's n_vocab */
    int n;                 /* >= 1 */
    float *hidden;         /* optional out: n x d_model final (post norm_f) rows, or NULL */
};

int fwd_create(const struct model *m, int max_tokens, struct fwd **out);
/* The same with a pool of `threads` compute threads (the caller included);
 * 0 = one per online core. fwd_create uses 0. */
int fwd_create_threads(const struct model *m, int max_tokens, int threads, struct fwd **out);
void fwd_free(struct fwd *f);
int fwd_max_tokens(const struct fwd *f);
const struct model *fwd_model(const struct fwd *f);

/* Run a batch. Sum of n over segments must be <= max_tokens, and no state
 * may appear twice. Token ids are all checked before anything is touched:
 * on error (RC_EINVAL naming segment and index, RC_ERANGE) no state
 * changed. */
int fwd_run(struct fwd *f, struct fwd_seg *segs, int nseg, char *err, size_t errlen);

/* logits (n x n_vocab, row-major) for n final hidden rows. n may exceed
 * max_tokens (processed in blocks). */
void fwd_logits(struct fwd *f, const float *hidden, int n, float *logits);

/* Where the time of fwd_run and fwd_logits goes (recurd bench --profile):
 * seconds per phase, summed over layers and calls, while a profile is set. */
enum fwd_phase {
    FWD_EMBED, FWD_NORM, FWD_IN_PROJ, FWD_CONV, FWD_DT, FWD_SCAN, FWD_GATE_NORM, FWD_OUT_PROJ,
    FWD_X_DT_PROJ, FWD_FINAL, FWD_LM_HEAD, FWD_MLP, FWD_NPHASES
};
struct fwd_profile {
    double sec[FWD_NPHASES];
    long calls; /* fwd_run calls */
};
extern const char *const fwd_phase_names[FWD_NPHASES];
/* Start (p) or stop (NULL) accumulating into p. */
void fwd_set_profile(struct fwd *f, struct fwd_profile *p);

/* Convenience: read n tokens (any n; split into max_tokens chunks) into s. */
int fwd_prefill(struct fwd *f, struct mstate *s, const int32_t *tokens, size_t n, char *err,
                size_t errlen);

#endif
