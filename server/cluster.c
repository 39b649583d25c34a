#include "cluster.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "app.h"
#include "errors.h"
#include "fileio.h"
#include "job.h"
#include "log.h"
#include "metrics.h"
#include "outbuf.h"
#include "rstore.h"
#include "snapshot.h"
#include "state.h"

/* ---- metrics ---------------------------------------------------------------- */

#define CH_NB 12
static const double ch_bounds[CH_NB] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                        0.05,   0.1,   0.2,   0.5,   1,    5};
struct chist {
    uint64_t b[CH_NB + 1];
    double sum;
};
static void chist_add(struct chist *h, double s)
{
    int i = 0;
    while (i < CH_NB && s > ch_bounds[i])
        i++;
    h->b[i]++;
    h->sum += s;
}

enum { PH_LEASE, PH_FETCH, PH_VERIFY, PH_REPLAY, N_PHASES };
static const char *const phase_names[N_PHASES] = {"lease", "fetch", "verify", "replay"};
enum { HO_ASKED, HO_DRAIN, HO_MEMORY, HO_IDLE, N_HO };
static const char *const ho_names[N_HO] = {"asked", "drain", "memory", "idle"};

/* ---- the replica's books ---------------------------------------------------- */

#define MSGQ 256

struct cluster {
    struct rstore *rs;
    uv_timer_t lease_timer;
    int renewing;                 /* a renewal op is in flight */
    int evicting;                 /* evictions in flight (memory) */
    /* the handoff listener */
    uv_thread_t thread;
    int thread_started;
    atomic_int stop;
    uv_async_t async;
    uv_mutex_t mu;
    char msgs[MSGQ][RSTORE_REPLICA_MAX + 40];
    int n_msgs;
    /* metrics */
    struct chist restore[N_PHASES];
    struct chist commit;
    uint64_t restores, restore_failures, commits, commit_failures, fenced, leases_lost,
        handoffs[N_HO], checkpoints, store_errors, busy_elsewhere;
};

enum cop_kind {
    COP_ACQUIRE = 1,
    COP_COMMIT,
    COP_STATE,
    COP_CHECKPOINT,   /* snapshot; keep the session */
    COP_EVICT,        /* snapshot if dirty, release the lease, forget it here */
    COP_IDEM,
    COP_DELETE,
    COP_LIST,
    COP_RENEW,
    COP_RELEASE,
};

struct renew_item {
    char sid[SESSION_ID_LEN + 1];
    uint64_t epoch, new_epoch;
    int64_t pos;
    int rc;
};

struct cop {
    struct fileio io;
    struct app *a;
    struct rstore *rs;
    int kind;
    struct session *s;
    char sid[SESSION_ID_LEN + 1];
    uint64_t owner, epoch, fp;
    int64_t expected;
    double created;
    /* commit */
    const int32_t *ids;
    size_t n;
    char idem[33];
    int has_idem;
    const char *answer;
    size_t answer_len;
    /* state, checkpoint, evict: the state read by the worker */
    const struct mstate *st;
    int64_t st_pos;
    int create, dirty, reason;
    /* acquire */
    struct rstore_session got;
    struct mstate *fresh;
    double verify_s, t0;
    /* renew */
    struct renew_item *items;
    size_t n_items;
    struct cop_result res;
    cop_done_fn done;
    void *ud;
    struct job *j;
};

const struct cop_result *cop_result(const struct cop *op) { return &op->res; }
void *cop_ud(const struct cop *op) { return op->ud; }
struct job *cop_job(const struct cop *op) { return op->j; }
struct session *cop_session(const struct cop *op) { return op->s; }
void cop_detach(struct cop *op)
{
    if (op)
        op->ud = NULL;
}

static void cop_free(struct cop *op)
{
    rc_free((void *)op->answer);
    rc_free(op->res.body);
    rc_free(op->res.list);
    rstore_session_free(&op->got);
    rc_free(op->items);
    rc_free(op);
}

/* ---- ops on the worker pool -------------------------------------------------- */

