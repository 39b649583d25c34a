#define _GNU_SOURCE /* pthread_setname_np */
#include "scheduler.h"

#include <math.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "batch.h"
#include "blas.h"
#include "cpus.h"
#include "errors.h"
#include "forward.h"
#include "model.h"
#include "snapshot.h"
#include "state.h"
#include "stopscan.h"
#include "utf8.h"

/* Rows of logits computed per lm_head call (bounds the logits scratch:
 * LOGIT_ROWS x n_vocab floats, 12.9 MB for a 50k vocabulary). */
#define LOGIT_ROWS 64

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
    struct job *incoming;   /* submitted, not yet seen (LIFO, reversed on admit) */
    struct job *active;     /* compute's list (order = admission) */
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

/* ---- jobs ---------------------------------------------------------------- */

struct job *job_new(int kind)
{
    struct job *j = rc_calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->kind = kind;
    j->commit = 1;
    score_stats_init(&j->stats);
    return j;
}

static void lane_free(struct job *l);

static void run_free(struct job_run *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n_lanes; i++)
        lane_free(r->lanes[i]);
    rc_free(r->lanes);
    idvec_free(&r->pending);
    codec_enc_free(r->enc);
    outbuf_free(&r->taken);
    outbuf_free(&r->stage);
    rc_free(r);
}

/* A choice's lane (compute-private): a shallow copy of its job that
 * borrows the job's strings, stop list, input state and detail rows, with
 * its own run, generation state (gens[i]) and results. */
static void lane_free(struct job *l)
{
    if (!l)
        return;
    idvec_free(&l->out_ids);
    outbuf_free(&l->out_text);
    tok_details_free(&l->out_rows);
    run_free(l->run);
    rc_free(l);
}

void job_free(struct job *j)
{
    if (!j)
        return;
    rc_free(j->text);
    rc_free(j->ids);
    for (int i = 0; i < j->n_stop; i++)
        rc_free(j->stop[i]);
    rc_free(j->stop);
    rc_free(j->stop_len);
    rc_free(j->cmpl_id);
    rc_free(j->model_name);
    rc_free(j->echo);
    rc_free(j->snap);
    tok_details_free(&j->in_rows);
    idvec_free(&j->out_ids);
    outbuf_free(&j->out_text);
    tok_details_free(&j->out_rows);
    for (int i = 0; j->choices && i < j->n_choices; i++) {
        idvec_free(&j->choices[i].ids);
        outbuf_free(&j->choices[i].text);
        tok_details_free(&j->choices[i].rows);
    }
    rc_free(j->choices);
    rc_free(j->gens); /* the array; its states are the loop's (job_release) */
    rc_free(j->snap_out);
    outbuf_free(&j->inbox);
    outbuf_free(&j->outbox);
    run_free(j->run);
    rc_free(j);
}

/* ---- loop-side API --------------------------------------------------------- */

static double now_us(void);

