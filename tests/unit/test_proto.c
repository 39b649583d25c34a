/* proto/: strict JSON parsing, request validation, error bodies, UTF-8.
 * Rows B1, B2, B4 (and B5's UTF-8 handling) of docs/reliability.md at the
 * unit layer. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "alloc.h"
#include "apierr.h"
#include "jsonin.h"
#include "jsonout.h"
#include "request.h"
#include "response.h"
#include "utf8.h"

static const struct proto_limits LIM = {
    .max_depth = 32,
    .max_text_bytes = 1 << 20,
    .max_input_tokens = 1000,
    .max_gen_tokens = 4096,
    .max_top_logprobs = 20,
    .max_stop = 4,
    .max_stop_bytes = 16,
    .vocab_size = 50277,
    .max_n = 4,
};

/* Parse s; expect failure with kind and a message containing `needle`. */
static void parse_fails(const char *s, size_t len, const char *needle)
{
    struct api_error e = {0};
    json_t *o = NULL;
    int rc = pj_parse(s, len, LIM.max_depth, &o, &e);
    if (rc == 0)
        fail_msg("accepted: %.60s", s);
    assert_null(o);
    assert_int_equal(e.kind, API_INVALID_REQUEST);
    assert_int_equal(api_err_status(e.kind), 400);
    if (!strstr(e.message, needle))
        fail_msg("message '%s' lacks '%s'", e.message, needle);
}

static void test_b1_malformed(void **u)
{
    parse_fails("{\"a\":", 5, "offset");
    parse_fails("{} x", 4, "offset");
    parse_fails("[1 2]", 5, "offset");
    parse_fails("[1]", 3, "JSON object");
    parse_fails("\"str\"", 5, "offset"); /* jansson refuses non-container roots */
    parse_fails("", 0, "empty");
    parse_fails("{\"a\":\"\xff\"}", 8, "offset");         /* invalid UTF-8 */
    parse_fails("{\"a\":\"\xc0\xaf\"}", 9, "offset");     /* overlong '/' */
    parse_fails("{\"a\":\"x\\u0000y\"}", 16, "offset");   /* NUL in a string */
    parse_fails("{\"a\":\"\\ud800\"}", 14, "offset");     /* lone surrogate */
    parse_fails("{\"a\":1,\"a\":2}", 13, "duplicate");
    parse_fails("{\"a\":1e999}", 11, "offset");
    parse_fails("{\"a\":9223372036854775808}", 25, "offset"); /* 2^63 */
}

