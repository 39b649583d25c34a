#include "job.h"

#include <string.h>

#include "alloc.h"

/* ---- jobs ---------------------------------------------------------------- */

struct job *job_new(int kind)
{
    struct job *j = rc_calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->kind = kind;
    j->commit = 1;
    score_stats_init(&j->stats);
    return j;
}

static void lane_free(struct job *l);

static void run_free(struct job_run *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n_lanes; i++)
        lane_free(r->lanes[i]);
    rc_free(r->lanes);
    idvec_free(&r->pending);
    codec_enc_free(r->enc);
    outbuf_free(&r->taken);
    outbuf_free(&r->stage);
    rc_free(r);
}

/* A choice's lane (compute-private): a shallow copy of its job that
 * borrows the job's strings, stop list, input state and detail rows, with
 * its own run, generation state (gens[i]) and results. */
static void lane_free(struct job *l)
{
    if (!l)
        return;
    idvec_free(&l->out_ids);
    outbuf_free(&l->out_text);
    tok_details_free(&l->out_rows);
    run_free(l->run);
    rc_free(l);
}

void job_free(struct job *j)
{
    if (!j)
        return;
    rc_free(j->text);
    rc_free(j->ids);
    for (int i = 0; i < j->n_stop; i++)
        rc_free(j->stop[i]);
    rc_free(j->stop);
    rc_free(j->stop_len);
    rc_free(j->cmpl_id);
    rc_free(j->model_name);
    rc_free(j->echo);
    rc_free(j->snap);
    tok_details_free(&j->in_rows);
    idvec_free(&j->out_ids);
    outbuf_free(&j->out_text);
    tok_details_free(&j->out_rows);
    for (int i = 0; j->choices && i < j->n_choices; i++) {
        idvec_free(&j->choices[i].ids);
        outbuf_free(&j->choices[i].text);
        tok_details_free(&j->choices[i].rows);
    }
    rc_free(j->choices);
    rc_free(j->gens); /* the array; its states are the loop's (job_release) */
    rc_free(j->snap_out);
    outbuf_free(&j->inbox);
    outbuf_free(&j->outbox);
    run_free(j->run);
    rc_free(j);
}
