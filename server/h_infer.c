/*
 * h_infer.c — the inference handlers: tokenize, detokenize, score,
 * append (JSON or streamed text/plain), generate, completions.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "handlers.h"
#include "codec.h"
#include "errors.h"
#include "os.h"
#include "response.h"
#include "state.h"

BODY_READER(tokenize)
BODY_READER(detokenize)
BODY_READER(score)
BODY_READER(generate)
BODY_READER(completion)

static uint64_t random_seed(void)
{
    uint64_t x = 0;
    if (os_random_bytes(&x, sizeof x) != 0)
        x = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;
    return x & INT64_MAX; /* reported back as a JSON integer */
}

static const char *piece_cb(const void *ctx, int32_t id, size_t *len)
{
    return codec_piece(ctx, id, len);
}

static struct vocab_view vocab_of(struct app *a)
{
    return (struct vocab_view){piece_cb, a->codec};
}

/* ---- stream pulling ---------------------------------------------------------- */

static ssize_t pull_stream_events(void *ud, struct http_req *h, char *buf, size_t max)
{
    struct rq *q = http_data(h);
    int done;
    size_t n = sched_pull(q->a->sched, q->job, buf, max, &done);
    if (n)
        return (ssize_t)n;
    if (done && (q->phase == RQ_STREAM_END || q->phase == RQ_STREAM_END_OOM)) {
        static const char oom[] = SSE_OOM_ERROR_EVENT;
        if (q->phase == RQ_STREAM_END_OOM && max >= sizeof oom - 1) {
            memcpy(buf, oom, sizeof oom - 1);
            q->phase = RQ_STREAM_END;
            return (ssize_t)(sizeof oom - 1);
        }
        return HTTP_PULL_END;
    }
    return HTTP_PULL_NONE;
}

/* ---- route handlers ------------------------------------------------------------ */

void h_tokenize(struct rq *q)
{
    struct req_tokenize r;
    if (read_tokenize(q, &r) != 0)
        return;
    struct job *j = job_new(JOB_TOKENIZE);
    if (!j) {
        req_tokenize_free(&r);
        respond_oom(q->h, NULL);
        return;
    }
    j->req.text = r.text;
    j->req.text_len = r.text_len;
    r.text = NULL;
    j->req.want_details = r.with_pieces;
    j->req.detail_limit = (size_t)q->a->cfg->detail_limit;
    rq_submit(q, j);
}

void done_tokenize(struct rq *q, struct job *j)
{
    /* the compute thread wrote the body (resp_tokenize) */
    char *body = j->res.out_text.p;
    size_t n = j->res.out_text.n;
    memset(&j->res.out_text, 0, sizeof j->res.out_text);
    if (!body) {
        respond_oom(q->h, "building the response");
        return;
    }
    http_respond(q->h, 200, "application/json", body, n);
}

void h_detokenize(struct rq *q)
{
    struct req_detokenize r;
    if (read_detokenize(q, &r) != 0)
        return;
    /* Decoding is concatenating pieces: a copy, not compute. */
    struct outbuf b = {0};
    int rc = 0;
    for (size_t i = 0; i < r.n_tokens && !rc; i++) {
        size_t len;
        const char *p = codec_piece(q->a->codec, r.tokens[i], &len);
        rc = outbuf_put(&b, p, len);
    }
    req_detokenize_free(&r);
    json_t *res = rc ? NULL : resp_detokenize(b.p ? b.p : "", b.n);
    outbuf_free(&b);
    respond_json(q->h, 200, res);
}

/* Fill a RUN job's input from a parsed req_input (moves the buffers). */
static void take_input(struct job *j, struct req_input *in)
{
    j->req.text = in->text;
    j->req.text_len = in->text_len;
    j->req.ids = in->tokens;
    j->req.n_ids = in->n_tokens;
    in->text = NULL;
    in->tokens = NULL;
}

static void score_job(struct rq *q, struct job *j, const struct req_score *r)
{
    j->req.score = 1;
    j->req.want_details = r->logprobs;
    j->req.top_k = r->top_logprobs;
    j->req.detail_limit = (size_t)q->a->cfg->detail_limit;
    q->want_details = r->logprobs;
}

