#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "alloc.h"

static void test_countdown_fails_nth(void **unused)
{
    rc_alloc_fail_after(3, 0);
    void *a = rc_malloc(10), *b = rc_malloc(10), *c = rc_malloc(10), *d = rc_malloc(10);
    assert_non_null(a);
    assert_non_null(b);
    assert_null(c);     /* the third fails */
    assert_non_null(d); /* transient: the fourth works again */
    assert_int_equal(rc_alloc_injected(), 1);
    rc_free(a), rc_free(b), rc_free(d);
    rc_alloc_fail_after(0, 0);
}

static void test_persistent(void **unused)
{
    rc_alloc_fail_after(1, 1);
    assert_null(rc_malloc(1));
    assert_null(rc_calloc(1, 1));
    assert_null(rc_aligned_alloc(64));
    rc_alloc_fail_after(0, 0);
    void *p = rc_malloc(1);
    assert_non_null(p);
    rc_free(p);
}

static void test_cap_and_accounting(void **unused)
{
    size_t base = rc_alloc_live_bytes();
    void *p = rc_malloc(1 << 20);
    assert_true(rc_alloc_live_bytes() >= base + (1 << 20));
    rc_alloc_set_cap(rc_alloc_live_bytes() + 1000);
    assert_null(rc_malloc(1 << 20));
    void *small = rc_malloc(100);
    assert_non_null(small);
    rc_alloc_set_cap(0);
    rc_free(p);
    rc_free(small);
    assert_int_equal(rc_alloc_live_bytes(), base);
}

static void test_calloc_overflow(void **unused)
{
    assert_null(rc_calloc(SIZE_MAX / 2, 3));
    rc_free(NULL); /* no-op */
}

static void test_aligned(void **unused)
{
    void *p = rc_aligned_alloc(1000);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 64, 0);
    rc_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_countdown_fails_nth), cmocka_unit_test(test_persistent),
        cmocka_unit_test(test_cap_and_accounting), cmocka_unit_test(test_calloc_overflow),
        cmocka_unit_test(test_aligned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
