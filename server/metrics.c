#include "metrics.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "compute.h"
#include "errors.h"


/* Request latency buckets, seconds (upper bounds). */
static const double bounds[METRICS_NBUCKETS] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                0.25,  0.5,   1,    2.5,   10,   60};

/* Methods get their own label value; anything else is "other" (a client
 * can send any token as a method: the label set must stay bounded). */
static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
                                      "other"};
enum { N_METHODS = sizeof methods / sizeof methods[0] };

void metrics_init(struct metrics *m, const char *const *routes, int n_routes)
{
    memset(m, 0, sizeof *m);
    m->routes = routes;
    m->n_routes = n_routes < METRICS_MAX_ROUTES - 1 ? n_routes : METRICS_MAX_ROUTES - 1;
}

static int method_index(const char *method)
{
    for (int i = 0; method && i < N_METHODS - 1; i++)
        if (!strcmp(method, methods[i]))
            return i;
    return N_METHODS - 1;
}

void metrics_request(struct metrics *m, int route, const char *method, int status,
                     double seconds, int completed)
{
    int r = route >= 0 && route < m->n_routes ? route : m->n_routes; /* last = other */
    int meth = method_index(method);
    int code = status >= 100 && status < 600 ? status : 0;
    struct metrics_cell *c = NULL;
    for (int i = 0; i < m->n_cells && !c; i++)
        if (m->cells[i].route == r && m->cells[i].method == meth && m->cells[i].code == code)
            c = &m->cells[i];
    if (!c && m->n_cells < METRICS_MAX_CELLS) {
        c = &m->cells[m->n_cells++];
        *c = (struct metrics_cell){(uint8_t)r, (uint8_t)meth, (uint16_t)code, 0};
    }
    if (c)
        c->n++;
    else
        m->overflow++; /* a new combination once the table is full */
    int b = 0;
    while (b < METRICS_NBUCKETS && seconds > bounds[b])
        b++;
    m->lat_bucket[r][b]++;
    m->lat_sum[r] += seconds;
    if (!completed)
        m->client_gone++;
}