void h_score(struct rq *q, int with_session)
{
    if (with_session && idem_gate(q))
        return;
    struct req_score r;
    if (read_score(q, &r) != 0)
        return;
    struct session *s = NULL;
    if (with_session && !(s = idle_session(q))) {
        req_score_free(&r);
        return;
    }
    if (!with_session && r.expected_position >= 0) {
        req_score_free(&r);
        respond_err(q->h, API_INVALID_REQUEST,
                    "field 'expected_position' applies to a session's append, not to /v1/score");
        return;
    }
    if (s && position_gate(q, s, r.expected_position) != 0) {
        req_score_free(&r);
        return;
    }
    struct job *j = job_new(JOB_RUN);
    if (!j) {
        req_score_free(&r);
        respond_oom(q->h, NULL);
        return;
    }
    take_input(j, &r.in);
    score_job(q, j, &r);
    req_score_free(&r);
    if (s) {
        j->req.state = s->state;
        j->loop.sess_a = s;
        j->req.record_fed = q->a->cluster != NULL;
    } else if (tmp_state(q, j) != 0) {
        job_free(j);
        return;
    }
    rq_submit(q, j);
}

void done_score(struct rq *q, struct job *j)
{
    struct vocab_view v = vocab_of(q->a);
    struct score_view sv = {
        .position = j->res.position,
        .n_tokens = j->res.n_input,
        .st = &j->res.stats,
        .d = q->want_details ? &j->res.in_rows : NULL,
        .truncated = j->res.in_truncated,
    };
    size_t n;
    char *s = json_body(resp_score(&sv, &v), &n);
    if (s) {
        http_respond(q->h, 200, "application/json", s, n);
        return;
    }
    if (q->route != R_APPEND) {
        respond_oom(q->h, "building the response"); /* nothing was changed */
        return;
    }
    /* the text is in the session already: say so, in the little we can */
    char small[200];
    if (resp_fixed_appended(small, sizeof small, (int64_t)j->res.position, j->res.n_input) == 0)
        http_respond_small(q->h, 200, "application/json", small);
    else
        respond_oom(q->h, "building the response");
}

/* Copy stop sequences into the job. */
static int take_stop(struct job *j, struct req_stop *st)
{
    j->req.stop = st->s;
    j->req.stop_len = st->len;
    j->req.n_stop = st->n;
    memset(st, 0, sizeof *st);
    return 0;
}

/* Submit a generation; a streamed one answers 200 now and its events
 * follow as the compute thread makes them. */
static void submit_generation(struct rq *q, struct job *j)
{
    rq_submit(q, j);
    if (j->req.stream.format) {
        q->phase = RQ_STREAMING;
        http_respond_stream(q->h, 200, "text/event-stream", pull_stream_events);
    }
}

void h_generate(struct rq *q)
{
    if (idem_gate(q))
        return;
    struct req_generate r;
    if (read_generate(q, &r) != 0)
        return;
    struct session *s = idle_session(q);
    if (!s) {
        req_generate_free(&r);
        return;
    }
    if (position_gate(q, s, r.expected_position) != 0) {
        req_generate_free(&r);
        return;
    }
    if (s->state->pos == 0) {
        req_generate_free(&r);
        respond_err(q->h, API_INVALID_REQUEST,
                    "session '%s' has read no tokens yet: append some text first", s->id);
        return;
    }
    struct job *j = job_new(JOB_RUN);
    if (!j) {
        req_generate_free(&r);
        respond_oom(q->h, NULL);
        return;
    }
    j->req.state = s->state;
    j->loop.sess_a = s;
    j->req.gen_max = r.max_tokens;
    j->req.sp = r.sp;
    j->req.seed = r.has_seed ? r.seed : random_seed();
    take_stop(j, &r.stop);
    j->req.commit = r.commit;
    /* with a store, a kept generation is acknowledged once the store has
     * its tokens: recorded, and a stream's last events wait for that */
    j->req.record_fed = r.commit && q->a->cluster;
    /* a stream's done event says "kept": it waits until the loop has
     * swapped the state in (and the store has it), so a client that reads
     * done and leaves, or sends its next request at once, finds it kept */
    j->req.hold_tail = r.commit && r.stream;
    j->req.keep_rows = j->req.record_fed && r.stream && q->has_idem;
    j->req.ignore_eos = r.ignore_eos;
    j->req.gen_details = r.logprobs;
    j->req.top_k = r.top_logprobs;
    j->req.detail_limit = (size_t)q->a->cfg->detail_limit;
    j->req.stream.format = r.stream ? STREAM_SESSION : STREAM_NONE;
    q->want_details = r.logprobs;
    req_generate_free(&r);
    if (job_state(q, j, &j->req.gen) != 0) {
        job_free(j);
        return;
    }
    submit_generation(q, j);
}

