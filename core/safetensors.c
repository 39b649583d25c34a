#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "errors.h"

struct st_file {
    char *path;
    const uint8_t *base; /* whole image */
    size_t size;
    int mapped;          /* base is an mmap we own */
    int n;
    struct st_tensor *t; /* sorted by name for lookup */
    char *names;         /* one block holding every name */
};

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_NDTYPES] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},     [ST_I8] = {"I8", 1},
    [ST_I16] = {"I16", 2},   [ST_U16] = {"U16", 2},   [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2}, [ST_I32] = {"I32", 4},   [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},   [ST_I64] = {"I64", 8},   [ST_U64] = {"U64", 8},
    [ST_F64] = {"F64", 8},   [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(int d) { return d >= 0 && d < ST_NDTYPES ? dtypes[d].name : "?"; }
size_t st_dtype_size(int d) { return d >= 0 && d < ST_NDTYPES ? dtypes[d].size : 0; }

static int dtype_parse(const char *s)
{
    for (int i = 0; i < ST_NDTYPES; i++)
        if (!strcmp(s, dtypes[i].name))
            return i;
    return -1;
}

void st_close(struct st_file *f)
{
    if (!f)
        return;
    if (f->mapped && f->base)
        munmap((void *)f->base, f->size);
    rc_free(f->t);
    rc_free(f->names);
    rc_free(f->path);
    rc_free(f);
}

static int cmp_offset(const void *a, const void *b)
{
    const struct st_tensor *x = a, *y = b;
    uintptr_t px = (uintptr_t)x->data, py = (uintptr_t)y->data;
    if (px != py)
        return px < py ? -1 : 1;
    /* A zero-size tensor may share its offset with the next one: it goes first. */
    return (x->nbytes > 0) - (y->nbytes > 0);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const struct st_tensor *)a)->name, ((const struct st_tensor *)b)->name);
}

/* Read a JSON integer that must be >= 0 and fit in int64. */
static int json_nonneg(const json_t *v, int64_t *out)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0)
        return -1;
    *out = (int64_t)x;
    return 0;
}

static int parse_entry(struct st_file *f, const char *label, const char *key, json_t *v,
                       const uint8_t *data, size_t data_size, struct st_tensor *t,
                       char *err, size_t errlen)
{
    if (!json_is_object(v))
        return rc_fail(err, errlen, RC_EFORMAT, "%s: tensor '%s': entry is not an object",
                       label, key);
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return rc_fail(err, errlen, RC_EFORMAT, "%s: tensor '%s': unknown field '%s'",
                           label, key, k);
    }
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return rc_fail(err, errlen, RC_EFORMAT, "%s: tensor '%s': missing or non-string dtype",
                       label, key);
    t->dtype = dtype_parse(json_string_value(dt));
    if (t->dtype < 0)
        return rc_fail(err, errlen, RC_EFORMAT, "%s: tensor '%s': unknown dtype '%.32s'", label,
                       key, json_string_value(dt));
    if (!json_is_array(sh) || json_array_size(sh) > ST_MAX_DIMS)
        return rc_fail(err, errlen, RC_EFORMAT,
                       "%s: tensor '%s': shape must be an array of at most %d dims", label, key,
                       ST_MAX_DIMS);
    t->ndim = (int)json_array_size(sh);
    size_t nelem = 1;
    for (int i = 0; i < t->ndim; i++) {
        int64_t d;
        if (json_nonneg(json_array_get(sh, (size_t)i), &d) != 0 || (uint64_t)d > SIZE_MAX)
            return rc_fail(err, errlen, RC_EFORMAT,
                           "%s: tensor '%s': shape[%d] is not a non-negative integer", label,
                           key, i);
        t->shape[i] = d;
        if (__builtin_mul_overflow(nelem, (size_t)d, &nelem))
            return rc_fail(err, errlen, RC_EFORMAT, "%s: tensor '%s': shape product overflows",
                           label, key);
    }
    t->nelem = nelem;
    if (__builtin_mul_overflow(nelem, dtypes[t->dtype].size, &t->nbytes))
        return rc_fail(err, errlen, RC_EFORMAT, "%s: tensor '%s': byte size overflows", label,
                       key);
    int64_t b, e;
    if (!json_is_array(off) || json_array_size(off) != 2 ||
        json_nonneg(json_array_get(off, 0), &b) || json_nonneg(json_array_get(off, 1), &e))
        return rc_fail(err, errlen, RC_EFORMAT,
                       "%s: tensor '%s': data_offsets must be two non-negative integers", label,
                       key);
    if (b > e || (uint64_t)e > data_size)
        return rc_fail(err, errlen, RC_EFORMAT,
                       "%s: tensor '%s': data_offsets [%lld, %lld] outside the %zu-byte data "
                       "section",
                       label, key, (long long)b, (long long)e, data_size);
    if ((uint64_t)(e - b) != t->nbytes)
        return rc_fail(err, errlen, RC_EFORMAT,
                       "%s: tensor '%s': %lld bytes at data_offsets but shape x %s needs %zu",
                       label, key, (long long)(e - b), dtypes[t->dtype].name, t->nbytes);
    t->data = data + b;
    (void)f;
    return 0;
}

