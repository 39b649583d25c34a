/*
 * Engine parity against HF transformers (tests/fixtures/engine, made by
 * gen_fixtures.py with transformers 5.17 in float64) and internal
 * consistency: chunking, batched decode, both namings.
 *
 * Tolerances (relative to the largest reference magnitude of the row):
 *   logits vs reference          1e-4
 *   final conv/SSM state vs ref  1e-4
 *   chunked vs one pass vs token-by-token, batched vs single: 1e-5
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "alloc.h"
#include "forward.h"
#include "model.h"
#include "model_impl.h"
#include "safetensors.h"
#include "state.h"

#ifndef RECUR_MODELS
#define RECUR_MODELS "models"
#endif
#ifndef PRNG_MODELS
#define PRNG_MODELS "."
#endif

#define TOL_REF 1e-4
#define TOL_SELF 1e-5

struct ref {
    struct st_file *f;
    int T, V;
    int32_t *ids;
    float *logits; /* T x V */
};

static char err[1024];
static double worst_logit_err, worst_state_err;

static void fixture_dir(char *buf, size_t len, const char *name)
{
    /* The PRNG checkpoints are regenerated into the build tree by CTest;
     * their references stay in the source tree. */
    if (!strcmp(name, "m2_130m") || !strcmp(name, "m1_130m"))
        snprintf(buf, len, "%s/%s", PRNG_MODELS, name);
    else
        snprintf(buf, len, "%s/engine/%s", RECUR_FIXTURES, name);
}

static float *tensor_f32(struct st_file *f, const char *name, size_t *n)
{
    const struct st_tensor *t = st_find(f, name);
    assert_non_null(t);
    float *v = malloc(t->nelem * sizeof *v);
    assert_int_equal(st_to_f32(t, v), 0);
    if (n)
        *n = t->nelem;
    return v;
}

static void ref_load(const char *name, struct ref *r)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/engine/%s/reference.safetensors", RECUR_FIXTURES, name);
    assert_int_equal(st_open(path, &r->f, err, sizeof err), 0);
    const struct st_tensor *ids = st_find(r->f, "input_ids"), *lg = st_find(r->f, "logits");
    assert_non_null(ids);
    assert_non_null(lg);
    assert_int_equal(ids->dtype, ST_I32);
    r->T = (int)ids->shape[0];
    r->V = (int)lg->shape[1];
    r->ids = malloc((size_t)r->T * sizeof *r->ids);
    memcpy(r->ids, ids->data, (size_t)r->T * 4);
    r->logits = tensor_f32(r->f, "logits", NULL);
}

static void ref_free(struct ref *r)
{
    free(r->ids);
    free(r->logits);
    st_close(r->f);
}

static struct model *load_as(const char *name, int weights)
{
    char dir[1024];
    struct model *m = NULL;
    fixture_dir(dir, sizeof dir, name);
    int rc = model_load_as(dir, weights, &m, err, sizeof err);
    if (rc)
        fail_msg("model_load(%s): %s", dir, err);
    return m;
}

/* max |a - b| / max(max |ref|, floor) over n values */
static struct model *load(const char *name) { return load_as(name, WF_F32); }

static double rel_err(const float *a, const float *ref, size_t n, double floor)
{
    double num = 0, den = floor;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= num))
            num = d; /* NaN propagates */
        if (fabs(ref[i]) > den)
            den = fabs(ref[i]);
    }
    return num / den;
}

/* Run ids through a fresh state in chunks of the given sizes (0-terminated
 * list, cycled); returns T x V logits. */
static float *run_chunked(struct model *m, struct fwd *f, struct mstate *s, const int32_t *ids,
                          int T, const int *chunks)
{
    const struct model_config *c = model_config(m);
    float *hidden = malloc((size_t)T * c->d_model * sizeof(float));
    float *logits = malloc((size_t)T * c->n_vocab * sizeof(float));
    state_reset(s);
    int pos = 0, ci = 0;
    while (pos < T) {
        int len = chunks[ci] ? chunks[ci++] : (ci = 0, chunks[ci++]);
        if (len > T - pos)
            len = T - pos;
        struct fwd_seg seg = {.state = s, .tokens = ids + pos, .n = len,
                              .hidden = hidden + (size_t)pos * c->d_model};
        assert_int_equal(fwd_run(f, &seg, 1, err, sizeof err), 0);
        pos += len;
    }
    assert_int_equal(s->pos, T);
    fwd_logits(f, hidden, T, logits);
    free(hidden);
    return logits;
}

