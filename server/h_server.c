/*
 * h_server.c — what the server is and serves: health, metrics, models.
 */
#include <string.h>

#include "handlers.h"
#include "codec.h"
#include "log.h"
#include "model.h"
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

void h_metrics(struct rq *q)
{
    struct app *a = q->a;
    struct metrics_gauges g;
    char fp[17];
    metrics_gather(a, &g, fp);
    struct outbuf o = {0};
    if (metrics_render(&a->metrics, &g, &o) != 0) {
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
        .arch = c->arch == MODEL_MAMBA2 ? "mamba2" : "mamba",
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