char *generate_answer(struct rq *q, struct job *j, size_t *n)
{
    struct vocab_view v = vocab_of(q->a);
    struct gen_view g = {
        .text = j->res.out_text.p,
        .text_len = j->res.out_text.n,
        .ids = j->res.out_ids.v,
        .n_ids = j->res.out_ids.n,
        .finish_reason = j->res.finish,
        .position = j->res.position,
        .seed = j->req.seed,
        .committed = j->req.commit,
        .d = q->want_details ? &j->res.out_rows : NULL,
        .truncated = j->res.out_truncated,
    };
    return json_body(resp_generate(&g, &v), n);
}

void done_generate(struct rq *q, struct job *j)
{
    size_t n;
    char *body = generate_answer(q, j, &n);
    if (!body) {
        respond_oom(q->h, "building the response"); /* nothing committed: the session is as it was */
        return;
    }
    commit_job_state(j);
    http_respond(q->h, 200, "application/json", body, n);
}


/* An empty prompt: a recurrent model's zero state has made no prediction
 * yet, so something must be read first. Like HF's generate() for these
 * models (bos = eos = <|endoftext|>), that is the end-of-text token: the
 * start of a new document; a tokenizer with its own BOS (Llama-style) gives
 * that instead. It counts in usage.prompt_tokens (the model
 * read it), it is not echoed or scored. 0, or -1 when answered. */
static int completion_start_token(struct rq *q, struct req_input *prompt)
{
    /* A tokenizer with a BOS of its own (Llama-style <s>) starts there. */
    int32_t eos = codec_bos(q->a->codec);
    if (eos < 0)
        eos = codec_eos(q->a->codec);
    if (eos < 0) {
        respond_err(q->h, API_INVALID_REQUEST,
                    "field 'prompt' is empty and this model's tokenizer has no end-of-text "
                    "token to start from: send at least one token");
        return -1;
    }
    if (!(prompt->tokens = rc_malloc(sizeof *prompt->tokens))) {
        respond_oom(q->h, NULL);
        return -1;
    }
    prompt->tokens[0] = eos;
    prompt->n_tokens = 1;
    return 0;
}

/* The echoed prompt: the text as sent, or the ids' pieces. 0 or RC_ENOMEM. */
static int completion_echo(const struct app *a, const struct req_input *prompt,
                           struct outbuf *echo)
{
    if (prompt->text && outbuf_put(echo, prompt->text, prompt->text_len) != 0)
        return RC_ENOMEM;
    for (size_t i = 0; prompt->tokens && i < prompt->n_tokens; i++) {
        size_t len;
        const char *p = codec_piece(a->codec, prompt->tokens[i], &len);
        if (outbuf_put(echo, p, len) != 0)
            return RC_ENOMEM;
    }
    return 0;
}

/* "cmpl-" and 24 random hex digits ("cmpl-" alone without randomness). */
static void completion_id(char out[40])
{
    unsigned char rnd[12];
    snprintf(out, 40, "cmpl-");
    if (os_random_bytes(rnd, sizeof rnd) == 0)
        for (size_t i = 0; i < sizeof rnd; i++)
            snprintf(out + 5 + 2 * i, 3, "%02x", rnd[i]);
}

/* The job's names and per-choice arrays. 0 or RC_ENOMEM (j keeps what it
 * got; job_free frees it). */
static int completion_alloc(const struct app *a, struct job *j, const struct req_completion *r)
{
    char id[40];
    completion_id(id);
    j->req.stream.cmpl_id = rc_strdup(id);
    j->req.stream.model = rc_strdup(r->model ? r->model : a->model_name); /* echoed as sent */
    j->req.stream.system_fingerprint = a->system_fingerprint; /* borrowed: the app outlives jobs */
    j->req.n_choices = r->n;
    if (r->n > 1 && (!(j->res.choices = rc_calloc((size_t)r->n, sizeof *j->res.choices)) ||
                     !(j->req.gens = rc_calloc((size_t)r->n, sizeof *j->req.gens))))
        return RC_ENOMEM;
    return j->req.stream.cmpl_id && j->req.stream.model ? 0 : RC_ENOMEM;
}