static void cop_run(struct fileio *io)
{
    struct cop *op = FILEIO_OP(io, struct cop, io);
    struct cop_result *r = &op->res;
    char *e = r->err;
    size_t en = sizeof r->err;
    uint8_t *buf = NULL;
    size_t len = 0;
    switch (op->kind) {
    case COP_ACQUIRE:
        r->rc = rstore_acquire(op->rs, op->sid, op->owner, &op->got, e, en);
        if (r->rc == RC_EBUSY) {
            char e2[64];
            rstore_ask_handoff(op->rs, op->got.holder, op->sid, e2, sizeof e2);
        } else if (r->rc == 0) {
            double t = uv_hrtime() * 1e-9;
            if (op->got.snap) {
                r->rc = snapshot_decode(op->fresh, op->fp, op->got.snap, op->got.snap_len, e, en);
                if (!r->rc && op->fresh->pos != op->got.snap_pos)
                    r->rc = rc_fail(e, en, RC_EFORMAT,
                                    "the stored snapshot is at %" PRId64 ", its record says %" PRId64,
                                    op->fresh->pos, op->got.snap_pos);
            } else if (op->got.snap_pos != 0)
                r->rc = rc_fail(e, en, RC_EFORMAT, "the session has no snapshot but starts at %" PRId64,
                                op->got.snap_pos);
            op->verify_s = uv_hrtime() * 1e-9 - t;
            if (r->rc) {
                char e2[64];
                rstore_release(op->rs, op->sid, op->got.epoch, e2, sizeof e2);
            }
        }
        break;
    case COP_COMMIT:
        r->rc = rstore_commit(op->rs, op->sid, op->epoch, op->expected, op->ids, op->n,
                              op->has_idem ? op->idem : NULL, op->answer, op->answer_len,
                              &r->cur_pos, e, en);
        break;
    case COP_STATE:
        if (op->create && op->st_pos == 0) /* the zero state: nothing to store */
            r->rc = rstore_create(op->rs, op->sid, op->owner, op->created, NULL, 0, 0, &op->epoch,
                                  e, en);
        else if (!(r->rc = snapshot_encode(op->st, op->fp, &buf, &len, e, en)))
            r->rc = op->create ? rstore_create(op->rs, op->sid, op->owner, op->created, buf, len,
                                               op->st_pos, &op->epoch, e, en)
                               : rstore_put_snapshot(op->rs, op->sid, op->epoch, buf, len,
                                                     op->st_pos, 1, op->expected, e, en);
        break;
    case COP_CHECKPOINT:
    case COP_EVICT:
        if (op->dirty && !(r->rc = snapshot_encode(op->st, op->fp, &buf, &len, e, en)))
            r->rc = rstore_put_snapshot(op->rs, op->sid, op->epoch, buf, len, op->st_pos, 0, -1,
                                        e, en);
        if (op->kind == COP_EVICT && (r->rc == 0 || r->rc == RC_EFENCED)) {
            char e2[64];
            rstore_release(op->rs, op->sid, op->epoch, e2, sizeof e2);
        }
        break;
    case COP_IDEM:
        r->rc = rstore_idem_get(op->rs, op->sid, op->idem, &r->body, &r->body_len, e, en);
        break;
    case COP_DELETE:
        r->rc = rstore_delete(op->rs, op->sid, op->epoch, op->owner, e, en);
        break;
    case COP_LIST:
        r->rc = rstore_list(op->rs, op->owner, &r->list, &r->n_list, e, en);
        break;
    case COP_RENEW:
        for (size_t i = 0; i < op->n_items; i++) {
            struct renew_item *it = &op->items[i];
            it->new_epoch = it->epoch;
            it->rc = rstore_renew(op->rs, it->sid, &it->new_epoch, it->pos, e, en);
        }
        break;
    case COP_RELEASE:
        r->rc = rstore_release(op->rs, op->sid, op->epoch, e, en);
        break;
    }
    rc_free(buf);
}

static void cop_done(struct fileio *io, int cancelled);

static struct cop *cop_new(struct app *a, int kind, struct session *s)
{
    struct cop *op = rc_calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->a = a;
    op->rs = a->cluster->rs;
    op->kind = kind;
    op->s = s;
    op->fp = a->fingerprint;
    if (s) {
        memcpy(op->sid, s->id, sizeof op->sid);
        op->owner = s->owner;
        op->epoch = s->epoch;
    }
    op->t0 = uv_hrtime() * 1e-9;
    return op;
}

static int cop_queue(struct cop *op)
{
    if (fileio_queue(op->a->loop, &op->io, cop_run, cop_done) != 0)
        return RC_EIO;
    op->a->io_ops++;
    return 0;
}

/* ---- the loop's side of each op ---------------------------------------------- */

static void count_failure(struct cluster *cl, int rc)
{
    if (rc == RC_EUNAVAILABLE)
        cl->store_errors++;
    else if (rc == RC_EFENCED)
        cl->fenced++;
}

/* Forget s here (its store record stays as it is). */
static void drop_local(struct app *a, struct session *s, enum session_ready why)
{
    struct list waiters = s->waiters;
    s->waiters = (struct list){0};
    sessions_delete(a->sessions, s);
    a->session_ready(a, &waiters, why, NULL);
}

