#include "score.h"

#include <math.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "forward.h"
#include "kernels.h"
#include "model_impl.h"
#include "state.h"

#define LOGIT_BLOCK 32 /* rows of logits computed at once: 32 x 50k floats = 6.4 MB */

void score_stats_init(struct score_stats *st) { memset(st, 0, sizeof *st); }

int score_bucket_of(int64_t p)
{
    if (p <= 0)
        return 0; /* clzll(0) is undefined; negative positions do not occur */
    return 64 - __builtin_clzll((unsigned long long)p); /* p in [2^(k-1), 2^k) -> k, k <= 63 */
}

/* Bucket b is [2^(b-1), 2^b); the top one (b = 63) ends at INT64_MAX, as
 * 2^63 is not an int64. Shifts are done in unsigned so none overflows, for
 * any b a position can map to. */
static void bucket_bounds(int b, int64_t *start, int64_t *end)
{
    *start = b == 0 ? 0 : (int64_t)(1ull << (b - 1));
    *end = b >= 63 ? INT64_MAX : (int64_t)(1ull << b);
}

void score_stats_add(struct score_stats *st, int64_t p, double lp)
{
    int b = score_bucket_of(p);
    if (b >= SCORE_MAX_BUCKETS)
        b = SCORE_MAX_BUCKETS - 1;
    while (st->nb <= b) {
        bucket_bounds(st->nb, &st->b[st->nb].start, &st->b[st->nb].end);
        st->nb++;
    }
    st->b[b].n++;
    st->b[b].nll -= lp;
    st->n++;
    st->nll -= lp;
}

void score_stats_merge(struct score_stats *a, const struct score_stats *b)
{
    for (int i = 0; i < b->nb; i++) {
        while (a->nb <= i) {
            bucket_bounds(a->nb, &a->b[a->nb].start, &a->b[a->nb].end);
            a->nb++;
        }
        a->b[i].n += b->b[i].n;
        a->b[i].nll += b->b[i].nll;
    }
    a->n += b->n;
    a->nll += b->nll;
}

double score_ppl(double nll, int64_t n) { return n > 0 ? exp(nll / (double)n) : NAN; }

double score_logsumexp(const float *x, int n)
{
    float m;
    double s;
    kernels_get()->max_sumexp(x, n, &m, &s);
    return (double)m + log(s);
}

static float finite_or_ninf(float x) { return isfinite(x) ? x : -INFINITY; }

int score_top_k(const float *x, int n, int k, int32_t *ids)
{
    /* k is small (<= 64): a sorted insertion list, one pass over x */
    int have = 0;
    for (int i = 0; i < n; i++) {
        float v = finite_or_ninf(x[i]);
        if (have == k && !(v > finite_or_ninf(x[ids[k - 1]])))
            continue;
        int p = have < k ? have++ : k - 1;
        while (p > 0 && v > finite_or_ninf(x[ids[p - 1]])) {
            ids[p] = ids[p - 1];
            p--;
        }
        ids[p] = i;
    }
    return have;
}

double score_row(const float *logits, int n_vocab, int vocab_size, int32_t id, int k,
                 int32_t *top_ids, float *top_lps, int *n_top)
{
    double lse = score_logsumexp(logits, n_vocab);
    int nt = k > 0 ? score_top_k(logits, vocab_size, k, top_ids) : 0;
    for (int i = 0; i < nt; i++)
        top_lps[i] = (float)((double)logits[top_ids[i]] - lse);
    if (n_top)
        *n_top = nt;
    return (double)logits[id] - lse;
}

struct scorer {
    struct fwd *f;
    const struct model *m;
    int top_k;
    float *hidden;  /* max_tokens x d_model: the chunk's final rows */
    float *pred;    /* (max_tokens + 1) x d_model: rows that make predictions */
    float *logits;  /* LOGIT_BLOCK x n_vocab */
    int32_t *top_ids;
    float *top_lp;
};

