/*
 * apierr.h — the error a request ends with, and its JSON body.
 *
 * Every failed request answers with an HTTP status and OpenAI's error object
 *   {"error": {"message": "<detail>", "type": "<category>",
 *              "param": "<field>" | null, "code": "<name>"}}
 * `code` is recurd's stable machine-readable name for the error, one per
 * kind below ("invalid_request", "session_busy", "invalid_snapshot", ...);
 * `type` is OpenAI's coarser category for it ("invalid_request_error",
 * "authentication_error", "not_found_error", "rate_limit_error",
 * "not_supported_error", "server_error"), so OpenAI SDKs and dashboards read
 * it as they read OpenAI's own; `param` names the request field at fault
 * when there is one; `message` is for people and names the offending field,
 * index or limit. docs/server.md lists every code.
 *
 * struct api_error is a plain value (no heap): proto/ and server/ functions
 * that can reject a request take a `struct api_error *` and fill it with
 * api_error_set() when they fail.
 */
#ifndef RECUR_APIERR_H
#define RECUR_APIERR_H

#include <stddef.h>
#include <stdint.h>

enum api_err_kind {
    API_OK = 0,
    API_INVALID_REQUEST,    /* 400 malformed JSON, wrong type, out of range, unknown field */
    API_INVALID_TOKEN,      /* 400 a token id outside the vocabulary */
    API_INVALID_SNAPSHOT_NAME, /* 400 a server-side snapshot name that is not allowed */
    API_AUTHENTICATION,     /* 401 missing or wrong API key */
    API_NOT_FOUND,          /* 404 no such route, session or snapshot (or not yours) */
    API_METHOD_NOT_ALLOWED, /* 405 route exists, method does not */
    API_SESSION_BUSY,       /* 409 the session is running another request */
    API_SNAPSHOT_MISMATCH,  /* 409 snapshot made by another model */
    API_CONFLICT,           /* 409 named snapshot exists */
    API_PAYLOAD_TOO_LARGE,  /* 413 body over its cap */
    API_UNSUPPORTED_MEDIA,  /* 415 wrong Content-Type */
    API_INVALID_SNAPSHOT,   /* 422 truncated / corrupt / unsupported snapshot */
    API_TOO_MANY_SESSIONS,  /* 429 per-key session cap */
    API_SNAPSHOT_QUOTA,     /* 429 per-key named-snapshot cap */
    API_INTERNAL,           /* 500 a bug or an unexpected engine error */
    API_NOT_IMPLEMENTED,    /* 501 feature not configured (e.g. no --snapshot-dir) */
    API_UNAVAILABLE,        /* 503 loading, draining, server-wide capacity */
    API_OUT_OF_MEMORY,      /* 503 an allocation failed or the memory budget is spent */
    API_SNAPSHOT_WRITE,     /* 507 writing a snapshot file failed */
    API_REQUEST_TIMEOUT,    /* 408 a request body that stopped or came too slowly */
    API_POSITION_MISMATCH,  /* 409 the session is not at the request's expected_position */
    API_KIND_COUNT
};

struct api_error {
    int kind;          /* enum api_err_kind; API_OK when no error */
    char message[384]; /* NUL-terminated, may be truncated */
    char param[72];    /* the field at fault, NUL-terminated; "" = none (null) */
    int64_t position;  /* the session's position, in the object when has_position */
    int has_position;  /* (position_mismatch: where the session is) */
};

/* HTTP status, code ("invalid_request", ...) and OpenAI type
 * ("invalid_request_error", ...) of a kind. */
int api_err_status(int kind);
const char *api_err_code(int kind);
const char *api_err_type(int kind);

/* Fill e (if non-NULL; param cleared) and return the kind's status, so
 * handlers can `return api_error_set(e, API_INVALID_REQUEST, "...", k);`. */
int api_error_set(struct api_error *e, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Add the session's current position to the error object ("position"). */
void api_error_position(struct api_error *e, int64_t position);

/* Name the request field at fault (after api_error_set): "max_tokens",
 * "stop", "tokens[3]" ... Cut to fit; made valid UTF-8 in the body. */
void api_error_param(struct api_error *e, const char *param);

/* Map a librecur rc_status to the closest kind (RC_ENOMEM -> out of
 * memory, RC_EINVAL -> invalid request, RC_ENOENT -> not found, RC_EEXIST
 * -> conflict, ...). The one place an rc becomes an HTTP status. */
int api_err_from_rc(int rc);
/* The same for a failed write of a file the client asked for (a named
 * snapshot): an I/O error there is snapshot_write_failed (507), not a
 * server bug (500). */
int api_err_from_write_rc(int rc);

/* The error object of the body for an allocation failure, as a literal, for
 * answers made from static memory when not even that can be allocated. */
#define API_OOM_ERROR_JSON                                                               \
    "{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null," \
    "\"code\":\"out_of_memory\"}"

/* The error object {"message","type","param","code"} for e (a new
 * reference), for bodies and for a stream's error event. NULL only when out
 * of memory. */
struct json_t;
struct json_t *api_error_json(const struct api_error *e);

/* The JSON body for e, NUL-terminated, rc_malloc'ed (rc_free it); *len
 * gets its length. NULL only when out of memory. */
char *api_error_body(const struct api_error *e, size_t *len);

#endif
