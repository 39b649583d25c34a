/*
 * h_sessions.c — the session handlers: list, create (empty, fork, from
 * a snapshot), delete; state GET/PUT; save and named snapshots.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "cluster.h"
#include "rstore.h"
#include "handlers.h"
#include "errors.h"
#include "fileio.h"
#include "jsonin.h"
#include "response.h"
#include "spill.h"
#include "state.h"

BODY_READER(session_create)
BODY_READER(save)

/* self: the job of the request answering (its own hold is not "busy"). */
static json_t *session_json(struct app *a, struct session *s, const struct job *self)
{
    uint64_t idle = now_ms(a) - s->last_used_ms, ttl = sessions_ttl_ms(a->sessions);
    struct session_view v = {
        .id = s->id,
        .position = s->busy || !s->state ? s->pos : s->state->pos,
        .state_bytes = sessions_state_size(a->sessions),
        .created = s->created,
        .expires_in = s->busy ? (double)ttl / 1000 : (double)(ttl > idle ? ttl - idle : 0) / 1000,
        .busy = (s->busy != NULL && s->busy != self) || s->io,
        .spilled = s->spilled,
    };
    /* last_used in unix seconds: now minus idle time */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    v.last_used = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 - (double)idle / 1000;
    /* created is the wall clock read at creation, idle comes from the loop's
     * cached millisecond clock (and the wall clock may step back): without
     * this a session listed right after it was made looked used before it
     * existed */
    if (v.last_used < v.created)
        v.last_used = v.created;
    return resp_session(&v);
}


/* ---- file work (named snapshots) -------------------------------------------
 * Disk I/O runs on a worker (fileio.h); the request waits suspended. If
 * the request goes away first, the op finishes and only frees itself. */


/* Snapshots belong to the key that wrote them: on disk, "<name>" when
 * auth is off, "k<owner>.<name>" otherwise. */
static void snap_file(const struct rq *q, const char *name, char *out, size_t n)
{
    if (q->owner)
        snprintf(out, n, "k%016llx.%s", (unsigned long long)q->owner, name);
    else
        snprintf(out, n, "%s", name);
}

/* Whether a listed file is the caller's: "k<owner>." + name with auth,
 * else a name without any key's prefix. */
static int file_is_callers(const struct fsop *f, const char *nm)
{
    size_t pl = strlen(f->pre);
    if (pl)
        return strncmp(nm, f->pre, pl) == 0;
    return !(nm[0] == 'k' && strchr(nm, '.') == nm + 17);
}

/* Before a save: one key holds at most --max-snapshots-per-key named
 * snapshots (a new name counts, replacing one of its own does not), and
 * the file must leave --snapshot-disk-reserve free on its disk, plus room
 * to spill every state now in memory when --state-dir is on the same
 * disk, so that named snapshots can never take the room spilling and the
 * shutdown's persisting need. Saves running at once for one key may each
 * pass the count: the overshoot is bounded by the key's requests in
 * flight. */
static int save_allowed(struct fsop *f)
{
    struct store_entry *list = NULL;
    size_t n = 0, mine = 0;
    int replacing = 0;
    int rc = store_list(f->st, &list, &n, f->err, sizeof f->err);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (!file_is_callers(f, list[i].name))
            continue;
        mine++;
        replacing |= !strcmp(list[i].name, f->file);
    }
    rc_free(list);
    if (!replacing && mine >= (size_t)f->quota) {
        return rc_fail(f->err, sizeof f->err, RC_EQUOTA,
                       "this key holds %zu named snapshots, the limit "
                       "(--max-snapshots-per-key %ld): delete one or replace one of them",
                       mine, f->quota);
    }
    uint64_t avail, dev, state_avail, state_dev, need = f->len + f->reserve;
    if (store_space(f->st, &avail, &dev) != 0)
        return rc_fail(f->err, sizeof f->err, RC_EIO, "cannot read the free space of %s",
                       store_path(f->st));
    if (f->states && store_space(f->states, &state_avail, &state_dev) == 0 && state_dev == dev)
        need += f->spill_room;
    if (avail < need)
        return rc_fail(f->err, sizeof f->err, RC_ENOSPC,
                       "not enough disk: %llu bytes free, the snapshot needs %zu and %llu "
                       "must stay free (--snapshot-disk-reserve, plus room to spill the "
                       "sessions in memory when --state-dir shares the disk)",
                       (unsigned long long)avail, f->len, (unsigned long long)(need - f->len));
    return 0;
}

