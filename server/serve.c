/*
 * serve.c — `recurd serve`: start-up, the loop's event plumbing, the idle
 * TTL sweep, and the SIGTERM drain.
 *
 * Start-up listens at once (so /health answers 503 "loading") and loads
 * the model on the compute thread; a model that fails to load ends the
 * process with status 1 and one log line naming the reason.
 *
 * Drain (first SIGTERM or SIGINT): /health turns 503 {"status":"draining"},
 * new requests get 503 (the listener stays open so that load balancers see
 * it), in-flight requests get --drain-timeout
 * seconds to finish; then running jobs are cancelled (streams end with an
 * error event) and the process exits 0 once the last request is done. A
 * second signal exits at once with status 1.
 */
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "alloc.h"
#include "blas.h"
#include "cpus.h"
#include "app.h"
#include "cli.h"
#include "cluster.h"
#include "errors.h"
#include "jsonin.h"
#include "log.h"
#include "model.h"
#include "snapshot.h"
#include "routes.h"
#include "spill.h"
#include "state.h"

/* After the drain timeout has cancelled everything, give streams this
 * long to deliver their final event before closing regardless. */
#define DRAIN_GRACE_MS 5000

static void close_cb(uv_handle_t *h) { (void)h; }

static void on_stop_timer(uv_timer_t *t);

static void app_stop(struct app *a)
{
    if (a->stopping)
        return;
    if (a->io_ops > 0) {
        /* spill/restore work holds sessions: stop once it is back */
        uv_timer_start(&a->stop_timer, on_stop_timer, 20, 0);
        return;
    }
    a->stopping = 1;
    uv_signal_stop(&a->sigterm);
    uv_signal_stop(&a->sigint);
    uv_close((uv_handle_t *)&a->sigterm, close_cb);
    uv_close((uv_handle_t *)&a->sigint, close_cb);
    uv_signal_stop(&a->sigusr2);
    uv_close((uv_handle_t *)&a->sigusr2, close_cb);
    uv_close((uv_handle_t *)&a->ttl_timer, close_cb);
    uv_close((uv_handle_t *)&a->drain_timer, close_cb);
    uv_close((uv_handle_t *)&a->stop_timer, close_cb);
    uv_close((uv_handle_t *)&a->spill_timer, close_cb);
    /* connections first (their requests release their jobs), then the
     * compute thread, then whatever it finished on the way out */
    http_free(a->http);
    a->http = NULL;
    sched_stop(a->sched);
    for (struct job *j = sched_take_events(a->sched), *nx; j; j = nx) {
        nx = j->loop.taken_next;
        j->loop.owner = NULL;
        routes_on_job_event(a, j);
    }
    /* with a store: every session here is snapshotted and handed off */
    cluster_stop(a);
    if (cluster_persist_all(a) > 0)
        a->exit_code = 1;
    /* the states belong to the model the scheduler owns: they go first;
     * a session that could not be written is lost, and a supervisor must
     * hear of it: the exit status says so */
    if (spill_persist_all(a) > 0)
        a->exit_code = 1;
    a->keep_files = 1;
    sessions_free(a->sessions);
    a->sessions = NULL;
    sched_free(a->sched);
    a->sched = NULL;
    uv_close((uv_handle_t *)&a->async, close_cb);
    /* file work still queued finishes on its own; the store it uses is
     * freed after the loop ends (cmd_serve) */
}

static void on_stop_timer(uv_timer_t *t) { app_stop(t->data); }

/* struct app's check_drained hook. */
static void app_check_drained(struct app *a)
{
    if (a->state != APP_DRAINING || a->stopping || !a->http)
        return;
    if (http_in_flight(a->http) == 0 && atomic_load(&sched_stats(a->sched)->queued) == 0 &&
        a->io_ops == 0 &&
        !uv_is_active((uv_handle_t *)&a->stop_timer)) {
        log_msg("drained: exiting");
        /* often called from inside an HTTP callback: stop from the loop */
        uv_timer_start(&a->stop_timer, on_stop_timer, 0, 0);
    }
}

