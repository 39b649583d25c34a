#include "blas.h"

#include "cpus.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <unistd.h>

/* Not declared in every cblas.h flavour. */
char *openblas_get_corename(void);
char *openblas_get_config(void);
int openblas_get_num_threads(void);
void openblas_set_num_threads(int n);

#define REEXEC_GUARD "RECUR_BLAS_REEXEC"
#define THREADS_GUARD "RECUR_BLAS_THREADS_AUTO" /* the count our re-exec set */

int blas_cpu_isa(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return ISA_AVX2;
    if (__builtin_cpu_supports("avx"))
        return ISA_AVX;
    if (__builtin_cpu_supports("sse3"))
        return ISA_SSE;
    return ISA_UNKNOWN;
}

/* OpenBLAS core names (gotoblas_corename) grouped by the ISA their sgemm
 * kernels use. Unknown names count as ISA_UNKNOWN: we then leave the
 * library alone rather than guess. */
int blas_core_isa(const char *name)
{
    static const struct { const char *name; int isa; } cores[] = {
        {"SkylakeX", ISA_AVX512}, {"Cooperlake", ISA_AVX512}, {"SapphireRapids", ISA_AVX512},
        {"Haswell", ISA_AVX2},    {"Zen", ISA_AVX2},
        {"Sandybridge", ISA_AVX}, {"Bulldozer", ISA_AVX},    {"Piledriver", ISA_AVX},
        {"Steamroller", ISA_AVX}, {"Excavator", ISA_AVX},
        {"Prescott", ISA_SSE},    {"Core2", ISA_SSE},        {"Penryn", ISA_SSE},
        {"Dunnington", ISA_SSE},  {"Nehalem", ISA_SSE},      {"Atom", ISA_SSE},
        {"Opteron", ISA_SSE},     {"Opteron(SSE3)", ISA_SSE}, {"Barcelona", ISA_SSE},
        {"Nano", ISA_SSE},        {"Katmai", ISA_SSE},       {"Coppermine", ISA_SSE},
        {"Northwood", ISA_SSE},   {"Banias", ISA_SSE},       {"Athlon", ISA_SSE},
        {"Bobcat", ISA_SSE},
    };
    if (!name)
        return ISA_UNKNOWN;
    for (size_t i = 0; i < sizeof cores / sizeof cores[0]; i++)
        if (strcasecmp(name, cores[i].name) == 0)
            return cores[i].isa;
    return ISA_UNKNOWN;
}

const char *blas_coretype_for(int isa)
{
    switch (isa) {
    case ISA_AVX512: return "SkylakeX";
    case ISA_AVX2: return "Haswell";
    case ISA_AVX: return "Sandybridge";
    default: return NULL;
    }
}

const char *blas_corename(void) { return openblas_get_corename(); }
const char *blas_config(void) { return openblas_get_config(); }
int blas_threads(void) { return openblas_get_num_threads(); }
void blas_set_threads(int n) { openblas_set_num_threads(n); }

int blas_threads_from_env(void)
{
    static const char *const vars[] = {"OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                                       "OMP_NUM_THREADS"};
    const char *ours = getenv(THREADS_GUARD);
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (i == 0 && v && ours && !strcmp(v, ours))
            continue; /* set by blas_ensure_thread_count, not by the user */
        if (v && *v)
            return 1;
    }
    return 0;
}

/* After a re-exec through /proc/self/exe the kernel names the process
 * "exe" (ps, top, pgrep read that name): give it back its own. */
static void name_after_reexec(char **argv)
{
    if (!argv || !argv[0] || (!getenv(REEXEC_GUARD) && !getenv(THREADS_GUARD)))
        return;
    const char *base = strrchr(argv[0], '/');
    prctl(PR_SET_NAME, base ? base + 1 : argv[0], 0, 0, 0);
}

void blas_ensure_thread_count(char **argv)
{
    name_after_reexec(argv);
    if (getenv(THREADS_GUARD) || blas_threads_from_env())
        return; /* done once already, or the user chose */
    int want = cpu_threads_auto();
    if (blas_threads() <= want)
        return;
    char v[16];
    snprintf(v, sizeof v, "%d", want);
    setenv("OPENBLAS_NUM_THREADS", v, 1);
    setenv(THREADS_GUARD, v, 1);
    execv("/proc/self/exe", argv);
    /* Still here: exec failed. The extra threads stay idle: the count used
     * is still set (blas_set_threads) where the work starts. */
    unsetenv("OPENBLAS_NUM_THREADS");
    unsetenv(THREADS_GUARD);
}

void blas_ensure_fast_kernels(char **argv)
{
    name_after_reexec(argv);
    if (getenv("OPENBLAS_CORETYPE"))
        return; /* the user chose; a re-exec sets it too, so no loop */
    const char *core = blas_corename();
    int have = blas_core_isa(core), cpu = blas_cpu_isa();
    if (have == ISA_UNKNOWN || cpu <= have)
        return;
    const char *want = blas_coretype_for(cpu);
    if (!want || getenv(REEXEC_GUARD))
        return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv(REEXEC_GUARD, core, 1);
    execv("/proc/self/exe", argv);
    /* Still here: exec failed. Run on with the slow kernels, and say so. */
    fprintf(stderr, "recurd: OpenBLAS chose %s kernels on a CPU that runs %s; re-exec failed, "
                    "set OPENBLAS_CORETYPE=%s for full speed\n", core, want, want);
    unsetenv("OPENBLAS_CORETYPE");
}

int blas_chosen_by(void)
{
    if (getenv(REEXEC_GUARD) && getenv("OPENBLAS_CORETYPE"))
        return BLAS_CHOSEN_RECURD;
    return getenv("OPENBLAS_CORETYPE") ? BLAS_CHOSEN_USER : BLAS_CHOSEN_LIBRARY;
}

static const char *isa_name(int isa)
{
    static const char *names[] = {"unknown", "sse", "avx", "avx2", "avx512"};
    return isa >= 0 && isa <= ISA_AVX512 ? names[isa] : "unknown";
}

void blas_describe(char *buf, int len)
{
    const char *core = blas_corename();
    const char *from = getenv(REEXEC_GUARD);
    char why[128] = "";
    int by = blas_chosen_by();
    if (by == BLAS_CHOSEN_RECURD)
        snprintf(why, sizeof why, " (re-executed: library first chose %.48s)", from);
    else if (by == BLAS_CHOSEN_USER)
        snprintf(why, sizeof why, " (OPENBLAS_CORETYPE=%.48s set by the user: respected)",
                 getenv("OPENBLAS_CORETYPE"));
    snprintf(buf, (size_t)len, "OpenBLAS core=%s (%s kernels) cpu=%s threads=%d%s", core,
             isa_name(blas_core_isa(core)), isa_name(blas_cpu_isa()), blas_threads(), why);
}
