#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engine_fixture.h"
#include "model.h"
#include "safetensors.h"

struct model *load_fixture(const char *name)
{
    char dir[512], err[1024];
    struct model *m = NULL;
    snprintf(dir, sizeof dir, "%s/engine/%s", RECUR_FIXTURES, name);
    if (model_load(dir, &m, err, sizeof err))
        fail_msg("%s: %s", dir, err);
    return m;
}

void fixture_ids(const char *name, int32_t **ids, int *T, float **logits, int *V)
{
    char path[512], err[1024];
    struct st_file *f;
    snprintf(path, sizeof path, "%s/engine/%s/reference.safetensors", RECUR_FIXTURES, name);
    assert_int_equal(st_open(path, &f, err, sizeof err), 0);
    const struct st_tensor *t = st_find(f, "input_ids"), *l = st_find(f, "logits");
    *T = (int)t->shape[0];
    *ids = malloc((size_t)*T * 4);
    memcpy(*ids, t->data, (size_t)*T * 4);
    if (logits) {
        *V = (int)l->shape[1];
        *logits = malloc(l->nelem * 4);
        st_to_f32(l, *logits);
    }
    st_close(f);
}
