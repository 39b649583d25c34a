/*
 * state.h — the constant-size recurrent state of one stream (session).
 *
 * Everything a stream needs to continue, in fp32 whatever the weights are:
 *   conv  per layer, the last d_conv-1 conv inputs    (d_conv-1) x conv_dim
 *   ssm   per layer, Mamba-2: nheads x headdim x d_state
 *                    Mamba-1: d_inner x d_state
 *                    GLA: num_kv_heads x dk x dv (S of each key/value
 *                    head, row i = key channel i; q heads of one group
 *                    share it); conv holds the q, k, v short-conv inputs
 *                    side by side (none without short conv)
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

/* Bounds a state must keep to be loaded (state_deserialize) or stepped
 * (fwd_run). Values outside them never come from a real stream, only from
 * a forged or damaged snapshot whose checksum was recomputed; refusing them
 * at load keeps every later computation finite and overflow-free.
 *
 * STATE_MAX_POS: 2^53 tokens. No stream gets near it (a million tokens a
 * second for 285 years), every position is exact in a double (JSON
 * clients), and pos + any request's tokens stays far from INT64_MAX, so
 * position arithmetic and bucket math (core/score.c) cannot overflow.
 * Reading a token that would take pos past it fails with RC_ERANGE.
 *
 * STATE_MAX_ACT, STATE_MAX_SSM: every float finite, |x| <= 1e4 in last
 * and conv (activations), |x| <= 1e10 in ssm (the state). The shipped
 * models (models/recur-base, recur-sp) over GPL-3 read four times (41k
 * tokens) and generating 2000 tokens reach |last| 19.5, |conv| 21.4,
 * |ssm| 55 (proto/SNAPSHOT.md): 470x and 2e8x of headroom. Two bounds,
 * because one is not closed under stepping: with everything at 1e6 the
 * window's B x pushed ssm to 4e9 in one step, so the server refused its
 * own next snapshot. With these, a state at the bounds steps finite and
 * stays within them on both shipped models and the tiny test model (its
 * own snapshots load again), and C . h over d_state and the gated norm's
 * sum of squares stay far below FLT_MAX; at 1e30 a step gave inf, then
 * NaN (UBSan in fexp). */
#define STATE_MAX_POS (1ull << 53)
#define STATE_MAX_ACT 1.0e4f
#define STATE_MAX_SSM 1.0e10f

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

/* The position a serialised state records, read from its first
 * STATE_PREFIX_BYTES bytes without checking the rest (indexing files on
 * disk); state_deserialize still decides whether it loads. */
#define STATE_PREFIX_BYTES 40u
int64_t state_serialized_pos(const void *prefix);

/* Read a serialised state into s. Checks the layout against s's model, the
 * position (0..STATE_MAX_POS, and > 0 if it has a last row) and every float
 * (state_check_floats): every load path (HTTP PUT and POST, named
 * snapshots, spill reload) comes through here, so a state that loads is
 * one that can be stepped. RC_EFORMAT with err naming the field for a lie,
 * RC_EMISMATCH / RC_EUNSUPPORTED for another layout. On error s is
 * unchanged. */
/* Check the floats of a state block laid out as in memory (last, conv,
 * ssm; any alignment): each finite, |x| <= STATE_MAX_ACT in last and conv,
 * |x| <= STATE_MAX_SSM in ssm. 0, or
 * RC_EFORMAT with err naming the part and index ("conv[17] is 1e+30"). */
int state_check_floats(const struct model *m, const void *block, char *err, size_t errlen);

int state_deserialize(struct mstate *s, const void *buf, size_t len, char *err, size_t errlen);

#endif