/* Everything else the job and the answer need from r (moves r's prompt,
 * stop sequences and echo). */
static void completion_fill(struct rq *q, struct job *j, struct req_completion *r, int empty,
                            struct outbuf *echo)
{
    struct app *a = q->a;
    take_input(j, &r->prompt);
    j->req.stream.created = (int64_t)time(NULL);
    j->req.stream.include_usage = r->include_usage;
    j->req.score = r->echo && r->logprobs >= 0 && !empty;
    j->req.want_details = j->req.score;
    j->req.top_k = r->logprobs > 0 ? r->logprobs : 0;
    /* the limit is per response: n choices share it (each repeats the
     * echoed prompt's rows) */
    j->req.detail_limit = (size_t)a->cfg->detail_limit / (size_t)(r->n > 1 ? r->n : 1);
    j->req.gen_max = r->max_tokens;
    j->req.sp = r->sp;
    j->req.seed = r->has_seed ? r->seed : random_seed();
    take_stop(j, &r->stop);
    j->req.gen_details = r->logprobs >= 0;
    j->req.stream.format = r->stream ? STREAM_OPENAI : STREAM_NONE;
    q->cmpl_logprobs = r->logprobs;
    q->cmpl_echo = r->echo;
    if (j->req.stream.format) {
        j->req.stream.echo = echo->p;
        j->req.stream.echo_len = echo->n;
    } else {
        q->echo = echo->p;
        q->echo_len = echo->n;
    }
}

/* The states the job runs in: tmp reads the prompt once; with n > 1,
 * choice i generates in gens[i] from a copy of it (n more states, counted
 * like tmp). 0, or -1 when answered (and j is gone). */
static int completion_states(struct rq *q, struct job *j)
{
    if (tmp_state(q, j) != 0) {
        job_free(j);
        return -1;
    }
    for (int i = 0; j->req.n_choices > 1 && i < j->req.n_choices; i++)
        if (job_state(q, j, &j->req.gens[i]) != 0) {
            job_release(q->a, j); /* the states made so far and their reservations */
            return -1;
        }
    return 0;
}

void h_completions(struct rq *q)
{
    struct app *a = q->a;
    struct req_completion r;
    if (read_completion(q, &r) != 0)
        return;
    struct job *j = job_new(JOB_RUN);
    if (!j) {
        req_completion_free(&r);
        respond_oom(q->h, NULL);
        return;
    }
    int empty = !r.prompt.text && !r.prompt.tokens;
    if (empty && completion_start_token(q, &r.prompt) != 0) {
        req_completion_free(&r);
        job_free(j);
        return;
    }
    struct outbuf echo = {0};
    if ((r.echo && !empty && completion_echo(a, &r.prompt, &echo) != 0) ||
        completion_alloc(a, j, &r) != 0) {
        outbuf_free(&echo);
        req_completion_free(&r);
        job_free(j);
        respond_oom(q->h, NULL);
        return;
    }
    completion_fill(q, j, &r, empty, &echo);
    req_completion_free(&r);
    if (completion_states(q, j) != 0)
        return;
    submit_generation(q, j);
}

