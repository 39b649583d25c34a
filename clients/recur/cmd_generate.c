/*
 * recur generate [--session ID] PROMPT — generation over server-sent
 * events: each token's text is printed as it arrives.
 *
 * Without --session a session is made for the prompt and deleted after;
 * with one, the prompt (if any) is appended to it first and the generated
 * tokens stay in its state (unless --no-commit).
 *
 * The append and the generate carry an Idempotency-Key and are sent again
 * through failures (--retry-deadline). A stream cut off is sent again with
 * the same key and seed (one is picked here when --seed is not given): if
 * the generation had been committed, the server answers with its stored
 * result as JSON and the text not yet printed is printed from it; else it
 * runs again from the same state and the tokens already printed are
 * skipped. Either way stdout gets the text of one generation.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "recur.h"

struct sse {
    struct buf line;
    int done, failed, n_tokens;
    int retryable;  /* the failure was an "unavailable" error event */
    int seen;       /* tokens of the current attempt (a re-run skips n_tokens of them) */
    size_t printed; /* bytes of text printed */
    double t_first, t0;
    json_t *final; /* the done event */
};

/* Before each new attempt: a fresh line, count the re-run's tokens anew. */
static int sse_restart(void *ctx)
{
    struct sse *e = ctx;
    e->line.n = 0;
    e->seen = 0;
    e->failed = e->retryable = 0;
    return 0;
}

static void on_event(struct sse *e, const char *data, size_t n)
{
    json_error_t je;
    json_t *j = json_loadb(data, n, JSON_ALLOW_NUL, &je);
    const char *type = j ? json_string_value(json_object_get(j, "type")) : NULL;
    if (!type) {
        msg("generate: a stream event is not JSON: %.80s", data);
        e->failed = 1;
    } else if (!strcmp(type, "token")) {
        if (e->seen++ < e->n_tokens) { /* printed before the retry */
            json_decref(j);
            return;
        }
        json_t *t = json_object_get(j, "text");
        if (json_is_string(t)) { /* may hold U+0000: write its length */
            fwrite(json_string_value(t), 1, json_string_length(t), stdout);
            fflush(stdout);
            e->printed += json_string_length(t);
        }
        if (!e->n_tokens++)
            e->t_first = now_sec();
    } else if (!strcmp(type, "done")) {
        e->done = 1;
        json_decref(e->final);
        e->final = json_incref(j);
    } else if (!strcmp(type, "error")) {
        json_t *er = json_object_get(j, "error");
        const char *code = json_string_value(json_object_get(er, "code"));
        e->retryable = code && !strcmp(code, "unavailable");
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
    if (!json_object_get(body, "seed") && c.retry_deadline > 0) {
        /* a re-run after a failure must give the tokens already printed */
        char k[33];
        idem_key_new(k);
        json_object_set_new(body, "seed", json_integer(strtoll(k + 24, NULL, 16) & 0x7fffffff));
    }

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
        rc = ap ? call_json_retry(&c, "POST", path, ap, &out) : EX_LOCAL;
        json_decref(ap);
        json_decref(out);
    }
    if (rc == EX_OK) {
        char *text = json_dumps(body, JSON_COMPACT);
        struct sse e = {.t0 = now_sec()};
        snprintf(path, sizeof path, "/v1/sessions/%s/generate", sid);
        char key[33];
        idem_key_new(key);
        struct req q = {.method = "POST", .path = path, .ctype = "application/json",
                        .body = text, .body_len = text ? strlen(text) : 0, .sink = on_data,
                        .sink_ctx = &e, .stream = 1, .idem_key = key};
        struct resp resp = {0};
        double end = now_sec() + c.retry_deadline;
        for (;;) {
            rc = text ? http_do_retry(&c, NULL, &q, &resp, sse_restart, &e, NULL) : EX_LOCAL;
            if (rc == EX_OK)
                rc = http_check(&resp, "generate");
            if (rc == EX_OK && resp.json) {
                /* the stored result of the committed generation: print what is missing */
                json_error_t je;
                json_t *res = json_loadb(e.line.p ? e.line.p : "", e.line.n, 0, &je);
                json_t *t = json_object_get(res, "text");
                if (!json_is_string(t) || !json_is_array(json_object_get(res, "tokens"))) {
                    msg("generate: the stored result is not readable");
                    e.failed = 1;
                } else {
                    if (json_string_length(t) > e.printed)
                        fwrite(json_string_value(t) + e.printed, 1,
                               json_string_length(t) - e.printed, stdout);
                    e.n_tokens = (int)json_array_size(json_object_get(res, "tokens"));
                    e.done = 1;
                    json_decref(e.final);
                    e.final = json_incref(res);
                }
                json_decref(res);
                e.line.n = 0;
            }
            if (rc == EX_OK && e.line.n && !strncmp(e.line.p, "data: ", 6)) /* no final newline */
                on_event(&e, e.line.p + 6, e.line.n - 6);
            /* cut off without a done event, or told the server is unavailable: again */
            if (rc == EX_OK && !e.done && (!e.failed || e.retryable) && c.retry_deadline > 0 &&
                now_sec() < end) {
                msg("generate: the stream broke after %d tokens; sending it again (same "
                    "Idempotency-Key and seed)", e.n_tokens);
                buf_free(&resp.body);
                sse_restart(&e);
                continue;
            }
            break;
        }
        free(text);
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