static void restored(struct app *a, struct cop *op, struct mstate *st)
{
    struct session *s = op->s;
    struct list waiters = s->waiters;
    s->waiters = (struct list){0};
    int gone = s->unlinked;
    s->epoch = op->got.epoch;
    s->store_pos = op->got.pos;
    s->snap_pos = op->got.snap_pos;
    s->created = op->got.created;
    s->dirty_ms = op->got.pos > op->got.snap_pos ? uv_now(a->loop) : 0;
    if (gone) { /* deleted here meanwhile: give the lease back */
        struct cop *rel = cop_new(a, COP_RELEASE, s);
        if (rel && cop_queue(rel) != 0)
            rc_free(rel);
    }
    sessions_restored(a->sessions, s, st, uv_now(a->loop));
    a->cluster->restores++;
    a->session_ready(a, &waiters, gone ? SESSION_READY_GONE : SESSION_READY_OK, NULL);
}

/* The restore failed: the waiters get why, and the record goes. */
static void restore_failed(struct app *a, struct session *s, struct mstate *st, int rc,
                           const char *err)
{
    struct list waiters = s->waiters;
    s->waiters = (struct list){0};
    int gone = s->unlinked;
    sessions_io_failed(a->sessions, s, st);
    if (!gone)
        sessions_delete(a->sessions, s);
    enum session_ready why = gone || rc == RC_ENOENT ? SESSION_READY_GONE
                           : rc == RC_EUNAVAILABLE || rc == RC_EBUSY || rc == RC_ECANCELED
                               ? SESSION_READY_UNAVAILABLE
                           : rc == RC_ENOMEM ? SESSION_READY_FAILED
                                             : SESSION_READY_DAMAGED;
    if (rc != RC_ENOENT && rc != RC_EBUSY)
        a->cluster->restore_failures++;
    a->session_ready(a, &waiters, why, err);
}

static void replay_done(void *ctx, struct job *j)
{
    struct cop *op = ctx;
    struct app *a = op->a;
    struct session *s = op->s;
    chist_add(&a->cluster->restore[PH_REPLAY], uv_hrtime() * 1e-9 - op->t0);
    a->io_ops--;
    if (j->res.rc || op->fresh->pos != op->got.pos) {
        char err[420];
        snprintf(err, sizeof err, "replaying the session's log failed: %s",
                 j->res.rc ? j->res.err.message : "it ended at another position");
        log_msg("session %s: %s", s->id, err);
        restore_failed(a, s, op->fresh, j->res.rc == RC_ECANCELED ? RC_ECANCELED : RC_EFORMAT,
                       err);
    } else
        restored(a, op, op->fresh);
    job_free(j);
    cop_free(op);
    cluster_check(a);
    a->check_drained(a);
}

/* Read the log's tokens into the fresh state on the compute thread, the
 * same way appends read them (prefill is bit-identical however a text is
 * cut into chunks: docs/engine.md, "Batch invariance"). */
static int start_replay(struct app *a, struct cop *op)
{
    struct job *j = job_new(JOB_RUN);
    if (!j)
        return RC_ENOMEM;
    j->req.state = op->fresh;
    j->req.ids = op->got.ids;
    j->req.n_ids = op->got.n_ids;
    op->got.ids = NULL; /* the job's now */
    j->loop.internal_done = replay_done;
    j->loop.internal_ctx = op;
    op->t0 = uv_hrtime() * 1e-9;
    a->io_ops++; /* the drain waits for it like for any store work */
    sched_submit(a->sched, j);
    return 0;
}

/* 1 when the op goes on (a replay), 0 when it is over. */
static int acquire_done(struct app *a, struct cop *op)
{
    struct cluster *cl = a->cluster;
    struct cop_result *r = &op->res;
    struct session *s = op->s;
    if (r->rc == 0) {
        chist_add(&cl->restore[PH_LEASE], op->got.lease_s);
        chist_add(&cl->restore[PH_FETCH], op->got.fetch_s);
        chist_add(&cl->restore[PH_VERIFY], op->verify_s);
        if (op->got.n_ids > 0) {
            if (start_replay(a, op) == 0)
                return 1; /* replay_done goes on; the op lives until then */
            r->rc = rc_fail(r->err, sizeof r->err, RC_ENOMEM, "out of memory to replay the log");
            char e2[8];
            rstore_release(op->rs, op->sid, op->got.epoch, e2, sizeof e2);
        } else {
            restored(a, op, op->fresh);
            op->fresh = NULL;
            return 0;
        }
    }
    char msg[460];
    if (r->rc == RC_EBUSY) {
        cl->busy_elsewhere++;
        snprintf(msg, sizeof msg,
                 "session '%s' is held by replica %s; it was asked to hand it off: retry",
                 s->id, op->got.holder);
    } else if (r->rc == RC_EUNAVAILABLE) {
        cl->store_errors++;
        snprintf(msg, sizeof msg, "the session store is unavailable: %s", r->err);
    } else
        snprintf(msg, sizeof msg, "%s", r->err);
    if (r->rc != RC_ENOENT && r->rc != RC_EBUSY) {
        char esc[500];
        log_msg("restoring session %s from the store failed: %s", s->id,
                log_escape(esc, sizeof esc, r->err, strlen(r->err)));
    }
    restore_failed(a, s, op->fresh, r->rc, msg);
    op->fresh = NULL;
    return 0;
}