static void model_ready(struct app *a)
{
    a->m = sched_model(a->sched);
    a->mc = model_config(a->m);
    a->codec = sched_codec(a->sched);
    a->fingerprint = model_fingerprint(a->m);
    char sysfp[17];
    hex64(XXH3_64bits_withSeed(RECUR_VERSION, strlen(RECUR_VERSION), a->fingerprint), sysfp);
    snprintf(a->system_fingerprint, sizeof a->system_fingerprint, "fp_%s", sysfp);
    a->snap_bytes = snapshot_size(state_serialized_bytes(a->m));
    a->lim.vocab_size = a->mc->vocab_size;
    struct sessions_opts so = {
        .max_sessions = (size_t)a->cfg->max_sessions,
        .max_per_owner = (size_t)a->cfg->max_sessions_per_key,
        .mem_budget = a->cfg->state_memory,
        .ttl_ms = (uint64_t)(a->cfg->session_ttl * 1000),
        .on_drop_spilled = a->cluster ? NULL : spill_drop_file, /* a store has no files */
        .can_make_room = a->cluster ? cluster_can_make_room : NULL,
        .ud = a,
    };
    if (sessions_create(a->m, &so, &a->sessions) != 0) {
        log_msg("out of memory creating the session table");
        a->state = APP_FAILED;
        a->exit_code = 1;
        app_stop(a);
        return;
    }
    spill_load_index(a);
    cluster_start(a);
    a->state = APP_READY;
    char fp[17], why[160] = "";
    hex64(a->fingerprint, fp);
    const struct sched_stats *ss = sched_stats(a->sched);
    if (a->cfg->threads == 0) { /* say where the automatic count came from */
        struct cpu_limits cl;
        cpu_limits_read("/sys/fs/cgroup", "/proc/self/cgroup", &cl);
        char q[32] = "none";
        if (cl.quota > 0)
            snprintf(q, sizeof q, "%.2f CPUs", cl.quota);
        snprintf(why, sizeof why,
                 " (auto: %d online CPUs, %d in the affinity mask, cgroup quota %s)",
                 cl.online, cl.affinity, q);
    }
    log_msg("model %s loaded: %s d_model=%d n_layer=%d vocab=%d state=%zu bytes "
            "weights=%s (%.1f MiB) fingerprint=%s tokenizer=%s threads=%d%s blas_threads=%d%s",
            a->model_name, model_arch_name(a->mc->arch), a->mc->d_model,
            a->mc->n_layer, a->mc->vocab_size, state_bytes(a->m),
            model_weights_name(model_weights(a->m)), model_weight_bytes(a->m) / 1048576.0, fp,
            codec_kind(a->codec),
            atomic_load(&ss->threads), why, atomic_load(&ss->blas_threads),
            blas_threads_from_env() ? " (from the environment)" : "");
}

static void on_async(uv_async_t *h)
{
    struct app *a = h->data;
    if (a->stopping)
        return;
    if (a->state == APP_LOADING || (a->state == APP_DRAINING && !a->m)) {
        int st = sched_status(a->sched);
        if (st == 1)
            model_ready(a);
        else if (st < 0) {
            char esc[600];
            const char *e = sched_error(a->sched);
            log_msg("cannot load the model: %s", log_escape(esc, sizeof esc, e, strlen(e)));
            a->state = APP_FAILED;
            a->exit_code = 1;
            app_stop(a);
            return;
        }
    }
    for (struct job *j = sched_take_events(a->sched), *nx; j; j = nx) {
        nx = j->loop.taken_next;
        routes_on_job_event(a, j);
        if (a->stopping)
            return;
    }
    if (a->http)
        http_run(a->http);
    app_check_drained(a);
}

