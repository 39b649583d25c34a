#include "request.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "jsonin.h"

static int oom(struct api_error *e)
{
    api_error_set(e, API_OUT_OF_MEMORY, "out of memory reading the request");
    return RC_ENOMEM;
}

/* msg names its field the house way ("field 'stop' must ...", "query
 * parameter 'top_logprobs' ..."): that name becomes the error's param. */
static int invalid(struct api_error *e, const char *msg)
{
    api_error_set(e, API_INVALID_REQUEST, "%s", msg);
    static const char *const lead[] = {"field '", "query parameter '"};
    for (size_t i = 0; i < sizeof lead / sizeof lead[0]; i++) {
        size_t n = strlen(lead[i]);
        const char *end = strncmp(msg, lead[i], n) ? NULL : strchr(msg + n, '\'');
        if (end && e) {
            snprintf(e->param, sizeof e->param, "%.*s", (int)(end - msg - n), msg + n);
            break;
        }
    }
    return RC_EINVAL;
}

static int invalid_param(struct api_error *e, const char *param, int rc)
{
    api_error_param(e, param);
    return rc;
}

static void input_free(struct req_input *in)
{
    rc_free(in->text);
    rc_free(in->tokens);
    memset(in, 0, sizeof *in);
}

static int copy_str(const char *s, size_t n, char **out, struct api_error *e)
{
    *out = rc_strndup(s, n);
    return *out ? 0 : oom(e);
}

/* "text" xor "tokens". */
static int input_parse(const json_t *o, const struct proto_limits *lim, const char *text_key,
                       const char *tokens_key, struct req_input *in, struct api_error *e)
{
    const json_t *t = json_object_get(o, tokens_key);
    const char *s;
    size_t n;
    int rc = pj_str(o, text_key, 0, lim->max_text_bytes, &s, &n, e);
    if (rc)
        return rc;
    if (json_is_null(t))
        t = NULL;
    if (s && t) {
        api_error_set(e, API_INVALID_REQUEST, "give either '%s' or '%s', not both", text_key,
                      tokens_key);
        return invalid_param(e, tokens_key, RC_EINVAL);
    }
    if (!s && !t) {
        api_error_set(e, API_INVALID_REQUEST, "field '%s' or '%s' is required", text_key,
                      tokens_key);
        return invalid_param(e, text_key, RC_EINVAL);
    }
    if (s) {
        if (n == 0) {
            api_error_set(e, API_INVALID_REQUEST, "field '%s' must not be empty", text_key);
            return invalid_param(e, text_key, RC_EINVAL);
        }
        in->text_len = n;
        return copy_str(s, n, &in->text, e);
    }
    return pj_token_array(t, tokens_key, lim->vocab_size, lim->max_input_tokens, &in->tokens,
                          &in->n_tokens, e);
}

static void stop_free(struct req_stop *st)
{
    for (int i = 0; i < st->n; i++)
        rc_free(st->s[i]);
    rc_free(st->s);
    rc_free(st->len);
    memset(st, 0, sizeof *st);
}

static int stop_parse(const json_t *o, const struct proto_limits *lim, struct req_stop *st,
                      struct api_error *e)
{
    const json_t *v = json_object_get(o, "stop");
    if (!v || json_is_null(v))
        return 0;
    size_t cnt = json_is_string(v) ? 1 : json_is_array(v) ? json_array_size(v) : 0;
    if (!json_is_string(v) && !json_is_array(v))
        return invalid(e, "field 'stop' must be a string or an array of strings");
    if (cnt > (size_t)lim->max_stop) {
        api_error_set(e, API_INVALID_REQUEST, "field 'stop' has %zu entries, more than %d", cnt,
                      lim->max_stop);
        return invalid_param(e, "stop", RC_EINVAL);
    }
    if (cnt == 0)
        return 0;
    st->s = rc_calloc(cnt, sizeof *st->s);
    st->len = rc_calloc(cnt, sizeof *st->len);
    if (!st->s || !st->len) {
        stop_free(st);
        return oom(e);
    }
    for (size_t i = 0; i < cnt; i++) {
        const json_t *x = json_is_string(v) ? v : json_array_get(v, i);
        if (!json_is_string(x)) {
            stop_free(st);
            api_error_set(e, API_INVALID_REQUEST, "stop[%zu] must be a string", i);
            return invalid_param(e, "stop", RC_EINVAL);
        }
        size_t n = json_string_length(x);
        if (n == 0 || n > lim->max_stop_bytes) {
            stop_free(st);
            api_error_set(e, API_INVALID_REQUEST, "stop[%zu] must be 1..%zu bytes long", i,
                          lim->max_stop_bytes);
            return invalid_param(e, "stop", RC_EINVAL);
        }
        st->s[i] = rc_strndup(json_string_value(x), n);
        if (!st->s[i]) {
            stop_free(st);
            return oom(e);
        }
        st->len[i] = n;
        st->n++;
    }
    return 0;
}

