#define _GNU_SOURCE /* memmem */
#include "pretok.h"

#include <stdio.h>
#include <string.h>
#include <utf8proc.h>

#include "alloc.h"
#include "errors.h"
#include "utf8.h"

/* ---- byte buffers ----------------------------------------------------------- */

int tok_bytes_reserve(struct tok_bytes *b, size_t extra)
{
    size_t need;
    if (__builtin_add_overflow(b->n, extra, &need))
        return RC_ENOMEM;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        if (__builtin_mul_overflow(cap, 2, &cap))
            return RC_ENOMEM;
    uint8_t *p = rc_realloc(b->p, cap);
    if (!p)
        return RC_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int tok_bytes_append(struct tok_bytes *b, const void *s, size_t n)
{
    if (n == 0)
        return 0;
    int rc = tok_bytes_reserve(b, n);
    if (rc)
        return rc;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

void tok_bytes_drop_front(struct tok_bytes *b, size_t n)
{
    if (n >= b->n) {
        b->n = 0;
        return;
    }
    memmove(b->p, b->p + n, b->n - n);
    b->n -= n;
}

void tok_bytes_free(struct tok_bytes *b)
{
    rc_free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- character classes ------------------------------------------------------ */

int pretok_is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

int pretok_is_word(uint32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_';
    if (c == 0x200C || c == 0x200D || (c >= 0x24B6 && c <= 0x24E9) ||
        (c >= 0x1F130 && c <= 0x1F189))
        return 1; /* Join_Control; Other_Alphabetic symbols */
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

/* ---- normalisers ------------------------------------------------------------ */

/* Can c be the second character of a primary composition (so it may merge with an
 * earlier starter)? utf8proc marks those with comb_index >= 0x8000; Hangul vowels and
 * trailing consonants compose algorithmically. */
static int combines_backward(uint32_t c)
{
    if ((c >= 0x1161 && c <= 0x1175) || (c >= 0x11A8 && c <= 0x11C2))
        return 1;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
    return p->comb_index != UINT16_MAX && p->comb_index >= 0x8000;
}

/* Is the point before c a normalisation boundary: a starter that nothing earlier can
 * combine with, whose decomposition also starts with such a starter? Then the
 * normal form of the text before it does not depend on the text after it, and vice
 * versa. */
static int boundary_before(const struct norm *nm, uint32_t c)
{
    if (c < 0x300 || (c >= 0xAC00 && c <= 0xD7A3))
        return 1;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
    if (p->combining_class || combines_backward(c))
        return 0;
    if (p->decomp_seqindex != UINT16_MAX && (nm->compat || p->decomp_type == 0)) {
        utf8proc_int32_t d[32];
        utf8proc_ssize_t k = utf8proc_decompose_char(
            (utf8proc_int32_t)c, d, 32, UTF8PROC_DECOMPOSE | (nm->compat ? UTF8PROC_COMPAT : 0),
            NULL);
        if (k > 0 && k <= 32) {
            uint32_t f = (uint32_t)d[0];
            if (utf8proc_get_property(d[0])->combining_class || combines_backward(f))
                return 0;
        }
    }
    return 1;
}

void norm_work_free(struct norm_work *w)
{
    rc_free(w->u);
    tok_bytes_free(&w->tmp[0]);
    tok_bytes_free(&w->tmp[1]);
    memset(w, 0, sizeof *w);
}

static int form_opts(int form)
{
    int o = UTF8PROC_STABLE;
    o |= (form == NORM_NFC || form == NORM_NFKC) ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE;
    if (form == NORM_NFKC || form == NORM_NFKD)
        o |= UTF8PROC_COMPAT;
    return o;
}

/* A chunk of one character that the form leaves alone can be copied. */
static int chunk_trivial(int form, const uint8_t *s, size_t n)
{
    if (n == 1)
        return 1;
    uint32_t c;
    if ((size_t)utf8_decode(s, &c) != n)
        return 0;
    if (c >= 0xAC00 && c <= 0xD7A3)
        return form == NORM_NFC || form == NORM_NFKC;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
    if (p->decomp_seqindex == UINT16_MAX)
        return 1;
    return (form == NORM_NFC || form == NORM_NFD) && p->decomp_type != 0;
}

static int chunk_normalize(int form, struct norm_work *w, const uint8_t *s, size_t n,
                           struct tok_bytes *out)
{
    if (chunk_trivial(form, s, n))
        return tok_bytes_append(out, s, n);
    int opts = form_opts(form);
    for (;;) {
        utf8proc_ssize_t k = 0;
        if (w->cap)
            k = utf8proc_decompose_custom(s, (utf8proc_ssize_t)n, w->u,
                                          (utf8proc_ssize_t)w->cap, opts, NULL, NULL);
        if (k < 0)
            return RC_EFORMAT; /* only for ill-formed input, which callers never pass */
        if (w->cap == 0 || (size_t)k > w->cap) {
            size_t cap = w->cap ? (size_t)k : (n < 16 ? 64 : n * 4);
            if (cap > SIZE_MAX / sizeof *w->u)
                return RC_ENOMEM;
            int32_t *u = rc_realloc(w->u, cap * sizeof *u);
            if (!u)
                return RC_ENOMEM;
            w->u = u;
            w->cap = cap;
            continue;
        }
        if (opts & UTF8PROC_COMPOSE)
            k = utf8proc_normalize_utf32(w->u, k, opts);
        if (k < 0)
            return RC_EFORMAT;
        int rc = tok_bytes_reserve(out, (size_t)k * 4);
        if (rc)
            return rc;
        for (utf8proc_ssize_t i = 0; i < k; i++)
            out->n += (size_t)utf8_encode((uint32_t)w->u[i], out->p + out->n);
        return 0;
    }
}

static int form_apply(const struct norm *nm, int form, struct norm_work *w, const uint8_t *s,
                      size_t n, struct tok_bytes *out)
{
    size_t i = 0, cs = 0;
    int rc = tok_bytes_reserve(out, n);
    if (rc)
        return rc;
    while (i < n) {
        if (s[i] < 0x80) {
            size_t j = i;
            while (j < n && s[j] < 0x80)
                j++;
            if (cs < i && (rc = chunk_normalize(form, w, s + cs, i - cs, out)))
                return rc;
            /* Every ASCII character but the last is a chunk of its own (the next
             * character is ASCII, hence a boundary); the last may take marks. */
            if ((rc = tok_bytes_append(out, s + i, j - 1 - i)))
                return rc;
            cs = j - 1;
            i = j;
            continue;
        }
        uint32_t c;
        int k = utf8_decode(s + i, &c);
        if (boundary_before(nm, c)) {
            if (cs < i && (rc = chunk_normalize(form, w, s + cs, i - cs, out)))
                return rc;
            cs = i;
        }
        i += (size_t)k;
    }
    if (cs < n)
        return chunk_normalize(form, w, s + cs, n - cs, out);
    return 0;
}

int norm_append(const struct norm *nm, struct norm_work *w, const uint8_t *s, size_t n,
                struct tok_bytes *out)
{
    if (nm->n == 0 || n == 0)
        return tok_bytes_append(out, s, n);
    const uint8_t *src = s;
    size_t len = n;
    for (int k = 0; k < nm->n; k++) {
        struct tok_bytes *dst = (k == nm->n - 1) ? out : &w->tmp[k & 1];
        if (dst != out)
            dst->n = 0;
        int rc = form_apply(nm, nm->form[k], w, src, len, dst);
        if (rc)
            return rc;
        src = dst->p;
        len = dst->n;
    }
    return 0;
}

size_t norm_stable_len(const struct norm *nm, const uint8_t *s, size_t n)
{
    if (nm->n == 0)
        return n;
    size_t i = n;
    while (i > 0) {
        size_t p = utf8_prev(s, i);
        uint32_t c;
        utf8_decode(s + p, &c);
        if (boundary_before(nm, c))
            return p;
        i = p;
    }
    return 0;
}

/* ---- the normaliser pipeline ------------------------------------------------------ */

void normalizer_free(struct normalizer *nz)
{
    for (int i = 0; i < nz->n; i++) {
        rc_free(nz->step[i].a);
        rc_free(nz->step[i].b);
    }
    memset(nz, 0, sizeof *nz);
}

void nstep_state_free(struct nstep_state *s)
{
    tok_bytes_free(&s->held);
    s->prefixed = 0;
}

/* Replace: every leftmost, non-overlapping occurrence of the pattern, scanning from
 * the left (the reference's regex find_iter over the escaped string). Unless final,
 * text from where a match could still start and end past the buffer is held: the
 * last a_len - 1 bytes, moved back to a character start. Returns the bytes used. */
static int replace_run(const struct nstep *st, const uint8_t *s, size_t n, int final,
                       struct tok_bytes *out, size_t *used)
{
    size_t pos = 0, m = st->a_len;
    size_t limit = final ? n : (n >= m - 1 ? n - (m - 1) : 0);
    while (!final && limit > 0 && limit < n && (s[limit] & 0xC0) == 0x80)
        limit--;
    int rc = 0;
    while (pos < limit && !rc) {
        const uint8_t *f = n - pos >= m ? memmem(s + pos, n - pos, st->a, m) : NULL;
        size_t at = f ? (size_t)(f - s) : n;
        if (!f || at >= limit) {
            rc = tok_bytes_append(out, s + pos, limit - pos);
            pos = limit;
            break;
        }
        rc = tok_bytes_append(out, s + pos, at - pos);
        if (!rc)
            rc = tok_bytes_append(out, st->b, st->b_len);
        pos = at + m;
    }
    *used = pos > limit ? pos : limit;
    return rc;
}

int nstep_feed(const struct nstep *st, struct nstep_state *ss, struct norm_work *w,
               const uint8_t *s, size_t n, int final, size_t cap, struct tok_bytes *out)
{
    int rc = 0;
    if (st->kind == NS_PREPEND) {
        /* The reference prepends to a non-empty segment: before its first byte. */
        if (n && !ss->prefixed) {
            rc = tok_bytes_append(out, st->a, st->a_len);
            ss->prefixed = 1;
        }
        if (!rc)
            rc = tok_bytes_append(out, s, n);
        if (final)
            ss->prefixed = 0;
        return rc;
    }
    if ((rc = tok_bytes_append(&ss->held, s, n)))
        return rc;
    const uint8_t *h = ss->held.p;
    size_t hn = ss->held.n, used = 0;
    if (st->kind == NS_NF) {
        used = final ? hn : norm_stable_len(&st->nf, h, hn);
        if (!final && used == 0 && hn > cap)
            used = utf8_prev(h, hn); /* an endless run of combining marks */
        if (used)
            rc = norm_append(&st->nf, w, h, used, out);
    } else {
        rc = replace_run(st, h, hn, final, out, &used);
    }
    if (rc)
        return rc;
    tok_bytes_drop_front(&ss->held, used);
    return 0;
}

int normalizer_apply(const struct normalizer *nz, struct norm_work *w, const uint8_t *s,
                     size_t n, struct tok_bytes *out)
{
    if (nz->n == 0)
        return tok_bytes_append(out, s, n);
    struct tok_bytes buf[2] = {{0}, {0}};
    struct nstep_state ss = {0};
    const uint8_t *src = s;
    size_t len = n;
    int rc = 0;
    for (int k = 0; k < nz->n && !rc; k++) {
        struct tok_bytes *dst = k == nz->n - 1 ? out : &buf[k & 1];
        if (dst != out)
            dst->n = 0;
        ss.held.n = 0;
        ss.prefixed = 0;
        rc = nstep_feed(&nz->step[k], &ss, w, src, len, 1, SIZE_MAX, dst);
        src = dst->p;
        len = dst->n;
    }
    tok_bytes_free(&buf[0]);
    tok_bytes_free(&buf[1]);
    nstep_state_free(&ss);
    return rc;
}

/* ---- added-token trie ---------------------------------------------------------- */

struct trie_node {
    int32_t child;   /* first child, -1 if none */
    int32_t sibling; /* next sibling, -1 if none */
    int32_t value;   /* pattern value if a pattern ends here, else -1 */
    uint8_t byte;
};

void trie_init(struct trie *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 256; i++)
        t->root[i] = -1;
}

void trie_free(struct trie *t)
{
    rc_free(t->node);
    trie_init(t);
}

static int32_t trie_new_node(struct trie *t, uint8_t byte)
{
    if (t->n_nodes == t->cap_nodes) {
        size_t cap = t->cap_nodes ? t->cap_nodes * 2 : 64;
        if (cap > INT32_MAX)
            return -1;
        struct trie_node *nn = rc_realloc(t->node, cap * sizeof *nn);
        if (!nn)
            return -1;
        t->node = nn;
        t->cap_nodes = cap;
    }
    struct trie_node *nd = &t->node[t->n_nodes];
    nd->child = nd->sibling = nd->value = -1;
    nd->byte = byte;
    return (int32_t)t->n_nodes++;
}

static int32_t trie_child(const struct trie *t, int32_t nd, uint8_t byte)
{
    for (int32_t c = t->node[nd].child; c >= 0; c = t->node[c].sibling)
        if (t->node[c].byte == byte)
            return c;
    return -1;
}

int trie_add(struct trie *t, const uint8_t *s, size_t n, int32_t v)
{
    int32_t nd = t->root[s[0]];
    if (nd < 0) {
        if ((nd = trie_new_node(t, s[0])) < 0)
            return RC_ENOMEM;
        t->root[s[0]] = nd;
    }
    for (size_t i = 1; i < n; i++) {
        int32_t c = trie_child(t, nd, s[i]);
        if (c < 0) {
            if ((c = trie_new_node(t, s[i])) < 0)
                return RC_ENOMEM;
            t->node[c].sibling = t->node[nd].child;
            t->node[nd].child = c;
        }
        nd = c;
    }
    if (t->node[nd].value >= 0)
        return RC_EFORMAT;
    t->node[nd].value = v;
    if (n > t->max_len)
        t->max_len = n;
    t->n_patterns++;
    return 0;
}

int trie_find(const struct trie *t, const uint8_t *s, size_t n, size_t from, int final,
              size_t *ms, size_t *me, int32_t *val)
{
    if (t->n_patterns == 0)
        return TRIE_NONE;
    for (size_t p = from; p < n; p++) {
        int32_t nd = t->root[s[p]];
        if (nd < 0)
            continue;
        size_t j = p + 1, best_end = 0;
        int32_t best = -1;
        int live = 0;
        for (;;) {
            if (t->node[nd].value >= 0) {
                best = t->node[nd].value;
                best_end = j;
            }
            if (j == n) {
                live = t->node[nd].child >= 0;
                break;
            }
            if ((nd = trie_child(t, nd, s[j])) < 0)
                break;
            j++;
        }
        if (live && !final) {
            *ms = p;
            return TRIE_LIVE;
        }
        if (best >= 0) {
            *ms = p;
            *me = best_end;
            *val = best;
            return TRIE_FOUND;
        }
    }
    return TRIE_NONE;
}

/* ---- regexes --------------------------------------------------------------------- */

const char PRETOK_GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Oniguruma's \s (Unicode): White_Space (TAB..CR, NEL, Zs, Zl, Zp). PCRE2's also takes
 * U+180E, which stopped being a space in Unicode 6.3. */
#define SPACE_BODY "\\p{White_Space}"
/* Oniguruma's \w (Unicode): Alphabetic, marks, decimal digits, connector punctuation,
 * and, from its Latin-1 ctype table, the superscript digits and vulgar fractions.
 * PCRE2's is letters, numbers and underscore. \b is rebuilt on the same set. */
#define WORD_BODY "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}"
#define WORD_CLASS "[" WORD_BODY "]"
#define HEX_BODY "0-9a-fA-F"

static void *pcre_malloc(size_t n, void *data)
{
    (void)data;
    return rc_malloc(n);
}

static void pcre_free(void *p, void *data)
{
    (void)data;
    rc_free(p);
}

static int append_cstr(struct tok_bytes *o, const char *s)
{
    return tok_bytes_append(o, s, strlen(s));
}

/* Rewrite an Oniguruma (Ruby syntax) pattern into a PCRE2 one with the same meaning,
 * or refuse with RC_EUNSUPPORTED. */
static int translate(const char *p, size_t n, struct tok_bytes *o, char *err, size_t errlen)
{
    int in_class = 0, rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        char c = p[i];
        if (c == '\\') {
            if (i + 1 >= n)
                return tok_bytes_append(o, p + i, 1);
            char d = p[++i];
            const char *body = d == 's' || d == 'S' ? SPACE_BODY
                             : d == 'w' || d == 'W' ? WORD_BODY
                             : d == 'h' || d == 'H' ? HEX_BODY : NULL;
            if (d == 'S') {
                rc = append_cstr(o, "\\P{White_Space}");
                continue;
            }
            if (body) {
                int neg = d == 'W' || d == 'H';
                if (in_class && neg)
                    return rc_fail(err, errlen, RC_EUNSUPPORTED,
                                   "regex: \\%c inside a character class is not supported", d);
                if (!in_class)
                    rc = append_cstr(o, neg ? "[^" : "[");
                if (!rc)
                    rc = append_cstr(o, body);
                if (!rc && !in_class)
                    rc = append_cstr(o, "]");
                continue;
            }
            if (!in_class && (d == 'b' || d == 'B')) {
                rc = append_cstr(o, d == 'b'
                                        ? "(?:(?<!" WORD_CLASS ")(?=" WORD_CLASS ")|(?<=" WORD_CLASS
                                          ")(?!" WORD_CLASS "))"
                                        : "(?:(?<!" WORD_CLASS ")(?!" WORD_CLASS ")|(?<=" WORD_CLASS
                                          ")(?=" WORD_CLASS "))");
                continue;
            }
            if (d == 'Q' || d == 'C' || d == 'G' || d == 'K' || d == 'R' || d == 'X' ||
                d == 'g' || d == 'k')
                return rc_fail(err, errlen, RC_EUNSUPPORTED,
                               "regex: \\%c is not supported", d);
            char two[2] = {'\\', d};
            rc = tok_bytes_append(o, two, 2);
            continue;
        }
        if (in_class) {
            if (c == '[' && i + 1 < n && p[i + 1] != ':')
                return rc_fail(err, errlen, RC_EUNSUPPORTED,
                               "regex: nested character classes are not supported");
            if (c == '&' && i + 1 < n && p[i + 1] == '&')
                return rc_fail(err, errlen, RC_EUNSUPPORTED,
                               "regex: class intersection (&&) is not supported");
            if (c == '[') { /* POSIX class [:name:] */
                const char *e = memchr(p + i, ']', n - i);
                if (!e)
                    return rc_fail(err, errlen, RC_EFORMAT, "regex: unterminated [:class:]");
                size_t k = (size_t)(e - (p + i)) + 1;
                rc = tok_bytes_append(o, p + i, k);
                i += k - 1;
                continue;
            }
            if (c == ']')
                in_class = 0;
            rc = tok_bytes_append(o, &c, 1);
            continue;
        }
        if (c == '[') {
            in_class = 1;
            rc = tok_bytes_append(o, &c, 1);
            if (!rc && i + 1 < n && p[i + 1] == '^')
                rc = tok_bytes_append(o, p + ++i, 1);
            if (!rc && i + 1 < n && p[i + 1] == ']') /* a leading ] is literal */
                rc = tok_bytes_append(o, p + ++i, 1);
            continue;
        }
        if (c == '(' && i + 1 < n && p[i + 1] == '?') {
            /* Inline options: Ruby's m is PCRE2's s (dot matches newline). */
            size_t j = i + 2;
            while (j < n && (p[j] == 'i' || p[j] == 'm' || p[j] == 'x' || p[j] == '-'))
                j++;
            if (j > i + 2 && j < n && (p[j] == ':' || p[j] == ')')) {
                rc = append_cstr(o, "(?");
                for (size_t k = i + 2; k < j && !rc; k++)
                    rc = tok_bytes_append(o, p[k] == 'm' ? "s" : p + k, 1);
                i = j - 1;
                continue;
            }
        }
        rc = tok_bytes_append(o, &c, 1);
    }
    return rc ? rc_fail(err, errlen, rc, "out of memory") : 0;
}

int pretok_regex_compile(struct pretok *pt, const char *pattern, size_t len, int literal,
                         struct pt_step *step, char *err, size_t errlen)
{
    if (!pt->gctx) {
        pt->gctx = pcre2_general_context_create(pcre_malloc, pcre_free, NULL);
        if (!pt->gctx)
            return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    }
    struct tok_bytes src = {0};
    int rc = 0;
    if (literal)
        rc = tok_bytes_append(&src, pattern, len);
    else
        rc = translate(pattern, len, &src, err, errlen);
    if (rc) {
        tok_bytes_free(&src);
        return rc == RC_ENOMEM ? rc_fail(err, errlen, rc, "out of memory") : rc;
    }
    pcre2_compile_context *cctx = pcre2_compile_context_create(pt->gctx);
    if (!cctx) {
        tok_bytes_free(&src);
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    }
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL
                                         : PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C | PCRE2_MULTILINE);
    int ecode;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile(src.p ? src.p : (const uint8_t *)"", src.n, opts, &ecode,
                                   &eoff, cctx);
    pcre2_compile_context_free(cctx);
    tok_bytes_free(&src);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        if (ecode == PCRE2_ERROR_NOMEMORY || ecode == PCRE2_ERROR_HEAP_FAILED)
            return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        return rc_fail(err, errlen, RC_EFORMAT, "regex '%.*s' does not compile: %s",
                       (int)(len > 80 ? 80 : len), pattern, (const char *)msg);
    }
    uint32_t minlen = 0, lb = 0;
    pcre2_pattern_info(re, PCRE2_INFO_MINLENGTH, &minlen);
    pcre2_pattern_info(re, PCRE2_INFO_MAXLOOKBEHIND, &lb);
    if (minlen == 0) {
        pcre2_code_free(re);
        return rc_fail(err, errlen, RC_EUNSUPPORTED,
                       "regex '%.*s' can match the empty string (not supported)",
                       (int)(len > 80 ? 80 : len), pattern);
    }
    /* Without JIT the interpreter still gives the same matches, only slower. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE | PCRE2_JIT_PARTIAL_HARD);
    step->re = re;
    step->lookbehind = lb;
    return 0;
}

void pretok_free(struct pretok *pt)
{
    for (int i = 0; i < pt->n; i++)
        pcre2_code_free(pt->step[i].re);
    pcre2_general_context_free(pt->gctx);
    memset(pt, 0, sizeof *pt);
}

int pretok_work_init(struct pretok_work *w, const struct pretok *pt)
{
    memset(w, 0, sizeof *w);
    w->md = pcre2_match_data_create(1, pt->gctx);
    w->mctx = pcre2_match_context_create(pt->gctx);
    w->jit = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, pt->gctx);
    if (!w->md || !w->mctx || !w->jit) {
        pretok_work_free(w);
        return RC_ENOMEM;
    }
    pcre2_jit_stack_assign(w->mctx, NULL, w->jit);
    /* Bounds for the interpreter, used when JIT is unavailable. */
    pcre2_set_match_limit(w->mctx, 50 * 1000 * 1000);
    pcre2_set_depth_limit(w->mctx, 1000 * 1000);
    return 0;
}

