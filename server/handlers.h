/*
 * handlers.h — private to the HTTP API (dispatch.c and the h_*.c
 * handler files): the per-request context and the helpers they share.
 *
 *   dispatch.c    route table, matching, auth, content type; the request's
 *                 lifecycle (on_headers, on_request, on_done); a finished
 *                 job's answer (finish_job, routes_on_job_event); waiting
 *                 for a session that is busy or on disk
 *   h_server.c    health, metrics, models
 *   h_sessions.c  sessions: list, create, fork, delete; state GET/PUT;
 *                 save and named snapshots (file work)
 *   h_infer.c     tokenize, detokenize, score, append (incl. streamed
 *                 text), generate, completions
 *
 * Everything here runs on the loop thread.
 */
#ifndef RECUR_HANDLERS_H
#define RECUR_HANDLERS_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "fileio.h"

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

enum { M_GET = 1, M_POST = 2, M_PUT = 4, M_DELETE = 8 };

/* Where a request is in its life, as far as the answer is concerned.
 * All transitions happen on the loop thread:
 *
 *   RQ_HANDLING ──(text/plain append, session state on disk)──> RQ_TEXT_PARKED
 *   RQ_TEXT_PARKED ──(state back: start_text_append again)──> RQ_HANDLING
 *   RQ_HANDLING ──(streamed generate/completion submitted: 200 sent)──> RQ_STREAMING
 *   RQ_STREAMING ──(final event of a change the store must have)──> RQ_STREAM_COMMIT
 *   RQ_STREAM_COMMIT ──(the store answered: last events or an error event)──> RQ_STREAM_END
 *   RQ_STREAMING ──(the job's final event)──> RQ_STREAM_END, or
 *                 RQ_STREAM_END_OOM when its error event could not be made
 *   RQ_STREAM_END_OOM ──(the pull sent a static error event)──> RQ_STREAM_END
 *
 * In RQ_HANDLING the answer is made at once, or when a job ends
 * (finish_job) or file work ends (snapfile_answer); q->job, q->fsop and q->waiting
 * say which is in flight. A request leaves every phase by on_done. */
enum rq_phase {
    RQ_HANDLING = 0,
    RQ_TEXT_PARKED,            /* on_data takes nothing, the upload is paused */
    RQ_STREAMING,              /* the response pulls from job->outbox */
    RQ_STREAM_COMMIT,          /* the job is done; the store commits it, then its
                                * last events (or an error event) follow */
    RQ_STREAM_END_OOM,         /* the job is done; its error event is owed */
    RQ_STREAM_END,             /* the job is done; the pull drains, then ends */
};

/* How the request's body arrives: fixed by on_headers, except that a
 * text/plain append is RQ_BODY_TEXT once its job reads the upload. */
enum rq_body {
    RQ_BODY_JSON = 0,          /* buffered; parsed by the handler */
    RQ_BODY_SNAPSHOT,          /* buffered octet-stream: exactly one snapshot */
    RQ_BODY_TEXT,              /* streamed text/plain, fed to the job by on_data */
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
    size_t name_len;           /* R_SNAPSHOT/R_MODEL: the path's {name} length,
                                * also when too long for name (then "") */
    struct job *job;           /* running or done, until released */
    struct fsop *fsop;         /* file work in flight for it, or NULL */
    enum rq_phase phase;
    enum rq_body body;
    /* Backpressure on a streamed upload, independent of the phase: the
     * compute thread has not yet taken what on_data fed; its next event
     * wakes the upload. */
    int upload_paused;
    int overwrite;             /* save: replace a snapshot of that name */
    /* what the response needs besides the job */
    int want_details;
    int cmpl_logprobs;         /* -1 none */
    int cmpl_echo;
    char *echo;                /* echoed prompt text (non-stream), owned */
    size_t echo_len;
    struct list_node link;     /* on app->rqs while it has a job */
    struct session *waiting;   /* waiting for this session's state to be back */
    struct list_node wlink;    /* on q->waiting's waiters list */
    /* --store */
    struct cop *cop;           /* store work in flight for it (cluster.h), or NULL */
    int idem_checked;          /* its Idempotency-Key was looked up (or it has none) */
    int has_idem;
    char idem[33];             /* hash of owner and Idempotency-Key */
};


/* ---- file work (named snapshots, h_sessions.c) */