/* temperature, top_k, top_p, min_p, seed. */
static int sampling_parse(const json_t *o, const struct proto_limits *lim,
                          struct sampler_params *sp, int *has_seed, uint64_t *seed,
                          struct api_error *e)
{
    double t, tp, mp;
    int64_t k, sd;
    int rc;
    if ((rc = pj_num(o, "temperature", 0, 0, 100, 1.0, &t, e)) ||
        (rc = pj_int(o, "top_k", 0, 0, lim->vocab_size, 0, &k, e)) ||
        (rc = pj_num(o, "top_p", 0, 0, 1, 1.0, &tp, e)) ||
        (rc = pj_num(o, "min_p", 0, 0, 1, 0.0, &mp, e)) ||
        (rc = pj_int(o, "seed", 0, 0, INT64_MAX, -1, &sd, e)))
        return rc;
    if (tp <= 0)
        return invalid(e, "field 'top_p' must be in (0, 1]");
    if (mp >= 1)
        return invalid(e, "field 'min_p' must be in [0, 1)");
    sp->temperature = (float)t;
    sp->top_k = (int)k;
    sp->top_p = (float)tp;
    sp->min_p = (float)mp;
    *has_seed = sd >= 0;
    *seed = sd >= 0 ? (uint64_t)sd : 0;
    return 0;
}

int req_session_create_parse(const json_t *o, const struct proto_limits *lim,
                             struct req_session_create *r, struct api_error *e)
{
    static const char *const keys[] = {"fork_of", "snapshot", NULL};
    const char *f, *s;
    size_t fl, sl;
    int rc;
    memset(r, 0, sizeof *r);
    if ((rc = pj_check_keys(o, keys, e)) || (rc = pj_str(o, "fork_of", 0, 64, &f, &fl, e)) ||
        (rc = pj_str(o, "snapshot", 0, 4096, &s, &sl, e)))
        return rc;
    if (f && s)
        return invalid(e, "give either 'fork_of' or 'snapshot', not both");
    if (s && (rc = req_snapshot_name_check(s, sl, e)))
        return rc;
    if ((f && (rc = copy_str(f, fl, &r->fork_of, e))) ||
        (s && (rc = copy_str(s, sl, &r->snapshot, e)))) {
        req_session_create_free(r);
        return rc;
    }
    return 0;
}

void req_session_create_free(struct req_session_create *r)
{
    if (!r)
        return;
    rc_free(r->fork_of);
    rc_free(r->snapshot);
    memset(r, 0, sizeof *r);
}

/* 2^53: a position any JSON number holds exactly */
#define EXPECTED_POSITION_MAX 9007199254740992LL

static int score_opts(const json_t *o, const struct proto_limits *lim, struct req_score *r,
                      struct api_error *e)
{
    int64_t k;
    int rc;
    if ((rc = pj_bool(o, "logprobs", 0, &r->logprobs, e)) ||
        (rc = pj_int(o, "top_logprobs", 0, 0, lim->max_top_logprobs, 0, &k, e)))
        return rc;
    r->top_logprobs = (int)k;
    if (k > 0 && !r->logprobs)
        return invalid(e, "field 'top_logprobs' needs 'logprobs': true");
    return 0;
}

int req_score_parse(const json_t *o, const struct proto_limits *lim, struct req_score *r,
                    struct api_error *e)
{
    static const char *const keys[] = {"text", "tokens", "logprobs", "top_logprobs",
                                       "expected_position", NULL};
    int rc;
    memset(r, 0, sizeof *r);
    if ((rc = pj_check_keys(o, keys, e)) || (rc = score_opts(o, lim, r, e)) ||
        (rc = pj_int(o, "expected_position", 0, 0, EXPECTED_POSITION_MAX, -1,
                     &r->expected_position, e)) ||
        (rc = input_parse(o, lim, "text", "tokens", &r->in, e))) {
        req_score_free(r);
        return rc;
    }
    return 0;
}

