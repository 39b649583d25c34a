/*
 * dispatch.c — the HTTP API's front: one route table, matching, auth and
 * content type, and each request's lifecycle on the loop thread.
 *
 * A request that needs the model becomes a job for the compute thread;
 * its connection waits suspended (or streams) until the job's events come
 * back through routes_on_job_event(). Handlers (h_*.c) never compute:
 * parsing and validating JSON and building responses is the most they do.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "alloc.h"
#include "cluster.h"
#include "rstore.h"
#include "webui.h"
#include "handlers.h"
#include "errors.h"
#include "jsonin.h"
#include "jsonout.h"
#include "log.h"
#include "response.h"
#include "routes.h"
#include "spill.h"
#include "state.h"

const char *const route_names[] = {
    "/health",     "/metrics",  "/v1/models",        "/v1/tokenize",
    "/v1/detokenize", "/v1/score", "/v1/completions", "/v1/sessions",
    "/v1/sessions/{id}", "/v1/sessions/{id}/append", "/v1/sessions/{id}/generate",
    "/v1/sessions/{id}/state", "/v1/sessions/{id}/save", "/v1/snapshots",
    "/v1/snapshots/{name}", "/v1/models/{id}",
};
const int n_route_names = N_ROUTES;

static const int route_methods[N_ROUTES] = {
    [R_HEALTH] = M_GET,          [R_METRICS] = M_GET,       [R_MODELS] = M_GET,
    [R_TOKENIZE] = M_POST,       [R_DETOKENIZE] = M_POST,   [R_SCORE] = M_POST,
    [R_COMPLETIONS] = M_POST,    [R_SESSIONS] = M_GET | M_POST,
    [R_SESSION] = M_GET | M_DELETE, [R_APPEND] = M_POST,    [R_GENERATE] = M_POST,
    [R_STATE] = M_GET | M_PUT,   [R_SAVE] = M_POST,         [R_SNAPSHOTS] = M_GET,
    [R_SNAPSHOT] = M_GET | M_DELETE, [R_MODEL] = M_GET,
};

/* ---- small helpers --------------------------------------------------------- */

/* o (consumed; NULL when building it failed) as compact JSON text, or
 * NULL when out of memory. For answers that must know they can be sent
 * before they change anything. */
char *json_body(json_t *o, size_t *n)
{
    *n = 0;
    char *s = o ? pj_dump(o, n) : NULL;
    json_decref(o);
    return s;
}

/* The one answer to a failed allocation: 503, OpenAI's error object with
 * code "out_of_memory" and the message "out of memory" plus, when given,
 * what it was for ("building the response"). http_respond_error falls back
 * to a static body when even that cannot be allocated. */
int respond_oom(struct http_req *h, const char *doing)
{
    struct api_error e;
    api_error_set(&e, API_OUT_OF_MEMORY, "out of memory%s%s", doing ? " " : "", doing ? doing : "");
    return http_respond_error(h, &e);
}

int respond_json(struct http_req *h, int status, json_t *o)
{
    size_t n;
    char *s = json_body(o, &n);
    return s ? http_respond(h, status, "application/json", s, n) : respond_oom(h, "building the response");
}