static void commit_done(struct app *a, struct cop *op)
{
    struct cluster *cl = a->cluster;
    struct session *s = op->s;
    chist_add(&cl->commit, uv_hrtime() * 1e-9 - op->t0);
    if (op->res.rc == 0) {
        cl->commits++;
        s->store_pos = op->res.cur_pos;
        if (!s->dirty_ms)
            s->dirty_ms = uv_now(a->loop);
    } else {
        cl->commit_failures++;
        count_failure(cl, op->res.rc);
        s->drop = 1; /* memory may be ahead of the store: read it again */
        char esc[500];
        log_msg("session %s: commit refused, dropping this replica's copy: %s", s->id,
                log_escape(esc, sizeof esc, op->res.err, strlen(op->res.err)));
    }
}

static void state_done(struct app *a, struct cop *op)
{
    struct session *s = op->s;
    if (op->res.rc == 0) {
        a->cluster->commits++;
        s->epoch = op->epoch;
        s->store_pos = s->snap_pos = op->st_pos;
        s->dirty_ms = 0;
    } else {
        a->cluster->commit_failures++;
        count_failure(a->cluster, op->res.rc);
        s->drop = 1;
    }
}

static void snapshot_done(struct app *a, struct cop *op)
{
    struct cluster *cl = a->cluster;
    struct session *s = op->s;
    s->io = 0;
    if (op->kind == COP_EVICT && cl->evicting > 0 && op->reason == HO_MEMORY)
        cl->evicting--;
    int rc = op->res.rc;
    if (rc == 0 && op->dirty) {
        s->snap_pos = op->st_pos;
        if (s->store_pos == op->st_pos)
            s->dirty_ms = 0;
        cl->checkpoints++;
    }
    if (rc)
        count_failure(cl, rc);
    if (rc == RC_EFENCED) {
        cl->leases_lost++;
        drop_local(a, s, SESSION_READY_RETRY);
        return;
    }
    if (op->kind == COP_EVICT && rc == 0) {
        cl->handoffs[op->reason]++;
        drop_local(a, s, SESSION_READY_RETRY);
        return;
    }
    if (rc) { /* the log holds everything: try again later */
        s->dirty_ms = uv_now(a->loop);
        s->handoff = 0;
    }
    if (s->unlinked) {
        sessions_delete(a->sessions, s); /* frees it now that io is over */
        return;
    }
    struct list waiters = s->waiters;
    s->waiters = (struct list){0};
    a->session_ready(a, &waiters, SESSION_READY_OK, NULL);
}

static void renew_done(struct app *a, struct cop *op)
{
    struct cluster *cl = a->cluster;
    cl->renewing = 0;
    for (size_t i = 0; i < op->n_items; i++) {
        struct renew_item *it = &op->items[i];
        struct session *s = sessions_find(a->sessions, it->sid);
        if (!s || s->epoch != it->epoch) {
            /* gone from here meanwhile (handed off, deleted): a lease this
             * renewal re-took after the hand-off released it goes back */
            if (it->rc == 0 && it->new_epoch != it->epoch) {
                struct cop *rel = cop_new(a, COP_RELEASE, NULL);
                if (rel) {
                    memcpy(rel->sid, it->sid, sizeof rel->sid);
                    rel->epoch = it->new_epoch;
                    if (cop_queue(rel) != 0)
                        rc_free(rel);
                }
            }
            continue;
        }
        if (it->rc == 0)
            s->epoch = it->new_epoch;
        else if (it->rc == RC_EFENCED) {
            cl->leases_lost++;
            s->drop = 1;
            log_msg("session %s: lease lost; this replica's copy is dropped once idle", s->id);
        } else
            cl->store_errors++;
    }
}

