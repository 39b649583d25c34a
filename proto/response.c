#include "response.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "jsonout.h"
#include "utf8.h"


void hex64(uint64_t x, char out[17]) { snprintf(out, 17, "%016llx", (unsigned long long)x); }

/* A JSON string of arbitrary bytes: valid UTF-8 kept, the rest U+FFFD. */
static json_t *text_value(const char *s, size_t n)
{
    if (utf8_valid((const uint8_t *)s, n))
        return json_stringn(s, n);
    size_t len;
    char *buf = utf8_repair_dup((const uint8_t *)s, n, &len);
    if (!buf)
        return NULL;
    json_t *v = json_stringn(buf, len);
    rc_free(buf);
    return v;
}

json_t *resp_text(const char *s, size_t n) { return text_value(s, n); }

static json_t *num_or_null(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static double ppl(double nll, int64_t n) { return n > 0 ? exp(nll / (double)n) : NAN; }

/* Set o[k] = v, consuming v; 0 or RC_ENOMEM. */
static int put(json_t *o, const char *k, json_t *v)
{
    if (!v)
        return RC_ENOMEM;
    return json_object_set_new(o, k, v) ? RC_ENOMEM : 0;
}

/* A new container stored as o[k]: returned borrowed, or NULL (nothing
 * leaked) when out of memory. */
static json_t *child(json_t *o, const char *k, json_t *v)
{
    return put(o, k, v) ? NULL : v;
}

static int add_piece(json_t *o, const struct vocab_view *v, int32_t id)
{
    size_t len;
    const char *p = v->piece(v->ctx, id, &len);
    if (put(o, "text", text_value(p, len)))
        return RC_ENOMEM;
    if (!utf8_valid((const uint8_t *)p, len)) {
        json_t *a = json_array();
        if (!a)
            return RC_ENOMEM;
        for (size_t i = 0; i < len; i++)
            if (json_array_append_new(a, json_integer((unsigned char)p[i]))) {
                json_decref(a);
                return RC_ENOMEM;
            }
        return put(o, "bytes", a);
    }
    return 0;
}

json_t *resp_token(const struct tok_details *d, size_t i, const struct vocab_view *v)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    if (put(o, "id", json_integer(d->id[i])) || add_piece(o, v, d->id[i]) ||
        put(o, "position", json_integer(d->pos[i])) || put(o, "logprob", num_or_null(d->lp[i])))
        goto oom;
    if (d->k > 0) {
        json_t *a = child(o, "top_logprobs", isnan(d->lp[i]) ? json_null() : json_array());
        if (!a)
            goto oom;
        for (int j = 0; !isnan(d->lp[i]) && j < d->k; j++) {
            size_t at = i * (size_t)d->k + (size_t)j;
            json_t *t = json_object();
            if (!t || json_array_append_new(a, t) || put(t, "id", json_integer(d->top_id[at])) ||
                add_piece(t, v, d->top_id[at]) || put(t, "logprob", num_or_null(d->top_lp[at])))
                goto oom;
        }
    }
    return o;
oom:
    json_decref(o);
    return NULL;
}

static json_t *token_list(const struct tok_details *d, const struct vocab_view *v)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < d->n; i++) {
        json_t *t = resp_token(d, i, v);
        if (!t || json_array_append_new(a, t)) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

json_t *resp_score(const struct score_view *s, const struct vocab_view *v)
{
    const struct score_stats *st = s->st;
    json_t *o = json_object();
    if (!o)
        return NULL;
    double mean = st->n ? st->nll / (double)st->n : NAN;
    if (put(o, "position", json_integer(s->position)) ||
        put(o, "n_tokens", json_integer(s->n_tokens)) ||
        put(o, "n_scored", json_integer(st->n)) || put(o, "nll", num_or_null(mean)) ||
        put(o, "nll_sum", json_real(st->nll)) ||
        put(o, "ppl", num_or_null(ppl(st->nll, st->n))))
        goto oom;
    json_t *b = child(o, "buckets", json_array());
    if (!b)
        goto oom;
    for (int i = 0; i < st->nb; i++) {
        const struct score_bucket *k = &st->b[i];
        if (k->n == 0)
            continue;
        json_t *x = json_object();
        if (!x || json_array_append_new(b, x) || put(x, "start", json_integer(k->start)) ||
            put(x, "end", json_integer(k->end)) || put(x, "n", json_integer(k->n)) ||
            put(x, "nll", num_or_null(k->nll / (double)k->n)) ||
            put(x, "ppl", num_or_null(ppl(k->nll, k->n))))
            goto oom;
    }
    if (s->d) {
        if (put(o, "tokens", token_list(s->d, v)) ||
            put(o, "tokens_truncated", json_boolean(s->truncated)))
            goto oom;
    }
    return o;
oom:
    json_decref(o);
    return NULL;
}

json_t *resp_generate(const struct gen_view *g, const struct vocab_view *v)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_t *ids = child(o, "tokens", json_array());
    if (!ids)
        goto oom;
    for (size_t i = 0; i < g->n_ids; i++)
        if (json_array_append_new(ids, json_integer(g->ids[i])))
            goto oom;
    if (put(o, "text", text_value(g->text ? g->text : "", g->text_len)) ||
        put(o, "finish_reason", json_string(g->finish_reason)) ||
        put(o, "position", json_integer(g->position)) ||
        put(o, "n_tokens", json_integer((json_int_t)g->n_ids)) ||
        put(o, "seed", json_integer((json_int_t)(g->seed & INT64_MAX))) ||
        put(o, "committed", json_boolean(g->committed)))
        goto oom;
    if (g->d && (put(o, "logprobs", token_list(g->d, v)) ||
                 put(o, "logprobs_truncated", json_boolean(g->truncated))))
        goto oom;
    return o;
oom:
    json_decref(o);
    return NULL;
}

