/* Streaming: the streaming encoder fed any split of a text gives exactly the ids of
 * the one-shot encoder (itself checked against the reference in
 * test_tokenizer_goldens.c), holding back a bounded tail; the streaming decoder gives
 * valid UTF-8 at every step and the one-shot decode in total. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "alloc.h"
#include "errors.h"
#include "tok_testlib.h"
#include "tokenizer.h"
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

static void same_ids(const char *what, const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i])
        i++;
    if (i < na || i < nb)
        fail_msg("%s: streaming differs from one-shot at id %zu (%zu vs %zu ids): %d vs %d", what,
                 i, nb, na, i < na ? a[i] : -1, i < nb ? b[i] : -1);
}

/* One text through one tokenizer: chunked at random (several seeds and chunk
 * scales), byte by byte, and with a small cap. */
static void stream_text(const tokenizer_t *tok, const char *tname, const char *fname,
                        const uint8_t *s, size_t n, int byte_by_byte)
{
    char err[256], what[256];
    int32_t *one, *st;
    size_t n1, ns, held;
    assert_int_equal(tokenizer_encode(tok, (const char *)s, n, 0, &one, &n1, err, sizeof err), 0);
    const size_t scales[] = {1, 7, 300, 5000};
    for (size_t k = 0; k < 4; k++) {
        if (scales[k] == 1 && !byte_by_byte)
            continue;
        snprintf(what, sizeof what, "%s %s chunks<=%zu", tname, fname, scales[k]);
        assert_int_equal(tl_encode_stream(tok, s, n, 0, 0, 1000 + k, scales[k], &st, &ns, &held), 0);
        same_ids(what, one, n1, st, ns);
        rc_free(st);
    }
    /* A small cap: exact unless a pre-token is longer than it, and the fixture texts'
     * long runs (up to 200 kB) are encoded in windows. */
    snprintf(what, sizeof what, "%s %s max_pending 4096", tname, fname);
    assert_int_equal(tl_encode_stream(tok, s, n, 0, 4096, 77, 3000, &st, &ns, &held), 0);
    same_ids(what, one, n1, st, ns);
    if (held > 3 * 4096 + 4096 * 2)
        fail_msg("%s: held %zu bytes", what, held);
    rc_free(st);
    rc_free(one);
}

static void stream_all_texts(const char *name, int byte_by_byte)
{
    tokenizer_t *tok = load_or_skip(name);
    char **texts = tl_text_names();
    for (size_t i = 0; texts[i]; i++) {
        char path[512];
        uint8_t *s;
        size_t n;
        snprintf(path, sizeof path, TL_DIR "/texts/%s", texts[i]);
        assert_int_equal(tl_read(path, &s, &n), 0);
        stream_text(tok, name, texts[i], s, n, byte_by_byte);
        rc_free(s);
    }
    tl_free_names(texts);
    tokenizer_free(tok);
}

static void test_stream_neox(void **unused) { stream_all_texts("neox", 1); }
static void test_stream_gpt2(void **unused) { stream_all_texts("gpt2", 1); }
static void test_stream_cl100k(void **unused) { stream_all_texts("cl100k", 0); }
static void test_stream_recur(void **unused) { stream_all_texts("recur", 0); }

/* Every variant on a mixed text: the split behaviours, invert, prefix space, added
 * token flags, normalisers, all streamed. */
static void test_stream_variants(void **unused)
{
    char **names = tl_variant_names();
    const char *files[] = {"special_tokens.txt.gz", "unicode_edge.txt.gz", "whitespace.txt.gz"};
    size_t done = 0;
    for (size_t v = 0; names[v]; v++) {
        char why[600];
        int rc;
        tokenizer_t *tok = tl_load(names[v], &rc, why, sizeof why);
        if (!tok && rc == 0)
            continue;
        if (!tok)
            fail_msg("%s", why);
        for (size_t f = 0; f < 3; f++) {
            char path[512];
            uint8_t *s;
            size_t n;
            snprintf(path, sizeof path, TL_DIR "/texts/%s", files[f]);
            assert_int_equal(tl_read(path, &s, &n), 0);
            if (n > 200000)
                n = 200000; /* enough for every construct, keeps the test short */
            stream_text(tok, names[v], files[f], s, n, 1);
            rc_free(s);
        }
        tokenizer_free(tok);
        done++;
    }
    tl_free_names(names);
    assert_true(done >= 15);
}

