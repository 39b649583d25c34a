/* net.c — HTTP through libcurl, error messages, small helpers. */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "recur.h"

int buf_put(struct buf *b, const void *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) {
            if (cap > ((size_t)-1) / 2)
                return -1;
            cap *= 2;
        }
        char *q = realloc(b->p, cap);
        if (!q)
            return -1;
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

void buf_free(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

void msg(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    /* one line whatever the server or a file name carried */
    for (char *s = line; *s; s++)
        if (*s == '\n' || *s == '\r')
            *s = ' ';
    fprintf(stderr, "recur: %s\n", line);
}

double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void fmt_bytes(char *out, size_t cap, double b)
{
    if (b < 1024)
        snprintf(out, cap, "%.0f B", b);
    else if (b < 1024.0 * 1024)
        snprintf(out, cap, "%.1f KiB", b / 1024);
    else if (b < 1024.0 * 1024 * 1024)
        snprintf(out, cap, "%.1f MiB", b / (1024.0 * 1024));
    else
        snprintf(out, cap, "%.2f GiB", b / (1024.0 * 1024 * 1024));
}

void fmt_duration(char *out, size_t cap, double s)
{
    if (!(s >= 0) || s > 1e7) {
        snprintf(out, cap, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(out, cap, "%ld:%02ld", t / 60, t % 60);
}

void conn_init(struct conn *c)
{
    const char *u = getenv("RECUR_URL");
    if (!u || !*u)
        u = getenv("RECURD_URL"); /* what clients/demo.sh and the Python client read */
    c->url = u && *u ? u : "http://127.0.0.1:8080";
    const char *k = getenv("RECUR_API_KEY");
    if (!k || !*k)
        k = getenv("RECURD_API_KEY");
    if (k && strchr(k, ',')) /* the server's variable may list several: use the first */
        k = NULL;
    c->key = k && *k ? k : NULL;
    c->timeout = 120;
    c->retry_deadline = 120;
}

void idem_key_new(char out[33])
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) { /* no entropy source: time and address, still unique enough per run */
            unsigned long long t = (unsigned long long)(now_sec() * 1e9) ^ (uintptr_t)out;
            for (size_t i = got; i < sizeof b; i++, t = t * 6364136223846793005ULL + 1)
                b[i] = (unsigned char)(t >> 56);
            break;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof b; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* The response headers the retry rule needs. */
static size_t on_header(char *p, size_t size, size_t n, void *ctx)
{
    struct resp *r = ctx;
    size_t len = size * n;
    char line[256];
    size_t k = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, p, k);
    line[k] = 0;
    if (!strncasecmp(line, "HTTP/", 5)) { /* a new response (after a 100): forget the last */
        r->retry_after = -1;
        r->replayed = r->json = 0;
    } else if (!strncasecmp(line, "Retry-After:", 12)) {
        char *end;
        double v = strtod(line + 12, &end);
        if (end != line + 12 && v >= 0)
            r->retry_after = v;
    } else if (!strncasecmp(line, "Idempotent-Replayed:", 20)) {
        r->replayed = strstr(line + 20, "true") != NULL;
    } else if (!strncasecmp(line, "Content-Type:", 13)) {
        const char *v = line + 13;
        while (*v == ' ')
            v++;
        r->json = !strncasecmp(v, "application/json", 16);
    }
    return len;
}

struct xfer {
    CURL *h;
    const struct req *q;
    struct resp *r;
    int sink_failed;
};

static size_t on_body(char *p, size_t size, size_t n, void *ctx)
{
    struct xfer *x = ctx;
    size_t len = size * n;
    if (!x->r->status)
        curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &x->r->status);
    if (x->q->sink && x->r->status >= 200 && x->r->status < 300) {
        if (x->q->sink(p, len, x->q->sink_ctx) != len) {
            x->sink_failed = 1;
            return 0;
        }
        return len;
    }
    /* error bodies are short; cap what is kept anyway */
    if (x->r->body.n < (64u << 20) && buf_put(&x->r->body, p, len) != 0)
        return 0;
    return len;
}

static int on_progress(void *ctx, curl_off_t dlt, curl_off_t dl, curl_off_t ult, curl_off_t ul)
{
    struct xfer *x = ctx;
    return x->q->progress ? x->q->progress(x->q->progress_ctx, dl, ul) : 0;
}

static const char *base_of(const char *url, char *out, size_t cap)
{
    snprintf(out, cap, "%s", url);
    return out;
}

int http_do(const struct conn *c, CURL *easy, const struct req *q, struct resp *r)
{
    char url[2048], auth[600], ctype[160], idem[260], errbuf[CURL_ERROR_SIZE] = "";
    memset(r, 0, sizeof *r);
    r->retry_after = -1;
    size_t ul = strlen(c->url);
    while (ul > 0 && c->url[ul - 1] == '/')
        ul--;
    if ((size_t)snprintf(url, sizeof url, "%.*s%s", (int)ul, c->url, q->path) >= sizeof url) {
        msg("URL too long");
        return EX_USAGE;
    }
    CURL *h = easy ? easy : curl_easy_init();
    if (!h) {
        msg("cannot start libcurl");
        return EX_CONNECT;
    }
    if (easy)
        curl_easy_reset(h);
    struct curl_slist *hd = NULL, *t;
    int ok = 1;
#define ADDH(s) do { t = curl_slist_append(hd, s); if (!t) ok = 0; else hd = t; } while (0)
    if (c->key) {
        if ((size_t)snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->key) >= sizeof auth) {
            msg("API key too long");
            if (!easy)
                curl_easy_cleanup(h);
            return EX_USAGE;
        }
        ADDH(auth);
    }
    if (q->ctype) {
        snprintf(ctype, sizeof ctype, "Content-Type: %s", q->ctype);
        ADDH(ctype);
    }
    if (q->idem_key) {
        snprintf(idem, sizeof idem, "Idempotency-Key: %s", q->idem_key);
        ADDH(idem);
    }
    ADDH("Expect:"); /* no 100-continue round trip */
    if (q->read && q->read_len < 0)
        ADDH("Transfer-Encoding: chunked");
#undef ADDH
    if (!ok) {
        curl_slist_free_all(hd);
        if (!easy)
            curl_easy_cleanup(h);
        msg("out of memory");
        return EX_CONNECT;
    }
    struct xfer x = {.h = h, .q = q, .r = r};
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    double to = q->timeout > 0 ? q->timeout : c->timeout;
    if (q->stream) {
        /* a stream may run for hours: fail only when it stalls */
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)ceil(to));
    } else {
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(to * 1000));
    }
    if (q->progress) {
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &x);
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    }
    const char *m = q->method;
    if (!strcmp(m, "GET")) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else {
        if (q->read) {
            curl_easy_setopt(h, CURLOPT_POST, 1L);
            curl_easy_setopt(h, CURLOPT_READFUNCTION, q->read);
            curl_easy_setopt(h, CURLOPT_READDATA, q->read_ctx);
            if (q->read_len >= 0)
                curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->read_len);
        } else {
            curl_easy_setopt(h, CURLOPT_POST, 1L);
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->body ? (const char *)q->body : "");
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body_len);
        }
        if (strcmp(m, "POST"))
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
    }
    CURLcode rc = curl_easy_perform(h);
    if (!r->status)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(hd);
    if (!easy)
        curl_easy_cleanup(h);
    if (rc == CURLE_OK)
        return EX_OK;
    char base[512];
    base_of(c->url, base, sizeof base);
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
        msg("cannot connect to %s: connection refused — is recurd serve running?", base);
        break;
    case CURLE_COULDNT_RESOLVE_HOST:
        msg("cannot connect to %s: unknown host", base);
        break;
    case CURLE_OPERATION_TIMEDOUT:
        msg("%s %s: no answer from %s within %.0f s (--timeout)", q->method, q->path, base, to);
        break;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        msg("bad --url '%s': %s", base, errbuf[0] ? errbuf : curl_easy_strerror(rc));
        return EX_USAGE;
    case CURLE_ABORTED_BY_CALLBACK:
    case CURLE_READ_ERROR:
    case CURLE_WRITE_ERROR:
        if (x.sink_failed || rc != CURLE_WRITE_ERROR) {
            /* the callback said why */
            return EX_LOCAL;
        }
        msg("%s %s: out of memory", q->method, q->path);
        break;
    default:
        if (r->status >= 400)
            return EX_OK; /* the server answered and closed early: report its answer */
        msg("%s %s at %s: %s", q->method, q->path, base,
            errbuf[0] ? errbuf : curl_easy_strerror(rc));
    }
    return EX_CONNECT;
}

