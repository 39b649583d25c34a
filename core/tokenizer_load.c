/*
 * tokenizer_load.c — tokenizer.json -> tokenizer_t.
 *
 * Follows the reference's deserialisation (tokenizers 0.23: tokenizer/serialization.rs,
 * models/bpe/serialization.rs, added_vocabulary.rs) and checks what it checks, plus what
 * a server must not trust: sizes are capped, ids must be unique and in range, merges
 * must name vocab entries, and every component we would not run like the reference is
 * refused by name instead of being approximated.
 */
#include <errno.h>
#include <stdarg.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "errors.h"
#include "tokenizer_impl.h"
#include "utf8.h"

#define MAX_JSON_DEPTH_STEPS 16

/* ---- the byte-level alphabet (GPT-2's bytes_to_unicode) ------------------------ */

/* Byte b is shown as code point byte_cp(b); printable Latin-1 bytes stand for
 * themselves, the other 68 take 256, 257, ... in byte order. */
static void byte_alphabet(uint32_t cp_of[256], int16_t byte_of[324])
{
    for (int i = 0; i < 324; i++)
        byte_of[i] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        cp_of[b] = keep ? (uint32_t)b : (uint32_t)(256 + n++);
        byte_of[cp_of[b]] = (int16_t)b;
    }
}

struct loader {
    json_t *root, *vocab;
    tokenizer_t *tok;
    char *err;
    size_t errlen;
    uint32_t cp_of[256];
    int16_t byte_of[324];
    struct tok_bytes scratch;
    int32_t n_vocab_entries;
    const char *unk_str;   /* the BPE unk_token, if any */
    size_t unk_len;
};

/* The bytes a token string stands for: all characters in the byte alphabet -> those
 * bytes; otherwise its UTF-8 as is (the reference's ByteLevel decoder does the same,
 * per token). Appends to out; returns 1 if the string was byte-level. */
static int token_bytes(const struct loader *L, const char *s, size_t n, struct tok_bytes *out,
                       int *nomem)
{
    size_t start = out->n;
    *nomem = 0;
    if (tok_bytes_reserve(out, n)) {
        *nomem = 1;
        return 0;
    }
    size_t i = 0;
    while (i < n) {
        uint32_t c;
        int k = utf8_decode((const uint8_t *)s + i, &c);
        if (c >= 324 || L->byte_of[c] < 0) {
            out->n = start;
            if (n)
                memcpy(out->p + out->n, s, n);
            out->n += n;
            return 0;
        }
        out->p[out->n++] = (uint8_t)L->byte_of[c];
        i += (size_t)k;
    }
    return 1;
}

static int load_fail(struct loader *L, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int load_fail(struct loader *L, int code, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return rc_fail(L->err, L->errlen, code, "tokenizer.json: %s", buf);
}

static int nomem(struct loader *L) { return rc_fail(L->err, L->errlen, RC_ENOMEM, "out of memory"); }

/* Short, printable rendering of a JSON string for error messages. */
static const char *clip(const char *s, char buf[48])
{
    size_t i = 0;
    for (; s[i] && i < 40; i++)
        buf[i] = (s[i] >= 0x20 && s[i] < 0x7F) ? s[i] : '?';
    buf[i] = 0;
    if (s[i])
        strcpy(buf + i, "...");
    return buf;
}

static const char *type_of(json_t *o)
{
    json_t *t = json_is_object(o) ? json_object_get(o, "type") : NULL;
    return json_is_string(t) ? json_string_value(t) : NULL;
}

/* Optional boolean: absent or null -> dflt. */
static int get_bool(struct loader *L, json_t *o, const char *key, int dflt, int *out,
                    const char *where)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v))
        return load_fail(L, RC_EFORMAT, "%s: \"%s\" is not a boolean", where, key);
    *out = json_is_true(v);
    return 0;
}

/* Vocab id of a string, -1 if absent. */
static int32_t vocab_id(const struct loader *L, const char *s, size_t n)
{
    json_t *v = json_object_getn(L->vocab, s, n);
    return v ? (int32_t)json_integer_value(v) : -1;
}

/* ---- normaliser ------------------------------------------------------------------- */

/* A JSON string as an rc_malloc'ed copy (NUL-terminated). */
static int dup_str(struct loader *L, json_t *v, uint8_t **out, size_t *len)
{
    *len = json_string_length(v);
    *out = rc_malloc(*len + 1);
    if (!*out)
        return nomem(L);
    memcpy(*out, json_string_value(v), *len + 1);
    return 0;
}

/* Exactly one character (the reference's char fields). */
static int one_char(struct loader *L, json_t *v, uint8_t ch[4], int *len, const char *where)
{
    uint32_t c;
    const uint8_t *p = (const uint8_t *)json_string_value(v);
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        (size_t)utf8_decode(p, &c) != json_string_length(v))
        return load_fail(L, RC_EFORMAT, "%s must be one character", where);
    *len = (int)json_string_length(v);
    memcpy(ch, p, (size_t)*len);
    return 0;
}