/* Ten-megabyte runs: the held tail stays bounded by the cap and the ids stay exact. */
static void long_run(const tokenizer_t *tok, const char *what, const char *unit, size_t total)
{
    size_t ul = strlen(unit), n = total / ul * ul;
    uint8_t *s = rc_malloc(n);
    for (size_t i = 0; i < n; i += ul)
        memcpy(s + i, unit, ul);
    char err[256];
    int32_t *one, *st;
    size_t n1, ns, held;
    const size_t cap = 16384;
    assert_int_equal(tokenizer_encode(tok, (const char *)s, n, 0, &one, &n1, err, sizeof err), 0);
    assert_int_equal(tl_encode_stream(tok, s, n, 0, cap, 5, 65536, &st, &ns, &held), 0);
    same_ids(what, one, n1, st, ns);
    print_message("%-28s %9zu bytes -> %8zu ids, held at most %zu bytes\n", what, n, n1, held);
    if (held > 2 * cap + 4096 + 65536 * 64)
        fail_msg("%s: held %zu bytes", what, held);
    rc_free(st);
    rc_free(one);
    rc_free(s);
}

static void test_long_runs(void **unused)
{
    tokenizer_t *g = load_or_skip("gpt2");
    long_run(g, "gpt2 'a' x 10M", "a", 10 << 20);
    long_run(g, "gpt2 ' ' x 1M", " ", 1 << 20);
    long_run(g, "gpt2 '\\n' x 1M", "\n", 1 << 20);
    long_run(g, "gpt2 '7' x 1M", "7", 1 << 20);
    long_run(g, "gpt2 'ab' x 512k", "ab", 1 << 20);
    long_run(g, "gpt2 '!?' x 512k", "!?", 1 << 20);
    long_run(g, "gpt2 emoji x 256k", "\xF0\x9F\x98\x80", 1 << 20);
    long_run(g, "gpt2 CJK x 333k", "\xE4\xB8\xAD\xE6\x96\x87\xE5\xAD\x97", 1 << 20);
    long_run(g, "gpt2 e+U+0301 x 333k", "e\xCC\x81", 1 << 20);
    tokenizer_free(g);
    char why[600];
    int rc;
    tokenizer_t *x = tl_load("neox", &rc, why, sizeof why);
    if (x) {
        long_run(x, "neox ' ' x 10M", " ", 10 << 20); /* added whitespace tokens */
        long_run(x, "neox e+U+0301 x 333k", "e\xCC\x81", 1 << 20); /* NFC */
        tokenizer_free(x);
    } else {
        print_message("neox part skipped: %s\n", why);
    }
    tokenizer_t *c = load_or_skip("cl100k");
    long_run(c, "cl100k 'a' x 1M", "a", 1 << 20);
    long_run(c, "cl100k ' ' x 1M", " ", 1 << 20);
    tokenizer_free(c);
}

/* Random words: many pre-tokens of every length, one stream, a small cap. */
static void test_random_words_small_cap(void **unused)
{
    tokenizer_t *g = load_or_skip("gpt2");
    uint64_t seed = 42;
    size_t n = 1 << 20;
    uint8_t *s = rc_malloc(n);
    const char *alpha = "abcdefghijklmnopqrstuvwxyz";
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        unsigned r = (unsigned)(seed >> 33);
        s[i] = (r % 23 == 0) ? ' ' : (uint8_t)alpha[r % 26];
    }
    memset(s + 300000, 'q', 100000); /* one 100 kB word inside */
    char err[256];
    int32_t *one, *st;
    size_t n1, ns, held;
    assert_int_equal(tokenizer_encode(g, (const char *)s, n, 0, &one, &n1, err, sizeof err), 0);
    assert_int_equal(tl_encode_stream(g, s, n, 0, 4096, 9, 50, &st, &ns, &held), 0);
    same_ids("random words, cap 4096", one, n1, st, ns);
    rc_free(st);
    rc_free(one);
    rc_free(s);
    tokenizer_free(g);
}

/* The decoder: one id at a time, every piece valid UTF-8, total = one-shot decode. */
static void decode_stream(const tokenizer_t *tok, const int32_t *ids, size_t n, unsigned flags)
{
    char err[256], *whole;
    size_t wlen;
    assert_int_equal(tokenizer_decode(tok, ids, n, flags, &whole, &wlen, err, sizeof err), 0);
    tok_decoder_t *d;
    assert_int_equal(tok_decoder_create(tok, flags, &d, err, sizeof err), 0);
    size_t off = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *t;
        size_t len;
        if (i < n)
            assert_int_equal(tok_decoder_feed(d, ids[i], &t, &len, err, sizeof err), 0);
        else
            assert_int_equal(tok_decoder_flush(d, &t, &len), 0);
        assert_true(utf8_valid((const uint8_t *)t, len));
        assert_true(off + len <= wlen);
        assert_memory_equal(whole + off, t, len);
        off += len;
    }
    assert_int_equal(off, wlen);
    tok_decoder_free(d);
    rc_free(whole);
}

