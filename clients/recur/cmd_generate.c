/*
 * recur generate [--session ID] PROMPT — generation over server-sent
 * events: each token's text is printed as it arrives.
 *
 * Without --session a session is made for the prompt and deleted after;
 * with one, the prompt (if any) is appended to it first and the generated
 * tokens stay in its state (unless --no-commit).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "recur.h"

struct sse {
    struct buf line;
    int done, failed, n_tokens;
    double t_first, t0;
    json_t *final; /* the done event */
};

static void on_event(struct sse *e, const char *data, size_t n)
{
    json_error_t je;
    json_t *j = json_loadb(data, n, JSON_ALLOW_NUL, &je);
    const char *type = j ? json_string_value(json_object_get(j, "type")) : NULL;
    if (!type) {
        msg("generate: a stream event is not JSON: %.80s", data);
        e->failed = 1;
    } else if (!strcmp(type, "token")) {
        json_t *t = json_object_get(j, "text");
        if (json_is_string(t)) { /* may hold U+0000: write its length */
            fwrite(json_string_value(t), 1, json_string_length(t), stdout);
            fflush(stdout);
        }
        if (!e->n_tokens++)
            e->t_first = now_sec();
    } else if (!strcmp(type, "done")) {
        e->done = 1;
        json_decref(e->final);
        e->final = json_incref(j);
    } else if (!strcmp(type, "error")) {
        json_t *er = json_object_get(j, "error");
        /* "code" in the OpenAI-shaped error, "type" in the older one */
        msg("generate: the stream ended with an error: %s: %s",
            json_string_value(json_object_get(er, "code"))
                ?: json_string_value(json_object_get(er, "type")) ?: "?",
            json_string_value(json_object_get(er, "message")) ?: "?");
        e->failed = 1;
    }
    json_decref(j);
}

static size_t on_data(const char *p, size_t n, void *ctx)
{
    struct sse *e = ctx;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            if (e->line.n > 6 && !strncmp(e->line.p, "data: ", 6))
                on_event(e, e->line.p + 6, e->line.n - 6);
            e->line.n = 0;
        } else if (e->line.n > (16u << 20) || buf_put(&e->line, p + i, 1)) {
            msg("generate: a stream event is too long");
            return 0;
        }
    }
    return n;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: recur generate [--session ID] [options] [PROMPT]\n"
               "  --session ID        generate from this session (PROMPT, if given, is appended first)\n"
               "  --max-tokens N      tokens to generate (16)\n"
               "  --temperature T     0 = greedy (1.0)\n"
               "  --top-p P           nucleus sampling (1.0)\n"
               "  --top-k K           0 = off\n"
               "  --seed S            same seed, same tokens\n"
               "  --stop STR          stop sequence (repeatable)\n"
               "  --no-commit         leave the session's state as it was\n"
               "  --ignore-eos        do not stop at the end-of-text token\n"
               "  --url, --api-key, --timeout (see recur --help)\n"
               "Text goes to stdout as it streams; a summary line to stderr.\n");
}

