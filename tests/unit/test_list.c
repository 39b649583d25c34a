/* core/list.h: order after pushes at either end, removal at the ends and in the
 * middle, an object on two lists at once, removal while iterating. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "list.h"

struct item {
    int v;
    struct list_node a; /* on list A */
    struct list_node b; /* on list B */
};

/* The values on l (through member a), first to last, checked both ways. */
static void expect_a(const struct list *l, const int *want, size_t n)
{
    size_t k = 0;
    LIST_FOR_EACH (struct item, it, l, a) {
        assert_true(k < n);
        assert_int_equal(it->v, want[k]);
        k++;
    }
    assert_int_equal(k, n);
    for (const struct list_node *x = l->last; x; x = x->prev) {
        assert_true(k > 0);
        assert_int_equal(LIST_ENTRY(x, struct item, a)->v, want[--k]);
    }
    assert_int_equal(k, 0);
    assert_int_equal(list_empty(l), n == 0);
}

static void test_push_and_remove(void **unused)
{
    struct item it[5] = {{.v = 0}, {.v = 1}, {.v = 2}, {.v = 3}, {.v = 4}};
    struct list l = {0}; /* zeroed is empty */
    expect_a(&l, NULL, 0);
    assert_null(LIST_FIRST(&l, struct item, a));
    list_push_back(&l, &it[1].a);
    list_push_back(&l, &it[2].a);
    list_push_front(&l, &it[0].a);
    list_push_back(&l, &it[3].a);
    expect_a(&l, (int[]){0, 1, 2, 3}, 4);
    list_remove(&l, &it[2].a); /* middle */
    assert_null(it[2].a.prev);
    assert_null(it[2].a.next);
    expect_a(&l, (int[]){0, 1, 3}, 3);
    list_remove(&l, &it[0].a); /* first */
    expect_a(&l, (int[]){1, 3}, 2);
    list_remove(&l, &it[3].a); /* last */
    expect_a(&l, (int[]){1}, 1);
    assert_null(LIST_NEXT(&it[1], struct item, a));
    list_remove(&l, &it[1].a); /* only */
    expect_a(&l, NULL, 0);
    list_push_front(&l, &it[4].a); /* an emptied list is usable again */
    expect_a(&l, (int[]){4}, 1);
}

static void test_two_lists(void **unused)
{
    struct item it[3] = {{.v = 0}, {.v = 1}, {.v = 2}};
    struct list la = {0}, lb = {0};
    for (int i = 0; i < 3; i++) {
        list_push_back(&la, &it[i].a);
        list_push_front(&lb, &it[i].b);
    }
    list_remove(&lb, &it[1].b);
    expect_a(&la, (int[]){0, 1, 2}, 3);
    int want[] = {2, 0}, k = 0;
    LIST_FOR_EACH (struct item, x, &lb, b)
        assert_int_equal(x->v, want[k++]);
    assert_int_equal(k, 2);
}

static void test_remove_while_iterating(void **unused)
{
    struct item it[6];
    struct list l = {0};
    for (int i = 0; i < 6; i++) {
        it[i] = (struct item){.v = i};
        list_push_back(&l, &it[i].a);
    }
    LIST_FOR_EACH_SAFE (struct item, x, &l, a)
        if (x->v % 2 == 0)
            list_remove(&l, &x->a);
    expect_a(&l, (int[]){1, 3, 5}, 3);
    LIST_FOR_EACH_SAFE (struct item, x, &l, a)
        list_remove(&l, &x->a);
    expect_a(&l, NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_push_and_remove),
        cmocka_unit_test(test_two_lists),
        cmocka_unit_test(test_remove_while_iterating),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