static int parse_norm(struct loader *L, json_t *j, int depth)
{
    struct normalizer *nz = &L->tok->norm;
    if (!j || json_is_null(j))
        return 0;
    const char *t = type_of(j);
    if (!t)
        return load_fail(L, RC_EFORMAT, "normalizer has no \"type\"");
    if (depth > MAX_JSON_DEPTH_STEPS)
        return load_fail(L, RC_ERANGE, "normalizer nested too deeply");
    if (!strcmp(t, "Sequence")) {
        json_t *arr = json_object_get(j, "normalizers");
        if (!json_is_array(arr))
            return load_fail(L, RC_EFORMAT, "normalizer Sequence without a \"normalizers\" array");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            int rc = parse_norm(L, json_array_get(arr, i), depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    int form = !strcmp(t, "NFC") ? NORM_NFC : !strcmp(t, "NFKC") ? NORM_NFKC
             : !strcmp(t, "NFD") ? NORM_NFD : !strcmp(t, "NFKD") ? NORM_NFKD : 0;
    char b[48];
    if (!form && strcmp(t, "Prepend") && strcmp(t, "Replace"))
        return load_fail(L, RC_EUNSUPPORTED, "normalizer '%s' is not supported (NFC, NFKC, NFD, "
                    "NFKD, Prepend, Replace with a String pattern, Sequence)", clip(t, b));
    struct nstep *last = nz->n ? &nz->step[nz->n - 1] : NULL;
    if (form && last && last->kind == NS_NF) {
        if (last->nf.n == NORM_MAX_STEPS)
            return load_fail(L, RC_ERANGE, "more than 8 normalizers");
    } else {
        if (nz->n == NORM_MAX_STEPS)
            return load_fail(L, RC_ERANGE, "more than 8 normalizers");
        last = &nz->step[nz->n++];
        memset(last, 0, sizeof *last);
    }
    if (form) {
        struct norm *nm = &last->nf;
        last->kind = NS_NF;
        nm->form[nm->n++] = (uint8_t)form;
        nm->compat |= form == NORM_NFKC || form == NORM_NFKD;
        nm->compose |= form == NORM_NFC || form == NORM_NFKC;
        nz->compat |= nm->compat;
        nz->compose |= nm->compose;
        return 0;
    }
    if (!strcmp(t, "Prepend")) {
        json_t *v = json_object_get(j, "prepend");
        if (!json_is_string(v))
            return load_fail(L, RC_EFORMAT, "normalizer Prepend: \"prepend\" is not a string");
        last->kind = NS_PREPEND;
        return dup_str(L, v, &last->a, &last->a_len);
    }
    json_t *pat = json_object_get(j, "pattern"), *content = json_object_get(j, "content");
    json_t *ps = json_is_object(pat) ? json_object_get(pat, "String") : NULL;
    if (json_is_object(pat) && json_object_get(pat, "Regex"))
        return load_fail(L, RC_EUNSUPPORTED, "normalizer Replace with a Regex pattern is not "
                    "supported (String patterns only)");
    if (!json_is_string(ps) || !json_is_string(content))
        return load_fail(L, RC_EFORMAT, "normalizer Replace needs {\"String\": ...} and a "
                    "\"content\" string");
    if (json_string_length(ps) == 0)
        return load_fail(L, RC_EUNSUPPORTED, "normalizer Replace of the empty string");
    last->kind = NS_REPLACE;
    int rc = dup_str(L, ps, &last->a, &last->a_len);
    return rc ? rc : dup_str(L, content, &last->b, &last->b_len);
}

/* ---- pre-tokenizer ------------------------------------------------------------------ */

static int parse_pre(struct loader *L, json_t *j, int depth)
{
    struct pretok *pre = &L->tok->pre;
    const char *t = type_of(j);
    char b[48];
    if (!t)
        return load_fail(L, RC_EFORMAT, "pre_tokenizer has no \"type\"");
    if (depth > MAX_JSON_DEPTH_STEPS)
        return load_fail(L, RC_ERANGE, "pre_tokenizer nested too deeply");
    if (!strcmp(t, "Sequence")) {
        json_t *arr = json_object_get(j, "pretokenizers");
        if (!json_is_array(arr))
            return load_fail(L, RC_EFORMAT, "pre_tokenizer Sequence without \"pretokenizers\"");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            int rc = parse_pre(L, json_array_get(arr, i), depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (pre->n == PT_MAX_STEPS)
        return load_fail(L, RC_ERANGE, "more than 8 pre-tokenizer steps");
    if (pre->n > 0 && pre->step[pre->n - 1].kind == PT_BYTELEVEL)
        return load_fail(L, RC_EUNSUPPORTED,
                    "pre_tokenizer '%s' after ByteLevel is not supported (it would see "
                    "byte-level characters)", clip(t, b));
    struct pt_step *st = &pre->step[pre->n];
    memset(st, 0, sizeof *st);
    int rc;
    if (!strcmp(t, "ByteLevel")) {
        json_t *aps = json_object_get(j, "add_prefix_space");
        if (!json_is_boolean(aps))
            return load_fail(L, RC_EFORMAT, "ByteLevel pre_tokenizer: \"add_prefix_space\" missing "
                        "or not a boolean");
        st->kind = PT_BYTELEVEL;
        st->add_prefix_space = json_is_true(aps);
        if ((rc = get_bool(L, j, "use_regex", 1, &st->use_regex, "ByteLevel pre_tokenizer")))
            return rc;
        if (st->use_regex &&
            (rc = pretok_regex_compile(pre, PRETOK_GPT2_PATTERN, strlen(PRETOK_GPT2_PATTERN), 0,
                                       st, L->err, L->errlen)))
            return rc;
        pre->n++;
        return 0;
    }
    if (!strcmp(t, "Metaspace")) {
        json_t *ps = json_object_get(j, "prepend_scheme");
        const char *sch = json_is_string(ps) ? json_string_value(ps) : "always";
        int rc2, aps = -1;
        if (pre->n > 0)
            return load_fail(L, RC_EUNSUPPORTED, "pre_tokenizer Metaspace after another step "
                        "is not supported (only as the first)");
        if ((rc2 = one_char(L, json_object_get(j, "replacement"), st->rep, &st->rep_len,
                            "Metaspace \"replacement\"")))
            return rc2;
        st->kind = PT_METASPACE;
        st->prepend = !strcmp(sch, "always") ? MS_ALWAYS : !strcmp(sch, "first") ? MS_FIRST
                    : !strcmp(sch, "never") ? MS_NEVER : 0;
        if (!st->prepend || (ps && !json_is_string(ps)))
            return load_fail(L, RC_EFORMAT, "Metaspace: unknown \"prepend_scheme\"");
        json_t *ap = json_object_get(j, "add_prefix_space");
        if (json_is_boolean(ap))
            aps = json_is_true(ap);
        if (aps == 0) { /* the legacy field, as the reference reads it */
            if (st->prepend != MS_NEVER)
                return load_fail(L, RC_EFORMAT, "Metaspace: add_prefix_space does not match "
                            "prepend_scheme");
            st->prepend = MS_NEVER;
        }
        if ((rc2 = get_bool(L, j, "split", 1, &st->split, "Metaspace")))
            return rc2;
        st->behavior = SB_MERGED_NEXT;
        if (st->split && (rc2 = pretok_regex_compile(pre, (const char *)st->rep,
                                                     (size_t)st->rep_len, 1, st, L->err,
                                                     L->errlen)))
            return rc2;
        pre->n++;
        return 0;
    }
    if (!strcmp(t, "Split")) {
        json_t *pat = json_object_get(j, "pattern");
        json_t *beh = json_object_get(j, "behavior");
        json_t *ps = json_is_object(pat) ? json_object_get(pat, "Regex") : NULL;
        int literal = 0;
        if (!ps && json_is_object(pat)) {
            ps = json_object_get(pat, "String");
            literal = 1;
        }
        if (!json_is_string(ps) || json_object_size(pat) != 1)
            return load_fail(L, RC_EFORMAT, "Split: \"pattern\" must be {\"Regex\": ...} or "
                        "{\"String\": ...}");
        const char *bv = json_is_string(beh) ? json_string_value(beh) : "";
        st->kind = PT_SPLIT;
        st->behavior = !strcmp(bv, "Removed") ? SB_REMOVED : !strcmp(bv, "Isolated") ? SB_ISOLATED
                     : !strcmp(bv, "MergedWithPrevious") ? SB_MERGED_PREV
                     : !strcmp(bv, "MergedWithNext") ? SB_MERGED_NEXT
                     : !strcmp(bv, "Contiguous") ? SB_CONTIGUOUS : 0;
        if (!st->behavior)
            return load_fail(L, RC_EFORMAT, "Split: unknown \"behavior\" '%s'", clip(bv, b));
        if ((rc = get_bool(L, j, "invert", 0, &st->invert, "Split")))
            return rc;
        size_t plen = json_string_length(ps);
        if (plen > 65536)
            return load_fail(L, RC_ERANGE, "Split pattern longer than 64 KiB");
        if ((rc = pretok_regex_compile(pre, json_string_value(ps), plen, literal, st, L->err,
                                       L->errlen)))
            return rc;
        pre->n++;
        return 0;
    }
    return load_fail(L, RC_EUNSUPPORTED,
                "pre_tokenizer '%s' is not supported (ByteLevel, Split, Metaspace, Sequence)", clip(t, b));
}

/* ---- post-processor and decoder --------------------------------------------------- */

/* The template's special token "name" -> its one id. */
static int template_token(struct loader *L, json_t *j, const char *name, int32_t *id)
{
    json_t *sp = json_object_get(json_object_get(j, "special_tokens"), name);
    json_t *ids = json_object_get(sp, "ids");
    char b[48];
    if (json_array_size(ids) != 1 || !json_is_integer(json_array_get(ids, 0)))
        return load_fail(L, RC_EUNSUPPORTED, "post_processor TemplateProcessing: special token "
                    "'%s' must stand for exactly one id", clip(name, b));
    json_int_t v = json_integer_value(json_array_get(ids, 0));
    if (v < 0 || v >= TOKENIZER_MAX_IDS)
        return load_fail(L, RC_ERANGE, "post_processor TemplateProcessing: id out of range");
    *id = (int32_t)v;
    return 0;
}

/* Post-processors: those that add nothing, and a TemplateProcessing whose single
 * template is "$A" or "<bos> $A" (one special token in front: tok->bos_id). recurd
 * encodes the text alone; the caller puts the BOS id at position 0 of a stream. */
static int parse_post(struct loader *L, json_t *j, int depth)
{
    char b[48];
    if (!j || json_is_null(j))
        return 0;
    const char *t = type_of(j);
    if (!t)
        return load_fail(L, RC_EFORMAT, "post_processor has no \"type\"");
    if (depth > MAX_JSON_DEPTH_STEPS)
        return load_fail(L, RC_ERANGE, "post_processor nested too deeply");
    if (!strcmp(t, "ByteLevel"))
        return 0; /* it only trims offsets */
    if (!strcmp(t, "Sequence")) {
        json_t *arr = json_object_get(j, "processors");
        if (!json_is_array(arr))
            return load_fail(L, RC_EFORMAT, "post_processor Sequence without \"processors\"");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            int rc = parse_post(L, json_array_get(arr, i), depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (!strcmp(t, "TemplateProcessing")) {
        json_t *single = json_object_get(j, "single");
        size_t n = json_array_size(single);
        json_t *last = json_array_get(single, n ? n - 1 : 0);
        json_t *seq = json_is_object(last) ? json_object_get(last, "Sequence") : NULL;
        json_t *sid = json_is_object(seq) ? json_object_get(seq, "id") : NULL;
        json_t *e0 = json_array_get(single, 0);
        json_t *sp = n == 2 && json_is_object(e0) ? json_object_get(e0, "SpecialToken") : NULL;
        json_t *spid = json_is_object(sp) ? json_object_get(sp, "id") : NULL;
        if (!json_is_string(sid) || strcmp(json_string_value(sid), "A") ||
            !(n == 1 || json_is_string(spid)))
            return load_fail(L, RC_EUNSUPPORTED,
                        "post_processor TemplateProcessing: only the single templates \"$A\" "
                        "and \"<special> $A\" are supported (nothing after the text)");
        if (n == 1)
            return 0;
        if (L->tok->bos_id >= 0)
            return load_fail(L, RC_EUNSUPPORTED, "post_processor: two templates add a token");
        return template_token(L, j, json_string_value(spid), &L->tok->bos_id);
    }
    return load_fail(L, RC_EUNSUPPORTED,
                "post_processor '%s' is not supported (ByteLevel, TemplateProcessing of $A "
                "or <special> $A, Sequence)", clip(t, b));
}

/* Byte-level vocab: the ByteLevel decoder (alone or in a one-step Sequence). */
static int check_decoder(struct loader *L, json_t *j, int depth)
{
    char b[48];
    if (!j || json_is_null(j))
        return load_fail(L, RC_EUNSUPPORTED, "no decoder: a ByteLevel vocab needs the ByteLevel "
                    "decoder");
    const char *t = type_of(j);
    if (!t)
        return load_fail(L, RC_EFORMAT, "decoder has no \"type\"");
    if (!strcmp(t, "ByteLevel"))
        return 0;
    if (!strcmp(t, "Sequence") && depth < MAX_JSON_DEPTH_STEPS) {
        json_t *arr = json_object_get(j, "decoders");
        if (json_is_array(arr) && json_array_size(arr) == 1)
            return check_decoder(L, json_array_get(arr, 0), depth + 1);
    }
    return load_fail(L, RC_EUNSUPPORTED, "decoder '%s' is not supported with a ByteLevel "
                "pre-tokenizer (ByteLevel)", clip(t, b));
}

/* Text vocab: the decoder chain (Replace, ByteFallback, Fuse, Strip, Metaspace,
 * Sequence of those), or none. */
static int parse_decoder(struct loader *L, json_t *j, int depth)
{
    tokenizer_t *tok = L->tok;
    char b[48];
    int rc;
    if (depth == 0 && (!j || json_is_null(j))) {
        tok->dec_none = 1;
        return 0;
    }
    const char *t = type_of(j);
    if (!t)
        return load_fail(L, RC_EFORMAT, "decoder has no \"type\"");
    if (depth > MAX_JSON_DEPTH_STEPS)
        return load_fail(L, RC_ERANGE, "decoder nested too deeply");
    if (!strcmp(t, "Sequence")) {
        json_t *arr = json_object_get(j, "decoders");
        if (!json_is_array(arr))
            return load_fail(L, RC_EFORMAT, "decoder Sequence without \"decoders\"");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if ((rc = parse_decoder(L, json_array_get(arr, i), depth + 1)))
                return rc;
        return 0;
    }
    if (tok->n_dec == DEC_MAX_STEPS)
        return load_fail(L, RC_ERANGE, "more than 8 decoders");
    struct dec_step *d = &tok->dec[tok->n_dec];
    memset(d, 0, sizeof *d);
    d->re_step = -1;
    tok->n_dec++; /* now, so that tokenizer_free releases what d gets */
    if (!strcmp(t, "ByteFallback") || !strcmp(t, "Fuse")) {
        d->kind = !strcmp(t, "Fuse") ? DEC_FUSE : DEC_BYTEFALLBACK;
    } else if (!strcmp(t, "Strip")) {
        json_t *st = json_object_get(j, "start"), *sp = json_object_get(j, "stop");
        if ((rc = one_char(L, json_object_get(j, "content"), d->ch, &d->ch_len,
                           "Strip decoder \"content\"")))
            return rc;
        if (!json_is_integer(st) || !json_is_integer(sp) || json_integer_value(st) < 0 ||
            json_integer_value(sp) < 0 || json_integer_value(st) > 1 << 20 ||
            json_integer_value(sp) > 1 << 20)
            return load_fail(L, RC_EFORMAT, "Strip decoder: \"start\"/\"stop\" must be small "
                        "non-negative integers");
        d->kind = DEC_STRIP;
        d->start = (size_t)json_integer_value(st);
        d->stop = (size_t)json_integer_value(sp);
    } else if (!strcmp(t, "Metaspace")) {
        json_t *ps = json_object_get(j, "prepend_scheme"), *ap = json_object_get(j, "add_prefix_space");
        const char *sch = json_is_string(ps) ? json_string_value(ps) : "always";
        if ((rc = one_char(L, json_object_get(j, "replacement"), d->ch, &d->ch_len,
                           "Metaspace decoder \"replacement\"")))
            return rc;
        d->kind = DEC_METASPACE;
        d->prepend = !strcmp(sch, "always") ? MS_ALWAYS : !strcmp(sch, "first") ? MS_FIRST
                   : !strcmp(sch, "never") ? MS_NEVER : 0;
        if (!d->prepend || (ps && !json_is_string(ps)))
            return load_fail(L, RC_EFORMAT, "Metaspace decoder: unknown \"prepend_scheme\"");
        if (json_is_false(ap)) {
            if (d->prepend != MS_NEVER)
                return load_fail(L, RC_EFORMAT, "Metaspace decoder: add_prefix_space does not "
                            "match prepend_scheme");
        }
    } else if (!strcmp(t, "Replace")) {
        json_t *pat = json_object_get(j, "pattern"), *content = json_object_get(j, "content");
        json_t *ps = json_is_object(pat) ? json_object_get(pat, "String") : NULL;
        json_t *pr = json_is_object(pat) ? json_object_get(pat, "Regex") : NULL;
        if ((!json_is_string(ps) && !json_is_string(pr)) || !json_is_string(content))
            return load_fail(L, RC_EFORMAT, "Replace decoder needs {\"String\"|\"Regex\": ...} "
                        "and a \"content\" string");
        d->kind = DEC_REPLACE;
        if ((rc = dup_str(L, content, &d->rep, &d->rep_len)))
            return rc;
        json_t *src = ps ? ps : pr;
        if (json_string_length(src) == 0)
            return load_fail(L, RC_EUNSUPPORTED, "Replace decoder of the empty string");
        if (tok->dec_re.n == PT_MAX_STEPS)
            return load_fail(L, RC_ERANGE, "too many Replace decoders");
        struct pt_step *rs = &tok->dec_re.step[tok->dec_re.n];
        memset(rs, 0, sizeof *rs);
        if ((rc = pretok_regex_compile(&tok->dec_re, json_string_value(src),
                                       json_string_length(src), ps != NULL, rs, L->err,
                                       L->errlen)))
            return rc;
        d->re_step = tok->dec_re.n++;
    } else {
        return load_fail(L, RC_EUNSUPPORTED, "decoder '%s' is not supported (Replace, "
                    "ByteFallback, Fuse, Strip, Metaspace, Sequence; ByteLevel with a "
                    "ByteLevel pre-tokenizer)", clip(t, b));
    }
    return 0;
}

/* ---- added tokens -------------------------------------------------------------------- */

struct added_in {
    const char *content;
    size_t len;
    int32_t id;
    int special, normalized, lstrip, rstrip, single_word;
    int owned; /* content was replaced by an rc_malloc'ed normalised copy */
    int ever_special; /* the reference never forgets that a content was special */
};

static int same_props(const struct added_in *a, const struct added_in *b)
{
    return a->len == b->len && !memcmp(a->content, b->content, a->len) &&
           a->special == b->special && a->normalized == b->normalized &&
           a->lstrip == b->lstrip && a->rstrip == b->rstrip && a->single_word == b->single_word;
}

/* Parse added_tokens and assign ids as the reference does: a content already known
 * (added before, or in the model vocab) keeps its id, a new one takes the next id
 * after the vocab. The file's "id" must agree. Result in *out (rc_free), indexed by
 * slot; by_id maps id -> slot. */
static int parse_added(struct loader *L, struct added_in **out, size_t *n_out)
{
    json_t *arr = json_object_get(L->root, "added_tokens");
    *out = NULL;
    *n_out = 0;
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return load_fail(L, RC_EFORMAT, "\"added_tokens\" is not an array");
    size_t n = json_array_size(arr);
    if (n > 1 << 20)
        return load_fail(L, RC_ERANGE, "more than 2^20 added tokens");
    struct added_in *v = rc_calloc(n ? n : 1, sizeof *v);
    json_t *map = json_object(); /* content -> slot */
    if (!v || !map) {
        rc_free(v);
        json_decref(map);
        return nomem(L);
    }
    int64_t next_id = L->n_vocab_entries;
    size_t cnt = 0;
    int rc = 0;
    char idb[32];
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *o = json_array_get(arr, i);
        json_t *c = json_object_get(o, "content"), *id = json_object_get(o, "id");
        snprintf(idb, sizeof idb, "%zu", i);
        if (!json_is_object(o) || !json_is_string(c) || !json_is_integer(id)) {
            rc = load_fail(L, RC_EFORMAT, "added_tokens[%s] needs a string \"content\" and an "
                      "integer \"id\"", idb);
            break;
        }
        struct added_in a = {.content = json_string_value(c), .len = json_string_length(c)};
        json_int_t fid = json_integer_value(id);
        if ((rc = get_bool(L, o, "special", 0, &a.special, "added token")) ||
            (rc = get_bool(L, o, "normalized", !a.special, &a.normalized, "added token")) ||
            (rc = get_bool(L, o, "lstrip", 0, &a.lstrip, "added token")) ||
            (rc = get_bool(L, o, "rstrip", 0, &a.rstrip, "added token")) ||
            (rc = get_bool(L, o, "single_word", 0, &a.single_word, "added token")))
            break;
        if (a.len == 0)
            continue; /* the reference ignores empty tokens */
        if (a.len > TOKENIZER_MAX_TOKEN_BYTES) {
            rc = load_fail(L, RC_ERANGE, "added_tokens[%s] is longer than 4096 bytes", idb);
            break;
        }
        json_t *slot = json_object_getn(map, a.content, a.len);
        if (slot && same_props(&v[json_integer_value(slot)], &a))
            continue;
        int64_t nid;
        if (slot)
            nid = v[json_integer_value(slot)].id;
        else if ((nid = vocab_id(L, a.content, a.len)) < 0)
            nid = next_id++;
        if (fid != nid || nid >= TOKENIZER_MAX_IDS) {
            char b[48], msg[64];
            snprintf(msg, sizeof msg, "%lld, the reference gives it %lld", (long long)fid,
                     (long long)nid);
            rc = load_fail(L, RC_EFORMAT, "added token '%s' has id %s", clip(a.content, b), msg);
            break;
        }
        a.id = (int32_t)nid;
        if (slot) {
            a.ever_special = a.special || v[json_integer_value(slot)].ever_special;
            v[json_integer_value(slot)] = a; /* the later properties win */
        } else {
            a.ever_special = a.special;
            v[cnt] = a;
            json_t *num = json_integer((json_int_t)cnt);
            if (!num || json_object_setn_new(map, a.content, a.len, num)) {
                rc = nomem(L);
                break;
            }
            cnt++;
        }
    }
    json_decref(map);
    if (rc) {
        rc_free(v);
        return rc;
    }
    *out = v;
    *n_out = cnt;
    return 0;
}

/* ---- the model -------------------------------------------------------------------------- */

/* ---- barriers (text vocab, streaming) ----------------------------------------------------- */

static int bar_insert(tokenizer_t *tok, uint64_t key)
{
    if (!tok->bar_keys || (tok->bar_count + 1) * 2 > tok->bar_mask + 1) {
        size_t cap = tok->bar_keys ? (tok->bar_mask + 1) * 2 : 4096;
        uint64_t *nk = rc_calloc(cap, sizeof *nk);
        if (!nk)
            return RC_ENOMEM;
        for (size_t i = 0; tok->bar_keys && i <= tok->bar_mask; i++) {
            if (!tok->bar_keys[i])
                continue;
            size_t j = (size_t)(tok->bar_keys[i] * 0x9E3779B97F4A7C15ULL >> 20) & (cap - 1);
            while (nk[j])
                j = (j + 1) & (cap - 1);
            nk[j] = tok->bar_keys[i];
        }
        rc_free(tok->bar_keys);
        tok->bar_keys = nk;
        tok->bar_mask = cap - 1;
    }
    size_t j = (size_t)(key * 0x9E3779B97F4A7C15ULL >> 20) & tok->bar_mask;
    while (tok->bar_keys[j] && tok->bar_keys[j] != key)
        j = (j + 1) & tok->bar_mask;
    if (!tok->bar_keys[j]) {
        tok->bar_keys[j] = key;
        tok->bar_count++;
    }
    return 0;
}

/* Keys of the symbol a token string ends (side 0) or starts (side 1) with: its last or
 * first character, and the byte-fallback or unknown token it ends or starts with. */
static int bar_keys_of(const struct loader *L, const char *s, size_t n, int side, uint32_t k[3])
{
    const tokenizer_t *tok = L->tok;
    int m = 0;
    if (n == 0)
        return 0;
    uint32_t c;
    size_t at = side ? 0 : utf8_prev((const uint8_t *)s, n);
    utf8_decode((const uint8_t *)s + at, &c);
    k[m++] = c;
    if (n >= 6) {
        const char *q = side ? s : s + n - 6;
        int32_t id = q[0] == '<' && q[1] == '0' && q[2] == 'x' && q[5] == '>' ? vocab_id(L, q, 6) : -1;
        for (int x = 0; id >= 0 && x < 256; x++)
            if (tok->bpe.fb_id[x] == id) {
                k[m++] = BAR_SPECIAL + (uint32_t)id;
                break;
            }
    }
    int32_t unk = tok->bpe.unk_id;
    if (unk >= 0) {
        size_t ul = L->unk_len;
        if (ul && n >= ul && !memcmp(side ? s : s + n - ul, L->unk_str, ul))
            k[m++] = BAR_SPECIAL + (uint32_t)unk;
    }
    return m;
}

/* A merge (a, b) can join a symbol ending a with one starting b: record the pairs. */
static int bar_add_merge(struct loader *L, const char *a, size_t al, const char *b, size_t bl)
{
    uint32_t lk[3], rk[3];
    int nl = bar_keys_of(L, a, al, 0, lk), nr = bar_keys_of(L, b, bl, 1, rk);
    for (int i = 0; i < nl; i++)
        for (int j = 0; j < nr; j++)
            if (bar_insert(L->tok, bar_pair(lk[i], rk[j])))
                return nomem(L);
    return 0;
}

/* ignore_merges: a whole word that is a vocab entry is one token, so no cut may fall
 * between two characters that are adjacent in any vocab entry. */
static int bar_add_vocab(struct loader *L)
{
    const char *key;
    size_t klen;
    json_t *val;
    json_object_keylen_foreach(L->vocab, key, klen, val)
    {
        const uint8_t *p = (const uint8_t *)key;
        uint32_t prev = 0, c;
        for (size_t i = 0; i < klen;) {
            int k = utf8_decode(p + i, &c);
            if (i > 0 && bar_insert(L->tok, bar_pair(prev, c)))
                return nomem(L);
            prev = c;
            i += (size_t)k;
        }
    }
    return 0;
}


static int parse_merges(struct loader *L, json_t *merges, struct tok_bytes *cat)
{
    tokenizer_t *tok = L->tok;
    size_t n = json_array_size(merges);
    if (n > TOKENIZER_MAX_MERGES)
        return load_fail(L, RC_ERANGE, "more than 2^23 merges");
    int kind = 0; /* 1 strings, 2 pairs */
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(merges, i);
        int k = json_is_string(m) ? 1 : json_is_array(m) ? 2 : 0;
        if (!k || (kind && k != kind))
            return load_fail(L, RC_EFORMAT,
                             "merges must be all \"a b\" strings or all [\"a\", \"b\"] pairs");
        kind = k;
    }
    if (bpe_init(&tok->bpe, n))
        return nomem(L);
    uint32_t rank = 0;
    char idx[32];
    int rc0;
    if (!tok->bytelevel && tok->bpe.ignore_merges && (rc0 = bar_add_vocab(L)))
        return rc0;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t al, bl;
        snprintf(idx, sizeof idx, "%zu", i);
        if (kind == 1) {
            const char *s = json_string_value(m);
            size_t len = json_string_length(m);
            if (len >= 8 && !memcmp(s, "#version", 8))
                continue; /* header line of merges.txt */
            const char *sp = memchr(s, ' ', len);
            if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - s)))
                return load_fail(L, RC_EFORMAT, "merges[%s] is not two tokens separated by one "
                            "space", idx);
            a = s;
            al = (size_t)(sp - s);
            b = sp + 1;
            bl = len - al - 1;
        } else {
            json_t *x = json_array_get(m, 0), *y = json_array_get(m, 1);
            if (json_array_size(m) != 2 || !json_is_string(x) || !json_is_string(y))
                return load_fail(L, RC_EFORMAT, "merges[%s] is not a pair of strings", idx);
            a = json_string_value(x);
            al = json_string_length(x);
            b = json_string_value(y);
            bl = json_string_length(y);
        }
        int32_t ia = vocab_id(L, a, al), ib = vocab_id(L, b, bl);
        cat->n = 0;
        if (tok_bytes_append(cat, a, al) || tok_bytes_append(cat, b, bl))
            return nomem(L);
        int32_t in = vocab_id(L, (const char *)cat->p, cat->n);
        if (ia < 0 || ib < 0 || in < 0) {
            char cb[48];
            if (ia < 0 || ib < 0) {
                cat->n = 0;
                if (tok_bytes_append(cat, ia < 0 ? a : b, ia < 0 ? al : bl))
                    return nomem(L);
            }
            if (tok_bytes_append(cat, "", 1))
                return nomem(L);
            return load_fail(L, RC_EFORMAT, "merges[%s] names a token that is not in the vocab: "
                        "'%s'", idx, clip((const char *)cat->p, cb));
        }
        if (!tok->bytelevel && (rc0 = bar_add_merge(L, a, al, b, bl)))
            return rc0;
        int rc = bpe_add_merge(&tok->bpe, ia, ib, rank++, in);
        if (rc)
            return rc == RC_ENOMEM ? nomem(L) : load_fail(L, rc, "merge table full");
    }
    tok->n_merges = rank;
    return bpe_check_ambiguous(&tok->bpe, (size_t)tok->n_ids) ? nomem(L) : 0;
}

