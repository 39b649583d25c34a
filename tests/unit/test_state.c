/*
 * state.h: the per-stream state's size for each shape, and its serialised
 * form: a round trip, and every way a wrong blob is refused.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engine_fixture.h"
#include "errors.h"
#include "forward.h"
#include "model.h"
#include "state.h"

static char err[1024];

static void state_sizes(void **u)
{
    struct model_config c;
    struct model *m;
    assert_int_equal(model_config_named("mamba2-130m", &c), 0);
    assert_int_equal(model_create_random(&c, 1, &m, err, sizeof err), 0);
    /* 24 layers x (3 x 1792 conv + 24 x 64 x 128 ssm) + 768 last, fp32 */
    assert_int_equal(state_bytes(m), (size_t)4 * (768 + 24 * (3 * 1792 + 24 * 64 * 128)));
    assert_true(state_bytes(m) > 18 * 1048576 && state_bytes(m) < 19 * 1048576);
    model_free(m);
}

static void state_roundtrip_and_rejects(void **u)
{
    struct model *m = load_fixture("m2_small"), *m1 = load_fixture("m1_small");
    struct fwd *f;
    struct mstate *a, *b, *other;
    int32_t *ids;
    int T;
    fixture_ids("m2_small", &ids, &T, NULL, NULL);
    assert_int_equal(fwd_create(m, 32, &f), 0);
    assert_int_equal(state_create(m, &a), 0);
    assert_int_equal(state_create(m, &b), 0);
    assert_int_equal(state_create(m1, &other), 0);
    assert_int_equal(fwd_prefill(f, a, ids, (size_t)T, err, sizeof err), 0);
    size_t n = state_serialized_bytes(m);
    uint8_t *buf = malloc(n), *bad = malloc(n);
    assert_int_equal(state_serialize(a, buf, n), 0);
    assert_int_equal(state_serialize(a, buf, n - 1), RC_ERANGE);
    assert_int_equal(state_deserialize(b, buf, n, err, sizeof err), 0);
    assert_int_equal(b->pos, T);
    assert_int_equal(b->has_last, 1);
    assert_memory_equal(a->block, b->block, state_bytes(m));
    /* another model's state */
    assert_int_equal(state_copy(other, a), RC_EMISMATCH);
    assert_int_not_equal(state_deserialize(other, buf, n, err, sizeof err), 0);
    /* every truncation is refused and leaves the target unchanged */
    state_reset(b);
    for (size_t len = 0; len < n; len += 1 + len / 16)
        assert_int_not_equal(state_deserialize(b, buf, len, err, sizeof err), 0);
    assert_int_equal(b->pos, 0);
    /* version, dims, flag, position, NaN */
    size_t off[] = {0, 8, 12, 28, 32};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++) {
        memcpy(bad, buf, n);
        bad[off[i]] ^= 0x40;
        assert_int_not_equal(state_deserialize(b, bad, n, err, sizeof err), 0);
        assert_int_equal(b->pos, 0);
    }
    memcpy(bad, buf, n);
    float nan = NAN;
    memcpy(bad + n - 4, &nan, 4);
    assert_int_equal(state_deserialize(b, bad, n, err, sizeof err), RC_EFORMAT);
    assert_non_null(strstr(err, "not finite"));
    assert_int_equal(b->pos, 0);
    free(buf), free(bad), free(ids);
    state_free(a), state_free(b), state_free(other);
    fwd_free(f);
    model_free(m), model_free(m1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(state_sizes),
        cmocka_unit_test(state_roundtrip_and_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
