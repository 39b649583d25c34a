/*
 * special.c — the jobs that are not runs: each reads the request, writes
 * the result and finishes within one tick, between the forward passes.
 */
#include "compute_impl.h"

#include "errors.h"
#include "snapshot.h"
#include "state.h"

/* JOB_SAVE: the state -> snapshot bytes (res.snap_out). */
static int save_state(struct job *j)
{
    const struct job_request *rq = &j->req;
    char err[384];
    int rc = snapshot_encode(rq->state, rq->fingerprint, &j->res.snap_out, &j->res.snap_out_len,
                             err, sizeof err);
    if (rc)
        set_job_error(j, rc,
                      api_err_from_rc(rc) == API_OUT_OF_MEMORY ? API_OUT_OF_MEMORY : API_INTERNAL,
                      err);
    return rc;
}

/* JOB_LOAD: snapshot bytes -> the state, unchanged on error. Only the
 * envelope's fingerprint says "another model" (409); a payload that does
 * not fit this model behind a matching fingerprint is a damaged or forged
 * file (422). */
static int load_state(struct job *j)
{
    const struct job_request *rq = &j->req;
    char err[384];
    struct snapshot_info info;
    int rc = snapshot_check(rq->snap, rq->snap_len, rq->fingerprint, &info, err, sizeof err);
    if (rc) {
        set_job_error(j, rc, rc == RC_EMISMATCH ? API_SNAPSHOT_MISMATCH : API_INVALID_SNAPSHOT,
                      err);
        return rc;
    }
    rc = state_deserialize(rq->state, info.payload, (size_t)info.payload_len, err, sizeof err);
    if (rc)
        set_job_error(j, rc, rc == RC_ENOMEM ? API_OUT_OF_MEMORY : API_INVALID_SNAPSHOT, err);
    return rc;
}

/* JOB_COPY: state := src. */
static int copy_state(struct job *j)
{
    int rc = state_copy(j->req.state, j->req.src);
    if (rc)
        set_job_error(j, rc, API_INTERNAL, "copying the state failed");
    return rc;
}

/* JOB_TOKENIZE: the text -> the response body in res.out_text. The body
 * is written here, as bytes, not on the loop thread as a JSON tree: one
 * node per token took GBs and blocked /health for seconds on a few MB of
 * text. */
static int tokenize_text(struct sched *s, struct job *j)
{
    const struct job_request *rq = &j->req;
    struct job_result *res = &j->res;
    struct vocab_view v = {codec_piece_view, s->codec};
    struct tokenize_view tv = {.with_pieces = rq->want_details, .limit = rq->detail_limit};
    int rc = codec_encode(s->codec, rq->text ? rq->text : "", rq->text_len, &res->out_ids);
    if (!rc) {
        tv.ids = res->out_ids.v;
        tv.n = res->out_ids.n;
        rc = resp_tokenize(&res->out_text, &tv, &v);
    }
    idvec_free(&res->out_ids);
    if (rc) {
        outbuf_free(&res->out_text);
        set_job_error(j, rc, API_OUT_OF_MEMORY, "out of memory tokenising");
    }
    return rc;
}

void run_special_job(struct sched *s, struct job *j)
{
    int rc = 0;
    switch (j->req.kind) {
    case JOB_SAVE:
        rc = save_state(j);
        break;
    case JOB_LOAD:
        rc = load_state(j);
        break;
    case JOB_COPY:
        rc = copy_state(j);
        break;
    case JOB_TOKENIZE:
        rc = tokenize_text(s, j);
        break;
    }
    j->res.position = j->req.state ? j->req.state->pos : 0;
    finish_job(j, rc ? "error" : "done");
}
