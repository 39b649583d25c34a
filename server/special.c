#include "compute_impl.h"

#include "errors.h"
#include "snapshot.h"
#include "state.h"

/* ---- special jobs ------------------------------------------------------------ */

void run_special_job(struct sched *s, struct job *j)
{
    char err[384];
    int rc = 0;
    switch (j->kind) {
    case JOB_SAVE:
        rc = snapshot_encode(j->state, j->fingerprint, &j->snap_out, &j->snap_out_len, err,
                             sizeof err);
        if (rc)
            set_job_error(j, rc, api_err_from_rc(rc) == API_OUT_OF_MEMORY ? API_OUT_OF_MEMORY : API_INTERNAL,
                 err);
        break;
    case JOB_LOAD: {
        /* Only the envelope's fingerprint says "another model" (409); a
         * payload that does not fit this model behind a matching
         * fingerprint is a damaged or forged file (422). */
        struct snapshot_info info;
        rc = snapshot_check(j->snap, j->snap_len, j->fingerprint, &info, err, sizeof err);
        if (rc) {
            set_job_error(j, rc, rc == RC_EMISMATCH ? API_SNAPSHOT_MISMATCH : API_INVALID_SNAPSHOT, err);
            break;
        }
        rc = state_deserialize(j->state, info.payload, (size_t)info.payload_len, err, sizeof err);
        if (rc)
            set_job_error(j, rc, rc == RC_ENOMEM ? API_OUT_OF_MEMORY : API_INVALID_SNAPSHOT, err);
        break;
    }
    case JOB_COPY:
        rc = state_copy(j->state, j->src);
        if (rc)
            set_job_error(j, rc, API_INTERNAL, "copying the state failed");
        break;
    case JOB_TOKENIZE: {
        /* The body is written here, as bytes, not on the loop thread as a
         * JSON tree: one node per token took GBs and blocked /health for
         * seconds on a few MB of text. out_text is the whole answer. */
        struct vocab_view v = {codec_piece_view, s->codec};
        struct tokenize_view tv = {.with_pieces = j->want_details, .limit = j->detail_limit};
        rc = codec_encode(s->codec, j->text ? j->text : "", j->text_len, &j->out_ids);
        if (!rc) {
            tv.ids = j->out_ids.v;
            tv.n = j->out_ids.n;
            rc = resp_tokenize(&j->out_text, &tv, &v);
        }
        idvec_free(&j->out_ids);
        if (rc) {
            outbuf_free(&j->out_text);
            set_job_error(j, rc, API_OUT_OF_MEMORY, "out of memory tokenising");
        }
        break;
    }
    }
    j->position = j->state ? j->state->pos : 0;
    finish_job(j, rc ? "error" : "done");
}
