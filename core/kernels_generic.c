/* The generic kernel set: kernels_body.h compiled for this target. */
#define KSFX _generic
#define KISA 1 /* 1 generic, 2 avx2, 3 avx512 */
#define KNAME "generic"
#include "kernels_body.h"