void pretok_work_free(struct pretok_work *w)
{
    pcre2_match_data_free(w->md);
    pcre2_match_context_free(w->mctx);
    pcre2_jit_stack_free(w->jit);
    memset(w, 0, sizeof *w);
}

void pt_ranges_free(struct pt_ranges *r)
{
    rc_free(r->r);
    memset(r, 0, sizeof *r);
}

static int range_push(struct pt_ranges *r, size_t start, size_t end, int match)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        struct pt_range *nr = rc_realloc(r->r, cap * sizeof *nr);
        if (!nr)
            return RC_ENOMEM;
        r->r = nr;
        r->cap = cap;
    }
    r->r[r->n++] = (struct pt_range){start, end, match};
    return 0;
}

int pretok_scan(const struct pt_step *step, struct pretok_work *w, const uint8_t *s, size_t ctx0,
                size_t from, size_t n, int final, struct pt_ranges *out, size_t *certain,
                char *err, size_t errlen)
{
    size_t pos = from;
    uint32_t opts = PCRE2_NO_UTF_CHECK | (final ? 0 : PCRE2_PARTIAL_HARD);
    while (pos < n) {
        int rc = pcre2_match(step->re, s + ctx0, n - ctx0, pos - ctx0, opts, w->md, w->mctx);
        if (rc == PCRE2_ERROR_NOMATCH || rc == PCRE2_ERROR_PARTIAL)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return rc_fail(err, errlen, rc == PCRE2_ERROR_NOMEMORY ? RC_ENOMEM : RC_ERANGE,
                           "pre-tokenizer regex failed: %s", (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        size_t ms = ov[0] + ctx0, me = ov[1] + ctx0;
        if (me <= ms || ms < pos)
            return rc_fail(err, errlen, RC_EUNSUPPORTED,
                           "pre-tokenizer regex produced an empty or backward match");
        if (ms > pos && range_push(out, pos, ms, 0))
            return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        if (range_push(out, ms, me, 1))
            return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        pos = me;
    }
    if (final) {
        if (pos < n && range_push(out, pos, n, 0))
            return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        pos = n;
    }
    *certain = pos;
    return 0;
}

int pretok_fold(const struct pt_range *r, size_t n, int behavior, int invert, int more,
                struct pt_ranges *out, size_t *consumed)
{
    if (n == 0)
        return 0;
    size_t first = out->n;
    size_t last_start = 0; /* start of the last piece output */
    int prev = 0;
    for (size_t i = 0; i < n; i++) {
        int f = r[i].match ^ invert;
        int join;
        switch (behavior) {
        case SB_REMOVED:
            if (f)
                continue;
            join = 0;
            break;
        case SB_CONTIGUOUS:
            join = out->n > first && f == prev;
            break;
        case SB_MERGED_PREV:
            join = out->n > first && f && !prev;
            break;
        case SB_MERGED_NEXT:
            join = out->n > first && prev && !f;
            break;
        default: /* SB_ISOLATED */
            join = 0;
            break;
        }
        prev = f;
        if (join) {
            out->r[out->n - 1].end = r[i].end;
        } else {
            if (range_push(out, r[i].start, r[i].end, 0))
                return RC_ENOMEM;
            last_start = r[i].start;
        }
    }
    *consumed = r[n - 1].end;
    if (more && out->n > first) {
        int f_last = r[n - 1].match ^ invert;
        int held = (behavior == SB_CONTIGUOUS) || (behavior == SB_MERGED_PREV && !f_last) ||
                   (behavior == SB_MERGED_NEXT && f_last);
        if (held && out->r[out->n - 1].end == r[n - 1].end) {
            out->n--;
            *consumed = last_start;
        }
    }
    return 0;
}
