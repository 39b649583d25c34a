#include "sse.h"

#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "response.h"

/* Append o as one event, consuming it. f0: this thread's allocation
 * failures before o was built; any since and o may lack a member
 * (json_object_set_new drops a NULL value and says so only in its return),
 * so it is not sent. */
static int put_event(struct outbuf *b, json_t *o, unsigned long f0)
{
    if (!o || rc_alloc_failures_here() != f0) {
        json_decref(o);
        return RC_ENOMEM;
    }
    int rc = sse_put_json(b, o);
    json_decref(o);
    return rc;
}

/* ---- OpenAI: text_completion chunks ---------------------------------------- */

/* One chunk: a text delta, optionally a token's logprobs, and (the last
 * chunk of a choice) its finish reason. */
static int openai_chunk(struct outbuf *b, const struct gen_stream *st, int choice,
                        const char *delta, size_t dlen, const struct tok_details *d,
                        size_t text_off, const char *finish_reason)
{
    unsigned long f0 = rc_alloc_failures_here();
    struct completion_choice ch = {.text = delta, .text_len = dlen,
                                   .finish_reason = finish_reason, .d = d,
                                   .text_offset0 = text_off};
    struct completion_view cv = {.id = st->cmpl_id, .created = st->created, .model = st->model,
                                 .system_fingerprint = st->system_fingerprint,
                                 .ch = &ch, .n_ch = 1, .index0 = choice};
    return put_event(b, resp_completion(&cv, &st->vocab), f0);
}

static int openai_token(struct outbuf *b, const struct gen_stream *st, const struct gen_event *ev)
{
    struct tok_details one;
    const struct tok_details *d = NULL;
    size_t row = ev->token.row;
    if (ev->token.rows && row < ev->token.rows->n) {
        /* a one-row view of the token's row */
        one = *ev->token.rows;
        one.n = 1;
        one.pos += row;
        one.id += row;
        one.lp += row;
        one.top_id += row * (size_t)one.k;
        one.top_lp += row * (size_t)one.k;
        d = &one;
    }
    return openai_chunk(b, st, ev->choice, ev->token.text, ev->token.text_len, d,
                        st->echo_len + ev->token.text_off, NULL);
}

/* The held-back text, then the finish chunk ("eos" is OpenAI's "stop"). */
static int openai_done(struct outbuf *b, const struct gen_stream *st, const struct gen_event *ev)
{
    int rc = 0;
    if (ev->done.text_len)
        rc = openai_chunk(b, st, ev->choice, ev->done.text, ev->done.text_len, NULL,
                          st->echo_len + ev->done.text_off, NULL);
    const char *finish = !strcmp(ev->done.finish, "eos") ? "stop" : ev->done.finish;
    return rc ? rc : openai_chunk(b, st, ev->choice, "", 0, NULL, 0, finish);
}

/* The usage chunk (include_usage; the prompt counted once: it was read
 * once), then [DONE]. */
static int openai_end(struct outbuf *b, const struct gen_stream *st, const struct gen_event *ev)
{
    int rc = 0;
    if (st->include_usage) {
        unsigned long f0 = rc_alloc_failures_here();
        json_t *o = json_object();
        json_t *u = json_object();
        if (!o || !u) {
            json_decref(o);
            json_decref(u);
            return RC_ENOMEM;
        }
        int64_t in = ev->end.prompt_tokens, out = ev->end.completion_tokens;
        json_object_set_new(o, "id", json_string(st->cmpl_id));
        json_object_set_new(o, "object", json_string("text_completion"));
        json_object_set_new(o, "created", json_integer(st->created));
        json_object_set_new(o, "model", json_string(st->model));
        if (st->system_fingerprint)
            json_object_set_new(o, "system_fingerprint", json_string(st->system_fingerprint));
        json_object_set_new(o, "choices", json_array());
        json_object_set_new(u, "prompt_tokens", json_integer(in));
        json_object_set_new(u, "completion_tokens", json_integer(out));
        json_object_set_new(u, "total_tokens", json_integer(in + out));
        json_object_set_new(o, "usage", u);
        rc = put_event(b, o, f0);
    }
    return rc ? rc : sse_put_done(b);
}

static int openai_encode(struct outbuf *b, const struct gen_stream *st, const struct gen_event *ev)
{
    switch (ev->kind) {
    case GEN_EV_BEGIN:
        if (!st->echo_len)
            return 0;
        /* the prompt goes first, as its own chunk */
        return openai_chunk(b, st, ev->choice, st->echo, st->echo_len, NULL, 0, NULL);
    case GEN_EV_TOKEN:
        return openai_token(b, st, ev);
    case GEN_EV_DONE:
        return openai_done(b, st, ev);
    case GEN_EV_END:
        return openai_end(b, st, ev);
    }
    return 0;
}

/* ---- the session format: token and done events ------------------------------ */

static int session_token(struct outbuf *b, const struct gen_stream *st, const struct gen_event *ev)
{
    unsigned long f0 = rc_alloc_failures_here();
    json_t *o = json_object();
    if (!o)
        return RC_ENOMEM;
    json_t *tok = NULL;
    if (ev->token.rows && ev->token.row < ev->token.rows->n)
        tok = resp_token(ev->token.rows, ev->token.row, &st->vocab);
    else {
        tok = json_object();
        if (tok)
            json_object_set_new(tok, "id", json_integer(ev->token.id));
    }
    json_t *text = resp_text(ev->token.text, ev->token.text_len);
    if (!tok || !text) {
        json_decref(tok);
        json_decref(text);
        json_decref(o);
        return RC_ENOMEM;
    }
    json_object_set_new(o, "type", json_string("token"));
    json_object_set_new(o, "token", tok);
    json_object_set_new(o, "text", text);
    /* the token's own position (docs/server.md, "Positions") */
    json_object_set_new(o, "position", json_integer(ev->token.position));
    return put_event(b, o, f0);
}

static int session_done(struct outbuf *b, const struct gen_event *ev)
{
    unsigned long f0 = rc_alloc_failures_here();
    json_t *o = json_object();
    if (!o)
        return RC_ENOMEM;
    if (ev->done.text_len) {
        json_t *text = resp_text(ev->done.text, ev->done.text_len);
        if (!text) {
            json_decref(o);
            return RC_ENOMEM;
        }
        json_object_set_new(o, "text", text);
    }
    json_object_set_new(o, "type", json_string("done"));
    json_object_set_new(o, "finish_reason", json_string(ev->done.finish));
    json_object_set_new(o, "n_tokens", json_integer(ev->done.n_tokens));
    json_object_set_new(o, "position", json_integer(ev->done.position));
    json_object_set_new(o, "seed", json_integer((json_int_t)(ev->done.seed & INT64_MAX)));
    json_object_set_new(o, "committed", json_boolean(ev->done.committed));
    return put_event(b, o, f0);
}

static int session_encode(struct outbuf *b, const struct gen_stream *st, const struct gen_event *ev)
{
    switch (ev->kind) {
    case GEN_EV_TOKEN:
        return session_token(b, st, ev);
    case GEN_EV_DONE:
        return session_done(b, ev);
    }
    return 0; /* BEGIN and END have no event of their own */
}

int gen_event_encode(struct outbuf *b, const struct gen_stream *st, const struct gen_event *ev)
{
    switch (st->format) {
    case STREAM_SESSION:
        return session_encode(b, st, ev);
    case STREAM_OPENAI:
        return openai_encode(b, st, ev);
    }
    return 0;
}
