/*
 * jsonin.h — strict JSON at the edge: parse a request body into a jansson
 * tree with limits, read typed fields with exact error messages, and dump
 * a tree into an rc_malloc'ed buffer.
 *
 * Policy (docs/server.md):
 *   - the body must be one JSON object; trailing bytes, duplicate keys,
 *     invalid UTF-8, "\u0000" inside strings, lone surrogates, numbers that
 *     do not fit (1e999, 2^63) and nesting deeper than max_depth are 400s
 *     whose message names the offset or the field;
 *   - unknown fields are rejected (400 naming the field), so a typo never
 *     silently means "default";
 *   - an optional field given as null means "use the default"; a required
 *     field given as null is an error;
 *   - integers must be JSON integers (10.0 is not an integer); numbers may
 *     be integers or reals.
 * Every function returns 0, or a negative rc_status (RC_EINVAL, RC_ENOMEM)
 * with e filled in.
 */
#ifndef RECUR_JSONIN_H
#define RECUR_JSONIN_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "apierr.h"

/* Route jansson's allocations through core/alloc.h (counted, capped,
 * fault-injectable). Call once at start-up before any other thread runs. */
void proto_init(void);

/* Parse buf[0..len) (need not be NUL-terminated). The root must be an
 * object. *out is a new reference (json_decref it). */
int pj_parse(const char *buf, size_t len, int max_depth, json_t **out, struct api_error *e);

/* Reject any key of o that is not in allowed (NULL-terminated list). */
int pj_check_keys(const json_t *o, const char *const *allowed, struct api_error *e);

/* Field readers. A missing or null field gives def (or, with required,
 * an error). Ranges are inclusive. */
int pj_int(const json_t *o, const char *key, int required, int64_t lo, int64_t hi, int64_t def,
           int64_t *out, struct api_error *e);
int pj_num(const json_t *o, const char *key, int required, double lo, double hi, double def,
           double *out, struct api_error *e);
int pj_bool(const json_t *o, const char *key, int def, int *out, struct api_error *e);
/* *s points into o (valid while o lives); NULL when absent and optional. */
int pj_str(const json_t *o, const char *key, int required, size_t max_len, const char **s,
           size_t *len, struct api_error *e);

/* A JSON array of token ids: each a JSON integer in [0, vocab); 1..max_n
 * of them. `field` names the array in messages ("tokens[3] ..."). *ids is
 * rc_malloc'ed. No id is used before all are checked. */
int pj_token_array(const json_t *arr, const char *field, int vocab, size_t max_n, int32_t **ids,
                   size_t *n, struct api_error *e);

#endif