/* sched_create's wake-up, on the compute thread: run on_async on the loop. */
static void wake_loop(void *ud) { uv_async_send(ud); }

static void on_ttl(uv_timer_t *t)
{
    struct app *a = t->data;
    if (a->cluster)
        cluster_expire(a); /* they leave this replica; the store keeps them */
    else if (a->sessions)
        a->metrics.sessions_expired += sessions_expire(a->sessions, uv_now(a->loop));
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct app *a = t->data;
    if (!a->drain_cancelled) {
        log_msg("drain timeout: cancelling %d in-flight request(s)", http_in_flight(a->http));
        http_log_in_flight(a->http);
        a->drain_cancelled = 1;
        routes_cancel_all(a);
        uv_timer_start(&a->drain_timer, on_drain_timeout, DRAIN_GRACE_MS, 0);
        return;
    }
    log_msg("drain grace over: closing the remaining connections");
    http_log_in_flight(a->http);
    app_stop(a);
}

/* Test builds (RECUR_FAULT_INJECTION): SIGUSR2 reads "N P" from the file
 * $RECURD_FAULT_FILE and makes the Nth allocation from now fail (every one
 * after it too if P is 1); N = 0 turns injection off and logs how many
 * allocations failed on purpose. Nothing here allocates through rc_*. */
#ifdef RECUR_FAULT_INJECTION
static void on_fault_signal(uv_signal_t *s, int signum)
{
    const char *path = getenv("RECURD_FAULT_FILE");
    char buf[64] = "";
    FILE *f = path ? fopen(path, "r") : NULL;
    long n = 0;
    int persistent = 0;
    if (f) {
        if (fgets(buf, sizeof buf, f))
            sscanf(buf, "%ld %d", &n, &persistent);
        fclose(f);
    }
    if (n > 0) {
        (void)rc_alloc_injected(); /* count from zero */
        rc_alloc_fail_after(n, persistent);
        log_msg("fault injection: allocation %ld from now fails%s", n,
                persistent ? ", and every one after it" : "");
    } else {
        long k = rc_alloc_injected();
        rc_alloc_fail_after(0, 0);
        log_msg("fault injection off: %ld allocations failed on purpose", k);
    }
    (void)s;
    (void)signum;
}
#endif

static void on_signal(uv_signal_t *s, int signum)
{
    struct app *a = s->data;
    if (a->state == APP_DRAINING || a->stopping) {
        /* "You insist": no more waiting */
        static const char msg[] = "recurd: second signal, exiting now\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(1);
    }
    log_msg("%s: draining (up to %.0f s), then exiting", signum == SIGTERM ? "SIGTERM" : "SIGINT",
            a->cfg->drain_timeout);
    a->state = APP_DRAINING;
    /* The listener stays open: /health answers 503 "draining" on new
     * connections too, so that a load balancer sees the drain (a refused
     * connection reads as a crash), and other requests get 503 with
     * Retry-After and Connection: close. It closes when the drain ends. */
    uv_timer_start(&a->drain_timer, on_drain_timeout, (uint64_t)(a->cfg->drain_timeout * 1000), 0);
    spill_check(a); /* with a store: idle sessions are handed off now */
    app_check_drained(a);
}

/* Process-wide settings made once, before anything allocates. */
static void process_setup(const struct options *cfg)
{
    proto_init();
    /* States are large and constant-size (megabytes for real models): give
     * each its own mapping so that a deleted session's memory goes back to
     * the system. glibc's threshold starts at 128 KiB but rises to the size
     * of any mapped block freed (up to 32 MiB); after the first session is
     * deleted, states come from the heap and freed ones stay resident —
     * measured with models/recur-sp: 965 MiB RSS with no session left after
     * 300 (928 MiB of states) were deleted, 60 MiB with this. Setting it
     * also turns the rising off. GLIBC_TUNABLES may still choose another. */
    const char *tun = getenv("GLIBC_TUNABLES");
    if (!(tun && strstr(tun, "mmap_threshold")) && !getenv("MALLOC_MMAP_THRESHOLD_"))
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
    uv_replace_allocator(rc_malloc, rc_realloc, rc_calloc, rc_free);
    signal(SIGPIPE, SIG_IGN);
    /* a file-size limit (ulimit -f, systemd LimitFSIZE) must fail the write
     * (EFBIG, answered like a full disk) rather than kill the server */
    signal(SIGXFSZ, SIG_IGN);
    log_set_requests(!cfg->quiet);
}

