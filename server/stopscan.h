/*
 * stopscan.h — stop sequences in generated text, as a pure function.
 *
 * Generated text grows a token piece at a time; a stop sequence may span
 * pieces, and a piece may end inside a UTF-8 character. After each piece
 * the scheduler asks: did a stop sequence appear, and if not, how much of
 * the text may be streamed now? Bytes that could be the start of a stop
 * sequence (a suffix that is a proper prefix of one) and a character cut
 * short are held back until the next piece settles them.
 *
 * Matches are looked for from `emitted` on: bytes already streamed were
 * not a possible stop prefix when they went out, so no match can start
 * before them (docs/server.md, "Stop sequences").
 */
#ifndef RECUR_STOPSCAN_H
#define RECUR_STOPSCAN_H

#include <stddef.h>

struct stop_list {
    char *const *s;    /* n stop sequences (not NUL-terminated: see len) */
    const size_t *len; /* their lengths, each >= 1 */
    int n;
};

/* Scan text[0..n) of which text[0..emitted) has been streamed. Returns 1
 * when a stop sequence starts at or after emitted: *end is where the
 * earliest one starts (the text is cut there; all of it before may go).
 * Returns 0 otherwise: *end (>= emitted) is the end of what may be
 * streamed now (no possible stop prefix, no incomplete character). */
int stop_scan(const char *text, size_t n, size_t emitted, const struct stop_list *stops,
              size_t *end);

#endif
