/* Tokenizer API: known reference ids, facts, decoding, the byte-level fallback,
 * round trips. Golden comparisons are in test_tokenizer_goldens.c, streaming in
 * test_tokenizer_stream.c, hostile input in test_tokenizer_bad.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "alloc.h"
#include "errors.h"
#include "pretok.h"
#include "tok_testlib.h"
#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "utf8.h"

static tokenizer_t *load_or_skip(const char *name)
{
    char why[600];
    int rc;
    tokenizer_t *tok = tl_load(name, &rc, why, sizeof why);
    if (!tok && rc == 0) {
        print_message("SKIPPED: %s\n", why);
        skip();
    }
    if (!tok)
        fail_msg("%s", why);
    return tok;
}

static void expect_ids(const tokenizer_t *tok, const char *text, const int32_t *want, size_t n)
{
    int32_t *ids;
    size_t got;
    char err[256];
    assert_int_equal(tokenizer_encode(tok, text, strlen(text), 0, &ids, &got, err, sizeof err), 0);
    if (got != n || memcmp(ids, want, n * sizeof *ids)) {
        for (size_t i = 0; i < got; i++)
            print_message("%d ", ids[i]);
        print_message("<- got for '%s'\n", text);
        fail();
    }
    rc_free(ids);
}

/* The published reference: GPT-NeoX "Hello world!" -> [12092, 1533, 2]. */
static void test_neox_known(void **unused)
{
    tokenizer_t *tok = load_or_skip("neox");
    expect_ids(tok, "Hello world!", (const int32_t[]){12092, 1533, 2}, 3);
    assert_int_equal(tokenizer_vocab_size(tok), 50277);
    assert_int_equal(tokenizer_eos_id(tok), 0);
    assert_int_equal(tokenizer_is_special(tok, 0), 1);
    assert_int_equal(tokenizer_is_special(tok, 1), 1);
    assert_int_equal(tokenizer_is_special(tok, 50276), 0); /* whitespace run tokens */
    assert_int_equal(tokenizer_find_token(tok, "<|endoftext|>", 13), 0);
    assert_int_equal(tokenizer_find_token(tok, "Hello", 5), 12092);
    assert_int_equal(tokenizer_find_token(tok, " world", 6), 1533);
    assert_int_equal(tokenizer_find_token(tok, "no such token at all", 20), -1);
    const char *b;
    size_t n;
    assert_int_equal(tokenizer_token_bytes(tok, 1533, &b, &n), 0);
    assert_int_equal(n, 6);
    assert_memory_equal(b, " world", 6);
    assert_int_equal(tokenizer_token_bytes(tok, 50254, &b, &n), 0);
    assert_int_equal(n, 24); /* 24 spaces */
    assert_int_equal(tokenizer_token_bytes(tok, 50277, &b, &n), RC_EINVAL);
    assert_int_equal(tokenizer_token_bytes(tok, -1, &b, &n), RC_EINVAL);
    /* Added whitespace tokens win over BPE, longest first. */
    expect_ids(tok, "a" "                         " "b", (const int32_t[]){66, 50254, 270}, 3);
    print_message("%s\n", tokenizer_describe(tok));
    tokenizer_free(tok);
}

/* Our own model's tokenizer against the ids HF tokenizers 0.23.2 gave when it was
 * trained (tests/fixtures/tokenizer/recur-sp/cases.json, from train/). */
static void test_recur_sp_reference(void **unused)
{
    tokenizer_t *tok = load_or_skip("recur");
    uint8_t *d;
    size_t n;
    assert_int_equal(tl_read(TL_DIR "/recur-sp/cases.json", &d, &n), 0);
    json_t *doc = json_loadb((const char *)d, n, JSON_ALLOW_NUL, NULL);
    rc_free(d);
    assert_non_null(doc);
    assert_false(json_is_true(json_object_get(doc, "mock")));
    size_t i, bad = 0;
    json_t *c;
    json_array_foreach(json_object_get(doc, "cases"), i, c)
    {
        json_t *text = json_object_get(c, "text"), *want = json_object_get(c, "ids");
        int32_t *ids;
        size_t k;
        char err[256], *txt;
        size_t tl;
        assert_int_equal(tokenizer_encode(tok, json_string_value(text), json_string_length(text), 0,
                                          &ids, &k, err, sizeof err), 0);
        int same = k == json_array_size(want);
        for (size_t j = 0; same && j < k; j++)
            same = ids[j] == json_integer_value(json_array_get(want, j));
        assert_int_equal(tokenizer_decode(tok, ids, k, 0, &txt, &tl, err, sizeof err), 0);
        json_t *dec = json_object_get(c, "decoded");
        if (dec && (tl != json_string_length(dec) || memcmp(txt, json_string_value(dec), tl)))
            same = 0;
        if (!same) {
            print_message("case %zu differs: %.100s\n", i, json_string_value(text));
            bad++;
        }
        rc_free(txt);
        rc_free(ids);
    }
    print_message("%zu cases from %s\n", i, json_string_value(json_object_get(doc, "reference")));
    assert_true(i >= 10);
    assert_int_equal(bad, 0);
    json_decref(doc);
    tokenizer_free(tok);
}

