/*
 * recurd bench — throughput of the engine against the sgemm peak measured
 * in the same process (machines here are shared: ratios, not absolute
 * times, are what to compare).
 *
 *   prefill c=N   fwd_run over chunks of N tokens, no lm_head (reading a
 *                 document into a session)
 *   score c=256   the same plus lm_head and log-softmax on every token
 *   decode b=B    B sessions, one token each per step, plus lm_head rows
 *                 (generation); aggregate tokens per second
 */
#include <cblas.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "blas.h"
#include "tools.h"
#include "errors.h"
#include "forward.h"
#include "kernels.h"
#include "model.h"
#include "os.h"
#include "pool.h"
#include "score.h"
#include "state.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: recurd bench (--model DIR | --random NAME | --config FILE) [--json]\n"
            "                    [--seconds S] [--quick]\n"
            "  --random NAME   random weights of a named shape: mamba2-130m, mamba2-370m,\n"
            "                  mamba-130m\n"
            "  --config FILE   random weights for a config.json\n"
            "  --seconds S     time spent on each measurement (default 3)\n"
            "  --quick         only prefill c=256 and decode b=1,32 (for smoke tests)\n");
}

struct result {
    char name[32];
    double tokens, seconds, tok_s, gflops, ratio;
    double mem_ratio; /* decode: tok/s over the memory roofline (0 for prefill) */
};

/* One token stream for the whole run, as before the tests were split. */
static uint64_t rng_state = 0x1234567;

/* Best of a few timed runs of an M x N x K sgemm, GFLOP/s. */
static double sgemm_peak(int M, int N, int K)
{
    float *a = rc_aligned_alloc((size_t)M * K * 4), *b = rc_aligned_alloc((size_t)N * K * 4),
          *c = rc_aligned_alloc((size_t)M * N * 4);
    if (!a || !b || !c)
        return NAN;
    for (size_t i = 0; i < (size_t)M * K; i++)
        a[i] = (float)((i * 7919) % 1000) * 1e-3f;
    for (size_t i = 0; i < (size_t)N * K; i++)
        b[i] = (float)((i * 104729) % 1000) * 1e-3f;
    double best = 0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N);
    for (int r = 0; r < 5; r++) {
        double t0 = now_sec();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N);
        double g = 2.0 * M * N * K / (now_sec() - t0) / 1e9;
        best = g > best ? g : best;
    }
    rc_free(a), rc_free(b), rc_free(c);
    return best;
}

struct copy_job {
    float *dst;
    const float *src;
    size_t n;
    int parts;
};

static void copy_part(void *ctx, int i)
{
    struct copy_job *j = ctx;
    size_t per = (j->n + (size_t)j->parts - 1) / (size_t)j->parts, lo = (size_t)i * per;
    size_t hi = lo + per < j->n ? lo + per : j->n;
    if (lo < hi)
        memcpy(j->dst + lo, j->src + lo, (hi - lo) * sizeof(float));
}

/* Memory bandwidth as the forward pass sees it: best of a few copies of a
 * 512 MiB buffer split over all threads (bytes read + written per second). */
static double mem_bandwidth(void)
{
    size_t n = (size_t)128 << 20; /* floats: 512 MiB */
    float *a = rc_aligned_alloc(n * 4), *b = rc_aligned_alloc(n * 4);
    struct pool *p = pool_create(0);
    double best = NAN;
    if (a && b && p) {
        for (size_t i = 0; i < n; i++)
            a[i] = (float)(i & 1023), b[i] = 0;
        struct copy_job j = {b, a, n, pool_threads(p)};
        best = 0;
        for (int r = 0; r < 4; r++) {
            double t0 = now_sec();
            pool_run(p, j.parts, copy_part, &j);
            double g = 2.0 * n * 4 / (now_sec() - t0) / 1e9;
            best = g > best ? g : best;
        }
    }
    pool_free(p);
    rc_free(a), rc_free(b);
    return best;
}