/* Worker thread: the file operation itself. */
static void snapfile_run(struct fileio *io)
{
    struct fsop *f = FILEIO_OP(io, struct fsop, io);
    switch (f->kind) {
    case FS_WRITE:
        f->rc = save_allowed(f);
        if (!f->rc)
            f->rc = store_write(f->st, f->file, f->buf, f->len, f->overwrite, f->err,
                                sizeof f->err);
        break;
    case FS_READ:
        f->rc = store_read(f->st, f->file, f->max, &f->buf, &f->len, f->err, sizeof f->err);
        break;
    case FS_REMOVE:
        f->rc = store_remove(f->st, f->file, f->err, sizeof f->err);
        break;
    case FS_LIST:
        f->rc = store_list(f->st, &f->list, &f->n, f->err, sizeof f->err);
        break;
    }
}

static void snapfile_answer(struct rq *q, struct fsop *f);

/* Loop thread: answer the request, if it is still there, and free the op. */
static void snapfile_done(struct fileio *io, int cancelled)
{
    struct fsop *f = FILEIO_OP(io, struct fsop, io);
    struct rq *q = f->q;
    if (q) {
        q->fsop = NULL;
        if (cancelled) {
            f->rc = RC_ECANCELED;
            snprintf(f->err, sizeof f->err, "cancelled");
        }
        snapfile_answer(q, f);
    }
    rc_free(f->buf);
    rc_free(f->list);
    rc_free(f);
}

int snapfile_start(struct rq *q, int kind, const char *name, uint8_t *buf, size_t len)
{
    struct fsop *f = rc_calloc(1, sizeof *f);
    if (!f) {
        rc_free(buf);
        respond_oom(q->h, NULL);
        return -1;
    }
    f->a = q->a;
    f->st = q->a->snapshots;
    f->q = q;
    f->kind = kind;
    f->buf = buf;
    f->len = len;
    f->max = q->a->snap_bytes;
    f->overwrite = q->overwrite;
    if (name)
        snap_file(q, name, f->file, sizeof f->file);
    if (q->owner)
        snprintf(f->pre, sizeof f->pre, "k%016llx.", (unsigned long long)q->owner);
    f->quota = q->a->cfg->max_snapshots_per_key;
    f->reserve = q->a->cfg->snapshot_disk_reserve;
    f->states = q->a->states;
    f->spill_room = q->a->sessions ? sessions_state_bytes(q->a->sessions) : 0;
    if (fileio_queue(q->a->loop, &f->io, snapfile_run, snapfile_done) != 0) {
        rc_free(f->buf);
        rc_free(f);
        respond_err(q->h, API_INTERNAL, "cannot queue file work");
        return -1;
    }
    q->fsop = f;
    return 0;
}

static int snapshots_on(struct rq *q)
{
    if (q->a->snapshots)
        return 1;
    respond_err(q->h, API_NOT_IMPLEMENTED,
                "server-side snapshots are off: start the server with --snapshot-dir");
    return 0;
}

/* 201 for a new session, or, when the answer cannot be made, a 503 and
 * no session: a client told "out of memory" must not own one it never
 * heard of. */
static void respond_created(struct rq *q, struct session *s)
{
    size_t n;
    char loc[sizeof "/v1/sessions/" + sizeof s->id];
    snprintf(loc, sizeof loc, "/v1/sessions/%s", s->id);
    char *body = json_body(session_json(q->a, s, q->job), &n);
    if (!body || http_add_header(q->h, "Location", loc) != 0) {
        rc_free(body);
        sessions_delete(q->a->sessions, s);
        respond_oom(q->h, "building the response");
        return;
    }
    http_respond(q->h, 201, "application/json", body, n);
}

/* A new session for the caller, counted; NULL when refused (answered:
 * 429 over the key's cap, 503 with Retry-After over the server's). */
static struct session *session_new(struct rq *q)
{
    struct app *a = q->a;
    struct api_error e;
    struct session *s;
    if (sessions_new(a->sessions, q->owner, now_ms(a), &s, &e) != 0) {
        if (api_err_status(e.kind) == 503)
            http_add_header(q->h, "Retry-After", "5");
        http_respond_error(q->h, &e);
        return NULL;
    }
    a->metrics.sessions_created++;
    return s;
}

/* A job of kind that fills the new session s; NULL when out of memory
 * (answered, and s deleted: the client never heard of it). */
