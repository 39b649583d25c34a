/* UTF-8 repair against Python's bytes.decode("utf-8", errors="replace")
 * (tests/fixtures/tokenizer/utf8_replace.txt.gz, 110k vectors), in one piece and
 * streamed at every split point. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "alloc.h"
#include "tok_testlib.h"
#include "utf8.h"

static size_t unhex(const char *s, size_t n, uint8_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i + 1 < n; i += 2) {
        int hi = s[i] <= '9' ? s[i] - '0' : s[i] - 'a' + 10;
        int lo = s[i + 1] <= '9' ? s[i + 1] - '0' : s[i + 1] - 'a' + 10;
        out[k++] = (uint8_t)(hi * 16 + lo);
    }
    return k;
}

/* Repair by feeding s in two parts cut at `cut`, carrying the unconsumed tail. */
static size_t repair_split(const uint8_t *s, size_t n, size_t cut, uint8_t *out)
{
    uint8_t buf[512];
    size_t used, o = utf8_repair(s, cut, 0, out, &used);
    size_t tail = cut - used;
    memcpy(buf, s + used, tail);
    memcpy(buf + tail, s + cut, n - cut);
    o += utf8_repair(buf, tail + n - cut, 1, out + o, &used);
    return o;
}

static void test_python_vectors(void **unused)
{
    uint8_t *data;
    size_t len;
    assert_int_equal(tl_read(TL_DIR "/utf8_replace.txt.gz", &data, &len), 0);
    char *line = (char *)data, *end = (char *)data + len;
    size_t count = 0, bad = 0;
    while (line < end) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl)
            nl = end;
        if (*line != '#') {
            char *sp = memchr(line, ' ', (size_t)(nl - line));
            assert_non_null(sp);
            uint8_t in[256], want[768], got[768], got2[768];
            size_t n = unhex(line, (size_t)(sp - line), in);
            size_t m = unhex(sp + 1, (size_t)(nl - sp - 1), want);
            size_t used, k = utf8_repair(in, n, 1, got, &used);
            assert_int_equal(used, n);
            if (k != m || memcmp(got, want, m)) {
                if (bad++ < 10)
                    fprintf(stderr, "mismatch for %.*s\n", (int)(sp - line), line);
            }
            assert_int_equal(utf8_valid(got, k), 1);
            assert_int_equal(utf8_valid(in, n), k == n && !memcmp(in, got, n));
            for (size_t cut = 0; cut <= n; cut++) {
                size_t k2 = repair_split(in, n, cut, got2);
                if (k2 != m || memcmp(got2, want, m)) {
                    if (bad++ < 10)
                        fprintf(stderr, "split mismatch for %.*s at %zu\n", (int)(sp - line),
                                line, cut);
                }
            }
            count++;
        }
        line = nl + 1;
    }
    rc_free(data);
    fprintf(stderr, "%zu vectors\n", count);
    assert_true(count > 100000);
    assert_int_equal(bad, 0);
}

static void test_incomplete_is_held(void **unused)
{
    uint8_t out[32];
    size_t used;
    /* A valid prefix at the end is kept for later unless final. */
    assert_int_equal(utf8_repair((const uint8_t *)"a\xe2\x82", 3, 0, out, &used), 1);
    assert_int_equal(used, 1);
    assert_int_equal(utf8_repair((const uint8_t *)"a\xe2\x82", 3, 1, out, &used), 4);
    assert_memory_equal(out, "a" UTF8_REPLACEMENT, 4);
    /* An invalid byte is decided at once. */
    assert_int_equal(utf8_repair((const uint8_t *)"a\xff", 2, 0, out, &used), 4);
    assert_int_equal(used, 2);
    assert_int_equal(utf8_char_len((const uint8_t *)"\xf0\x9f\x98", 3), 0);
    assert_int_equal(utf8_char_len((const uint8_t *)"\xed\xa0\x80", 3), -1);
    assert_int_equal(utf8_char_len((const uint8_t *)"\xf0\x9f\x98\x80", 4), 4);
}

/* The text-sending helpers (moved from test_proto.c with proto/u8.c): validity,
 * where a stream can be cut, bounded repair into a C string. */