/* 409 session_busy in an error body */
static int is_busy(const struct resp *r)
{
    return r->status == 409 && r->body.n && memmem(r->body.p, r->body.n, "session_busy", 12);
}

int http_do_retry(const struct conn *c, CURL *easy, const struct req *q, struct resp *r,
                  int (*rewind)(void *ctx), void *rewind_ctx, int *attempts)
{
    double end = now_sec() + c->retry_deadline, backoff = 0.05;
    int n = 1;
    for (;;) {
        int rc = http_do(c, easy, q, r);
        int again = rc == EX_CONNECT ||
                    (rc == EX_OK && (r->status == 502 || r->status == 503 || r->status == 504 ||
                                     (n > 1 && is_busy(r))));
        double left = end - now_sec();
        if (!again || c->retry_deadline <= 0 || left <= 0) {
            if (attempts)
                *attempts = n;
            return rc;
        }
        if (rewind && rewind(rewind_ctx)) {
            msg("%s %s: cannot send the body again (not a seekable file): not retried",
                q->method, q->path);
            if (attempts)
                *attempts = n;
            return rc;
        }
        double wait = r->retry_after >= 0 ? fmin(r->retry_after, 5.0) : backoff;
        if (r->retry_after < 0)
            backoff = fmin(backoff * 2, 2.0);
        wait = fmin(wait, left);
        if (rc == EX_OK)
            msg("%s %s: HTTP %ld; sending it again in %.2f s (attempt %d, same Idempotency-Key)",
                q->method, q->path, r->status, wait, n + 1);
        else
            msg("%s %s: no answer; sending it again in %.2f s (attempt %d, same Idempotency-Key)",
                q->method, q->path, wait, n + 1);
        buf_free(&r->body);
        struct timespec ts = {(time_t)wait, (long)((wait - floor(wait)) * 1e9)};
        while (nanosleep(&ts, &ts) && errno == EINTR)
            ;
        n++;
    }
}

