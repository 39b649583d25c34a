/*
 * metrics.h — counters and histograms for GET /metrics (Prometheus text
 * format 0.0.4). Loop-thread only; the compute thread's counters live in
 * struct sched_stats and are read here atomically.
 */
#ifndef RECUR_METRICS_H
#define RECUR_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "response.h"

#define METRICS_MAX_ROUTES 32
#define METRICS_NBUCKETS 12

struct metrics {
    const char *const *routes; /* route labels, n_routes of them */
    int n_routes;
    /* per route: requests by status class (index status/100, 0 = no
     * response), and latency histogram */
    uint64_t req[METRICS_MAX_ROUTES][6];
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
    int64_t state_bytes;
    int64_t queue_depth;
    int64_t in_flight;
    int64_t tokens_in, tokens_out, ticks, batch_rows;
    double busy_seconds;
    int64_t alloc_live_bytes;
    int64_t rss_bytes;      /* resident set size of the process, -1 if unknown */
    uint64_t header_timeouts, request_timeouts;
    int ready, draining;
};

void metrics_init(struct metrics *m, const char *const *routes, int n_routes);
/* route < 0: not a known route (counted under "other"). */
void metrics_request(struct metrics *m, int route, int status, double seconds, int completed);
/* Resident set size of this process from /proc/self/statm, bytes; -1 if
 * it cannot be read. */
int64_t metrics_rss_bytes(void);
/* Append the exposition text to out; 0 or RC_ENOMEM. */
int metrics_render(const struct metrics *m, const struct metrics_gauges *g, struct outbuf *out);

#endif
