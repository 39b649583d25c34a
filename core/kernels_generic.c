/* The generic kernel set: kernels_body.h compiled for this target. */
#define KSFX _generic
#define KNAME "generic"
#include "kernels_body.h"
