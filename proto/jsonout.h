/*
 * jsonout.h — a jansson value to bytes, the one way every body is serialised
 * (compact, any value at the top), with the library's allocator so that
 * allocation failures are counted and injected like every other.
 */
#ifndef RECUR_JSONOUT_H
#define RECUR_JSONOUT_H

#include <jansson.h>
#include <stddef.h>

/* Serialise v compactly into an rc_malloc'ed NUL-terminated buffer; NULL
 * when out of memory. */
char *pj_dump(const json_t *v, size_t *len);

#endif