/* The model's name in /v1/models: the model directory's last component
 * (trailing slashes ignored). */
static void model_name_of(const char *dir, char *out, size_t n)
{
    out[0] = 0;
    const char *base = strrchr(dir, '/');
    while (base && base[1] == 0 && base > dir) { /* trailing slash */
        const char *p = base - 1;
        while (p > dir && *p != '/')
            p--;
        snprintf(out, n, "%.*s", (int)(base - p - (*p == '/')), p + (*p == '/'));
        base = NULL;
    }
    if (!out[0])
        snprintf(out, n, "%s", base ? base + 1 : dir);
}

/* Everything in a that needs no resource: options, names, keys, limits,
 * metrics, hooks, and the loop's handles (initialised, not started). */
static void app_init(struct app *a, struct options *cfg, uv_loop_t *loop)
{
    memset(a, 0, sizeof *a);
    a->cfg = cfg;
    a->loop = loop;
    a->started_unix = (int64_t)time(NULL);
    model_name_of(cfg->model_dir, a->model_name, sizeof a->model_name);
    for (int i = 0; i < cfg->n_api_keys; i++)
        a->key_owner[i] = XXH3_64bits(cfg->api_keys[i], strlen(cfg->api_keys[i])) | 1;
    a->lim = (struct proto_limits){
        .max_depth = (int)cfg->max_json_depth,
        .max_text_bytes = cfg->max_text_bytes,
        .max_input_tokens = (size_t)cfg->max_input_tokens,
        .max_gen_tokens = (int)cfg->max_gen_tokens,
        .max_top_logprobs = (int)cfg->max_top_logprobs,
        .max_stop = (int)cfg->max_stop,
        .max_stop_bytes = cfg->max_stop_bytes,
        .max_n = (int)cfg->max_n,
    };
    metrics_init(&a->metrics, route_names, n_route_names);
    a->check_drained = app_check_drained;
    a->session_ready = routes_session_ready;

    uv_async_init(loop, &a->async, on_async);
    a->async.data = a;
    uv_timer_init(loop, &a->ttl_timer);
    a->ttl_timer.data = a;
    uv_timer_init(loop, &a->drain_timer);
    a->drain_timer.data = a;
    uv_timer_init(loop, &a->stop_timer);
    a->stop_timer.data = a;
    uv_timer_init(loop, &a->spill_timer);
    a->spill_timer.data = a;
    uv_signal_init(loop, &a->sigterm);
    uv_signal_init(loop, &a->sigint);
    uv_signal_init(loop, &a->sigusr2);
    a->sigterm.data = a->sigint.data = a;
}

/* Open the stores, the listening socket and the compute thread (which
 * loads the model in the background). 0, or -1 after logging why; what
 * was opened before a failure is closed again. */