static void test_b1_depth(void **u)
{
    size_t n = 10000;
    char *s = rc_malloc(2 * n + 8);
    size_t o = 0;
    s[o++] = '{';
    memcpy(s + o, "\"a\":", 4), o += 4;
    for (size_t i = 0; i < n; i++)
        s[o++] = '[';
    for (size_t i = 0; i < n; i++)
        s[o++] = ']';
    s[o++] = '}';
    parse_fails(s, o, "nested deeper than 32");
    rc_free(s);
    /* brackets inside strings do not count */
    const char *ok = "{\"a\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"[[[[\"}";
    json_t *v;
    struct api_error e;
    assert_int_equal(pj_parse(ok, strlen(ok), 4, &v, &e), 0);
    json_decref(v);
}

static void test_b1_edge_numbers_ok(void **u)
{
    json_t *o;
    struct api_error e;
    const char *s = "{\"max_tokens\":-0}";
    assert_int_equal(pj_parse(s, strlen(s), 32, &o, &e), 0);
    int64_t x = 5;
    /* -0 is the integer 0, below the max_tokens range */
    assert_int_not_equal(pj_int(o, "max_tokens", 1, 1, 10, 1, &x, &e), 0);
    assert_non_null(strstr(e.message, "max_tokens"));
    assert_int_equal(pj_int(o, "max_tokens", 1, 0, 10, 1, &x, &e), 0);
    assert_int_equal(x, 0);
    json_decref(o);
}

static void test_b1_huge_key(void **u)
{
    size_t n = 1 << 20;
    char *s = rc_malloc(n + 16);
    size_t o = 0;
    memcpy(s, "{\"", 2), o = 2;
    memset(s + o, 'k', n), o += n;
    memcpy(s + o, "\":1}", 4), o += 4;
    json_t *v;
    struct api_error e;
    assert_int_equal(pj_parse(s, o, 32, &v, &e), 0);
    struct req_generate g;
    assert_int_not_equal(req_generate_parse(v, &LIM, &g, &e), 0);
    assert_non_null(strstr(e.message, "unknown field 'kkkk"));
    assert_true(strlen(e.message) < 200); /* quoted, not echoed whole */
    json_decref(v);
    rc_free(s);
}

static json_t *J(const char *s)
{
    json_t *o;
    struct api_error e;
    if (pj_parse(s, strlen(s), 32, &o, &e) != 0)
        fail_msg("bad test JSON %s: %s", s, e.message);
    return o;
}

static void gen_fails(const char *s, const char *field)
{
    json_t *o = J(s);
    struct req_generate g;
    struct api_error e = {0};
    int rc = req_generate_parse(o, &LIM, &g, &e);
    json_decref(o);
    req_generate_free(&g);
    if (rc == 0)
        fail_msg("accepted %s", s);
    assert_int_equal(api_err_status(e.kind), 400);
    if (!strstr(e.message, field))
        fail_msg("message '%s' does not name '%s'", e.message, field);
}

static void test_b2_types(void **u)
{
    gen_fails("{\"max_tokens\":\"10\"}", "max_tokens");
    gen_fails("{\"max_tokens\":10.0}", "max_tokens");
    gen_fails("{\"max_tokens\":0}", "max_tokens");
    gen_fails("{\"max_tokens\":4097}", "max_tokens");
    gen_fails("{\"temperature\":-1}", "temperature");
    gen_fails("{\"temperature\":\"hot\"}", "temperature");
    gen_fails("{\"top_p\":2}", "top_p");
    gen_fails("{\"top_p\":0}", "top_p");
    gen_fails("{\"min_p\":1}", "min_p");
    gen_fails("{\"top_k\":-1}", "top_k");
    gen_fails("{\"seed\":-5}", "seed");
    gen_fails("{\"stream\":1}", "stream");
    gen_fails("{\"commit\":\"no\"}", "commit");
    gen_fails("{\"stop\":[\"a\",3]}", "stop[1]");
    gen_fails("{\"stop\":\"\"}", "stop[0]");
    gen_fails("{\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop");
    gen_fails("{\"stop\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", "stop[0]");
    gen_fails("{\"top_logprobs\":3}", "logprobs");
    gen_fails("{\"maxtokens\":3}", "unknown field 'maxtokens'");
}

static void test_b2_nulls_and_defaults(void **u)
{
    /* optional null = default (documented policy) */
    json_t *o = J("{\"max_tokens\":null,\"temperature\":null,\"stop\":null,\"seed\":null}");
    struct req_generate g;
    struct api_error e;
    assert_int_equal(req_generate_parse(o, &LIM, &g, &e), 0);
    assert_int_equal(g.max_tokens, 16);
    assert_true(g.sp.temperature == 1.0f);
    assert_int_equal(g.commit, 1);
    assert_int_equal(g.has_seed, 0);
    assert_int_equal(g.stop.n, 0);
    req_generate_free(&g);
    json_decref(o);

    o = J("{\"max_tokens\":5,\"temperature\":0,\"top_k\":3,\"top_p\":0.5,\"min_p\":0.1,"
          "\"seed\":42,\"stop\":[\"\\n\",\"xy\"],\"stream\":true,\"commit\":false}");
    assert_int_equal(req_generate_parse(o, &LIM, &g, &e), 0);
    assert_int_equal(g.max_tokens, 5);
    assert_true(g.sp.temperature == 0.0f);
    assert_int_equal(g.sp.top_k, 3);
    assert_int_equal(g.has_seed, 1);
    assert_int_equal(g.seed, 42);
    assert_int_equal(g.stop.n, 2);
    assert_string_equal(g.stop.s[0], "\n");
    assert_int_equal(g.stop.len[1], 2);
    assert_int_equal(g.stream, 1);
    assert_int_equal(g.commit, 0);
    req_generate_free(&g);
    json_decref(o);

    /* a required field given as null is an error */
    o = J("{\"text\":null}");
    struct req_tokenize t;
    assert_int_not_equal(req_tokenize_parse(o, &LIM, &t, &e), 0);
    assert_non_null(strstr(e.message, "'text' is required"));
    req_tokenize_free(&t);
    json_decref(o);
}

static void score_fails(const char *s, int kind, const char *needle)
{
    json_t *o = J(s);
    struct req_score r;
    struct api_error e = {0};
    int rc = req_score_parse(o, &LIM, &r, &e);
    json_decref(o);
    req_score_free(&r);
    if (rc == 0)
        fail_msg("accepted %s", s);
    assert_int_equal(e.kind, kind);
    if (!strstr(e.message, needle))
        fail_msg("message '%s' lacks '%s'", e.message, needle);
}

static void test_b4_token_ids(void **u)
{
    score_fails("{\"tokens\":[1,2,-1]}", API_INVALID_TOKEN, "tokens[2] = -1");
    score_fails("{\"tokens\":[50277]}", API_INVALID_TOKEN, "tokens[0] = 50277");
    score_fails("{\"tokens\":[0,4294967296]}", API_INVALID_TOKEN, "tokens[1]");
    score_fails("{\"tokens\":[0,2147483648]}", API_INVALID_TOKEN, "tokens[1]");
    score_fails("{\"tokens\":[0,1.5]}", API_INVALID_TOKEN, "tokens[1] must be an integer");
    score_fails("{\"tokens\":[\"7\"]}", API_INVALID_TOKEN, "tokens[0] must be an integer");
    score_fails("{\"tokens\":[]}", API_INVALID_REQUEST, "must not be empty");
    score_fails("{\"tokens\":7}", API_INVALID_REQUEST, "array");
    score_fails("{\"tokens\":[1],\"text\":\"a\"}", API_INVALID_REQUEST, "not both");
    score_fails("{}", API_INVALID_REQUEST, "required");
    score_fails("{\"text\":\"\"}", API_INVALID_REQUEST, "must not be empty");
    score_fails("{\"text\":\"a\",\"top_logprobs\":2}", API_INVALID_REQUEST, "logprobs");
    score_fails("{\"text\":\"a\",\"logprobs\":true,\"top_logprobs\":21}", API_INVALID_REQUEST,
                "top_logprobs");
    /* longer than the limit */
    char buf[8192];
    size_t o = (size_t)snprintf(buf, sizeof buf, "{\"tokens\":[");
    for (int i = 0; i < 1001; i++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, "%s1", i ? "," : "");
    snprintf(buf + o, sizeof buf - o, "]}");
    score_fails(buf, API_INVALID_REQUEST, "more than the limit 1000");

    json_t *j = J("{\"tokens\":[0,50276,7],\"logprobs\":true,\"top_logprobs\":5}");
    struct req_score r;
    struct api_error e;
    assert_int_equal(req_score_parse(j, &LIM, &r, &e), 0);
    assert_int_equal(r.in.n_tokens, 3);
    assert_int_equal(r.in.tokens[1], 50276);
    assert_int_equal(r.top_logprobs, 5);
    req_score_free(&r);
    json_decref(j);
}

static void test_completion_fields(void **u)
{
    struct req_completion c;
    struct api_error e;
    json_t *o = J("{\"model\":\"x\",\"prompt\":\"Hello\",\"max_tokens\":3,\"n\":1,\"logprobs\":2,"
                  "\"echo\":true,\"stop\":\"\\n\",\"user\":\"u\",\"logit_bias\":{},"
                  "\"stream_options\":{\"include_usage\":true},\"presence_penalty\":0}");
    assert_int_equal(req_completion_parse(o, &LIM, &c, &e), 0);
    assert_string_equal(c.prompt.text, "Hello");
    assert_int_equal(c.logprobs, 2);
    assert_int_equal(c.echo, 1);
    assert_int_equal(c.include_usage, 1);
    assert_string_equal(c.model, "x");
    req_completion_free(&c);
    json_decref(o);

    o = J("{\"prompt\":[[1,2,3]]}");
    assert_int_equal(req_completion_parse(o, &LIM, &c, &e), 0);
    assert_int_equal(c.prompt.n_tokens, 3);
    assert_int_equal(c.logprobs, -1);
    assert_int_equal(c.n, 1);
    req_completion_free(&c);
    json_decref(o);

    /* n up to max_n, best_of equal to it (or absent) */
    o = J("{\"prompt\":\"a\",\"n\":4,\"best_of\":4}");
    assert_int_equal(req_completion_parse(o, &LIM, &c, &e), 0);
    assert_int_equal(c.n, 4);
    req_completion_free(&c);
    json_decref(o);

    /* an empty prompt, in each of its forms, is neither text nor tokens */
    const char *empty[] = {"{\"prompt\":\"\"}", "{\"prompt\":[]}", "{\"prompt\":[\"\"]}",
                           "{\"prompt\":[[]]}"};
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
        o = J(empty[i]);
        if (req_completion_parse(o, &LIM, &c, &e) != 0)
            fail_msg("%s: %s", empty[i], e.message);
        assert_null(c.prompt.text);
        assert_null(c.prompt.tokens);
        req_completion_free(&c);
        json_decref(o);
    }

    const char *bad[][2] = {
        {"{\"prompt\":\"a\",\"n\":5}", "'n'"},
        {"{\"prompt\":\"a\",\"n\":0}", "'n'"},
        {"{\"prompt\":\"a\",\"best_of\":3}", "best_of"},
        {"{\"prompt\":\"a\",\"n\":2,\"best_of\":3}", "best_of"},
        {"{\"prompt\":\"a\",\"presence_penalty\":0.5}", "presence_penalty"},
        {"{\"prompt\":\"a\",\"logit_bias\":{\"1\":2}}", "logit_bias"},
        {"{\"prompt\":[\"a\",\"b\"]}", "one prompt"},
        {"{}", "prompt"},
        {"{\"prompt\":\"a\",\"logprobs\":true}", "logprobs"},
        {"{\"prompt\":\"a\",\"stream_options\":{\"x\":1}}", "unknown field 'x'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o = J(bad[i][0]);
        int rc = req_completion_parse(o, &LIM, &c, &e);
        json_decref(o);
        req_completion_free(&c);
        if (rc == 0)
            fail_msg("accepted %s", bad[i][0]);
        if (!strstr(e.message, bad[i][1]))
            fail_msg("'%s' lacks '%s'", e.message, bad[i][1]);
    }
}

static void test_snapshot_names(void **u)
{
    /* S3 */
    const char *bad[] = {"../x", "/etc/passwd", "a/b", "..", ".", "", ".hidden", "-rf",
                         "a b", "x.", "a\\b", "name.tmp", "\xe2\x88\x95" /* U+2215 */,
                         "\xef\xbc\x8e\xef\xbc\x8e" /* U+FF0E x2 */, "a\x1b[31m"};
    struct api_error e;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e.kind = 0;
        if (req_snapshot_name_check(bad[i], strlen(bad[i]), &e) == 0)
            fail_msg("accepted snapshot name '%s'", bad[i]);
        assert_int_equal(e.kind, API_INVALID_SNAPSHOT_NAME);
    }
    char nul[] = {'a', 0, 'b'};
    assert_int_not_equal(req_snapshot_name_check(nul, 3, &e), 0);
    char long_name[257];
    memset(long_name, 'a', 256);
    long_name[256] = 0;
    assert_int_not_equal(req_snapshot_name_check(long_name, 256, &e), 0);
    assert_int_equal(req_snapshot_name_check("prefix-v1.2_x", 13, &e), 0);
}

static void test_error_body(void **u)
{
    struct api_error e;
    api_error_set(&e, API_SNAPSHOT_MISMATCH, "quote \" and \xff and \n");
    size_t n;
    char *s = api_error_body(&e, &n);
    assert_non_null(s);
    json_t *o;
    struct api_error pe;
    assert_int_equal(pj_parse(s, n, 8, &o, &pe), 0);
    json_t *err = json_object_get(o, "error");
    /* OpenAI's error object: exactly these four members */
    assert_int_equal(json_object_size(err), 4);
    assert_string_equal(json_string_value(json_object_get(err, "type")), "invalid_request_error");
    assert_string_equal(json_string_value(json_object_get(err, "code")),
                        "snapshot_model_mismatch");
    assert_true(json_is_null(json_object_get(err, "param")));
    assert_non_null(strstr(json_string_value(json_object_get(err, "message")), "\xef\xbf\xbd"));
    json_decref(o);
    rc_free(s);

    /* a field at fault is the param; a hostile one arrives cut and valid UTF-8 */
    json_t *req = json_loads("{\"max_tokens\": -1}", 0, NULL);
    int64_t v;
    assert_int_not_equal(pj_int(req, "max_tokens", 0, 1, 10, 1, &v, &e), 0);
    json_decref(req);
    s = api_error_body(&e, &n);
    assert_int_equal(pj_parse(s, n, 8, &o, &pe), 0);
    err = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(err, "param")), "max_tokens");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "invalid_request");
    json_decref(o);
    rc_free(s);
    char key[200];
    memset(key, 'k', sizeof key);
    memcpy(key + sizeof e.param - 2, "\xc3\xa9", 2); /* cut in the middle */
    key[sizeof key - 1] = 0;
    api_error_set(&e, API_INVALID_REQUEST, "unknown field");
    api_error_param(&e, key);
    s = api_error_body(&e, &n);
    assert_int_equal(pj_parse(s, n, 8, &o, &pe), 0);
    const char *p = json_string_value(json_object_get(json_object_get(o, "error"), "param"));
    assert_non_null(p);
    assert_true(strlen(p) < sizeof e.param + 3);
    json_decref(o);
    rc_free(s);
    /* api_error_set clears a param left from before */
    api_error_set(&e, API_INTERNAL, "x");
    assert_int_equal(e.param[0], 0);
}