static json_t *openai_logprobs(const struct tok_details *d, size_t off0,
                               const struct vocab_view *v)
{
    json_t *o = json_object(), *toks, *lps, *tops, *offs;
    if (!o || !(toks = child(o, "tokens", json_array())) ||
        !(lps = child(o, "token_logprobs", json_array())) ||
        !(tops = child(o, "top_logprobs", json_array())) ||
        !(offs = child(o, "text_offset", json_array())))
        goto oom;
    size_t off = off0;
    for (size_t i = 0; i < d->n; i++) {
        size_t len;
        const char *p = v->piece(v->ctx, d->id[i], &len);
        if (json_array_append_new(toks, text_value(p, len)) ||
            json_array_append_new(lps, num_or_null(d->lp[i])) ||
            json_array_append_new(offs, json_integer((json_int_t)off)))
            goto oom;
        off += len;
        if (isnan(d->lp[i]) || d->k == 0) {
            if (json_array_append_new(tops, json_null()))
                goto oom;
            continue;
        }
        json_t *t = json_object();
        if (!t || json_array_append_new(tops, t))
            goto oom;
        for (int j = 0; j < d->k; j++) {
            size_t at = i * (size_t)d->k + (size_t)j, tl;
            const char *tp = v->piece(v->ctx, d->top_id[at], &tl);
            size_t need = utf8_repaired_len((const uint8_t *)tp, tl);
            char key[256];
            if (need >= sizeof key)
                continue;
            utf8_repair_str((const uint8_t *)tp, tl, key, sizeof key);
            /* Two ids with the same text share a key: keep the first. */
            if (!json_object_get(t, key) && put(t, key, num_or_null(d->top_lp[at])))
                goto oom;
        }
    }
    return o;
oom:
    json_decref(o);
    return NULL;
}

json_t *resp_completion(const struct completion_view *c, const struct vocab_view *v)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_t *choices;
    if (put(o, "id", json_string(c->id)) || put(o, "object", json_string("text_completion")) ||
        put(o, "created", json_integer(c->created)) || put(o, "model", json_string(c->model)) ||
        (c->system_fingerprint &&
         put(o, "system_fingerprint", json_string(c->system_fingerprint))) ||
        !(choices = child(o, "choices", json_array())))
        goto oom;
    for (size_t i = 0; i < c->n_ch; i++) {
        const struct completion_choice *x = &c->ch[i];
        json_t *ch = json_object();
        if (!ch || json_array_append_new(choices, ch) ||
            put(ch, "text", text_value(x->text ? x->text : "", x->text_len)) ||
            put(ch, "index", json_integer(c->index0 + (json_int_t)i)) ||
            put(ch, "logprobs", x->d ? openai_logprobs(x->d, x->text_offset0, v) : json_null()) ||
            put(ch, "finish_reason", x->finish_reason ? json_string(x->finish_reason) : json_null()) ||
            (x->truncated && put(ch, "logprobs_truncated", json_true())))
            goto oom;
    }
    if (c->with_usage) {
        json_t *u = child(o, "usage", json_object());
        if (!u || put(u, "prompt_tokens", json_integer(c->prompt_tokens)) ||
            put(u, "completion_tokens", json_integer(c->completion_tokens)) ||
            put(u, "total_tokens", json_integer(c->prompt_tokens + c->completion_tokens)))
            goto oom;
    }
    return o;
oom:
    json_decref(o);
    return NULL;
}

