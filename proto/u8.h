/*
 * u8.h — COMPATIBILITY ONLY, to be deleted: the old proto/ UTF-8 names, kept while
 * server/routes.c and server/scheduler.c are being split (issue 13). New code uses
 * core/utf8.h, the one UTF-8 module (its header states the policy and the return
 * convention). Each call here is the utf8.h function named beside it.
 */
#ifndef RECUR_U8_H
#define RECUR_U8_H

#include <stddef.h>
#include <stdint.h>

#include "utf8.h"

/* utf8_valid() */
static inline int u8_valid(const char *s, size_t n) { return utf8_valid((const uint8_t *)s, n); }

/* utf8_complete_prefix() */
static inline size_t u8_complete_prefix(const char *s, size_t n)
{
    return utf8_complete_prefix((const uint8_t *)s, n);
}

/* utf8_repair_str() */
static inline size_t u8_sanitize(const char *s, size_t n, char *out, size_t cap)
{
    return utf8_repair_str((const uint8_t *)s, n, out, cap);
}

/* utf8_repaired_len() */
static inline size_t u8_sanitized_len(const char *s, size_t n)
{
    return utf8_repaired_len((const uint8_t *)s, n);
}

#endif
