#include "jsonout.h"

#include <stdint.h>
#include <string.h>

#include "alloc.h"

struct dumpbuf {
    char *p;
    size_t n, cap;
    int oom;
};

static int dump_cb(const char *buf, size_t size, void *data)
{
    struct dumpbuf *d = data;
    if (d->n + size + 1 > d->cap) {
        size_t cap = d->cap ? d->cap : 256;
        while (cap < d->n + size + 1) {
            if (cap > SIZE_MAX / 2) {
                d->oom = 1;
                return -1;
            }
            cap *= 2;
        }
        char *np = rc_realloc(d->p, cap);
        if (!np) {
            d->oom = 1;
            return -1;
        }
        d->p = np;
        d->cap = cap;
    }
    memcpy(d->p + d->n, buf, size);
    d->n += size;
    return 0;
}

char *pj_dump(const json_t *v, size_t *len)
{
    struct dumpbuf d = {0};
    if (json_dump_callback(v, dump_cb, &d, JSON_COMPACT | JSON_ENCODE_ANY) != 0 || d.oom ||
        !d.p) {
        rc_free(d.p);
        return NULL;
    }
    d.p[d.n] = 0;
    if (len)
        *len = d.n;
    return d.p;
}
