#include "u8.h"

#include <string.h>

int u8_seq_len(const unsigned char *s, size_t n)
{
    if (n == 0)
        return -1;
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    int len;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* > U+10FFFF */
    } else
        return 0;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return -1;
        unsigned b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
            return 0;
    }
    return len;
}

int u8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        int l = u8_seq_len(p + i, n - i);
        if (l <= 0)
            return 0;
        i += (size_t)l;
    }
    return 1;
}

size_t u8_complete_prefix(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    /* Only the last 3 bytes can start an incomplete sequence. */
    size_t start = n > 3 ? n - 3 : 0;
    for (size_t i = start; i < n; i++) {
        if (p[i] >= 0x80 && p[i] < 0xC0)
            continue; /* a continuation byte cannot start a sequence */
        if (u8_seq_len(p + i, n - i) == -1)
            return i;
    }
    return n;
}

/* Bytes of the longest prefix of s[0..n) that is a valid-so-far start of
 * a sequence (the "maximal subpart"), at least 1. */
static size_t maximal_subpart(const unsigned char *s, size_t n)
{
    for (size_t k = 2; k <= 4 && k <= n; k++)
        if (u8_seq_len(s, k) != -1)
            return k - 1;
    return n < 4 ? n : 1;
}

static size_t sanitize(const char *s, size_t n, char *out, size_t cap)
{
    static const char repl[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        int l = u8_seq_len(p + i, n - i);
        const char *src;
        size_t take;
        if (l > 0) {
            src = s + i;
            take = (size_t)l;
            i += (size_t)l;
        } else {
            /* One U+FFFD per maximal subpart, as the WHATWG decoder and
             * Python's errors="replace" do: the same text comes out whether
             * the bytes are sanitised whole or in complete-prefix pieces. */
            src = repl;
            take = 3;
            i += maximal_subpart(p + i, n - i);
        }
        if (out) {
            if (o + take + 1 > cap)
                break;
            memcpy(out + o, src, take);
        }
        o += take;
    }
    if (out)
        out[o] = 0;
    return o;
}

size_t u8_sanitize(const char *s, size_t n, char *out, size_t cap)
{
    return sanitize(s, n, out, cap);
}

size_t u8_sanitized_len(const char *s, size_t n) { return sanitize(s, n, NULL, 0); }
