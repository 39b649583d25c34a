/*
 * recurd bench — throughput of the engine against peaks measured in the
 * same process (machines here are shared: ratios, not absolute times, are
 * what to compare).
 *
 *   prefill c=N   fwd_run over chunks of N tokens, no lm_head (reading a
 *                 document into a session)
 *   score c=256   the same plus lm_head and log-softmax on every token
 *   decode b=B    B sessions, one token each per step, plus lm_head rows
 *                 (generation); aggregate tokens per second
 *
 * References, all on the same threads as the engine:
 *   FMA peak      the engine's kernel set multiplying-adding in registers
 *                 (kernels.h fma_loop): the most this CPU does with the
 *                 instructions the engine uses. GFLOP/s percentages divide
 *                 by it.
 *   GEMM peak     the engine's own projection kernel on a 1024^3 product.
 *   sgemm         OpenBLAS's, 1024^3, reported beside them: its kernels
 *                 depend on what OpenBLAS recognises (an OPENBLAS_CORETYPE
 *                 the user set is respected), so it is not the reference.
 *   read bw       the best of a few parallel sums over 512 MiB; decode's
 *                 roofline is read bw / bytes read per token (weights,
 *                 plus each session's state read and written).
 */
#include <cblas.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alloc.h"
#include "blas.h"
#include "cpus.h"
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
            "                    [--seconds S] [--quick] [--tests LIST] [--weights W]\n"
            "                    [--threads N] [--profile]\n"
            "  --random NAME   random weights of a named shape: mamba2-130m, mamba2-370m,\n"
            "                  mamba-130m\n"
            "  --config FILE   random weights for a config.json\n"
            "  --seconds S     time spent on each measurement (default 3)\n"
            "  --quick         only prefill c=256 and decode b=1,32 (for smoke tests)\n"
            "  --tests LIST    comma-separated: prefill=N (chunks of N tokens), score=N,\n"
            "                  decode=B (B sessions); default prefill=1,64,256,512,1024,4096,\n"
            "                  score=256, decode=1,8,32\n"
            "  --threads N     the forward pass's threads, the references' too (default:\n"
            "                  the CPUs this process may use)\n"
            "  --profile       where the time of decode b=1 and prefill c=512 goes, per\n"
            "                  phase of a layer\n"
            WEIGHTS_HELP);
}

