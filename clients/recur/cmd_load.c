/*
 * recur load — a bounded load test against a running server.
 *
 * N streamer threads each create a session and append M tokens in requests
 * of --chunk-tokens (token ids from a seeded PRNG, as {"tokens": [...]}) or
 * of --chunk-bytes of a text document (--doc FILE, cycled; text/plain), so
 * every request's latency and token count is known. G generator threads
 * each hold a session with a short prompt and run streamed generations of
 * K tokens (commit: false) until the streamers finish. The main thread
 * samples /metrics every second (RSS, state bytes, sessions). Everything
 * stops at --duration; every request has a timeout.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "recur.h"

struct dvec {
    double *v;
    size_t n, cap;
};

static int dv_push(struct dvec *d, double x)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 256;
        double *v = realloc(d->v, cap * sizeof *v);
        if (!v)
            return -1;
        d->v = v;
        d->cap = cap;
    }
    d->v[d->n++] = x;
    return 0;
}

static int dv_cat(struct dvec *d, const struct dvec *s)
{
    for (size_t i = 0; i < s->n; i++)
        if (dv_push(d, s->v[i]))
            return -1;
    return 0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted vector; NAN when empty. */
static double pct(const struct dvec *d, double p)
{
    if (!d->n)
        return NAN;
    size_t k = (size_t)ceil(p / 100.0 * (double)d->n);
    k = k < 1 ? 1 : k > d->n ? d->n : k;
    return d->v[k - 1];
}

struct cfg {
    struct conn c;
    int n, g;
    long long m, chunk_tokens, chunk_bytes, gen_tokens, vocab;
    uint64_t seed;
    double duration, req_timeout, deadline;
    const char *doc_path;
    char *doc;
    size_t doc_len;
    atomic_int streamers_left;
    atomic_int stop;
    pthread_mutex_t mu; /* errors */
    long long errors;
    char first_errors[4][300];
    int n_first;
};

struct worker {
    struct cfg *cfg;
    int idx;
    pthread_t th;
    struct dvec req_ms, tok_ms; /* per request, per token (ms) */
    long long tokens, requests;
    double t_start, t_end;
    int done; /* streamer reached M */
};

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void note_error(struct cfg *cfg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_error(struct cfg *cfg, const char *fmt, ...)
{
    char line[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&cfg->mu);
    cfg->errors++;
    if (cfg->n_first < 4)
        snprintf(cfg->first_errors[cfg->n_first++], sizeof cfg->first_errors[0], "%s", line);
    pthread_mutex_unlock(&cfg->mu);
}

static double req_timeout(const struct cfg *cfg)
{
    double left = cfg->deadline - now_sec() + 2;
    double t = cfg->req_timeout < left ? cfg->req_timeout : left;
    return t < 1 ? 1 : t;
}

/* One request on easy handle h; returns the reply JSON (or NULL on an
 * error, counted). */
static json_t *load_call(struct cfg *cfg, CURL *h, struct req *q, const char *what)
{
    struct resp r;
    q->timeout = req_timeout(cfg);
    int rc = http_do(&cfg->c, h, q, &r);
    json_t *j = NULL;
    if (rc) {
        note_error(cfg, "%s: no answer (exit class %d)", what, rc);
    } else if (r.status < 200 || r.status >= 300) {
        note_error(cfg, "%s: HTTP %ld %.200s", what, r.status, r.body.p ? r.body.p : "");
    } else {
        json_error_t je;
        j = json_loadb(r.body.p ? r.body.p : "{}", r.body.p ? r.body.n : 2, JSON_ALLOW_NUL, &je);
        if (!j)
            note_error(cfg, "%s: reply is not JSON", what);
    }
    buf_free(&r.body);
    return j;
}

static int new_session(struct cfg *cfg, CURL *h, char sid[72])
{
    struct req q = {.method = "POST", .path = "/v1/sessions", .ctype = "application/json",
                    .body = "{}", .body_len = 2};
    json_t *j = load_call(cfg, h, &q, "create session");
    const char *id = j ? json_string_value(json_object_get(j, "id")) : NULL;
    int ok = id && strlen(id) < 72;
    if (ok)
        strcpy(sid, id);
    else if (j)
        note_error(cfg, "create session: no id");
    json_decref(j);
    return ok ? 0 : -1;
}

static void del_session(struct cfg *cfg, CURL *h, const char *sid)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", sid);
    struct req q = {.method = "DELETE", .path = path};
    json_decref(load_call(cfg, h, &q, "delete session"));
}

