#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "errors.h"

/* Request latency buckets, seconds (upper bounds). */
static const double bounds[METRICS_NBUCKETS] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                0.25,  0.5,   1,    2.5,   10,   60};

void metrics_init(struct metrics *m, const char *const *routes, int n_routes)
{
    memset(m, 0, sizeof *m);
    m->routes = routes;
    m->n_routes = n_routes < METRICS_MAX_ROUTES - 1 ? n_routes : METRICS_MAX_ROUTES - 1;
}

void metrics_request(struct metrics *m, int route, int status, double seconds, int completed)
{
    int r = route >= 0 && route < m->n_routes ? route : m->n_routes; /* last = other */
    int cls = status >= 100 && status < 600 ? status / 100 : 0;
    m->req[r][cls]++;
    int b = 0;
    while (b < METRICS_NBUCKETS && seconds > bounds[b])
        b++;
    m->lat_bucket[r][b]++;
    m->lat_sum[r] += seconds;
    if (!completed)
        m->client_gone++;
}

int64_t metrics_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages_total, pages_rss, page = sysconf(_SC_PAGESIZE);
    int64_t out = -1;
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &pages_total, &pages_rss) == 2 && pages_rss >= 0 && page > 0)
        out = (int64_t)pages_rss * page;
    fclose(f);
    return out;
}

static int pf(struct outbuf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int pf(struct outbuf *o, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line)
        return RC_ERANGE;
    return outbuf_put(o, line, (size_t)n);
}

