/* core/os: random bytes are filled (two draws differ); the resident set of a
 * running process is known and grows when pages are touched, and the peak
 * (getrusage, kept by the kernel lazily) counts them too; CPU time grows
 * while the process computes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "os.h"

static void test_random_bytes(void **unused)
{
    unsigned char a[64] = {0}, b[64] = {0};
    assert_int_equal(os_random_bytes(a, sizeof a), 0);
    assert_int_equal(os_random_bytes(b, sizeof b), 0);
    assert_memory_not_equal(a, b, sizeof a);
    assert_int_equal(os_random_bytes(a, 0), 0);
}

static void test_rss(void **unused)
{
    size_t before = os_rss_bytes();
    assert_true(before > 0);
    size_t n = 64u << 20;
    volatile char *p = malloc(n);
    assert_non_null(p);
    for (size_t i = 0; i < n; i += 4096)
        p[i] = 1;
    size_t after = os_rss_bytes();
    assert_true(after >= before + n / 2);
    assert_true(os_peak_rss_bytes() >= n / 2); /* counted differently: not compared to after */
    free((void *)p);
}

static void test_cpu_seconds(void **unused)
{
    double t0 = os_cpu_seconds();
    assert_true(t0 >= 0);
    /* spin until the counter moves (its tick is at most 10 ms of CPU) */
    volatile double x = 0;
    double t1 = t0;
    for (long i = 0; i < 2000000000L && t1 <= t0; i++) {
        x += (double)i * 1e-9;
        if ((i & 0xfffff) == 0)
            t1 = os_cpu_seconds();
    }
    assert_true(t1 > t0);
    assert_true(t1 - t0 < 5.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_rss),
        cmocka_unit_test(test_cpu_seconds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