static void *streamer(void *arg)
{
    struct worker *w = arg;
    struct cfg *cfg = w->cfg;
    CURL *h = curl_easy_init();
    char sid[72], path[128];
    uint64_t rng = cfg->seed * 1000003u + (uint64_t)w->idx;
    size_t doc_off = cfg->doc_len ? (size_t)(splitmix(&rng) % cfg->doc_len) : 0;
    struct buf body = {0};
    w->t_start = now_sec();
    if (!h || new_session(cfg, h, sid)) {
        if (!h)
            note_error(cfg, "cannot start libcurl");
        goto out;
    }
    snprintf(path, sizeof path, "/v1/sessions/%s/append", sid);
    while (w->tokens < cfg->m && !atomic_load(&cfg->stop)) {
        body.n = 0;
        int ok = 1;
        struct req q = {.method = "POST", .path = path};
        if (cfg->doc) {
            size_t want = (size_t)cfg->chunk_bytes;
            while (ok && want > 0) {
                size_t k = cfg->doc_len - doc_off < want ? cfg->doc_len - doc_off : want;
                ok = !buf_put(&body, cfg->doc + doc_off, k);
                doc_off = (doc_off + k) % cfg->doc_len;
                want -= k;
            }
            q.ctype = "text/plain; charset=utf-8";
        } else {
            long long k = cfg->m - w->tokens < cfg->chunk_tokens ? cfg->m - w->tokens
                                                                 : cfg->chunk_tokens;
            ok = !buf_put(&body, "{\"tokens\":[", 11);
            for (long long i = 0; ok && i < k; i++) {
                char num[32];
                int len = snprintf(num, sizeof num, i ? ",%llu" : "%llu",
                                   (unsigned long long)(splitmix(&rng) % (uint64_t)cfg->vocab));
                ok = !buf_put(&body, num, (size_t)len);
            }
            ok = ok && !buf_put(&body, "]}", 2);
            q.ctype = "application/json";
        }
        if (!ok) {
            note_error(cfg, "out of memory");
            break;
        }
        q.body = body.p;
        q.body_len = body.n;
        double t0 = now_sec();
        json_t *j = load_call(cfg, h, &q, "append");
        double ms = (now_sec() - t0) * 1000;
        if (!j)
            break;
        long long nt = json_integer_value(json_object_get(j, "n_tokens"));
        json_decref(j);
        if (nt <= 0) {
            note_error(cfg, "append: read no tokens");
            break;
        }
        w->tokens += nt;
        w->requests++;
        if (dv_push(&w->req_ms, ms) || dv_push(&w->tok_ms, ms / (double)nt)) {
            note_error(cfg, "out of memory");
            break;
        }
    }
    w->done = w->tokens >= cfg->m;
    w->t_end = now_sec();
    del_session(cfg, h, sid);
out:
    if (!w->t_end)
        w->t_end = now_sec();
    buf_free(&body);
    if (h)
        curl_easy_cleanup(h);
    atomic_fetch_sub(&cfg->streamers_left, 1);
    return NULL;
}

struct gen_ctx {
    struct worker *w;
    struct buf line;
    double t_last;
    int n, done, failed;
};

static size_t gen_sink(const char *p, size_t n, void *ctx)
{
    struct gen_ctx *g = ctx;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n') {
            if (buf_put(&g->line, p + i, 1))
                return 0;
            continue;
        }
        if (g->line.n > 6 && !strncmp(g->line.p, "data: ", 6)) {
            if (strstr(g->line.p, "\"type\":\"token\"")) {
                double t = now_sec();
                /* inter-token latency (the first is time to first token) */
                if (dv_push(&g->w->tok_ms, (t - g->t_last) * 1000))
                    return 0;
                g->t_last = t;
                g->n++;
            } else if (strstr(g->line.p, "\"type\":\"done\"")) {
                g->done = 1;
            } else if (strstr(g->line.p, "\"type\":\"error\"")) {
                g->failed = 1;
            }
        }
        g->line.n = 0;
    }
    return n;
}