int metrics_render(const struct metrics *m, const struct metrics_gauges *g, struct outbuf *o)
{
    int rc = 0;
#define P(...) do { if (!rc) rc = pf(o, __VA_ARGS__); } while (0)
    P("# HELP recurd_up 1 when the model is loaded and the server accepts work.\n"
      "# TYPE recurd_up gauge\nrecurd_up %d\n", g->ready && !g->draining);
    P("# HELP recurd_requests_total HTTP requests by route and status class.\n"
      "# TYPE recurd_requests_total counter\n");
    static const char *cls[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int r = 0; r <= m->n_routes; r++) {
        const char *name = r < m->n_routes ? m->routes[r] : "other";
        for (int c = 0; c < 6; c++)
            if (m->req[r][c])
                P("recurd_requests_total{route=\"%s\",status=\"%s\"} %llu\n", name, cls[c],
                  (unsigned long long)m->req[r][c]);
    }
    P("# HELP recurd_request_seconds Request latency (headers in to response done).\n"
      "# TYPE recurd_request_seconds histogram\n");
    for (int r = 0; r <= m->n_routes; r++) {
        const char *name = r < m->n_routes ? m->routes[r] : "other";
        uint64_t total = 0;
        for (int b = 0; b <= METRICS_NBUCKETS; b++)
            total += m->lat_bucket[r][b];
        if (!total)
            continue;
        uint64_t acc = 0;
        for (int b = 0; b < METRICS_NBUCKETS; b++) {
            acc += m->lat_bucket[r][b];
            P("recurd_request_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n", name, bounds[b],
              (unsigned long long)acc);
        }
        P("recurd_request_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n", name,
          (unsigned long long)total);
        P("recurd_request_seconds_sum{route=\"%s\"} %.6f\n", name, m->lat_sum[r]);
        P("recurd_request_seconds_count{route=\"%s\"} %llu\n", name, (unsigned long long)total);
    }
    P("# HELP recurd_client_gone_total Requests ended by the client going away.\n"
      "# TYPE recurd_client_gone_total counter\nrecurd_client_gone_total %llu\n",
      (unsigned long long)m->client_gone);
    P("# HELP recurd_auth_rejected_total Requests refused for a missing or wrong key.\n"
      "# TYPE recurd_auth_rejected_total counter\nrecurd_auth_rejected_total %llu\n",
      (unsigned long long)m->rejected_auth);
    P("# HELP recurd_sessions Live sessions.\n# TYPE recurd_sessions gauge\nrecurd_sessions %lld\n",
      (long long)g->sessions);
    P("# HELP recurd_sessions_created_total Sessions created.\n"
      "# TYPE recurd_sessions_created_total counter\nrecurd_sessions_created_total %llu\n",
      (unsigned long long)m->sessions_created);
    P("# HELP recurd_sessions_deleted_total Sessions deleted by request.\n"
      "# TYPE recurd_sessions_deleted_total counter\nrecurd_sessions_deleted_total %llu\n",
      (unsigned long long)m->sessions_deleted);
    P("# HELP recurd_sessions_expired_total Sessions deleted by the idle TTL.\n"
      "# TYPE recurd_sessions_expired_total counter\nrecurd_sessions_expired_total %llu\n",
      (unsigned long long)m->sessions_expired);
    P("# HELP recurd_spill_failures_total Writes of idle sessions' states to --state-dir that "
      "failed (the session stays in memory; spilling pauses, backing off up to 30 s).\n"
      "# TYPE recurd_spill_failures_total counter\nrecurd_spill_failures_total %llu\n",
      (unsigned long long)m->spill_failures);
    P("# HELP recurd_connections_header_timeout_total Connections closed because no complete "
      "request head arrived within --connection-timeout (idle or trickling clients).\n"
      "# TYPE recurd_connections_header_timeout_total counter\n"
      "recurd_connections_header_timeout_total %llu\n", (unsigned long long)g->header_timeouts);
    P("# HELP recurd_requests_timed_out_total Requests ended by --connection-timeout (no bytes "
      "from the client for that long).\n"
      "# TYPE recurd_requests_timed_out_total counter\nrecurd_requests_timed_out_total %llu\n",
      (unsigned long long)g->request_timeouts);
    P("# HELP recurd_state_bytes Bytes of recurrent state held in memory.\n"
      "# TYPE recurd_state_bytes gauge\nrecurd_state_bytes %lld\n", (long long)g->state_bytes);
    P("# HELP recurd_queue_depth Jobs submitted to the compute thread and not finished.\n"
      "# TYPE recurd_queue_depth gauge\nrecurd_queue_depth %lld\n", (long long)g->queue_depth);
    P("# HELP recurd_requests_in_flight HTTP requests being served.\n"
      "# TYPE recurd_requests_in_flight gauge\nrecurd_requests_in_flight %lld\n",
      (long long)g->in_flight);
    P("# HELP recurd_tokens_total Tokens through the model, by kind.\n"
      "# TYPE recurd_tokens_total counter\n"
      "recurd_tokens_total{kind=\"input\"} %lld\nrecurd_tokens_total{kind=\"generated\"} %lld\n",
      (long long)g->tokens_in, (long long)g->tokens_out);
    P("# HELP recurd_ticks_total Scheduler ticks (batched forward passes).\n"
      "# TYPE recurd_ticks_total counter\nrecurd_ticks_total %lld\n", (long long)g->ticks);
    P("# HELP recurd_batch_segments_total Segments (sessions) summed over ticks.\n"
      "# TYPE recurd_batch_segments_total counter\nrecurd_batch_segments_total %lld\n",
      (long long)g->batch_rows);
    P("# HELP recurd_compute_seconds_total Time the compute thread spent computing.\n"
      "# TYPE recurd_compute_seconds_total counter\nrecurd_compute_seconds_total %.6f\n",
      g->busy_seconds);
    P("# HELP recurd_alloc_bytes Bytes live through the allocator.\n"
      "# TYPE recurd_alloc_bytes gauge\nrecurd_alloc_bytes %lld\n", (long long)g->alloc_live_bytes);
    if (g->rss_bytes >= 0)
        P("# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
          "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %lld\n",
          (long long)g->rss_bytes);
#undef P
    return rc;
}
