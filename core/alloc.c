#include "alloc.h"

#include <malloc.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static atomic_size_t g_live;
static atomic_size_t g_cap;
static atomic_long g_countdown;   /* > 0: failing when it reaches 0 */
static atomic_int g_persistent;
static atomic_int g_failing;      /* persistent failure latched */
static atomic_long g_injected;
static _Thread_local unsigned long t_failed; /* failures seen by this thread */

static void *failed(void)
{
    t_failed++;
    return NULL;
}

/* Decide whether this allocation is one the test wants to fail. */
static int inject_failure(void)
{
    if (atomic_load_explicit(&g_failing, memory_order_relaxed)) {
        atomic_fetch_add(&g_injected, 1);
        return 1;
    }
    long c = atomic_load_explicit(&g_countdown, memory_order_relaxed);
    if (c <= 0)
        return 0;
    if (atomic_fetch_sub(&g_countdown, 1) == 1) {
        if (atomic_load(&g_persistent))
            atomic_store(&g_failing, 1);
        atomic_fetch_add(&g_injected, 1);
        return 1;
    }
    return 0;
}

static int over_cap(size_t n)
{
    size_t cap = atomic_load_explicit(&g_cap, memory_order_relaxed);
    return cap && atomic_load_explicit(&g_live, memory_order_relaxed) + n > cap;
}

static void *account(void *p)
{
    if (p)
        atomic_fetch_add_explicit(&g_live, malloc_usable_size(p), memory_order_relaxed);
    return p;
}

void *rc_malloc(size_t n)
{
    if (inject_failure() || over_cap(n))
        return failed();
    void *p = malloc(n ? n : 1);
    return p ? account(p) : failed();
}

void *rc_calloc(size_t count, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(count, size, &n))
        return failed();
    if (inject_failure() || over_cap(n))
        return failed();
    void *p = calloc(n ? n : 1, 1);
    return p ? account(p) : failed();
}

void *rc_aligned_alloc(size_t n)
{
    void *p = NULL;
    if (inject_failure() || over_cap(n))
        return failed();
    if (posix_memalign(&p, 64, n ? n : 1) != 0)
        return failed();
    return account(p);
}

void *rc_realloc(void *p, size_t n)
{
    if (!p)
        return rc_malloc(n);
    size_t old = malloc_usable_size(p);
    if (inject_failure() || (n > old && over_cap(n - old)))
        return failed();
    void *q = realloc(p, n ? n : 1);
    if (!q)
        return failed();
    atomic_fetch_sub_explicit(&g_live, old, memory_order_relaxed);
    return account(q);
}

void rc_free(void *p)
{
    if (!p)
        return;
    atomic_fetch_sub_explicit(&g_live, malloc_usable_size(p), memory_order_relaxed);
    free(p);
}

char *rc_strndup(const char *s, size_t n)
{
    char *d = rc_malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

char *rc_strdup(const char *s) { return rc_strndup(s, strlen(s)); }

size_t rc_alloc_live_bytes(void) { return atomic_load(&g_live); }

unsigned long rc_alloc_failures_here(void) { return t_failed; }

void rc_alloc_set_cap(size_t bytes) { atomic_store(&g_cap, bytes); }

void rc_alloc_fail_after(long n, int persistent)
{
    atomic_store(&g_failing, 0);
    atomic_store(&g_persistent, persistent);
    atomic_store(&g_injected, 0);
    atomic_store(&g_countdown, n > 0 ? n : 0);
}

long rc_alloc_injected(void) { return atomic_load(&g_injected); }