static int parse(struct st_file *f, const char *label, char *err, size_t errlen)
{
    if (f->size < 8)
        return rc_fail(err, errlen, RC_EFORMAT, "%s: %zu bytes, too short for a header length",
                       label, f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | f->base[i];
    if (n == 0)
        return rc_fail(err, errlen, RC_EFORMAT, "%s: header length is 0", label);
    if (n > ST_MAX_HEADER)
        return rc_fail(err, errlen, RC_EFORMAT, "%s: header length %llu exceeds the %u-byte cap",
                       label, (unsigned long long)n, ST_MAX_HEADER);
    if (n > f->size - 8)
        return rc_fail(err, errlen, RC_EFORMAT,
                       "%s: header length %llu runs past the end of the %zu-byte file", label,
                       (unsigned long long)n, f->size);
    const char *hdr = (const char *)f->base + 8;
    if (hdr[0] != '{')
        return rc_fail(err, errlen, RC_EFORMAT, "%s: header does not start with '{'", label);
    json_error_t je;
    json_t *root = json_loadb(hdr, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return rc_fail(err, errlen, RC_EFORMAT, "%s: header JSON invalid at byte %d: %s", label,
                       je.position, je.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = rc_fail(err, errlen, RC_EFORMAT, "%s: header is not a JSON object", label);
        goto out;
    }
    const uint8_t *data = f->base + 8 + n;
    size_t data_size = f->size - 8 - (size_t)n;
    size_t count = json_object_size(root), names_len = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (!strcmp(key, "__metadata__")) {
            const char *mk;
            json_t *mv;
            if (!json_is_object(v)) {
                rc = rc_fail(err, errlen, RC_EFORMAT, "%s: __metadata__ is not an object", label);
                goto out;
            }
            json_object_foreach(v, mk, mv)
            {
                if (!json_is_string(mv)) {
                    rc = rc_fail(err, errlen, RC_EFORMAT,
                                 "%s: __metadata__ value '%s' is not a string", label, mk);
                    goto out;
                }
            }
            count--;
            continue;
        }
        if (key[0] == 0 || strlen(key) > 4096) {
            rc = rc_fail(err, errlen, RC_EFORMAT, "%s: tensor name empty or over 4096 bytes",
                         label);
            goto out;
        }
        names_len += strlen(key) + 1;
    }
    f->t = rc_calloc(count ? count : 1, sizeof *f->t);
    f->names = rc_malloc(names_len ? names_len : 1);
    if (!f->t || !f->names) {
        rc = rc_fail(err, errlen, RC_ENOMEM, "%s: out of memory for %zu tensors", label, count);
        goto out;
    }
    char *np = f->names;
    int i = 0;
    json_object_foreach(root, key, v)
    {
        if (!strcmp(key, "__metadata__"))
            continue;
        struct st_tensor *t = &f->t[i];
        size_t kl = strlen(key) + 1;
        memcpy(np, key, kl);
        t->name = np;
        np += kl;
        rc = parse_entry(f, label, key, v, data, data_size, t, err, errlen);
        if (rc)
            goto out;
        i++;
    }
    f->n = i;
    /* The tensors must tile the data section: sorted by offset, each starts
     * where the previous ended, and the last ends at the end of the file. */
    qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_offset);
    size_t expect = 0;
    for (int j = 0; j < f->n; j++) {
        size_t b = (size_t)((const uint8_t *)f->t[j].data - data);
        if (b != expect) {
            rc = rc_fail(err, errlen, RC_EFORMAT,
                         b < expect ? "%s: tensor '%s' overlaps the tensor before it (offset %zu)"
                                    : "%s: gap before tensor '%s' (offset %zu): offsets are not "
                                      "contiguous",
                         label, f->t[j].name, b);
            goto out;
        }
        expect = b + f->t[j].nbytes;
    }
    if (expect != data_size) {
        rc = rc_fail(err, errlen, RC_EFORMAT,
                     "%s: tensors cover %zu bytes of a %zu-byte data section (truncated or "
                     "trailing bytes)",
                     label, expect, data_size);
        goto out;
    }
    qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_name);