void done_completions(struct rq *q, struct job *j)
{
    struct vocab_view v = vocab_of(q->a);
    /* one choice: the results are in j->out_*; n > 1: in j->choices */
    size_t n = j->req.n_choices > 1 ? (size_t)j->req.n_choices : 1;
    struct choice_out one = {.ids = j->res.out_ids,
                             .text = j->res.out_text,
                             .rows = j->res.out_rows,
                             .rows_truncated = j->res.out_truncated,
                             .finish = j->res.finish};
    const struct choice_out *src = j->req.n_choices > 1 ? j->res.choices : &one;
    struct outbuf *text = rc_calloc(n, sizeof *text);
    struct tok_details *all = rc_calloc(n, sizeof *all);
    struct completion_choice *ch = rc_calloc(n, sizeof *ch);
    int64_t generated = 0;
    int oom = !text || !all || !ch;
    for (size_t c = 0; c < n && !oom; c++) {
        const struct choice_out *x = &src[c];
        tok_details_init(&all[c], j->req.top_k);
        oom = outbuf_put(&text[c], q->echo ? q->echo : "", q->echo_len) ||
              outbuf_put(&text[c], x->text.p ? x->text.p : "", x->text.n);
        if (q->cmpl_logprobs >= 0) {
            /* echo: the prompt's rows first (the first has no logprob) */
            const struct tok_details *parts[2] = {q->cmpl_echo ? &j->res.in_rows : NULL, &x->rows};
            for (int p = 0; p < 2 && !oom; p++)
                for (size_t i = 0; parts[p] && i < parts[p]->n && !oom; i++)
                    oom = tok_details_push(&all[c], parts[p]->pos[i], parts[p]->id[i],
                                           parts[p]->lp[i],
                                           parts[p]->top_id + i * (size_t)parts[p]->k,
                                           parts[p]->top_lp + i * (size_t)parts[p]->k) != 0;
        }
        generated += (int64_t)x->ids.n;
        ch[c] = (struct completion_choice){
            .text = text[c].p,
            .text_len = text[c].n,
            .finish_reason = x->finish && !strcmp(x->finish, "eos") ? "stop" : x->finish,
            .d = q->cmpl_logprobs >= 0 ? &all[c] : NULL,
            .text_offset0 = q->cmpl_echo ? 0 : q->echo_len,
            .truncated = q->cmpl_logprobs >= 0 &&
                         (x->rows_truncated || (q->cmpl_echo && j->res.in_truncated)),
        };
    }
    json_t *o = NULL;
    if (!oom) {
        struct completion_view cv = {
            .id = j->req.stream.cmpl_id,
            .created = j->req.stream.created,
            .model = j->req.stream.model,
            .system_fingerprint = j->req.stream.system_fingerprint,
            .ch = ch,
            .n_ch = n,
            .prompt_tokens = j->res.n_input,
            .completion_tokens = generated,
            .with_usage = 1,
        };
        o = resp_completion(&cv, &v);
    }
    for (size_t c = 0; c < n; c++) {
        if (all)
            tok_details_free(&all[c]);
        if (text)
            outbuf_free(&text[c]);
    }
    rc_free(all);
    rc_free(text);
    rc_free(ch);
    respond_json(q->h, 200, o);
}


/* ---- streamed text/plain append ------------------------------------------------ */

int start_text_append(struct rq *q)
{
    struct app *a = q->a;
    struct req_score r;
    struct api_error e;
    if (req_score_query(http_query(q->h, "logprobs"), http_query(q->h, "top_logprobs"),
                        http_query(q->h, "expected_position"), &a->lim, &r, &e) != 0) {
        http_respond_error(q->h, &e);
        return -1;
    }
    if (idem_gate(q)) {
        if (!q->cop)
            return -1; /* answered */
        q->phase = RQ_TEXT_PARKED; /* the upload waits, paused, for the lookup */
        return 0;
    }
    struct session *s = idle_session(q);
    if (!s) {
        if (q->waiting) {
            q->phase = RQ_TEXT_PARKED; /* the upload waits, paused, for the state */
            return 0;
        }
        return -1;
    }
    if (position_gate(q, s, r.expected_position) != 0)
        return -1;
    q->phase = RQ_HANDLING;
    struct job *j = job_new(JOB_RUN);
    if (!j) {
        respond_oom(q->h, NULL);
        return -1;
    }
    j->req.streamed = 1;
    score_job(q, j, &r);
    j->req.record_fed = a->cluster != NULL;
    j->req.state = s->state;
    j->loop.sess_a = s;
    q->body = RQ_BODY_TEXT;
    rq_submit(q, j);
    return 0;
}

size_t on_data(void *ud, struct http_req *h, const char *data, size_t n)
{
    struct rq *q = http_data(h);
    if (q && q->phase == RQ_TEXT_PARKED) {
        http_pause_upload(h); /* nothing taken until the state is back */
        return 0;
    }
    if (!q || !q->job)
        return n;
    size_t have = sched_feed(q->a->sched, q->job, data, n, 0);
    if (have >= q->a->cfg->upload_buffer_bytes) {
        /* backpressure: the compute thread wakes us when it has taken it */
        q->upload_paused = 1;
        http_pause_upload(h);
    }
    return n;
}

/* ---- dispatch ---------------------------------------------------------------------- */
