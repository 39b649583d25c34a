/* The avx512 kernel set: kernels_body.h compiled for this target. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#endif
#define KSFX _avx512
#define KISA 3 /* 1 generic, 2 avx2, 3 avx512 */
#define KNAME "avx512"
#define GEMM_KC 4096 /* all of k in one block (see kernels_body.h) */
#define GEMM_MR 12   /* 12 x 16 accumulators: 12 zmm registers */
#define GEMM_SMALL_ACC 16 /* few rows: up to 16 zmm accumulators */
#define GEMM_MR2 8        /* many rows: 8 x 2 panels, 16 zmm accumulators */
#include "kernels_body.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
