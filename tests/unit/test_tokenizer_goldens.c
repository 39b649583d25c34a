/* Every id against the reference implementations' outputs in
 * tests/fixtures/tokenizer/goldens/ (written by gen_goldens.py with HF tokenizers, and
 * by gen_goldens_tiktoken.mjs with OpenAI's tiktoken). A missing golden file FAILS:
 * the goldens are produced on the GPU machine (see the fixtures README) and a test that
 * passes without them would prove nothing. The NeoX part needs RECUR_SHARED and is
 * skipped, saying so, without it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "alloc.h"
#include "pretok.h"
#include "tok_testlib.h"
#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "utf8.h"

#define GOLDEN_DIR TL_DIR "/goldens"

static json_t *load_golden(const char *file)
{
    char path[512];
    uint8_t *d;
    size_t n;
    snprintf(path, sizeof path, GOLDEN_DIR "/%s", file);
    if (tl_read(path, &d, &n))
        fail_msg("golden file %s is missing. It comes from the reference implementation and "
                 "is generated on the GPU machine: see tests/fixtures/tokenizer/README.md "
                 "(gen_goldens.py). Without it these ids are unchecked.", path);
    json_error_t je;
    json_t *g = json_loadb((const char *)d, n, JSON_ALLOW_NUL, &je);
    rc_free(d);
    if (!g)
        fail_msg("%s: %s", path, je.text);
    const char *fmt = json_string_value(json_object_get(g, "format"));
    if (!fmt || strcmp(fmt, "recurd-tokenizer-goldens/1"))
        fail_msg("%s: unknown format", path);
    return g;
}

static void print_ids(const char *label, const int32_t *ids, size_t from, size_t to)
{
    print_message("%s:", label);
    for (size_t i = from; i < to; i++)
        print_message(" %d", ids[i]);
    print_message("\n");
}

static int check_ids_json(const char *what, json_t *want, const int32_t *ids, size_t n)
{
    size_t m = json_array_size(want), i = 0;
    while (i < m && i < n && json_integer_value(json_array_get(want, i)) == ids[i])
        i++;
    if (i == m && i == n)
        return 0;
    print_message("%s: first difference at id %zu (reference %zu ids, ours %zu)\n", what, i, m, n);
    print_message("reference:");
    for (size_t k = i >= 4 ? i - 4 : 0; k < m && k < i + 8; k++)
        print_message(" %lld", (long long)json_integer_value(json_array_get(want, k)));
    print_message("\n");
    print_ids("ours     ", ids, i >= 4 ? i - 4 : 0, n < i + 8 ? n : i + 8);
    return 1;
}

/* One text: input identity, every id (block hashes), decode, round trip. */
static int check_text(const tokenizer_t *tok, const char *tname, json_t *t)
{
    const char *file = json_string_value(json_object_get(t, "file"));
    char path[512], what[256], err[256];
    snprintf(path, sizeof path, TL_DIR "/texts/%s", file);
    snprintf(what, sizeof what, "%s/%s", tname, file);
    uint8_t *s;
    size_t n;
    if (tl_read(path, &s, &n))
        fail_msg("%s: text missing", what);
    if ((json_int_t)n != json_integer_value(json_object_get(t, "input_len")) ||
        tl_crc32(s, n) != (uint32_t)json_integer_value(json_object_get(t, "input_crc32")))
        fail_msg("%s: the text differs from the one the goldens were made from (regenerate "
                 "them)", what);
    int bad = 0;
    /* The text the reference encoded: Python's errors="replace" decoding. */
    uint8_t *rep = rc_malloc(3 * n + 1);
    size_t used, rn = utf8_repair(s, n, 1, rep, &used);
    json_t *rl = json_object_get(t, "replaced_len");
    if (rl && ((json_int_t)rn != json_integer_value(rl) ||
               tl_crc32(rep, rn) != (uint32_t)json_integer_value(json_object_get(t, "replaced_crc32")))) {
        print_message("%s: our invalid-UTF-8 repair differs from Python's\n", what);
        bad = 1;
    }
    int32_t *ids;
    size_t k;
    assert_int_equal(tokenizer_encode(tok, (const char *)s, n, 0, &ids, &k, err, sizeof err), 0);
    json_int_t want_n = json_integer_value(json_object_get(t, "n_ids"));
    json_t *blocks = json_object_get(t, "blocks");
    json_t *full = json_object_get(t, "ids");
    if (full) {
        bad |= check_ids_json(what, full, ids, k);
    } else {
        size_t nb = json_array_size(blocks);
        for (size_t b = 0; b < nb; b++) {
            size_t from = b * 256, to = from + 256 < k ? from + 256 : k;
            char hex[24];
            snprintf(hex, sizeof hex, "%016llx",
                     from < k ? (unsigned long long)tl_block_hash(ids, from, to) : 0ULL);
            if (from >= k || strcmp(hex, json_string_value(json_array_get(blocks, b)))) {
                print_message("%s: ids differ in block %zu (ids %zu..%zu of %lld)\n", what, b, from,
                              from + 255, (long long)want_n);
                if (from < k) {
                    print_ids("ours", ids, from, to);
                    char *txt;
                    size_t tl;
                    if (!tokenizer_decode(tok, ids + from, to - from, 0, &txt, &tl, err, sizeof err)) {
                        print_message("text of that block: %.400s\n", txt);
                        rc_free(txt);
                    }
                }
                bad = 1;
                break;
            }
        }
    }
    if ((json_int_t)k != want_n) {
        print_message("%s: %zu ids, the reference has %lld\n", what, k, (long long)want_n);
        bad = 1;
    }
    char *dec;
    size_t dlen;
    assert_int_equal(tokenizer_decode(tok, ids, k, 0, &dec, &dlen, err, sizeof err), 0);
    if ((json_int_t)dlen != json_integer_value(json_object_get(t, "decoded_len")) ||
        tl_crc32(dec, dlen) != (uint32_t)json_integer_value(json_object_get(t, "decoded_crc32"))) {
        print_message("%s: decoded text differs from the reference's decode\n", what);
        bad = 1;
    }
    /* The reference says whether decode(encode(x)) == normalise(x); so must we. */
    struct tok_bytes nt = {0};
    struct norm_work nw = {0};
    assert_int_equal(normalizer_apply(&tok->norm, &nw, rep, rn, &nt), 0);
    int ours_rt = nt.n == dlen && !memcmp(nt.p, dec, dlen);
    if (ours_rt != json_is_true(json_object_get(t, "normalized_roundtrip"))) {
        print_message("%s: round trip %d, reference %d\n", what, ours_rt,
                      json_is_true(json_object_get(t, "normalized_roundtrip")));
        bad = 1;
    }
    tok_bytes_free(&nt);
    norm_work_free(&nw);
    rc_free(dec);
    rc_free(ids);
    rc_free(rep);
    rc_free(s);
    if (!bad)
        print_message("  ok %-26s %8lld ids\n", file, (long long)want_n);
    return bad;
}

