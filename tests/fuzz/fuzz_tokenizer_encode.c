/* Fuzz target: bytes -> encode / stream-encode / decode / stream-decode with small
 * fixed tokenizers covering every component (NFC and NFKC, added tokens with every
 * flag, Split behaviours, prefix space; and the Llama family: a text vocab with byte
 * fallback, legacy and Metaspace forms, a merge across the metaspace, missing byte
 * tokens so that <unk> is used, ignore_merges). Invariants, checked with abort():
 *   - streaming with chunk sizes taken from the input gives the one-shot ids;
 *   - decode(encode(x)) is valid UTF-8, and the streaming decoder's pieces are valid
 *     UTF-8 that concatenate to it.
 * Input: byte 0 picks the tokenizer and flags, byte 1 seeds the chunking, the rest is
 * the text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "tokenizer.h"
#include "utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The byte-level alphabet and a few merges, as JSON text. */
static size_t vocab_json(char *o, size_t cap)
{
    size_t n = 0;
    int id = 0, extra = 0;
    n += (size_t)snprintf(o + n, cap - n, "{");
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        unsigned cp = keep ? (unsigned)b : 256u + (unsigned)extra++;
        char s[8];
        if (cp == '"' || cp == '\\')
            snprintf(s, sizeof s, "\\%c", (char)cp);
        else if (cp < 0x80)
            snprintf(s, sizeof s, "%c", (char)cp);
        else
            snprintf(s, sizeof s, "%c%c", (char)(0xC0 | (cp >> 6)), (char)(0x80 | (cp & 0x3F)));
        n += (size_t)snprintf(o + n, cap - n, "\"%s\":%d,", s, id++);
    }
    const char *more[] = {"he", "ll", "hell", "hello", "\xC4\xA0w", "\xC4\xA0wo", "rl", "rld",
                          "\xC4\xA0world", "\xC4\xA0\xC4\xA0", "\xC3\x83\xC2\xA9", "aa", "aaaa", "12",
                          "\xC4\xA0t", "th", "the", "\xC4\xA0the"};
    for (size_t i = 0; i < sizeof more / sizeof *more; i++)
        n += (size_t)snprintf(o + n, cap - n, "\"%s\":%d%s", more[i], id++,
                              i + 1 < sizeof more / sizeof *more ? "," : "}");
    return n;
}

static const char MERGES[] =
    "[\"h e\",\"l l\",\"he ll\",\"hell o\",\"\xC4\xA0 w\",\"\xC4\xA0w o\",\"r l\",\"rl d\","
    "\"\xC4\xA0wo rld\",\"\xC4\xA0 \xC4\xA0\",\"\xC3\x83 \xC2\xA9\",\"a a\",\"aa aa\",\"1 2\","
    "\"\xC4\xA0 t\",\"t h\",\"th e\",\"\xC4\xA0t he\"]";

/* Ids of added tokens: the vocab has 256 + 18 = 274 entries. */
static const char *ADDED =
    "[{\"id\":274,\"content\":\"<|endoftext|>\",\"special\":true,\"normalized\":false},"
    "{\"id\":275,\"content\":\"  \",\"special\":false,\"normalized\":true},"
    "{\"id\":276,\"content\":\"[M]\",\"special\":true,\"normalized\":false,\"lstrip\":true},"
    "{\"id\":277,\"content\":\"<s>\",\"special\":false,\"normalized\":false,\"rstrip\":true},"
    "{\"id\":278,\"content\":\"wor\",\"special\":false,\"normalized\":true,\"single_word\":true},"
    "{\"id\":279,\"content\":\"e\xCC\x81t\xC3\xA9\",\"special\":false,\"normalized\":true},"
    "{\"id\":280,\"content\":\"<a><b>\",\"special\":true,\"normalized\":false}]";