static void cop_done(struct fileio *io, int cancelled)
{
    struct cop *op = FILEIO_OP(io, struct cop, io);
    struct app *a = op->a;
    a->io_ops--;
    if (cancelled && !op->res.rc)
        op->res.rc = rc_fail(op->res.err, sizeof op->res.err, RC_ECANCELED, "cancelled");
    switch (op->kind) {
    case COP_ACQUIRE:
        if (acquire_done(a, op))
            return; /* replaying: replay_done frees the op */
        break;
    case COP_COMMIT: commit_done(a, op); break;
    case COP_STATE: state_done(a, op); break;
    case COP_CHECKPOINT:
    case COP_EVICT: snapshot_done(a, op); break;
    case COP_RENEW: renew_done(a, op); break;
    case COP_DELETE:
        if (op->res.rc)
            count_failure(a->cluster, op->res.rc);
        break;
    default: break;
    }
    if (op->done)
        op->done(a, op);
    cop_free(op);
    if (!a->stopping)
        cluster_check(a);
    a->check_drained(a);
}

/* ---- the API -------------------------------------------------------------- */

struct session *cluster_placeholder(struct app *a, const char *id, uint64_t owner)
{
    if (sessions_add_spilled(a->sessions, id, owner, 0, 0, uv_now(a->loop)) != 0)
        return NULL;
    return sessions_find(a->sessions, id);
}

int cluster_restore(struct app *a, struct session *s)
{
    struct cop *op = cop_new(a, COP_ACQUIRE, s);
    if (!op)
        return RC_ENOMEM;
    if (sessions_restore_state(a->sessions, &op->fresh) != 0) {
        rc_free(op);
        return RC_ENOMEM;
    }
    s->io = 1;
    if (cop_queue(op) != 0) {
        sessions_io_failed(a->sessions, s, op->fresh);
        rc_free(op);
        return RC_EIO;
    }
    return 0;
}

static struct cop *queue_or_free(struct cop *op)
{
    if (op && cop_queue(op) != 0) {
        cop_free(op);
        return NULL;
    }
    return op;
}

struct cop *cluster_commit_log(struct app *a, struct session *s, struct job *j,
                               const int32_t *ids, size_t n, const char *idem,
                               const char *answer, size_t answer_len, cop_done_fn done,
                               void *ud)
{
    struct cop *op = cop_new(a, COP_COMMIT, s);
    if (!op)
        return NULL;
    op->expected = s->store_pos;
    op->ids = ids;
    op->n = n;
    if (idem) {
        /* a copy: the request holding the answer may go before the worker is done */
        char *copy = rc_malloc(answer_len + 1);
        if (!copy) {
            rc_free(op);
            return NULL;
        }
        memcpy(copy, answer, answer_len);
        memcpy(op->idem, idem, sizeof op->idem);
        op->has_idem = 1;
        op->answer = copy;
        op->answer_len = answer_len;
    }
    op->done = done;
    op->ud = ud;
    op->j = j;
    return queue_or_free(op);
}

struct cop *cluster_commit_state(struct app *a, struct session *s, struct job *j,
                                 const struct mstate *st, int create, cop_done_fn done,
                                 void *ud)
{
    struct cop *op = cop_new(a, COP_STATE, s);
    if (!op)
        return NULL;
    op->st = st;
    op->st_pos = st->pos;
    op->create = create;
    op->created = s->created;
    op->expected = s->store_pos;
    op->done = done;
    op->ud = ud;
    op->j = j;
    return queue_or_free(op);
}

struct cop *cluster_idem_lookup(struct app *a, const char *sid, const char *idem,
                                cop_done_fn done, void *ud)
{
    struct cop *op = cop_new(a, COP_IDEM, NULL);
    if (!op)
        return NULL;
    snprintf(op->sid, sizeof op->sid, "%s", sid);
    memcpy(op->idem, idem, sizeof op->idem);
    op->done = done;
    op->ud = ud;
    return queue_or_free(op);
}

struct cop *cluster_delete(struct app *a, struct session *s, cop_done_fn done, void *ud)
{
    struct cop *op = cop_new(a, COP_DELETE, s);
    if (!op)
        return NULL;
    op->done = done;
    op->ud = ud;
    return queue_or_free(op);
}

struct cop *cluster_list(struct app *a, uint64_t owner, cop_done_fn done, void *ud)
{
    struct cop *op = cop_new(a, COP_LIST, NULL);
    if (!op)
        return NULL;
    op->owner = owner;
    op->done = done;
    op->ud = ud;
    return queue_or_free(op);
}

/* Snapshot s (if dirty) on a worker; evict: then give it up here. */
static int start_snapshot(struct app *a, struct session *s, int kind, int reason)
{
    struct cop *op = cop_new(a, kind, s);
    if (!op)
        return RC_ENOMEM;
    op->st = s->state;
    op->st_pos = s->state->pos;
    op->dirty = s->store_pos > s->snap_pos;
    op->reason = reason;
    s->io = 1; /* no job may change it while the worker reads it */
    if (cop_queue(op) != 0) {
        s->io = 0;
        rc_free(op);
        return RC_EIO;
    }
    return 0;
}