void req_score_free(struct req_score *r)
{
    if (!r)
        return;
    input_free(&r->in);
    memset(r, 0, sizeof *r);
}

static int parse_bool_text(const char *s, int *out)
{
    if (!strcmp(s, "true") || !strcmp(s, "1"))
        *out = 1;
    else if (!strcmp(s, "false") || !strcmp(s, "0"))
        *out = 0;
    else
        return -1;
    return 0;
}

int req_score_query(const char *logprobs, const char *top_logprobs, const char *expected,
                    const struct proto_limits *lim, struct req_score *r, struct api_error *e)
{
    memset(r, 0, sizeof *r);
    r->expected_position = -1;
    if (expected) {
        char *end;
        long long p = strtoll(expected, &end, 10);
        if (!*expected || *end || p < 0 || p > EXPECTED_POSITION_MAX)
            return invalid(e, "query parameter 'expected_position' must be a position (an "
                              "integer >= 0)");
        r->expected_position = p;
    }
    if (logprobs && parse_bool_text(logprobs, &r->logprobs) != 0)
        return invalid(e, "query parameter 'logprobs' must be true or false");
    if (top_logprobs) {
        char *end;
        long k = strtol(top_logprobs, &end, 10);
        if (!*top_logprobs || *end || k < 0 || k > lim->max_top_logprobs) {
            api_error_set(e, API_INVALID_REQUEST,
                          "query parameter 'top_logprobs' must be an integer in [0, %d]",
                          lim->max_top_logprobs);
            return RC_EINVAL;
        }
        r->top_logprobs = (int)k;
        if (k > 0 && !r->logprobs)
            return invalid(e, "query parameter 'top_logprobs' needs logprobs=true");
    }
    return 0;
}

int req_generate_parse(const json_t *o, const struct proto_limits *lim, struct req_generate *r,
                       struct api_error *e)
{
    static const char *const keys[] = {"max_tokens", "temperature", "top_k",    "top_p",
                                       "min_p",      "seed",        "stop",     "stream",
                                       "commit",     "logprobs",    "top_logprobs",
                                       "ignore_eos", "expected_position", NULL};
    int64_t mt, k;
    int rc;
    memset(r, 0, sizeof *r);
    if ((rc = pj_check_keys(o, keys, e)) ||
        (rc = pj_int(o, "max_tokens", 0, 1, lim->max_gen_tokens, 16, &mt, e)) ||
        (rc = sampling_parse(o, lim, &r->sp, &r->has_seed, &r->seed, e)) ||
        (rc = pj_bool(o, "stream", 0, &r->stream, e)) ||
        (rc = pj_bool(o, "commit", 1, &r->commit, e)) ||
        (rc = pj_bool(o, "logprobs", 0, &r->logprobs, e)) ||
        (rc = pj_int(o, "top_logprobs", 0, 0, lim->max_top_logprobs, 0, &k, e)) ||
        (rc = pj_bool(o, "ignore_eos", 0, &r->ignore_eos, e)) ||
        (rc = pj_int(o, "expected_position", 0, 0, EXPECTED_POSITION_MAX, -1,
                     &r->expected_position, e)))
        return rc;
    r->max_tokens = (int)mt;
    r->top_logprobs = (int)k;
    if (k > 0 && !r->logprobs)
        return invalid(e, "field 'top_logprobs' needs 'logprobs': true");
    return stop_parse(o, lim, &r->stop, e);
}

void req_generate_free(struct req_generate *r)
{
    if (!r)
        return;
    stop_free(&r->stop);
    memset(r, 0, sizeof *r);
}

/* OpenAI fields we accept only at their neutral value. */
static int neutral_fields(const json_t *o, struct api_error *e)
{
    double x;
    int rc;
    if ((rc = pj_num(o, "presence_penalty", 0, -2, 2, 0, &x, e)))
        return rc;
    if (x != 0)
        return invalid(e, "field 'presence_penalty' is not supported (only 0)");
    if ((rc = pj_num(o, "frequency_penalty", 0, -2, 2, 0, &x, e)))
        return rc;
    if (x != 0)
        return invalid(e, "field 'frequency_penalty' is not supported (only 0)");
    const json_t *lb = json_object_get(o, "logit_bias");
    if (lb && !json_is_null(lb) && !(json_is_object(lb) && json_object_size(lb) == 0))
        return invalid(e, "field 'logit_bias' is not supported (only null or {})");
    const char *s;
    size_t sl;
    if ((rc = pj_str(o, "suffix", 0, 4096, &s, &sl, e)))
        return rc;
    if (s && sl)
        return invalid(e, "field 'suffix' is not supported");
    if ((rc = pj_str(o, "user", 0, 4096, &s, &sl, e)))
        return rc;
    return 0;
}