static void check_against_reference(const char *name)
{
    struct ref r;
    ref_load(name, &r);
    struct model *m = load(name);
    const struct model_config *c = model_config(m);
    assert_int_equal(c->n_vocab, r.V);
    struct fwd *f;
    struct mstate *s;
    assert_int_equal(fwd_create(m, 256, &f), 0);
    assert_int_equal(state_create(m, &s), 0);

    static const int one[] = {1 << 20, 0};
    float *lg = run_chunked(m, f, s, r.ids, r.T, one);
    double e = 0;
    for (int t = 0; t < r.T; t++) {
        double et = rel_err(lg + (size_t)t * r.V, r.logits + (size_t)t * r.V, (size_t)r.V, 1e-6);
        if (!(et <= TOL_REF))
            fail_msg("%s: logits at position %d differ by %.3g (relative) > %.0e", name, t, et,
                     TOL_REF);
        e = et > e ? et : e;
    }
    if (e > worst_logit_err)
        worst_logit_err = e;

    /* Final states: conv (d_conv-1, conv_dim) oldest first, SSM as stored. */
    for (int l = 0; l < c->n_layer; l++) {
        char nm[64];
        size_t n;
        snprintf(nm, sizeof nm, "conv.%d", l);
        float *rc_ = tensor_f32(r.f, nm, &n);
        assert_int_equal(n, s->conv_per_layer);
        double ec = rel_err(s->conv + l * s->conv_per_layer, rc_, n, 1e-6);
        snprintf(nm, sizeof nm, "ssm.%d", l);
        float *rs = tensor_f32(r.f, nm, &n);
        assert_int_equal(n, s->ssm_per_layer);
        double es = rel_err(s->ssm + l * s->ssm_per_layer, rs, n, 1e-6);
        if (!(ec <= TOL_REF) || !(es <= TOL_REF))
            fail_msg("%s layer %d: conv state err %.3g, ssm state err %.3g", name, l, ec, es);
        if (ec > worst_state_err)
            worst_state_err = ec;
        if (es > worst_state_err)
            worst_state_err = es;
        free(rc_);
        free(rs);
    }
    printf("  %-10s T=%d V=%d logits rel err %.2e  (fingerprint %016llx)\n", name, r.T, r.V, e,
           (unsigned long long)model_fingerprint(m));
    free(lg);
    state_free(s);
    fwd_free(f);
    model_free(m);
    ref_free(&r);
}

/* Chunk sizes do not change the result: one pass == random chunks ==
 * token by token. */
static void check_chunking(const char *name)
{
    struct ref r;
    ref_load(name, &r);
    struct model *m = load(name);
    struct fwd *f;
    struct mstate *s;
    assert_int_equal(fwd_create(m, 64, &f), 0);
    assert_int_equal(state_create(m, &s), 0);
    static const int one[] = {64, 0}, tok[] = {1, 0}, odd[] = {3, 1, 7, 2, 13, 5, 0};
    float *a = run_chunked(m, f, s, r.ids, r.T, one);
    float *b = run_chunked(m, f, s, r.ids, r.T, tok);
    float *c = run_chunked(m, f, s, r.ids, r.T, odd);
    size_t n = (size_t)r.T * r.V;
    double eb = rel_err(b, a, n, 1e-6), ec = rel_err(c, a, n, 1e-6);
    if (!(eb <= TOL_SELF) || !(ec <= TOL_SELF))
        fail_msg("%s: token-by-token err %.3g, odd chunks err %.3g", name, eb, ec);
    free(a), free(b), free(c);
    state_free(s);
    fwd_free(f);
    model_free(m);
    ref_free(&r);
}