static void *generator(void *arg)
{
    struct worker *w = arg;
    struct cfg *cfg = w->cfg;
    CURL *h = curl_easy_init();
    char sid[72], path[128], body[256];
    w->t_start = now_sec();
    if (!h || new_session(cfg, h, sid)) {
        if (!h)
            note_error(cfg, "cannot start libcurl");
        goto out;
    }
    snprintf(path, sizeof path, "/v1/sessions/%s/append", sid);
    static const char prompt[] = "{\"tokens\":[1,2,3,4,5,6,7,8]}";
    struct req q = {.method = "POST", .path = path, .ctype = "application/json",
                    .body = prompt, .body_len = sizeof prompt - 1};
    json_t *j = load_call(cfg, h, &q, "generator prompt");
    if (!j)
        goto del;
    json_decref(j);
    snprintf(path, sizeof path, "/v1/sessions/%s/generate", sid);
    for (int round = 0; !atomic_load(&cfg->stop); round++) {
        if (round > 0 && atomic_load(&cfg->streamers_left) == 0)
            break;
        snprintf(body, sizeof body,
                 "{\"max_tokens\":%lld,\"stream\":true,\"commit\":false,\"ignore_eos\":true,"
                 "\"seed\":%d}", cfg->gen_tokens, w->idx * 7919 + round);
        struct gen_ctx g = {.w = w, .t_last = now_sec()};
        struct req gq = {.method = "POST", .path = path, .ctype = "application/json",
                         .body = body, .body_len = strlen(body), .sink = gen_sink,
                         .sink_ctx = &g, .timeout = req_timeout(cfg)};
        struct resp r;
        double t0 = now_sec();
        int rc = http_do(&cfg->c, h, &gq, &r);
        double ms = (now_sec() - t0) * 1000;
        if (rc)
            note_error(cfg, "generate: no answer (exit class %d)", rc);
        else if (r.status != 200)
            note_error(cfg, "generate: HTTP %ld %.200s", r.status, r.body.p ? r.body.p : "");
        else if (!g.done || g.failed)
            note_error(cfg, "generate: stream ended without done");
        buf_free(&r.body);
        buf_free(&g.line);
        w->tokens += g.n;
        if (rc || r.status != 200 || !g.done || g.failed)
            break;
        w->requests++;
        if (dv_push(&w->req_ms, ms)) {
            note_error(cfg, "out of memory");
            break;
        }
    }
del:
    w->t_end = now_sec();
    del_session(cfg, h, sid);
out:
    if (!w->t_end)
        w->t_end = now_sec();
    if (h)
        curl_easy_cleanup(h);
    return NULL;
}

struct sample {
    double t;
    long long rss, state, sessions;
};

static long long metric(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, name, n) && p[n] == ' ')
            return strtoll(p + n + 1, NULL, 10);
    return -1;
}

static int sample_metrics(struct cfg *cfg, CURL *h, double t0, struct sample *s)
{
    struct req q = {.method = "GET", .path = "/metrics", .timeout = 5};
    struct resp r;
    int rc = http_do(&cfg->c, h, &q, &r);
    int ok = rc == EX_OK && r.status == 200 && r.body.p;
    if (ok) {
        s->t = now_sec() - t0;
        s->rss = metric(r.body.p, "process_resident_memory_bytes");
        s->state = metric(r.body.p, "recurd_state_bytes");
        s->sessions = metric(r.body.p, "recurd_sessions");
    }
    buf_free(&r.body);
    return ok ? 0 : -1;
}

