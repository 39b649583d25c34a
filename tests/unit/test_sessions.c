/* server/sessions: ids, owners, limits, the memory budget, expiry, and
 * the rule that a busy session's state is never freed under the compute
 * thread (delete/expire of a busy session only unlinks it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "alloc.h"
#include "model.h"
#include "sessions.h"
#include "state.h"
#include "tiny_model.h"

static struct model *m;
static size_t sb;
static int dropped;

static void on_drop(void *ud, const struct session *s) { dropped++; }

static int setup(void **u)
{
    if (tiny_mamba2(1, 32, 4, 3, &m))
        return -1;
    sb = state_bytes(m);
    return 0;
}

static int teardown(void **u)
{
    model_free(m);
    return 0;
}

static struct sessions *table(size_t max, size_t per_owner, size_t budget_states)
{
    struct sessions_opts o = {.max_sessions = max, .max_per_owner = per_owner,
                              .mem_budget = budget_states * sb, .ttl_ms = 1000,
                              .on_drop_spilled = on_drop};
    struct sessions *t;
    assert_int_equal(sessions_create(m, &o, &t), 0);
    return t;
}

static void test_ids_and_owners(void **u)
{
    struct sessions *t = table(100, 100, 100);
    struct session *a, *b;
    struct api_error e;
    assert_int_equal(sessions_new(t, 7, 0, &a, &e), 0);
    assert_int_equal(sessions_new(t, 9, 0, &b, &e), 0);
    assert_int_equal(strlen(a->id), 32);
    assert_string_not_equal(a->id, b->id);
    for (int i = 0; i < 32; i++)
        assert_non_null(strchr("0123456789abcdef", a->id[i]));
    assert_ptr_equal(sessions_get(t, a->id, 7), a);
    assert_null(sessions_get(t, a->id, 9)); /* another owner: as if absent */
    assert_null(sessions_get(t, "zz", 7));
    assert_null(sessions_get(t, "../../etc/passwd", 7));
    char upper[33];
    memcpy(upper, a->id, 33);
    for (int i = 0; i < 32; i++)
        if (upper[i] >= 'a')
            upper[i] = (char)(upper[i] - 32);
    assert_null(sessions_get(t, upper, 7)); /* exact ids only */
    /* a fresh state is the zero state */
    assert_int_equal(a->state->pos, 0);
    for (size_t i = 0; i < a->state->ssm_per_layer; i++)
        assert_true(a->state->ssm[i] == 0.0f);
    assert_int_equal(sessions_count(t), 2);
    char aid[33];
    memcpy(aid, a->id, 33);
    sessions_delete(t, a);
    assert_null(sessions_get(t, aid, 7));
    assert_ptr_equal(sessions_get(t, b->id, 9), b);
    assert_int_equal(sessions_count(t), 1);
    sessions_free(t);
}

static void test_limits(void **u)
{
    struct sessions *t = table(4, 2, 3);
    struct session *s[4];
    struct api_error e;
    assert_int_equal(sessions_new(t, 1, 0, &s[0], &e), 0);
    assert_int_equal(sessions_new(t, 1, 0, &s[1], &e), 0);
    assert_int_not_equal(sessions_new(t, 1, 0, &s[2], &e), 0);
    assert_int_equal(e.kind, API_TOO_MANY_SESSIONS);
    assert_int_equal(sessions_new(t, 2, 0, &s[2], &e), 0);
    /* the budget holds 3 states */
    assert_int_not_equal(sessions_new(t, 3, 0, &s[3], &e), 0);
    assert_int_equal(e.kind, API_UNAVAILABLE);
    assert_int_equal(sessions_state_bytes(t), 3 * sb);
    /* a stateless request's temporary state counts too */
    sessions_delete(t, s[2]);
    assert_int_equal(sessions_reserve(t, &e), 0);
    assert_int_not_equal(sessions_new(t, 3, 0, &s[3], &e), 0);
    sessions_unreserve(t);
    assert_int_equal(sessions_new(t, 3, 0, &s[3], &e), 0);
    sessions_free(t);
}