/* B sessions at different positions, one token each in one batch, equal
 * the same steps taken one session at a time. */
static void check_batched_step(const char *name)
{
    struct ref r;
    ref_load(name, &r);
    struct model *m = load(name);
    const struct model_config *c = model_config(m);
    enum { B = 5 };
    struct fwd *f;
    assert_int_equal(fwd_create(m, 64, &f), 0);
    struct mstate *sa[B], *sb[B];
    struct fwd_seg segs[B];
    float *ha = malloc((size_t)B * c->d_model * sizeof(float));
    float *hb = malloc((size_t)B * c->d_model * sizeof(float));
    for (int i = 0; i < B; i++) {
        assert_int_equal(state_create(m, &sa[i]), 0);
        assert_int_equal(state_create(m, &sb[i]), 0);
        if (i > 0) /* session i has read i*3 tokens */
            assert_int_equal(fwd_prefill(f, sa[i], r.ids, (size_t)i * 3, err, sizeof err), 0);
        assert_int_equal(state_copy(sb[i], sa[i]), 0);
    }
    for (int step = 0; step < 4; step++) {
        for (int i = 0; i < B; i++) {
            segs[i] = (struct fwd_seg){sa[i], &r.ids[20 + step + i], 1, ha + (size_t)i * c->d_model};
            struct fwd_seg one = {sb[i], &r.ids[20 + step + i], 1, hb + (size_t)i * c->d_model};
            assert_int_equal(fwd_run(f, &one, 1, err, sizeof err), 0);
        }
        assert_int_equal(fwd_run(f, segs, B, err, sizeof err), 0);
        double e = rel_err(ha, hb, (size_t)B * c->d_model, 1e-6);
        if (!(e <= TOL_SELF))
            fail_msg("%s: batched step %d differs from single steps by %.3g", name, step, e);
    }
    for (int i = 0; i < B; i++) {
        double e = rel_err(sa[i]->ssm, sb[i]->ssm, sa[i]->ssm_per_layer * c->n_layer, 1e-6);
        assert_true(e <= TOL_SELF);
        assert_int_equal(sa[i]->pos, sb[i]->pos);
        state_free(sa[i]);
        state_free(sb[i]);
    }
    free(ha), free(hb);
    fwd_free(f);
    model_free(m);
    ref_free(&r);
}

#define FIXTURES(X) X(m2_small) X(m2_groups) X(m2_odd) X(m1_small) X(m1_odd) X(m2_130m) X(m1_130m)

#define DEF(n)                                                                                   \
    static void ref_##n(void **u) { check_against_reference(#n); }                               \
    static void chunk_##n(void **u) { check_chunking(#n); }                                      \
    static void batch_##n(void **u) { check_batched_step(#n); }
FIXTURES(DEF)

/* The same weights in both namings load to identical models. */
static void check_namings(const char *hf, const char *ss)
{
    struct model *a = load(hf), *b = load(ss);
    const struct model_config *ca = model_config(a), *cb = model_config(b);
    assert_int_equal(ca->naming, NAMING_HF);
    assert_int_equal(cb->naming, NAMING_STATE_SPACES);
    assert_int_equal(ca->n_vocab, cb->n_vocab);
    assert_int_equal(cb->vocab_size, 90); /* padded to 96 rows */
    assert_true(model_fingerprint(a) == model_fingerprint(b));
    struct ref r;
    ref_load(hf, &r);
    struct fwd *fa, *fb;
    struct mstate *sa, *sb;
    static const int one[] = {64, 0};
    assert_int_equal(fwd_create(a, 64, &fa), 0);
    assert_int_equal(fwd_create(b, 64, &fb), 0);
    assert_int_equal(state_create(a, &sa), 0);
    assert_int_equal(state_create(b, &sb), 0);
    float *la = run_chunked(a, fa, sa, r.ids, r.T, one);
    float *lb = run_chunked(b, fb, sb, r.ids, r.T, one);
    assert_memory_equal(la, lb, (size_t)r.T * r.V * sizeof(float));
    free(la), free(lb);
    state_free(sa), state_free(sb);
    fwd_free(fa), fwd_free(fb);
    model_free(a), model_free(b);
    ref_free(&r);
}
static void namings_m2(void **u) { check_namings("m2_small", "m2_small_ss"); }
static void namings_m1(void **u) { check_namings("m1_small", "m1_small_ss"); }