static struct job *session_fill_job(struct rq *q, struct session *s, int kind)
{
    struct job *j = job_new(kind);
    if (!j) {
        sessions_delete(q->a->sessions, s);
        respond_oom(q->h, NULL);
        return NULL;
    }
    j->req.state = s->state;
    j->loop.sess_a = s;
    return j;
}

/* A new session read from snapshot bytes (owned by the callee). 0 when
 * its job is submitted, -1 when answered. */
static int create_from_snapshot(struct rq *q, uint8_t *snap, size_t len)
{
    struct session *s = session_new(q);
    struct job *j = s ? session_fill_job(q, s, JOB_LOAD) : NULL;
    if (!j) {
        rc_free(snap);
        return -1;
    }
    j->req.snap = snap;
    j->req.snap_len = len;
    j->req.fingerprint = q->a->fingerprint;
    rq_submit(q, j);
    return 0;
}

/* A JSON body (or none: {}) of POST /v1/sessions: "snapshot" starts
 * reading the named snapshot, "fork_of" names the session to copy
 * (*src). 0 to go on and create the session; -1 when the request was
 * answered, waits for src's state, or reads its snapshot. */
static int session_source(struct rq *q, struct session **src)
{
    struct app *a = q->a;
    struct req_session_create r = {0};
    size_t n;
    http_body(q->h, &n);
    if (n && read_session_create(q, &r) != 0) /* an empty body means {} */
        return -1;
    int go_on = 0;
    if (r.snapshot) {
        snprintf(q->name, sizeof q->name, "%s", r.snapshot);
        if (snapshots_on(q))
            snapfile_start(q, FS_READ, q->name, NULL, 0);
        go_on = -1;
    } else if (r.fork_of) {
        snprintf(q->id, sizeof q->id, "%.32s", r.fork_of);
        struct session *s = sessions_get(a->sessions, r.fork_of, q->owner);
        if (!s && a->cluster) {
            find_session(q, r.fork_of); /* taken from the store, then this runs again */
            go_on = -1;
        } else if (!s) {
            respond_err(q->h, API_NOT_FOUND, "no session '%.40s' to fork", r.fork_of);
            go_on = -1;
        } else if (s->busy) {
            respond_err(q->h, API_SESSION_BUSY, "session '%s' is busy; fork it when idle", s->id);
            go_on = -1;
        } else if (s->spilled || s->io) {
            wait_for(q, s); /* then this runs again */
            go_on = -1;
        }
        *src = s;
    }
    req_session_create_free(&r);
    return go_on;
}

void h_sessions_post(struct rq *q)
{
    struct app *a = q->a;
    if (q->body == RQ_BODY_SNAPSHOT) {
        size_t len;
        char *snap = http_take_body(q->h, &len);
        if (create_from_snapshot(q, (uint8_t *)snap, len) == 0)
            spill_check(a);
        return;
    }
    struct session *src = NULL, *s;
    if (session_source(q, &src) != 0 || !(s = session_new(q)))
        return;
    if (!src) {
        spill_check(a); /* no job reads another session's state here */
        if (a->cluster)
            http_hold(q->h); /* the 201 goes once the store has the session */
        respond_created(q, s);
        store_commit_new_session(q, s);
        return;
    }
    struct job *j = session_fill_job(q, s, JOB_COPY);
    if (!j)
        return;
    src->last_used_ms = now_ms(a);
    j->req.src = src->state;
    j->loop.sess_b = src;
    /* Only now, with src held by the job (busy), may the new state's
     * weight spill something: before, src was the least recently used
     * idle session, the spiller's first choice, and its state would be
     * freed under the copy. */
    rq_submit(q, j);
    spill_check(a);
}


void done_session_create(struct rq *q, struct job *j)
{
    struct app *a = q->a;
    struct session *s = j->loop.sess_a;
    if (j->res.rc) {
        /* the new session never existed as far as the client knows */
        sessions_delete(a->sessions, s);
        http_respond_error(q->h, &j->res.err);
        return;
    }
    s->pos = s->state->pos;
    respond_created(q, s);
}

