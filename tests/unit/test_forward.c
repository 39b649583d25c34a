/*
 * forward.h: a ragged batch is checked before anything moves, and
 * allocation failures anywhere in load, forward pass and scoring are
 * reported, never a crash or a leak.
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
#include <jansson.h>

#include "alloc.h"
#include "engine_fixture.h"
#include "errors.h"
#include "forward.h"
#include "model.h"
#include "score.h"
#include "state.h"

static char err[1024];

static void batch_validation(void **u)
{
    struct model *m = load_fixture("m2_small");
    struct fwd *f;
    struct mstate *a, *b;
    assert_int_equal(fwd_create(m, 8, &f), 0);
    assert_int_equal(state_create(m, &a), 0);
    assert_int_equal(state_create(m, &b), 0);
    int32_t good[4] = {1, 2, 3, 4}, bad[3] = {5, -1, 7}, big[3] = {5, 96, 7};
    assert_int_equal(fwd_prefill(f, a, good, 4, err, sizeof err), 0);
    size_t nb = state_bytes(m);
    void *snap = malloc(nb);
    memcpy(snap, a->block, nb);
    struct fwd_seg segs[2] = {{b, good, 4, NULL}, {a, bad, 3, NULL}};
    assert_int_equal(fwd_run(f, segs, 2, err, sizeof err), RC_EINVAL);
    assert_non_null(strstr(err, "segment 1: token 1 is -1"));
    segs[1].tokens = big;
    assert_int_equal(fwd_run(f, segs, 2, err, sizeof err), RC_EINVAL);
    assert_non_null(strstr(err, "token 1 is 96"));
    segs[1] = (struct fwd_seg){b, good, 4, NULL}; /* b twice */
    assert_int_equal(fwd_run(f, segs, 2, err, sizeof err), RC_EINVAL);
    int32_t nine[9] = {0};
    segs[0] = (struct fwd_seg){a, nine, 9, NULL};
    assert_int_equal(fwd_run(f, segs, 1, err, sizeof err), RC_ERANGE);
    /* nothing moved */
    assert_memory_equal(snap, a->block, nb);
    assert_int_equal(a->pos, 4);
    assert_int_equal(b->pos, 0);
    free(snap);
    state_free(a), state_free(b);
    fwd_free(f);
    model_free(m);
}


/* Fail the Nth allocation of loading + creating state and scratch + one
 * scored pass, for every N until it succeeds: each failure is reported
 * (never a crash), nothing leaks (checked by the sanitizer build), and the
 * same call succeeds once injection stops. */
static void allocation_failures(void **u)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/engine/m2_small", RECUR_FIXTURES);
    int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int n;
    for (n = 1; n < 100000; n++) {
        rc_alloc_fail_after(n, 0);
        struct model *m = NULL;
        struct fwd *f = NULL;
        struct scorer *sc = NULL;
        struct mstate *s = NULL;
        struct score_stats st;
        score_stats_init(&st);
        int rc = model_load(dir, &m, err, sizeof err);
        if (rc == 0)
            rc = fwd_create(m, 4, &f);
        if (rc == 0)
            rc = scorer_create(f, 2, &sc);
        if (rc == 0)
            rc = state_create(m, &s);
        if (rc == 0)
            rc = scorer_run(sc, s, ids, 8, &st, NULL, NULL, err, sizeof err);
        long injected = rc_alloc_injected();
        rc_alloc_fail_after(0, 0);
        state_free(s);
        scorer_free(sc);
        fwd_free(f);
        model_free(m);
        if (injected == 0) {
            assert_int_equal(rc, 0);
            break;
        }
        if (rc == 0)
            continue; /* the failed allocation had a fallback (none today) */
        assert_true(rc == RC_ENOMEM || rc == RC_EFORMAT || rc == RC_EIO);
    }
    printf("  allocation failure injected at each of the first %d allocations\n", n - 1);
    assert_true(n > 10);
}

int main(void)
{
    /* JSON parsing allocates through the same countdown as everything else. */
    json_set_alloc_funcs(rc_malloc, rc_free);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(batch_validation),
        cmocka_unit_test(allocation_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