/* Append fmt's output (at most one line buffer) to o: 0, RC_ERANGE or RC_ENOMEM. */
static int vpf(struct outbuf *o, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static int vpf(struct outbuf *o, const char *fmt, va_list ap)
{
    char line[512];
    int n = vsnprintf(line, sizeof line, fmt, ap);
    if (n < 0 || (size_t)n >= sizeof line)
        return RC_ERANGE;
    return outbuf_put(o, line, (size_t)n);
}

static int pf(struct outbuf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int pf(struct outbuf *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vpf(o, fmt, ap);
    va_end(ap);
    return rc;
}

/* One metric without labels: its HELP and TYPE lines, then its value formatted
 * by fmt. */
static int metric(struct outbuf *o, const char *type, const char *name, const char *help,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int metric(struct outbuf *o, const char *type, const char *name, const char *help,
                  const char *fmt, ...)
{
    int rc = pf(o, "# HELP %s %s\n# TYPE %s %s\n%s ", name, help, name, type, name);
    if (!rc) {
        va_list ap;
        va_start(ap, fmt);
        rc = vpf(o, fmt, ap);
        va_end(ap);
    }
    return rc ? rc : pf(o, "\n");
}

/* A label value as the exposition format wants it: \\, \" and \n escaped
 * (a model directory's name can hold any byte). Cut to fit out. */
static const char *label_escape(const char *s, char *out, size_t len)
{
    size_t k = 0;
    for (; s && *s && k + 3 < len; s++) {
        if (*s == '\\' || *s == '"') {
            out[k++] = '\\';
            out[k++] = *s;
        } else if (*s == '\n') {
            out[k++] = '\\';
            out[k++] = 'n';
        } else {
            out[k++] = *s;
        }
    }
    out[k] = '\0';
    return out;
}

int metrics_printf(struct outbuf *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vpf(o, fmt, ap);
    va_end(ap);
    return rc;
}

int metrics_render_buckets(struct outbuf *o, const char *name, const char *label,
                           const double *upper, int n, const uint64_t *counts, double sum)
{
    const char *sep = label[0] ? "," : "";
    uint64_t acc = 0;
    int rc = 0;
    for (int b = 0; b < n && !rc; b++) {
        acc += counts[b];
        rc = pf(o, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, label, sep, upper[b],
                (unsigned long long)acc);
    }
    acc += counts[n];
    if (!rc)
        rc = pf(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, label, sep, (unsigned long long)acc);
    if (!rc)
        rc = label[0] ? pf(o, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, label, sum, name, label,
                           (unsigned long long)acc)
                      : pf(o, "%s_sum %.6f\n%s_count %llu\n", name, sum, name,
                           (unsigned long long)acc);
    return rc;
}

int metrics_render_counter(struct outbuf *o, const char *name, const char *help, uint64_t v)
{
    return metric(o, "counter", name, help, "%llu", (unsigned long long)v);
}

static int render_hist(struct outbuf *o, const char *name, const struct sched_hist *h)
{
    uint64_t counts[SCHED_TOKEN_BUCKETS + 1];
    for (int b = 0; b <= SCHED_TOKEN_BUCKETS; b++)
        counts[b] = (uint64_t)atomic_load(&h->bucket[b]);
    return metrics_render_buckets(o, name, "", sched_token_bounds, SCHED_TOKEN_BUCKETS, counts,
                                  (double)atomic_load(&h->sum_us) * 1e-6);
}

/* The appenders below run while rc is 0 and keep the first failure. */
#define P(...) do { if (!rc) rc = pf(o, __VA_ARGS__); } while (0)
#define M(...) do { if (!rc) rc = metric(o, __VA_ARGS__); } while (0)

/* Requests by route, method and code, and their latency by route. */
static int render_requests(const struct metrics *m, struct outbuf *o)
{
    int rc = 0;
    P("# HELP recurd_requests_total HTTP requests by route, method and status code "
      "(code \"none\": no response was sent).\n"
      "# TYPE recurd_requests_total counter\n");
    for (int i = 0; i < m->n_cells; i++) {
        const struct metrics_cell *c = &m->cells[i];
        if (!c->n)
            continue;
        const char *name = c->route < m->n_routes ? m->routes[c->route] : "other";
        char code[8] = "none";
        if (c->code)
            snprintf(code, sizeof code, "%u", (unsigned)c->code);
        P("recurd_requests_total{route=\"%s\",method=\"%s\",code=\"%s\"} %llu\n", name,
          methods[c->method], code, (unsigned long long)c->n);
    }
    if (m->overflow)
        P("recurd_requests_total{route=\"other\",method=\"other\",code=\"other\"} %llu\n",
          (unsigned long long)m->overflow);
    P("# HELP recurd_request_seconds Request latency (headers in to response done).\n"
      "# TYPE recurd_request_seconds histogram\n");
    for (int r = 0; r <= m->n_routes; r++) {
        const char *name = r < m->n_routes ? m->routes[r] : "other";
        uint64_t total = 0;
        for (int b = 0; b <= METRICS_NBUCKETS; b++)
            total += m->lat_bucket[r][b];
        if (!total)
            continue;
        char label[METRICS_LABEL_MAX];
        snprintf(label, sizeof label, "route=\"%s\"", name);
        if (!rc)
            rc = metrics_render_buckets(o, "recurd_request_seconds", label, bounds,
                                        METRICS_NBUCKETS, m->lat_bucket[r], m->lat_sum[r]);
    }
    return rc;
}

/* The compute thread's time to first token and between tokens. */
static int render_token_latency(const struct metrics_gauges *g, struct outbuf *o)
{
    int rc = 0;
    if (g->ttft) {
        P("# HELP recurd_time_to_first_token_seconds From a generation's submission to the "
          "compute thread (its input's prefill included) to its first generated token.\n"
          "# TYPE recurd_time_to_first_token_seconds histogram\n");
        if (!rc)
            rc = render_hist(o, "recurd_time_to_first_token_seconds", g->ttft);
    }
    if (g->itl) {
        P("# HELP recurd_inter_token_seconds Between consecutive generated tokens of one "
          "generation.\n# TYPE recurd_inter_token_seconds histogram\n");
        if (!rc)
            rc = render_hist(o, "recurd_inter_token_seconds", g->itl);
    }
    return rc;
}

/* The loop's books: clients, sessions, timeouts, state memory, queues. */
static int render_books(const struct metrics *m, const struct metrics_gauges *g, struct outbuf *o)
{
    int rc = 0;
    M("counter", "recurd_client_gone_total", "Requests ended by the client going away.",
      "%llu", (unsigned long long)m->client_gone);
    M("counter", "recurd_auth_rejected_total", "Requests refused for a missing or wrong key.",
      "%llu", (unsigned long long)m->rejected_auth);
    M("gauge", "recurd_sessions", "Live sessions.",
      "%lld", (long long)g->sessions);
    M("gauge", "recurd_sessions_spilled",
      "Live sessions whose state is on disk (--state-dir), not in memory.",
      "%lld", (long long)g->sessions_spilled);
    M("counter", "recurd_sessions_created_total", "Sessions created.",
      "%llu", (unsigned long long)m->sessions_created);
    M("counter", "recurd_sessions_deleted_total", "Sessions deleted by request.",
      "%llu", (unsigned long long)m->sessions_deleted);
    M("counter", "recurd_sessions_expired_total", "Sessions deleted by the idle TTL.",
      "%llu", (unsigned long long)m->sessions_expired);
    M("counter", "recurd_spill_failures_total",
      "Writes of idle sessions' states to --state-dir that failed (the session stays in memory; "
      "spilling pauses, backing off up to 30 s).",
      "%llu", (unsigned long long)m->spill_failures);
    M("counter", "recurd_connections_header_timeout_total",
      "Connections closed because no complete request head arrived within --connection-timeout "
      "(idle or trickling clients).",
      "%llu", (unsigned long long)g->header_timeouts);
    M("counter", "recurd_requests_timed_out_total",
      "Requests ended by --connection-timeout (no bytes from the client for that long).",
      "%llu", (unsigned long long)g->request_timeouts);
    M("gauge", "recurd_state_bytes", "Bytes of recurrent state held in memory.",
      "%lld", (long long)g->state_bytes);
    M("gauge", "recurd_state_memory_budget_bytes",
      "--state-memory: the most recurrent state held in memory (idle sessions spill or requests "
      "get 503 above it).",
      "%lld", (long long)g->state_budget);
    M("gauge", "recurd_queue_depth", "Jobs submitted to the compute thread and not finished.",
      "%lld", (long long)g->queue_depth);
    M("gauge", "recurd_requests_in_flight", "HTTP requests being served.",
      "%lld", (long long)g->in_flight);
    return rc;
}

/* The compute thread's work: tokens, ticks, time by kind, threads. */
static int render_compute(const struct metrics_gauges *g, struct outbuf *o)
{
    int rc = 0;
    P("# HELP recurd_tokens_total Tokens through the model, by kind.\n"
      "# TYPE recurd_tokens_total counter\n"
      "recurd_tokens_total{kind=\"input\"} %lld\nrecurd_tokens_total{kind=\"generated\"} %lld\n",
      (long long)g->tokens_in, (long long)g->tokens_out);
    M("counter", "recurd_ticks_total", "Scheduler ticks (batched forward passes).",
      "%lld", (long long)g->ticks);
    M("counter", "recurd_batch_segments_total", "Segments (sessions) summed over ticks.",
      "%lld", (long long)g->batch_rows);
    M("counter", "recurd_compute_seconds_total", "Time the compute thread spent computing.",
      "%.6f", g->busy_seconds);
    M("counter", "recurd_prefill_seconds_total",
      "Compute time spent on input tokens (prefill and scoring); a tick that mixes input and "
      "generated tokens is split by their counts.",
      "%.6f", g->prefill_seconds);
    M("counter", "recurd_decode_seconds_total",
      "Compute time spent on generated tokens (decode and sampling); split with prefill by token "
      "counts in mixed ticks.",
      "%.6f", g->decode_seconds);
    if (g->threads > 0)
        P("# HELP recurd_threads Threads computing the forward pass, by kind: the pool "
          "(--threads, the compute thread included) and OpenBLAS's.\n"
          "# TYPE recurd_threads gauge\nrecurd_threads{kind=\"compute\"} %d\n"
          "recurd_threads{kind=\"blas\"} %d\n", g->threads, g->blas_threads);
    return rc;
}

/* The process: memory, CPU, start time (Prometheus' process_* names). */
static int render_process(const struct metrics_gauges *g, struct outbuf *o)
{
    int rc = 0;
    M("gauge", "recurd_alloc_bytes", "Bytes live through the allocator.",
      "%lld", (long long)g->alloc_live_bytes);
    if (g->rss_bytes >= 0)
        M("gauge", "process_resident_memory_bytes", "Resident memory size in bytes.",
          "%lld", (long long)g->rss_bytes);
    if (g->cpu_seconds >= 0)
        M("counter", "process_cpu_seconds_total",
          "Total user and system CPU time spent in seconds.",
          "%.6f", g->cpu_seconds);
    M("gauge", "process_start_time_seconds",
      "Start time of the process since unix epoch in seconds.",
      "%.0f", g->start_time);
    return rc;
}

int metrics_render(const struct metrics *m, const struct metrics_gauges *g, struct outbuf *o)
{
    int rc = 0;
    char model[160], fp[40];
    P("# HELP recurd_build_info The server's version and the model it serves (value 1).\n"
      "# TYPE recurd_build_info gauge\n"
      "recurd_build_info{version=\"%s\",model=\"%s\",fingerprint=\"%s\"} 1\n", RECUR_VERSION,
      label_escape(g->model, model, sizeof model), label_escape(g->fingerprint, fp, sizeof fp));
    M("gauge", "recurd_up", "1 when the model is loaded and the server accepts work.",
      "%d", g->ready && !g->draining);
    if (!rc)
        rc = render_requests(m, o);
    if (!rc)
        rc = render_token_latency(g, o);
    if (!rc)
        rc = render_books(m, g, o);
    if (!rc)
        rc = render_compute(g, o);
    if (!rc)
        rc = render_process(g, o);
    return rc;
}

#undef P
#undef M