/* GPT-2 and cl100k reference ids (OpenAI's published encodings). */
static void test_gpt2_cl100k_known(void **unused)
{
    tokenizer_t *g = load_or_skip("gpt2");
    expect_ids(g, "Hello world!", (const int32_t[]){15496, 995, 0}, 3);
    expect_ids(g, "<|endoftext|>", (const int32_t[]){50256}, 1);
    assert_int_equal(tokenizer_eos_id(g), 50256);
    assert_int_equal(tokenizer_vocab_size(g), 50257);
    tokenizer_free(g);
    tokenizer_t *c = load_or_skip("cl100k");
    expect_ids(c, "Hello world!", (const int32_t[]){9906, 1917, 0}, 3);
    expect_ids(c, "<|endoftext|>", (const int32_t[]){100257}, 1);
    assert_int_equal(tokenizer_vocab_size(c), 100277);
    tokenizer_free(c);
}

static void test_no_special_flag(void **unused)
{
    tokenizer_t *g = load_or_skip("gpt2");
    const char *t = "a<|endoftext|>b";
    int32_t *ids;
    size_t n;
    char err[256], *txt;
    size_t len;
    assert_int_equal(tokenizer_encode(g, t, strlen(t), TOK_ENCODE_NO_SPECIAL, &ids, &n, err,
                                      sizeof err), 0);
    assert_true(n > 3);
    for (size_t i = 0; i < n; i++)
        assert_int_not_equal(ids[i], 50256);
    assert_int_equal(tokenizer_decode(g, ids, n, 0, &txt, &len, err, sizeof err), 0);
    assert_string_equal(txt, t);
    rc_free(txt);
    rc_free(ids);
    assert_int_equal(tokenizer_encode(g, t, strlen(t), 0, &ids, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], 50256);
    /* Decoding can drop special tokens. */
    assert_int_equal(tokenizer_decode(g, ids, n, TOK_DECODE_SKIP_SPECIAL, &txt, &len, err,
                                      sizeof err), 0);
    assert_string_equal(txt, "ab");
    rc_free(txt);
    rc_free(ids);
    tokenizer_free(g);
}

static void test_decode_errors_and_holes(void **unused)
{
    tokenizer_t *g = load_or_skip("gpt2");
    char err[256], *txt;
    size_t len;
    int32_t bad[] = {15496, 50257, 0};
    assert_int_equal(tokenizer_decode(g, bad, 3, 0, &txt, &len, err, sizeof err), RC_EINVAL);
    assert_null(txt);
    assert_non_null(strstr(err, "id 1 "));
    int32_t neg[] = {-5};
    assert_int_equal(tokenizer_decode(g, neg, 1, 0, &txt, &len, err, sizeof err), RC_EINVAL);
    /* A token that is half a character decodes to U+FFFD, like the reference. */
    int32_t half[] = {15496, 156}; /* 156 is the byte 0xE3 alone */
    assert_int_equal(tokenizer_decode(g, half, 2, 0, &txt, &len, err, sizeof err), 0);
    assert_string_equal(txt, "Hello\xEF\xBF\xBD");
    rc_free(txt);
    int32_t *none;
    size_t nn;
    assert_int_equal(tokenizer_encode(g, NULL, 0, 0, &none, &nn, err, sizeof err), 0);
    assert_int_equal(nn, 0);
    rc_free(none);
    assert_int_equal(tokenizer_decode(g, NULL, 0, 0, &txt, &len, err, sizeof err), 0);
    assert_int_equal(len, 0);
    assert_string_equal(txt, "");
    rc_free(txt);
    tokenizer_free(g);
}

