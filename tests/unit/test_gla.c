/*
 * GLA (fla's GLAForCausalLM): the config reader, the engine's own
 * consistency on random weights, and parity against fla's code on the
 * checkpoints of tests/fixtures/gla (made by gen_fla_fixtures.py with fla's
 * fused_recurrent kernel in fp32; see its README).
 *
 * Tolerances:
 *   next-token log-probs vs fla            max |d| <= 1e-3 (the bar)
 *   final recurrent / conv state vs fla    1e-3 of the largest magnitude
 *   one pass vs token by token vs odd chunks: 1e-5 relative (the chunkwise
 *     form and the one-token step round differently: GLA is not
 *     bit-invariant to chunk sizes, unlike Mamba here)
 *   a session alone vs in a mixed batch, same chunks: bit-identical
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
#include <dirent.h>
#include <jansson.h>

#include "config.h"
#include "errors.h"
#include "forward.h"
#include "model.h"
#include "safetensors.h"
#include "state.h"

#ifndef GLA_DRY_DIR
#define GLA_DRY_DIR "."
#endif

static char err[1024];

static int parse(const char *json, struct model_config *c)
{
    err[0] = 0;
    return config_parse(json, strlen(json), "config.json", c, err, sizeof err);
}

#define BASE "\"model_type\": \"gla\", \"hidden_size\": 64, \"num_hidden_layers\": 2, \"vocab_size\": 100"

/* fla's defaults: 4 heads, expand_k 0.5, expand_v 1, hidden_ratio 4 (MLP
 * 2/3 x 4 x 64 = 170 -> 256), low rank 16, normaliser 16, eps 1e-6, no
 * short conv, untied. */
static void config_defaults(void **u)
{
    struct model_config c;
    assert_int_equal(parse("{" BASE "}", &c), 0);
    assert_int_equal(c.arch, MODEL_GLA);
    assert_int_equal(c.naming, NAMING_FLA);
    assert_int_equal(c.nheads, 4);
    assert_int_equal(c.gla_kv_heads, 4);
    assert_int_equal(c.gla_key_dim, 32);
    assert_int_equal(c.d_inner, 64);
    assert_int_equal(c.gla_dk, 8);
    assert_int_equal(c.gla_dv, 16);
    assert_int_equal(c.gla_ff, 256);
    assert_int_equal(c.gla_low_rank, 16);
    assert_true(c.gla_gate_norm == 16.0f);
    assert_true(isinf(c.gla_clamp_min) && c.gla_clamp_min < 0);
    assert_true(c.norm_eps == 1e-6f);
    assert_int_equal(c.tie_embeddings, 0);
    assert_int_equal(c.gla_short_conv, 0);
    assert_int_equal(c.d_conv, 1);
    assert_int_equal(c.conv_dim, 0);
    assert_int_equal(c.gla_out_gate, 1);
    assert_int_equal(c.n_vocab, 100);
    /* q k v g gk low: 32 + 32 + 64 + 64 + 32 + 16 */
    assert_int_equal(c.d_in_proj, 240);

    assert_int_equal(parse("{" BASE ", \"num_heads\": 2, \"num_kv_heads\": 1, \"expand_k\": 1,"
                           "\"use_short_conv\": true, \"conv_size\": 3, \"intermediate_size\": 96,"
                           "\"clamp_min\": -2.5, \"gate_logit_normalizer\": 8, \"use_output_gate\": false,"
                           "\"tie_word_embeddings\": true, \"norm_eps\": 1e-5}",
                           &c),
                     0);
    assert_int_equal(c.gla_key_dim, 64);
    assert_int_equal(c.gla_dk, 32);
    assert_int_equal(c.gla_dv, 32);
    assert_int_equal(c.gla_ff, 96);
    assert_int_equal(c.d_conv, 3);
    /* q 64 + k 32 + v 32 through the conv */
    assert_int_equal(c.conv_dim, 128);
    assert_true(c.gla_clamp_min == -2.5f);
    assert_true(c.gla_gate_norm == 8.0f);
    assert_int_equal(c.tie_embeddings, 1);
    /* no g: q 64 + k 32 + v 32 + gk 32 + low 16 */
    assert_int_equal(c.d_in_proj, 176);
    /* architectures alone names it too */
    assert_int_equal(parse("{\"architectures\": [\"GLAForCausalLM\"], \"hidden_size\": 64,"
                           "\"num_hidden_layers\": 1, \"vocab_size\": 10}",
                           &c),
                     0);
    assert_int_equal(c.arch, MODEL_GLA);
}