/* With a store: the caller's sessions on every replica. */
static void store_listed(struct app *a, struct cop *op)
{
    struct rq *q = rq_of_cop(op);
    const struct cop_result *r = cop_result(op);
    if (!q)
        return;
    if (r->rc) {
        respond_retry(q->h, "the session store is unavailable: %.300s", r->err);
        return;
    }
    json_t *data = json_array();
    int bad = !data;
    uint64_t ttl = sessions_ttl_ms(a->sessions);
    for (size_t i = 0; i < r->n_list && !bad; i++) {
        struct session *s = sessions_get(a->sessions, r->list[i].id, q->owner);
        json_t *o;
        if (s && !s->spilled)
            o = session_json(a, s, NULL);
        else {
            struct session_view v = {
                .id = r->list[i].id,
                .position = r->list[i].pos,
                .state_bytes = sessions_state_size(a->sessions),
                .created = r->list[i].created,
                .last_used = r->list[i].created,
                .expires_in = (double)ttl / 1000,
                .spilled = 1,
            };
            o = resp_session(&v);
        }
        bad |= json_array_append_new(data, o) != 0;
    }
    if (bad) {
        json_decref(data);
        data = NULL;
    }
    respond_json(q->h, 200, resp_list(data));
}

void h_sessions_list(struct rq *q)
{
    if (q->a->cluster) {
        struct cop *op = cluster_list(q->a, q->owner, store_listed, q);
        if (!op)
            respond_oom(q->h, NULL);
        q->cop = op;
        return;
    }
    json_t *data = json_array();
    int bad = !data;
    for (struct session *s = sessions_first(q->a->sessions); s && !bad; s = sessions_next(s))
        if (s->owner == q->owner)
            bad |= json_array_append_new(data, session_json(q->a, s, q->job)) != 0;
    if (bad) {
        json_decref(data);
        data = NULL;
    }
    respond_json(q->h, 200, resp_list(data));
}

static void store_deleted(struct app *a, struct cop *op)
{
    struct rq *q = rq_of_cop(op);
    const struct cop_result *r = cop_result(op);
    struct session *s = cop_session(op);
    s->io = 0;
    if (r->rc == 0) {
        sessions_delete(a->sessions, s);
        a->metrics.sessions_deleted++;
    } else
        s->drop = 1; /* whatever the store has, this copy is not to be trusted */
    if (!q)
        return;
    if (r->rc) {
        respond_retry(q->h, "the session was not deleted: %.300s", r->err);
    } else
        respond_json(q->h, 200, resp_session_deleted(q->id));
}

void h_session(struct rq *q)
{
    struct session *s = find_session(q, q->id);
    if (!s)
        return; /* answered, or taken from the store first */
    if (q->a->cluster && (s->spilled || (s->io && !s->busy))) {
        wait_for(q, s); /* on its way in or out: this runs again */
        return;
    }
    if (q->method == M_DELETE && q->a->cluster) {
        /* a running request on it is cancelled; the store forgets it under
         * this replica's lease (its late commit would be refused) */
        if (s->busy)
            sched_cancel(q->a->sched, s->busy);
        struct cop *op = cluster_delete(q->a, s, store_deleted, q);
        if (!op) {
            respond_oom(q->h, NULL);
            return;
        }
        if (!s->busy)
            s->io = 1;
        q->cop = op;
        return;
    }
    if (q->method == M_GET) {
        if (!s->busy)
            s->last_used_ms = now_ms(q->a); /* asking about it is using it */
        respond_json(q->h, 200, session_json(q->a, s, q->job));
        return;
    }
    /* DELETE: a running job is cancelled; the state goes when it ends */
    if (s->busy)
        sched_cancel(q->a->sched, s->busy);
    sessions_delete(q->a->sessions, s);
    q->a->metrics.sessions_deleted++;
    respond_json(q->h, 200, resp_session_deleted(q->id));
}

/* Encode the path's session's state as a snapshot (a JOB_SAVE): the body
 * of GET .../state, or the bytes a save writes. */
static void start_state_save(struct rq *q)
{
    struct session *s = idle_session(q);
    if (!s)
        return;
    struct job *j = job_new(JOB_SAVE);
    if (!j) {
        respond_oom(q->h, NULL);
        return;
    }
    j->req.state = s->state;
    j->loop.sess_a = s;
    j->req.fingerprint = q->a->fingerprint;
    rq_submit(q, j);
}

void h_state_get(struct rq *q) { start_state_save(q); }

void h_state_put(struct rq *q)
{
    struct session *s = idle_session(q);
    if (!s)
        return;
    struct job *j = job_new(JOB_LOAD);
    if (!j) {
        respond_oom(q->h, NULL);
        return;
    }
    if (job_state(q, j, &j->req.gen) != 0) {
        job_free(j);
        return;
    }
    j->req.snap = (uint8_t *)http_take_body(q->h, &j->req.snap_len);
    j->req.state = j->req.gen; /* read into, then committed */
    j->loop.sess_a = s;
    j->req.fingerprint = q->a->fingerprint;
    rq_submit(q, j);
}

