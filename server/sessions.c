#include "sessions.h"

#include <string.h>
#include <sys/time.h>

#include "alloc.h"
#include "errors.h"
#include "os.h"
#include "state.h"

#define NBUCKETS 4096

struct sessions {
    const struct model *m;
    struct sessions_opts o;
    size_t state_size;          /* state_bytes(m) */
    size_t n;                   /* linked sessions */
    size_t n_states;            /* states alive (linked or unlinked-busy) + reserved */
    struct session *buckets[NBUCKETS];
    struct list all;            /* linked sessions, oldest first (session.link) */
};

int sessions_create(const struct model *m, const struct sessions_opts *o, struct sessions **out)
{
    struct sessions *t = rc_calloc(1, sizeof *t);
    if (!t)
        return RC_ENOMEM;
    t->m = m;
    t->o = *o;
    t->state_size = state_bytes(m);
    *out = t;
    return 0;
}

static unsigned bucket_of(const char *id)
{
    unsigned h = 0;
    for (int i = 0; i < 8; i++) /* ids are random hex: any 8 digits hash well */
        h = h * 16 + (unsigned)(id[i] <= '9' ? id[i] - '0' : id[i] - 'a' + 10);
    return h % NBUCKETS;
}

static void session_destroy(struct sessions *t, struct session *s)
{
    if (s->spilled && t->o.on_drop_spilled)
        t->o.on_drop_spilled(t->o.ud, s);
    state_free(s->state);
    if (s->state)
        t->n_states--;
    rc_free(s);
}

void sessions_free(struct sessions *t)
{
    if (!t)
        return;
    LIST_FOR_EACH_SAFE (struct session, s, &t->all, link)
        session_destroy(t, s);
    rc_free(t);
}

static int budget_ok(const struct sessions *t)
{
    size_t need;
    if (__builtin_mul_overflow(t->n_states + 1, t->state_size, &need))
        return 0;
    if (need <= t->o.mem_budget)
        return 1;
    /* over it by at most the states being made room for */
    return t->o.can_make_room && t->o.can_make_room(t->o.ud);
}

static double unix_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
}

static void link_session(struct sessions *t, struct session *s)
{
    unsigned b = bucket_of(s->id);
    s->hnext = t->buckets[b];
    t->buckets[b] = s;
    list_push_back(&t->all, &s->link);
    t->n++;
}

int sessions_new(struct sessions *t, uint64_t owner, uint64_t now_ms, struct session **out,
                 struct api_error *e)
{
    *out = NULL;
    if (t->n >= t->o.max_sessions) {
        api_error_set(e, API_UNAVAILABLE, "session limit reached (%zu sessions, --max-sessions)",
                      t->o.max_sessions);
        return RC_ERANGE;
    }
    size_t mine = 0;
    LIST_FOR_EACH (struct session, s, &t->all, link)
        mine += s->owner == owner;
    if (mine >= t->o.max_per_owner) {
        api_error_set(e, API_TOO_MANY_SESSIONS,
                      "this key holds %zu sessions, the limit (--max-sessions-per-key)", mine);
        return RC_ERANGE;
    }
    if (!budget_ok(t)) {
        api_error_set(e, API_UNAVAILABLE,
                      "state memory budget spent (%zu states of %zu bytes, --state-memory)",
                      t->n_states, t->state_size);
        return RC_ERANGE;
    }
    struct session *s = rc_calloc(1, sizeof *s);
    if (!s || state_create(t->m, &s->state) != 0) {
        rc_free(s);
        api_error_set(e, API_OUT_OF_MEMORY, "out of memory for a new session's state");
        return RC_ENOMEM;
    }
    t->n_states++;
    unsigned char rnd[SESSION_ID_LEN / 2];
    if (os_random_bytes(rnd, sizeof rnd) != 0) {
        session_destroy(t, s);
        api_error_set(e, API_INTERNAL, "no randomness for a session id");
        return RC_EIO;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof rnd; i++) {
        s->id[2 * i] = hex[rnd[i] >> 4];
        s->id[2 * i + 1] = hex[rnd[i] & 15];
    }
    s->id[SESSION_ID_LEN] = 0;
    s->owner = owner;
    s->created = unix_now();
    s->last_used_ms = now_ms;
    link_session(t, s);
    *out = s;
    return 0;
}

static int valid_id(const char *id);

int sessions_add_spilled(struct sessions *t, const char *id, uint64_t owner, double created,
                         int64_t pos, uint64_t now_ms)
{
    if (!valid_id(id) || t->n >= t->o.max_sessions)
        return RC_EINVAL;
    for (struct session *x = t->buckets[bucket_of(id)]; x; x = x->hnext)
        if (!strcmp(x->id, id))
            return RC_EINVAL;
    struct session *s = rc_calloc(1, sizeof *s);
    if (!s)
        return RC_ENOMEM;
    memcpy(s->id, id, SESSION_ID_LEN + 1);
    s->owner = owner;
    s->created = created;
    s->pos = pos;
    s->last_used_ms = now_ms;
    s->spilled = 1;
    link_session(t, s);
    return 0;
}

