#include "errors.h"

#include <stdarg.h>
#include <stdio.h>

const char *rc_strerror(int code)
{
    switch (code) {
    case RC_OK: return "ok";
    case RC_ENOMEM: return "out of memory";
    case RC_EIO: return "I/O error";
    case RC_EFORMAT: return "malformed data";
    case RC_EUNSUPPORTED: return "unsupported";
    case RC_EINVAL: return "invalid argument";
    case RC_ERANGE: return "over a limit";
    case RC_EMISMATCH: return "made for another model";
    case RC_ECHECKSUM: return "checksum mismatch";
    case RC_ECANCELED: return "canceled";
    case RC_ENOENT: return "not found";
    case RC_EEXIST: return "exists";
    case RC_ENOTFILE: return "not a regular file";
    case RC_EQUOTA: return "quota reached";
    case RC_ENOSPC: return "no space left";
    case RC_EBUSY: return "held by another owner";
    case RC_EFENCED: return "lease lost";
    case RC_ECONFLICT: return "position mismatch";
    case RC_EUNAVAILABLE: return "unavailable";
    }
    return "unknown error";
}

int rc_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}