static int bench_prefill(struct model *m, int chunk, int with_head, double secs, struct result *r)
{
    const struct model_config *c = model_config(m);
    struct fwd *f = NULL;
    struct mstate *s = NULL;
    struct scorer *sc = NULL;
    int32_t *tok = rc_malloc((size_t)chunk * sizeof *tok);
    int rc = RC_ENOMEM;
    if (!tok || fwd_create(m, chunk, &f) || state_create(m, &s) ||
        (with_head && scorer_create(f, 0, &sc)))
        goto out;
    char err[256];
    struct score_stats st;
    score_stats_init(&st);
    double t0 = now_sec(), el;
    long done = 0;
    do {
        for (int i = 0; i < chunk; i++)
            tok[i] = random_token(&rng_state, c->vocab_size);
        if (with_head)
            rc = scorer_run(sc, s, tok, (size_t)chunk, &st, NULL, NULL, err, sizeof err);
        else
            rc = fwd_prefill(f, s, tok, (size_t)chunk, err, sizeof err);
        if (rc)
            goto out;
        done += chunk;
        el = now_sec() - t0;
    } while (el < secs);
    snprintf(r->name, sizeof r->name, with_head ? "score c=%d" : "prefill c=%d", chunk);
    r->tokens = (double)done;
    r->seconds = el;
    r->tok_s = done / el;
    r->gflops = r->tok_s * model_flops_per_token(m, with_head) / 1e9;
    rc = 0;
out:
    rc_free(tok);
    scorer_free(sc);
    state_free(s);
    fwd_free(f);
    return rc;
}

static int bench_decode(struct model *m, int B, double secs, struct result *r)
{
    const struct model_config *c = model_config(m);
    struct fwd *f = NULL;
    struct mstate **s = rc_calloc((size_t)B, sizeof *s);
    struct fwd_seg *segs = rc_calloc((size_t)B, sizeof *segs);
    int32_t *tok = rc_malloc((size_t)B * sizeof *tok);
    float *hidden = rc_malloc((size_t)B * c->d_model * sizeof(float));
    float *logits = rc_malloc((size_t)B * c->n_vocab * sizeof(float));
    int rc = RC_ENOMEM;
    if (!s || !segs || !tok || !hidden || !logits || fwd_create(m, B, &f))
        goto out;
    for (int i = 0; i < B; i++)
        if (state_create(m, &s[i]))
            goto out;
    char err[256];
    double t0 = now_sec(), el;
    long steps = 0;
    do {
        for (int i = 0; i < B; i++) {
            tok[i] = random_token(&rng_state, c->vocab_size);
            segs[i] = (struct fwd_seg){s[i], &tok[i], 1, hidden + (size_t)i * c->d_model};
        }
        if ((rc = fwd_run(f, segs, B, err, sizeof err)))
            goto out;
        fwd_logits(f, hidden, B, logits);
        steps++;
        el = now_sec() - t0;
    } while (el < secs);
    snprintf(r->name, sizeof r->name, "decode b=%d", B);
    r->tokens = (double)steps * B;
    r->seconds = el;
    r->tok_s = r->tokens / el;
    r->gflops = r->tok_s * model_flops_per_token(m, 1) / 1e9;
    rc = 0;
out:
    for (int i = 0; s && i < B; i++)
        state_free(s[i]);
    rc_free(s), rc_free(segs), rc_free(tok), rc_free(hidden), rc_free(logits);
    fwd_free(f);
    return rc;
}

struct bench_args {
    struct model_source src;
    int json, quick;
    double secs; /* per measurement */
};

static int parse_args(int argc, char **argv, struct bench_args *a)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"random", required_argument, 0, 'r'},
        {"config", required_argument, 0, 'c'}, {"json", no_argument, 0, 'j'},
        {"seconds", required_argument, 0, 's'}, {"quick", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    int o;
    *a = (struct bench_args){.secs = 3};
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'm': a->src.dir = optarg; break;
        case 'r': a->src.random_name = optarg; break;
        case 'c': a->src.config_path = optarg; break;
        case 'j': a->json = 1; break;
        case 'q': a->quick = 1; break;
        case 's':
            a->secs = atof(optarg);
            if (!(a->secs > 0 && a->secs <= 3600)) {
                fprintf(stderr, "recurd bench: --seconds must be in (0, 3600]\n");
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!!a->src.dir + !!a->src.random_name + !!a->src.config_path != 1 || optind != argc) {
        usage(stderr);
        return 2;
    }
    return TOOL_RUN;
}

