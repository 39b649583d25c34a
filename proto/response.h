/*
 * response.h — response bodies and stream events, from plain C values.
 *
 * The server fills the small structs below (per-token details as flat
 * arrays, generation results, session and model facts) and these
 * functions turn them into JSON. Token text comes from a callback (the
 * codec's id -> bytes): a token's bytes may be part of a UTF-8 character,
 * so "text" is always valid UTF-8 (U+FFFD for the broken part) and the
 * exact bytes are added as "bytes": [..] when they are not valid UTF-8 on
 * their own. Non-finite numbers are written as null (JSON has no NaN).
 *
 * Builders return a new json_t (json_decref it) or NULL when out of
 * memory. sse_* append one complete "data: ...\n\n" event to a struct
 * outbuf and return 0 or RC_ENOMEM.
 */
#ifndef RECUR_RESPONSE_H
#define RECUR_RESPONSE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "outbuf.h"
#include "score.h"

/* Bytes as a JSON string: valid UTF-8 kept, the rest U+FFFD. */
json_t *resp_text(const char *s, size_t n);

/* {"id", "text", ["bytes"], "logprob", "top_logprobs": [...]} for row i. */
json_t *resp_token(const struct tok_details *d, size_t i, const struct vocab_view *v);

/* Scoring result (append and /v1/score):
 * {"position","n_tokens","n_scored","nll","ppl","nll_sum","buckets":[..],
 *  "tokens":[..] (when d), "tokens_truncated"}. */
struct score_view {
    int64_t position;            /* stream position after the request */
    int64_t n_tokens;            /* tokens read by the request */
    const struct score_stats *st;
    const struct tok_details *d; /* NULL: details not requested */
    int truncated;               /* more tokens than the detail limit */
};
json_t *resp_score(const struct score_view *s, const struct vocab_view *v);

/* Generation result (POST .../generate):
 * {"text","tokens":[ids],"finish_reason","position","n_tokens","seed",
 *  "committed", ["logprobs":[..], "logprobs_truncated"]}. */
struct gen_view {
    const char *text;            /* bytes (made valid UTF-8 here) */
    size_t text_len;
    const int32_t *ids;
    size_t n_ids;
    const char *finish_reason;   /* "length", "stop", "eos", "cancelled" */
    int64_t position;
    uint64_t seed;
    int committed;
    const struct tok_details *d; /* NULL: not requested */
    int truncated;               /* d stopped at the detail limit */
};
json_t *resp_generate(const struct gen_view *g, const struct vocab_view *v);

/* OpenAI text_completion objects. */
struct completion_choice {
    const char *text;            /* bytes; echo already prepended */
    size_t text_len;
    const char *finish_reason;   /* NULL in stream chunks before the last */
    /* logprobs: NULL = "logprobs": null */
    const struct tok_details *d;
    size_t text_offset0;         /* offset of the first detail token's text */
    int truncated;               /* d stopped at the detail limit: adds
                                  * "logprobs_truncated": true */
};
struct completion_view {
    const char *id;              /* "cmpl-..." */
    int64_t created;             /* unix seconds */
    const char *model;
    const char *system_fingerprint; /* or NULL */
    const struct completion_choice *ch; /* n_ch choices: "index" index0 + i */
    size_t n_ch;
    int index0;
    int64_t prompt_tokens, completion_tokens;
    int with_usage;
};
json_t *resp_completion(const struct completion_view *c, const struct vocab_view *v);

/* Session facts. */
struct session_view {
    const char *id;
    int64_t position;
    size_t state_bytes;
    double created, last_used;   /* unix seconds */
    double expires_in;           /* seconds */
    int busy, spilled;
};
json_t *resp_session(const struct session_view *s);

/* Model facts for /v1/models. */
struct model_view {
    const char *id;
    const char *arch;            /* "mamba2", "mamba" */
    int d_model, n_layer, vocab_size, d_state, d_inner;
    size_t state_bytes, snapshot_bytes;
    uint64_t fingerprint;
    size_t n_params;
    const char *tokenizer;       /* "bpe", "byte" */
    int64_t created;
    int training_context;        /* 0: not known, the field is left out */
    const char *weights;         /* "fp32", "bf16", "int8": the format in memory */
    size_t weight_bytes;         /* bytes of weights in memory */
};
/* {"object":"list","data":[model]} */
json_t *resp_models(const struct model_view *m);
/* The model object alone (GET /v1/models/{id}). */
json_t *resp_model(const struct model_view *m);

/* GET /health: {"status": status} ("ok", "loading", "draining", "failed"). */
json_t *resp_health(const char *status);

/* POST /v1/detokenize: {"text"} with the bytes made valid UTF-8, and
 * "valid_utf8": false when they were not. */
json_t *resp_detokenize(const char *bytes, size_t n);

/* {"object":"list","data": items}; consumes items (NULL: returns NULL). */
json_t *resp_list(json_t *items);

/* DELETE /v1/sessions/{id}: {"id","deleted":true}. */
json_t *resp_session_deleted(const char *id);

/* One named snapshot in GET /v1/snapshots: {"name","bytes","created"}. */
json_t *resp_snapshot_entry(const char *name, int64_t bytes, int64_t created);

/* Bodies that must not fail for want of memory: written into the
 * caller's buffer buf[cap] (NUL-terminated), no allocation. Each returns
 * 0, or RC_ERANGE when the body does not fit, or RC_EINVAL when a name is
 * not a snapshot name ([A-Za-z0-9._-], nothing to escape).
 *   resp_fixed_snapshot_saved    {"name","bytes","position"} (201 of a save)
 *   resp_fixed_snapshot_deleted  {"name","deleted":true}
 *   resp_fixed_appended          {"position","n_tokens","note"}: an append
 *       read its text into the session, but its full answer could not be
 *       made */
int resp_fixed_snapshot_saved(char *buf, size_t cap, const char *name, size_t bytes,
                              int64_t position);
int resp_fixed_snapshot_deleted(char *buf, size_t cap, const char *name);
int resp_fixed_appended(char *buf, size_t cap, int64_t position, int64_t n_tokens);

/* SSE framing: "data: <compact JSON>\n\n" and "data: [DONE]\n\n". */
int sse_put_json(struct outbuf *b, const json_t *o);
int sse_put_done(struct outbuf *b);

/* A stream's last event when it failed after its 200:
 * {"type":"error","error":{api_error_json(e)}}. 0 or RC_ENOMEM. */
struct api_error;
int sse_put_error(struct outbuf *b, const struct api_error *e);
/* The same event for an allocation failure, from static memory. */
#define SSE_OOM_ERROR_EVENT "data: {\"type\":\"error\",\"error\":" API_OOM_ERROR_JSON "}\n\n"

/* The hex form used for fingerprints and ids. */
void hex64(uint64_t x, char out[17]);

#endif