static const char *piece(const void *ctx, int32_t id, size_t *len)
{
    static const char *p[] = {"He", "llo", " \xe2\x82", "\xac!"};
    *len = strlen(p[id]);
    return p[id];
}

static void test_token_json(void **u)
{
    struct tok_details d;
    tok_details_init(&d, 2);
    int32_t ti[2] = {1, 3};
    float tl[2] = {-0.5f, -1.5f};
    assert_int_equal(tok_details_push(&d, 0, 0, NAN, NULL, NULL), 0);
    assert_int_equal(tok_details_push(&d, 1, 2, -0.25f, ti, tl), 0);
    struct vocab_view v = {piece, NULL};
    json_t *t0 = resp_token(&d, 0, &v), *t1 = resp_token(&d, 1, &v);
    assert_true(json_is_null(json_object_get(t0, "logprob")));
    assert_true(json_is_null(json_object_get(t0, "top_logprobs")));
    assert_string_equal(json_string_value(json_object_get(t0, "text")), "He");
    assert_null(json_object_get(t0, "bytes"));
    /* a piece ending mid-character: text sanitised, exact bytes given */
    assert_string_equal(json_string_value(json_object_get(t1, "text")), " \xef\xbf\xbd");
    json_t *b = json_object_get(t1, "bytes");
    assert_int_equal(json_array_size(b), 3);
    assert_int_equal(json_integer_value(json_array_get(b, 1)), 0xe2);
    json_t *top = json_object_get(t1, "top_logprobs");
    assert_int_equal(json_array_size(top), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(top, 1), "id")), 3);
    json_decref(t0);
    json_decref(t1);
    tok_details_free(&d);
}