static int parse_model_opts(struct loader *L, json_t *model)
{
    tokenizer_t *tok = L->tok;
    json_t *v;
    char b[48];
    v = json_object_get(model, "dropout");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v))
            return load_fail(L, RC_EFORMAT, "BPE dropout is not a number");
        if (json_number_value(v) != 0.0)
            return load_fail(L, RC_EUNSUPPORTED, "BPE dropout is not supported (random merges)");
    }
    const char *keys[2] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(model, keys[i]);
        if (v && !json_is_null(v) && !json_is_string(v))
            return load_fail(L, RC_EFORMAT, "BPE %s is not a string", keys[i]);
        if (json_is_string(v) && json_string_length(v) > 0)
            return load_fail(L, RC_EUNSUPPORTED, "BPE %s '%s' is not supported", keys[i],
                        clip(json_string_value(v), b));
    }
    int byte_fallback = 0, rc;
    if ((rc = get_bool(L, model, "fuse_unk", 0, &tok->bpe.fuse_unk, "BPE")) ||
        (rc = get_bool(L, model, "byte_fallback", 0, &byte_fallback, "BPE")) ||
        (rc = get_bool(L, model, "ignore_merges", 0, &tok->bpe.ignore_merges, "BPE")))
        return rc;
    v = json_object_get(model, "unk_token");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v))
            return load_fail(L, RC_EFORMAT, "BPE unk_token is not a string");
        tok->bpe.unk_id = vocab_id(L, json_string_value(v), json_string_length(v));
        tok->bpe.unk_missing = tok->bpe.unk_id < 0;
        L->unk_str = json_string_value(v);
        L->unk_len = json_string_length(v);
    }
    struct bpe *bc = &tok->bpe;
    bc->byte_fallback = byte_fallback;
    for (int x = 0; x < 256; x++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", x);
        bc->fb_id[x] = byte_fallback ? vocab_id(L, name, strlen(name)) : -1;
    }
    if (bc->char_level) {
        bc->no_unk = byte_fallback;
        for (int x = 0; x < 256; x++)
            bc->no_unk &= bc->fb_id[x] >= 0;
        /* ASCII characters through the byte tables; the rest by lookup (bpe.c). */
        for (int x = 0; x < 256; x++) {
            char ch = (char)x;
            int32_t id = x < 0x80 ? vocab_id(L, &ch, 1) : -1;
            bc->byte_sym_off[x] = (uint16_t)x;
            bc->byte_sym_ids[x] = id;
            bc->byte_kind[x] = id >= 0 ? BPE_BYTE_VOCAB : BPE_BYTE_NONE;
        }
        bc->byte_sym_off[256] = 256;
        return 0;
    }
    /* Initial symbols of each byte. */
    struct bpe *bp = &tok->bpe;
    unsigned off = 0;
    for (int x = 0; x < 256; x++) {
        uint8_t ch[4];
        int k = utf8_encode(L->cp_of[x], ch);
        bp->byte_sym_off[x] = (uint16_t)off;
        int32_t id = vocab_id(L, (const char *)ch, (size_t)k);
        if (id >= 0) {
            bp->byte_kind[x] = BPE_BYTE_VOCAB;
            bp->byte_sym_ids[off++] = id;
            continue;
        }
        if (byte_fallback) {
            int32_t ids[4];
            int ok = 1;
            for (int j = 0; j < k && ok; j++) {
                char name[8];
                snprintf(name, sizeof name, "<0x%02X>", ch[j]);
                ids[j] = vocab_id(L, name, strlen(name));
                ok = ids[j] >= 0;
            }
            if (ok) {
                bp->byte_kind[x] = BPE_BYTE_FALLBACK;
                for (int j = 0; j < k; j++)
                    bp->byte_sym_ids[off++] = ids[j];
                continue;
            }
        }
        bp->byte_kind[x] = BPE_BYTE_NONE;
    }
    bp->byte_sym_off[256] = (uint16_t)off;
    return 0;
}

