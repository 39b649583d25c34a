/* proto/snapshot: the envelope around state_serialize(), checked the way
 * docs/reliability.md B6/B7/B9 ask: every truncation, every single-byte flip, a
 * foreign fingerprint, absurd declared sizes -- each rejected with the
 * right code, the target state unchanged. */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include <xxhash.h>

#include "alloc.h"
#include "errors.h"
#include "forward.h"
#include "model.h"
#include "score.h"
#include "snapshot.h"
#include "state.h"
#include "tiny_model.h"

static struct model *m;
static struct mstate *src, *dst;
static uint64_t fp;

static int setup(void **u)
{
    char err[256];
    if (tiny_mamba2(2, 64, 8, 11, &m) || state_create(m, &src) || state_create(m, &dst))
        return -1;
    /* a real history in src, a different one in dst */
    struct fwd *f;
    if (fwd_create(m, 64, &f))
        return -1;
    int32_t a[20], b[7];
    for (int i = 0; i < 20; i++)
        a[i] = (i * 5 + 1) % 64;
    for (int i = 0; i < 7; i++)
        b[i] = (i * 3 + 2) % 64;
    if (fwd_prefill(f, src, a, 20, err, sizeof err) || fwd_prefill(f, dst, b, 7, err, sizeof err))
        return -1;
    fwd_free(f);
    fp = model_fingerprint(m);
    return 0;
}

static int teardown(void **u)
{
    state_free(src);
    state_free(dst);
    model_free(m);
    return 0;
}

static uint8_t *ser(const struct mstate *s, size_t *n)
{
    *n = state_serialized_bytes(m);
    uint8_t *b = rc_malloc(*n);
    assert_non_null(b);
    assert_int_equal(state_serialize(s, b, *n), 0);
    return b;
}

static void test_round_trip(void **u)
{
    uint8_t *snap;
    size_t n;
    char err[256];
    assert_int_equal(snapshot_encode(src, fp, &snap, &n, err, sizeof err), 0);
    assert_int_equal(n, snapshot_size(state_serialized_bytes(m)));
    assert_memory_equal(snap, "RECURSNP", 8);
    struct mstate *t;
    assert_int_equal(state_create(m, &t), 0);
    assert_int_equal(snapshot_decode(t, fp, snap, n, err, sizeof err), 0);
    size_t a, b;
    uint8_t *sa = ser(src, &a), *sb = ser(t, &b);
    assert_memory_equal(sa, sb, a);
    assert_int_equal(t->pos, 20);
    rc_free(sa);
    rc_free(sb);
    state_free(t);
    rc_free(snap);
}

/* snapshot_peek reads what an index of files on disk needs from the first
 * SNAPSHOT_PEEK_BYTES alone: the header's fields and the state's position
 * (20 for src, 7 for dst); fewer bytes or another magic are refused. */
static void test_peek(void **u)
{
    const struct mstate *states[2] = {src, dst};
    const int64_t want_pos[2] = {20, 7};
    for (int k = 0; k < 2; k++) {
        uint8_t *snap;
        size_t n;
        char err[256];
        assert_int_equal(snapshot_encode(states[k], fp, &snap, &n, err, sizeof err), 0);
        struct snapshot_head h;
        assert_int_equal(snapshot_peek(snap, SNAPSHOT_PEEK_BYTES, &h), 0);
        assert_int_equal(h.version, SNAPSHOT_VERSION);
        assert_true(h.fingerprint == fp);
        assert_int_equal(h.payload_len, state_serialized_bytes(m));
        assert_int_equal(h.position, want_pos[k]);
        assert_int_equal(snapshot_peek(snap, SNAPSHOT_PEEK_BYTES - 1, &h), RC_EFORMAT);
        snap[0] ^= 1;
        assert_int_equal(snapshot_peek(snap, SNAPSHOT_PEEK_BYTES, &h), RC_EFORMAT);
        rc_free(snap);
    }
}