static void test_text_helpers(void **u)
{
    assert_true(utf8_valid((const uint8_t *)"h\xc3\xa9llo \xf0\x9f\x98\x80", 11));
    assert_false(utf8_valid((const uint8_t *)"\xc0\x80", 2));         /* overlong NUL */
    assert_false(utf8_valid((const uint8_t *)"\xed\xa0\x80", 3));     /* surrogate */
    assert_false(utf8_valid((const uint8_t *)"\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    assert_false(utf8_valid((const uint8_t *)"\xe2\x82", 2));         /* incomplete */
    /* an emoji cut after 1..3 bytes is held back */
    const uint8_t *smile = (const uint8_t *)"ab\xf0\x9f\x98\x80";
    for (size_t cut = 3; cut < 6; cut++)
        assert_int_equal(utf8_complete_prefix(smile, cut), 2);
    assert_int_equal(utf8_complete_prefix(smile, 6), 6);
    /* an invalid byte is not held back (it will never complete) */
    assert_int_equal(utf8_complete_prefix((const uint8_t *)"a\xff", 2), 2);
    char out[32];
    size_t n = utf8_repair_str((const uint8_t *)"a\xffz\xe2\x82", 5, out, sizeof out);
    assert_int_equal(n, 1 + 3 + 1 + 3);
    assert_memory_equal(out, "a\xef\xbf\xbdz\xef\xbf\xbd", n);
    assert_true(utf8_valid((const uint8_t *)out, n));
    /* one U+FFFD per maximal subpart: two stray continuation bytes are
     * two, a lead with one good continuation then a break is one */
    n = utf8_repair_str((const uint8_t *)"\x80\x80", 2, out, sizeof out);
    assert_int_equal(n, 6);
    n = utf8_repair_str((const uint8_t *)"\xe2\x82(", 3, out, sizeof out);
    assert_int_equal(n, 4);
    /* streaming: sanitising complete-prefix pieces equals the whole */
    unsigned char rnd[4096];
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < sizeof rnd; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        rnd[i] = (unsigned char)(x % 5 == 0 ? 'a' : x >> 24);
    }
    static char whole[16384], pieces[16384];
    size_t wn = utf8_repair_str(rnd, sizeof rnd, whole, sizeof whole), pn = 0, done = 0;
    for (size_t end = 1; end <= sizeof rnd; end += 1 + (end % 3)) {
        size_t cut = done + utf8_complete_prefix(rnd + done, end - done);
        pn += utf8_repair_str(rnd + done, cut - done, pieces + pn, sizeof pieces - pn);
        done = cut;
    }
    pn += utf8_repair_str(rnd + done, sizeof rnd - done, pieces + pn, sizeof pieces - pn);
    assert_int_equal(pn, wn);
    assert_memory_equal(pieces, whole, wn);
}


/* utf8_repaired_len() is what utf8_repair_str() writes; utf8_repair_dup() the same
 * bytes; a short buffer stops before a character that does not fit. */
static void test_repair_sizes(void **unused)
{
    const uint8_t *s = (const uint8_t *)"a\xffz\xe2\x82\xac\xe2\x82";
    assert_int_equal(utf8_repaired_len(s, 8), 1 + 3 + 1 + 3 + 3);
    size_t len = 0;
    char *d = utf8_repair_dup(s, 8, &len);
    assert_non_null(d);
    assert_int_equal(len, 11);
    assert_memory_equal(d, "a" UTF8_REPLACEMENT "z\xe2\x82\xac" UTF8_REPLACEMENT, 12);
    rc_free(d);
    char small[6];
    assert_int_equal(utf8_repair_str(s, 8, small, sizeof small), 5);
    assert_string_equal(small, "a" UTF8_REPLACEMENT "z");
    assert_int_equal(utf8_repair_str(s, 8, small, 1), 0);
    assert_int_equal(small[0], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_vectors),
        cmocka_unit_test(test_incomplete_is_held),
        cmocka_unit_test(test_text_helpers),
        cmocka_unit_test(test_repair_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
