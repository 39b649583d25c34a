/*
 * Fuzz target: snapshot_decode() on arbitrary bytes (docs/reliability.md B6/B7).
 *
 * Properties checked on every input:
 *   - no crash, no read outside the buffer (ASan), no allocation beyond
 *     the input's size;
 *   - on failure the target state is byte-for-byte unchanged;
 *   - on success, encoding the state again gives back exactly the input;
 *   - on success, one step from the loaded state (a token read through the
 *     tiny model: fwd_prefill) and the next-token logits before and after
 *     it are finite, and the step either succeeds or, at the maximum
 *     position, fails with RC_ERANGE. A snapshot can lie only in ways that
 *     show up when it is used (a position whose bucket math overflows,
 *     floats that are finite but overflow in the first step), so loading
 *     alone proves nothing.
 * Input byte 0 is a mode: odd values "fix up" the envelope first (write
 * this model's fingerprint and recompute the checksum), so the fuzzer
 * reaches the payload checks of state_deserialize instead of stopping at
 * the checksum every time. The rest of the input is the snapshot.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "alloc.h"
#include "errors.h"
#include "forward.h"
#include "model.h"
#include "score.h"
#include "snapshot.h"
#include "state.h"
#include "../unit/tiny_model.h"

static struct model *g_model;
static struct mstate *g_state;
static uint64_t g_fp;
static uint8_t *g_ref;   /* g_state serialised, to check "unchanged" */
static size_t g_ref_len;
static struct fwd *g_fwd;
static float *g_logits; /* n_vocab */

static void setup(void)
{
    if (tiny_mamba2(2, 64, 8, 7, &g_model) != 0 || state_create(g_model, &g_state) != 0)
        abort(); /* the harness itself, not the input */
    /* a non-zero state, so "unchanged" means something */
    for (size_t i = 0; i < g_state->conv_per_layer * 2; i++)
        g_state->conv[i] = (float)i * 0.25f;
    g_state->pos = 5;
    g_fp = model_fingerprint(g_model);
    if (fwd_create(g_model, 4, &g_fwd) != 0)
        abort();
    g_logits = malloc((size_t)model_config(g_model)->n_vocab * sizeof(float));
    if (!g_logits)
        abort();
    g_ref_len = state_serialized_bytes(g_model);
    g_ref = malloc(g_ref_len);
    if (!g_ref || state_serialize(g_state, g_ref, g_ref_len) != 0)
        abort();
}

/* Logits of s's last row, every one finite (when it has one). */
static void check_logits(const struct mstate *s)
{
    if (!s->has_last)
        return;
    int v = model_config(g_model)->n_vocab;
    fwd_logits(g_fwd, s->last, 1, g_logits);
    for (int i = 0; i < v; i++)
        if (!isfinite(g_logits[i]))
            abort(); /* accepted a state whose next-token logits are not finite */
}

/* Use the state an input loaded: logits, one token read, logits again,
 * the position's score bucket. Everything must stay finite and in range. */
static void step_loaded(uint8_t tok)
{
    char err[256];
    check_logits(g_state);
    int64_t pos = g_state->pos;
    int32_t id = tok % model_config(g_model)->n_vocab;
    int rc = fwd_prefill(g_fwd, g_state, &id, 1, err, sizeof err);
    if (rc == RC_ERANGE && (uint64_t)pos >= STATE_MAX_POS)
        return; /* refused at the maximum position: the documented answer */
    if (rc != 0 || g_state->pos != pos + 1)
        abort(); /* a loaded state that cannot be stepped */
    size_t nf = state_bytes(g_model) / sizeof(float);
    const float *f = g_state->block;
    for (size_t i = 0; i < nf; i++)
        if (!isfinite(f[i]))
            abort(); /* one step from an accepted state overflowed */
    check_logits(g_state);
    struct score_stats st;
    score_stats_init(&st);
    score_stats_add(&st, g_state->pos - 1, -1.0);
    int b = score_bucket_of(g_state->pos - 1);
    if (b >= st.nb || st.b[b].start > st.b[b].end)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_model)
        setup();
    if (size < 1)
        return 0;
    int fixup = data[0] & 1;
    size_t n = size - 1;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return 0;
    memcpy(buf, data + 1, n);
    if (fixup && n >= SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES) {
        for (int i = 0; i < 8; i++)
            buf[12 + i] = (uint8_t)(g_fp >> (8 * i));
        uint64_t h = XXH3_64bits(buf, n - SNAPSHOT_TRAILER_BYTES);
        for (int i = 0; i < 8; i++)
            buf[n - 8 + i] = (uint8_t)(h >> (8 * i));
    }
    size_t live = rc_alloc_live_bytes();
    char err[384];
    int rc = snapshot_decode(g_state, g_fp, buf, n, err, sizeof err);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "rc=%d %s\n", rc, rc ? err : "ok");
    if (rc_alloc_live_bytes() > live + n + 4096)
        abort(); /* kept memory proportional to nothing */
    uint8_t *now = malloc(g_ref_len);
    if (!now || state_serialize(g_state, now, g_ref_len) != 0)
        abort();
    if (rc != 0) {
        if (memcmp(now, g_ref, g_ref_len) != 0)
            abort(); /* a failed decode changed the state */
    } else {
        uint8_t *again;
        size_t alen;
        if (snapshot_encode(g_state, g_fp, &again, &alen, err, sizeof err) != 0)
            abort();
        if (alen != n || memcmp(again, buf, n) != 0)
            abort(); /* accepted bytes that do not round-trip */
        rc_free(again);
        step_loaded(data[0] >> 1);
        /* restore the reference state for the next input */
        if (state_deserialize(g_state, g_ref, g_ref_len, err, sizeof err) != 0)
            abort();
    }
    free(now);
    free(buf);
    return 0;
}