static void expect_rejected(const uint8_t *buf, size_t len, uint64_t want_fp, int code)
{
    size_t n0;
    uint8_t *before = ser(dst, &n0);
    char err[384];
    size_t live = rc_alloc_live_bytes();
    int rc = snapshot_decode(dst, want_fp, buf, len, err, sizeof err);
    if (rc == 0)
        fail_msg("accepted a damaged snapshot of %zu bytes", len);
    if (code && rc != code)
        fail_msg("rc %d (%s), wanted %d", rc, err, code);
    assert_true(rc_alloc_live_bytes() <= live); /* nothing kept, nothing leaked */
    size_t n1;
    uint8_t *after = ser(dst, &n1);
    assert_memory_equal(before, after, n0);
    rc_free(before);
    rc_free(after);
}

static void test_every_truncation(void **u)
{
    uint8_t *snap;
    size_t n;
    char err[256];
    assert_int_equal(snapshot_encode(src, fp, &snap, &n, err, sizeof err), 0);
    for (size_t cut = 0; cut < n; cut++)
        expect_rejected(snap, cut, fp, RC_EFORMAT);
    rc_free(snap);
}

static void test_every_byte_flip(void **u)
{
    uint8_t *snap;
    size_t n;
    char err[256];
    assert_int_equal(snapshot_encode(src, fp, &snap, &n, err, sizeof err), 0);
    for (size_t i = 0; i < n; i++) {
        for (int bit = 0; bit < 8; bit += 7) {
            snap[i] ^= (uint8_t)(1u << bit);
            /* header flips fail on magic / version / length, the rest on
             * the checksum; none may be mistaken for another model */
            expect_rejected(snap, n, fp, 0);
            struct snapshot_info info;
            int rc = snapshot_check(snap, n, fp, &info, err, sizeof err);
            assert_true(rc == RC_EFORMAT || rc == RC_EUNSUPPORTED || rc == RC_ECHECKSUM);
            snap[i] ^= (uint8_t)(1u << bit);
        }
    }
    rc_free(snap);
}

static void test_foreign_model_and_sizes(void **u)
{
    uint8_t *snap;
    size_t n;
    char err[256];
    assert_int_equal(snapshot_encode(src, fp, &snap, &n, err, sizeof err), 0);
    expect_rejected(snap, n, fp ^ 1, RC_EMISMATCH);
    /* declared payload sizes that do not match the data */
    const uint64_t sizes[] = {0, 1, 0xFFFFFFF0ull, UINT64_MAX, n, n - 36 + 1, n - 36 - 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint8_t *b = rc_malloc(n);
        memcpy(b, snap, n);
        for (int k = 0; k < 8; k++)
            b[20 + k] = (uint8_t)(sizes[i] >> (8 * k));
        expect_rejected(b, n, fp, 0);
        rc_free(b);
    }
    /* a future version, even with a correct checksum */
    uint8_t *b = rc_malloc(n);
    memcpy(b, snap, n);
    b[8] = 2;
    uint64_t h = XXH3_64bits(b, n - 8);
    for (int k = 0; k < 8; k++)
        b[n - 8 + k] = (uint8_t)(h >> (8 * k));
    expect_rejected(b, n, fp, RC_EUNSUPPORTED);
    rc_free(b);
    rc_free(snap);
}

/* ---- semantic lies: a valid envelope (checksum recomputed) around a
 * payload whose values no real stream produces. Each must be refused at
 * load with RC_EFORMAT and a message naming the field, the target state
 * unchanged; before the checks, these loaded and then overflowed (UBSan in
 * score.c's bucket math, NaN from one step). */

#define PAYLOAD_POS (SNAPSHOT_HEADER_BYTES + 32u)
#define PAYLOAD_FLOATS (SNAPSHOT_HEADER_BYTES + 40u)

/* src's snapshot, with editing left to the caller (then reseal()). */
static uint8_t *forge_base(size_t *n)
{
    uint8_t *snap;
    char err[256];
    assert_int_equal(snapshot_encode(src, fp, &snap, n, err, sizeof err), 0);
    return snap;
}

static void reseal(uint8_t *b, size_t n)
{
    uint64_t h = XXH3_64bits(b, n - 8);
    for (int k = 0; k < 8; k++)
        b[n - 8 + k] = (uint8_t)(h >> (8 * k));
}

static void set_pos(uint8_t *b, uint64_t pos)
{
    for (int k = 0; k < 8; k++)
        b[PAYLOAD_POS + k] = (uint8_t)(pos >> (8 * k));
}

