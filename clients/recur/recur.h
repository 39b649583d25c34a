/*
 * recur.h — the recur client: shared types and helpers.
 *
 * Every command is `int cmd_NAME(int argc, char **argv)` (argv[0] is the
 * command) returning the process exit status, one of enum recur_exit.
 * Messages for the user are one line on stderr, prefixed "recur: ".
 */
#ifndef RECUR_CLIENT_H
#define RECUR_CLIENT_H

#include <curl/curl.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit statuses (docs/clients.md lists them). */
enum recur_exit {
    EX_OK = 0,
    EX_SERVER = 1,  /* the server answered with an error (4xx/5xx) or a bad reply */
    EX_USAGE = 2,   /* bad command line */
    EX_CONNECT = 3, /* the server could not be reached, or a request timed out */
    EX_LOCAL = 4,   /* a local file could not be read or written */
    EX_LOAD = 5,    /* recur load finished, but some requests failed */
};

/* The connection options every command shares. */
struct conn {
    const char *url;   /* base, no trailing slash */
    const char *key;   /* API key or NULL */
    double timeout;    /* seconds: whole request for small ones, stall for streams */
    double retry_deadline; /* seconds an append/generate is retried (--retry-deadline; 0 = off) */
};

/* A growable byte buffer. */
struct buf {
    char *p;
    size_t n, cap;
};
int buf_put(struct buf *b, const void *p, size_t n); /* 0 or -1 (no memory) */
void buf_free(struct buf *b);

/* One response. */
struct resp {
    long status;       /* HTTP status, 0 if none */
    struct buf body;   /* the body (for 2xx only what no sink took) */
    double retry_after; /* seconds from a Retry-After header, -1 if none */
    int replayed;      /* Idempotent-Replayed: true (a stored answer) */
    int json;          /* Content-Type application/json */
};

/* A request. Fields left zero are not used. */
struct req {
    const char *method;       /* "GET", "POST", "PUT", "DELETE" */
    const char *path;         /* "/v1/sessions", with any query */
    const char *ctype;        /* request Content-Type */
    const void *body;         /* a body in memory ... */
    size_t body_len;
    /* ... or one read as it goes: curl's read callback. len < 0: chunked. */
    size_t (*read)(char *p, size_t size, size_t n, void *ctx);
    void *read_ctx;
    long long read_len;
    /* a 2xx body goes here as it arrives instead of into resp.body */
    size_t (*sink)(const char *p, size_t n, void *ctx); /* returns n, or 0 to abort */
    void *sink_ctx;
    /* called about 10 times a second while the transfer runs */
    int (*progress)(void *ctx, curl_off_t dl, curl_off_t ul);
    void *progress_ctx;
    int stream;          /* long-running: conn.timeout bounds stalls, not the whole request */
    double timeout;      /* overrides conn.timeout when > 0 */
    const char *idem_key; /* sent as Idempotency-Key when set */
};

/* Set from the environment and defaults; then common_opt() may change it. */
void conn_init(struct conn *c);

/* Run one request. Returns EX_OK when an HTTP response came (any status:
 * check r->status), else EX_CONNECT with a one-line message printed
 * (cannot connect, timeout, ...). An easy handle may be passed for reuse
 * (NULL: a fresh one). */
int http_do(const struct conn *c, CURL *easy, const struct req *q, struct resp *r);

/* An Idempotency-Key: 128 random bits as 32 hex digits (33 bytes with NUL). */
void idem_key_new(char out[33]);

/* A request that may be sent again (an append or a generate with q->idem_key
 * set): run it with http_do; when no answer came (refused, reset, cut off,
 * timed out) or the answer was a 502/503/504 (or a 409 session_busy after a
 * retry: our own earlier attempt, still running), wait (Retry-After, at most
 * 5 s, else a backoff from 50 ms to 2 s) and send it again with the same key,
 * until c->retry_deadline seconds have passed. rewind(ctx), when given, is
 * called before each new attempt to restart the body (0 ok; -1: cannot,
 * stop). Returns like http_do; *attempts (may be NULL) gets their number. */