/* outbuf_json_str writes what jansson writes for the sanitised text: every
 * single byte, and random byte strings (mostly invalid UTF-8). */
static void test_json_str_matches_jansson(void **u)
{
    unsigned x = 12345;
    for (int round = 0; round < 2000; round++) {
        unsigned char s[24];
        size_t n = round < 256 ? 1 : (size_t)(round % 24);
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            s[i] = round < 256 ? (unsigned char)round : (unsigned char)(x >> 16);
        }
        char san[128];
        size_t sl = utf8_repair_str(s, n, san, sizeof san);
        json_t *want = json_stringn(san, sl);
        assert_non_null(want);
        char *w = pj_dump(want, NULL);
        json_decref(want);
        struct outbuf b = {0};
        assert_int_equal(outbuf_json_str(&b, (char *)s, n), 0);
        assert_non_null(w);
        if (strcmp(b.p, w))
            fail_msg("round %d: %s != %s", round, b.p, w);
        rc_free(w);
        outbuf_free(&b);
    }
}

static void test_tokenize_body(void **u)
{
    struct vocab_view v = {piece, NULL};
    int32_t ids[] = {0, 1, 2, 3};
    for (size_t limit = 0; limit <= 5; limit++) {
        struct outbuf b = {0};
        struct tokenize_view t = {.ids = ids, .n = 4, .with_pieces = 1, .limit = limit};
        assert_int_equal(resp_tokenize(&b, &t, &v), 0);
        json_t *o;
        struct api_error e;
        assert_int_equal(pj_parse(b.p, b.n, 32, &o, &e), 0);
        assert_int_equal(json_array_size(json_object_get(o, "tokens")), 4);
        assert_int_equal(json_integer_value(json_object_get(o, "n_tokens")), 4);
        json_t *p = json_object_get(o, "pieces");
        size_t want = limit < 4 ? limit : 4;
        assert_int_equal(json_array_size(p), want);
        assert_true(json_is_boolean(json_object_get(o, "pieces_truncated")));
        assert_int_equal(json_is_true(json_object_get(o, "pieces_truncated")), limit < 4);
        /* each piece as resp_token writes it (less position and logprob) */
        struct tok_details d;
        tok_details_init(&d, 0);
        for (size_t i = 0; i < want; i++) {
            assert_int_equal(tok_details_push(&d, (int64_t)i, ids[i], 0, NULL, NULL), 0);
            json_t *t1 = resp_token(&d, i, &v);
            json_object_del(t1, "position");
            json_object_del(t1, "logprob");
            assert_true(json_equal(t1, json_array_get(p, i)));
            json_decref(t1);
        }
        tok_details_free(&d);
        json_decref(o);
        outbuf_free(&b);
    }
    /* every allocation failing in turn: an error, never a crash or a leak */
    size_t base = rc_alloc_live_bytes();
    for (long n = 1;; n++) {
        assert_true(n < 500);
        rc_alloc_fail_after(n, 0);
        struct outbuf b = {0};
        struct tokenize_view t = {.ids = ids, .n = 4, .with_pieces = 1, .limit = 3};
        int rc = resp_tokenize(&b, &t, &v);
        outbuf_free(&b);
        long inj = rc_alloc_injected();
        rc_alloc_fail_after(0, 0);
        assert_int_equal(rc_alloc_live_bytes(), base);
        assert_true(rc == 0 || inj > 0);
        if (inj == 0)
            break;
    }
}