/* A session's numbers do not depend on the batch: its hidden rows and final
 * state are bit-identical whether it runs alone in one chunk, or in odd
 * chunks mixed with other sessions' prefill chunks and decode tokens at any
 * position of the batch. (This is what makes "same seed, same output" hold
 * under continuous batching.) */
static void check_batch_invariance(const char *name, int weights)
{
    struct ref r;
    ref_load(name, &r);
    struct model *m = load_as(name, weights);
    assert_int_equal(model_weights(m), weights);
    const struct model_config *c = model_config(m);
    const int D = c->d_model, T = r.T;
    struct fwd *f;
    assert_int_equal(fwd_create(m, 96, &f), 0);
    struct mstate *a, *alone, *o1, *o2;
    assert_int_equal(state_create(m, &a), 0);
    assert_int_equal(state_create(m, &alone), 0);
    assert_int_equal(state_create(m, &o1), 0);
    assert_int_equal(state_create(m, &o2), 0);
    float *h_alone = malloc((size_t)T * D * sizeof(float)), *h = malloc((size_t)T * D * sizeof(float));
    float *scratch = malloc((size_t)96 * D * sizeof(float));
    struct fwd_seg one = {alone, r.ids, T, h_alone};
    assert_int_equal(fwd_run(f, &one, 1, err, sizeof err), 0);

    static const int chunks[] = {7, 1, 13, 2, 1, 9, 31, 5, 1, 64};
    int pos = 0, round = 0;
    while (pos < T) {
        int len = chunks[round % 10];
        if (len > T - pos)
            len = T - pos;
        /* others: a prefill chunk of varying size and a decode token */
        struct fwd_seg segs[3];
        int other = 1 + (round * 5) % 17, ns = 0, at = round % 3;
        struct fwd_seg mine = {a, r.ids + pos, len, h + (size_t)pos * D};
        struct fwd_seg s1 = {o1, r.ids + (round % 20), other, scratch};
        struct fwd_seg s2 = {o2, r.ids + 3 + round % 11, 1, scratch + (size_t)other * D};
        for (int i = 0; i < 3; i++)
            segs[ns++] = i == at ? mine : i == (at + 1) % 3 ? s1 : s2;
        assert_int_equal(fwd_run(f, segs, ns, err, sizeof err), 0);
        pos += len;
        round++;
    }
    assert_memory_equal(h, h_alone, (size_t)T * D * sizeof(float));
    assert_memory_equal(a->block, alone->block, state_bytes(m));
    free(h), free(h_alone), free(scratch);
    state_free(a), state_free(alone), state_free(o1), state_free(o2);
    fwd_free(f);
    model_free(m);
    ref_free(&r);
}
static void invariance_m2(void **u) { check_batch_invariance("m2_130m", WF_F32); }
static void invariance_m2_groups(void **u) { check_batch_invariance("m2_groups", WF_F32); }
static void invariance_m1(void **u) { check_batch_invariance("m1_odd", WF_F32); }
/* ... in every weight format (few-row and widened kernels alike) */
static void invariance_bf16(void **u)
{
    check_batch_invariance("m2_130m", WF_BF16);
    check_batch_invariance("m1_odd", WF_BF16);
}
static void invariance_int8(void **u)
{
    check_batch_invariance("m2_130m", WF_Q8);
    check_batch_invariance("m1_odd", WF_Q8);
}

/* A model dir shipped as shards loads like any other (m2_small: 5 files
 * and an index, no model.safetensors). */
