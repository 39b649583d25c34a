/*
 * routes.c — the HTTP API: one handler per route, on the loop thread.
 *
 * A request that needs the model becomes a job for the compute thread;
 * its connection waits suspended (or streams) until the job's events come
 * back through routes_on_job_event(). Handlers never compute: parsing and
 * validating JSON and building responses is the most they do.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <xxhash.h>

#include "alloc.h"
#include "webui.h"
#include "app.h"
#include "codec.h"
#include "errors.h"
#include "jsonin.h"
#include "log.h"
#include "model.h"
#include "response.h"
#include "spill.h"
#include "state.h"
#include "u8.h"

enum route {
    R_HEALTH,
    R_METRICS,
    R_MODELS,
    R_TOKENIZE,
    R_DETOKENIZE,
    R_SCORE,
    R_COMPLETIONS,
    R_SESSIONS,
    R_SESSION,
    R_APPEND,
    R_GENERATE,
    R_STATE,
    R_SAVE,
    R_SNAPSHOTS,
    R_SNAPSHOT,
    R_MODEL,
    N_ROUTES
};

const char *const route_names[] = {
    "/health",     "/metrics",  "/v1/models",        "/v1/tokenize",
    "/v1/detokenize", "/v1/score", "/v1/completions", "/v1/sessions",
    "/v1/sessions/{id}", "/v1/sessions/{id}/append", "/v1/sessions/{id}/generate",
    "/v1/sessions/{id}/state", "/v1/sessions/{id}/save", "/v1/snapshots",
    "/v1/snapshots/{name}", "/v1/models/{id}",
};
const int n_route_names = N_ROUTES;

enum { M_GET = 1, M_POST = 2, M_PUT = 4, M_DELETE = 8 };

static const int route_methods[N_ROUTES] = {
    [R_HEALTH] = M_GET,          [R_METRICS] = M_GET,       [R_MODELS] = M_GET,
    [R_TOKENIZE] = M_POST,       [R_DETOKENIZE] = M_POST,   [R_SCORE] = M_POST,
    [R_COMPLETIONS] = M_POST,    [R_SESSIONS] = M_GET | M_POST,
    [R_SESSION] = M_GET | M_DELETE, [R_APPEND] = M_POST,    [R_GENERATE] = M_POST,
    [R_STATE] = M_GET | M_PUT,   [R_SAVE] = M_POST,         [R_SNAPSHOTS] = M_GET,
    [R_SNAPSHOT] = M_GET | M_DELETE, [R_MODEL] = M_GET,
};

/* Per-request context (http_data). */
struct rq {
    struct app *a;
    struct http_req *h;
    int route;                 /* enum route, or -1 */
    int method;                /* M_* */
    uint64_t owner;
    char id[SESSION_ID_LEN + 1];
    char name[160];            /* snapshot name (R_SNAPSHOT path, save, restore) */
    struct job *job;           /* running or done, until released */
    struct fsop *fsop;         /* file work in flight for it, or NULL */
    int overwrite;
    int streaming;             /* the response pulls from job->outbox */
    int stream_done;           /* the pull returned the end */
    int done_seen;             /* the job's done event was handled */
    int oom_event;             /* 1: the stream's error event could not be
                                * made; the pull sends a static one (2: sent) */
    int upload_paused;
    int binary;                /* octet-stream body (snapshot) */
    int text_upload;           /* text/plain streamed append */
    /* what the response needs besides the job */
    int want_details;
    int cmpl_logprobs;         /* -1 none */
    int cmpl_echo;
    char *echo;                /* echoed prompt text (non-stream), owned */
    size_t echo_len;
    struct rq *prev, *next;    /* app's list of requests with a job */
    struct session *waiting;   /* waiting for this session's state to be back */
    struct rq *wprev, *wnext;  /* its waiters list */
    int text_pending;          /* text/plain append waiting to start */
};

/* ---- small helpers --------------------------------------------------------- */

static uint64_t now_ms(struct app *a) { return uv_now(a->loop); }

/* o (consumed; NULL when building it failed) as compact JSON text, or
 * NULL when out of memory. For answers that must know they can be sent
 * before they change anything. */
static char *json_body(json_t *o, size_t *n)
{
    *n = 0;
    char *s = o ? pj_dump(o, n) : NULL;
    json_decref(o);
    return s;
}

static int respond_oom(struct http_req *h)
{
    struct api_error e;
    api_error_set(&e, API_OUT_OF_MEMORY, "out of memory building the response");
    return http_respond_error(h, &e);
}

static int respond_json(struct http_req *h, int status, json_t *o)
{
    size_t n;
    char *s = json_body(o, &n);
    return s ? http_respond(h, status, "application/json", s, n) : respond_oom(h);
}