int cmd_generate(int argc, char **argv)
{
    struct conn c;
    conn_init(&c);
    struct argp a;
    argp_init(&a, argc, argv);
    const char *prompt = NULL, *sid_arg = NULL;
    json_t *body = json_pack("{s:b}", "stream", 1), *stops = json_array();
    int r, rc = EX_USAGE;
    if (!body || !stops) {
        msg("out of memory");
        json_decref(body);
        json_decref(stops);
        return EX_LOCAL;
    }
    while ((r = argp_next(&a)) >= 0) {
        if (r == 0) {
            if (prompt) {
                msg("generate: one PROMPT only (quote it)");
                goto out;
            }
            prompt = a.arg;
            continue;
        }
        if (argp_is(&a, "--help", 0) || argp_is(&a, "-h", 0)) {
            usage(stdout);
            rc = EX_OK;
            goto out;
        } else if (argp_conn(&a, &c)) {
        } else if (argp_is(&a, "--session", 1)) {
            sid_arg = a.val;
        } else if (argp_is(&a, "--max-tokens", 1) || argp_is(&a, "--top-k", 1) ||
                   argp_is(&a, "--seed", 1)) {
            long long v;
            const char *name = !strncmp(a.arg, "--max", 5) ? "max_tokens"
                               : !strncmp(a.arg, "--top", 5) ? "top_k" : "seed";
            if (a.val && parse_ll(a.val, 0, (1LL << 53), &v)) {
                msg("generate: %s wants a non-negative integer, not '%s'", a.arg, a.val);
                goto out;
            }
            if (a.val)
                json_object_set_new(body, name, json_integer(v));
        } else if (argp_is(&a, "--temperature", 1) || argp_is(&a, "--top-p", 1)) {
            double v;
            const char *name = !strncmp(a.arg, "--temp", 6) ? "temperature" : "top_p";
            if (a.val && parse_double(a.val, 0, 1e6, &v)) {
                msg("generate: %s wants a number >= 0, not '%s'", a.arg, a.val);
                goto out;
            }
            if (a.val)
                json_object_set_new(body, name, json_real(v));
        } else if (argp_is(&a, "--stop", 1)) {
            if (a.val)
                json_array_append_new(stops, json_string(a.val));
        } else if (argp_is(&a, "--no-commit", 0)) {
            json_object_set_new(body, "commit", json_false());
        } else if (argp_is(&a, "--ignore-eos", 0)) {
            json_object_set_new(body, "ignore_eos", json_true());
        } else {
            msg("generate: unknown option '%s'", a.arg);
            usage(stderr);
            goto out;
        }
        if (a.bad)
            goto out;
    }
    if ((!prompt || !*prompt) && !sid_arg) {
        /* nothing to continue: say so, then how to call it */
        msg("generate: %s: give the text to continue as PROMPT, or --session ID to continue "
            "a session", prompt ? "the PROMPT is empty" : "no PROMPT and no --session");
        usage(stderr);
        goto out;
    }
    if (sid_arg && check_id("generate", sid_arg))
        goto out;
    if (json_array_size(stops))
        json_object_set(body, "stop", stops);

    char sid[72], path[160];
    if (sid_arg) {
        snprintf(sid, sizeof sid, "%s", sid_arg);
    } else if ((rc = session_create(&c, sid))) {
        goto out;
    }
    rc = EX_OK;
    if (prompt && *prompt) {
        json_t *ap = json_pack("{s:s}", "text", prompt), *out = NULL;
        snprintf(path, sizeof path, "/v1/sessions/%s/append", sid);
        rc = ap ? call_json(&c, "POST", path, ap, &out) : EX_LOCAL;
        json_decref(ap);
        json_decref(out);
    }
    if (rc == EX_OK) {
        char *text = json_dumps(body, JSON_COMPACT);
        struct sse e = {.t0 = now_sec()};
        snprintf(path, sizeof path, "/v1/sessions/%s/generate", sid);
        struct req q = {.method = "POST", .path = path, .ctype = "application/json",
                        .body = text, .body_len = text ? strlen(text) : 0, .sink = on_data,
                        .sink_ctx = &e, .stream = 1};
        struct resp resp = {0};
        rc = text ? http_do(&c, NULL, &q, &resp) : EX_LOCAL;
        free(text);
        if (rc == EX_OK)
            rc = http_check(&resp, "generate");
        if (rc == EX_OK && e.line.n && !strncmp(e.line.p, "data: ", 6)) /* no final newline */
            on_event(&e, e.line.p + 6, e.line.n - 6);
        if (rc == EX_OK && (e.failed || !e.done)) {
            if (!e.failed)
                msg("generate: the stream ended without its done event");
            rc = EX_SERVER;
        }
        if (e.n_tokens)
            putchar('\n');
        if (rc == EX_OK) {
            double t = now_sec();
            json_t *d = e.final;
            msg("%d tokens, finish %s, seed %lld, position %lld, %.1f tok/s%s", e.n_tokens,
                json_string_value(json_object_get(d, "finish_reason")) ?: "?",
                (long long)json_integer_value(json_object_get(d, "seed")),
                (long long)json_integer_value(json_object_get(d, "position")),
                e.n_tokens > 1 && t > e.t_first ? (e.n_tokens - 1) / (t - e.t_first) : 0.0,
                sid_arg ? "" : " (temporary session deleted)");
        }
        json_decref(e.final);
        buf_free(&e.line);
        buf_free(&resp.body);
    }
    if (!sid_arg) {
        int d = session_delete(&c, sid);
        rc = rc ? rc : d;
    }
out:
    json_decref(body);
    json_decref(stops);
    return rc;
}
