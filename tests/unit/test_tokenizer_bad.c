/* Malformed and hostile tokenizer.json: a clear error (the right code, a message that
 * names the problem), no crash, no leak. Then allocation failures at every step of
 * loading, encoding (one-shot and streaming) and decoding: RC_ENOMEM or success, never
 * a different answer, never a leak. */
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
#include "errors.h"
#include "tok_testlib.h"
#include "tokenizer.h"

/* A small but complete byte-level tokenizer: all 256 byte characters, a few merges,
 * an NFC normaliser, one special and one normalised added token. */
static json_t *small_tokenizer(void)
{
    json_t *vocab = json_object();
    int n = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        unsigned cp = keep ? (unsigned)b : 256u + (unsigned)extra++;
        char s[8];
        int k = 0;
        if (cp < 0x80) {
            s[k++] = (char)cp;
        } else {
            s[k++] = (char)(0xC0 | (cp >> 6));
            s[k++] = (char)(0x80 | (cp & 0x3F));
        }
        s[k] = 0;
        json_object_set_new(vocab, s, json_integer(n++));
    }
    const char *more[] = {"he", "ll", "hell", "hello", "\xC4\xA0w", "\xC4\xA0wo", "rl", "rld",
                          "\xC4\xA0world"};
    for (size_t i = 0; i < sizeof more / sizeof *more; i++)
        json_object_set_new(vocab, more[i], json_integer(n++));
    json_t *merges = json_pack("[sssssssss]", "h e", "l l", "he ll", "hell o", "\xC4\xA0 w",
                               "\xC4\xA0w o", "r l", "rl d", "\xC4\xA0wo rld");
    json_t *t = json_pack(
        "{s:s, s:[{s:i,s:s,s:b,s:b,s:b,s:b,s:b},{s:i,s:s,s:b,s:b,s:b,s:b,s:b}],"
        " s:{s:s}, s:{s:s,s:b,s:b,s:b}, s:{s:s}, s:{s:s},"
        " s:{s:s, s:n, s:n, s:o, s:o}}",
        "version", "1.0", "added_tokens", "id", n, "content", "<|endoftext|>", "special", 1,
        "normalized", 0, "lstrip", 0, "rstrip", 0, "single_word", 0, "id", n + 1, "content",
        "  ", "special", 0, "normalized", 1, "lstrip", 0, "rstrip", 0, "single_word", 0,
        "normalizer", "type", "NFC", "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0,
        "trim_offsets", 1, "use_regex", 1, "post_processor", "type", "ByteLevel", "decoder",
        "type", "ByteLevel", "model", "type", "BPE", "dropout", "unk_token", "vocab", vocab,
        "merges", merges);
    assert_non_null(t);
    return t;
}

static char *dump(json_t *t)
{
    char *s = json_dumps(t, JSON_COMPACT);
    assert_non_null(s);
    return s;
}

static void expect_fail_text(const char *text, size_t len, int code, const char *needle)
{
    tokenizer_t *tok = (tokenizer_t *)1;
    char err[512] = "";
    size_t live = rc_alloc_live_bytes();
    int rc = tokenizer_load_json(text, len, &tok, err, sizeof err);
    if (rc != code || tok != NULL || (needle && !strstr(err, needle)))
        fail_msg("got rc %d (%s), wanted %d with '%s' for: %.120s", rc, err, code,
                 needle ? needle : "", text);
    assert_int_equal(rc_alloc_live_bytes(), live);
}

static void expect_fail(json_t *t, int code, const char *needle)
{
    char *s = dump(t);
    expect_fail_text(s, strlen(s), code, needle);
    free(s);
    json_decref(t);
}

#define MODEL(t) json_object_get((t), "model")
#define VOCAB(t) json_object_get(MODEL(t), "vocab")

