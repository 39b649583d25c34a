/*
 * utf8.h — the one UTF-8 module: validation, repair and cutting, with one
 * documented policy, used by the tokenizer and by everything that sends text.
 *
 * Policy (the same as Python's bytes.decode("utf-8", errors="replace") and Rust's
 * String::from_utf8_lossy, i.e. the Unicode "maximal subpart" practice): every
 * maximal subpart of an ill-formed sequence becomes one U+FFFD. A maximal subpart is
 * the longest prefix of a well-formed sequence (Unicode Table 3-7) that the input
 * starts; a byte that cannot start or continue anything is a subpart of its own.
 * Examples: "\xE2\x82" (truncated euro sign) -> one U+FFFD; "\xED\xA0\x80" (a
 * surrogate) -> three; "\xF0\x80\x80\x80" (overlong) -> four; "\xC3\x28" -> U+FFFD "(".
 * Well-formed means RFC 3629: no overlong forms, no surrogates (U+D800..DFFF), nothing
 * above U+10FFFF.
 *
 * One return convention for "what starts here" (utf8_char_len): > 0 a whole
 * character of that length, 0 an incomplete but so far valid prefix (more bytes
 * could complete it), < 0 an ill-formed subpart of -k bytes. Predicates return 1/0.
 *
 * Repair is streaming-safe: utf8_repair() stops before a trailing sequence that is
 * still a valid prefix (at most 3 bytes) unless told the input is final, and
 * utf8_complete_prefix() says where a byte stream can be cut; so the same bytes cut
 * anywhere give the same output as in one piece. Token pieces are bytes (one token
 * can end mid-character); JSON bodies and SSE events must be valid UTF-8: repair them
 * with utf8_repair_str() / utf8_repair_dup().
 *
 * Bytes are passed as uint8_t; callers holding char text cast.
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

/* 1 if s[0..n) is entirely well-formed UTF-8 (an incomplete tail is not). */
int utf8_valid(const uint8_t *s, size_t n);

/* Bytes of s[0..n) that can be sent now: all of them except a trailing incomplete
 * (but so far valid) character of at most 3 bytes, which the caller holds back
 * until more bytes arrive. Ill-formed bytes are not held back (they never complete). */
size_t utf8_complete_prefix(const uint8_t *s, size_t n);

/* Repair all of s[0..n) (final: a trailing incomplete character is one U+FFFD) into
 * the C string out of capacity cap >= 1; stops before a character that does not fit.
 * Returns the bytes written, excluding the NUL always written after them. */
size_t utf8_repair_str(const uint8_t *s, size_t n, char *out, size_t cap);

/* Bytes utf8_repair_str() needs for all of s[0..n) (excluding the NUL). */
size_t utf8_repaired_len(const uint8_t *s, size_t n);

/* All of s[0..n) repaired into a new NUL-terminated string (rc_malloc; the caller
 * rc_frees it), its length in *len. NULL only when out of memory. */
char *utf8_repair_dup(const uint8_t *s, size_t n, size_t *len);

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
