/*
 * tick.c — one tick over the ready jobs: advance each (run.c), plan the
 * rows (batch.h), sample the decode rows, run ONE forward pass over every
 * segment, then score, stream and wrap up; and the token latency
 * histograms the tick feeds.
 */
#include "compute_impl.h"

#include <string.h>

#include "batch.h"
#include "errors.h"
#include "forward.h"
#include "state.h"

/* ---- latency ------------------------------------------------------------------- */

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
        hist_observe(&s->stats.ttft, t - j->ch.submitted_us);
    r->last_tok_us = t;
}

/* ---- the tick ----------------------------------------------------------------- */

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
        if (!j->req.ignore_eos && r->tok == codec_eos(s->codec)) {
            if (r->pushed)
                j->res.out_rows.n--;
            finish_job(j, "eos");
            continue;
        }
        if (fail_past_max_pos(j, r->gs, 1))
            continue;
        r->seg = nseg;
        r->n = 1;
        s->segs[nseg++] = (struct fwd_seg){.state = r->gs, .tokens = &r->tok, .n = 1};
    }
    return nseg;
}

/* The ids this tick read into states a session keeps, for the store's
 * log (job.h, record_fed); after fwd_run succeeded. */
static void record_fed(struct sched *s, struct job **ready, int nready)
{
    for (int i = 0; i < nready; i++) {
        struct job *j = ready[i];
        struct job_run *r = j->run;
        if (!j->req.record_fed || !r || r->seg < 0 || j->res.fed_lost)
            continue;
        const struct fwd_seg *sg = &s->segs[r->seg];
        for (int t = 0; t < sg->n; t++)
            if (idvec_push(&j->res.fed, sg->tokens[t]) != 0) {
                j->res.fed_lost = 1; /* the loop drops the session: it cannot log it */
                break;
            }
    }
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
        r->had_last = j->req.state->has_last;
        struct fwd_seg *sg = &s->segs[nseg++];
        *sg = (struct fwd_seg){.state = j->req.state, .tokens = r->ids + r->off, .n = n};
        if (j->req.score) {
            sg->hidden = s->hidden + hoff * (size_t)s->d_model;
            hoff += (size_t)n;
            if (r->had_last)
                memcpy(s->prev + (size_t)r->seg * (size_t)s->d_model, j->req.state->last,
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
            end_job_with_error(ready[i], rc, API_INTERNAL, err);
        for (int k = 0; r && k < r->n_lanes; k++)
            if (r->lanes[k]->run->seg >= 0)
                end_job_with_error(r->lanes[k], rc, API_INTERNAL, err);
    }
}

/* Tokens read and generated in one tick. */
struct tick_tokens {
    long long in, out;
};

/* After a successful run: score what was read, record and stream what was
 * generated. */
static void read_run_output(struct sched *s, struct job **ready, int nready, struct tick_tokens *tt)
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
            if (record_decoded_token(s, l) != 0)
                end_job_with_error(l, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory");
        }
        if (!r || r->seg < 0)
            continue;
        int rc = 0;
        if (r->phase == PH_INPUT) {
            tt->in += r->n;
            j->res.n_input += r->n;
            j->res.position = j->req.state->pos;
            if (j->req.score)
                rc = score_segment(s, j, s->segs[r->seg].hidden,
                                   s->prev + (size_t)r->seg * (size_t)s->d_model);
        } else if (r->phase == PH_GEN) {
            tt->out++;
            token_latency(s, j, t_out);
            rc = record_decoded_token(s, j);
        }
        if (rc)
            end_job_with_error(j, rc, API_OUT_OF_MEMORY, "out of memory");
    }
}

/* Jobs that finished this tick: their position as answered and, a
 * stream, the done event (lanes end through gather_finished_lanes). */
static void wrap_up_finished(struct sched *s, struct job **ready, int nready)
{
    for (int i = 0; i < nready; i++) {
        struct job *j = ready[i];
        struct job_run *r = j->run;
        if (r && r->n_lanes && r->phase == PH_GEN)
            gather_finished_lanes(s, j);
        if (!r || !r->finished_now)
            continue;
        if (j->req.kind == JOB_RUN && r->gs)
            j->res.position = j->req.commit ? r->gs->pos : j->req.state->pos; /* once committed */
        else if (j->req.kind == JOB_RUN)
            j->res.position = j->req.state->pos;
        if (j->req.kind == JOB_RUN && j->req.stream.format && r->phase == PH_FINISHED && r->gs &&
            !j->res.rc && !r->n_lanes) {
            if (emit_done(s, j) != 0 || emit_end(s, j, (int64_t)j->res.out_ids.n) != 0)
                set_job_error(j, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory");
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
void run_tick(struct sched *s, struct job **ready, int nready)
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
            end_job_with_error(dec[i], RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory");
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
            record_fed(s, ready, nready);
            read_run_output(s, ready, nready, &tt);
            atomic_fetch_add(&s->stats.tokens_in, tt.in);
            atomic_fetch_add(&s->stats.tokens_out, tt.out);
            atomic_fetch_add(&s->stats.batch_rows, nseg);
        }
    }
    wrap_up_finished(s, ready, nready);
    account_tick(s, t0, &tt);
}