struct result {
    char name[32];
    double tokens, seconds, tok_s, gflops;
    double ratio;       /* GFLOP/s over the FMA peak */
    double sgemm_ratio; /* GFLOP/s over OpenBLAS's sgemm */
    double bytes_tok;   /* decode: bytes read per token (weights / B + state in and out) */
    double mem_ratio;   /* decode: tok/s over the read-bandwidth roofline (0 for prefill) */
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

/* ---- the engine's own references */

struct fma_job {
    const struct kernels *k;
    long iters;
    float sink[64]; /* per pool thread (pool_self), so threads share no variable */
};

static void fma_item(void *ctx, int i)
{
    struct fma_job *j = ctx;
    j->sink[pool_self() % 64] += j->k->fma_loop(j->iters, 0.9999999f);
}

/* In-register multiply-add peak of the engine's kernel set on the pool's
 * threads: best of a few runs of 8 equal items per thread (so every thread
 * stays busy to the end), GFLOP/s. */
static double fma_peak(struct pool *p)
{
    const struct kernels *k = kernels_get();
    struct fma_job j = {k, 2000000, {0}};
    int items = 8 * pool_threads(p);
    double best = 0;
    pool_run(p, items, fma_item, &j); /* warm up: clocks, thread wake-ups */
    for (int r = 0; r < 3; r++) {
        double t0 = now_sec();
        pool_run(p, items, fma_item, &j);
        double g = 2.0 * k->fma_lanes * (double)j.iters * items / (now_sec() - t0) / 1e9;
        best = g > best ? g : best;
    }
    if (j.sink[0] == 12345.0f) /* the loops' results are used */
        best += 1e-9;
    return best;
}

struct gemm_job {
    const struct kernels *k;
    const float *x;
    const unsigned char *w;
    float *c;
    int n;
};

/* Item i: the kernel set's panels per call for many rows, as the prefill. */
static void gemm_item(void *ctx, int i)
{
    struct gemm_job *j = ctx;
    const int np = j->k->wide_np;
    const size_t ps = wfmt_panel_bytes(WF_F32, j->n);
    j->k->gemm(WF_F32, j->c + i * np * GEMM_NR, j->n, j->x, j->n, j->w + (size_t)i * np * ps, ps,
               np, j->n, j->n, GEMM_NR, 0);
}

/* The engine's projection kernel on a 1024^3 product over the pool (the
 * prefill's kernel at its best shape), GFLOP/s. */
static double engine_gemm_peak(struct pool *p)
{
    enum { n = 1024 };
    float *x = rc_aligned_alloc((size_t)n * n * 4), *c = rc_aligned_alloc((size_t)n * n * 4);
    unsigned char *w = rc_aligned_alloc(wfmt_panel_bytes(WF_F32, n) * (n / GEMM_NR));
    double best = NAN;
    if (x && c && w) {
        for (size_t i = 0; i < (size_t)n * n; i++)
            x[i] = (float)((i * 7919) % 1000) * 1e-3f, c[i] = (float)((i * 104729) % 1000) * 1e-3f;
        int lossy;
        wfmt_pack_rows(WF_F32, c, n, n, 0, n, w, &lossy);
        struct gemm_job j = {kernels_get(), x, w, c, n};
        float *out = rc_aligned_alloc((size_t)n * n * 4);
        if (!out) {
            rc_free(x), rc_free(c), rc_free(w);
            return NAN;
        }
        j.c = out;
        best = 0;
        for (int r = 0; r < 4; r++) {
            double t0 = now_sec();
            pool_run(p, n / GEMM_NR / j.k->wide_np, gemm_item, &j);
            double g = 2.0 * n * n * n / (now_sec() - t0) / 1e9;
            best = r && g > best ? g : best; /* the first run warms up */
        }
        rc_free(out);
    }
    rc_free(x), rc_free(c), rc_free(w);
    return best;
}

struct bw_job {
    float *dst;
    const float *src;
    size_t n;
    int parts;
    double sums[64];
};

static void copy_part(void *ctx, int i)
{
    struct bw_job *j = ctx;
    size_t per = (j->n + (size_t)j->parts - 1) / (size_t)j->parts, lo = (size_t)i * per;
    size_t hi = lo + per < j->n ? lo + per : j->n;
    if (lo < hi)
        memcpy(j->dst + lo, j->src + lo, (hi - lo) * sizeof(float));
}

static void sum_part(void *ctx, int i)
{
    struct bw_job *j = ctx;
    size_t per = (j->n + (size_t)j->parts - 1) / (size_t)j->parts, lo = (size_t)i * per;
    size_t hi = lo + per < j->n ? lo + per : j->n;
    float acc[16] = {0};
    for (size_t q = lo; q + 16 <= hi; q += 16)
        for (int l = 0; l < 16; l++)
            acc[l] += j->src[q + l];
    double t = 0;
    for (int l = 0; l < 16; l++)
        t += acc[l];
    j->sums[i % 64] += t;
}

/* Memory bandwidth as the forward pass sees it, over all the pool's
 * threads: bw[0] reading (a sum over 512 MiB), bw[1] copying (bytes read +
 * written per second). Best of 4 each. Measured in a child process, so that
 * its 1 GiB does not count in the benchmark's peak RSS. */
static void mem_bandwidth(int threads, double bw[2])
{
    bw[0] = bw[1] = NAN;
    int fds[2];
    if (pipe(fds))
        return;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        size_t n = (size_t)128 << 20; /* floats: 512 MiB */
        float *a = malloc(n * 4), *b = malloc(n * 4);
        struct pool *p = pool_create(threads);
        double out[2] = {0, 0};
        if (a && b && p) {
            for (size_t i = 0; i < n; i++)
                a[i] = (float)(i & 1023), b[i] = 0;
            struct bw_job j = {.dst = b, .src = a, .n = n, .parts = pool_threads(p)};
            for (int r = 0; r < 4; r++) {
                double t0 = now_sec();
                pool_run(p, j.parts, sum_part, &j);
                double g = 1.0 * n * 4 / (now_sec() - t0) / 1e9;
                out[0] = g > out[0] ? g : out[0];
                t0 = now_sec();
                pool_run(p, j.parts, copy_part, &j);
                g = 2.0 * n * 4 / (now_sec() - t0) / 1e9;
                out[1] = g > out[1] ? g : out[1];
            }
            if (j.sums[0] == 12345.0) /* keep the sums */
                out[0] += 1e-9;
        }
        ssize_t wr = write(fds[1], out, sizeof out);
        _exit(wr == (ssize_t)sizeof out ? 0 : 1);
    }
    close(fds[1]);
    if (pid > 0) {
        double in[2];
        if (read(fds[0], in, sizeof in) == (ssize_t)sizeof in)
            bw[0] = in[0], bw[1] = in[1];
        waitpid(pid, NULL, 0);
    }
    close(fds[0]);
}