static const char *CONFIGS[][2] = {
    {"{\"type\":\"NFC\"}", "{\"type\":\"ByteLevel\",\"add_prefix_space\":false}"},
    {"{\"type\":\"NFKC\"}", "{\"type\":\"ByteLevel\",\"add_prefix_space\":true}"},
    {"null", "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
             "\"(?i:'s|'t)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+"
             "[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Removed\","
             "\"invert\":true},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}"},
    {"{\"type\":\"NFC\"}", "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
             "{\"Regex\":\"\\\\p{P}\"},\"behavior\":\"Contiguous\",\"invert\":false},{\"type\":"
             "\"ByteLevel\",\"add_prefix_space\":true}]}"},
    {"{\"type\":\"NFD\"}", "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
             "{\"String\":\" \"},\"behavior\":\"MergedWithNext\",\"invert\":false},{\"type\":"
             "\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}"},
    {"{\"type\":\"NFC\"}", "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
             "{\"Regex\":\"\\\\s\"},\"behavior\":\"MergedWithPrevious\",\"invert\":true},{\"type\":"
             "\"ByteLevel\",\"add_prefix_space\":true}]}"},
};
#define N_BYTELEVEL (sizeof CONFIGS / sizeof *CONFIGS)

/* Text vocab: <unk> <s> </s>, <0x00>..<0xFF> (some left out in config 3), then text. */
#define SP "\xE2\x96\x81"
static const char *TEXT_TOKENS[] = {SP, "h", "e", "l", "o", "w", "r", "d", "a", "\xC3\xA9",
                                    SP "h", "ll", "ell", SP "hell", SP "hello", SP "w", "or",
                                    SP "wor", "ld", SP "world", "d" SP, "d" SP "h", SP SP, "aa"};
static const char TEXT_MERGES[] =
    "[\"" SP " h\",\"l l\",\"e ll\",\"" SP "h ell\",\"" SP "hell o\",\"" SP " w\",\"o r\","
    "\"" SP "w or\",\"l d\",\"" SP "wor ld\",\"d " SP "\",\"d" SP " h\",\"" SP " " SP "\","
    "\"a a\"]";
static const char *TEXT_CONFIGS[][4] = { /* normalizer, pre_tokenizer, decoder, model extra */
    {"{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"" SP "\"},"
     "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"" SP "\"}]}",
     "null",
     "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":"
     "\"" SP "\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
     "{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]}", ",\"fuse_unk\":true"},
    {"{\"type\":\"NFKC\"}",
     "{\"type\":\"Metaspace\",\"replacement\":\"" SP "\",\"prepend_scheme\":\"first\",\"split\":true}",
     "{\"type\":\"Metaspace\",\"replacement\":\"" SP "\",\"prepend_scheme\":\"first\",\"split\":true}", ""},
    {"null",
     "{\"type\":\"Metaspace\",\"replacement\":\"" SP "\",\"prepend_scheme\":\"always\",\"split\":false}",
     "null", ",\"ignore_merges\":true,\"fuse_unk\":true"},
    {"{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"" SP "\"},"
     "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"" SP "\"}]}",
     "null",
     "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"Regex\":"
     "\"" SP "+\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"}]}",
     ",\"fuse_unk\":false"},
};
#define N_CONFIGS (N_BYTELEVEL + sizeof TEXT_CONFIGS / sizeof *TEXT_CONFIGS)

static tokenizer_t *toks[N_CONFIGS];

static int text_tokenizer(size_t i, char *buf, size_t cap)
{
    const char *const *c = TEXT_CONFIGS[i];
    int n = snprintf(buf, cap,
                     "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true,"
                     "\"normalized\":false},{\"id\":1,\"content\":\"<s>\",\"special\":true,"
                     "\"normalized\":false},{\"id\":2,\"content\":\"</s>\",\"special\":true,"
                     "\"normalized\":false}],\"normalizer\":%s,\"pre_tokenizer\":%s,\"decoder\":%s,"
                     "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
                     "{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
                     "\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}},"
                     "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\","
                     "\"byte_fallback\":true%s,\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2",
                     c[0], c[1], c[2], c[3]);
    int id = 3;
    for (int b = 0; b < 256; b++, id++)
        if (!(i == 3 && (b == 0x0A || b == 0xF0 || b == 0xC3)))
            n += snprintf(buf + n, cap - (size_t)n, ",\"<0x%02X>\":%d", b, id);
    for (size_t k = 0; k < sizeof TEXT_TOKENS / sizeof *TEXT_TOKENS; k++)
        n += snprintf(buf + n, cap - (size_t)n, ",\"%s\":%d", TEXT_TOKENS[k], id++);
    n += snprintf(buf + n, cap - (size_t)n, "},\"merges\":%s}}", TEXT_MERGES);
    return n;
}

