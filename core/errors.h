/*
 * errors.h — the one error vocabulary of librecur.
 *
 * Every fallible function returns 0 (RC_OK) or one of the negative codes
 * below. Human detail (which file, which tensor, which field) goes into a
 * caller-provided buffer `char *err, size_t errlen` (may be NULL/0). A
 * function that returns an error leaves nothing for the caller to undo.
 */
#ifndef RECUR_ERRORS_H
#define RECUR_ERRORS_H

#include <stddef.h>

enum rc_status {
    RC_OK = 0,
    RC_ENOMEM = -1,       /* allocation failed or a memory cap was hit */
    RC_EIO = -2,          /* open/read/mmap/write failed */
    RC_EFORMAT = -3,      /* a file or buffer is malformed */
    RC_EUNSUPPORTED = -4, /* well-formed but not something we run */
    RC_EINVAL = -5,       /* a bad argument (token id out of range, ...) */
    RC_ERANGE = -6,       /* a size or count over a limit */
    RC_EMISMATCH = -7,    /* data made for another model */
    RC_ECHECKSUM = -8,    /* integrity check failed */
    RC_ECANCELED = -9,    /* work stopped on request */
    RC_ENOENT = -10,      /* no such thing (file, snapshot) */
    RC_EEXIST = -11,      /* the name is taken and may not be replaced */
    RC_ENOTFILE = -12,    /* the name is taken by something not a regular file */
    RC_EQUOTA = -13,      /* a per-owner count limit is reached */
    RC_ENOSPC = -14,      /* no room: a disk full, or a reserve that must stay free */
    RC_EBUSY = -15,       /* held by another owner (a session leased by another replica) */
    RC_EFENCED = -16,     /* this holder's lease was taken over: its write was refused */
    RC_ECONFLICT = -17,   /* not at the expected position */
    RC_EUNAVAILABLE = -18,/* a service it needs did not answer (the store) */
};

/* Static text for a code; never NULL. */
const char *rc_strerror(int code);

/* snprintf into err (if non-NULL) and return code: `return rc_fail(err,
 * errlen, RC_EFORMAT, "%s: bad header", path);`. */
int rc_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
