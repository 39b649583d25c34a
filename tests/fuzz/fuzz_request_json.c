/*
 * Fuzz target: request bodies through the strict JSON parser and every
 * request parser (docs/reliability.md B1/B2/B4). Properties: no crash, no leak
 * (the allocator's live bytes come back to where they were), every
 * rejection carries a 4xx/5xx kind and a NUL-terminated message, and the
 * error body is itself valid JSON.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "apierr.h"
#include "jsonin.h"
#include "request.h"

static const struct proto_limits LIM = {
    .max_depth = 32,
    .max_text_bytes = 1 << 16,
    .max_input_tokens = 4096,
    .max_gen_tokens = 4096,
    .max_top_logprobs = 20,
    .max_stop = 4,
    .max_stop_bytes = 64,
    .vocab_size = 50277,
};

static void check_error(const struct api_error *e)
{
    if (api_err_status(e->kind) < 400 || !memchr(e->message, 0, sizeof e->message))
        abort();
    size_t n;
    char *body = api_error_body(e, &n);
    if (body) {
        json_t *o;
        struct api_error e2;
        if (pj_parse(body, n, 8, &o, &e2) != 0)
            abort(); /* our own error body must parse */
        json_decref(o);
        rc_free(body);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        proto_init();
        init = 1;
    }
    size_t live = rc_alloc_live_bytes();
    json_t *o = NULL;
    struct api_error e;
    if (pj_parse((const char *)data, size, LIM.max_depth, &o, &e) != 0) {
        check_error(&e);
    } else {
        struct req_score sc;
        struct req_generate g;
        struct req_completion c;
        struct req_tokenize t;
        struct req_detokenize d;
        struct req_session_create sn;
        struct req_save sv;
        if (req_score_parse(o, &LIM, &sc, &e))
            check_error(&e);
        req_score_free(&sc);
        if (req_generate_parse(o, &LIM, &g, &e))
            check_error(&e);
        req_generate_free(&g);
        if (req_completion_parse(o, &LIM, &c, &e))
            check_error(&e);
        req_completion_free(&c);
        if (req_tokenize_parse(o, &LIM, &t, &e))
            check_error(&e);
        req_tokenize_free(&t);
        if (req_detokenize_parse(o, &LIM, &d, &e))
            check_error(&e);
        req_detokenize_free(&d);
        if (req_session_create_parse(o, &LIM, &sn, &e))
            check_error(&e);
        req_session_create_free(&sn);
        if (req_save_parse(o, &LIM, &sv, &e))
            check_error(&e);
        req_save_free(&sv);
        json_decref(o);
    }
    if (rc_alloc_live_bytes() != live)
        abort(); /* something leaked */
    return 0;
}
