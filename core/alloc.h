/*
 * alloc.h — the one allocation path of recurd.
 *
 * Every heap allocation in core/, proto/ and server/ goes through these
 * functions so that:
 *   - tests can make the Nth allocation fail (SQLite-style countdown) and
 *     check that every caller unwinds cleanly;
 *   - production can cap the bytes live at once (a memory budget);
 *   - /metrics can report the bytes live.
 * They behave like malloc/calloc/realloc/free: NULL on failure, rc_free(NULL)
 * is a no-op. Thread-safe (atomic counters).
 */
#ifndef RECUR_ALLOC_H
#define RECUR_ALLOC_H

#include <stddef.h>

void *rc_malloc(size_t n);
void *rc_calloc(size_t count, size_t size); /* overflow-checked */
void *rc_realloc(void *p, size_t n);
/* 64-byte aligned, for weights and scratch that AVX loads stream through.
 * Free with rc_free. */
void *rc_aligned_alloc(size_t n);
void rc_free(void *p);
char *rc_strdup(const char *s);
char *rc_strndup(const char *s, size_t n);

/* Allocations that failed on the calling thread so far (injected, over the
 * cap, or refused by the system): a library that reports an allocation
 * failure as something else (jansson's lexer does) can be told apart by
 * comparing this before and after the call. */
unsigned long rc_alloc_failures_here(void);

/* Bytes currently live through this allocator (usable sizes). */
size_t rc_alloc_live_bytes(void);

/* Cap on live bytes; 0 (default) means no cap. An allocation that would
 * exceed the cap fails like an out-of-memory. */
void rc_alloc_set_cap(size_t bytes);

/* Fault injection for tests: make the nth allocation from now fail
 * (n >= 1); with persistent != 0, every allocation after it fails too.
 * n == 0 turns injection off. Returns nothing; rc_alloc_injected() tells
 * how many allocations were failed on purpose since the last call. */
void rc_alloc_fail_after(long n, int persistent);
long rc_alloc_injected(void);

#endif