/* Everything one run measured. */
struct bench_run {
    struct result res[12];
    int nr;
    double peak;       /* sgemm 1024^3 before the first test, GFLOP/s */
    double lo, hi;     /* sgemm peaks over the whole run */
    double peak_shape; /* sgemm at the in_proj shape of a 256-token chunk */
    double bw;         /* memory bandwidth, GB/s read + write */
    double dec1, dec32; /* decode b=1 and b=32 tok/s (0 when not run) */
};

/* Runs the prefill, score and decode tests. The machine may be shared and its
 * load may drift during the run: the sgemm peak is measured again between
 * tests, and each test's ratio uses the mean of the peaks measured just
 * before and after it. */
static int run_tests(struct model *m, const struct bench_args *a, struct bench_run *run)
{
    static const int prefill_full[] = {1, 64, 256, 1024}, decode_full[] = {1, 8, 32};
    static const int prefill_quick[] = {256}, decode_quick[] = {1, 32};
    const int *pc = a->quick ? prefill_quick : prefill_full;
    const int *dc = a->quick ? decode_quick : decode_full;
    int npc = a->quick ? 1 : 4, ndc = a->quick ? 2 : 3, rc;
    struct result *res = run->res;
    double peaks[13];
    int np = 0, nr = 0;
    peaks[np++] = run->peak;
    for (int i = 0; i < npc; i++) {
        if ((rc = bench_prefill(m, pc[i], 0, a->secs, &res[nr++])))
            return rc;
        peaks[np++] = sgemm_peak(1024, 1024, 1024);
    }
    if (!a->quick) {
        if ((rc = bench_prefill(m, 256, 1, a->secs, &res[nr++])))
            return rc;
        peaks[np++] = sgemm_peak(1024, 1024, 1024);
    }
    for (int i = 0; i < ndc; i++) {
        if ((rc = bench_decode(m, dc[i], a->secs, &res[nr++])))
            return rc;
        peaks[np++] = sgemm_peak(1024, 1024, 1024);
    }
    for (int i = 0; i < nr; i++)
        res[i].ratio = res[i].gflops / (0.5 * (peaks[i] + peaks[i + 1]));
    run->lo = run->hi = peaks[0];
    for (int i = 1; i < np; i++)
        run->lo = peaks[i] < run->lo ? peaks[i] : run->lo,
        run->hi = peaks[i] > run->hi ? peaks[i] : run->hi;
    run->nr = nr;
    return 0;
}

/* Decode streams every weight once per step and every session's state in and
 * out once per token: the memory roofline for b sessions is
 * bandwidth / ((weights + b * 2 * state) / b) tokens per second. */
static void rate_decode(struct model *m, struct bench_run *run)
{
    run->bw = mem_bandwidth();
    double wbytes = (double)model_n_params(m) * 4, sbytes_d = (double)state_bytes(m);
    for (int i = 0; i < run->nr; i++) {
        struct result *r = &run->res[i];
        int b;
        if (sscanf(r->name, "decode b=%d", &b) == 1)
            r->mem_ratio = r->tok_s / (run->bw * 1e9 / ((wbytes + b * 2.0 * sbytes_d) / b));
        if (!strcmp(r->name, "decode b=1"))
            run->dec1 = r->tok_s;
        if (!strcmp(r->name, "decode b=32"))
            run->dec32 = r->tok_s;
    }
}

