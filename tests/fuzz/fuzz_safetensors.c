/* Fuzz the safetensors header parser and the fp16/bf16 conversion on any
 * tensor it accepts: no crash, no out-of-bounds read, no leak. */
#include <stdint.h>
#include <stdlib.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct st_file *f;
    char err[256];
    if (st_open_buffer(data, size, "fuzz", &f, err, sizeof err) != 0)
        return 0;
    for (int i = 0; i < st_count(f); i++) {
        const struct st_tensor *t = st_at(f, i);
        if (st_find(f, t->name) != t)
            abort();
        if (t->nelem <= 4096 &&
            (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16)) {
            float *v = malloc(t->nelem * sizeof *v + 1);
            st_to_f32(t, v);
            free(v);
        }
    }
    st_close(f);
    return 0;
}
