/*
 * h_server.c — what the server is and serves: health, metrics, models.
 */
#include <string.h>

#include "cluster.h"
#include "handlers.h"
#include "alloc.h"
#include "codec.h"
#include "log.h"
#include "model.h"
#include "os.h"
#include "response.h"
#include "state.h"

void h_health(struct rq *q)
{
    struct app *a = q->a;
    const char *st = a->state == APP_READY ? "ok" : a->state == APP_LOADING ? "loading"
                                                   : a->state == APP_DRAINING ? "draining"
                                                                              : "failed";
    respond_json(q->h, a->state == APP_READY ? 200 : 503, resp_health(st));
}

/* The gauges /metrics reports, read from the server instance now. */
static void gather_gauges(struct app *a, struct metrics_gauges *g, char fp[17])
{
    const struct sched_stats *ss = sched_stats(a->sched);
    memset(g, 0, sizeof *g);
    g->ready = a->state == APP_READY || a->state == APP_DRAINING;
    g->draining = a->state == APP_DRAINING;
    if (a->sessions) {
        g->sessions = (int64_t)sessions_count(a->sessions);
        g->state_bytes = (int64_t)sessions_state_bytes(a->sessions);
        for (struct session *s = sessions_first(a->sessions); s; s = sessions_next(s))
            g->sessions_spilled += s->spilled != 0;
    }
    g->state_budget = (int64_t)a->cfg->state_memory;
    g->queue_depth = atomic_load(&ss->queued);
    g->in_flight = http_in_flight(a->http);
    http_timeouts(a->http, &g->header_timeouts, &g->request_timeouts);
    g->tokens_in = atomic_load(&ss->tokens_in);
    g->tokens_out = atomic_load(&ss->tokens_out);
    g->ticks = atomic_load(&ss->ticks);
    g->batch_rows = atomic_load(&ss->batch_rows);
    g->busy_seconds = (double)atomic_load(&ss->busy_us) * 1e-6;
    g->prefill_seconds = (double)atomic_load(&ss->prefill_us) * 1e-6;
    g->decode_seconds = (double)atomic_load(&ss->decode_us) * 1e-6;
    g->ttft = &ss->ttft;
    g->itl = &ss->itl;
    g->threads = atomic_load(&ss->threads);
    g->blas_threads = atomic_load(&ss->blas_threads);
    g->alloc_live_bytes = (int64_t)rc_alloc_live_bytes();
    size_t rss = os_rss_bytes();
    g->rss_bytes = rss ? (int64_t)rss : -1;
    g->cpu_seconds = os_cpu_seconds();
    g->start_time = (double)a->started_unix;
    g->model = a->model_name;
    fp[0] = '\0';
    if (a->m)
        hex64(a->fingerprint, fp);
    g->fingerprint = fp;
}

void h_metrics(struct rq *q)
{
    struct app *a = q->a;
    struct metrics_gauges g;
    char fp[17];
    gather_gauges(a, &g, fp);
    struct outbuf o = {0};
    if (metrics_render(&a->metrics, &g, &o) != 0 || cluster_metrics_render(a, &o) != 0) {
        outbuf_free(&o);
        respond_oom(q->h, NULL);
        return;
    }
    http_respond(q->h, 200, "text/plain; version=0.0.4", o.p, o.n);
}

static void model_facts(struct app *a, struct model_view *v)
{
    const struct model_config *c = a->mc;
    *v = (struct model_view){
        .id = a->model_name,
        .arch = model_arch_name(c->arch),
        .d_model = c->d_model,
        .n_layer = c->n_layer,
        .vocab_size = c->vocab_size,
        .d_state = c->d_state,
        .d_inner = c->d_inner,
        .state_bytes = state_bytes(a->m),
        .snapshot_bytes = a->snap_bytes,
        .fingerprint = a->fingerprint,
        .n_params = model_n_params(a->m),
        .tokenizer = codec_kind(a->codec),
        .created = a->started_unix,
        .training_context = c->training_context,
        .weights = model_weights_name(model_weights(a->m)),
        .weight_bytes = model_weight_bytes(a->m),
    };
}

void h_models(struct rq *q)
{
    struct model_view v;
    model_facts(q->a, &v);
    respond_json(q->h, 200, resp_models(&v));
}

/* GET /v1/models/{id} (OpenAI's models.retrieve): the one model we serve,
 * under the id /v1/models lists; any other id is a 404. */
void h_model(struct rq *q)
{
    struct model_view v;
    model_facts(q->a, &v);
    if (!q->name[0] || strcmp(q->name, v.id) != 0) {
        char esc[96];
        respond_err(q->h, API_NOT_FOUND, "no model '%s' (this server serves '%.100s')",
                    log_escape(esc, sizeof esc, q->name, strlen(q->name)), v.id);
        return;
    }
    respond_json(q->h, 200, resp_model(&v));
}
