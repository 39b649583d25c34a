/*
 * scheduler.h — the compute thread: it owns the model, the forward scratch and
 * the sampler scratch, and runs every job with continuous batching.
 *
 * Each tick takes, from every ready job, either a prefill chunk (up to
 * prefill_chunk tokens of its input) or one decode token, and runs them
 * all through ONE fwd_run (projections batched across sessions); the
 * lm_head runs once for all rows that need logits (decode rows before the
 * run, scored rows after it). Snapshots, copies and tokenisation run
 * between ticks. The loop thread never computes: it submits jobs, feeds
 * streamed input, cancels, and reacts to events.
 *
 * Ownership. The loop allocates a job and fills its "request" fields, then
 * sched_submit() hands it over: from then on the compute thread owns the
 * job's state pointers and result fields, and the loop may only touch the
 * fields marked "shared" through the sched_* functions below (they take
 * the lock). When the compute thread is done it sets `done` and posts a
 * final event; after the loop has seen that event the job is the loop's
 * again and it frees it with job_free(). A job is never freed while the
 * compute thread may still look at it.
 *
 * Events. The compute thread calls the loop's `notify` (through
 * uv_async_send; sends coalesce) after it has queued one or more jobs as
 * having news: output to send, room in an upload inbox, or done. The loop
 * drains them all with sched_take_events().
 *
 * Determinism. Each generating job has its own seeded generator and draws
 * once per token; batch composition changes which rows share a matrix
 * product, not the sampler's draws.
 */
#ifndef RECUR_SCHEDULER_H
#define RECUR_SCHEDULER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "apierr.h"
#include "codec.h"
#include "outbuf.h"
#include "sampler.h"
#include "score.h"
#include "sse.h"

struct model;
struct mstate;
struct sched;

enum job_kind {
    JOB_RUN = 1,  /* read input (scored or not), then generate (optional) */
    JOB_SAVE,     /* state -> snapshot bytes */
    JOB_LOAD,     /* snapshot bytes -> state (unchanged on error) */
    JOB_COPY,     /* state := src */
    JOB_TOKENIZE, /* text -> the response body (out_text): ids, and pieces
                   * (want_details) for at most detail_limit of them */
};

/* Why a job is asked to stop (struct job's cancel). */
enum job_cancel {
    CANCEL_NONE = 0,
    CANCEL_ASKED,     /* sched_cancel: the client went away, or a drain */
    CANCEL_NO_MEMORY, /* no memory to buffer its streamed upload */
};

/* One finished choice of an n > 1 completion (the generation results,
 * moved out of the job when the choice ended). */
struct choice_out {
    struct idvec ids;
    struct outbuf text;
    struct tok_details rows;
    int rows_truncated;
    const char *finish;
};

struct job {
    /* ---- request (loop fills before submit; read-only afterwards) ---- */
    int kind;                 /* enum job_kind */
    struct mstate *state;     /* the stream's state (not owned) */
    const struct mstate *src; /* JOB_COPY source (not owned) */
    /* input: one of text / ids / streamed (sched_feed) */
    char *text;               /* owned, text_len bytes */
    size_t text_len;
    int32_t *ids;             /* owned, n_ids */
    size_t n_ids;
    int streamed;             /* bytes arrive through sched_feed() */
    int score;                /* score the input (stats always; details below) */
    int want_details;         /* per-token rows for the input */
    int top_k;                /* alternatives per detail row */
    size_t detail_limit;      /* rows kept at most (input and output together) */
    /* generation (gen_max > 0) */
    int gen_max;              /* tokens to generate; 0 = none */
    struct sampler_params sp;
    uint64_t seed;
    char **stop;              /* owned: n_stop strings */
    size_t *stop_len;
    int n_stop;
    int commit;               /* 0: the loop throws gen away; 1: it commits it */
    struct mstate *gen;       /* the job's own state (owned, counted in the
                               * budget), swapped into the session by the loop
                               * only if the request succeeds: a generation
                               * copies state into it here and advances it,
                               * never state; PUT state sets state = gen and
                               * reads the snapshot into it */
    int ignore_eos;
    int gen_details;          /* per-token rows for generated tokens */
    int stream;               /* enum stream_format (proto/sse.h) */
    /* OpenAI stream framing (owned strings) */
    char *cmpl_id, *model_name;
    int64_t created;
    int include_usage;
    char *echo;               /* text sent first in the stream (echo), owned */
    size_t echo_len;
    char sys_fp[24];          /* system_fingerprint, "" = none */
    /* n > 1: once the input is read, the choices generate side by side
     * (each a decode row of the same ticks), choice i in gens[i] from a
     * copy of the input's state, with seed + i; results go to choices[i]
     * (n_choices zeroed entries, owned by the job). A stream interleaves
     * their chunks by index. */
    int n_choices;            /* 0 or 1: one choice, results in out_* */
    struct choice_out *choices;
    struct mstate **gens;     /* n_choices states of the job's own (counted
                               * in the budget; the loop frees them) */
    /* JOB_LOAD input */
    uint8_t *snap;            /* owned */
    size_t snap_len;
    uint64_t fingerprint;     /* model's, for JOB_SAVE / JOB_LOAD */