static int check_cases(const tokenizer_t *tok, const char *tname, json_t *cases, unsigned flags)
{
    int bad = 0;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        json_t *text = json_object_get(c, "text");
        char what[160], err[256];
        snprintf(what, sizeof what, "%s case %zu%s", tname, i, flags ? " (no special)" : "");
        int32_t *ids;
        size_t k;
        assert_int_equal(tokenizer_encode(tok, json_string_value(text), json_string_length(text),
                                          flags, &ids, &k, err, sizeof err), 0);
        if (check_ids_json(what, json_object_get(c, "ids"), ids, k)) {
            print_message("  text: %.200s\n", json_string_value(text));
            bad = 1;
        }
        const char *keys[2] = {"decoded", "decoded_skip_special"};
        for (int d = 0; d < 2 && !flags; d++) {
            json_t *want = json_object_get(c, keys[d]);
            char *txt;
            size_t tl;
            if (!want)
                continue;
            assert_int_equal(tokenizer_decode(tok, ids, k, d ? TOK_DECODE_SKIP_SPECIAL : 0, &txt,
                                              &tl, err, sizeof err), 0);
            if (tl != json_string_length(want) || memcmp(txt, json_string_value(want), tl)) {
                print_message("%s: %s differs: '%.100s' vs reference '%.100s'\n", what, keys[d],
                              txt, json_string_value(want));
                bad = 1;
            }
            rc_free(txt);
        }
        rc_free(ids);
    }
    return bad;
}

