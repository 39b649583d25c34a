/*
 * outbuf.h — growable byte buffers, JSON written straight into them, and
 * per-token detail rows: the part of the wire formats that needs no
 * jansson, so the compute thread can use it (it writes stream events and
 * the tokenize body as bytes, never JSON trees).
 *
 * Functions that can fail return 0 or RC_ENOMEM.
 */
#ifndef RECUR_OUTBUF_H
#define RECUR_OUTBUF_H

#include <stddef.h>
#include <stdint.h>

typedef const char *(*piece_fn)(const void *ctx, int32_t id, size_t *len);

struct vocab_view {
    piece_fn piece;
    const void *ctx;
};

/* Per-token rows: position, id, log-probability (NaN = not predicted:
 * the first token of a stream) and k alternatives each. */
struct tok_details {
    size_t n, cap;
    int k;
    int64_t *pos;
    int32_t *id;
    float *lp;
    int32_t *top_id; /* n * k */
    float *top_lp;   /* n * k */
};

int tok_details_init(struct tok_details *d, int k);
/* Room for n rows, so that the next pushes up to n cannot fail. */
int tok_details_reserve(struct tok_details *d, size_t n);
/* top_id/top_lp hold d->k entries (ignored when lp is NaN). */
int tok_details_push(struct tok_details *d, int64_t pos, int32_t id, float lp,
                     const int32_t *top_id, const float *top_lp);
void tok_details_free(struct tok_details *d);

/* A growable byte buffer (rc_* memory). */
struct outbuf {
    char *p;
    size_t n, cap;
};
int outbuf_put(struct outbuf *b, const void *data, size_t n);
void outbuf_free(struct outbuf *b);

/* JSON written straight into an outbuf, for bodies that grow with the
 * input: a jansson node per token costs ~100 bytes and an allocation, so a
 * few MB of text built as a tree took GBs and seconds (issue 12). Each
 * returns 0 or RC_ENOMEM; on failure b may hold part of the value (the
 * caller throws the buffer away). */
/* s[0..n) as a JSON string: '"', '\\' and controls escaped, invalid UTF-8
 * replaced by U+FFFD (the same text jansson gets from text_value). */
int outbuf_json_str(struct outbuf *b, const char *s, size_t n);
/* A decimal integer. */
int outbuf_int(struct outbuf *b, int64_t x);

/* POST /v1/tokenize's body, written into b:
 * {"tokens":[ids],"n_tokens":N} and, with pieces,
 * "pieces":[{"id","text",["bytes"]}..] (the first `limit` tokens only) and
 * "pieces_truncated": whether pieces stopped before the end. */
struct tokenize_view {
    const int32_t *ids;
    size_t n;
    int with_pieces;
    size_t limit;                /* --detail-limit */
};
int resp_tokenize(struct outbuf *b, const struct tokenize_view *t, const struct vocab_view *v);

#endif
