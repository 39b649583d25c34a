#include "apierr.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "jsonout.h"
#include "utf8.h"

/* OpenAI's categories (the error object's "type"). */
#define T_REQUEST "invalid_request_error"
#define T_AUTH "authentication_error"
#define T_NOT_FOUND "not_found_error"
#define T_RATE "rate_limit_error"
#define T_NOT_SUPPORTED "not_supported_error"
#define T_SERVER "server_error"

static const struct {
    int status;
    const char *code; /* recurd's name: the error object's "code" */
    const char *type; /* OpenAI's category: its "type" */
} kinds[API_KIND_COUNT] = {
    [API_OK] = {200, "ok", "ok"},
    [API_INVALID_REQUEST] = {400, "invalid_request", T_REQUEST},
    [API_INVALID_TOKEN] = {400, "invalid_token", T_REQUEST},
    [API_INVALID_SNAPSHOT_NAME] = {400, "invalid_snapshot_name", T_REQUEST},
    [API_AUTHENTICATION] = {401, "invalid_api_key", T_AUTH},
    [API_NOT_FOUND] = {404, "not_found", T_NOT_FOUND},
    [API_METHOD_NOT_ALLOWED] = {405, "method_not_allowed", T_REQUEST},
    [API_SESSION_BUSY] = {409, "session_busy", T_REQUEST},
    [API_SNAPSHOT_MISMATCH] = {409, "snapshot_model_mismatch", T_REQUEST},
    [API_CONFLICT] = {409, "conflict", T_REQUEST},
    [API_PAYLOAD_TOO_LARGE] = {413, "payload_too_large", T_REQUEST},
    [API_UNSUPPORTED_MEDIA] = {415, "unsupported_media_type", T_REQUEST},
    [API_INVALID_SNAPSHOT] = {422, "invalid_snapshot", T_REQUEST},
    [API_TOO_MANY_SESSIONS] = {429, "too_many_sessions", T_RATE},
    [API_SNAPSHOT_QUOTA] = {429, "snapshot_quota_exceeded", T_RATE},
    [API_INTERNAL] = {500, "internal_error", T_SERVER},
    [API_NOT_IMPLEMENTED] = {501, "not_enabled", T_NOT_SUPPORTED},
    [API_UNAVAILABLE] = {503, "unavailable", T_SERVER},
    [API_OUT_OF_MEMORY] = {503, "out_of_memory", T_SERVER},
    [API_SNAPSHOT_WRITE] = {507, "snapshot_write_failed", T_SERVER},
    [API_REQUEST_TIMEOUT] = {408, "request_timeout", T_REQUEST},
    [API_POSITION_MISMATCH] = {409, "position_mismatch", T_REQUEST},
};

int api_err_status(int kind)
{
    if (kind < 0 || kind >= API_KIND_COUNT)
        return 500;
    return kinds[kind].status;
}

const char *api_err_code(int kind)
{
    if (kind < 0 || kind >= API_KIND_COUNT)
        return "internal_error";
    return kinds[kind].code;
}

const char *api_err_type(int kind)
{
    if (kind < 0 || kind >= API_KIND_COUNT)
        return T_SERVER;
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
        e->param[0] = 0;
        e->has_position = 0;
    }
    return api_err_status(kind);
}

void api_error_position(struct api_error *e, int64_t position)
{
    if (e) {
        e->position = position;
        e->has_position = 1;
    }
}

void api_error_param(struct api_error *e, const char *param)
{
    if (e && param)
        snprintf(e->param, sizeof e->param, "%s", param);
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
    case RC_ENOENT: return API_NOT_FOUND;
    case RC_EEXIST:
    case RC_ENOTFILE: return API_CONFLICT;
    case RC_EQUOTA: return API_SNAPSHOT_QUOTA;
    case RC_ENOSPC: return API_SNAPSHOT_WRITE;
    case RC_EBUSY:
    case RC_EFENCED:
    case RC_EUNAVAILABLE: return API_UNAVAILABLE;
    case RC_ECONFLICT: return API_POSITION_MISMATCH;
    }
    return API_INTERNAL;
}

int api_err_from_write_rc(int rc)
{
    return rc == RC_EIO ? API_SNAPSHOT_WRITE : api_err_from_rc(rc);
}

json_t *api_error_json(const struct api_error *e)
{
    /* The message may quote request bytes or be cut mid-character by the
     * fixed buffer: make it valid UTF-8 so the body is valid JSON. */
    char msg[sizeof e->message], param[sizeof e->param];
    size_t n = strnlen(e->message, sizeof e->message - 1);
    utf8_repair_str((const uint8_t *)e->message, n, msg, sizeof msg);
    size_t pn = strnlen(e->param, sizeof e->param - 1);
    if (pn)
        utf8_repair_str((const uint8_t *)e->param, pn, param, sizeof param);
    json_t *o = json_pack("{s:s, s:s, s:o, s:s}", "message", msg, "type", api_err_type(e->kind),
                          "param", pn ? json_string(param) : json_null(), "code",
                          api_err_code(e->kind));
    if (o && e->has_position && json_object_set_new(o, "position", json_integer(e->position))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

char *api_error_body(const struct api_error *e, size_t *len)
{
    json_t *o = json_pack("{s:o}", "error", api_error_json(e));
    if (!o)
        return NULL;
    char *s = pj_dump(o, len);
    json_decref(o);
    return s;
}