/* ---- the tests */

static int bench_prefill(struct model *m, int chunk, int with_head, int threads, double secs,
                         struct fwd_profile *prof, struct result *r)
{
    const struct model_config *c = model_config(m);
    struct fwd *f = NULL;
    struct mstate *s = NULL;
    struct scorer *sc = NULL;
    int32_t *tok = rc_malloc((size_t)chunk * sizeof *tok);
    int rc = RC_ENOMEM;
    if (!tok || fwd_create_threads(m, chunk, threads, &f) || state_create(m, &s) ||
        (with_head && scorer_create(f, 0, &sc)))
        goto out;
    char err[256];
    struct score_stats st;
    score_stats_init(&st);
    fwd_set_profile(f, prof);
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

static int bench_decode(struct model *m, int B, int threads, double secs,
                        struct fwd_profile *prof, struct result *r)
{
    const struct model_config *c = model_config(m);
    struct fwd *f = NULL;
    struct mstate **s = rc_calloc((size_t)B, sizeof *s);
    struct fwd_seg *segs = rc_calloc((size_t)B, sizeof *segs);
    int32_t *tok = rc_malloc((size_t)B * sizeof *tok);
    float *hidden = rc_malloc((size_t)B * c->d_model * sizeof(float));
    float *logits = rc_malloc((size_t)B * c->n_vocab * sizeof(float));
    int rc = RC_ENOMEM;
    if (!s || !segs || !tok || !hidden || !logits || fwd_create_threads(m, B, threads, &f))
        goto out;
    for (int i = 0; i < B; i++)
        if (state_create(m, &s[i]))
            goto out;
    char err[256];
    fwd_set_profile(f, prof);
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
    r->bytes_tok = (double)model_weight_bytes(m) / B + 2.0 * (double)state_bytes(m);
    rc = 0;
out:
    for (int i = 0; s && i < B; i++)
        state_free(s[i]);
    rc_free(s), rc_free(segs), rc_free(tok), rc_free(hidden), rc_free(logits);
    fwd_free(f);
    return rc;
}

enum { T_PREFILL, T_SCORE, T_DECODE };
struct test {
    int kind, n;
};
#define MAX_TESTS 16

struct bench_args {
    struct model_source src;
    int json, profile, threads; /* threads: 0 = cpu_threads_auto() */
    double secs;                /* per measurement */
    struct test tests[MAX_TESTS];
    int ntests;
};

/* "prefill=1,64,score=256,decode=1,8": a kind applies to the numbers after it. */
static int parse_tests(const char *list, struct bench_args *a)
{
    char buf[512];
    if (strlen(list) >= sizeof buf)
        return -1;
    strcpy(buf, list);
    int kind = -1;
    a->ntests = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(t, '=');
        if (eq) {
            *eq = 0;
            kind = !strcmp(t, "prefill") ? T_PREFILL
                   : !strcmp(t, "score") ? T_SCORE
                   : !strcmp(t, "decode") ? T_DECODE
                                          : -1;
            t = eq + 1;
        }
        long v;
        if (kind < 0 || a->ntests == MAX_TESTS || parse_long_opt(t, 1, 65536, &v))
            return -1;
        a->tests[a->ntests++] = (struct test){kind, (int)v};
    }
    return a->ntests ? 0 : -1;
}

