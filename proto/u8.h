/*
 * u8.h — strict UTF-8 (RFC 3629) checks for text that leaves the server.
 *
 * JSON bodies and SSE events must be valid UTF-8, but token pieces are
 * bytes: one token can end in the middle of a character. These helpers
 * validate, find where a byte stream can be cut without splitting a
 * character, and replace what is invalid with U+FFFD.
 * Overlong forms, surrogates (U+D800..DFFF) and code points above U+10FFFF
 * are invalid.
 */
#ifndef RECUR_U8_H
#define RECUR_U8_H

#include <stddef.h>

/* Length of the valid sequence starting at s (1..4), 0 if s[0..n) starts
 * with an invalid sequence, or -1 if it is a valid but incomplete prefix
 * (more bytes could complete it). */
int u8_seq_len(const unsigned char *s, size_t n);

/* 1 if s[0..n) is entirely valid UTF-8. */
int u8_valid(const char *s, size_t n);

/* Bytes of s[0..n) that can be emitted now: everything except a trailing
 * incomplete (but so far valid) sequence of at most 3 bytes, which the
 * caller holds back until more bytes arrive. */
size_t u8_complete_prefix(const char *s, size_t n);

/* Copy s[0..n) into out (capacity cap, NUL-terminated) replacing each
 * invalid or incomplete sequence by U+FFFD; stops before a character that
 * does not fit. Returns the bytes written (excluding the NUL). cap >= 1. */
size_t u8_sanitize(const char *s, size_t n, char *out, size_t cap);

/* Bytes u8_sanitize would need for s[0..n) (excluding the NUL). */
size_t u8_sanitized_len(const char *s, size_t n);

#endif