/* ---- assembly ---------------------------------------------------------------------------- */

/* The top level: version 1.0, a BPE model with a "vocab" object and a "merges" array. */
static int check_top_level(struct loader *L, json_t **model, json_t **merges)
{
    json_t *root = L->root;
    char b[48];
    if (!json_is_object(root))
        return load_fail(L, RC_EFORMAT, "the top level is not an object");
    json_t *ver = json_object_get(root, "version");
    if (ver && !(json_is_string(ver) && !strcmp(json_string_value(ver), "1.0")))
        return load_fail(L, RC_EUNSUPPORTED, "unknown \"version\" (only \"1.0\")");
    *model = json_object_get(root, "model");
    if (!json_is_object(*model))
        return load_fail(L, RC_EFORMAT, "no \"model\" object");
    const char *mt = type_of(*model);
    if (mt && strcmp(mt, "BPE"))
        return load_fail(L, RC_EUNSUPPORTED, "model '%s' is not supported (BPE only)", clip(mt, b));
    L->vocab = json_object_get(*model, "vocab");
    *merges = json_object_get(*model, "merges");
    if (!json_is_object(L->vocab) || !json_is_array(*merges))
        return load_fail(L, RC_EFORMAT,
                         "BPE model needs a \"vocab\" object and a \"merges\" array");
    return 0;
}

