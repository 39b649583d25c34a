/*
 * job.h — one unit of work for the compute thread, and who may touch
 * which part of it when (compute.h says how a job travels between the
 * loop thread and the compute thread).
 */
#ifndef RECUR_JOB_H
#define RECUR_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "codec.h"
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

/* ---- compute-private: a JOB_RUN's progress (server/run.c) ---- */

enum { PH_START = 0, PH_INPUT, PH_GEN, PH_FINISHED };

struct job_run {
    int phase;
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
    int cancel;             /* enum job_cancel: j->cancel as of this tick (copied
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