static void test_bytes_fallback(void **unused)
{
    tokenizer_t *t;
    char err[256];
    assert_int_equal(tokenizer_create_bytes(&t, err, sizeof err), 0);
    assert_int_equal(tokenizer_vocab_size(t), 256);
    assert_int_equal(tokenizer_eos_id(t), -1);
    expect_ids(t, "a\xff" "b", (const int32_t[]){97, 255, 98}, 3);
    int32_t ids[] = {104, 105, 0xE2, 0x82};
    char *txt;
    size_t len;
    assert_int_equal(tokenizer_decode(t, ids, 4, 0, &txt, &len, err, sizeof err), 0);
    assert_string_equal(txt, "hi\xEF\xBF\xBD");
    rc_free(txt);
    /* Streaming works on it too. */
    tok_encoder_t *e;
    size_t n;
    assert_int_equal(tok_encoder_create(t, NULL, &e, err, sizeof err), 0);
    assert_int_equal(tok_encoder_feed(e, "xyz", 3, err, sizeof err), 0);
    assert_int_equal(tok_encoder_finish(e, err, sizeof err), 0);
    const int32_t *got = tok_encoder_ids(e, &n);
    assert_int_equal(n, 3);
    assert_int_equal(got[2], 'z');
    tok_encoder_free(e);
    tokenizer_free(t);

    /* A model directory without tokenizer.json falls back; a broken one does not. */
    char dir[] = "/tmp/recur_tok_XXXXXX";
    assert_non_null(mkdtemp(dir));
    int fb = -1;
    assert_int_equal(tokenizer_load_dir(dir, &t, &fb, err, sizeof err), 0);
    assert_int_equal(fb, 1);
    assert_int_equal(tokenizer_vocab_size(t), 256);
    tokenizer_free(t);
    char path[256];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"model\": 1}", f);
    fclose(f);
    assert_int_equal(tokenizer_load_dir(dir, &t, &fb, err, sizeof err), RC_EFORMAT);
    assert_null(t);
    assert_int_equal(fb, 0);
    assert_non_null(strstr(err, path));
    unlink(path);
    rmdir(dir);
    tokenizer_free(NULL);
    tok_encoder_free(NULL);
    tok_decoder_free(NULL);
}

static char *norm_text(const tokenizer_t *tok, const uint8_t *s, size_t n, size_t *len)
{
    struct tok_bytes out = {0};
    struct norm_work w = {0};
    assert_int_equal(normalizer_apply(&tok->norm, &w, s, n, &out), 0);
    norm_work_free(&w);
    assert_int_equal(tok_bytes_append(&out, "", 1), 0);
    *len = out.n - 1;
    return (char *)out.p;
}

/* decode(encode(x)) == normaliser(x) for every case and text, for each tokenizer. */
static void roundtrip(const char *name)
{
    tokenizer_t *tok = load_or_skip(name);
    char err[256];
    uint8_t *data;
    size_t dlen;
    assert_int_equal(tl_read(TL_DIR "/cases.json", &data, &dlen), 0);
    json_t *cases = json_loadb((const char *)data, dlen, JSON_ALLOW_NUL, NULL);
    rc_free(data);
    assert_non_null(cases);
    char **texts = tl_text_names();
    size_t nc = json_array_size(cases), count = 0;
    for (size_t i = 0; i < nc + 64 && (i < nc || texts[i - nc]); i++) {
        const uint8_t *s;
        size_t n;
        uint8_t *file = NULL;
        if (i < nc) {
            s = (const uint8_t *)json_string_value(json_array_get(cases, i));
            n = json_string_length(json_array_get(cases, i));
        } else {
            char path[512];
            snprintf(path, sizeof path, TL_DIR "/texts/%s", texts[i - nc]);
            assert_int_equal(tl_read(path, &file, &n), 0);
            s = file;
        }
        /* What the encoder sees: the repaired text. */
        uint8_t *rep = rc_malloc(3 * n + 1);
        size_t used, rn = utf8_repair(s, n, 1, rep, &used);
        int32_t *ids;
        size_t k, tlen, nlen;
        char *txt;
        assert_int_equal(tokenizer_encode(tok, (const char *)s, n, 0, &ids, &k, err, sizeof err), 0);
        assert_int_equal(tokenizer_decode(tok, ids, k, 0, &txt, &tlen, err, sizeof err), 0);
        char *want = norm_text(tok, rep, rn, &nlen);
        if (tlen != nlen || memcmp(txt, want, nlen)) {
            fail_msg("%s: decode(encode(x)) != normalise(x) for %s", name,
                     i < nc ? (const char *)s : texts[i - nc]);
        }
        rc_free(want);
        rc_free(txt);
        rc_free(ids);
        rc_free(rep);
        rc_free(file);
        count++;
    }
    print_message("%s: %zu round trips\n", name, count);
    tl_free_names(texts);
    json_decref(cases);
    tokenizer_free(tok);
}

