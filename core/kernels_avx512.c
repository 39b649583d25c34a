/* The avx512 kernel set: kernels_body.h compiled for this target. */
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#define KSFX _avx512
#define KNAME "avx512"
#include "kernels_body.h"
