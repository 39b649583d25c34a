/*
 * job.h — one unit of work for the compute thread, in parts by who may
 * touch them when: the request (the loop, before submit), the result (the
 * compute thread, until done), the channel (both, under the scheduler's
 * lock), the loop's bookkeeping, and the compute thread's own progress.
 * compute.h says how a job travels between the two threads.
 */
#ifndef RECUR_JOB_H
#define RECUR_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "codec.h"
#include "list.h"
#include "outbuf.h"
#include "sampler.h"
#include "score.h"
#include "sse.h"

struct mstate;

enum job_kind {
    JOB_RUN = 1,  /* read input (scored or not), then generate (optional) */
    JOB_SAVE,     /* state -> snapshot bytes */
    JOB_LOAD,     /* snapshot bytes -> state (unchanged on error) */
    JOB_COPY,     /* state := src */
    JOB_TOKENIZE, /* text -> the response body (out_text): ids, and pieces
                   * (want_details) for at most detail_limit of them */
};

/* Why a job is asked to stop (struct job_channel's cancel). */
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

/* What the loop asks for. The loop fills it before sched_submit; from
 * then until the done event nobody writes it (the compute thread reads
 * it; lanes copy it). Pointers marked owned are freed by job_free. */
struct job_request {
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
    int record_fed;           /* keep every id read into the committed state
                               * (res.fed): the store's log entry */
    int hold_tail;            /* a committing stream's done and end events go to
                               * res.tail, sent by the loop once the change is
                               * kept (swapped in; with a store, committed) */
    int keep_rows;            /* a stream keeps every detail row as well (the
                               * answer an Idempotency-Key stores) */
    int gen_details;          /* per-token rows for generated tokens */
    /* How generated tokens are streamed (proto/sse.h): format is enum
     * stream_format, STREAM_NONE for none. cmpl_id, model and
     * echo are owned by the request (freed by job_free); system_fingerprint
     * is borrowed from struct app; vocab is left empty: the compute thread supplies its
     * codec when it encodes an event. */
    struct gen_stream stream;
    /* n > 1: once the input is read, the choices generate side by side
     * (each a decode row of the same ticks), choice i in gens[i] from a
     * copy of the input's state, with seed + i; results go to the
     * result's choices[i]. A stream interleaves their chunks by index. */
    int n_choices;            /* 0 or 1: one choice, results in out_* */
    struct mstate **gens;     /* n_choices states of the job's own (counted
                               * in the budget; the loop frees them) */
    /* JOB_LOAD input */
    uint8_t *snap;            /* owned */
    size_t snap_len;
    uint64_t fingerprint;     /* model's, for JOB_SAVE / JOB_LOAD */
};

/* What came of it. The compute thread writes it while it runs the job;
 * the loop reads it only after it has taken the job's done event
 * (final_seen). Owned buffers are freed by job_free. */
struct job_result {
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
    const char *finish;       /* "length", "stop", "eos", "cancelled" */
    /* n > 1: choice i's results, moved here when it ends (an array of
     * n_choices zeroed entries the loop allocates before submit) */
    struct choice_out *choices;
    uint8_t *snap_out;        /* JOB_SAVE result, owned */
    size_t snap_out_len;
    struct idvec fed;         /* record_fed: ids read into the state the
                               * session keeps (input, or committed tokens) */
    int fed_lost;             /* out of memory recording fed: it is incomplete */
    struct outbuf tail;       /* hold_tail: the stream's last events */
};

/* The part both threads touch while the job runs: only under the
 * scheduler's lock, through the sched_* calls (compute.h). */
struct job_channel {
    struct outbuf inbox;      /* streamed input not yet taken */
    int inbox_closed;
    struct outbuf outbox;     /* stream bytes not yet sent */
    int cancel;               /* enum job_cancel */
    int done;
    int queued_event;         /* on the event list */
    struct job *ev_next;
    struct list_node link;    /* on the scheduler's incoming or active list */
    double submitted_us;      /* sched_submit's monotonic clock: time to first token */
};

/* The loop thread's bookkeeping; the compute thread never reads it. */
struct job_loop_side {
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
    /* a job of the server's own (no request): called with its final event,
     * it frees the job (cluster.c's replay of a session's log) */
    void (*internal_done)(void *ctx, struct job *j);
    void *internal_ctx;
    int committing;           /* the store is committing what it did */
};

/* One unit of work, in the parts above: each has one writer at a time. */
struct job {
    struct job_request req;
    struct job_result res;
    struct job_channel ch;
    struct job_loop_side loop;
    struct job_run *run;      /* compute-private: its progress (below) */
};

/* A zeroed job of a kind. NULL when out of memory. */
struct job *job_new(int kind);
/* Free a job the loop owns again (never submitted, or done). */
void job_free(struct job *j);

/* ---- compute-private: a JOB_RUN's progress (server/run.c) ---- */

enum { PH_START = 0, PH_INPUT, PH_GEN, PH_FINISHED };

struct job_run {
    int phase;
    int choice;             /* the choice this run generates (a lane's index) */
    const int32_t *ids;     /* input ids: job->ids, or pending.v */
    size_t n_ids, off;      /* ids[off..n_ids) not read yet */
    struct idvec pending;   /* ids encoded from text / streamed bytes */
    struct codec_enc *enc;  /* streamed input */
    struct outbuf taken;    /* streamed bytes taken from the inbox this tick */
    int took_final;         /* the inbox was closed when taken */
    int input_eof;          /* no more input will come */
    struct mstate *gs;      /* state generation advances: job->gen, else job->state */
    struct sampler_rng rng;
    size_t emitted;         /* bytes of out_text already streamed */
    size_t echo_sent;
    struct outbuf stage;    /* stream bytes made this tick */
    int finished_now;       /* finished during this tick */
    int cancel;             /* enum job_cancel: ch.cancel as of this tick (copied
                             * under the lock) */
    int inbox_event;        /* the inbox was drained this tick */
    /* this tick */
    int seg;                /* segment index, -1 */
    int n;                  /* tokens in the segment */
    int had_last;           /* state had a prediction before the segment */
    int32_t tok;            /* decode token */
    double last_tok_us;     /* when the last generated token came out (0: none yet) */
    int pushed;             /* its detail row was kept */
    int over;               /* its detail row was over the limit */
    /* n > 1: one lane per choice, generating side by side */
    struct job **lanes;
    int n_lanes, lanes_left;
};

#endif