out:
    json_decref(root);
    return rc;
}

static int open_common(struct st_file *f, const char *label, struct st_file **out, char *err,
                       size_t errlen)
{
    f->path = rc_strdup(label);
    int rc = f->path ? parse(f, label, err, errlen)
                     : rc_fail(err, errlen, RC_ENOMEM, "%s: out of memory", label);
    if (rc) {
        st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int st_open_buffer(const void *buf, size_t len, const char *label, struct st_file **out,
                   char *err, size_t errlen)
{
    struct st_file *f = rc_calloc(1, sizeof *f);
    if (!f)
        return rc_fail(err, errlen, RC_ENOMEM, "%s: out of memory", label);
    f->base = buf;
    f->size = len;
    return open_common(f, label, out, err, errlen);
}

int st_open(const char *path, struct st_file **out, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rc_fail(err, errlen, RC_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return rc_fail(err, errlen, RC_EIO, "%s: not a regular file", path);
    }
    struct st_file *f = rc_calloc(1, sizeof *f);
    if (!f) {
        close(fd);
        return rc_fail(err, errlen, RC_ENOMEM, "%s: out of memory", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size > 0) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            rc_free(f);
            return rc_fail(err, errlen, RC_EIO, "%s: mmap: %s", path, strerror(e));
        }
        f->base = m;
        f->mapped = 1;
    }
    close(fd);
    return open_common(f, path, out, err, errlen);
}

int st_count(const struct st_file *f) { return f->n; }
const struct st_tensor *st_at(const struct st_file *f, int i) { return &f->t[i]; }
const char *st_path(const struct st_file *f) { return f->path; }

const struct st_tensor *st_find(const struct st_file *f, const char *name)
{
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->t[mid].name);
        if (c == 0)
            return &f->t[mid];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

float st_bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float st_half_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            u = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | man << 13;
    } else {
        u = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int st_to_f32(const struct st_tensor *t, float *dst)
{
    return st_to_f32_range(t, 0, t->nelem, dst);
}

int st_to_f32_range(const struct st_tensor *t, size_t first, size_t n, float *dst)
{
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, p + first * 4, n * 4);
        return 0;
    case ST_BF16:
        p += first * 2;
        for (size_t i = 0; i < n; i++)
            dst[i] = st_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return 0;
    case ST_F16:
        p += first * 2;
        for (size_t i = 0; i < n; i++)
            dst[i] = st_half_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return 0;
    }
    return RC_EUNSUPPORTED;
}

void st_release(const struct st_file *f, const struct st_tensor *t)
{
    if (!f || !f->mapped || !t->nbytes)
        return;
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)t->data + pg - 1) & ~(uintptr_t)(pg - 1);
    uintptr_t hi = ((uintptr_t)t->data + t->nbytes) & ~(uintptr_t)(pg - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}