/* prompt: "text" | [ids] | ["text"] | [[ids]] (one prompt only). An empty
 * one ("", [], [""], [[]]) leaves in empty: generation from the empty
 * context (h_infer.c decides what the model reads first). */
static int prompt_parse(const json_t *o, const struct proto_limits *lim, struct req_input *in,
                        struct api_error *e)
{
    const json_t *p = json_object_get(o, "prompt");
    if (!p || json_is_null(p))
        return invalid(e, "field 'prompt' is required");
    if (json_is_array(p) && json_array_size(p) == 1) {
        const json_t *x = json_array_get(p, 0);
        if (json_is_string(x) || json_is_array(x))
            p = x;
    } else if (json_is_array(p) && json_array_size(p) > 1 &&
               !json_is_integer(json_array_get(p, 0)))
        return invalid(e, "field 'prompt': only one prompt per request is supported");
    if (json_is_string(p)) {
        size_t n = json_string_length(p);
        if (n == 0)
            return 0;
        if (n > lim->max_text_bytes) {
            api_error_set(e, API_INVALID_REQUEST, "field 'prompt' is longer than %zu bytes",
                          lim->max_text_bytes);
            return invalid_param(e, "prompt", RC_EINVAL);
        }
        in->text_len = n;
        return copy_str(json_string_value(p), n, &in->text, e);
    }
    if (json_is_array(p) && json_array_size(p) == 0)
        return 0;
    if (json_is_array(p))
        return pj_token_array(p, "prompt", lim->vocab_size, lim->max_input_tokens, &in->tokens,
                              &in->n_tokens, e);
    return invalid(e, "field 'prompt' must be a string or an array of token ids");
}

int req_completion_parse(const json_t *o, const struct proto_limits *lim,
                         struct req_completion *r, struct api_error *e)
{
    static const char *const keys[] = {
        "model",  "prompt",   "max_tokens", "temperature", "top_p",          "top_k",
        "min_p",  "n",        "stream",     "stream_options", "logprobs",    "echo",
        "stop",   "seed",     "presence_penalty", "frequency_penalty", "best_of",
        "logit_bias", "user", "suffix",     NULL};
    int64_t mt, lp, nn, bo;
    int rc;
    const char *model;
    size_t ml;
    memset(r, 0, sizeof *r);
    r->logprobs = -1;
    if ((rc = pj_check_keys(o, keys, e)) || (rc = neutral_fields(o, e)) ||
        (rc = pj_str(o, "model", 0, 256, &model, &ml, e)) ||
        (rc = pj_int(o, "max_tokens", 0, 1, lim->max_gen_tokens, 16, &mt, e)) ||
        (rc = sampling_parse(o, lim, &r->sp, &r->has_seed, &r->seed, e)) ||
        (rc = pj_bool(o, "stream", 0, &r->stream, e)) ||
        (rc = pj_bool(o, "echo", 0, &r->echo, e)) ||
        (rc = pj_int(o, "logprobs", 0, 0, lim->max_top_logprobs, -1, &lp, e)) ||
        (rc = pj_int(o, "n", 0, 1, lim->max_n > 0 ? lim->max_n : 1, 1, &nn, e)) ||
        (rc = pj_int(o, "best_of", 0, 1, INT64_MAX, nn, &bo, e)))
        goto fail;
    if (bo != nn) {
        /* best_of > n would mean ranking choices by likelihood, which we
         * do not do: say so rather than return n unranked ones */
        rc = invalid(e, "field 'best_of' must equal 'n' (every choice is returned, none is "
                        "ranked out)");
        goto fail;
    }
    r->n = (int)nn;
    r->max_tokens = (int)mt;
    r->logprobs = (int)lp;
    const json_t *so = json_object_get(o, "stream_options");
    if (so && !json_is_null(so)) {
        static const char *const sokeys[] = {"include_usage", NULL};
        if (!json_is_object(so)) {
            rc = invalid(e, "field 'stream_options' must be an object");
            goto fail;
        }
        if ((rc = pj_check_keys(so, sokeys, e)) ||
            (rc = pj_bool(so, "include_usage", 0, &r->include_usage, e)))
            goto fail;
    }
    if ((rc = stop_parse(o, lim, &r->stop, e)) || (rc = prompt_parse(o, lim, &r->prompt, e)))
        goto fail;
    if (model && (rc = copy_str(model, ml, &r->model, e)))
        goto fail;
    return 0;
fail:
    req_completion_free(r);
    return rc;
}