static int respond_errv(struct http_req *h, int kind, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static int respond_errv(struct http_req *h, int kind, const char *fmt, va_list ap)
{
    struct api_error e;
    api_error_set(&e, kind, "%s", "");
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    return http_respond_error(h, &e);
}

int respond_err(struct http_req *h, int kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = respond_errv(h, kind, fmt, ap);
    va_end(ap);
    return rc;
}

int respond_retry(struct http_req *h, const char *fmt, ...)
{
    http_add_header(h, "Retry-After", "1");
    va_list ap;
    va_start(ap, fmt);
    int rc = respond_errv(h, API_UNAVAILABLE, fmt, ap);
    va_end(ap);
    return rc;
}

struct rq *rq_of_cop(struct cop *op)
{
    struct rq *q = cop_ud(op);
    if (q)
        q->cop = NULL;
    return q;
}

/* The job is over and no request waits on it: give back what it held. */
void job_release(struct app *a, struct job *j)
{
    if (j->loop.sess_a)
        sessions_release(a->sessions, j->loop.sess_a, now_ms(a));
    if (j->loop.sess_b)
        sessions_release(a->sessions, j->loop.sess_b, now_ms(a));
    state_free(j->loop.tmp);
    state_free(j->req.gen);
    for (int i = 0; j->req.gens && i < j->req.n_choices; i++) {
        state_free(j->req.gens[i]);
        j->req.gens[i] = NULL;
    }
    for (; j->loop.reserved > 0; j->loop.reserved--)
        sessions_unreserve(a->sessions);
    job_free(j);
    spill_check(a);
}

/* Submit j for q; the sessions in j->sess_a/b are marked busy. */
void rq_submit(struct rq *q, struct job *j)
{
    j->loop.owner = q;
    q->job = j;
    if (j->loop.sess_a)
        ((struct session *)j->loop.sess_a)->busy = j;
    if (j->loop.sess_b)
        ((struct session *)j->loop.sess_b)->busy = j;
    list_push_back(&q->a->rqs, &q->link);
    sched_submit(q->a->sched, j);
}

/* A state of j's own, counted in the budget (one per job): j->tmp, the
 * state of a stateless request, or j->gen, the state a generation
 * advances. On failure the request is answered. */
int job_state(struct rq *q, struct job *j, struct mstate **out)
{
    struct api_error e;
    if (sessions_reserve(q->a->sessions, &e) != 0) {
        http_add_header(q->h, "Retry-After", "1");
        return http_respond_error(q->h, &e), -1;
    }
    if (state_create(q->a->m, out) != 0) {
        sessions_unreserve(q->a->sessions);
        respond_oom(q->h, "for a temporary state");
        return -1;
    }
    j->loop.reserved++;
    return 0;
}

int tmp_state(struct rq *q, struct job *j)
{
    if (job_state(q, j, &j->loop.tmp) != 0)
        return -1;
    j->req.state = j->loop.tmp;
    return 0;
}

/* A job that changes a session's state (generate with commit, PUT state)
 * works on j->gen; once it ended well (and, unless streamed, its answer is
 * built) that becomes the session's state. Until then the session's state
 * is as it was, so a failed, cancelled or abandoned request changes
 * nothing. A swap: the old state leaves with the job. */
void commit_job_state(struct job *j)
{
    struct session *s = j->loop.sess_a;
    if (!j->req.gen || !j->req.commit || j->res.rc || !s)
        return;
    struct mstate *old = s->state;
    s->state = j->req.gen;
    j->req.gen = old;
    j->req.state = s->state;
}

/* Parse the JSON body; on failure the error is sent and NULL returned. */
json_t *body_json(struct rq *q)
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
void wait_for(struct rq *q, struct session *s)
{
    q->waiting = s;
    list_push_front(&s->waiters, &q->wlink);
    if (s->spilled && !s->io &&
        (q->a->cluster ? cluster_restore(q->a, s) : spill_restore(q->a, s)) != 0) {
        list_remove(&s->waiters, &q->wlink);
        q->waiting = NULL;
        respond_oom(q->h, "bringing the session back");
    }
}

static void wait_cancel(struct rq *q)
{
    struct session *s = q->waiting;
    if (!s)
        return;
    list_remove(&s->waiters, &q->wlink);
    q->waiting = NULL;
}

/* The session named by the path, idle, owned by the caller, state in
 * memory. Otherwise NULL, and either an error response was sent or the
 * request waits for the state to come back from disk. */
struct session *find_session(struct rq *q, const char *id)
{
    struct app *a = q->a;
    struct session *s = sessions_get(a->sessions, id, q->owner);
    if (s)
        return s;
    if (a->cluster && sessions_valid_id(id) && !sessions_find(a->sessions, id)) {
        /* not held here: take it from the store */
        if (!(s = cluster_placeholder(a, id, q->owner))) {
            respond_retry(q->h, "session limit reached (--max-sessions)");
            return NULL;
        }
        wait_for(q, s);
        return NULL;
    }
    respond_err(q->h, API_NOT_FOUND, "no session '%.40s'", id);
    return NULL;
}

int position_gate(struct rq *q, struct session *s, int64_t expected)
{
    int64_t pos = s->state ? s->state->pos : s->pos;
    if (expected < 0 || expected == pos)
        return 0;
    struct api_error e;
    api_error_set(&e, API_POSITION_MISMATCH,
                  "session '%s' is at position %" PRId64 ", not at expected_position %" PRId64,
                  s->id, pos, expected);
    api_error_position(&e, pos);
    char p[24];
    snprintf(p, sizeof p, "%" PRId64, pos);
    http_add_header(q->h, "X-Recurd-Position", p);
    http_respond_error(q->h, &e);
    return -1;
}

struct session *idle_session(struct rq *q)
{
    struct session *s = find_session(q, q->id);
    if (!s)
        return NULL;
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


/* The route of path; fills id (sessions) or name (snapshots, models) from
 * it. *name_len is the {name} segment's length even when it did not fit
 * in name (then name is ""), so that the name check can say "too long". */
static int match_route(const char *path, char *id, size_t idlen, char *name, size_t nlen,
                       size_t *name_len)
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
        *name_len = n;
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
        *name_len = n;
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

/* A context for h, its route and method read from the request line; NULL
 * (answered) when out of memory. */
static struct rq *rq_new(struct app *a, struct http_req *h)
{
    struct rq *q = rc_calloc(1, sizeof *q);
    if (!q) {
        respond_oom(h, NULL);
        return NULL;
    }
    q->a = a;
    q->h = h;
    q->cmpl_logprobs = -1;
    http_set_data(h, q);
    q->route = match_route(http_path(h), q->id, sizeof q->id, q->name, sizeof q->name,
                           &q->name_len);
    q->method = method_bit(http_method(h));
    if (q->route >= 0)
        http_set_route(h, route_names[q->route]);
    return q;
}

/* Answer 401 (no valid key; /metrics can be public), 404 (no route) or
 * 405 (with Allow) and return -1; 0 lets the request on. */
static int refuse_unrouted(struct rq *q)
{
    struct app *a = q->a;
    struct http_req *h = q->h;
    int public = q->route == R_METRICS && a->cfg->metrics_public;
    if (!public && auth_owner(a, h, &q->owner) != 0) {
        a->metrics.rejected_auth++;
        http_add_header(h, "WWW-Authenticate", "Bearer");
        respond_err(h, API_AUTHENTICATION, "missing or invalid API key (Authorization: Bearer KEY)");
        return -1;
    }
    if (q->route < 0) {
        char esc[96];
        const char *p = http_path(h);
        respond_err(h, API_NOT_FOUND, "no route %s", log_escape(esc, sizeof esc, p, strlen(p)));
        return -1;
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
        return -1;
    }
    return 0;
}

/* Answer 503 while the model loads, after it failed, or while draining;
 * -1 when answered. */
static int refuse_unready(struct app *a, struct http_req *h)
{
    if (a->state == APP_READY)
        return 0;
    http_add_header(h, "Retry-After", "5");
    if (a->state == APP_DRAINING)
        http_add_header(h, "Connection", "close");
    respond_err(h, API_UNAVAILABLE, "%s",
                a->state == APP_LOADING ? "the model is still loading"
                : a->state == APP_DRAINING ? "the server is shutting down"
                                           : "the model failed to load");
    return -1;
}

/* How the body of a POST or PUT is read (enum http_body_mode). */
static int body_mode(struct rq *q)
{
    struct app *a = q->a;
    struct http_req *h = q->h;
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
        q->body = RQ_BODY_SNAPSHOT;
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

static int on_headers(void *ud, struct http_req *h)
{
    struct app *a = ud;
    if (webui_serve(h)) /* the page is public, like /health; no rq: on_request skips it */
        return HTTP_BODY_NONE;
    struct rq *q = rq_new(a, h);
    if (!q)
        return HTTP_BODY_NONE;
    if (q->route == R_HEALTH && q->method == M_GET)
        return HTTP_BODY_NONE; /* public, and answered while loading or draining */
    if (refuse_unrouted(q) != 0)
        return HTTP_BODY_NONE;
    if (q->route == R_METRICS) /* answered while loading or draining too */
        return HTTP_BODY_NONE;
    if (refuse_unready(a, h) != 0 || q->method == M_GET || q->method == M_DELETE)
        return HTTP_BODY_NONE;
    return body_mode(q);
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
        if (q->body == RQ_BODY_TEXT) {
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
    if (j->res.rc && j->res.rc != RC_ECANCELED) {
        switch (j->req.kind) {
        case JOB_COPY:
        case JOB_LOAD:
            if (q->route == R_SESSIONS) {
                done_session_create(q, j);
                return;
            }
            break;
        }
        if (q->route == R_APPEND && j->res.n_input > 0 && !q->a->cluster) {
            /* reading failed part-way — only a streamed text can: a JSON
             * append takes its memory before the first token (start_run).
             * The tokens read stay in the session, as when the client
             * leaves, so say how far it got */
            struct api_error e = j->res.err;
            snprintf(e.message, sizeof e.message,
                     "%.200s after reading %" PRId64 " tokens of the text; they stay in the "
                     "session, now at position %" PRId64,
                     j->res.err.message, j->res.n_input, (int64_t)j->res.position);
            http_respond_error(q->h, &e);
            return;
        }
        http_respond_error(q->h, &j->res.err);
        return;
    }
    if (j->res.rc == RC_ECANCELED) {
        if (q->route == R_SESSIONS && j->loop.sess_a)
            sessions_delete(q->a->sessions, j->loop.sess_a);
        if (q->a->state == APP_DRAINING)
            respond_err(q->h, API_UNAVAILABLE, "cancelled: the server is shutting down");
        else
            respond_err(q->h, API_NOT_FOUND, "cancelled: the session was deleted meanwhile");
        return;
    }
    switch (q->route) {
    case R_SAVE: {
        uint8_t *b = j->res.snap_out;
        j->res.snap_out = NULL;
        if (snapfile_start(q, FS_WRITE, q->name, b, j->res.snap_out_len) == 0)
            q->fsop->position = j->res.position;
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

/* ---- the store (--store): acknowledged only once committed ------------------- */

static void on_request(void *ud, struct http_req *h);
static void finish_job(struct rq *q, struct job *j);

enum commit_kind { COMMIT_NONE = 0, COMMIT_LOG, COMMIT_CREATE, COMMIT_RESET };

/* What j changed in its session that the store must have. */
static int commit_kind_of(const struct rq *q, const struct job *j)
{
    if (!q->a->cluster || !j->loop.sess_a)
        return COMMIT_NONE;
    if (j->req.kind == JOB_RUN && j->req.record_fed)
        return COMMIT_LOG;
    if (q->route == R_SESSIONS)
        return COMMIT_CREATE;
    if (q->route == R_STATE && q->method == M_PUT)
        return COMMIT_RESET;
    return COMMIT_NONE;
}

/* The store answered (or a commit could not start: op NULL, rc given). */
static void commit_answer(struct rq *q, struct session *s, int rc, const char *err)
{
    int status;
    size_t len;
    http_held(q->h, &status, &len);
    if (rc == 0 || status < 200 || status >= 300) {
        /* done, or an error answer that changed nothing the store lacks */
        http_release_held(q->h, 1);
        return;
    }
    http_release_held(q->h, 0);
    if (q->route == R_SESSIONS && s) {
        sessions_delete(q->a->sessions, s); /* the client never heard of it */
        s = NULL;
    }
    respond_retry(q->h,
                "not acknowledged: the session store did not take the change (%.300s); "
                "nothing was applied: retry (with the same Idempotency-Key)", err);
}

static void commit_finished(struct app *a, struct cop *op)
{
    struct rq *q = rq_of_cop(op);
    struct job *j = cop_job(op);
    const struct cop_result *r = cop_result(op);
    struct session *s = j ? j->loop.sess_a : NULL;
    if (j)
        j->loop.committing = 0;
    if (q) {
        if (!j) { /* a new empty session: its record */
            s = cop_session(op);
            s->io = 0;
        }
        commit_answer(q, s, r->rc, r->err);
        if (j) {
            list_remove(&a->rqs, &q->link);
            q->job = NULL;
        }
    } else if (!j) {
        struct session *x = cop_session(op);
        x->io = 0;
        if (r->rc)
            sessions_delete(a->sessions, x);
    }
    if (j)
        job_release(a, j);
}

/* Start the store's part of a finished job. q's answer is made now and
 * held; commit_finished sends it. 1 when under way, 0 when nothing needs
 * committing (the caller finishes as before). */
static int store_commit(struct rq *q, struct job *j)
{
    struct app *a = q->a;
    int kind = commit_kind_of(q, j);
    if (!kind)
        return 0;
    struct session *s = j->loop.sess_a;
    http_hold(q->h);
    finish_job(q, j); /* the answer, held; a generate's state is swapped in */
    int status;
    size_t len;
    const char *body = http_held(q->h, &status, &len);
    int ok = status >= 200 && status < 300;
    struct cop *op = NULL;
    if (kind == COMMIT_LOG) {
        if (j->res.fed_lost) {
            s->drop = 1;
            commit_answer(q, s, RC_ENOMEM, "out of memory recording the tokens read");
            goto released;
        }
        if (!ok) {
            /* with a store a failed append applies nothing: what it read
             * into this copy is thrown away with the copy */
            if (j->res.fed.n)
                s->drop = 1;
            http_release_held(q->h, 1);
            goto released;
        }
        op = cluster_commit_log(a, s, j, j->res.fed.v, j->res.fed.n, ok && q->has_idem ? q->idem : NULL,
                                body, len, commit_finished, q);
    } else {
        if (!ok) {
            http_release_held(q->h, 1);
            goto released;
        }
        op = cluster_commit_state(a, s, j, s->state, kind == COMMIT_CREATE, commit_finished, q);
    }
    if (!op) {
        s->drop = 1;
        commit_answer(q, s, RC_ENOMEM, "out of memory");
        goto released;
    }
    q->cop = op;
    j->loop.committing = 1;
    return 1;
released:
    list_remove(&a->rqs, &q->link);
    q->job = NULL;
    job_release(a, j);
    return 1;
}

int store_commit_new_session(struct rq *q, struct session *s)
{
    struct app *a = q->a;
    if (!a->cluster)
        return 0;
    int status;
    size_t len;
    http_held(q->h, &status, &len);
    if (status != 201) {
        http_release_held(q->h, 1);
        return 1;
    }
    struct cop *op = cluster_commit_state(a, s, NULL, s->state, 1, commit_finished, q);
    if (!op) {
        commit_answer(q, s, RC_ENOMEM, "out of memory");
        return 1;
    }
    s->io = 1; /* nothing else touches it until the store has it */
    q->cop = op;
    return 1;
}

/* A job whose request is gone read tokens into its session (a streamed
 * append cut off). Nothing was acknowledged, so with a store nothing is
 * applied: this copy is dropped (once the job is released) and the next
 * request reads the store's. Committing the part read would make the
 * client's retry of the whole text, under the same Idempotency-Key, read
 * that part twice. */
static void drop_orphan_copy(struct app *a, struct job *j)
{
    struct session *s = j->loop.sess_a;
    if (a->cluster && s && j->req.record_fed && !j->req.gen && j->res.fed.n > 0)
        s->drop = 1; /* (a generation's own state is simply not swapped in) */
}

/* A committing generate streamed: its last events wait for the store. */
static void stream_committed(struct app *a, struct cop *op)
{
    struct rq *q = rq_of_cop(op);
    struct job *j = cop_job(op);
    const struct cop_result *r = cop_result(op);
    j->loop.committing = 0;
    if (j->loop.sess_a) {
        sessions_release(a->sessions, j->loop.sess_a, now_ms(a));
        j->loop.sess_a = NULL;
    }
    if (!q) {
        job_release(a, j);
        return;
    }
    int oom = 0;
    if (r->rc == 0)
        oom = outbuf_put(&j->ch.outbox, j->res.tail.p, j->res.tail.n) != 0;
    else {
        struct api_error e;
        api_error_set(&e, API_UNAVAILABLE,
                      "not acknowledged: the session store did not take the generated tokens "
                      "(%.300s); retry (with the same Idempotency-Key)", r->err);
        oom = sse_put_error(&j->ch.outbox, &e) != 0;
    }
    q->phase = oom ? RQ_STREAM_END_OOM : RQ_STREAM_END;
    http_wake(q->h);
}

static int store_commit_stream(struct rq *q, struct job *j)
{
    struct app *a = q->a;
    struct session *s = j->loop.sess_a;
    if (!a->cluster || !s || !j->req.record_fed)
        return 0;
    commit_job_state(j);
    /* what a retry with the same key gets: the non-streamed answer */
    size_t n = 0;
    char *body = q->has_idem ? generate_answer(q, j, &n) : NULL;
    struct cop *op = NULL;
    if (!j->res.fed_lost)
        op = cluster_commit_log(a, s, j, j->res.fed.v, j->res.fed.n, body ? q->idem : NULL, body,
                                n, stream_committed, q);
    rc_free(body);
    if (!op) {
        /* not acknowledged: the stream ends with an error event (below),
         * and this replica's copy, which has the tokens, is dropped */
        s->drop = 1;
        j->res.rc = RC_ENOMEM;
        api_error_set(&j->res.err, API_OUT_OF_MEMORY,
                      "out of memory committing the generated tokens: nothing was kept");
        return 0;
    }
    q->cop = op;
    q->phase = RQ_STREAM_COMMIT;
    j->loop.committing = 1;
    return 1;
}

static void idem_found(struct app *a, struct cop *op)
{
    struct rq *q = rq_of_cop(op);
    const struct cop_result *r = cop_result(op);
    if (!q)
        return;
    if (r->rc == 0) {
        char *b = rc_malloc(r->body_len + 1);
        if (!b) {
            respond_oom(q->h, NULL);
            return;
        }
        memcpy(b, r->body, r->body_len);
        http_add_header(q->h, "Idempotent-Replayed", "true");
        http_respond(q->h, 200, "application/json", b, r->body_len);
        return;
    }
    if (r->rc != RC_ENOENT) {
        respond_retry(q->h, "the session store is unavailable: %.300s", r->err);
        return;
    }
    q->idem_checked = 1;
    if (q->phase == RQ_TEXT_PARKED) {
        if (start_text_append(q) == 0 && q->phase != RQ_TEXT_PARKED)
            http_wake(q->h);
    } else
        on_request(a, q->h); /* the body is still there: run it again */
}

int idem_gate(struct rq *q)
{
    struct app *a = q->a;
    if (!a->cluster || q->idem_checked)
        return 0;
    const char *k = http_header(q->h, "Idempotency-Key");
    if (!k) {
        q->idem_checked = 1;
        return 0;
    }
    size_t n = strlen(k);
    int bad = n == 0 || n > 200;
    for (size_t i = 0; i < n && !bad; i++)
        bad = (unsigned char)k[i] <= 0x20 || (unsigned char)k[i] >= 0x7f;
    if (bad) {
        respond_err(q->h, API_INVALID_REQUEST,
                    "header Idempotency-Key: 1 to 200 visible ASCII characters");
        return 1;
    }
    /* the owner is in the hash: another key's retry never sees this answer */
    char buf[232];
    int bl = snprintf(buf, sizeof buf, "%016" PRIx64 ":%s", q->owner, k);
    rstore_idem_hash(buf, (size_t)bl, q->idem);
    q->has_idem = 1;
    if (!sessions_valid_id(q->id))
        return 0; /* a 404 follows */
    struct cop *op = cluster_idem_lookup(a, q->id, q->idem, idem_found, q);
    if (!op) {
        respond_oom(q->h, NULL);
        return 1;
    }
    q->cop = op;
    return 1;
}

void routes_on_job_event(struct app *a, struct job *j)
{
    struct rq *q = j->loop.owner;
    if (!j->loop.final_seen) {
        if (q && q->phase == RQ_STREAMING)
            http_wake(q->h);
        if (q && q->upload_paused && sched_inbox(a->sched, j) < a->cfg->upload_buffer_bytes) {
            q->upload_paused = 0;
            http_wake(q->h);
        }
        return;
    }
    if (!q && j->loop.internal_done) {
        j->loop.internal_done(j->loop.internal_ctx, j); /* frees j */
        a->check_drained(a);
        return;
    }
    if (!q) {
        /* its request is gone */
        drop_orphan_copy(a, j);
        job_release(a, j);
        a->check_drained(a);
        return;
    }
    if (q->phase == RQ_STREAMING && !j->res.rc && j->req.hold_tail && store_commit_stream(q, j))
        return;
    if (q->phase == RQ_STREAMING) {
        if (!j->res.rc && j->req.hold_tail &&
            outbuf_put(&j->ch.outbox, j->res.tail.p, j->res.tail.n) != 0) {
            /* its done event cannot be sent: it is not kept */
            j->res.rc = RC_ENOMEM;
            api_error_set(&j->res.err, API_OUT_OF_MEMORY, "out of memory");
        }
        if (j->res.rc) {
            /* the stream already said 200: end it with an error event */
            struct api_error e = j->res.err;
            if (j->res.rc == RC_ECANCELED && a->state == APP_DRAINING)
                api_error_set(&e, API_UNAVAILABLE, "cancelled: the server is shutting down");
            /* the job is the loop's now */
            q->phase = sse_put_error(&j->ch.outbox, &e) != 0 ? RQ_STREAM_END_OOM : RQ_STREAM_END;
        } else
            q->phase = RQ_STREAM_END;
        commit_job_state(j); /* the done event is in the outbox */
        /* release the sessions now; the job lives until the stream ends */
        if (j->loop.sess_a) {
            sessions_release(a->sessions, j->loop.sess_a, now_ms(a));
            j->loop.sess_a = NULL;
        }
        http_wake(q->h);
        return;
    }
    if (q->upload_paused) {
        q->upload_paused = 0;
        http_wake(q->h);
    }
    if (store_commit(q, j))
        return; /* answered by commit_finished */
    finish_job(q, j);
    list_remove(&a->rqs, &q->link);
    q->job = NULL;
    job_release(a, j);
}

void routes_session_ready(struct app *a, struct list *waiters, enum session_ready status,
                          const char *why)
{
    while (!list_empty(waiters)) {
        struct rq *q = LIST_FIRST(waiters, struct rq, wlink);
        list_remove(waiters, &q->wlink);
        q->waiting = NULL;
        if (status == SESSION_READY_GONE)
            respond_err(q->h, API_NOT_FOUND, "%s",
                        a->cluster ? "no such session" : "the session was deleted");
        else if (status == SESSION_READY_FAILED)
            respond_err(q->h, API_INTERNAL, "the session's state could not be read back: %s",
                        why ? why : "unknown error");
        else if (status == SESSION_READY_UNAVAILABLE) {
            respond_retry(q->h, "%s", why ? why : "the session store is unavailable");
        } else if (status == SESSION_READY_DAMAGED)
            respond_err(q->h, API_INVALID_SNAPSHOT,
                        "the session's stored state is refused, never loaded: %s",
                        why ? why : "damaged");
        else if (q->phase == RQ_TEXT_PARKED) {
            if (start_text_append(q) == 0 && q->phase != RQ_TEXT_PARKED)
                http_wake(q->h);
        } else
            on_request(a, q->h); /* the body is still there: run it again */
    }
}

void routes_cancel_all(struct app *a)
{
    LIST_FOR_EACH (struct rq, q, &a->rqs, link)
        if (q->job && !q->job->loop.final_seen)
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
            list_remove(&a->rqs, &q->link);
            q->job->loop.owner = NULL;
            if (q->job->loop.committing)
                ; /* the store's answer releases it (commit_finished) */
            else if (q->job->loop.final_seen)
                job_release(a, q->job);
            else
                sched_cancel(a->sched, q->job); /* released at its done event */
        }
        cop_detach(q->cop);
        if (q->fsop)
            q->fsop->q = NULL; /* it finishes on its own */
        wait_cancel(q);
        rc_free(q->echo);
        rc_free(q);
    }
    a->check_drained(a);
}

const struct http_app routes_app = {
    .ud = NULL,
    .on_headers = on_headers,
    .on_data = on_data,
    .on_request = on_request,
    .on_done = on_done,
};
