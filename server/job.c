/*
 * job.c — a job's memory: job_new, job_free, and the compute-private run
 * and lanes that job_free releases with it (job.h).
 */
#include "job.h"

#include <string.h>

#include "alloc.h"

/* ---- jobs ---------------------------------------------------------------- */

struct job *job_new(int kind)
{
    struct job *j = rc_calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->req.kind = kind;
    j->req.commit = 1;
    score_stats_init(&j->res.stats);
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
    idvec_free(&l->res.out_ids);
    outbuf_free(&l->res.out_text);
    tok_details_free(&l->res.out_rows);
    run_free(l->run);
    rc_free(l);
}

void job_free(struct job *j)
{
    if (!j)
        return;
    rc_free(j->req.text);
    rc_free(j->req.ids);
    for (int i = 0; i < j->req.n_stop; i++)
        rc_free(j->req.stop[i]);
    rc_free(j->req.stop);
    rc_free(j->req.stop_len);
    /* the stream's strings are the request's (const: proto/ only reads them) */
    rc_free((void *)j->req.stream.cmpl_id);
    rc_free((void *)j->req.stream.model);
    rc_free((void *)j->req.stream.echo);
    rc_free(j->req.snap);
    tok_details_free(&j->res.in_rows);
    idvec_free(&j->res.out_ids);
    outbuf_free(&j->res.out_text);
    tok_details_free(&j->res.out_rows);
    for (int i = 0; j->res.choices && i < j->req.n_choices; i++) {
        idvec_free(&j->res.choices[i].ids);
        outbuf_free(&j->res.choices[i].text);
        tok_details_free(&j->res.choices[i].rows);
    }
    rc_free(j->res.choices);
    rc_free(j->req.gens); /* the array; its states are the loop's (job_release) */
    rc_free(j->res.snap_out);
    idvec_free(&j->res.fed);
    outbuf_free(&j->res.tail);
    outbuf_free(&j->ch.inbox);
    outbuf_free(&j->ch.outbox);
    run_free(j->run);
    rc_free(j);
}