/* What recurd does not implement is refused, naming the key. */
static void config_refusals(void **u)
{
    static const struct {
        const char *extra, *word;
        int rc;
    } cases[] = {
        {"\"feature_map\": \"relu\"", "feature_map", RC_EUNSUPPORTED},
        {"\"use_gv\": true", "use_gv", RC_EUNSUPPORTED},
        {"\"use_gk\": false", "use_gk", RC_EUNSUPPORTED},
        {"\"attn\": {\"layers\": [1], \"num_heads\": 4}", "attn", RC_EUNSUPPORTED},
        {"\"attnres_block_size\": 4", "attnres_block_size", RC_EUNSUPPORTED},
        {"\"hidden_act\": \"gelu\"", "hidden_act", RC_EUNSUPPORTED},
        {"\"num_heads\": 3", "num_heads", RC_EINVAL},
        {"\"num_kv_heads\": 3", "num_kv_heads", RC_EINVAL},
        {"\"expand_k\": \"half\"", "expand_k", RC_EFORMAT},
        {"\"clamp_min\": 0.5", "clamp_min", RC_EFORMAT},
        {"\"conv_size\": 0", "conv_size", RC_EFORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char json[512];
        struct model_config c;
        snprintf(json, sizeof json, "{" BASE ", %s}", cases[i].extra);
        int rc = parse(json, &c);
        if (rc != cases[i].rc || !strstr(err, cases[i].word))
            fail_msg("%s: rc %d (want %d), err '%s'", cases[i].extra, rc, cases[i].rc, err);
    }
}

static struct model *random_gla(const char *extra, int weights)
{
    char json[512];
    struct model_config c;
    snprintf(json, sizeof json,
             "{\"model_type\": \"gla\", \"num_hidden_layers\": 2, \"vocab_size\": 100%s%s%s}",
             strstr(extra, "hidden_size") ? "" : ", \"hidden_size\": 64", extra[0] ? ", " : "",
             extra);
    if (parse(json, &c))
        fail_msg("%s", err);
    struct model *m = NULL;
    if (model_create_random_as(&c, 7, weights, &m, err, sizeof err))
        fail_msg("%s", err);
    return m;
}

static double rel_err(const float *a, const float *ref, size_t n)
{
    double num = 0, den = 1e-6;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= num))
            num = d;
        if (fabs(ref[i]) > den)
            den = fabs(ref[i]);
    }
    return num / den;
}

static void ids_for(int32_t *ids, int T, int V)
{
    uint32_t x = 12345;
    for (int t = 0; t < T; t++) {
        x = x * 1664525u + 1013904223u;
        ids[t] = (int32_t)((x >> 8) % (uint32_t)V);
    }
}

/* hidden rows (T x d_model) of ids read in chunks (0-terminated, cycled). */
static void run_chunks(struct fwd *f, struct mstate *s, const int32_t *ids, int T, const int *ch,
                       float *hidden, int D)
{
    state_reset(s);
    int pos = 0, ci = 0;
    while (pos < T) {
        int len = ch[ci] ? ch[ci++] : (ci = 0, ch[ci++]);
        len = len > T - pos ? T - pos : len;
        struct fwd_seg seg = {s, ids + pos, len, hidden + (size_t)pos * D};
        if (fwd_run(f, &seg, 1, err, sizeof err))
            fail_msg("%s", err);
        pos += len;
    }
}

static void check_chunking(const char *extra)
{
    struct model *m = random_gla(extra, 0);
    const struct model_config *c = model_config(m);
    enum { T = 300 };
    const int D = c->d_model;
    int32_t ids[T];
    ids_for(ids, T, c->vocab_size);
    struct fwd *f;
    struct mstate *s;
    assert_int_equal(fwd_create(m, 256, &f), 0);
    assert_int_equal(state_create(m, &s), 0);
    float *a = malloc((size_t)T * D * 4), *b = malloc((size_t)T * D * 4),
          *d = malloc((size_t)T * D * 4);
    float *sa = malloc(state_bytes(m)), *sb = malloc(state_bytes(m));
    static const int one[] = {256, 0}, tok[] = {1, 0}, odd[] = {3, 1, 70, 2, 13, 65, 0};
    run_chunks(f, s, ids, T, one, a, D);
    memcpy(sa, s->ssm, s->ssm_per_layer * c->n_layer * 4);
    run_chunks(f, s, ids, T, tok, b, D);
    memcpy(sb, s->ssm, s->ssm_per_layer * c->n_layer * 4);
    double eb = rel_err(b, a, (size_t)T * D), es = rel_err(sb, sa, s->ssm_per_layer * c->n_layer);
    run_chunks(f, s, ids, T, odd, d, D);
    double ed = rel_err(d, a, (size_t)T * D);
    printf("  {%s}: token by token %.2e (state %.2e), odd chunks %.2e\n", extra, eb, es, ed);
    if (!(eb <= 1e-5) || !(ed <= 1e-5) || !(es <= 1e-5))
        fail_msg("chunking changed the result: %.3g %.3g %.3g", eb, ed, es);
    free(a), free(b), free(d), free(sa), free(sb);
    state_free(s);
    fwd_free(f);
    model_free(m);
}