static void test_roundtrip_gpt2(void **unused) { roundtrip("gpt2"); }
static void test_roundtrip_cl100k(void **unused) { roundtrip("cl100k"); }
static void test_roundtrip_neox(void **unused) { roundtrip("neox"); }
static void test_roundtrip_nfkc(void **unused) { roundtrip("gpt2_nfkc"); }
static void test_roundtrip_recur(void **unused) { roundtrip("recur"); }

/* The short-word merge path and the reference's queue give the same ids (the queue
 * is forced by marking the merge table ambiguous). */
static void short_vs_queue(const char *name)
{
    tokenizer_t *tok = load_or_skip(name);
    assert_int_equal(tok->bpe.ambiguous, 0); /* real vocabularies are not */
    char **texts = tl_text_names();
    for (size_t i = 0; texts[i]; i++) {
        char path[512], err[256];
        uint8_t *s;
        size_t n, na, nb;
        int32_t *a, *b;
        snprintf(path, sizeof path, TL_DIR "/texts/%s", texts[i]);
        assert_int_equal(tl_read(path, &s, &n), 0);
        tok->bpe.ambiguous = 0;
        assert_int_equal(tokenizer_encode(tok, (const char *)s, n, 0, &a, &na, err, sizeof err), 0);
        tok->bpe.ambiguous = 1;
        assert_int_equal(tokenizer_encode(tok, (const char *)s, n, 0, &b, &nb, err, sizeof err), 0);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof *a);
        rc_free(a);
        rc_free(b);
        rc_free(s);
    }
    tl_free_names(texts);
    tokenizer_free(tok);
}

static void test_short_path_gpt2(void **unused) { short_vs_queue("gpt2"); }
static void test_short_path_cl100k(void **unused) { short_vs_queue("cl100k"); }

/* One tokenizer, several threads encoding at once (each with its own encoder), the
 * same ids as one thread. */
struct thr {
    const tokenizer_t *tok;
    const uint8_t *text;
    size_t len;
    int32_t *ids;
    size_t n;
    int rc;
};

static void *thr_main(void *arg)
{
    struct thr *t = arg;
    char err[256];
    for (int rep = 0; rep < 3 && !t->rc; rep++) {
        rc_free(t->ids);
        t->rc = tokenizer_encode(t->tok, (const char *)t->text, t->len, 0, &t->ids, &t->n, err,
                                 sizeof err);
    }
    return NULL;
}

static void test_threads_share_tokenizer(void **unused)
{
    tokenizer_t *tok = load_or_skip("gpt2");
    uint8_t *s;
    size_t n, k;
    int32_t *want;
    char err[256];
    assert_int_equal(tl_read(TL_DIR "/texts/multilingual.txt.gz", &s, &n), 0);
    assert_int_equal(tokenizer_encode(tok, (const char *)s, n, 0, &want, &k, err, sizeof err), 0);
    struct thr t[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        t[i] = (struct thr){tok, s, n, NULL, 0, 0};
        assert_int_equal(pthread_create(&th[i], NULL, thr_main, &t[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].rc, 0);
        assert_int_equal(t[i].n, k);
        assert_memory_equal(t[i].ids, want, k * sizeof *want);
        rc_free(t[i].ids);
    }
    rc_free(want);
    rc_free(s);
    tokenizer_free(tok);
}

/* Every variant of variants.json loads. */
static void test_variants_load(void **unused)
{
    char **names = tl_variant_names();
    size_t n = 0;
    for (size_t i = 0; names[i]; i++) {
        char why[600];
        int rc;
        tokenizer_t *t = tl_load(names[i], &rc, why, sizeof why);
        if (!t && rc == 0) {
            print_message("skipped %s: %s\n", names[i], why);
            continue;
        }
        if (!t)
            fail_msg("%s", why);
        tokenizer_free(t);
        n++;
    }
    tl_free_names(names);
    assert_true(n >= 15);
}

/* argv[1], if given, selects tests by name pattern (cmocka filter). */
int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_neox_known),
        cmocka_unit_test(test_gpt2_cl100k_known),
        cmocka_unit_test(test_recur_sp_reference),
        cmocka_unit_test(test_no_special_flag),
        cmocka_unit_test(test_decode_errors_and_holes),
        cmocka_unit_test(test_bytes_fallback),
        cmocka_unit_test(test_roundtrip_gpt2),
        cmocka_unit_test(test_roundtrip_cl100k),
        cmocka_unit_test(test_roundtrip_neox),
        cmocka_unit_test(test_roundtrip_nfkc),
        cmocka_unit_test(test_roundtrip_recur),
        cmocka_unit_test(test_variants_load),
        cmocka_unit_test(test_short_path_gpt2),
        cmocka_unit_test(test_short_path_cl100k),
        cmocka_unit_test(test_threads_share_tokenizer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