int http_check(const struct resp *r, const char *what)
{
    if (r->status >= 200 && r->status < 300)
        return EX_OK;
    json_error_t je;
    json_t *j = r->body.n ? json_loadb(r->body.p, r->body.n, JSON_ALLOW_NUL, &je) : NULL;
    json_t *e = j ? json_object_get(j, "error") : NULL;
    /* The fine-grained name: "code" in the OpenAI-shaped body
     * ({"message","type","param","code"}, type a category such as
     * not_found_error), "type" in the older one; the message stays the same */
    const char *type = e ? json_string_value(json_object_get(e, "code")) : NULL;
    if (!type && e)
        type = json_string_value(json_object_get(e, "type"));
    const char *m = e ? json_string_value(json_object_get(e, "message")) : NULL;
    if (type && m)
        msg("%s: HTTP %ld %s: %s", what, r->status, type, m);
    else
        msg("%s: HTTP %ld: %.200s", what, r->status, r->body.n ? r->body.p : "(no body)");
    json_decref(j);
    return EX_SERVER;
}

static int call_json_q(const struct conn *c, const char *method, const char *path,
                       json_t *body, json_t **out, int retry);

int call_json(const struct conn *c, const char *method, const char *path, json_t *body,
              json_t **out)
{
    return call_json_q(c, method, path, body, out, 0);
}