static json_t *lat_json(struct dvec *d)
{
    if (d->n)
        qsort(d->v, d->n, sizeof *d->v, cmp_d);
    return json_pack("{s:f, s:f, s:f, s:I}", "p50", d->n ? pct(d, 50) : 0.0, "p90",
                     d->n ? pct(d, 90) : 0.0, "p99", d->n ? pct(d, 99) : 0.0, "n",
                     (json_int_t)d->n);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: recur load [options]\n"
            "  -n, --sessions N      concurrent streaming sessions (16)\n"
            "  -m, --tokens M        tokens each session streams (131072; K/M suffixes)\n"
            "  --generators G        concurrent generating sessions (0)\n"
            "  --gen-tokens K        tokens per generation request (128)\n"
            "  --doc FILE|random     text FILE (cycled, sent as text/plain chunks) or random\n"
            "                        token ids from a seeded PRNG (default random)\n"
            "  --chunk-tokens C      token ids per append with random (2048)\n"
            "  --chunk-bytes B       bytes per append with --doc FILE (16K)\n"
            "  --seed S              PRNG seed (1)\n"
            "  --duration S          stop everything after S seconds (600)\n"
            "  --request-timeout S   per request (120)\n"
            "  --json FILE           write the report as JSON (- for stdout)\n"
            "  --url, --api-key (see recur --help)\n"
            "Prints a markdown table. Exit 0 when every request succeeded and every session\n"
            "streamed its M tokens, 5 if some failed or --duration cut the run short.\n");
}