static void chunking_conv_gqa(void **u)
{
    check_chunking("\"use_short_conv\": true, \"num_kv_heads\": 2, \"clamp_min\": -0.05");
}
static void chunking_plain(void **u) { check_chunking(""); }
/* dk 18, dv 36: the products' 16-column and single-column tails */
static void chunking_odd(void **u)
{
    check_chunking("\"hidden_size\": 72, \"num_heads\": 2, \"use_short_conv\": true,"
                   "\"conv_size\": 3");
}
static void chunking_no_gate(void **u)
{
    check_chunking("\"use_output_gate\": false, \"num_heads\": 1, \"expand_k\": 1");
}

/* A session's rows and state do not depend on what else is in the batch
 * (same chunks: bit-identical). */
static void batch_invariance(void **u)
{
    for (int w = 0; w < 3; w++) {
        struct model *m = random_gla("\"use_short_conv\": true, \"num_kv_heads\": 2", w);
        const struct model_config *c = model_config(m);
        const int D = c->d_model;
        enum { T = 200 };
        int32_t ids[T];
        ids_for(ids, T, c->vocab_size);
        struct fwd *f;
        assert_int_equal(fwd_create(m, 128, &f), 0);
        struct mstate *a, *alone, *o1, *o2;
        assert_int_equal(state_create(m, &a), 0);
        assert_int_equal(state_create(m, &alone), 0);
        assert_int_equal(state_create(m, &o1), 0);
        assert_int_equal(state_create(m, &o2), 0);
        float *h = malloc((size_t)T * D * 4), *h1 = malloc((size_t)T * D * 4);
        float *scratch = malloc((size_t)128 * D * 4);
        static const int chunks[] = {7, 1, 13, 2, 1, 9, 31, 5, 1, 64};
        for (int mixed = 0; mixed < 2; mixed++) {
            int pos = 0, round = 0;
            struct mstate *me = mixed ? a : alone;
            float *hh = mixed ? h : h1;
            while (pos < T) {
                int len = chunks[round % 10];
                len = len > T - pos ? T - pos : len;
                struct fwd_seg segs[3];
                int other = 1 + (round * 5) % 17, at = round % 3, ns = 0;
                struct fwd_seg mine = {me, ids + pos, len, hh + (size_t)pos * D};
                struct fwd_seg s1 = {o1, ids + (round % 20), other, scratch};
                struct fwd_seg s2 = {o2, ids + 3 + round % 11, 1, scratch + (size_t)other * D};
                if (!mixed) {
                    segs[ns++] = mine;
                } else {
                    for (int i = 0; i < 3; i++)
                        segs[ns++] = i == at ? mine : i == (at + 1) % 3 ? s1 : s2;
                }
                assert_int_equal(fwd_run(f, segs, ns, err, sizeof err), 0);
                pos += len;
                round++;
            }
        }
        assert_memory_equal(h, h1, (size_t)T * D * 4);
        assert_memory_equal(a->block, alone->block, state_bytes(m));
        free(h), free(h1), free(scratch);
        state_free(a), state_free(alone), state_free(o1), state_free(o2);
        fwd_free(f);
        model_free(m);
    }
}

/* A state serialised mid-stream and loaded elsewhere continues exactly;
 * a Mamba model refuses it and vice versa; the fingerprint knows GLA. */
