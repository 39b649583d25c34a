#include "outbuf.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "utf8.h"

int tok_details_init(struct tok_details *d, int k)
{
    memset(d, 0, sizeof *d);
    d->k = k;
    return 0;
}

static int grow(void **p, size_t n, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes))
        return RC_ENOMEM;
    void *q = rc_realloc(*p, bytes ? bytes : 1);
    if (!q)
        return RC_ENOMEM;
    *p = q;
    return 0;
}

int tok_details_reserve(struct tok_details *d, size_t n)
{
    if (n <= d->cap)
        return 0;
    size_t kk = (size_t)(d->k > 0 ? d->k : 1);
    if (grow((void **)&d->pos, n, sizeof *d->pos) || grow((void **)&d->id, n, sizeof *d->id) ||
        grow((void **)&d->lp, n, sizeof *d->lp) ||
        grow((void **)&d->top_id, n * kk, sizeof *d->top_id) ||
        grow((void **)&d->top_lp, n * kk, sizeof *d->top_lp))
        return RC_ENOMEM; /* what did grow stays valid; cap is unchanged */
    d->cap = n;
    return 0;
}

int tok_details_push(struct tok_details *d, int64_t pos, int32_t id, float lp,
                     const int32_t *top_id, const float *top_lp)
{
    if (d->n == d->cap && tok_details_reserve(d, d->cap ? d->cap * 2 : 64) != 0)
        return RC_ENOMEM;
    size_t i = d->n++;
    d->pos[i] = pos;
    d->id[i] = id;
    d->lp[i] = lp;
    for (int j = 0; j < d->k; j++) {
        d->top_id[i * (size_t)d->k + (size_t)j] = isnan(lp) ? -1 : top_id[j];
        d->top_lp[i * (size_t)d->k + (size_t)j] = isnan(lp) ? NAN : top_lp[j];
    }
    return 0;
}

void tok_details_free(struct tok_details *d)
{
    if (!d)
        return;
    rc_free(d->pos);
    rc_free(d->id);
    rc_free(d->lp);
    rc_free(d->top_id);
    rc_free(d->top_lp);
    memset(d, 0, sizeof *d);
}

int outbuf_put(struct outbuf *b, const void *data, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 1024;
        while (nc < b->n + n + 1) {
            if (nc > SIZE_MAX / 2)
                return RC_ENOMEM;
            nc *= 2;
        }
        char *np = rc_realloc(b->p, nc);
        if (!np)
            return RC_ENOMEM;
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

void outbuf_free(struct outbuf *b)
{
    rc_free(b->p);
    memset(b, 0, sizeof *b);
}

/* a string literal */
#define PUTS(b, lit) outbuf_put((b), (lit), sizeof(lit) - 1)

int outbuf_int(struct outbuf *b, int64_t x)
{
    char tmp[24];
    int k = snprintf(tmp, sizeof tmp, "%" PRId64, x);
    return outbuf_put(b, tmp, (size_t)k);
}

/* Escape valid UTF-8 s[0..n) into b (no quotes): runs of plain bytes are
 * copied at once, so a long text costs one pass. */
static int put_escaped(struct outbuf *b, const char *s, size_t n)
{
    static const char hexd[] = "0123456789ABCDEF"; /* as jansson */
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (outbuf_put(b, s + run, i - run))
            return RC_ENOMEM;
        run = i + 1;
        char esc[6] = {'\\', 0};
        size_t el = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hexd[c >> 4];
            esc[5] = hexd[c & 15];
            el = 6;
        }
        if (outbuf_put(b, esc, el))
            return RC_ENOMEM;
    }
    return outbuf_put(b, s + run, n - run);
}

int outbuf_json_str(struct outbuf *b, const char *s, size_t n)
{
    if (PUTS(b, "\""))
        return RC_ENOMEM;
    int rc;
    if (utf8_valid((const uint8_t *)s, n))
        rc = put_escaped(b, s, n);
    else {
        size_t len;
        char *buf = utf8_repair_dup((const uint8_t *)s, n, &len);
        if (!buf)
            return RC_ENOMEM;
        rc = put_escaped(b, buf, len);
        rc_free(buf);
    }
    return rc ? rc : PUTS(b, "\"");
}

int resp_tokenize(struct outbuf *b, const struct tokenize_view *t, const struct vocab_view *v)
{
    /* Room for the ids at once (an id is at most 11 bytes with its comma),
     * so the buffer is not copied over and over while it grows. */
    size_t want;
    if (!__builtin_mul_overflow(t->n, (size_t)12, &want) && want < SIZE_MAX - 256 - b->n &&
        b->cap < b->n + want + 256) {
        char *np = rc_realloc(b->p, b->n + want + 256);
        if (!np)
            return RC_ENOMEM;
        b->p = np;
        b->cap = b->n + want + 256;
    }
    if (PUTS(b, "{\"tokens\":["))
        return RC_ENOMEM;
    for (size_t i = 0; i < t->n; i++)
        if ((i && PUTS(b, ",")) || outbuf_int(b, t->ids[i]))
            return RC_ENOMEM;
    if (PUTS(b, "],\"n_tokens\":") || outbuf_int(b, (int64_t)t->n))
        return RC_ENOMEM;
    if (t->with_pieces) {
        size_t np = t->n < t->limit ? t->n : t->limit;
        if (PUTS(b, ",\"pieces\":["))
            return RC_ENOMEM;
        for (size_t i = 0; i < np; i++) {
            size_t len;
            const char *p = v->piece(v->ctx, t->ids[i], &len);
            if ((i && PUTS(b, ",")) || PUTS(b, "{\"id\":") ||
                outbuf_int(b, t->ids[i]) || PUTS(b, ",\"text\":") ||
                outbuf_json_str(b, p, len))
                return RC_ENOMEM;
            if (!utf8_valid((const uint8_t *)p, len)) {
                if (PUTS(b, ",\"bytes\":["))
                    return RC_ENOMEM;
                for (size_t k = 0; k < len; k++)
                    if ((k && PUTS(b, ",")) || outbuf_int(b, (unsigned char)p[k]))
                        return RC_ENOMEM;
                if (PUTS(b, "]"))
                    return RC_ENOMEM;
            }
            if (PUTS(b, "}"))
                return RC_ENOMEM;
        }
        if (PUTS(b, "],\"pieces_truncated\":") ||
            outbuf_put(b, np < t->n ? "true" : "false", np < t->n ? 4 : 5))
            return RC_ENOMEM;
    }
    return PUTS(b, "}");
}