void done_state(struct rq *q, struct job *j)
{
    if (j->res.rc) {
        http_respond_error(q->h, &j->res.err);
        return;
    }
    if (j->req.kind == JOB_SAVE) {
        char *b = (char *)j->res.snap_out;
        j->res.snap_out = NULL;
        http_add_header(q->h, "Content-Disposition", "attachment; filename=\"session.snap\"");
        http_respond(q->h, 200, "application/octet-stream", b, j->res.snap_out_len);
        return;
    }
    struct session *s = j->loop.sess_a;
    s->pos = j->req.gen->pos; /* what the answer shows */
    size_t n;
    char *body = json_body(session_json(q->a, s, q->job), &n);
    if (!body) {
        s->pos = s->state->pos;
        respond_oom(q->h, "building the response");
        return;
    }
    commit_job_state(j);
    http_respond(q->h, 200, "application/json", body, n);
}


void h_save(struct rq *q)
{
    if (!snapshots_on(q))
        return;
    struct req_save r;
    if (read_save(q, &r) != 0)
        return;
    snprintf(q->name, sizeof q->name, "%s", r.name);
    q->overwrite = r.overwrite;
    req_save_free(&r);
    start_state_save(q);
}

void h_snapshots(struct rq *q)
{
    if (snapshots_on(q))
        snapfile_start(q, FS_LIST, NULL, NULL, 0);
}

void h_snapshot(struct rq *q)
{
    struct api_error e;
    if (!snapshots_on(q))
        return;
    if (req_snapshot_name_check(q->name, q->name_len, &e) != 0) {
        http_respond_error(q->h, &e);
        return;
    }
    snapfile_start(q, q->method == M_DELETE ? FS_REMOVE : FS_READ, q->name, NULL, 0);
}

static void snapfile_answer(struct rq *q, struct fsop *f)
{
    if (f->rc) {
        int kind = f->kind == FS_WRITE ? api_err_from_write_rc(f->rc) : api_err_from_rc(f->rc);
        const char *m = f->err;
        if (f->rc == RC_EEXIST)
            m = "a snapshot of that name exists (send \"overwrite\": true to replace it)";
        respond_err(q->h, kind, "%s", m);
        return;
    }
    /* The file is written or removed: the answer must not be able to fail
     * for want of memory (a 503 would invite a retry that finds a 409 or a
     * 404). Names are [A-Za-z0-9._-]{1,128}: nothing to escape, and the
     * body fits http_respond_small's buffer. */
    char small[256];
    switch (f->kind) {
    case FS_WRITE:
        if (resp_fixed_snapshot_saved(small, sizeof small, q->name, f->len, f->position) == 0)
            http_respond_small(q->h, 201, "application/json", small);
        else
            respond_err(q->h, API_INTERNAL, "snapshot saved; its answer could not be made");
        return;
    case FS_READ:
        if (q->route == R_SNAPSHOT) {
            http_add_header(q->h, "Content-Disposition", "attachment");
            http_respond(q->h, 200, "application/octet-stream", (char *)f->buf, f->len);
        } else
            create_from_snapshot(q, f->buf, f->len);
        f->buf = NULL; /* handed on */
        return;
    case FS_REMOVE:
        if (resp_fixed_snapshot_deleted(small, sizeof small, q->name) == 0)
            http_respond_small(q->h, 200, "application/json", small);
        else
            respond_err(q->h, API_INTERNAL, "snapshot deleted; its answer could not be made");
        return;
    case FS_LIST: {
        json_t *data = json_array();
        int bad = !data;
        size_t pl = strlen(f->pre);
        for (size_t i = 0; i < f->n && !bad; i++) {
            const char *nm = f->list[i].name;
            if (!file_is_callers(f, nm))
                continue; /* another key's */
            json_t *x = resp_snapshot_entry(nm + pl, (int64_t)f->list[i].bytes,
                                            (int64_t)f->list[i].mtime);
            bad |= !x || json_array_append_new(data, x) != 0;
        }
        if (bad) {
            json_decref(data);
            data = NULL;
        }
        respond_json(q->h, 200, resp_list(data));
        return;
    }
    }
}
