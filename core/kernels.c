#include "kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
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

/* RECURD_KERNELS=generic|avx2|avx512 picks a narrower set than the CPU's
 * best (to measure the AVX2 path on an AVX-512 machine, say); a set this CPU
 * cannot run, or another value, is ignored. */
static void select_best_kernels(void)
{
    best = cpu_has("avx512") ? &kernels__avx512 : cpu_has("avx2") ? &kernels__avx2
                                                                    : &kernels__generic;
    const char *want = getenv("RECURD_KERNELS");
    const struct kernels *k = want && *want ? kernels_named(want) : NULL;
    if (k)
        best = k;
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

uint16_t wfmt_bf16_round(float x, int *lossy)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
    if ((r & 0x7f800000u) == 0x7f800000u) /* rounded up past the largest finite */
        r = u;
    if (u & 0xffffu)
        *lossy = 1;
    return (uint16_t)(r >> 16);
}

float wfmt_bf16_value(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The smallest bf16 >= x >= 0. */
static uint16_t bf16_up(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if (u & 0xffffu)
        u += 0x10000u;
    return (uint16_t)(u >> 16);
}

void wfmt_pack_rows(int fmt, const float *src, size_t rows, size_t k, size_t r0, size_t n,
                    void *dst, int *lossy)
{
    const size_t ps = wfmt_panel_bytes(fmt, (int)k);
    unsigned char *slot = dst;
    for (size_t p = r0 / GEMM_NR; p * GEMM_NR < r0 + n && p * GEMM_NR < rows; p++) {
        unsigned char *pan = slot + p * ps;
        const float *rowp[GEMM_NR];
        for (size_t j = 0; j < GEMM_NR; j++) {
            size_t r = p * GEMM_NR + j;
            rowp[j] = r < rows && r < r0 + n ? src + (r - r0) * k : NULL;
        }
        if (fmt == WF_F32) {
            float *d = (float *)pan;
            for (size_t kk = 0; kk < k; kk++)
                for (size_t j = 0; j < GEMM_NR; j++)
                    d[kk * GEMM_NR + j] = rowp[j] ? rowp[j][kk] : 0.0f;
        } else if (fmt == WF_BF16) {
            uint16_t *d = (uint16_t *)pan;
            for (size_t kk = 0; kk < k; kk++)
                for (size_t j = 0; j < GEMM_NR; j++)
                    d[kk * GEMM_NR + j] = rowp[j] ? wfmt_bf16_round(rowp[j][kk], lossy) : 0;
        } else {
            *lossy = 1;
            for (size_t b0 = 0; b0 < k; b0 += GEMM_QB) {
                size_t kb = k - b0 < GEMM_QB ? k - b0 : GEMM_QB;
                unsigned char *blk = pan + b0 / GEMM_QB * GEMM_Q8_BLOCK;
                uint16_t sc[GEMM_NR];
                int8_t *q = (int8_t *)(blk + GEMM_NR * 2);
                for (size_t j = 0; j < GEMM_NR; j++) {
                    float amax = 0.0f;
                    for (size_t t = 0; rowp[j] && t < kb; t++)
                        amax = fmaxf(amax, fabsf(rowp[j][b0 + t]));
                    sc[j] = bf16_up(amax / 127.0f);
                    float sv = wfmt_bf16_value(sc[j]);
                    for (size_t t = 0; t < kb; t++) {
                        float v = rowp[j] && sv > 0 ? nearbyintf(rowp[j][b0 + t] / sv) : 0.0f;
                        q[t * GEMM_NR + j] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
                    }
                }
                memcpy(blk, sc, sizeof sc);
            }
        }
    }
}