static int parse_args(int argc, char **argv, struct bench_args *a)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"random", required_argument, 0, 'r'},
        {"config", required_argument, 0, 'c'}, {"json", no_argument, 0, 'j'},
        {"seconds", required_argument, 0, 's'}, {"quick", no_argument, 0, 'q'},
        {"weights", required_argument, 0, 'W'}, {"threads", required_argument, 0, 't'},
        {"tests", required_argument, 0, 'T'},  {"profile", no_argument, 0, 'p'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    int o;
    long th;
    *a = (struct bench_args){.secs = 3, .src.weights = MODEL_WEIGHTS_AUTO};
    parse_tests("prefill=1,64,256,512,1024,4096,score=256,decode=1,8,32", a);
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'm': a->src.dir = optarg; break;
        case 'r': a->src.random_name = optarg; break;
        case 'c': a->src.config_path = optarg; break;
        case 'j': a->json = 1; break;
        case 'p': a->profile = 1; break;
        case 'q': parse_tests("prefill=256,decode=1,32", a); break;
        case 'T':
            if (parse_tests(optarg, a)) {
                fprintf(stderr, "recurd bench: --tests: expected e.g. prefill=512,4096,decode=1 "
                                "(kinds prefill, score, decode; sizes 1..65536; at most %d)\n",
                        MAX_TESTS);
                return 2;
            }
            break;
        case 's':
            a->secs = atof(optarg);
            if (!(a->secs > 0 && a->secs <= 3600)) {
                fprintf(stderr, "recurd bench: --seconds must be in (0, 3600]\n");
                return 2;
            }
            break;
        case 'W':
            if (parse_weights_opt("bench", optarg, &a->src.weights))
                return 2;
            break;
        case 't':
            if (parse_long_opt(optarg, 1, 64, &th)) {
                fprintf(stderr, "recurd bench: --threads must be an integer in [1, 64]\n");
                return 2;
            }
            a->threads = (int)th;
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
    struct result res[MAX_TESTS];
    int nr, threads;
    double fma, fma_lo, fma_hi; /* FMA peak: first, and range over the run */
    double gemm;                /* the engine's GEMM 1024^3 */
    double sgemm;               /* OpenBLAS sgemm 1024^3 */
    double bw_read, bw_copy;    /* GB/s */
    size_t rss_load_peak;       /* peak RSS once loaded (conversion included) */
    size_t rss_decode1;         /* RSS at the end of decode b=1 */
    double dec1, dec32;         /* decode b=1 and b=32 tok/s (0 when not run) */
    struct fwd_profile prof;    /* decode b=1 with --profile */
    double prof_tokens;
    struct fwd_profile pprof;   /* prefill c=512 with --profile */
    double pprof_tokens;
};

/* Runs the tests. The machine may be shared and its load may drift during
 * the run: the FMA peak is measured again between tests, and each test's
 * ratio uses the mean of the peaks measured just before and after it. */
static int run_tests(struct model *m, const struct bench_args *a, struct pool *p,
                     struct bench_run *run)
{
    struct result *res = run->res;
    double peaks[MAX_TESTS + 1];
    int rc;
    peaks[0] = run->fma;
    for (int i = 0; i < a->ntests; i++) {
        const struct test *t = &a->tests[i];
        rc = t->kind == T_DECODE
                 ? bench_decode(m, t->n, run->threads, a->secs, NULL, &res[i])
                 : bench_prefill(m, t->n, t->kind == T_SCORE, run->threads, a->secs, NULL,
                                 &res[i]);
        if (rc)
            return rc;
        if (t->kind == T_DECODE && t->n == 1 && !run->rss_decode1)
            run->rss_decode1 = os_rss_bytes();
        peaks[i + 1] = fma_peak(p);
    }
    run->nr = a->ntests;
    run->fma_lo = run->fma_hi = peaks[0];
    for (int i = 0; i < run->nr; i++) {
        res[i].ratio = res[i].gflops / (0.5 * (peaks[i] + peaks[i + 1]));
        res[i].sgemm_ratio = res[i].gflops / run->sgemm;
        run->fma_lo = peaks[i + 1] < run->fma_lo ? peaks[i + 1] : run->fma_lo;
        run->fma_hi = peaks[i + 1] > run->fma_hi ? peaks[i + 1] : run->fma_hi;
    }
    if (a->profile) {
        struct result r;
        if ((rc = bench_decode(m, 1, run->threads, a->secs, &run->prof, &r)))
            return rc;
        run->prof_tokens = r.tokens;
        if ((rc = bench_prefill(m, 512, 0, run->threads, a->secs, &run->pprof, &r)))
            return rc;
        run->pprof_tokens = r.tokens;
    }
    return 0;
}

static void rate_decode(struct bench_run *run)
{
    for (int i = 0; i < run->nr; i++) {
        struct result *r = &run->res[i];
        if (r->bytes_tok > 0)
            r->mem_ratio = r->tok_s / (run->bw_read * 1e9 / r->bytes_tok);
        if (!strcmp(r->name, "decode b=1"))
            run->dec1 = r->tok_s;
        if (!strcmp(r->name, "decode b=32"))
            run->dec32 = r->tok_s;
    }
}

static json_t *profile_json(const struct fwd_profile *pr, double tokens)
{
    json_t *o = json_object();
    for (int i = 0; i < FWD_NPHASES; i++)
        json_object_set_new(o, fwd_phase_names[i], json_real(pr->sec[i] / tokens * 1e3));
    return o;
}

