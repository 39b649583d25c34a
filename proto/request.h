/*
 * request.h — request bodies as checked C structs.
 *
 * Each parser takes the parsed JSON object (jsonin.h's pj_parse), the
 * limits in force and the model's vocabulary size, and fills a struct
 * whose strings and arrays are rc_malloc'ed copies (so the struct outlives
 * the JSON tree and can travel to the compute thread). Free with the
 * matching *_free (NULL-safe; also safe on a zeroed struct or after a
 * failed parse). Every parser returns 0, or a negative rc_status with e
 * naming the field (and index, for token arrays). Field policy: jsonin.h.
 */
#ifndef RECUR_REQUEST_H
#define RECUR_REQUEST_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "sampler.h"

struct proto_limits {
    int max_depth;            /* JSON nesting */
    size_t max_text_bytes;    /* one text field */
    size_t max_input_tokens;  /* ids in one JSON token array */
    int max_gen_tokens;       /* max_tokens ceiling */
    int max_top_logprobs;     /* alternatives per token */
    int max_stop;             /* stop sequences */
    size_t max_stop_bytes;    /* bytes of one stop sequence */
    int max_n;                /* choices of one completion (0 = 1) */
    int vocab_size;           /* ids are checked against [0, vocab_size) */
};

/* Text or tokens: exactly one is set. */
struct req_input {
    char *text;       /* UTF-8, NUL-terminated copy, or NULL */
    size_t text_len;
    int32_t *tokens;  /* or NULL */
    size_t n_tokens;
};

/* POST /v1/sessions (JSON form). Both NULL: a fresh session. */
struct req_session_create {
    char *fork_of;   /* session id to copy */
    char *snapshot;  /* server-side snapshot name to restore */
};

/* POST /v1/sessions/{id}/append and POST /v1/score. */
struct req_score {
    struct req_input in;
    int logprobs;     /* per-token details wanted */
    int top_logprobs; /* alternatives per token, 0..max_top_logprobs */
    int64_t expected_position; /* append: the session must be there (409); -1 = any */
};

struct req_stop {
    int n;
    char **s;        /* n non-empty strings */
    size_t *len;
};

/* POST /v1/sessions/{id}/generate. */
struct req_generate {
    int max_tokens;             /* 1..max_gen_tokens */
    struct sampler_params sp;
    int has_seed;
    uint64_t seed;              /* when has_seed */
    struct req_stop stop;
    int stream;                 /* SSE */
    int commit;                 /* keep the advanced state (default true) */
    int logprobs;               /* per-token logprob details wanted */
    int top_logprobs;
    int ignore_eos;             /* keep going past the end-of-text token */
    int64_t expected_position;  /* the session must be there (409); -1 = any */
};

/* POST /v1/completions (OpenAI). An empty prompt leaves prompt.text and
 * prompt.tokens both NULL. */
struct req_completion {
    struct req_input prompt;
    int max_tokens;
    struct sampler_params sp;
    int has_seed;
    uint64_t seed;
    struct req_stop stop;
    int stream;
    int include_usage;          /* stream_options.include_usage */
    int logprobs;               /* -1: none; else 0..max alternatives */
    int echo;
    int n;                      /* choices, 1..max_n (best_of must equal it) */
    char *model;                /* as sent (echoed back), or NULL */
};

struct req_tokenize {
    char *text;
    size_t text_len;
    int with_pieces;
};

struct req_detokenize {
    int32_t *tokens;
    size_t n_tokens;
};

struct req_save {
    char *name;
    int overwrite;
};

int req_session_create_parse(const json_t *o, const struct proto_limits *lim,
                             struct req_session_create *r, struct api_error *e);
void req_session_create_free(struct req_session_create *r);

int req_score_parse(const json_t *o, const struct proto_limits *lim, struct req_score *r,
                    struct api_error *e);
void req_score_free(struct req_score *r);

int req_generate_parse(const json_t *o, const struct proto_limits *lim, struct req_generate *r,
                       struct api_error *e);
void req_generate_free(struct req_generate *r);

int req_completion_parse(const json_t *o, const struct proto_limits *lim,
                         struct req_completion *r, struct api_error *e);
void req_completion_free(struct req_completion *r);

int req_tokenize_parse(const json_t *o, const struct proto_limits *lim, struct req_tokenize *r,
                       struct api_error *e);
void req_tokenize_free(struct req_tokenize *r);

int req_detokenize_parse(const json_t *o, const struct proto_limits *lim,
                         struct req_detokenize *r, struct api_error *e);
void req_detokenize_free(struct req_detokenize *r);

int req_save_parse(const json_t *o, const struct proto_limits *lim, struct req_save *r,
                   struct api_error *e);
void req_save_free(struct req_save *r);

/* Query-string form of the score options, for a text/plain append:
 * "logprobs" ("true"/"false"/"1"/"0"), "top_logprobs" (integer) and
 * "expected_position" (integer >= 0). A NULL
 * value means absent. */
int req_score_query(const char *logprobs, const char *top_logprobs, const char *expected,
                    const struct proto_limits *lim, struct req_score *r, struct api_error *e);

/* A server-side snapshot name: 1..128 bytes of [A-Za-z0-9._-], not
 * starting with '.' or '-'. Returns 0 or RC_EINVAL with e set to
 * invalid_snapshot_name. */
int req_snapshot_name_check(const char *name, size_t len, struct api_error *e);

#endif