void req_completion_free(struct req_completion *r)
{
    if (!r)
        return;
    input_free(&r->prompt);
    stop_free(&r->stop);
    rc_free(r->model);
    memset(r, 0, sizeof *r);
}

int req_tokenize_parse(const json_t *o, const struct proto_limits *lim, struct req_tokenize *r,
                       struct api_error *e)
{
    static const char *const keys[] = {"text", "with_pieces", NULL};
    const char *s;
    size_t n;
    int rc;
    memset(r, 0, sizeof *r);
    if ((rc = pj_check_keys(o, keys, e)) ||
        (rc = pj_str(o, "text", 1, lim->max_text_bytes, &s, &n, e)) ||
        (rc = pj_bool(o, "with_pieces", 0, &r->with_pieces, e)))
        return rc;
    r->text_len = n;
    return copy_str(s, n, &r->text, e);
}

void req_tokenize_free(struct req_tokenize *r)
{
    if (!r)
        return;
    rc_free(r->text);
    memset(r, 0, sizeof *r);
}

int req_detokenize_parse(const json_t *o, const struct proto_limits *lim,
                         struct req_detokenize *r, struct api_error *e)
{
    static const char *const keys[] = {"tokens", NULL};
    int rc;
    memset(r, 0, sizeof *r);
    if ((rc = pj_check_keys(o, keys, e)))
        return rc;
    const json_t *t = json_object_get(o, "tokens");
    if (!t || json_is_null(t))
        return invalid(e, "field 'tokens' is required");
    return pj_token_array(t, "tokens", lim->vocab_size, lim->max_input_tokens, &r->tokens,
                          &r->n_tokens, e);
}

void req_detokenize_free(struct req_detokenize *r)
{
    if (!r)
        return;
    rc_free(r->tokens);
    memset(r, 0, sizeof *r);
}

int req_save_parse(const json_t *o, const struct proto_limits *lim, struct req_save *r,
                   struct api_error *e)
{
    static const char *const keys[] = {"name", "overwrite", NULL};
    const char *s;
    size_t n;
    int rc;
    memset(r, 0, sizeof *r);
    if ((rc = pj_check_keys(o, keys, e)) || (rc = pj_str(o, "name", 1, 4096, &s, &n, e)) ||
        (rc = req_snapshot_name_check(s, n, e)) ||
        (rc = pj_bool(o, "overwrite", 0, &r->overwrite, e)))
        return rc;
    return copy_str(s, n, &r->name, e);
}

void req_save_free(struct req_save *r)
{
    if (!r)
        return;
    rc_free(r->name);
    memset(r, 0, sizeof *r);
}

int req_snapshot_name_check(const char *name, size_t len, struct api_error *e)
{
    /* A whitelist rather than a blacklist: no '/', no NUL, no controls, no
     * look-alike dots or slashes, no hidden files, no "..", no names that
     * read as options. The store also opens with O_NOFOLLOW under a dir fd. */
    const char *why = NULL;
    if (len == 0)
        why = "is empty";
    else if (len > 128)
        why = "is longer than 128 bytes";
    else if (name[0] == '.' || name[0] == '-')
        why = "starts with '.' or '-'";
    else {
        for (size_t i = 0; i < len && !why; i++) {
            unsigned char c = (unsigned char)name[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-'))
                why = "has a character outside [A-Za-z0-9._-]";
        }
        if (!why && name[len - 1] == '.')
            why = "ends with '.'";
        if (!why && len >= 4 && !memcmp(name + len - 4, ".tmp", 4))
            why = "ends with '.tmp' (reserved for files being written)";
    }
    if (why) {
        api_error_set(e, API_INVALID_SNAPSHOT_NAME, "snapshot name %s", why);
        return invalid_param(e, "name", RC_EINVAL);
    }
    return 0;
}