static tokenizer_t *get(size_t i)
{
    if (toks[i])
        return toks[i];
    static char buf[16384];
    char vocab[8192];
    vocab_json(vocab, sizeof vocab);
    int n = i >= N_BYTELEVEL ? text_tokenizer(i - N_BYTELEVEL, buf, sizeof buf) : snprintf(buf, sizeof buf,
                     "{\"added_tokens\":%s,\"normalizer\":%s,\"pre_tokenizer\":%s,"
                     "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                     "\"vocab\":%s,\"merges\":%s}}",
                     ADDED, CONFIGS[i][0], CONFIGS[i][1], vocab, MERGES);
    if (n <= 0 || (size_t)n >= sizeof buf)
        abort();
    char err[256];
    if (tokenizer_load_json(buf, (size_t)n, &toks[i], err, sizeof err)) {
        fprintf(stderr, "fuzz setup: %s\n", err);
        abort();
    }
    return toks[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const tokenizer_t *tok = get(data[0] % N_CONFIGS);
    unsigned flags = (data[0] & 0x80) ? TOK_ENCODE_NO_SPECIAL : 0;
    uint32_t seed = data[1] * 2654435761u + 1;
    const char *text = (const char *)data + 2;
    size_t len = size - 2;
    char err[256];
    int32_t *ids;
    size_t n;
    if (tokenizer_encode(tok, text, len, flags, &ids, &n, err, sizeof err))
        abort(); /* only allocation can fail, and these inputs are small */
    tok_encoder_t *e;
    struct tok_encoder_opts o = {flags, (data[1] & 1) ? 256 : 0};
    if (tok_encoder_create(tok, &o, &e, err, sizeof err))
        abort();
    size_t off = 0;
    while (off < len) {
        seed = seed * 1103515245u + 12345u;
        size_t m = 1 + (seed >> 16) % 13;
        if (m > len - off)
            m = len - off;
        if (tok_encoder_feed(e, text + off, m, err, sizeof err))
            abort();
        off += m;
    }
    if (tok_encoder_finish(e, err, sizeof err))
        abort();
    size_t k;
    const int32_t *s = tok_encoder_ids(e, &k);
    /* With a 256-byte cap a longer pre-token is windowed (exact only in practice), so
     * compare only when nothing was that long. */
    if ((o.max_pending == 0 || len < 256) && (k != n || (n && memcmp(s, ids, n * sizeof *ids)))) {
        fprintf(stderr, "streaming differs from one-shot\n");
        abort();
    }
    tok_encoder_free(e);
    char *whole;
    size_t wl;
    if (tokenizer_decode(tok, ids, n, 0, &whole, &wl, err, sizeof err) ||
        !utf8_valid((const uint8_t *)whole, wl))
        abort();
    tok_decoder_t *d;
    if (tok_decoder_create(tok, (data[0] & 0x40) ? TOK_DECODE_SKIP_SPECIAL : 0, &d, err, sizeof err))
        abort();
    size_t at = 0;
    int skip = (data[0] & 0x40) != 0;
    for (size_t i = 0; i <= n; i++) {
        const char *p;
        size_t pl;
        if (i < n ? tok_decoder_feed(d, ids[i], &p, &pl, err, sizeof err) : tok_decoder_flush(d, &p, &pl))
            abort();
        if (!utf8_valid((const uint8_t *)p, pl))
            abort();
        if (!skip && (at + pl > wl || (pl && memcmp(whole + at, p, pl)))) {
            fprintf(stderr, "streaming decode differs from decode at byte %zu (id %zu): '%.*s' "
                    "vs '%.*s'\n", at, i, (int)pl, p, (int)(wl - at < pl ? wl - at : pl), whole + at);
            abort();
        }
        at += pl;
    }
    if (!skip && at != wl) {
        fprintf(stderr, "streaming decode gave %zu bytes, decode %zu\n", at, wl);
        abort();
    }
    tok_decoder_free(d);
    rc_free(whole);
    rc_free(ids);
    return 0;
}