static void state_roundtrip(void **u)
{
    struct model *m = random_gla("\"use_short_conv\": true", 0);
    const struct model_config *c = model_config(m);
    enum { T = 90 };
    int32_t ids[T];
    ids_for(ids, T, c->vocab_size);
    struct fwd *f;
    assert_int_equal(fwd_create(m, 64, &f), 0);
    struct mstate *s, *t;
    assert_int_equal(state_create(m, &s), 0);
    assert_int_equal(state_create(m, &t), 0);
    assert_int_equal(fwd_prefill(f, s, ids, 50, err, sizeof err), 0);
    size_t n = state_serialized_bytes(m);
    unsigned char *buf = malloc(n);
    assert_int_equal(state_serialize(s, buf, n), 0);
    assert_int_equal(state_deserialize(t, buf, n, err, sizeof err), 0);
    assert_int_equal(fwd_prefill(f, s, ids + 50, T - 50, err, sizeof err), 0);
    assert_int_equal(fwd_prefill(f, t, ids + 50, T - 50, err, sizeof err), 0);
    assert_memory_equal(s->block, t->block, state_bytes(m));

    struct model_config mc;
    assert_int_equal(model_config_named("mamba2-130m", &mc), 0);
    mc.n_layer = 2;
    mc.d_model = 64;
    mc.d_inner = 128;
    mc.vocab_size = mc.n_vocab = 100;
    struct model *mm = NULL;
    assert_int_equal(model_create_random(&mc, 1, &mm, err, sizeof err), 0);
    struct mstate *ms;
    assert_int_equal(state_create(mm, &ms), 0);
    assert_int_not_equal(state_deserialize(ms, buf, n, err, sizeof err), 0);
    size_t n2 = state_serialized_bytes(mm);
    unsigned char *buf2 = malloc(n2);
    assert_int_equal(state_serialize(ms, buf2, n2), 0);
    assert_int_not_equal(state_deserialize(t, buf2, n2, err, sizeof err), 0);
    assert_true(model_fingerprint(mm) != model_fingerprint(m));
    /* another GLA config with the same tensors' values in order: another identity */
    struct model *m2 = random_gla("\"use_short_conv\": true, \"gate_logit_normalizer\": 8", 0);
    assert_true(model_fingerprint(m2) != model_fingerprint(m));
    model_free(m2);
    free(buf), free(buf2);
    state_free(ms);
    model_free(mm);
    state_free(s), state_free(t);
    fwd_free(f);
    model_free(m);
}

/* Memory is constant: the state is num_kv_heads x dk x dv per layer (plus
 * conv windows and the last row), whatever has been read. */
static void state_size(void **u)
{
    struct model *m = random_gla("\"use_short_conv\": true, \"num_kv_heads\": 2", 0);
    const struct model_config *c = model_config(m);
    /* 2 layers x (2 x 8 x 16 state + 3 x (32 + 16 + 32) conv) + 64 last */
    size_t want = (size_t)2 * (2 * 8 * 16 + 3 * 80) + 64;
    assert_int_equal(c->conv_dim, 80);
    assert_int_equal(state_bytes(m), want * 4);
    model_free(m);
}

/* ---- reference fixtures: tests/fixtures/gla (fla's own fused_recurrent,
 * made on the GPU machine) and GLA_DRY_DIR (gen_fla_fixtures.py --dry-run at
 * test time: the generator's fp64 step-by-step recurrence of fla's formulas,
 * numpy; no fla). Layouts: tests/fixtures/gla/README.md. */

static float *ref_tensor(struct st_file *f, const char *name, size_t *n)
{
    const struct st_tensor *t = st_find(f, name);
    if (!t)
        return NULL;
    float *v = malloc(t->nelem * sizeof *v);
    assert_int_equal(st_to_f32(t, v), 0);
    if (n)
        *n = t->nelem;
    return v;
}

/* max |log_softmax(a) - log_softmax(b)| over a row of V */
static double row_logprob_diff(const float *a, const float *b, int V)
{
    double ma = -1e300, mb = -1e300, sa = 0, sb = 0, worst = 0;
    for (int i = 0; i < V; i++) {
        ma = a[i] > ma ? a[i] : ma;
        mb = b[i] > mb ? b[i] : mb;
    }
    for (int i = 0; i < V; i++) {
        sa += exp(a[i] - ma);
        sb += exp(b[i] - mb);
    }
    double la = ma + log(sa), lb = mb + log(sb);
    for (int i = 0; i < V; i++) {
        double d = fabs((a[i] - la) - (b[i] - lb));
        worst = d > worst || d != d ? d : worst;
    }
    return worst;
}

/* Our state of layer l against fla's: recurrent_state [1, H, dv, dk] (query
 * heads of a group hold the same S), conv_state_{q,k,v} [1, D, W] (the last W
 * pre-conv inputs, newest last; ours keeps the last W-1, oldest first). */
