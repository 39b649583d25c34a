#include "apierr.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "jsonin.h"
#include "u8.h"

static const struct {
    int status;
    const char *type;
} kinds[API_KIND_COUNT] = {
    [API_OK] = {200, "ok"},
    [API_INVALID_REQUEST] = {400, "invalid_request"},
    [API_INVALID_TOKEN] = {400, "invalid_token"},
    [API_INVALID_SNAPSHOT_NAME] = {400, "invalid_snapshot_name"},
    [API_AUTHENTICATION] = {401, "authentication_error"},
    [API_NOT_FOUND] = {404, "not_found"},
    [API_METHOD_NOT_ALLOWED] = {405, "method_not_allowed"},
    [API_SESSION_BUSY] = {409, "session_busy"},
    [API_SNAPSHOT_MISMATCH] = {409, "snapshot_model_mismatch"},
    [API_CONFLICT] = {409, "conflict"},
    [API_PAYLOAD_TOO_LARGE] = {413, "payload_too_large"},
    [API_UNSUPPORTED_MEDIA] = {415, "unsupported_media_type"},
    [API_INVALID_SNAPSHOT] = {422, "invalid_snapshot"},
    [API_TOO_MANY_SESSIONS] = {429, "too_many_sessions"},
    [API_INTERNAL] = {500, "internal_error"},
    [API_NOT_IMPLEMENTED] = {501, "not_enabled"},
    [API_UNAVAILABLE] = {503, "unavailable"},
    [API_OUT_OF_MEMORY] = {503, "out_of_memory"},
    [API_SNAPSHOT_WRITE] = {507, "snapshot_write_failed"},
    [API_REQUEST_TIMEOUT] = {408, "request_timeout"},
};

int api_err_status(int kind)
{
    if (kind < 0 || kind >= API_KIND_COUNT)
        return 500;
    return kinds[kind].status;
}

const char *api_err_type(int kind)
{
    if (kind < 0 || kind >= API_KIND_COUNT)
        return "internal_error";
    return kinds[kind].type;
}

int api_error_set(struct api_error *e, int kind, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->message, sizeof e->message, fmt, ap);
        va_end(ap);
        e->kind = kind;
    }
    return api_err_status(kind);
}

int api_err_from_rc(int rc)
{
    switch (rc) {
    case RC_OK: return API_OK;
    case RC_ENOMEM: return API_OUT_OF_MEMORY;
    case RC_EINVAL:
    case RC_ERANGE: return API_INVALID_REQUEST;
    case RC_EFORMAT:
    case RC_EUNSUPPORTED:
    case RC_ECHECKSUM: return API_INVALID_SNAPSHOT;
    case RC_EMISMATCH: return API_SNAPSHOT_MISMATCH;
    case RC_ECANCELED: return API_UNAVAILABLE;
    }
    return API_INTERNAL;
}

char *api_error_body(const struct api_error *e, size_t *len)
{
    /* The message may quote request bytes or be cut mid-character by the
     * fixed buffer: make it valid UTF-8 so the body is valid JSON. */
    char msg[sizeof e->message];
    size_t n = strnlen(e->message, sizeof e->message - 1);
    u8_sanitize(e->message, n, msg, sizeof msg);
    json_t *o = json_pack("{s:{s:s, s:s, s:i}}", "error", "type", api_err_type(e->kind),
                          "message", msg, "code", api_err_status(e->kind));
    if (!o)
        return NULL;
    char *s = pj_dump(o, len);
    json_decref(o);
    return s;
}
