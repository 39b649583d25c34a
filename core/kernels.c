#include "kernels.h"

#include <pthread.h>
#include <string.h>

extern const struct kernels kernels__generic, kernels__avx2, kernels__avx512;

static const struct kernels *best;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int cpu_has(const char *name)
{
    __builtin_cpu_init();
    if (!strcmp(name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma");
    if (!strcmp(name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return !strcmp(name, "generic");
}

static void select_best_kernels(void)
{
    best = cpu_has("avx512") ? &kernels__avx512 : cpu_has("avx2") ? &kernels__avx2
                                                                    : &kernels__generic;
}

const struct kernels *kernels_get(void)
{
    pthread_once(&once, select_best_kernels);
    return best;
}

const struct kernels *kernels_named(const char *name)
{
    if (!cpu_has(name))
        return NULL;
    return !strcmp(name, "avx512") ? &kernels__avx512
           : !strcmp(name, "avx2") ? &kernels__avx2
                                   : &kernels__generic;
}
