/*
 * run.c — one JOB_RUN, step by step: start, take in streamed input, say
 * what it wants of a tick, score the input it read, sample and record
 * generated tokens, stop, and encode its stream's events (proto/sse.h).
 * An n > 1 completion runs one lane per choice.
 */
#include "compute_impl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "forward.h"
#include "state.h"
#include "stopscan.h"

/* ---- ending a job ------------------------------------------------------------ */

void set_job_error(struct job *j, int rc, int kind, const char *msg)
{
    if (j->res.rc)
        return;
    j->res.rc = rc;
    api_error_set(&j->res.err, kind, "%s", msg);
}

void finish_job(struct job *j, const char *reason)
{
    struct job_run *r = j->run;
    if (!j->res.finish)
        j->res.finish = reason;
    if (r) {
        r->phase = PH_FINISHED;
        r->finished_now = 1;
    }
}

/* Log-probability of id in row `logits` (n_vocab wide) and, k > 0, its
 * alternatives (core/score.h: lse over every row, ranks over real ids). */
static float row_logprob(struct sched *s, const float *logits, int32_t id, int k, int32_t *tids,
                         float *tlps)
{
    return (float)score_row(logits, s->n_vocab, s->vocab, id, k, tids, tlps, NULL);
}

/* ---- streaming output ------------------------------------------------------ */

const char *codec_piece_view(const void *ctx, int32_t id, size_t *len)
{
    return codec_piece(ctx, id, len);
}

/* Stage one event of j's stream; proto/sse.c writes it in the stream's
 * format. */
static int emit_event(struct sched *s, struct job *j, const struct gen_event *ev)
{
    struct gen_stream st = j->req.stream;
    st.vocab = (struct vocab_view){codec_piece_view, s->codec};
    /* a change the store must acknowledge first: its last events wait */
    int tail = j->req.hold_tail && (ev->kind == GEN_EV_DONE || ev->kind == GEN_EV_END);
    return gen_event_encode(tail ? &j->res.tail : &j->run->stage, &st, ev);
}

/* The token just generated, with the text [from, to) of out_text it
 * releases (its detail row is the latest, if kept). */
static int emit_token(struct sched *s, struct job *j, size_t from, size_t to)
{
    struct job_run *r = j->run;
    size_t row = j->res.out_rows.n ? j->res.out_rows.n - 1 : 0;
    struct gen_event ev = {.kind = GEN_EV_TOKEN, .choice = j->run->choice};
    ev.token.id = r->tok;
    ev.token.text = j->res.out_text.p + from;
    ev.token.text_len = to - from;
    ev.token.text_off = from;
    /* it has been read, so the state is one past it */
    ev.token.position = r->gs->pos - 1;
    ev.token.rows = j->req.gen_details && row < j->res.out_rows.n ? &j->res.out_rows : NULL;
    ev.token.row = row;
    return emit_event(s, j, &ev);
}

/* A choice ended: what was held back (a partial stop match or character)
 * goes now, with the totals. */
int emit_done(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    struct gen_event ev = {.kind = GEN_EV_DONE, .choice = j->run->choice};
    ev.done.text = j->res.out_text.p ? j->res.out_text.p + r->emitted : "";
    ev.done.text_len = j->res.out_text.n - r->emitted;
    ev.done.text_off = r->emitted;
    ev.done.finish = j->res.finish;
    ev.done.n_tokens = (int64_t)j->res.out_ids.n;
    ev.done.position = j->req.commit ? r->gs->pos : j->req.state->pos;
    ev.done.seed = j->req.seed;
    ev.done.committed = j->req.commit;
    r->emitted = j->res.out_text.n;
    return emit_event(s, j, &ev);
}

/* The stream ends: `out` tokens generated over all choices. */
int emit_end(struct sched *s, struct job *j, int64_t out)
{
    struct gen_event ev = {.kind = GEN_EV_END};
    ev.end.prompt_tokens = j->res.n_input;
    ev.end.completion_tokens = out;
    return emit_event(s, j, &ev);
}

/* ---- compute side: one job's phases ------------------------------------- */

