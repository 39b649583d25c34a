/*
 * metrics.h — counters and histograms for GET /metrics (Prometheus text
 * format 0.0.4). Loop-thread only; the compute thread's counters live in
 * struct sched_stats and are read here atomically.
 *
 * Requests are counted by route, method and exact status code. The label
 * sets are bounded: routes are the fixed table (unknown paths count as
 * route="other"), methods outside the list count as method="other", and
 * at most METRICS_MAX_CELLS (route, method, code) combinations are kept;
 * later new combinations count under route="other",method="other",
 * code="other".
 */
#ifndef RECUR_METRICS_H
#define RECUR_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "response.h"

#define METRICS_MAX_ROUTES 32
#define METRICS_NBUCKETS 12
#define METRICS_MAX_CELLS 512

struct sched_hist;

struct metrics_cell {
    uint8_t route, method;
    uint16_t code;   /* 0: no response */
    uint64_t n;
};

struct metrics {
    const char *const *routes; /* route labels, n_routes of them */
    int n_routes;
    struct metrics_cell cells[METRICS_MAX_CELLS];
    int n_cells;
    uint64_t overflow;         /* requests of combinations past the table */
    /* per route latency histogram */
    uint64_t lat_bucket[METRICS_MAX_ROUTES][METRICS_NBUCKETS + 1];
    double lat_sum[METRICS_MAX_ROUTES];
    uint64_t client_gone;      /* requests ended by the client going away */
    uint64_t sessions_created, sessions_deleted, sessions_expired;
    uint64_t spill_failures;   /* idle-session state writes that failed */
    uint64_t rejected_auth;
};

/* The gauges and compute counters sampled at render time. */
struct metrics_gauges {
    int64_t sessions;
    int64_t sessions_spilled;   /* sessions whose state is on disk (--state-dir) */
    int64_t state_bytes;
    int64_t state_budget;       /* --state-memory */
    int64_t queue_depth;
    int64_t in_flight;
    int64_t tokens_in, tokens_out, ticks, batch_rows;
    double busy_seconds, prefill_seconds, decode_seconds;
    const struct sched_hist *ttft, *itl; /* NULL: not rendered */
    int threads, blas_threads;  /* 0: not known yet (loading) */
    int64_t alloc_live_bytes;
    int64_t rss_bytes;      /* resident set size of the process, -1 if unknown */
    double cpu_seconds;     /* user + system CPU time of the process, -1 if unknown */
    double start_time;      /* unix seconds the process started */
    const char *model;      /* build info labels (NULL: empty) */
    const char *fingerprint;
    uint64_t header_timeouts, request_timeouts;
    int ready, draining;
};

void metrics_init(struct metrics *m, const char *const *routes, int n_routes);
/* route < 0: not a known route (counted under "other"); method: the
 * request's method as received (NULL: "other"); status 0: no response. */
void metrics_request(struct metrics *m, int route, const char *method, int status,
                     double seconds, int completed);
/* Pieces for other modules' metrics (cluster.c), appended to out: 0, or
 * RC_ENOMEM / RC_ERANGE (a line over 512 bytes). */
#define METRICS_LABEL_MAX 160
int metrics_printf(struct outbuf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A histogram: counts[0..n] per bucket (not cumulative; counts[n] is above
 * every bound), upper bounds in seconds; label is `k="v"` or "". */
int metrics_render_buckets(struct outbuf *o, const char *name, const char *label,
                           const double *upper, int n, const uint64_t *counts, double sum);
/* A counter with its HELP and TYPE lines. */
int metrics_render_counter(struct outbuf *o, const char *name, const char *help, uint64_t v);

/* Append the exposition text to out; 0 or RC_ENOMEM. */
int metrics_render(const struct metrics *m, const struct metrics_gauges *g, struct outbuf *out);

#endif
