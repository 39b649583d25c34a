/* The avx2 kernel set: kernels_body.h compiled for this target. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#define KSFX _avx2
#define KISA 2 /* 1 generic, 2 avx2, 3 avx512 */
#define KNAME "avx2"
#include "kernels_body.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