void cluster_check(struct app *a)
{
    struct cluster *cl = a->cluster;
    if (!cl || !a->sessions || a->stopping || !a->m)
        return;
    uint64_t now = uv_now(a->loop);
    const struct options *c = a->cfg;
    for (struct session *s = sessions_first(a->sessions), *nx; s; s = nx) {
        nx = sessions_next(s);
        if (s->busy || s->io || !s->state || s->epoch == 0)
            continue;
        if (s->drop) {
            drop_local(a, s, SESSION_READY_RETRY);
            continue;
        }
        if (s->handoff || a->state == APP_DRAINING) {
            start_snapshot(a, s, COP_EVICT, s->handoff ? HO_ASKED : HO_DRAIN);
            continue;
        }
        if (s->store_pos > s->snap_pos &&
            (s->store_pos - s->snap_pos >= c->store_snapshot_tokens ||
             (s->dirty_ms && now - s->dirty_ms >= (uint64_t)(c->store_snapshot_secs * 1000))))
            start_snapshot(a, s, COP_CHECKPOINT, 0);
    }
    /* memory: the least recently used idle sessions leave, down to 75% */
    size_t size = sessions_state_size(a->sessions);
    while (sessions_over_high_water(a->sessions)) {
        size_t after = sessions_state_bytes(a->sessions) - (size_t)cl->evicting * size;
        if ((double)after <= 0.75 * (double)c->state_memory)
            break;
        struct session *s = sessions_pick_spill(a->sessions);
        if (!s || s->epoch == 0 || start_snapshot(a, s, COP_EVICT, HO_MEMORY) != 0)
            break;
        cl->evicting++;
    }
}

int cluster_can_make_room(void *ud)
{
    struct app *a = ud;
    if (!a->cluster || !a->sessions)
        return 0;
    /* one idle held session per state over the budget, counting those
     * already leaving */
    size_t size = sessions_state_size(a->sessions);
    size_t over = sessions_state_bytes(a->sessions) + size > a->cfg->state_memory
                      ? (sessions_state_bytes(a->sessions) + size - a->cfg->state_memory + size - 1) / size
                      : 0;
    size_t idle = 0;
    for (struct session *s = sessions_first(a->sessions); s && idle < over + 1; s = sessions_next(s))
        idle += s->state && !s->busy && !s->io && s->epoch && !s->spilled;
    return idle + (size_t)a->cluster->evicting >= over;
}

void cluster_expire(struct app *a)
{
    if (!a->cluster || !a->sessions || a->stopping)
        return;
    uint64_t now = uv_now(a->loop), ttl = sessions_ttl_ms(a->sessions);
    for (struct session *s = sessions_first(a->sessions), *nx; s; s = nx) {
        nx = sessions_next(s);
        if (!s->busy && !s->io && s->state && s->epoch && !s->drop &&
            now - s->last_used_ms > ttl)
            start_snapshot(a, s, COP_EVICT, HO_IDLE);
    }
}

static void on_lease_timer(uv_timer_t *t)
{
    struct app *a = t->data;
    struct cluster *cl = a->cluster;
    if (!a->sessions || a->stopping)
        return;
    if (!cl->renewing) {
        size_t n = 0;
        for (struct session *s = sessions_first(a->sessions); s; s = sessions_next(s))
            n += s->epoch && !s->drop;
        struct cop *op = n ? cop_new(a, COP_RENEW, NULL) : NULL;
        if (op && (op->items = rc_calloc(n, sizeof *op->items))) {
            for (struct session *s = sessions_first(a->sessions); s; s = sessions_next(s)) {
                if (!s->epoch || s->drop)
                    continue;
                struct renew_item *it = &op->items[op->n_items++];
                memcpy(it->sid, s->id, sizeof it->sid);
                it->epoch = s->epoch;
                it->pos = s->store_pos;
            }
            if (cop_queue(op) == 0)
                cl->renewing = 1;
            else
                cop_free(op);
        } else if (op)
            cop_free(op);
    }
    cluster_check(a);
}

/* ---- the handoff listener ------------------------------------------------ */

static int sub_stop(void *ud) { return atomic_load(&((struct cluster *)ud)->stop); }

static void sub_msg(void *ud, const char *m)
{
    struct cluster *cl = ud;
    uv_mutex_lock(&cl->mu);
    if (cl->n_msgs < MSGQ)
        snprintf(cl->msgs[cl->n_msgs++], sizeof cl->msgs[0], "%s", m);
    uv_mutex_unlock(&cl->mu);
    uv_async_send(&cl->async);
}

