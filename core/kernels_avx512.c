/* The avx512 kernel set: kernels_body.h compiled for this target. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#endif
#define KSFX _avx512
#define KNAME "avx512"
#define GEMM_KC 4096 /* all of k in one block (see kernels_body.h) */
#define GEMM_MR 12   /* 12 x 16 accumulators: 12 zmm registers */
#include "kernels_body.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
