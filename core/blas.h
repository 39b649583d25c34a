/*
 * blas.h — make sure OpenBLAS runs the right kernels for this CPU.
 *
 * The engine makes no OpenBLAS call: its own panel kernels (kernels.h) do
 * the projections. OpenBLAS's sgemm is reported by `recurd bench` beside
 * its own references (docs/engine.md, "Roofline"),
 * and its thread count is reported by the server (docs/engine.md,
 * "OpenBLAS", has the measurements). Only blas.c includes cblas.h here.
 *
 * Debian's OpenBLAS (0.3.21, DYNAMIC_ARCH) picks its kernels when the
 * library loads. On some CPUs it does not recognise the model and falls
 * back to its Prescott (SSE3) kernels, 5x slower (an AVX-512 Intel part,
 * family 6 model 207, in shared/docs/DESIGN.md). The choice is read from
 * OPENBLAS_CORETYPE at load time, so setting it in main() is too late:
 * blas_ensure_fast_kernels() compares the kernels OpenBLAS chose with what
 * the CPU supports and, if they are weaker, re-executes the program with
 * OPENBLAS_CORETYPE set. It never forces kernels the CPU cannot run (on
 * an AVX2-only AMD Zen, forcing SkylakeX dies with SIGILL), and it respects
 * an OPENBLAS_CORETYPE the user set.
 */
#ifndef RECUR_BLAS_H
#define RECUR_BLAS_H

/* ISA levels, weakest first. */
enum blas_isa { ISA_UNKNOWN = 0, ISA_SSE = 1, ISA_AVX = 2, ISA_AVX2 = 3, ISA_AVX512 = 4 };

/* Call from main() with main's argv, before a command that runs sgemm or
 * answers for its kernels (bench, version). Returns only if no re-exec is
 * needed (or it failed, in which case it says so on stderr once). */
void blas_ensure_fast_kernels(char **argv);

/* The kernels OpenBLAS runs ("Zen", "Haswell", "SkylakeX", ...). */
const char *blas_corename(void);
/* The library's build string. */
const char *blas_config(void);
int blas_threads(void);
void blas_set_threads(int n);
/* 1 when OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS or OMP_NUM_THREADS is set
 * (non-empty) by the user: OpenBLAS took its count from there, and the
 * user's choice stands over --threads. (A value set by
 * blas_ensure_thread_count's re-exec is not the user's.) */
int blas_threads_from_env(void);

/* OpenBLAS starts its worker threads when it loads, as many as the CPUs in
 * the affinity mask: a cgroup CPU quota is not seen, so a pod limited to 2
 * CPUs on a 64-core node got 63 idle OpenBLAS threads before main() ran.
 * Call first thing in main() (every command loads the library): when no
 * *_NUM_THREADS is set and the library started more threads than
 * cpu_threads_auto() (cpus.h) allows, re-executes once with
 * OPENBLAS_NUM_THREADS set to that.
 * --threads larger than it still works: blas_set_threads grows the pool. */
void blas_ensure_thread_count(char **argv);

/* Best ISA of this CPU, and the ISA a core name's kernels need. */
int blas_cpu_isa(void);
int blas_core_isa(const char *corename);
/* The OPENBLAS_CORETYPE to ask for on a CPU with this ISA (NULL: none). */
const char *blas_coretype_for(int isa);
/* Who chose the kernels: BLAS_CHOSEN_LIBRARY (OpenBLAS's own detection),
 * BLAS_CHOSEN_RECURD (our re-exec) or BLAS_CHOSEN_USER (OPENBLAS_CORETYPE
 * was in the environment we were started with: the user's decision, which
 * recurd reports and never overrides or judges). */
enum blas_chooser { BLAS_CHOSEN_LIBRARY = 0, BLAS_CHOSEN_RECURD = 1, BLAS_CHOSEN_USER = 2 };
int blas_chosen_by(void);
/* One line: "OpenBLAS core=Zen isa=avx2 cpu=avx2 threads=2". */
void blas_describe(char *buf, int len);

#endif