int cmd_load(int argc, char **argv)
{
    static struct cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    conn_init(&cfg.c);
    cfg.n = 16;
    cfg.m = 131072;
    cfg.gen_tokens = 128;
    cfg.chunk_tokens = 2048;
    cfg.chunk_bytes = 16384;
    cfg.seed = 1;
    cfg.duration = 600;
    cfg.req_timeout = 120;
    const char *json_path = NULL;
    struct argp a;
    argp_init(&a, argc, argv);
    int r;
    while ((r = argp_next(&a)) >= 0) {
        long long v;
        if (r == 0) {
            msg("load: unexpected argument '%s'", a.arg);
            return EX_USAGE;
        }
        if (argp_is(&a, "--help", 0) || argp_is(&a, "-h", 0)) {
            usage(stdout);
            return EX_OK;
        }
#define INTOPT(name, short_, lo, hi, dst)                                                      \
    else if (argp_is(&a, name, 1) || (short_ && argp_is(&a, short_ ? short_ : "", 1))) {       \
        if (a.val && parse_ll(a.val, lo, hi, &v)) {                                            \
            msg("load: %s wants an integer in [%lld, %lld], not '%s'", name, (long long)(lo),  \
                (long long)(hi), a.val);                                                       \
            return EX_USAGE;                                                                   \
        }                                                                                      \
        if (a.val)                                                                             \
            dst = v;                                                                           \
    }
        if (argp_conn(&a, &cfg.c)) {
        }
        INTOPT("--sessions", "-n", 0, 4096, cfg.n)
        INTOPT("--tokens", "-m", 1, 1LL << 40, cfg.m)
        INTOPT("--generators", NULL, 0, 4096, cfg.g)
        INTOPT("--gen-tokens", NULL, 1, 1 << 20, cfg.gen_tokens)
        INTOPT("--chunk-tokens", NULL, 1, 1 << 20, cfg.chunk_tokens)
        INTOPT("--chunk-bytes", NULL, 1, 1 << 26, cfg.chunk_bytes)
        INTOPT("--seed", NULL, 0, 1LL << 62, cfg.seed)
#undef INTOPT
        else if (argp_is(&a, "--duration", 1) || argp_is(&a, "--request-timeout", 1)) {
            double *dst = a.arg[2] == 'd' ? &cfg.duration : &cfg.req_timeout;
            if (a.val && parse_double(a.val, 0.1, 1e7, dst)) {
                msg("load: %s wants seconds, not '%s'", a.arg, a.val);
                return EX_USAGE;
            }
        } else if (argp_is(&a, "--doc", 1)) {
            cfg.doc_path = a.val;
        } else if (argp_is(&a, "--json", 1)) {
            json_path = a.val;
        } else {
            msg("load: unknown option '%s'", a.arg);
            usage(stderr);
            return EX_USAGE;
        }
        if (a.bad)
            return EX_USAGE;
    }
    if (cfg.n == 0 && cfg.g == 0) {
        msg("load: nothing to do (--sessions 0 and --generators 0)");
        return EX_USAGE;
    }
    if (cfg.doc_path && strcmp(cfg.doc_path, "random")) {
        FILE *f = fopen(cfg.doc_path, "rb");
        if (!f) {
            msg("load: cannot open %s: %s", cfg.doc_path, strerror(errno));
            return EX_LOCAL;
        }
        struct buf d = {0};
        char tmp[65536];
        size_t k;
        while ((k = fread(tmp, 1, sizeof tmp, f)) > 0 && d.n < (64u << 20))
            if (buf_put(&d, tmp, k)) {
                msg("load: out of memory");
                fclose(f);
                buf_free(&d);
                return EX_LOCAL;
            }
        int bad = ferror(f);
        fclose(f);
        if (bad || d.n == 0) {
            msg("load: %s: %s", cfg.doc_path, bad ? "read error" : "empty");
            buf_free(&d);
            return EX_LOCAL;
        }
        cfg.doc = d.p;
        cfg.doc_len = d.n;
    }
    /* the model: name and vocabulary (for random ids) */
    json_t *models = NULL;
    int rc = call_json(&cfg.c, "GET", "/v1/models", NULL, &models);
    if (rc) {
        free(cfg.doc);
        return rc;
    }
    json_t *m0 = json_array_get(json_object_get(models, "data"), 0);
    char model[128];
    snprintf(model, sizeof model, "%s", json_string_value(json_object_get(m0, "id")) ?: "?");
    cfg.vocab = json_integer_value(json_object_get(m0, "vocab_size"));
    long long state_bytes = json_integer_value(json_object_get(m0, "state_bytes"));
    json_decref(models);
    if (cfg.vocab <= 0) {
        msg("load: /v1/models gives no vocab_size");
        free(cfg.doc);
        return EX_SERVER;
    }
    pthread_mutex_init(&cfg.mu, NULL);
    struct worker *ws = calloc((size_t)(cfg.n + cfg.g), sizeof *ws);
    size_t cap_samples = (size_t)cfg.duration + 16, n_samples = 0;
    struct sample *samples = calloc(cap_samples, sizeof *samples);
    CURL *mh = curl_easy_init();
    if (!ws || !samples || !mh) {
        msg("load: out of memory");
        free(ws);
        free(samples);
        free(cfg.doc);
        if (mh)
            curl_easy_cleanup(mh);
        return EX_LOCAL;
    }
    double t0 = now_sec();
    cfg.deadline = t0 + cfg.duration;
    atomic_store(&cfg.streamers_left, cfg.n);
    if (n_samples < cap_samples && !sample_metrics(&cfg, mh, t0, &samples[n_samples]))
        n_samples++;
    int started = 0;
    for (int i = 0; i < cfg.n + cfg.g; i++) {
        ws[i].cfg = &cfg;
        ws[i].idx = i;
        if (pthread_create(&ws[i].th, NULL, i < cfg.n ? streamer : generator, &ws[i]) != 0) {
            msg("load: cannot start a thread");
            atomic_store(&cfg.stop, 1);
            if (i < cfg.n)
                atomic_fetch_sub(&cfg.streamers_left, cfg.n - i);
            break;
        }
        started++;
    }
    /* sample every second until the streamers are done (or the deadline) */
    double next = t0 + 1;
    for (;;) {
        int left = atomic_load(&cfg.streamers_left);
        double t = now_sec();
        if (t >= cfg.deadline)
            atomic_store(&cfg.stop, 1);
        if (left == 0 && (cfg.n > 0 || t - t0 > 1))
            break;
        if (atomic_load(&cfg.stop) && left == 0)
            break;
        if (t >= next) {
            if (n_samples < cap_samples && !sample_metrics(&cfg, mh, t0, &samples[n_samples]))
                n_samples++;
            next += 1;
            if (next < now_sec())
                next = now_sec() + 1;
        }
        if (atomic_load(&cfg.stop) && t > cfg.deadline + cfg.req_timeout + 10)
            break; /* threads stuck past every timeout: should not happen */
        usleep(20000);
    }
    atomic_store(&cfg.stop, 1);
    for (int i = 0; i < started; i++)
        pthread_join(ws[i].th, NULL);
    double wall = now_sec() - t0;
    if (n_samples < cap_samples && !sample_metrics(&cfg, mh, t0, &samples[n_samples]))
        n_samples++;
    curl_easy_cleanup(mh);

    /* aggregate */
    struct dvec sreq = {0}, stok = {0}, greq = {0}, gtok = {0};
    long long ptok = 0, gtokn = 0, preq = 0, gr = 0;
    double p_end = t0, g_first = 0, g_end = t0;
    int all_done = 1;
    for (int i = 0; i < started; i++) {
        struct worker *w = &ws[i];
        int s = i < cfg.n;
        if (s) {
            ptok += w->tokens;
            preq += w->requests;
            all_done &= w->done;
            p_end = w->t_end > p_end ? w->t_end : p_end;
        } else {
            gtokn += w->tokens;
            gr += w->requests;
            g_first = !g_first || w->t_start < g_first ? w->t_start : g_first;
            g_end = w->t_end > g_end ? w->t_end : g_end;
        }
        if (dv_cat(s ? &sreq : &greq, &w->req_ms) || dv_cat(s ? &stok : &gtok, &w->tok_ms))
            all_done = 0;
        free(w->req_ms.v);
        free(w->tok_ms.v);
    }
    all_done &= started == cfg.n + cfg.g;
    double p_time = p_end - t0, g_time = g_end - (g_first ? g_first : t0);
    double p_rate = p_time > 0 ? (double)ptok / p_time : 0;
    double g_rate = g_time > 0 ? (double)gtokn / g_time : 0;
    long long rss_min = -1, rss_max = -1, st_max = -1;
    for (size_t i = 0; i < n_samples; i++) {
        struct sample *s = &samples[i];
        if (s->rss >= 0 && (rss_min < 0 || s->rss < rss_min))
            rss_min = s->rss;
        rss_max = s->rss > rss_max ? s->rss : rss_max;
        st_max = s->state > st_max ? s->state : st_max;
    }
    /* flatness after warm-up: samples from 10% of the run on (the first
     * sessions' states, buffers and the allocator's arenas come first) */
    long long w_min = -1, w_max = -1;
    for (size_t i = 0; i < n_samples; i++) {
        struct sample *s = &samples[i];
        if (s->t < 0.1 * wall || s->rss < 0)
            continue;
        w_min = w_min < 0 || s->rss < w_min ? s->rss : w_min;
        w_max = s->rss > w_max ? s->rss : w_max;
    }
    double w_growth = w_min > 0 ? 100.0 * (double)(w_max - w_min) / (double)w_min : -1;
    json_t *jl_s = lat_json(&sreq), *jt_s = lat_json(&stok);
    json_t *jl_g = lat_json(&greq), *jt_g = lat_json(&gtok);
    json_t *samp = json_array(), *errs = json_array();
    for (size_t i = 0; i < n_samples; i++)
        json_array_append_new(samp, json_pack("{s:f, s:I, s:I, s:I}", "t", samples[i].t,
                                              "rss_bytes", (json_int_t)samples[i].rss,
                                              "state_bytes", (json_int_t)samples[i].state,
                                              "sessions", (json_int_t)samples[i].sessions));
    for (int i = 0; i < cfg.n_first; i++)
        json_array_append_new(errs, json_string(cfg.first_errors[i]));
    json_t *rep = json_pack(
        "{s:s, s:s, s:I, s:i, s:I, s:i, s:I, s:s, s:f, s:f, s:b,"
        " s:{s:I, s:I, s:f, s:f, s:o, s:o},"
        " s:{s:I, s:I, s:f, s:f, s:o, s:o},"
        " s:I, s:o,"
        " s:{s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:o}}",
        "model", model, "url", cfg.c.url, "state_bytes_per_session", (json_int_t)state_bytes,
        "sessions", cfg.n, "tokens_per_session", (json_int_t)cfg.m, "generators", cfg.g,
        "gen_tokens", (json_int_t)cfg.gen_tokens, "source",
        cfg.doc ? cfg.doc_path : "random", "duration_cap_s", cfg.duration, "wall_s", wall,
        "completed", all_done,
        "prefill", "tokens", (json_int_t)ptok, "requests", (json_int_t)preq, "seconds", p_time,
        "tok_per_s", p_rate, "request_ms", jl_s, "ms_per_token", jt_s,
        "decode", "tokens", (json_int_t)gtokn, "requests", (json_int_t)gr, "seconds", g_time,
        "tok_per_s", g_rate, "request_ms", jl_g, "ms_per_token", jt_g,
        "errors", (json_int_t)cfg.errors, "error_samples", errs,
        "memory", "rss_first", (json_int_t)(n_samples ? samples[0].rss : -1), "rss_last",
        (json_int_t)(n_samples ? samples[n_samples - 1].rss : -1), "rss_min",
        (json_int_t)rss_min, "rss_max", (json_int_t)rss_max, "rss_after_warmup_min",
        (json_int_t)w_min, "rss_after_warmup_max", (json_int_t)w_max,
        "rss_after_warmup_growth_pct", w_growth, "state_bytes_max", (json_int_t)st_max,
        "samples", samp);
    rc = EX_OK;
    if (!rep) {
        msg("load: out of memory");
        rc = EX_LOCAL;
    } else {
        char r1[32], r2[32], r3[32], r4[32];
        fmt_bytes(r1, sizeof r1, (double)(n_samples ? samples[0].rss : 0));
        fmt_bytes(r2, sizeof r2, (double)rss_max);
        fmt_bytes(r3, sizeof r3, (double)(n_samples ? samples[n_samples - 1].rss : 0));
        fmt_bytes(r4, sizeof r4, (double)st_max);
        printf("| model | sessions × tokens | generators × tokens | test | t/s | "
               "req p50 ms | req p90 ms | req p99 ms | tok p50 ms | tok p90 ms | tok p99 ms |\n"
               "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        const char *nm[2] = {"prefill (append)", "decode (generate)"};
        struct dvec *rq[2] = {&sreq, &greq}, *tk[2] = {&stok, &gtok};
        double rate[2] = {p_rate, g_rate};
        for (int k = 0; k < 2; k++) {
            if (k == 0 ? cfg.n == 0 : cfg.g == 0)
                continue;
            printf("| %s | %d × %lld | %d × %lld | %s | %.1f | %.1f | %.1f | %.1f | %.3f | "
                   "%.3f | %.3f |\n",
                   model, cfg.n, cfg.m, cfg.g, cfg.gen_tokens, nm[k], rate[k], pct(rq[k], 50),
                   pct(rq[k], 90), pct(rq[k], 99), pct(tk[k], 50), pct(tk[k], 90),
                   pct(tk[k], 99));
        }
        printf("\nwall %.1f s, %lld prefill tokens in %lld requests, %lld generated in %lld; "
               "errors %lld%s\nserver RSS %s at start, %s peak, %s at end; state bytes peak %s "
               "(%zu samples)\n",
               wall, ptok, preq, gtokn, gr, cfg.errors,
               all_done ? "" : " (not every session streamed its tokens)", r1, r2, r3, r4,
               n_samples);
        if (w_min > 0) {
            char wa[32], wb[32];
            fmt_bytes(wa, sizeof wa, (double)w_min);
            fmt_bytes(wb, sizeof wb, (double)w_max);
            printf("server RSS after warm-up (t >= 10%% of the run): %s .. %s, %+.2f%%\n", wa, wb,
                   w_growth);
        }
        for (int i = 0; i < cfg.n_first; i++)
            msg("load: error: %s", cfg.first_errors[i]);
        if (json_path) {
            FILE *f = strcmp(json_path, "-") ? fopen(json_path, "w") : stdout;
            if (!f || json_dumpf(rep, f, JSON_INDENT(2)) != 0 || fputc('\n', f) == EOF ||
                (f != stdout && fclose(f) != 0)) {
                msg("load: cannot write %s: %s", json_path, strerror(errno));
                rc = EX_LOCAL;
            }
        }
        if (!rc && (cfg.errors || !all_done))
            rc = EX_LOAD;
    }
    json_decref(rep);
    free(sreq.v);
    free(stok.v);
    free(greq.v);
    free(gtok.v);
    free(ws);
    free(samples);
    free(cfg.doc);
    pthread_mutex_destroy(&cfg.mu);
    return rc;
}
