/*
 * score.h — per-token log-probabilities and perplexity by position.
 *
 * Scoring a token means: before reading it, take the stream's next-token
 * distribution (log-softmax over all n_vocab logits, as the reference
 * models do) and record log p(token). The first token of a stream that
 * starts from the zero state has no prediction and is not scored.
 *
 * Position buckets follow the paper's position-wise curve. A prediction
 * made after reading the token at position p (0-based; it predicts the
 * token at p+1) falls in bucket [0,1) if p == 0, else [2^k, 2^(k+1)) with
 * 2^k <= p. So [0,1) holds the prediction of token 1 from token 0.
 */
#ifndef RECUR_SCORE_H
#define RECUR_SCORE_H

#include <stddef.h>
#include <stdint.h>

struct fwd;
struct mstate;

#define SCORE_MAX_BUCKETS 64

struct score_bucket {
    int64_t start, end; /* [start, end) of prediction positions */
    int64_t n;          /* predictions in it */
    double nll;         /* sum of -log p, nats */
};

struct score_stats {
    int64_t n;   /* predictions scored */
    double nll;  /* sum of -log p over them, nats */
    int nb;      /* buckets 0..nb-1 are meaningful (some may have n == 0) */
    struct score_bucket b[SCORE_MAX_BUCKETS];
};

void score_stats_init(struct score_stats *st);
/* Add one prediction made at position p with log-probability lp. */
void score_stats_add(struct score_stats *st, int64_t p, double lp);
/* Merge b into a. */
void score_stats_merge(struct score_stats *a, const struct score_stats *b);
/* exp(nll / n), or NaN when n == 0. */
double score_ppl(double nll, int64_t n);
/* Bucket index of prediction position p. */
int score_bucket_of(int64_t p);

/* One scored token, handed to the callback in stream order. */
struct score_token {
    int64_t pos;          /* position of this token in the stream */
    int32_t id;
    float logprob;        /* log p(id | tokens before pos) */
    int n_top;            /* entries in top_ids/top_logprobs (<= top_k) */
    const int32_t *top_ids;
    const float *top_logprobs;
};
/* Return 0 to go on, non-zero to stop (scorer_run returns RC_ECANCELED). */
typedef int (*score_cb)(void *ud, const struct score_token *t);

struct scorer;

/* top_k: how many alternatives per token to hand to the callback (0..64). */
int scorer_create(struct fwd *f, int top_k, struct scorer **out);
void scorer_free(struct scorer *sc);

/* Read n tokens into s, scoring each that has a prediction (every token
 * if s already has history). Stats are added to st; cb (may be NULL) sees
 * every scored token. Tokens are checked before s is touched; on error s
 * may have advanced by whole chunks already scored (st and cb saw those). */
int scorer_run(struct scorer *sc, struct mstate *s, const int32_t *tokens, size_t n,
               struct score_stats *st, score_cb cb, void *ud, char *err, size_t errlen);

/* log-softmax helpers: the one way a row of logits becomes log-probabilities
 * (the scorer above, the server's scored input and generation details).
 * logsumexp over n floats. */
double score_logsumexp(const float *x, int n);

/* The k highest of x[0..n) into ids, highest first, ties lower id first;
 * non-finite values count as -inf. Returns min(k, n). k is small (it is a
 * request's top_logprobs, <= 64): one pass, O(n k) at worst. */
int score_top_k(const float *x, int n, int k, int32_t *ids);

/* One row of logits, n_vocab wide (the lm_head's rows, padding included).
 * Returns log p(id): the log-softmax over all n_vocab logits, as the
 * reference models compute it. With k > 0 also the k best alternatives and
 * their log-probabilities, ranked among the real tokens [0, vocab_size)
 * only: padding rows are not tokens and are never reported; *n_top (may be
 * NULL) gets how many were filled. */
double score_row(const float *logits, int n_vocab, int vocab_size, int32_t id, int k,
                 int32_t *top_ids, float *top_lps, int *n_top);

#endif