enum { FS_WRITE = 1, FS_READ, FS_REMOVE, FS_LIST };

struct fsop {
    struct fileio io;
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
};

static inline uint64_t now_ms(struct app *a) { return uv_now(a->loop); }

/* ---- dispatch.c: answers and the job's lifecycle */

char *json_body(json_t *o, size_t *n);
int respond_oom(struct http_req *h, const char *doing);
int respond_json(struct http_req *h, int status, json_t *o);
int respond_err(struct http_req *h, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 503 unavailable with Retry-After: 1 (the store, a session held elsewhere,
 * a full table): the client sends the same request again. */
int respond_retry(struct http_req *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The request a finished store op answers (its cop cleared), or NULL
 * when it went away meanwhile. */
struct rq *rq_of_cop(struct cop *op);
void job_release(struct app *a, struct job *j);
void rq_submit(struct rq *q, struct job *j);
int job_state(struct rq *q, struct job *j, struct mstate **out);
int tmp_state(struct rq *q, struct job *j);
void commit_job_state(struct job *j);
json_t *body_json(struct rq *q);

/* BODY_READER(kind) defines read_<kind>(q, r): the request's JSON body
 * parsed into *r by proto/request.c's req_<kind>_parse. 0, or -1 when the
 * body was refused: the error is answered and r holds nothing to free. */
#define BODY_READER(kind)                                                                     \
    static int read_##kind(struct rq *q, struct req_##kind *r)                                \
    {                                                                                         \
        json_t *o = body_json(q);                                                             \
        if (!o)                                                                               \
            return -1;                                                                        \
        struct api_error e;                                                                   \
        int rc = req_##kind##_parse(o, &q->a->lim, r, &e);                                    \
        json_decref(o);                                                                       \
        if (rc) {                                                                             \
            req_##kind##_free(r);                                                             \
            http_respond_error(q->h, &e);                                                     \
            return -1;                                                                        \
        }                                                                                     \
        return 0;                                                                             \
    }
void wait_for(struct rq *q, struct session *s);
struct session *idle_session(struct rq *q);
/* The caller's session named id: here, or (with a store) being taken from
 * the store while q waits (NULL; q runs again once it is here). NULL and
 * answered (404) when it exists nowhere. */
struct session *find_session(struct rq *q, const char *id);
/* 409 position_mismatch unless s is at expected (-1: any). -1 when answered. */
int position_gate(struct rq *q, struct session *s, int64_t expected);
/* With a store, a request with an Idempotency-Key first looks it up: the
 * stored answer of an earlier request with the key, if any, is the answer.
 * 1 when q waits for that (it runs again) or was answered, 0 to go on. */
int idem_gate(struct rq *q);
/* With a store: the held 201 of a new empty session s goes out once the
 * store has the session (1: under way or answered; 0: no store). */
int store_commit_new_session(struct rq *q, struct session *s);

/* ---- h_server.c */

void h_health(struct rq *q);
void h_metrics(struct rq *q);
void h_models(struct rq *q);
void h_model(struct rq *q);

/* ---- h_infer.c */

void h_tokenize(struct rq *q);
void done_tokenize(struct rq *q, struct job *j);
void h_detokenize(struct rq *q);
void h_score(struct rq *q, int with_session);
void done_score(struct rq *q, struct job *j);
void h_generate(struct rq *q);
void done_generate(struct rq *q, struct job *j);
/* The JSON answer of a finished generate (rc_malloc'ed), or NULL. */
char *generate_answer(struct rq *q, struct job *j, size_t *n);
void h_completions(struct rq *q);
void done_completions(struct rq *q, struct job *j);
int start_text_append(struct rq *q);
size_t on_data(void *ud, struct http_req *h, const char *data, size_t n);

/* ---- h_sessions.c */

int snapfile_start(struct rq *q, int kind, const char *name, uint8_t *buf, size_t len);
void h_sessions_post(struct rq *q);
void done_session_create(struct rq *q, struct job *j);
void h_sessions_list(struct rq *q);
void h_session(struct rq *q);
void h_state_get(struct rq *q);
void h_state_put(struct rq *q);
void done_state(struct rq *q, struct job *j);
void h_save(struct rq *q);
void h_snapshots(struct rq *q);
void h_snapshot(struct rq *q);

#endif