int call_json_retry(const struct conn *c, const char *method, const char *path, json_t *body,
                    json_t **out)
{
    return call_json_q(c, method, path, body, out, 1);
}

static int call_json_q(const struct conn *c, const char *method, const char *path,
                       json_t *body, json_t **out, int retry)
{
    char *text = NULL;
    *out = NULL;
    if (body) {
        text = json_dumps(body, JSON_COMPACT);
        if (!text) {
            msg("out of memory");
            return EX_LOCAL;
        }
    }
    struct req q = {.method = method, .path = path};
    if (text) {
        q.ctype = "application/json";
        q.body = text;
        q.body_len = strlen(text);
    }
    struct resp r;
    char key[33];
    if (retry) {
        idem_key_new(key);
        q.idem_key = key;
    }
    int rc = retry ? http_do_retry(c, NULL, &q, &r, NULL, NULL, NULL) : http_do(c, NULL, &q, &r);
    free(text);
    if (rc == EX_OK) {
        char what[300];
        snprintf(what, sizeof what, "%s %s", method, path);
        rc = http_check(&r, what);
        if (rc == EX_OK && r.body.n) {
            json_error_t je;
            *out = json_loadb(r.body.p, r.body.n, JSON_ALLOW_NUL, &je);
            if (!*out) {
                msg("%s: the server's reply is not JSON: %s", what, je.text);
                rc = EX_SERVER;
            }
        }
    }
    buf_free(&r.body);
    return rc;
}

int session_create(const struct conn *c, char id[40])
{
    json_t *b = json_object(), *out = NULL;
    if (!b) {
        msg("out of memory");
        return EX_LOCAL;
    }
    /* retried like an append: start the client before the server, or ride
     * out a failover (an answer lost on the way can leave an unused session
     * behind, which expires with --session-ttl) */
    int rc = call_json_retry(c, "POST", "/v1/sessions", b, &out);
    json_decref(b);
    if (rc)
        return rc;
    const char *s = json_string_value(json_object_get(out, "id"));
    if (!s || strlen(s) >= 40) {
        msg("POST /v1/sessions: no id in the reply");
        json_decref(out);
        return EX_SERVER;
    }
    strcpy(id, s);
    json_decref(out);
    return EX_OK;
}

int session_delete(const struct conn *c, const char *id)
{
    char path[128];
    json_t *out = NULL;
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    int rc = call_json(c, "DELETE", path, NULL, &out);
    json_decref(out);
    return rc;
}

int check_id(const char *cmd, const char *id)
{
    size_t n = strlen(id);
    int ok = n >= 1 && n <= 64;
    for (size_t i = 0; ok && i < n; i++) {
        char ch = id[i];
        ok = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
             ch == '_' || ch == '-' || ch == '.';
    }
    if (!ok)
        msg("%s: '%.80s' is not a session id (1-64 of A-Z a-z 0-9 _ . -)", cmd, id);
    return ok ? 0 : -1;
}

int score_add(struct score_sum *t, json_t *j)
{
    json_t *nt = json_object_get(j, "n_tokens"), *ns = json_object_get(j, "n_scored");
    json_t *nl = json_object_get(j, "nll_sum"), *pos = json_object_get(j, "position");
    if (!json_is_integer(nt) || !json_is_integer(ns) || !json_is_number(nl) ||
        !json_is_integer(pos))
        return -1;
    t->n_tokens += json_integer_value(nt);
    t->n_scored += json_integer_value(ns);
    t->nll_sum += json_number_value(nl);
    t->position = json_integer_value(pos);
    return 0;
}
