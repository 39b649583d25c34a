/*
 * pool.h — a tiny fork-join thread pool for the scan and conv loops.
 *
 * Why not OpenMP: libgomp's idle workers spin (OMP_WAIT_POLICY is read
 * only from the environment at load time), and on a 2-core machine a
 * spinning worker starves OpenBLAS's threads between our loops: decode of a
 * mamba2-130m ran at 2.7 tok/s instead of 60. These workers spin briefly,
 * then sleep on a condition variable.
 *
 * pool_run(p, n, fn, ctx) calls fn(ctx, i) once for every i in [0, n),
 * spread over the pool's threads and the caller, and returns when all are
 * done. One caller at a time (the compute thread that owns the pool).
 */
#ifndef RECUR_POOL_H
#define RECUR_POOL_H

struct pool;

/* nthreads total including the caller (1 = run inline, no threads);
 * 0 = cpu_threads_auto() (cpus.h: the CPUs this process may use). Returns NULL on failure. */
struct pool *pool_create(int nthreads);
void pool_free(struct pool *p);
int pool_threads(const struct pool *p);
/* Inside a work item: which of its pool's threads runs it, in
 * [0, pool_threads) (0: the caller of pool_run). For per-thread scratch. */
int pool_self(void);

typedef void (*pool_fn)(void *ctx, int i);
void pool_run(struct pool *p, int n, pool_fn fn, void *ctx);

#endif
