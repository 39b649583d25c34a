/* The avx2 kernel set: kernels_body.h compiled for this target. */
#pragma GCC target("avx2,fma")
#define KSFX _avx2
#define KNAME "avx2"
#include "kernels_body.h"