static void set_float(uint8_t *b, size_t i, float v)
{
    memcpy(b + PAYLOAD_FLOATS + 4 * i, &v, 4);
}

/* Refused with RC_EFORMAT and a message containing want; dst unchanged. */
static void expect_lie(const uint8_t *b, size_t n, const char *want)
{
    expect_rejected(b, n, fp, RC_EFORMAT);
    char err[384];
    assert_int_not_equal(snapshot_decode(dst, fp, b, n, err, sizeof err), 0);
    if (!strstr(err, want))
        fail_msg("message '%s' does not name '%s'", err, want);
}

static void test_lying_positions(void **u)
{
    size_t n;
    uint8_t *b = forge_base(&n);
    const uint64_t lies[] = {STATE_MAX_POS + 1, 1ull << 62, (1ull << 63) - 2, (uint64_t)INT64_MAX,
                             1ull << 63, UINT64_MAX};
    for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
        set_pos(b, lies[i]);
        reseal(b, n);
        expect_lie(b, n, "position");
    }
    /* the bound itself loads; a token read past it is refused, not wrapped */
    struct mstate *t;
    char err[256];
    assert_int_equal(state_create(m, &t), 0);
    struct fwd *f;
    assert_int_equal(fwd_create(m, 8, &f), 0);
    set_pos(b, STATE_MAX_POS - 1);
    reseal(b, n);
    assert_int_equal(snapshot_decode(t, fp, b, n, err, sizeof err), 0);
    int32_t tok[2] = {3, 4};
    assert_int_equal(fwd_prefill(f, t, tok, 2, err, sizeof err), RC_ERANGE);
    assert_non_null(strstr(err, "maximum position"));
    assert_int_equal(t->pos, (int64_t)STATE_MAX_POS - 1);
    assert_int_equal(fwd_prefill(f, t, tok, 1, err, sizeof err), 0);
    assert_int_equal(t->pos, (int64_t)STATE_MAX_POS);
    assert_int_equal(fwd_prefill(f, t, tok, 1, err, sizeof err), RC_ERANGE);
    fwd_free(f);
    state_free(t);
    rc_free(b);
}

static void test_lying_floats(void **u)
{
    const struct model_config *c = model_config(m);
    size_t conv0 = (size_t)c->d_model;
    size_t ssm0 = conv0 + (size_t)c->n_layer * src->conv_per_layer;
    size_t last_f = ssm0 + (size_t)c->n_layer * src->ssm_per_layer - 1;
    struct {
        size_t at;
        const char *name;
    } where[] = {{0, "last"}, {3, "last"}, {conv0, "conv"}, {conv0 + 5, "conv"},
                 {ssm0, "ssm"}, {last_f, "ssm"}};
    const float lies[] = {1e30f, -1e30f, FLT_MAX, -FLT_MAX, NAN,
                          INFINITY, -INFINITY};
    for (size_t w = 0; w < sizeof where / sizeof where[0]; w++)
        for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
            size_t n;
            uint8_t *b = forge_base(&n);
            set_float(b, where[w].at, lies[i]);
            reseal(b, n);
            expect_lie(b, n, where[w].name);
            rc_free(b);
        }
    /* just past each part's bound */
    for (size_t w = 0; w < sizeof where / sizeof where[0]; w++) {
        float lim = where[w].at < ssm0 ? STATE_MAX_ACT : STATE_MAX_SSM;
        for (int sign = -1; sign <= 1; sign += 2) {
            size_t n;
            uint8_t *b = forge_base(&n);
            set_float(b, where[w].at, (float)sign * nextafterf(lim, INFINITY));
            reseal(b, n);
            expect_lie(b, n, where[w].name);
            set_float(b, where[w].at, (float)sign * lim);
            reseal(b, n);
            char err[256];
            struct mstate *t;
            assert_int_equal(state_create(m, &t), 0);
            assert_int_equal(snapshot_decode(t, fp, b, n, err, sizeof err), 0);
            state_free(t);
            rc_free(b);
        }
    }
}

