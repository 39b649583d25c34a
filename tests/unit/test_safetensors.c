/*
 * safetensors reader: every structural rule, each with a file that breaks
 * it (docs/reliability.md B8), plus dtype conversion.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "errors.h"
#include "safetensors.h"

static char err[1024];
static uint8_t img[1 << 16];

/* Build header-length + header + n data bytes (value i & 0xff). */
static size_t build(const char *header, size_t ndata)
{
    size_t hl = strlen(header);
    for (int i = 0; i < 8; i++)
        img[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(img + 8, header, hl);
    for (size_t i = 0; i < ndata; i++)
        img[8 + hl + i] = (uint8_t)i;
    return 8 + hl + ndata;
}

static int open_img(size_t len)
{
    struct st_file *f = NULL;
    err[0] = 0;
    int rc = st_open_buffer(img, len, "t.safetensors", &f, err, sizeof err);
    st_close(f);
    return rc;
}

#define EXPECT_BAD(len, needle)                                                                   \
    do {                                                                                          \
        int rc_ = open_img(len);                                                                  \
        assert_int_equal(rc_, RC_EFORMAT);                                                        \
        if (!strstr(err, needle))                                                                 \
            fail_msg("message '%s' lacks '%s'", err, needle);                                     \
        assert_non_null(strstr(err, "t.safetensors"));                                            \
    } while (0)

static const char *GOOD = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                          "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},"
                          "\"__metadata__\":{\"format\":\"pt\"}}";

static void good_file(void **u)
{
    size_t n = build(GOOD, 22);
    struct st_file *f;
    assert_int_equal(st_open_buffer(img, n, "t", &f, err, sizeof err), 0);
    assert_int_equal(st_count(f), 2);
    const struct st_tensor *a = st_find(f, "a"), *b = st_find(f, "b");
    assert_non_null(a);
    assert_non_null(b);
    assert_null(st_find(f, "c"));
    assert_int_equal(a->nelem, 4);
    assert_int_equal(b->nbytes, 6);
    assert_int_equal(b->dtype, ST_BF16);
    st_close(f);
}

static void too_short(void **u)
{
    memset(img, 0, 8);
    EXPECT_BAD(0, "too short");
    EXPECT_BAD(7, "too short");
}

static void header_len_zero(void **u)
{
    memset(img, 0, 16);
    EXPECT_BAD(16, "header length is 0");
}

static void header_len_past_end(void **u)
{
    size_t n = build(GOOD, 22);
    img[0] += 100; /* claims 100 more header bytes than the file has */
    EXPECT_BAD(n, "past the end");
}

static void header_len_over_cap(void **u)
{
    size_t n = build(GOOD, 22);
    uint64_t big = (uint64_t)ST_MAX_HEADER + 1;
    for (int i = 0; i < 8; i++)
        img[i] = (uint8_t)(big >> (8 * i));
    EXPECT_BAD(n, "cap");
    for (int i = 0; i < 8; i++)
        img[i] = 0xff; /* 2^64 - 1: no overflow in the size check */
    EXPECT_BAD(n, "cap");
}

static void not_object(void **u)
{
    EXPECT_BAD(build("[1,2]   ", 0), "does not start with '{'");
    EXPECT_BAD(build(" {}", 0), "does not start with '{'");
    EXPECT_BAD(build("{\"a\":1", 0), "JSON invalid");
}

static void invalid_utf8(void **u)
{
    EXPECT_BAD(build("{\"\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0),
               "JSON invalid");
}

static void duplicate_names(void **u)
{
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                     8),
               "JSON invalid");
}

static void unknown_dtype(void **u)
{
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
               "unknown dtype");
    EXPECT_BAD(build("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "dtype");
}

static void bad_shapes(void **u)
{
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4),
               "shape[0]");
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4),
               "shape[0]");
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                     "\"data_offsets\":[0,4]}}",
                     4),
               "at most 8 dims");
    /* product overflows size_t */
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                     "\"data_offsets\":[0,4]}}",
                     4),
               "overflows");
    /* element count fits but bytes overflow */
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                     "\"data_offsets\":[0,4]}}",
                     4),
               "overflows");
}

static void size_mismatch(void **u)
{
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4),
               "needs 8");
}

static void offsets_out_of_file(void **u)
{
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4),
               "outside");
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8),
               "outside");
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4),
               "two non-negative");
}

static void overlapping(void **u)
{
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                     12),
               "overlaps");
}

static void gap_and_trailing(void **u)
{
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8),
               "gap");
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 9),
               "trailing");
}

static void truncated_every_length(void **u)
{
    /* SQLite-style countdown over the length: every prefix of a valid file
     * is rejected cleanly. */
    size_t n = build(GOOD, 22);
    for (size_t len = 0; len < n; len++)
        assert_int_not_equal(open_img(len), 0);
    assert_int_equal(open_img(n), 0);
}

static void unknown_entry_fields(void **u)
{
    EXPECT_BAD(build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4),
               "unknown field");
    EXPECT_BAD(build("{\"__metadata__\":{\"k\":1}}", 0), "not a string");
}

static void conversions(void **u)
{
    /* bf16 and fp16 encodings of 1.0, -2.5, 65504 (fp16 max), a subnormal */
    assert_true(st_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(st_bf16_to_f32(0xc020) == -2.5f);
    assert_true(st_half_to_f32(0x3c00) == 1.0f);
    assert_true(st_half_to_f32(0xc100) == -2.5f);
    assert_true(st_half_to_f32(0x7bff) == 65504.0f);
    assert_true(st_half_to_f32(0x0001) == 5.9604644775390625e-08f);
    assert_true(st_half_to_f32(0x8000) == -0.0f);
    float inf = st_half_to_f32(0x7c00);
    assert_true(inf > 1e38f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(good_file),        cmocka_unit_test(too_short),
        cmocka_unit_test(header_len_zero),  cmocka_unit_test(header_len_past_end),
        cmocka_unit_test(header_len_over_cap), cmocka_unit_test(not_object),
        cmocka_unit_test(invalid_utf8),     cmocka_unit_test(duplicate_names),
        cmocka_unit_test(unknown_dtype),    cmocka_unit_test(bad_shapes),
        cmocka_unit_test(size_mismatch),    cmocka_unit_test(offsets_out_of_file),
        cmocka_unit_test(overlapping),      cmocka_unit_test(gap_and_trailing),
        cmocka_unit_test(truncated_every_length), cmocka_unit_test(unknown_entry_fields),
        cmocka_unit_test(conversions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
