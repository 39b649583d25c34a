/*
 * compute.h — the compute thread: it owns the model, the forward scratch and
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
 * Ownership (job.h). The loop allocates a job and fills its request
 * (j->req), then sched_submit() hands it over: from then on the compute
 * thread owns the request's state pointers and writes the result (j->res)
 * and its private progress (j->run); the loop may only touch the channel
 * (j->ch) through the sched_* functions below (they take the lock) and
 * its own bookkeeping (j->loop). When the compute thread is done it sets
 * ch.done and posts a final event; after the loop has seen that event
 * (loop.final_seen) the job is the loop's again and it frees it with
 * job_free(). A job is never freed while the compute thread may still
 * look at it.
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
#ifndef RECUR_COMPUTE_H
#define RECUR_COMPUTE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "job.h"

struct model;
struct sched;

struct sched_opts {
    const char *model_dir;
    int prefill_chunk;        /* tokens per session per tick */
    int batch_tokens;         /* tokens per tick */
    int threads;              /* compute threads (the forward pass's pool), 0 = one per core */
    int weights;              /* weight format (model_load_as), MODEL_WEIGHTS_AUTO by default */
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
/* The jobs with news since the last call, as a list through loop.taken_next
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