static void sub_thread(void *arg)
{
    struct cluster *cl = arg;
    int failing = 0;
    while (!atomic_load(&cl->stop)) {
        char err[256];
        int rc = rstore_subscribe(cl->rs, sub_stop, sub_msg, cl, err, sizeof err);
        if (atomic_load(&cl->stop))
            break;
        if (rc && !failing)
            log_msg("the handoff channel: %s (retrying every 0.5 s)", err);
        failing = rc != 0;
        for (int i = 0; i < 10 && !atomic_load(&cl->stop); i++)
            usleep(50 * 1000);
    }
}

static void on_msgs(uv_async_t *h)
{
    struct app *a = h->data;
    struct cluster *cl = a->cluster;
    char msgs[MSGQ][RSTORE_REPLICA_MAX + 40];
    uv_mutex_lock(&cl->mu);
    int n = cl->n_msgs;
    memcpy(msgs, cl->msgs, (size_t)n * sizeof msgs[0]);
    cl->n_msgs = 0;
    uv_mutex_unlock(&cl->mu);
    if (!a->sessions || a->stopping)
        return;
    const char *me = rstore_replica(cl->rs);
    size_t ml = strlen(me);
    for (int i = 0; i < n; i++) {
        if (strncmp(msgs[i], me, ml) != 0 || msgs[i][ml] != ' ')
            continue;
        struct session *s = sessions_find(a->sessions, msgs[i] + ml + 1);
        if (s && s->epoch)
            s->handoff = 1;
    }
    cluster_check(a);
}

/* ---- life -------------------------------------------------------------------- */

int cluster_open(struct app *a)
{
    const struct options *c = a->cfg;
    if (!c->store)
        return 0;
    if (c->state_dir) {
        log_msg("--store and --state-dir are exclusive: with a store, Redis is where idle "
                "sessions go");
        return -1;
    }
    struct cluster *cl = rc_calloc(1, sizeof *cl);
    if (!cl) {
        log_msg("out of memory");
        return -1;
    }
    char rid[RSTORE_REPLICA_MAX + 8];
    if (c->replica_id)
        snprintf(rid, sizeof rid, "%s", c->replica_id);
    else {
        char host[64] = "recurd";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = 0;
        snprintf(rid, sizeof rid, "%.48s-%ld", host, c->port);
    }
    struct rstore_opts ro = {
        .url = c->store,
        .replica = rid,
        .timeout_ms = (int)c->store_timeout_ms,
        .lease_ms = (uint64_t)c->lease_ms,
        .audit = c->store_audit,
        /* twice the idle TTL: a session leaves the replicas first (handed
         * off, snapshotted) and the store after, never the other way round */
        .ttl_ms = (uint64_t)(c->session_ttl * 2000),
    };
    char err[300];
    if (rstore_open(&ro, &cl->rs, err, sizeof err) != 0) {
        log_msg("%s", err);
        rc_free(cl);
        return -1;
    }
    uv_mutex_init(&cl->mu);
    a->cluster = cl;
    if (rstore_ping(cl->rs, err, sizeof err) != 0)
        log_msg("--store: %s (requests that need it get 503 until it answers)", err);
    else
        log_msg("--store: redis answers; this is replica %s", rstore_replica(cl->rs));
    rstore_thread_close(); /* the loop thread's connection: opened again at shutdown */
    return 0;
}

const char *cluster_replica(const struct app *a)
{
    return a->cluster ? rstore_replica(a->cluster->rs) : NULL;
}

void cluster_start(struct app *a)
{
    struct cluster *cl = a->cluster;
    if (!cl)
        return;
    rstore_set_model(cl->rs, a->fingerprint);
    uv_timer_init(a->loop, &cl->lease_timer);
    cl->lease_timer.data = a;
    uint64_t every = (uint64_t)a->cfg->lease_ms / 3;
    uv_timer_start(&cl->lease_timer, on_lease_timer, every, every);
    uv_async_init(a->loop, &cl->async, on_msgs);
    cl->async.data = a;
    if (uv_thread_create(&cl->thread, sub_thread, cl) == 0)
        cl->thread_started = 1;
    else
        log_msg("cannot start the handoff listener: sessions move only when leases lapse");
}

static void noop_close(uv_handle_t *h) { (void)h; }

void cluster_stop(struct app *a)
{
    struct cluster *cl = a->cluster;
    if (!cl || !a->m)
        return;
    uv_timer_stop(&cl->lease_timer);
    uv_close((uv_handle_t *)&cl->lease_timer, noop_close);
    atomic_store(&cl->stop, 1);
    if (cl->thread_started) {
        uv_thread_join(&cl->thread);
        cl->thread_started = 0;
    }
    uv_close((uv_handle_t *)&cl->async, noop_close);
}