static int valid_id(const char *id)
{
    size_t n = 0;
    for (; id[n]; n++)
        if (n >= SESSION_ID_LEN || !((id[n] >= '0' && id[n] <= '9') || (id[n] >= 'a' && id[n] <= 'f')))
            return 0;
    return n == SESSION_ID_LEN;
}

int sessions_valid_id(const char *id) { return valid_id(id); }

struct session *sessions_find(struct sessions *t, const char *id)
{
    if (!valid_id(id))
        return NULL;
    for (struct session *s = t->buckets[bucket_of(id)]; s; s = s->hnext)
        if (!strcmp(s->id, id))
            return s;
    return NULL;
}

struct session *sessions_get(struct sessions *t, const char *id, uint64_t owner)
{
    if (!valid_id(id))
        return NULL;
    for (struct session *s = t->buckets[bucket_of(id)]; s; s = s->hnext)
        if (!strcmp(s->id, id))
            return s->owner == owner ? s : NULL;
    return NULL;
}

static void unlink_session(struct sessions *t, struct session *s)
{
    struct session **pp = &t->buckets[bucket_of(s->id)];
    while (*pp && *pp != s)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = s->hnext;
    list_remove(&t->all, &s->link);
    s->hnext = NULL;
    s->unlinked = 1;
    t->n--;
}

void sessions_delete(struct sessions *t, struct session *s)
{
    if (s->unlinked)
        return;
    unlink_session(t, s);
    if (!s->busy && !s->io)
        session_destroy(t, s);
}

void sessions_release(struct sessions *t, struct session *s, uint64_t now_ms)
{
    s->busy = NULL;
    if (s->unlinked) {
        session_destroy(t, s);
        return;
    }
    if (s->state)
        s->pos = s->state->pos;
    s->last_used_ms = now_ms;
}

/* Spill above 90% of the budget, down to 75%: hysteresis, so a steady
 * load does not spill and restore the same session over and over. */
int sessions_over_high_water(const struct sessions *t)
{
    return (double)(t->n_states * t->state_size) > 0.9 * (double)t->o.mem_budget;
}

int sessions_under_low_water(const struct sessions *t)
{
    return (double)(t->n_states * t->state_size) <= 0.75 * (double)t->o.mem_budget;
}

struct session *sessions_pick_spill(struct sessions *t)
{
    struct session *best = NULL;
    LIST_FOR_EACH (struct session, s, &t->all, link)
        if (s->state && !s->busy && !s->io && !s->spilled &&
            (!best || s->last_used_ms < best->last_used_ms))
            best = s;
    return best;
}

int sessions_restore_state(struct sessions *t, struct mstate **out)
{
    /* Coming back may overshoot the budget; the spiller then makes room
     * by writing out others. Refusing would strand the session. */
    if (state_create(t->m, out) != 0)
        return RC_ENOMEM;
    t->n_states++;
    return 0;
}

void sessions_spilled(struct sessions *t, struct session *s)
{
    state_free(s->state);
    s->state = NULL;
    t->n_states--;
    s->spilled = 1;
    s->io = 0;
    if (s->unlinked)
        session_destroy(t, s);
}

void sessions_restored(struct sessions *t, struct session *s, struct mstate *st, uint64_t now_ms)
{
    s->state = st;
    s->spilled = 0;
    s->io = 0;
    s->pos = st->pos;
    s->last_used_ms = now_ms;
    if (s->unlinked)
        session_destroy(t, s); /* no file any more: the restore removed it */
}

void sessions_io_failed(struct sessions *t, struct session *s, struct mstate *st)
{
    if (st) {
        state_free(st);
        t->n_states--;
    }
    s->io = 0;
    if (s->unlinked)
        session_destroy(t, s);
}

size_t sessions_expire(struct sessions *t, uint64_t now_ms)
{
    size_t n = 0;
    LIST_FOR_EACH_SAFE (struct session, s, &t->all, link) {
        if (!s->busy && !s->io && now_ms - s->last_used_ms > t->o.ttl_ms) {
            sessions_delete(t, s);
            n++;
        }
    }
    return n;
}

size_t sessions_count(const struct sessions *t) { return t->n; }
size_t sessions_state_bytes(const struct sessions *t) { return t->n_states * t->state_size; }
size_t sessions_state_size(const struct sessions *t) { return t->state_size; }
uint64_t sessions_ttl_ms(const struct sessions *t) { return t->o.ttl_ms; }

int sessions_reserve(struct sessions *t, struct api_error *e)
{
    if (!budget_ok(t)) {
        api_error_set(e, API_UNAVAILABLE, "state memory budget spent (--state-memory)");
        return RC_ERANGE;
    }
    t->n_states++;
    return 0;
}

void sessions_unreserve(struct sessions *t) { t->n_states--; }

struct session *sessions_first(struct sessions *t)
{
    return LIST_FIRST(&t->all, struct session, link);
}

struct session *sessions_next(struct session *s) { return LIST_NEXT(s, struct session, link); }
