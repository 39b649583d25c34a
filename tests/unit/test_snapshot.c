/* proto/snapshot: the envelope around state_serialize(), checked the way
 * RELIABILITY B6/B7/B9 ask: every truncation, every single-byte flip, a
 * foreign fingerprint, absurd declared sizes -- each rejected with the
 * right code, the target state unchanged. */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_every_byte_flip),
        cmocka_unit_test(test_foreign_model_and_sizes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