int http_do_retry(const struct conn *c, CURL *easy, const struct req *q, struct resp *r,
                  int (*rewind)(void *ctx), void *rewind_ctx, int *attempts);

/* r->status not 2xx: print "recur: HTTP 404 not_found: message" (or the
 * body's start) and return EX_SERVER; else EX_OK. what names the action. */
int http_check(const struct resp *r, const char *what);

/* A JSON call: body may be NULL (no body). On success *out is the parsed
 * reply (json_decref it; NULL when the reply is empty). Errors are printed;
 * returns an enum recur_exit. */
int call_json(const struct conn *c, const char *method, const char *path, json_t *body,
              json_t **out);

/* call_json with an Idempotency-Key, sent again by http_do_retry's rule (an
 * append or a generate). */
int call_json_retry(const struct conn *c, const char *method, const char *path, json_t *body,
                    json_t **out);

/* A new session's id into id (33 bytes); prints errors. */
int session_create(const struct conn *c, char id[40]);
int session_delete(const struct conn *c, const char *id);

/* Format helpers. */
double now_sec(void);
void fmt_bytes(char *out, size_t cap, double bytes);
void fmt_duration(char *out, size_t cap, double seconds);
void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Argument parsing (args.c). A tiny long-option parser: "--name V" or
 * "--name=V"; flags take no value. */
struct argp {
    int argc, i;
    char **argv;
    const char *cmd;      /* for messages */
    const char *val;      /* value of the option just matched */
    char *inline_val;     /* "--x=V" form */
    const char *arg;      /* current argument */
    int bad;              /* a usage error was printed */
};
void argp_init(struct argp *a, int argc, char **argv);
/* Next argument: 1 = option (a->arg), 0 = positional (a->arg), -1 = end. */
int argp_next(struct argp *a);
int argp_is(struct argp *a, const char *name, int takes_value);
/* The connection options (--url, --api-key, --timeout); 1 if consumed. */
int argp_conn(struct argp *a, struct conn *c);
int parse_double(const char *s, double lo, double hi, double *out);
int parse_ll(const char *s, long long lo, long long hi, long long *out);

int cmd_stream(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_sessions(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_load(int argc, char **argv);

/* Shared by stream, eval and load: upload a file (or any reader) to
 * /v1/sessions/ID/append as one chunked text/plain request. */

#endif

/* A session id given on the command line: 1-64 of [A-Za-z0-9_.-] (so it is
 * safe in a path). 0 ok; else prints a message. */
int check_id(const char *cmd, const char *id);

/* A document read as it goes (stream, eval): curl's read callback over a
 * FILE, optionally ending each request at a tokenisation-safe cut once
 * seg_target bytes are sent (see cmd_stream.c). */
struct src {
    FILE *f;
    const char *path;
    char buf[1 << 16];
    size_t lo, hi;
    int eof, err;
    unsigned char prev1, prev2; /* the last two bytes sent, 0 before any */
    long long seg_target;       /* 0: one request for the whole file */
    long long seg_sent;         /* bytes of the current request */
    int seg_end;
    long long sent;             /* bytes of the file sent so far */
    /* where the current segment began, to send it again after a failure */
    long long mark_off, mark_sent;
    unsigned char mark_prev1, mark_prev2;
    int mark_ok;                /* the file could tell its offset */
};
void src_init(struct src *s, FILE *f, const char *path, long long seg_target);
/* 1 when the file has more bytes to send (reads ahead), 0 at its end, -1 on a read error. */
int src_more(struct src *s);
size_t src_read(char *p, size_t size, size_t n, void *ctx);
void src_next_segment(struct src *s);
/* Back to the start of the current segment, for a retry; -1 when the input
 * cannot seek (stdin, a pipe). */
int src_rewind_segment(void *ctx);

/* The totals of append replies. */
struct score_sum {
    long long n_tokens, n_scored, position;
    double nll_sum;
};
/* Add an append reply's totals; -1 if fields are missing. */
int score_add(struct score_sum *t, json_t *reply);
