#define _GNU_SOURCE /* pthread_setname_np */
#include "pool.h"

#include <pthread.h>

#include "cpus.h"
#include <stdatomic.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "alloc.h"

static __thread int self_index; /* 0 in every thread but a pool worker */

int pool_self(void) { return self_index; }

#define SPIN_ITERS 20000 /* ~10-50 us of polling before sleeping */

/* A job is published by writing fn/ctx/base, then storing one 64-bit word
 * `claim` = generation | item count | next index. Items are claimed by
 * compare-and-swap on that word, so the bounds check and the generation
 * check read the same job: a thread still looping on an earlier job can
 * never take (or skip) an item of the next one. (An earlier version read the
 * count from a separate field and could pair the old index with the new
 * count, running one item twice; test_pool caught it.) fn, ctx
 * and base are read only after a successful claim, when they cannot change:
 * the job cannot finish, and the caller cannot publish the next, before
 * that item is done. */
#define IDX_BITS 22
#define IDX_MASK ((UINT64_C(1) << IDX_BITS) - 1)
#define GEN_SHIFT (2 * IDX_BITS)
#define WORD(gen, items, idx) ((uint64_t)(gen) << GEN_SHIFT | (uint64_t)(items) << IDX_BITS | (idx))
struct pool {
    int n;                   /* threads including the caller */
    pthread_t *tids;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    pool_fn fn;
    void *ctx;
    int base;                /* index of the job's first item (jobs over IDX_MASK items are split) */
    _Atomic uint64_t claim;  /* generation | items | next item, see WORD */
    atomic_int finished;     /* items of the current job completed */
    int stop;                /* under mu */
    atomic_int next_self;    /* pool_self() of the next worker to start */
};

/* Claim and run items of job generation gen until none is left (workers and the
 * caller alike). */
static void run_items(struct pool *p, uint32_t gen)
{
    for (;;) {
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
        uint64_t items = (c >> IDX_BITS) & IDX_MASK, idx = c & IDX_MASK;
        if ((uint32_t)(c >> GEN_SHIFT) != gen || idx >= items)
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        p->fn(p->ctx, p->base + (int)idx);
        if (atomic_fetch_add_explicit(&p->finished, 1, memory_order_acq_rel) + 1 == (int)items) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void *worker(void *arg)
{
    struct pool *p = arg;
    self_index = atomic_fetch_add(&p->next_self, 1);
    prctl(PR_SET_NAME, "recur-pool", 0, 0, 0); /* for top -H, /proc, tests */
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = (uint32_t)(atomic_load_explicit(&p->claim, memory_order_acquire) >>
                               GEN_SHIFT)) == seen &&
               spins < SPIN_ITERS)
            spins++;
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = (uint32_t)(atomic_load(&p->claim) >> GEN_SHIFT)) == seen && !p->stop)
                pthread_cond_wait(&p->wake, &p->mu);
            int stop = p->stop;
            pthread_mutex_unlock(&p->mu);
            if (stop)
                return NULL;
        }
        seen = g;
        run_items(p, g);
    }
}

struct pool *pool_create(int nthreads)
{
    if (nthreads <= 0)
        nthreads = cpu_threads_auto(); /* affinity mask and cgroup quota, not all CPUs */
    if (nthreads > 64)
        nthreads = 64;
    struct pool *p = rc_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n = 1;
    atomic_init(&p->next_self, 1);
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
            /* named here too, so that it never shows its creator's name
             * before its first instruction runs */
            pthread_setname_np(p->tids[i], "recur-pool");
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

/* One job of at most IDX_MASK items starting at base. */
static void run_job(struct pool *p, int base, int n, pool_fn fn, void *ctx)
{
    p->fn = fn;
    p->ctx = ctx;
    p->base = base;
    atomic_store(&p->finished, 0);
    uint32_t gen = (uint32_t)(atomic_load(&p->claim) >> GEN_SHIFT) + 1;
    gen &= (1u << (64 - GEN_SHIFT)) - 1;
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->claim, WORD(gen, (uint64_t)n, 0), memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_items(p, gen);
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

void pool_run(struct pool *p, int n, pool_fn fn, void *ctx)
{
    if (n <= 0)
        return;
    if (p->n == 1 || n == 1) {
        for (int i = 0; i < n; i++)
            fn(ctx, i);
        return;
    }
    for (int base = 0; base < n; base += (int)IDX_MASK) {
        int m = n - base < (int)IDX_MASK ? n - base : (int)IDX_MASK;
        run_job(p, base, m, fn, ctx);
    }
}