static void sharded_loads(void **u)
{
    char path[512];
    snprintf(path, sizeof path, "%s/engine/m2_small/model.safetensors", RECUR_FIXTURES);
    assert_null(fopen(path, "rb"));
    struct model *m = load("m2_small");
    assert_int_equal(model_config(m)->n_layer, 2);
    model_free(m);
}

/* The shipped checkpoints (models/recur-*, bf16) against transformers'
 * Mamba2ForCausalLM on the same weights (tests/fixtures/parity, made by
 * train/parity.py): full next-token distributions at the listed positions. */
static void check_shipped(const char *name)
{
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/%s", RECUR_MODELS, name);
    snprintf(path, sizeof path, "%s/parity/%s/reference.safetensors", RECUR_FIXTURES, name);
    struct model *m = NULL;
    struct st_file *r;
    if (model_load(dir, &m, err, sizeof err))
        fail_msg("%s: %s", dir, err);
    assert_int_equal(st_open(path, &r, err, sizeof err), 0);
    const struct st_tensor *ids = st_find(r, "input_ids"), *pos = st_find(r, "positions");
    assert_non_null(ids);
    assert_non_null(pos);
    int T = (int)ids->shape[0], np = (int)pos->shape[0], V = model_config(m)->n_vocab;
    int32_t *tok = malloc((size_t)T * 4), *p = malloc((size_t)np * 4);
    memcpy(tok, ids->data, (size_t)T * 4);
    memcpy(p, pos->data, (size_t)np * 4);
    float *ref = tensor_f32(r, "logits", NULL);
    struct fwd *f;
    struct mstate *s;
    assert_int_equal(fwd_create(m, 128, &f), 0);
    assert_int_equal(state_create(m, &s), 0);
    float *lg = malloc((size_t)V * sizeof(float));
    double worst = 0;
    int done = 0;
    for (int i = 0; i < np; i++) {
        /* read up to and including ids[p[i]], then compare the next-token logits */
        assert_true(p[i] >= done - 1 && p[i] < T);
        assert_int_equal(fwd_prefill(f, s, tok + done, (size_t)(p[i] + 1 - done), err, sizeof err), 0);
        done = p[i] + 1;
        fwd_logits(f, s->last, 1, lg);
        double e = rel_err(lg, ref + (size_t)i * V, (size_t)V, 1e-6);
        if (!(e <= TOL_REF))
            fail_msg("%s: logits after position %d differ by %.3g", name, p[i], e);
        worst = e > worst ? e : worst;
    }
    printf("  %-10s %d positions, logits rel err %.2e\n", name, np, worst);
    free(tok), free(p), free(ref), free(lg);
    state_free(s);
    fwd_free(f);
    st_close(r);
    model_free(m);
}
static void shipped_sp(void **u) { check_shipped("recur-sp"); }
static void shipped_base(void **u) { check_shipped("recur-base"); }

/* Weight formats on a shipped (bf16) checkpoint, over the parity fixture's
 * tokens: bf16 and auto are bit-identical to fp32 and keep its fingerprint;
 * int8 has another fingerprint and stays within INT8_NEXT_TOL of fp32's
 * next-token log-probs and INT8_ANY_TOL over the whole vocabulary (limits
 * about twice what was measured: a guard against a broken quantizer, which
 * gives errors of several nats). */
