/* server/stopscan: stop sequences across token pieces, several stops,
 * partial matches held back, UTF-8 characters never split. Each case
 * feeds the text piece by piece, as the scheduler does, streaming what
 * stop_scan allows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "stopscan.h"

struct run {
    char text[256];
    size_t n, emitted;
    char streamed[256]; /* what went out, in order */
    size_t ns;
    int stopped;
};

/* Append a piece and scan, streaming what may go. */
static void feed(struct run *r, const struct stop_list *st, const char *piece)
{
    size_t pl = strlen(piece);
    memcpy(r->text + r->n, piece, pl);
    r->n += pl;
    size_t end;
    r->stopped = stop_scan(r->text, r->n, r->emitted, st, &end);
    if (r->stopped)
        r->n = end;
    assert_true(end >= r->emitted && end <= r->n);
    memcpy(r->streamed + r->ns, r->text + r->emitted, end - r->emitted);
    r->ns += end - r->emitted;
    r->emitted = end;
    r->streamed[r->ns] = 0;
}

static struct stop_list stops_of(char **s, size_t *len, int n)
{
    for (int i = 0; i < n; i++)
        len[i] = strlen(s[i]);
    return (struct stop_list){s, len, n};
}

static void test_no_stops_streams_everything(void **u)
{
    (void)u;
    struct stop_list st = {NULL, NULL, 0};
    struct run r = {0};
    feed(&r, &st, "hello ");
    feed(&r, &st, "world");
    assert_false(r.stopped);
    assert_string_equal(r.streamed, "hello world");
}

static void test_stop_across_pieces(void **u)
{
    (void)u;
    char *s[] = {"END"};
    size_t len[1];
    struct stop_list st = stops_of(s, len, 1);
    struct run r = {0};
    feed(&r, &st, "abc E");
    assert_false(r.stopped);
    assert_string_equal(r.streamed, "abc "); /* "E" may start END: held */
    feed(&r, &st, "N");
    assert_false(r.stopped);
    assert_string_equal(r.streamed, "abc ");
    feed(&r, &st, "Dxyz");
    assert_true(r.stopped);
    assert_int_equal(r.n, 4); /* cut where END starts */
    assert_string_equal(r.streamed, "abc ");
}

static void test_partial_match_released(void **u)
{
    (void)u;
    char *s[] = {"END"};
    size_t len[1];
    struct stop_list st = stops_of(s, len, 1);
    struct run r = {0};
    feed(&r, &st, "EN");
    assert_string_equal(r.streamed, "");
    feed(&r, &st, "d");
    assert_false(r.stopped);
    assert_string_equal(r.streamed, "ENd"); /* not a stop after all: all goes */
    /* a held prefix that is also later part of a match */
    feed(&r, &st, "EEN");
    assert_string_equal(r.streamed, "ENdE");
    feed(&r, &st, "D");
    assert_true(r.stopped);
    assert_string_equal(r.streamed, "ENdE");
    assert_int_equal(r.n, 4);
}

static void test_earliest_of_several(void **u)
{
    (void)u;
    char *s[] = {"zz", "\n\n", "b"};
    size_t len[3];
    struct stop_list st = stops_of(s, len, 3);
    struct run r = {0};
    feed(&r, &st, "a\n\nbzz"); /* all three match: the earliest wins */
    assert_true(r.stopped);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.streamed, "a");
    /* the longest possible prefix is held, over all stops */
    char *s2[] = {"xy", "wxyz"};
    size_t len2[2];
    struct stop_list st2 = stops_of(s2, len2, 2);
    struct run r2 = {0};
    feed(&r2, &st2, "awxy"); /* "xy" matches at 2, "wxy" only a prefix */
    assert_true(r2.stopped);
    assert_string_equal(r2.streamed, "aw");
    struct run r3 = {0};
    feed(&r3, &st2, "awx");
    assert_false(r3.stopped);
    assert_string_equal(r3.streamed, "a"); /* "wx" may become wxyz */
}

static void test_match_only_after_emitted(void **u)
{
    (void)u;
    char *s[] = {"ab"};
    size_t len[1];
    struct stop_list st = stops_of(s, len, 1);
    /* "ab" sits inside text already streamed: it is not looked for there */
    size_t end;
    assert_int_equal(stop_scan("xabyz", 5, 3, &st, &end), 0);
    assert_int_equal(end, 5);
    assert_int_equal(stop_scan("xabyab", 6, 3, &st, &end), 1);
    assert_int_equal(end, 4);
}

static void test_utf8_pieces_never_split(void **u)
{
    (void)u;
    struct stop_list st = {NULL, NULL, 0};
    struct run r = {0};
    /* "é" (C3 A9) and "€" (E2 82 AC) arrive in separate byte pieces */
    feed(&r, &st, "caf\xC3");
    assert_string_equal(r.streamed, "caf");
    feed(&r, &st, "\xA9 \xE2\x82");
    assert_string_equal(r.streamed, "caf\xC3\xA9 ");
    feed(&r, &st, "\xAC!");
    assert_string_equal(r.streamed, "caf\xC3\xA9 \xE2\x82\xAC!");
    /* a multi-byte stop sequence split across pieces */
    char *s[] = {"\xE2\x82\xAC"};
    size_t len[1];
    struct stop_list st2 = stops_of(s, len, 1);
    struct run r2 = {0};
    feed(&r2, &st2, "1\xE2");
    assert_string_equal(r2.streamed, "1");
    feed(&r2, &st2, "\x82\xAC" "2");
    assert_true(r2.stopped);
    assert_int_equal(r2.n, 1);
    assert_string_equal(r2.streamed, "1");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_stops_streams_everything),
        cmocka_unit_test(test_stop_across_pieces),
        cmocka_unit_test(test_partial_match_released),
        cmocka_unit_test(test_earliest_of_several),
        cmocka_unit_test(test_match_only_after_emitted),
        cmocka_unit_test(test_utf8_pieces_never_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
