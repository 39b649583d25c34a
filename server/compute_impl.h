/*
 * compute_impl.h — the compute thread's own header: the scheduler's state
 * and the steps its files share. Only the compute thread's files include
 * it:
 *
 *   compute.c   the thread: loading, admission, waiting for work, the
 *               public sched_* calls (the lock lives here)
 *   tick.c      one tick over the ready jobs: plan, one forward pass,
 *               then score, stream and wrap up
 *   run.c       one JOB_RUN: start, read input, score, decode, stop, its
 *               stream's events, the lanes of an n > 1 completion
 *   special.c   the jobs that are not runs: save, load, copy, tokenize
 *   job.c       a job's memory (job.h)
 */
#ifndef RECUR_COMPUTE_IMPL_H
#define RECUR_COMPUTE_IMPL_H

#include <pthread.h>

#include "batch.h"
#include "compute.h"

/* Rows of logits computed per lm_head call (bounds the logits scratch:
 * LOGIT_ROWS x n_vocab floats, 12.9 MB for a 50k vocabulary). */
#define LOGIT_ROWS 64

struct sched {
    struct sched_opts o;
    char *model_dir;
    void (*notify)(void *);
    void *notify_ud;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started;
    int stop;
    int status;             /* 0 loading, 1 ready, -1 failed */
    char error[512];
    struct list incoming;   /* submitted, not yet seen (oldest first) */
    struct list active;     /* compute's list (order = admission) */
    struct job *events;     /* news for the loop */
    int rotate;             /* round-robin start */
    struct sched_stats stats;
    /* compute-only after load */
    struct model *m;
    struct codec *codec;
    struct fwd *f;
    struct sampler_scratch *ss;
    int d_model, n_vocab, vocab;
    float *logits;          /* LOGIT_ROWS x n_vocab */
    float *rows;            /* LOGIT_ROWS x d_model gathered rows */
    float *hidden;          /* batch_tokens x d_model */
    float *prev;            /* batch_tokens x d_model: last rows before the run */
    struct fwd_seg *segs;   /* batch_tokens */
    struct job **ready;     /* scratch list */
    size_t ready_cap;
    int32_t *top_ids;
    float *top_lps;
    struct batch_want *want; /* ready_cap: what each ready job asks of a tick */
    struct batch_take *take; /* ready_cap: what the plan gives it */
};

/* compute.c: the monotonic clock, in microseconds */
double now_us(void);

/* tick.c: one tick over ready[0..nready): advance every job, plan the
 * rows, sample, ONE forward pass, then score, stream and wrap up. */
void run_tick(struct sched *s, struct job **ready, int nready);

/* run.c: ending a job. set_job_error records the first error only;
 * finish_job marks the job finished this tick (the first reason stays);
 * end_job_with_error does both. */
void set_job_error(struct job *j, int rc, int kind, const char *msg);
void finish_job(struct job *j, const char *reason);
void end_job_with_error(struct job *j, int rc, int kind, const char *msg);
/* codec_piece as a struct vocab_view callback (ctx: the codec) */
const char *codec_piece_view(const void *ctx, int32_t id, size_t *len);
/* Stage a stream's DONE event (a choice ended) and END event (the stream
 * ends, `out` tokens over all choices). 0 or RC_ENOMEM. */
int emit_done(struct sched *s, struct job *j);
int emit_end(struct sched *s, struct job *j, int64_t out);

/* run.c: one job's steps in a tick, in the order run_tick calls them */
void advance_job(struct sched *s, struct job *j);
struct batch_want job_want(struct sched *s, const struct batch_limits *lim, struct job *j);
int fail_past_max_pos(struct job *j, const struct mstate *st, int n);
int decode_sample(struct sched *s, struct job **dec, int nd);
int score_segment(struct sched *s, struct job *j, const float *hid, const float *prev);
int record_decoded_token(struct sched *s, struct job *j);
void gather_finished_lanes(struct sched *s, struct job *j);

/* special.c: run a JOB_SAVE, JOB_LOAD, JOB_COPY or JOB_TOKENIZE whole */
void run_special_job(struct sched *s, struct job *j);

#endif