/* Vocab: at most 2^22 entries, ids in [0, 2^22), keys not too long. *max_id gets the
 * largest id (-1 when empty). Duplicate ids are found later (index_vocab). */
static int check_vocab(struct loader *L, int64_t *max_id)
{
    size_t nv = json_object_size(L->vocab);
    if (nv > TOKENIZER_MAX_IDS)
        return load_fail(L, RC_ERANGE, "vocab has more than 2^22 entries");
    L->n_vocab_entries = (int32_t)nv;
    const char *key;
    size_t klen;
    json_t *val;
    char b[48];
    *max_id = -1;
    json_object_keylen_foreach(L->vocab, key, klen, val)
    {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= TOKENIZER_MAX_IDS)
            return load_fail(L, json_is_integer(val) ? RC_ERANGE : RC_EFORMAT,
                        "vocab entry '%s': id is not an integer in [0, 2^22)", clip(key, b));
        if (klen > 2 * TOKENIZER_MAX_TOKEN_BYTES)
            return load_fail(L, RC_ERANGE, "vocab entry '%s' is too long", clip(key, b));
        if (json_integer_value(val) > *max_id)
            *max_id = json_integer_value(val);
    }
    return 0;
}

/* Normaliser, pre-tokenizer, post-processor and decoder, before the heavy work so
 * that an unsupported one is reported first. */