static void test_decoder_stream(void **unused)
{
    const char *names[] = {"gpt2", "cl100k", "neox"};
    for (int k = 0; k < 3; k++) {
        char why[600];
        int rc;
        tokenizer_t *tok = tl_load(names[k], &rc, why, sizeof why);
        if (!tok)
            continue;
        char **texts = tl_text_names();
        for (size_t i = 0; texts[i]; i++) {
            char path[512], err[256];
            uint8_t *s;
            size_t n, k2;
            int32_t *ids;
            snprintf(path, sizeof path, TL_DIR "/texts/%s", texts[i]);
            assert_int_equal(tl_read(path, &s, &n), 0);
            assert_int_equal(tokenizer_encode(tok, (const char *)s, n, 0, &ids, &k2, err, sizeof err), 0);
            decode_stream(tok, ids, k2, 0);
            decode_stream(tok, ids, k2, TOK_DECODE_SKIP_SPECIAL);
            rc_free(ids);
            rc_free(s);
        }
        tl_free_names(texts);
        /* Arbitrary id sequences: lone continuation bytes, truncated characters. */
        uint64_t seed = 3;
        int32_t rnd[5000];
        for (size_t i = 0; i < 5000; i++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            rnd[i] = (int32_t)((seed >> 33) % (uint64_t)tokenizer_vocab_size(tok));
        }
        decode_stream(tok, rnd, 5000, 0);
        for (size_t i = 0; i < 5000; i++)
            rnd[i] = rnd[i] % 256; /* the byte symbols: mostly character fragments */
        decode_stream(tok, rnd, 5000, 0);
        /* A bad id leaves the decoder as it was. */
        tok_decoder_t *d;
        const char *t;
        size_t len;
        char err[256];
        assert_int_equal(tok_decoder_create(tok, 0, &d, err, sizeof err), 0);
        assert_int_equal(tok_decoder_feed(d, tokenizer_vocab_size(tok), &t, &len, err, sizeof err),
                         RC_EINVAL);
        tok_decoder_free(d);
        tokenizer_free(tok);
    }
}

/* Feeding after finish or after an error is refused; reset starts over. */
static void test_encoder_lifecycle(void **unused)
{
    tokenizer_t *g = load_or_skip("gpt2");
    tok_encoder_t *e;
    char err[256];
    size_t n;
    assert_int_equal(tok_encoder_create(g, NULL, &e, err, sizeof err), 0);
    assert_int_equal(tok_encoder_feed(e, "Hello wor", 9, err, sizeof err), 0);
    assert_int_equal(tok_encoder_feed(e, "ld!", 3, err, sizeof err), 0);
    assert_int_equal(tok_encoder_finish(e, err, sizeof err), 0);
    const int32_t *ids = tok_encoder_ids(e, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 15496);
    assert_int_equal(ids[1], 995);
    assert_int_equal(ids[2], 0);
    assert_int_not_equal(tok_encoder_feed(e, "x", 1, err, sizeof err), 0);
    tok_encoder_reset(e);
    assert_int_equal(tok_encoder_feed(e, "\xE2\x82", 2, err, sizeof err), 0); /* half a euro */
    assert_true(tok_encoder_pending_bytes(e) > 0);
    assert_int_equal(tok_encoder_feed(e, "\xAC", 1, err, sizeof err), 0);
    assert_int_equal(tok_encoder_finish(e, err, sizeof err), 0);
    char *txt;
    size_t len;
    ids = tok_encoder_ids(e, &n);
    assert_int_equal(tokenizer_decode(g, ids, n, 0, &txt, &len, err, sizeof err), 0);
    assert_string_equal(txt, "\xE2\x82\xAC");
    rc_free(txt);
    size_t before = n;
    tok_encoder_take(e, 1);
    tok_encoder_ids(e, &n);
    assert_int_equal(n, before - 1);
    tok_encoder_free(e);
    tokenizer_free(g);
}

/* argv[1], if given, selects tests by name pattern (cmocka filter). */
int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encoder_lifecycle),
        cmocka_unit_test(test_stream_gpt2),
        cmocka_unit_test(test_stream_cl100k),
        cmocka_unit_test(test_stream_neox),
        cmocka_unit_test(test_stream_recur),
        cmocka_unit_test(test_stream_variants),
        cmocka_unit_test(test_random_words_small_cap),
        cmocka_unit_test(test_long_runs),
        cmocka_unit_test(test_decoder_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