void cluster_free(struct app *a)
{
    struct cluster *cl = a->cluster;
    if (!cl)
        return;
    rstore_thread_close();
    rstore_free(cl->rs);
    uv_mutex_destroy(&cl->mu);
    rc_free(cl);
    a->cluster = NULL;
}

size_t cluster_persist_all(struct app *a)
{
    struct cluster *cl = a->cluster;
    if (!cl || !a->sessions || !a->m)
        return 0;
    size_t ok = 0, bad = 0;
    for (struct session *s = sessions_first(a->sessions); s; s = sessions_next(s)) {
        if (!s->state || !s->epoch || s->drop)
            continue;
        struct cop op;
        memset(&op, 0, sizeof op);
        op.a = a;
        op.rs = cl->rs;
        op.kind = COP_EVICT;
        memcpy(op.sid, s->id, sizeof op.sid);
        op.epoch = s->epoch;
        op.fp = a->fingerprint;
        op.st = s->state;
        op.st_pos = s->state->pos;
        op.dirty = s->store_pos > s->snap_pos;
        cop_run(&op.io); /* blocking, on the loop thread: nothing else runs */
        if (op.res.rc == 0)
            ok++;
        else {
            bad++;
            char esc[500];
            log_msg("handing off session %s failed: %s (its log in the store still has "
                    "every acknowledged token)", s->id,
                    log_escape(esc, sizeof esc, op.res.err, strlen(op.res.err)));
        }
    }
    rstore_thread_close();
    log_msg("--store: %zu session(s) handed off%s", ok,
            bad ? "; some could not be snapshotted (see above)" : "");
    cl->handoffs[HO_DRAIN] += ok;
    return bad;
}

/* ---- /metrics ---------------------------------------------------------------- */

int cluster_metrics_render(const struct app *a, struct outbuf *o)
{
    const struct cluster *cl = a->cluster;
    if (!cl)
        return 0;
    int rc = metrics_printf(
        o, "# HELP recurd_store_restore_seconds Taking a session from the store, by phase: "
           "lease (the lease script), fetch (snapshot and log), verify (checksum, model, "
           "decode), replay (the log through the model).\n"
           "# TYPE recurd_store_restore_seconds histogram\n");
    for (int p = 0; p < N_PHASES && !rc; p++) {
        char label[32];
        snprintf(label, sizeof label, "phase=\"%s\"", phase_names[p]);
        rc = metrics_render_buckets(o, "recurd_store_restore_seconds", label, ch_bounds, CH_NB,
                                    cl->restore[p].b, cl->restore[p].sum);
    }
    if (!rc)
        rc = metrics_printf(
            o, "# HELP recurd_store_commit_seconds Committing a change to the store (queue, "
               "round trip, script), before its answer goes out.\n"
               "# TYPE recurd_store_commit_seconds histogram\n");
    if (!rc)
        rc = metrics_render_buckets(o, "recurd_store_commit_seconds", "", ch_bounds, CH_NB,
                                    cl->commit.b, cl->commit.sum);
    static const struct {
        const char *name, *help;
        size_t off;
    } counters[] = {
#define C(f) offsetof(struct cluster, f)
        {"recurd_store_restores_total", "Sessions taken from the store.", C(restores)},
        {"recurd_store_restore_failures_total",
         "Restores that failed (store down, damaged data, out of memory).", C(restore_failures)},
        {"recurd_store_commits_total", "Changes committed to the store.", C(commits)},
        {"recurd_store_commit_failures_total",
         "Commits refused or failed (the change was not acknowledged).", C(commit_failures)},
        {"recurd_store_fenced_total",
         "Writes the store refused because another replica holds the session's lease.",
         C(fenced)},
        {"recurd_store_leases_lost_total", "Leases this replica found taken over or gone.",
         C(leases_lost)},
        {"recurd_store_checkpoints_total", "Snapshots that replaced a log.", C(checkpoints)},
        {"recurd_store_errors_total", "Store calls that got no answer.", C(store_errors)},
        {"recurd_store_held_elsewhere_total",
         "Requests for a session another replica held (answered 503, handoff asked).",
         C(busy_elsewhere)},
#undef C
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0] && !rc; i++)
        rc = metrics_render_counter(o, counters[i].name, counters[i].help,
                                    *(const uint64_t *)((const char *)cl + counters[i].off));
    if (!rc)
        rc = metrics_printf(o, "# HELP recurd_store_handoffs_total Sessions this replica gave "
                               "up, by reason.\n# TYPE recurd_store_handoffs_total counter\n");
    for (int i = 0; i < N_HO && !rc; i++)
        rc = metrics_printf(o, "recurd_store_handoffs_total{reason=\"%s\"} %llu\n", ho_names[i],
                            (unsigned long long)cl->handoffs[i]);
    return rc ? RC_ENOMEM : 0;
}