#define INT8_NEXT_TOL 0.25 /* measured 0.075 (recur-sp), 0.128 (recur-base) */
#define INT8_ANY_TOL 0.5   /* measured 0.267, 0.252 */
static void check_formats_shipped(const char *name)
{
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/%s", RECUR_MODELS, name);
    snprintf(path, sizeof path, "%s/parity/%s/reference.safetensors", RECUR_FIXTURES, name);
    struct st_file *r;
    assert_int_equal(st_open(path, &r, err, sizeof err), 0);
    const struct st_tensor *ids = st_find(r, "input_ids");
    assert_non_null(ids);
    int T = (int)ids->shape[0];
    int32_t *tok = malloc((size_t)T * 4);
    memcpy(tok, ids->data, (size_t)T * 4);
    static const int fmts[] = {WF_F32, WF_BF16, MODEL_WEIGHTS_AUTO, WF_Q8};
    float *lp[4];
    uint64_t fp[4];
    int V = 0;
    for (int i = 0; i < 4; i++) {
        struct model *m = NULL;
        if (model_load_as(dir, fmts[i], &m, err, sizeof err))
            fail_msg("%s: %s", dir, err);
        assert_int_equal(model_weights(m), fmts[i] == MODEL_WEIGHTS_AUTO ? WF_BF16 : fmts[i]);
        fp[i] = model_fingerprint(m);
        V = model_config(m)->n_vocab;
        struct fwd *f;
        struct mstate *s;
        assert_int_equal(fwd_create(m, 64, &f), 0);
        assert_int_equal(state_create(m, &s), 0);
        static const int chunks[] = {64, 0};
        lp[i] = run_chunked(m, f, s, tok, T, chunks);
        for (int t = 0; t < T; t++) { /* logits -> log-probs */
            float *row = lp[i] + (size_t)t * V, mx = row[0];
            for (int v = 1; v < V; v++)
                mx = row[v] > mx ? row[v] : mx;
            double z = 0;
            for (int v = 0; v < V; v++)
                z += exp((double)row[v] - mx);
            for (int v = 0; v < V; v++)
                row[v] = (float)(row[v] - mx - log(z));
        }
        state_free(s);
        fwd_free(f);
        model_free(m);
    }
    assert_memory_equal(lp[0], lp[1], (size_t)T * V * sizeof(float));
    assert_memory_equal(lp[0], lp[2], (size_t)T * V * sizeof(float));
    assert_true(fp[0] == fp[1] && fp[0] == fp[2]);
    assert_true(fp[3] != fp[0]);
    double worst = 0, worst_next = 0;
    for (size_t i = 0; i < (size_t)T * V; i++) {
        double d = fabs((double)lp[3][i] - lp[0][i]);
        worst = d > worst || d != d ? d : worst;
    }
    for (int t = 0; t + 1 < T; t++) { /* the log-prob a score reports: the next token's */
        size_t i = (size_t)t * V + (size_t)tok[t + 1];
        double d = fabs((double)lp[3][i] - lp[0][i]);
        worst_next = d > worst_next || d != d ? d : worst_next;
    }
    printf("  %s over %d tokens: bf16 and auto bit-identical to fp32; int8 max "
           "|dlogprob| %.4f (next token), %.4f (any token)\n",
           name, T, worst_next, worst);
    if (!(worst_next <= INT8_NEXT_TOL) || !(worst <= INT8_ANY_TOL))
        fail_msg("int8 log-probs differ from fp32 by %.4f (next token, limit %.2f), %.4f (any "
                 "token, limit %.2f)",
                 worst_next, INT8_NEXT_TOL, worst, INT8_ANY_TOL);
    for (int i = 0; i < 4; i++)
        free(lp[i]);
    free(tok);
    st_close(r);
}
static void formats_shipped(void **u)
{
    check_formats_shipped("recur-sp");
    check_formats_shipped("recur-base");
}

static int report(void **u)
{
    printf("worst logits error vs transformers: %.2e; worst state error: %.2e\n",
           worst_logit_err, worst_state_err);
    return 0;
}

int main(void)
{
#define REG(n) cmocka_unit_test(ref_##n), cmocka_unit_test(chunk_##n), cmocka_unit_test(batch_##n),
    const struct CMUnitTest tests[] = {
        FIXTURES(REG) cmocka_unit_test(namings_m2),
        cmocka_unit_test(namings_m1),
        cmocka_unit_test(sharded_loads),
        cmocka_unit_test(invariance_m2),
        cmocka_unit_test(invariance_m2_groups),
        cmocka_unit_test(invariance_m1),
        cmocka_unit_test(invariance_bf16),
        cmocka_unit_test(invariance_int8),
        cmocka_unit_test(formats_shipped),
        cmocka_unit_test(shipped_sp),
        cmocka_unit_test(shipped_base),
    };
    return cmocka_run_group_tests(tests, NULL, report);
}
