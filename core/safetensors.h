/*
 * safetensors.h — read a .safetensors file without trusting it.
 *
 * Format: u64 little-endian header length N, then N bytes of JSON
 *   {"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [b, e]}, ...,
 *    "__metadata__": {"k": "v"}}
 * then the data section; offsets are relative to byte 8 + N.
 *
 * Checks (each failure names the file, the tensor and the reason):
 *   file >= 8 bytes; N <= ST_MAX_HEADER and 8 + N <= file size; header is a
 *   JSON object (starts with '{', valid UTF-8, no duplicate names); every
 *   entry has a known dtype, a shape of at most ST_MAX_DIMS non-negative
 *   dims whose product times the dtype size does not overflow and equals
 *   e - b; b <= e; sorted by b the tensors tile the data section exactly
 *   (first b == 0, each b == previous e, last e == data size) so no two
 *   overlap and no byte is unaccounted for.
 *
 * The file is mapped read-only; tensor data pointers point into the map and
 * stay valid until st_close(). Nothing is read from the data section here.
 */
#ifndef RECUR_SAFETENSORS_H
#define RECUR_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_HEADER (100u << 20) /* 100 MiB: real headers are < 1 MiB */
#define ST_MAX_DIMS 8

enum st_dtype {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32,
    ST_F32, ST_I64, ST_U64, ST_F64, ST_F8_E4M3, ST_F8_E5M2, ST_NDTYPES
};

struct st_tensor {
    const char *name;           /* NUL-terminated, owned by the file */
    int dtype;                  /* enum st_dtype */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nelem;
    size_t nbytes;
    const void *data;           /* into the mapping; may be unaligned */
};

struct st_file;

/* Map and validate path. */
int st_open(const char *path, struct st_file **out, char *err, size_t errlen);

/* Validate an in-memory image (same checks; used by the fuzz target and
 * tests). buf must outlive the returned handle; label names it in errors. */
int st_open_buffer(const void *buf, size_t len, const char *label, struct st_file **out,
                   char *err, size_t errlen);

void st_close(struct st_file *f);

int st_count(const struct st_file *f);
const struct st_tensor *st_at(const struct st_file *f, int i);
/* NULL if absent. */
const struct st_tensor *st_find(const struct st_file *f, const char *name);
const char *st_path(const struct st_file *f);

const char *st_dtype_name(int dtype);
size_t st_dtype_size(int dtype);

/* Convert n elements of an F32/F16/BF16 tensor's data to fp32 (unaligned
 * source is fine). Returns RC_EUNSUPPORTED for other dtypes. */
int st_to_f32(const struct st_tensor *t, float *dst);
/* Elements [first, first + n) only (the caller keeps them in the tensor). */
int st_to_f32_range(const struct st_tensor *t, size_t first, size_t n, float *dst);

/* Done with t's data: for a mapped file, drop its pages from this process's
 * memory (they are read again from the file if touched). f may be NULL. */
void st_release(const struct st_file *f, const struct st_tensor *t);

/* fp16/bf16 bit patterns to float. */
float st_half_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t b);

#endif
