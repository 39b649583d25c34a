/*
 * log.h — one line per event on stderr, safe for hostile bytes.
 *
 * Anything that came from a client (paths, header values, names) goes
 * through log_escape() first: control bytes (CR, LF, ESC, ...), quotes,
 * backslashes and non-ASCII bytes become \xHH, so a request can neither
 * forge a log line nor drive a terminal. API keys are never logged.
 * The logger is the one piece of process-wide mutable state besides the
 * immutable config (STYLE.md #11); each line is written with one stdio
 * call, so lines from the two threads never interleave.
 */
#ifndef RECUR_LOG_H
#define RECUR_LOG_H

#include <stddef.h>

/* Per-request lines on (1) or off (0); errors are always logged. */
void log_set_requests(int on);
int log_requests_on(void);

/* "2025-01-02T03:04:05.678Z recurd: <message>\n" */
void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Escape src[0..n) into dst (capacity cap >= 1, NUL-terminated); output
 * that does not fit is cut and ends with "...". Returns dst. */
char *log_escape(char *dst, size_t cap, const char *src, size_t n);

#endif