static int parse_components(struct loader *L)
{
    tokenizer_t *tok = L->tok;
    int rc;
    if ((rc = parse_norm(L, json_object_get(L->root, "normalizer"), 0)))
        return rc;
    json_t *pre = json_object_get(L->root, "pre_tokenizer");
    if (pre && !json_is_null(pre) && (rc = parse_pre(L, pre, 0)))
        return rc;
    if (tok->pre.n == 0) { /* no pre-tokenizer: each piece is one word */
        tok->pre.step[0].kind = PT_WHOLE;
        tok->pre.n = 1;
    }
    tok->bytelevel = tok->pre.step[tok->pre.n - 1].kind == PT_BYTELEVEL;
    if (tok->bytelevel && tok->pre.step[0].kind == PT_METASPACE)
        return load_fail(L, RC_EUNSUPPORTED, "pre_tokenizer Metaspace with ByteLevel is not "
                    "supported");
    tok->bpe.char_level = !tok->bytelevel;
    const struct pt_step *s0 = &tok->pre.step[0];
    tok->first_split = s0->kind == PT_SPLIT || s0->use_regex ||
                       (s0->kind == PT_METASPACE && s0->split);
    if ((rc = parse_post(L, json_object_get(L->root, "post_processor"), 0)))
        return rc;
    json_t *dec = json_object_get(L->root, "decoder");
    if (tok->bytelevel)
        return check_decoder(L, dec, 0);
    if (!dec || json_is_null(dec))
        return parse_decoder(L, dec, 0);
    const char *t = type_of(dec);
    if (t && !strcmp(t, "ByteLevel"))
        return load_fail(L, RC_EUNSUPPORTED, "the ByteLevel decoder needs a ByteLevel "
                    "pre-tokenizer");
    return parse_decoder(L, dec, 0);
}

/* What build's steps share about every id: the string it decodes from, and the
 * added token it is (if any). Freed by id_index_free. */
struct id_index {
    struct added_in *add;  /* [n_add], from parse_added */
    size_t n_add;
    int32_t *slot_of;      /* [n_ids]: index into add, -1 for a vocab entry */
    const char **str;      /* [n_ids]: the token string, NULL for an unused id */
    size_t *slen;          /* [n_ids] */
    json_t *special;       /* contents that were ever special -> true */
};

static void id_index_free(struct id_index *x)
{
    for (size_t i = 0; i < x->n_add; i++)
        if (x->add[i].owned)
            rc_free((void *)x->add[i].content);
    rc_free(x->add);
    rc_free(x->slot_of);
    rc_free(x->str);
    rc_free(x->slen);
    json_decref(x->special);
}

/* The per-id tables of x and tok (n_ids known). */
static int id_index_alloc(struct loader *L, struct id_index *x)
{
    tokenizer_t *tok = L->tok;
    x->slot_of = rc_malloc((size_t)tok->n_ids * sizeof *x->slot_of);
    x->str = rc_calloc((size_t)tok->n_ids, sizeof *x->str);
    x->slen = rc_calloc((size_t)tok->n_ids, sizeof *x->slen);
    tok->id_flags = rc_calloc((size_t)tok->n_ids, 1);
    tok->piece_off = rc_malloc(((size_t)tok->n_ids + 1) * sizeof *tok->piece_off);
    tok->added = rc_calloc(x->n_add ? x->n_add : 1, sizeof *tok->added);
    x->special = json_object();
    if (!x->slot_of || !x->str || !x->slen || !tok->id_flags || !tok->piece_off ||
        !tok->added || !x->special)
        return nomem(L);
    for (int32_t i = 0; i < tok->n_ids; i++)
        x->slot_of[i] = -1;
    return 0;
}

/* Vocab entries: their strings, and no two sharing an id. */
static int index_vocab(struct loader *L, struct id_index *x)
{
    const char *key;
    size_t klen;
    json_t *val;
    json_object_keylen_foreach(L->vocab, key, klen, val)
    {
        int32_t id = (int32_t)json_integer_value(val);
        if (x->str[id]) {
            char b[48], b2[48];
            return load_fail(L, RC_EFORMAT, "vocab entries '%s' and '%s' share one id",
                        clip(x->str[id], b), clip(key, b2));
        }
        x->str[id] = key;
        x->slen[id] = klen;
        L->tok->id_flags[id] = TOKF_PRESENT;
    }
    return 0;
}

/* Added tokens override vocab entries (the reference looks them up first): their
 * flags, and their patterns in the raw or the normalised matcher. A normalized
 * token's pattern, and the string the decoder sees, is its normalised content (the
 * reference's normalized_cache). */