static int start_run(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    r->seg = -1;
    /* Text at a stream's start begins with the tokenizer's BOS, as the
     * reference's encode() puts it there (Llama-style tokenizers; none for
     * byte-level ones): the model reads it first. Ids are taken as sent. */
    const int32_t bos = codec_bos(s->codec);
    if (bos >= 0 && (j->req.streamed || j->req.text) && j->req.state && j->req.state->pos == 0 &&
        idvec_push(&r->pending, bos) != 0)
        return RC_ENOMEM;
    if (j->req.streamed) {
        if (codec_enc_create(s->codec, &r->enc) != 0)
            return RC_ENOMEM;
        r->ids = r->pending.v;
        r->n_ids = r->pending.n;
    } else if (j->req.text) {
        if (codec_encode(s->codec, j->req.text, j->req.text_len, &r->pending) != 0)
            return RC_ENOMEM;
        r->ids = r->pending.v;
        r->n_ids = r->pending.n;
        r->input_eof = 1;
    } else {
        r->ids = j->req.ids;
        r->n_ids = j->req.n_ids;
        r->input_eof = 1;
    }
    if (j->req.want_details && tok_details_init(&j->res.in_rows, j->req.top_k) != 0)
        return RC_ENOMEM;
    /* Input known in full: all the memory its scoring needs, now. Once the
     * first chunk is read into the session nothing may fail for want of
     * memory, or a 503 would leave the session part-way through the text. */
    if (j->req.want_details && r->input_eof &&
        tok_details_reserve(&j->res.in_rows,
                            r->n_ids < j->req.detail_limit ? r->n_ids : j->req.detail_limit))
        return RC_ENOMEM;
    if (j->req.gen_details && tok_details_init(&j->res.out_rows, j->req.top_k) != 0)
        return RC_ENOMEM;
    r->phase = PH_INPUT;
    return 0;
}