/* Every float at its bound (+-STATE_MAX_ACT, +-STATE_MAX_SSM) still loads, and one step from it, and
 * the logits of it, stay finite: the bound is below where this model's
 * arithmetic overflows. */
static void test_floats_at_the_bound_step_finite(void **u)
{
    const struct model_config *c = model_config(m);
    size_t nf = state_bytes(m) / sizeof(float);
    size_t ssm0 = (size_t)c->d_model + (size_t)c->n_layer * src->conv_per_layer;
    char err[256];
    for (int sign = -1; sign <= 1; sign += 2) {
        size_t n;
        uint8_t *b = forge_base(&n);
        for (size_t i = 0; i < nf; i++)
            set_float(b, i, (float)sign * ((i % 3) ? 1.0f : -1.0f) *
                                (i < ssm0 ? STATE_MAX_ACT : STATE_MAX_SSM));
        reseal(b, n);
        struct mstate *t;
        assert_int_equal(state_create(m, &t), 0);
        assert_int_equal(snapshot_decode(t, fp, b, n, err, sizeof err), 0);
        struct fwd *f;
        assert_int_equal(fwd_create(m, 8, &f), 0);
        float *lg = rc_malloc((size_t)c->n_vocab * sizeof(float));
        assert_non_null(lg);
        fwd_logits(f, t->last, 1, lg);
        for (int v = 0; v < c->n_vocab; v++)
            assert_true(isfinite(lg[v]));
        int32_t tok = 5;
        assert_int_equal(fwd_prefill(f, t, &tok, 1, err, sizeof err), 0);
        for (size_t i = 0; i < nf; i++)
            assert_true(isfinite(((float *)t->block)[i]));
        fwd_logits(f, t->last, 1, lg);
        for (int v = 0; v < c->n_vocab; v++)
            assert_true(isfinite(lg[v]));
        rc_free(lg);
        fwd_free(f);
        state_free(t);
        rc_free(b);
    }
}

/* Bucket math over every edge position: no shift overflows (UBSan), and
 * bucket k is [2^(k-1), 2^k) with the top one saturating at INT64_MAX. */
static void test_bucket_edges(void **u)
{
    assert_int_equal(score_bucket_of(INT64_MIN), 0);
    assert_int_equal(score_bucket_of(-1), 0);
    assert_int_equal(score_bucket_of(0), 0);
    assert_int_equal(score_bucket_of(1), 1);
    for (int k = 1; k < 63; k++) {
        int64_t p = (int64_t)1 << k;
        assert_int_equal(score_bucket_of(p - 1), k);
        assert_int_equal(score_bucket_of(p), k + 1);
    }
    assert_int_equal(score_bucket_of(INT64_MAX), 63);
    const int64_t at[] = {0, 1, 2, 3, 4, ((int64_t)1 << 53) - 1, (int64_t)1 << 53,
                          (int64_t)1 << 62, INT64_MAX - 1, INT64_MAX};
    struct score_stats st;
    score_stats_init(&st);
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        score_stats_add(&st, at[i], -1.0);
        int b = score_bucket_of(at[i]);
        assert_true(b < st.nb && st.nb <= SCORE_MAX_BUCKETS);
        assert_true(st.b[b].start <= at[i]);
        assert_true(at[i] < st.b[b].end || (at[i] == INT64_MAX && st.b[b].end == INT64_MAX));
    }
    for (int b = 0; b < st.nb; b++) {
        assert_true(st.b[b].start < st.b[b].end);
        if (b > 0)
            assert_int_equal(st.b[b].start, st.b[b - 1].end);
    }
    assert_int_equal(st.b[63].end, INT64_MAX);
    struct score_stats m2;
    score_stats_init(&m2);
    score_stats_merge(&m2, &st);
    assert_int_equal(m2.nb, st.nb);
    assert_int_equal(m2.b[63].start, (int64_t)1 << 62);
    assert_int_equal(m2.b[63].end, INT64_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_peek),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_every_byte_flip),
        cmocka_unit_test(test_foreign_model_and_sizes),
        cmocka_unit_test(test_lying_positions),
        cmocka_unit_test(test_lying_floats),
        cmocka_unit_test(test_floats_at_the_bound_step_finite),
        cmocka_unit_test(test_bucket_edges),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
