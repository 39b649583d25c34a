#include "utf8.h"

#include <string.h>

#include "alloc.h"

/* Unicode Table 3-7: the allowed range of the second byte depends on the first;
 * later continuation bytes are always 80..BF. */
int utf8_char_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return -1; /* 80..C1, F5..FF never start a character */
    }
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n)
            return 0;
        uint8_t b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
            return -i;
    }
    return need;
}

size_t utf8_repair(const uint8_t *s, size_t n, int final, uint8_t *dst, size_t *consumed)
{
    size_t i = 0, o = 0;
    while (i < n) {
        /* ASCII runs dominate real text. */
        if (s[i] < 0x80) {
            dst[o++] = s[i++];
            continue;
        }
        int k = utf8_char_len(s + i, n - i);
        if (k > 0) {
            memcpy(dst + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else if (k == 0) {
            if (!final)
                break;
            memcpy(dst + o, UTF8_REPLACEMENT, 3); /* truncated at the end: one subpart */
            o += 3;
            i = n;
        } else {
            memcpy(dst + o, UTF8_REPLACEMENT, 3);
            o += 3;
            i += (size_t)(-k);
        }
    }
    *consumed = i;
    return o;
}

int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int k = utf8_char_len(s + i, n - i);
        if (k <= 0)
            return 0;
        i += (size_t)k;
    }
    return 1;
}

size_t utf8_complete_prefix(const uint8_t *s, size_t n)
{
    /* Only the last 3 bytes can start an incomplete character. */
    for (size_t i = n > 3 ? n - 3 : 0; i < n; i++) {
        if ((s[i] & 0xC0) == 0x80)
            continue; /* a continuation byte starts nothing */
        if (utf8_char_len(s + i, n - i) == 0)
            return i;
    }
    return n;
}

/* utf8_repair_str() when out != NULL, its length when out == NULL. */
static size_t repair_bounded(const uint8_t *s, size_t n, char *out, size_t cap)
{
    size_t i = 0, o = 0;
    while (i < n) {
        int k = utf8_char_len(s + i, n - i);
        const void *src = k > 0 ? (const void *)(s + i) : (const void *)UTF8_REPLACEMENT;
        size_t take = k > 0 ? (size_t)k : 3;
        if (out) {
            if (o + take + 1 > cap)
                break;
            memcpy(out + o, src, take);
        }
        o += take;
        i += k > 0 ? (size_t)k : k < 0 ? (size_t)-k : n - i; /* 0: truncated at the end */
    }
    if (out)
        out[o] = 0;
    return o;
}

size_t utf8_repair_str(const uint8_t *s, size_t n, char *out, size_t cap)
{
    return repair_bounded(s, n, out, cap);
}

size_t utf8_repaired_len(const uint8_t *s, size_t n) { return repair_bounded(s, n, NULL, 0); }

char *utf8_repair_dup(const uint8_t *s, size_t n, size_t *len)
{
    size_t need = utf8_repaired_len(s, n);
    char *out = rc_malloc(need + 1);
    if (!out)
        return NULL;
    *len = utf8_repair_str(s, n, out, need + 1);
    return out;
}

int utf8_encode(uint32_t cp, uint8_t *d)
{
    if (cp < 0x80) {
        d[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (uint8_t)(0xC0 | (cp >> 6));
        d[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (uint8_t)(0xE0 | (cp >> 12));
        d[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        d[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    d[0] = (uint8_t)(0xF0 | (cp >> 18));
    d[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    d[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    d[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}