static int index_added(struct loader *L, struct id_index *x)
{
    tokenizer_t *tok = L->tok;
    struct tok_bytes normed = {0};
    struct norm_work nw = {0};
    char b[48];
    int rc = 0;
    trie_init(&tok->raw_match.trie);
    trie_init(&tok->norm_match.trie);
    for (size_t i = 0; i < x->n_add; i++) {
        struct added_in *a = &x->add[i];
        struct tok_added *t = &tok->added[i];
        t->id = a->id;
        t->flags = (uint8_t)((a->special ? ADDF_SPECIAL : 0) | (a->lstrip ? ADDF_LSTRIP : 0) |
                             (a->rstrip ? ADDF_RSTRIP : 0) | (a->single_word ? ADDF_SINGLE_WORD : 0));
        x->slot_of[a->id] = (int32_t)i;
        tok->id_flags[a->id] |= TOKF_PRESENT | TOKF_ADDED;
        if (a->ever_special &&
            json_object_setn_new(x->special, a->content, a->len, json_true()))
            goto oom;
        const uint8_t *pat = (const uint8_t *)a->content;
        size_t plen = a->len;
        if (a->normalized && tok->norm.n) {
            normed.n = 0;
            if (!utf8_valid(pat, plen) ||
                normalizer_apply(&tok->norm, &nw, pat, plen, &normed))
                goto oom;
            pat = normed.p;
            plen = normed.n;
            char *copy = rc_malloc(plen + 1);
            if (!copy)
                goto oom;
            memcpy(copy, pat, plen);
            copy[plen] = 0;
            a->content = copy;
            a->len = plen;
            a->owned = 1;
        }
        struct tok_matcher *m = a->normalized ? &tok->norm_match : &tok->raw_match;
        rc = trie_add(&m->trie, pat, plen, (int32_t)i);
        if (rc == RC_EFORMAT) {
            rc = load_fail(L, RC_EFORMAT, "two added tokens match the same text '%s'",
                      clip(a->content, b));
            goto out;
        }
        if (rc)
            goto oom;
        m->any_lstrip |= a->lstrip;
        m->any_rstrip |= a->rstrip;
        m->any_single_word |= a->single_word;
        x->str[a->id] = a->content;
        x->slen[a->id] = a->len;
    }
    tok->n_added = x->n_add;
    goto out;
oom:
    rc = nomem(L);
out:
    tok_bytes_free(&normed);
    norm_work_free(&nw);
    return rc;
}

/* What each id decodes to (the piece pool), which ids are special, and the
 * bytes -> id table of byte-level vocab entries that BPE merges into. */
static int build_pieces(struct loader *L, const struct id_index *x)
{
    tokenizer_t *tok = L->tok;
    struct tok_bytes pool = {0};
    int rc = 0;
    struct tok_bytes raw = {0};
    struct dec_work *dw = NULL;
    if (bpe_words_init(&tok->bpe, (size_t)L->n_vocab_entries))
        goto oom;
    if (!tok->bytelevel) {
        /* Text vocab: the raw strings, and every vocab entry in the word table (the
         * model's vocab lookups: characters, and whole words under ignore_merges). */
        tok->raw_off = rc_malloc(((size_t)tok->n_ids + 1) * sizeof *tok->raw_off);
        if (!tok->raw_off)
            goto oom;
        const char *key;
        size_t klen;
        json_t *val;
        json_object_keylen_foreach(L->vocab, key, klen, val)
        {
            if (bpe_add_word(&tok->bpe, (const uint8_t *)key, klen,
                             (int32_t)json_integer_value(val)))
                goto oom;
        }
    }
    for (int32_t id = 0; id < tok->n_ids; id++) {
        tok->piece_off[id] = (uint32_t)pool.n;
        if (tok->raw_off)
            tok->raw_off[id] = (uint32_t)raw.n;
        if (!x->str[id])
            continue;
        int nm = 0;
        size_t before = pool.n;
        int bytelevel = 0;
        if (tok->bytelevel) {
            bytelevel = token_bytes(L, x->str[id], x->slen[id], &pool, &nm);
        } else {
            if (tok_bytes_append(&raw, x->str[id], x->slen[id]) || raw.n > UINT32_MAX)
                goto oom;
            rc = tok_dec_piece(tok, &dw, (const uint8_t *)x->str[id], x->slen[id], &pool);
            if (rc == RC_ENOMEM)
                goto oom;
            if (rc) {
                rc = load_fail(L, rc, "decoder regex failed on a token");
                goto out;
            }
        }
        if (nm)
            goto oom;
        if (pool.n > UINT32_MAX) {
            rc = load_fail(L, RC_ERANGE, "vocab strings too large");
            goto out;
        }
        if (pool.n - before > tok->max_piece)
            tok->max_piece = pool.n - before;
        if (json_object_getn(x->special, x->str[id], x->slen[id]))
            tok->id_flags[id] |= TOKF_SPECIAL;
        if (bytelevel && x->slot_of[id] < 0 && pool.n > before &&
            bpe_add_word(&tok->bpe, pool.p + before, pool.n - before, id))
            goto oom;
    }
    tok->piece_off[tok->n_ids] = (uint32_t)pool.n;
    tok->piece_pool = pool.p;
    pool.p = NULL;
    if (tok->raw_off) {
        tok->raw_off[tok->n_ids] = (uint32_t)raw.n;
        tok->raw_pool = raw.p;
        raw.p = NULL;
    }
    goto out;
oom:
    rc = nomem(L);
out:
    tok_bytes_free(&pool);
    tok_bytes_free(&raw);
    tok_dec_work_free(dw);
    return rc;
}

/* End of text: the added token "<|endoftext|>", else the vocab entry, else the added
 * token "</s>", else none. */
static int32_t find_eos(const struct loader *L, const struct id_index *x)
{
    for (size_t i = 0; i < x->n_add; i++)
        if (x->add[i].len == 13 && !memcmp(x->add[i].content, "<|endoftext|>", 13))
            return x->add[i].id;
    json_t *eos = json_object_get(L->vocab, "<|endoftext|>");
    if (eos)
        return (int32_t)json_integer_value(eos);
    for (size_t i = 0; i < x->n_add; i++) /* Llama / Mistral */
        if (x->add[i].len == 4 && !memcmp(x->add[i].content, "</s>", 4))
            return x->add[i].id;
    return -1;
}

static void describe(tokenizer_t *tok)
{
    const struct pt_step *s0 = &tok->pre.step[0];
    const char *pre = tok->bytelevel ? (s0->kind == PT_SPLIT ? "Split+ByteLevel" : "ByteLevel")
                    : s0->kind == PT_METASPACE ? (s0->split ? "Metaspace" : "Metaspace (no split)")
                    : s0->kind == PT_SPLIT ? "Split" : "no pre-tokenizer";
    int other = 0;
    for (int i = 0; i < tok->norm.n; i++)
        other |= tok->norm.step[i].kind != NS_NF;
    snprintf(tok->desc, sizeof tok->desc,
             "BPE %d ids, %zu merges%s, %s%s%s, %s%s%s, %zu added tokens%s", (int)tok->n_ids,
             tok->n_merges, tok->bpe.ambiguous ? " (ambiguous)" : "",
             tok->norm.n == 0 ? "no normaliser" : !tok->norm.compat && !tok->norm.compose && other
                                                      ? "text normaliser" : tok->norm.compat ? "NFK" : "NF",
             tok->norm.n == 0 || (!tok->norm.compat && !tok->norm.compose && other) ? ""
                                                      : tok->norm.compose ? "C" : "D",
             tok->norm.n && other && (tok->norm.compat || tok->norm.compose) ? "+text" : "", pre,
             tok->bpe.byte_fallback ? ", byte fallback" : "",
             tok->bpe.ignore_merges ? ", ignore_merges" : "", tok->n_added,
             tok->bos_id >= 0 ? ", BOS" : "");
}

/* tokenizer.json -> L->tok, checking as it goes; on failure L->tok is partly built
 * (the caller frees it). */
