#include "jsonin.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"

void proto_init(void)
{
    json_set_alloc_funcs(rc_malloc, rc_free);
    /* docs/reliability.md S6: object keys hash with a seed drawn from /dev/urandom,
     * so nobody can precompute a body of colliding keys. jansson would draw
     * it lazily on the first object; drawing it here, before any thread
     * starts, is what its documentation asks of threaded programs. */
    json_object_seed(0);
}

/* Longest key or value quoted back in a message. */
#define QUOTE_MAX 64

/* "field 'KEY' WHAT", quoting at most QUOTE_MAX bytes of the key (a
 * hostile key can be megabytes long). */
static int bad_field(struct api_error *e, const char *key, const char *what)
{
    api_error_set(e, API_INVALID_REQUEST, "field '%.*s' %s", QUOTE_MAX, key, what);
    api_error_param(e, key);
    return RC_EINVAL;
}

/* jansson has its own depth cap (2048) but ours is configurable and much
 * lower; scanning first also bounds the work spent on a hostile body. */
static int depth_ok(const char *buf, size_t len, int max_depth, size_t *at)
{
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == '"')
            in_str = 1;
        else if (c == '{' || c == '[') {
            if (++depth > max_depth) {
                *at = i;
                return 0;
            }
        } else if (c == '}' || c == ']')
            depth--;
    }
    return 1;
}

int pj_parse(const char *buf, size_t len, int max_depth, json_t **out, struct api_error *e)
{
    size_t at;
    *out = NULL;
    if (len == 0) {
        api_error_set(e, API_INVALID_REQUEST, "empty body: expected a JSON object");
        return RC_EINVAL;
    }
    if (!depth_ok(buf, len, max_depth, &at)) {
        api_error_set(e, API_INVALID_REQUEST, "JSON nested deeper than %d levels at offset %zu",
                      max_depth, at);
        return RC_EINVAL;
    }
    json_error_t je;
    unsigned long failures = rc_alloc_failures_here();
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (root && rc_alloc_failures_here() != failures) {
        /* jansson's lexer ignores a failed append to its token buffer and
         * goes on without that byte: a "successful" parse may have lost
         * text. Any allocation failure during the parse fails the request. */
        json_decref(root);
        root = NULL;
    }
    if (!root) {
        /* jansson reports some allocation failures as syntax errors (its
         * lexer's string buffer) or not at all: ask the allocator */
        if (json_error_code(&je) == json_error_out_of_memory ||
            rc_alloc_failures_here() != failures) {
            api_error_set(e, API_OUT_OF_MEMORY, "out of memory parsing the request");
            return RC_ENOMEM;
        }
        api_error_set(e, API_INVALID_REQUEST, "invalid JSON at offset %d (line %d, column %d): %s",
                      je.position, je.line, je.column, je.text);
        return RC_EINVAL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        api_error_set(e, API_INVALID_REQUEST, "the body must be a JSON object");
        return RC_EINVAL;
    }
    *out = root;
    return 0;
}

int pj_check_keys(const json_t *o, const char *const *allowed, struct api_error *e)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = !strcmp(*a, k);
        if (!ok)
            {
            api_error_set(e, API_INVALID_REQUEST, "unknown field '%.*s'", QUOTE_MAX, k);
            api_error_param(e, k);
            return RC_EINVAL;
        }
    }
    return 0;
}

/* NULL when absent or null. */
static const json_t *field(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static int missing(const char *key, struct api_error *e)
{
    return bad_field(e, key, "is required");
}

int pj_int(const json_t *o, const char *key, int required, int64_t lo, int64_t hi, int64_t def,
           int64_t *out, struct api_error *e)
{
    const json_t *v = field(o, key);
    if (!v) {
        if (required)
            return missing(key, e);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return bad_field(e, key, "must be an integer");
    int64_t x = (int64_t)json_integer_value(v);
    if (x < lo || x > hi) {
        api_error_set(e, API_INVALID_REQUEST, "field '%s' must be in [%" PRId64 ", %" PRId64
                      "], got %" PRId64, key, lo, hi, x);
        api_error_param(e, key);
        return RC_EINVAL;
    }
    *out = x;
    return 0;
}

int pj_num(const json_t *o, const char *key, int required, double lo, double hi, double def,
           double *out, struct api_error *e)
{
    const json_t *v = field(o, key);
    if (!v) {
        if (required)
            return missing(key, e);
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return bad_field(e, key, "must be a number");
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) {
        api_error_set(e, API_INVALID_REQUEST, "field '%s' must be in [%g, %g], got %g", key, lo,
                      hi, x);
        api_error_param(e, key);
        return RC_EINVAL;
    }
    *out = x;
    return 0;
}

int pj_bool(const json_t *o, const char *key, int def, int *out, struct api_error *e)
{
    const json_t *v = field(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return bad_field(e, key, "must be true or false");
    *out = json_is_true(v);
    return 0;
}

int pj_str(const json_t *o, const char *key, int required, size_t max_len, const char **s,
           size_t *len, struct api_error *e)
{
    const json_t *v = field(o, key);
    *s = NULL;
    if (len)
        *len = 0;
    if (!v)
        return required ? missing(key, e) : 0;
    if (!json_is_string(v))
        return bad_field(e, key, "must be a string");
    size_t n = json_string_length(v);
    if (n > max_len) {
        api_error_set(e, API_INVALID_REQUEST, "field '%s' is longer than %zu bytes", key,
                      max_len);
        api_error_param(e, key);
        return RC_EINVAL;
    }
    *s = json_string_value(v);
    if (len)
        *len = n;
    return 0;
}

int pj_token_array(const json_t *arr, const char *field_name, int vocab, size_t max_n,
                   int32_t **ids, size_t *n, struct api_error *e)
{
    *ids = NULL;
    *n = 0;
    if (!json_is_array(arr))
        return bad_field(e, field_name, "must be an array of token ids");
    size_t cnt = json_array_size(arr);
    if (cnt == 0)
        return bad_field(e, field_name, "must not be empty");
    if (cnt > max_n) {
        api_error_set(e, API_INVALID_REQUEST, "field '%s' has %zu ids, more than the limit %zu",
                      field_name, cnt, max_n);
        api_error_param(e, field_name);
        return RC_EINVAL;
    }
    for (size_t i = 0; i < cnt; i++) {
        const json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v)) {
            api_error_set(e, API_INVALID_TOKEN, "%s[%zu] must be an integer token id", field_name,
                          i);
            api_error_param(e, field_name);
            return RC_EINVAL;
        }
        json_int_t x = json_integer_value(v);
        if (x < 0 || x >= vocab) {
            api_error_set(e, API_INVALID_TOKEN, "%s[%zu] = %lld is not a token id in [0, %d)",
                          field_name, i, (long long)x, vocab);
            api_error_param(e, field_name);
            return RC_EINVAL;
        }
    }
    int32_t *v = rc_malloc(cnt * sizeof *v);
    if (!v) {
        api_error_set(e, API_OUT_OF_MEMORY, "out of memory reading '%s'", field_name);
        return RC_ENOMEM;
    }
    for (size_t i = 0; i < cnt; i++)
        v[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    *ids = v;
    *n = cnt;
    return 0;
}
