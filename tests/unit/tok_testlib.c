#include "tok_testlib.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "alloc.h"

int tl_read(const char *path, uint8_t **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    gzFile f = gzopen(path, "rb"); /* reads plain files too */
    if (!f)
        return -1;
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = rc_malloc(cap + 1);
    for (;;) {
        if (!buf)
            break;
        if (n == cap) {
            uint8_t *nb = rc_realloc(buf, cap * 2 + 1);
            if (!nb) {
                rc_free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        int got = gzread(f, buf + n, (unsigned)(cap - n > (1u << 30) ? (1u << 30) : cap - n));
        if (got < 0) {
            rc_free(buf);
            buf = NULL;
            break;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    gzclose(f);
    if (!buf)
        return -1;
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}

/* A tokenizer of the Llama family from llama/tokenizers.json.gz (written by
 * gen_goldens_llama.py with HF tokenizers). */
static char *llama_json(const char *name, size_t *len, char *why, size_t whylen)
{
    uint8_t *d;
    size_t n;
    if (tl_read(TL_DIR "/llama/tokenizers.json.gz", &d, &n)) {
        snprintf(why, whylen, TL_DIR "/llama/tokenizers.json.gz is missing: it is made by "
                 "gen_goldens_llama.py on the GPU machine (see the fixtures README)");
        return NULL;
    }
    json_t *all = json_loadb((const char *)d, n, 0, NULL);
    rc_free(d);
    json_t *t = json_object_get(json_object_get(all, "tokenizers"), name);
    char *out = NULL;
    if (json_is_string(t)) {
        *len = json_string_length(t);
        out = rc_malloc(*len + 1);
        if (out)
            memcpy(out, json_string_value(t), *len + 1);
    } else {
        snprintf(why, whylen, "no tokenizer '%s' in llama/tokenizers.json.gz", name);
    }
    json_decref(all);
    return out;
}

char *tl_base_json(const char *name, size_t *len, char *why, size_t whylen)
{
    char path[1024];
    if (!strncmp(name, "llama_", 6))
        return llama_json(name, len, why, whylen);
    if (!strcmp(name, "neox"))
        snprintf(path, sizeof path, "%s/tokenizers/gpt-neox-20b/tokenizer.json", RECUR_SHARED);
    else if (!strcmp(name, "recur"))
        snprintf(path, sizeof path, "%s/recur-sp/tokenizer.json", RECUR_MODELS);
    else
        snprintf(path, sizeof path, "%s/%s/tokenizer.json.gz", TL_DIR, name);
    uint8_t *d;
    if (tl_read(path, &d, len)) {
        snprintf(why, whylen, "%s not readable (%s)", path,
                 !strcmp(name, "neox") ? "configure with -DRECUR_SHARED=<shared dir>"
                                       : "fixture missing");
        return NULL;
    }
    return (char *)d;
}

static json_t *variants_json(void)
{
    uint8_t *d;
    size_t n;
    if (tl_read(TL_DIR "/variants.json", &d, &n))
        return NULL;
    json_t *v = json_loadb((const char *)d, n, 0, NULL);
    rc_free(d);
    return v;
}

static json_t *find_variant(json_t *all, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(all, i, v)
    {
        if (!strcmp(json_string_value(json_object_get(v, "name")), name))
            return v;
    }
    return NULL;
}

/* Apply {"set": {"a.b": value}, "merges_as_pairs": true} as gen_goldens.py does. */
static int apply_edits(json_t *t, json_t *v)
{
    const char *key;
    json_t *val;
    json_object_foreach(json_object_get(v, "set"), key, val)
    {
        json_t *cur = t;
        char buf[256];
        snprintf(buf, sizeof buf, "%s", key);
        char *p = buf, *dot;
        while ((dot = strchr(p, '.'))) {
            *dot = 0;
            cur = json_object_get(cur, p);
            if (!cur)
                return -1;
            p = dot + 1;
        }
        json_object_set(cur, p, val);
    }
    if (json_is_true(json_object_get(v, "merges_as_pairs"))) {
        json_t *m = json_object_get(json_object_get(t, "model"), "merges");
        for (size_t i = 0; i < json_array_size(m); i++) {
            const char *s = json_string_value(json_array_get(m, i));
            const char *sp = s ? strchr(s, ' ') : NULL;
            if (!sp)
                continue;
            json_array_set_new(m, i, json_pack("[s#s]", s, (int)(sp - s), sp + 1));
        }
    }
    return 0;
}

tokenizer_t *tl_load(const char *name, int *rc, char *why, size_t whylen)
{
    *rc = 0;
    json_t *all = NULL, *v = NULL;
    const char *base = name;
    if (strcmp(name, "neox") && strcmp(name, "gpt2") && strcmp(name, "cl100k") &&
        strcmp(name, "recur") && strncmp(name, "llama_", 6)) {
        all = variants_json();
        v = all ? find_variant(all, name) : NULL;
        if (!v) {
            snprintf(why, whylen, "no variant '%s' in variants.json", name);
            json_decref(all);
            *rc = -1;
            return NULL;
        }
        base = json_string_value(json_object_get(v, "base"));
    }
    size_t len;
    char *text = tl_base_json(base, &len, why, whylen);
    if (!text) {
        json_decref(all);
        return NULL;
    }
    tokenizer_t *tok = NULL;
    char err[512];
    if (v) {
        json_t *t = json_loadb(text, len, 0, NULL);
        rc_free(text);
        text = NULL;
        if (!t || apply_edits(t, v)) {
            snprintf(why, whylen, "cannot apply the edits of %s", name);
            json_decref(t);
            json_decref(all);
            *rc = -1;
            return NULL;
        }
        char *dump = json_dumps(t, JSON_COMPACT);
        json_decref(t);
        *rc = tokenizer_load_json(dump, strlen(dump), &tok, err, sizeof err);
        free(dump);
    } else {
        *rc = tokenizer_load_json(text, len, &tok, err, sizeof err);
        rc_free(text);
    }
    json_decref(all);
    if (*rc) {
        snprintf(why, whylen, "%s: %s", name, err);
        return NULL;
    }
    return tok;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **tl_variant_names(void)
{
    json_t *all = variants_json();
    size_t n = json_array_size(all);
    char **names = calloc(n + 1, sizeof *names);
    for (size_t i = 0; i < n; i++)
        names[i] = strdup(json_string_value(json_object_get(json_array_get(all, i), "name")));
    json_decref(all);
    return names;
}

char **tl_text_names(void)
{
    DIR *d = opendir(TL_DIR "/texts");
    size_t n = 0, cap = 64;
    char **names = calloc(cap + 1, sizeof *names);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            names = realloc(names, (2 * cap + 1) * sizeof *names);
            cap *= 2;
        }
        names[n++] = strdup(e->d_name);
    }
    if (d)
        closedir(d);
    names[n] = NULL;
    qsort(names, n, sizeof *names, cmp_str);
    return names;
}

void tl_free_names(char **names)
{
    for (size_t i = 0; names && names[i]; i++)
        free(names[i]);
    free(names);
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

uint64_t tl_block_hash(const int32_t *ids, size_t from, size_t to)
{
    uint64_t h = 0;
    for (size_t g = from; g < to; g++)
        h += mix64((uint64_t)(uint32_t)ids[g] + (uint64_t)(g + 1) * 0x9E3779B97F4A7C15ULL);
    return h;
}

uint32_t tl_crc32(const void *p, size_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    const uint8_t *s = p;
    while (n) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, s, k);
        s += k;
        n -= k;
    }
    return (uint32_t)c;
}

uint32_t tl_crc32_update(uint32_t crc, const void *p, size_t n)
{
    return (uint32_t)crc32(crc, p, (uInt)n); /* callers pass small buffers */
}

static uint64_t rng_next(uint64_t *s)
{
    *s += 0x9E3779B97F4A7C15ULL;
    return mix64(*s);
}

int tl_encode_stream(const tokenizer_t *tok, const uint8_t *text, size_t len,
                     unsigned flags, size_t max_pending, uint64_t seed, size_t max_chunk,
                     int32_t **ids, size_t *n, size_t *max_held)
{
    char err[512];
    tok_encoder_t *e;
    struct tok_encoder_opts o = {flags, max_pending};
    *ids = NULL;
    *n = 0;
    if (max_held)
        *max_held = 0;
    if (tok_encoder_create(tok, &o, &e, err, sizeof err))
        return -1;
    size_t cap = 1024, cnt = 0, k;
    int32_t *out = rc_malloc(cap * sizeof *out);
    size_t off = 0;
    int rc = 0;
    while (!rc) {
        size_t m = 0;
        if (off < len) {
            m = max_chunk <= 1 ? 1 : 1 + (size_t)(rng_next(&seed) % max_chunk);
            /* Now and then a big gulp. */
            if (max_chunk > 1 && rng_next(&seed) % 16 == 0)
                m = 1 + (size_t)(rng_next(&seed) % (64 * max_chunk));
            if (m > len - off)
                m = len - off;
            rc = tok_encoder_feed(e, text + off, m, err, sizeof err);
            off += m;
        } else {
            rc = tok_encoder_finish(e, err, sizeof err);
        }
        if (rc)
            break;
        if (max_held && tok_encoder_pending_bytes(e) > *max_held)
            *max_held = tok_encoder_pending_bytes(e);
        const int32_t *got = tok_encoder_ids(e, &k);
        if (cnt + k > cap) {
            while (cnt + k > cap)
                cap *= 2;
            out = rc_realloc(out, cap * sizeof *out);
        }
        if (k)
            memcpy(out + cnt, got, k * sizeof *got);
        cnt += k;
        tok_encoder_take(e, k);
        if (off >= len && m == 0)
            break;
    }
    tok_encoder_free(e);
    if (rc) {
        fprintf(stderr, "stream encode failed: %s\n", err);
        rc_free(out);
        return -1;
    }
    *ids = out;
    *n = cnt;
    return 0;
}

/* ---- a hand-made Llama-style tokenizer (tok_testlib.h) ---------------------- */

#define SP "\xE2\x96\x81"
static const char *const CHARS[] = {SP, "h", "e", "l", "o", "w", "r", "d", "a", "\xC3\xA9"};
static const char *const MERGES[][2] = {
    {SP, "h"}, {"l", "l"}, {"e", "ll"}, {SP "h", "ell"}, {SP "hell", "o"},
    {SP, "w"}, {"o", "r"}, {SP "w", "or"}, {"l", "d"}, {SP "wor", "ld"},
};

static json_t *str_pattern(const char *s) { return json_pack("{s:s}", "String", s); }

json_t *tl_llama_mini(int form, const char *scheme)
{
    json_t *vocab = json_object();
    json_object_set_new(vocab, "<unk>", json_integer(0));
    json_object_set_new(vocab, "<s>", json_integer(1));
    json_object_set_new(vocab, "</s>", json_integer(2));
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        json_object_set_new(vocab, name, json_integer(3 + b));
    }
    int id = 259;
    for (size_t i = 0; i < sizeof CHARS / sizeof *CHARS; i++)
        json_object_set_new(vocab, CHARS[i], json_integer(id++));
    json_t *merges = json_array();
    for (size_t i = 0; i < sizeof MERGES / sizeof *MERGES; i++) {
        char both[64];
        snprintf(both, sizeof both, "%s%s", MERGES[i][0], MERGES[i][1]);
        json_object_set_new(vocab, both, json_integer(id++));
        json_array_append_new(merges, json_pack("[ss]", MERGES[i][0], MERGES[i][1]));
    }
    json_t *added = json_array();
    const char *sp[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++)
        json_array_append_new(added, json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", i, "content",
                                               sp[i], "single_word", 0, "lstrip", 0, "rstrip", 0,
                                               "normalized", 0, "special", 1));
    json_t *t = json_pack(
        "{s:s,s:o,s:o,s:{s:s,s:n,s:s,s:b,s:b,s:b,s:o,s:o}}", "version", "1.0", "added_tokens", added,
        "post_processor",
        json_pack("{s:s,s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],s:{s:{s:s,s:[i],s:[s]}}}", "type",
                  "TemplateProcessing", "single", "SpecialToken", "id", "<s>", "type_id", 0,
                  "Sequence", "id", "A", "type_id", 0, "special_tokens", "<s>", "id", "<s>", "ids",
                  1, "tokens", "<s>"),
        "model", "type", "BPE", "dropout", "unk_token", "<unk>", "fuse_unk", 1, "byte_fallback", 1,
        "ignore_merges", 0, "vocab", vocab, "merges", merges);
    if (form == 0) {
        json_object_set_new(t, "normalizer",
                            json_pack("{s:s,s:[{s:s,s:s},{s:s,s:o,s:s}]}", "type", "Sequence",
                                      "normalizers", "type", "Prepend", "prepend", SP, "type",
                                      "Replace", "pattern", str_pattern(" "), "content", SP));
        json_object_set_new(t, "pre_tokenizer", json_null());
        json_object_set_new(
            t, "decoder",
            json_pack("{s:s,s:[{s:s,s:o,s:s},{s:s},{s:s},{s:s,s:s,s:i,s:i}]}", "type", "Sequence",
                      "decoders", "type", "Replace", "pattern", str_pattern(SP), "content", " ",
                      "type", "ByteFallback", "type", "Fuse", "type", "Strip", "content", " ",
                      "start", 1, "stop", 0));
    } else {
        json_object_set_new(t, "normalizer", json_null());
        json_object_set_new(t, "pre_tokenizer",
                            json_pack("{s:s,s:s,s:s,s:b}", "type", "Metaspace", "replacement", SP,
                                      "prepend_scheme", scheme, "split", form == 1));
        json_object_set_new(t, "decoder", json_pack("{s:s,s:s,s:s,s:b}", "type", "Metaspace",
                                                    "replacement", SP, "prepend_scheme", scheme,
                                                    "split", form == 1));
    }
    return t;
}