static void print_json(struct model *m, const char *label, const char *blas,
                       const struct bench_run *run)
{
    const struct result *res = run->res;
    size_t sbytes = state_bytes(m), rss = os_peak_rss_bytes();
    json_t *a = json_array();
    for (int i = 0; i < run->nr; i++)
        json_array_append_new(
            a, json_pack("{ss sf sf sf sf sf sf}", "test", res[i].name, "tokens", res[i].tokens,
                         "seconds", res[i].seconds, "tok_s", res[i].tok_s, "gflops",
                         res[i].gflops, "of_sgemm_peak", res[i].ratio, "of_memory_roofline",
                         res[i].mem_ratio));
    json_t *out = json_pack(
        "{ss ss ss sI sI sf sf sf sf sf sf sf sI sI so sf}", "model", label, "blas", blas,
        "kernels", kernels_get()->name, "params", (json_int_t)model_n_params(m),
        "params_nonembed", (json_int_t)model_n_params_nonembed(m), "flops_per_token_prefill",
        model_flops_per_token(m, 0), "flops_per_token_with_head", model_flops_per_token(m, 1),
        "sgemm_peak_gflops", run->peak, "sgemm_peak_min", run->lo, "sgemm_peak_max", run->hi,
        "memory_gb_s", run->bw, "sgemm_model_shape_gflops", run->peak_shape, "state_bytes",
        (json_int_t)sbytes, "peak_rss_bytes", (json_int_t)rss, "results", a,
        "decode_b32_over_b1", run->dec1 > 0 ? run->dec32 / run->dec1 : 0.0);
    char *d = json_dumps(out, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
    puts(d);
    free(d);
    json_decref(out);
}

static void print_table(struct model *m, const char *label, const char *blas,
                        const struct bench_run *run)
{
    const struct model_config *c = model_config(m);
    const struct result *res = run->res;
    size_t sbytes = state_bytes(m), rss = os_peak_rss_bytes();
    printf("model: %s (%s, d_model %d, %d layers, d_state %d, vocab %d)\n", label,
           c->arch == MODEL_MAMBA2 ? "Mamba-2" : "Mamba-1", c->d_model, c->n_layer, c->d_state,
           c->n_vocab);
    printf("params: %.1fM (%.1fM outside embeddings); FLOPs/token %.1fM prefill, %.1fM with "
           "lm_head\n",
           model_n_params(m) / 1e6, model_n_params_nonembed(m) / 1e6,
           model_flops_per_token(m, 0) / 1e6, model_flops_per_token(m, 1) / 1e6);
    printf("%s; kernels %s\n", blas, kernels_get()->name);
    printf("sgemm peak %.1f GFLOP/s (1024^3; %.1f..%.1f over the run); at in_proj shape "
           "256x%dx%d: %.1f GFLOP/s\n",
           run->peak, run->lo, run->hi, c->d_in_proj, c->d_model, run->peak_shape);
    printf("memory bandwidth %.1f GB/s (read + write)\n", run->bw);
    printf("state: %zu bytes per session (%.2f MiB); peak RSS %.1f MiB\n\n", sbytes,
           sbytes / 1048576.0, rss / 1048576.0);
    printf("| %-14s | %10s | %10s | %9s | %13s | %15s |\n", "test", "tokens", "tok/s",
           "GFLOP/s", "of sgemm peak", "of mem roofline");
    printf("|%s|%s|%s|%s|%s|%s|\n", "----------------", "------------", "------------",
           "-----------", "---------------", "-----------------");
    for (int i = 0; i < run->nr; i++) {
        char mr[32] = "";
        if (res[i].mem_ratio > 0)
            snprintf(mr, sizeof mr, "%.1f%%", 100 * res[i].mem_ratio);
        printf("| %-14s | %10.0f | %10.1f | %9.1f | %12.1f%% | %15s |\n", res[i].name,
               res[i].tokens, res[i].tok_s, res[i].gflops, 100 * res[i].ratio, mr);
    }
    if (run->dec1 > 0 && run->dec32 > 0)
        printf("\ndecode b=32 aggregate / b=1: %.1fx\n", run->dec32 / run->dec1);
}

int cmd_bench(int argc, char **argv)
{
    struct bench_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc != TOOL_RUN)
        return rc;
    char err[1024], label[512];
    struct model *m;
    if ((rc = open_model(&a.src, 42, &m, err, sizeof err))) {
        fprintf(stderr, "recurd bench: %s\n", err);
        return 1;
    }
    if (a.src.dir)
        snprintf(label, sizeof label, "%s", a.src.dir);
    else
        snprintf(label, sizeof label, "random %s",
                 a.src.random_name ? a.src.random_name : a.src.config_path);
    const struct model_config *c = model_config(m);
    char blas[256];
    blas_describe(blas, sizeof blas);
    struct bench_run run;
    memset(&run, 0, sizeof run);
    run.peak = sgemm_peak(1024, 1024, 1024);
    /* The GEMM the prefill actually runs most (in_proj at chunk 256). */
    run.peak_shape = sgemm_peak(256, c->d_in_proj, c->d_model);
    if ((rc = run_tests(m, &a, &run))) {
        fprintf(stderr, "recurd bench: %s\n", rc_strerror(rc));
        model_free(m);
        return 1;
    }
    rate_decode(m, &run);
    if (a.json)
        print_json(m, label, blas, &run);
    else
        print_table(m, label, blas, &run);
    model_free(m);
    return 0;
}