static void test_busy_is_never_freed(void **u)
{
    struct sessions *t = table(10, 10, 10);
    struct session *s;
    struct api_error e;
    assert_int_equal(sessions_new(t, 1, 0, &s, &e), 0);
    char id[33];
    memcpy(id, s->id, 33);
    s->busy = (struct job *)1; /* a job holds it */
    sessions_delete(t, s);
    assert_null(sessions_get(t, id, 1)); /* gone for requests at once */
    assert_int_equal(sessions_count(t), 0);
    assert_int_equal(sessions_state_bytes(t), sb); /* the state is still there */
    s->state->pos = 5; /* the compute thread may still write it */
    sessions_release(t, s, 0);                 /* the job came back: now freed */
    assert_int_equal(sessions_state_bytes(t), 0);
    sessions_free(t);
}

static void test_expiry(void **u)
{
    struct sessions *t = table(10, 10, 10);
    struct session *a, *b, *c;
    struct api_error e;
    assert_int_equal(sessions_new(t, 1, 0, &a, &e), 0);
    assert_int_equal(sessions_new(t, 1, 500, &b, &e), 0);
    assert_int_equal(sessions_new(t, 1, 0, &c, &e), 0);
    c->busy = (struct job *)1;
    assert_int_equal(sessions_expire(t, 900), 0);
    assert_int_equal(sessions_expire(t, 1001), 1); /* a only: c is busy */
    assert_int_equal(sessions_count(t), 2);
    sessions_release(t, c, 1001); /* used just now */
    assert_int_equal(sessions_expire(t, 1600), 1); /* b */
    assert_int_equal(sessions_expire(t, 2002), 1); /* c */
    assert_int_equal(sessions_count(t), 0);
    sessions_free(t);
}

static void test_spill_books(void **u)
{
    struct sessions *t = table(10, 10, 4);
    struct session *s[4];
    struct api_error e;
    for (int i = 0; i < 4; i++)
        assert_int_equal(sessions_new(t, 1, (uint64_t)i, &s[i], &e), 0);
    assert_true(sessions_over_high_water(t));
    s[0]->busy = (struct job *)1;
    struct session *p = sessions_pick_spill(t);
    assert_ptr_equal(p, s[1]); /* least recently used that is idle */
    p->io = 1;
    assert_ptr_equal(sessions_pick_spill(t), s[2]);
    sessions_spilled(t, p);
    assert_true(p->spilled && !p->state && !p->io);
    assert_int_equal(sessions_state_bytes(t), 3 * sb);
    assert_true(sessions_under_low_water(t));
    /* back from disk */
    struct mstate *st;
    assert_int_equal(sessions_restore_state(t, &st), 0);
    p->io = 1;
    st->pos = 42;
    sessions_restored(t, p, st, 10);
    assert_int_equal(p->pos, 42);
    assert_false(p->spilled);
    /* a spilled session deleted: the table asks for its file to go */
    struct session *q = sessions_pick_spill(t);
    q->io = 1;
    sessions_spilled(t, q);
    dropped = 0;
    sessions_delete(t, q);
    assert_int_equal(dropped, 1);
    /* deleted while its spill runs: freed when the spill ends */
    struct session *r = sessions_pick_spill(t);
    r->io = 1;
    sessions_delete(t, r);
    dropped = 0;
    sessions_spilled(t, r); /* now destroyed; its new file is dropped */
    assert_int_equal(dropped, 1);
    /* found on disk at start-up */
    assert_int_equal(sessions_add_spilled(t, "0123456789abcdef0123456789abcdef", 5, 1.0, 9, 0), 0);
    assert_int_not_equal(sessions_add_spilled(t, "0123456789abcdef0123456789abcdef", 5, 1.0, 9, 0), 0);
    assert_int_not_equal(sessions_add_spilled(t, "not-an-id", 5, 1.0, 9, 0), 0);
    struct session *d = sessions_get(t, "0123456789abcdef0123456789abcdef", 5);
    assert_non_null(d);
    assert_true(d->spilled && d->pos == 9 && !d->state);
    s[0]->busy = NULL;
    sessions_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_and_owners),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_busy_is_never_freed),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_spill_books),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