static double state_err(const struct model_config *c, const struct mstate *s, int l,
                        struct st_file *f, const char *prefix)
{
    char nm[128];
    size_t n;
    const int H = c->nheads, G = H / c->gla_kv_heads, dk = c->gla_dk, dv = c->gla_dv;
    snprintf(nm, sizeof nm, "%s.layers.%d.recurrent_state", prefix, l);
    float *r = ref_tensor(f, nm, &n);
    assert_non_null(r);
    assert_int_equal(n, (size_t)H * dv * dk);
    double num = 0, den = 1e-6;
    const float *S = s->ssm + (size_t)l * s->ssm_per_layer;
    for (int h = 0; h < H; h++)
        for (int v = 0; v < dv; v++)
            for (int k = 0; k < dk; k++) {
                double ref = r[((size_t)h * dv + v) * dk + k];
                double got = S[((size_t)(h / G) * dk + k) * dv + v];
                num = fabs(got - ref) > num ? fabs(got - ref) : num;
                den = fabs(ref) > den ? fabs(ref) : den;
            }
    free(r);
    double e = num / den;
    if (!c->gla_short_conv)
        return e;
    const int K = c->d_conv, width[3] = {c->gla_key_dim, c->gla_key_dim / G, c->d_inner / G};
    static const char *const part[3] = {"q", "k", "v"};
    int off = 0;
    for (int p = 0; p < 3; p++) {
        snprintf(nm, sizeof nm, "%s.layers.%d.conv_state_%s", prefix, l, part[p]);
        float *cr = ref_tensor(f, nm, &n);
        assert_non_null(cr);
        assert_int_equal(n, (size_t)width[p] * K);
        double cn = 0, cd = 1e-6;
        for (int ch = 0; ch < width[p]; ch++)
            for (int row = 0; row < K - 1; row++) {
                double ref = cr[(size_t)ch * K + row + 1];
                double got = s->conv[(size_t)l * s->conv_per_layer + (size_t)row * c->conv_dim +
                                     off + ch];
                cn = fabs(got - ref) > cn ? fabs(got - ref) : cn;
                cd = fabs(ref) > cd ? fabs(ref) : cd;
            }
        free(cr);
        off += width[p];
        e = cn / cd > e ? cn / cd : e;
    }
    return e;
}

static int checked_fixtures;

/* One fixture: all T tokens in one pass, in odd chunks, and token by token
 * after the split point; log-probs at every position within tol_lp of the
 * reference's, final and split states within 1e-3 of its largest value. */
