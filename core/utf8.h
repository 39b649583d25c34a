/*
 * utf8.h — UTF-8 validation and repair with one documented policy.
 *
 * Policy (the same as Python's bytes.decode("utf-8", errors="replace") and Rust's
 * String::from_utf8_lossy, i.e. the Unicode "maximal subpart" practice): every
 * maximal subpart of an ill-formed sequence becomes one U+FFFD. A maximal subpart is
 * the longest prefix of a well-formed sequence (Unicode Table 3-7) that the input
 * starts; a byte that cannot start or continue anything is a subpart of its own.
 * Examples: "\xE2\x82" (truncated euro sign) -> one U+FFFD; "\xED\xA0\x80" (a
 * surrogate) -> three; "\xF0\x80\x80\x80" (overlong) -> four; "\xC3\x28" -> U+FFFD "(".
 *
 * utf8_repair() is streaming-safe: it stops before a trailing sequence that is still
 * a valid prefix (at most 3 bytes) unless told the input is final, so the same bytes
 * cut anywhere give the same output as in one piece.
 */
#ifndef RECUR_UTF8_H
#define RECUR_UTF8_H

#include <stddef.h>
#include <stdint.h>

#define UTF8_REPLACEMENT "\xEF\xBF\xBD"

/* Length of the well-formed character at s[0..n) (1..4), 0 if s[0..n) is a proper
 * prefix of a well-formed character (more bytes could complete it), or -k when the
 * first k bytes are a maximal ill-formed subpart (k >= 1). n must be >= 1. */
int utf8_char_len(const uint8_t *s, size_t n);

/* Repair s[0..n) into dst, which must hold 3 * n bytes (each input byte becomes at
 * most 3 output bytes). Returns the number of bytes written; *consumed gets how many
 * input bytes were used: all of them when final != 0, otherwise possibly up to 3
 * fewer (an incomplete trailing character, kept for the next call). */
size_t utf8_repair(const uint8_t *s, size_t n, int final, uint8_t *dst, size_t *consumed);

/* 1 if s[0..n) is entirely well-formed UTF-8. */
int utf8_valid(const uint8_t *s, size_t n);

/* Decode the character at s (which must be well-formed, e.g. repaired text) into *cp;
 * returns its length. */
static inline int utf8_decode(const uint8_t *s, uint32_t *cp)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

/* Start of the character that ends at s[n-1] in well-formed text (n >= 1). */
static inline size_t utf8_prev(const uint8_t *s, size_t n)
{
    size_t i = n - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80)
        i--;
    return i;
}

/* Encode cp (< 0x110000) at dst; returns the length (1..4). */
int utf8_encode(uint32_t cp, uint8_t *dst);

#endif