    /* ---- results (compute writes; loop reads after the done event) ---- */
    int rc;                   /* 0 or rc_status */
    struct api_error err;     /* when rc != 0 */
    int64_t position;         /* state position at the end */
    int64_t n_input;          /* input tokens read */
    struct score_stats stats; /* over the scored input */
    struct tok_details in_rows;   /* input details (want_details) */
    int in_truncated;
    struct idvec out_ids;     /* generated ids */
    struct outbuf out_text;   /* generated text, cut at a stop sequence;
                               * JOB_TOKENIZE: the response body */
    struct tok_details out_rows;  /* generated details (gen_details): the
                               * first detail_limit - in_rows.n rows; a
                               * stream keeps only the latest (each event
                               * carries its own row) */
    int out_truncated;        /* out_rows stopped at the limit */
    int choice;               /* a choice's index (compute-side lanes) */
    const char *finish;       /* "length", "stop", "eos", "cancelled" */
    uint8_t *snap_out;        /* JOB_SAVE result, owned */
    size_t snap_out_len;

    /* ---- shared (under the scheduler lock; use the sched_* calls) ---- */
    struct outbuf inbox;      /* streamed input not yet taken */
    int inbox_closed;
    struct outbuf outbox;     /* stream bytes not yet sent */
    int cancel;               /* enum job_cancel */
    int done;
    int queued_event;         /* on the event list */
    struct job *ev_next;
    struct job *next;         /* scheduler's lists */
    double submitted_us;      /* sched_submit's monotonic clock: time to first token */

    /* ---- loop-private ---- */
    struct job *taken_next;   /* the loop's list from sched_take_events: not
                               * ev_next, which the compute thread rewrites
                               * when it posts the job again */
    int final_seen;           /* the loop has taken the done event (set by
                               * sched_take_events); the loop must test this,
                               * never `done`: a job may be done and its final
                               * event still queued, and a job on the event
                               * list must not be freed */
    void *owner;              /* the HTTP request waiting on it, or NULL */
    void *sess_a, *sess_b;    /* sessions it keeps busy (struct session) */
    struct mstate *tmp;       /* temporary state of a stateless request (owned) */
    int reserved;             /* states of its own (tmp, gen, gens) counted
                               * in the state budget */

    /* ---- compute-private ---- */
    struct job_run *run;
};

/* A zeroed job of a kind. NULL when out of memory. */
struct job *job_new(int kind);
/* Free a job the loop owns again (never submitted, or done). */
void job_free(struct job *j);

struct sched_opts {
    const char *model_dir;
    int prefill_chunk;        /* tokens per session per tick */
    int batch_tokens;         /* tokens per tick */
    int threads;              /* compute threads (the forward pass's pool), 0 = one per core */
    size_t stream_buffer;     /* outbox bytes above which generation pauses */
    size_t upload_low;        /* inbox bytes below which the upload resumes */
};

/* Start the compute thread; it loads the model and codec, then waits for
 * jobs. notify is called from the compute thread (it must only wake the
 * loop, e.g. uv_async_send). Returns 0 or RC_ENOMEM/RC_EIO. */
int sched_create(const struct sched_opts *o, void (*notify)(void *), void *notify_ud,
                 struct sched **out);
/* Stop the thread: jobs still submitted are finished with RC_ECANCELED
 * and queued as events (take them with sched_take_events). Idempotent. */
void sched_stop(struct sched *s);
/* Stop (if needed) and free everything. */
void sched_free(struct sched *s);

/* Loading: 0 while loading, 1 ready, -1 failed (sched_error has why). */
int sched_status(struct sched *s);
const char *sched_error(struct sched *s);
/* After ready: the model, its codec and facts (immutable, shareable). */
const struct model *sched_model(struct sched *s);
const struct codec *sched_codec(struct sched *s);

void sched_submit(struct sched *s, struct job *j);
/* Append streamed input (final = no more after it). Returns the bytes now
 * waiting in the inbox (the caller pauses the upload above its cap). */
size_t sched_feed(struct sched *s, struct job *j, const char *bytes, size_t n, int final);
/* Ask a job to stop; it finishes with RC_ECANCELED within one tick. */
void sched_cancel(struct sched *s, struct job *j);
/* Move up to max stream bytes out of j's outbox into buf. *done is set
 * when the job is done and the outbox is empty (nothing more will come). */
size_t sched_pull(struct sched *s, struct job *j, char *buf, size_t max, int *done);
/* Bytes waiting in j's inbox. */
size_t sched_inbox(struct sched *s, struct job *j);
/* The jobs with news since the last call, as a list through taken_next
 * (oldest first); a taken job may be posted again meanwhile. */
struct job *sched_take_events(struct sched *s);

/* A latency histogram the compute thread fills and /metrics reads
 * (cumulative buckets are made at render time). */
#define SCHED_TOKEN_BUCKETS 14
extern const double sched_token_bounds[SCHED_TOKEN_BUCKETS]; /* upper bounds, seconds */
struct sched_hist {
    atomic_llong bucket[SCHED_TOKEN_BUCKETS + 1]; /* the last: above every bound */
    atomic_llong sum_us;
};

/* Counters for /metrics (monotonic, read without the lock). */
struct sched_stats {
    atomic_llong tokens_in;    /* input tokens read */
    atomic_llong tokens_out;   /* tokens generated */
    atomic_llong ticks;
    atomic_llong busy_us;      /* time spent computing */
    atomic_llong batch_rows;   /* sum over ticks of segments in the tick */
    atomic_int queued;         /* jobs submitted and not done */
    atomic_int threads;        /* the forward pass's threads (set at load) */
    atomic_int blas_threads;   /* OpenBLAS's thread count after load */
    /* busy_us split by the tokens of each tick: input (prefill, scoring
     * included) and generated (decode, sampling included) */
    atomic_llong prefill_us, decode_us;
    struct sched_hist ttft;    /* submit -> first generated token of a job */
    struct sched_hist itl;     /* between a job's consecutive generated tokens */
};
const struct sched_stats *sched_stats(struct sched *s);

#endif
