#include "sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "alloc.h"
#include "errors.h"

struct cand {
    float p;    /* unnormalised probability exp((logit - max) / T) */
    int32_t id;
};

struct sampler_scratch {
    int n;          /* capacity */
    struct cand *c; /* n */
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void sampler_seed(struct sampler_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t sampler_next_u64(struct sampler_rng *r)
{
    /* xoshiro256** */
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double sampler_uniform(struct sampler_rng *r)
{
    return (double)(sampler_next_u64(r) >> 11) * 0x1.0p-53;
}

int sampler_scratch_create(int n, struct sampler_scratch **out)
{
    *out = NULL;
    if (n <= 0)
        return RC_EINVAL;
    struct sampler_scratch *sc = rc_calloc(1, sizeof *sc);
    if (!sc)
        return RC_ENOMEM;
    sc->c = rc_calloc((size_t)n, sizeof *sc->c);
    if (!sc->c) {
        rc_free(sc);
        return RC_ENOMEM;
    }
    sc->n = n;
    *out = sc;
    return 0;
}

void sampler_scratch_free(struct sampler_scratch *sc)
{
    if (!sc)
        return;
    rc_free(sc->c);
    rc_free(sc);
}

int sampler_params_check(const struct sampler_params *p, char *err, size_t errlen)
{
    if (!(p->temperature >= 0) || !isfinite(p->temperature))
        return rc_fail(err, errlen, RC_EINVAL, "temperature must be a finite number >= 0");
    if (p->top_k < 0)
        return rc_fail(err, errlen, RC_EINVAL, "top_k must be >= 0");
    if (!(p->top_p > 0 && p->top_p <= 1))
        return rc_fail(err, errlen, RC_EINVAL, "top_p must be in (0, 1]");
    if (!(p->min_p >= 0 && p->min_p < 1))
        return rc_fail(err, errlen, RC_EINVAL, "min_p must be in [0, 1)");
    return 0;
}

/* Total order: more probable first, then lower id. */
static int cand_before(const struct cand *a, const struct cand *b)
{
    return a->p > b->p || (a->p == b->p && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const struct cand *a = pa, *b = pb;
    return cand_before(a, b) ? -1 : cand_before(b, a) ? 1 : 0;
}

/* Restore the heap order of c[0..k) below j (root = the worst kept). */
static void sift_down(struct cand *c, int k, int j)
{
    for (;;) {
        int l = 2 * j + 1, r = l + 1, w = j;
        if (l < k && cand_before(&c[w], &c[l]))
            w = l;
        if (r < k && cand_before(&c[w], &c[r]))
            w = r;
        if (w == j)
            return;
        struct cand t = c[j];
        c[j] = c[w];
        c[w] = t;
        j = w;
    }
}

/* Keep the k best of c[0..n) in c[0..k) (any order): a min-heap of the
 * best seen so far, O(n log k). */
static void keep_top_k(struct cand *c, int n, int k)
{
    for (int i = k / 2 - 1; i >= 0; i--)
        sift_down(c, k, i);
    for (int i = k; i < n; i++) {
        if (!cand_before(&c[i], &c[0]))
            continue;
        c[0] = c[i];
        sift_down(c, k, 0);
    }
}

static float finite_or_ninf(float x) { return isfinite(x) ? x : -INFINITY; }

int32_t sampler_pick(const struct sampler_params *p, struct sampler_rng *r, const float *logits,
                     int n, struct sampler_scratch *sc)
{
    if (n > sc->n)
        n = sc->n;
    int32_t best = 0;
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        float x = finite_or_ninf(logits[i]);
        if (x > mx) {
            mx = x;
            best = i;
        }
    }
    if (p->temperature == 0 || p->top_k == 1 || mx == -INFINITY)
        return best;

    double inv_t = 1.0 / p->temperature;
    struct cand *c = sc->c;
    int m = 0;
    for (int i = 0; i < n; i++) {
        float x = finite_or_ninf(logits[i]);
        float q = (float)exp(((double)x - mx) * inv_t);
        if (q > 0)
            c[m++] = (struct cand){q, i};
    }
    /* best has q == 1 and is always in c. */
    int sorted = 0;
    if (p->top_k > 0 && p->top_k < m) {
        keep_top_k(c, m, p->top_k);
        m = p->top_k;
        qsort(c, (size_t)m, sizeof *c, cand_cmp);
        sorted = 1;
    }
    if (p->top_p < 1) {
        double z = 0;
        for (int i = 0; i < m; i++)
            z += c[i].p;
        if (!sorted) {
            /* Anything below (1 - top_p) / (m - 1) of the mass cannot be
             * in the nucleus: all of those together weigh less than
             * 1 - top_p. Dropping them first keeps the sort short. */
            double cut = m > 1 ? (1.0 - p->top_p) * z / (m - 1) : 0;
            int k = 0;
            for (int i = 0; i < m; i++)
                if (c[i].p >= cut)
                    c[k++] = c[i];
            m = k;
            qsort(c, (size_t)m, sizeof *c, cand_cmp);
            sorted = 1;
        }
        double acc = 0, target = p->top_p * z;
        int k = 0;
        while (k < m) {
            acc += c[k++].p;
            if (acc >= target)
                break;
        }
        m = k;
    }
    if (p->min_p > 0) {
        /* The most probable token has q == 1 before normalisation. */
        int k = 0;
        for (int i = 0; i < m; i++)
            if (c[i].p >= p->min_p)
                c[k++] = c[i];
        m = k;
    }
    double s = 0;
    for (int i = 0; i < m; i++)
        s += c[i].p;
    double u = sampler_uniform(r) * s, acc = 0;
    for (int i = 0; i < m; i++) {
        acc += c[i].p;
        if (u < acc)
            return c[i].id;
    }
    return m > 0 ? c[m - 1].id : best;
}