/* Streamed bytes taken this tick -> ids. */
static int encode_taken(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    if (!j->req.streamed || (r->taken.n == 0 && !r->took_final) || r->input_eof)
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

static int begin_generation(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    if (!j->req.state->has_last) {
        set_job_error(j, RC_EINVAL, API_INVALID_REQUEST,
             "nothing to continue from: the session has read no tokens yet");
        return RC_EINVAL;
    }
    r->gs = j->req.state;
    if (j->req.gen) {
        /* the session's state stays as it was until the loop commits */
        int rc = state_copy(j->req.gen, j->req.state);
        if (rc) {
            set_job_error(j, rc, API_INTERNAL, "copying the state failed");
            return rc;
        }
        r->gs = j->req.gen;
    }
    /* choice i of n draws from seed + i: each is the single-choice answer
     * to the same request with that seed */
    sampler_seed(&r->rng, j->req.seed + (uint64_t)j->run->choice);
    r->phase = PH_GEN;
    struct gen_event begin = {.kind = GEN_EV_BEGIN, .choice = r->choice};
    if (j->req.stream.format && emit_event(s, j, &begin))
        return RC_ENOMEM;
    return 0;
}

/* What a lane staged (its token events) goes to its job's stream, lane
 * after lane: a stream interleaves the choices' chunks by index. */
static int flush_lane_events(struct job *j, struct job *l)
{
    struct outbuf *st = &l->run->stage;
    int rc = st->n ? outbuf_put(&j->run->stage, st->p, st->n) : 0;
    st->n = 0;
    return rc;
}

/* n > 1, the input read: one lane per choice, each from its own copy of
 * the input's state (begin_generation copies it into gens[i]) with seed + i. The
 * lanes are decode rows of the same ticks as everything else. */
static int start_lanes(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    if (!(r->lanes = rc_calloc((size_t)j->req.n_choices, sizeof *r->lanes)))
        return RC_ENOMEM;
    r->n_lanes = j->req.n_choices;
    for (int i = 0; i < j->req.n_choices; i++) {
        struct job *l = rc_malloc(sizeof *l);
        if (!l)
            return RC_ENOMEM;
        *l = *j;
        memset(&l->res.out_ids, 0, sizeof l->res.out_ids);
        memset(&l->res.out_text, 0, sizeof l->res.out_text);
        memset(&l->res.out_rows, 0, sizeof l->res.out_rows);
        l->res.out_truncated = 0;
        l->res.finish = NULL;
        l->res.choices = NULL;
        l->req.gens = NULL;
        l->req.gen = j->req.gens[i];
        l->run = NULL;
        r->lanes[i] = l; /* freed with r from here on */
        if (!(l->run = rc_calloc(1, sizeof *l->run)))
            return RC_ENOMEM;
        l->run->seg = -1;
        l->run->choice = i;
        int rc = j->req.gen_details ? tok_details_init(&l->res.out_rows, j->req.top_k) : 0;
        if (!rc)
            rc = begin_generation(s, l);
        if (!rc)
            rc = flush_lane_events(j, l);
        if (rc) {
            if (l->res.rc)
                set_job_error(j, l->res.rc, l->res.err.kind, l->res.err.message);
            return rc;
        }
    }
    r->lanes_left = j->req.n_choices;
    r->gs = j->req.state;
    r->phase = PH_GEN;
    return 0;
}

/* After a tick: lanes that ended give their results to choices[i] (and a
 * stream its finish chunk); their events go to the job's stream. When the
 * last has ended the job finishes (a stream: usage and [DONE]); a lane that
 * failed fails the job. */
void gather_finished_lanes(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    int rc = 0;
    for (int i = 0; i < r->n_lanes && !j->res.rc; i++) {
        struct job *l = r->lanes[i];
        struct job_run *lr = l->run;
        if (lr->finished_now) {
            lr->finished_now = 0;
            r->lanes_left--;
            if (l->res.rc) {
                set_job_error(j, l->res.rc, l->res.err.kind, l->res.err.message);
                break;
            }
            if (j->req.stream.format && (rc = emit_done(s, l)) != 0)
                break;
            struct choice_out *c = &j->res.choices[i];
            c->ids = l->res.out_ids;
            c->text = l->res.out_text;
            c->rows = l->res.out_rows;
            c->rows_truncated = l->res.out_truncated;
            c->finish = l->res.finish;
            memset(&l->res.out_ids, 0, sizeof l->res.out_ids);
            memset(&l->res.out_text, 0, sizeof l->res.out_text);
            memset(&l->res.out_rows, 0, sizeof l->res.out_rows);
        }
        if ((rc = flush_lane_events(j, l)) != 0)
            break;
    }
    if (rc)
        set_job_error(j, rc, API_OUT_OF_MEMORY, "out of memory");
    if (j->res.rc) {
        finish_job(j, "error");
        return;
    }
    if (r->lanes_left > 0)
        return;
    int64_t out = 0;
    for (int i = 0; i < j->req.n_choices; i++)
        out += (int64_t)j->res.choices[i].ids.n;
    if (j->req.stream.format && emit_end(s, j, out) != 0) {
        set_job_error(j, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory");
        finish_job(j, "error");
        return;
    }
    finish_job(j, "done");
}

/* ---- a run's rows ---------------------------------------------------------- */


/* Fail j (400) when reading n more tokens into st would take it past
 * STATE_MAX_POS. Checked per job before batching: fwd_run refuses such a
 * segment too, but its failure fails the whole batch, every other
 * session's request with it. Only a restored snapshot can start near the
 * bound (core/state.h). */
int fail_past_max_pos(struct job *j, const struct mstate *st, int n)
{
    if ((uint64_t)st->pos <= STATE_MAX_POS - (uint64_t)n)
        return 0;
    char msg[160];
    snprintf(msg, sizeof msg,
             "the session is at position %lld: %d more tokens would pass the maximum position "
             "2^53",
             (long long)st->pos, n);
    set_job_error(j, RC_ERANGE, API_INVALID_REQUEST, msg);
    finish_job(j, "error");
    return 1;
}

/* Score the rows of one input segment; targets are its tokens. */
int score_segment(struct sched *s, struct job *j, const float *hid, const float *prev)
{
    struct job_run *r = j->run;
    const int32_t *tok = r->ids + r->off - r->n;
    int64_t pos0 = j->req.state->pos - r->n; /* position of tok[0] */
    int first = r->had_last ? 0 : 1;      /* tok[0] has no prediction from zero */
    int k = j->req.want_details ? j->req.top_k : 0;
    if (!r->had_last && j->req.want_details && j->res.in_rows.n < j->req.detail_limit &&
        tok_details_push(&j->res.in_rows, pos0, tok[0], NAN, NULL, NULL) != 0)
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
            int keep = j->req.want_details && j->res.in_rows.n < j->req.detail_limit;
            float lp = row_logprob(s, lg, tok[t], keep ? k : 0, s->top_ids, s->top_lps);
            score_stats_add(&j->res.stats, pos0 + t - 1, lp);
            if (keep) {
                if (tok_details_push(&j->res.in_rows, pos0 + t, tok[t], lp, s->top_ids, s->top_lps))
                    return RC_ENOMEM;
            } else if (j->req.want_details)
                j->res.in_truncated = 1;
        }
    }
    return 0;
}