void sched_submit(struct sched *s, struct job *j)
{
    j->submitted_us = now_us();
    pthread_mutex_lock(&s->mu);
    j->next = s->incoming;
    s->incoming = j;
    atomic_fetch_add(&s->stats.queued, 1);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

size_t sched_feed(struct sched *s, struct job *j, const char *bytes, size_t n, int final)
{
    pthread_mutex_lock(&s->mu);
    if (n && outbuf_put(&j->inbox, bytes, n) != 0 && !j->cancel) {
        /* No memory for the upload: the job fails rather than silently
         * losing text. */
        j->cancel = CANCEL_NO_MEMORY;
    }
    if (final)
        j->inbox_closed = 1;
    size_t have = j->inbox.n;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return have;
}

void sched_cancel(struct sched *s, struct job *j)
{
    pthread_mutex_lock(&s->mu);
    if (!j->cancel)
        j->cancel = CANCEL_ASKED;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

size_t sched_pull(struct sched *s, struct job *j, char *buf, size_t max, int *done)
{
    pthread_mutex_lock(&s->mu);
    size_t n = j->outbox.n < max ? j->outbox.n : max;
    int was_full = j->outbox.n >= s->o.stream_buffer;
    if (n) {
        memcpy(buf, j->outbox.p, n);
        memmove(j->outbox.p, j->outbox.p + n, j->outbox.n - n);
        j->outbox.n -= n;
    }
    *done = j->done && j->outbox.n == 0;
    if (was_full && j->outbox.n < s->o.stream_buffer)
        pthread_cond_signal(&s->cv); /* a paused generation may go on */
    pthread_mutex_unlock(&s->mu);
    return n;
}

size_t sched_inbox(struct sched *s, struct job *j)
{
    pthread_mutex_lock(&s->mu);
    size_t n = j->inbox.n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

struct job *sched_take_events(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    struct job *list = s->events, *rev = NULL;
    s->events = NULL;
    for (struct job *j = list; j;) {
        struct job *nx = j->ev_next;
        j->queued_event = 0;
        j->ev_next = NULL;
        j->final_seen = j->done; /* under the lock: done and its event go together */
        j->taken_next = rev;
        rev = j;
        j = nx;
    }
    pthread_mutex_unlock(&s->mu);
    return rev; /* oldest first */
}

int sched_status(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    int st = s->status;
    pthread_mutex_unlock(&s->mu);
    return st;
}

const char *sched_error(struct sched *s) { return s->error; }
const struct model *sched_model(struct sched *s) { return s->m; }
const struct codec *sched_codec(struct sched *s) { return s->codec; }
const struct sched_stats *sched_stats(struct sched *s) { return &s->stats; }

/* ---- compute side: helpers ---------------------------------------------- */

/* Under the lock. */
static void post_event(struct sched *s, struct job *j)
{
    if (j->queued_event)
        return;
    j->queued_event = 1;
    j->ev_next = s->events;
    s->events = j;
}

static void fail(struct job *j, int rc, int kind, const char *msg)
{
    if (j->rc)
        return;
    j->rc = rc;
    api_error_set(&j->err, kind, "%s", msg);
}

/* End a job the compute thread will not run (lock held): its error and
 * an event for the loop. */
static void end_unrun(struct sched *s, struct job *j, int rc, int kind, const char *msg,
                      const char *reason)
{
    fail(j, rc, kind, msg);
    if (!j->finish)
        j->finish = reason;
    j->done = 1;
    j->next = NULL;
    atomic_fetch_sub(&s->stats.queued, 1);
    post_event(s, j);
}

static void finish(struct job *j, const char *reason)
{
    struct job_run *r = j->run;
    if (!j->finish)
        j->finish = reason;
    if (r) {
        r->phase = PH_FINISHED;
        r->finished_now = 1;
    }
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

/* Log-probability of id in row `logits` (n_vocab wide) and, k > 0, its
 * alternatives (core/score.h: lse over every row, ranks over real ids). */
static float row_logprob(struct sched *s, const float *logits, int32_t id, int k, int32_t *tids,
                         float *tlps)
{
    return (float)score_row(logits, s->n_vocab, s->vocab, id, k, tids, tlps, NULL);
}

/* ---- streaming output ------------------------------------------------------ */

static const char *codec_piece_cb(const void *ctx, int32_t id, size_t *len)
{
    return codec_piece(ctx, id, len);
}

/* Stage one event of j's stream; proto/sse.c writes it in the stream's
 * format. */
static int emit(struct sched *s, struct job *j, const struct gen_event *ev)
{
    struct gen_stream st = {.format = j->stream,
                            .vocab = {codec_piece_cb, s->codec},
                            .cmpl_id = j->cmpl_id,
                            .model = j->model_name,
                            .created = j->created,
                            .system_fingerprint = j->sys_fp[0] ? j->sys_fp : NULL,
                            .include_usage = j->include_usage,
                            .echo_len = j->echo_len,
                            .echo = j->echo};
    return gen_event_encode(&j->run->stage, &st, ev);
}

/* The token just generated, with the text [from, to) of out_text it
 * releases (its detail row is the latest, if kept). */
static int emit_token(struct sched *s, struct job *j, size_t from, size_t to)
{
    struct job_run *r = j->run;
    size_t row = j->out_rows.n ? j->out_rows.n - 1 : 0;
    struct gen_event ev = {.kind = GEN_EV_TOKEN, .choice = j->choice};
    ev.token.id = r->tok;
    ev.token.text = j->out_text.p + from;
    ev.token.text_len = to - from;
    ev.token.text_off = from;
    /* it has been read, so the state is one past it */
    ev.token.position = r->gs->pos - 1;
    ev.token.rows = j->gen_details && row < j->out_rows.n ? &j->out_rows : NULL;
    ev.token.row = row;
    return emit(s, j, &ev);
}

/* A choice ended: what was held back (a partial stop match or character)
 * goes now, with the totals. */
static int emit_done(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    struct gen_event ev = {.kind = GEN_EV_DONE, .choice = j->choice};
    ev.done.text = j->out_text.p ? j->out_text.p + r->emitted : "";
    ev.done.text_len = j->out_text.n - r->emitted;
    ev.done.text_off = r->emitted;
    ev.done.finish = j->finish;
    ev.done.n_tokens = (int64_t)j->out_ids.n;
    ev.done.position = j->commit ? r->gs->pos : j->state->pos;
    ev.done.seed = j->seed;
    ev.done.committed = j->commit;
    r->emitted = j->out_text.n;
    return emit(s, j, &ev);
}

/* The stream ends: `out` tokens generated over all choices. */
static int emit_end(struct sched *s, struct job *j, int64_t out)
{
    struct gen_event ev = {.kind = GEN_EV_END};
    ev.end.prompt_tokens = j->n_input;
    ev.end.completion_tokens = out;
    return emit(s, j, &ev);
}

/* ---- compute side: one job's phases ------------------------------------- */

static int start_run(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    r->seg = -1;
    if (j->streamed) {
        if (codec_enc_create(s->codec, &r->enc) != 0)
            return RC_ENOMEM;
    } else if (j->text) {
        if (codec_encode(s->codec, j->text, j->text_len, &r->pending) != 0)
            return RC_ENOMEM;
        r->ids = r->pending.v;
        r->n_ids = r->pending.n;
        r->input_eof = 1;
    } else {
        r->ids = j->ids;
        r->n_ids = j->n_ids;
        r->input_eof = 1;
    }
    if (j->want_details && tok_details_init(&j->in_rows, j->top_k) != 0)
        return RC_ENOMEM;
    /* Input known in full: all the memory its scoring needs, now. Once the
     * first chunk is read into the session nothing may fail for want of
     * memory, or a 503 would leave the session part-way through the text. */
    if (j->want_details && r->input_eof &&
        tok_details_reserve(&j->in_rows, r->n_ids < j->detail_limit ? r->n_ids : j->detail_limit))
        return RC_ENOMEM;
    if (j->gen_details && tok_details_init(&j->out_rows, j->top_k) != 0)
        return RC_ENOMEM;
    r->phase = PH_INPUT;
    return 0;
}

/* Streamed bytes taken this tick -> ids. */
static int encode_taken(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    if (!j->streamed || (r->taken.n == 0 && !r->took_final) || r->input_eof)
        return 0;
    /* drop what has been read, so a stream of any length keeps at most a
     * chunk plus one refill of ids here */
    if (r->off > 0) {
        memmove(r->pending.v, r->pending.v + r->off, (r->pending.n - r->off) * sizeof(int32_t));
        r->pending.n -= r->off;
        r->off = 0;
    }
    if (codec_enc_feed(r->enc, r->taken.p ? r->taken.p : "", r->taken.n, r->took_final,
                       &r->pending) != 0)
        return RC_ENOMEM;
    r->taken.n = 0;
    r->ids = r->pending.v;
    r->n_ids = r->pending.n;
    if (r->took_final)
        r->input_eof = 1;
    return 0;
}

static int begin_gen(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    if (!j->state->has_last) {
        fail(j, RC_EINVAL, API_INVALID_REQUEST,
             "nothing to continue from: the session has read no tokens yet");
        return RC_EINVAL;
    }
    r->gs = j->state;
    if (j->gen) {
        /* the session's state stays as it was until the loop commits */
        int rc = state_copy(j->gen, j->state);
        if (rc) {
            fail(j, rc, API_INTERNAL, "copying the state failed");
            return rc;
        }
        r->gs = j->gen;
    }
    /* choice i of n draws from seed + i: each is the single-choice answer
     * to the same request with that seed */
    sampler_seed(&r->rng, j->seed + (uint64_t)j->choice);
    r->phase = PH_GEN;
    if (j->stream && emit(s, j, &(struct gen_event){.kind = GEN_EV_BEGIN, .choice = j->choice}))
        return RC_ENOMEM;
    return 0;
}

/* What a lane staged (its token events) goes to its job's stream, lane
 * after lane: a stream interleaves the choices' chunks by index. */
static int lane_flush(struct job *j, struct job *l)
{
    struct outbuf *st = &l->run->stage;
    int rc = st->n ? outbuf_put(&j->run->stage, st->p, st->n) : 0;
    st->n = 0;
    return rc;
}

/* n > 1, the input read: one lane per choice, each from its own copy of
 * the input's state (begin_gen copies it into gens[i]) with seed + i. The
 * lanes are decode rows of the same ticks as everything else. */
static int start_lanes(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    if (!(r->lanes = rc_calloc((size_t)j->n_choices, sizeof *r->lanes)))
        return RC_ENOMEM;
    r->n_lanes = j->n_choices;
    for (int i = 0; i < j->n_choices; i++) {
        struct job *l = rc_malloc(sizeof *l);
        if (!l)
            return RC_ENOMEM;
        *l = *j;
        memset(&l->out_ids, 0, sizeof l->out_ids);
        memset(&l->out_text, 0, sizeof l->out_text);
        memset(&l->out_rows, 0, sizeof l->out_rows);
        l->out_truncated = 0;
        l->finish = NULL;
        l->choices = NULL;
        l->gens = NULL;
        l->choice = i;
        l->gen = j->gens[i];
        l->run = NULL;
        r->lanes[i] = l; /* freed with r from here on */
        if (!(l->run = rc_calloc(1, sizeof *l->run)))
            return RC_ENOMEM;
        l->run->seg = -1;
        int rc = j->gen_details ? tok_details_init(&l->out_rows, j->top_k) : 0;
        if (!rc)
            rc = begin_gen(s, l);
        if (!rc)
            rc = lane_flush(j, l);
        if (rc) {
            if (l->rc)
                fail(j, l->rc, l->err.kind, l->err.message);
            return rc;
        }
    }
    r->lanes_left = j->n_choices;
    r->gs = j->state;
    r->phase = PH_GEN;
    return 0;
}

/* After a tick: lanes that ended give their results to choices[i] (and a
 * stream its finish chunk); their events go to the job's stream. When the
 * last has ended the job finishes (a stream: usage and [DONE]); a lane that
 * failed fails the job. */
static void lanes_after(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    int rc = 0;
    for (int i = 0; i < r->n_lanes && !j->rc; i++) {
        struct job *l = r->lanes[i];
        struct job_run *lr = l->run;
        if (lr->finished_now) {
            lr->finished_now = 0;
            r->lanes_left--;
            if (l->rc) {
                fail(j, l->rc, l->err.kind, l->err.message);
                break;
            }
            if (j->stream && (rc = emit_done(s, l)) != 0)
                break;
            struct choice_out *c = &j->choices[i];
            c->ids = l->out_ids;
            c->text = l->out_text;
            c->rows = l->out_rows;
            c->rows_truncated = l->out_truncated;
            c->finish = l->finish;
            memset(&l->out_ids, 0, sizeof l->out_ids);
            memset(&l->out_text, 0, sizeof l->out_text);
            memset(&l->out_rows, 0, sizeof l->out_rows);
        }
        if ((rc = lane_flush(j, l)) != 0)
            break;
    }
    if (rc)
        fail(j, rc, API_OUT_OF_MEMORY, "out of memory");
    if (j->rc) {
        finish(j, "error");
        return;
    }
    if (r->lanes_left > 0)
        return;
    int64_t out = 0;
    for (int i = 0; i < j->n_choices; i++)
        out += (int64_t)j->choices[i].ids.n;
    if (j->stream && emit_end(s, j, out) != 0) {
        fail(j, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory");
        finish(j, "error");
        return;
    }
    finish(j, "done");
}

/* ---- special jobs ------------------------------------------------------------ */

static void run_special(struct sched *s, struct job *j)
{
    char err[384];
    int rc = 0;
    switch (j->kind) {
    case JOB_SAVE:
        rc = snapshot_encode(j->state, j->fingerprint, &j->snap_out, &j->snap_out_len, err,
                             sizeof err);
        if (rc)
            fail(j, rc, api_err_from_rc(rc) == API_OUT_OF_MEMORY ? API_OUT_OF_MEMORY : API_INTERNAL,
                 err);
        break;
    case JOB_LOAD: {
        /* Only the envelope's fingerprint says "another model" (409); a
         * payload that does not fit this model behind a matching
         * fingerprint is a damaged or forged file (422). */
        struct snapshot_info info;
        rc = snapshot_check(j->snap, j->snap_len, j->fingerprint, &info, err, sizeof err);
        if (rc) {
            fail(j, rc, rc == RC_EMISMATCH ? API_SNAPSHOT_MISMATCH : API_INVALID_SNAPSHOT, err);
            break;
        }
        rc = state_deserialize(j->state, info.payload, (size_t)info.payload_len, err, sizeof err);
        if (rc)
            fail(j, rc, rc == RC_ENOMEM ? API_OUT_OF_MEMORY : API_INVALID_SNAPSHOT, err);
        break;
    }
    case JOB_COPY:
        rc = state_copy(j->state, j->src);
        if (rc)
            fail(j, rc, API_INTERNAL, "copying the state failed");
        break;
    case JOB_TOKENIZE: {
        /* The body is written here, as bytes, not on the loop thread as a
         * JSON tree: one node per token took GBs and blocked /health for
         * seconds on a few MB of text. out_text is the whole answer. */
        struct vocab_view v = {codec_piece_cb, s->codec};
        struct tokenize_view tv = {.with_pieces = j->want_details, .limit = j->detail_limit};
        rc = codec_encode(s->codec, j->text ? j->text : "", j->text_len, &j->out_ids);
        if (!rc) {
            tv.ids = j->out_ids.v;
            tv.n = j->out_ids.n;
            rc = resp_tokenize(&j->out_text, &tv, &v);
        }
        idvec_free(&j->out_ids);
        if (rc) {
            outbuf_free(&j->out_text);
            fail(j, rc, API_OUT_OF_MEMORY, "out of memory tokenising");
        }
        break;
    }
    }
    j->position = j->state ? j->state->pos : 0;
    finish(j, rc ? "error" : "done");
}

/* ---- the tick ----------------------------------------------------------------- */

/* Fail j (400) when reading n more tokens into st would take it past
 * STATE_MAX_POS. Checked per job before batching: fwd_run refuses such a
 * segment too, but its failure fails the whole batch, every other
 * session's request with it. Only a restored snapshot can start near the
 * bound (core/state.h). */
static int past_max_pos(struct job *j, const struct mstate *st, int n)
{
    if ((uint64_t)st->pos <= STATE_MAX_POS - (uint64_t)n)
        return 0;
    char msg[160];
    snprintf(msg, sizeof msg,
             "the session is at position %lld: %d more tokens would pass the maximum position "
             "2^53",
             (long long)st->pos, n);
    fail(j, RC_ERANGE, API_INVALID_REQUEST, msg);
    finish(j, "error");
    return 1;
}

/* Score the rows of one input segment; targets are its tokens. */
static int score_segment(struct sched *s, struct job *j, const float *hid, const float *prev)
{
    struct job_run *r = j->run;
    const int32_t *tok = r->ids + r->off - r->n;
    int64_t pos0 = j->state->pos - r->n; /* position of tok[0] */
    int first = r->had_last ? 0 : 1;      /* tok[0] has no prediction from zero */
    int k = j->want_details ? j->top_k : 0;
    if (!r->had_last && j->want_details && j->in_rows.n < j->detail_limit &&
        tok_details_push(&j->in_rows, pos0, tok[0], NAN, NULL, NULL) != 0)
        return RC_ENOMEM;
    for (int t0 = first; t0 < r->n; t0 += LOGIT_ROWS) {
        int nr = r->n - t0 < LOGIT_ROWS ? r->n - t0 : LOGIT_ROWS;
        for (int i = 0; i < nr; i++) {
            int t = t0 + i; /* predicting tok[t] from the row of tok[t-1] */
            const float *src = t == 0 ? prev : hid + (size_t)(t - 1) * (size_t)s->d_model;
            memcpy(s->rows + (size_t)i * (size_t)s->d_model, src, sizeof(float) * (size_t)s->d_model);
        }
        fwd_logits(s->f, s->rows, nr, s->logits);
        for (int i = 0; i < nr; i++) {
            int t = t0 + i;
            const float *lg = s->logits + (size_t)i * (size_t)s->n_vocab;
            int keep = j->want_details && j->in_rows.n < j->detail_limit;
            float lp = row_logprob(s, lg, tok[t], keep ? k : 0, s->top_ids, s->top_lps);
            score_stats_add(&j->stats, pos0 + t - 1, lp);
            if (keep) {
                if (tok_details_push(&j->in_rows, pos0 + t, tok[t], lp, s->top_ids, s->top_lps))
                    return RC_ENOMEM;
            } else if (j->want_details)
                j->in_truncated = 1;
        }
    }
    return 0;
}

/* Sample the next token of each decoding job from its last row. */
static int decode_sample(struct sched *s, struct job **dec, int nd)
{
    for (int b0 = 0; b0 < nd; b0 += LOGIT_ROWS) {
        int nr = nd - b0 < LOGIT_ROWS ? nd - b0 : LOGIT_ROWS;
        for (int i = 0; i < nr; i++)
            memcpy(s->rows + (size_t)i * (size_t)s->d_model, dec[b0 + i]->run->gs->last,
                   sizeof(float) * (size_t)s->d_model);
        fwd_logits(s->f, s->rows, nr, s->logits);
        for (int i = 0; i < nr; i++) {
            struct job *j = dec[b0 + i];
            struct job_run *r = j->run;
            const float *lg = s->logits + (size_t)i * (size_t)s->n_vocab;
            int32_t id = sampler_pick(&j->sp, &r->rng, lg, s->vocab, s->ss);
            r->tok = id;
            if (j->gen_details) {
                float lp = row_logprob(s, lg, id, j->top_k, s->top_ids, s->top_lps);
                /* a stream sends each row with its token and keeps none:
                 * no limit applies, and a stale row is never sent again */
                if (j->stream)
                    j->out_rows.n = 0;
                r->pushed = r->over = 0;
                if (!j->stream && j->in_rows.n + j->out_rows.n >= j->detail_limit)
                    r->over = 1; /* truncated, once the token is kept (not eos) */
                else if (tok_details_push(&j->out_rows, r->gs->pos, id, lp, s->top_ids,
                                          s->top_lps))
                    return RC_ENOMEM;
                else
                    r->pushed = 1;
            }
        }
    }
    return 0;
}

const double sched_token_bounds[SCHED_TOKEN_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

static void hist_observe(struct sched_hist *h, double us)
{
    double sec = us * 1e-6;
    int b = 0;
    while (b < SCHED_TOKEN_BUCKETS && sec > sched_token_bounds[b])
        b++;
    atomic_fetch_add(&h->bucket[b], 1);
    atomic_fetch_add(&h->sum_us, (long long)(us > 0 ? us : 0));
}

/* A generated token came out of the forward pass at t (now_us): time to
 * first token for the job's first, inter-token latency for the rest. */
static void token_latency(struct sched *s, struct job *j, double t)
{
    struct job_run *r = j->run;
    if (r->last_tok_us > 0)
        hist_observe(&s->stats.itl, t - r->last_tok_us);
    else
        hist_observe(&s->stats.ttft, t - j->submitted_us);
    r->last_tok_us = t;
}

/* After the run: the decode token was read; record it, stream it, stop? */
static int decode_after(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    size_t plen;
    const char *piece = codec_piece(s->codec, r->tok, &plen);
    if (idvec_push(&j->out_ids, r->tok) || outbuf_put(&j->out_text, piece, plen))
        return RC_ENOMEM;
    if (r->over)
        j->out_truncated = 1;
    /* a stop sequence cuts the text where it starts */
    struct stop_list stops = {j->stop, j->stop_len, j->n_stop};
    size_t to;
    int stopped = stop_scan(j->out_text.p, j->out_text.n, r->emitted, &stops, &to);
    if (stopped) {
        j->out_text.n = to;
        finish(j, "stop");
    }
    else if ((int)j->out_ids.n >= j->gen_max)
        finish(j, "length");
    if (j->stream) {
        size_t from = r->emitted;
        if (r->phase == PH_FINISHED)
            to = j->out_text.n; /* nothing more will come: all of it now */
        r->emitted = to;
        if (emit_token(s, j, from, to))
            return RC_ENOMEM;
    }
    return 0;
}

/* Fail j and end it now. */
static void end_with_error(struct job *j, int rc, int kind, const char *msg)
{
    fail(j, rc, kind, msg);
    finish(j, "error");
}

/* Before planning: a cancelled job ends, a special job runs, a run job
 * starts, takes in its streamed bytes, and moves on once its input is read. */
static void advance_job(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    r->seg = -1;
    r->finished_now = 0;
    for (int k = 0; k < r->n_lanes; k++)
        r->lanes[k]->run->seg = -1;
    if (r->cancel) {
        if (r->cancel == CANCEL_NO_MEMORY)
            fail(j, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory buffering the upload");
        else
            fail(j, RC_ECANCELED, API_UNAVAILABLE, "cancelled");
        finish(j, "cancelled");
        return;
    }
    if (j->kind != JOB_RUN) {
        run_special(s, j);
        return;
    }
    int rc = 0;
    if (r->phase == PH_START)
        rc = start_run(s, j);
    if (!rc)
        rc = encode_taken(s, j);
    if (!rc && r->phase == PH_INPUT && r->off == r->n_ids && r->input_eof) {
        j->position = j->state->pos;
        if (j->gen_max > 0)
            rc = j->n_choices > 1 ? start_lanes(s, j) : begin_gen(s, j);
        else
            finish(j, "done");
    }
    if (rc) {
        if (!j->rc)
            fail(j, rc, rc == RC_ENOMEM ? API_OUT_OF_MEMORY : API_INTERNAL,
                 rc == RC_ENOMEM ? "out of memory" : "internal error");
        finish(j, "error");
    }
}

/* What j asks of this tick (struct batch_want). A chunk that would pass
 * the maximum position fails j here, before it can fail a whole batch. */
static struct batch_want job_want(struct sched *s, const struct batch_limits *lim, struct job *j)
{
    struct job_run *r = j->run;
    struct batch_want w = {0, 0, 0};
    if (j->kind != JOB_RUN)
        return w;
    if (r->phase == PH_GEN) {
        w.decode_rows = r->n_lanes ? 0 : 1;
        for (int k = 0; k < r->n_lanes; k++)
            w.decode_rows += r->lanes[k]->run->phase == PH_GEN;
    } else if (r->phase == PH_INPUT) {
        w.input_left = r->n_ids - r->off;
        w.input_eof = r->input_eof;
        int n = batch_prefill_chunk(lim, &w);
        if (n > 0 && past_max_pos(j, j->state, n))
            w = (struct batch_want){0, 0, 0};
    }
    return w;
}

/* The decode rows the plan gave: a job's own, or its first generating
 * lanes. Returns how many went into dec. */
static int collect_decode_rows(struct job **ready, int nready, const struct batch_take *take,
                               struct job **dec)
{
    int nd = 0;
    for (int i = 0; i < nready; i++) {
        struct job_run *r = ready[i]->run;
        int want = take[i].decode_rows;
        if (want && !r->n_lanes)
            dec[nd++] = ready[i];
        for (int k = 0; k < r->n_lanes && want > 0; k++)
            if (r->lanes[k]->run->phase == PH_GEN) {
                dec[nd++] = r->lanes[k];
                want--;
            }
    }
    return nd;
}

/* Sampled decode rows become one-token segments, unless the token is the
 * end token (not read into the state, nor reported) or the state is full.
 * Returns the segments added. */
static int add_decode_segments(struct sched *s, struct job **dec, int nd, int nseg)
{
    for (int i = 0; i < nd; i++) {
        struct job *j = dec[i];
        struct job_run *r = j->run;
        if (!j->ignore_eos && r->tok == codec_eos(s->codec)) {
            if (r->pushed)
                j->out_rows.n--;
            finish(j, "eos");
            continue;
        }
        if (past_max_pos(j, r->gs, 1))
            continue;
        r->seg = nseg;
        r->n = 1;
        s->segs[nseg++] = (struct fwd_seg){.state = r->gs, .tokens = &r->tok, .n = 1};
    }
    return nseg;
}

/* Prefill chunks the plan gave become segments (a scored one also gets
 * rows for its hidden states and the state's last row before it). */
static int add_prefill_segments(struct sched *s, struct job **ready, int nready,
                                const struct batch_take *take, int nseg)
{
    size_t hoff = 0;
    for (int i = 0; i < nready; i++) {
        struct job *j = ready[i];
        struct job_run *r = j->run;
        int n = take[i].prefill;
        if (!n)
            continue;
        r->seg = nseg;
        r->n = n;
        r->had_last = j->state->has_last;
        struct fwd_seg *sg = &s->segs[nseg++];
        *sg = (struct fwd_seg){.state = j->state, .tokens = r->ids + r->off, .n = n};
        if (j->score) {
            sg->hidden = s->hidden + hoff * (size_t)s->d_model;
            hoff += (size_t)n;
            if (r->had_last)
                memcpy(s->prev + (size_t)r->seg * (size_t)s->d_model, j->state->last,
                       sizeof(float) * (size_t)s->d_model);
        }
        r->off += (size_t)n;
    }
    return nseg;
}

/* fwd_run failed: ids are checked before batching, so this is a bug: fail
 * every job (and lane) of the batch rather than guess. */
static void fail_batch(struct job **ready, int nready, int rc, const char *err)
{
    for (int i = 0; i < nready; i++) {
        struct job_run *r = ready[i]->run;
        if (r && r->seg >= 0)
            end_with_error(ready[i], rc, API_INTERNAL, err);
        for (int k = 0; r && k < r->n_lanes; k++)
            if (r->lanes[k]->run->seg >= 0)
                end_with_error(r->lanes[k], rc, API_INTERNAL, err);
    }
}

/* Tokens read and generated in one tick. */
struct tick_tokens {
    long long in, out;
};

/* After a successful run: score what was read, record and stream what was
 * generated. */
static void after_run(struct sched *s, struct job **ready, int nready, struct tick_tokens *tt)
{
    double t_out = now_us();
    for (int i = 0; i < nready; i++) {
        struct job *j = ready[i];
        struct job_run *r = j->run;
        for (int k = 0; r && k < r->n_lanes; k++) {
            struct job *l = r->lanes[k];
            if (l->run->seg < 0)
                continue;
            tt->out++;
            if (decode_after(s, l) != 0)
                end_with_error(l, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory");
        }
        if (!r || r->seg < 0)
            continue;
        int rc = 0;
        if (r->phase == PH_INPUT) {
            tt->in += r->n;
            j->n_input += r->n;
            j->position = j->state->pos;
            if (j->score)
                rc = score_segment(s, j, s->segs[r->seg].hidden,
                                   s->prev + (size_t)r->seg * (size_t)s->d_model);
        } else if (r->phase == PH_GEN) {
            tt->out++;
            token_latency(s, j, t_out);
            rc = decode_after(s, j);
        }
        if (rc)
            end_with_error(j, rc, API_OUT_OF_MEMORY, "out of memory");
    }
}

/* Jobs that finished this tick: their position as answered and, a
 * stream, the done event (lanes end through lanes_after). */
static void wrap_up(struct sched *s, struct job **ready, int nready)
{
    for (int i = 0; i < nready; i++) {
        struct job *j = ready[i];
        struct job_run *r = j->run;
        if (r && r->n_lanes && r->phase == PH_GEN)
            lanes_after(s, j);
        if (!r || !r->finished_now)
            continue;
        if (j->kind == JOB_RUN && r->gs)
            j->position = j->commit ? r->gs->pos : j->state->pos; /* once committed */
        else if (j->kind == JOB_RUN)
            j->position = j->state->pos;
        if (j->kind == JOB_RUN && j->stream && r->phase == PH_FINISHED && r->gs && !j->rc &&
            !r->n_lanes) {
            if (emit_done(s, j) != 0 || emit_end(s, j, (int64_t)j->out_ids.n) != 0)
                fail(j, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory");
        }
    }
}

static void account_tick(struct sched *s, double t0, const struct tick_tokens *tt)
{
    long long busy = (long long)(now_us() - t0);
    atomic_fetch_add(&s->stats.ticks, 1);
    atomic_fetch_add(&s->stats.busy_us, busy);
    /* one forward pass serves both kinds of rows: split it by tokens */
    if (tt->in + tt->out > 0) {
        long long dec_us = busy * tt->out / (tt->in + tt->out);
        atomic_fetch_add(&s->stats.decode_us, dec_us);
        atomic_fetch_add(&s->stats.prefill_us, busy - dec_us);
    }
}

/* One tick over ready[0..nready): advance every job, plan the rows
 * (server/batch.h), sample the decode rows, run ONE forward pass over all
 * segments, then score, stream and wrap up. */
static void tick(struct sched *s, struct job **ready, int nready)
{
    struct job **dec = s->ready + nready; /* scratch after the ready list */
    struct tick_tokens tt = {0, 0};
    double t0 = now_us();
    for (int i = 0; i < nready; i++)
        advance_job(s, ready[i]);
    /* the decode scratch sizes for every lane (thread_main); should it
     * have failed to, the rest wait */
    struct batch_limits lim = {s->o.batch_tokens, s->o.prefill_chunk,
                               (int)(s->ready_cap - (size_t)nready)};
    for (int i = 0; i < nready; i++)
        s->want[i] = job_want(s, &lim, ready[i]);
    batch_plan(&lim, s->want, nready, s->take);
    int nd = collect_decode_rows(ready, nready, s->take, dec);
    if (nd && decode_sample(s, dec, nd) != 0) {
        for (int i = 0; i < nd; i++)
            end_with_error(dec[i], RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory");
        nd = 0;
    }
    int nseg = add_decode_segments(s, dec, nd, 0);
    nseg = add_prefill_segments(s, ready, nready, s->take, nseg);
    if (nseg > 0) {
        char err[256];
        int rc = fwd_run(s->f, s->segs, nseg, err, sizeof err);
        if (rc != 0)
            fail_batch(ready, nready, rc, err);
        else {
            after_run(s, ready, nready, &tt);
            atomic_fetch_add(&s->stats.tokens_in, tt.in);
            atomic_fetch_add(&s->stats.tokens_out, tt.out);
            atomic_fetch_add(&s->stats.batch_rows, nseg);
        }
    }
    wrap_up(s, ready, nready);
    account_tick(s, t0, &tt);
}

/* ---- the thread --------------------------------------------------------------- */

/* Under the lock: is j worth a tick now? */
static int is_ready(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    if (j->cancel || j->kind != JOB_RUN || r->phase == PH_START)
        return 1;
    if (r->phase == PH_INPUT) {
        size_t left = r->n_ids - r->off;
        if (r->input_eof)
            return 1;
        /* streamed: a whole chunk to read, or bytes to take */
        return left >= (size_t)s->o.prefill_chunk ||
               (left < (size_t)s->o.prefill_chunk && (j->inbox.n > 0 || j->inbox_closed));
    }
    if (r->phase == PH_GEN)
        return j->outbox.n < s->o.stream_buffer;
    return 0;
}

static int load(struct sched *s)
{
    char err[512];
    int rc;
    if ((rc = model_load(s->model_dir, &s->m, err, sizeof err)) != 0) {
        snprintf(s->error, sizeof s->error, "%s", err);
        return rc;
    }
    const struct model_config *c = model_config(s->m);
    s->d_model = c->d_model;
    s->n_vocab = c->n_vocab;
    s->vocab = c->vocab_size;
    if ((rc = codec_load(s->model_dir, c->vocab_size, c->n_vocab, &s->codec, err, sizeof err)) !=
        0) {
        snprintf(s->error, sizeof s->error, "%s", err);
        return rc;
    }
    size_t bt = (size_t)s->o.batch_tokens, dm = (size_t)s->d_model;
    /* OpenBLAS runs between our pool's loops on the same cores, so it gets
     * the same count, unless its own variables were set (the user chose). */
    int threads = s->o.threads > 0 ? (int)s->o.threads : cpu_threads_auto();
    if (!blas_threads_from_env())
        blas_set_threads(threads);
    atomic_store(&s->stats.threads, threads);
    atomic_store(&s->stats.blas_threads, blas_threads());
    if ((rc = fwd_create_threads(s->m, s->o.batch_tokens, threads, &s->f)) != 0 ||
        (rc = sampler_scratch_create(s->vocab, &s->ss)) != 0) {
        snprintf(s->error, sizeof s->error, "out of memory for the compute scratch");
        return rc ? rc : RC_ENOMEM;
    }
    s->logits = rc_aligned_alloc(sizeof(float) * LOGIT_ROWS * (size_t)s->n_vocab);
    s->rows = rc_aligned_alloc(sizeof(float) * LOGIT_ROWS * dm);
    s->hidden = rc_aligned_alloc(sizeof(float) * bt * dm);
    s->prev = rc_aligned_alloc(sizeof(float) * bt * dm);
    s->segs = rc_calloc(bt, sizeof *s->segs);
    s->top_ids = rc_calloc(64, sizeof *s->top_ids);
    s->top_lps = rc_calloc(64, sizeof *s->top_lps);
    if (!s->logits || !s->rows || !s->hidden || !s->prev || !s->segs || !s->top_ids ||
        !s->top_lps) {
        snprintf(s->error, sizeof s->error, "out of memory for the compute scratch");
        return RC_ENOMEM;
    }
    return 0;
}

/* Under the lock: move submitted jobs to the end of the active list,
 * oldest first. A job that cannot even be tracked (no memory for its run,
 * or no model) ends at once. Returns 1 when such a job was posted. */
static int admit_incoming(struct sched *s)
{
    int posted = 0;
    struct job *in = s->incoming, *rev = NULL;
    s->incoming = NULL;
    while (in) {
        struct job *nx = in->next;
        in->next = rev;
        rev = in;
        in = nx;
    }
    struct job **tail = &s->active;
    while (*tail)
        tail = &(*tail)->next;
    for (struct job *j = rev; j;) {
        struct job *nx = j->next;
        j->next = NULL;
        if (!j->run)
            j->run = rc_calloc(1, sizeof *j->run);
        if (!j->run || s->status != 1) {
            int loaded = s->status == 1;
            end_unrun(s, j, loaded ? RC_ENOMEM : RC_EIO,
                      loaded ? API_OUT_OF_MEMORY : API_UNAVAILABLE,
                      loaded ? "out of memory" : "the model is not loaded", "error");
            posted = 1;
        } else {
            *tail = j;
            tail = &j->next;
        }
        j = nx;
    }
    return posted;
}

/* Under the lock: room in the ready list (and the planner's arrays) for
 * every active job twice (ready list, then a temporary copy) plus a
 * decode row per lane. Returns how many active jobs fit; those that do
 * not end now with out_of_memory rather than wait unseen (*posted). */
static size_t fit_ready_scratch(struct sched *s, int *posted)
{
    size_t nact = 0, nlanes = 0;
    for (struct job *j = s->active; j; j = j->next) {
        nact++;
        nlanes += j->run ? (size_t)j->run->n_lanes : 0;
    }
    if (nact * 2 + nlanes > s->ready_cap) {
        size_t nc = nact * 2 + nlanes + 16;
        struct job **nr = rc_realloc(s->ready, nc * sizeof *nr);
        if (nr)
            s->ready = nr;
        struct batch_want *nw = nr ? rc_realloc(s->want, nc * sizeof *nw) : NULL;
        if (nw)
            s->want = nw;
        struct batch_take *nt = nw ? rc_realloc(s->take, nc * sizeof *nt) : NULL;
        if (nt) {
            s->take = nt;
            s->ready_cap = nc;
        }
    }
    if (!nact || s->ready_cap >= nact * 2)
        return nact;
    size_t fit = s->ready_cap / 2, k = 0;
    struct job **pp = &s->active;
    while (*pp) {
        struct job *j = *pp;
        if (k++ < fit) {
            pp = &j->next;
            continue;
        }
        *pp = j->next;
        end_unrun(s, j, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory", "error");
        *posted = 1;
    }
    return fit;
}

/* Under the lock: the ready jobs into s->ready, round-robin from
 * `rotate` so that no job always comes first. Returns how many. */
static int collect_ready(struct sched *s, size_t nact)
{
    int nready = 0;
    if (!nact)
        return 0;
    size_t start = (size_t)s->rotate % nact, i = 0;
    struct job **all = s->ready + nact; /* temporary */
    for (struct job *j = s->active; j; j = j->next)
        all[i++] = j;
    for (size_t k = 0; k < nact; k++) {
        struct job *j = all[(start + k) % nact];
        if (is_ready(s, j))
            s->ready[nready++] = j;
    }
    s->rotate++;
    return nready;
}

/* Under the lock: wait until some job is ready (or stop). Jobs ended
 * meanwhile are announced before waiting. Returns the ready count. */
static int wait_for_ready(struct sched *s)
{
    int posted = 0; /* jobs finished at admission: the loop must hear of them */
    for (;;) {
        posted |= admit_incoming(s);
        if (s->stop)
            return 0;
        size_t nact = fit_ready_scratch(s, &posted);
        int nready = collect_ready(s, nact);
        if (nready)
            return nready;
        if (posted) {
            posted = 0;
            pthread_mutex_unlock(&s->mu);
            s->notify(s->notify_ud);
            pthread_mutex_lock(&s->mu);
            continue;
        }
        pthread_cond_wait(&s->cv, &s->mu);
    }
}

/* Under the lock, at stop: every active job ends cancelled. */
static void cancel_all(struct sched *s)
{
    for (struct job *j = s->active; j;) {
        struct job *nx = j->next;
        end_unrun(s, j, RC_ECANCELED, API_UNAVAILABLE, "server shutting down", "cancelled");
        j = nx;
    }
    s->active = NULL;
}

/* Under the lock: streamed input moves from the shared inboxes to the
 * jobs' own buffers (only below a chunk, so ids stay bounded), and each
 * job's cancel flag is copied: the tick reads its own copy. */
static void take_shared_input(struct sched *s, int nready)
{
    for (int i = 0; i < nready; i++) {
        struct job *j = s->ready[i];
        struct job_run *r = j->run;
        if (j->kind != JOB_RUN || !j->streamed || r->input_eof)
            continue;
        if (r->n_ids - r->off >= (size_t)s->o.prefill_chunk)
            continue;
        if (j->inbox.n) {
            if (outbuf_put(&r->taken, j->inbox.p, j->inbox.n) != 0) {
                j->cancel = CANCEL_NO_MEMORY;
                continue;
            }
            r->inbox_event = 1;
            j->inbox.n = 0;
        }
        if (j->inbox_closed)
            r->took_final = 1;
    }
    for (int i = 0; i < nready; i++)
        s->ready[i]->run->cancel = s->ready[i]->cancel;
}

/* Under the lock, after a tick: staged stream bytes go to the outboxes,
 * finished jobs leave the active list as done, and every job with news
 * gets an event. Returns 1 when the loop must be woken. */
static int publish_tick(struct sched *s)
{
    int any = 0;
    struct job **pp = &s->active;
    while (*pp) {
        struct job *j = *pp;
        struct job_run *r = j->run;
        if (r->stage.n) {
            if (outbuf_put(&j->outbox, r->stage.p, r->stage.n) != 0)
                end_with_error(j, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory");
            r->stage.n = 0;
            post_event(s, j);
            any = 1;
        }
        if (r->inbox_event) {
            r->inbox_event = 0;
            post_event(s, j);
            any = 1;
        }
        if (r->phase == PH_FINISHED) {
            *pp = j->next;
            j->next = NULL;
            j->done = 1;
            atomic_fetch_sub(&s->stats.queued, 1);
            post_event(s, j);
            any = 1;
            continue;
        }
        pp = &j->next;
    }
    return any;
}

static void *thread_main(void *arg)
{
    struct sched *s = arg;
    prctl(PR_SET_NAME, "recurd-compute", 0, 0, 0);
    int rc = load(s);
    pthread_mutex_lock(&s->mu);
    s->status = rc == 0 ? 1 : -1;
    pthread_mutex_unlock(&s->mu);
    s->notify(s->notify_ud);

    for (;;) {
        pthread_mutex_lock(&s->mu);
        int nready = wait_for_ready(s);
        if (s->stop) {
            cancel_all(s);
            pthread_mutex_unlock(&s->mu);
            s->notify(s->notify_ud);
            break;
        }
        take_shared_input(s, nready);
        pthread_mutex_unlock(&s->mu);

        /* ready[] is stable: only this thread changes the active list */
        tick(s, s->ready, nready);

        pthread_mutex_lock(&s->mu);
        int any = publish_tick(s);
        pthread_mutex_unlock(&s->mu);
        if (any)
            s->notify(s->notify_ud);
    }
    return NULL;
}

int sched_create(const struct sched_opts *o, void (*notify)(void *), void *notify_ud,
                 struct sched **out)
{
    struct sched *s = rc_calloc(1, sizeof *s);
    if (!s)
        return RC_ENOMEM;
    s->o = *o;
    if (s->o.prefill_chunk > s->o.batch_tokens)
        s->o.prefill_chunk = s->o.batch_tokens; /* a chunk must fit a tick */
    s->model_dir = rc_strdup(o->model_dir);
    s->notify = notify;
    s->notify_ud = notify_ud;
    if (!s->model_dir) {
        rc_free(s);
        return RC_ENOMEM;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->th, NULL, thread_main, s) != 0) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        rc_free(s->model_dir);
        rc_free(s);
        return RC_EIO;
    }
    pthread_setname_np(s->th, "recurd-compute"); /* also set by itself */
    s->started = 1;
    *out = s;
    return 0;
}

void sched_stop(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->started)
        pthread_join(s->th, NULL);
    s->started = 0;
}

void sched_free(struct sched *s)
{
    if (!s)
        return;
    sched_stop(s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    fwd_free(s->f);
    sampler_scratch_free(s->ss);
    codec_free(s->codec);
    model_free(s->m);
    rc_free(s->logits);
    rc_free(s->rows);
    rc_free(s->hidden);
    rc_free(s->prev);
    rc_free(s->segs);
    rc_free(s->ready);
    rc_free(s->want);
    rc_free(s->take);
    rc_free(s->top_ids);
    rc_free(s->top_lps);
    rc_free(s->model_dir);
    rc_free(s);
}