json_t *resp_session(const struct session_view *s)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    if (put(o, "id", json_string(s->id)) || put(o, "position", json_integer(s->position)) ||
        put(o, "state_bytes", json_integer((json_int_t)s->state_bytes)) ||
        put(o, "created", json_real(s->created)) || put(o, "last_used", json_real(s->last_used)) ||
        put(o, "expires_in", json_real(s->expires_in)) || put(o, "busy", json_boolean(s->busy)) ||
        put(o, "spilled", json_boolean(s->spilled))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *resp_model(const struct model_view *m)
{
    char fp[17];
    hex64(m->fingerprint, fp);
    json_t *x = json_object();
    if (!x)
        return NULL;
    if (put(x, "id", json_string(m->id)) || put(x, "object", json_string("model")) ||
        put(x, "created", json_integer(m->created)) || put(x, "owned_by", json_string("recurd")) ||
        put(x, "arch", json_string(m->arch)) || put(x, "d_model", json_integer(m->d_model)) ||
        put(x, "n_layer", json_integer(m->n_layer)) ||
        put(x, "vocab_size", json_integer(m->vocab_size)) ||
        put(x, "d_state", json_integer(m->d_state)) || put(x, "d_inner", json_integer(m->d_inner)) ||
        put(x, "n_params", json_integer((json_int_t)m->n_params)) ||
        put(x, "state_bytes", json_integer((json_int_t)m->state_bytes)) ||
        put(x, "snapshot_bytes", json_integer((json_int_t)m->snapshot_bytes)) ||
        put(x, "fingerprint", json_string(fp)) || put(x, "tokenizer", json_string(m->tokenizer)) ||
        put(x, "weights", json_string(m->weights)) ||
        put(x, "weight_bytes", json_integer((json_int_t)m->weight_bytes)) ||
        (m->training_context > 0 &&
         put(x, "training_context", json_integer(m->training_context)))) {
        json_decref(x);
        return NULL;
    }
    return x;
}

json_t *resp_models(const struct model_view *m)
{
    json_t *o = json_object(), *data, *x = NULL;
    if (!o || put(o, "object", json_string("list")) || !(data = child(o, "data", json_array())) ||
        !(x = resp_model(m)) || json_array_append_new(data, x)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int sse_put_json(struct outbuf *b, const json_t *o)
{
    size_t n;
    char *s = pj_dump(o, &n);
    if (!s)
        return RC_ENOMEM;
    /* Compact JSON has no raw newlines, so one data: line is one event.
     * All or nothing: a half-written event would corrupt the ones after. */
    size_t n0 = b->n;
    int rc = outbuf_put(b, "data: ", 6);
    if (!rc)
        rc = outbuf_put(b, s, n);
    if (!rc)
        rc = outbuf_put(b, "\n\n", 2);
    if (rc)
        b->n = n0;
    rc_free(s);
    return rc;
}

int sse_put_done(struct outbuf *b) { return outbuf_put(b, "data: [DONE]\n\n", 14); }

json_t *resp_health(const char *status) { return json_pack("{s:s}", "status", status); }

json_t *resp_detokenize(const char *bytes, size_t n)
{
    json_t *o = json_object();
    if (!o || put(o, "text", text_value(bytes, n)) ||
        (!utf8_valid((const uint8_t *)bytes, n) && put(o, "valid_utf8", json_false()))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *resp_list(json_t *items)
{
    json_t *o = items ? json_object() : NULL;
    if (!o || put(o, "object", json_string("list"))) {
        json_decref(o);
        json_decref(items);
        return NULL;
    }
    if (put(o, "data", items)) { /* consumes items */
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *resp_session_deleted(const char *id)
{
    return json_pack("{s:s,s:b}", "id", id, "deleted", 1);
}

json_t *resp_snapshot_entry(const char *name, int64_t bytes, int64_t created)
{
    return json_pack("{s:s,s:I,s:I}", "name", name, "bytes", (json_int_t)bytes, "created",
                     (json_int_t)created);
}

/* A snapshot name needs no escaping: [A-Za-z0-9._-] only. */
static int plain_name(const char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

static int fits(int n, size_t cap) { return n >= 0 && (size_t)n < cap ? 0 : RC_ERANGE; }

int resp_fixed_snapshot_saved(char *buf, size_t cap, const char *name, size_t bytes,
                              int64_t position)
{
    if (!plain_name(name))
        return RC_EINVAL;
    return fits(snprintf(buf, cap, "{\"name\":\"%s\",\"bytes\":%zu,\"position\":%" PRId64 "}",
                         name, bytes, position),
                cap);
}

int resp_fixed_snapshot_deleted(char *buf, size_t cap, const char *name)
{
    if (!plain_name(name))
        return RC_EINVAL;
    return fits(snprintf(buf, cap, "{\"name\":\"%s\",\"deleted\":true}", name), cap);
}

int resp_fixed_appended(char *buf, size_t cap, int64_t position, int64_t n_tokens)
{
    return fits(snprintf(buf, cap,
                         "{\"position\":%" PRId64 ",\"n_tokens\":%" PRId64 ",\"note\":\"appended; "
                         "out of memory for the rest of the response\"}",
                         position, n_tokens),
                cap);
}

int sse_put_error(struct outbuf *b, const struct api_error *e)
{
    json_t *o = json_pack("{s:s,s:o}", "type", "error", "error", api_error_json(e));
    int rc = o ? sse_put_json(b, o) : RC_ENOMEM;
    json_decref(o);
    return rc;
}