static void check_fixture(const char *dir, double tol_lp)
{
    char path[2048];
    struct model *m = NULL;
    if (model_load(dir, &m, err, sizeof err))
        fail_msg("%s: %s", dir, err);
    const struct model_config *c = model_config(m);
    struct st_file *f;
    snprintf(path, sizeof path, "%.1900s/reference.safetensors", dir);
    assert_int_equal(st_open(path, &f, err, sizeof err), 0);
    const struct st_tensor *ti = st_find(f, "input_ids");
    assert_non_null(ti);
    const int T = (int)ti->shape[0], V = c->n_vocab, D = c->d_model;
    int32_t *ids = malloc((size_t)T * 4);
    memcpy(ids, ti->data, (size_t)T * 4);
    size_t nl;
    float *ref = ref_tensor(f, "logits", &nl);
    assert_int_equal(nl, (size_t)T * V);
    /* the split point: where the reference's split states were taken */
    snprintf(path, sizeof path, "%.1900s/reference.json", dir);
    json_error_t je;
    json_t *rj = json_load_file(path, 0, &je);
    if (!rj)
        fail_msg("%s: %s", path, je.text);
    const json_t *sj = json_object_get(rj, "split");
    assert_true(json_is_integer(sj));
    const int split = (int)json_integer_value(sj);
    json_decref(rj);
    assert_true(split > 0 && split < T);

    struct fwd *fw;
    struct mstate *s;
    assert_int_equal(fwd_create(m, 512, &fw), 0);
    assert_int_equal(state_create(m, &s), 0);
    float *hid = malloc((size_t)T * D * 4), *lg = malloc((size_t)T * V * 4);
    static const int one[] = {512, 0}, odd[] = {7, 1, 64, 3, 100, 0};
    const int *plans[2] = {one, odd};
    double worst = 0, wstate = 0;
    for (int p = 0; p < 2; p++) {
        run_chunks(fw, s, ids, T, plans[p], hid, D);
        fwd_logits(fw, hid, T, lg);
        for (int t = 0; t < T; t++) {
            double d = row_logprob_diff(lg + (size_t)t * V, ref + (size_t)t * V, V);
            if (!(d <= tol_lp))
                fail_msg("%s: log-probs after token %d differ by %.3g > %.0e", dir, t, d, tol_lp);
            worst = d > worst ? d : worst;
        }
        for (int l = 0; l < c->n_layer; l++) {
            double e = state_err(c, s, l, f, "final");
            if (!(e <= 1e-3))
                fail_msg("%s: final state of layer %d off by %.3g (relative)", dir, l, e);
            wstate = e > wstate ? e : wstate;
        }
    }
    /* split: prefill, compare the states, then token by token to the end */
    state_reset(s);
    assert_int_equal(fwd_prefill(fw, s, ids, (size_t)split, err, sizeof err), 0);
    for (int l = 0; l < c->n_layer; l++) {
        double e = state_err(c, s, l, f, "split");
        if (!(e <= 1e-3))
            fail_msg("%s: state after %d tokens, layer %d, off by %.3g", dir, split, l, e);
    }
    for (int t = split; t < T; t++) {
        struct fwd_seg seg = {s, ids + t, 1, hid};
        assert_int_equal(fwd_run(fw, &seg, 1, err, sizeof err), 0);
        fwd_logits(fw, hid, 1, lg);
        double d = row_logprob_diff(lg, ref + (size_t)t * V, V);
        if (!(d <= tol_lp))
            fail_msg("%s: stepping, log-probs after token %d differ by %.3g", dir, t, d);
    }
    printf("  %s: T=%d, max |dlogprob| %.2e, states %.2e (fingerprint %016llx)\n", dir, T, worst,
           wstate, (unsigned long long)model_fingerprint(m));
    checked_fixtures++;
    free(hid), free(lg), free(ref), free(ids);
    state_free(s);
    fwd_free(fw);
    st_close(f);
    model_free(m);
}

/* Every fixture directory under root (those with a reference.safetensors). */
static int check_fixtures_in(const char *root, double tol_lp)
{
    DIR *d = opendir(root);
    if (!d)
        return 0;
    struct dirent *e;
    int n = 0;
    char names[64][256];
    while ((e = readdir(d)) && n < 64) {
        char p[2048];
        snprintf(p, sizeof p, "%.1000s/%.255s/reference.safetensors", root, e->d_name);
        FILE *t = fopen(p, "rb");
        if (!t)
            continue;
        fclose(t);
        snprintf(names[n++], sizeof names[0], "%.255s", e->d_name);
    }
    closedir(d);
    for (int i = 0; i < n; i++) {
        char p[2048];
        snprintf(p, sizeof p, "%.1000s/%.255s", root, names[i]);
        check_fixture(p, tol_lp);
    }
    return n;
}

/* The generator's fp64 recurrence (made at test time by CTest's
 * gen_gla_dry): all five of its configurations must be there and agree. */
static void fixtures_fp64(void **u)
{
    int n = check_fixtures_in(GLA_DRY_DIR, 1e-4);
    if (n != 5)
        fail_msg("%d of the 5 fixtures of gen_fla_fixtures.py --dry-run in %s", n, GLA_DRY_DIR);
}

/* fla's own fused_recurrent kernel (tests/fixtures/gla/<name>/): the
 * issue's bar, 1e-3. Registered once the fixtures are committed (CMake
 * defines RECUR_FLA_FIXTURES then); all five must be there. */
__attribute__((unused)) static void fixtures_fla(void **u)
{
    char root[1024];
    snprintf(root, sizeof root, "%s/gla", RECUR_FIXTURES);
    int n = check_fixtures_in(root, 1e-3);
    if (n != 5)
        fail_msg("%d of the 5 fla fixtures of gen_fla_fixtures.py in %s", n, root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_defaults), cmocka_unit_test(config_refusals),
        cmocka_unit_test(chunking_conv_gqa), cmocka_unit_test(chunking_plain),
        cmocka_unit_test(chunking_no_gate), cmocka_unit_test(chunking_odd), cmocka_unit_test(batch_invariance),
        cmocka_unit_test(state_roundtrip), cmocka_unit_test(state_size),
        cmocka_unit_test(fixtures_fp64),
#ifdef RECUR_FLA_FIXTURES
        cmocka_unit_test(fixtures_fla),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