static void print_json(struct model *m, const char *label, const char *blas,
                       const struct bench_run *run)
{
    const struct result *res = run->res;
    json_t *a = json_array();
    for (int i = 0; i < run->nr; i++)
        json_array_append_new(
            a, json_pack("{ss sf sf sf sf sf sf sf sf}", "test", res[i].name, "tokens",
                         res[i].tokens, "seconds", res[i].seconds, "tok_s", res[i].tok_s,
                         "gflops", res[i].gflops, "of_fma_peak", res[i].ratio, "of_sgemm_peak",
                         res[i].sgemm_ratio, "bytes_per_token", res[i].bytes_tok,
                         "of_memory_roofline", res[i].mem_ratio));
    json_t *out = json_pack(
        "{ss ss ss ss sI sI sI sf sf si sf sf sf sf sf sf sf sf sI sI sI sI so sf}", "model",
        label, "blas", blas, "kernels", kernels_get()->name, "weights",
        model_weights_name(model_weights(m)), "weight_bytes", (json_int_t)model_weight_bytes(m),
        "params", (json_int_t)model_n_params(m), "params_nonembed",
        (json_int_t)model_n_params_nonembed(m), "flops_per_token_prefill",
        model_flops_per_token(m, 0), "flops_per_token_with_head", model_flops_per_token(m, 1),
        "threads", run->threads, "fma_peak_gflops", run->fma, "fma_peak_min", run->fma_lo,
        "fma_peak_max", run->fma_hi, "gemm_peak_gflops", run->gemm, "sgemm_peak_gflops",
        run->sgemm, "memory_read_gb_s", run->bw_read, "memory_copy_gb_s", run->bw_copy,
        "decode_b32_over_b1", run->dec1 > 0 ? run->dec32 / run->dec1 : 0.0, "state_bytes",
        (json_int_t)state_bytes(m), "peak_rss_after_load_bytes", (json_int_t)run->rss_load_peak,
        "rss_decode_b1_bytes", (json_int_t)run->rss_decode1, "peak_rss_bytes",
        (json_int_t)os_peak_rss_bytes(), "results", a, "percentages_divide_by_gflops",
        run->fma);
    if (run->prof_tokens > 0)
        json_object_set_new(out, "decode_b1_ms_per_token", profile_json(&run->prof, run->prof_tokens));
    if (run->pprof_tokens > 0)
        json_object_set_new(out, "prefill_c512_ms_per_token",
                            profile_json(&run->pprof, run->pprof_tokens));
    char *d = json_dumps(out, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
    puts(d);
    free(d);
    json_decref(out);
}

static void print_profile(const struct model *m, const char *what, const struct fwd_profile *pr,
                          double tokens)
{
    const struct model_config *c = model_config(m);
    double tot = 0;
    for (int i = 0; i < FWD_NPHASES; i++)
        tot += pr->sec[i];
    printf("\n%s, where the time goes (%.0f tokens; ms per token, and per layer for the "
           "%d layers):\n",
           what, tokens, c->n_layer);
    printf("| %-10s | %8s | %9s | %6s |\n", "phase", "ms/token", "per layer", "share");
    printf("|------------|----------|-----------|--------|\n");
    for (int i = 0; i < FWD_NPHASES; i++) {
        double ms = pr->sec[i] / tokens * 1e3;
        int per_layer = i != FWD_EMBED && i != FWD_FINAL && i != FWD_LM_HEAD;
        if (pr->sec[i] == 0)
            continue;
        char pl[32] = "";
        if (per_layer)
            snprintf(pl, sizeof pl, "%.4f", ms / c->n_layer);
        printf("| %-10s | %8.4f | %9s | %5.1f%% |\n", fwd_phase_names[i], ms, pl,
               100 * pr->sec[i] / tot);
    }
    printf("| %-10s | %8.4f | %9s | %5.1f%% |\n", "total", tot / tokens * 1e3, "",
           100.0);
}

static void print_table(struct model *m, const char *label, const char *blas,
                        const struct bench_run *run)
{
    const struct model_config *c = model_config(m);
    const struct result *res = run->res;
    size_t sbytes = state_bytes(m);
    printf("model: %s (%s, d_model %d, %d layers, d_state %d, vocab %d)\n", label,
           model_arch_label(c->arch), c->d_model, c->n_layer, c->d_state,
           c->n_vocab);
    printf("params: %.1fM (%.1fM outside embeddings); FLOPs/token %.1fM prefill, %.1fM with "
           "lm_head\n",
           model_n_params(m) / 1e6, model_n_params_nonembed(m) / 1e6,
           model_flops_per_token(m, 0) / 1e6, model_flops_per_token(m, 1) / 1e6);
    printf("weights: %s in memory, %.1f MiB (%.3f bytes per parameter)\n",
           model_weights_name(model_weights(m)), model_weight_bytes(m) / 1048576.0,
           (double)model_weight_bytes(m) / (double)model_n_params(m));
    printf("threads: %d; kernels %s; %s\n", run->threads, kernels_get()->name, blas);
    printf("peaks on %d threads: FMA %.1f GFLOP/s (%s kernels in registers; %.1f..%.1f over the "
           "run) <- the percentages divide by this\n",
           run->threads, run->fma, kernels_get()->name, run->fma_lo, run->fma_hi);
    printf("                    engine GEMM 1024^3 %.1f GFLOP/s (%.0f%% of FMA); OpenBLAS sgemm "
           "1024^3 %.1f GFLOP/s (%.0f%% of FMA)\n",
           run->gemm, 100 * run->gemm / run->fma, run->sgemm, 100 * run->sgemm / run->fma);
    printf("memory bandwidth: read %.1f GB/s (the decode roofline's), copy %.1f GB/s (read + "
           "write)\n",
           run->bw_read, run->bw_copy);
    printf("state: %zu bytes per session (%.2f MiB)\n", sbytes, sbytes / 1048576.0);
    printf("RSS: peak after load %.1f MiB; at the end of decode b=1 %.1f MiB\n\n",
           run->rss_load_peak / 1048576.0, run->rss_decode1 / 1048576.0);
    printf("| %-14s | %9s | %10s | %9s | %11s | %11s | %13s |\n", "test", "tokens", "tok/s",
           "GFLOP/s", "of FMA peak", "MB/token", "of read roof");
    printf("|----------------|-----------|------------|-----------|-------------|-------------|"
           "---------------|\n");
    for (int i = 0; i < run->nr; i++) {
        char mr[32] = "", bt[32] = "";
        if (res[i].mem_ratio > 0) {
            snprintf(mr, sizeof mr, "%.1f%%", 100 * res[i].mem_ratio);
            snprintf(bt, sizeof bt, "%.2f", res[i].bytes_tok / 1e6);
        }
        printf("| %-14s | %9.0f | %10.1f | %9.1f | %10.1f%% | %11s | %13s |\n", res[i].name,
               res[i].tokens, res[i].tok_s, res[i].gflops, 100 * res[i].ratio, bt, mr);
    }
    if (run->dec1 > 0 && run->dec32 > 0)
        printf("\ndecode b=32 aggregate / b=1: %.1fx\n", run->dec32 / run->dec1);
    if (run->prof_tokens > 0)
        print_profile(m, "decode b=1", &run->prof, run->prof_tokens);
    if (run->pprof_tokens > 0)
        print_profile(m, "prefill c=512", &run->pprof, run->pprof_tokens);
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
    struct bench_run run;
    memset(&run, 0, sizeof run);
    run.rss_load_peak = os_peak_rss_bytes();
    if (a.src.dir)
        snprintf(label, sizeof label, "%s", a.src.dir);
    else
        snprintf(label, sizeof label, "random %s",
                 a.src.random_name ? a.src.random_name : a.src.config_path);
    run.threads = a.threads ? a.threads : cpu_threads_auto();
    if (a.threads && !blas_threads_from_env())
        blas_set_threads(a.threads); /* OpenBLAS's figure on the same threads */
    char blas[256];
    blas_describe(blas, sizeof blas);
    struct pool *p = pool_create(run.threads);
    if (!p) {
        fprintf(stderr, "recurd bench: out of memory\n");
        model_free(m);
        return 1;
    }
    double bw[2];
    mem_bandwidth(run.threads, bw);
    run.bw_read = bw[0], run.bw_copy = bw[1];
    run.fma = fma_peak(p);
    run.gemm = engine_gemm_peak(p);
    run.sgemm = sgemm_peak(1024, 1024, 1024);
    if ((rc = run_tests(m, &a, p, &run))) {
        fprintf(stderr, "recurd bench: %s\n", rc_strerror(rc));
        pool_free(p);
        model_free(m);
        return 1;
    }
    rate_decode(&run);
    if (a.json)
        print_json(m, label, blas, &run);
    else
        print_table(m, label, blas, &run);
    pool_free(p);
    model_free(m);
    return 0;
}