static void test_oom_unwinds(void **u)
{
    /* Every allocation of a parse + validate + build fails in turn; no
     * crash, no leak (checked by the live-bytes counter and LSan). */
    const char *s = "{\"prompt\":\"Hello\",\"max_tokens\":3,\"stop\":[\"a\",\"b\"],\"logprobs\":1}";
    size_t base = rc_alloc_live_bytes();
    for (long n = 1; n < 200; n++) {
        rc_alloc_fail_after(n, 0);
        json_t *o = NULL;
        struct api_error e;
        struct req_completion c;
        memset(&c, 0, sizeof c);
        if (pj_parse(s, strlen(s), 32, &o, &e) == 0) {
            if (req_completion_parse(o, &LIM, &c, &e) == 0) {
                struct tok_details d;
                tok_details_init(&d, 1);
                int32_t ti = 1;
                float tl = -1;
                tok_details_push(&d, 0, 0, -0.1f, &ti, &tl);
                struct vocab_view v = {piece, NULL};
                struct completion_choice ch[2] = {{.text = "x", .text_len = 1, .d = &d},
                                                  {.text = "y", .text_len = 1, .d = &d,
                                                   .truncated = 1}};
                struct completion_view cv = {.id = "cmpl-1", .model = "m",
                                             .system_fingerprint = "fp_1", .ch = ch,
                                             .n_ch = 2, .with_usage = 1};
                json_t *r = resp_completion(&cv, &v);
                char *dump = r ? pj_dump(r, NULL) : NULL;
                rc_free(dump);
                json_decref(r);
                tok_details_free(&d);
            }
            req_completion_free(&c);
            json_decref(o);
        }
        long inj = rc_alloc_injected();
        rc_alloc_fail_after(0, 0);
        assert_int_equal(rc_alloc_live_bytes(), base);
        if (inj == 0)
            return; /* ran to completion without hitting the countdown */
    }
    fail_msg("never completed");
}

int main(void)
{
    proto_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b1_malformed),
        cmocka_unit_test(test_b1_depth),
        cmocka_unit_test(test_b1_edge_numbers_ok),
        cmocka_unit_test(test_b1_huge_key),
        cmocka_unit_test(test_b2_types),
        cmocka_unit_test(test_b2_nulls_and_defaults),
        cmocka_unit_test(test_b4_token_ids),
        cmocka_unit_test(test_completion_fields),
        cmocka_unit_test(test_snapshot_names),
        cmocka_unit_test(test_error_body),
        cmocka_unit_test(test_token_json),
        cmocka_unit_test(test_json_str_matches_jansson),
        cmocka_unit_test(test_tokenize_body),
        cmocka_unit_test(test_oom_unwinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