/* Sample the next token of each decoding job from its last row. */
int decode_sample(struct sched *s, struct job **dec, int nd)
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
            int32_t id = sampler_pick(&j->req.sp, &r->rng, lg, s->vocab, s->ss);
            r->tok = id;
            if (j->req.gen_details) {
                float lp = row_logprob(s, lg, id, j->req.top_k, s->top_ids, s->top_lps);
                /* a stream sends each row with its token and keeps none:
                 * no limit applies, and a stale row is never sent again */
                if (j->req.stream.format && !j->req.keep_rows)
                    j->res.out_rows.n = 0;
                r->pushed = r->over = 0;
                if (!j->req.stream.format &&
                    j->res.in_rows.n + j->res.out_rows.n >= j->req.detail_limit)
                    r->over = 1; /* truncated, once the token is kept (not eos) */
                else if (tok_details_push(&j->res.out_rows, r->gs->pos, id, lp, s->top_ids,
                                          s->top_lps))
                    return RC_ENOMEM;
                else
                    r->pushed = 1;
            }
        }
    }
    return 0;
}

/* After the run: the decode token was read; record it, stream it, stop? */
int record_decoded_token(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    size_t plen;
    const char *piece = codec_piece(s->codec, r->tok, &plen);
    if (idvec_push(&j->res.out_ids, r->tok) || outbuf_put(&j->res.out_text, piece, plen))
        return RC_ENOMEM;
    if (r->over)
        j->res.out_truncated = 1;
    /* a stop sequence cuts the text where it starts */
    struct stop_list stops = {j->req.stop, j->req.stop_len, j->req.n_stop};
    size_t to;
    int stopped = stop_scan(j->res.out_text.p, j->res.out_text.n, r->emitted, &stops, &to);
    if (stopped) {
        j->res.out_text.n = to;
        finish_job(j, "stop");
    }
    else if ((int)j->res.out_ids.n >= j->req.gen_max)
        finish_job(j, "length");
    if (j->req.stream.format) {
        size_t from = r->emitted;
        if (r->phase == PH_FINISHED)
            to = j->res.out_text.n; /* nothing more will come: all of it now */
        r->emitted = to;
        if (emit_token(s, j, from, to))
            return RC_ENOMEM;
    }
    return 0;
}

/* Fail j and end it now. */
void end_job_with_error(struct job *j, int rc, int kind, const char *msg)
{
    set_job_error(j, rc, kind, msg);
    finish_job(j, "error");
}

/* Before planning: a cancelled job ends, a special job runs, a run job
 * starts, takes in its streamed bytes, and moves on once its input is read. */
void advance_job(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    r->seg = -1;
    r->finished_now = 0;
    for (int k = 0; k < r->n_lanes; k++)
        r->lanes[k]->run->seg = -1;
    if (r->cancel) {
        if (r->cancel == CANCEL_NO_MEMORY)
            set_job_error(j, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory buffering the upload");
        else
            set_job_error(j, RC_ECANCELED, API_UNAVAILABLE, "cancelled");
        finish_job(j, "cancelled");
        return;
    }
    if (j->req.kind != JOB_RUN) {
        run_special_job(s, j);
        return;
    }
    int rc = 0;
    if (r->phase == PH_START)
        rc = start_run(s, j);
    if (!rc)
        rc = encode_taken(s, j);
    if (!rc && r->phase == PH_INPUT && r->off == r->n_ids && r->input_eof) {
        j->res.position = j->req.state->pos;
        if (j->req.gen_max > 0)
            rc = j->req.n_choices > 1 ? start_lanes(s, j) : begin_generation(s, j);
        else
            finish_job(j, "done");
    }
    if (rc) {
        if (!j->res.rc)
            set_job_error(j, rc, rc == RC_ENOMEM ? API_OUT_OF_MEMORY : API_INTERNAL,
                 rc == RC_ENOMEM ? "out of memory" : "internal error");
        finish_job(j, "error");
    }
}

/* What j asks of this tick (struct batch_want). A chunk that would pass
 * the maximum position fails j here, before it can fail a whole batch. */
struct batch_want job_want(struct sched *s, const struct batch_limits *lim, struct job *j)
{
    struct job_run *r = j->run;
    struct batch_want w = {0, 0, 0};
    if (j->req.kind != JOB_RUN)
        return w;
    if (r->phase == PH_GEN) {
        w.decode_rows = r->n_lanes ? 0 : 1;
        for (int k = 0; k < r->n_lanes; k++)
            w.decode_rows += r->lanes[k]->run->phase == PH_GEN;
    } else if (r->phase == PH_INPUT) {
        w.input_left = r->n_ids - r->off;
        w.input_eof = r->input_eof;
        int n = batch_prefill_chunk(lim, &w);
        if (n > 0 && fail_past_max_pos(j, j->req.state, n))
            w = (struct batch_want){0, 0, 0};
    }
    return w;
}