static int build(struct loader *L)
{
    tokenizer_t *tok = L->tok;
    json_t *model = NULL, *merges = NULL;
    int64_t max_id = -1;
    struct id_index x = {0};
    int rc;
    if ((rc = check_top_level(L, &model, &merges)) || (rc = check_vocab(L, &max_id)) ||
        (rc = parse_components(L)) || (rc = parse_added(L, &x.add, &x.n_add)))
        return rc;
    for (size_t i = 0; i < x.n_add; i++)
        if (x.add[i].id > max_id)
            max_id = x.add[i].id;
    if (max_id < 0) {
        rc = load_fail(L, RC_EFORMAT, "empty vocab");
        goto out;
    }
    tok->n_ids = (int32_t)(max_id + 1);
    if ((rc = id_index_alloc(L, &x)) || (rc = index_vocab(L, &x)) ||
        (rc = index_added(L, &x)) || (rc = build_pieces(L, &x)))
        goto out;
    tok->eos_id = find_eos(L, &x);
    if ((rc = parse_model_opts(L, model)))
        goto out;
    struct tok_bytes cat = {0};
    rc = parse_merges(L, merges, &cat);
    tok_bytes_free(&cat);
    if (!rc)
        describe(tok);
out:
    id_index_free(&x);
    return rc;
}

tokenizer_t *tokenizer_alloc(int kind)
{
    tokenizer_t *tok = rc_calloc(1, sizeof *tok);
    if (tok) {
        tok->kind = kind;
        tok->eos_id = -1;
        tok->bos_id = -1;
        tok->bpe.unk_id = -1;
        trie_init(&tok->raw_match.trie);
        trie_init(&tok->norm_match.trie);
    }
    return tok;
}

int tokenizer_load_json(const char *json, size_t len, tokenizer_t **out, char *err,
                        size_t errlen)
{
    *out = NULL;
    if (len > TOKENIZER_MAX_FILE_BYTES)
        return rc_fail(err, errlen, RC_ERANGE, "tokenizer.json larger than %zu bytes",
                       TOKENIZER_MAX_FILE_BYTES);
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root && json_error_code(&je) == json_error_out_of_memory)
        return rc_fail(err, errlen, RC_ENOMEM, "tokenizer.json: out of memory");
    if (!root)
        return rc_fail(err, errlen, RC_EFORMAT, "tokenizer.json: %s (line %d, column %d)",
                       je.text, je.line, je.column);
    struct loader L = {0};
    L.root = root;
    L.err = err;
    L.errlen = errlen;
    byte_alphabet(L.cp_of, L.byte_of);
    L.tok = tokenizer_alloc(TOK_KIND_BPE);
    int rc = L.tok ? build(&L) : nomem(&L);
    json_decref(root);
    if (rc) {
        tokenizer_free(L.tok);
        return rc;
    }
    *out = L.tok;
    return 0;
}

int tokenizer_load_file(const char *path, tokenizer_t **out, char *err, size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return rc_fail(err, errlen, RC_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return rc_fail(err, errlen, RC_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > TOKENIZER_MAX_FILE_BYTES) {
        fclose(f);
        return rc_fail(err, errlen, RC_ERANGE, "%s: larger than %zu bytes", path,
                       TOKENIZER_MAX_FILE_BYTES);
    }
    size_t n = (size_t)st.st_size;
    char *buf = rc_malloc(n ? n : 1);
    if (!buf) {
        fclose(f);
        return rc_fail(err, errlen, RC_ENOMEM, "%s: out of memory", path);
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        rc_free(buf);
        return rc_fail(err, errlen, RC_EIO, "%s: short read", path);
    }
    int rc = tokenizer_load_json(buf, n, out, err, errlen);
    rc_free(buf);
    if (rc && err && errlen) {
        /* Say which file. */
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s: %s", path, err);
        snprintf(err, errlen, "%s", tmp);
    }
    return rc;
}

int tokenizer_create_bytes(tokenizer_t **out, char *err, size_t errlen)
{
    *out = NULL;
    tokenizer_t *tok = tokenizer_alloc(TOK_KIND_BYTES);
    if (!tok)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    tok->n_ids = 256;
    tok->piece_off = rc_malloc(257 * sizeof *tok->piece_off);
    tok->piece_pool = rc_malloc(256);
    tok->id_flags = rc_malloc(256);
    if (!tok->piece_off || !tok->piece_pool || !tok->id_flags) {
        tokenizer_free(tok);
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    }
    for (int i = 0; i < 256; i++) {
        tok->piece_off[i] = (uint32_t)i;
        tok->piece_pool[i] = (uint8_t)i;
        tok->id_flags[i] = TOKF_PRESENT;
    }
    tok->piece_off[256] = 256;
    tok->max_piece = 1;
    snprintf(tok->desc, sizeof tok->desc, "bytes (no tokenizer.json): 256 ids, id = byte");
    *out = tok;
    return 0;
}

/* transformers' add_bos_token (tokenizer_config.json), which its Llama-style fast
 * tokenizers turn into the post-processor's template when they load: true -> the
 * bos_token's id is put in front, false -> nothing is. Absent: tokenizer.json decides. */
static int apply_config(tokenizer_t *tok, const char *path, char *err, size_t errlen)
{
    json_error_t je;
    json_t *c = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!c)
        return rc_fail(err, errlen, RC_EFORMAT, "%s: %s (line %d)", path, je.text, je.line);
    json_t *add = json_object_get(c, "add_bos_token");
    json_t *bt = json_object_get(c, "bos_token");
    if (json_is_object(bt))
        bt = json_object_get(bt, "content"); /* {"content": "<s>", ...} */
    int rc = 0;
    if (json_is_false(add)) {
        tok->bos_id = -1;
    } else if (json_is_true(add)) {
        int32_t id = json_is_string(bt) ? tokenizer_find_token(tok, json_string_value(bt),
                                                                json_string_length(bt))
                                        : -1;
        if (id < 0)
            rc = rc_fail(err, errlen, RC_EFORMAT, "%s: add_bos_token is true but bos_token is "
                         "not a token of tokenizer.json", path);
        else
            tok->bos_id = id;
    }
    json_decref(c);
    return rc;
}

int tokenizer_load_dir(const char *dir, tokenizer_t **out, int *fallback, char *err,
                       size_t errlen)
{
    char path[4096];
    *out = NULL;
    if (fallback)
        *fallback = 0;
    if ((size_t)snprintf(path, sizeof path, "%s/tokenizer.json", dir) >= sizeof path)
        return rc_fail(err, errlen, RC_EINVAL, "model directory path too long");
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT) {
        if (fallback)
            *fallback = 1;
        return tokenizer_create_bytes(out, err, errlen);
    }
    int rc = tokenizer_load_file(path, out, err, errlen);
    if (rc)
        return rc;
    if ((size_t)snprintf(path, sizeof path, "%s/tokenizer_config.json", dir) < sizeof path &&
        stat(path, &st) == 0 && (rc = apply_config(*out, path, err, errlen))) {
        tokenizer_free(*out);
        *out = NULL;
    }
    return rc;
}

void tokenizer_free(tokenizer_t *tok)
{
    if (!tok)
        return;
    rc_free(tok->piece_off);
    rc_free(tok->piece_pool);
    rc_free(tok->id_flags);
    rc_free(tok->added);
    trie_free(&tok->raw_match.trie);
    trie_free(&tok->norm_match.trie);
    pretok_free(&tok->pre);
    pretok_free(&tok->dec_re);
    normalizer_free(&tok->norm);
    for (int i = 0; i < tok->n_dec; i++) {
        rc_free(tok->dec[i].pat);
        rc_free(tok->dec[i].rep);
    }
    rc_free(tok->raw_off);
    rc_free(tok->raw_pool);
    rc_free(tok->bar_keys);
    bpe_free(&tok->bpe);
    rc_free(tok);
}