static int respond_err(struct http_req *h, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int respond_err(struct http_req *h, int kind, const char *fmt, ...)
{
    struct api_error e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    e.kind = kind;
    e.param[0] = 0;
    return http_respond_error(h, &e);
}

static int random_bytes(void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom((char *)buf + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static uint64_t random_seed(void)
{
    uint64_t x = 0;
    if (random_bytes(&x, sizeof x) != 0)
        x = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;
    return x & INT64_MAX; /* reported back as a JSON integer */
}

static const char *piece_cb(const void *ctx, int32_t id, size_t *len)
{
    return codec_piece(ctx, id, len);
}

static struct vocab_view vocab(struct app *a) { return (struct vocab_view){piece_cb, a->codec}; }

static void rq_link(struct rq *q)
{
    struct app *a = q->a;
    q->prev = NULL;
    q->next = a->rqs;
    if (a->rqs)
        a->rqs->prev = q;
    a->rqs = q;
}

static void rq_unlink(struct rq *q)
{
    struct app *a = q->a;
    if (q->prev)
        q->prev->next = q->next;
    else if (a->rqs == q)
        a->rqs = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->prev = q->next = NULL;
}

/* The job is over and no request waits on it: give back what it held. */
static void job_release(struct app *a, struct job *j)
{
    if (j->sess_a)
        sessions_release(a->sessions, j->sess_a, now_ms(a));
    if (j->sess_b)
        sessions_release(a->sessions, j->sess_b, now_ms(a));
    state_free(j->tmp);
    state_free(j->gen);
    for (int i = 0; j->gens && i < j->n_choices; i++) {
        state_free(j->gens[i]);
        j->gens[i] = NULL;
    }
    for (; j->reserved > 0; j->reserved--)
        sessions_unreserve(a->sessions);
    job_free(j);
    spill_check(a);
}

/* Submit j for q; the sessions in j->sess_a/b are marked busy. */
static void submit(struct rq *q, struct job *j)
{
    j->owner = q;
    q->job = j;
    if (j->sess_a)
        ((struct session *)j->sess_a)->busy = j;
    if (j->sess_b)
        ((struct session *)j->sess_b)->busy = j;
    rq_link(q);
    sched_submit(q->a->sched, j);
}

/* A state of j's own, counted in the budget (one per job): j->tmp, the
 * state of a stateless request, or j->gen, the state a generation
 * advances. On failure the request is answered. */
static int job_state(struct rq *q, struct job *j, struct mstate **out)
{
    struct api_error e;
    if (sessions_reserve(q->a->sessions, &e) != 0) {
        http_add_header(q->h, "Retry-After", "1");
        return http_respond_error(q->h, &e), -1;
    }
    if (state_create(q->a->m, out) != 0) {
        sessions_unreserve(q->a->sessions);
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory for a temporary state");
        return -1;
    }
    j->reserved++;
    return 0;
}

static int tmp_state(struct rq *q, struct job *j)
{
    if (job_state(q, j, &j->tmp) != 0)
        return -1;
    j->state = j->tmp;
    return 0;
}

/* A job that changes a session's state (generate with commit, PUT state)
 * works on j->gen; once it ended well (and, unless streamed, its answer is
 * built) that becomes the session's state. Until then the session's state
 * is as it was, so a failed, cancelled or abandoned request changes
 * nothing. A swap: the old state leaves with the job. */
static void state_commit(struct job *j)
{
    struct session *s = j->sess_a;
    if (!j->gen || !j->commit || j->rc || !s)
        return;
    struct mstate *old = s->state;
    s->state = j->gen;
    j->gen = old;
    j->state = s->state;
}

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

/* Parse the JSON body; on failure the error is sent and NULL returned. */
static json_t *body_json(struct rq *q)
{
    size_t n;
    const char *b = http_body(q->h, &n);
    json_t *o;
    struct api_error e;
    if (pj_parse(b, n, q->a->lim.max_depth, &o, &e) != 0) {
        http_respond_error(q->h, &e);
        return NULL;
    }
    return o;
}

/* Park q until s's state is in memory (restoring it if it is on disk);
 * routes_session_ready() takes it from there. */
static void wait_for(struct rq *q, struct session *s)
{
    q->waiting = s;
    q->wprev = NULL;
    q->wnext = s->waiters;
    if (q->wnext)
        q->wnext->wprev = q;
    s->waiters = q;
    if (s->spilled && !s->io && spill_restore(q->a, s) != 0) {
        s->waiters = q->wnext;
        if (q->wnext)
            q->wnext->wprev = NULL;
        q->waiting = NULL;
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory bringing the session back");
    }
}

static void wait_cancel(struct rq *q)
{
    struct session *s = q->waiting;
    if (!s)
        return;
    if (q->wprev)
        q->wprev->wnext = q->wnext;
    else
        s->waiters = q->wnext;
    if (q->wnext)
        q->wnext->wprev = q->wprev;
    q->waiting = NULL;
}

/* The session named by the path, idle, owned by the caller, state in
 * memory. Otherwise NULL, and either an error response was sent or the
 * request waits for the state to come back from disk. */
static struct session *idle_session(struct rq *q)
{
    struct session *s = sessions_get(q->a->sessions, q->id, q->owner);
    if (!s) {
        respond_err(q->h, API_NOT_FOUND, "no session '%.40s'", q->id);
        return NULL;
    }
    if (!s->busy && (s->spilled || s->io)) {
        wait_for(q, s);
        return NULL;
    }
    if (s->busy) {
        respond_err(q->h, API_SESSION_BUSY,
                    "session '%s' is running another request; retry when it is done", s->id);
        return NULL;
    }
    s->last_used_ms = now_ms(q->a);
    return s;
}

/* ---- stream pulling ---------------------------------------------------------- */

static ssize_t pull(void *ud, struct http_req *h, char *buf, size_t max)
{
    struct rq *q = http_data(h);
    int done;
    size_t n = sched_pull(q->a->sched, q->job, buf, max, &done);
    if (n)
        return (ssize_t)n;
    if (done && q->done_seen) {
        static const char oom[] = "data: {\"type\":\"error\",\"error\":" API_OOM_ERROR_JSON
                                  "}\n\n";
        if (q->oom_event == 1 && max >= sizeof oom - 1) {
            memcpy(buf, oom, sizeof oom - 1);
            q->oom_event = 2;
            return (ssize_t)(sizeof oom - 1);
        }
        q->stream_done = 1;
        return HTTP_PULL_END;
    }
    return HTTP_PULL_NONE;
}

/* ---- file work (named snapshots) -------------------------------------------
 * Disk I/O runs on libuv's worker pool; the request waits suspended. If
 * the request goes away first, the op finishes and only frees itself. */

enum { FS_WRITE = 1, FS_READ, FS_REMOVE, FS_LIST };

struct fsop {
    uv_work_t w;
    struct app *a;
    struct store *st;
    struct rq *q;              /* NULL once the request is gone */
    int kind;
    char file[200];            /* on-disk name */
    uint8_t *buf;              /* write: owned; read: result, owned */
    size_t len, max;
    int overwrite;
    int64_t position;
    int rc;
    char err[384];
    struct store_entry *list;
    size_t n;
    const char *prefix;        /* owner prefix for listing */
    char pre[24];
    /* a save's limits (read on the loop, applied by the worker) */
    long quota;                /* --max-snapshots-per-key */
    uint64_t reserve;          /* --snapshot-disk-reserve */
    struct store *states;      /* --state-dir, or NULL */
    uint64_t spill_room;       /* bytes to spill the states now in memory */
    int quota_hit;
};

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
        f->quota_hit = 1;
        return rc_fail(f->err, sizeof f->err, RC_ERANGE,
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
        return rc_fail(f->err, sizeof f->err, RC_EIO,
                       "not enough disk: %llu bytes free, the snapshot needs %zu and %llu "
                       "must stay free (--snapshot-disk-reserve, plus room to spill the "
                       "sessions in memory when --state-dir shares the disk)",
                       (unsigned long long)avail, f->len, (unsigned long long)(need - f->len));
    return 0;
}

static void fs_work(uv_work_t *w)
{
    struct fsop *f = w->data;
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

static void fs_done(struct rq *q, struct fsop *f);

static void fs_after(uv_work_t *w, int status)
{
    struct fsop *f = w->data;
    struct rq *q = f->q;
    if (q) {
        q->fsop = NULL;
        if (status == UV_ECANCELED) {
            f->rc = RC_ECANCELED;
            snprintf(f->err, sizeof f->err, "cancelled");
        }
        fs_done(q, f);
    }
    rc_free(f->buf);
    rc_free(f->list);
    rc_free(f);
}

static int fs_start(struct rq *q, int kind, const char *name, uint8_t *buf, size_t len)
{
    struct fsop *f = rc_calloc(1, sizeof *f);
    if (!f) {
        rc_free(buf);
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
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
    f->w.data = f;
    if (uv_queue_work(q->a->loop, &f->w, fs_work, fs_after) != 0) {
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

/* ---- route handlers ------------------------------------------------------------ */

static void h_health(struct rq *q)
{
    struct app *a = q->a;
    const char *st = a->state == APP_READY ? "ok" : a->state == APP_LOADING ? "loading"
                                                   : a->state == APP_DRAINING ? "draining"
                                                                              : "failed";
    json_t *o = json_pack("{s:s}", "status", st);
    respond_json(q->h, a->state == APP_READY ? 200 : 503, o);
}

static void h_metrics(struct rq *q)
{
    struct app *a = q->a;
    struct metrics_gauges g;
    char fp[17];
    metrics_gather(a, &g, fp);
    struct outbuf o = {0};
    if (metrics_render(&a->metrics, &g, &o) != 0) {
        outbuf_free(&o);
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    http_respond(q->h, 200, "text/plain; version=0.0.4", o.p, o.n);
}

static void model_facts(struct app *a, struct model_view *v)
{
    const struct model_config *c = a->mc;
    *v = (struct model_view){
        .id = a->model_name,
        .arch = c->arch == MODEL_MAMBA2 ? "mamba2" : "mamba",
        .d_model = c->d_model,
        .n_layer = c->n_layer,
        .vocab_size = c->vocab_size,
        .d_state = c->d_state,
        .d_inner = c->d_inner,
        .state_bytes = state_bytes(a->m),
        .snapshot_bytes = a->snap_bytes,
        .fingerprint = a->fingerprint,
        .n_params = model_n_params(a->m),
        .tokenizer = codec_kind(a->codec),
        .created = a->started_unix,
        .training_context = c->training_context,
    };
}

static void h_models(struct rq *q)
{
    struct model_view v;
    model_facts(q->a, &v);
    respond_json(q->h, 200, resp_models(&v));
}

/* GET /v1/models/{id} (OpenAI's models.retrieve): the one model we serve,
 * under the id /v1/models lists; any other id is a 404. */
static void h_model(struct rq *q)
{
    struct model_view v;
    model_facts(q->a, &v);
    if (!q->name[0] || strcmp(q->name, v.id) != 0) {
        char esc[96];
        respond_err(q->h, API_NOT_FOUND, "no model '%s' (this server serves '%.100s')",
                    log_escape(esc, sizeof esc, q->name, strlen(q->name)), v.id);
        return;
    }
    respond_json(q->h, 200, resp_model(&v));
}

static void h_tokenize(struct rq *q)
{
    json_t *o = body_json(q);
    if (!o)
        return;
    struct req_tokenize r;
    struct api_error e;
    int rc = req_tokenize_parse(o, &q->a->lim, &r, &e);
    json_decref(o);
    if (rc) {
        req_tokenize_free(&r);
        http_respond_error(q->h, &e);
        return;
    }
    struct job *j = job_new(JOB_TOKENIZE);
    if (!j) {
        req_tokenize_free(&r);
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    j->text = r.text;
    j->text_len = r.text_len;
    r.text = NULL;
    j->want_details = r.with_pieces;
    j->detail_limit = (size_t)q->a->cfg->detail_limit;
    submit(q, j);
}

static void done_tokenize(struct rq *q, struct job *j)
{
    /* the compute thread wrote the body (resp_tokenize) */
    char *body = j->out_text.p;
    size_t n = j->out_text.n;
    memset(&j->out_text, 0, sizeof j->out_text);
    if (!body) {
        respond_oom(q->h);
        return;
    }
    http_respond(q->h, 200, "application/json", body, n);
}

static void h_detokenize(struct rq *q)
{
    json_t *o = body_json(q);
    if (!o)
        return;
    struct req_detokenize r;
    struct api_error e;
    int rc = req_detokenize_parse(o, &q->a->lim, &r, &e);
    json_decref(o);
    if (rc) {
        http_respond_error(q->h, &e);
        return;
    }
    /* Decoding is concatenating pieces: a copy, not compute. */
    struct outbuf b = {0};
    for (size_t i = 0; i < r.n_tokens && !rc; i++) {
        size_t len;
        const char *p = codec_piece(q->a->codec, r.tokens[i], &len);
        rc = outbuf_put(&b, p, len);
    }
    req_detokenize_free(&r);
    json_t *res = NULL;
    if (!rc) {
        size_t need = u8_sanitized_len(b.p ? b.p : "", b.n);
        char *s = rc_malloc(need + 1);
        if (s) {
            u8_sanitize(b.p ? b.p : "", b.n, s, need + 1);
            res = json_object();
            if (res && json_object_set_new(res, "text", json_stringn(s, need))) {
                json_decref(res);
                res = NULL;
            }
            if (res && !u8_valid(b.p ? b.p : "", b.n) &&
                json_object_set_new(res, "valid_utf8", json_false())) {
                json_decref(res);
                res = NULL;
            }
            rc_free(s);
        }
    }
    outbuf_free(&b);
    respond_json(q->h, 200, res);
}

/* Fill a RUN job's input from a parsed req_input (moves the buffers). */
static void take_input(struct job *j, struct req_input *in)
{
    j->text = in->text;
    j->text_len = in->text_len;
    j->ids = in->tokens;
    j->n_ids = in->n_tokens;
    in->text = NULL;
    in->tokens = NULL;
}

static void score_job(struct rq *q, struct job *j, const struct req_score *r)
{
    j->score = 1;
    j->want_details = r->logprobs;
    j->top_k = r->top_logprobs;
    j->detail_limit = (size_t)q->a->cfg->detail_limit;
    q->want_details = r->logprobs;
}

static void h_score(struct rq *q, int with_session)
{
    json_t *o = body_json(q);
    if (!o)
        return;
    struct req_score r;
    struct api_error e;
    int rc = req_score_parse(o, &q->a->lim, &r, &e);
    json_decref(o);
    if (rc) {
        http_respond_error(q->h, &e);
        return;
    }
    struct session *s = NULL;
    if (with_session && !(s = idle_session(q))) {
        req_score_free(&r);
        return;
    }
    struct job *j = job_new(JOB_RUN);
    if (!j) {
        req_score_free(&r);
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    take_input(j, &r.in);
    score_job(q, j, &r);
    req_score_free(&r);
    if (s) {
        j->state = s->state;
        j->sess_a = s;
    } else if (tmp_state(q, j) != 0) {
        job_free(j);
        return;
    }
    submit(q, j);
}

static void done_score(struct rq *q, struct job *j)
{
    struct vocab_view v = vocab(q->a);
    struct score_view sv = {
        .position = j->position,
        .n_tokens = j->n_input,
        .st = &j->stats,
        .d = q->want_details ? &j->in_rows : NULL,
        .truncated = j->in_truncated,
    };
    size_t n;
    char *s = json_body(resp_score(&sv, &v), &n);
    if (s) {
        http_respond(q->h, 200, "application/json", s, n);
        return;
    }
    if (q->route != R_APPEND) {
        respond_oom(q->h); /* nothing was changed */
        return;
    }
    /* the text is in the session already: say so, in the little we can */
    char small[200];
    snprintf(small, sizeof small,
             "{\"position\":%" PRId64 ",\"n_tokens\":%d,\"note\":\"appended; out of memory "
             "for the rest of the response\"}",
             (int64_t)j->position, (int)j->n_input);
    http_respond_small(q->h, 200, "application/json", small);
}

/* Copy stop sequences into the job. */
static int take_stop(struct job *j, struct req_stop *st)
{
    j->stop = st->s;
    j->stop_len = st->len;
    j->n_stop = st->n;
    memset(st, 0, sizeof *st);
    return 0;
}

static void h_generate(struct rq *q)
{
    json_t *o = body_json(q);
    if (!o)
        return;
    struct req_generate r;
    struct api_error e;
    int rc = req_generate_parse(o, &q->a->lim, &r, &e);
    json_decref(o);
    if (rc) {
        req_generate_free(&r);
        http_respond_error(q->h, &e);
        return;
    }
    struct session *s = idle_session(q);
    if (!s) {
        req_generate_free(&r);
        return;
    }
    if (s->state->pos == 0) {
        req_generate_free(&r);
        respond_err(q->h, API_INVALID_REQUEST,
                    "session '%s' has read no tokens yet: append some text first", s->id);
        return;
    }
    struct job *j = job_new(JOB_RUN);
    if (!j) {
        req_generate_free(&r);
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    j->state = s->state;
    j->sess_a = s;
    j->gen_max = r.max_tokens;
    j->sp = r.sp;
    j->seed = r.has_seed ? r.seed : random_seed();
    take_stop(j, &r.stop);
    j->commit = r.commit;
    j->ignore_eos = r.ignore_eos;
    j->gen_details = r.logprobs;
    j->top_k = r.top_logprobs;
    j->detail_limit = (size_t)q->a->cfg->detail_limit;
    j->stream = r.stream ? STREAM_SESSION : STREAM_NONE;
    q->want_details = r.logprobs;
    req_generate_free(&r);
    if (job_state(q, j, &j->gen) != 0) {
        job_free(j);
        return;
    }
    submit(q, j);
    if (j->stream) {
        q->streaming = 1;
        http_respond_stream(q->h, 200, "text/event-stream", pull);
    }
}

static void done_generate(struct rq *q, struct job *j)
{
    struct vocab_view v = vocab(q->a);
    struct gen_view g = {
        .text = j->out_text.p,
        .text_len = j->out_text.n,
        .ids = j->out_ids.v,
        .n_ids = j->out_ids.n,
        .finish_reason = j->finish,
        .position = j->position,
        .seed = j->seed,
        .committed = j->commit,
        .d = q->want_details ? &j->out_rows : NULL,
        .truncated = j->out_truncated,
    };
    size_t n;
    char *body = json_body(resp_generate(&g, &v), &n);
    if (!body) {
        respond_oom(q->h); /* nothing committed: the session is as it was */
        return;
    }
    state_commit(j);
    http_respond(q->h, 200, "application/json", body, n);
}


/* system_fingerprint: "fp_" and 16 hex digits of a hash of the build's
 * version and the model's fingerprint — the same for every answer of one
 * build serving one model, and different when either changes (what
 * OpenAI's field is for: the backend that made the answer). */
static void system_fingerprint(const struct app *a, char out[24])
{
    char fp[17];
    hex64(XXH3_64bits_withSeed(RECUR_VERSION, strlen(RECUR_VERSION), a->fingerprint), fp);
    snprintf(out, 24, "fp_%s", fp);
}

static void h_completions(struct rq *q)
{
    struct app *a = q->a;
    json_t *o = body_json(q);
    if (!o)
        return;
    struct req_completion r;
    struct api_error e;
    int rc = req_completion_parse(o, &a->lim, &r, &e);
    json_decref(o);
    if (rc) {
        req_completion_free(&r);
        http_respond_error(q->h, &e);
        return;
    }
    struct job *j = job_new(JOB_RUN);
    if (!j) {
        req_completion_free(&r);
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    /* An empty prompt: a recurrent model's zero state has made no
     * prediction yet, so something must be read first. Like HF's
     * generate() for these models (bos = eos = <|endoftext|>), that is the
     * end-of-text token: the start of a new document. It counts in
     * usage.prompt_tokens (the model read it), it is not echoed or scored. */
    int empty = !r.prompt.text && !r.prompt.tokens;
    if (empty) {
        int32_t eos = codec_eos(a->codec);
        if (eos < 0) {
            req_completion_free(&r);
            job_free(j);
            respond_err(q->h, API_INVALID_REQUEST,
                        "field 'prompt' is empty and this model's tokenizer has no end-of-text "
                        "token to start from: send at least one token");
            return;
        }
        if (!(r.prompt.tokens = rc_malloc(sizeof *r.prompt.tokens))) {
            req_completion_free(&r);
            job_free(j);
            respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
            return;
        }
        r.prompt.tokens[0] = eos;
        r.prompt.n_tokens = 1;
    }
    /* the echoed prompt: the text as sent, or the ids' pieces */
    struct outbuf echo = {0};
    int oom = 0;
    if (r.echo && !empty) {
        if (r.prompt.text)
            oom = outbuf_put(&echo, r.prompt.text, r.prompt.text_len) != 0;
        for (size_t i = 0; !oom && r.prompt.tokens && i < r.prompt.n_tokens; i++) {
            size_t len;
            const char *p = codec_piece(a->codec, r.prompt.tokens[i], &len);
            oom = outbuf_put(&echo, p, len) != 0;
        }
    }
    unsigned char rnd[12];
    char idbuf[40] = "cmpl-";
    if (random_bytes(rnd, sizeof rnd) == 0)
        for (size_t i = 0; i < sizeof rnd; i++)
            snprintf(idbuf + 5 + 2 * i, 3, "%02x", rnd[i]);
    j->cmpl_id = rc_strdup(idbuf);
    j->model_name = rc_strdup(r.model ? r.model : a->model_name); /* echoed as sent */
    if (r.n > 1 && (!(j->choices = rc_calloc((size_t)r.n, sizeof *j->choices)) ||
                    !(j->gens = rc_calloc((size_t)r.n, sizeof *j->gens))))
        oom = 1;
    j->n_choices = r.n;
    if (oom || !j->cmpl_id || !j->model_name) {
        outbuf_free(&echo);
        req_completion_free(&r);
        job_free(j);
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    take_input(j, &r.prompt);
    j->created = (int64_t)time(NULL);
    system_fingerprint(a, j->sys_fp);
    j->include_usage = r.include_usage;
    j->score = r.echo && r.logprobs >= 0 && !empty;
    j->want_details = j->score;
    j->top_k = r.logprobs > 0 ? r.logprobs : 0;
    /* the limit is per response: n choices share it (each repeats the
     * echoed prompt's rows) */
    j->detail_limit = (size_t)a->cfg->detail_limit / (size_t)(r.n > 1 ? r.n : 1);
    j->gen_max = r.max_tokens;
    j->sp = r.sp;
    j->seed = r.has_seed ? r.seed : random_seed();
    take_stop(j, &r.stop);
    j->gen_details = r.logprobs >= 0;
    j->stream = r.stream ? STREAM_OPENAI : STREAM_NONE;
    q->cmpl_logprobs = r.logprobs;
    q->cmpl_echo = r.echo;
    if (j->stream) {
        j->echo = echo.p;
        j->echo_len = echo.n;
    } else {
        q->echo = echo.p;
        q->echo_len = echo.n;
    }
    req_completion_free(&r);
    if (tmp_state(q, j) != 0) {
        job_free(j);
        return;
    }
    /* n > 1: the prompt is read once into tmp; choice i generates in
     * gens[i] from a copy of it (n more states, counted like tmp) */
    for (int i = 0; j->n_choices > 1 && i < j->n_choices; i++)
        if (job_state(q, j, &j->gens[i]) != 0) {
            job_release(a, j); /* the states made so far and their reservations */
            return;
        }
    submit(q, j);
    if (j->stream) {
        q->streaming = 1;
        http_respond_stream(q->h, 200, "text/event-stream", pull);
    }
}

static void done_completions(struct rq *q, struct job *j)
{
    struct vocab_view v = vocab(q->a);
    /* one choice: the results are in j->out_*; n > 1: in j->choices */
    size_t n = j->n_choices > 1 ? (size_t)j->n_choices : 1;
    struct choice_out one = {.ids = j->out_ids, .text = j->out_text, .rows = j->out_rows,
                             .rows_truncated = j->out_truncated, .finish = j->finish};
    const struct choice_out *src = j->n_choices > 1 ? j->choices : &one;
    struct outbuf *text = rc_calloc(n, sizeof *text);
    struct tok_details *all = rc_calloc(n, sizeof *all);
    struct completion_choice *ch = rc_calloc(n, sizeof *ch);
    int64_t generated = 0;
    int oom = !text || !all || !ch;
    for (size_t c = 0; c < n && !oom; c++) {
        const struct choice_out *x = &src[c];
        tok_details_init(&all[c], j->top_k);
        oom = outbuf_put(&text[c], q->echo ? q->echo : "", q->echo_len) ||
              outbuf_put(&text[c], x->text.p ? x->text.p : "", x->text.n);
        if (q->cmpl_logprobs >= 0) {
            /* echo: the prompt's rows first (the first has no logprob) */
            const struct tok_details *parts[2] = {q->cmpl_echo ? &j->in_rows : NULL, &x->rows};
            for (int p = 0; p < 2 && !oom; p++)
                for (size_t i = 0; parts[p] && i < parts[p]->n && !oom; i++)
                    oom = tok_details_push(&all[c], parts[p]->pos[i], parts[p]->id[i],
                                           parts[p]->lp[i],
                                           parts[p]->top_id + i * (size_t)parts[p]->k,
                                           parts[p]->top_lp + i * (size_t)parts[p]->k) != 0;
        }
        generated += (int64_t)x->ids.n;
        ch[c] = (struct completion_choice){
            .text = text[c].p,
            .text_len = text[c].n,
            .finish_reason = x->finish && !strcmp(x->finish, "eos") ? "stop" : x->finish,
            .d = q->cmpl_logprobs >= 0 ? &all[c] : NULL,
            .text_offset0 = q->cmpl_echo ? 0 : q->echo_len,
            .truncated = q->cmpl_logprobs >= 0 &&
                         (x->rows_truncated || (q->cmpl_echo && j->in_truncated)),
        };
    }
    json_t *o = NULL;
    if (!oom) {
        char fp[24];
        system_fingerprint(q->a, fp);
        struct completion_view cv = {
            .id = j->cmpl_id,
            .created = j->created,
            .model = j->model_name,
            .system_fingerprint = fp,
            .ch = ch,
            .n_ch = n,
            .prompt_tokens = j->n_input,
            .completion_tokens = generated,
            .with_usage = 1,
        };
        o = resp_completion(&cv, &v);
    }
    for (size_t c = 0; c < n; c++) {
        if (all)
            tok_details_free(&all[c]);
        if (text)
            outbuf_free(&text[c]);
    }
    rc_free(all);
    rc_free(text);
    rc_free(ch);
    respond_json(q->h, 200, o);
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
        respond_oom(q->h);
        return;
    }
    http_respond(q->h, 201, "application/json", body, n);
}

static void h_sessions_post(struct rq *q)
{
    struct app *a = q->a;
    struct api_error e;
    struct session *src = NULL, *s;
    struct req_session_create r = {0};
    size_t snap_len = 0;
    char *snap = NULL;
    if (q->binary) {
        snap = http_take_body(q->h, &snap_len);
    } else {
        json_t *o = NULL;
        size_t n;
        http_body(q->h, &n);
        if (n) { /* an empty body means {} */
            if (!(o = body_json(q)))
                return;
            int rc = req_session_create_parse(o, &a->lim, &r, &e);
            json_decref(o);
            if (rc) {
                http_respond_error(q->h, &e);
                return;
            }
        }
        if (r.snapshot) {
            snprintf(q->name, sizeof q->name, "%s", r.snapshot);
            req_session_create_free(&r);
            if (snapshots_on(q))
                fs_start(q, FS_READ, q->name, NULL, 0);
            return;
        }
        if (r.fork_of) {
            snprintf(q->id, sizeof q->id, "%.32s", r.fork_of);
            src = sessions_get(a->sessions, r.fork_of, q->owner);
            if (!src) {
                respond_err(q->h, API_NOT_FOUND, "no session '%.40s' to fork", r.fork_of);
                req_session_create_free(&r);
                return;
            }
            if (src->busy) {
                respond_err(q->h, API_SESSION_BUSY, "session '%s' is busy; fork it when idle",
                            src->id);
                req_session_create_free(&r);
                return;
            }
            if (src->spilled || src->io) {
                req_session_create_free(&r);
                wait_for(q, src); /* then this runs again */
                return;
            }
        }
        req_session_create_free(&r);
    }
    if (sessions_new(a->sessions, q->owner, now_ms(a), &s, &e) != 0) {
        rc_free(snap);
        if (api_err_status(e.kind) == 503)
            http_add_header(q->h, "Retry-After", "5");
        http_respond_error(q->h, &e);
        return;
    }
    a->metrics.sessions_created++;
    if (!src && !snap) {
        spill_check(a); /* no job reads another session's state here */
        respond_created(q, s);
        return;
    }
    struct job *j = job_new(src ? JOB_COPY : JOB_LOAD);
    if (!j) {
        rc_free(snap);
        sessions_delete(a->sessions, s);
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    j->state = s->state;
    j->sess_a = s;
    if (src) {
        src->last_used_ms = now_ms(a);
        j->src = src->state;
        j->sess_b = src;
    } else {
        j->snap = (uint8_t *)snap;
        j->snap_len = snap_len;
        j->fingerprint = a->fingerprint;
    }
    /* Only now, with src held by the job (busy), may the new state's
     * weight spill something: before, src was the least recently used
     * idle session, the spiller's first choice, and its state would be
     * freed under the copy. */
    submit(q, j);
    spill_check(a);
}

/* A new session read from snapshot bytes (owned by the callee). */
static void create_from_snapshot(struct rq *q, uint8_t *snap, size_t len)
{
    struct app *a = q->a;
    struct api_error e;
    struct session *s;
    if (sessions_new(a->sessions, q->owner, now_ms(a), &s, &e) != 0) {
        rc_free(snap);
        if (api_err_status(e.kind) == 503)
            http_add_header(q->h, "Retry-After", "5");
        http_respond_error(q->h, &e);
        return;
    }
    a->metrics.sessions_created++;
    struct job *j = job_new(JOB_LOAD);
    if (!j) {
        rc_free(snap);
        sessions_delete(a->sessions, s);
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    j->state = s->state;
    j->sess_a = s;
    j->snap = snap;
    j->snap_len = len;
    j->fingerprint = a->fingerprint;
    submit(q, j);
}

static void done_session_create(struct rq *q, struct job *j)
{
    struct app *a = q->a;
    struct session *s = j->sess_a;
    if (j->rc) {
        /* the new session never existed as far as the client knows */
        sessions_delete(a->sessions, s);
        http_respond_error(q->h, &j->err);
        return;
    }
    s->pos = s->state->pos;
    respond_created(q, s);
}

static void h_sessions_list(struct rq *q)
{
    json_t *o = json_object(), *data = json_array();
    int bad = !o || !data;
    for (struct session *s = sessions_first(q->a->sessions); s && !bad; s = sessions_next(s))
        if (s->owner == q->owner)
            bad |= json_array_append_new(data, session_json(q->a, s, q->job)) != 0;
    if (!bad) {
        /* two statements: set_new consumes data even when it fails, and
         * only if it is called */
        bad |= json_object_set_new(o, "object", json_string("list")) != 0;
        bad |= json_object_set_new(o, "data", data) != 0;
    } else
        json_decref(data);
    if (bad) {
        json_decref(o);
        o = NULL;
    }
    respond_json(q->h, 200, o);
}

static void h_session(struct rq *q)
{
    struct session *s = sessions_get(q->a->sessions, q->id, q->owner);
    if (!s) {
        respond_err(q->h, API_NOT_FOUND, "no session '%.40s'", q->id);
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
    respond_json(q->h, 200, json_pack("{s:s,s:b}", "id", q->id, "deleted", 1));
}

static void h_state_get(struct rq *q)
{
    struct session *s = idle_session(q);
    if (!s)
        return;
    struct job *j = job_new(JOB_SAVE);
    if (!j) {
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    j->state = s->state;
    j->sess_a = s;
    j->fingerprint = q->a->fingerprint;
    submit(q, j);
}

static void h_state_put(struct rq *q)
{
    struct session *s = idle_session(q);
    if (!s)
        return;
    struct job *j = job_new(JOB_LOAD);
    if (!j) {
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    if (job_state(q, j, &j->gen) != 0) {
        job_free(j);
        return;
    }
    j->snap = (uint8_t *)http_take_body(q->h, &j->snap_len);
    j->state = j->gen; /* read into, then committed */
    j->sess_a = s;
    j->fingerprint = q->a->fingerprint;
    submit(q, j);
}

static void done_state(struct rq *q, struct job *j)
{
    if (j->rc) {
        http_respond_error(q->h, &j->err);
        return;
    }
    if (j->kind == JOB_SAVE) {
        char *b = (char *)j->snap_out;
        j->snap_out = NULL;
        http_add_header(q->h, "Content-Disposition", "attachment; filename=\"session.snap\"");
        http_respond(q->h, 200, "application/octet-stream", b, j->snap_out_len);
        return;
    }
    struct session *s = j->sess_a;
    s->pos = j->gen->pos; /* what the answer shows */
    size_t n;
    char *body = json_body(session_json(q->a, s, q->job), &n);
    if (!body) {
        s->pos = s->state->pos;
        respond_oom(q->h);
        return;
    }
    state_commit(j);
    http_respond(q->h, 200, "application/json", body, n);
}


static void h_save(struct rq *q)
{
    if (!snapshots_on(q))
        return;
    json_t *o = body_json(q);
    if (!o)
        return;
    struct req_save r;
    struct api_error e;
    int rc = req_save_parse(o, &q->a->lim, &r, &e);
    json_decref(o);
    if (rc) {
        req_save_free(&r);
        http_respond_error(q->h, &e);
        return;
    }
    snprintf(q->name, sizeof q->name, "%s", r.name);
    q->overwrite = r.overwrite;
    req_save_free(&r);
    struct session *s = idle_session(q);
    if (!s)
        return;
    struct job *j = job_new(JOB_SAVE);
    if (!j) {
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return;
    }
    j->state = s->state;
    j->sess_a = s;
    j->fingerprint = q->a->fingerprint;
    submit(q, j);
}

static void h_snapshots(struct rq *q)
{
    if (snapshots_on(q))
        fs_start(q, FS_LIST, NULL, NULL, 0);
}

static void h_snapshot(struct rq *q)
{
    struct api_error e;
    if (!snapshots_on(q))
        return;
    if (req_snapshot_name_check(q->name, strlen(q->name), &e) != 0) {
        http_respond_error(q->h, &e);
        return;
    }
    fs_start(q, q->method == M_DELETE ? FS_REMOVE : FS_READ, q->name, NULL, 0);
}

static void fs_done(struct rq *q, struct fsop *f)
{
    if (f->rc) {
        int kind = f->quota_hit           ? API_SNAPSHOT_QUOTA
                   : f->rc == RC_EINVAL     ? API_NOT_FOUND
                   : f->rc == RC_EMISMATCH ? API_CONFLICT
                   : f->rc == RC_ERANGE    ? API_INVALID_SNAPSHOT
                   : f->rc == RC_ENOMEM    ? API_OUT_OF_MEMORY
                   : f->kind == FS_WRITE   ? API_SNAPSHOT_WRITE
                                           : API_INTERNAL;
        const char *m = f->err;
        if (f->rc == RC_EMISMATCH && !strstr(f->err, "not a snapshot file"))
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
        snprintf(small, sizeof small, "{\"name\":\"%s\",\"bytes\":%zu,\"position\":%" PRId64 "}",
                 q->name, f->len, f->position);
        http_respond_small(q->h, 201, "application/json", small);
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
        snprintf(small, sizeof small, "{\"name\":\"%s\",\"deleted\":true}", q->name);
        http_respond_small(q->h, 200, "application/json", small);
        return;
    case FS_LIST: {
        json_t *o = json_object(), *data = json_array();
        int bad = !o || !data;
        size_t pl = strlen(f->pre);
        for (size_t i = 0; i < f->n && !bad; i++) {
            const char *nm = f->list[i].name;
            if (!file_is_callers(f, nm))
                continue; /* another key's */
            json_t *x = json_pack("{s:s,s:I,s:I}", "name", nm + pl, "bytes",
                                  (json_int_t)f->list[i].bytes, "created",
                                  (json_int_t)f->list[i].mtime);
            bad |= !x || json_array_append_new(data, x) != 0;
        }
        if (!bad) {
            bad |= json_object_set_new(o, "object", json_string("list")) != 0;
            bad |= json_object_set_new(o, "data", data) != 0; /* consumes data */
        } else
            json_decref(data);
        if (bad) {
            json_decref(o);
            o = NULL;
        }
        respond_json(q->h, 200, o);
        return;
    }
    }
}

/* ---- streamed text/plain append ------------------------------------------------ */

static int start_text_append(struct rq *q)
{
    struct app *a = q->a;
    struct req_score r;
    struct api_error e;
    if (req_score_query(http_query(q->h, "logprobs"), http_query(q->h, "top_logprobs"), &a->lim,
                        &r, &e) != 0) {
        http_respond_error(q->h, &e);
        return -1;
    }
    struct session *s = idle_session(q);
    if (!s) {
        if (q->waiting) {
            q->text_pending = 1; /* the upload waits, paused, for the state */
            return 0;
        }
        return -1;
    }
    q->text_pending = 0;
    struct job *j = job_new(JOB_RUN);
    if (!j) {
        respond_err(q->h, API_OUT_OF_MEMORY, "out of memory");
        return -1;
    }
    j->streamed = 1;
    score_job(q, j, &r);
    j->state = s->state;
    j->sess_a = s;
    q->text_upload = 1;
    submit(q, j);
    return 0;
}

static size_t on_data(void *ud, struct http_req *h, const char *data, size_t n)
{
    struct rq *q = http_data(h);
    if (q && q->text_pending) {
        http_pause_upload(h); /* nothing taken until the state is back */
        return 0;
    }
    if (!q || !q->job)
        return n;
    size_t have = sched_feed(q->a->sched, q->job, data, n, 0);
    if (have >= q->a->cfg->upload_buffer_bytes) {
        /* backpressure: the compute thread wakes us when it has taken it */
        q->upload_paused = 1;
        http_pause_upload(h);
    }
    return n;
}

/* ---- dispatch ---------------------------------------------------------------------- */

static int match_route(const char *path, char *id, size_t idlen, char *name, size_t nlen)
{
    static const struct {
        const char *p;
        int r;
    } fixed[] = {
        {"/health", R_HEALTH},         {"/metrics", R_METRICS},
        {"/v1/models", R_MODELS},      {"/v1/tokenize", R_TOKENIZE},
        {"/v1/detokenize", R_DETOKENIZE}, {"/v1/score", R_SCORE},
        {"/v1/completions", R_COMPLETIONS}, {"/v1/sessions", R_SESSIONS},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (!strcmp(path, fixed[i].p))
            return fixed[i].r;
    static const char models[] = "/v1/models/";
    if (!strncmp(path, models, sizeof models - 1)) {
        /* any id: one that is not the served model's is a 404 (h_model);
         * one too long for the buffer cannot be it */
        size_t n = strlen(path + sizeof models - 1);
        if (n < nlen)
            memcpy(name, path + sizeof models - 1, n + 1);
        else
            name[0] = 0;
        return R_MODEL;
    }
    static const char snaps[] = "/v1/snapshots/";
    if (!strcmp(path, "/v1/snapshots"))
        return R_SNAPSHOTS;
    if (!strncmp(path, snaps, sizeof snaps - 1)) {
        size_t n = strlen(path + sizeof snaps - 1);
        if (n == 0 || n >= nlen)
            return n ? R_SNAPSHOT : -1; /* too long: the name check rejects it */
        memcpy(name, path + sizeof snaps - 1, n + 1);
        return R_SNAPSHOT;
    }
    static const char pre[] = "/v1/sessions/";
    if (strncmp(path, pre, sizeof pre - 1) != 0)
        return -1;
    const char *p = path + sizeof pre - 1, *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || n >= idlen)
        return -1;
    memcpy(id, p, n);
    id[n] = 0;
    if (!slash)
        return R_SESSION;
    if (!strcmp(slash, "/append"))
        return R_APPEND;
    if (!strcmp(slash, "/generate"))
        return R_GENERATE;
    if (!strcmp(slash, "/state"))
        return R_STATE;
    if (!strcmp(slash, "/save"))
        return R_SAVE;
    return -1;
}

static int method_bit(const char *m)
{
    if (!strcmp(m, "GET") || !strcmp(m, "HEAD"))
        return M_GET;
    if (!strcmp(m, "POST"))
        return M_POST;
    if (!strcmp(m, "PUT"))
        return M_PUT;
    if (!strcmp(m, "DELETE"))
        return M_DELETE;
    return 0;
}

/* Constant-time in the presented key: every configured key is compared
 * over its full length whatever the input, so timing reveals neither
 * which key nor how much of one matched. */
static int auth_owner(struct app *a, struct http_req *h, uint64_t *owner)
{
    const struct options *c = a->cfg;
    *owner = 0;
    if (c->n_api_keys == 0)
        return 0;
    const char *v = http_header(h, "Authorization");
    if (!v || strncasecmp(v, "Bearer ", 7) != 0)
        return -1;
    const char *k = v + 7;
    size_t kl = strlen(k);
    int found = -1;
    for (int i = 0; i < c->n_api_keys; i++) {
        const char *want = c->api_keys[i];
        size_t wl = strlen(want);
        unsigned diff = (unsigned)(kl != wl);
        for (size_t b = 0; b < wl; b++)
            diff |= (unsigned char)want[b] ^ (unsigned char)(b < kl ? k[b] : 0);
        if (diff == 0 && found < 0)
            found = i;
    }
    if (found < 0)
        return -1;
    *owner = a->key_owner[found];
    return 0;
}

static int content_type_is(struct http_req *h, const char *want)
{
    const char *ct = http_header(h, "Content-Type");
    if (!ct)
        return 0;
    size_t n = strlen(want);
    return !strncasecmp(ct, want, n) && (ct[n] == 0 || ct[n] == ';' || ct[n] == ' ');
}

static int on_headers(void *ud, struct http_req *h)
{
    struct app *a = ud;
    if (webui_serve(h)) /* the page is public, like /health; no rq: on_request skips it */
        return HTTP_BODY_NONE;
    struct rq *q = rc_calloc(1, sizeof *q);
    if (!q) {
        respond_err(h, API_OUT_OF_MEMORY, "out of memory");
        return HTTP_BODY_NONE;
    }
    q->a = a;
    q->h = h;
    q->cmpl_logprobs = -1;
    http_set_data(h, q);
    q->route = match_route(http_path(h), q->id, sizeof q->id, q->name, sizeof q->name);
    if (q->route == R_SNAPSHOT && !q->name[0])
        memset(q->name, 'x', sizeof q->name - 1); /* over-long: fails the name check */
    q->method = method_bit(http_method(h));
    if (q->route >= 0)
        http_set_route(h, route_names[q->route]);
    if (q->route == R_HEALTH && q->method == M_GET)
        return HTTP_BODY_NONE;
    int public = q->route == R_METRICS && a->cfg->metrics_public;
    if (!public && auth_owner(a, h, &q->owner) != 0) {
        a->metrics.rejected_auth++;
        http_add_header(h, "WWW-Authenticate", "Bearer");
        respond_err(h, API_AUTHENTICATION, "missing or invalid API key (Authorization: Bearer KEY)");
        return HTTP_BODY_NONE;
    }
    if (q->route < 0) {
        char esc[96];
        const char *p = http_path(h);
        respond_err(h, API_NOT_FOUND, "no route %s", log_escape(esc, sizeof esc, p, strlen(p)));
        return HTTP_BODY_NONE;
    }
    if (!(route_methods[q->route] & q->method)) {
        char allow[64] = "";
        static const char *names[] = {"GET", "POST", "PUT", "DELETE"};
        for (int i = 0; i < 4; i++)
            if (route_methods[q->route] & (1 << i))
                snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s%s",
                         allow[0] ? ", " : "", names[i]);
        http_add_header(h, "Allow", allow);
        respond_err(h, API_METHOD_NOT_ALLOWED, "%s does not take %.10s", route_names[q->route],
                    http_method(h));
        return HTTP_BODY_NONE;
    }
    if (q->route == R_METRICS)
        return HTTP_BODY_NONE;
    if (a->state != APP_READY) {
        http_add_header(h, "Retry-After", "5");
        if (a->state == APP_DRAINING)
            http_add_header(h, "Connection", "close");
        respond_err(h, API_UNAVAILABLE, "%s",
                    a->state == APP_LOADING ? "the model is still loading"
                    : a->state == APP_DRAINING ? "the server is shutting down"
                                               : "the model failed to load");
        return HTTP_BODY_NONE;
    }
    if (q->method == M_GET || q->method == M_DELETE)
        return HTTP_BODY_NONE;
    /* snapshot bodies: exactly one size for this model */
    if ((q->route == R_STATE && q->method == M_PUT) ||
        (q->route == R_SESSIONS && content_type_is(h, "application/octet-stream"))) {
        int64_t cl = http_content_length(h);
        if (cl >= 0 && (uint64_t)cl != a->snap_bytes) {
            /* answered before the body is read: the body the client still
             * sends is discarded up to the route's largest legitimate size,
             * which is the snapshot's when that is past the body cap */
            if (a->snap_bytes > http_body_cap(h))
                http_set_body_cap(h, a->snap_bytes);
            respond_err(h, API_INVALID_SNAPSHOT,
                        "a snapshot for this model is exactly %zu bytes, the body has %" PRId64
                        " (truncated, padded or for another model)",
                        a->snap_bytes, cl);
            return HTTP_BODY_NONE;
        }
        q->binary = 1;
        http_set_body_cap(h, a->snap_bytes);
        return HTTP_BODY_BUFFER;
    }
    if (q->route == R_APPEND && content_type_is(h, "text/plain")) {
        if (start_text_append(q) != 0)
            return HTTP_BODY_NONE;
        http_set_log_note(h, "text-stream");
        return HTTP_BODY_STREAM;
    }
    if (content_type_is(h, "multipart/form-data")) {
        /* Any other type is read as JSON (curl -d sends a form type);
         * multipart would only ever fail to parse, so say why. */
        respond_err(h, API_UNSUPPORTED_MEDIA, "send application/json%s",
                    q->route == R_APPEND ? " or text/plain" : "");
        return HTTP_BODY_NONE;
    }
    return HTTP_BODY_BUFFER;
}

static void on_request(void *ud, struct http_req *h)
{
    struct rq *q = http_data(h);
    if (!q)
        return;
    switch (q->route) {
    case R_HEALTH: h_health(q); break;
    case R_METRICS: h_metrics(q); break;
    case R_MODELS: h_models(q); break;
    case R_MODEL: h_model(q); break;
    case R_TOKENIZE: h_tokenize(q); break;
    case R_DETOKENIZE: h_detokenize(q); break;
    case R_SCORE: h_score(q, 0); break;
    case R_COMPLETIONS: h_completions(q); break;
    case R_SESSIONS:
        if (q->method == M_POST)
            h_sessions_post(q);
        else
            h_sessions_list(q);
        break;
    case R_SESSION: h_session(q); break;
    case R_APPEND:
        if (q->text_upload) {
            /* the job may have ended before the body did (out of memory
             * part-way): its answer is made, there is nothing to close */
            if (q->job)
                sched_feed(q->a->sched, q->job, NULL, 0, 1);
        } else
            h_score(q, 1);
        break;
    case R_GENERATE: h_generate(q); break;
    case R_STATE:
        if (q->method == M_GET)
            h_state_get(q);
        else
            h_state_put(q);
        break;
    case R_SAVE: h_save(q); break;
    case R_SNAPSHOTS: h_snapshots(q); break;
    case R_SNAPSHOT: h_snapshot(q); break;
    }
}

static void finish_job(struct rq *q, struct job *j)
{
    if (j->rc && j->rc != RC_ECANCELED) {
        switch (j->kind) {
        case JOB_COPY:
        case JOB_LOAD:
            if (q->route == R_SESSIONS) {
                done_session_create(q, j);
                return;
            }
            break;
        }
        if (q->route == R_APPEND && j->n_input > 0) {
            /* reading failed part-way — only a streamed text can: a JSON
             * append takes its memory before the first token (start_run).
             * The tokens read stay in the session, as when the client
             * leaves, so say how far it got */
            struct api_error e = j->err;
            snprintf(e.message, sizeof e.message,
                     "%.200s after reading %" PRId64 " tokens of the text; they stay in the "
                     "session, now at position %" PRId64,
                     j->err.message, j->n_input, (int64_t)j->position);
            http_respond_error(q->h, &e);
            return;
        }
        http_respond_error(q->h, &j->err);
        return;
    }
    if (j->rc == RC_ECANCELED) {
        if (q->route == R_SESSIONS && j->sess_a)
            sessions_delete(q->a->sessions, j->sess_a);
        if (q->a->state == APP_DRAINING)
            respond_err(q->h, API_UNAVAILABLE, "cancelled: the server is shutting down");
        else
            respond_err(q->h, API_NOT_FOUND, "cancelled: the session was deleted meanwhile");
        return;
    }
    switch (q->route) {
    case R_SAVE: {
        uint8_t *b = j->snap_out;
        j->snap_out = NULL;
        if (fs_start(q, FS_WRITE, q->name, b, j->snap_out_len) == 0)
            q->fsop->position = j->position;
        break;
    }
    case R_TOKENIZE: done_tokenize(q, j); break;
    case R_SCORE:
    case R_APPEND: done_score(q, j); break;
    case R_GENERATE: done_generate(q, j); break;
    case R_COMPLETIONS: done_completions(q, j); break;
    case R_SESSIONS: done_session_create(q, j); break;
    case R_STATE: done_state(q, j); break;
    default: respond_err(q->h, API_INTERNAL, "no handler for a finished job"); break;
    }
}

void routes_on_job_event(struct app *a, struct job *j)
{
    struct rq *q = j->owner;
    if (!j->final_seen) {
        if (q && q->streaming)
            http_wake(q->h);
        if (q && q->upload_paused && sched_inbox(a->sched, j) < a->cfg->upload_buffer_bytes) {
            q->upload_paused = 0;
            http_wake(q->h);
        }
        return;
    }
    if (!q) {
        job_release(a, j); /* its request is gone */
        app_check_drained(a);
        return;
    }
    if (q->streaming) {
        if (j->rc) {
            /* the stream already said 200: end it with an error event */
            struct api_error e = j->err;
            if (j->rc == RC_ECANCELED && a->state == APP_DRAINING)
                api_error_set(&e, API_UNAVAILABLE, "cancelled: the server is shutting down");
            json_t *o = json_pack("{s:s,s:o}", "type", "error", "error", api_error_json(&e));
            /* the job is the loop's now */
            if (!o || sse_put_json(&j->outbox, o) != 0)
                q->oom_event = 1;
            json_decref(o);
        }
        q->done_seen = 1;
        state_commit(j); /* the done event is in the outbox */
        /* release the sessions now; the job lives until the stream ends */
        if (j->sess_a) {
            sessions_release(a->sessions, j->sess_a, now_ms(a));
            j->sess_a = NULL;
        }
        http_wake(q->h);
        return;
    }
    if (q->upload_paused) {
        q->upload_paused = 0;
        http_wake(q->h);
    }
    finish_job(q, j);
    rq_unlink(q);
    q->job = NULL;
    job_release(a, j);
}

void routes_session_ready(struct app *a, void *waiters, int status, const char *why)
{
    struct rq *q = waiters, *nx;
    for (; q; q = nx) {
        nx = q->wnext;
        q->waiting = NULL;
        q->wprev = q->wnext = NULL;
        if (status == ROUTES_GONE)
            respond_err(q->h, API_NOT_FOUND, "the session was deleted");
        else if (status == ROUTES_FAILED)
            respond_err(q->h, API_INTERNAL, "the session's state could not be read back: %s",
                        why ? why : "unknown error");
        else if (q->text_pending) {
            if (start_text_append(q) == 0 && !q->text_pending)
                http_wake(q->h);
        } else
            on_request(a, q->h); /* the body is still there: run it again */
    }
}

void routes_cancel_all(struct app *a)
{
    for (struct rq *q = a->rqs; q; q = q->next)
        if (q->job && !q->job->final_seen)
            sched_cancel(a->sched, q->job);
}

static void on_done(void *ud, struct http_req *h, int completed)
{
    struct app *a = ud;
    struct rq *q = http_data(h);
    if (q) {
        double secs = (double)(uv_hrtime() - http_started_ns(h)) * 1e-9;
        metrics_request(&a->metrics, q->route, http_method(h), http_status(h), secs,
                        completed);
        if (q->job) {
            rq_unlink(q);
            q->job->owner = NULL;
            if (q->job->final_seen)
                job_release(a, q->job);
            else
                sched_cancel(a->sched, q->job); /* released at its done event */
        }
        if (q->fsop)
            q->fsop->q = NULL; /* it finishes on its own */
        wait_cancel(q);
        rc_free(q->echo);
        rc_free(q);
    }
    app_check_drained(a);
}

const struct http_app routes_app = {
    .ud = NULL,
    .on_headers = on_headers,
    .on_data = on_data,
    .on_request = on_request,
    .on_done = on_done,
};