static int check_doc(const tokenizer_t *tok, const char *tname, json_t *doc)
{
    int bad = 0;
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(doc, "texts"), i, t) bad |= check_text(tok, tname, t);
    bad |= check_cases(tok, tname, json_object_get(doc, "cases"), 0);
    json_t *ns = json_object_get(doc, "cases_no_special");
    if (ns)
        bad |= check_cases(tok, tname, ns, TOK_ENCODE_NO_SPECIAL);
    json_t *vs = json_object_get(doc, "vocab_size_with_added");
    if (vs && json_integer_value(vs) != tokenizer_vocab_size(tok)) {
        /* The reference counts entries; we give max id + 1. Equal unless ids have holes. */
        print_message("%s: vocab size %d, reference counts %lld entries\n", tname,
                      tokenizer_vocab_size(tok), (long long)json_integer_value(vs));
    }
    return bad;
}

static void golden_file(const char *file, const char *tok_name)
{
    json_t *g = load_golden(file);
    print_message("%s: generated with %s\n", file,
                  json_string_value(json_object_get(g, "tokenizers_version"))
                      ? json_string_value(json_object_get(g, "tokenizers_version"))
                      : json_string_value(json_object_get(g, "generator")));
    char why[600];
    int rc;
    tokenizer_t *tok = tl_load(tok_name, &rc, why, sizeof why);
    if (!tok && rc == 0) {
        json_decref(g);
        print_message("SKIPPED: %s\n", why);
        skip();
    }
    if (!tok)
        fail_msg("%s", why);
    int bad = check_doc(tok, tok_name, g);
    tokenizer_free(tok);
    json_decref(g);
    if (bad)
        fail_msg("%s: ids differ from the reference (details above)", file);
}

static void test_goldens_neox(void **unused) { golden_file("goldens-neox.json.gz", "neox"); }
static void test_goldens_gpt2(void **unused) { golden_file("goldens-gpt2.json.gz", "gpt2"); }
static void test_goldens_cl100k(void **unused) { golden_file("goldens-cl100k.json.gz", "cl100k"); }
static void test_goldens_recur(void **unused) { golden_file("goldens-recur.json.gz", "recur"); }
static void test_goldens_cl100k_tiktoken(void **unused)
{
    golden_file("goldens-cl100k-tiktoken.json.gz", "cl100k");
}

static void test_goldens_variants(void **unused)
{
    json_t *g = load_golden("goldens-variants.json.gz");
    size_t i, checked = 0;
    json_t *doc;
    int bad = 0;
    json_array_foreach(json_object_get(g, "variants"), i, doc)
    {
        const char *name = json_string_value(json_object_get(doc, "name"));
        char why[600];
        int rc;
        tokenizer_t *tok = tl_load(name, &rc, why, sizeof why);
        if (!tok && rc == 0) {
            print_message("skipped %s: %s\n", name, why);
            continue;
        }
        if (!tok)
            fail_msg("%s", why);
        print_message("%s\n", name);
        bad |= check_doc(tok, name, doc);
        tokenizer_free(tok);
        checked++;
    }
    json_decref(g);
    if (bad)
        fail_msg("variants: ids differ from the reference (details above)");
    assert_true(checked >= 15);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_goldens_cl100k_tiktoken),
        cmocka_unit_test(test_goldens_gpt2),
        cmocka_unit_test(test_goldens_cl100k),
        cmocka_unit_test(test_goldens_neox),
        cmocka_unit_test(test_goldens_recur),
        cmocka_unit_test(test_goldens_variants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