void scorer_free(struct scorer *sc)
{
    if (!sc)
        return;
    rc_free(sc->hidden);
    rc_free(sc->pred);
    rc_free(sc->logits);
    rc_free(sc->top_ids);
    rc_free(sc->top_lp);
    rc_free(sc);
}

int scorer_create(struct fwd *f, int top_k, struct scorer **out)
{
    if (top_k < 0 || top_k > 64)
        return RC_EINVAL;
    struct scorer *sc = rc_calloc(1, sizeof *sc);
    if (!sc)
        return RC_ENOMEM;
    const struct model *m = fwd_model(f);
    const struct model_config *c = model_config(m);
    size_t T = (size_t)fwd_max_tokens(f), D = (size_t)c->d_model;
    sc->f = f;
    sc->m = m;
    sc->top_k = top_k;
    sc->hidden = rc_aligned_alloc(T * D * sizeof(float));
    sc->pred = rc_aligned_alloc((T + 1) * D * sizeof(float));
    sc->logits = rc_aligned_alloc((size_t)LOGIT_BLOCK * (size_t)c->n_vocab * sizeof(float));
    sc->top_ids = rc_malloc((size_t)(top_k ? top_k : 1) * sizeof(int32_t));
    sc->top_lp = rc_malloc((size_t)(top_k ? top_k : 1) * sizeof(float));
    if (!sc->hidden || !sc->pred || !sc->logits || !sc->top_ids || !sc->top_lp) {
        scorer_free(sc);
        return RC_ENOMEM;
    }
    *out = sc;
    return 0;
}

int scorer_run(struct scorer *sc, struct mstate *s, const int32_t *tokens, size_t n,
               struct score_stats *st, score_cb cb, void *ud, char *err, size_t errlen)
{
    const struct model_config *c = model_config(sc->m);
    const size_t D = (size_t)c->d_model;
    const int V = c->n_vocab, T = fwd_max_tokens(sc->f);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return rc_fail(err, errlen, RC_EINVAL, "token %zu is %d, outside the vocabulary [0, %d)",
                           i, tokens[i], V);
    while (n > 0) {
        int len = n > (size_t)T ? T : (int)n;
        /* Rows that predict tokens[0..len): the state's last row (if any)
         * then this chunk's rows 0..len-2. */
        int has_prev = s->has_last;
        int64_t pos0 = s->pos;
        if (has_prev)
            memcpy(sc->pred, s->last, D * sizeof(float));
        struct fwd_seg seg = {.state = s, .tokens = tokens, .n = len, .hidden = sc->hidden};
        int rc = fwd_run(sc->f, &seg, 1, err, errlen);
        if (rc)
            return rc;
        memcpy(sc->pred + (has_prev ? D : 0), sc->hidden, (size_t)(len - 1) * D * sizeof(float));
        /* Prediction j (row j of pred) scores token first + j. */
        int first = has_prev ? 0 : 1, npred = len - first;
        for (int b0 = 0; b0 < npred; b0 += LOGIT_BLOCK) {
            int rows = npred - b0 < LOGIT_BLOCK ? npred - b0 : LOGIT_BLOCK;
            fwd_logits(sc->f, sc->pred + (size_t)b0 * D, rows, sc->logits);
            for (int r = 0; r < rows; r++) {
                const float *lg = sc->logits + (size_t)r * V;
                int ti = first + b0 + r; /* token index within the chunk */
                int nt;
                double lp = score_row(lg, V, c->vocab_size, tokens[ti], cb ? sc->top_k : 0,
                                      sc->top_ids, sc->top_lp, &nt);
                int64_t tpos = pos0 + ti;
                score_stats_add(st, tpos - 1, lp);
                if (cb) {
                    struct score_token tok = {tpos, tokens[ti], (float)lp, nt, sc->top_ids,
                                              sc->top_lp};
                    if (cb(ud, &tok))
                        return rc_fail(err, errlen, RC_ECANCELED, "scoring stopped");
                }
            }
        }
        tokens += len;
        n -= (size_t)len;
    }
    return 0;
}