static void test_small_tokenizer_loads(void **unused)
{
    json_t *t = small_tokenizer();
    char *s = dump(t), err[256];
    tokenizer_t *tok;
    assert_int_equal(tokenizer_load_json(s, strlen(s), &tok, err, sizeof err), 0);
    int32_t *ids;
    size_t n;
    assert_int_equal(tokenizer_encode(tok, "hello world", 11, 0, &ids, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 259);
    assert_int_equal(ids[1], 264);
    rc_free(ids);
    tokenizer_free(tok);
    free(s);
    json_decref(t);
}

static void test_not_json(void **unused)
{
    const char *bad[] = {"", "{", "[1 2]", "{\"a\": }", "{} trailing", "{\"a\":1,\"a\":2}",
                         "\"\xff\"", "{\"model\": \"x\\u0000y\"}", "nul\x00l"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        expect_fail_text(bad[i], strlen(bad[i]) + (i == 8 ? 2 : 0), RC_EFORMAT, "tokenizer.json");
    expect_fail_text("null", 4, RC_EFORMAT, NULL);
    expect_fail_text("[]", 2, RC_EFORMAT, "top level");
    expect_fail_text("42", 2, RC_EFORMAT, NULL);
    /* Deep nesting is refused by the parser, not by the stack. */
    size_t depth = 200000;
    char *deep = malloc(2 * depth + 1);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    expect_fail_text(deep, 2 * depth, RC_EFORMAT, NULL);
    free(deep);
}

static void test_model_errors(void **unused)
{
    json_t *t;
    t = small_tokenizer();
    json_object_del(t, "model");
    expect_fail(t, RC_EFORMAT, "model");
    t = small_tokenizer();
    json_object_set_new(MODEL(t), "type", json_string("WordPiece"));
    expect_fail(t, RC_EUNSUPPORTED, "WordPiece");
    t = small_tokenizer();
    json_object_set_new(MODEL(t), "type", json_string("Unigram"));
    expect_fail(t, RC_EUNSUPPORTED, "Unigram");
    t = small_tokenizer();
    json_object_del(MODEL(t), "vocab");
    expect_fail(t, RC_EFORMAT, "vocab");
    t = small_tokenizer();
    json_object_set_new(MODEL(t), "merges", json_object());
    expect_fail(t, RC_EFORMAT, "merges");
    t = small_tokenizer();
    json_object_set_new(t, "version", json_string("2.0"));
    expect_fail(t, RC_EUNSUPPORTED, "version");
    t = small_tokenizer();
    json_object_set_new(MODEL(t), "dropout", json_real(0.1));
    expect_fail(t, RC_EUNSUPPORTED, "dropout");
    t = small_tokenizer();
    json_object_set_new(MODEL(t), "continuing_subword_prefix", json_string("##"));
    expect_fail(t, RC_EUNSUPPORTED, "continuing_subword_prefix");
    t = small_tokenizer();
    json_object_set_new(MODEL(t), "fuse_unk", json_string("yes"));
    expect_fail(t, RC_EFORMAT, "fuse_unk");
}

static void test_vocab_errors(void **unused)
{
    json_t *t;
    t = small_tokenizer();
    json_object_set_new(VOCAB(t), "neg", json_integer(-1));
    expect_fail(t, RC_ERANGE, "neg");
    t = small_tokenizer();
    json_object_set_new(VOCAB(t), "big", json_integer(1LL << 40));
    expect_fail(t, RC_ERANGE, "big");
    t = small_tokenizer();
    json_object_set_new(VOCAB(t), "cap", json_integer(TOKENIZER_MAX_IDS));
    expect_fail(t, RC_ERANGE, "cap");
    t = small_tokenizer();
    json_object_set_new(VOCAB(t), "flt", json_real(3.5));
    expect_fail(t, RC_EFORMAT, "flt");
    t = small_tokenizer();
    json_object_set_new(VOCAB(t), "str", json_string("7"));
    expect_fail(t, RC_EFORMAT, "str");
    t = small_tokenizer();
    json_object_set_new(VOCAB(t), "dup", json_integer(7)); /* 7 is taken */
    json_object_set_new(t, "added_tokens", json_array()); /* (their ids follow the count) */
    expect_fail(t, RC_EFORMAT, "share one id");
    /* A 10 MB vocab string. */
    t = small_tokenizer();
    size_t big = 10 << 20;
    char *s = malloc(big + 1);
    memset(s, 'x', big);
    s[big] = 0;
    json_object_set_new(VOCAB(t), s, json_integer(5000));
    free(s);
    expect_fail(t, RC_ERANGE, "too long");
    /* Empty vocab, no added tokens. */
    t = small_tokenizer();
    json_object_set_new(MODEL(t), "vocab", json_object());
    json_object_set_new(MODEL(t), "merges", json_array());
    json_object_set_new(t, "added_tokens", json_array());
    expect_fail(t, RC_EFORMAT, "empty vocab");
}

static void test_merge_errors(void **unused)
{
    const char *bad_str[] = {"h q", "q h", "h  e", "he", "h e l", " h", "h "};
    for (size_t i = 0; i < sizeof bad_str / sizeof *bad_str; i++) {
        json_t *t = small_tokenizer();
        json_array_append_new(json_object_get(MODEL(t), "merges"), json_string(bad_str[i]));
        expect_fail(t, RC_EFORMAT, "merges[9]");
    }
    json_t *t = small_tokenizer();
    /* h + q: q is in the vocab, "hq" is not. */
    json_array_append_new(json_object_get(MODEL(t), "merges"), json_string("h q"));
    expect_fail(t, RC_EFORMAT, "'hq'");
    t = small_tokenizer();
    json_array_append_new(json_object_get(MODEL(t), "merges"), json_pack("[ss]", "h", "e"));
    expect_fail(t, RC_EFORMAT, "all");
    t = small_tokenizer();
    json_object_set_new(MODEL(t), "merges", json_pack("[[sss]]", "h", "e", "l"));
    expect_fail(t, RC_EFORMAT, "pair");
    t = small_tokenizer();
    json_object_set_new(MODEL(t), "merges", json_pack("[[si]]", "h", 3));
    expect_fail(t, RC_EFORMAT, "pair");
    t = small_tokenizer();
    json_object_set_new(MODEL(t), "merges", json_pack("[i]", 3));
    expect_fail(t, RC_EFORMAT, "merges");
}

static json_t *added(json_t *t, size_t i) { return json_array_get(json_object_get(t, "added_tokens"), i); }

static void test_added_errors(void **unused)
{
    json_t *t;
    t = small_tokenizer();
    json_object_set_new(added(t, 0), "id", json_integer(3)); /* the reference gives 265 */
    expect_fail(t, RC_EFORMAT, "the reference gives it 265");
    t = small_tokenizer();
    json_object_set_new(added(t, 1), "id", json_integer(100000));
    expect_fail(t, RC_EFORMAT, "has id");
    t = small_tokenizer();
    json_object_del(added(t, 0), "content");
    expect_fail(t, RC_EFORMAT, "added_tokens[0]");
    t = small_tokenizer();
    json_object_set_new(added(t, 0), "id", json_string("x"));
    expect_fail(t, RC_EFORMAT, "added_tokens[0]");
    t = small_tokenizer();
    json_object_set_new(added(t, 0), "special", json_integer(1));
    expect_fail(t, RC_EFORMAT, "special");
    t = small_tokenizer();
    json_object_set_new(t, "added_tokens", json_object());
    expect_fail(t, RC_EFORMAT, "added_tokens");
    t = small_tokenizer();
    char *s = malloc(5001);
    memset(s, 'y', 5000);
    s[5000] = 0;
    json_object_set_new(added(t, 1), "content", json_string(s));
    free(s);
    expect_fail(t, RC_ERANGE, "4096");
    /* Two normalized tokens whose NFC forms are the same text. */
    t = small_tokenizer();
    json_array_append_new(json_object_get(t, "added_tokens"),
                          json_pack("{s:i,s:s,s:b,s:b}", "id", 267, "content", "\xE2\x84\xAB", "special",
                                    0, "normalized", 1)); /* ANGSTROM SIGN */
    json_array_append_new(json_object_get(t, "added_tokens"),
                          json_pack("{s:i,s:s,s:b,s:b}", "id", 268, "content", "A\xCC\x8A", "special", 0,
                                    "normalized", 1)); /* A + RING ABOVE */
    expect_fail(t, RC_EFORMAT, "same text");
}

static void test_component_errors(void **unused)
{
    json_t *t;
    t = small_tokenizer();
    json_object_set_new(t, "normalizer", json_pack("{s:s}", "type", "Lowercase"));
    expect_fail(t, RC_EUNSUPPORTED, "Lowercase");
    t = small_tokenizer();
    json_object_set_new(t, "normalizer", json_pack("{s:s}", "kind", "NFC"));
    expect_fail(t, RC_EFORMAT, "type");
    t = small_tokenizer();
    json_object_set_new(t, "normalizer", json_pack("{s:s}", "type", "Sequence"));
    expect_fail(t, RC_EFORMAT, "normalizers");
    t = small_tokenizer();
    json_t *nine = json_array();
    for (int i = 0; i < 9; i++)
        json_array_append_new(nine, json_pack("{s:s}", "type", "NFC"));
    json_object_set_new(t, "normalizer", json_pack("{s:s,s:o}", "type", "Sequence", "normalizers", nine));
    expect_fail(t, RC_ERANGE, "normalizers");
    t = small_tokenizer();
    json_object_set_new(t, "pre_tokenizer", json_null());
    expect_fail(t, RC_EUNSUPPORTED, "ByteLevel decoder needs a ByteLevel pre-tokenizer");
    t = small_tokenizer();
    json_object_set_new(t, "pre_tokenizer", json_pack("{s:s}", "type", "Metaspace"));
    expect_fail(t, RC_EFORMAT, "replacement");
    t = small_tokenizer();
    json_object_set_new(t, "pre_tokenizer",
                        json_pack("{s:s,s:s,s:s}", "type", "Metaspace", "replacement", "\xE2\x96\x81",
                                  "prepend_scheme", "sometimes"));
    expect_fail(t, RC_EFORMAT, "prepend_scheme");
    t = small_tokenizer();
    json_object_set_new(t, "pre_tokenizer",
                        json_pack("{s:s,s:s,s:b,s:s}", "type", "Metaspace", "replacement", "\xE2\x96\x81",
                                  "add_prefix_space", 0, "prepend_scheme", "always"));
    expect_fail(t, RC_EFORMAT, "add_prefix_space does not match");
    t = small_tokenizer();
    json_object_set_new(t, "pre_tokenizer",
                        json_pack("{s:s,s:{s:s},s:s,s:b}", "type", "Split", "pattern", "Regex", "\\s+",
                                  "behavior", "Isolated", "invert", 0));
    expect_fail(t, RC_EUNSUPPORTED, "ByteLevel");
    /* A text vocab (no ByteLevel): the decoder chain's components. */
    const char *bad_dec[][2] = {
        {"{\"type\":\"WordPiece\",\"prefix\":\"##\"}", "WordPiece"},
        {"{\"type\":\"CTC\"}", "CTC"},
        {"{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"ByteLevel\"}]}", "ByteLevel"},
        {"{\"type\":\"ByteLevel\"}", "ByteLevel decoder needs"},
        {"{\"type\":\"Strip\",\"content\":\"ab\",\"start\":1,\"stop\":0}", "one character"},
        {"{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"(\"},\"content\":\"\"}", "compile"},
        {"{\"type\":\"Replace\",\"pattern\":{\"String\":\"\"},\"content\":\"x\"}", "empty"},
    };
    for (size_t i = 0; i < sizeof bad_dec / sizeof *bad_dec; i++) {
        t = small_tokenizer();
        json_object_set_new(t, "pre_tokenizer",
                            json_pack("{s:s,s:s,s:s}", "type", "Metaspace", "replacement",
                                      "\xE2\x96\x81", "prepend_scheme", "first"));
        json_object_set_new(t, "decoder", json_loads(bad_dec[i][0], 0, NULL));
        expect_fail(t, i == 4 ? RC_EFORMAT : i == 5 ? RC_EFORMAT : RC_EUNSUPPORTED, bad_dec[i][1]);
    }
    t = small_tokenizer();
    json_object_set_new(t, "normalizer",
                        json_loads("{\"type\":\"Replace\",\"pattern\":{\"Regex\":\" +\"},"
                                   "\"content\":\" \"}", 0, NULL));
    expect_fail(t, RC_EUNSUPPORTED, "Regex");
    t = small_tokenizer();
    json_object_set_new(t, "normalizer", json_loads("{\"type\":\"Prepend\"}", 0, NULL));
    expect_fail(t, RC_EFORMAT, "prepend");
    t = small_tokenizer();
    json_object_set_new(t, "normalizer", json_loads("{\"type\":\"Strip\",\"left\":true,"
                                                    "\"right\":true}", 0, NULL));
    expect_fail(t, RC_EUNSUPPORTED, "'Strip'");
    /* A template that appends after the text, or a token of two ids. */
    t = small_tokenizer();
    json_object_set_new(t, "post_processor", json_loads(
        "{\"type\":\"TemplateProcessing\",\"single\":[{\"Sequence\":{\"id\":\"A\","
        "\"type_id\":0}},{\"SpecialToken\":{\"id\":\"</s>\",\"type_id\":0}}],"
        "\"special_tokens\":{\"</s>\":{\"id\":\"</s>\",\"ids\":[2],\"tokens\":[\"</s>\"]}}}",
        0, NULL));
    expect_fail(t, RC_EUNSUPPORTED, "nothing after the text");
    t = small_tokenizer();
    json_object_set_new(t, "post_processor", json_loads(
        "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\","
        "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
        "\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1,2],\"tokens\":[\"<s>\",\"x\"]}}}",
        0, NULL));
    expect_fail(t, RC_EUNSUPPORTED, "exactly one id");
    const char *regexes[][3] = {
        {"(", "does not compile", "f"}, {"a*", "empty", "u"}, {"\\Qa\\E", "\\Q", "u"},
        {"[a-z&&[^q]]", "&&", "u"},    {"[[a]]", "nested", "u"},   {"x|", "empty", "u"},
    };
    for (size_t i = 0; i < sizeof regexes / sizeof *regexes; i++) {
        t = small_tokenizer();
        json_t *bl = json_pack("{s:s,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 0, "use_regex", 0);
        json_t *sp = json_pack("{s:s,s:{s:s},s:s,s:b}", "type", "Split", "pattern", "Regex",
                               regexes[i][0], "behavior", "Isolated", "invert", 0);
        json_object_set_new(t, "pre_tokenizer", json_pack("{s:s,s:[oo]}", "type", "Sequence",
                                                          "pretokenizers", sp, bl));
        expect_fail(t, regexes[i][2][0] == 'f' ? RC_EFORMAT : RC_EUNSUPPORTED, regexes[i][1]);
    }
    t = small_tokenizer();
    json_object_set_new(t, "pre_tokenizer",
                        json_pack("{s:s,s:[{s:s,s:b},{s:s,s:{s:s},s:s,s:b}]}", "type", "Sequence",
                                  "pretokenizers", "type", "ByteLevel", "add_prefix_space", 0,
                                  "type", "Split", "pattern", "String", " ", "behavior", "Isolated",
                                  "invert", 0));
    expect_fail(t, RC_EUNSUPPORTED, "after ByteLevel");
    t = small_tokenizer();
    json_object_set_new(t, "pre_tokenizer",
                        json_pack("{s:s,s:{s:s},s:s,s:b}", "type", "Split", "pattern", "Regex", "a",
                                  "behavior", "Sideways", "invert", 0));
    expect_fail(t, RC_EFORMAT, "Sideways");
    t = small_tokenizer();
    json_object_del(json_object_get(t, "pre_tokenizer"), "add_prefix_space");
    expect_fail(t, RC_EFORMAT, "add_prefix_space");
    /* Sequences nested far deeper than any real file. */
    t = small_tokenizer();
    json_t *inner = json_pack("{s:s,s:b}", "type", "ByteLevel", "add_prefix_space", 0);
    for (int i = 0; i < 40; i++)
        inner = json_pack("{s:s,s:[o]}", "type", "Sequence", "pretokenizers", inner);
    json_object_set_new(t, "pre_tokenizer", inner);
    expect_fail(t, RC_ERANGE, "deeply");
    t = small_tokenizer();
    json_object_set_new(t, "post_processor", json_pack("{s:s}", "type", "RobertaProcessing"));
    expect_fail(t, RC_EUNSUPPORTED, "RobertaProcessing");
    t = small_tokenizer();
    json_object_set_new(t, "post_processor",
                        json_pack("{s:s,s:[{s:{s:s}},{s:{s:s}}]}", "type", "TemplateProcessing",
                                  "single", "SpecialToken", "id", "[CLS]", "Sequence", "id", "A"));
    expect_fail(t, RC_EUNSUPPORTED, "TemplateProcessing");
    t = small_tokenizer();
    json_object_set_new(t, "decoder", json_null());
    expect_fail(t, RC_EUNSUPPORTED, "decoder");
    t = small_tokenizer();
    json_object_set_new(t, "decoder", json_pack("{s:s}", "type", "WordPiece"));
    expect_fail(t, RC_EUNSUPPORTED, "WordPiece");
}

/* What the loader accepts must work: a TemplateProcessing of $A alone, pairs merges,
 * an unk_token that is missing (an error only when needed), files and dirs. */
static void test_accepted_oddities(void **unused)
{
    json_t *t = small_tokenizer();
    char err[256];
    tokenizer_t *tok;
    json_object_set_new(t, "post_processor",
                        json_pack("{s:s,s:[{s:{s:s,s:i}}],s:[]}", "type", "TemplateProcessing",
                                  "single", "Sequence", "id", "A", "type_id", 0, "pair"));
    json_object_set_new(MODEL(t), "unk_token", json_string("<unk>"));
    /* Byte 0x00 has no symbol now (and the added tokens go, their ids would move). */
    json_object_del(VOCAB(t), "\xC4\x80");
    json_object_set_new(t, "added_tokens", json_array());
    char *s = dump(t);
    if (tokenizer_load_json(s, strlen(s), &tok, err, sizeof err))
        fail_msg("%s", err);
    int32_t *ids;
    size_t n;
    assert_int_equal(tokenizer_encode(tok, "hello", 5, 0, &ids, &n, err, sizeof err), 0);
    rc_free(ids);
    assert_int_equal(tokenizer_encode(tok, "a\0b", 3, 0, &ids, &n, err, sizeof err), RC_EFORMAT);
    assert_non_null(strstr(err, "unk_token"));
    tokenizer_free(tok);
    free(s);
    json_decref(t);
    assert_int_equal(tokenizer_load_file("/nonexistent/tokenizer.json", &tok, err, sizeof err), RC_EIO);
    assert_int_equal(tokenizer_load_file("/tmp", &tok, err, sizeof err), RC_EIO);
    assert_null(tok);
}

/* ---- allocation failures ----------------------------------------------------------- */

/* llama: the Llama-style tokenizer (legacy form, or Metaspace with a Regex Replace
 * decoder and NFKC), else the byte-level one. */
static json_t *fault_tokenizer(int llama)
{
    if (!llama)
        return small_tokenizer();
    json_t *t = tl_llama_mini(llama == 1 ? 0 : 1, "first");
    if (llama == 2) {
        json_object_set_new(t, "normalizer", json_pack("{s:s}", "type", "NFKC"));
        json_object_set_new(t, "decoder", json_loads(
            "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":"
            "{\"Regex\":\"\\u2581+\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},"
            "{\"type\":\"Fuse\"}]}", 0, NULL));
        json_object_del(json_object_get(json_object_get(t, "model"), "vocab"), "<0xF0>");
    }
    return t;
}

static void fault_load(int persistent, int llama)
{
    json_t *t = fault_tokenizer(llama);
    char *s = dump(t), err[256];
    json_decref(t);
    size_t live = rc_alloc_live_bytes();
    int ok = 0;
    for (long k = 1; k < 100000 && !ok; k++) {
        tokenizer_t *tok;
        rc_alloc_fail_after(k, persistent);
        int rc = tokenizer_load_json(s, strlen(s), &tok, err, sizeof err);
        long injected = rc_alloc_injected();
        rc_alloc_fail_after(0, 0);
        if (rc == 0) {
            assert_non_null(tok);
            tokenizer_free(tok);
            ok = injected == 0; /* done once a run sees no failure */
        } else {
            if (rc != RC_ENOMEM)
                fail_msg("allocation %ld failing gave rc %d (%s)", k, rc, err);
            assert_null(tok);
        }
        assert_int_equal(rc_alloc_live_bytes(), live);
    }
    assert_true(ok);
    free(s);
}

static void test_fault_load_transient(void **unused)
{
    for (int l = 0; l < 3; l++)
        fault_load(0, l);
}
static void test_fault_load_persistent(void **unused)
{
    for (int l = 0; l < 3; l++)
        fault_load(1, l);
}

static void fault_encode(int persistent, int llama)
{
    json_t *t = fault_tokenizer(llama);
    char *s = dump(t), err[256];
    json_decref(t);
    tokenizer_t *tok;
    assert_int_equal(tokenizer_load_json(s, strlen(s), &tok, err, sizeof err), 0);
    const char *text = "hello world <|endoftext|>  caf\xC3\xA9 e\xCC\x81 \xF0\x9F\x98\x80 hello\xFF x";
    size_t len = strlen(text);
    int32_t *want, *ids;
    size_t nw, n;
    assert_int_equal(tokenizer_encode(tok, text, len, 0, &want, &nw, err, sizeof err), 0);
    size_t live = rc_alloc_live_bytes();
    int done = 0;
    for (long k = 1; k < 100000 && !done; k++) {
        /* one-shot */
        rc_alloc_fail_after(k, persistent);
        int rc = tokenizer_encode(tok, text, len, 0, &ids, &n, err, sizeof err);
        long inj = rc_alloc_injected();
        rc_alloc_fail_after(0, 0);
        if (rc == 0) {
            assert_int_equal(n, nw);
            assert_memory_equal(ids, want, n * sizeof *ids);
            rc_free(ids);
        } else {
            assert_int_equal(rc, RC_ENOMEM);
        }
        done = rc == 0 && inj == 0;
        /* streaming, byte by byte */
        tok_encoder_t *e = NULL;
        rc_alloc_fail_after(k, persistent);
        rc = tok_encoder_create(tok, NULL, &e, err, sizeof err);
        for (size_t i = 0; !rc && i < len; i++)
            rc = tok_encoder_feed(e, text + i, 1, err, sizeof err);
        if (!rc)
            rc = tok_encoder_finish(e, err, sizeof err);
        inj = rc_alloc_injected();
        rc_alloc_fail_after(0, 0);
        if (rc == 0) {
            const int32_t *got = tok_encoder_ids(e, &n);
            assert_int_equal(n, nw);
            assert_memory_equal(got, want, n * sizeof *got);
        } else {
            assert_int_equal(rc, RC_ENOMEM);
        }
        done &= rc == 0 && inj == 0;
        tok_encoder_free(e);
        /* decoding, one-shot and streamed */
        char *txt = NULL;
        size_t tl;
        rc_alloc_fail_after(k, persistent);
        rc = tokenizer_decode(tok, want, nw, 0, &txt, &tl, err, sizeof err);
        tok_decoder_t *d = NULL;
        int rc2 = tok_decoder_create(tok, 0, &d, err, sizeof err);
        for (size_t i = 0; !rc2 && i < nw; i++) {
            const char *p;
            size_t pl;
            rc2 = tok_decoder_feed(d, want[i], &p, &pl, err, sizeof err);
        }
        inj = rc_alloc_injected();
        rc_alloc_fail_after(0, 0);
        assert_true(rc == 0 || rc == RC_ENOMEM);
        assert_true(rc2 == 0 || rc2 == RC_ENOMEM);
        done &= rc == 0 && rc2 == 0 && inj == 0;
        rc_free(txt);
        tok_decoder_free(d);
        assert_int_equal(rc_alloc_live_bytes(), live);
    }
    assert_true(done);
    rc_free(want);
    tokenizer_free(tok);
    free(s);
}

static void test_fault_encode_transient(void **unused)
{
    for (int l = 0; l < 3; l++)
        fault_encode(0, l);
}
static void test_fault_encode_persistent(void **unused)
{
    for (int l = 0; l < 3; l++)
        fault_encode(1, l);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_tokenizer_loads),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_model_errors),
        cmocka_unit_test(test_vocab_errors),
        cmocka_unit_test(test_merge_errors),
        cmocka_unit_test(test_added_errors),
        cmocka_unit_test(test_component_errors),
        cmocka_unit_test(test_accepted_oddities),
        cmocka_unit_test(test_fault_load_transient),
        cmocka_unit_test(test_fault_load_persistent),
        cmocka_unit_test(test_fault_encode_transient),
        cmocka_unit_test(test_fault_encode_persistent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