static int app_open(struct app *a, struct options *cfg)
{
    char err[512];
    if (cfg->snapshot_dir && store_open(cfg->snapshot_dir, &a->snapshots, err, sizeof err) != 0) {
        log_msg("--snapshot-dir: %s", err);
        return -1;
    }
    if (cfg->state_dir && store_open(cfg->state_dir, &a->states, err, sizeof err) != 0) {
        log_msg("--state-dir: %s", err);
        return -1;
    }
    if (cluster_open(a) != 0)
        return -1;
    struct http_app app = routes_app;
    app.ud = a;
    struct http_opts ho = {
        .host = cfg->host,
        .port = (int)cfg->port,
        .max_connections = (unsigned)cfg->max_connections,
        .max_connections_per_ip = (unsigned)cfg->max_connections_per_ip,
        .timeout_s = (unsigned)(cfg->connection_timeout + 0.5),
        .header_bytes = cfg->header_bytes,
        .max_body = cfg->max_body_bytes,
        .reuse_port = cfg->reuse_port,
        .cors_origins = cfg->cors_origins,
        .n_cors_origins = cfg->n_cors_origins,
        .min_body_rate = cfg->min_body_rate,
        .min_body_grace_s = cfg->min_body_rate_grace,
        .replica = cluster_replica(a),
    };
    if (http_create(a->loop, &ho, &app, &a->http, err, sizeof err) != 0) {
        log_msg("%s", err);
        return -1;
    }
    struct sched_opts so = {
        .model_dir = cfg->model_dir,
        .prefill_chunk = (int)cfg->prefill_chunk,
        .batch_tokens = (int)cfg->batch_tokens,
        .threads = (int)cfg->threads,
        .weights = cfg->weights,
        .stream_buffer = cfg->stream_buffer_bytes,
        .upload_low = cfg->upload_buffer_bytes / 2,
    };
    int rc = sched_create(&so, wake_loop, &a->async, &a->sched);
    if (rc != 0) {
        log_msg("cannot start the compute thread: %s", rc_strerror(rc));
        http_free(a->http);
        return -1;
    }
    return 0;
}

/* Start the signals and the TTL sweep, and run the loop until the server
 * has stopped (on_signal, app_check_drained). */
static void app_run(struct app *a)
{
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);
    uv_signal_start(&a->sigint, on_signal, SIGINT);
#ifdef RECUR_FAULT_INJECTION
    uv_signal_start(&a->sigusr2, on_fault_signal, SIGUSR2);
#endif
    double ttl = a->cfg->session_ttl / 4;
    uint64_t every = (uint64_t)((ttl < 1 ? 1 : ttl > 10 ? 10 : ttl) * 1000);
    uv_timer_start(&a->ttl_timer, on_ttl, every, every);
    log_msg("listening on http://%s:%d (model %s loading)", a->cfg->host, http_port(a->http),
            a->model_name);
    uv_run(a->loop, UV_RUN_DEFAULT);
}

/* Close the handles app_init made when the server never started. */
static void app_close_unstarted(struct app *a)
{
    uv_close((uv_handle_t *)&a->async, close_cb);
    uv_close((uv_handle_t *)&a->ttl_timer, close_cb);
    uv_close((uv_handle_t *)&a->spill_timer, close_cb);
    uv_close((uv_handle_t *)&a->drain_timer, close_cb);
    uv_close((uv_handle_t *)&a->stop_timer, close_cb);
    uv_close((uv_handle_t *)&a->sigterm, close_cb);
    uv_close((uv_handle_t *)&a->sigint, close_cb);
    uv_close((uv_handle_t *)&a->sigusr2, close_cb);
    uv_run(a->loop, UV_RUN_DEFAULT);
}

int cmd_serve(int argc, char **argv)
{
    struct options cfg;
    char err[512];
    int rc = options_load(&cfg, argc, argv, NULL, stdout, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc < 0) {
        fprintf(stderr, "recurd serve: %s\n", err);
        return 2;
    }
    process_setup(&cfg);
    struct app a;
    uv_loop_t loop;
    uv_loop_init(&loop);
    app_init(&a, &cfg, &loop);
    if (app_open(&a, &cfg) == 0) {
        app_run(&a);
    } else {
        a.exit_code = 1;
        app_close_unstarted(&a);
    }
    uv_loop_close(&loop);
    store_free(a.snapshots);
    store_free(a.states);
    cluster_free(&a);
    options_free(&cfg);
    return a.exit_code;
}
