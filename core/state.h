/*
 * state.h — the constant-size recurrent state of one stream (session).
 *
 * Everything a stream needs to continue, in fp32 whatever the weights are:
 *   conv  per layer, the last d_conv-1 conv inputs    (d_conv-1) x conv_dim
 *   ssm   per layer, Mamba-2: nheads x headdim x d_state
 *                    Mamba-1: d_inner x d_state
 *   last  the final (post norm_f) hidden row of the last token read, so the
 *         next-token distribution is one lm_head product away without
 *         re-reading anything (a restored snapshot can generate at once)
 *   pos   tokens read since the state was zero (int64)
 * It is allocated once, in one block, when created and never grows.
 *
 * Serialised layout (state_serialize; little-endian, what the snapshot
 * format in proto/ wraps with magic, fingerprint and checksum):
 *   u32 layout version (1)   u32 arch   u32 n_layer   u32 d_model
 *   u32 conv_dim   u32 d_conv   u32 ssm floats per layer   u32 has_last
 *   i64 pos
 *   f32 last[d_model]
 *   f32 conv[n_layer][d_conv-1][conv_dim]
 *   f32 ssm[n_layer][ssm floats per layer]
 */
#ifndef RECUR_STATE_H
#define RECUR_STATE_H

#include <stddef.h>
#include <stdint.h>

struct model;

struct mstate {
    const struct model *model; /* not owned */
    int64_t pos;               /* tokens read since zero state */
    int has_last;              /* last[] holds the hidden row of token pos-1 */
    float *last;               /* d_model, into the block */
    float *conv;               /* n_layer x (d_conv-1) x conv_dim, into the block */
    float *ssm;                /* n_layer x ssm_per_layer, into the block */
    size_t ssm_per_layer;      /* floats of SSM state per layer */
    size_t conv_per_layer;     /* floats of conv window per layer */
    void *block;               /* the one allocation (owned) */
};

/* Allocate a zeroed state for m. Returns RC_OK or RC_ENOMEM. */
int state_create(const struct model *m, struct mstate **out);
void state_free(struct mstate *s);

/* Back to the zero state at position 0 (no history). */
void state_reset(struct mstate *s);

/* dst := src; both must belong to the same model (RC_EMISMATCH otherwise). */
int state_copy(struct mstate *dst, const struct mstate *src);

/* Bytes the state holds in memory (the fp32 arrays) and its serialised size. */
size_t state_bytes(const struct model *m);
size_t state_serialized_bytes(const struct model *m);

/* Write the serialised layout into buf (len >= state_serialized_bytes). */
int state_serialize(const struct mstate *s, void *buf, size_t len);

/* Read a serialised state into s. Checks the layout against s's model and
 * that every float is finite. On error s is unchanged. */
int state_deserialize(struct mstate *s, const void *buf, size_t len, char *err, size_t errlen);

#endif
