/*
 * cpus.c: the CPU quota read from cgroup fixture trees (v1 and v2, nested,
 * namespaced, unlimited, garbage) and the automatic thread count that
 * follows from the affinity mask and the quota.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

#include "cpus.h"

static double quota_of(const char *name)
{
    char root[512], proc[512];
    snprintf(root, sizeof root, "%s/cgroup/%s/fs", RECUR_FIXTURES, name);
    snprintf(proc, sizeof proc, "%s/cgroup/%s/proc_cgroup", RECUR_FIXTURES, name);
    return cpu_quota_read(root, proc);
}

static void test_v2_quota(void **st)
{
    (void)st;
    assert_true(fabs(quota_of("v2-limited") - 2.0) < 1e-9);
    /* the parent's 1.5 CPUs bind an unlimited leaf */
    assert_true(fabs(quota_of("v2-nested") - 1.5) < 1e-9);
    /* cgroup namespace: the process's cgroup is the mount's root */
    assert_true(fabs(quota_of("v2-namespaced") - 0.5) < 1e-9);
    assert_true(quota_of("v2-unlimited") == 0);
    assert_true(quota_of("v2-garbage") == 0);
}

static void test_v1_quota(void **st)
{
    (void)st;
    assert_true(fabs(quota_of("v1-limited") - 4.0) < 1e-9);
    assert_true(fabs(quota_of("v1-namespaced") - 2.5) < 1e-9);
    assert_true(quota_of("v1-unlimited") == 0);
}

static void test_missing_files_are_no_limit(void **st)
{
    (void)st;
    assert_true(quota_of("no-such-fixture") == 0);
    assert_true(cpu_quota_read(NULL, NULL) == 0);
}

static void test_threads_for(void **st)
{
    (void)st;
    /* a container limited to 2 CPUs on a 64-core node: 2 threads */
    assert_int_equal(cpu_threads_for(64, 2.0), 2);
    /* a fractional quota rounds up: 1.5 CPUs of time keep 2 threads busy part-time */
    assert_int_equal(cpu_threads_for(64, 1.5), 2);
    assert_int_equal(cpu_threads_for(64, 0.5), 1);
    /* no quota: the affinity mask */
    assert_int_equal(cpu_threads_for(3, 0), 3);
    /* the mask is smaller than the quota */
    assert_int_equal(cpu_threads_for(1, 4.0), 1);
    /* unknowns: at least one thread, at most CPU_MAX_THREADS */
    assert_int_equal(cpu_threads_for(0, 0), 1);
    assert_int_equal(cpu_threads_for(1000, 0), CPU_MAX_THREADS);
}

static void test_limits_read(void **st)
{
    (void)st;
    char root[512], proc[512];
    snprintf(root, sizeof root, "%s/cgroup/v2-limited/fs", RECUR_FIXTURES);
    snprintf(proc, sizeof proc, "%s/cgroup/v2-limited/proc_cgroup", RECUR_FIXTURES);
    struct cpu_limits l;
    cpu_limits_read(root, proc, &l);
    assert_true(l.affinity >= 1);
    assert_true(fabs(l.quota - 2.0) < 1e-9);
    assert_int_equal(l.threads, cpu_threads_for(l.affinity, 2.0));
    assert_true(l.threads <= 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v2_quota),
        cmocka_unit_test(test_v1_quota),
        cmocka_unit_test(test_missing_files_are_no_limit),
        cmocka_unit_test(test_threads_for),
        cmocka_unit_test(test_limits_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
