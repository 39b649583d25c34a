/*
 * app.h — the server instance shared by the lifecycle code (serve.c), the
 * HTTP API (dispatch.c, h_*.c; entry points in routes.h) and spilling
 * (spill.c). Internal to server/: everything here is owned by the loop
 * thread.
 *
 * Layers call down by name (serve.c -> routes.h -> spill.h -> store.h) and
 * up only through the two hooks in struct app, which serve.c fills, so no
 * two modules depend on each other.
 */
#ifndef RECUR_APP_H
#define RECUR_APP_H

#include <stdint.h>
#include <uv.h>

#include "options.h"
#include "http.h"
#include "list.h"
#include "metrics.h"
#include "request.h"
#include "compute.h"
#include "sessions.h"
#include "store.h"

struct model;
struct model_config;
struct codec;

enum app_state { APP_LOADING = 0, APP_READY, APP_DRAINING, APP_FAILED };

/* How a session's state came back for the requests that waited for it. */
enum session_ready {
    SESSION_READY_OK = 0,
    SESSION_READY_GONE,        /* deleted, or no such session (404) */
    SESSION_READY_FAILED,      /* could not be read back (500; `why`) */
    SESSION_READY_UNAVAILABLE, /* the store is down or another replica holds it (503) */
    SESSION_READY_DAMAGED,     /* the stored data is damaged or another model's (422) */
    SESSION_READY_RETRY,       /* it left this replica meanwhile: start over */
};

struct app {
    const struct options *cfg;
    uv_loop_t *loop;
    struct http *http;
    struct sched *sched;
    struct sessions *sessions;       /* once the model is loaded */
    struct store *snapshots;         /* --snapshot-dir, or NULL */
    struct store *states;            /* --state-dir, or NULL */
    struct cluster *cluster;         /* --store (cluster.h), or NULL */
    int io_ops;                      /* spill/restore/remove work in flight */
    int spilling;                    /* spills in flight */
    uv_timer_t spill_timer;          /* retries spilling after a failed write */
    uint64_t spill_retry_at;         /* loop ms before which no spill starts */
    uint32_t spill_backoff_ms;       /* 0 after a success; doubles per failure */
    int keep_files;                  /* shutting down: spilled files stay */
    struct metrics metrics;
    uv_async_t async;                /* compute -> loop events */
    uv_signal_t sigterm, sigint;
    uv_signal_t sigusr2;             /* fault-injection builds: arm allocation failures */
    uv_timer_t ttl_timer, drain_timer;
    uv_timer_t stop_timer;           /* runs app_stop outside any callback */
    int state;                       /* enum app_state */
    int drain_cancelled;             /* drain timeout hit: work was cancelled */
    int stopping;                    /* teardown started */
    int exit_code;
    uint64_t key_owner[OPTIONS_MAX_KEYS]; /* owner id of each API key */
    struct proto_limits lim;
    /* the model, once loaded (immutable) */
    const struct model *m;
    const struct model_config *mc;
    const struct codec *codec;
    uint64_t fingerprint;
    /* OpenAI's system_fingerprint: "fp_" and 16 hex digits of a hash of
     * the build's version and the model's fingerprint, the same for every
     * answer of one build serving one model (set with the model) */
    char system_fingerprint[24];
    size_t snap_bytes;               /* exact size of a snapshot */
    char model_name[256];
    int64_t started_unix;
    struct list rqs;                 /* requests with a job (struct rq.link), for the drain */
    /* Calls up, filled by serve.c: */
    /* after every request, job and disk op ends: finish a drain? */
    void (*check_drained)(struct app *a);
    /* spill.c: the requests that waited for a session's state (a list
     * only dispatch.c reads) go on, or fail with `why` */
    void (*session_ready)(struct app *a, struct list *waiters, enum session_ready status,
                          const char *why);
};

#endif
