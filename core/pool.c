#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include "alloc.h"

#define SPIN_ITERS 20000 /* ~10-50 us of polling before sleeping */

/* A job is published by writing fn/ctx/items, then storing `claim` =
 * (generation << 32 | 0). Items are claimed by compare-and-swap on `claim`,
 * which also checks the generation: a thread still looping on an earlier
 * job can never take (or skip) an item of the next one. fn and ctx are read
 * only after a successful claim, when they cannot change: the job cannot
 * finish, and the caller cannot publish the next, before that item is done. */
struct pool {
    int n;                   /* threads including the caller */
    pthread_t *tids;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    pool_fn fn;
    void *ctx;
    atomic_int items;
    _Atomic uint64_t claim;  /* generation << 32 | next item */
    atomic_int finished;     /* items of the current job completed */
    int stop;                /* under mu */
};

static void work(struct pool *p, uint32_t gen)
{
    for (;;) {
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
        if ((uint32_t)(c >> 32) != gen ||
            (uint32_t)c >= (uint32_t)atomic_load_explicit(&p->items, memory_order_relaxed))
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        int items = atomic_load_explicit(&p->items, memory_order_relaxed);
        p->fn(p->ctx, (int)(uint32_t)c);
        if (atomic_fetch_add_explicit(&p->finished, 1, memory_order_acq_rel) + 1 == items) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void *worker(void *arg)
{
    struct pool *p = arg;
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = (uint32_t)(atomic_load_explicit(&p->claim, memory_order_acquire) >> 32)) ==
                   seen &&
               spins < SPIN_ITERS)
            spins++;
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = (uint32_t)(atomic_load(&p->claim) >> 32)) == seen && !p->stop)
                pthread_cond_wait(&p->wake, &p->mu);
            int stop = p->stop;
            pthread_mutex_unlock(&p->mu);
            if (stop)
                return NULL;
        }
        seen = g;
        work(p, g);
    }
}

struct pool *pool_create(int nthreads)
{
    if (nthreads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = c > 0 ? (int)c : 1;
    }
    if (nthreads > 64)
        nthreads = 64;
    struct pool *p = rc_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (nthreads > 1) {
        p->tids = rc_calloc((size_t)nthreads - 1, sizeof *p->tids);
        if (!p->tids) {
            pool_free(p);
            return NULL;
        }
        for (int i = 0; i < nthreads - 1; i++) {
            if (pthread_create(&p->tids[i], NULL, worker, p) != 0) {
                pool_free(p);
                return NULL;
            }
            p->n++;
        }
    }
    return p;
}

void pool_free(struct pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n - 1; i++)
        pthread_join(p->tids[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    rc_free(p->tids);
    rc_free(p);
}

int pool_threads(const struct pool *p) { return p->n; }

void pool_run(struct pool *p, int n, pool_fn fn, void *ctx)
{
    if (n <= 0)
        return;
    if (p->n == 1 || n == 1) {
        for (int i = 0; i < n; i++)
            fn(ctx, i);
        return;
    }
    /* Close the previous generation first: a worker that loaded its last
     * claim word could otherwise see the new `items` before the new
     * generation is published, win its compare-and-swap on the old word,
     * and run an item of this job that will be claimed again. */
    uint32_t old = (uint32_t)(atomic_load(&p->claim) >> 32);
    atomic_store_explicit(&p->claim, (uint64_t)old << 32 | UINT32_MAX, memory_order_release);
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->items, n);
    atomic_store(&p->finished, 0);
    uint32_t gen = old + 1;
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->claim, (uint64_t)gen << 32, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    work(p, gen);
    int spins = 0;
    while (atomic_load_explicit(&p->finished, memory_order_acquire) < n && spins < SPIN_ITERS)
        spins++;
    if (atomic_load_explicit(&p->finished, memory_order_acquire) < n) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->finished) < n)
            pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
